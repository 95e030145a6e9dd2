"""``stfusion benchmark``: the leave-out benchmark over the bundled real datasets (stfusion.benchmark)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from stfusion import benchmark, fusion
from stfusion.cli.options import make_output_folder, one_line_errors, progress, say
from stfusion.errors import InputError
from stfusion.sample import DATASET_COARSE_RATIOS, DATASETS

#: The methods the benchmark runs by default (`--method` replaces them).
DEFAULT_METHODS: tuple[str, ...] = (
    "persistence",
    "coarse-delta",
    "starfm",
    "starfm:preset=starfm_v121",
    "fsdaf",
    "estarfm",
    "mlffgan",
)


@click.command("benchmark")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("benchmark"),
    show_default=True,
    help="Output folder.",
)
@click.option(
    "--method",
    "methods",
    multiple=True,
    help="A method, with options as name:key=value,key=value (repeatable) [default: "
    + ", ".join(DEFAULT_METHODS)
    + "].",
)
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    help="A bundled dataset (" + ", ".join(DATASETS) + ") or NAME=FOLDER:RATIO for a flat folder of your "
    "own (RATIO: coarse/fine pixel size); repeatable [default: every bundled dataset].",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Learned methods train for 2 epochs of few crops (a smoke run of the protocol, minutes); their "
    "scores then say nothing about the recipe.",
)
@click.option("--overwrite", is_flag=True, help="Redo every prediction (default: keep those in --out).")
@one_line_errors("predictions done so far are kept; rerun the same command to continue")
def benchmark_command(
    out: Path, methods: tuple[str, ...], datasets: tuple[str, ...], quick: bool, overwrite: bool
) -> None:
    """Score every method on every case of the bundled real datasets (leave-out protocol).

    Cases: every ordered pair of dates of each dataset, and the two-pair cases (the dates before and
    after a date -> that date). Learned models are trained only on the other datasets. Writes
    OUT/benchmark.{md,csv,json}; rerunning continues where a run stopped.
    """
    specs = [benchmark.MethodSpec.parse(text) for text in (methods or DEFAULT_METHODS)]
    folders, ratios = _datasets(datasets)
    make_output_folder(out)
    start = time.perf_counter()
    cases = [
        c for name, folder in folders.items() for c in benchmark.dataset_cases(name, folder, ergas_ratio=1)
    ]
    learned = any(fusion.get(spec.name).needs_checkpoint for spec in specs)
    if learned:
        say(
            f"training MLFF-GAN ({benchmark.MLFFGAN_RECIPE} recipe{', --quick' if quick else ''}) once per "
            f"tested dataset, on the others only: {', '.join(folders)}"
        )
    trainer = (
        benchmark.mlffgan_trainer(overrides=benchmark.QUICK_OVERRIDES if quick else None) if learned else None
    )
    with progress(len(cases) * len(specs), "benchmark", unit="run") as bar:
        result = benchmark.run_benchmark(
            out,
            datasets=folders,
            methods=specs,
            ratios=ratios,
            overwrite=overwrite,
            train_fold=trainer,
            training=_training_pool(folders),
            on_run=lambda case, method: bar.update(1),
        )
    protocol = {
        "datasets": ", ".join(f"{n} ({f})" for n, f in folders.items()),
        "cases": "every ordered date pair, and the two-pair cases (dates before and after -> the date)",
        "learned models": f"leave-one-dataset-out (trained on the other datasets only), recipe "
        f"{benchmark.MLFFGAN_RECIPE}{' (--quick)' if quick else ''}",
        "metrics": "docs/metrics.md (SSIM data_range 2; ERGAS ratio = fine / coarse pixel size); every "
        "method of a case on the pixels all methods predicted",
        "quick": quick,
        "wall seconds": round(time.perf_counter() - start, 1),
    }
    tables = benchmark.write_benchmark(result, out, protocol=protocol)
    say(tables["markdown"].read_text())


def _datasets(given: tuple[str, ...]) -> tuple[dict[str, Path], dict[str, float]]:
    if not given:
        return dict(DATASETS), dict(DATASET_COARSE_RATIOS)
    folders, ratios = {}, {}
    for text in given:
        if text in DATASETS:
            folders[text], ratios[text] = DATASETS[text], DATASET_COARSE_RATIOS[text]
            continue
        name, sep, rest = text.partition("=")
        folder, colon, ratio = rest.rpartition(":")
        if not sep or not colon:
            raise InputError(
                f"--dataset {text!r}: a bundled name ({', '.join(DATASETS)}) or NAME=FOLDER:RATIO"
            )
        try:
            ratios[name] = float(ratio)
        except ValueError:
            raise InputError(f"--dataset {text!r}: RATIO must be a number (coarse/fine pixel size)") from None
        folders[name] = Path(folder)
    return folders, ratios


def _training_pool(tested: dict[str, Path]) -> dict[str, Path]:
    """What learned models may train on: every bundled dataset, and the user's own given ones."""
    return {**DATASETS, **tested}
