"""Metric tables (CSV, JSON, Markdown, terminal) and quick-look figures (PNG).

Every writer takes a path and writes atomically: the content goes to a temporary file in the same
folder, which then replaces ``path`` (``os.replace``), so an error never leaves a partial file.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with an Agg canvas; pyplot and the
global backend are never touched, so this module is safe in scripts, servers and notebooks.

Display conventions (figures only; metrics never see them):

- RGB panels show bands ``rgb_bands`` (indices into the C axis, e.g. ``(2, 1, 0)`` for red, green,
  blue of a blue-green-red-... stack; any three indices give a false-colour view). All panels share
  one linear stretch per displayed channel: the ``percentiles`` (default 2 and 98) of the finite
  values of a reference image (the truth when given, else the first panel), clipped to 0..1.
- Pixels that are not finite in any displayed band are drawn in :data:`NAN_COLOUR` (neutral grey).
- Error maps show prediction minus truth (mean over bands, or one band ``error_band``) with a
  diverging colormap and symmetric limits +-L, L = ``error_limit`` or the 99th percentile of the
  finite absolute errors (pooled over methods in :func:`compare_figure`).
- Images larger than ``max_size`` pixels per side are shown decimated (every k-th pixel); the
  stretch and the error limit are computed at full resolution.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from stfusion.atomic import atomic_path
from stfusion.metrics import (
    MEAN_ROW,
    METRIC_COLUMNS,
    NONFINITE_ENCODING,
    SCENE_METRICS,
    MetricReport,
    encode_float,
)

#: RGB colour of pixels with no finite value (neutral grey).
NAN_COLOUR: tuple[float, float, float] = (0.6, 0.6, 0.6)
#: Diverging colormap of error maps (blue = prediction too low, red = too high).
ERROR_CMAP = "RdBu_r"
#: Conventions copied into every CSV row, so each row is self-describing.
CSV_CONVENTION_COLUMNS: tuple[str, ...] = (
    "data_range",
    "ssim_data_range",
    "ergas_ratio",
    "uiqi_window",
    "n_valid",
    "n_excluded",
    "n_unpredicted",
    "sam_zero_vectors",
)
JSON_FORMAT = "stfusion.metrics"
JSON_VERSION = 1

Writer = Callable[[Path], None]


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------


def _atomic_write(path: str | os.PathLike[str], write: Writer) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it onto ``path``."""
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"cannot write {target}: folder {target.parent} does not exist; create it first"
        )
    with atomic_path(target) as tmp:
        write(tmp)
    return target


def _write_text(path: str | os.PathLike[str], text: str) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)

    return _atomic_write(path, write)


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def _check_reports(reports: Mapping[str, MetricReport]) -> None:
    if not reports:
        raise ValueError("reports is empty: pass a mapping method name -> MetricReport")
    for name, report in reports.items():
        if not isinstance(report, MetricReport):
            raise TypeError(f"reports[{name!r}] must be a MetricReport, got {type(report).__name__}")


def _check_extra(
    reports: Mapping[str, MetricReport],
    extra: Mapping[str, Mapping[str, object]] | None,
    reserved: Sequence[str],
) -> list[str]:
    """Validate ``extra`` and return its column names in order of first appearance."""
    if extra is None:
        return []
    unknown = [name for name in extra if name not in reports]
    if unknown:
        raise ValueError(f"extra has methods without a report: {unknown}; known: {list(reports)}")
    keys: list[str] = []
    for fields in extra.values():
        for key in fields:
            if key in reserved:
                raise ValueError(f"extra field {key!r} clashes with a table column; rename it")
            if key not in keys:
                keys.append(key)
    return keys


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float | np.floating):
        encoded = encode_float(float(value))
        return encoded if isinstance(encoded, str) else repr(encoded)
    return str(value)


def sidecar_path(csv_path: str | os.PathLike[str]) -> Path:
    """Path of the conventions sidecar of a metrics CSV: ``metrics.csv`` -> ``metrics.conventions.json``."""
    path = Path(csv_path)
    return path.with_name(f"{path.stem}.conventions.json")


