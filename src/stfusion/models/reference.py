"""Key mapping between the MLFF-GAN reference implementation's state dicts and ours.

The authors' PyTorch code names its modules ``LSNet`` (coarse encoder), ``HSNet`` (fine encoder),
``SignE_List`` (attention modules), ``conv1``..``conv5`` (decoder) and ``model0``..``model4``
(discriminator). Our modules use domain names. The mapping works on *module paths*: the last
component of a key (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``)
is kept, the module path before it is translated with the tables below.

Generator (``part="generator"``), for level n = 1..5 (index i = n - 1) and decoder step k = 1..4:

==========================================  ==================================================
reference module                            ours (:class:`~stfusion.models.MLFFGenerator`)
==========================================  ==================================================
``LSNet.conv{n}.0``                         ``coarse_encoder.stages.{i}.down``
``LSNet.conv{n}.1.residual.1`` / ``.5``     ``coarse_encoder.stages.{i}.res.conv1`` / ``.conv2``
``HSNet.*``                                 ``fine_encoder.*`` (same pattern as ``LSNet``)
``SignE_List.{i}.conv1.0`` / ``.1``         ``fusions.{i}.attention.proj_t2.conv`` / ``.norm``
``SignE_List.{i}.conv2.0`` / ``.1``         ``fusions.{i}.attention.proj_t1.conv`` / ``.norm``
``SignE_List.{i}.conv.0`` / ``.1``          ``fusions.{i}.attention.to_map.conv`` / ``.norm``
``conv{k}.0.deconv``                        ``decoder.stages.{k-1}.up``
``conv{k}.1.residual.1`` / ``.5``           ``decoder.stages.{k-1}.res.conv1`` / ``.conv2``
``conv5.0.residual.1`` / ``.5``             ``decoder.head.res_wide.conv1`` / ``.conv2``
``conv5.1``                                 ``decoder.head.squeeze``
``conv5.2.residual.1`` / ``.5``             ``decoder.head.res_narrow.conv1`` / ``.conv2``
``conv5.3``                                 ``decoder.head.out``
==========================================  ==================================================

Discriminator (``part="discriminator"``): ``model{j}.0`` -> ``blocks.{j}.conv`` (j = 0..4) and
``model{j}.1`` -> ``blocks.{j}.norm`` (j = 1..3).

All tensors keep their layout (the transposed convolutions are (C_in, C_out, 4, 4) on both sides).
A leading ``module.`` (from ``nn.DataParallel``) is stripped. Note (spec section 7): the authors'
released pretrained file does not match their public code (it has two separate coarse encoders with a
different residual block); it is rejected with a :class:`ReferenceCheckpointError` listing the
offending keys, rather than emulated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from stfusion.models.discriminator import PatchDiscriminator
from stfusion.models.mlffgan import MLFFGenerator

Part = Literal["generator", "discriminator"]

_LEVELS = 5
_DATA_PARALLEL_PREFIX = "module."
_MAX_LISTED = 12


def _generator_module_map() -> dict[str, str]:
    table: dict[str, str] = {}
    for ref, ours in (("LSNet", "coarse_encoder"), ("HSNet", "fine_encoder")):
        for i in range(_LEVELS):
            table[f"{ref}.conv{i + 1}.0"] = f"{ours}.stages.{i}.down"
            table[f"{ref}.conv{i + 1}.1.residual.1"] = f"{ours}.stages.{i}.res.conv1"
            table[f"{ref}.conv{i + 1}.1.residual.5"] = f"{ours}.stages.{i}.res.conv2"
    for i in range(_LEVELS):
        for ref_conv, ours_proj in (("conv1", "proj_t2"), ("conv2", "proj_t1"), ("conv", "to_map")):
            table[f"SignE_List.{i}.{ref_conv}.0"] = f"fusions.{i}.attention.{ours_proj}.conv"
            table[f"SignE_List.{i}.{ref_conv}.1"] = f"fusions.{i}.attention.{ours_proj}.norm"
    for k in range(1, _LEVELS):
        table[f"conv{k}.0.deconv"] = f"decoder.stages.{k - 1}.up"
        table[f"conv{k}.1.residual.1"] = f"decoder.stages.{k - 1}.res.conv1"
        table[f"conv{k}.1.residual.5"] = f"decoder.stages.{k - 1}.res.conv2"
    table["conv5.0.residual.1"] = "decoder.head.res_wide.conv1"
    table["conv5.0.residual.5"] = "decoder.head.res_wide.conv2"
    table["conv5.1"] = "decoder.head.squeeze"
    table["conv5.2.residual.1"] = "decoder.head.res_narrow.conv1"
    table["conv5.2.residual.5"] = "decoder.head.res_narrow.conv2"
    table["conv5.3"] = "decoder.head.out"
    return table


def _discriminator_module_map() -> dict[str, str]:
    table = {f"model{j}.0": f"blocks.{j}.conv" for j in range(5)}
    table.update({f"model{j}.1": f"blocks.{j}.norm" for j in range(1, 4)})
    return table


#: Reference module path -> our module path, per part (see the module docstring for the table).
REFERENCE_TO_OURS: dict[str, dict[str, str]] = {
    "generator": _generator_module_map(),
    "discriminator": _discriminator_module_map(),
}
#: Our module path -> reference module path, per part (inverse of :data:`REFERENCE_TO_OURS`).
OURS_TO_REFERENCE: dict[str, dict[str, str]] = {
    part: {ours: ref for ref, ours in table.items()} for part, table in REFERENCE_TO_OURS.items()
}


class ReferenceCheckpointError(ValueError):
    """A state dict does not fit the reference MLFF-GAN layout.

    Attributes:
        missing: our keys the checkpoint does not provide (reference names where known).
        unexpected: checkpoint keys that have no counterpart in our model (as found in the file).
        mismatched: ``(key, checkpoint shape, expected shape)`` for tensors of the wrong shape.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


