"""``stfusion evaluate``: metrics of a prediction against the truth (docs/metrics.md conventions)."""

from __future__ import annotations

from pathlib import Path

import click

from stfusion import evaluation, report
from stfusion.cli.options import one_line_errors, say


@click.command("evaluate")
@click.option("--pred", type=click.Path(path_type=Path), required=True, help="Predicted GeoTIFF.")
@click.option("--truth", type=click.Path(path_type=Path), required=True, help="True fine GeoTIFF.")
@click.option(
    "--ratio",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Fine/coarse pixel-size ratio h/l for ERGAS, e.g. 0.05 for 25 m / 500 m (ERGAS skipped if unset).",
)
@click.option(
    "--mask",
    type=click.Path(path_type=Path),
    default=None,
    help="Raster: nonzero = invalid (on the truth's grid, or georeferenced: nearest resampling).",
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
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write JSON.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="Write CSV.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@one_line_errors()
def evaluate_command(
    pred: Path,
    truth: Path,
    ratio: float | None,
    mask: Path | None,
    data_range: float,
    ssim_range: float,
    json_path: Path | None,
    csv_path: Path | None,
    overwrite: bool,
) -> None:
    """Compare a prediction with the truth: per-band metric table (docs/metrics.md conventions).

    Both files must lie on one grid (size, CRS, transform). Higher is better for PSNR, SSIM, CC and
    UIQI; lower for RMSE, MAE, |bias|, SAM and ERGAS.
    """
    outputs = evaluation.table_outputs(json_path, csv_path, overwrite=overwrite)
    result = evaluation.evaluate_files(
        pred, truth, mask=mask, ratio=ratio, data_range=data_range, ssim_data_range=ssim_range
    )
    say(report.format_table(result))
    for path in evaluation.write_reports({pred.stem: result}, outputs):
        say(f"wrote {path}")
