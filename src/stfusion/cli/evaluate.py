"""``stfusion evaluate``: metrics of a prediction against the truth (docs/metrics.md conventions)."""

from __future__ import annotations

from pathlib import Path

import click

from stfusion import evaluation, raster, report, scenes, workflows
from stfusion.cli.options import band_list, one_line_errors, say


@click.command("evaluate")
@click.option("--pred", type=click.Path(path_type=Path), required=True, help="Predicted GeoTIFF.")
@click.option("--truth", type=click.Path(path_type=Path), required=True, help="True fine GeoTIFF.")
@click.option(
    "--coarse-ratio",
    type=click.FloatRange(min=1.0),
    default=None,
    help="Coarse / fine pixel size for ERGAS, e.g. 16 for 480 m MODIS over 30 m Landsat (unset: no ERGAS).",
)
@click.option("--ratio", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=None, hidden=True)
@click.option(
    "--mask",
    type=click.Path(path_type=Path),
    default=None,
    help="Raster: nonzero = invalid (on the truth's grid, or georeferenced: read with --resampling) "
    "[default: the truth's <stem>_mask.tif if there is one].",
)
@click.option(
    "--resampling",
    type=click.Choice(raster.RESAMPLING_METHODS),
    default="bilinear",
    show_default=True,
    help="Resampling of a mask not on the truth's grid, as compare reads it (bilinear: a pixel is left "
    "out when a masked mask pixel contributes to it; nearest: when its nearest one is masked).",
)
@click.option(
    "--data-range",
    type=click.FloatRange(min=0.0, min_open=True),
    default=1.0,
    show_default=True,
    help="PSNR data range R (reflectance).",
)
@click.option(
    "--ssim-range",
    type=click.FloatRange(min=0.0, min_open=True),
    default=2.0,
    show_default=True,
    help="SSIM data_range (2: the MLFF-GAN paper's -1..1 convention; 1: reflectance 0..1).",
)
@click.option(
    "--pred-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Reflectance per stored unit of the prediction, if it has no scale tags [default: auto].",
)
@click.option(
    "--truth-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Reflectance per stored unit of the truth, if it has no scale tags [default: auto].",
)
@click.option(
    "--pred-offset",
    type=float,
    default=None,
    help="Reflectance offset of the prediction (value x --pred-scale + offset), if it has no tags.",
)
@click.option(
    "--truth-offset",
    type=float,
    default=None,
    help="Reflectance offset of the truth, if it has no tags (Landsat C2 L2: --truth-scale 2.75e-5 "
    "--truth-offset -0.2).",
)
@click.option(
    "--bands",
    default=None,
    help="The truth's bands to score, in the prediction's order, by number (1-based) or description, "
    "e.g. red,nir (names pick the prediction's bands too) [default: all, or the bands the two files "
    "name alike].",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write JSON.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="Write CSV.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@one_line_errors()
def evaluate_command(
    pred: Path,
    truth: Path,
    coarse_ratio: float | None,
    ratio: float | None,
    mask: Path | None,
    resampling: str,
    data_range: float,
    ssim_range: float,
    pred_scale: float | None,
    truth_scale: float | None,
    pred_offset: float | None,
    truth_offset: float | None,
    bands: str | None,
    json_path: Path | None,
    csv_path: Path | None,
    overwrite: bool,
) -> None:
    """Compare a prediction with the truth: per-band metric table (docs/metrics.md conventions).

    Both files must lie on one grid (size, CRS, transform). Higher is better for PSNR, SSIM, CC and
    UIQI; lower for RMSE, MAE, |bias|, SAM and ERGAS.
    """
    outputs = evaluation.table_outputs(json_path, csv_path, overwrite=overwrite)
    if mask is None and (mask := scenes.sidecar_mask(truth)) is not None:
        say(f"mask: {mask} (beside the truth; nonzero = left out)")
    inputs = [path for path in (pred, truth, mask) if path is not None]
    workflows.refuse_inputs_as_outputs(list(outputs.values()), inputs)
    if ratio is None and coarse_ratio is not None:
        ratio = 1 / coarse_ratio
    result = evaluation.evaluate_files(
        pred,
        truth,
        mask=mask,
        ratio=ratio,
        data_range=data_range,
        ssim_data_range=ssim_range,
        pred_scale=pred_scale,
        truth_scale=truth_scale,
        pred_offset=pred_offset,
        truth_offset=truth_offset,
        bands=band_list(bands),
        resampling=resampling,
    )
    say(report.format_table(result))
    for path in evaluation.write_reports({pred.stem: result}, outputs):
        say(f"wrote {path}")
