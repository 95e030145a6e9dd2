"""Streaming prediction: window reads + row-by-row writing equal the in-memory path, row splits, COG."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from stfusion import raster, scenes
from stfusion.atomic import OutputError
from stfusion.baselines import coarse_delta
from stfusion.baselines.fsdaf import fsdaf as fsdaf_function
from stfusion.baselines.starfm import starfm as starfm_function
from stfusion.checkpoint import ModelSpec
from stfusion.cli import cli
from stfusion.inputs import CaseReader
from stfusion.predict import (
    BatchPredictor,
    MlffganPrediction,
    generator_batch_predictor,
    iter_blended_rows,
    predict_tiled,
)
from stfusion.streaming import RankSplit, join_parts, part_path, predict_case, split_rows
from stfusion.tiling import TileOptions
from tests.conftest import random_scene, write_tif

HEIGHT, WIDTH, BANDS = 83, 101, 3


@pytest.fixture
def case(tmp_path: Path, rng: np.random.Generator) -> scenes.FusionCase:
    """A 3-band 83 x 101 case with a nodata block in fine t1 (nodata -32768)."""
    fine_t1 = random_scene(rng, bands=BANDS, height=HEIGHT, width=WIDTH)
    fine_t1[:, 30:37, 40:52] = -32768
    paths = {
        "coarse_t1": write_tif(tmp_path / "in" / "c1.tif", random_scene(rng, BANDS, HEIGHT, WIDTH)),
        "fine_t1": write_tif(tmp_path / "in" / "f1.tif", fine_t1, nodata=-32768),
        "coarse_t2": write_tif(tmp_path / "in" / "c2.tif", random_scene(rng, BANDS, HEIGHT, WIDTH)),
    }
    return scenes.explicit_case(**paths)


def method_batch_predictor(method: Callable[..., np.ndarray]) -> BatchPredictor:
    """A per-tile array method as a BatchPredictor (tiles one by one)."""

    def predict(c1: np.ndarray, f1: np.ndarray, c2: np.ndarray) -> np.ndarray:
        return np.stack([method(a, b, c) for a, b, c in zip(c1, f1, c2, strict=True)])

    return predict


def predict_to_file(
    reader: CaseReader,
    predict_batch: BatchPredictor,
    out: Path,
    *,
    options: TileOptions,
    coarse_factor: int = 1,
    **kwargs: Any,
) -> Path | None:
    """The streaming path with a tiled predictor (as the mlffgan registry entry builds it)."""
    return predict_case(reader, MlffganPrediction(predict_batch, coarse_factor, options), out, **kwargs)


def predict_with_generator(
    generator: torch.nn.Module, *images: np.ndarray, coarse_factor: int, options: TileOptions
) -> np.ndarray:
    return predict_tiled(
        generator_batch_predictor(generator), *images, options=options, coarse_factor=coarse_factor
    )


def tiny_generator() -> torch.nn.Module:
    torch.manual_seed(0)
    return ModelSpec("mlffgan", BANDS, {"channels": [4, 4, 8, 8, 8]}).build().eval()


def read_float(path: Path) -> np.ndarray:
    return raster.read(path, scale=1.0).data


def test_streamed_generator_prediction_equals_in_memory(case: scenes.FusionCase, tmp_path: Path) -> None:
    """Window reads with a degradation halo give the whole-scene pixels (float32 output, 1e-5)."""
    reader = CaseReader(case)
    generator = tiny_generator()
    options = TileOptions(tile=(32, 48), overlap=(8, 8), batch_size=2)
    in_memory = predict_with_generator(
        generator,
        *(reader.read(role) for role in ("coarse_t1", "fine_t1", "coarse_t2")),
        coarse_factor=4,
        options=options,
    )
    out = predict_to_file(
        reader,
        generator_batch_predictor(generator),
        tmp_path / "pred.tif",
        options=options,
        coarse_factor=4,
        dtype="float32",
    )
    assert out == tmp_path / "pred.tif"
    streamed = read_float(out)
    assert np.isnan(streamed[:, 30:37, 40:52]).all()
    assert np.isnan(in_memory[:, 30:37, 40:52]).all()
    np.testing.assert_allclose(streamed, in_memory, rtol=0, atol=1e-5, equal_nan=True)
    with rasterio.open(out) as src, rasterio.open(case.fine_t1) as ref:
        assert src.crs == ref.crs and src.transform == ref.transform


def test_streamed_int16_output_equals_write_like(case: scenes.FusionCase, tmp_path: Path) -> None:
    """A pixel-wise method streamed with small tiles writes exactly the in-memory GeoTIFF's values."""
    reader = CaseReader(case)
    images = [reader.read(role) for role in ("coarse_t1", "fine_t1", "coarse_t2")]
    whole = coarse_delta(*images)
    raster.write_like(tmp_path / "whole.tif", whole, reader.reference)
    streamed = predict_to_file(
        reader,
        method_batch_predictor(coarse_delta),
        tmp_path / "stream.tif",
        options=TileOptions(tile=(16, 24), overlap=(4, 4), batch_size=3),
    )
    assert streamed is not None
    with rasterio.open(tmp_path / "whole.tif") as a, rasterio.open(streamed) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert b.nodata == -32768


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_row_split_across_ranks_equals_single_process(
    case: scenes.FusionCase, tmp_path: Path, world_size: int
) -> None:
    """Each rank's part (run here one after another) joined = the single-process file, bit for bit."""
    reader = CaseReader(case)
    generator = tiny_generator()
    options = TileOptions(tile=(24, 40), overlap=(6, 6), batch_size=2)
    predictor = generator_batch_predictor(generator)
    single = predict_to_file(reader, predictor, tmp_path / "single.tif", options=options, coarse_factor=2)
    assert single is not None
    out = tmp_path / "split.tif"
    written = [
        predict_to_file(
            reader, predictor, out, options=options, coarse_factor=2, split=RankSplit(rank, world_size)
        )
        for rank in range(world_size)
    ]
    method = MlffganPrediction(predictor, 2, options)
    spans = split_rows(method.row_starts(HEIGHT, WIDTH), HEIGHT, world_size)
    assert [p for p in written if p is not None] == [part_path(out, i, len(spans)) for i in range(len(spans))]
    assert not out.exists()
    failed = max(rank for rank, path in enumerate(written) if path is not None)
    written[failed].unlink()  # type: ignore[union-attr]  # a rank that failed: one line says so
    with pytest.raises(OutputError, match=r"split\.tif: part files missing .*did a rank fail\?"):
        join_parts(reader, method, out, world_size=world_size)
    predict_to_file(
        reader, predictor, out, options=options, coarse_factor=2, split=RankSplit(failed, world_size)
    )
    join_parts(reader, method, out, world_size=world_size)
    assert not any(p.exists() for p in written if p is not None)
    with rasterio.open(single) as a, rasterio.open(out) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.transform == b.transform and a.crs == b.crs and a.nodata == b.nodata


