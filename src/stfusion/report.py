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
- Metric values shown in figures use :data:`METRIC_DIRECTIONS` to mark the best value (lowest
  RMSE, highest SSIM, bias closest to 0...).

Figures: :func:`quicklook_png` (one case), :func:`compare_figure` (methods on one case, with dates
and metric values), :func:`series_figure` (a time series of predictions with quick-looks) and
:func:`benchmark_figure` (a methods x cases table of one metric).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stfusion.atomic import atomic_path
from stfusion.metrics import (
    MEAN_ROW,
    METRIC_COLUMNS,
    NONFINITE_ENCODING,
    SCENE_METRICS,
    MetricReport,
    encode_float,
)

if TYPE_CHECKING:  # matplotlib is imported by the figure functions only: tables and text do not need it
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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


def _figure(width_inches: float, height_inches: float) -> Figure:
    """A bare Figure on an Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_inches, height_inches), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _new_figure(n_rows: int, n_cols: int, panel_inches: float) -> tuple[Figure, np.ndarray]:
    figure = _figure(panel_inches * n_cols, panel_inches * n_rows)
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
    from matplotlib import colormaps

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


# --------------------------------------------------------------------------------------------------
# Metric values in figures
# --------------------------------------------------------------------------------------------------

#: Which value is best, per metric that figures can rank: ``"lower"``, ``"higher"`` or ``"zero"``
#: (closest to 0, i.e. smallest absolute value). ``wall_s`` is a run time in seconds.
METRIC_DIRECTIONS: Mapping[str, str] = {
    "rmse": "lower",
    "mae": "lower",
    "bias": "zero",
    "psnr": "higher",
    "ssim": "higher",
    "cc": "higher",
    "sam": "lower",
    "ergas": "lower",
    "uiqi": "higher",
    "wall_s": "lower",
}
_METRIC_LABELS: Mapping[str, str] = {
    "rmse": "RMSE",
    "mae": "MAE",
    "bias": "bias",
    "psnr": "PSNR",
    "ssim": "SSIM",
    "cc": "CC",
    "sam": "SAM",
    "ergas": "ERGAS",
    "uiqi": "UIQI",
    "wall_s": "time",
}
_METRIC_UNITS: Mapping[str, str] = {"psnr": "dB", "sam": "degrees", "wall_s": "s"}
_METRIC_DIGITS: Mapping[str, int] = {
    "rmse": 4,
    "mae": 4,
    "bias": 4,
    "psnr": 2,
    "ssim": 3,
    "cc": 3,
    "sam": 2,
    "ergas": 3,
    "uiqi": 3,
    "wall_s": 2,
}


def _check_metric_name(argument: str, metric: str) -> None:
    if metric not in METRIC_DIRECTIONS:
        raise ValueError(f"{argument}: unknown metric {metric!r}; choose from {list(METRIC_DIRECTIONS)}")


def _metric_number(argument: str, value: object) -> float:
    """``value`` as a float; None -> NaN (not available). Raises ValueError naming ``argument``."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{argument} must be a number or None, got {value!r}")
    return float(value)


def _badness(metric: str, values: np.ndarray) -> np.ndarray:
    """Values turned into "lower is better" scores (NaN stays NaN)."""
    direction = METRIC_DIRECTIONS[metric]
    if direction == "higher":
        return -values
    if direction == "zero":
        return np.abs(values)
    return values.astype(np.float64, copy=True)


def _best_mask(metric: str, values: np.ndarray) -> np.ndarray:
    """True where ``values`` (1-D, NaN = missing) holds the best value; all False with < 2 values."""
    scores = _badness(metric, values)
    available = ~np.isnan(scores)
    if available.sum() < 2:
        return np.zeros(values.shape, dtype=bool)
    return available & (scores == np.min(scores[available]))


def _metric_text(metric: str, value: float) -> str:
    return "n/a" if math.isnan(value) else _fmt(value, _METRIC_DIGITS[metric])


def _plain(text: str) -> str:
    """Escape ``$`` so that user text in a title that also holds mathtext stays literal."""
    return text.replace("$", r"\$")


def _bold(text: str) -> str:
    return rf"$\mathbf{{{text}}}$"


