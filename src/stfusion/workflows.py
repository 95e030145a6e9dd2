"""Jobs shared by the command line, ``run.py``, the demo and the Python API.

Each job works on :class:`~stfusion.scenes.FusionCase` records, runs methods only through the registry
(:mod:`stfusion.fusion`) and the streaming path (:func:`stfusion.streaming.predict_case`), and writes its
outputs through :mod:`stfusion.raster` and :mod:`stfusion.report` (atomic writes, georeferenced
GeoTIFFs):

- :func:`predict_cases`: predict cases to given files (``stfusion predict``), split over torchrun ranks;
- :func:`run_methods`: every method on every case, predictions read back and scored on the pixels every
  method predicted (``stfusion compare``, ``stfusion test``, the benchmark);
- :func:`write_tables`, :func:`run_experiment` (train, select, test: ``stfusion train`` and ``run.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from stfusion import __version__, distributed, fusion, raster, report
from stfusion.atomic import atomic_path
from stfusion.blocks import Prediction
from stfusion.errors import InputError, NothingToScoreError
from stfusion.fusion import PairCountError, Preparer, get
from stfusion.inputs import CaseReader, ReadOptions
from stfusion.metrics import MetricReport, check_image_size, compute_metrics
from stfusion.scenes import TRUTH_ROLE, FusionCase
from stfusion.streaming import RankSplit, join_parts, predict_case, write_quality
from stfusion.tiling import TileOptions

log = logging.getLogger(__name__)


@dataclass
class CaseInputs:
    """The pixels of one case (float32 reflectance (C, H, W), NaN = invalid) and its fine t1 grid."""

    case: FusionCase
    coarse_t1: np.ndarray
    fine_t1: np.ndarray
    coarse_t2: np.ndarray
    fine_t2: np.ndarray | None
    reference: raster.RasterInfo
    band_names: list[str]


def read_case(case: FusionCase, *, options: ReadOptions | None = None) -> CaseInputs:
    """Validate a case and read its images (whole scenes) through :class:`~stfusion.inputs.CaseReader`."""
    reader = CaseReader(case, options=options)
    return case_inputs(reader)


def case_inputs(reader: CaseReader) -> CaseInputs:
    """The whole-scene images of an open case (for figures and in-memory use)."""
    images = {role: reader.read(role) for role in reader.roles}
    return CaseInputs(
        case=reader.case,
        coarse_t1=images["coarse_t1"],
        fine_t1=images["fine_t1"],
        coarse_t2=images["coarse_t2"],
        fine_t2=images.get(TRUTH_ROLE),
        reference=reader.reference,
        band_names=reader.band_names,
    )


@dataclass(frozen=True)
class OutputOptions:
    """How predictions are written: dtype, COG, what to do with existing files, quality bands."""

    dtype: str = "int16"
    cog: bool = False
    overwrite: bool = False
    skip_existing: bool = False
    quality: bool = False
    clip: bool = False  # clip predictions to the valid reflectance range 0..1

    @property
    def clip_range(self) -> tuple[float, float] | None:
        return VALID_REFLECTANCE if self.clip else None


def write_prediction(
    reader: CaseReader,
    prediction: Prediction,
    target: Path,
    output: OutputOptions,
    tags: dict[str, str],
    **more: Any,
) -> Path | None:
    """:func:`stfusion.streaming.predict_case` with ``output``'s dtype, COG and clip. Existing outputs
    were refused or kept before any work: a leftover that ``skip_existing`` redoes (empty, truncated) is
    replaced, but a file another run published meanwhile is not (the exclusive publication then fails
    in one line). ``more``: predict_case's other arguments (rank split, progress)."""
    return predict_case(
        reader,
        prediction,
        target,
        dtype=output.dtype,
        overwrite=output.overwrite or (output.skip_existing and target.exists()),
        cog=output.cog,
        tags=tags,
        clip=output.clip_range,
        **more,
    )


