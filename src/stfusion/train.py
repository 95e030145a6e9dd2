"""The MLFF-GAN training loop, readable top to bottom.

Per batch: (optional date swap) -> one discriminator step on the detached fake -> one generator step
with L1 + MS-SSIM + spectral cosine + weighted LSGAN terms (spec section 4). After each epoch the
generator predicts every validation scene (tiled, exactly as `stfusion predict` does) and its MSE on
valid pixels selects ``best.ckpt``; ``last.ckpt`` (models, optimisers, history) is written atomically
every epoch and ``--resume`` continues from it. All randomness of an epoch derives from (seed, epoch),
so an interrupted and resumed run reaches the same weights as an uninterrupted one.

The run folder gets: ``config.json``, ``last.ckpt``, ``best.ckpt``, ``history.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader

from stfusion import distributed
from stfusion.atomic import atomic_path
from stfusion.checkpoint import Checkpoint, ModelSpec
from stfusion.checkpoint import load as load_checkpoint
from stfusion.checkpoint import save as save_checkpoint
from stfusion.dataset import (
    CaseArrays,
    PatchDataset,
    flip_rotate,
    load_case,
    load_cases,
    split_bands,
    split_holdout,
    swap_dates,
)
from stfusion.errors import StfusionError
from stfusion.inputs import ReadOptions
from stfusion.losses import (
    GeneratorLossWeights,
    generator_loss,
    lsgan_discriminator_loss,
    ms_ssim_min_size,
    ms_ssim_scales_for,
)
from stfusion.models import PatchDiscriminator
from stfusion.models.batchnorm import convert_batchnorm
from stfusion.predict import TileOptions, generator_batch_predictor, predict_tiled
from stfusion.raster import RESAMPLING_METHODS
from stfusion.scenes import FusionCase

log = logging.getLogger(__name__)


class TrainingError(StfusionError):
    """Training cannot go on (non-finite loss, incompatible resume); the message says what to do."""


#: Smallest training patch side: the generator halves it four times (pads to a multiple of 16).
MIN_PATCH = 16
#: (option, type, lowest value) of the numeric options; _POSITIVE must also be > 0.
_NUMBERS: tuple[tuple[str, type, float], ...] = (
    ("epochs", int, 1),
    ("batch_size", int, 1),
    ("lr", float, 0.0),
    ("patch_size", int, MIN_PATCH),
    ("patch_stride", int, 1),
    ("random_crops", int, 0),
    ("coarse_factor", int, 1),
    ("seed", int, 0),
    ("num_workers", int, 0),
    ("min_overlap", float, 0.0),
)
_POSITIVE = frozenset({"lr"})
_FLAGS = (
    "adain",
    "attention",
    "two_input",
    "date_swap",
    "flips",
    "residual",
    "zero_mean_correction",
    "per_band",
    "amp",
    "channels_last",
    "ms_ssim_reference_bug",
)


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json`` in the run folder.

    Defaults are the paper's (spec section 4), except ``coarse_factor`` which depends on the data
    (16 for full-resolution CIA/LGC, 8 for the 50 m built-in sample).
    """

    save_dir: str
    epochs: int = 200
    batch_size: int = 4
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    patch_size: int = 256
    patch_stride: int = 200
    random_crops: int = 0  # > 0: this many seeded random crops per case instead of the grid
    coarse_factor: int = 16
    seed: int = 2020
    adain: bool = True
    attention: bool = True
    two_input: bool = False
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    dropout: float = 0.5
    date_swap: bool = True
    flips: bool = False
    residual: bool = False  # ours, not the paper's: learn F2 - (F1 + C2 - C1), see models/residual.py
    zero_mean_correction: bool = False  # ours, residual only: zero-mean correction per band and tile
    # ours: a one-band network trained on every band of every case (cases may differ in band count);
    # it predicts any number of bands, band by band
    per_band: bool = False
    # ours: > 0 validates on the bottom fraction of the rows of every training case (never trained
    # on) instead of the val split
    val_holdout: float = 0.0
    weights: GeneratorLossWeights = field(default_factory=GeneratorLossWeights)
    ms_ssim_reference_bug: bool = False
    ms_ssim_scales: int | None = None  # None: 5 (the paper's) when patches allow, else as many as fit
    val_tile: tuple[int, int] = (1024, 768)
    val_overlap: tuple[int, int] = (64, 64)
    device: str = "cpu"
    amp: bool = False  # bf16 autocast, CUDA only
    channels_last: bool = True  # NHWC layout: same mathematics, faster convolutions (see README)
    num_workers: int = 0
    fine_scale: float | None = None  # None: GDAL tags or automatic, per file (stfusion.raster)
    coarse_scale: float | None = None
    # None: the file's GDAL tags, else 0; reflectance = value x scale + offset (needs the scale above)
    fine_offset: float | None = None
    coarse_offset: float | None = None
    fine_bands: tuple[str, ...] | None = None  # band selection (numbers or descriptions), None = all
    coarse_bands: tuple[str, ...] | None = None
    resampling: str = "bilinear"  # for coarse images (and masks) not on the fine grid
    min_overlap: float = 0.5  # fraction of the fine grid a coarse footprint must cover

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> TrainConfig:
        """A configuration from plain data (a JSON file); ValueError naming the first bad key."""
        if not isinstance(values, dict):
            raise ValueError(
                f"a training configuration is a JSON object of options, got {type(values).__name__}"
            )
        values = dict(values)
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            per_image = [
                f"{k} (give fine_{k} and coarse_{k})"
                for k in unknown
                if f"fine_{k}" in cls.__dataclass_fields__
            ]
            others = [k for k in unknown if f"fine_{k}" not in cls.__dataclass_fields__]
            raise ValueError(f"unknown training option(s): {', '.join(others + per_image)}")
        if isinstance(values.get("weights"), dict):
            try:
                values["weights"] = GeneratorLossWeights(**values["weights"])
            except TypeError as exc:
                raise ValueError(f"weights: {exc}") from None
        for key in ("betas", "channels", "val_tile", "val_overlap", "fine_bands", "coarse_bands"):
            if isinstance(values.get(key), list | tuple):
                values[key] = tuple(values[key])
        for key in ("fine_bands", "coarse_bands"):  # JSON band numbers are the command line's "3"
            if isinstance(values.get(key), tuple):
                values[key] = tuple(
                    str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values[key]
                )
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """ValueError naming the option when a value has the wrong type or is out of range."""
        for name, kind, low in _NUMBERS:
            value: Any = getattr(self, name)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, name, value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{name}: expected {kind.__name__}, got {value!r}")
            number = float(cast(float, value))
            if not math.isfinite(number) or number < low or (name in _POSITIVE and number <= 0):
                bound = "> 0" if name in _POSITIVE else f">= {low}"
                raise ValueError(f"{name}: {value} is out of range (must be {bound})")
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if not 0.0 <= self.val_holdout < 1.0:
            raise ValueError(f"val_holdout: {self.val_holdout} must be within [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: {self.dropout} must be within [0, 1)")
        if self.patch_size < MIN_PATCH:
            raise ValueError(f"patch_size: {self.patch_size} is too small; the network needs >= {MIN_PATCH}")
        if not isinstance(self.save_dir, str) or not self.save_dir:
            raise ValueError("save_dir: expected a folder name")
        for name in ("val_tile", "val_overlap", "betas", "channels"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, int | float) for v in value):
                raise ValueError(f"{name}: expected a list of numbers, got {value!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas: {self.betas} must be two numbers within [0, 1)")
        if len(self.channels) != 5 or not all(isinstance(c, int) and c >= 1 for c in self.channels):
            raise ValueError(f"channels: {self.channels} must be five positive integers (one per level)")
        for name in ("val_tile", "val_overlap"):
            value = getattr(self, name)
            if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{name}: {list(value)} must be two integers (rows, columns)")
        if min(self.val_tile) < 16 or min(self.val_overlap) < 0:
            raise ValueError(
                f"val_tile/val_overlap: tiles need >= 16 px and overlaps >= 0, got {self.val_tile}"
            )
        if self.resampling not in RESAMPLING_METHODS:
            raise ValueError(f"resampling: choose one of {', '.join(RESAMPLING_METHODS)}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device: expected a device name such as cpu or cuda, got {self.device!r}")
        for name in ("fine_bands", "coarse_bands"):
            bands = getattr(self, name)
            if bands is not None and not (
                isinstance(bands, tuple) and bands and all(isinstance(b, str) and b.strip() for b in bands)
            ):
                raise ValueError(f"{name}: expected a list of band numbers or names, got {bands!r}")
        for name in ("fine_scale", "coarse_scale"):
            scale = getattr(self, name)
            if scale is not None and (
                not isinstance(scale, int | float) or isinstance(scale, bool) or not 0 < scale < math.inf
            ):
                raise ValueError(
                    f"{name}: expected a positive number (reflectance per stored unit), got {scale!r}"
                )
        for images in ("fine", "coarse"):
            offset = getattr(self, f"{images}_offset")
            if offset is None:
                continue
            if not isinstance(offset, int | float) or isinstance(offset, bool) or not math.isfinite(offset):
                raise ValueError(
                    f"{images}_offset: expected a finite number (reflectance added after the scale), got "
                    f"{offset!r}"
                )
            if getattr(self, f"{images}_scale") is None:
                raise ValueError(
                    f"{images}_offset: {offset} needs {images}_scale too, in the config or on the command "
                    f"line (--scale or --{images}-scale; reflectance = value x scale + offset), e.g. scale "
                    "2.75e-5 and offset -0.2 for Landsat Collection 2 Level-2"
                )
        if not isinstance(self.weights, GeneratorLossWeights):
            raise ValueError(f"weights: expected an object of loss weights, got {self.weights!r}")
        for term, weight in asdict(self.weights).items():
            if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0 <= weight < math.inf:
                raise ValueError(f"weights.{term}: expected a number >= 0, got {weight!r}")

    def read_options(self) -> ReadOptions:
        """How the training cases' files become pixels."""
        return ReadOptions(
            resampling=self.resampling,
            min_overlap=self.min_overlap,
            fine_scale=self.fine_scale,
            coarse_scale=self.coarse_scale,
            fine_offset=self.fine_offset,
            coarse_offset=self.coarse_offset,
            fine_bands=self.fine_bands,
            coarse_bands=self.coarse_bands,
        )

    def model_spec(self, bands: int) -> ModelSpec:
        kwargs = {
            "adain": self.adain,
            "attention": self.attention,
            "two_input": self.two_input,
            "channels": list(self.channels),
            "dropout": self.dropout,
        }
        if self.residual and self.zero_mean_correction:
            kwargs["zero_mean"] = True
        return ModelSpec(name="mlffgan-residual" if self.residual else "mlffgan", bands=bands, kwargs=kwargs)


