from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from stfusion import scenes
from stfusion.errors import InputError
from tests.conftest import TEST_TRANSFORM, make_pair_folder, random_scene, write_tif


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


def test_flat_folder_test_split_by_date_names_the_folder_in_its_errors(flat_folder: Path) -> None:
    found = scenes.discover(flat_folder)
    assert [c.date_t2 for c in scenes.split_of(found, "test")] == [dt.date(2001, 3, 1)]  # the latest
    chosen = scenes.split_of(found, "test", test_dates=[dt.date(2001, 2, 1)])
    assert [c.name for c in chosen] == ["20010101-20010201"]
    with pytest.raises(InputError) as error:
        scenes.split_of(found, "test", test_dates=[dt.date(2001, 1, 15)])
    message = str(error.value)
    assert message.startswith(f"{flat_folder}: test date(s) 2001-01-15 are no case's target date"), message
    assert message.endswith("(target dates: 2001-02-01, 2001-03-01)"), message
    with pytest.raises(InputError, match=rf"^{flat_folder}: test date\(s\) 2001-01-15"):
        scenes.split_cases(found, test_dates=[dt.date(2001, 1, 15)])
    with pytest.raises(InputError) as error:  # the test date in every case: nothing left to train on
        scenes.split_cases(found, test_dates=[dt.date(2001, 2, 1), dt.date(2001, 3, 1)])
    message = str(error.value)
    assert message.startswith(f"{flat_folder}: no case to train on: of 2 case(s), 2 involve the test "), (
        message
    )
    assert "date(s) 2001-02-01, 2001-03-01; a flat folder needs fine images of three dates" in message


def test_a_date_to_predict_between_the_fine_dates_is_not_trained_on(
    flat_folder: Path, rng: np.random.Generator
) -> None:
    """A coarse image without a fine one (a date to predict, as docs/data.md lays out) makes a case
    without a truth: the date split leaves it out of training instead of failing on it."""
    write_tif(flat_folder / "coarse_20010115.tif", random_scene(rng))
    found = scenes.discover(flat_folder)
    assert [(c.name, c.fine_t2 is not None) for c in found.cases] == [
        ("20010101-20010115", False),
        ("20010101-20010201", True),
        ("20010201-20010301", True),
    ]
    splits = scenes.split_cases(found)
    assert [c.name for c in splits.train] == ["20010101-20010201"]
    assert [c.name for c in splits.test] == ["20010201-20010301"]
    # a date before the first fine date is in no case, but fuse can predict it: said so
    write_tif(flat_folder / "coarse_20001201.tif", random_scene(rng))
    skipped = {s.path.name: s.reason for s in scenes.discover(flat_folder).skipped}
    assert skipped["coarse_20001201.tif"].endswith("`stfusion fuse` predicts its date from later pairs")


def test_test_dates_are_refused_on_the_paper_layout(sample_root: Path) -> None:
    found = scenes.discover(sample_root)
    assert found.layout == "paper" and scenes.split_of(found, "test")
    day = [dt.date(2001, 11, 2)]
    with pytest.raises(InputError, match=rf"^{sample_root}: --test-date splits a flat folder by date"):
        scenes.split_of(found, "test", test_dates=day)
    with pytest.raises(InputError, match=rf"^{sample_root}: --test-date splits a flat folder by date"):
        scenes.split_cases(found, test_dates=day)


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
    # a coarse image of another size / CRS is fine when its footprint covers the fine grid ...
    write_tif(tmp_path / "c2.tif", random_scene(rng, height=21))
    scenes.check_case(case)
    # ... but not when it lies elsewhere (these coordinates are not even valid degrees)
    write_tif(tmp_path / "c2.tif", random_scene(rng), crs="EPSG:4326")
    with pytest.raises(
        InputError, match=r"c2.tif: footprint \(CRS EPSG:4326\) covers 0% of the grid of f1.tif"
    ):
        scenes.check_case(case)
    shifted = from_origin(TEST_TRANSFORM.c + 24 * 50 * 0.6, TEST_TRANSFORM.f, 50.0, 50.0)
    write_tif(tmp_path / "c2.tif", random_scene(rng), transform=shifted)
    with pytest.raises(InputError, match=r"covers 40% of the grid of f1.tif, less than the 50%"):
        scenes.check_case(case)
    scenes.check_case(case, min_overlap=0.4)
    # without a CRS a coarse image off the grid cannot be placed
    write_tif(tmp_path / "c2.tif", random_scene(rng, height=21), crs=None)
    with pytest.raises(InputError, match=r"c2.tif: coarse image is not on the grid of f1.tif .* has no CRS"):
        scenes.check_case(case)