def write_metrics_csv(
    path: str | os.PathLike[str],
    reports: Mapping[str, MetricReport],
    *,
    extra: Mapping[str, Mapping[str, object]] | None = None,
    protocol: Mapping[str, object] | None = None,
) -> tuple[Path, Path]:
    """Write one CSV row per (method, band), including each method's ``"mean"`` row.

    Columns: ``method``, ``band``, every metric of :data:`METRIC_COLUMNS`, the conventions of
    :data:`CSV_CONVENTION_COLUMNS`, then the ``extra`` fields (e.g. wall time), repeated on every row
    of the method. Cells: floats at full precision, ``inf``/``-inf``/``nan`` as such, empty where a
    metric does not apply (SAM/ERGAS on band rows) or was not computed (ERGAS without a ratio).

    The full conventions of every method (and ``protocol``, e.g. crop, split, tiles) go to the
    sidecar JSON :func:`sidecar_path` next to the CSV.

    Args:
        path: CSV file to write (its folder must exist).
        reports: method name -> report.
        extra: optional method name -> {field: value} added as columns.
        protocol: optional description of the evaluation protocol, written to the sidecar.

    Returns:
        (CSV path, sidecar path).
    """
    _check_reports(reports)
    reserved = ["method", "band", *METRIC_COLUMNS, *CSV_CONVENTION_COLUMNS]
    extra_keys = _check_extra(reports, extra, reserved)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*reserved, *extra_keys])
    for method, report in reports.items():
        conv = [report.conventions.get(key) for key in CSV_CONVENTION_COLUMNS]
        fields = (extra or {}).get(method, {})
        added = [fields.get(key) for key in extra_keys]
        for row in report.rows():
            cells = [method, row["band"], *(row[m] for m in METRIC_COLUMNS), *conv, *added]
            writer.writerow([_csv_cell(cell) for cell in cells])
    sidecar = {
        "format": f"{JSON_FORMAT}.csv-conventions",
        "version": JSON_VERSION,
        "csv": Path(path).name,
        "nonfinite_encoding": "CSV cells: inf, -inf, nan; empty = not computed / not applicable",
        "protocol": _json_value(protocol),
        "methods": {name: _json_value(report.conventions) for name, report in reports.items()},
    }
    side = _write_text(sidecar_path(path), json.dumps(sidecar, indent=2, allow_nan=False) + "\n")
    return _write_text(path, buffer.getvalue()), side


