"""The leave-out benchmark: its cases, folds that never train on a test's date or area, tables, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stfusion import benchmark, fusion
from stfusion.errors import InputError
from stfusion.sample import DATASET_COARSE_RATIOS, DATASETS
from tests.conftest import random_scene, write_tif


def test_cases_of_the_bundled_datasets() -> None:
    cases = {
        name: benchmark.dataset_cases(name, folder, ergas_ratio=0.1) for name, folder in DATASETS.items()
    }
    assert [len(c) for c in cases.values()] == [7, 7, 2]  # 3 dates: 6 ordered pairs + 1 two-pair case
    two = [c for c in cases["estarfm-site"] if c.n_pairs == 2]
    assert [c.name for c in two] == ["estarfm-site/20010524+20010812-20010711"]
    assert two[0].case.fine_t2 is not None and two[0].case.fine_t2.name == "fine_20010711.tif"


def test_every_fold_is_disjoint_from_its_tests() -> None:
    cases = [
        c for name, folder in DATASETS.items() for c in benchmark.dataset_cases(name, folder, ergas_ratio=1)
    ]
    folds = benchmark.leave_one_dataset_out(cases, DATASETS)
    assert [f.name for f in folds] == ["without-cia-crop", "without-estarfm-site", "without-lgc-flood"]
    tested = [name for fold in folds for name in fold.test_cases]
    assert sorted(tested) == sorted(c.name for c in cases)  # every case is tested by exactly one fold
    for fold in folds:
        benchmark.check_disjoint(fold)
        train = {p.resolve() for p in fold.train_files}
        assert train and not train & {p.resolve() for p in fold.test_files}
        assert not {p.parent for p in train} & {p.resolve().parent for p in fold.test_files}
    # the check can fail: a fold that trains on its own dataset is refused
    leaky = benchmark.Fold(
        name="leaky",
        train_datasets=("cia-crop",),
        train_files=folds[0].test_files[:2],
        test_cases=folds[0].test_cases,
        test_files=folds[0].test_files,
    )
    with pytest.raises(InputError, match="trains on test files"):
        benchmark.check_disjoint(leaky)


def test_method_specs() -> None:
    spec = benchmark.MethodSpec.parse("starfm:preset=starfm4py,window_size=31")
    assert spec.label == "starfm[preset=starfm4py,window_size=31]" and spec.name == "starfm"
    with pytest.raises(InputError, match="unknown option"):
        benchmark.MethodSpec.parse("starfm:nope=1")
    with pytest.raises(InputError, match="unknown method"):
        benchmark.MethodSpec.parse("other")


def tiny_dataset(folder: Path, rng: np.random.Generator) -> Path:
    for date in ("20010101", "20010201", "20010301"):
        for role in ("fine", "coarse"):
            write_tif(folder / f"{role}_{date}.tif", random_scene(rng, 3, 24, 32))
    return folder


def test_run_write_and_resume(tmp_path: Path, rng: np.random.Generator) -> None:
    datasets = {"a": tiny_dataset(tmp_path / "a", rng), "b": tiny_dataset(tmp_path / "b", rng)}
    specs = [benchmark.MethodSpec.parse(m) for m in ("persistence", "coarse-delta", "starfm:window_size=7")]
    calls: list[tuple[str, str]] = []
    result = benchmark.run_benchmark(
        tmp_path / "out",
        datasets=datasets,
        methods=specs,
        ratios={"a": 10.0, "b": 16.0},
        on_run=lambda case, method: calls.append((case, method)),
    )
    assert len(result.cases) == 14 and len(calls) == 14 * 3
    assert benchmark.planned_runs(datasets, specs) == 14 * 3
    tables = benchmark.write_benchmark(result, tmp_path / "out", protocol={"test": True})
    text = tables["markdown"].read_text()
    assert "## Mean over the 12 one-pair case(s)" in text and "starfm[window_size=7]" in text
    two = text[text.index("## Mean over the 2 two-pair case(s)") : text.index("## Every case")]
    assert "| coarse-delta | 2 |" in two, two  # means of one-pair and two-pair cases are apart
    assert tables["figure"].stat().st_size > 5000
    stored = json.loads(tables["json"].read_text())
    assert len(stored["methods"]) == 14 * 3 and stored["protocol"]["test"] is True
    means = result.mean("rmse")
    assert set(means) == {"persistence", "coarse-delta", "starfm[window_size=7]"}
    # a second run keeps every prediction (resumable) and gives the same scores
    again = benchmark.run_benchmark(
        tmp_path / "out", datasets=datasets, methods=specs, ratios={"a": 10.0, "b": 16.0}
    )
    assert again.mean("rmse") == means
    kept = [r for case in again.results.values() for r in case.values()]
    assert all(np.isnan(r.seconds) for r in kept)


def test_learned_methods_need_a_fold_trainer(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="trains learned methods per fold"):
        benchmark.run_benchmark(
            tmp_path,
            datasets={"cia-crop": DATASETS["cia-crop"]},
            methods=[benchmark.MethodSpec("mlffgan")],
            ratios=DATASET_COARSE_RATIOS,
        )
    assert fusion.get("mlffgan").needs_checkpoint


def test_a_fold_trains_on_the_pool_without_its_own_dataset() -> None:
    cases = benchmark.dataset_cases("cia-crop", DATASETS["cia-crop"], ergas_ratio=1)
    (fold,) = benchmark.leave_one_dataset_out(cases, {"cia-crop": DATASETS["cia-crop"]}, DATASETS)
    assert fold.train_datasets == ("estarfm-site", "lgc-flood")
    benchmark.check_disjoint(fold)


def test_mlffgan_is_trained_per_fold_band_by_band_on_other_datasets_only(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Real training (1 epoch) of each fold on datasets of 3 and 2 bands; each model never saw its tests."""
    datasets = {"a": tiny_dataset(tmp_path / "a", rng), "b": tmp_path / "b"}
    for date in ("20020101", "20020201"):
        for role in ("fine", "coarse"):
            write_tif(datasets["b"] / f"{role}_{date}.tif", random_scene(rng, 2, 24, 32))
    trainer = benchmark.mlffgan_trainer(
        overrides={
            "epochs": 1,
            "random_crops": 1,
            "patch_size": 16,
            "val_holdout": 0.25,
            "channels": (4, 4, 4, 4, 4),
        }
    )
    result = benchmark.run_benchmark(
        tmp_path / "out",
        datasets=datasets,
        methods=[benchmark.MethodSpec("coarse-delta"), benchmark.MethodSpec("mlffgan")],
        ratios={"a": 10.0, "b": 10.0},
        train_fold=trainer,
    )
    from stfusion.checkpoint import load as load_checkpoint

    for fold in result.folds:
        model = load_checkpoint(tmp_path / "out" / "models" / fold.name / "best.ckpt")
        assert model.bands == 1  # one network for 3-band and 2-band data
        tested = {p.name for p in fold.test_files}
        assert model.training_files() and not model.training_files() & tested
    b_case = result.results["b/20020101-20020201"]
    assert b_case["mlffgan"].prediction.shape == (2, 24, 32)
    assert b_case["mlffgan"].metrics is not None
