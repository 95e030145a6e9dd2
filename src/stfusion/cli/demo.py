"""``stfusion demo``: the leave-out benchmark on the built-in CIA sample, MLFF-GAN and the baselines."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from stfusion import benchmark, workflows
from stfusion.cli.options import make_output_folder, one_line_errors, progress, say
from stfusion.errors import InputError
from stfusion.recipes import recipe
from stfusion.sample import DATASET_COARSE_RATIOS, DATASETS, SAMPLE_BANDS

#: The sample tested by the demo; MLFF-GAN trains on the other bundled datasets only.
DEMO_DATASET: str = "cia-crop"

#: The methods of the demo's table (ESTARFM takes two pairs: the two-pair case only).
DEMO_METHODS: tuple[str, ...] = ("persistence", "coarse-delta", "starfm", "fsdaf", "estarfm", "mlffgan")

#: The case whose predictions the quick-look figure shows.
QUICKLOOK_CASE: str = "20011017-20011102"


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
    default=recipe(benchmark.MLFFGAN_RECIPE)["epochs"],
    show_default=True,
    help="Training epochs of MLFF-GAN (the leave-out recipe's).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder's files.")
@one_line_errors()
def demo_command(out: Path, epochs: int, overwrite: bool) -> None:
    """The leave-out benchmark on the built-in CIA sample (250 x 250 x 6, three dates).

    Every ordered pair of its dates (and the two-pair case) is predicted by persistence, coarse-delta,
    STARFM, FSDAF and MLFF-GAN (the two-pair case by ESTARFM too), and scored against the real Landsat
    image of the target date. MLFF-GAN is trained first (about 10 minutes on 2 CPU cores) on the other
    bundled datasets only, so it never sees this area or these dates: the scores are what a user can
    expect on a new scene. Ends with one sentence saying which method won; writes
    OUT/benchmark.{md,csv,json,png} and OUT/quicklook.png.
    """
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: output folder exists and is not empty; pass --overwrite to replace it")
    make_output_folder(out)
    if overwrite:  # a new training too, not the models of an earlier run
        shutil.rmtree(out / "models", ignore_errors=True)
    start = time.perf_counter()
    folders = {DEMO_DATASET: DATASETS[DEMO_DATASET]}
    others = [name for name in DATASETS if name != DEMO_DATASET]
    say(
        f"training MLFF-GAN for {epochs} epochs on {' and '.join(others)} (never on the CIA sample), then "
        f"predicting every case of the CIA sample with {', '.join(DEMO_METHODS)}"
    )
    specs = [benchmark.MethodSpec.parse(name) for name in DEMO_METHODS]
    cases = benchmark.dataset_cases(DEMO_DATASET, DATASETS[DEMO_DATASET], ergas_ratio=1.0)
    with progress(epochs, "training MLFF-GAN", unit="epoch") as training_bar:
        trainer = benchmark.mlffgan_trainer(
            overrides={"epochs": epochs}, on_epoch=lambda fold: training_bar.update(1)
        )
        with progress(len(cases) * len(specs), "predicting", unit="run") as bar:
            result = benchmark.run_benchmark(
                out,
                datasets=folders,
                methods=specs,
                ratios={DEMO_DATASET: DATASET_COARSE_RATIOS[DEMO_DATASET]},
                overwrite=overwrite,
                train_fold=trainer,
                training=DATASETS,
                on_run=lambda case, method: bar.update(1),
            )
    protocol = {
        "data": f"{DATASETS[DEMO_DATASET]} (real Landsat/MODIS, see its README)",
        "cases": "every ordered date pair, and the two-pair case",
        "mlffgan": f"{benchmark.MLFFGAN_RECIPE} recipe, {epochs} epochs, trained on {', '.join(others)} only",
        "metrics": "docs/metrics.md; every method of a case on the same pixels",
    }
    tables = benchmark.write_benchmark(result, out, protocol=protocol, overwrite=True)
    shown = next(c for c in result.cases if c.case.name == QUICKLOOK_CASE)
    figure = workflows.quicklook(
        out / "quicklook.png",
        workflows.read_case(shown.case),
        {label: r.prediction for label, r in result.results[shown.name].items()},
        rgb_bands=workflows.default_rgb(SAMPLE_BANDS),
    )
    say(tables["markdown"].read_text().split("## Every case")[0].strip())
    say(workflows.winner_sentence(result.results) + ".")
    say(f"tables: {tables['markdown']}\nquick-look ({QUICKLOOK_CASE}): {figure}")
    say(f"demo finished in {time.perf_counter() - start:.0f} s")
