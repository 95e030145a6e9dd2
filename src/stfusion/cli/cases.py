"""``stfusion cases``: the fusion cases a folder holds, and the files skipped."""

from __future__ import annotations

from pathlib import Path

import click

from stfusion import scenes
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
    """List the fusion cases found in FOLDER and the files skipped (and why)."""
    discovery = scenes.discover(folder)
    if paper_out is not None:
        for pair_folder in scenes.to_paper_layout(discovery, paper_out):
            say(f"wrote {pair_folder}")
        return
    say(f"{folder}: {len(discovery.cases)} case(s), layout {discovery.layout}")
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
    for skipped in discovery.skipped:
        say(f"  skipped {skipped.path}: {skipped.reason}")