def test_split_rows_tiles_the_scene() -> None:
    options = TileOptions(tile=(100, 100), overlap=(10, 10))
    starts = MlffganPrediction(coarse_delta, 1, options).row_starts(1000, 300)
    for world_size in (1, 2, 5, 40):
        spans = split_rows(starts, 1000, world_size)
        assert spans[0][0] == 0 and spans[-1][1] == 1000
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert len(spans) == min(world_size, 11)


def test_row_ranges_of_iter_blended_rows_match_the_whole(rng: np.random.Generator) -> None:
    images = [(random_scene(rng, 2, 61, 45) * 1e-4).astype(np.float32) for _ in range(3)]
    predictor = method_batch_predictor(coarse_delta)
    options = TileOptions(tile=(20, 20), overlap=(5, 5))
    whole = predict_tiled(predictor, *images, options=options)

    def read_tile(tile):  # type: ignore[no-untyped-def]
        return tuple(image[(slice(None), *tile.slices)] for image in images)

    for rows in [(0, 61), (7, 33), (44, 61), (15, 16)]:
        blocks = list(
            iter_blended_rows(read_tile, predictor, bands=2, height=61, width=45, options=options, rows=rows)
        )
        assert blocks[0][0] == rows[0]
        joined = np.concatenate([block for _, block in blocks], axis=1)
        np.testing.assert_array_equal(joined, whole[:, rows[0] : rows[1]])


