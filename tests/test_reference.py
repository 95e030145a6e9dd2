"""Tests of the reference-checkpoint key mapping against the reference's key list and shapes.

``tests/data/official-state-dict.txt`` is a copy of the reference implementation's state-dict keys and
shapes (6 bands), as listed in the project spec.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from stfusion.models import MLFFGenerator, PatchDiscriminator
from stfusion.models.reference import (
    OURS_TO_REFERENCE,
    REFERENCE_TO_OURS,
    ReferenceCheckpointError,
    export_reference_state_dict,
    import_reference_state_dict,
    ours_to_reference_key,
    reference_to_ours_key,
)

KEY_LIST = Path(__file__).parent / "data" / "official-state-dict.txt"
PART = {"G": "generator", "D": "discriminator"}


def _reference_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    shapes: dict[str, dict[str, tuple[int, ...]]] = {"generator": {}, "discriminator": {}}
    counts: dict[str, int] = {}
    part = ""
    for line in KEY_LIST.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if not line.startswith(" "):
            tag, count, _ = line.split()
            part = PART[tag]
            counts[part] = int(count)
            continue
        key, shape = line.strip().split(" ", 1)
        shapes[part][key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    assert {name: len(value) for name, value in shapes.items()} == counts
    return shapes


SHAPES = _reference_shapes()


def _fake_reference(part: str, seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    fake: dict[str, Tensor] = {}
    for key, shape in SHAPES[part].items():
        if key.endswith("num_batches_tracked"):
            fake[key] = torch.randint(0, 1000, shape, generator=generator)
        elif key.endswith("running_var"):
            fake[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            fake[key] = torch.randn(shape, generator=generator)
    return fake


def _model(part: str) -> torch.nn.Module:
    return MLFFGenerator(6) if part == "generator" else PatchDiscriminator(6)


def test_key_list_counts() -> None:
    assert len(SHAPES["generator"]) == 201
    assert len(SHAPES["discriminator"]) == 25


@pytest.mark.parametrize("part", ["generator", "discriminator"])
def test_import_covers_every_reference_tensor(part: str) -> None:
    fake = _fake_reference(part)
    converted = import_reference_state_dict(fake, part)  # type: ignore[arg-type]
    assert len(converted) == len(fake)
    model = _model(part)
    model.load_state_dict(converted, strict=True)
    ours = model.state_dict()
    for key, value in fake.items():
        mapped = reference_to_ours_key(key, part)  # type: ignore[arg-type]
        assert mapped is not None, key
        assert torch.equal(ours[mapped], value), key


@pytest.mark.parametrize("part", ["generator", "discriminator"])
def test_export_reproduces_reference_names_and_shapes(part: str) -> None:
    exported = export_reference_state_dict(_model(part).state_dict(), part)  # type: ignore[arg-type]
    assert {key: tuple(value.shape) for key, value in exported.items()} == SHAPES[part]


@pytest.mark.parametrize("part", ["generator", "discriminator"])
def test_round_trip_and_tables_are_inverse(part: str) -> None:
    forward, backward = REFERENCE_TO_OURS[part], OURS_TO_REFERENCE[part]
    assert len(forward) == len(backward)
    assert all(backward[ours] == ref for ref, ours in forward.items())
    for key in SHAPES[part]:
        ours = reference_to_ours_key(key, part)  # type: ignore[arg-type]
        assert ours is not None
        assert ours_to_reference_key(ours, part) == key  # type: ignore[arg-type]


def test_our_names_are_domain_names() -> None:
    tops = {key.split(".", 1)[0] for key in MLFFGenerator(6).state_dict()}
    assert tops == {"coarse_encoder", "fine_encoder", "fusions", "decoder"}


def test_data_parallel_prefix_is_stripped() -> None:
    fake = {f"module.{key}": value for key, value in _fake_reference("generator").items()}
    model = MLFFGenerator(6)
    model.load_state_dict(import_reference_state_dict(fake), strict=True)


def test_loaded_reference_weights_run() -> None:
    model = MLFFGenerator(6)
    fake = _fake_reference("generator")
    for key, value in fake.items():
        if key.endswith(".weight") and value.ndim == 4:
            fake[key] = value * 0.05  # keep activations moderate
    model.load_state_dict(import_reference_state_dict(fake), strict=True)
    model.eval()
    x = torch.rand(1, 6, 32, 32)
    with torch.inference_mode():
        assert torch.isfinite(model(x, x, x)).all()


def test_bands_are_inferred() -> None:
    source = MLFFGenerator(4)
    exported = export_reference_state_dict(source.state_dict())
    assert exported["LSNet.conv1.0.weight"].shape == (16, 4, 7, 7)
    target = MLFFGenerator(4)
    target.load_state_dict(import_reference_state_dict(exported), strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_missing_num_batches_tracked_is_filled() -> None:
    fake = {k: v for k, v in _fake_reference("discriminator").items() if "num_batches_tracked" not in k}
    PatchDiscriminator(6).load_state_dict(import_reference_state_dict(fake, "discriminator"), strict=True)


def test_extra_and_missing_keys_raise_with_their_names() -> None:
    fake = _fake_reference("generator")
    del fake["HSNet.conv3.0.bias"]
    fake["LSNet2.conv1.0.weight"] = torch.zeros(16, 6, 7, 7)
    with pytest.raises(ReferenceCheckpointError) as info:
        import_reference_state_dict(fake)
    message = str(info.value)
    assert "HSNet.conv3.0.bias" in message
    assert "LSNet2.conv1.0.weight" in message
    assert "missing keys (1" in message
    assert "unexpected keys (1" in message
    assert info.value.missing == ["HSNet.conv3.0.bias"]
    assert info.value.unexpected == ["LSNet2.conv1.0.weight"]
    assert isinstance(info.value, ValueError)


def test_two_coarse_encoder_checkpoint_is_reported_by_prefix() -> None:
    # The authors' released file has two separate coarse encoders (spec section 7): emulate its shape
    # of failure by duplicating LSNet under two other names.
    fake = _fake_reference("generator")
    for key in [k for k in fake if k.startswith("LSNet.")]:
        value = fake.pop(key)
        fake[key.replace("LSNet.", "LSNet1.", 1)] = value
        fake[key.replace("LSNet.", "LSNet2.", 1)] = value.clone()
    with pytest.raises(ReferenceCheckpointError) as info:
        import_reference_state_dict(fake)
    message = str(info.value)
    assert "missing keys (30; LSNet: 30)" in message
    assert "unexpected keys (60; LSNet1: 30, LSNet2: 30)" in message
    assert "(+18 more)" in message  # abbreviated after a dozen names
    assert len(info.value.missing) == 30
    assert len(info.value.unexpected) == 60


def test_shape_mismatch_raises() -> None:
    fake = _fake_reference("generator")
    fake["conv5.3.bias"] = torch.zeros(7)
    with pytest.raises(ReferenceCheckpointError, match=r"conv5\.3\.bias \(7,\) \(expected \(6,\)\)"):
        import_reference_state_dict(fake)


def test_unrecognisable_dict_raises() -> None:
    with pytest.raises(ReferenceCheckpointError, match="cannot recognise"):
        import_reference_state_dict({"state_dict": torch.zeros(1), "epoch": torch.zeros(1)})


def test_export_rejects_keys_without_counterpart() -> None:
    with pytest.raises(ReferenceCheckpointError, match="extra"):
        export_reference_state_dict({"extra.weight": torch.zeros(1)})


def test_bad_part_raises() -> None:
    with pytest.raises(ValueError, match="part"):
        import_reference_state_dict({}, "encoder")  # type: ignore[arg-type]
