"""CLI behaviour with real GeoTIFFs: outputs, and one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from stfusion import raster
from stfusion.cli import cli
from tests.conftest import TEST_CRS, random_scene, write_tif, write_tiny_checkpoint


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def triple(tmp_path: Path, rng: np.random.Generator) -> dict[str, Path]:
    return {
        "coarse_t1": write_tif(tmp_path / "coarse_20010101.tif", random_scene(rng)),
        "fine_t1": write_tif(tmp_path / "fine_20010101.tif", random_scene(rng), nodata=-9999),
        "coarse_t2": write_tif(tmp_path / "coarse_20010201.tif", random_scene(rng)),
    }


def predict_args(files: dict[str, Path], out: Path, method: str = "coarse-delta") -> list[str]:
    return [
        "predict",
        "--method",
        method,
        "--fine-t1",
        str(files["fine_t1"]),
        "--coarse-t1",
        str(files["coarse_t1"]),
        "--coarse-t2",
        str(files["coarse_t2"]),
        "--out",
        str(out),
    ]


def test_predict_coarse_delta_is_georeferenced(
    runner: CliRunner, triple: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "pred.tif"
    result = runner.invoke(cli, predict_args(triple, out))
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as src:
        assert src.crs.to_string() == TEST_CRS
        assert src.nodata == -9999
        stored = src.read()
    f1, c1, c2 = (raster.read(triple[k]).data for k in ("fine_t1", "coarse_t1", "coarse_t2"))
    expected = np.rint((f1 + c2 - c1) / 1e-4)
    np.testing.assert_allclose(stored, expected, atol=1)


@pytest.mark.parametrize("method", ["starfm", "fsdaf"])
def test_classical_predictions_leave_torch_and_matplotlib_unimported(
    triple: dict[str, Path], tmp_path: Path, method: str
) -> None:
    # a fresh interpreter: this one has imported them for other tests. The CLI's start-up and a
    # classical method's run need neither (torch alone takes seconds to import).
    out = tmp_path / "pred.tif"
    args = predict_args(triple, out, method)
    code = (
        "import json, sys\n"
        "from stfusion.cli import cli\n"
        "try:\n"
        f"    cli({args!r}, prog_name='stfusion')\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "print(json.dumps(sorted(m for m in ('torch', 'matplotlib', 'numba') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert out.exists()
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["numba"]


def test_predict_many_targets_into_a_folder(
    runner: CliRunner, triple: dict[str, Path], tmp_path: Path, rng: np.random.Generator
) -> None:
    extra = write_tif(tmp_path / "coarse_20010301.tif", random_scene(rng))
    args = [*predict_args(triple, tmp_path / "preds", "persistence"), "--coarse-t2", str(extra)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "preds").iterdir()) == [
        "pred_coarse_20010201.tif",
        "pred_coarse_20010301.tif",
    ]


def test_cases_lists_sample(runner: CliRunner, sample_root: Path) -> None:
    result = runner.invoke(cli, ["cases", str(sample_root)])
    assert result.exit_code == 0, result.output
    assert "3 case(s), layout paper" in result.output
    assert "[test] 2001_290_1017-2001_306_1102: 2001-10-17 -> 2001-11-02" in result.output


def test_cases_reports_skipped(runner: CliRunner, flat_folder: Path) -> None:
    (flat_folder / "readme.txt").write_text("hi")
    result = runner.invoke(cli, ["cases", str(flat_folder)])
    assert result.exit_code == 0
    assert "skipped" in result.output and "readme.txt" in result.output


def _assert_one_line_error(result: object, *fragments: str) -> None:
    exit_code = result.exit_code  # type: ignore[attr-defined]
    output = result.output  # type: ignore[attr-defined]
    assert exit_code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


BAD_PREDICT_INPUTS = [
    ("missing file", lambda p, t: p["fine_t1"].unlink(), ["fine_20010101.tif", "file not found"]),
    (
        "wrong band count",
        lambda p, t: write_tif(p["coarse_t2"], random_scene(np.random.default_rng(1), bands=3)),
        ["coarse_20010201.tif", "3 bands"],
    ),
    (
        "coarse elsewhere",
        lambda p, t: write_tif(
            p["coarse_t1"],
            random_scene(np.random.default_rng(1)),
            transform=from_origin(1000.0, 1000.0, 50.0, 50.0),
        ),
        ["coarse_20010101.tif", "covers 0%"],
    ),
    (
        "CRS mismatch",
        lambda p, t: write_tif(p["coarse_t1"], random_scene(np.random.default_rng(1)), crs="EPSG:4326"),
        ["coarse_20010101.tif", "CRS"],
    ),
    (
        "non-raster file",
        lambda p, t: p["coarse_t2"].write_text("hello"),
        ["coarse_20010201.tif", "not a readable raster"],
    ),
    (
        "truncated raster",
        lambda p, t: p["fine_t1"].write_bytes(p["fine_t1"].read_bytes()[:300]),
        ["fine_20010101.tif"],
    ),
    ("output exists", lambda p, t: (t / "pred.tif").write_text("old"), ["pred.tif", "--overwrite"]),
]


@pytest.mark.parametrize(
    "label, damage, fragments", BAD_PREDICT_INPUTS, ids=[b[0] for b in BAD_PREDICT_INPUTS]
)
def test_predict_bad_inputs(
    runner: CliRunner,
    triple: dict[str, Path],
    tmp_path: Path,
    label: str,
    damage: object,
    fragments: list[str],
) -> None:
    damage(triple, tmp_path)  # type: ignore[operator]
    out = tmp_path / "pred.tif"
    before = out.read_text() if out.exists() else None
    result = runner.invoke(cli, predict_args(triple, out))
    _assert_one_line_error(result, *fragments)
    # no partial output: either nothing, or the untouched old file
    assert (out.read_text() if out.exists() else None) == before
    assert not list(tmp_path.glob(".*.part"))


def test_predict_unwritable_folder_and_bad_option(
    runner: CliRunner, triple: dict[str, Path], tmp_path: Path
) -> None:
    result = runner.invoke(cli, predict_args(triple, tmp_path / "missing" / "pred.tif"))
    _assert_one_line_error(result, "does not exist")
    result = runner.invoke(cli, [*predict_args(triple, tmp_path / "p.tif"), "--option", "oops"])
    _assert_one_line_error(result, "key=value")
    result = runner.invoke(cli, [*predict_args(triple, tmp_path / "p.tif"), "--option", "window=3"])
    _assert_one_line_error(result, "coarse-delta", "no options")
    # a checkpoint given to a classical method is named as the problem, whatever it holds
    model = write_tiny_checkpoint(tmp_path / "m.ckpt", bands=6, coarse_factor=4)
    result = runner.invoke(
        cli, [*predict_args(triple, tmp_path / "p.tif", "starfm"), "--checkpoint", str(model)]
    )
    _assert_one_line_error(result, "--checkpoint is for a trained model (mlffgan), not for method starfm")
    assert not (tmp_path / "p.tif").exists()


def test_cases_bad_folders(runner: CliRunner, tmp_path: Path, rng: np.random.Generator) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_one_line_error(runner.invoke(cli, ["cases", str(empty)]), "empty", "no fusion cases found")
    bad = tmp_path / "data" / "train" / "2001-281"
    bad.mkdir(parents=True)
    _assert_one_line_error(
        runner.invoke(cli, ["cases", str(tmp_path / "data")]), "2001-281", "does not parse"
    )
    pair = tmp_path / "d2" / "train" / "2001_281_1007-2001_290_1016"
    for name in ("L7_20011007.tif", "L7_20011016.tif", "MOD_A2001290.tif"):
        write_tif(pair / name, random_scene(rng))
    _assert_one_line_error(runner.invoke(cli, ["cases", str(tmp_path / "d2")]), "coarse_t1", "2001281")
    flat = tmp_path / "flat"
    write_tif(flat / "fine_20010101.tif", random_scene(rng))
    write_tif(flat / "fine_20010101.TIF", random_scene(rng))
    _assert_one_line_error(runner.invoke(cli, ["cases", str(flat)]), "two fine images")


def test_evaluate_sample_coarse_delta_matches_numpy(
    runner: CliRunner, sample_root: Path, tmp_path: Path
) -> None:
    """Issue 2 acceptance: coarse-delta 2001-10-08 -> 10-17 on the sample, RMSE as NumPy computes it."""
    import json

    folder = sample_root / "train" / "2001_281_1008-2001_290_1017"
    files = {
        "fine_t1": folder / "L71093084_08420011008_HRF_modtran_surf_ref_agd66.tif",
        "coarse_t1": folder / "MOD09GA_A2001281.sur_refl.tif",
        "coarse_t2": folder / "MOD09GA_A2001290.sur_refl.tif",
    }
    truth = folder / "L71093084_08420011017_HRF_modtran_surf_ref_agd66.tif"
    pred = tmp_path / "pred.tif"
    assert runner.invoke(cli, predict_args(files, pred)).exit_code == 0
    out_json, out_csv = tmp_path / "m.json", tmp_path / "m.csv"
    args = ["evaluate", "--pred", str(pred), "--truth", str(truth), "--ratio", "0.05"]
    result = runner.invoke(cli, [*args, "--json", str(out_json), "--csv", str(out_csv)])
    assert result.exit_code == 0, result.output
    assert "blue" in result.output and "mean" in result.output
    with rasterio.open(pred) as p, rasterio.open(truth) as t:
        diff = p.read().astype(np.float64) * 1e-4 - t.read().astype(np.float64) * 1e-4
    numpy_rmse = np.sqrt((diff**2).mean(axis=(1, 2)))
    content = json.loads(out_json.read_text())
    rmse = np.array(content["methods"]["pred"]["metrics"]["per_band"]["rmse"], dtype=np.float64)
    np.testing.assert_allclose(rmse, numpy_rmse, atol=1e-6)
    assert round(float(numpy_rmse.mean()), 4) == 0.0362
    assert out_csv.exists()
    # refusing to overwrite the JSON: one-line error, nothing changed
    before = out_json.read_text()
    again = runner.invoke(cli, [*args, "--json", str(out_json)])
    _assert_one_line_error(again, "m.json", "--overwrite")
    assert out_json.read_text() == before


def test_evaluate_shape_mismatch(runner: CliRunner, tmp_path: Path, rng: np.random.Generator) -> None:
    pred = write_tif(tmp_path / "p.tif", random_scene(rng, bands=3))
    truth = write_tif(tmp_path / "t.tif", random_scene(rng))
    result = runner.invoke(cli, ["evaluate", "--pred", str(pred), "--truth", str(truth)])
    _assert_one_line_error(
        result, "p.tif", "3 bands, the truth", "choose the truth's bands to score with --bands"
    )
    other = write_tif(tmp_path / "o.tif", random_scene(rng, height=10))
    result = runner.invoke(cli, ["evaluate", "--pred", str(other), "--truth", str(truth)])
    _assert_one_line_error(result, "o.tif", "differs from truth")


def test_compare_writes_tables_and_one_figure_per_case(flat_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        cli, ["compare", str(flat_folder), "--out", str(out), "--methods", "persistence,coarse-delta"]
    )
    assert result.exit_code == 0, result.output
    cases = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(cases) == 2
    for case in cases:
        figure = out / f"{case}.png"
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figure: {figure}" in result.output
    table = (out / "comparison.csv").read_text()
    assert all(f"{case}/coarse-delta" in table for case in cases)


def test_overwrite_and_skip_existing_together_are_refused(
    runner: CliRunner, flat_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for command in (["fuse", str(flat_folder)], ["compare", str(flat_folder)]):
        result = runner.invoke(cli, [*command, "--out", str(out), "--overwrite", "--skip-existing"])
        assert result.exit_code == 2, result.output
        assert "give --overwrite (redo the outputs) or --skip-existing (keep them), not both" in result.output
        assert not out.exists()


def test_an_output_folder_left_empty_by_a_failed_run_is_removed(
    runner: CliRunner, tmp_path: Path, rng: np.random.Generator
) -> None:
    """A run that stops after creating its output folders but before writing any output leaves none
    behind (here FSDAF cannot estimate a scale factor from constant coarse images); a folder that
    existed stays."""
    data = tmp_path / "tiny"
    for stamp in ("20010101", "20010201"):
        write_tif(data / f"fine_{stamp}.tif", random_scene(rng, 2, 12, 12))
        write_tif(data / f"coarse_{stamp}.tif", np.full((2, 12, 12), 1500, np.int16))
    out = tmp_path / "new" / "out"
    result = runner.invoke(cli, ["compare", str(data), "--out", str(out), "--methods", "fsdaf"])
    assert result.exit_code == 2 and "cannot estimate scale_factor" in result.output, result.output
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    result = runner.invoke(cli, ["compare", str(data), "--out", str(existing), "--methods", "fsdaf"])
    assert result.exit_code == 2 and existing.is_dir() and not list(existing.iterdir()), result.output
