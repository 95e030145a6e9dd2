"""Tests of STARFM against docs/specs/STARFM.md: the worked example (7.1) and invariants (7)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from stfusion import raster
from stfusion.baselines import starfm as st
from stfusion.baselines.starfm import (
    OPTION_HELP,
    FineStdAccumulator,
    HoleCounter,
    StarfmConfig,
    halo_rows,
    make_config,
    prepare,
    similarity_tolerances,
    starfm,
    starfm_block,
    starfm_multi,
)
from stfusion.blocks import ArraySource, predict_scene
from stfusion.sample import DATASETS

ENGINES = ["torch"] + (["numba"] if st.numba is not None else [])

# Worked example, spec section 7.1 (h = 1, A = 1, sigma = 0.002, m = 8).
F1 = np.array([[0.10, 0.12, 0.30], [0.11, 0.10, 0.31], [0.09, 0.35, 0.10]])[None]
C1 = np.array([[0.12, 0.125, 0.25], [0.12, 0.13, 0.25], [0.20, 0.20, 0.20]])[None]
C0 = np.array([[0.15, 0.16, 0.27], [0.14, 0.17, 0.26], [0.22, 0.23, 0.21]])[None]
EXAMPLE = {
    "half_window": 1,
    "distance_scale": 1.0,
    "sigma_fine": 0.002,
    "sigma_coarse": 0.002,
    "n_classes": 8,
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("case", "options", "expected"),
    [
        ("a paper", {"preset": "gao2006"}, 0.14153953),
        ("b v121", {"preset": "starfm_v121"}, 0.14254430),
        ("c log", {"preset": "gao2006", "weighting": "log"}, 0.13980433),
        ("d rule 17", {"sigma_fine": 0.005, "sigma_coarse": 0.005}, 0.15474220),
    ],
)
def test_worked_example_single_pair(engine: str, case: str, options: dict, expected: float) -> None:
    out = starfm(C1, F1, C0, engine=engine, **{**EXAMPLE, **options})
    assert out.dtype == np.float64
    assert out[0, 1, 1] == pytest.approx(expected, abs=1e-7), case


@pytest.mark.parametrize("engine", ENGINES)
def test_worked_example_unchanged_coarse(engine: str) -> None:
    paper = starfm(C1, F1, C1, engine=engine, preset="gao2006", **EXAMPLE)
    v121 = starfm(C1, F1, C1, engine=engine, preset="starfm_v121", **EXAMPLE)
    assert paper[0, 1, 1] == 0.10
    assert v121[0, 1, 1] == pytest.approx(0.11155521, abs=1e-7)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("preset", "expected", "n_used"), [("starfm_v121", 0.15843070, 10), ("gao2006", 0.15874662, 4)]
)
def test_worked_example_two_pairs(engine: str, preset: str, expected: float, n_used: int) -> None:
    pred, used = starfm_multi(
        [C1, C1 + 0.025],
        [F1, F1 + 0.03],
        C0,
        preset=preset,
        engine=engine,
        return_diagnostic=True,
        **EXAMPLE,
    )
    assert pred[0, 1, 1] == pytest.approx(expected, abs=1e-7)
    assert used[0, 1, 1] == n_used


# ---------------------------------------------------------------------------------------------
# A slow per-pixel reference written from the spec (section 3), for invariant 8.
# ---------------------------------------------------------------------------------------------


def reference_loop(coarse, fine, c0, cfg: StarfmConfig):  # type: ignore[no-untyped-def]
    k_pairs = len(fine)
    nb, height, width = c0.shape
    h = cfg.half_window if cfg.use_spatial else 0
    a = cfg.distance_scale or cfg.half_window
    b = cfg.dn_scale
    temporal = cfg.temporal_weight is True or (cfg.temporal_weight == "auto" and k_pairs >= 2)
    sig_s = np.hypot(cfg.sigma_fine, cfg.sigma_coarse)
    sig_t = np.sqrt(2) * cfg.sigma_coarse
    sig_sum = np.hypot(sig_s, sig_t)
    out = np.full(c0.shape, np.nan)
    for band in range(nb):
        tol = [2 * np.nanstd(f[band]) / cfg.n_classes for f in fine]
        s = [np.abs(f[band] - c[band]) for f, c in zip(fine, coarse, strict=True)]
        t = [np.abs(c[band] - c0[band]) for c in coarse]
        v = [f[band] + c0[band] - c[band] for f, c in zip(fine, coarse, strict=True)]
        for r, c in itertools.product(range(height), range(width)):
            ks = [k for k in range(k_pairs) if np.isfinite(v[k][r, c])]
            if not ks:
                continue
            pick = min if cfg.center_reference == "min" else max
            sb = pick(s[k][r, c] for k in ks) + sig_s
            tb = pick(t[k][r, c] for k in ks) + sig_t
            sw = swv = 0.0
            for k in ks:
                for rr in range(max(0, r - h), min(height, r + h + 1)):
                    for cc in range(max(0, c - h), min(width, c + h + 1)):
                        if not np.isfinite(v[k][rr, cc]):
                            continue
                        centre = (rr, cc) == (r, c)
                        if not centre and not abs(fine[k][band, rr, cc] - fine[k][band, r, c]) < tol[k]:
                            continue
                        s_ok, t_ok = s[k][rr, cc] <= sb, t[k][rr, cc] <= tb
                        if not ((s_ok and t_ok) if cfg.filter_logic == "and" else (s_ok or t_ok)):
                            continue
                        d = 1 + np.hypot(rr - r, cc - c) / a
                        sh, th = b * s[k][rr, cc] + 1, (b * t[k][rr, cc] + 1 if temporal else 1)
                        if cfg.weighting == "log":
                            w = 1 / (np.log(sh + 1) * (np.log(th + 1) if temporal else 1) * d)
                        elif cfg.uncertainty_max_weight and sh * th < b * sig_sum:
                            w = 1.0
                        else:
                            w = 1 / (sh * th * d)
                        sw += w
                        swv += w * v[k][rr, cc]
            out[band, r, c] = swv / sw if sw > 0 else np.nan
            if sw == 0 and cfg.fallback == "local":
                out[band, r, c] = np.mean([v[k][r, c] for k in ks])
            if cfg.copy_on_zero_diff:
                tz = [k for k in ks if t[k][r, c] == 0]
                sz = [k for k in ks if s[k][r, c] == 0]
                if tz:
                    out[band, r, c] = np.mean([fine[k][band, r, c] for k in tz])
                elif sz:
                    out[band, r, c] = c0[band, r, c]
    return out


def random_scene(rng: np.random.Generator, shape=(2, 12, 11), n_pairs=1):  # type: ignore[no-untyped-def]
    """Fine images with class-like patches, coarse = fine + bias + noise, a changed t0."""
    base = rng.choice([0.05, 0.1, 0.2, 0.3], size=shape) + 0.01 * rng.standard_normal(shape)
    fines = [base + 0.02 * k + 0.01 * rng.standard_normal(shape) for k in range(n_pairs)]
    coarses = [f + 0.01 + 0.01 * rng.standard_normal(shape) for f in fines]
    c0 = coarses[0] + 0.03 + 0.01 * rng.standard_normal(shape)
    return coarses, fines, c0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("preset", ["starfm_v121", "gao2006"])
@pytest.mark.parametrize("n_pairs", [1, 2])
def test_matches_loop_reference(engine: str, preset: str, n_pairs: int) -> None:
    rng = np.random.default_rng(n_pairs)
    coarse, fine, c0 = random_scene(rng, n_pairs=n_pairs)
    opts = {"half_window": 3, "n_classes": 4, "out_of_range": "keep"}
    cfg = make_config(preset=preset, **opts)
    expected = reference_loop(coarse, fine, c0, cfg)
    got = starfm_multi(coarse, fine, c0, config=cfg, engine=engine)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    got32 = starfm_multi(
        [x.astype(np.float32) for x in coarse],
        [x.astype(np.float32) for x in fine],
        c0.astype(np.float32),
        config=cfg,
        engine=engine,
    )
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", ["starfm_v121", "gao2006"])
def test_log_weighting_matches_reference(preset: str) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(5))
    cfg = make_config(preset=preset, half_window=2, n_classes=4, weighting="log")
    np.testing.assert_allclose(
        starfm_multi(coarse, fine, c0, config=cfg), reference_loop(coarse, fine, c0, cfg), atol=1e-12
    )


# ---------------------------------------------------------------------------------------------
# Invariants (spec section 7)
# ---------------------------------------------------------------------------------------------

SMALL = {"half_window": 2, "distance_scale": 2.0, "n_classes": 4, "out_of_range": "keep"}
PRESETS = ["starfm_v121", "gao2006"]


@pytest.mark.parametrize("preset", PRESETS)
def test_weights_convex_and_diagnostic(preset: str) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(1), n_pairs=2)
    pred, used = starfm_multi(coarse, fine, c0, preset=preset, return_diagnostic=True, **SMALL)
    v = np.stack([f + c0 - c for f, c in zip(fine, coarse, strict=True)])
    # The prediction is a convex combination of window local values (window min/max bound it).
    from scipy.ndimage import maximum_filter, minimum_filter

    lo = minimum_filter(v.min(axis=0), size=(1, 5, 5), mode="nearest")
    hi = maximum_filter(v.max(axis=0), size=(1, 5, 5), mode="nearest")
    ok = np.isfinite(pred)
    assert ok.mean() > 0.9
    assert np.all(pred[ok] >= lo[ok] - 1e-12) and np.all(pred[ok] <= hi[ok] + 1e-12)
    assert used.dtype == np.int32 and used.max() <= 2 * 25 and used.min() >= 0


@pytest.mark.parametrize("preset", PRESETS)
def test_homogeneous_scene(preset: str) -> None:
    shape = (2, 7, 6)
    out = starfm(np.full(shape, 0.2), np.full(shape, 0.25), np.full(shape, 0.32), preset=preset)
    np.testing.assert_allclose(out, 0.25 + 0.32 - 0.2, atol=1e-12)


def test_unchanged_coarse() -> None:
    coarse, fine, _ = random_scene(np.random.default_rng(2))
    paper = starfm(coarse[0], fine[0], coarse[0], preset="gao2006", **SMALL)
    np.testing.assert_array_equal(paper, fine[0])
    v121 = starfm(coarse[0], fine[0], coarse[0], preset="starfm_v121", **SMALL)
    tol = similarity_tolerances(fine, config=make_config(**SMALL))[0]
    assert np.all(np.abs(v121 - fine[0]) < tol[:, None, None])
    assert not np.allclose(v121, fine[0])


@pytest.mark.parametrize("preset", PRESETS)
def test_uniform_coarse_change_and_global_offset(preset: str) -> None:
    coarse, fine, _ = random_scene(np.random.default_rng(3))
    c1, f1 = coarse[0], fine[0]
    p1 = starfm(c1, f1, c1 + 0.02, preset=preset, **SMALL)
    p2 = starfm(c1, f1, c1 + 0.05, preset=preset, **SMALL)
    np.testing.assert_allclose(p2 - p1, 0.03, atol=1e-12)
    c0 = c1 + 0.04 + 0.01 * np.random.default_rng(4).standard_normal(c1.shape)
    base = starfm(c1, f1, c0, preset=preset, **SMALL)
    shifted = starfm(c1 + 0.1, f1 + 0.1, c0 + 0.1, preset=preset, **SMALL)
    np.testing.assert_allclose(shifted - base, 0.1, atol=1e-12)


@pytest.mark.parametrize("preset", PRESETS)
def test_duplicate_pairs(preset: str) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(6))
    for temporal in (True, False):
        one = starfm_multi(coarse, fine, c0, preset=preset, temporal_weight=temporal, **SMALL)
        two = starfm_multi(coarse * 2, fine * 2, c0, preset=preset, temporal_weight=temporal, **SMALL)
        np.testing.assert_allclose(two, one, atol=1e-12)


@pytest.mark.parametrize("preset", PRESETS)
def test_transpose_and_rotation(preset: str) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(7))
    base = starfm(coarse[0], fine[0], c0, preset=preset, **SMALL)
    tr = starfm(*(x.transpose(0, 2, 1) for x in (coarse[0], fine[0], c0)), preset=preset, **SMALL)
    np.testing.assert_allclose(tr, base.transpose(0, 2, 1), atol=1e-12)
    rotated = (np.rot90(x, axes=(1, 2)).copy() for x in (coarse[0], fine[0], c0))
    rot = starfm(*rotated, preset=preset, **SMALL)
    np.testing.assert_allclose(rot, np.rot90(base, axes=(1, 2)), atol=1e-12)


@pytest.mark.parametrize("preset", PRESETS)
def test_no_spatial_mode(preset: str) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(8))
    out = starfm(coarse[0], fine[0], c0, preset=preset, use_spatial=False, out_of_range="keep")
    expected = fine[0] + c0 - coarse[0]
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert halo_rows(make_config(use_spatial=False)) == 0


# ---------------------------------------------------------------------------------------------
# Masks, NaN, edges, bands, blocks, class maps
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_nan_and_masks_are_equivalent(engine: str) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(9))
    mask = np.ones(c0.shape[1:], dtype=bool)
    mask[3:5, 2:6] = False
    nan_fine = fine[0].copy()
    nan_fine[:, ~mask] = np.nan
    a = starfm(coarse[0], nan_fine, c0, engine=engine, **SMALL)
    b = starfm(coarse[0], fine[0], c0, fine_t1_mask=mask, engine=engine, **SMALL)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, atol=1e-12)
    # v121: no valid pair at the centre and no candidates -> NaN (fallback "nodata").
    assert np.isnan(a[:, ~mask]).all()
    paper = starfm(coarse[0], fine[0], c0, fine_t1_mask=mask, preset="gao2006", **SMALL)
    assert np.isnan(paper[:, ~mask]).all()  # the local fallback has no valid local value either
    # Invalid neighbours are never used: changing the masked values does not change the result.
    junk = fine[0].copy()
    junk[:, ~mask] = 5.0
    c = starfm(coarse[0], junk, c0, fine_t1_mask=mask, engine=engine, **SMALL)
    np.testing.assert_allclose(c[:, mask], b[:, mask], atol=1e-12)


def test_invalid_coarse_t2_gives_nan_and_is_not_a_candidate() -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(10))
    c0_nan = c0.copy()
    c0_nan[0, 5, 5] = np.nan
    out = starfm(coarse[0], fine[0], c0_nan, **SMALL)
    assert np.isnan(out[0, 5, 5]) and np.isfinite(out[1, 5, 5])
    masked = starfm(
        coarse[0], fine[0], c0, coarse_t2_mask=np.isfinite(c0_nan), **SMALL
    )  # per-band (C, H, W) mask
    np.testing.assert_allclose(masked, out, atol=1e-12, equal_nan=True)


def test_band_mask_shape_and_per_band_sigma() -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(11))
    out = starfm(coarse[0], fine[0], c0, sigma_fine=[0.002, 0.005], **SMALL)
    assert out.shape == c0.shape
    with pytest.raises(ValueError, match="sigma_fine has 3 values"):
        starfm(coarse[0], fine[0], c0, sigma_fine=[0.002, 0.005, 0.1], **SMALL)


def test_edge_pixels_use_truncated_window() -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(12), shape=(1, 6, 6))
    cfg = make_config(**SMALL)
    out = starfm(coarse[0], fine[0], c0, config=cfg)
    np.testing.assert_allclose(out, reference_loop(coarse, fine, c0, cfg), atol=1e-12)
    assert np.isfinite(out[:, [0, -1]]).all() and np.isfinite(out[:, :, [0, -1]]).all()


@pytest.mark.parametrize("engine", ENGINES)
def test_bands_are_independent(engine: str) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(13), shape=(3, 10, 10))
    base = starfm(coarse[0], fine[0], c0, engine=engine, **SMALL)
    f2 = fine[0].copy()
    f2[1] = np.random.default_rng(0).random(f2[1].shape)
    changed = starfm(coarse[0], f2, c0, engine=engine, **SMALL)
    np.testing.assert_array_equal(changed[[0, 2]], base[[0, 2]])
    assert not np.allclose(changed[1], base[1])


@pytest.mark.parametrize("engine", ENGINES)
def test_joint_similarity_bands(engine: str) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(14), shape=(3, 9, 9))
    joint = starfm(coarse[0], fine[0], c0, engine=engine, similarity_bands=[0, 2], **SMALL)
    other = starfm(coarse[0], fine[0], c0, engine="torch", similarity_bands=[0, 2], **SMALL)
    np.testing.assert_allclose(joint, other, atol=1e-12)
    # A joint test on band b alone equals the per-band test for band b.
    single = starfm(coarse[0], fine[0], c0, engine=engine, similarity_bands=[1], **SMALL)
    per_band = starfm(coarse[0], fine[0], c0, engine=engine, **SMALL)
    np.testing.assert_allclose(single[1], per_band[1], atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_class_map_mode(engine: str) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(15))
    classes = np.zeros(c0.shape[1:], dtype=np.int32)
    classes[:, 5:] = 1
    out = starfm(coarse[0], fine[0], c0, class_map=classes, engine=engine, **SMALL)
    # One class everywhere == every valid pixel similar == a huge explicit tolerance.
    ref = starfm(coarse[0], fine[0], c0, similarity_tol=10.0, engine=engine, **SMALL)
    one_class = starfm(coarse[0], fine[0], c0, class_map=np.zeros_like(classes), engine=engine, **SMALL)
    np.testing.assert_allclose(one_class, ref, atol=1e-12)
    assert not np.allclose(out, ref)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("block_rows", [1, 3, 5, 40])
def test_blocked_equals_unblocked(engine: str, block_rows: int) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(16), shape=(2, 17, 9), n_pairs=2)
    whole = starfm_multi(coarse, fine, c0, engine=engine, block_rows=10_000, **SMALL)
    blocked = starfm_multi(coarse, fine, c0, engine=engine, block_rows=block_rows, **SMALL)
    np.testing.assert_array_equal(blocked, whole)


def test_streaming_block_api() -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(17), shape=(2, 15, 8))
    cfg = make_config(**SMALL)
    whole = starfm(coarse[0], fine[0], c0, config=cfg)
    acc = FineStdAccumulator()
    for r in range(0, 15, 4):  # stats in blocks equal the whole-image statistic
        acc.update([f[:, r : r + 4] for f in fine])
    tol = st.tolerances_from_std(acc.std, cfg)
    np.testing.assert_allclose(tol, similarity_tolerances(fine, config=cfg), rtol=1e-12)
    halo = halo_rows(cfg)
    parts = []
    for r0 in range(0, 15, 6):
        r1 = min(15, r0 + 6)
        a, b = max(0, r0 - halo), min(15, r1 + halo)
        out = starfm_block(
            [coarse[0][:, a:b]],
            [fine[0][:, a:b]],
            c0[:, a:b],
            tolerances=tol,
            halo_top=r0 - a,
            halo_bottom=b - r1,
            config=cfg,
        )
        parts.append(out)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=1e-15)


def test_out_of_range_nodata() -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(18))
    keep = starfm(coarse[0], fine[0], c0 - 0.2, **{**SMALL, "out_of_range": "keep"})
    holes = HoleCounter()
    faithful = starfm(
        coarse[0], fine[0], c0 - 0.2, holes=holes, **{**SMALL, "out_of_range": "nodata", "fill_holes": False}
    )
    outside = ~((keep > 0) & (keep < 1))
    assert (keep <= 0).any()
    np.testing.assert_array_equal(np.isnan(faithful), outside)
    np.testing.assert_array_equal(holes.out_of_range, outside.sum(axis=(1, 2)))
    assert holes.no_candidate.tolist() == [0, 0] and holes.total == outside.sum()
    # fill_holes (default): the out-of-range estimate is clipped to the closed valid range.
    filled = starfm(coarse[0], fine[0], c0 - 0.2, **{**SMALL, "out_of_range": "nodata"})
    np.testing.assert_array_equal(filled, np.clip(keep, 0.0, 1.0))


def test_float32_interface() -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(19))
    out = starfm(*(x.astype(np.float32) for x in (coarse[0], fine[0], c0)), **SMALL)
    assert out.dtype == np.float32 and out.shape == c0.shape


# ---------------------------------------------------------------------------------------------
# Options validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"preset": "nope"}, "unknown STARFM preset"),
        ({"window_size": 4}, "window_size must be a positive odd"),
        ({"window_size": 5, "half_window": 3}, "disagree"),
        ({"half_window": -1}, "half_window"),
        ({"n_classes": 0}, "n_classes"),
        ({"weighting": "linear"}, "weighting"),
        ({"filter_logic": "xor"}, "filter_logic"),
        ({"temporal_weight": "yes"}, "temporal_weight"),
        ({"fallback": "zero"}, "fallback"),
        ({"sigma_fine": -0.1}, "sigma_fine"),
        ({"valid_range": (1.0, 0.0)}, "valid_range"),
        ({"engine": "cuda"}, "engine"),
        ({"distance_scale": 0}, "distance_scale"),
        ({"windowsize": 31}, "unknown STARFM option"),
        ({"similarity_bands": [5]}, "similarity_bands"),
    ],
)
def test_option_errors(options: dict, message: str) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(20))
    with pytest.raises(ValueError, match=message):
        starfm(coarse[0], fine[0], c0, **options)


def test_input_errors() -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(21))
    with pytest.raises(ValueError, match="shape"):
        starfm(coarse[0], fine[0][:, :5], c0)
    with pytest.raises(ValueError, match="float reflectance"):
        starfm(coarse[0], (fine[0] * 1e4).astype(np.int16), c0)
    with pytest.raises(ValueError, match="K >= 1"):
        starfm_multi([], [], c0)
    with pytest.raises(ValueError, match="bool array"):
        starfm(coarse[0], fine[0], c0, fine_t1_mask=np.ones((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="class_maps"):
        starfm(coarse[0], fine[0], c0, class_map=np.zeros((2, 2), dtype=np.int32))


def test_presets_and_window_alias() -> None:
    cfg = StarfmConfig.from_preset("gao2006", window_size=31)
    assert cfg.half_window == 15 and cfg.filter_logic == "and" and cfg.copy_on_zero_diff
    default = make_config()
    assert default.preset == "starfm_v121" and default.half_window == 25
    assert default.n_classes == 40 and default.fallback == "nodata"
    assert make_config(default, n_classes=4).n_classes == 4


def test_presets_are_complete() -> None:
    # Every preset sets every switch that defines it, so none inherits another's window or units.
    keys = {frozenset(preset) for preset in st.PRESETS.values()}
    assert len(keys) == 1
    for name in st.PRESETS:
        assert make_config(preset=name).preset == name
    # A preset given with a config applies the preset's switches to it.
    cfg = make_config(make_config(preset="gao2006"), preset="starfm4py", n_classes=8)
    assert cfg.preset == "starfm4py" and cfg.half_window == 15 and cfg.n_classes == 8
    assert cfg.filter_logic == "spectral" and cfg.dn_scale == 1.0


# ---------------------------------------------------------------------------------------------
# The starfm4py preset (spec [S4P]: sections 3.3, 5, 6.1)
# ---------------------------------------------------------------------------------------------


def starfm4py_loop(  # type: ignore[no-untyped-def]
    coarse, fine, c0, *, half_window, n_classes=4, sigma=0.03, a=150.0, b=1.0, temp=False, zeros=True
):
    """Per-pixel starfm4py as STARFM.md describes it (one pair, all inputs valid), plain loops.

    Zero padding; tolerance 2 * std / m with the population std of the window's non-zero fine
    values; strict similarity; spectral filter S <= S(x) + sqrt(2) sigma (and T if ``temp``);
    weight 1 / ((B S + 1)(B T + 1)(1 + d / a)); centre-only prediction when S(x) or T(x) is 0.
    ``zeros=False`` drops the padding from the candidates (truncated window).
    """
    h = half_window
    side = 2 * h + 1
    dy, dx = np.mgrid[-h : h + 1, -h : h + 1]
    dist = 1 + np.hypot(dy, dx) / a
    bound = np.sqrt(sigma**2 + sigma**2)
    out = np.full(c0.shape, np.nan)
    for band in range(c0.shape[0]):
        f, c1, c2, inside = (
            np.pad(x, h) for x in (fine[band], coarse[band], c0[band], np.ones(c0.shape[1:]))
        )
        for r, c in itertools.product(range(c0.shape[1]), range(c0.shape[2])):
            win = (slice(r, r + side), slice(c, c + side))
            wf, wc1, wc2 = f[win], c1[win], c2[win]
            s, t, v = np.abs(wf - wc1), np.abs(wc1 - wc2), wf + wc2 - wc1
            if s[h, h] == 0 or t[h, h] == 0:
                out[band, r, c] = v[h, h]
                continue
            tol = 2 * np.std(wf[wf != 0]) / n_classes
            similar = np.abs(wf - wf[h, h]) < tol
            similar[h, h] = True
            keep = similar & (s <= s[h, h] + bound)
            if temp:
                keep &= t <= t[h, h] + bound
            if not zeros:
                keep &= inside[win] > 0
            w = np.where(keep, 1 / ((b * s + 1) * (b * t + 1) * dist), 0.0)
            out[band, r, c] = (w * v).sum() / w.sum()
    return out


def starfm4py_scene(seed: int, shape=(2, 7, 7)):  # type: ignore[no-untyped-def]
    """A random scene with dark pixels at the edges (the padding defect) and zero differences."""
    coarse, fine, c0 = random_scene(np.random.default_rng(seed), shape=shape)
    c1, f1 = coarse[0], fine[0]
    f1[:, 0, :3] = [0.01, 0.015, 0.02]  # dark pixels at the top edge: padded zeros become similar
    f1[:, -2:, -1] = 0.012
    c1[:, 3, 3] = f1[:, 3, 3]  # S = 0 at the centre: centre-only prediction
    c0[:, 2, 4] = c1[:, 2, 4]  # T = 0
    return c1, f1, c0


@pytest.mark.parametrize("engine", ENGINES)
def test_starfm4py_hand_example(engine: str) -> None:
    # 5 x 5, one band, 3 x 3 window; target (0, 0): its window holds 4 scene pixels + 5 padded zeros.
    f1, c1, c0 = np.full((5, 5), 0.3), np.full((5, 5), 0.32), np.full((5, 5), 0.35)
    f1[:2, :2] = [[0.010, 0.012], [0.011, 0.150]]
    c1[:2, :2] = [[0.020, 0.030], [0.070, 0.140]]
    c0[:2, :2] = [[0.050, 0.045], [0.080, 0.170]]
    # std of the non-zero window values {0.010, 0.012, 0.011, 0.150} = 0.0601929, so tol = 2 std / 4
    # = 0.0300964: (0, 1), (1, 0) and the five zeros are similar to 0.010, (1, 1) is not. Spectral
    # bound S(x) + sqrt(2) * 0.03 = 0.010 + 0.0424264: (1, 0) has S = 0.059 and is filtered out.
    assert np.std([0.010, 0.012, 0.011, 0.150]) / 2 == pytest.approx(0.0300964, abs=1e-7)
    d1, d2 = 1 + 1 / 150, 1 + np.sqrt(2) / 150  # D of edge / corner neighbours (A = 150 px)
    w_centre = 1 / ((0.010 + 1) * (0.030 + 1) * 1)  # S, T of (0, 0); local value 0.040
    w_right = 1 / ((0.018 + 1) * (0.015 + 1) * d1)  # S, T of (0, 1); local value 0.027
    w_zeros = 2 / d1 + 3 / d2  # padded zeros: S = T = 0, local value 0
    expected_zeros = (0.040 * w_centre + 0.027 * w_right) / (w_centre + w_right + w_zeros)
    expected_truncated = (0.040 * w_centre + 0.027 * w_right) / (w_centre + w_right)
    assert expected_zeros == pytest.approx(0.0093597, abs=1e-7)  # pulled to 0 by the padding
    assert expected_truncated == pytest.approx(0.0334996, abs=1e-7)
    args = (c1[None], f1[None], c0[None])
    out = starfm(*args, preset="starfm4py", window_size=3, engine=engine)
    assert out[0, 0, 0] == pytest.approx(expected_zeros, abs=1e-9)
    out = starfm(*args, preset="starfm4py", window_size=3, border="truncate", engine=engine)
    assert out[0, 0, 0] == pytest.approx(expected_truncated, abs=1e-9)
    # Centre rule: S(x) = 0 or T(x) = 0 gives the centre's local value F1 + C2 - C1 alone.
    c1[2, 2], c0[3, 3] = f1[2, 2], c1[3, 3]
    out = starfm(c1[None], f1[None], c0[None], preset="starfm4py", window_size=3, engine=engine)
    assert out[0, 2, 2] == c0[2, 2] and out[0, 3, 3] == f1[3, 3]
    np.testing.assert_allclose(out, starfm4py_loop(c1[None], f1[None], c0[None], half_window=1), atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("window", [3, 5, 31])
def test_starfm4py_matches_loop(engine: str, window: int) -> None:
    c1, f1, c0 = starfm4py_scene(window)
    expected = starfm4py_loop(c1, f1, c0, half_window=window // 2)
    got = starfm(c1, f1, c0, preset="starfm4py", window_size=window, engine=engine)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    got32 = starfm(*(x.astype(np.float32) for x in (c1, f1, c0)), preset="starfm4py", window_size=window)
    np.testing.assert_allclose(got32, expected, rtol=0, atol=1e-6)
    # Its `temp` flag (S and T filter) and the truncated window (no padding defect).
    for opts, loop in (({"filter_logic": "and"}, {"temp": True}), ({"border": "truncate"}, {"zeros": False})):
        got = starfm(c1, f1, c0, preset="starfm4py", window_size=window, engine=engine, **opts)
        expected = starfm4py_loop(c1, f1, c0, half_window=window // 2, **loop)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_starfm4py_units_and_padding_defect() -> None:
    c1, f1, c0 = starfm4py_scene(40, shape=(1, 7, 7))
    # starfm4py fed DN x 10000 (its 0.03 uncertainty then is 0.03 DN) == our preset with B = 1e4.
    dn = starfm4py_loop(c1 * 1e4, f1 * 1e4, c0 * 1e4, half_window=2) / 1e4
    ours = starfm(
        c1, f1, c0, preset="starfm4py", window_size=5, dn_scale=1e4, sigma_fine=3e-6, sigma_coarse=3e-6
    )
    np.testing.assert_allclose(ours, dn, atol=1e-12)
    reflectance = starfm(c1, f1, c0, preset="starfm4py", window_size=5)
    assert np.abs(ours - reflectance).max() > 1e-3  # the "+1" means different things in the two units
    # The defect: dark edge pixels accept padded zeros (local value 0); interior pixels do not see them.
    truncated = starfm(c1, f1, c0, preset="starfm4py", window_size=5, border="truncate")
    assert reflectance[0, 0, 0] < truncated[0, 0, 0] - 0.005
    np.testing.assert_array_equal(reflectance[:, 2:-2, 2:-2], truncated[:, 2:-2, 2:-2])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("block_rows", [1, 4])
def test_starfm4py_blocked_and_duplicate_pairs(engine: str, block_rows: int) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(41), shape=(2, 13, 8))
    opts = {"preset": "starfm4py", "window_size": 5, "engine": engine}
    whole = starfm_multi(coarse, fine, c0, block_rows=100, **opts)
    np.testing.assert_array_equal(starfm_multi(coarse, fine, c0, block_rows=block_rows, **opts), whole)
    # K = 2 pools the pairs; a duplicated pair changes nothing (T is always in its weight).
    two = starfm_multi(coarse * 2, fine * 2, c0, block_rows=block_rows, **opts)
    np.testing.assert_allclose(two, whole, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# No silent holes (fill_holes) and the hole counter
# ---------------------------------------------------------------------------------------------


def test_fill_holes_without_candidates() -> None:
    # Two pairs, "and" filter, sigma 0, no window: each centre fails the other pair's bound, so no
    # pixel has a candidate (spec 3.9). Pixel 1 is pixel 0 shifted by -0.3 (local value < 0).
    f = np.array([[[0.20, -0.10]]]), np.array([[[0.22, -0.08]]])
    c = np.array([[[0.17, -0.13]]]), np.array([[[0.21, -0.09]]])
    c0 = np.array([[[0.18, -0.12]]])
    opts = {
        "preset": "gao2006", "fallback": "nodata", "copy_on_zero_diff": False, "use_spatial": False,
        "sigma_fine": 0.0, "sigma_coarse": 0.0, "out_of_range": "nodata",
    }  # fmt: skip
    holes = HoleCounter()
    faithful = starfm_multi(c, f, c0, fill_holes=False, holes=holes, **opts)
    assert np.isnan(faithful).all() and holes.no_candidate.tolist() == [2] and holes.total == 2
    holes = HoleCounter()
    filled = starfm_multi(c, f, c0, holes=holes, **opts)
    # Mean local value F_k + C_0 - C_k over the pairs: (0.21 + 0.19) / 2, then -0.10 clipped to 0.
    np.testing.assert_allclose(filled[0, 0], [0.20, 0.0], atol=1e-12)
    assert holes.no_candidate.tolist() == [2]
    kept = starfm_multi(c, f, c0, **{**opts, "out_of_range": "keep"})
    np.testing.assert_allclose(kept[0, 0], [0.20, -0.10], atol=1e-12)
    # Invalid inputs stay NaN: no pair valid at the pixel, or C_0 invalid.
    c0_nan = c0.copy()
    c0_nan[0, 0, 0] = np.nan
    out = starfm_multi(c, f, c0_nan, **opts)
    assert np.isnan(out[0, 0, 0]) and np.isfinite(out[0, 0, 1])


CIA = DATASETS["cia-crop"]


@pytest.fixture(scope="module")
def cia_1017_1102() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIA crop (int16 x 1e4): pair 2001-10-17, coarse 2001-11-02, truth 2001-11-02."""
    names = ("coarse_20011017", "fine_20011017", "coarse_20011102", "fine_20011102")
    c1, f1, c2, truth = (raster.read(CIA / f"{name}.tif", scale=1e-4).data for name in names)
    return c1, f1, c2, truth


