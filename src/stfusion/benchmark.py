"""The leave-out benchmark: every method on every case of the bundled real datasets, honestly scored.

Protocol (the only source of the accuracy claims in the README):

- **Datasets**: the bundled flat folders (:data:`stfusion.sample.DATASETS`: CIA crop, ESTARFM site, LGC
  flood), or any flat folders of ``fine_YYYYMMDD.tif`` / ``coarse_YYYYMMDD.tif`` given by the caller.
- **Cases**: every ordered pair of dates of a dataset (reference t1 -> target t2, both directions), and
  for each date with dates before and after it, the two-pair case (nearest before + nearest after ->
  the date). Truth = the fine image of the target date; whole scene.
- **Methods**: any registry method with options (``starfm:preset=starfm4py``); a method runs on the
  cases whose number of pairs it takes (one-pair methods run pair by pair on two-pair cases and the
  predictions are combined, :mod:`stfusion.pairs`).
- **Learned models** (MLFF-GAN): leave-one-dataset-out. The model scored on a dataset's cases is
  trained only on the other datasets (so neither the test dates nor the test area are ever seen), and
  its epoch is selected on a spatial hold-out of those training data; :func:`check_disjoint` asserts it.
- **Scores**: docs/metrics.md conventions (SSIM data_range 2, ERGAS with the dataset's pixel-size
  ratio), every method of a case on the same pixels (predicted by all, valid in the truth); the table
  gives each case, each method's mean over cases, and seconds.

Outputs under ``out``: ``<dataset>/<case>/<method>.tif`` (kept, so a rerun resumes), ``benchmark.csv``
/ ``.json`` / ``.md`` and ``benchmark.png`` (methods x cases).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stfusion import fusion, report, scenes, workflows
from stfusion.errors import InputError
from stfusion.inputs import ReadOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodSpec:
    """A method with options, as a benchmark column: ``label`` is ``name`` or ``name[key=value,...]``."""

    name: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}[{','.join(f'{k}={v}' for k, v in self.options)}]"

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        """``name`` or ``name:key=value,key=value``; checked against the registry."""
        name, _, rest = text.strip().partition(":")
        method = fusion.get(name)
        options = []
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise InputError(f"--methods {text!r}: options are key=value, e.g. starfm:preset=starfm4py")
            method.option(key.strip().replace("-", "_"))
            options.append((key.strip().replace("-", "_"), value.strip()))
        method.parse_options(dict(options))
        return cls(name, tuple(options))


@dataclass(frozen=True)
class BenchmarkCase:
    """One case of one dataset, with the dataset's ERGAS ratio (fine / coarse pixel size)."""

    dataset: str
    case: scenes.FusionCase
    ergas_ratio: float

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.case.name}"

    @property
    def n_pairs(self) -> int:
        return len(self.case.pairs)

    def files(self) -> list[Path]:
        return workflows.case_files(self.case)


def dataset_cases(dataset: str, folder: Path, *, ergas_ratio: float) -> list[BenchmarkCase]:
    """Every ordered pair of dates with fine and coarse images, then the two-pair cases (module doc)."""
    cases = scenes.flat_cases(Path(folder), "all") + scenes.flat_cases(Path(folder), "two-pair")
    if not cases:
        raise InputError(f"{folder}: a benchmark dataset needs fine and coarse images of two dates or more")
    return [BenchmarkCase(dataset, case, ergas_ratio) for case in cases]


def planned_runs(datasets: Mapping[str, Path], methods: Sequence[MethodSpec]) -> int:
    """How many (case, method) predictions a benchmark of these datasets and methods makes."""
    cases = [c for name, folder in datasets.items() for c in dataset_cases(name, folder, ergas_ratio=1.0)]
    return sum(1 for c in cases for m in methods if fusion.get(m.name).accepts_pairs(c.n_pairs))


@dataclass(frozen=True)
class Fold:
    """A learned model's training data and the cases it is scored on (disjoint: :func:`check_disjoint`)."""

    name: str
    train_datasets: tuple[str, ...]
    train_files: tuple[Path, ...]
    test_cases: tuple[str, ...]
    test_files: tuple[Path, ...]


def leave_one_dataset_out(
    cases: Sequence[BenchmarkCase],
    datasets: Mapping[str, Path],
    training: Mapping[str, Path] | None = None,
) -> list[Fold]:
    """One fold per tested dataset: trained on the other datasets' files, scored on this dataset's cases.

    ``training`` is the pool of datasets models may learn from (default: ``datasets``); a fold never
    takes the dataset it tests from it.
    """
    pool = dict(training if training is not None else datasets)
    folds = []
    for name in datasets:
        others = tuple(other for other in pool if other != name)
        train_files = tuple(p for other in others for p in sorted(Path(pool[other]).glob("*.tif")))
        mine = [c for c in cases if c.dataset == name]
        folds.append(
            Fold(
                name=f"without-{name}",
                train_datasets=others,
                train_files=train_files,
                test_cases=tuple(c.name for c in mine),
                test_files=tuple(p for c in mine for p in c.files()),
            )
        )
    return folds