def _json_value(value: Any) -> Any:
    """JSON-safe copy: non-finite floats as strings, numpy scalars/arrays as Python values."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, np.generic):
        return _json_value(value.item())
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, np.ndarray):
        return _json_value(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) to JSON")


def write_metrics_json(
    path: str | os.PathLike[str],
    reports: Mapping[str, MetricReport],
    *,
    extra: Mapping[str, Mapping[str, object]] | None = None,
    protocol: Mapping[str, object] | None = None,
) -> Path:
    """Write all reports, their conventions and per-method ``extra`` fields as strict JSON.

    Layout: ``{"format", "version", "nonfinite_encoding", "protocol", "methods": {name:
    {"metrics": MetricReport.to_dict(), "extra": {...}}}}``. Non-finite floats are the strings
    ``"inf"``, ``"-inf"``, ``"nan"``; null means not computed. Read back with
    :func:`read_metrics_json`.
    """
    _check_reports(reports)
    _check_extra(reports, extra, [])
    document = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "nonfinite_encoding": NONFINITE_ENCODING,
        "protocol": _json_value(protocol),
        "methods": {
            name: {
                "metrics": report.to_dict(),
                "extra": _json_value(dict((extra or {}).get(name, {}))),
            }
            for name, report in reports.items()
        },
    }
    return _write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


def read_metrics_json(
    path: str | os.PathLike[str],
) -> tuple[dict[str, MetricReport], dict[str, dict[str, Any]]]:
    """Read a file of :func:`write_metrics_json`: (method -> report, method -> extra fields).

    Extra fields are returned as stored (non-finite floats stay encoded as strings).
    """
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    if not isinstance(document, dict) or document.get("format") != JSON_FORMAT:
        raise ValueError(f"{path} is not a {JSON_FORMAT} JSON file")
    reports: dict[str, MetricReport] = {}
    extras: dict[str, dict[str, Any]] = {}
    for name, entry in document["methods"].items():
        reports[name] = MetricReport.from_dict(entry["metrics"])
        extras[name] = dict(entry.get("extra") or {})
    return reports, extras


def _fmt(value: object, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return "nan"
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        return f"{number:.{digits}f}"
    return str(value)


def _cell_text(row: Mapping[str, Any], metric: str, digits: int) -> str:
    """Table text: ``-`` for scene metrics on band rows (not applicable), ``n/a`` if not computed."""
    if metric in SCENE_METRICS and row["band"] != MEAN_ROW:
        return "-"
    return _fmt(row[metric], digits)


def _conventions_line(report: MetricReport) -> str:
    conv = report.conventions
    ratio = conv.get("ergas_ratio")
    return (
        f"data_range={_fmt(conv.get('data_range'), 3)}, "
        f"ssim_data_range={_fmt(conv.get('ssim_data_range'), 3)}, "
        f"ERGAS ratio={'not given (ERGAS not computed)' if ratio is None else _fmt(ratio, 4)}, "
        f"UIQI window={conv.get('uiqi_window')}, SAM in degrees, bias = prediction - truth, "
        f"valid pixels={conv.get('n_valid')}, excluded={conv.get('n_excluded')}, "
        f"unpredicted={conv.get('n_unpredicted')}"
    )


def metrics_markdown(
    reports: Mapping[str, MetricReport],
    *,
    per_band: bool = False,
    extra: Mapping[str, Mapping[str, object]] | None = None,
    metrics: Sequence[str] = METRIC_COLUMNS,
    digits: int = 4,
) -> str:
    """A Markdown table of the band-mean row of each method (and every band row if ``per_band``).

    ``extra`` fields (e.g. wall time) become additional columns. The conventions of each method
    follow the table as a bullet list. ``-``: not applicable (SAM, ERGAS on band rows);
    ``n/a``: not computed (ERGAS without a ratio) or no extra value.
    """
    _check_reports(reports)
    unknown = [m for m in metrics if m not in METRIC_COLUMNS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRIC_COLUMNS)}")
    extra_keys = _check_extra(reports, extra, ["method", "band", *metrics])
    header = ["method", *(["band"] if per_band else []), *metrics, *extra_keys]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < (2 if per_band else 1) else "---:" for i in range(len(header))) + "|",
    ]
    for method, report in reports.items():
        fields = (extra or {}).get(method, {})
        rows = report.rows() if per_band else report.rows()[-1:]
        for row in rows:
            cells = [method, *([row["band"]] if per_band else [])]
            cells += [_cell_text(row, m, digits) for m in metrics]
            cells += [_fmt(fields.get(key), digits) for key in extra_keys]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Conventions:")
    lines += [f"- {method}: {_conventions_line(report)}" for method, report in reports.items()]
    return "\n".join(lines) + "\n"


def format_table(report: MetricReport, *, digits: int = 4) -> str:
    """Plain-text per-band table (band rows, then the mean row) followed by the conventions."""
    if not isinstance(report, MetricReport):
        raise TypeError(f"report must be a MetricReport, got {type(report).__name__}")
    header = ["band", *METRIC_COLUMNS]
    body = [
        [str(row["band"]), *(_cell_text(row, m, digits) for m in METRIC_COLUMNS)] for row in report.rows()
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    for cells in body:
        if cells[0] == MEAN_ROW:
            out.append("  ".join("-" * w for w in widths))
        out.append(line(cells))
    out.append(_conventions_line(report))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _check_image(name: str, image: np.ndarray, rgb_bands: tuple[int, int, int]) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"{name} must have shape (C, H, W), got {image.shape}")
    n_bands = image.shape[0]
    if any(not (-n_bands <= b < n_bands) for b in rgb_bands):
        raise ValueError(
            f"rgb_bands {rgb_bands} out of range for {name} with {n_bands} bands; "
            "pass rgb_bands=(r, g, b) band indices (e.g. (0, 0, 0) for a single band)"
        )
    return image


def _check_display_args(
    rgb_bands: tuple[int, int, int], percentiles: tuple[float, float], max_size: int | None
) -> None:
    if len(rgb_bands) != 3:
        raise ValueError(f"rgb_bands must be three band indices, got {rgb_bands}")
    low, high = percentiles
    if not (0.0 <= low < high <= 100.0):
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be a positive number of pixels or None, got {max_size}")


def stretch_limits(
    reference: np.ndarray,
    *,
    rgb_bands: tuple[int, int, int] = (2, 1, 0),
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Per displayed channel (low, high) reflectance: percentiles of the finite values of
    ``reference`` (C, H, W) in bands ``rgb_bands``. Returns two arrays of shape (3,)."""
    reference = _check_image("reference", reference, rgb_bands)
    low = np.zeros(3)
    high = np.ones(3)
    for channel, band in enumerate(rgb_bands):
        values = reference[band][np.isfinite(reference[band])]
        if values.size:
            low[channel], high[channel] = np.percentile(values, percentiles)
        if high[channel] <= low[channel]:
            high[channel] = low[channel] + 1e-6  # constant band: avoid 0/0, show it dark
    return low, high


