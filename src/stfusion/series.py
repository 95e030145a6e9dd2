"""Time series: predict the fine image of every coarse date from the nearest usable reference pairs.

Inputs are dated images: a flat folder of ``fine_YYYYMMDD.tif`` / ``coarse_YYYYMMDD.tif`` (masks as
``<stem>_mask.tif``), or separate folders whose file names carry dates (:func:`date_of`: ``YYYYMMDD``,
``YYYY-MM-DD``, ``YYYY_MM_DD`` or MODIS's ``AYYYYDOY``; else the file's acquisition-date tags).

For each target date (every coarse date without a usable fine image, or the dates asked for):

- **Reference pairs** (:func:`choose_pairs`): the nearest date before and the nearest after that have
  a fine and a coarse image whose invalid fraction (nodata, NaN, masks) is at most ``max_invalid``;
  where one side has none, the two nearest on the other side (two-pair methods extrapolate well too);
  one pair when only one is usable. A series where no reference pair is usable at all is refused
  before any output.
- **Method**: the one given, or the best for the number of pairs (:func:`stfusion.fusion.default_method`).
- **Output**: ``OUT/fused_YYYYMMDD.tif`` (or a COG), georeferenced like the fine images, with provenance
  tags; from ``stfusion fuse``, ``series.csv`` (date, status, pairs used, method, valid fraction,
  per-band mean over the date's valid pixels and over the pixels valid on every date at least half as
  valid as the clearest, :func:`common_band_means`) and ``series.png`` (those common means, or NDVI
  from them, over time, with the fine dates marked, and quick-looks).

Each method is prepared once for the whole series (a trained model is loaded once), and kept outputs
are not redone with ``skip_existing``. Under ``torchrun`` the dates are split over the processes; each
writes its outputs and a small summary, and rank 0 writes the table and the figure.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stfusion import distributed, fusion, raster, scenes, workflows
from stfusion.atomic import atomic_path
from stfusion.blocks import predict_scene
from stfusion.errors import InputError, NothingPredictedError, NoValidPixelError
from stfusion.inputs import CaseReader, ReadOptions, band_count, band_names, resolve_bands
from stfusion.pairs import GapFilledPrediction

if TYPE_CHECKING:  # imports torch: loaded by the MLFF-GAN paths only
    from stfusion.checkpoint import Checkpoint

log = logging.getLogger(__name__)

#: Default largest fraction of invalid pixels (nodata, masked) of a usable reference image.
MAX_INVALID: float = 0.5

_DATE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)"), "ymd"),
    (re.compile(r"(?<!\d)(\d{4})_(\d{2})_(\d{2})(?!\d)"), "ymd"),
    (re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)"), "ymd"),
    (re.compile(r"A(\d{4})(\d{3})(?!\d)"), "doy"),
)


def date_of(path: Path) -> dt.date | None:
    """The acquisition date in a file name (``YYYYMMDD``, ``YYYY-MM-DD``, ``YYYY_MM_DD``, ``AYYYYDOY``),
    else in its metadata tags (:data:`stfusion.scenes.DATE_TAGS`); None if neither has one."""
    for pattern, kind in _DATE_PATTERNS:
        for match in pattern.finditer(path.stem):
            numbers = [int(g) for g in match.groups()]
            try:
                if kind == "doy":  # day 1 to 365 (366 in a leap year), as MODIS names them
                    first = dt.date(numbers[0], 1, 1)
                    day = first + dt.timedelta(days=numbers[1] - 1)
                    if numbers[1] < 1 or day.year != first.year:
                        continue
                    return day
                return dt.date(*numbers)
            except ValueError:
                continue
    return scenes.acquisition_date(raster.inspect(path))


@dataclass
class SeriesInputs:
    """Dated fine and coarse images (and masks by image path) of one grid."""

    fine: dict[dt.date, Path]
    coarse: dict[dt.date, Path]
    masks: dict[Path, Path] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, folder: Path) -> SeriesInputs:
        """A flat folder of ``fine_YYYYMMDD.tif`` / ``coarse_YYYYMMDD.tif`` (+ ``<stem>_mask.tif``); a
        warning for each image left out (its name) and each mask of no image."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(scenes.missing_folder(folder))
        by_role, masks, skipped = scenes.flat_images(folder)
        for item in skipped:  # an image left out says why (other files are not images of the series)
            if item.path.suffix.lower() in scenes.RASTER_SUFFIXES:
                log.warning("%s: not used: %s", item.path, item.reason)
        images = [*by_role["fine"].values(), *by_role["coarse"].values()]
        stems = {p.stem for p in images}
        for stem, mask in sorted(masks.items()):
            if stem not in stems:
                log.warning("%s: not used: no image named %s in its folder", mask, stem)
        attached = {p: masks[p.stem] for p in images if p.stem in masks}
        return cls(fine=by_role["fine"], coarse=by_role["coarse"], masks=attached)

    @classmethod
    def from_dirs(cls, fine_dir: Path, coarse_dir: Path) -> SeriesInputs:
        """Two folders of GeoTIFFs, dated by :func:`date_of`; ``<stem>_mask.tif`` files are masks."""
        fine, coarse = _dated(fine_dir), _dated(coarse_dir)
        masks = _masks(fine_dir, list(fine.values())) | _masks(coarse_dir, list(coarse.values()))
        return cls(fine=fine, coarse=coarse, masks=masks)

    def check(self) -> None:
        if not self.coarse:
            raise InputError("no coarse images: a series needs coarse images of the target dates")
        if not self.fine:
            raise InputError("no fine images: a series needs at least one fine image (a reference date)")