def check_disjoint(fold: Fold) -> None:
    """InputError if a fold's training data share a file, a scene folder or a dataset with its tests."""
    train = {p.resolve() for p in fold.train_files}
    test = {p.resolve() for p in fold.test_files}
    shared = train & test
    if shared:
        raise InputError(f"fold {fold.name}: trains on test files {sorted(map(str, shared))[:3]}")
    train_folders = {p.parent for p in train}
    test_folders = {p.parent for p in test}
    if train_folders & test_folders:
        raise InputError(
            f"fold {fold.name}: trains on the scene area of its tests ({train_folders & test_folders})"
        )
    tested = {name.split("/")[0] for name in fold.test_cases}
    if tested & set(fold.train_datasets):
        raise InputError(
            f"fold {fold.name}: trains on datasets it is tested on ({tested & set(fold.train_datasets)})"
        )


@dataclass
class BenchmarkResult:
    """Scores of a benchmark run: case name -> method label -> MethodResult; plus the folds used."""

    results: dict[str, dict[str, workflows.MethodResult]]
    cases: list[BenchmarkCase]
    methods: list[MethodSpec]
    folds: list[Fold] = field(default_factory=list)
    tables: dict[str, Path] = field(default_factory=dict)

    def mean(self, metric: str = "rmse", *, n_pairs: int | None = None) -> dict[str, float]:
        """Each method's mean of ``metric`` over the cases it ran on (optionally only K-pair cases)."""
        sums: dict[str, list[float]] = {}
        for case in self.cases:
            if n_pairs is not None and case.n_pairs != n_pairs:
                continue
            for label, result in self.results.get(case.name, {}).items():
                value = result.metrics.mean.get(metric) if result.metrics else None
                if value is not None and math.isfinite(value):
                    sums.setdefault(label, []).append(value)
        return {label: sum(values) / len(values) for label, values in sums.items()}


#: A hook training a learned model for a fold: (fold, training datasets, save_dir) -> its preparer.
FoldTrainer = Callable[[Fold, Mapping[str, Path], Path], fusion.Preparer]

#: Training settings of MLFF-GAN in the benchmark: the ``leave-out`` recipe (:mod:`stfusion.recipes`).
MLFFGAN_RECIPE: str = "leave-out"

#: ``--quick``: the recipe cut to a smoke run (few epochs and crops), to check the protocol end to end.
QUICK_OVERRIDES: dict[str, Any] = {"epochs": 2, "random_crops": 2}


def mlffgan_trainer(
    *,
    overrides: Mapping[str, Any] | None = None,
    on_epoch: Callable[[str], None] | None = None,
) -> FoldTrainer:
    """The FoldTrainer of ``mlffgan``: the ``leave-out`` recipe (with ``overrides``, e.g.
    :data:`QUICK_OVERRIDES`) on every one-pair case of the fold's training datasets (every ordered date
    pair), band by band; its epoch chosen on held-out rows of those cases.

    A fold whose training already finished in ``save_dir`` is reused (the benchmark resumes); one cut
    short continues from its last epoch. ``on_epoch(fold name)`` is called after each epoch.
    """
    from stfusion import recipes
    from stfusion.checkpoint import load as load_checkpoint
    from stfusion.train import TrainConfig, train

    def train_fold(fold: Fold, datasets: Mapping[str, Path], save_dir: Path) -> fusion.Preparer:
        values = recipes.recipe(MLFFGAN_RECIPE) | dict(overrides or {})
        config = TrainConfig(save_dir=str(save_dir), **values)
        cases = [c for name in fold.train_datasets for c in scenes.flat_cases(datasets[name], "all")]
        log.info("fold %s: training MLFF-GAN on %d cases of %s", fold.name, len(cases), fold.train_datasets)
        result = train(
            config,
            cases,
            [],
            resume=(save_dir / "last.ckpt").exists(),
            on_epoch=(lambda record: on_epoch(fold.name)) if on_epoch is not None else None,
        )
        return fusion.get("mlffgan").preparer(checkpoint=load_checkpoint(result.best))

    return train_fold


