"""Self-describing, safe checkpoints: everything `stfusion predict` needs travels inside the file.

A checkpoint file is a ``torch.save`` dict with ``format`` = :data:`FORMAT` holding only tensors and
plain data (numbers, strings, lists, dicts):

- ``model``: ``{"name": "mlffgan", "bands": int, "kwargs": {...}}``, enough to rebuild the generator;
- ``generator`` (state dict); optionally ``discriminator``, ``optimizer_g``, ``optimizer_d``;
- ``band_names``, ``scale`` (reflectance per stored unit of the training data), ``coarse_factor``
  (degradation factor);
- ``config`` (the training configuration as a dict), ``epoch`` (completed epochs), ``best_val``,
  ``history`` (list of per-epoch dicts), ``versions`` (stfusion, torch, python).

Loading never runs code from the file: :func:`load` unpickles with ``weights_only=True`` (PyTorch's
restricted unpickler: tensors, containers and primitive types only), so a checkpoint holding anything
else (a pickled object whose unpickling would run a command or write a file) is refused with one line
and nothing from it runs. Keys and model arguments are validated before use. Writes are atomic
(temporary file, then rename), so an interrupted or failed save keeps the previous checkpoint.
"""

from __future__ import annotations

import os
import pickle
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from stfusion import __version__, formats, raster
from stfusion.atomic import OutputError, atomic_path, output_error
from stfusion.errors import InputError
from stfusion.models import MODELS
from stfusion.transforms import REFLECTANCE_SCALE

#: band names that name nothing (written for bands without a description)
_GENERIC = re.compile(r"band\d+", re.IGNORECASE)

FORMAT = "stfusion-checkpoint/1"

#: Keys every checkpoint must hold, and the type of their value.
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "generator": dict,
    "coarse_factor": int,
}


#: Classes the restricted unpickler may build, beyond tensors and plain containers: only what stfusion
#: itself has ever written.
SAFE_GLOBALS: list[Any] = [torch.torch_version.TorchVersion]


@dataclass
class ModelSpec:
    """What is needed to rebuild a generator: builder name, band count and keyword arguments."""

    name: str
    bands: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """A new generator with these arguments; InputError for an unknown name or bad arguments."""
        if self.name not in MODELS:
            raise InputError(f"unknown model {self.name!r} in checkpoint; known: {', '.join(MODELS)}")
        try:
            return MODELS[self.name](self.bands, **self.kwargs)
        except (TypeError, ValueError) as exc:
            raise InputError(f"model {self.name!r}: bad model arguments {self.kwargs} ({exc})") from exc

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bands": self.bands, "kwargs": dict(self.kwargs)}