def test_cia_crop_default_preset_leaves_no_holes(cia_1017_1102: tuple[np.ndarray, ...]) -> None:
    c1, f1, c2, truth = cia_1017_1102
    valid = np.isfinite(c1) & np.isfinite(f1) & np.isfinite(c2)
    holes = HoleCounter()
    filled = starfm(c1, f1, c2, holes=holes)
    assert make_config().preset == "starfm_v121" and valid.all()
    assert not np.isnan(filled[valid]).any()
    faithful = starfm(c1, f1, c2, fill_holes=False)
    n_nan = np.isnan(faithful).sum(axis=(1, 2))
    # Measured: 0, 0, 0, 60, 769, 762 holes (predictions <= 0 where the SWIR fine image is dark).
    assert n_nan[3:].min() > 0
    np.testing.assert_array_equal(n_nan, holes.no_candidate + holes.out_of_range)
    kept = ~np.isnan(faithful)
    np.testing.assert_array_equal(filled[kept], faithful[kept])
    # The filled values are the predictions bounded to [0, 1]: no worse than leaving them out.
    err_filled = np.abs(filled - truth)[~kept]
    assert np.all((filled[~kept] == 0.0) | (filled[~kept] == 1.0)) and np.nanmean(err_filled) < 0.05


# ---------------------------------------------------------------------------------------------
# Streaming entry point: prepare(SceneSource) -> Prediction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["starfm_v121", "gao2006", "starfm4py"])
@pytest.mark.parametrize("n_pairs", [1, 2])
def test_prepare_equals_starfm_multi(monkeypatch: pytest.MonkeyPatch, preset: str, n_pairs: int) -> None:
    monkeypatch.setattr(st, "_STATS_ROWS", 6)  # several blocks in the statistics pass too
    coarse, fine, c0 = random_scene(np.random.default_rng(50 + n_pairs), shape=(2, 23, 9), n_pairs=n_pairs)
    coarse, fine = [x.astype(np.float32) for x in coarse], [x.astype(np.float32) for x in fine]
    c0 = (c0 - 0.12).astype(np.float32)  # some predictions fall below 0: holes to fill for v121
    fine[0][1, 4, 2] = np.nan
    c0[0, 10, 3] = np.nan
    opts = {"preset": preset, "window_size": 5, "n_classes": 4}
    source = ArraySource(list(zip(coarse, fine, strict=True)), c0)
    prediction = prepare(source, block_rows=4, **opts)
    assert prediction.row_starts(23, 9) == [0, 4, 8, 12, 16, 20] and prediction.halo == 2
    got = predict_scene(prediction, source)
    holes = HoleCounter()
    expected = starfm_multi(coarse, fine, c0, block_rows=7, holes=holes, **opts)
    assert isinstance(expected, np.ndarray) and expected.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(prediction.holes.no_candidate, holes.no_candidate)
    np.testing.assert_array_equal(prediction.holes.out_of_range, holes.out_of_range)
    assert (holes.total > 0) == (preset == "starfm_v121")
    assert (prediction.tolerances is None) == (preset == "starfm4py")
    # Rows predicted in any range equal the whole scene's.
    part = np.concatenate([v for _, v in prediction.iter_rows(source, 8, 17)], axis=1)
    np.testing.assert_array_equal(part, expected[:, 8:17])


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"preset": "starfm5"}, r"preset='starfm5'.*starfm4py"),
        ({"window_size": 30}, r"window_size.*odd.*30"),
        ({"half_window": 2.5}, r"half_window.*integer >= 0.*2\.5"),
        ({"n_classes": 0}, r"n_classes.*>= 1.*0"),
        ({"fill_holes": "yes"}, r"fill_holes='yes'.*True or False"),
        ({"border": "mirror"}, r"border='mirror'.*'truncate', 'zeros'"),
        ({"similarity_std": "window"}, r"similarity_std='window'.*'global', 'local'"),
        ({"filter_logic": "xor"}, r"filter_logic='xor'.*'spectral'"),
        ({"engine": "cuda"}, r"engine='cuda'.*'numba'"),
        ({"block_rows": 0}, r"block_rows.*>= 1.*0"),
        ({"valid_range": 5}, r"valid_range=5"),
        ({"windowsize": 31}, r"windowsize=31.*valid options.*window_size"),
        ({"sigma_fine": [0.01, 0.02, 0.03]}, r"sigma_fine has 3 values.*2 bands"),
    ],
)
def test_prepare_option_errors(options: dict, pattern: str) -> None:
    coarse, fine, c0 = random_scene(np.random.default_rng(60))
    with pytest.raises(ValueError, match=pattern):
        prepare(ArraySource([(coarse[0], fine[0])], c0), **options)


def test_option_help() -> None:
    fields = {f.name for f in dataclasses.fields(StarfmConfig)}
    assert set(OPTION_HELP) == fields | {"window_size"}
    assert all(text and "\n" not in text for text in OPTION_HELP.values())