def run_benchmark(
    out: Path,
    *,
    datasets: Mapping[str, Path],
    methods: Sequence[MethodSpec],
    ratios: Mapping[str, float],
    reading: ReadOptions | None = None,
    overwrite: bool = False,
    train_fold: FoldTrainer | None = None,
    training: Mapping[str, Path] | None = None,
    on_run: Callable[[str, str], None] | None = None,
) -> BenchmarkResult:
    """Run the benchmark (module docstring) into ``out``; existing predictions are kept (resumable).

    ``train_fold`` trains the learned method (``mlffgan``) of each fold on ``training`` datasets other
    than the fold's (default: ``datasets``); without it, ``mlffgan`` in ``methods`` is an InputError.
    ``on_run(case, method)`` is called before each prediction.
    """
    cases = [
        c
        for name, folder in datasets.items()
        for c in dataset_cases(name, folder, ergas_ratio=1 / ratios[name])
    ]
    pool = dict(training if training is not None else datasets)
    folds = leave_one_dataset_out(cases, datasets, pool)
    for fold in folds:
        check_disjoint(fold)
    learned = [m for m in methods if fusion.get(m.name).needs_checkpoint]
    if learned and train_fold is None:
        raise InputError("the benchmark trains learned methods per fold; no trainer given")
    fold_preparers: dict[str, fusion.Preparer] = {}
    if learned and train_fold is not None:
        for fold in folds:
            fold_preparers[fold.name] = train_fold(fold, pool, out / "models" / fold.name)
    output = workflows.OutputOptions(overwrite=overwrite, skip_existing=not overwrite)
    results: dict[str, dict[str, workflows.MethodResult]] = {}
    for case in cases:
        fold = next(f for f in folds if case.name in f.test_cases)
        preparers: dict[str, fusion.Preparer] = {}
        for spec in methods:
            entry = fusion.get(spec.name)
            if not entry.accepts_pairs(case.n_pairs):
                continue
            if entry.needs_checkpoint:
                preparers[spec.label] = fold_preparers[fold.name]
            else:
                preparers[spec.label] = entry.preparer(dict(spec.options))
        per_case = workflows.run_methods(
            [case.case],
            preparers,
            out_dir=out / case.dataset,
            ratio=case.ergas_ratio,
            reading=reading,
            output=output,
            on_method=on_run,
        )
        results[case.name] = per_case[case.case.name]
    return BenchmarkResult(results=results, cases=cases, methods=list(methods), folds=folds)


_PAIRS = {1: "one-pair", 2: "two-pair"}


def _mean_table(result: BenchmarkResult, n_pairs: int) -> str:
    """The mean per method over the cases of one pair count (methods ranked only against others scored
    on the same cases; one-pair and two-pair cases are not comparable)."""
    names = {case.name for case in result.cases if case.n_pairs == n_pairs}
    kind = _PAIRS.get(n_pairs, f"{n_pairs}-pair")
    lines = [
        f"## Mean over the {len(names)} {kind} case(s)",
        "",
        "| method | cases | mean RMSE | mean SSIM | mean SAM | mean ERGAS | seconds (mean) |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    means = {metric: result.mean(metric, n_pairs=n_pairs) for metric in ("rmse", "ssim", "sam", "ergas")}
    runs = {
        label: [r for case in names for name, r in result.results.get(case, {}).items() if name == label]
        for label in means["rmse"]
    }
    for label in sorted(means["rmse"], key=lambda m: (-len(runs[m]), means["rmse"][m])):
        seconds = [r.seconds for r in runs[label] if math.isfinite(r.seconds)]
        cells = [f"{means[m].get(label, math.nan):.4f}" for m in ("rmse", "ssim")]
        cells += [f"{means[m].get(label, math.nan):.3f}" for m in ("sam", "ergas")]
        mean_seconds = f"{sum(seconds) / len(seconds):.2f}" if seconds else "kept"
        lines.append(f"| {label} | {len(runs[label])} | {' | '.join(cells)} | {mean_seconds} |")
    return "\n".join(lines)


def write_benchmark(
    result: BenchmarkResult, out: Path, *, protocol: Mapping[str, Any], overwrite: bool = True
) -> dict[str, Path]:
    """``benchmark.{csv,json,md}`` (every case x method, all metrics, seconds), with the mean per method
    over the one-pair cases and over the two-pair cases apart."""
    tables = workflows.write_tables(
        result.results, out, protocol=protocol, stem="benchmark", overwrite=overwrite
    )
    sections = [_mean_table(result, n_pairs) for n_pairs in sorted({case.n_pairs for case in result.cases})]
    markdown = tables["markdown"]
    markdown.write_text("\n\n".join(sections) + f"\n\n## Every case\n\n{markdown.read_text()}")
    scores = {
        case: {label: r.metrics.mean["rmse"] if r.metrics else None for label, r in methods.items()}
        for case, methods in result.results.items()
    }
    tables["figure"] = report.benchmark_figure(out / "benchmark.png", scores=scores, metric="rmse")
    result.tables = tables
    return tables
