"""``stfusion demo``: train MLFF-GAN briefly on the built-in sample and compare it with the baselines."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from stfusion import scenes, workflows
from stfusion.cli.options import one_line_errors, say
from stfusion.cli.train import run_training
from stfusion.errors import InputError
from stfusion.sample import DEMO_CONFIG, SAMPLE_ERGAS_RATIO, SAMPLE_ROOT
from stfusion.train import TrainConfig


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Output folder.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=DEMO_CONFIG["epochs"],
    show_default=True,
    help="Training epochs of MLFF-GAN.",
)
@click.option(
    "--residual/--no-residual",
    default=DEMO_CONFIG["residual"],
    show_default=True,
    help="Learn the correction to F1 + C2 - C1 (ours) instead of F2 itself (the paper's).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder's files.")
@one_line_errors()
def demo_command(out: Path, epochs: int, residual: bool, overwrite: bool) -> None:
    """Train MLFF-GAN briefly on the built-in CIA sample and compare it with the baselines."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: output folder exists and is not empty; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    config = TrainConfig(save_dir=str(out / "run"), **{**DEMO_CONFIG, "epochs": epochs, "residual": residual})
    say(f"training MLFF-GAN on {SAMPLE_ROOT / 'train'} for {epochs} epochs (CPU); test date 2001-11-02")
    result = run_training(SAMPLE_ROOT, config, resume=False, overwrite=True, ratio=SAMPLE_ERGAS_RATIO)
    case_name, methods = next(iter(result.test_results.items()))
    prediction = out / "prediction_mlffgan.tif"
    source = methods["mlffgan"].output
    assert source is not None
    shutil.copyfile(source, prediction)
    case = next(c for c in scenes.discover(SAMPLE_ROOT).cases if c.name == case_name)
    figure = workflows.quicklook(
        out / "quicklook.png",
        inputs := workflows.read_case(case),
        {m: r.prediction for m, r in methods.items()},
        rgb_bands=workflows.default_rgb(inputs.band_names),
    )
    say(result.tables["markdown"].read_text())
    say(f"prediction: {prediction}\nquick-look: {figure}\ntables: {result.tables['markdown'].parent}")
    say(f"demo finished in {time.perf_counter() - start:.0f} s")
