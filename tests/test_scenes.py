from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from stfusion import scenes
from stfusion.errors import InputError
from tests.conftest import make_pair_folder, random_scene, write_tif


def test_parse_pair_folder_name() -> None:
    t1, t2 = scenes.parse_pair_folder_name("2001_281_1007-2001_290_1016")
    assert (t1.coarse_key, t1.fine_key, t2.coarse_key, t2.fine_key) == (
        "2001281",
        "20011007",
        "2001290",
        "20011016",
    )
    assert t1.date == dt.date(2001, 10, 7)
    for bad in ("2001_281-2001_290", "2001_281_1307-2001_290_1016", "2001_400_1007-2001_290_1016"):
        with pytest.raises(InputError):
            scenes.parse_pair_folder_name(bad)
    with pytest.raises(InputError, match="same"):
        scenes.parse_pair_folder_name("2001_281_1007-2001_281_1007")


def test_paper_layout_roles(tmp_path: Path, rng: np.random.Generator) -> None:
    make_pair_folder(tmp_path / "train", "2001_281_1007-2001_290_1016", rng)
    make_pair_folder(tmp_path / "val", "2001_290_1016-2001_306_1101", rng)
    (tmp_path / "train" / "2001_281_1007-2001_290_1016" / "notes.txt").write_text("x")
    found = scenes.discover(tmp_path)
    assert found.layout == "paper"
    assert [c.split for c in found.cases] == ["train", "val"]
    case = found.split("train")[0]
    assert "20011007" in case.fine_t1.name and "2001281" in case.coarse_t1.name
    assert case.fine_t2 is not None and "20011016" in case.fine_t2.name
    assert "2001290" in case.coarse_t2.name
    assert (case.date_t1, case.date_t2) == (dt.date(2001, 10, 7), dt.date(2001, 10, 16))
    assert [s.path.name for s in found.skipped] == ["notes.txt"]


def test_pair_folder_without_truth_is_a_prediction_case(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = make_pair_folder(tmp_path, "2004_107_0416-2004_123_0502", rng, skip="20040502")
    case, _ = scenes.read_pair_folder(folder)
    assert case.fine_t2 is None
    with pytest.raises(InputError, match="no fine t2"):
        scenes.check_case(case, require_truth=True)


def test_pair_folder_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = make_pair_folder(tmp_path, "2001_281_1007-2001_290_1016", rng, skip="2001281")
    with pytest.raises(
        InputError, match=r"no file for coarse_t1 \(expected a .tif whose name contains 2001281"
    ):
        scenes.read_pair_folder(folder)
    write_tif(folder / "MOD09GA_A2001281.a.tif", random_scene(rng))
    write_tif(folder / "MOD09GA_A2001281.b.tif", random_scene(rng))
    with pytest.raises(InputError, match="several files for coarse_t1"):
        scenes.read_pair_folder(folder)


def test_flat_folder_consecutive_and_explicit(flat_folder: Path) -> None:
    found = scenes.discover(flat_folder)
    assert found.layout == "flat"
    assert [c.name for c in found.cases] == ["20010101-20010201", "20010201-20010301"]
    assert all(c.fine_t2 is not None for c in found.cases)
    explicit = scenes.discover_flat_folder(
        flat_folder, date_pairs=[(dt.date(2001, 3, 1), dt.date(2001, 1, 1))]
    )
    assert explicit.cases[0].fine_t1.name == "fine_20010301.tif"
    with pytest.raises(InputError, match=r"no coarse_20010401\.tif"):
        scenes.discover_flat_folder(flat_folder, date_pairs=[(dt.date(2001, 1, 1), dt.date(2001, 4, 1))])


def test_flat_folder_coarse_only_target_and_duplicates(flat_folder: Path, rng: np.random.Generator) -> None:
    (flat_folder / "fine_20010301.tif").unlink()
    write_tif(flat_folder / "coarse_20010401.tif", random_scene(rng))
    found = scenes.discover(flat_folder)
    # 03-01 lacks a fine image: a target, not a reference
    assert [c.name for c in found.cases][-2:] == ["20010201-20010301", "20010201-20010401"]
    assert found.cases[-1].fine_t2 is None
    write_tif(flat_folder / "fine_20010101.tiff", random_scene(rng))
    with pytest.raises(InputError, match="two fine images for 2001-01-01"):
        scenes.discover(flat_folder)


def test_discover_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="folder not found"):
        scenes.discover(tmp_path / "nope")
    with pytest.raises(InputError, match="no fusion cases found"):
        scenes.discover(tmp_path)
    (tmp_path / "train" / "2001-10-07_to_2001-10-16").mkdir(parents=True)
    with pytest.raises(InputError, match="does not parse"):
        scenes.discover(tmp_path)


def test_check_case_mismatches(tmp_path: Path, rng: np.random.Generator) -> None:
    paths = {
        "coarse_t1": write_tif(tmp_path / "c1.tif", random_scene(rng)),
        "fine_t1": write_tif(tmp_path / "f1.tif", random_scene(rng)),
        "coarse_t2": write_tif(tmp_path / "c2.tif", random_scene(rng)),
    }
    case = scenes.explicit_case(**paths)
    infos = scenes.check_case(case)
    assert infos["fine_t1"].shape == (4, 20, 24)
    write_tif(tmp_path / "c2.tif", random_scene(rng, bands=3))
    with pytest.raises(InputError, match=r"c2.tif: 3 bands, but fine t1 f1.tif has 4"):
        scenes.check_case(case)
    write_tif(tmp_path / "c2.tif", random_scene(rng, height=21))
    with pytest.raises(InputError, match=r"c2.tif: size 21x24"):
        scenes.check_case(case)
    write_tif(tmp_path / "c2.tif", random_scene(rng), crs="EPSG:4326")
    with pytest.raises(InputError, match=r"c2.tif: CRS EPSG:4326 differs"):
        scenes.check_case(case)


def test_sample_is_in_paper_layout(sample_root: Path) -> None:
    found = scenes.discover(sample_root)
    assert {c.split for c in found.cases} == {"train", "val", "test"}
    test_case = found.split("test")[0]
    assert (test_case.date_t1, test_case.date_t2) == (dt.date(2001, 10, 17), dt.date(2001, 11, 2))
    for case in found.cases:
        infos = scenes.check_case(case, require_truth=True)
        assert infos["fine_t1"].shape == (6, 250, 250)
        assert infos["fine_t1"].band_names == ("blue", "green", "red", "nir", "swir1", "swir2")
    assert not found.skipped
