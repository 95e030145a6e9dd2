"""Jobs: predicting cases to files, scoring methods on common pixels, provenance, never touching inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio

from stfusion import fusion, metrics, scenes, workflows
from stfusion.blocks import Block, Prediction, RowBlocks, SceneSource
from stfusion.errors import InputError
from tests.conftest import random_scene, write_tif


@pytest.fixture
def case(tmp_path: Path, rng: np.random.Generator) -> scenes.FusionCase:
    paths = {
        role: write_tif(tmp_path / "in" / f"{role}_2001010{i}.tif", random_scene(rng, 3, 30, 40))
        for i, role in enumerate(("coarse_t1", "fine_t1", "coarse_t2", "fine_t2"), start=1)
    }
    return scenes.explicit_case(**paths, name="c")


def holes(source: SceneSource) -> Prediction:
    """coarse-delta with the top-left 5 x 5 pixels left empty (a method that cannot predict them)."""

    def predict_block(block: Block, top: int, bottom: int) -> np.ndarray:
        pair = block.pairs[0]
        values = pair.fine + block.coarse_t2 - pair.coarse
        values[:, : max(0, 5 - block.top), :5] = np.nan
        return values

    return RowBlocks(predict_block, block_rows=8)


def test_every_method_is_scored_on_the_same_pixels(case: scenes.FusionCase, tmp_path: Path) -> None:
    preparers = {"coarse-delta": fusion.get("coarse-delta").preparer(), "holes": holes}
    results = workflows.run_methods([case], preparers, out_dir=tmp_path / "out", ratio=0.1)["c"]
    full, gappy = results["coarse-delta"], results["holes"]
    assert gappy.n_unpredicted == 25 and full.n_unpredicted == 0
    assert full.metrics is not None and gappy.metrics is not None
    # same pixels, same values there: identical scores
    assert full.metrics.mean == gappy.metrics.mean
    assert full.metrics.conventions["n_valid"] == 30 * 40 - 25
    # each method's conventions count its own unpredicted pixels, as its table column does
    counts = ("n_excluded", "n_nonfinite_truth", "n_unpredicted", "n_masked")
    assert [gappy.metrics.conventions[k] for k in counts] == [25, 0, 25, 0]
    assert [full.metrics.conventions[k] for k in counts] == [25, 0, 0, 25]  # out for the other's holes
    tables = workflows.write_tables({"c": results}, tmp_path / "out", overwrite=True)
    assert "unpredicted" in tables["csv"].read_text()
    markdown = tables["markdown"].read_text()
    assert "- holes: " in markdown and "excluded=25, unpredicted=25" in markdown, markdown
    assert "- coarse-delta: " in markdown and "excluded=25, unpredicted=0" in markdown, markdown


def test_scored_pixel_counts_are_disjoint_and_add_up(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.05, 0.4, (2, 20, 24))
    truth[:, 0, :10] = np.nan  # 10 invalid truth pixels
    one, two = truth + 0.01, truth - 0.02
    one[:, 5:10, 5:10] = np.nan  # 25 holes in one; 4 in two, 2 of them shared with one
    two[:, 9, 8:12] = np.nan
    two[:, 0, :2] = np.nan  # where the truth is invalid anyway
    with caplog.at_level(logging.WARNING):
        results = workflows.score_predictions(
            {"one": (one, 0.0, None), "two": (two, 0.0, None)}, truth, ratio=None, band_names=["a", "b"]
        )
    # the 2 pixels neither method predicted are said once; each method's own holes apart
    assert "2 pixels valid in the truth are predicted by no method" in caplog.text
    assert "one left 23 pixels unpredicted that another method predicted" in caplog.text
    assert "two left 2 pixels unpredicted that another method predicted" in caplog.text
    for name, unpredicted, masked in (("one", 25, 2), ("two", 4, 23)):
        conventions = results[name].metrics.conventions  # type: ignore[union-attr]
        assert conventions["n_valid"] == 20 * 24 - 10 - 27
        assert (conventions["n_nonfinite_truth"], conventions["n_unpredicted"], conventions["n_masked"]) == (
            10,
            unpredicted,
            masked,
        )
        assert conventions["n_excluded"] == 10 + unpredicted + masked
        assert results[name].n_unpredicted == unpredicted


def test_outputs_carry_provenance_and_never_replace_inputs(case: scenes.FusionCase, tmp_path: Path) -> None:
    target = tmp_path / "pred.tif"
    preparer = fusion.get("coarse-delta").preparer()
    written = workflows.predict_cases([(case, target)], preparer, method="coarse-delta", options={})
    assert written == [target]
    with rasterio.open(target) as src:
        tags = src.tags()
    assert tags["STFUSION_METHOD"] == "coarse-delta" and tags["STFUSION_TARGET_DATE"] == str(case.date_t2)
    assert tags["STFUSION_INPUT_FINE_T1"].startswith(case.fine_t1.name)
    with pytest.raises(InputError, match="is the input"):
        workflows.refuse_inputs_as_outputs([case.fine_t1], workflows.case_files(case))
    link = tmp_path / "link.tif"
    link.symlink_to(case.coarse_t2)
    with pytest.raises(InputError, match="is the input"):
        workflows.refuse_inputs_as_outputs([link], workflows.case_files(case))
    with pytest.raises(InputError, match="two outputs of this run would be the same file"):
        workflows.refuse_inputs_as_outputs([tmp_path / "a.tif", tmp_path / "a.tif"], [])


def test_skip_existing_redoes_an_empty_or_broken_output(case: scenes.FusionCase, tmp_path: Path) -> None:
    target = tmp_path / "pred.tif"
    target.write_bytes(b"")  # left by a run killed while the file was created
    preparer = fusion.get("coarse-delta").preparer()
    output = workflows.OutputOptions(skip_existing=True)
    written = workflows.predict_cases([(case, target)], preparer, method="coarse-delta", output=output)
    assert written == [target] and target.stat().st_size > 0
    again = workflows.predict_cases([(case, target)], preparer, method="coarse-delta", output=output)
    assert again == []  # kept


def test_clip_keeps_predictions_in_the_valid_range(tmp_path: Path) -> None:
    """F1 0.9 + (C2 0.5 - C1 0.1) = 1.3 without --clip, 1.0 with it; 0.1 + (0.1 - 0.5) = -0.3 -> 0."""
    fine = np.full((1, 20, 20), 9000, np.int16)
    fine[:, 10:] = 1000
    coarse_t2 = np.full((1, 20, 20), 5000, np.int16)
    coarse_t2[:, 10:] = 1000
    coarse_t1 = np.where(coarse_t2 == 5000, 1000, 5000).astype(np.int16)
    paths = {
        name: write_tif(tmp_path / f"{name}.tif", image)
        for name, image in (("fine_t1", fine), ("coarse_t1", coarse_t1), ("coarse_t2", coarse_t2))
    }
    case = scenes.explicit_case(**paths)
    preparer = fusion.get("coarse-delta").preparer()
    for clip, name in ((False, "raw.tif"), (True, "clipped.tif")):
        output = workflows.OutputOptions(clip=clip, dtype="float32")
        workflows.predict_cases([(case, tmp_path / name)], preparer, method="coarse-delta", output=output)
    with rasterio.open(tmp_path / "raw.tif") as raw, rasterio.open(tmp_path / "clipped.tif") as clipped:
        np.testing.assert_allclose([raw.read().max(), raw.read().min()], [1.3, -0.3], atol=1e-6)
        np.testing.assert_allclose([clipped.read().max(), clipped.read().min()], [1.0, 0.0], atol=0)


def test_winner_sentence_names_ties_and_cases_a_model_trained_on() -> None:
    def scored(value: float) -> workflows.MethodResult:
        report = metrics.compute_metrics(np.full((1, 8, 8), value), np.full((1, 8, 8), 0.0) + np.eye(8)[None])
        return workflows.MethodResult(np.zeros((1, 8, 8)), report, 0.0)

    clear = {"c1": {"a": scored(0.1), "b": scored(0.3)}}
    assert workflows.winner_sentence(clear).startswith("best mean RMSE over 1 case(s): a ")
    assert "lower than the next, b" in workflows.winner_sentence(clear)
    tied = {"c1": {"a": scored(0.1), "b": scored(0.1)}}
    assert " tie at " in workflows.winner_sentence(tied)
    unfair = workflows.winner_sentence(clear, notes={("c1", "a"): "TRAINED ON THIS CASE"})
    assert unfair.endswith("; a: the mean includes cases it was trained on, no fair test"), unfair


def test_output_folder_is_removed_when_its_output_fails_while_it_is_empty(tmp_path: Path) -> None:
    existing = tmp_path / "out"
    existing.mkdir()
    with pytest.raises(InputError), workflows.output_folder(existing / "case" / "inner"):
        raise InputError("the method failed")
    assert list(existing.iterdir()) == []  # both folders made for the output are gone, not --out
    with pytest.raises(KeyboardInterrupt), workflows.output_folder(existing / "case") as folder:
        (folder / "half.tif").write_bytes(b"")
        raise KeyboardInterrupt
    assert [p.name for p in (existing / "case").iterdir()] == ["half.tif"]  # not empty: kept


def test_a_case_whose_first_output_fails_leaves_no_folder_in_an_existing_out(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    from click.testing import CliRunner

    from stfusion.cli import cli

    data = tmp_path / "data"
    for stamp in ("20010101", "20010201"):
        for kind in ("fine", "coarse"):
            write_tif(data / f"{kind}_{stamp}.tif", random_scene(rng), nodata=-9999)
    fine = random_scene(rng)
    fine[:, :, 12:] = -9999  # fine t1 valid on the left only, coarse t2 on the right only
    write_tif(data / "fine_20010101.tif", fine, nodata=-9999)
    coarse = random_scene(rng)
    coarse[:, :, :12] = -9999
    write_tif(data / "coarse_20010201.tif", coarse, nodata=-9999)
    existing = tmp_path / "existing"
    existing.mkdir()
    result = CliRunner().invoke(
        cli, ["compare", str(data), "--out", str(existing), "--methods", "coarse-delta"]
    )
    assert result.exit_code == 2 and "no pixel could be predicted" in result.output, result.output
    assert list(existing.iterdir()) == []


def test_evaluate_masks_the_truth_as_compare_does(tmp_path: Path, rng: np.random.Generator) -> None:
    """A truth's sidecar mask on a coarser grid leaves out the same pixels in compare and evaluate."""
    from click.testing import CliRunner
    from rasterio.transform import from_origin

    from stfusion.cli import cli
    from tests.conftest import TEST_TRANSFORM

    data = tmp_path / "data"
    for stamp in ("20010101", "20010201"):
        for kind in ("fine", "coarse"):
            write_tif(data / f"{kind}_{stamp}.tif", random_scene(rng))
    cloud = np.zeros((1, 10, 12), np.uint8)  # 2 x 2 fine pixels per mask pixel
    cloud[0, 3:5, 4:7] = 1
    cloud[0, 7, 2] = 1
    origin = from_origin(TEST_TRANSFORM.c, TEST_TRANSFORM.f, 2 * TEST_TRANSFORM.a, 2 * TEST_TRANSFORM.a)
    write_tif(data / "fine_20010201_mask.tif", cloud, transform=origin)
    runner = CliRunner()
    compared = runner.invoke(
        cli, ["compare", str(data), "--out", str(tmp_path / "out"), "--methods", "coarse-delta"]
    )
    assert compared.exit_code == 0, compared.output
    report = next((tmp_path / "out").rglob("coarse-delta.tif"))
    evaluated = runner.invoke(
        cli, ["evaluate", "--pred", str(report), "--truth", str(data / "fine_20010201.tif")]
    )
    assert evaluated.exit_code == 0, evaluated.output
    counts = [
        line[line.index("valid pixels=") :].split(",")[0]
        for line in evaluated.output.splitlines()
        if "valid pixels=" in line
    ]
    assert counts and counts[0] in compared.output, (counts, compared.output)
    assert counts[0] != f"valid pixels={20 * 24 - 7 * 4}"  # more than the masked pixels' own area is out