def _images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(scenes.missing_folder(folder))
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in scenes.RASTER_SUFFIXES and not scenes.is_mask_name(p)
    )


def _dated(folder: Path) -> dict[dt.date, Path]:
    dated: dict[dt.date, Path] = {}
    for path in _images(folder):
        date = date_of(path)
        if date is None:
            raise InputError(
                f"{path}: no date in its name (YYYYMMDD, YYYY-MM-DD, AYYYYDOY) or tags; rename it"
            )
        if date in dated:
            raise InputError(f"{folder}: two images of {date}: {dated[date].name} and {path.name}")
        dated[date] = path
    return dated


def _masks(folder: Path, images: Sequence[Path]) -> dict[Path, Path]:
    """Image -> its mask ``<image stem>_mask.tif`` in ``folder`` (suffixes in any case, as images are
    found); a warning for a mask that belongs to no image."""
    by_stem = {p.stem: p for p in images}
    attached = {}
    for path in sorted(Path(folder).iterdir()):
        if scenes.is_mask_name(path):
            image = by_stem.get(path.stem[: -len(scenes.MASK_SUFFIX)])
            if image is None:
                log.warning(
                    "%s: not used: no image named %s in its folder",
                    path,
                    path.stem[: -len(scenes.MASK_SUFFIX)],
                )
            else:
                attached[image] = path
    return attached


def invalid_fraction(
    path: Path,
    mask: Path | None,
    grid: raster.RasterInfo,
    *,
    side: int = 512,
    sample: raster.ValueSample | None = None,
) -> float:
    """Fraction of ``grid``'s pixels that are invalid in an image as read on it: nodata, NaN, fill
    values, its GDAL masks, outside its footprint, or set in ``mask`` (the union, per pixel).

    An image on the grid without a mask file is judged from a cheap sample of its values; otherwise
    the image and its mask are read (nearest resampling) on the grid decimated to at most ``side``
    pixels per side (whole, when the files have no CRS): an estimate for choosing reference dates,
    cheap on any scene. ``sample``: the image's :func:`stfusion.raster.sample_values`, when the caller
    has it already.
    """
    info = raster.inspect(path)
    if mask is None and raster.same_grid(info, grid):
        sample = sample if sample is not None else raster.sample_values(path)
        return 1.0 - sample.values.size / max(sample.n_pixels, 1)
    # without CRS nothing can be warped: read on the grid itself
    small = grid if grid.crs is None or info.crs is None else _decimated(grid, side)
    invalid = np.isnan(raster.read_on_grid(path, small, resampling="nearest")).any(axis=0)
    if mask is not None:
        invalid |= raster.read_mask_on_grid(mask, small, resampling="nearest")
    return float(invalid.mean())


def _decimated(grid: raster.RasterInfo, side: int) -> raster.RasterInfo:
    """``grid`` with pixels ``k`` times larger (the same extent, at most ``side`` pixels per side)."""
    k = max(1, math.ceil(max(grid.height, grid.width) / side))
    if k == 1:
        return grid
    a, b, c, d, e, f = grid.transform[:6]
    return replace(
        grid,
        height=math.ceil(grid.height / k),
        width=math.ceil(grid.width / k),
        transform=(a * k, b * k, c, d * k, e * k, f),
    )


@dataclass(frozen=True)
class DatePlan:
    """A target date and its reference dates (none for an observed date; ``reason`` says why)."""

    date: dt.date
    pairs: tuple[dt.date, ...]
    observed: bool = False
    reason: str = ""


def choose_pairs(target: dt.date, usable: Sequence[dt.date], *, max_pairs: int = 2) -> tuple[dt.date, ...]:
    """The nearest usable dates before and after ``target``; two nearest on one side if the other has
    none; fewer when fewer exist (module docstring)."""
    before = sorted((d for d in usable if d < target), reverse=True)
    after = sorted(d for d in usable if d > target)
    if max_pairs == 1:
        nearest = sorted([*before[:1], *after[:1]], key=lambda d: (abs((d - target).days), d))
        return tuple(nearest[:1])
    if before and after:
        return (before[0], after[0])
    return tuple(sorted((before or after)[:2]))


