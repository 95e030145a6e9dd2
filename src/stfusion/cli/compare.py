"""``stfusion compare``: several methods on every case of a folder, one table and one figure per case."""

from __future__ import annotations

from pathlib import Path

import click

from stfusion import fusion, raster, scenes, workflows
from stfusion.cli.options import (
    SKIP_HINT,
    key_values,
    load_checkpoint,
    make_output_folder,
    make_tiles,
    one_line_errors,
    output_state_options,
    progress,
    ratio_option,
    reading_options,
    say,
    tile_options,
)
from stfusion.errors import InputError
from stfusion.inputs import ReadOptions, band_count, band_names

DEFAULT_METHODS = "persistence,coarse-delta,starfm,fsdaf"


@click.command("compare")
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("comparison"),
    show_default=True,
    help="Output folder.",
)
@click.option(
    "--methods", default=DEFAULT_METHODS, show_default=True, help="Comma list (`stfusion methods`)."
)
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    type=click.Path(path_type=Path),
    help="MLFF-GAN checkpoint (repeatable); named mlffgan, mlffgan2, ...",
)
@click.option("--split", default=None, help="Only this split of a paper-layout folder.")
@click.option(
    "--pairs",
    type=click.Choice(["1", "2"]),
    default="1",
    show_default=True,
    help="Flat folders: 1 = each date from the date before; 2 = each date from the dates before and after "
    "(for two-pair methods such as estarfm; one-pair methods then combine both pairs).",
)
@click.option(
    "--option", "options", multiple=True, help="key=value for every method that has it, or method.key=value."
)
@ratio_option
@tile_options
@output_state_options
@reading_options
@one_line_errors(SKIP_HINT)
def compare_command(
    data: Path,
    out: Path,
    methods: str,
    checkpoints: tuple[Path, ...],
    split: str | None,
    pairs: str,
    options: tuple[str, ...],
    ratio: float | None,
    tile: tuple[int, int],
    overlap: int,
    batch_size: int,
    overwrite: bool,
    skip_existing: bool,
    clip: bool,
    quality: bool,
    reading: ReadOptions,
) -> None:
    """Run several methods on every case of DATA with a known truth: tables and one figure per case.

    Every method is scored on the same pixels (those every method predicted and valid in the truth).
    """
    found = scenes.discover(data)
    cases = [c for c in found.cases if c.fine_t2 is not None and (split is None or c.split == split)]
    if pairs == "2":
        if found.layout != "flat":
            raise InputError("--pairs 2 needs a flat folder of fine_/coarse_YYYYMMDD.tif files")
        cases = scenes.flat_cases(Path(data), "two-pair")
    if not cases:
        raise InputError(f"{data}: no case with a known fine t2 (truth) to compare against")
    names = [name.strip() for name in methods.split(",") if name.strip()]
    if checkpoints:  # each --checkpoint is an mlffgan column of its own
        names = [name for name in names if name != "mlffgan"]
    if not names and not checkpoints:
        raise InputError(f"--methods {methods!r}: name at least one method (see `stfusion methods`)")
    per_method = fusion.split_method_options(key_values(options), names)
    hint = (
        "; --pairs 2 makes two-pair cases of this flat folder"
        if found.layout == "flat" and pairs != "2"
        else ""
    )
    for name in names:
        fusion.get(name).check_pairs((len(case.pairs) for case in cases), hint)
    preparers = {name: fusion.get(name).preparer(per_method[name]) for name in names}
    runtime = {"tiles": make_tiles(tile, overlap, batch_size)}
    notes: dict[tuple[str, str], str] = {}
    for number, path in enumerate(checkpoints, start=1):
        model = load_checkpoint(path)
        first = cases[0].fine_t1
        model.check_bands_of_scene(band_count(first, reading), first, band_names(first, reading))
        name = "mlffgan" if number == 1 else f"mlffgan{number}"
        preparers[name] = fusion.get("mlffgan").preparer(checkpoint=model, runtime=runtime)
        notes |= {
            (c.name, name): "TRAINED ON THIS CASE"
            for c in cases
            if model.has_seen([c.fine_t2 or c.coarse_t2])
        }
    readers = workflows.case_readers(cases, reading)
    make_output_folder(out)
    for case in cases:  # figures are rewritten when resuming; refused before any work otherwise
        raster.check_writable(out / f"{case.name}.png", overwrite=overwrite or skip_existing)
    output = workflows.OutputOptions(
        overwrite=overwrite, skip_existing=skip_existing, quality=quality, clip=clip
    )
    with progress(len(cases) * len(preparers), "compare", unit="run") as bar:
        results = workflows.run_methods(
            cases,
            preparers,
            out_dir=out,
            ratio=ratio,
            reading=reading,
            output=output,
            method_options=per_method,
            on_case=workflows.figure_reporter(out, say),
            on_method=lambda case, method: bar.update(1),
            readers=readers,
        )
    protocol = {
        "data": str(data),
        "cases": ", ".join(c.name for c in cases if c.name in results),
        "ergas ratio": ratio
        if ratio is not None
        else "1 / coarse ratio (--coarse-ratio, or native coarse images)",
        "options": {name: values for name, values in per_method.items() if values},
        "resampling": reading.resampling,
        "scoring": "pixels predicted by every method and valid in the truth",
    }
    if unscored := [c.name for c in cases if c.name not in results]:
        protocol["not scored"] = (
            f"{', '.join(unscored)} (no pixel valid in the truth and predicted by every method)"
        )
    if notes:
        protocol["note"] = "a checkpoint scored on a case it was trained on (marked) is no fair test"
    tables = workflows.write_tables(
        results, out, protocol=protocol, stem="comparison", overwrite=overwrite or skip_existing, notes=notes
    )
    say(tables["markdown"].read_text())
    say(workflows.winner_sentence(results, notes=notes))