# --------------------------------------------------------------------------------------------------
# Method comparison
# --------------------------------------------------------------------------------------------------


def _check_compare_metrics(
    metrics: Mapping[str, Mapping[str, float | None]], methods: Sequence[str]
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Validate ``metrics``; return the metric names (order of first appearance) and, per metric, the
    value of each method in ``methods`` order (NaN = not given)."""
    unknown = [name for name in metrics if name not in methods]
    if unknown:
        raise ValueError(f"metrics has methods without a prediction: {unknown}; known: {list(methods)}")
    names: list[str] = []
    for method, values in metrics.items():
        if not isinstance(values, Mapping):
            raise ValueError(f"metrics[{method!r}] must be a mapping metric name -> value, got {values!r}")
        for metric in values:
            _check_metric_name(f"metrics[{method!r}]", metric)
            if metric not in names:
                names.append(metric)
    table = {
        metric: np.array(
            [_metric_number(f"metrics[{m!r}][{metric!r}]", metrics.get(m, {}).get(metric)) for m in methods]
        )
        for metric in names
    }
    return names, table


def _panel_title(
    name: str,
    date: str | None,
    metric_lines: Sequence[Sequence[tuple[str, str, bool]]],
) -> str:
    """Title lines: ``name``, ``date``, then lines of (label, value text, bold) metric values."""
    use_math = any(bold for line in metric_lines for _, _, bold in line)
    escape = _plain if use_math else str
    lines = [escape(name)] + ([escape(date)] if date is not None else [])
    for line in metric_lines:
        lines.append("  ".join(f"{label} {_bold(text) if bold else text}" for label, text, bold in line))
    return "\n".join(lines)


def _metric_lines(
    names: Sequence[str], table: Mapping[str, np.ndarray], best: Mapping[str, np.ndarray], i: int
) -> list[list[tuple[str, str, bool]]]:
    """The metric values of method ``i``, two per line."""
    parts = [
        (_METRIC_LABELS[metric], _metric_text(metric, float(table[metric][i])), bool(best[metric][i]))
        for metric in names
    ]
    return [parts[k : k + 2] for k in range(0, len(parts), 2)]


def _composite_text(rgb_bands: tuple[int, int, int], band_names: Sequence[str] | None) -> str:
    if band_names is None:
        return "R G B = bands " + ", ".join(str(b) for b in rgb_bands)
    return "R G B = " + ", ".join(band_names[b] for b in rgb_bands)


def _error_band_text(error_band: int | None, band_names: Sequence[str] | None) -> str:
    if error_band is None:
        return "mean over bands"
    return f"band {band_names[error_band]}" if band_names is not None else f"band {error_band}"


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
    metrics: Mapping[str, Mapping[str, float | None]] | None = None,
    dates: Mapping[str, str] | None = None,
    band_names: Sequence[str] | None = None,
) -> Path:
    """Write a PNG comparing methods: RGB panels on top, error maps below on one colour scale.

    Top row: ``inputs`` (e.g. coarse_t1, fine_t1, coarse_t2), each prediction, then the truth, all
    with the truth's stretch. Bottom row: prediction - truth under each prediction, symmetric limits
    shared by all methods (``error_limit`` or the 99th percentile of the pooled |errors|).

    Panel titles carry the date of the panel (``dates``) and, under each method, its ``metrics``
    (e.g. ``RMSE 0.0366  SSIM 0.874``); per metric the best value among the methods is in bold
    (lowest RMSE/MAE/SAM/ERGAS, highest PSNR/SSIM/CC/UIQI, bias closest to 0; ties all bold; no
    bold with a single method). The figure title states the band composite and the error shown.

    Args:
        path: PNG file to write (its folder must exist).
        inputs: title -> (C, H, W) reflectance image (may be empty).
        predictions: method name -> (C, H, W) prediction, same shape as ``truth`` (at least one).
        truth: (C, H, W) reflectance at the target date.
        metrics: optional method name -> {metric name: value}; names from :data:`METRIC_DIRECTIONS`
            (e.g. ``"rmse"``, ``"ssim"``), shown in the order of first appearance; None or NaN is
            shown as ``n/a``. Methods may be left out.
        dates: optional panel title (a key of ``inputs`` or ``predictions``, or ``"truth"``) -> date
            text shown under the title, e.g. ``{"coarse t1": "2001-10-17", "truth": "2001-11-02"}``.
        band_names: optional names of the C bands, used to name the composite and the error band.
        Others: as in :func:`quicklook_png`.
    """
    _check_display_args(rgb_bands, percentiles, max_size)
    if not predictions:
        raise ValueError("predictions is empty: pass at least one method name -> prediction")
    truth = _check_image("truth", truth, rgb_bands)
    shown = {name: _check_image(f"inputs[{name!r}]", im, rgb_bands) for name, im in inputs.items()}
    preds = {name: _check_image(f"predictions[{name!r}]", im, rgb_bands) for name, im in predictions.items()}
    if band_names is not None:
        band_names = [str(name) for name in band_names]
        if len(band_names) != truth.shape[0]:
            raise ValueError(
                f"band_names has {len(band_names)} names for {truth.shape[0]} bands: {band_names}"
            )
    top = [*shown.items(), *preds.items(), ("truth", truth)]
    panel_dates = dict(dates or {})
    unknown = [name for name in panel_dates if name not in dict(top)]
    if unknown:
        raise ValueError(f"dates has unknown panels {unknown}; panels: {[name for name, _ in top]}")
    names, table = _check_compare_metrics(metrics or {}, list(preds))
    best = {metric: _best_mask(metric, values) for metric, values in table.items()}
    errors = [_error_map(pred, truth, error_band) for pred in preds.values()]
    limit = _error_limit(errors, error_limit)
    low, high = stretch_limits(truth, rgb_bands=rgb_bands, percentiles=percentiles)
    n_inputs = len(shown)
    n_lines = 1 + (1 if panel_dates else 0) + math.ceil(len(names) / 2)
    figure, axes = _new_figure(2, len(top), panel_inches)
    for column, (ax, (name, image)) in enumerate(zip(axes[0], top, strict=True)):
        ax.imshow(_to_rgb(image, rgb_bands, low, high, max_size), interpolation="nearest")
        method = column - n_inputs
        lines = _metric_lines(names, table, best, method) if 0 <= method < len(preds) else []
        date = panel_dates.get(name)
        text = _panel_title(name, None if date is None else str(date), lines)
        # Every title gets the same number of lines, so that the images stay aligned.
        text += "\n" * (n_lines - 1 - text.count("\n"))
        ax.set_title(text, fontsize=9)
    error_axes = list(axes[1, n_inputs : n_inputs + len(preds)])
    error_text = _error_band_text(error_band, band_names)
    titles = [f"{name}: error, {error_text}" for name in preds]
    _show_error(figure, error_axes, errors, limit, titles, max_size)
    notes = f"{_composite_text(rgb_bands, band_names)};  error: prediction - truth, {error_text}"
    if any(mask.any() for mask in best.values()):
        notes += ";  bold: best value"
    if title:
        figure.suptitle(f"{title}\n{notes}", fontsize=10)
    else:
        figure.suptitle(notes, fontsize=10)
    return _save_png(path, figure, dpi)


# --------------------------------------------------------------------------------------------------
# Time series
# --------------------------------------------------------------------------------------------------

#: Line colours of series named after a band or an index (others take the default colour cycle).
SERIES_COLOURS: Mapping[str, str] = {
    "blue": "tab:blue",
    "green": "tab:green",
    "red": "tab:red",
    "nir": "tab:purple",
    "swir1": "tab:brown",
    "swir2": "tab:gray",
    "ndvi": "tab:olive",
}


def _check_dates(argument: str, dates: Sequence[date], *, increasing: bool) -> list[date]:
    dates = list(dates)
    for i, day in enumerate(dates):
        if not isinstance(day, date):
            raise TypeError(
                f"{argument}[{i}] must be a datetime.date, got {day!r} ({type(day).__name__}); "
                "convert strings with datetime.date.fromisoformat"
            )
    if increasing:
        for i in range(1, len(dates)):
            try:
                ordered = dates[i - 1] < dates[i]
            except TypeError as exc:
                raise TypeError(f"{argument} mixes datetime.date and datetime.datetime; use one") from exc
            if not ordered:
                raise ValueError(
                    f"{argument} must be sorted without repeats: {argument}[{i - 1}] = {dates[i - 1]} "
                    f"is not before {argument}[{i}] = {dates[i]}"
                )
    return dates


def _check_series(values: Mapping[str, Sequence[float]], n_dates: int) -> dict[str, np.ndarray]:
    if not values:
        raise ValueError("values is empty: pass a mapping series name -> one value per date")
    series: dict[str, np.ndarray] = {}
    for name, sequence in values.items():
        try:
            array = np.asarray(sequence, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"values[{name!r}] must be a sequence of numbers (NaN = missing): {exc}"
            ) from exc
        if array.shape != (n_dates,):
            raise ValueError(
                f"values[{name!r}] has shape {array.shape}; it needs one value per date ({n_dates})"
            )
        series[name] = array
    return series


def _pick_evenly(items: Sequence[date], count: int) -> list[date]:
    """At most ``count`` items, evenly spaced, first and last included."""
    if len(items) <= count:
        return list(items)
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, count)).astype(int))
    return [items[i] for i in picks]


def _pooled_stretch(
    images: Sequence[np.ndarray], percentiles: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (low, high) percentiles of the finite values of (3, H, W) images pooled."""
    low = np.zeros(3)
    high = np.ones(3)
    for channel in range(3):
        values = np.concatenate([im[channel].ravel() for im in images])
        values = values[np.isfinite(values)]
        if values.size:
            low[channel], high[channel] = np.percentile(values, percentiles)
        if high[channel] <= low[channel]:
            high[channel] = low[channel] + 1e-6
    return low, high


def series_figure(
    path: str | os.PathLike[str],
    *,
    dates: Sequence[date],
    values: Mapping[str, Sequence[float]],
    fine_dates: Sequence[date] = (),
    cloudy_dates: Sequence[date] = (),
    thumbnails: Mapping[date, np.ndarray] | None = None,
    rgb_bands: tuple[int, int, int] = (2, 1, 0),
    ylabel: str = "mean reflectance",
    title: str | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
    max_thumbnails: int = 6,
    thumbnail_size: int = 128,
    width_inches: float = 10.0,
    dpi: int = 100,
) -> Path:
    """Write a PNG of a time series of predictions: one line per series over the dates, quick-looks below.

    The plot shows one line with markers per series (NaN values are skipped, the line joins the
    dates that have a value), a dashed vertical line at each date of ``fine_dates`` ("fine image"),
    an ``x`` at the foot of the plot at each date of ``cloudy_dates`` ("cloudy, not predicted"), a
    hollow circle there at the other dates where every series is NaN ("no value"), and a small
    triangle at the top at each date shown as a quick-look. Under the plot, up to ``max_thumbnails``
    of the ``thumbnails`` (evenly spaced in time, first and last included) are shown as RGB
    quick-looks titled by their date, decimated to ``thumbnail_size`` pixels per side, with one
    stretch shared by all of them (``percentiles`` of the shown, decimated pixels).

    Args:
        path: PNG file to write (its folder must exist).
        dates: the predicted and observed dates (``datetime.date``), sorted, no repeats.
        values: series name (a band name, ``"NDVI"``...) -> one value per date (NaN = missing).
            Series named after a band (blue, green, red, nir, swir1, swir2, ndvi; any case) get
            that colour, see :data:`SERIES_COLOURS`.
        fine_dates: dates with an observed fine image.
        cloudy_dates: dates that could not be predicted (e.g. cloudy coarse image).
        thumbnails: optional date (one of ``dates``) -> (C, H, W) reflectance image.
        rgb_bands: band indices of the thumbnails shown as red, green, blue.
        ylabel: label of the value axis (with units).
        title: optional figure title.
        percentiles: (low, high) stretch percentiles of the thumbnails.
        max_thumbnails: most thumbnails shown (at least 1).
        thumbnail_size: largest displayed side of a thumbnail in pixels.
        width_inches, dpi: figure width and resolution of the PNG.
    """
    _check_display_args(rgb_bands, percentiles, thumbnail_size)
    days = _check_dates("dates", dates, increasing=True)
    if not days:
        raise ValueError("dates is empty: pass the sorted dates of the series")
    series = _check_series(values, len(days))
    fine = _check_dates("fine_dates", fine_dates, increasing=False)
    cloudy = _check_dates("cloudy_dates", cloudy_dates, increasing=False)
    if max_thumbnails < 1:
        raise ValueError(f"max_thumbnails must be at least 1, got {max_thumbnails}")
    if not (math.isfinite(width_inches) and width_inches > 0):
        raise ValueError(f"width_inches must be a positive number, got {width_inches}")
    quicklooks: dict[date, np.ndarray] = {}
    for day, image in (thumbnails or {}).items():
        if day not in days:
            raise ValueError(f"thumbnails has a date {day!r} that is not in dates")
        quicklooks[day] = _check_image(f"thumbnails[{day}]", image, rgb_bands)
    shown_days = _pick_evenly(sorted(quicklooks), max_thumbnails)
    small = [
        _decimate(np.stack([quicklooks[d][b] for b in rgb_bands]).astype(np.float64), thumbnail_size)
        for d in shown_days
    ]

    plot_height = 3.5
    n_thumbs = len(small)
    if n_thumbs:
        aspect = max(im.shape[1] / im.shape[2] for im in small)
        thumb_height = min(width_inches / max(n_thumbs, 4) * aspect, 2.2) + 0.3
    else:
        thumb_height = 0.0
    from matplotlib import dates as mdates

    figure = _figure(width_inches, plot_height + thumb_height)
    if n_thumbs:
        grid = figure.add_gridspec(2, n_thumbs, height_ratios=[plot_height, thumb_height])
        ax = figure.add_subplot(grid[0, :])
    else:
        ax = figure.add_subplot()
    # Dates as Matplotlib day numbers: the date locator and formatter below label them.
    day_numbers = np.asarray(mdates.date2num(days))
    for name, array in series.items():
        finite = np.isfinite(array)
        colour = SERIES_COLOURS.get(name.lower())
        ax.plot(day_numbers[finite], array[finite], marker="o", markersize=4, label=name, color=colour)
    at_foot = ax.get_xaxis_transform()  # x in dates, y in axes fraction
    for i, day in enumerate(fine):
        label = "fine image" if i == 0 else None
        ax.axvline(mdates.date2num(day), color="0.45", linestyle="--", linewidth=1.0, label=label)
    all_missing = np.isnan(np.stack(list(series.values()))).all(axis=0)
    no_value = [d for d, missing in zip(days, all_missing, strict=True) if missing and d not in cloudy]
    marks = [
        (cloudy, 0.04, "x", "black", "cloudy, not predicted"),
        (no_value, 0.04, "o", "0.5", "no value"),
        (shown_days, 0.97, "v", "0.3", "quick-look below"),
    ]
    for marked, height, marker, colour, label in marks:
        if marked:
            ax.plot(
                mdates.date2num(marked),
                np.full(len(marked), height),
                marker,
                color=colour,
                markerfacecolor="none" if marker == "o" else colour,
                markersize=6,
                markeredgewidth=1.5,
                transform=at_foot,
                clip_on=False,
                label=label,
            )
    locator = mdates.AutoDateLocator(minticks=3, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title)

    if n_thumbs:
        low, high = _pooled_stretch(small, percentiles)
        for column, (day, bands) in enumerate(zip(shown_days, small, strict=True)):
            thumb = figure.add_subplot(grid[1, column])
            thumb.set_axis_off()
            rgb = _to_rgb(bands, (0, 1, 2), low, high, max_size=None)
            thumb.imshow(rgb, interpolation="nearest")
            thumb.set_title(day.isoformat(), fontsize=8)
    return _save_png(path, figure, dpi)


# --------------------------------------------------------------------------------------------------
# Benchmark summary
# --------------------------------------------------------------------------------------------------

#: Cell colour of the best method of a case (the worst is white; others in between by rank).
BEST_CELL_COLOUR: tuple[float, float, float] = (0.55, 0.78, 0.55)


def _check_scores(
    scores: Mapping[str, Mapping[str, float | None]],
) -> tuple[list[str], list[str], np.ndarray]:
    """Validate ``scores``; return (cases, methods in order of first appearance, (methods, cases) values)."""
    if not scores:
        raise ValueError("scores is empty: pass a mapping case name -> method name -> value")
    methods: list[str] = []
    for case, row in scores.items():
        if not isinstance(row, Mapping):
            raise ValueError(f"scores[{case!r}] must be a mapping method name -> value, got {row!r}")
        if not row:
            raise ValueError(
                f"scores[{case!r}] is empty: give each case at least one method (None = not run)"
            )
        methods += [method for method in row if method not in methods]
    cases = list(scores)
    table = np.array(
        [
            [_metric_number(f"scores[{case!r}][{method!r}]", scores[case].get(method)) for case in cases]
            for method in methods
        ]
    )
    if np.isnan(table).all():
        raise ValueError("scores has no values: every entry is None or NaN")
    return cases, methods, table


def _rank_fraction(scores: np.ndarray) -> np.ndarray:
    """Per value of a 1-D "lower is better" array: 0 for the best, 1 for the worst, NaN stays NaN.
    Ties share the better rank."""
    out = np.full(scores.shape, np.nan)
    available = ~np.isnan(scores)
    if not available.any():
        return out
    distinct = np.unique(scores[available])
    ranks = np.searchsorted(distinct, scores[available])
    out[available] = ranks / (len(distinct) - 1) if len(distinct) > 1 else 0.0
    return out


def benchmark_figure(
    path: str | os.PathLike[str],
    *,
    scores: Mapping[str, Mapping[str, float | None]],
    metric: str = "rmse",
    lower_is_better: bool | None = None,
    title: str | None = None,
    digits: int | None = None,
    dpi: int = 100,
) -> Path:
    """Write a PNG summarising a benchmark: a methods x cases table of ``metric``, coloured by rank.

    Rows are methods, ordered by their mean (best first; methods not run on every case come after
    those that were, as their means cover fewer cases); columns are the cases, then ``mean``. Each
    cell prints the value; its colour is the method's rank within the column (green = best, white =
    worst); the best value of each case is bold and boxed (ties all). The mean column averages the
    cases a method was run on (``*`` marks a mean over fewer cases, never boxed as best); for bias,
    the column is the mean of absolute values. Cells of runs that did not happen say "not run".

    Args:
        path: PNG file to write (its folder must exist).
        scores: case name -> method name -> value; None or NaN = not run. Methods missing from a
            case count as not run.
        metric: metric name, a key of :data:`METRIC_DIRECTIONS` (e.g. ``"rmse"``, ``"ssim"``,
            ``"wall_s"``); it names the figure and sets the number format.
        lower_is_better: None (default) takes the direction from :data:`METRIC_DIRECTIONS`; True or
            False must agree with it (bias: True, meaning closest to 0 is best).
        title: figure title (default: the metric and which way is better).
        digits: decimals printed in the cells (default: per metric, e.g. 4 for RMSE, 3 for SSIM).
        dpi: resolution of the PNG.
    """
    _check_metric_name("metric", metric)
    direction = METRIC_DIRECTIONS[metric]
    if lower_is_better is not None and lower_is_better != (direction != "higher"):
        expected = "lower" if direction == "lower" else "higher" if direction == "higher" else "closer to 0"
        raise ValueError(
            f"lower_is_better={lower_is_better} contradicts metric {metric!r}, where {expected} is better; "
            "leave lower_is_better out (None) to use the metric's direction"
        )
    if digits is not None and not (0 <= digits <= 10):
        raise ValueError(f"digits must be between 0 and 10, got {digits}")
    cases, methods, table = _check_scores(scores)
    places = _METRIC_DIGITS[metric] if digits is None else digits

    complete = ~np.isnan(table).any(axis=1)
    means = np.full(len(methods), np.nan)
    for i, row in enumerate(np.abs(table) if direction == "zero" else table):
        run = row[~np.isnan(row)]
        if run.size:
            means[i] = float(np.mean(run))
    mean_scores = _badness(metric, means)

    def sort_key(i: int) -> tuple[bool, bool, float, int]:
        # Complete methods first, then by mean (NaN last), then in order of appearance.
        score = float(mean_scores[i])
        return (not complete[i], math.isnan(score), 0.0 if math.isnan(score) else score, i)

    order = sorted(range(len(methods)), key=sort_key)
    methods = [methods[i] for i in order]
    values = np.concatenate([table, means[:, None]], axis=1)[order]
    complete = complete[order]

    n_methods, n_columns = values.shape
    best = np.zeros(values.shape, dtype=bool)
    rank = np.full(values.shape, np.nan)
    for column in range(n_columns):
        column_scores = _badness(metric, values[:, column])
        if column == n_columns - 1 and complete.any():
            column_scores = np.where(complete, column_scores, np.nan)  # partial means are not ranked
        rank[:, column] = _rank_fraction(column_scores)
        best[:, column] = _best_mask(metric, np.where(np.isnan(column_scores), np.nan, values[:, column]))

    colours = np.ones((n_methods, n_columns, 3))
    ranked = ~np.isnan(rank)
    fade = (1.0 - rank[ranked])[:, None]
    colours[ranked] = 1.0 - fade * (1.0 - np.asarray(BEST_CELL_COLOUR))
    colours[np.isnan(values)] = (0.92, 0.92, 0.92)

    longest_case = max(len(str(case)) for case in [*cases, "mean"])
    longest_method = max(len(str(method)) for method in methods)
    cell_width = max(0.75, 0.09 * (places + 4))
    width = 1.0 + 0.08 * longest_method + cell_width * n_columns
    height = 1.4 + 0.4 * n_methods + (0.07 * longest_case if longest_case > 8 else 0.0)
    from matplotlib.patches import Rectangle

    figure = _figure(width, height)
    ax = figure.add_subplot()
    ax.imshow(colours, aspect="auto", interpolation="nearest")
    for row in range(n_methods):
        for column in range(n_columns):
            value = values[row, column]
            if math.isnan(value):
                ax.text(column, row, "not run", ha="center", va="center", fontsize=7, color="0.45")
                continue
            text = _fmt(value, places)
            if column == n_columns - 1 and not complete[row]:
                text += "*"
            weight = "bold" if best[row, column] else "normal"
            ax.text(column, row, text, ha="center", va="center", fontsize=8, fontweight=weight)
            if best[row, column]:
                ax.add_patch(
                    Rectangle(
                        (column - 0.5, row - 0.5),
                        1,
                        1,
                        fill=False,
                        edgecolor="black",
                        linewidth=1.5,
                        clip_on=False,
                    )
                )
    mean_label = f"mean |{metric}|" if direction == "zero" else "mean"
    ax.set_xticks(range(n_columns), [*map(str, cases), mean_label])
    ax.set_yticks(range(n_methods), list(map(str, methods)))
    ax.xaxis.tick_top()
    if longest_case > 8:
        for label in ax.get_xticklabels():
            label.set(rotation=30, ha="left", rotation_mode="anchor")
    ax.tick_params(which="both", length=0)
    # Thin cell borders, so that white (worst) cells read as cells.
    ax.set_xticks(np.arange(n_columns + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n_methods + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.75", linewidth=0.6)
    ax.axvline(n_columns - 1.5, color="black", linewidth=1.5)
    # A little margin, so that the boxes of cells on the border are drawn whole.
    ax.set_xlim(-0.53, n_columns - 0.47)
    ax.set_ylim(n_methods - 0.47, -0.53)
    for spine in ax.spines.values():
        spine.set_visible(False)
    unit = f" ({_METRIC_UNITS[metric]})" if metric in _METRIC_UNITS else ""
    better = {"lower": "lower", "higher": "higher", "zero": "closer to 0"}[direction]
    figure.suptitle(title or f"{_METRIC_LABELS[metric]}{unit} per case, {better} is better", fontsize=11)
    notes = "bold, boxed: best of the case; colour: rank in the column"
    if not complete.all():
        notes += "; * mean over the cases run"
    figure.supxlabel(notes, fontsize=8)
    return _save_png(path, figure, dpi)