def plan_series(
    inputs: SeriesInputs,
    *,
    dates: tuple[dt.date, dt.date] | None = None,
    max_invalid: float = MAX_INVALID,
    max_pairs: int = 2,
) -> list[DatePlan]:
    """What to do with every coarse date (within ``dates``, inclusive): observed, or which pairs predict it.

    A date is observed when its fine image has at most ``max_invalid`` invalid pixels (see
    :func:`invalid_fraction`), and a reference when its coarse image has too. One-line InputError,
    before any output, when no date can be a reference: no date could be predicted.
    """
    inputs.check()
    grid = raster.inspect(next(iter(inputs.fine.values())))
    complete = sorted(set(inputs.fine) & set(inputs.coarse))
    for date in sorted(set(inputs.fine) - set(inputs.coarse)):
        log.warning(
            "%s: not used: no coarse image of %s (a reference pair needs both)", inputs.fine[date], date
        )
    # a date is observed when its fine image is usable, and a reference when its coarse image is too
    fine_part = {
        d: invalid_fraction(inputs.fine[d], inputs.masks.get(inputs.fine[d]), grid) for d in complete
    }
    fraction = dict(fine_part)  # the larger invalid fraction of each date's fine and coarse image
    for d in complete:
        if fine_part[d] <= max_invalid:
            coarse = inputs.coarse[d]
            fraction[d] = max(fraction[d], invalid_fraction(coarse, inputs.masks.get(coarse), grid))
    usable = [d for d in complete if fraction[d] <= max_invalid]
    if not usable:  # no date could be predicted: refused before any output
        raise InputError(_nothing_usable(inputs, fraction, max_invalid))
    plans = []
    for date in sorted(inputs.coarse):
        if dates is not None and not dates[0] <= date <= dates[1]:
            continue
        if date in fine_part and fine_part[date] <= max_invalid:
            reason = "observed (usable fine image)"
            if date not in usable:
                reason += f"; not a reference: its coarse image has {_percent(fraction[date])} invalid"
            plans.append(DatePlan(date, (), observed=True, reason=reason))
            continue
        pairs = choose_pairs(date, usable, max_pairs=max_pairs)
        reason = ""
        if date in fine_part:  # a date whose own fine image is too cloudy is predicted, and says why
            reason = (
                f"predicted: the fine image of this date has {_percent(fine_part[date])} invalid "
                f"(> {_percent(max_invalid)})"
            )
        plans.append(DatePlan(date, pairs, reason=reason))
    if not plans:
        raise InputError(f"no coarse date within {dates[0]}..{dates[1]}" if dates else "no coarse dates")
    return plans


def _nothing_usable(inputs: SeriesInputs, fraction: Mapping[dt.date, float], max_invalid: float) -> str:
    """Why no date of a series can be predicted (no usable reference pair), naming the folders."""
    folders = ", ".join(sorted({str(p.parent) for p in [*inputs.fine.values(), *inputs.coarse.values()]}))

    def listed(days: Sequence[dt.date]) -> str:
        return ", ".join(map(str, days[:5])) + (", ..." if days[5:] else "")

    if not fraction:
        return (
            f"{folders}: no date can be predicted: no fine image has a coarse image of its date to pair "
            f"with (fine dates {listed(sorted(inputs.fine))}; coarse dates {listed(sorted(inputs.coarse))})"
        )
    clearest = sorted(fraction, key=lambda d: (fraction[d], d))
    found = ", ".join(f"{d} {_percent(fraction[d])}" for d in clearest[:5])
    found += ", ..." if clearest[5:] else ""
    return (
        f"{folders}: no date can be predicted: every date with a fine and a coarse image has more than "
        f"{_percent(max_invalid)} invalid pixels in one of them (least invalid: {found}; --max-invalid "
        "admits cloudier ones)"
    )


def _percent(fraction: float) -> str:
    """0.8125 -> '81.2%', 0.5 -> '50%' (one decimal, none when it is zero)."""
    return f"{100 * fraction:.1f}".removesuffix(".0") + "%"