def _decimate(array: np.ndarray, max_size: int | None) -> np.ndarray:
    if max_size is None:
        return array
    step = max(1, math.ceil(max(array.shape[-2:]) / max_size))
    return array[..., ::step, ::step]


def _to_rgb(
    image: np.ndarray,
    rgb_bands: tuple[int, int, int],
    low: np.ndarray,
    high: np.ndarray,
    max_size: int | None,
) -> np.ndarray:
    """(H', W', 3) float RGB in 0..1; non-finite pixels in NAN_COLOUR."""
    bands = _decimate(np.stack([image[b] for b in rgb_bands]).astype(np.float64), max_size)
    with np.errstate(invalid="ignore"):
        rgb = (bands - low[:, None, None]) / (high - low)[:, None, None]
    rgb = np.clip(np.moveaxis(rgb, 0, -1), 0.0, 1.0)
    missing = ~np.isfinite(bands).all(axis=0)
    rgb[missing] = NAN_COLOUR
    return rgb


def _error_map(prediction: np.ndarray, truth: np.ndarray, error_band: int | None) -> np.ndarray:
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} must have one shape")
    if error_band is None:
        with np.errstate(invalid="ignore"):
            return np.mean(prediction.astype(np.float64) - truth, axis=0)
    if not (-truth.shape[0] <= error_band < truth.shape[0]):
        raise ValueError(f"error_band {error_band} out of range for {truth.shape[0]} bands")
    with np.errstate(invalid="ignore"):
        return prediction[error_band].astype(np.float64) - truth[error_band]


def _error_limit(errors: Sequence[np.ndarray], error_limit: float | None) -> float:
    if error_limit is not None:
        if not (math.isfinite(error_limit) and error_limit > 0):
            raise ValueError(f"error_limit must be a positive number, got {error_limit}")
        return float(error_limit)
    finite = [np.abs(e[np.isfinite(e)]) for e in errors]
    pooled = np.concatenate(finite) if finite else np.empty(0)
    limit = float(np.percentile(pooled, 99.0)) if pooled.size else 0.0
    return limit if limit > 0 else 1e-6


