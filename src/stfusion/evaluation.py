"""Scoring a prediction file against a truth file: grid checks, masks, metric tables.

The job behind ``stfusion evaluate``: both files must lie on one grid (size, CRS and transform; a
prediction copied into another place or CRS is refused instead of scored), each file is converted to
reflectance by its own scale (GDAL scale/offset tags, an explicit scale, or the automatic choice of
:mod:`stfusion.raster`), and the metrics follow docs/metrics.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from stfusion import raster, report, scenes
from stfusion.errors import InputError
from stfusion.inputs import check_values, resolve_bands
from stfusion.metrics import MetricReport, compute_metrics

log = logging.getLogger(__name__)


def table_outputs(json_path: Path | None, csv_path: Path | None, *, overwrite: bool) -> dict[str, Path]:
    """The metric files to write ("json", "csv", "sidecar"), checked (writable, distinct) before any work."""
    outputs: dict[str, Path] = {}
    if json_path is not None:
        outputs["json"] = json_path
    if csv_path is not None:
        outputs["csv"] = csv_path
        outputs["sidecar"] = report.sidecar_path(csv_path)
    seen: dict[Path, str] = {}
    for kind, path in outputs.items():
        key = path.resolve()
        if key in seen:
            raise InputError(f"{path}: given for both the {seen[key]} and the {kind} output; use two names")
        seen[key] = kind
        raster.check_writable(path, overwrite=overwrite)
    return outputs


def scored_bands(
    pred_info: raster.RasterInfo, truth_info: raster.RasterInfo, spec: tuple[str, ...] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """0-based (prediction, truth) bands scored against each other, in pairs.

    ``spec`` (numbers or names, as --bands) picks the truth's bands, in the prediction's order; names
    that the prediction's band descriptions hold pick its bands too. Without ``spec``: the truth's bands
    named like all the prediction's (a prediction of red and nir against a 6-band truth, or bands in
    another order); else the prediction's bands named like all the truth's (a 6-band prediction against
    a truth of green, red and nir); else every band of both when the counts agree. InputError when none
    of these fits, or when a ``spec`` would score named bands against others.
    """
    names = [(n or "").strip() for n in pred_info.band_names]
    truth_names = [(n or "").strip() for n in truth_info.band_names]
    every_pred = tuple(range(pred_info.count))
    if spec is not None:
        chosen = resolve_bands(spec, truth_info)
        picked = [truth_names[p].lower() for p in chosen]
        own = [n.lower() for n in names]
        if all(own) and all(picked) and set(picked) <= set(own):
            mine = tuple(own.index(n) for n in picked)
            if len(chosen) != pred_info.count:
                return mine, chosen
        if raster.crossed_bands(picked, own):
            lowered = {n.lower() for n in truth_names}
            advice = (
                f"give --bands {','.join(own)}"
                if all(own) and set(own) <= lowered
                else "give --bands the truth's bands in the prediction's order"
            )
            raise InputError(
                f"--bands {','.join(spec)}: selects the truth's {', '.join(picked)}, but the prediction "
                f"{pred_info.path} holds {', '.join(n or '?' for n in own)} in that order; {advice}, or "
                "leave it out (bands are matched by name)"
            )
        return every_pred, chosen
    if all(names):
        try:
            return every_pred, resolve_bands(tuple(names), truth_info)
        except InputError:
            pass
    if all(truth_names):
        try:
            return resolve_bands(tuple(truth_names), pred_info), tuple(range(truth_info.count))
        except InputError:
            pass
    if pred_info.count == truth_info.count:
        if raster.crossed_bands(names, truth_names):
            raise InputError(
                f"{pred_info.path}: bands {', '.join(n or '?' for n in names)} would be scored against the "
                f"truth's {', '.join(n or '?' for n in truth_names)} ({truth_info.path}); choose the truth's "
                "bands in the prediction's order with --bands"
            )
        return every_pred, tuple(range(truth_info.count))
    described = ", ".join(n for n in names if n)
    known = f" ({described})" if described else ""
    raise InputError(
        f"{pred_info.path}: {pred_info.count} bands{known}, the truth {truth_info.path} "
        f"{truth_info.count}; choose the truth's bands to score with --bands (numbers or names, one "
        f"for each of the prediction's bands, in its order)"
    )


def _read(
    path: Path, scale: float | None, offset: float | None, role: str, *, bands: Sequence[int] = ()
) -> raster.Raster:
    """The file as reflectance (its tags, else ``scale``/``offset``, else automatic), values checked;
    ``role`` (pred, truth) names the options in messages; ``bands``: 0-based bands to read (all when
    empty)."""
    if offset is not None and not math.isfinite(offset):
        raise InputError(f"--{role}-offset {offset}: must be a finite number")
    if offset is not None and scale is None:
        raise InputError(
            f"--{role}-offset {offset:g} needs --{role}-scale too (reflectance = value x scale + offset)"
        )
    check_values(path, scale=scale, offset=offset, options=role)
    return raster.read(path, scale=scale, offset=offset, bands=[b + 1 for b in bands] if bands else None)


def evaluate_files(
    pred: Path,
    truth: Path,
    *,
    mask: Path | None = None,
    ratio: float | None = None,
    data_range: float = 1.0,
    ssim_data_range: float = 2.0,
    pred_scale: float | None = None,
    truth_scale: float | None = None,
    pred_offset: float | None = None,
    truth_offset: float | None = None,
    bands: tuple[str, ...] | None = None,
    resampling: str = "bilinear",
) -> MetricReport:
    """Metrics of a prediction GeoTIFF against the truth; InputError naming the file on any mismatch.

    ``mask``: nonzero = pixel left out; None = the truth's sidecar ``<stem>_mask.tif`` if it has one
    (as ``compare`` masks its truth), else none; a mask not on the truth's grid is read with
    ``resampling`` as ``compare`` reads it (:func:`stfusion.raster.read_mask_on_grid`: with bilinear, a
    pixel is left out when a masked mask pixel contributes to it). ``bands``: the truth's bands to
    score, see :func:`scored_bands`.
    """
    pred_info, truth_info = raster.inspect(pred), raster.inspect(truth)
    if pred_info.shape[1:] != truth_info.shape[1:]:
        raise InputError(
            f"{pred}: shape {pred_info.shape} (bands, rows, cols) differs from truth {truth} "
            f"{truth_info.shape}"
        )
    own, selected = scored_bands(pred_info, truth_info, bands)
    if len(selected) != len(own):
        raise InputError(
            f"--bands selects {len(selected)} bands of {truth}; the prediction {pred} has {len(own)}"
        )
    if not raster.same_grid(pred_info, truth_info):
        raise InputError(
            f"{pred}: not on the grid of the truth {truth} (CRS {pred_info.crs} vs {truth_info.crs}, "
            f"transform {pred_info.transform[:6]} vs {truth_info.transform[:6]}); a prediction is scored "
            "only against the truth of the same place"
        )
    if mask is None and (mask := scenes.sidecar_mask(truth)) is not None:  # as compare masks the truth
        log.info("%s: masked by %s", truth, mask.name)
    if mask is not None:
        scenes.check_mask_grid(raster.inspect(mask), truth_info)
    predicted = _read(pred, pred_scale, pred_offset, "pred", bands=own)
    true = _read(truth, truth_scale, truth_offset, "truth", bands=selected)
    valid = None
    if mask is not None:
        valid = ~raster.read_mask_on_grid(mask, truth_info, resampling=resampling)
    band_names = [true.info.band_names[i] or f"band{i + 1}" for i in selected]
    try:
        return compute_metrics(
            predicted.data,
            true.data,
            valid=valid,
            data_range=data_range,
            ssim_data_range=ssim_data_range,
            ratio=ratio,
            band_names=band_names,
        )
    except ValueError as exc:
        raise InputError(f"{pred}: cannot be scored against {truth}: {exc}") from exc


def write_reports(reports: Mapping[str, MetricReport], outputs: Mapping[str, Path]) -> list[Path]:
    """Write the tables :func:`table_outputs` planned; returns the files written."""
    written = []
    if "csv" in outputs:
        report.write_metrics_csv(outputs["csv"], reports)
        written.append(outputs["csv"])
    if "json" in outputs:
        report.write_metrics_json(outputs["json"], reports)
        written.append(outputs["json"])
    return written