@dataclass
class DateResult:
    """What happened to one date: ``status`` predicted / kept / observed / skipped (no pixel could be
    predicted, e.g. a fully cloudy coarse image), and why (``reason``)."""

    date: dt.date
    status: str
    pairs: tuple[dt.date, ...] = ()
    method: str = ""
    path: Path | None = None
    valid_fraction: float = math.nan
    band_means: tuple[float, ...] = ()
    seconds: float = math.nan
    reason: str = ""
    prediction: np.ndarray | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """Plain data for a JSON file (NaN, which JSON lacks, as null)."""
        record = asdict(self)
        record.pop("prediction")
        record["date"] = str(self.date)
        record["pairs"] = [str(d) for d in self.pairs]
        record["path"] = str(self.path) if self.path else ""
        record["valid_fraction"] = _json_number(self.valid_fraction)
        record["seconds"] = _json_number(self.seconds)
        record["band_means"] = [_json_number(v) for v in self.band_means]
        return record


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def check_plans(
    inputs: SeriesInputs,
    plans: Sequence[DatePlan],
    *,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    reading: ReadOptions | None = None,
    skip: Callable[[DatePlan], bool] | None = None,
) -> dict[dt.date, CaseReader]:
    """Everything a series can be refused for, before any output: the options of every method it
    will use, each date's pair count for its method, and every date's images (readable, one grid,
    bands, values), as :class:`CaseReader` checks them (an observed date: its fine image on the grid,
    with the bands selected). ``skip(plan)`` leaves a date out (e.g. its output is kept by
    --skip-existing). One-line InputError naming the option, date or file.

    Returns:
        the checked readers of the dates to predict, for :func:`iter_series`.
    """
    names = {method} if method else {fusion.default_method(len(p.pairs)) for p in plans if p.pairs}
    for name in sorted(names):
        fusion.get(name).parse_options(options)
    readers = {}
    grid = raster.inspect(next(iter(inputs.fine.values())))
    selected = len(resolve_bands((reading or ReadOptions()).fine_bands, grid))
    for plan in plans:
        if plan.observed:
            _check_observed(inputs.fine[plan.date], grid, selected, reading)
        if not plan.pairs or (skip is not None and skip(plan)):
            continue
        name = method or fusion.default_method(len(plan.pairs))
        entry = fusion.get(name)
        if not entry.accepts_pairs(len(plan.pairs)):
            fewest, _ = entry.pairs
            raise InputError(
                f"{plan.date}: method {name} needs {fewest} reference pairs, and only "
                f"{len(plan.pairs)} usable one(s) are near this date (--max-invalid admits cloudier ones)"
            )
        try:
            readers[plan.date] = CaseReader(_case(inputs, plan), options=reading)
        except NoValidPixelError as exc:
            if not _is_target_coarse(exc, inputs, plan):
                raise
            # a coarse image with no valid pixel (all fill, all NaN): the date is skipped (iter_series)
    return readers


def _is_target_coarse(exc: NoValidPixelError, inputs: SeriesInputs, plan: DatePlan) -> bool:
    """Whether the image without a valid pixel is the coarse image of the date to predict."""
    return exc.path is not None and Path(str(exc.path)).resolve() == inputs.coarse[plan.date].resolve()


def _check_observed(path: Path, grid: raster.RasterInfo, bands: int, reading: ReadOptions | None) -> None:
    """InputError unless an observed date's fine image is on the series' grid and has its bands."""
    info = raster.inspect(path)
    if not raster.same_grid(info, grid):
        raise InputError(
            f"{path}: not on the grid of {grid.path} (the fine images of a series share one grid)"
        )
    found = len(resolve_bands((reading or ReadOptions()).fine_bands, info))
    if found != bands:
        raise InputError(
            f"{path}: {info.count} bands, {grid.path} {grid.count}; the fine images need the same bands"
        )


def _observed(inputs: SeriesInputs, date: dt.date, reading: ReadOptions | None = None) -> np.ndarray:
    """The fine image of a date read as the predictions' inputs are (bands, scale, offset), NaN where
    invalid (nodata, NaN, its mask): (C, H, W) reflectance."""
    reading = reading or ReadOptions()
    path = inputs.fine[date]
    info = raster.inspect(path)
    bands = [p + 1 for p in resolve_bands(reading.fine_bands, info)]
    image = raster.read(path, scale=reading.fine_scale, offset=reading.fine_offset, bands=bands).data
    mask = inputs.masks.get(path)
    if mask is not None:
        image[:, raster.read_mask_on_grid(mask, info, resampling=reading.resampling)] = np.nan
    return image


def output_path(out: Path, date: dt.date) -> Path:
    return out / f"fused_{date:%Y%m%d}.tif"


def _case(inputs: SeriesInputs, plan: DatePlan) -> scenes.FusionCase:
    first, *rest = plan.pairs
    masks: dict[str, Path] = {}
    for index, pair_date in enumerate(plan.pairs):
        coarse_role, fine_role = scenes.pair_roles(index)
        for role, path in ((coarse_role, inputs.coarse[pair_date]), (fine_role, inputs.fine[pair_date])):
            if path in inputs.masks:
                masks[role] = inputs.masks[path]
    if inputs.coarse[plan.date] in inputs.masks:
        masks["coarse_t2"] = inputs.masks[inputs.coarse[plan.date]]
    return scenes.explicit_case(
        coarse_t1=inputs.coarse[first],
        fine_t1=inputs.fine[first],
        coarse_t2=inputs.coarse[plan.date],
        extra_pairs=[(inputs.coarse[d], inputs.fine[d]) for d in rest],
        name=f"{plan.date:%Y%m%d}",
        date_t1=first,
        date_t2=plan.date,
        masks=masks,
        sidecar_masks=False,  # the series' masks are inputs.masks, which planned the dates too
    )


