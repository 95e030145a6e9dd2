"""``stfusion cases``: the fusion cases a folder holds, and the files skipped; ``stfusion info``: one file."""

from __future__ import annotations

import json
from pathlib import Path

import click

from stfusion import describe, scenes
from stfusion.cli.options import one_line_errors, say


@click.command("cases")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--to-paper-layout",
    "paper_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the cases as the MLFF-GAN paper's train/, val/, test/ pair folders there (for run.py).",
)
@one_line_errors()
def cases_command(folder: Path, paper_out: Path | None) -> None:
    """List the fusion cases found in FOLDER, how much of each image is invalid (nodata, masks; a
    reference over 50% is flagged), and the files skipped (and why)."""
    discovery = scenes.discover(folder)
    if paper_out is not None:
        for pair_folder in scenes.to_paper_layout(discovery, paper_out):
            say(f"wrote {pair_folder}")
        return
    say(f"{folder}: {len(discovery.cases)} case(s), layout {discovery.layout}")
    invalid = describe.InvalidFractions()
    for case in discovery.cases:
        split = f"[{case.split}] " if case.split else ""
        truth = case.fine_t2.name if case.fine_t2 else "(no truth)"
        say(f"  {split}{case.name}: {case.date_t1} -> {case.date_t2}")
        for index, pair in enumerate(case.pairs):
            coarse_role, fine_role = scenes.pair_roles(index)
            say(f"      {coarse_role} {pair.coarse.name}  {fine_role} {pair.fine.name}")
        say(f"      coarse_t2 {case.coarse_t2.name}  fine_t2 {truth}")
        for role, mask in case.masks.items():
            say(f"      mask of {role}: {mask.name}")
        say(f"      {describe.invalid_summary(invalid.of_case(case))}")
    for skipped in discovery.skipped:
        say(f"  skipped {skipped.path}: {skipped.reason}")


@click.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--scale",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Reflectance per stored unit, as --fine-scale of the other commands, if the file has no tags "
    "[default: auto].",
)
@click.option("--offset", type=float, default=None, help="Reflectance offset, with --scale, if no tags.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
@one_line_errors()
def info_command(path: Path, scale: float | None, offset: float | None, as_json: bool) -> None:
    """Describe a GeoTIFF or a checkpoint as stfusion reads it.

    A GeoTIFF: size, storage, bands, nodata and masks, grid, date, how its values become reflectance
    and a sample of them (warnings as the other commands give them). A checkpoint: its model, bands,
    scale and the training run that made it (epochs, cases, images); nothing in it runs.
    """
    lines = describe.describe(path, scale=scale, offset=offset)
    if as_json:
        say(json.dumps(dict(lines), indent=2))
        return
    width = max(len(label) for label, _ in lines)
    for label, text in lines:
        say(f"{label + ':':<{width + 1}} {text}")