def test_compare_scores_the_cases_it_can_and_says_which_it_cannot(tmp_path: Path) -> None:
    """A truth all cloud is not scored (the other cases are), one almost all cloud is left out of the
    winner's mean; a scene too small for the metrics is refused before any prediction."""
    import shutil

    from click.testing import CliRunner

    from stfusion.cli import cli
    from stfusion.sample import DATASETS

    data = tmp_path / "data"
    shutil.copytree(DATASETS["cia-crop"], data)
    dates = sorted(p.stem.split("_")[1] for p in data.glob("fine_*.tif"))
    cloud = np.ones((250, 250), np.uint8)
    with rasterio.open(data / f"fine_{dates[-1]}.tif") as src:
        crs, transform = src.crs.to_string(), src.transform
    write_tif(data / f"fine_{dates[-1]}_mask.tif", cloud, crs=crs, transform=transform)
    runner = CliRunner()
    args = ["compare", str(data), "--methods", "coarse-delta,persistence"]
    one = runner.invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert one.exit_code == 0, one.output
    assert "best mean RMSE over 1 case(s)" in one.output, one.output
    cloud[245:, 245:] = 0  # 25 clear pixels of 62 500
    write_tif(data / f"fine_{dates[-1]}_mask.tif", cloud, crs=crs, transform=transform)
    few = runner.invoke(cli, [*args, "--out", str(tmp_path / "b")])
    assert few.exit_code == 0, few.output
    assert "best mean RMSE over 1 case(s)" in few.output
    assert f"(1 case(s) scored on under 1% of their pixels left out: {dates[1]}-{dates[2]})" in few.output
    # no case scorable: one line (the predictions are written)
    paths = {
        f"{role}_t{i}": data / f"{role}_{dates[i - 1]}.tif" for role in ("fine", "coarse") for i in (1, 2)
    }
    masked = scenes.explicit_case(**paths, masks={"fine_t2": data / f"fine_{dates[-1]}_mask.tif"}, name="m")
    cloud[:] = 1
    write_tif(data / f"fine_{dates[-1]}_mask.tif", cloud, crs=crs, transform=transform)
    with pytest.raises(InputError, match="no case could be scored"):
        workflows.run_methods(
            [masked], {"coarse-delta": fusion.get("coarse-delta").preparer()}, out_dir=tmp_path / "c"
        )
    # 5 x 5 images: refused before any output, naming the truth
    small = tmp_path / "small"
    small.mkdir()
    for path in data.glob("*_2001????.tif"):
        with rasterio.open(path) as src:
            write_tif(small / path.name, src.read(window=rasterio.windows.Window(60, 60, 5, 5)), crs=crs)
    tiny = runner.invoke(cli, ["compare", str(small), "--out", str(tmp_path / "d")])
    assert tiny.exit_code == 2 and "cannot be scored: images of 5x5 pixels" in tiny.output, tiny.output
    assert not (tmp_path / "d").exists()