def _band_means(image: np.ndarray) -> tuple[tuple[float, ...], float]:
    valid = np.isfinite(image).all(axis=0)
    if not valid.any():
        return tuple(math.nan for _ in range(image.shape[0])), 0.0
    return tuple(float(band[valid].mean()) for band in image), float(valid.mean())


def iter_series(
    inputs: SeriesInputs,
    plans: Sequence[DatePlan],
    *,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    checkpoint: Checkpoint | None = None,
    runtime: Mapping[str, Any] | None = None,
    out: Path | None = None,
    reading: ReadOptions | None = None,
    output: workflows.OutputOptions | None = None,
    context: distributed.Context | None = None,
    readers: Mapping[dt.date, CaseReader] | None = None,
) -> Iterator[DateResult]:
    """Predict the planned dates one by one (this rank's share), yielding each result when it is done.

    With ``out``, predictions are written there (and kept ones not redone with
    ``output.skip_existing``); without, each result carries its prediction in memory. ``readers``:
    the dates' readers already checked by :func:`check_plans` (others are made here).
    """
    context = context or distributed.Context()
    output = output or workflows.OutputOptions()
    preparers: dict[str, fusion.Preparer] = {}
    for index, plan in enumerate(plans):
        if index % context.world_size != context.rank:
            continue
        if plan.observed:
            means, valid = _band_means(_observed(inputs, plan.date, reading))
            yield DateResult(
                plan.date, "observed", reason=plan.reason, band_means=means, valid_fraction=valid
            )
            continue
        if not plan.pairs:
            raise InputError(f"{plan.date}: no reference pair planned (plans come from plan_series)")
        name = method or fusion.default_method(len(plan.pairs))
        if name not in preparers:  # prepared (a model loaded) once for the whole series
            preparers[name] = fusion.get(name).preparer(options, checkpoint=checkpoint, runtime=runtime)
        target = output_path(out, plan.date) if out is not None else None
        if target is not None and output.skip_existing and workflows.usable_output(target):
            image = raster.read(target).data
            means, valid = _band_means(image)
            # reported as the file says it was made (an earlier run may have used another method)
            made_by = raster.inspect(target).tags.get("STFUSION_METHOD") or "unknown method"
            note = "" if made_by == name else f"kept as made by {made_by}, not {name} (--overwrite redoes it)"
            reason = "; ".join(r for r in (plan.reason, note) if r)
            yield DateResult(plan.date, "kept", plan.pairs, made_by, target, valid, means, reason=reason)
            continue
        case = _case(inputs, plan)
        start = time.perf_counter()
        try:
            try:
                reader = (readers or {}).get(plan.date) or CaseReader(case, options=reading)
            except NoValidPixelError as exc:
                if not _is_target_coarse(exc, inputs, plan):
                    raise
                raise NothingPredictedError(str(exc)) from exc
            prediction = preparers[name](reader)
            if target is None:
                image = predict_scene(prediction, reader)
                if not np.isfinite(image).all(axis=0).any():
                    raise NothingPredictedError("no pixel could be predicted")
            else:
                tags = workflows.provenance_tags(name, case, options)
                workflows.write_prediction(reader, prediction, target, output, tags)
                image = raster.read(target).data
        except NothingPredictedError as exc:  # e.g. a fully cloudy coarse image: the series goes on
            why = (
                "skipped: no pixel could be predicted: every pixel is invalid in some input (e.g. a fully "
                f"cloudy or masked coarse image of {plan.date})"
            )
            if isinstance(exc.__cause__, NoValidPixelError):
                coarse = inputs.coarse[plan.date].name
                why = (
                    f"skipped: no pixel could be predicted: {coarse} has no valid pixel (nodata, NaN or fill)"
                )
            if target is not None and target.exists():  # an earlier run's output, to be redone: gone
                target.unlink()
                why += f"; {target.name} of an earlier run removed"
            log.info("%s: %s", plan.date, why)  # the result says it (the command prints it)
            yield DateResult(plan.date, "skipped", plan.pairs, name, reason=why)
            continue
        means, valid = _band_means(image)
        note = ""
        if isinstance(prediction, GapFilledPrediction) and prediction.filled:
            share = _percent(prediction.filled / (reader.height * reader.width))
            note = (
                f"{prediction.filled} pixels ({share}) predicted by {prediction.fallback_name} from one pair "
                "(the other invalid there)"
            )
        yield DateResult(
            plan.date,
            "predicted",
            plan.pairs,
            name,
            target,
            valid,
            means,
            seconds=time.perf_counter() - start,
            reason="; ".join(r for r in (plan.reason, note) if r),
            prediction=image if target is None else None,
        )


