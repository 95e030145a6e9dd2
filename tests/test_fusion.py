"""The method registry: options, pairs, errors, and adding a method with one entry plus its module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from stfusion import fusion, raster, scenes
from stfusion.blocks import ArraySource, Block, Prediction, RowBlocks, SceneSource, predict_scene
from stfusion.errors import InputError
from stfusion.inputs import CaseReader
from stfusion.streaming import predict_case
from tests.conftest import random_scene, write_tif


def prepare_tiny(source: SceneSource, *, gain: float = 1.0) -> Prediction:
    """A tiny method for the test: F2 = F1 + gain x (C2 - C1), in row blocks of 5 rows."""
    if gain <= 0:
        raise ValueError(f"gain={gain}: must be > 0")

    def predict_block(block: Block, halo_top: int, halo_bottom: int) -> np.ndarray:
        pair = block.pairs[0]
        return pair.fine + np.float32(gain) * (block.coarse_t2 - pair.coarse)

    return RowBlocks(predict_block, block_rows=5)


TINY = fusion.Method(
    name="tiny",
    summary="F2 = F1 + gain (C2 - C1), a test method.",
    prepare="tests.test_fusion:prepare_tiny",
    options=(fusion.Option("gain", float, 1.0, "Gain of the coarse change.", minimum=0.0),),
)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> fusion.Method:
    monkeypatch.setitem(fusion.METHODS, "tiny", TINY)
    return TINY


def scene(rng: np.random.Generator, pairs: int = 1) -> ArraySource:
    images = [(random_scene(rng, 3, 17, 11) * 1e-4).astype(np.float32) for _ in range(2 * pairs + 1)]
    return ArraySource([(images[2 * k], images[2 * k + 1]) for k in range(pairs)], images[-1])


def test_a_method_is_one_entry_plus_its_module(
    tiny: fusion.Method, tmp_path: Path, rng: np.random.Generator
) -> None:
    source = scene(rng)
    prediction = predict_scene(fusion.get("tiny").preparer({"gain": "2"})(source), source)
    pair = source.pairs[0]
    np.testing.assert_allclose(prediction, pair.fine + 2 * (source.coarse_t2 - pair.coarse), rtol=1e-6)
    # the same entry streams a GeoTIFF case through the one path every command uses
    paths = {
        role: write_tif(tmp_path / f"{role}.tif", np.rint(image * 1e4).astype(np.int16))
        for role, image in (
            ("coarse_t1", pair.coarse),
            ("fine_t1", pair.fine),
            ("coarse_t2", source.coarse_t2),
        )
    }
    reader = CaseReader(scenes.explicit_case(**paths))
    out = predict_case(reader, fusion.get("tiny").preparer({"gain": 2.0})(reader), tmp_path / "out.tif")
    assert out is not None
    np.testing.assert_allclose(raster.read(out).data, prediction, atol=1.5e-4)
    with rasterio.open(out) as src:
        assert src.crs is not None
    assert "tiny" in fusion.names() and "gain (float, default 1.0)" in tiny.help_text()


def test_options_are_typed_checked_and_named_in_errors(tiny: fusion.Method) -> None:
    assert tiny.parse_options({"gain": "0.5"}) == {"gain": 0.5}
    assert tiny.parse_options({"gain": 3}) == {"gain": 3.0}
    for value, message in [("x", "expected float"), ("-1", "must be >= 0"), (True, "expected float")]:
        with pytest.raises(InputError, match=f"method tiny: option gain=.*{message}"):
            tiny.parse_options({"gain": value})
    with pytest.raises(InputError, match="unknown option 'window'; its options are: gain"):
        tiny.parse_options({"window": 3})
    with pytest.raises(InputError, match="method coarse-delta takes no options"):
        fusion.get("coarse-delta").parse_options({"gain": 1})
    with pytest.raises(InputError, match="unknown method 'nope'; choose one of"):
        fusion.get("nope")
    starfm = fusion.get("starfm")
    assert starfm.parse_options({"preset": "starfm4py", "window_size": "31", "fill_holes": "false"}) == {
        "preset": "starfm4py",
        "window_size": 31,
        "fill_holes": False,
    }
    with pytest.raises(InputError, match="choose one of starfm4py, starfm_v121, gao2006"):
        starfm.parse_options({"preset": "other"})


def test_the_method_own_checks_become_one_line_errors(tiny: fusion.Method, rng: np.random.Generator) -> None:
    preparer = fusion.get("tiny").preparer({"gain": 0.0})
    with pytest.raises(InputError, match=r"method tiny: gain=0\.0: must be > 0"):
        preparer(scene(rng))


def test_pairs_and_checkpoints(tiny: fusion.Method, rng: np.random.Generator) -> None:
    two = scene(rng, pairs=2)
    with pytest.raises(InputError, match="estarfm needs at least 2 reference pairs, the case has 1"):
        fusion.get("estarfm").preparer()(scene(rng))
    combined = predict_scene(fusion.get("tiny").preparer()(two), two)  # one-pair method, pair by pair
    singles = []
    for pair in two.pairs:
        single = ArraySource([(pair.coarse, pair.fine)], two.coarse_t2)
        singles.append(predict_scene(fusion.get("tiny").preparer()(single), single))
    low, high = np.minimum(*singles), np.maximum(*singles)
    assert np.all((combined >= low - 1e-6) & (combined <= high + 1e-6))  # a convex combination
    with pytest.raises(InputError, match="needs --checkpoint"):
        fusion.get("mlffgan").preparer()
    assert fusion.get("starfm").accepts_pairs(3) and not fusion.get("estarfm").accepts_pairs(3)
    assert fusion.default_method(2) == "estarfm" and fusion.default_method(1) == fusion.DEFAULT_METHOD


def test_one_option_syntax_for_several_methods() -> None:
    split = fusion.split_method_options(
        [("window_size", "31"), ("fsdaf.n_classes", "4")], ["starfm", "fsdaf"]
    )
    assert split == {"starfm": {"window_size": "31"}, "fsdaf": {"n_classes": "4"}}
    split = fusion.split_method_options([("n_classes", "4")], ["starfm", "fsdaf"])
    assert split == {"starfm": {"n_classes": "4"}, "fsdaf": {"n_classes": "4"}}
    with pytest.raises(InputError, match="no method run here has an option 'gain'"):
        fusion.split_method_options([("gain", "1")], ["starfm"])
    with pytest.raises(InputError, match="method 'estarfm' is not run here"):
        fusion.split_method_options([("estarfm.preset", "idl")], ["starfm"])


def test_an_even_window_is_refused_with_the_other_options_before_any_work() -> None:
    """STARFM's window side must be odd: refused when the options are parsed (compare checks every
    method's options before the first prediction), not by the method after others have written."""
    starfm = fusion.get("starfm")
    assert starfm.parse_options({"window_size": "31"})["window_size"] == 31
    with pytest.raises(InputError, match=r"method starfm: option window_size='30': must be odd"):
        starfm.parse_options({"window_size": "30"})


