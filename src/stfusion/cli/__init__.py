"""The `stfusion` command line: one module per command family, all sharing :mod:`.options`.

Every command turns a :class:`~stfusion.errors.StfusionError` into one line on stderr and exit code 2:
bad input never ends in a traceback, and outputs are written atomically, so none is left half-written.
Commands only parse, call a job of the package and print.
"""

from __future__ import annotations

import logging
import os

import click

from stfusion import __version__
from stfusion.cli.benchmark import benchmark_command
from stfusion.cli.cases import cases_command, info_command
from stfusion.cli.checkpoints import import_reference_command
from stfusion.cli.compare import compare_command
from stfusion.cli.demo import demo_command
from stfusion.cli.evaluate import evaluate_command
from stfusion.cli.fuse import fuse_command
from stfusion.cli.methods import methods_command
from stfusion.cli.predict import predict_command
from stfusion.cli.sample import sample_command
from stfusion.cli.train import test_command, train_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stfusion")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (results and errors are still printed).")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads per process for PyTorch and numba (default: theirs; torchrun sets 1 per process).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool, threads: int | None) -> None:
    """Spatiotemporal fusion of satellite images: predict a fine image at a target date."""
    ctx.obj = {"quiet": quiet}
    if not verbose:
        # GDAL's own messages (e.g. libtiff's on a full disk) would add raw lines to our one-line errors
        os.environ.setdefault("CPL_LOG", os.devnull)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if threads is not None:
        import numba
        import torch

        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]


for command in (
    cases_command,
    info_command,
    predict_command,
    evaluate_command,
    compare_command,
    fuse_command,
    benchmark_command,
    methods_command,
    train_command,
    test_command,
    demo_command,
    sample_command,
    import_reference_command,
):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="stfusion")