#: A date takes part in the pixels common to all dates when its valid share is at least this fraction
#: of the clearest date's (relative: a scene's footprint may leave every date half empty).
MIN_SHARED_VALID = 0.5


@dataclass(frozen=True)
class CommonMeans:
    """Band means of every date over one set of pixels: those valid in every date's image.

    Each date's own means (:attr:`DateResult.band_means`) are over its own valid pixels, which clouds
    change from date to date; these compare dates on the same ground. ``means`` has the dates that took
    part (see :func:`common_band_means`); ``fraction``: that set's share of the scene (0 when the dates
    share no valid pixel, or their images differ in shape).
    """

    means: dict[dt.date, tuple[float, ...]]
    fraction: float


def common_band_means(
    results: Sequence[DateResult], inputs: SeriesInputs, reading: ReadOptions | None = None
) -> CommonMeans:
    """:class:`CommonMeans` of the observed, predicted and kept dates at least :data:`MIN_SHARED_VALID`
    as valid as the clearest of them (a date mostly cloud would shrink the set to a sliver for all: its
    common means are left blank), reading each image twice (the pixels valid in all, then the means),
    one image in memory at a time."""

    def image(result: DateResult) -> np.ndarray:
        if result.status == "observed":
            return _observed(inputs, result.date, reading)
        assert result.path is not None
        return raster.read(result.path).data

    imaged = [
        r
        for r in results
        if (r.status == "observed" or (r.status in ("predicted", "kept") and r.path is not None))
        and r.valid_fraction > 0
    ]
    clearest = max((r.valid_fraction for r in imaged), default=0.0)
    dated = [r for r in imaged if r.valid_fraction >= MIN_SHARED_VALID * clearest]
    common: np.ndarray | None = None
    for result in dated:
        valid = np.isfinite(image(result)).all(axis=0)
        if common is not None and common.shape != valid.shape:
            return CommonMeans({}, 0.0)
        common = valid if common is None else common & valid
    if common is None or not common.any():
        return CommonMeans({}, 0.0)
    means = {r.date: tuple(float(band[common].mean()) for band in image(r)) for r in dated}
    return CommonMeans(means, float(common.mean()))


def write_series_table(
    path: Path,
    results: Sequence[DateResult],
    band_names: Sequence[str],
    common: CommonMeans | None = None,
) -> Path:
    """``series.csv``: one row per date (sorted): status, pairs, method, valid fraction, band means over
    the date's valid pixels, then (``common``) over the pixels valid in every date (``common_<band>``)."""
    rows = sorted(results, key=lambda r: r.date)
    common = common or CommonMeans({}, 0.0)
    shared = [f"common_{name}" for name in band_names]
    blank = [math.nan] * len(band_names)

    def numbers(values: Sequence[float]) -> list[str]:
        return ["" if math.isnan(v) else f"{v:.5f}" for v in values]

    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["date", "status", "pairs", "method", "valid_fraction", *band_names, *shared, "seconds", "note"]
        )
        for r in rows:
            writer.writerow(
                [
                    r.date,
                    r.status,
                    " ".join(str(d) for d in r.pairs),
                    r.method,
                    "" if math.isnan(r.valid_fraction) else f"{r.valid_fraction:.4f}",
                    *numbers(list(r.band_means) or blank),
                    *numbers(common.means.get(r.date, blank)),
                    "" if math.isnan(r.seconds) else f"{r.seconds:.2f}",
                    r.reason,
                ]
            )
    return path


def summary_path(out: Path, date: dt.date) -> Path:
    """Where the rank that handled a date leaves its summary (merged by rank 0 into series.csv)."""
    return out / ".series" / f"{date:%Y%m%d}.json"


def save_summary(out: Path, result: DateResult) -> None:
    path = summary_path(out, result.date)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result.summary()))


def load_summaries(out: Path, plans: Sequence[DatePlan]) -> list[DateResult]:
    return [_read_summary(summary_path(out, plan.date), plan.date) for plan in plans]


def _read_summary(path: Path, date: dt.date) -> DateResult:
    record = json.loads(path.read_text())
    return DateResult(
        date=date,
        status=record["status"],
        pairs=tuple(dt.date.fromisoformat(d) for d in record["pairs"]),
        method=record["method"],
        path=Path(record["path"]) if record["path"] else None,
        valid_fraction=_number(record["valid_fraction"]),
        band_means=tuple(_number(v) for v in record["band_means"]),
        seconds=_number(record["seconds"]),
        reason=record["reason"],
    )


