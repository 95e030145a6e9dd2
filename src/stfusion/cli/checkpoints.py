"""``stfusion import-reference``: the MLFF-GAN authors' weights as a self-describing checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from stfusion import raster, workflows
from stfusion.cli.options import one_line_errors, say


@click.command("import-reference")
@click.argument("generator_path", type=click.Path(path_type=Path))
@click.option(
    "--discriminator",
    "discriminator_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The authors' discriminator .pth too (to continue training).",
)
@click.option("--bands", type=click.IntRange(min=1), required=True, help="Bands of the model.")
@click.option(
    "--coarse-factor", type=click.IntRange(min=1), default=16, show_default=True, help="Degradation factor."
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
@one_line_errors()
def import_reference_command(
    generator_path: Path,
    discriminator_path: Path | None,
    bands: int,
    coarse_factor: int,
    out: Path,
    overwrite: bool,
) -> None:
    """Convert the MLFF-GAN authors' .pth state dict(s) into a self-describing stfusion checkpoint."""
    from stfusion import checkpoint  # imports torch: only this command needs it

    sources = [path for path in (generator_path, discriminator_path) if path is not None]
    workflows.refuse_inputs_as_outputs([out], sources)
    raster.check_writable(out, overwrite=overwrite)
    imported = checkpoint.import_reference(
        generator_path, bands=bands, coarse_factor=coarse_factor, discriminator_path=discriminator_path
    )
    checkpoint.save(out, imported)
    say(f"wrote {out}")
