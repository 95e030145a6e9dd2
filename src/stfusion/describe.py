"""What a file holds, as stfusion reads it (``stfusion info``): a GeoTIFF or a checkpoint.

A description is a list of (label, text) lines in display order, plain data for a terminal or JSON.
For a GeoTIFF: size, storage, bands, nodata and masks, grid, date, how values become reflectance and
a sample of them (:func:`stfusion.raster.sample_values`: cheap on any size). For a checkpoint: the
model, its bands and scale, and the training run that made it (epochs, cases, images), loaded without
running code from the file (:func:`stfusion.checkpoint.load`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from stfusion import formats, raster, scenes, series
from stfusion.errors import InputError
from stfusion.inputs import check_values

_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")

Lines = list[tuple[str, str]]


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is to be read as a checkpoint: a zip archive, or named like one."""
    if path.suffix.lower() in _CHECKPOINT_SUFFIXES:
        return True
    return (formats.head(path) or b"").startswith(formats.ZIP_MAGIC)


def describe(
    path: str | os.PathLike[str], *, scale: float | None = None, offset: float | None = None
) -> Lines:
    """The description of a GeoTIFF (``scale``/``offset``: see :func:`describe_raster`) or a checkpoint;
    InputError naming the file when it is neither, or for a scale given with a checkpoint."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found")
    if path.is_dir():
        raise InputError(
            f"{path}: is a folder; give one GeoTIFF or checkpoint (`stfusion cases` lists a folder)"
        )
    if offset is not None and scale is None:
        raise InputError(f"--offset {offset:g} needs --scale too (reflectance = value x scale + offset)")
    if not is_checkpoint(path):
        return describe_raster(path, scale=scale, offset=offset)
    if scale is not None:
        raise InputError(f"{path}: a checkpoint records its own scale; --scale and --offset are for rasters")
    return describe_checkpoint(path)


def _number(value: float) -> str:
    return f"{value:.6g}"


def _bands(info: raster.RasterInfo) -> str:
    names = [(name or "").strip() for name in info.band_names]
    if not any(names):
        return f"{info.count}, without descriptions (select them by number: --bands 1,2,...)"
    return ", ".join(f"{i + 1} {name or '(unnamed)'}" for i, name in enumerate(names))


def _grid(info: raster.RasterInfo) -> str:
    a, b, c, d, e, f = info.transform[:6]
    if info.crs is None:
        return "no CRS: not georeferenced (the other images of a case must then be on its grid)"
    pixel = f"pixel {_number(abs(a))} x {_number(abs(e))}" if b == 0 and d == 0 else "rotated pixels"
    return f"{info.crs}; {pixel}; upper-left corner ({c:.10g}, {f:.10g})"


def _masks(info: raster.RasterInfo) -> str:
    kinds = {"none": "none", "per_dataset": "GDAL mask shared by the bands", "per_band": "GDAL mask per band"}
    text = kinds.get(info.mask_kind, info.mask_kind)
    if info.alpha_band is not None:
        text += f"; alpha band {info.alpha_band} (0 = no data)"
    sidecar = scenes.sidecar_mask(info.path)
    if sidecar is not None:
        text += f"; sidecar {sidecar.name} (nonzero = invalid)"
    return text


def describe_mask(path: Path, info: raster.RasterInfo) -> Lines:
    """A mask file (``<image stem>_mask.tif``): what it masks and how much, read as masks are read
    (any nonzero or non-finite value in any band = invalid), not as reflectance."""
    # the image the pipeline pairs with this mask (scenes.sidecar_mask), whatever its suffix's case
    images = [
        p
        for p in sorted(path.parent.iterdir())
        if p.suffix.lower() in (".tif", ".tiff") and scenes.sidecar_mask(p) == path
    ]
    masked = raster.read_mask_on_grid(path, info)
    kind = f"mask of {images[0].name}" if images else "mask"
    return [
        ("file", str(path)),
        ("kind", f"{kind} (nonzero = invalid)"),
        ("size", f"{info.count} band(s) x {info.height} rows x {info.width} columns"),
        ("storage", info.dtype),
        ("grid", _grid(info)),
        ("masked", f"{masked.mean():.1%} of the pixels"),
    ]


def describe_raster(
    path: str | os.PathLike[str], *, scale: float | None = None, offset: float | None = None
) -> Lines:
    """A GeoTIFF as stfusion reads it (``scale``/``offset``: as the reading options, when untagged).

    Warnings about its values (digital numbers, undeclared fill values, ...) are logged as every
    command logs them (:func:`stfusion.inputs.check_values`); a file with no valid pixel is refused.
    """
    path = Path(path)
    info = raster.inspect(path)
    if scenes.is_mask_name(path):
        return describe_mask(path, info)
    sample = check_values(path, scale=scale, offset=offset, options="")
    date = series.date_of(path)
    profile = info.profile
    storage = info.dtype
    if profile.get("compress"):
        storage += f", {str(profile['compress']).lower()} compression"
    if profile.get("tiled"):
        storage += f", tiles of {profile.get('blockxsize')} x {profile.get('blockysize')}"
    lines: Lines = [
        ("file", str(path)),
        ("kind", "GeoTIFF" if path.suffix.lower() in (".tif", ".tiff") else "raster"),
        ("size", f"{info.count} band(s) x {info.height} rows x {info.width} columns"),
        ("storage", storage),
        ("bands", _bands(info)),
        ("nodata", "none declared" if info.nodata is None else _number(info.nodata)),
        ("masks", _masks(info)),
        ("grid", _grid(info)),
        ("date", f"{date} (from its name or tags)" if date else "none in its name or tags"),
    ]
    if sample.scaling is not None:
        lines.append(("reading", str(sample.scaling)))
    where = "every value read" if sample.complete else "a sample of windows read"
    invalid = sample.n_pixels - sample.values.size
    parts = [f"{invalid / max(sample.n_pixels, 1):.1%} of the values invalid ({where})"]
    for count, what in (
        (sample.n_nodata, "nodata"),
        (sample.n_nonfinite, "NaN/inf or fill values"),
        (sample.n_masked, "masked"),
    ):
        if count:
            parts.append(f"{count} {what}")
    sidecar = scenes.sidecar_mask(info.path)
    if sidecar is not None:
        try:
            masked = (
                raster.read_mask_on_grid(sidecar, info)
                if raster.same_grid(raster.inspect(sidecar), info)
                else None
            )
        except InputError:
            masked = None
        parts.append(
            f"its sidecar mask covers {masked.mean():.1%} of the pixels"
            if masked is not None
            else f"its sidecar mask {sidecar.name} is not on its grid (not counted)"
        )
    lines.append(("values", "; ".join(parts)))
    if sample.reflectance.size:
        low, median, high = np.percentile(sample.reflectance.astype(np.float64), [2, 50, 98])
        lines.append(
            ("reflectance", f"median {median:.4f}, 2nd-98th percentile {low:.4f} to {high:.4f} (all bands)")
        )
    return lines


def describe_checkpoint(path: str | os.PathLike[str]) -> Lines:
    """A checkpoint's model, bands and training run (imports torch)."""
    from stfusion.checkpoint import load

    model = load(path)
    names = [name for name in model.band_names if name]
    kwargs = ", ".join(f"{k}={v}" for k, v in sorted(model.model.kwargs.items()))
    lines: Lines = [
        ("file", str(path)),
        ("kind", "stfusion checkpoint"),
        ("model", f"{model.model.name}, {model.bands} band(s)" + (f" ({kwargs})" if kwargs else "")),
        ("bands", ", ".join(names) if names else "not recorded"),
        ("coarse factor", str(model.coarse_factor)),
        ("scale", f"{_number(model.scale)} reflectance per stored unit of its training data"),
    ]
    if model.epoch:
        best = f", best validation loss {model.best_val:.6g}" if model.best_val is not None else ""
        lines.append(("trained", f"{model.epoch} epoch(s){best}"))
    else:
        lines.append(("trained", "no training record (e.g. imported weights)"))
    data = model.config.get("data") or {}
    for key, label in (("train", "training cases"), ("val", "validation cases")):
        cases = data.get(key) or []
        if cases:
            lines.append((label, ", ".join(str(c) for c in cases)))
    files = sorted(model.training_files())
    if files:
        lines.append(("training images", f"{len(files)}: " + ", ".join(files)))
    resume = (
        "yes (discriminator and optimisers saved)" if model.has_training_state() else "no (generator only)"
    )
    lines.append(("can resume training", resume))
    if model.versions:
        lines.append(("written by", ", ".join(f"{k} {v}" for k, v in sorted(model.versions.items()))))
    return lines