def test_fine_images_must_share_the_grid(tmp_path: Path, rng: np.random.Generator) -> None:
    paths = {
        "coarse_t1": write_tif(tmp_path / "c1.tif", random_scene(rng)),
        "fine_t1": write_tif(tmp_path / "f1.tif", random_scene(rng)),
        "coarse_t2": write_tif(tmp_path / "c2.tif", random_scene(rng)),
        "fine_t2": write_tif(tmp_path / "f2.tif", random_scene(rng, height=21)),
    }
    case = scenes.explicit_case(**paths)
    with pytest.raises(InputError, match=r"f2.tif: size 21x24 .* fine images of a case must share one grid"):
        scenes.check_case(case)
    write_tif(tmp_path / "f2.tif", random_scene(rng), crs="EPSG:32756")
    with pytest.raises(InputError, match=r"f2.tif: CRS EPSG:32756 differs"):
        scenes.check_case(case)
    shifted = from_origin(TEST_TRANSFORM.c + 25.0, TEST_TRANSFORM.f, 50.0, 50.0)
    write_tif(tmp_path / "f2.tif", random_scene(rng), transform=shifted)
    with pytest.raises(InputError, match=r"f2.tif: transform \(origin 401025, .* must share one grid"):
        scenes.check_case(case)


def test_mask_sidecars_are_attached(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = make_pair_folder(tmp_path / "train", "2001_281_1008-2001_290_1017", rng)
    fine_t1 = next(folder.glob("*20011008*"))
    mask = write_tif(folder / f"{fine_t1.stem}_mask.tif", np.zeros((1, 20, 24), np.uint8))
    orphan = write_tif(folder / "MOD09GA_A2001290_other_mask.tif", np.zeros((1, 20, 24), np.uint8))
    case, skipped = scenes.read_pair_folder(folder)
    assert dict(case.masks) == {"fine_t1": mask}
    assert [s.path for s in skipped] == [orphan]
    scenes.check_case(case)
    flat = tmp_path / "flat"
    for stamp in ("20010101", "20010201"):
        write_tif(flat / f"fine_{stamp}.tif", random_scene(rng))
        write_tif(flat / f"coarse_{stamp}.tif", random_scene(rng))
    coarse_mask = write_tif(flat / "coarse_20010201_mask.tif", np.zeros((1, 20, 24), np.uint8))
    found = scenes.discover(flat)
    assert dict(found.cases[0].masks) == {"coarse_t2": coarse_mask}
    assert not found.skipped
    # the explicit files find the same masks as folders do, whatever the case of the suffixes
    assert scenes.sidecar_mask(flat / "coarse_20010201.tif") == coarse_mask
    assert scenes.sidecar_mask(flat / "fine_20010201.tif") is None
    odd = coarse_mask.rename(flat / "coarse_20010201_Mask.TIF")
    assert scenes.sidecar_mask(flat / "coarse_20010201.tif") == odd
    assert dict(scenes.explicit_case(**dict(found.cases[0].paths())).masks) == {"coarse_t2": odd}


def test_explicit_masks_and_their_checks(tmp_path: Path, rng: np.random.Generator) -> None:
    paths = {
        "coarse_t1": write_tif(tmp_path / "c1.tif", random_scene(rng)),
        "fine_t1": write_tif(tmp_path / "f1.tif", random_scene(rng)),
        "coarse_t2": write_tif(tmp_path / "c2.tif", random_scene(rng)),
    }
    with pytest.raises(InputError, match="masks for unknown roles"):
        scenes.explicit_case(**paths, masks={"cloud": tmp_path / "m.tif"})
    mask = write_tif(tmp_path / "m.tif", np.zeros((1, 20, 24), np.uint8))
    with pytest.raises(InputError, match=r"m.tif: mask for fine_t2, but the case .* has no fine_t2"):
        scenes.check_case(scenes.explicit_case(**paths, masks={"fine_t2": mask}))
    write_tif(mask, np.zeros((1, 7, 7), np.uint8), crs=None)
    with pytest.raises(InputError, match=r"m.tif: mask is not on the grid of f1.tif"):
        scenes.check_case(scenes.explicit_case(**paths, masks={"fine_t1": mask}))


def test_dates_that_contradict(tmp_path: Path, rng: np.random.Generator) -> None:
    # day of year 200 is 2001-07-19, not 10-08
    with pytest.raises(InputError, match=r"day of year 200 \(2001-07-19\) contradicts the date 2001-10-08"):
        scenes.parse_pair_folder_name("2001_200_1008-2001_290_1017")
    scenes.parse_pair_folder_name("2001_281_1007-2001_290_1016")  # CIA: one day apart is fine
    folder = make_pair_folder(tmp_path, "2001_281_1008-2001_290_1017", rng)
    write_tif(folder / "L7_20011008_to_20011017.tif", random_scene(rng))
    with pytest.raises(InputError, match=r"name contains both dates 20011008 and 20011017"):
        scenes.read_pair_folder(folder)
    (folder / "L7_20011008_to_20011017.tif").unlink()
    case, _ = scenes.read_pair_folder(folder)
    scenes.check_case(case)
    with rasterio.open(case.coarse_t2, "r+") as dst:
        dst.update_tags(RANGEBEGINNINGDATE="2001-06-01")
    with pytest.raises(
        InputError, match=r"acquired 2001-06-01 \(metadata\), but it is coarse_t2 .* 2001-10-17"
    ):
        scenes.check_case(case)
    with rasterio.open(case.coarse_t2, "r+") as dst:
        dst.update_tags(RANGEBEGINNINGDATE="2001-10-17T00:00:00")
    scenes.check_case(case)
    # backward prediction (t2 before t1) is legitimate
    backward = make_pair_folder(tmp_path, "2001_290_1017-2001_281_1008", rng)
    case, _ = scenes.read_pair_folder(backward)
    assert case.date_t2 < case.date_t1
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


def test_paper_layout_copy_checks_every_folder_before_writing(
    tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    flat = tmp_path / "flat"
    for day in (1, 2, 3):
        for kind in ("fine", "coarse"):
            write_tif(flat / f"{kind}_200101{day:02d}.tif", random_scene(rng, 2, 8, 8))
    found = scenes.discover(flat)
    out = tmp_path / "paper"
    with caplog.at_level("WARNING", logger="stfusion.scenes"):
        written = scenes.to_paper_layout(found, out)
    assert [p.relative_to(out).parts[0] for p in written] == ["train", "val", "test"]
    assert written[1].name == "2001_002_0102-2001_001_0101"  # the training case reversed: said so
    assert f"{out}: val/ holds the training case 20010101-20010102 reversed" in caplog.text
    again = scenes.discover(out)
    assert again.layout == "paper" and {c.split for c in again.cases} == {"train", "val", "test"}
    # a second layout whose test folder exists already: refused before any other folder is written
    other = tmp_path / "other"
    (other / written[-1].relative_to(out)).mkdir(parents=True)
    with pytest.raises(InputError, match="exists; choose an empty output folder"):
        scenes.to_paper_layout(found, other)
    assert sorted(p.name for p in other.iterdir()) == ["test"]
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="exists and is not a folder"):
        scenes.to_paper_layout(found, tmp_path / "file")
    with pytest.raises(InputError, match="is the data folder itself"):
        scenes.to_paper_layout(found, flat)
    assert not (flat / "train").exists()


def test_flat_folder_reports_images_in_no_case_and_reads_dashed_dates(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    flat = tmp_path / "flat"
    write_tif(flat / "fine_2001-01-01.tif", random_scene(rng, 2, 8, 8))
    write_tif(flat / "coarse_2001-01-01.tif", random_scene(rng, 2, 8, 8))
    write_tif(flat / "coarse_20010201.tif", random_scene(rng, 2, 8, 8))
    write_tif(flat / "fine_20010301.tif", random_scene(rng, 2, 8, 8))  # no coarse image of its date
    found = scenes.discover(flat)
    assert [c.name for c in found.cases] == ["20010101-20010201"]
    assert found.cases[0].fine_t1.name == "fine_2001-01-01.tif"
    skipped = {s.path.name: s.reason for s in found.skipped}
    assert skipped == {"fine_20010301.tif": "no coarse image of 2001-03-01, so it is in no case"}