#: The valid reflectance range of ``--clip``.
VALID_REFLECTANCE: tuple[float, float] = (0.0, 1.0)


def provenance_tags(
    method: str, case: FusionCase, options: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """GeoTIFF tags saying how a prediction was made: method, options, inputs and dates, version."""
    tags = {
        "STFUSION_VERSION": __version__,
        "STFUSION_METHOD": method,
        "STFUSION_TARGET_DATE": str(case.date_t2),
        "STFUSION_OPTIONS": ", ".join(f"{k}={v}" for k, v in (options or {}).items()) or "defaults",
    }
    for role, path in case.paths().items():
        if role != TRUTH_ROLE:
            tags[f"STFUSION_INPUT_{role.upper()}"] = f"{path.name} ({case.dates()[role]})"
    entry = fusion.METHODS.get(method)
    if entry is not None and len(case.pairs) > 1 and entry.gap_fill(options):
        # the setting (the pixels it filled are counted in the log and in fuse's series.csv)
        tags["STFUSION_GAP_FILL"] = f"on: {fusion.DEFAULT_METHOD} where one reference pair is invalid"
    return tags


def refuse_inputs_as_outputs(outputs: Sequence[Path], inputs: Sequence[Path]) -> None:
    """InputError if an output is (or resolves to) an input, or two outputs are one file."""
    resolved_inputs = {_identity(Path(path)): Path(path) for path in inputs}
    seen: dict[Any, Path] = {}
    for out in outputs:
        key = _identity(out)
        if key in resolved_inputs:
            raise InputError(
                f"{out}: is the input {resolved_inputs[key]}; an output never replaces an input "
                "(choose another --out)"
            )
        if key in seen:
            raise InputError(f"{out}: two outputs of this run would be the same file ({seen[key]} and {out})")
        seen[key] = out


def _identity(path: Path) -> Any:
    """The same key for every name of one file (links resolved; (device, inode) when it exists)."""
    try:
        stat = path.stat()
        return (stat.st_dev, stat.st_ino)
    except OSError:
        return str(Path(os.path.realpath(path)))


def quality_path(target: Path) -> Path:
    """Where ``--quality`` writes the quality band of the prediction ``target``."""
    return target.with_name(f"{target.stem}_quality.tif")


def case_files(case: FusionCase) -> list[Path]:
    """Every file a case reads: its images and masks."""
    return [*case.paths().values(), *case.masks.values()]


def check_outputs(targets: Sequence[Path], *, overwrite: bool, skip_existing: bool) -> None:
    """Refuse existing outputs (unless overwrite, or kept with skip_existing) before any work."""
    for target in targets:
        if not (skip_existing and target.exists()):
            raster.check_writable(target, overwrite=overwrite)


def usable_output(path: Path) -> bool:
    """Whether an existing output can be kept by --skip-existing: a readable raster, not an empty file."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        raster.inspect(path)
    except InputError:
        return False
    return True


def predict_cases(
    jobs: Sequence[tuple[FusionCase, Path]],
    preparer: Preparer,
    *,
    method: str,
    options: Mapping[str, Any] | None = None,
    reading: ReadOptions | None = None,
    output: OutputOptions = OutputOptions(),
    context: distributed.Context | None = None,
    say: Callable[[str], None] = log.info,
    on_rows: Callable[[int], None] | None = None,
) -> list[Path]:
    """Predict each case into its output file, the rows of each split over the processes of ``context``.

    Existing outputs are refused before any work unless ``output.overwrite``; with
    ``output.skip_existing`` a usable existing output is kept (an empty or unreadable one is redone).
    Returns the outputs written (rank 0; other ranks return an empty list).
    """
    context = context or distributed.Context()
    written = []
    for case, target in jobs:
        if output.skip_existing and usable_output(target):
            made_by = raster.inspect(target).tags.get("STFUSION_METHOD") or "unknown method"
            other = "" if made_by == method else f"; made by {made_by}, not {method} (--overwrite redoes it)"
            say(f"skipped {target} (exists{other})")
            continue
        reader = CaseReader(case, options=reading)
        if reader.reprojected and context.is_main:
            names = ", ".join(str(case.paths()[role]) for role in reader.reprojected)
            resampling = (reading or ReadOptions()).resampling
            say(f"reprojecting {names} onto the grid of {case.fine_t1} ({resampling} resampling)")
        quality = quality_path(target)
        if output.quality and context.is_main:
            raster.check_writable(quality, overwrite=output.overwrite or output.skip_existing)
        prediction = preparer(reader)
        start = time.perf_counter()
        write_prediction(
            reader,
            prediction,
            target,
            output,
            provenance_tags(method, case, options),
            split=RankSplit(context.rank, context.world_size),
            on_rows=on_rows,
        )
        distributed.barrier(context)
        if context.distributed and context.is_main:
            join_parts(
                reader,
                prediction,
                target,
                world_size=context.world_size,
                overwrite=output.overwrite or output.skip_existing,
                cog=output.cog,
            )
        distributed.barrier(context)
        if context.is_main:
            say(f"wrote {target} ({time.perf_counter() - start:.1f} s)")
            written.append(target)
            if output.quality:
                write_quality(reader, quality, overwrite=output.overwrite or output.skip_existing)
                say(f"wrote {quality}")
    return written


@dataclass
class MethodResult:
    """One method on one case: its prediction, metrics and wall time (seconds; NaN when kept).

    ``n_unpredicted`` counts the pixels valid in the inputs and the truth where this method gave no
    value; metrics are computed on the pixels every method of the run predicted.
    """

    prediction: np.ndarray
    metrics: MetricReport | None
    seconds: float
    output: Path | None = None
    n_unpredicted: int = 0


def case_readers(cases: Sequence[FusionCase], reading: ReadOptions | None = None) -> dict[str, CaseReader]:
    """Every case checked and ready to read (files, grids, bands, values), by case name: a bad file
    stops a job here, before it writes anything."""
    return {case.name: CaseReader(case, options=reading) for case in cases}


def run_methods(
    cases: Sequence[FusionCase],
    preparers: Mapping[str, Preparer],
    *,
    out_dir: Path,
    ratio: float | None = None,
    reading: ReadOptions | None = None,
    output: OutputOptions = OutputOptions(),
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    on_case: Callable[[CaseInputs, dict[str, MethodResult]], None] | None = None,
    on_method: Callable[[str, str], None] | None = None,
    readers: Mapping[str, CaseReader] | None = None,
) -> dict[str, dict[str, MethodResult]]:
    """Predict every case with every method into ``out_dir/<case>/<method>.tif``, score against the truth.

    Each prediction is written by the streaming path, then read back and scored, so the table scores
    exactly the files a user gets; a method that cannot take the case's number of reference pairs is
    left out of that case. ERGAS uses ``ratio`` (fine / coarse pixel size), else 1 / the case's
    coarse ratio when known (:attr:`stfusion.inputs.CaseReader.coarse_ratio`), else it is not computed.
    Every method of a case is scored on the same pixels: those valid in the truth and predicted by
    every method (how many each left unpredicted is reported). Existing
    outputs are refused before any work unless ``output.overwrite``; with ``output.skip_existing`` they
    are kept and scored. ``on_case(inputs, results)`` is called after each case (e.g. a figure);
    ``on_method(case, method)`` before each method (progress). ``readers`` are the cases' readers
    when the caller made them already (:func:`case_readers`); every case is checked before any output.
    Returns case -> method -> result.
    """
    readers = readers if readers is not None else case_readers(cases, reading)
    for case in cases:  # a case too small to score is refused before any output
        if case.fine_t2 is not None:
            try:
                check_image_size(readers[case.name].height, readers[case.name].width)
            except ValueError as exc:
                raise InputError(f"{case.fine_t2}: cannot be scored: {exc}") from exc
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from exc
    names = [*preparers, *(["quality"] if output.quality else [])]
    outputs = {(c.name, n): out_dir / c.name / f"{n}.tif" for c in cases for n in names}
    refuse_inputs_as_outputs(list(outputs.values()), [p for c in cases for p in case_files(c)])
    for path in outputs.values():  # refuse existing outputs and unwritable folders before any work
        if output.skip_existing and path.exists():
            continue
        if path.parent.exists():
            raster.check_writable(path, overwrite=output.overwrite)
        else:  # the case folder is made later, in out_dir
            raster.check_writable(path.parent.parent / path.name, overwrite=True)
    results: dict[str, dict[str, MethodResult]] = {}
    for case in cases:
        reader = readers[case.name]
        # the case's folder is made just before its first output: a method failing first leaves none
        quality_path = outputs.get((case.name, "quality"))
        if quality_path is not None and not (output.skip_existing and usable_output(quality_path)):
            with output_folder(quality_path.parent):
                write_quality(reader, quality_path, overwrite=True)
        predictions: dict[str, tuple[np.ndarray, float, Path]] = {}
        for name, preparer in preparers.items():
            target = outputs[(case.name, name)]
            if on_method is not None:
                on_method(case.name, name)
            if output.skip_existing and usable_output(target):
                log.info("%s %s: kept the existing %s", case.name, name, target)
                seconds = float("nan")
            else:
                start = time.perf_counter()
                options = (method_options or {}).get(name)
                try:
                    prediction = preparer(reader)
                except PairCountError as exc:  # e.g. a two-pair method on a one-pair case: not run
                    log.warning("%s: %s; it is left out of this case", case.name, exc)
                    continue
                with output_folder(target.parent):
                    write_prediction(reader, prediction, target, output, provenance_tags(name, case, options))
                seconds = time.perf_counter() - start
            predictions[name] = (raster.read(target).data, seconds, target)
        truth = reader.read(TRUTH_ROLE) if case.fine_t2 is not None else None
        case_ratio = (
            ratio if ratio is not None else (1 / reader.coarse_ratio if reader.coarse_ratio else None)
        )
        try:
            results[case.name] = score_predictions(
                predictions, truth, ratio=case_ratio, band_names=reader.band_names
            )
        except NothingToScoreError as exc:  # e.g. a fully clouded truth: the other cases are scored
            log.warning("%s: case %s not scored: %s", case.fine_t2, case.name, exc)
            continue
        if (fraction := _scored_fraction(results[case.name])) < MIN_SCORED_FRACTION:
            log.warning(
                "%s: case %s is scored on %.2f%% of its pixels only (the rest is invalid in this truth or "
                "unpredicted): its metrics say little, and the winner's mean leaves it out",
                case.fine_t2,
                case.name,
                100 * fraction,
            )
        if on_case is not None:  # e.g. a figure, while the case's images are in memory
            on_case(case_inputs(reader), results[case.name])
    if not results and any(case.fine_t2 is not None for case in cases):
        raise NothingToScoreError(
            "no case could be scored: in every case no pixel is valid in the truth and predicted by every "
            "method (masks, nodata); the predictions are written"
        )
    return results


@contextlib.contextmanager
def output_folder(folder: Path) -> Iterator[Path]:
    """Make ``folder`` (and parents) for an output; a folder made here is removed again if the output
    fails (an error, Ctrl-C) while it is still empty."""
    made = [f for f in (folder, *folder.parents) if not f.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for created in made:  # innermost first; a folder with anything in it stays
            with contextlib.suppress(OSError):
                created.rmdir()
        raise


def score_predictions(
    predictions: Mapping[str, tuple[np.ndarray, float, Path | None]],
    truth: np.ndarray | None,
    *,
    ratio: float | None,
    band_names: Sequence[str],
) -> dict[str, MethodResult]:
    """Metrics of each prediction on the pixels every prediction has a value for (and the truth).

    Each report's conventions count its excluded pixels in three disjoint parts: ``n_nonfinite_truth``
    (invalid in the truth), ``n_unpredicted`` (valid there, no value from this method) and
    ``n_masked`` (left out because another method gave no value there).
    """
    if truth is None:
        return {name: MethodResult(p, None, s, path) for name, (p, s, path) in predictions.items()}
    truth_valid = np.isfinite(truth).all(axis=0)
    predicted = {name: np.isfinite(p).all(axis=0) for name, (p, _, _) in predictions.items()}
    common = truth_valid.copy()
    for mask in predicted.values():
        common &= mask
    if not common.any():
        raise NothingToScoreError(
            "no pixel is predicted by every method and valid in the truth; nothing to score"
        )
    # pixels no method predicted (an input invalid there) are said once, not once per method
    by_none = truth_valid.copy()
    for mask in predicted.values():
        by_none &= ~mask
    n_by_none = int(by_none.sum()) if len(predicted) > 1 else 0
    if n_by_none:
        log.warning(
            "%d pixels valid in the truth are predicted by no method (an input is invalid there); every "
            "method is scored without them",
            n_by_none,
        )
    results = {}
    for name, (prediction, seconds, path) in predictions.items():
        missing = int((truth_valid & ~predicted[name]).sum())
        if missing > n_by_none:
            others = " that another method predicted" if n_by_none or len(predicted) > 1 else ""
            log.warning(
                "%s left %d pixels unpredicted%s; every method is scored without them",
                name,
                missing - n_by_none,
                others,
            )
        try:
            metrics = compute_metrics(prediction, truth, valid=common, ratio=ratio, band_names=band_names)
        except ValueError as exc:
            raise InputError(f"{path or name}: cannot be scored: {exc}") from exc
        # scored on the common pixels, the report counts every excluded pixel as masked: split them
        # into the truth's invalid pixels, this method's unpredicted ones (as its table column) and
        # those left out because another method did not predict them (n_masked)
        excluded = int(metrics.conventions["n_excluded"])
        invalid_truth = int((~truth_valid).sum())
        counts = {"n_nonfinite_truth": invalid_truth, "n_unpredicted": missing}
        counts["n_masked"] = excluded - invalid_truth - missing
        metrics = replace(metrics, conventions={**metrics.conventions, **counts})
        results[name] = MethodResult(prediction, metrics, seconds, path, missing)
    return results


def write_tables(
    results: Mapping[str, Mapping[str, MethodResult]],
    out_dir: Path,
    *,
    protocol: Mapping[str, Any] | None = None,
    stem: str = "metrics",
    overwrite: bool = False,
    notes: Mapping[tuple[str, str], str] | None = None,
) -> dict[str, Path]:
    """Write the metric tables (CSV + conventions sidecar, JSON, Markdown) of scored results.

    Rows are keyed ``<case>/<method>`` when there are several cases, else ``<method>``; each method's
    wall time and unpredicted pixels are recorded as extra columns, and ``notes`` ((case, method) ->
    text, e.g. "trained on this case") as a "note" column.
    """
    reports: dict[str, MetricReport] = {}
    extra: dict[str, dict[str, object]] = {}
    several = len(results) > 1
    for case_name, methods in results.items():
        for method, result in methods.items():
            if result.metrics is None:
                continue
            key = f"{case_name}/{method}" if several else method
            reports[key] = result.metrics
            extra[key] = {
                "case": case_name,
                # a kept output (--skip-existing) was not timed: n/a in tables, null in JSON
                "seconds": None if math.isnan(result.seconds) else round(result.seconds, 3),
                "unpredicted": result.n_unpredicted,
            }
            if notes:
                extra[key]["note"] = notes.get((case_name, method), "")
    if not reports:
        return {}
    paths = {
        "csv": out_dir / f"{stem}.csv",
        "json": out_dir / f"{stem}.json",
        "markdown": out_dir / f"{stem}.md",
    }
    for path in (*paths.values(), report.sidecar_path(paths["csv"])):
        raster.check_writable(path, overwrite=overwrite)
    protocol_dict = dict(protocol or {})
    report.write_metrics_csv(paths["csv"], reports, extra=extra, protocol=protocol_dict)
    report.write_metrics_json(paths["json"], reports, extra=extra, protocol=protocol_dict)
    markdown = report.metrics_markdown(reports, per_band=False, extra=extra)
    with_protocol = "".join(f"- {k}: {v}\n" for k, v in protocol_dict.items())
    text = f"{markdown}\n\nProtocol:\n{with_protocol}" if with_protocol else markdown
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(text + "\n")
    return paths


#: Validation hold-out (bottom fraction of the training rows) when the data have no validation cases.
DEFAULT_VAL_HOLDOUT = 0.25

#: Files that make a folder a training run.
RUN_FILES: tuple[str, ...] = ("last.ckpt", "best.ckpt", "config.json", "history.csv")


def winner_sentence(
    results: Mapping[str, Mapping[str, MethodResult]],
    metric: str = "rmse",
    *,
    notes: Mapping[tuple[str, str], str] | None = None,
) -> str:
    """One sentence: which method has the best mean ``metric`` over the cases, and by how much (a tie
    when the two best are within 0.05 %). ``notes`` ((case, method) -> note, e.g. "TRAINED ON THIS
    CASE") are methods whose mean includes a case that is no fair test of them: the sentence says so.
    Cases scored on fewer than :data:`MIN_SCORED_FRACTION` of their pixels (a truth almost all cloud)
    are left out of the means while other cases remain, and the sentence says which."""
    sparse = [name for name, methods in results.items() if _scored_fraction(methods) < MIN_SCORED_FRACTION]
    if sparse and len(sparse) < len(results):
        results = {name: methods for name, methods in results.items() if name not in sparse}
    else:
        sparse = []
    values: dict[str, list[float]] = {}
    for methods in results.values():
        for name, result in methods.items():
            value = result.metrics.mean.get(metric) if result.metrics else None
            if value is not None and np.isfinite(value):
                values.setdefault(name, []).append(value)
    means = {name: float(np.mean(v)) for name, v in values.items() if len(v) == len(results)}
    if not means:
        return "no method was scored on every case"
    ranked = sorted(means, key=means.__getitem__)
    best = ranked[0]
    if len(ranked) == 1:
        return f"{best}: mean {metric.upper()} {means[best]:.4f} over {len(results)} case(s)"
    second = ranked[1]
    gain = 100 * (means[second] - means[best]) / means[second]
    head = f"best mean {metric.upper()} over {len(results)} case(s): "
    if gain < 0.05:
        sentence = f"{head}{best} and {second} tie at {means[best]:.4f} ({gain:.2f}% apart)"
    else:
        sentence = (
            f"{head}{best} {means[best]:.4f}, {gain:.1f}% lower than the next, {second} {means[second]:.4f}"
        )
    unfair = sorted({name for _, name in (notes or {}) if name in (best, second)})
    if unfair:
        sentence += f"; {' and '.join(unfair)}: the mean includes cases it was trained on, no fair test"
    if sparse:
        sentence += (
            f" ({len(sparse)} case(s) scored on under {MIN_SCORED_FRACTION:.0%} of their pixels left out: "
            f"{', '.join(sparse)})"
        )
    return sentence


#: Cases scored on a smaller fraction of their pixels are warned about and left out of the winner's mean.
MIN_SCORED_FRACTION = 0.01


def _scored_fraction(methods: Mapping[str, MethodResult]) -> float:
    """The fraction of a case's pixels its methods were scored on (1 when unknown)."""
    for result in methods.values():
        if result.metrics is not None:
            conventions = result.metrics.conventions
            return float(conventions["n_valid"]) / max(float(conventions["n_pixels"]), 1.0)
    return 1.0


@dataclass
class ExperimentResult:
    """Outputs of :func:`run_experiment`."""

    train: Any  # stfusion.train.TrainResult
    test_results: dict[str, dict[str, MethodResult]]
    tables: dict[str, Path]
    test_split: str | None  # None on the ranks > 0 of a torchrun job, which do not test


def run_experiment(
    data_dir: Path,
    config: Any,  # stfusion.train.TrainConfig
    *,
    resume: bool = False,
    overwrite: bool = False,
    test_dates: Sequence[dt.date] = (),
    tiles: TileOptions | None = None,
    baselines: Sequence[str] = ("coarse-delta", "persistence"),
    ratio: float | None = None,
    context: distributed.Context | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    say: Callable[[str], None] = log.info,
) -> ExperimentResult:
    """Train on ``data_dir/train``, select on ``data_dir/val``, then test the best model.

    The test split is ``data_dir/test``, or ``val`` when there is no test folder (said through ``say``).
    Predictions and metric tables of MLFF-GAN and ``baselines`` go to ``<save_dir>/test``. A save folder
    that holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (replace it).
    """
    from stfusion.checkpoint import load as load_checkpoint
    from stfusion.scenes import discover, split_cases
    from stfusion.train import train

    context = context or distributed.Context(device=config.device)
    data_dir = Path(data_dir)
    save_dir = Path(config.save_dir)
    if save_dir.exists() and not save_dir.is_dir():
        raise InputError(f"{save_dir}: exists and is not a folder; --save-dir needs a folder")
    existing = [name for name in RUN_FILES if (save_dir / name).exists()]
    if existing and not (resume or overwrite):
        raise InputError(
            f"{save_dir}: holds a training run ({', '.join(existing)}); pass --resume to continue it or "
            "--overwrite to replace it, or choose another --save-dir"
        )
    splits = split_cases(discover(data_dir), test_dates=test_dates)
    train_cases, val_cases, test_cases = splits.train, splits.val, splits.test
    if not train_cases:
        raise InputError(f"{data_dir}: no training cases (expected {data_dir / 'train'}/<pair folders>)")
    if not val_cases and not config.val_holdout:
        config.val_holdout = DEFAULT_VAL_HOLDOUT
        log.info(
            "%s: no validation folder; validating on the bottom %.0f%% of the rows of the training cases "
            "(--val-holdout)",
            data_dir,
            100 * DEFAULT_VAL_HOLDOUT,
        )
    log.info(
        "%s: %d training, %d test case(s); split %s", data_dir, len(train_cases), len(test_cases), splits.rule
    )
    holdout = bool(getattr(config, "val_holdout", 0))
    if not val_cases and not holdout:
        raise InputError(
            f"{data_dir}: no validation cases (expected {data_dir / 'val'}/<pair folders>, "
            "or validate on held-out rows of the training cases with val_holdout)"
        )
    test_split = "test"
    if not test_cases:
        if not val_cases:
            raise InputError(f"{data_dir}: no test or val cases to score (expected {data_dir / 'test'})")
        say(f"{data_dir}: no test folder; testing on the validation cases (val)")
        test_cases, test_split = val_cases, "val"
    reading = config.read_options()
    band_names = CaseReader(train_cases[0], options=reading).band_names
    if overwrite and not resume and context.is_main:
        for name in existing:
            (save_dir / name).unlink()
    trained = train(
        config,
        train_cases,
        val_cases,
        resume=resume,
        band_names=band_names,
        context=context,
        on_step=on_step,
        on_epoch=on_epoch,
    )
    if not context.is_main:
        return ExperimentResult(train=trained, test_results={}, tables={}, test_split=None)
    out_dir = Path(config.save_dir) / "test"
    tile_options = tiles or TileOptions(tile=config.val_tile, overlap=config.val_overlap)
    runtime = {"device": context.device, "tiles": tile_options}
    preparers = {
        "mlffgan": get("mlffgan").preparer(checkpoint=load_checkpoint(trained.best), runtime=runtime)
    }
    preparers.update({name: get(name).preparer() for name in baselines})
    results = run_methods(
        test_cases,
        preparers,
        out_dir=out_dir,
        ratio=ratio,
        reading=reading,
        output=OutputOptions(overwrite=True),
        on_case=figure_reporter(out_dir, say),
    )
    protocol = {
        "data": str(data_dir),
        "train": ", ".join(c.name for c in train_cases),
        "val (model selection)": (
            f"bottom {config.val_holdout:.0%} of the rows of each training case (spatial hold-out)"
            if holdout
            else ", ".join(c.name for c in val_cases)
        ),
        f"{test_split} (scored)": ", ".join(c.name for c in test_cases if c.name in results),
        "epochs": config.epochs,
        "coarse_factor": config.coarse_factor,
        "tile": f"{tile_options.tile}, overlap {tile_options.overlap}",
        "metrics": "whole scene, docs/metrics.md conventions (SSIM data_range 2)",
    }
    tables = write_tables(results, out_dir, protocol=protocol, overwrite=True)
    return ExperimentResult(train=trained, test_results=results, tables=tables, test_split=test_split)


def quicklook(
    path: Path,
    inputs: CaseInputs,
    predictions: Mapping[str, np.ndarray],
    *,
    rgb_bands: tuple[int, int, int],
    metrics: Mapping[str, Mapping[str, float | None]] | None = None,
) -> Path:
    """Figure: the inputs, each method's prediction and the truth (RGB or false colour), error maps.

    Panel titles carry the dates and, with ``metrics`` (method -> {"rmse": .., "ssim": ..}), the scores.
    """
    assert inputs.fine_t2 is not None
    panels = {"coarse t1": inputs.coarse_t1, "fine t1": inputs.fine_t1, "coarse t2": inputs.coarse_t2}
    case = inputs.case
    dates = {
        "coarse t1": case.date_t1,
        "fine t1": case.date_t1,
        "coarse t2": case.date_t2,
        "truth": case.date_t2,
    }
    return report.compare_figure(
        path,
        inputs=panels,
        predictions=dict(predictions),
        truth=inputs.fine_t2,
        rgb_bands=rgb_bands,
        metrics=metrics,
        dates={k: str(v) for k, v in dates.items() if v != dt.date.min},
        band_names=inputs.band_names,
    )


def figure_reporter(
    out_dir: Path, say: Callable[[str], None]
) -> Callable[[CaseInputs, dict[str, MethodResult]], None]:
    """An ``on_case`` callback for :func:`run_methods`: each case's figure (:func:`case_figure`), told
    with ``say``; a case without a truth (nothing to compare with) gets none."""

    def report(inputs: CaseInputs, results: dict[str, MethodResult]) -> None:
        if inputs.case.fine_t2 is not None:
            say(f"figure: {case_figure(out_dir, inputs, results)}")

    return report


def case_figure(out_dir: Path, inputs: CaseInputs, results: Mapping[str, MethodResult]) -> Path:
    """``out_dir/<case>.png``: inputs, predictions, truth and error maps, metric values in the titles."""
    figure = out_dir / f"{inputs.case.name}.png"
    predictions = {name: result.prediction for name, result in results.items()}
    metrics = {
        name: {"rmse": r.metrics.mean["rmse"], "ssim": r.metrics.mean["ssim"]}
        for name, r in results.items()
        if r.metrics is not None
    }
    return quicklook(
        figure, inputs, predictions, rgb_bands=default_rgb(inputs.band_names), metrics=metrics or None
    )


def default_rgb(band_names: Sequence[str]) -> tuple[int, int, int]:
    """Red, green, blue band indices when the names say so; else the first three bands."""
    lookup = {name.lower(): i for i, name in enumerate(band_names)}
    if {"red", "green", "blue"} <= set(lookup):
        return lookup["red"], lookup["green"], lookup["blue"]
    if len(band_names) >= 3:
        return 2, 1, 0
    return 0, 0, 0
