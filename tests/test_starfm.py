"""Tests of STARFM against shared/spec/STARFM.md: the worked example (7.1) and invariants (7)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from stfusion.baselines import starfm as st
from stfusion.baselines.starfm import (
    FineStdAccumulator,
    StarfmConfig,
    halo_rows,
    make_config,
    similarity_tolerances,
    starfm,
    starfm_block,
    starfm_multi,
)

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
    nodata = starfm(coarse[0], fine[0], c0 - 0.2, **{**SMALL, "out_of_range": "nodata"})
    assert (keep <= 0).any()
    np.testing.assert_array_equal(np.isnan(nodata), ~((keep > 0) & (keep < 1)))


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