def earlier_summaries(
    out: Path, inputs: SeriesInputs, plans: Sequence[DatePlan], n_bands: int
) -> list[DateResult]:
    """The dates an earlier run into ``out`` handled and this one did not plan (e.g. other ``--dates``).

    Only those that still describe the folder: a date of this series whose output is still there (an
    observed date: whose fine image is; a skipped date has none), summarised with ``n_bands`` band
    means (or none); a summary that cannot be read is left out.
    """
    folder = out / ".series"
    planned = {plan.date for plan in plans}
    results = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            date = dt.datetime.strptime(path.stem, "%Y%m%d").date()
            result = _read_summary(path, date)
        except (ValueError, KeyError, TypeError, OSError):
            continue
        if date in planned or date not in inputs.coarse or len(result.band_means) not in (0, n_bands):
            continue
        if result.status == "observed":
            current = date in inputs.fine
        else:  # a skipped date has no output
            current = result.status == "skipped" or output_path(out, date).exists()
        if current:  # its output where this run finds it (the earlier run may have run elsewhere)
            where = output_path(out, date) if result.status in ("predicted", "kept") else result.path
            results.append(replace(result, path=where))
    return results


def fuse(
    fine: Mapping[dt.date, str | Path],
    coarse: Mapping[dt.date, str | Path],
    *,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    dates: tuple[dt.date, dt.date] | None = None,
    max_invalid: float = MAX_INVALID,
    out: str | Path | None = None,
    lazy: bool = False,
    masks: Mapping[str | Path, str | Path] | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    reading: ReadOptions | None = None,
    output: workflows.OutputOptions | None = None,
) -> list[DateResult] | Iterator[DateResult]:
    """Python API of ``stfusion fuse``: the fine image of every coarse date without a usable fine image.

    Args:
        fine, coarse: date (``datetime.date``, or ``"YYYY-MM-DD"``) -> GeoTIFF path (fine images share
            one grid; coarse images on it or georeferenced).
        method: registry name (``stfusion.fusion``); None = ``mlffgan`` with a checkpoint, else the
            best for the number of pairs.
        options: method options by name.
        dates: (first, last) target dates, inclusive; None = every coarse date.
        max_invalid: largest invalid fraction of a usable reference image.
        out: folder to write ``fused_YYYYMMDD.tif`` to; None = results carry the predictions in memory.
        lazy: return an iterator that predicts (and writes) one date at a time.
        masks: image path (any path to the file) -> mask path (nonzero = invalid); an image without
            one takes its sidecar ``<stem>_mask.tif`` if it has one.
        checkpoint: a trained model (``stfusion train``) for ``mlffgan``; device: where it runs.
        reading: how files become pixels (bands, scales, offsets, resampling; :class:`ReadOptions`).
        output: how outputs in ``out`` are written, and whether existing ones are replaced
            (``overwrite``) or kept (``skip_existing``): :class:`stfusion.workflows.OutputOptions`;
            existing ones are refused by default. (``series.csv`` and ``series.png`` are written by
            ``stfusion fuse``; here the results carry their rows.)
    Returns:
        One :class:`DateResult` per coarse date in range (observed, predicted or kept, with why).

    Example::

        results = stfusion.fuse(fine={date(2001, 5, 24): "f0524.tif", ...}, coarse={...}, out="series/")
    """
    images = [*map(Path, fine.values()), *map(Path, coarse.values())]
    by_file = {p.resolve(): p for p in images}
    given = {}
    for key, mask in (masks or {}).items():  # keys match images by the file they name
        image = by_file.get(Path(key).resolve())
        if image is None:
            raise InputError(f"{key}: given a mask ({mask}) but is none of the series' images")
        given[image] = Path(mask)
    sidecars = {p: m for p in images if p not in given and (m := scenes.sidecar_mask(p)) is not None}
    inputs = SeriesInputs(
        fine={_as_date(d, "fine"): Path(p) for d, p in fine.items()},
        coarse={_as_date(d, "coarse"): Path(p) for d, p in coarse.items()},
        masks={**sidecars, **given},
    )
    method = method or ("mlffgan" if checkpoint is not None else None)
    if method is not None:
        fusion.get(method).check_checkpoint(checkpoint is not None)
    model = None
    if checkpoint is not None:
        from stfusion.checkpoint import load  # imports torch: only MLFF-GAN needs it

        model = load(checkpoint)
    plans = plan_series(inputs, dates=dates, max_invalid=max_invalid)
    # every date's options, pair count and images checked before the first output, as the CLI does
    output = output or workflows.OutputOptions()
    target = Path(out) if out is not None else None

    def kept(plan: DatePlan) -> bool:  # a date skip_existing keeps: its inputs are not read
        return (
            target is not None
            and output.skip_existing
            and workflows.usable_output(output_path(target, plan.date))
        )

    readers = check_plans(inputs, plans, method=method, options=options, reading=reading, skip=kept)
    if model is not None:
        first = next(iter(inputs.fine.values()))
        model.check_bands_of_scene(band_count(first, reading), first, band_names(first, reading))
    if target is not None:
        if target.is_dir():  # existing outputs refused (or kept) before any work
            targets = [output_path(target, plan.date) for plan in plans if plan.pairs]
            workflows.check_outputs(targets, overwrite=output.overwrite, skip_existing=output.skip_existing)
        target.mkdir(parents=True, exist_ok=True)
    results = iter_series(
        inputs,
        plans,
        method=method,
        options=options,
        checkpoint=model,
        runtime={"device": device},
        out=target,
        reading=reading,
        output=output,
        readers=readers,
    )
    return results if lazy else list(results)


