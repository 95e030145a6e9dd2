"""End-to-end jobs shared by the CLI, ``run.py`` and the demo: predict cases, score them, compare.

Each function works on :class:`~stfusion.scenes.FusionCase` records and writes its outputs through
:mod:`stfusion.raster` and :mod:`stfusion.report` (atomic writes, georeferenced GeoTIFFs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from stfusion import distributed, raster, report
from stfusion.atomic import atomic_path
from stfusion.checkpoint import load_generator
from stfusion.errors import InputError
from stfusion.inputs import QUALITY_BITS, CaseReader, ReadOptions, quality_flags
from stfusion.methods import get_method
from stfusion.metrics import MetricReport, compute_metrics
from stfusion.predict import TileOptions, predict_with_generator
from stfusion.scenes import FusionCase

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


def read_case(
    case: FusionCase,
    *,
    scale: float = 1e-4,
    require_truth: bool = False,
    options: ReadOptions | None = None,
) -> CaseInputs:
    """Validate a case and read its images (whole scenes) through :class:`~stfusion.inputs.CaseReader`."""
    reader = CaseReader(case, scale=scale, require_truth=require_truth, options=options)
    images = {role: reader.read(role) for role in reader.roles}
    reference, names = reader.reference, reader.band_names
    return CaseInputs(
        case=case,
        coarse_t1=images["coarse_t1"],
        fine_t1=images["fine_t1"],
        coarse_t2=images["coarse_t2"],
        fine_t2=images.get("fine_t2"),
        reference=reference,
        band_names=names,
    )


#: A predictor takes a case's inputs and returns the (C, H, W) prediction.
Predictor = Callable[[CaseInputs], np.ndarray]


@dataclass
class CheckpointPredictor:
    """Predict with a trained MLFF-GAN checkpoint (its degradation factor and model travel with it)."""

    path: Path
    tiles: TileOptions = field(default_factory=TileOptions)
    device: str = "cpu"
    amp: bool = False
    _generator: nn.Module | None = None
    _checkpoint: dict[str, Any] | None = None

    def __call__(self, inputs: CaseInputs) -> np.ndarray:
        bands = inputs.fine_t1.shape[0]
        if self._generator is None:
            self._generator, self._checkpoint = load_generator(self.path, bands=bands)
        assert self._checkpoint is not None
        if self._checkpoint["model"]["bands"] != bands:
            raise InputError(
                f"{self.path}: checkpoint is for {self._checkpoint['model']['bands']} bands, "
                f"but {inputs.case.fine_t1} has {bands}"
            )
        return predict_with_generator(
            self._generator,
            inputs.coarse_t1,
            inputs.fine_t1,
            inputs.coarse_t2,
            coarse_factor=int(self._checkpoint["coarse_factor"]),
            options=self.tiles,
            device=self.device,
            amp=self.amp,
        )


def fusion_function(name: str, **options: Any) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """A named fusion method with its options bound: (coarse t1, fine t1, coarse t2) -> fine t2.

    Bad options (unknown keys, invalid values) raise InputError naming the method.
    """
    fusion = get_method(name)

    def predict(coarse_t1: np.ndarray, fine_t1: np.ndarray, coarse_t2: np.ndarray) -> np.ndarray:
        try:
            return fusion(coarse_t1, fine_t1, coarse_t2, **options)
        except (TypeError, ValueError) as exc:
            raise InputError(f"method {name}: {exc}") from exc

    return predict


def method_predictor(name: str, **options: Any) -> Predictor:
    """A Predictor for a named fusion method (persistence, coarse-delta, starfm, fsdaf)."""
    fusion = fusion_function(name, **options)

    def predict(inputs: CaseInputs) -> np.ndarray:
        return fusion(inputs.coarse_t1, inputs.fine_t1, inputs.coarse_t2)

    return predict


@dataclass
class MethodResult:
    """One method on one case: its prediction, metrics and wall time (seconds)."""

    prediction: np.ndarray
    metrics: MetricReport | None
    seconds: float
    output: Path | None = None


#: What the values of the quality band written by :func:`run_methods` mean.
QUALITY_DESCRIPTION = "0 = all inputs valid; else the sum of " + ", ".join(
    f"{bit} = {role} invalid" for role, bit in QUALITY_BITS.items()
)


def run_methods(
    cases: Sequence[FusionCase],
    predictors: Mapping[str, Predictor],
    *,
    out_dir: Path | None = None,
    scale: float = 1e-4,
    ratio: float | None = None,
    overwrite: bool = False,
    write_predictions: bool = True,
    skip_existing: bool = False,
    quality: bool = False,
    options: ReadOptions | None = None,
    on_case: Callable[[CaseInputs, dict[str, MethodResult]], None] | None = None,
) -> dict[str, dict[str, MethodResult]]:
    """Predict every case with every method; score against the truth when it is known.

    Predictions go to ``out_dir/<case>/<method>.tif`` (georeferenced like fine t1) when
    ``write_predictions``; with ``quality`` also ``out_dir/<case>/quality.tif`` (uint8,
    :data:`QUALITY_DESCRIPTION`). Existing outputs are refused before any work unless ``overwrite``;
    with ``skip_existing`` they are kept and read back for scoring instead of predicted again, so an
    interrupted run (outputs are written atomically: each is complete or absent) is resumed by
    rerunning it. Metrics count only pixels valid in the truth and predicted (see
    :mod:`stfusion.metrics`). ``on_case(inputs, results)`` is called after each case, with its images
    still in memory. Returns case name -> method name -> result.
    """
    outputs: dict[tuple[str, str], Path] = {}
    if out_dir is not None and write_predictions:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from exc
        names = [*predictors, *(["quality"] if quality else [])]
        outputs = {(c.name, n): out_dir / c.name / f"{n}.tif" for c in cases for n in names}
    for path in outputs.values():  # refuse existing outputs and unwritable folders before any work
        if skip_existing and path.exists():
            continue
        if path.parent.exists():
            raster.check_writable(path, overwrite=overwrite)
        else:  # the case folder is made later, in out_dir
            raster.check_writable(path.parent.parent / path.name, overwrite=True)
    results: dict[str, dict[str, MethodResult]] = {}
    for case in cases:
        inputs = read_case(case, scale=scale, options=options)
        results[case.name] = {}
        quality_path = outputs.get((case.name, "quality"))
        if quality_path is not None and not (skip_existing and quality_path.exists()):
            quality_path.parent.mkdir(parents=True, exist_ok=True)
            flags = quality_flags(inputs.coarse_t1, inputs.fine_t1, inputs.coarse_t2)
            raster.write_quality(
                quality_path, flags, inputs.reference, overwrite=overwrite, description=QUALITY_DESCRIPTION
            )
        for name, predictor in predictors.items():
            output = outputs.get((case.name, name))
            if output is not None and skip_existing and output.exists():
                log.info("%s %s: kept the existing %s", case.name, name, output)
                prediction = raster.read(output, scale=scale).data
                seconds = float("nan")
            else:
                start = time.perf_counter()
                prediction = predictor(inputs)
                seconds = time.perf_counter() - start
                if output is not None:
                    output.parent.mkdir(parents=True, exist_ok=True)
                    raster.write_like(output, prediction, inputs.reference, scale=scale, overwrite=overwrite)
            metrics = None
            if inputs.fine_t2 is not None:
                metrics = compute_metrics(
                    prediction, inputs.fine_t2, ratio=ratio, band_names=inputs.band_names
                )
            log.info("%s %s: %.2f s", case.name, name, seconds)
            results[case.name][name] = MethodResult(prediction, metrics, seconds, output)
        if on_case is not None:  # e.g. a figure, while the case's images are in memory
            on_case(inputs, results[case.name])
    return results


def write_tables(
    results: Mapping[str, Mapping[str, MethodResult]],
    out_dir: Path,
    *,
    protocol: Mapping[str, Any] | None = None,
    stem: str = "metrics",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the metric tables (CSV + conventions sidecar, JSON, Markdown) of scored results.

    Rows are keyed ``<case>/<method>`` when there are several cases, else ``<method>``; each method's
    wall time is recorded as an extra column.
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
            extra[key] = {"case": case_name, "seconds": round(result.seconds, 3)}
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
    tiles: TileOptions | None = None,
    baselines: Sequence[str] = ("coarse-delta", "persistence"),
    ratio: float | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    say: Callable[[str], None] = log.info,
) -> ExperimentResult:
    """Train on ``data_dir/train``, select on ``data_dir/val``, then test the best model.

    The test split is ``data_dir/test``, or ``val`` when there is no test folder (said through ``say``).
    Predictions and metric tables of MLFF-GAN and ``baselines`` go to ``<save_dir>/test``.
    """
    from stfusion.scenes import discover_paper_layout
    from stfusion.train import train

    data_dir = Path(data_dir)
    found = discover_paper_layout(data_dir)
    train_cases, val_cases, test_cases = (found.split(s) for s in ("train", "val", "test"))
    if not train_cases:
        raise InputError(f"{data_dir}: no training cases (expected {data_dir / 'train'}/<pair folders>)")
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
    reading = ReadOptions(resampling=config.resampling, min_overlap=config.min_overlap)
    band_names = CaseReader(train_cases[0], scale=config.scale, options=reading).band_names
    trained = train(
        config,
        train_cases,
        val_cases,
        resume=resume,
        band_names=band_names,
        on_step=on_step,
        on_epoch=on_epoch,
    )
    if not distributed.setup(config.device).is_main:
        return ExperimentResult(train=trained, test_results={}, tables={}, test_split=None)
    out_dir = Path(config.save_dir) / "test"
    out_dir.mkdir(parents=True, exist_ok=True)
    tile_options = tiles or TileOptions(tile=config.val_tile, overlap=config.val_overlap)
    predictors: dict[str, Predictor] = {
        "mlffgan": CheckpointPredictor(trained.best, tiles=tile_options, device=config.device)
    }
    predictors.update({name: method_predictor(name) for name in baselines})
    results = run_methods(
        test_cases,
        predictors,
        out_dir=out_dir,
        scale=config.scale,
        ratio=ratio,
        overwrite=True,
        options=reading,
    )
    protocol = {
        "data": str(data_dir),
        "train": ", ".join(c.name for c in train_cases),
        "val (model selection)": (
            f"bottom {config.val_holdout:.0%} of the rows of each training case (spatial hold-out)"
            if holdout
            else ", ".join(c.name for c in val_cases)
        ),
        f"{test_split} (scored)": ", ".join(c.name for c in test_cases),
        "epochs": config.epochs,
        "coarse_factor": config.coarse_factor,
        "tile": f"{tile_options.tile}, overlap {tile_options.overlap}",
        "metrics": "whole scene, METRICS.md conventions (SSIM data_range 2)",
    }
    tables = write_tables(results, out_dir, protocol=protocol, overwrite=True)
    return ExperimentResult(train=trained, test_results=results, tables=tables, test_split=test_split)


def quicklook(
    path: Path,
    inputs: CaseInputs,
    predictions: Mapping[str, np.ndarray],
    *,
    rgb_bands: tuple[int, int, int],
) -> Path:
    """Figure: the inputs, each method's prediction and the truth (RGB or false colour), error maps."""
    assert inputs.fine_t2 is not None
    panels = {"coarse t1": inputs.coarse_t1, "fine t1": inputs.fine_t1, "coarse t2": inputs.coarse_t2}
    return report.compare_figure(
        path, inputs=panels, predictions=dict(predictions), truth=inputs.fine_t2, rgb_bands=rgb_bands
    )


def default_rgb(band_names: Sequence[str]) -> tuple[int, int, int]:
    """Red, green, blue band indices when the names say so; else the first three bands."""
    lookup = {name.lower(): i for i, name in enumerate(band_names)}
    if {"red", "green", "blue"} <= set(lookup):
        return lookup["red"], lookup["green"], lookup["blue"]
    if len(band_names) >= 3:
        return 2, 1, 0
    return 0, 0, 0