def test_the_package_docstring_entry_points_work_after_import_stfusion() -> None:
    """help(stfusion) names stfusion.fusion, .inputs, .scenes, .blocks, .metrics ...: they work after a
    plain `import stfusion`, without loading PyTorch."""
    import subprocess
    import sys

    code = (
        "import sys, stfusion\n"
        "names = [stfusion.fusion.get('starfm').name, stfusion.inputs.CaseReader.__name__,\n"
        "         stfusion.scenes.explicit_case.__name__, stfusion.blocks.predict_scene.__name__,\n"
        "         stfusion.metrics.compute_metrics.__name__, stfusion.raster.read.__name__]\n"
        "print(names, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().endswith("False"), done.stdout
    assert "starfm" in done.stdout and "CaseReader" in done.stdout


@pytest.mark.parametrize("method", ["starfm", "estarfm", "fsdaf"])
def test_plain_functions_refuse_reflectance_x_10000(method: str) -> None:
    """Arrays of reflectance x 10000 given as reflectance are refused in one line, not clipped to 1."""
    from stfusion.baselines.estarfm import estarfm
    from stfusion.baselines.fsdaf import fsdaf
    from stfusion.baselines.starfm import starfm

    rng = np.random.default_rng(0)
    images = [rng.uniform(0.02, 0.4, (2, 32, 32)).astype(np.float32) for _ in range(5)]
    calls = {
        "starfm": lambda a: starfm(a[0], a[1], a[2]),
        "estarfm": lambda a: estarfm(a[0], a[1], a[3], a[4], a[2]),
        "fsdaf": lambda a: fsdaf(a[0], a[1], a[2], scale_factor=4),
    }
    assert np.isfinite(calls[method](images)).any()  # reflectance: predicted
    with pytest.raises(ValueError, match=r"does not hold reflectance 0\.\.1 \(median \|value\| 2\d\d\d"):
        calls[method]([image * 1e4 for image in images])


def test_estarfm_gaps_where_one_pair_is_clouded_are_predicted_from_the_other() -> None:
    """ESTARFM needs both pairs at a pixel; the registry fills a cloud in one pair by FSDAF from the
    other pair (fill_gaps, default true), and leaves ESTARFM's own pixels as they are."""
    sample = Path(fusion.__file__).parent / "sample" / "datasets" / "estarfm-site"

    def load(date: str, kind: str) -> np.ndarray:
        return np.asarray(raster.read(sample / f"{kind}_{date}.tif").data[:, :160, :160], np.float32)

    (c1, f1), (c3, f3) = ((load(d, "coarse"), load(d, "fine")) for d in ("20010524", "20010812"))
    c2 = load("20010711", "coarse")
    f1[:, 40:70, 90:130] = np.nan  # a cloud in the first pair's fine image
    source = ArraySource([(c1, f1), (c3, f3)], c2, coarse_ratio=16)
    options = {"half_window": 10}
    filled = predict_scene(fusion.get("estarfm").preparer(options)(source), source)
    unfilled = predict_scene(
        fusion.get("estarfm").preparer({**options, "fill_gaps": "false"})(source), source
    )
    cloud = np.zeros((160, 160), bool)
    cloud[40:70, 90:130] = True
    assert np.isnan(unfilled[:, cloud]).all() and np.isfinite(unfilled[:, ~cloud]).all()
    np.testing.assert_array_equal(filled[:, ~cloud], unfilled[:, ~cloud])
    second = ArraySource([(c3, f3)], c2, coarse_ratio=16)
    alone = predict_scene(fusion.get("fsdaf").preparer()(second), second)
    np.testing.assert_allclose(filled[:, cloud], alone[:, cloud], rtol=1e-6)
    assert "fill_gaps (bool, default true)" in fusion.get("estarfm").help_text()
