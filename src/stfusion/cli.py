"""The `stfusion` command line: predict, evaluate, cases (and more as the package grows).

Every command turns a :class:`~stfusion.errors.StfusionError` into one line on stderr and exit code 2:
bad input never ends in a traceback, and outputs are written atomically, so none is left half-written.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np

from stfusion import __version__, raster, scenes
from stfusion.errors import InputError, StfusionError
from stfusion.methods import METHOD_NAMES, get_method

F = TypeVar("F", bound=Callable[..., Any])
EXIT_INPUT_ERROR = 2


def one_line_errors(command: F) -> F:
    """Report StfusionError as ``error: <message>`` on stderr and exit 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except StfusionError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_INPUT_ERROR)

    return wrapper  # type: ignore[return-value]


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` strings to a dict; values parsed as JSON when possible (numbers, booleans)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--option {pair!r}: expected key=value, e.g. --option window_size=31")
        try:
            options[key.replace("-", "_")] = json.loads(text)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = text
    return options


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stfusion")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Spatiotemporal fusion of satellite images: predict a fine image at a target date."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


# --------------------------------------------------------------------------------------------------
# cases


@cli.command("cases")
@click.argument("folder", type=click.Path(path_type=Path))
@one_line_errors
def cases_command(folder: Path) -> None:
    """List the fusion cases found in FOLDER and the files skipped (and why)."""
    discovery = scenes.discover(folder)
    click.echo(f"{folder}: {len(discovery.cases)} case(s), layout {discovery.layout}")
    for case in discovery.cases:
        split = f"[{case.split}] " if case.split else ""
        truth = case.fine_t2.name if case.fine_t2 else "(no truth)"
        click.echo(f"  {split}{case.name}: {case.date_t1} -> {case.date_t2}")
        click.echo(f"      coarse_t1 {case.coarse_t1.name}  fine_t1 {case.fine_t1.name}")
        click.echo(f"      coarse_t2 {case.coarse_t2.name}  fine_t2 {truth}")
    for skipped in discovery.skipped:
        click.echo(f"  skipped {skipped.path}: {skipped.reason}")


# --------------------------------------------------------------------------------------------------
# predict


def _read_case_arrays(case: scenes.FusionCase, scale: float) -> dict[str, raster.Raster]:
    scenes.check_case(case)
    return {role: raster.read(path, scale=scale) for role, path in case.paths().items()}


@cli.command("predict")
@click.option("--method", type=click.Choice(METHOD_NAMES), default="coarse-delta", show_default=True)
@click.option("--fine-t1", type=click.Path(path_type=Path), required=True, help="Fine image at t1.")
@click.option("--coarse-t1", type=click.Path(path_type=Path), required=True, help="Coarse image at t1.")
@click.option(
    "--coarse-t2",
    type=click.Path(path_type=Path),
    required=True,
    multiple=True,
    help="Coarse image at the target date; repeat for several target dates.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output GeoTIFF; a folder when several --coarse-t2 are given (pred_<coarse name>.tif).",
)
@click.option("--option", "options", multiple=True, help="Method option key=value (repeatable).")
@click.option("--dtype", type=click.Choice(["int16", "float32"]), default="int16", show_default=True)
@click.option("--scale", type=float, default=1e-4, show_default=True, help="Reflectance per stored unit.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@one_line_errors
def predict_command(
    method: str,
    fine_t1: Path,
    coarse_t1: Path,
    coarse_t2: tuple[Path, ...],
    out: Path,
    options: tuple[str, ...],
    dtype: str,
    scale: float,
    overwrite: bool,
) -> None:
    """Predict the fine image at each target date from a reference pair and the coarse image(s)."""
    method_options = parse_options(options)
    fusion = get_method(method)
    targets = _output_paths(out, coarse_t2, overwrite=overwrite)
    for target_coarse, target_path in targets:
        case = scenes.explicit_case(coarse_t1=coarse_t1, fine_t1=fine_t1, coarse_t2=target_coarse)
        images = _read_case_arrays(case, scale)
        try:
            prediction = fusion(
                images["coarse_t1"].data, images["fine_t1"].data, images["coarse_t2"].data, **method_options
            )
        except (TypeError, ValueError) as exc:  # unknown or invalid method options
            raise InputError(f"method {method}: {exc}") from exc
        raster.write_like(
            target_path, prediction, images["fine_t1"].info, dtype=dtype, scale=scale, overwrite=overwrite
        )
        click.echo(f"wrote {target_path}")


def _output_paths(out: Path, coarse_t2: tuple[Path, ...], *, overwrite: bool) -> list[tuple[Path, Path]]:
    if len(coarse_t2) == 1 and out.suffix.lower() in scenes.RASTER_SUFFIXES:
        return [(coarse_t2[0], raster.check_writable(out, overwrite=overwrite))]
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: several target dates need --out to be a folder")
    out.mkdir(parents=True, exist_ok=True)
    paths = [(c, out / f"pred_{c.stem}.tif") for c in coarse_t2]
    return [(c, raster.check_writable(p, overwrite=overwrite)) for c, p in paths]


# --------------------------------------------------------------------------------------------------
# evaluate


@cli.command("evaluate")
@click.option("--pred", type=click.Path(path_type=Path), required=True, help="Predicted GeoTIFF.")
@click.option("--truth", type=click.Path(path_type=Path), required=True, help="True fine GeoTIFF.")
@click.option(
    "--ratio",
    type=float,
    default=None,
    help="Fine/coarse pixel-size ratio h/l for ERGAS, e.g. 0.05 for 25 m / 500 m (ERGAS skipped if unset).",
)
@click.option("--mask", type=click.Path(path_type=Path), default=None, help="Raster: nonzero = invalid.")
@click.option("--data-range", type=float, default=1.0, show_default=True, help="PSNR data range R.")
@click.option("--ssim-range", type=float, default=2.0, show_default=True, help="SSIM data_range.")
@click.option("--scale", type=float, default=1e-4, show_default=True, help="Reflectance per stored unit.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write JSON.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="Write CSV.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@one_line_errors
def evaluate_command(
    pred: Path,
    truth: Path,
    ratio: float | None,
    mask: Path | None,
    data_range: float,
    ssim_range: float,
    scale: float,
    json_path: Path | None,
    csv_path: Path | None,
    overwrite: bool,
) -> None:
    """Compare a prediction with the truth: per-band metrics table (METRICS.md conventions)."""
    from stfusion import metrics, report

    outputs = [json_path, csv_path, report.sidecar_path(csv_path) if csv_path else None]
    for path in outputs:
        if path is not None:
            raster.check_writable(path, overwrite=overwrite)
    predicted = raster.read(pred, scale=scale)
    true = raster.read(truth, scale=scale)
    if predicted.data.shape != true.data.shape:
        raise InputError(
            f"{pred}: shape {predicted.data.shape} (bands, rows, cols) differs from truth {truth} "
            f"{true.data.shape}"
        )
    valid = None
    if mask is not None:
        mask_raster = raster.read(mask, scale=1.0)
        if mask_raster.data.shape[1:] != true.data.shape[1:]:
            raise InputError(
                f"{mask}: size {mask_raster.data.shape[1:]} differs from truth {true.data.shape[1:]}"
            )
        valid = ~(np.nan_to_num(mask_raster.data, nan=1.0) != 0).any(axis=0)
    band_names = [n or f"band{i + 1}" for i, n in enumerate(true.info.band_names)]
    result = metrics.compute_metrics(
        predicted.data,
        true.data,
        valid=valid,
        data_range=data_range,
        ssim_data_range=ssim_range,
        ratio=ratio,
        band_names=band_names,
    )
    click.echo(report.format_table(result))
    reports = {pred.stem: result}
    if csv_path is not None:
        report.write_metrics_csv(csv_path, reports)
        click.echo(f"wrote {csv_path}")
    if json_path is not None:
        report.write_metrics_json(json_path, reports)
        click.echo(f"wrote {json_path}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="stfusion")
