"""Whole-scene tiled prediction: blending, tile-size (in)dependence, nodata, CLI with checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from torch import nn

from stfusion import scenes
from stfusion.baselines import coarse_delta
from stfusion.checkpoint import ModelSpec
from stfusion.cli import cli
from stfusion.predict import generator_batch_predictor, predict_tiled
from stfusion.tiling import TileOptions
from tests.conftest import random_scene, write_tif, write_tiny_checkpoint


class ConstantModel(nn.Module):
    def forward(
        self, coarse_t1: torch.Tensor, fine_t1: torch.Tensor, coarse_t2: torch.Tensor
    ) -> torch.Tensor:
        return torch.full_like(fine_t1, 0.2468)


def predict_with_generator(
    generator: nn.Module, *images: np.ndarray, coarse_factor: int, options: TileOptions
) -> np.ndarray:
    predictor = generator_batch_predictor(generator, channels_last=False)
    return predict_tiled(predictor, *images, options=options, coarse_factor=coarse_factor)


def coarse_delta_batch(coarse_t1: np.ndarray, fine_t1: np.ndarray, coarse_t2: np.ndarray) -> np.ndarray:
    return fine_t1 + coarse_t2 - coarse_t1


def scene(rng: np.random.Generator, bands: int = 3, height: int = 70, width: int = 90) -> np.ndarray:
    return (random_scene(rng, bands=bands, height=height, width=width) * 1e-4).astype(np.float32)


def test_constant_model_gives_constant_mosaic(rng: np.random.Generator) -> None:
    images = [scene(rng) for _ in range(3)]
    out = predict_with_generator(
        ConstantModel(),
        *images,
        coarse_factor=4,
        options=TileOptions(tile=(32, 40), overlap=(8, 8), batch_size=3),
    )
    assert out.shape == (3, 70, 90)
    np.testing.assert_allclose(out, 0.2468, rtol=0, atol=1e-6)


def test_pixelwise_method_is_tile_independent_and_nan_propagates(rng: np.random.Generator) -> None:
    c1, f1, c2 = (scene(rng) for _ in range(3))
    f1[:, 10:12, 20:25] = np.nan
    whole = coarse_delta(c1, f1, c2)
    tiled = predict_tiled(coarse_delta_batch, c1, f1, c2, options=TileOptions((24, 32), (6, 6), 4))
    np.testing.assert_allclose(tiled, whole, rtol=1e-6, equal_nan=True)
    assert np.isnan(tiled[:, 10:12, 20:25]).all() and np.isfinite(tiled[:, 12:, :]).all()


def test_mlffgan_tile_size_dependence_is_bounded(rng: np.random.Generator) -> None:
    """AdaIN and BatchNorm statistics depend on the tile, so tiles change the result a little.

    Stated tolerance, for a randomly initialised generator in eval mode on 3-band 96 x 128 scenes:
    the mean absolute difference between 64-px tiles (overlap 16) and one whole-scene tile stays
    below 25 % of the mean absolute output. (Trained models on real data: see the README's table.)
    """
    torch.manual_seed(0)
    spec = ModelSpec("mlffgan", 3, {"channels": [4, 4, 8, 8, 8]})
    generator = spec.build().eval()
    images = [scene(rng, height=96, width=128) for _ in range(3)]
    whole = predict_with_generator(
        generator, *images, coarse_factor=4, options=TileOptions((96, 128), (0, 0))
    )
    tiled = predict_with_generator(
        generator, *images, coarse_factor=4, options=TileOptions((64, 64), (16, 16), 2)
    )
    assert np.isfinite(tiled).all()
    relative = np.abs(tiled - whole).mean() / np.abs(whole).mean()
    assert relative < 0.25, relative


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return write_tiny_checkpoint(tmp_path / "tiny.ckpt", bands=4, coarse_factor=4)


def test_predict_cli_with_checkpoint_many_dates(checkpoint: Path, flat_folder: Path, tmp_path: Path) -> None:
    found = scenes.discover(flat_folder)
    case = found.cases[0]
    out = tmp_path / "preds"
    args = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--fine-t1",
        str(case.fine_t1),
        "--coarse-t1",
        str(case.coarse_t1),
        "--coarse-t2",
        str(found.cases[0].coarse_t2),
        "--coarse-t2",
        str(found.cases[1].coarse_t2),
        "--out",
        str(out),
        "--tile",
        "16",
        "16",
        "--overlap",
        "4",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    outputs = sorted(out.iterdir())
    assert len(outputs) == 2
    with rasterio.open(outputs[0]) as src:
        assert src.crs is not None and src.count == 4 and src.shape == (20, 24)


def test_predict_cli_checkpoint_errors(checkpoint: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    files = {k: write_tif(tmp_path / f"{k}.tif", random_scene(rng, bands=3)) for k in ("f1", "c1", "c2")}
    base = [
        "predict",
        "--fine-t1",
        str(files["f1"]),
        "--coarse-t1",
        str(files["c1"]),
        "--coarse-t2",
        str(files["c2"]),
        "--out",
        str(tmp_path / "p.tif"),
    ]
    result = CliRunner().invoke(cli, [*base, "--checkpoint", str(checkpoint)])
    assert result.exit_code == 2 and "checkpoint is for 4 bands, but" in result.output
    assert "f1.tif has 3" in result.output
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    result = CliRunner().invoke(cli, [*base, "--checkpoint", str(truncated)])
    assert result.exit_code == 2 and "cut.ckpt: not a readable checkpoint" in result.output
    assert not (tmp_path / "p.tif").exists()


def test_compare_cli_table_and_figure(flat_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        cli,
        [
            "compare",
            str(flat_folder),
            "--out",
            str(out),
            "--methods",
            "persistence,coarse-delta,starfm,fsdaf",
            "--option",
            "fsdaf.scale_factor=4",
            "--option",
            "starfm.window_size=7",
            "--ratio",
            "0.05",
        ],
    )
    assert result.exit_code == 0, result.output
    table = (out / "comparison.md").read_text()
    for method in ("persistence", "coarse-delta", "starfm", "fsdaf"):
        assert method in table
    assert (out / "comparison.csv").exists() and (out / "20010101-20010201.png").stat().st_size > 1000
    assert (out / "20010201-20010301" / "fsdaf.tif").exists()


def test_amp_on_cpu_says_it_has_no_effect(caplog: pytest.LogCaptureFixture) -> None:
    generator = ModelSpec("mlffgan", 2, {"channels": [4, 4, 8, 8, 8]}).build()
    with caplog.at_level("WARNING", logger="stfusion.predict"):
        predict = generator_batch_predictor(generator, device="cpu", amp=True)
    assert "--amp has no effect on cpu" in caplog.text
    x = np.random.default_rng(0).random((1, 2, 32, 32), dtype=np.float32)
    exact = generator_batch_predictor(generator, device="cpu")(x, x, x)
    np.testing.assert_array_equal(predict(x, x, x), exact)  # float32 as without --amp
