from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stfusion import scenes
from stfusion.dataset import PatchDataset, flip_rotate, load_case, swap_dates
from stfusion.errors import InputError
from stfusion.transforms import degrade_array
from tests.conftest import write_tif


def test_load_case_degrades_coarse_once_and_masks(tiny_paper_data: Path) -> None:
    case = scenes.discover(tiny_paper_data).split("train")[0]
    loaded = load_case(case, coarse_factor=8)
    assert loaded.shape == (3, 40, 48)
    assert loaded.valid.all()
    from stfusion import raster

    raw = raster.read(case.coarse_t1).data
    np.testing.assert_allclose(loaded.coarse_t1, degrade_array(raw, 8), rtol=1e-6)
    np.testing.assert_allclose(loaded.fine_t1, raster.read(case.fine_t1).data)


def test_load_case_with_nodata_masks_and_zero_fills(tiny_paper_data: Path) -> None:
    case = scenes.discover(tiny_paper_data).split("train")[0]
    data = np.full((3, 40, 48), 1200, dtype=np.int16)
    data[:, :5, :5] = -9999
    write_tif(case.fine_t1, data, nodata=-9999)
    loaded = load_case(case, coarse_factor=1)
    assert not loaded.valid[:5, :5].any() and loaded.valid.sum() == 40 * 48 - 25
    assert (loaded.fine_t2[:, :5, :5] == 0).all()
    write_tif(case.fine_t1, np.full((3, 40, 48), -9999, np.int16), nodata=-9999)
    with pytest.raises(InputError, match="no valid pixel"):
        load_case(case, coarse_factor=1)


def test_grid_patches_cover_the_whole_image(tiny_paper_data: Path) -> None:
    cases = [load_case(c, coarse_factor=1) for c in scenes.discover(tiny_paper_data).split("train")]
    dataset = PatchDataset(cases, patch_size=16, stride=12)
    covered = np.zeros((len(cases), 40, 48), bool)
    for index in dataset.index:
        covered[index.case, index.row : index.row + 16, index.col : index.col + 16] = True
    assert covered.all()
    item = dataset[len(dataset) - 1]
    assert item["fine_t2"].shape == (3, 16, 16) and item["valid"].shape == (1, 16, 16)
    # the last patch is the bottom-right corner of the last case, read from memory
    np.testing.assert_array_equal(item["fine_t2"].numpy(), cases[-1].fine_t2[:, 24:40, 32:48])


def test_random_crops_are_seeded(tiny_paper_data: Path) -> None:
    cases = [load_case(c, coarse_factor=1) for c in scenes.discover(tiny_paper_data).split("train")]
    a = PatchDataset(cases, patch_size=16, stride=16, random_crops=5, seed=3)
    b = PatchDataset(cases, patch_size=16, stride=16, random_crops=5, seed=3)
    c = PatchDataset(cases, patch_size=16, stride=16, random_crops=5, seed=4)
    assert a.index == b.index and a.index != c.index and len(a) == 10
    with pytest.raises(
        InputError, match="40 x 48 px is smaller than the training patch of 100 px; use --patch-size 40"
    ):
        PatchDataset(cases, patch_size=100, stride=50)


def test_swap_dates_and_flips() -> None:
    batch = {
        k: torch.full((1, 1, 2, 2), float(i))
        for i, k in enumerate(["coarse_t1", "fine_t1", "coarse_t2", "fine_t2"])
    }
    swapped = swap_dates(batch)
    assert [float(swapped[k][0, 0, 0, 0]) for k in ["coarse_t1", "fine_t1", "coarse_t2", "fine_t2"]] == [
        2,
        3,
        0,
        1,
    ]
    image = {"x": torch.arange(4.0).reshape(1, 1, 2, 2), "y": torch.arange(4.0).reshape(1, 1, 2, 2)}
    flipped = flip_rotate(image, torch.Generator().manual_seed(1))
    assert torch.equal(flipped["x"], flipped["y"])  # one transform for every tensor of the batch
    assert sorted(flipped["x"].flatten().tolist()) == [0, 1, 2, 3]


def test_split_holdout_keeps_bottom_rows_apart(tiny_paper_data: Path) -> None:
    from stfusion.dataset import split_holdout

    case = load_case(scenes.discover(tiny_paper_data).split("train")[0], coarse_factor=1)
    train_part, val_part = split_holdout(case, 0.25)
    assert train_part.shape == (3, 30, 48) and val_part.shape == (3, 10, 48)
    for role in ("coarse_t1", "fine_t1", "coarse_t2", "fine_t2"):
        joined = np.concatenate([getattr(train_part, role), getattr(val_part, role)], axis=1)
        np.testing.assert_array_equal(joined, getattr(case, role))
    assert val_part.valid.shape == (10, 48) and "rows 30:40" in val_part.name
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(case, 1.0)


def test_split_bands_gives_one_case_per_band(tiny_paper_data: Path) -> None:
    from stfusion.dataset import split_bands

    case = load_case(scenes.discover(tiny_paper_data).split("train")[0], coarse_factor=1)
    parts = split_bands(case)
    assert [p.shape for p in parts] == [(1, 40, 48)] * 3
    assert parts[2].name.endswith("[band 3]")
    for band, part in enumerate(parts):
        for role in ("coarse_t1", "fine_t1", "coarse_t2", "fine_t2"):
            np.testing.assert_array_equal(getattr(part, role)[0], getattr(case, role)[band])
        np.testing.assert_array_equal(part.valid, case.valid)