@dataclass
class Checkpoint:
    """A checkpoint in memory (see the module docstring for each field).

    ``path`` is where it was loaded from (for messages), None for a new one.
    """

    model: ModelSpec
    generator: dict[str, torch.Tensor]
    coarse_factor: int
    band_names: list[str] = field(default_factory=list)
    scale: float = REFLECTANCE_SCALE
    config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    best_val: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    discriminator: dict[str, torch.Tensor] | None = None
    optimizer_g: dict[str, Any] | None = None
    optimizer_d: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def bands(self) -> int:
        return self.model.bands

    def where(self) -> str:
        return str(self.path) if self.path is not None else "checkpoint"

    def check_bands(
        self, bands: int, source: str | os.PathLike[str], names: Sequence[str | None] = ()
    ) -> None:
        """InputError unless the checkpoint's model takes ``bands`` bands (those of ``source``), and, when
        ``names`` (the scene's band descriptions) share names with the checkpoint's, in its order."""
        trained = [name.strip().lower() for name in self.band_names if name and not _GENERIC.fullmatch(name)]
        named = len(trained) == self.bands
        hint = f"; it was trained on {', '.join(trained)}: select them with --bands {','.join(trained)}"
        if bands != self.bands:
            raise InputError(
                f"{self.where()}: checkpoint is for {self.bands} bands, but {source} has {bands}"
                + (hint if named else "")
            )
        if named and raster.crossed_bands(names, trained):
            given = [(name or "").strip().lower() or "?" for name in names]
            raise InputError(
                f"{self.where()}: the bands of {source} are {', '.join(given)}, not the checkpoint's in its "
                f"order{hint}"
            )

    def check_bands_of_scene(
        self, bands: int, source: str | os.PathLike[str], names: Sequence[str | None] = ()
    ) -> None:
        """Like :meth:`check_bands`, but a one-band model (applied band by band) fits any scene."""
        if self.bands != 1:
            self.check_bands(bands, source, names)

    def training_files(self) -> set[str]:
        """Names of the images the model was trained (or selected) on, as its training run recorded."""
        files = (self.config.get("data") or {}).get("files") or []
        return {str(name) for name in files}

    def has_seen(self, case_files: Sequence[Path]) -> bool:
        """Whether a case's truth or target image was among the training images (so scoring it is not a
        fair test of this model)."""
        seen = self.training_files()
        return any(Path(path).name in seen for path in case_files)

    def has_training_state(self) -> bool:
        """Whether the checkpoint can resume training (discriminator and both optimisers saved)."""
        return None not in (self.discriminator, self.optimizer_g, self.optimizer_d)

    def build_generator(self) -> nn.Module:
        """The generator with the saved weights, in eval mode, on CPU; InputError if they do not fit."""
        try:
            generator = self.model.build()
        except InputError as exc:
            raise InputError(f"{self.where()}: {exc}") from exc
        try:
            generator.load_state_dict(self.generator)
        except (RuntimeError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{self.where()}: generator weights do not fit the model ({first})") from exc
        return generator.eval()

    def to_payload(self) -> dict[str, Any]:
        """The plain dict written to disk."""
        payload: dict[str, Any] = {
            "format": FORMAT,
            "versions": self.versions or versions(),
            "model": self.model.to_dict(),
            "generator": self.generator,
            "band_names": list(self.band_names),
            "scale": float(self.scale),
            "coarse_factor": int(self.coarse_factor),
            "config": dict(self.config),
            "epoch": int(self.epoch),
            "best_val": self.best_val,
            "history": list(self.history),
        }
        for key in ("discriminator", "optimizer_g", "optimizer_d"):
            value = getattr(self, key)
            if value is not None:
                payload[key] = value
        return payload

    @classmethod
    def from_payload(cls, content: Any, path: Path | None = None) -> Checkpoint:
        """Validate a loaded dict; InputError naming the file and the missing or bad key."""
        where = str(path) if path is not None else "checkpoint"
        if not isinstance(content, dict) or content.get("format") != FORMAT:
            raise InputError(
                f"{where}: not an stfusion checkpoint (for a reference MLFF-GAN .pth use "
                "`stfusion import-reference`)"
            )
        for key, kind in REQUIRED_KEYS.items():
            if key not in content:
                raise InputError(f"{where}: checkpoint has no {key!r} entry; it is damaged or not ours")
            if not isinstance(content[key], kind) or isinstance(content[key], bool):
                raise InputError(f"{where}: checkpoint entry {key!r} has the wrong type")
        model = content["model"]
        name, bands, kwargs = model.get("name"), model.get("bands"), model.get("kwargs", {})
        if not isinstance(name, str) or name not in MODELS:
            raise InputError(f"{where}: checkpoint model name {name!r} is not one of {', '.join(MODELS)}")
        if not isinstance(bands, int) or isinstance(bands, bool) or bands < 1:
            raise InputError(f"{where}: checkpoint model 'bands' must be a positive integer, got {bands!r}")
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise InputError(f"{where}: checkpoint model 'kwargs' must be a dict of named arguments")
        if not all(isinstance(v, torch.Tensor) for v in content["generator"].values()):
            raise InputError(f"{where}: checkpoint entry 'generator' must hold tensors only")
        if content["coarse_factor"] < 1:
            raise InputError(
                f"{where}: checkpoint coarse_factor must be >= 1, got {content['coarse_factor']}"
            )
        scale = content.get("scale", REFLECTANCE_SCALE)
        if not isinstance(scale, int | float) or not scale > 0:
            raise InputError(f"{where}: checkpoint 'scale' must be a positive number, got {scale!r}")
        names = content.get("band_names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"{where}: checkpoint 'band_names' must be a list of strings")
        optional: dict[str, Any] = {}
        for key in ("discriminator", "optimizer_g", "optimizer_d"):
            value = content.get(key)
            if value is not None and not isinstance(value, dict):
                raise InputError(f"{where}: checkpoint entry {key!r} has the wrong type")
            optional[key] = value
        return cls(
            model=ModelSpec(name=name, bands=bands, kwargs=dict(kwargs)),
            generator=content["generator"],
            coarse_factor=int(content["coarse_factor"]),
            band_names=list(names),
            scale=float(scale),
            path=path,
            **_run_record(content, where),
            **optional,
        )


def _run_record(content: dict[str, Any], where: str) -> dict[str, Any]:
    """The optional training record (config, epoch, best_val, history, versions), type-checked:
    InputError naming the file and the entry when one has the wrong type."""

    def bad(key: str, expected: str) -> InputError:
        return InputError(
            f"{where}: checkpoint entry {key!r} must be {expected}, got {content.get(key)!r:.60}"
        )

    config = content.get("config") or {}
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise bad("config", "a dict with string keys")
    data = config.get("data")
    if data is not None and not (isinstance(data, dict) and isinstance(data.get("files") or [], list)):
        raise bad("config", "a dict whose 'data' entry is a dict with a list of 'files'")
    epoch = content.get("epoch") or 0
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise bad("epoch", "a non-negative integer")
    best_val = content.get("best_val")
    if best_val is not None and (not isinstance(best_val, int | float) or isinstance(best_val, bool)):
        raise bad("best_val", "a number or None")
    history = content.get("history") or []
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        raise bad("history", "a list of dicts")
    found = content.get("versions") or {}
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        raise bad("versions", "a dict of version strings")
    return {
        "config": dict(config),
        "epoch": epoch,
        "best_val": None if best_val is None else float(best_val),
        "history": list(history),
        "versions": {str(k): v for k, v in found.items()},
    }


def versions() -> dict[str, str]:
    """Package versions recorded in every checkpoint."""
    return {"stfusion": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def save(path: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Write a checkpoint atomically to ``path`` (the previous file stays until the new one is complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            torch.save(checkpoint.to_payload(), tmp)
    except OutputError:
        raise
    except OSError as exc:
        raise output_error(path, exc) from exc
    except RuntimeError as exc:  # torch's zip writer reports a failed write (disk full, size limit) so
        raise OutputError(
            f"{path}: the checkpoint could not be written ({_first_line(exc)}); the previous one is kept"
        ) from exc
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_magic(path: Path) -> None:
    """InputError unless the file starts like a PyTorch file: a zip archive (``torch.save``) or a
    pickle of protocol 2 or later (the legacy format); a GeoTIFF or other file is named as such."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the checkpoint ({exc.strerror})") from exc
    if formats.is_torch_file(head):
        return
    kind = "a GeoTIFF" if formats.is_tiff(head) else "not a PyTorch file"
    raise InputError(f"{path}: not a checkpoint ({kind}); give a .ckpt written by `stfusion train`")


def load(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint, running no code from it; InputError naming the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise InputError(f"{path}: is a folder, expected a checkpoint file")
    _check_magic(path)
    try:
        # Checkpoints of stfusion 0.1.0 recorded torch's version string as a TorchVersion (a str
        # subclass); it is the one class besides tensors and containers that we ever wrote.
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            content = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals it does not know: the file wants to build arbitrary objects
        raise InputError(
            f"{path}: refused: the checkpoint holds Python objects other than tensors and plain data, "
            "and loading it could run code; stfusion writes none (re-export it with `torch.save` of "
            "tensors only, or use a checkpoint written by stfusion)"
        ) from exc
    except Exception as exc:  # torch raises many types for damaged files (RuntimeError, EOFError, ...)
        raise InputError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {type(exc).__name__})"
        ) from exc
    return Checkpoint.from_payload(content, path)


def import_reference(
    generator_path: str | os.PathLike[str],
    *,
    bands: int,
    coarse_factor: int = 16,
    discriminator_path: str | os.PathLike[str] | None = None,
) -> Checkpoint:
    """A checkpoint from the MLFF-GAN authors' ``.pth`` state dict(s) (tensors only, loaded safely).

    The reference key names are mapped onto ours (:func:`stfusion.models.import_reference_state_dict`);
    InputError naming the file when it is unreadable or does not fit a ``bands``-band model.
    """
    from stfusion.models import PatchDiscriminator, ReferenceCheckpointError, import_reference_state_dict

    if bands < 1 or coarse_factor < 1:
        raise InputError(f"bands ({bands}) and coarse factor ({coarse_factor}) must be >= 1")
    spec = ModelSpec(name="mlffgan", bands=bands, kwargs={})
    states: dict[str, dict[str, torch.Tensor]] = {}
    parts: list[tuple[Literal["generator", "discriminator"], Path, nn.Module]] = [
        ("generator", Path(generator_path), spec.build())
    ]
    if discriminator_path is not None:
        parts.append(("discriminator", Path(discriminator_path), PatchDiscriminator(bands)))
    for part, path, module in parts:
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise InputError(
                f"{path}: refused: holds Python objects other than tensors (could run code)"
            ) from exc
        except Exception as exc:
            raise InputError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__})") from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            module.load_state_dict(import_reference_state_dict(state, part=part), strict=True)
        except (ReferenceCheckpointError, RuntimeError, TypeError, AttributeError) as exc:
            raise InputError(f"{path}: does not fit MLFF-GAN {part} with {bands} bands: {exc}") from exc
        states[part] = module.state_dict()
    return Checkpoint(
        model=spec,
        generator=states["generator"],
        discriminator=states.get("discriminator"),
        coarse_factor=coarse_factor,
        band_names=[f"band{i + 1}" for i in range(bands)],
        config={"imported_from": str(generator_path)},
    )