def _new_figure(n_rows: int, n_cols: int, panel_inches: float) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(panel_inches * n_cols, panel_inches * n_rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return figure, axes


def _save_png(path: str | os.PathLike[str], figure: Figure, dpi: int) -> Path:
    def write(tmp: Path) -> None:
        figure.savefig(tmp, format="png", dpi=dpi)

    return _atomic_write(path, write)


def _show_error(
    figure: Figure,
    axes: Sequence[Axes],
    errors: Sequence[np.ndarray],
    limit: float,
    titles: Sequence[str],
    max_size: int | None,
) -> None:
    cmap = colormaps[ERROR_CMAP].with_extremes(bad=NAN_COLOUR)
    image = None
    for ax, error, title in zip(axes, errors, titles, strict=True):
        shown = np.ma.masked_invalid(_decimate(error, max_size))
        image = ax.imshow(shown, cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    if image is not None:
        colorbar = figure.colorbar(image, ax=list(axes), shrink=0.8)
        colorbar.set_label("prediction - truth (reflectance)")


def _error_title(error_band: int | None) -> str:
    return "error, mean of bands" if error_band is None else f"error, band {error_band}"


def quicklook_png(
    path: str | os.PathLike[str],
    *,
    panels: Mapping[str, np.ndarray],
    truth: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    rgb_bands: tuple[int, int, int] = (2, 1, 0),
    percentiles: tuple[float, float] = (2.0, 98.0),
    error_band: int | None = None,
    error_limit: float | None = None,
    title: str | None = None,
    max_size: int | None = 1024,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> Path:
    """Write a PNG with one RGB panel per image and, given truth and prediction, an error map.

    Panels, left to right: ``panels`` in order, then ``prediction`` and ``truth`` when given, then
    the error map (prediction - truth) when both are given. See the module docstring for the
    stretch (percentiles of the truth, else of the first panel), NaN colour and error limits.

    Args:
        path: PNG file to write (its folder must exist).
        panels: title -> (C, H, W) reflectance image (may be empty if truth or prediction is given).
        truth, prediction: optional (C, H, W) reflectance images of one shape.
        rgb_bands: band indices shown as red, green, blue.
        percentiles: (low, high) stretch percentiles.
        error_band: None for the mean error over bands, else the band index.
        error_limit: symmetric colour limit of the error map (default: 99th percentile of |error|).
        title: optional figure title.
        max_size: largest displayed side in pixels (decimated beyond); None shows full resolution.
        panel_inches, dpi: size of each panel and resolution of the PNG.
    """
    _check_display_args(rgb_bands, percentiles, max_size)
    images = {name: _check_image(f"panels[{name!r}]", im, rgb_bands) for name, im in panels.items()}
    clash = [name for name in ("prediction", "truth") if name in images]
    if clash:
        raise ValueError(f"panel titles {clash} are reserved for the truth/prediction arguments; rename them")
    if prediction is not None:
        images["prediction"] = _check_image("prediction", prediction, rgb_bands)
    if truth is not None:
        images["truth"] = _check_image("truth", truth, rgb_bands)
    if not images:
        raise ValueError("nothing to show: pass panels, truth or prediction")
    reference = images["truth"] if truth is not None else next(iter(images.values()))
    low, high = stretch_limits(reference, rgb_bands=rgb_bands, percentiles=percentiles)
    errors = []
    if truth is not None and prediction is not None:
        errors.append(_error_map(images["prediction"], images["truth"], error_band))
    figure, axes = _new_figure(1, len(images) + len(errors), panel_inches)
    for ax, (name, image) in zip(axes[0], images.items(), strict=False):
        ax.imshow(_to_rgb(image, rgb_bands, low, high, max_size), interpolation="nearest")
        ax.set_title(name, fontsize=9)
    if errors:
        limit = _error_limit(errors, error_limit)
        _show_error(figure, [axes[0, -1]], errors, limit, [_error_title(error_band)], max_size)
    if title:
        figure.suptitle(title)
    return _save_png(path, figure, dpi)


def compare_figure(
    path: str | os.PathLike[str],
    *,
    inputs: Mapping[str, np.ndarray],
    predictions: Mapping[str, np.ndarray],
    truth: np.ndarray,
    rgb_bands: tuple[int, int, int] = (2, 1, 0),
    percentiles: tuple[float, float] = (2.0, 98.0),
    error_band: int | None = None,
    error_limit: float | None = None,
    title: str | None = None,
    max_size: int | None = 1024,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> Path:
    """Write a PNG comparing methods: RGB panels on top, error maps below on one colour scale.

    Top row: ``inputs`` (e.g. coarse_t1, fine_t1, coarse_t2), each prediction, then the truth, all
    with the truth's stretch. Bottom row: prediction - truth under each prediction, symmetric limits
    shared by all methods (``error_limit`` or the 99th percentile of the pooled |errors|).

    Args:
        path: PNG file to write (its folder must exist).
        inputs: title -> (C, H, W) reflectance image (may be empty).
        predictions: method name -> (C, H, W) prediction, same shape as ``truth`` (at least one).
        truth: (C, H, W) reflectance at the target date.
        Others: as in :func:`quicklook_png`.
    """
    _check_display_args(rgb_bands, percentiles, max_size)
    if not predictions:
        raise ValueError("predictions is empty: pass at least one method name -> prediction")
    truth = _check_image("truth", truth, rgb_bands)
    shown = {name: _check_image(f"inputs[{name!r}]", im, rgb_bands) for name, im in inputs.items()}
    preds = {name: _check_image(f"predictions[{name!r}]", im, rgb_bands) for name, im in predictions.items()}
    errors = [_error_map(pred, truth, error_band) for pred in preds.values()]
    limit = _error_limit(errors, error_limit)
    low, high = stretch_limits(truth, rgb_bands=rgb_bands, percentiles=percentiles)
    n_inputs = len(shown)
    top = [*shown.items(), *preds.items(), ("truth", truth)]
    figure, axes = _new_figure(2, len(top), panel_inches)
    for ax, (name, image) in zip(axes[0], top, strict=True):
        ax.imshow(_to_rgb(image, rgb_bands, low, high, max_size), interpolation="nearest")
        ax.set_title(name, fontsize=9)
    error_axes = list(axes[1, n_inputs : n_inputs + len(preds)])
    titles = [f"{name}: {_error_title(error_band)}" for name in preds]
    _show_error(figure, error_axes, errors, limit, titles, max_size)
    if title:
        figure.suptitle(title)
    return _save_png(path, figure, dpi)