def _as_date(key: Any, role: str) -> dt.date:
    """A ``fuse()`` key as a date: a ``datetime.date``, a ``datetime`` (its date) or ``"YYYY-MM-DD"``."""
    if isinstance(key, dt.datetime):
        return key.date()
    if isinstance(key, dt.date):
        return key
    if isinstance(key, str):
        try:
            return dt.date.fromisoformat(key)
        except ValueError:
            pass
    raise InputError(f"{role} image key {key!r}: give a datetime.date (or 'YYYY-MM-DD')")


def default_band_names(inputs: SeriesInputs, reading: ReadOptions | None = None) -> list[str]:
    """Names of the bands a series predicts (those ``reading`` selects), ``band<N>`` when unnamed."""
    info = raster.inspect(next(iter(inputs.fine.values())))
    positions = resolve_bands((reading or ReadOptions()).fine_bands, info)
    return [info.band_names[i] or f"band{i + 1}" for i in positions]


def ndvi(band_names: Sequence[str], means: Sequence[float]) -> float:
    """NDVI of band means when the bands include red and nir (else NaN)."""
    lookup = {name.lower(): i for i, name in enumerate(band_names)}
    if "red" not in lookup or "nir" not in lookup or not means:
        return math.nan
    red, nir = means[lookup["red"]], means[lookup["nir"]]
    return (nir - red) / (nir + red) if nir + red else math.nan


def write_series_outputs(
    out: Path, inputs: SeriesInputs, plans: Sequence[DatePlan], reading: ReadOptions | None = None
) -> tuple[Path, Path]:
    """``series.csv`` and ``series.png`` from the summaries every rank left in ``out`` (rank 0), with the
    dates an earlier run into ``out`` predicted and this one did not plan (:func:`earlier_summaries`)."""
    names = default_band_names(inputs, reading)
    results = [*load_summaries(out, plans), *earlier_summaries(out, inputs, plans, len(names))]
    common = common_band_means(results, inputs, reading)
    table = write_series_table(out / "series.csv", results, names, common)
    figure = write_series_figure(out / "series.png", results, names, inputs, common)
    return table, figure


#: Share of the scene valid in every date below which the figure plots each date's own means.
MIN_COMMON_FRACTION = 0.01


def write_series_figure(
    path: Path,
    results: Sequence[DateResult],
    band_names: Sequence[str],
    inputs: SeriesInputs,
    common: CommonMeans | None = None,
) -> Path:
    """Per-band mean (and NDVI when red and nir exist) over time, fine dates marked, a few quick-looks.

    The means are over the pixels valid in every date (``common``) when they cover at least
    :data:`MIN_COMMON_FRACTION` of the scene, else over each date's own valid pixels; the axis says which.
    """
    from stfusion import report

    rows = sorted(results, key=lambda r: r.date)
    shared = common is not None and common.fraction >= MIN_COMMON_FRACTION

    def means(r: DateResult) -> tuple[float, ...]:
        if shared:
            assert common is not None
            return common.means.get(r.date, ())
        return r.band_means

    values: dict[str, list[float]] = {
        name: [means(r)[i] if means(r) else math.nan for r in rows] for i, name in enumerate(band_names)
    }
    index = {name.lower() for name in band_names}
    if {"red", "nir"} <= index:
        values = {"NDVI": [ndvi(band_names, means(r)) for r in rows]}
    where = (
        f"the {_percent(common.fraction)} of pixels valid on every date"
        if shared and common is not None
        else "each date's valid pixels"
    )
    predicted = [r for r in rows if r.status in ("predicted", "kept") and r.path is not None]
    step = max(1, len(predicted) // 6)
    thumbnails = {r.date: raster.read(r.path).data for r in predicted[::step][:6] if r.path is not None}
    return report.series_figure(
        path,
        dates=[r.date for r in rows],
        values=values,
        fine_dates=sorted(inputs.fine),
        thumbnails=thumbnails,
        rgb_bands=workflows.default_rgb(band_names),
        ylabel=f"{'NDVI' if 'NDVI' in values else 'mean reflectance'} ({where})",
    )
