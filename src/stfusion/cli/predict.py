"""``stfusion predict``: the fine image at each target date, from reference pair(s) and coarse images."""

from __future__ import annotations

from pathlib import Path

import click

from stfusion import distributed, fusion, raster, scenes, workflows
from stfusion.cli.options import (
    SKIP_HINT,
    device_option,
    explicit_masks,
    key_values,
    load_checkpoint,
    make_output_folder,
    make_tiles,
    mask_options,
    one_line_errors,
    output_state_options,
    progress,
    reading_options,
    say,
    tile_options,
)
from stfusion.errors import InputError
from stfusion.inputs import ReadOptions, band_count, band_names


def target_outputs(out: Path, coarse_t2: tuple[Path, ...]) -> list[Path]:
    """One output per target: ``out`` itself for one target, else ``out/pred_<coarse stem>.tif``."""
    if len(coarse_t2) == 1 and out.suffix.lower() in scenes.RASTER_SUFFIXES:
        return [out]
    if out.suffix and not out.is_dir():
        if len(coarse_t2) == 1:
            raise InputError(f"{out}: output must be a GeoTIFF (.tif or .tiff), or a folder")
        raise InputError(f"{out}: several target dates need --out to be a folder")
    return [out / f"pred_{c.stem}.tif" for c in coarse_t2]


@click.command("predict")
@click.option(
    "--method",
    type=click.Choice(fusion.names()),
    default=None,
    help=f"Fusion method (see `stfusion methods`) [default: mlffgan with --checkpoint; else "
    f"{fusion.DEFAULT_METHOD} with one reference pair, {fusion.TWO_PAIR_DEFAULT} with two: the leave-out "
    "benchmark's best].",
)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="MLFF-GAN checkpoint.")
@click.option(
    "--fine-t1", type=click.Path(path_type=Path), required=True, help="Fine image of the reference date."
)
@click.option(
    "--coarse-t1", type=click.Path(path_type=Path), required=True, help="Coarse image of that date."
)
@click.option("--fine-t3", type=click.Path(path_type=Path), default=None, help="Fine image of a second pair.")
@click.option("--coarse-t3", type=click.Path(path_type=Path), default=None, help="Coarse image of that pair.")
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
    help="Output GeoTIFF, or a folder (pred_<coarse name>.tif in it): a folder when several --coarse-t2 "
    "are given, and any existing folder.",
)
@click.option("--option", "options", multiple=True, help="Method option key=value (repeatable).")
@click.option(
    "--dtype",
    type=click.Choice(["int16", "float32"]),
    default="int16",
    show_default=True,
    help="Output type: int16 reflectance x 10000 (with GDAL scale tags), or float32 reflectance.",
)
@click.option("--cog", is_flag=True, help="Write Cloud Optimized GeoTIFFs (with overviews).")
@click.option("--amp", is_flag=True, help="MLFF-GAN: bf16 autocast (CUDA only).")
@click.option("--compile", "compile_model", is_flag=True, help="MLFF-GAN: torch.compile the generator.")
@tile_options
@device_option
@output_state_options
@mask_options
@reading_options
@one_line_errors(SKIP_HINT)
def predict_command(
    method: str | None,
    checkpoint: Path | None,
    fine_t1: Path,
    coarse_t1: Path,
    fine_t3: Path | None,
    coarse_t3: Path | None,
    coarse_t2: tuple[Path, ...],
    out: Path,
    options: tuple[str, ...],
    dtype: str,
    cog: bool,
    amp: bool,
    compile_model: bool,
    tile: tuple[int, int],
    overlap: int,
    batch_size: int,
    device: str,
    overwrite: bool,
    skip_existing: bool,
    clip: bool,
    quality: bool,
    mask: Path | None,
    reading: ReadOptions,
    **role_masks: Path | None,
) -> None:
    """Predict the fine image at each target date from reference pair(s) and the coarse image(s).

    Every method streams: the inputs are read block by block (tiles for MLFF-GAN, row blocks with a halo
    for STARFM, ESTARFM and FSDAF) and rows are written as they are finished, so any scene size fits in
    memory. Under `torchrun --nproc_per_node N -m stfusion predict ...` the rows of each scene are split
    across the N processes and joined into one file.
    """
    pairs = 2 if fine_t3 is not None else 1
    name = method or ("mlffgan" if checkpoint else fusion.default_method(pairs))
    entry = fusion.get(name)
    entry.check_checkpoint(checkpoint is not None)  # before the checkpoint is read or checked
    jobs = plan_jobs(
        fine_t1,
        coarse_t1,
        coarse_t2,
        out,
        fine_t3=fine_t3,
        coarse_t3=coarse_t3,
        masks=explicit_masks(mask, **role_masks),
        overwrite=overwrite,
        skip_existing=skip_existing,
    )
    values = dict(key_values(options))
    tiles = make_tiles(tile, overlap, batch_size)
    runtime = {"device": device, "amp": amp, "compile": compile_model, "tiles": tiles}
    model = load_checkpoint(checkpoint) if checkpoint is not None else None
    if model is not None:
        model.check_bands_of_scene(band_count(fine_t1, reading), fine_t1, band_names(fine_t1, reading))
    preparer = entry.preparer(values, checkpoint=model, runtime=runtime)
    context = distributed.setup(device)
    output = workflows.OutputOptions(dtype, cog, overwrite, skip_existing, quality, clip)
    try:
        with progress(len(jobs) * _rows(jobs[0][0]), f"{name}", unit="row") as bar:
            workflows.predict_cases(
                jobs,
                preparer,
                method=name,
                options=values,
                reading=reading,
                output=output,
                context=context,
                say=say if context.is_main else lambda _: None,
                on_rows=bar.update if context.is_main else None,
            )
    finally:
        distributed.teardown(context)


def plan_jobs(
    fine_t1: Path,
    coarse_t1: Path,
    coarse_t2: tuple[Path, ...],
    out: Path,
    *,
    fine_t3: Path | None,
    coarse_t3: Path | None,
    masks: dict[str, Path],
    overwrite: bool,
    skip_existing: bool,
) -> list[tuple[scenes.FusionCase, Path]]:
    """(case, output) per target date; outputs checked (writable, never an input) before any work."""
    if (fine_t3 is None) != (coarse_t3 is None):
        raise InputError("--fine-t3 and --coarse-t3 go together (the second reference pair)")
    extra = [(coarse_t3, fine_t3)] if coarse_t3 is not None and fine_t3 is not None else []
    targets = target_outputs(out, coarse_t2)
    jobs = [
        (
            scenes.explicit_case(
                coarse_t1=coarse_t1, fine_t1=fine_t1, coarse_t2=c2, masks=masks, extra_pairs=extra
            ),
            t,
        )
        for c2, t in zip(coarse_t2, targets, strict=True)
    ]
    outputs = [*targets, *(workflows.quality_path(t) for t in targets)]
    workflows.refuse_inputs_as_outputs(outputs, [p for case, _ in jobs for p in workflows.case_files(case)])
    if len(targets) > 1 or not out.suffix:
        make_output_folder(out)
    for target in targets:
        if not (skip_existing and target.exists()):
            raster.check_writable(target, overwrite=overwrite)
    return jobs


def _rows(case: scenes.FusionCase) -> int:
    return raster.inspect(case.fine_t1).height