class InvalidFractions:
    """How much of each image of a folder's cases is invalid (nodata, NaN, masks, outside the footprint),
    on the fine t1 grid of the case, each file judged once (:func:`stfusion.series.invalid_fraction`)."""

    def __init__(self) -> None:
        self._known: dict[tuple[Any, ...], float | str] = {}
        self._grids: dict[Path, raster.RasterInfo | str] = {}

    def _grid(self, path: Path) -> raster.RasterInfo | str:
        if path not in self._grids:
            try:
                self._grids[path] = raster.inspect(path)
            except InputError as exc:
                self._grids[path] = str(exc)
        return self._grids[path]

    def of_case(self, case: scenes.FusionCase) -> dict[str, float | str]:
        """Role -> invalid fraction (0..1), or why it cannot be told (an image or mask that cannot be read
        or placed on the case's grid; a fine t1 image, the grid, that cannot be read: then only fine t1
        is listed)."""
        grid = self._grid(case.fine_t1)
        if isinstance(grid, str):
            return {scenes.pair_roles(0)[1]: f"not usable ({grid}); the case's other images not judged"}
        fractions: dict[str, float | str] = {}
        for role, path in case.paths().items():
            mask = case.masks.get(role)
            # fine images of one area share a grid: a file is judged once on it, whichever case it is in
            key = (
                path,
                mask,
                role.startswith("fine"),
                grid.crs,
                tuple(grid.transform),
                grid.height,
                grid.width,
            )
            if key not in self._known:
                self._known[key] = self._judge(path, mask, grid, role.startswith("fine"))
            fractions[role] = self._known[key]
        return fractions

    @staticmethod
    def _judge(path: Path, mask: Path | None, grid: raster.RasterInfo, fine: bool) -> float | str:
        """The invalid fraction, or why the image (or its mask) cannot be used on the case's grid, as
        the other commands check it (fine images on the grid, coarse images and masks placeable, some
        valid pixel); the warnings about its values are logged as every command logs them."""
        if mask is not None:
            try:
                scenes.check_mask_grid(raster.inspect(mask), grid)
            except InputError as exc:
                return f"mask not usable ({exc})"
        try:
            info = raster.inspect(path)
            if fine:
                scenes.check_fine_grid(info, grid)
            else:
                scenes.check_coarse_footprint(info, grid)
            # the warnings every command gives about its values (undeclared fill values, a wrong scale)
            sample = check_values(path, options="fine" if fine else "coarse")
            return series.invalid_fraction(path, mask, grid, sample=sample)
        except InputError as exc:
            return f"not usable ({exc})"


def invalid_summary(fractions: dict[str, float | str], max_invalid: float = series.MAX_INVALID) -> str:
    """One line: the roles with invalid pixels and how many, a reference over ``max_invalid`` flagged.

    >>> invalid_summary({"coarse_t1": 0.0, "fine_t1": 0.62, "coarse_t2": 0.05, "fine_t2": 0.0})
    'invalid pixels: fine_t1 62% (too cloudy to be a reference), coarse_t2 5%'
    >>> invalid_summary({"coarse_t1": 0.0, "fine_t1": 0.0})
    'no invalid pixel'
    """
    parts = []
    for role, value in fractions.items():
        if isinstance(value, str):
            parts.append(f"{role} {value}")
        elif value > 0:
            text = f"{role} {100 * value:.3g}%"
            if value > max_invalid and role not in ("coarse_t2", scenes.TRUTH_ROLE):
                text += " (too cloudy to be a reference)"
            parts.append(text)
    return "invalid pixels: " + ", ".join(parts) if parts else "no invalid pixel"
