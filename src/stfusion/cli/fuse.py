"""``stfusion fuse``: a time series of fine images from folders of dated fine and coarse images."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from stfusion import distributed, fusion, series, workflows
from stfusion.cli.options import (
    SKIP_HINT,
    device_option,
    key_values,
    load_checkpoint,
    make_output_folder,
    make_tiles,
    one_line_errors,
    one_output_state,
    progress,
    reading_options,
    say,
    tile_options,
)
from stfusion.errors import InputError
from stfusion.inputs import ReadOptions, band_count, band_names


def parse_dates(text: str | None) -> tuple[dt.date, dt.date] | None:
    """``A..B`` (YYYY-MM-DD or YYYYMMDD each, inclusive) -> (A, B); one date ``A`` -> (A, A)."""
    if text is None:
        return None
    first, sep, last = text.partition("..")
    try:
        dates = [_date(first), _date(last if sep else first)]
    except ValueError:
        raise InputError(
            f"--dates {text!r}: expected A..B or one date, e.g. 2001-06-01..2001-08-31 or 2001-07-11"
        ) from None
    if dates[0] > dates[1]:
        raise InputError(f"--dates {text!r}: expected A..B with A on or before B")
    return dates[0], dates[1]


def _date(text: str) -> dt.date:
    text = text.strip()
    return dt.date.fromisoformat(text) if "-" in text else dt.datetime.strptime(text, "%Y%m%d").date()


@click.command("fuse")
@click.argument("folder", required=False, type=click.Path(path_type=Path))
@click.option("--fine-dir", type=click.Path(path_type=Path), help="Folder of dated fine images.")
@click.option("--coarse-dir", type=click.Path(path_type=Path), help="Folder of dated coarse images.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "--method",
    type=click.Choice(fusion.names()),
    default=None,
    help="Fusion method [default: mlffgan with --checkpoint; else the benchmark's best for the pairs "
    f"found: {fusion.TWO_PAIR_DEFAULT} with two, {fusion.DEFAULT_METHOD} with one].",
)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="MLFF-GAN checkpoint.")
@click.option("--option", "options", multiple=True, help="Method option key=value (repeatable).")
@click.option(
    "--dates",
    default=None,
    help="Only target dates within A..B (inclusive), e.g. 2001-06-01..2001-08-31, or one date.",
)
@click.option(
    "--max-invalid",
    type=click.FloatRange(0.0, 1.0),
    default=series.MAX_INVALID,
    show_default=True,
    help="Largest fraction of invalid (nodata, masked) pixels of a usable reference image.",
)
@click.option(
    "--dtype",
    type=click.Choice(["int16", "float32"]),
    default="int16",
    show_default=True,
    help="Output type: int16 reflectance x 10000 (with GDAL scale tags), or float32 reflectance.",
)
@click.option("--cog", is_flag=True, help="Write Cloud Optimized GeoTIFFs.")
@click.option("--clip", is_flag=True, help="Clip predictions to the valid reflectance range 0..1.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--skip-existing", is_flag=True, help="Keep outputs that exist (resume an interrupted series).")
@tile_options
@device_option
@reading_options
@one_line_errors(SKIP_HINT)
def fuse_command(
    folder: Path | None,
    fine_dir: Path | None,
    coarse_dir: Path | None,
    out: Path,
    method: str | None,
    checkpoint: Path | None,
    options: tuple[str, ...],
    dates: str | None,
    max_invalid: float,
    dtype: str,
    cog: bool,
    clip: bool,
    overwrite: bool,
    skip_existing: bool,
    tile: tuple[int, int],
    overlap: int,
    batch_size: int,
    device: str,
    reading: ReadOptions,
) -> None:
    """Predict the fine image of every coarse date without a usable fine image (a time series).

    FOLDER holds fine_YYYYMMDD.tif and coarse_YYYYMMDD.tif (masks: <stem>_mask.tif); or give
    --fine-dir and --coarse-dir, whose file names carry dates (YYYYMMDD, YYYY-MM-DD, MODIS AYYYYDOY) or
    whose tags do. Each date uses the nearest usable pair before and after it (or the two nearest on
    one side). Writes OUT/fused_YYYYMMDD.tif, OUT/series.csv and OUT/series.png (with the dates an
    earlier run into OUT predicted, e.g. with other --dates, while their outputs remain). series.csv:
    date, status, pairs, method, valid_fraction, each band's mean over the date's valid pixels, then
    common_<band>, its mean over the pixels valid on every date at least half as valid as the clearest
    (dates compare on the same ground), seconds, note. Under `torchrun
    --nproc_per_node N -m stfusion fuse ...` the dates are split over the N processes.
    """
    one_output_state(overwrite, skip_existing)
    method = method or ("mlffgan" if checkpoint is not None else None)  # as in predict
    if method is not None:  # a method/checkpoint mismatch stops here, before any output exists
        fusion.get(method).check_checkpoint(checkpoint is not None)
    inputs = _inputs(folder, fine_dir, coarse_dir)
    plans = series.plan_series(inputs, dates=parse_dates(dates), max_invalid=max_invalid)
    method_options = dict(key_values(options))

    def kept(plan: series.DatePlan) -> bool:  # a date --skip-existing keeps: its inputs are not read
        return skip_existing and workflows.usable_output(series.output_path(out, plan.date))

    readers = series.check_plans(
        inputs, plans, method=method, options=method_options, reading=reading, skip=kept
    )
    model = load_checkpoint(checkpoint) if checkpoint is not None else None
    if model is not None:
        first = next(iter(inputs.fine.values()))
        model.check_bands_of_scene(band_count(first, reading), first, band_names(first, reading))
    make_output_folder(out)
    targets = [series.output_path(out, p.date) for p in plans if p.pairs]
    all_inputs = [*inputs.fine.values(), *inputs.coarse.values(), *inputs.masks.values()]
    workflows.refuse_inputs_as_outputs([*targets, out / "series.csv", out / "series.png"], all_inputs)
    workflows.check_outputs(targets, overwrite=overwrite, skip_existing=skip_existing)
    runtime = {"device": device, "tiles": make_tiles(tile, overlap, batch_size)}
    context = distributed.setup(device)
    output = workflows.OutputOptions(
        dtype=dtype, cog=cog, overwrite=overwrite, skip_existing=skip_existing, clip=clip
    )
    try:
        with progress(len(plans), "fuse", unit="date") as bar:
            for result in series.iter_series(
                inputs,
                plans,
                method=method,
                options=method_options,
                checkpoint=model,
                runtime=runtime,
                out=out,
                reading=reading,
                output=output,
                context=context,
                readers=readers,
            ):
                series.save_summary(out, result)
                bar.update(context.world_size)
                if result.status in ("predicted", "kept"):
                    say(_line(result))
                elif result.status == "skipped":
                    say(f"{result.date}: {result.reason}")
        distributed.barrier(context)
        if context.is_main:
            table, figure = series.write_series_outputs(out, inputs, plans, reading)
            say(f"series: {table}\nfigure: {figure}")
            say(_summary(series.load_summaries(out, plans)))
    finally:
        distributed.teardown(context)


def _inputs(folder: Path | None, fine_dir: Path | None, coarse_dir: Path | None) -> series.SeriesInputs:
    if folder is not None and (fine_dir or coarse_dir):
        raise InputError("give FOLDER, or --fine-dir and --coarse-dir, not both")
    if folder is not None:
        return series.SeriesInputs.from_folder(folder)
    if fine_dir is None or coarse_dir is None:
        raise InputError(
            "give FOLDER (fine_YYYYMMDD.tif / coarse_YYYYMMDD.tif), or --fine-dir and --coarse-dir"
        )
    return series.SeriesInputs.from_dirs(fine_dir, coarse_dir)


def _summary(results: list[series.DateResult]) -> str:
    """One closing line: how many dates were predicted, kept (--skip-existing), skipped and observed."""
    counts = {s: sum(1 for r in results if r.status == s) for s in ("predicted", "kept", "skipped")}
    kept = f", {counts['kept']} kept" if counts["kept"] else ""
    skipped = f", {counts['skipped']} skipped (no pixel could be predicted)" if counts["skipped"] else ""
    observed = sum(1 for r in results if r.status == "observed")
    return f"{counts['predicted']} date(s) predicted{kept}{skipped}, {observed} observed"


def _line(result: series.DateResult) -> str:
    pairs = " + ".join(str(d) for d in result.pairs)
    timing = f", {result.seconds:.1f} s" if result.status == "predicted" else " (kept)"
    why = f"; {result.reason}" if result.reason else ""
    return f"{result.date}: {result.path} ({result.method} from {pairs}{timing}{why})"