def test_cog_output_is_a_valid_cloud_optimized_geotiff(tmp_path: Path, rng: np.random.Generator) -> None:
    size = 600
    paths = {
        role: write_tif(tmp_path / f"{role}.tif", random_scene(rng, 2, size, size))
        for role in ("coarse_t1", "fine_t1", "coarse_t2")
    }
    reader = CaseReader(scenes.explicit_case(**paths))
    options = TileOptions(tile=(256, 256), overlap=(16, 16))
    predictor = method_batch_predictor(coarse_delta)
    plain = predict_to_file(reader, predictor, tmp_path / "plain.tif", options=options)
    cog = predict_to_file(reader, predictor, tmp_path / "cog.tif", options=options, cog=True)
    assert plain is not None and cog is not None
    with rasterio.open(plain) as a, rasterio.open(cog) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert b.profile["tiled"] and b.overviews(1), "a COG is tiled and has overviews"
        assert b.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_failed_prediction_leaves_no_output(case: scenes.FusionCase, tmp_path: Path) -> None:
    reader = CaseReader(case)

    def broken(c1: np.ndarray, f1: np.ndarray, c2: np.ndarray) -> np.ndarray:
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        predict_to_file(reader, broken, tmp_path / "out.tif", options=TileOptions((16, 16), (4, 4)))
    assert list(tmp_path.glob("*out.tif*")) == []


# --------------------------------------------------------------------------------------------------
# the predict command on the streaming path


def predict_args(case: scenes.FusionCase, *extra: str) -> list[str]:
    return [
        "predict",
        "--fine-t1",
        str(case.fine_t1),
        "--coarse-t1",
        str(case.coarse_t1),
        "--tile",
        "32",
        "32",
        "--overlap",
        "8",
        *extra,
    ]


def test_predict_skip_existing_resumes_a_multi_date_job(case: scenes.FusionCase, tmp_path: Path) -> None:
    second = tmp_path / "in" / "c2b.tif"
    second.write_bytes(case.coarse_t2.read_bytes())
    out = tmp_path / "preds"
    targets = ["--coarse-t2", str(case.coarse_t2), "--coarse-t2", str(second)]
    args = predict_args(case, *targets, "--out", str(out))
    runner = CliRunner()
    assert runner.invoke(cli, args).exit_code == 0
    first_output = out / "pred_c2.tif"
    stamp = first_output.stat().st_mtime_ns
    (out / "pred_c2b.tif").unlink()  # as if the job had been killed before the second date
    refused = runner.invoke(cli, args)
    assert refused.exit_code == 2 and "exists" in refused.output
    resumed = runner.invoke(cli, [*args, "--skip-existing"])
    assert resumed.exit_code == 0, resumed.output
    assert f"skipped {first_output}" in resumed.output
    assert first_output.stat().st_mtime_ns == stamp
    with rasterio.open(first_output) as a, rasterio.open(out / "pred_c2b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_predict_mask_file_quality_band_and_cog(case: scenes.FusionCase, tmp_path: Path) -> None:
    cloud = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    cloud[60:70, 10:30] = 1
    mask = write_tif(tmp_path / "cloud.tif", cloud)
    out = tmp_path / "pred.tif"
    extra = ["--mask-fine-t1", str(mask), "--quality", "--cog"]
    args = predict_args(case, "--coarse-t2", str(case.coarse_t2), "--out", str(out), *extra)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as src:
        predicted = src.read()
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        nodata = src.nodata
    with rasterio.open(tmp_path / "pred_quality.tif") as src:
        quality = src.read(1)
    assert (predicted[:, 60:70, 10:30] == nodata).all()  # the cloud
    assert (predicted[:, 30:37, 40:52] == nodata).all()  # fine t1's own nodata
    assert (quality[60:70, 10:30] == 1).all() and (quality[30:37, 40:52] == 1).all()
    valid = quality == 0
    assert valid.sum() == HEIGHT * WIDTH - 200 - 84
    assert (predicted[:, valid] != nodata).all()


@pytest.mark.parametrize(
    ("method", "options", "in_memory"),
    [
        (
            "starfm",
            ["window_size=11", "block_rows=10"],
            lambda c1, f1, c2: starfm_function(c1, f1, c2, preset="starfm4py", window_size=11),
        ),
        (
            "fsdaf",
            ["scale_factor=4", "block_size=4"],
            lambda c1, f1, c2: fsdaf_function(c1, f1, c2, scale_factor=4, block_size=4),
        ),
        ("estarfm", ["half_window=4", "block_rows=10", "fill_gaps=false"], None),
    ],
)
def test_streamed_classical_methods_equal_their_whole_scene_functions(
    case: scenes.FusionCase, tmp_path: Path, method: str, options: list[str], in_memory: Any
) -> None:
    """`stfusion predict` streams STARFM, FSDAF and ESTARFM block by block from GeoTIFFs; the pixels equal
    the methods' in-memory functions on the whole scene (float32 output, to float rounding)."""
    reader = CaseReader(case)
    c1, f1, c2 = (reader.read(role) for role in ("coarse_t1", "fine_t1", "coarse_t2"))
    args = ["predict", "--method", method, "--dtype", "float32", "--out", str(tmp_path / "p.tif")]
    args += [
        "--fine-t1",
        str(case.fine_t1),
        "--coarse-t1",
        str(case.coarse_t1),
        "--coarse-t2",
        str(case.coarse_t2),
    ]
    if method == "estarfm":  # a second pair: the coarse t2 image's neighbour in time, made up
        f3 = write_tif(tmp_path / "f3.tif", np.rint(np.nan_to_num(f1 * 1.05) * 1e4).astype(np.int16))
        c3 = write_tif(tmp_path / "c3.tif", np.rint(np.nan_to_num(c1 * 1.05) * 1e4).astype(np.int16))
        args += ["--fine-t3", str(f3), "--coarse-t3", str(c3)]
        from stfusion.baselines.estarfm import estarfm

        whole = estarfm(c1, f1, raster.read(c3).data, raster.read(f3).data, c2, half_window=4)
    else:
        whole = in_memory(c1, f1, c2)
    for option in options:
        args += ["--option", option]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    streamed = read_float(tmp_path / "p.tif")
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=2e-6, equal_nan=True)
    assert np.isnan(streamed[:, 30:37, 40:52]).all()  # the nodata block of fine t1