def _check_part(part: str) -> dict[str, str]:
    if part not in REFERENCE_TO_OURS:
        raise ValueError(f"part must be 'generator' or 'discriminator', got {part!r}")
    return REFERENCE_TO_OURS[part]


def _translate(key: str, table: Mapping[str, str]) -> str | None:
    module, _, leaf = key.rpartition(".")
    target = table.get(module)
    return None if target is None else f"{target}.{leaf}"


def reference_to_ours_key(key: str, part: Part = "generator") -> str | None:
    """Our state-dict key for a reference key (``module.`` prefix stripped), or None if unknown."""
    if key.startswith(_DATA_PARALLEL_PREFIX):
        key = key[len(_DATA_PARALLEL_PREFIX) :]
    return _translate(key, _check_part(part))


def ours_to_reference_key(key: str, part: Part = "generator") -> str | None:
    """The reference state-dict key for one of ours, or None if it has no counterpart."""
    _check_part(part)
    return _translate(key, OURS_TO_REFERENCE[part])


def _abbreviate(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def _by_prefix(keys: list[str]) -> str:
    counts = Counter(key.split(".", 1)[0] for key in keys)
    return ", ".join(f"{prefix}: {count}" for prefix, count in sorted(counts.items()))


def _infer_bands(state_dict: Mapping[str, Tensor], part: str) -> int | None:
    probes = (
        [("LSNet.conv1.0.weight", 1, 1), ("HSNet.conv1.0.weight", 1, 1), ("conv5.3.weight", 0, 1)]
        if part == "generator"
        else [("model0.0.weight", 1, 2)]
    )
    for key, dim, divisor in probes:
        tensor = state_dict.get(key)
        if isinstance(tensor, Tensor) and tensor.ndim > dim:
            return int(tensor.shape[dim]) // divisor
    return None


def _expected_shapes(part: str, bands: int) -> dict[str, tuple[int, ...]]:
    # Built on the meta device: shapes only, no memory, no initialisation cost.
    with torch.device("meta"):
        model: nn.Module = MLFFGenerator(bands) if part == "generator" else PatchDiscriminator(bands)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def import_reference_state_dict(
    state_dict: Mapping[str, Tensor], part: Part = "generator", *, bands: int | None = None
) -> dict[str, Tensor]:
    """Rename a reference MLFF-GAN state dict to our names, checking it fits completely.

    The result loads with ``load_state_dict(strict=True)`` into ``MLFFGenerator(bands)`` (default
    arguments) or ``PatchDiscriminator(bands)``. A leading ``module.`` (``nn.DataParallel``) is
    stripped. BatchNorm ``num_batches_tracked`` counters absent from very old checkpoints are filled
    with 0 (they do not affect the outputs); every other tensor must be present with the right shape.

    Args:
        state_dict: reference key -> tensor (e.g. ``torch.load(path, map_location="cpu")``).
        part: which network the state dict belongs to.
        bands: spectral bands of the model; inferred from the first convolution when None.
    Returns:
        A new dict, our key -> the same tensor objects.
    Raises:
        ReferenceCheckpointError: keys missing or unexpected, or shapes that do not match; the message
            lists them (abbreviated beyond a dozen) with counts per top-level prefix.
    """
    table = _check_part(part)
    stripped = {
        (key[len(_DATA_PARALLEL_PREFIX) :] if key.startswith(_DATA_PARALLEL_PREFIX) else key): value
        for key, value in state_dict.items()
    }
    if bands is None:
        bands = _infer_bands(stripped, part)
    if bands is None:
        raise ReferenceCheckpointError(
            f"cannot recognise a reference MLFF-GAN {part} state dict: none of its first-layer keys is "
            f"present; found {len(stripped)} keys ({_by_prefix(list(stripped))}): "
            f"{_abbreviate(list(stripped))}. Pass the {part}'s state dict itself (not a wrapper dict).",
            unexpected=list(stripped),
        )
    expected = _expected_shapes(part, bands)

    converted: dict[str, Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    seen: set[str] = set()
    for key, value in stripped.items():
        ours = _translate(key, table)
        if ours is None or ours not in expected or not isinstance(value, Tensor):
            unexpected.append(key)
            continue
        seen.add(ours)
        shape = tuple(value.shape)
        if shape != expected[ours]:
            mismatched.append((key, shape, expected[ours]))
            continue
        converted[ours] = value
    missing: list[str] = []
    for ours in expected:
        if ours in seen:
            continue
        if ours.endswith(".num_batches_tracked"):
            converted[ours] = torch.zeros((), dtype=torch.long)
            continue
        missing.append(ours_to_reference_key(ours, part) or ours)

    if missing or unexpected or mismatched:
        lines = [f"state dict does not fit the reference MLFF-GAN {part} layout ({bands} bands):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}; {_by_prefix(missing)}): {_abbreviate(missing)}")
        if unexpected:
            lines.append(
                f"  unexpected keys ({len(unexpected)}; {_by_prefix(unexpected)}): {_abbreviate(unexpected)}"
            )
        if mismatched:
            shown = [f"{key} {got} (expected {want})" for key, got, want in mismatched]
            lines.append(f"  shape mismatches ({len(mismatched)}): {_abbreviate(shown)}")
        lines.append(
            "  The authors' released pretrained file is known not to match their public code (two separate "
            "coarse encoders, a different residual block); only checkpoints of the public architecture load."
        )
        raise ReferenceCheckpointError(
            "\n".join(lines), missing=missing, unexpected=unexpected, mismatched=mismatched
        )
    return converted


def export_reference_state_dict(
    state_dict: Mapping[str, Tensor], part: Part = "generator"
) -> dict[str, Tensor]:
    """Rename our state dict to the reference names (inverse of :func:`import_reference_state_dict`).

    Args:
        state_dict: our key -> tensor, e.g. ``MLFFGenerator(6).state_dict()`` (default arguments; a model
            built with ``attention=False`` has no attention tensors and other channels give other shapes).
        part: which network the state dict belongs to.
    Returns:
        A new dict, reference key -> the same tensor objects.
    Raises:
        ReferenceCheckpointError: a key has no reference counterpart.
    """
    _check_part(part)
    converted: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        ref = ours_to_reference_key(key, part)
        if ref is None:
            unexpected.append(key)
        else:
            converted[ref] = value
    if unexpected:
        raise ReferenceCheckpointError(
            f"keys without a reference MLFF-GAN {part} counterpart ({len(unexpected)}): "
            f"{_abbreviate(unexpected)}",
            unexpected=unexpected,
        )
    return converted