@dataclass
class TrainResult:
    """Paths of the run's outputs and its per-epoch history."""

    save_dir: Path
    best: Path
    last: Path
    history: list[dict[str, float]]


StepCallback = Callable[[int, dict[str, float]], None]
EpochCallback = Callable[[dict[str, float]], None]


def gan_step(
    generator: torch.nn.Module,
    discriminator: torch.nn.Module,
    optimizer_g: torch.optim.Optimizer,
    optimizer_d: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    config: TrainConfig,
    *,
    context: distributed.Context | None = None,
    loss_scale: float = 1.0,
) -> dict[str, float]:
    """One D step then one G step on a batch of (B, C, P, P) tensors; returns the named losses.

    Data-parallel (``context`` with several ranks): ``batch`` is this rank's share of the global
    batch, each loss is multiplied by ``loss_scale`` (world size x share / global batch) before
    backward, and gradients are averaged over ranks before each optimiser step, so the update equals
    one process's update on the global batch. The returned losses are this rank's, unscaled.
    """
    context = context or distributed.Context(device=config.device)
    device = torch.device(context.device)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    coarse_t1, fine_t1, coarse_t2, fine_t2 = (
        batch[k].to(device, non_blocking=True).contiguous(memory_format=layout)
        for k in ("coarse_t1", "fine_t1", "coarse_t2", "fine_t2")
    )
    valid = batch["valid"].to(device, non_blocking=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")
    with autocast:
        fake = generator(
            coarse_t1=None if config.two_input else coarse_t1, fine_t1=fine_t1, coarse_t2=coarse_t2
        )

    # The discriminator judges only valid pixels: invalid ones (zero in every input and in the truth)
    # show it the truth, so it cannot tell real from fake by them (identity when all pixels are valid).
    shown = torch.where(valid, fake, fine_t2.to(fake.dtype))

    optimizer_d.zero_grad(set_to_none=True)
    with autocast:
        d_loss = lsgan_discriminator_loss(
            discriminator(fine_t2, coarse_t2), discriminator(shown.detach(), coarse_t2)
        )
    (d_loss * loss_scale).backward()
    distributed.average_gradients(discriminator, context)
    optimizer_d.step()

    optimizer_g.zero_grad(set_to_none=True)
    with autocast:
        d_fake = discriminator(shown, coarse_t2)
    total, parts = generator_loss(
        fake.float(),
        fine_t2,
        d_fake.float(),
        config.weights,
        valid=valid,
        reference_bug=config.ms_ssim_reference_bug,
        ms_ssim_scales=config.ms_ssim_scales or ms_ssim_scales_for(min(fine_t2.shape[-2:])),
    )
    (total * loss_scale).backward()
    distributed.average_gradients(generator, context)
    optimizer_g.step()
    losses = {"d_loss": float(d_loss.detach()), "g_loss": float(total.detach())}
    losses.update({f"g_{name}": float(value) for name, value in parts.items()})
    return losses


def validation_mse(
    generator: torch.nn.Module,
    cases: Sequence[CaseArrays],
    config: TrainConfig,
    *,
    device: str | torch.device | None = None,
) -> float:
    """Mean over validation cases of the MSE on valid pixels of the whole-scene prediction."""
    device = device if device is not None else config.device
    # channels_last off: it would convert the training model's parameters in place
    amp = config.amp and torch.device(device).type == "cuda"  # fit says once when it cannot apply
    predictor = generator_batch_predictor(generator, device=device, amp=amp, channels_last=False)
    options = TileOptions(tile=config.val_tile, overlap=config.val_overlap, batch_size=1)
    errors = []
    for case in cases:
        invalid = ~case.valid[None]
        inputs = [np.where(invalid, np.nan, x) for x in (case.coarse_t1, case.fine_t1, case.coarse_t2)]
        prediction = predict_tiled(predictor, *inputs, options=options)
        diff = (prediction - case.fine_t2)[:, case.valid]
        errors.append(float(np.mean(diff.astype(np.float64) ** 2)))
    return float(np.mean(errors))


#: Configuration fields that may change when a run is resumed: where and how it runs, not what it learns.
RESUMABLE_CHANGES: frozenset[str] = frozenset(
    {"epochs", "save_dir", "device", "amp", "num_workers", "channels_last", "val_tile", "val_overlap"}
)


def check_resumable(state: Checkpoint, config: TrainConfig, spec: ModelSpec, data: dict[str, Any]) -> None:
    """TrainingError unless ``state`` (a last.ckpt) can continue the run ``config`` describes."""
    where = state.where()
    if not state.has_training_state():
        raise TrainingError(
            f"{where}: holds no optimiser state (a best.ckpt or an imported model?), so training cannot "
            "resume from it; start a new run with another --save-dir"
        )
    saved = dict(state.config)
    current = {**config.to_dict(), "data": data}
    changed = sorted(
        key
        for key in set(saved) | set(current)
        if key not in RESUMABLE_CHANGES and _plain(saved.get(key)) != _plain(current.get(key))
    )
    if state.model.to_dict() != spec.to_dict() and "model" not in changed:
        changed.append("model arguments")
    if changed:
        details = ", ".join(f"{k} ({_plain(saved.get(k))} -> {_plain(current.get(k))})" for k in changed[:6])
        raise TrainingError(
            f"{where}: --resume continues the run as it was started, but these differ: {details}; "
            "only --epochs may grow. Drop the changed options, or start a new run in another --save-dir "
            "(or pass --overwrite to replace this one)"
        )
    if config.epochs < state.epoch:
        raise TrainingError(
            f"{where}: the run already finished {state.epoch} epochs; --epochs {config.epochs} is less"
        )


def _plain(value: Any) -> Any:
    """Lists and tuples compare alike (JSON and dataclasses differ only there)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    if not history:
        return
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=str) + "\n")


def rank_batches(
    order: torch.Tensor, batch_size: int, context: distributed.Context
) -> list[tuple[list[int], float]]:
    """This rank's share of each global batch of ``order``, with its loss scale.

    Global batches are consecutive slices of ``order`` (a permutation of patch indices, the same on
    every rank); each is split as evenly as possible over the ranks. A global batch with fewer
    patches than ranks is skipped on every rank. The loss scale world_size * share / batch makes the
    ranks' averaged gradient the global batch's gradient.
    """
    shares = []
    indices = order.tolist()
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        if len(batch) < context.world_size:
            continue
        mine = [list(part) for part in np.array_split(np.array(batch), context.world_size)][context.rank]
        shares.append(([int(i) for i in mine], context.world_size * len(mine) / len(batch)))
    return shares


def train(
    config: TrainConfig,
    train_cases: Sequence[FusionCase],
    val_cases: Sequence[FusionCase],
    *,
    resume: bool = False,
    band_names: Sequence[str] | None = None,
    context: distributed.Context | None = None,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train MLFF-GAN on ``train_cases``, select on ``val_cases``; outputs under ``config.save_dir``.

    Launched by ``torchrun`` with several processes, training is data-parallel: every rank loads the
    patches, takes its share of each global batch of ``config.batch_size`` (see :func:`rank_batches`),
    BatchNorm statistics are those of the global batch, gradients are averaged; rank 0 validates and
    writes the config, checkpoints and history, and every rank resumes from the same ``last.ckpt``.
    ``context`` is the process group set up by the caller (:func:`stfusion.distributed.setup`); None is
    a single process on ``config.device``.

    With ``resume``, ``last.ckpt`` must come from the same run: a configuration or data that would
    change it (anything but more ``epochs`` or the device settings) is refused, naming the options.
    """
    if not train_cases:
        raise TrainingError("no training cases")
    if not val_cases and not config.val_holdout:
        raise TrainingError("no validation cases (a split apart from test is needed to select `best`)")
    reading = config.read_options()

    def load(cases: Sequence[FusionCase]) -> list[CaseArrays]:
        if not config.per_band:
            return load_cases(cases, coarse_factor=config.coarse_factor, options=reading)
        loaded = (load_case(case, coarse_factor=config.coarse_factor, options=reading) for case in cases)
        return [band for arrays in loaded for band in split_bands(arrays)]

    train_arrays = load(train_cases)
    if config.val_holdout:
        parts = [split_holdout(case, config.val_holdout) for case in train_arrays]
        train_arrays, val_arrays = [p[0] for p in parts], [p[1] for p in parts]
        log.info("validating on the held-out rows of %d training cases", len(val_arrays))
    else:
        val_arrays = load(val_cases)
    data = {
        "train": [c.name for c in train_cases],
        "val": [c.name for c in val_cases],
        # every image a model learned from (names), so comparisons can mark the cases it has seen
        "files": sorted({p.name for c in [*train_cases, *val_cases] for p in c.paths().values()}),
    }
    return fit(
        config,
        train_arrays,
        val_arrays,
        resume=resume,
        band_names=None if config.per_band else band_names,
        context=context,
        data=data,
        on_step=on_step,
        on_epoch=on_epoch,
    )


def fit(
    config: TrainConfig,
    train_arrays: Sequence[CaseArrays],
    val_arrays: Sequence[CaseArrays],
    *,
    resume: bool = False,
    band_names: Sequence[str] | None = None,
    context: distributed.Context | None = None,
    data: dict[str, Any] | None = None,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """The GAN loop on cases already in memory (degraded by ``config.coarse_factor``), top to bottom.

    :func:`train` reads the cases and calls this; arrays built another way (e.g. one case per band of
    several datasets) train the same way. ``data`` describes the training data (recorded in the
    checkpoints; a resumed run must have the same).
    """
    context = context or distributed.Context(device=config.device)
    save_dir = Path(config.save_dir)
    last_path, best_path = save_dir / "last.ckpt", save_dir / "best.ckpt"
    if not train_arrays or not val_arrays:
        raise TrainingError("fit needs training and validation cases")
    # patches first: cases too small for the patch are refused before the run folder is made
    dataset = PatchDataset(
        train_arrays,
        patch_size=config.patch_size,
        stride=config.patch_stride,
        random_crops=config.random_crops,
        seed=config.seed,
    )
    if context.is_main:
        save_dir.mkdir(parents=True, exist_ok=True)
        for stale in save_dir.glob(".*.part"):  # temporaries of a save cut short by SIGKILL
            stale.unlink(missing_ok=True)
    data = data or {"train": [c.name for c in train_arrays], "val": [c.name for c in val_arrays]}
    bands = train_arrays[0].shape[0]
    names = list(band_names) if band_names else [f"band{i + 1}" for i in range(bands)]
    spec = config.model_spec(bands)
    device = torch.device(context.device)
    if config.amp and device.type != "cuda":
        log.warning("--amp has no effect on %s: bf16 autocast is used on CUDA devices only", device)

    torch.manual_seed(config.seed)
    generator = spec.build().to(device)
    discriminator = PatchDiscriminator(bands).to(device)
    if config.channels_last:
        generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        discriminator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if context.distributed:
        convert_batchnorm(generator)  # global-batch BatchNorm statistics, in place
        convert_batchnorm(discriminator)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=config.betas)

    start_epoch, best_val, history = 0, math.inf, []
    distributed.barrier(context)  # the run folder exists before anyone looks for last.ckpt
    if resume and last_path.exists():
        state = load_checkpoint(last_path, map_location=device)
        check_resumable(state, config, spec, data)
        assert state.discriminator is not None and state.optimizer_g is not None
        assert state.optimizer_d is not None
        generator.load_state_dict(state.generator)
        discriminator.load_state_dict(state.discriminator)
        optimizer_g.load_state_dict(state.optimizer_g)
        optimizer_d.load_state_dict(state.optimizer_d)
        start_epoch, best_val, history = state.epoch, state.best_val or math.inf, state.history
        log.info("resuming from %s after epoch %d", last_path, start_epoch)
    elif resume:
        log.warning("--resume: no %s yet, starting from scratch", last_path)
    distributed.broadcast_module(generator, context)
    distributed.broadcast_module(discriminator, context)
    if context.is_main:
        _write_json(save_dir / "config.json", {**config.to_dict(), "world_size": context.world_size})

    if config.weights.ms_ssim and config.ms_ssim_scales is None and config.patch_size < ms_ssim_min_size(5):
        log.warning(
            "patch size %d < %d: MS-SSIM uses %d scales instead of 5",
            config.patch_size,
            ms_ssim_min_size(5),
            ms_ssim_scales_for(config.patch_size),
        )
    saved_config = {**config.to_dict(), "data": data}
    for epoch in range(start_epoch, config.epochs):
        # Everything random in this epoch (order, swaps, dropout) derives from (seed, epoch), the
        # same on every rank.
        torch.manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed + epoch))
        augment = torch.Generator().manual_seed(config.seed * 31 + epoch)
        shares = rank_batches(order, config.batch_size, context)
        loader = DataLoader(
            dataset,
            batch_sampler=[indices for indices, _ in shares],
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",  # page-locked batches copy to the GPU asynchronously
        )
        generator.train()
        discriminator.train()
        sums: dict[str, float] = {}
        for step, (batch, (_, loss_scale)) in enumerate(zip(loader, shares, strict=True)):
            if config.date_swap and float(torch.rand(1, generator=augment)) < 0.5:
                batch = swap_dates(batch)
            if config.flips:
                batch = flip_rotate(batch, augment)
            local = gan_step(
                generator,
                discriminator,
                optimizer_g,
                optimizer_d,
                batch,
                config,
                context=context,
                loss_scale=loss_scale,
            )
            # global batch means: sum over ranks of (share / batch) x rank mean
            weight = loss_scale / context.world_size
            losses = distributed.sum_over_ranks({k: v * weight for k, v in local.items()}, context)
            if not all(math.isfinite(v) for v in losses.values()):
                raise TrainingError(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1} ({losses}); "
                    f"the last good checkpoint is {last_path}; lower --lr or check the inputs"
                )
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
            if on_step is not None and context.is_main:
                on_step(step, losses)
        if context.is_main:
            val_mse = validation_mse(generator, val_arrays, config, device=device)
            record = {
                "epoch": epoch + 1,
                **{k: v / max(len(shares), 1) for k, v in sums.items()},
                "val_mse": val_mse,
            }
            history.append(record)
            snapshot = Checkpoint(
                model=spec,
                generator=generator.state_dict(),
                coarse_factor=config.coarse_factor,
                band_names=names,
                config=saved_config,
                epoch=epoch + 1,
                best_val=min(best_val, val_mse),
            )
            if val_mse < best_val:
                best_val = val_mse
                save_checkpoint(best_path, snapshot)
            snapshot.history = history
            snapshot.discriminator = discriminator.state_dict()
            snapshot.optimizer_g = optimizer_g.state_dict()
            snapshot.optimizer_d = optimizer_d.state_dict()
            save_checkpoint(last_path, snapshot)
            _write_history(save_dir / "history.csv", history)
            if on_epoch is not None:
                on_epoch(record)
        distributed.barrier(context)
    return TrainResult(save_dir=save_dir, best=best_path, last=last_path, history=history)