def test_estarfm_predicts_the_pixels_of_one_clear_pair(case: scenes.FusionCase, tmp_path: Path) -> None:
    """Where fine t1 is nodata and the second pair is valid, `predict --method estarfm` predicts by FSDAF
    from the second pair (streamed; the quality band says fine t1 was invalid there); elsewhere the
    pixels are ESTARFM's own."""
    reader = CaseReader(case)
    f1, c1 = reader.read("fine_t1"), reader.read("coarse_t1")
    f3 = write_tif(tmp_path / "f3.tif", np.rint(np.nan_to_num(f1 * 1.05, nan=0.2) * 1e4).astype(np.int16))
    c3 = write_tif(tmp_path / "c3.tif", np.rint(c1 * 1.05 * 1e4).astype(np.int16))
    paths = {"--fine-t1": case.fine_t1, "--coarse-t1": case.coarse_t1, "--coarse-t2": case.coarse_t2}
    args = ["predict", "--method", "estarfm", "--dtype", "float32", "--coarse-ratio", "4"]
    args += [*(str(v) for item in paths.items() for v in item), "--fine-t3", str(f3), "--coarse-t3", str(c3)]
    args += ["--option", "half_window=4", "--option", "block_rows=10"]
    runs = {}
    for fill in ("true", "false"):
        out = tmp_path / f"fill-{fill}.tif"
        result = CliRunner().invoke(
            cli, [*args, "--option", f"fill_gaps={fill}", "--out", str(out), "--quality"]
        )
        assert result.exit_code == 0, result.output
        runs[fill] = read_float(out)
    gap = np.zeros(runs["true"].shape[1:], bool)
    gap[30:37, 40:52] = True
    assert np.isnan(runs["false"][:, gap]).all() and np.isfinite(runs["true"]).all()
    np.testing.assert_array_equal(runs["true"][:, ~gap], runs["false"][:, ~gap])
    tags = {fill: raster.inspect(tmp_path / f"fill-{fill}.tif").tags for fill in runs}
    assert tags["true"]["STFUSION_GAP_FILL"] == "on: fsdaf where one reference pair is invalid"
    assert "STFUSION_GAP_FILL" not in tags["false"] and tags["false"]["STFUSION_METHOD"] == "estarfm"
    quality = raster.read(tmp_path / "fill-true_quality.tif", scale=1.0).data[0]
    assert (quality[gap] == 1).all() and (quality[~gap] == 0).all()  # 1 = fine_t1 invalid
