"""Tests of ESTARFM against docs/specs/ESTARFM.md: worked example (8.1), invariants (8), sample (7).

``reference_estarfm`` below is a plain per-pixel float64 implementation written straight from the
spec (two-pass regression, scipy's F distribution for the p-value): the oracle of invariant 8.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from stfusion.baselines import estarfm as es
from stfusion.baselines.estarfm import (
    OPTION_HELP,
    EstarfmConfig,
    FineStdAccumulator,
    estarfm,
    estarfm_block,
    halo_rows,
    prepare,
    scene_tolerances,
)
from stfusion.blocks import ArraySource, predict_scene

# V != 1 counts of section 7 (20 / 17 626 / 33 994) sit on exact ties of the 0.02 change gate: on the
# sample 13 red and 1 NIR pixels have |mean C1 - mean C3| within 1e-9 of 0.02 (exactly 0.02 in DN), decided
# by rounding; this implementation and the loop reference above both count 20 / 17 620 / 33 995.
SAMPLE_V_COUNT_ATOL = 10
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "stfusion" / "sample" / "datasets" / "estarfm-site"


# --------------------------------------------------------------------------------------------
# Loop reference (spec section 3, literally)
# --------------------------------------------------------------------------------------------


def _fit_reference(
    c1s: np.ndarray,
    c3s: np.ndarray,
    f1s: np.ndarray,
    f3s: np.ndarray,
    cfg: EstarfmConfig,
    trace: dict[str, Any] | None = None,
) -> float:
    """V of one band (section 3.5) from the similar pixels' values at both dates."""
    x = np.concatenate([c1s, c3s])
    y = np.concatenate([f1s, f3s])
    n = x.size
    if cfg.v_gate == "change" and not abs(c1s.mean() - c3s.mean()) >= cfg.gate_threshold:
        return 1.0
    if cfg.v_gate == "std" and not (n > 1 and np.std(x, ddof=1) >= cfg.gate_threshold):
        return 1.0
    if n < 3:
        return 1.0
    sxx = float(np.sum((x - x.mean()) ** 2))
    syy = float(np.sum((y - y.mean()) ** 2))
    sxy = float(np.sum((x - x.mean()) * (y - y.mean())))
    if sxx == 0:
        return 1.0
    slope = sxy / sxx
    r2 = sxy * sxy / (sxx * syy) if syy > 0 else 0.0
    f_stat = math.inf if r2 >= 1 else (n - 2) * r2 / (1 - r2)
    p = 0.0 if r2 >= 1 else float(stats.f.sf(f_stat, 1, n - 2))
    if trace is not None:
        trace.update(slope=slope, r2=r2, F=f_stat, df=n - 2)
    in_range = cfg.v_slope_range is None or cfg.v_slope_range[0] < slope <= cfg.v_slope_range[1]
    return slope if (p <= cfg.v_alpha and in_range) else 1.0


def reference_estarfm(
    c1: np.ndarray,
    f1: np.ndarray,
    c3: np.ndarray,
    f3: np.ndarray,
    c2: np.ndarray,
    cfg: EstarfmConfig,
    tol: np.ndarray | None = None,
    trace_pixel: tuple[int, int] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(prediction, diagnostics) by loops over target pixels; float64.

    The diagnostics also hold "tol", "R" and, for ``trace_pixel``, "trace": S, W, delta, T, a (without
    V) and the regression figures of each band.
    """
    c1, f1, c3, f3, c2 = (np.asarray(a, dtype=np.float64) for a in (c1, f1, c3, f3, c2))
    nb, height, width = c2.shape
    h = cfg.half_window
    valid = np.isfinite(np.stack([c1, f1, c3, f3, c2])).all(axis=(0, 1))
    if tol is None:
        tol = np.array(
            [[np.std(f[b][valid], ddof=cfg.tol_ddof) for b in range(nb)] for f in (f1, f3)]
        ) * 2.0 / cfg.n_classes  # fmt: skip
    # R image (eqs. 3-4)
    corr = np.full((height, width), cfg.r_nan)
    for r in range(height):
        for c in range(width):
            if nb == 1:
                with np.errstate(all="ignore"):
                    value = 1 - 0.5 * (
                        abs(f1[0, r, c] - c1[0, r, c]) / abs(f1[0, r, c] + c1[0, r, c])
                        + abs(f3[0, r, c] - c3[0, r, c]) / abs(f3[0, r, c] + c3[0, r, c])
                    )
                corr[r, c] = value if np.isfinite(value) else cfg.r_nan
            else:
                fv = np.concatenate([f1[:, r, c], f3[:, r, c]])
                cv = np.concatenate([c1[:, r, c], c3[:, r, c]])
                df, dc = fv - fv.mean(), cv - cv.mean()
                den = math.sqrt(float(np.sum(df * df) * np.sum(dc * dc)))
                corr[r, c] = min(float(np.sum(df * dc)) / den, 1.0) if den > 0 else cfg.r_nan
    pred = np.full((nb, height, width), np.nan)
    diag = {
        "n_similar": np.zeros((height, width), int),
        "V": np.full((nb, height, width), np.nan),
        "T1": np.full((nb, height, width), np.nan),
        "fallback": np.zeros((height, width), bool),
        "tol": tol,
        "R": corr,
    }

    def similar_to(r: int, c: int, rr: np.ndarray, cc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask, key) of pixels (rr, cc) for target (r, c): test (2) and the [RF] key."""
        ok = valid[rr, cc].copy()
        key = np.zeros(rr.shape)
        for f, t in ((f1, tol[0]), (f3, tol[1])):
            for b in range(nb):
                diff = np.abs(f[b, rr, cc] - f[b, r, c])
                ok &= (diff < t[b]) if cfg.similar_strict else (diff <= t[b])
                key += diff / t[b] if t[b] > 0 else 0.0
        return ok, key

    for r in range(height):
        for c in range(width):
            if not valid[r, c]:
                continue
            rows = np.arange(max(0, r - h), min(height, r + h + 1))
            cols = np.arange(max(0, c - h), min(width, c + h + 1))
            rr, cc = (a.ravel() for a in np.meshgrid(rows, cols, indexing="ij"))  # raster order
            ok, key = similar_to(r, c, rr, cc)
            sel = np.flatnonzero(ok)
            if cfg.max_similar is not None and sel.size > cfg.max_similar:
                sel = sel[np.argsort(key[sel], kind="stable")[: cfg.max_similar]]
            sr, sc = rr[sel], cc[sel]
            wv = valid[rr, cc]
            t1 = np.empty(nb)
            d1 = np.empty(nb)
            d3 = np.empty(nb)
            for b in range(nb):
                mean2 = c2[b, rr, cc][wv].mean()
                d1[b] = mean2 - c1[b, rr, cc][wv].mean()
                d3[b] = mean2 - c3[b, rr, cc][wv].mean()
                i1, i3 = 1 / (abs(d1[b]) + cfg.temporal_eps), 1 / (abs(d3[b]) + cfg.temporal_eps)
                t1[b] = i1 / (i1 + i3)
            diag["T1"][:, r, c] = t1
            diag["n_similar"][r, c] = sel.size
            trace: dict[str, Any] | None = None
            if (r, c) == trace_pixel:
                trace = {"S": list(zip(sr.tolist(), sc.tolist(), strict=True)), "delta": (d1, d3), "T1": t1}
                trace.update(a1=np.zeros(nb), a3=np.zeros(nb), fit=[{} for _ in range(nb)])
                diag["trace"] = trace
            if sel.size < cfg.min_similar:
                diag["fallback"][r, c] = True
                diag["V"][:, r, c] = 1.0
                for b in range(nb):
                    if cfg.fallback == "change":
                        pred[b, r, c] = t1[b] * (f1[b, r, c] + d1[b]) + (1 - t1[b]) * (f3[b, r, c] + d3[b])
                    else:
                        pred[b, r, c] = t1[b] * f1[b, r, c] + (1 - t1[b]) * f3[b, r, c]
                continue
            rs = corr[sr, sc]
            dist = 1 + np.hypot(sr - r, sc - c) / h
            perfect = rs >= 1 - 1e-12
            if cfg.r_one_rule and perfect.any():
                weights = perfect / perfect.sum()
            else:
                omega = 1 / ((1 - rs) * dist + cfg.weight_eps)
                weights = omega / omega.sum()
            if trace is not None:
                trace["W"] = weights
            for b in range(nb):
                ch1 = c2[b, sr, sc] - c1[b, sr, sc]
                ch3 = c2[b, sr, sc] - c3[b, sr, sc]
                if cfg.v_scope == "window":
                    fit_trace = None if trace is None else trace["fit"][b]
                    v = _fit_reference(
                        c1[b, sr, sc], c3[b, sr, sc], f1[b, sr, sc], f3[b, sr, sc], cfg, fit_trace
                    )
                    v_px = np.full(sel.size, v)
                else:
                    s = cfg.coarse_factor
                    assert s is not None
                    cells = {(y // s, x // s) for y, x in zip(sr, sc, strict=True)}
                    v_cell = {}
                    for cy, cx in cells:
                        yy, xx = np.meshgrid(
                            np.arange(cy * s, min(height, cy * s + s)),
                            np.arange(cx * s, min(width, cx * s + s)),
                            indexing="ij",
                        )
                        m, _ = similar_to(r, c, yy.ravel(), xx.ravel())
                        py, px = yy.ravel()[m], xx.ravel()[m]
                        v_cell[cy, cx] = _fit_reference(
                            c1[b, py, px], c3[b, py, px], f1[b, py, px], f3[b, py, px], cfg
                        )
                    v_px = np.array([v_cell[y // s, x // s] for y, x in zip(sr, sc, strict=True)])
                if trace is not None:
                    trace["a1"][b] = np.sum(weights * ch1)
                    trace["a3"][b] = np.sum(weights * ch3)
                a1 = np.sum(weights * v_px * ch1)
                a3 = np.sum(weights * v_px * ch3)
                value = t1[b] * (f1[b, r, c] + a1) + (1 - t1[b]) * (f3[b, r, c] + a3)
                lo, hi = cfg.valid_range
                if cfg.range_fix and (value <= lo or value >= hi):
                    value = t1[b] * np.sum(weights * f1[b, sr, sc]) + (1 - t1[b]) * np.sum(
                        weights * f3[b, sr, sc]
                    )
                pred[b, r, c] = value
                diag["V"][b, r, c] = np.sum(weights * v_px)
    return pred, diag


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


def _image(red: list[float], nir: list[float]) -> np.ndarray:
    return np.stack([np.array(red).reshape(3, 3), np.array(nir).reshape(3, 3)])


# Worked example, spec section 8.1: nb = 2 (red, NIR), 3 x 3, h = 1, m = 2, target (1, 1).
EX_F1 = _image(
    [0.050, 0.052, 0.120, 0.048, 0.050, 0.055, 0.047, 0.130, 0.051],
    [0.200, 0.210, 0.150, 0.220, 0.210, 0.200, 0.190, 0.140, 0.230],
)
EX_F3 = _image(
    [0.044, 0.047, 0.118, 0.041, 0.045, 0.049, 0.042, 0.127, 0.044],
    [0.262, 0.270, 0.160, 0.285, 0.268, 0.262, 0.251, 0.152, 0.297],
)
EX_C1 = _image(
    [0.056, 0.057, 0.118, 0.053, 0.055, 0.060, 0.052, 0.125, 0.057],
    [0.200, 0.208, 0.160, 0.216, 0.208, 0.200, 0.192, 0.152, 0.224],
)
EX_C3 = _image(
    [0.050, 0.053, 0.116, 0.047, 0.050, 0.055, 0.048, 0.122, 0.050],
    [0.250, 0.256, 0.168, 0.268, 0.254, 0.250, 0.241, 0.162, 0.278],
)
EX_C2 = _image(
    [0.052, 0.055, 0.100, 0.049, 0.052, 0.057, 0.050, 0.105, 0.053],
    [0.232, 0.238, 0.200, 0.249, 0.237, 0.232, 0.223, 0.190, 0.257],
)
EX_ARGS = (
    EX_C1,
    EX_F1,
    EX_C3,
    EX_F3,
    EX_C2,
)  # estarfm's order: coarse_t1, fine_t1, coarse_t3, fine_t3, coarse_t2


def smooth_scene(seed: int, bands: int = 3, size: int = 24) -> tuple[np.ndarray, ...]:
    """(coarse_t1, fine_t1, coarse_t3, fine_t3, coarse_t2) float64 reflectance: smooth random fields.

    Fine = land-cover-like smooth field + texture; coarse = a blurred, biased copy; t3 adds a smooth
    change (strong in the last band, like NIR green-up), t2 lies part-way (or beyond, per band).
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)

    def field(sigma: float, amp: float) -> np.ndarray:
        out = np.stack([gaussian_filter(rng.standard_normal((size, size)), sigma) for _ in range(bands)])
        return amp * out / out.std(axis=(1, 2), keepdims=True)

    base = 0.05 + 0.1 * np.arange(bands)[:, None, None] / max(bands - 1, 1)
    f1 = base + field(2.0, 0.02) + field(0.7, 0.004)
    change = 0.01 + 0.03 * (np.arange(bands) == bands - 1)[:, None, None] + field(3.0, 0.008)
    f3 = f1 + change + field(0.7, 0.002)
    frac = rng.uniform(0.2, 1.3, size=bands)[:, None, None]
    f2 = f1 + frac * change

    def coarse(f: np.ndarray) -> np.ndarray:
        return np.stack([gaussian_filter(b, 2.5) for b in f]) + 0.004 + field(1.5, 0.001)

    return coarse(f1), f1, coarse(f3), f3, coarse(f2)


def _config(preset: str, **options: Any) -> EstarfmConfig:
    return EstarfmConfig.from_preset(preset, **options)


PRESET_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "idl": ("idl", {}),
    "idl_legacy": ("idl_legacy", {}),
    "paper_window": ("paper", {"v_scope": "window"}),
    "paper_cell": ("paper", {"coarse_factor": 4}),
    "idl_fast": ("idl", {"max_similar": 8}),
}


def _assert_same(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=0, atol=atol, equal_nan=True)


# --------------------------------------------------------------------------------------------
# Section 8.1: the worked example
# --------------------------------------------------------------------------------------------


def test_worked_example_idl_intermediates() -> None:
    cfg = _config("idl", half_window=1, n_classes=2)
    tol = scene_tolerances(ArraySource([(EX_C1, EX_F1), (EX_C3, EX_F3)], EX_C2), cfg)
    np.testing.assert_allclose(tol.ravel(), [0.0330568, 0.0304594, 0.0345197, 0.0523755], atol=6e-8)
    corr = es._correlation(EX_F1, EX_C1, EX_F3, EX_C3, cfg.r_nan)
    expected_r = [
        [0.999513, 0.999557, 0.997217],
        [0.999600, 0.999527, 0.999480],
        [0.999378, 0.969649, 0.999687],
    ]
    np.testing.assert_allclose(corr, expected_r, atol=6e-7)

    _, ref = reference_estarfm(*EX_ARGS, cfg, trace_pixel=(1, 1))
    trace = ref["trace"]
    assert trace["S"] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 2)]  # all but (0,2), (2,1)
    np.testing.assert_allclose(
        trace["W"], [0.102564, 0.136079, 0.150658, 0.254946, 0.115981, 0.080269, 0.159503], atol=6e-7
    )
    np.testing.assert_allclose(trace["delta"][0], [-0.006667, 0.033111], atol=6e-7)  # delta_1 red, NIR
    np.testing.assert_allclose(trace["delta"][1], [-0.002, -0.007667], atol=6e-7)  # delta_3
    np.testing.assert_allclose(trace["T1"], [0.230769, 0.188011], atol=6e-7)
    np.testing.assert_allclose(trace["a1"], [-0.00319638, 0.03119290], atol=6e-9)
    np.testing.assert_allclose(trace["a3"], [0.00215950, -0.01837422], atol=6e-9)
    nir = trace["fit"][1]
    assert nir["slope"] == pytest.approx(1.246849, abs=6e-7)
    assert nir["r2"] == pytest.approx(0.999947, abs=6e-7)
    assert nir["F"] == pytest.approx(226927, rel=5e-6)
    assert nir["df"] == 12
    assert trace["fit"][0] == {}  # red: |mean change| 0.005286 < 0.02, gated out

    pred, diag = estarfm(*EX_ARGS, config=cfg, return_diagnostics=True)
    assert isinstance(diag, es.EstarfmDiagnostics)
    np.testing.assert_allclose(pred[:, 1, 1], [0.04707738, 0.24580507], atol=1e-8)
    np.testing.assert_allclose(diag.V[:, 1, 1], [1.0, 1.246849], atol=6e-7)
    np.testing.assert_allclose(diag.T1[:, 1, 1], [0.230769, 0.188011], atol=6e-7)
    assert diag.n_similar[1, 1] == 7 and not diag.fallback[1, 1]
    _assert_same(pred, ref_pred := reference_estarfm(*EX_ARGS, cfg)[0], 1e-12)
    assert ref_pred[0, 1, 1] == pytest.approx(0.04707738, abs=1e-8)


def test_worked_example_paper_window_intermediates() -> None:
    cfg = _config("paper", half_window=1, n_classes=2, v_scope="window")
    tol = scene_tolerances(ArraySource([(EX_C1, EX_F1), (EX_C3, EX_F3)], EX_C2), cfg)
    np.testing.assert_allclose(tol.ravel(), [0.0311662, 0.0287174, 0.0325455, 0.0493801], atol=6e-8)
    _, ref = reference_estarfm(*EX_ARGS, cfg, trace_pixel=(1, 1))
    red = ref["trace"]["fit"][0]
    assert red["slope"] == pytest.approx(1.045854, abs=6e-7)
    assert red["r2"] == pytest.approx(0.985371, abs=6e-7)
    assert red["F"] == pytest.approx(808.3, abs=0.06)
    assert len(ref["trace"]["S"]) == 7


@pytest.mark.parametrize(
    ("preset", "options", "expected", "n_similar", "fallback"),
    [
        ("idl", {}, (0.04707738, 0.24580507), 7, False),
        ("paper", {"v_scope": "window"}, (0.04711972, 0.24580508), 7, False),
        ("idl_legacy", {}, (0.04711972, 0.24580507), 7, False),
        ("idl", {"n_classes": 8}, (0.04307692, 0.25709537), 2, True),
        ("idl", {"n_classes": 8, "fallback": "centre"}, (0.04615385, 0.25709537), 2, True),
        ("paper", {"v_scope": "window", "n_classes": 8}, (0.04710628, 0.24634098), 2, False),
    ],
)
def test_worked_example_predictions(
    preset: str, options: dict[str, Any], expected: tuple[float, float], n_similar: int, fallback: bool
) -> None:
    options = {"half_window": 1, "n_classes": 2, **options}
    pred, diag = estarfm(*EX_ARGS, preset=preset, return_diagnostics=True, **options)
    assert pred.dtype == np.float64
    np.testing.assert_allclose(pred[:, 1, 1], expected, atol=1e-8)
    assert diag.n_similar[1, 1] == n_similar
    assert diag.fallback[1, 1] == fallback
    ref, ref_diag = reference_estarfm(*EX_ARGS, _config(preset, **options), trace_pixel=(1, 1))
    np.testing.assert_allclose(ref[:, 1, 1], expected, atol=1e-8)
    if preset == "paper" and options["n_classes"] == 8:
        trace = ref_diag["trace"]
        assert trace["S"] == [(0, 1), (1, 1)]
        np.testing.assert_allclose(trace["W"], [0.347983, 0.652017], atol=6e-7)
        np.testing.assert_allclose(diag.V[:, 1, 1], [1.028037, 1.255088], atol=6e-7)


# --------------------------------------------------------------------------------------------
# Section 8: invariants on small random scenes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(PRESET_CASES))
def test_invariant8_matches_loop_reference(case: str) -> None:
    preset, options = PRESET_CASES[case]
    cfg = _config(preset, half_window=3, n_classes=4, **options)
    for seed in (0, 1):
        scene = smooth_scene(seed)
        pred, diag = estarfm(*scene, config=cfg, return_diagnostics=True)
        ref, ref_diag = reference_estarfm(*scene, cfg)
        _assert_same(pred, ref, 1e-10)
        assert np.array_equal(diag.n_similar, ref_diag["n_similar"])
        assert np.array_equal(diag.fallback, ref_diag["fallback"])
        _assert_same(diag.V, ref_diag["V"], 1e-10)
        _assert_same(diag.T1, ref_diag["T1"], 1e-12)
        # The scenes exercise the rules: some V fitted, some not.
        assert np.any(diag.V != 1) and np.any(diag.V == 1)


def test_invariant8_single_band_and_holes() -> None:
    """nb = 1 (the "VI" correlation, eq. 4) and invalid pixels, against the loop reference."""
    c1, f1, c3, f3, c2 = smooth_scene(3, bands=1, size=20)
    f3[0, 4:7, 5:9] = np.nan
    c2[0, 15, :3] = np.nan
    for preset, options in (
        ("idl", {}),
        ("paper", {"coarse_factor": 5}),
        ("idl_legacy", {"max_similar": 10}),
    ):
        cfg = _config(preset, half_window=3, n_classes=3, **options)
        pred, diag = estarfm(c1, f1, c3, f3, c2, config=cfg, return_diagnostics=True)
        ref, ref_diag = reference_estarfm(c1, f1, c3, f3, c2, cfg)
        _assert_same(pred, ref, 1e-10)
        _assert_same(diag.V, ref_diag["V"], 1e-10)
        assert np.array_equal(diag.n_similar, ref_diag["n_similar"])


@pytest.mark.parametrize("case", ["idl", "idl_legacy", "paper_window", "paper_cell"])
def test_invariant1_weights_sum_to_one_and_fallback_rule(case: str) -> None:
    preset, options = PRESET_CASES[case]
    cfg = _config(preset, half_window=3, n_classes=4, **options)
    c1, f1, c3, f3, _ = smooth_scene(4)
    # Uniform coarse changes: a_k = sum_S W (C2 - C_k) = (C2 - C_k) * sum W, so sum W = 1 shows as
    # F2 = T1 (F1 + V d1) + (1 - T1) (F3 + V d3); this also checks T1 + T3 = 1.
    d1, d3 = np.array([0.004, -0.003, 0.02])[:, None, None], np.array([-0.002, 0.001, -0.03])[:, None, None]
    c2 = c1 + d1
    c3 = c2 - d3
    pred, diag = estarfm(c1, f1, c3, f3, c2, config=cfg, return_diagnostics=True)
    assert np.array_equal(diag.fallback, diag.n_similar < cfg.min_similar)
    assert np.all((diag.T1 >= 0) & (diag.T1 <= 1))
    fitted = ~diag.fallback
    expected = diag.T1 * (f1 + diag.V * d1) + (1 - diag.T1) * (f3 + diag.V * d3)
    np.testing.assert_allclose(pred[:, fitted], expected[:, fitted], atol=1e-12)
    pixel = np.argwhere(fitted)[fitted.sum() // 2]
    _, ref = reference_estarfm(c1, f1, c3, f3, c2, cfg, trace_pixel=(int(pixel[0]), int(pixel[1])))
    weights = ref["trace"]["W"]
    assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("case", ["idl", "idl_legacy", "paper_window", "paper_cell"])
def test_invariant2_unchanged_coarse_returns_that_fine_image(case: str) -> None:
    preset, options = PRESET_CASES[case]
    cfg = _config(preset, half_window=3, n_classes=4, **options)
    c1, f1, c3, f3, _ = smooth_scene(5)
    np.testing.assert_allclose(estarfm(c1, f1, c3, f3, c1.copy(), config=cfg), f1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(estarfm(c1, f1, c3, f3, c3.copy(), config=cfg), f3, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", sorted(PRESET_CASES))
def test_invariant3_swapping_the_pairs(case: str) -> None:
    preset, options = PRESET_CASES[case]
    cfg = _config(preset, half_window=3, n_classes=4, **options)
    c1, f1, c3, f3, c2 = smooth_scene(6)
    a = estarfm(c1, f1, c3, f3, c2, config=cfg)
    b = estarfm(c3, f3, c1, f1, c2, config=cfg)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("case", ["idl", "idl_legacy", "paper_window", "paper_cell"])
def test_invariant4_additive_shift(case: str) -> None:
    preset, options = PRESET_CASES[case]
    cfg = _config(preset, half_window=3, n_classes=4, range_fix=False, **options)
    scene = smooth_scene(7)
    shift = 0.0625  # exact in binary: the shifted inputs carry no new rounding
    a = estarfm(*scene, config=cfg)
    b = estarfm(*(x + shift for x in scene), config=cfg)
    np.testing.assert_allclose(b - shift, a, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["idl", "paper_window"])
def test_invariant5_transpose_and_rotation(case: str) -> None:
    preset, options = PRESET_CASES[case]
    cfg = _config(preset, half_window=3, n_classes=4, **options)
    scene = smooth_scene(8)
    base = estarfm(*scene, config=cfg)
    for transform in (lambda x: np.swapaxes(x, 1, 2), lambda x: np.rot90(x, 1, axes=(1, 2))):
        out = estarfm(*(np.ascontiguousarray(transform(x)) for x in scene), config=cfg)
        np.testing.assert_allclose(out, transform(base), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("preset", "options"),
    [("idl", {}), ("idl_legacy", {}), ("paper", {"v_scope": "window"}), ("paper", {"coarse_factor": 4})],
)
def test_invariant6_exact_linear_model(preset: str, options: dict[str, Any]) -> None:
    """F_k = alpha_b + v_b C_k (k = 1, 2, 3) with uniform coarse changes: F2 is recovered exactly."""
    rng = np.random.default_rng(9)
    from scipy.ndimage import gaussian_filter

    size, s = 24, 4
    c1 = np.stack([gaussian_filter(rng.standard_normal((size, size)), 4.0) for _ in range(3)])
    c1 = 0.15 + 0.03 * c1 / c1.std()  # keeps F2 inside (0, 1): no range repair
    if "coarse_factor" in options:
        # Block-replicated coarse image: one value per s x s coarse cell.
        c1 = np.repeat(np.repeat(c1[:, ::s, ::s], s, axis=1), s, axis=2)
    d3 = np.array([0.03, -0.025, 0.05])[:, None, None]
    d2 = np.array([0.01, -0.03, 0.07])[:, None, None]
    c3, c2 = c1 + d3, c1 + d2
    alpha = np.array([0.01, -0.005, 0.02])[:, None, None]
    v = np.array([0.8, 1.3, 2.5])[:, None, None]
    f1, f3, f2 = (alpha + v * c for c in (c1, c3, c2))
    cfg = _config(preset, half_window=4, n_classes=4, **options)
    pred, diag = estarfm(c1, f1, c3, f3, c2, config=cfg, return_diagnostics=True)
    fitted = diag.n_similar >= 6
    assert fitted.mean() > 0.5
    np.testing.assert_allclose(pred[:, fitted], f2[:, fitted], rtol=0, atol=1e-12)


def _window_delta_signs(c1: np.ndarray, c3: np.ndarray, c2: np.ndarray, h: int) -> np.ndarray:
    """(C, H, W) delta_1 * delta_3 of eq. 7 (all pixels valid), by direct window means."""
    _, height, width = c2.shape
    out = np.empty(c2.shape)
    for r in range(height):
        for c in range(width):
            win = np.s_[:, max(0, r - h) : r + h + 1, max(0, c - h) : c + h + 1]
            m2 = c2[win].mean(axis=(1, 2))
            out[:, r, c] = (m2 - c1[win].mean(axis=(1, 2))) * (m2 - c3[win].mean(axis=(1, 2)))
    return out


def test_invariant7_fallbacks_agree_when_t2_lies_between() -> None:
    c1, f1, c3, f3, c2 = smooth_scene(10)
    options = {"half_window": 3, "n_classes": 4, "min_similar": 10**6, "return_diagnostics": False}
    change = estarfm(c1, f1, c3, f3, c2, fallback="change", **options)
    centre = estarfm(c1, f1, c3, f3, c2, fallback="centre", **options)
    assert isinstance(change, np.ndarray) and isinstance(centre, np.ndarray)
    between = _window_delta_signs(c1, c3, c2, 3) < 0
    assert 0.1 < between.mean() < 0.9
    np.testing.assert_allclose(change[between], centre[between], rtol=0, atol=1e-12)
    assert np.abs(change[~between] - centre[~between]).max() > 1e-4


@pytest.mark.parametrize("case", ["idl", "paper_cell", "idl_fast"])
def test_invariant9_tiles_with_halo_equal_the_whole_scene(case: str) -> None:
    preset, options = PRESET_CASES[case]
    cfg = _config(preset, half_window=3, n_classes=4, **options)
    scene = smooth_scene(11, size=30)
    whole, whole_diag = estarfm(*scene, config=cfg, return_diagnostics=True)
    tol = scene_tolerances(ArraySource([(scene[0], scene[1]), (scene[2], scene[3])], scene[4]), cfg)
    halo = halo_rows(cfg)
    height = scene[0].shape[1]
    for step in (1, 5, 7, 13):
        for r0 in range(0, height, step):
            r1 = min(height, r0 + step)
            a, b = max(0, r0 - halo), min(height, r1 + halo)
            out, diag = estarfm_block(
                *(x[:, a:b] for x in scene), tolerances=tol, halo_top=r0 - a, halo_bottom=b - r1,
                config=cfg, row_offset=a, return_diagnostics=True,
            )  # fmt: skip
            assert np.array_equal(out, whole[:, r0:r1], equal_nan=True)
            assert np.array_equal(diag.V, whole_diag.V[:, r0:r1], equal_nan=True)
            assert np.array_equal(diag.n_similar, whole_diag.n_similar[r0:r1])


def test_prepare_equals_estarfm_over_several_blocks() -> None:
    scene = smooth_scene(12, size=30)
    c1, f1, c3, f3, c2 = scene
    f1[1, 3, 4] = np.nan
    for options in ({}, {"block_rows": 4}, {"preset": "paper", "coarse_factor": 4, "block_rows": 7}):
        kwargs = {"half_window": 3, "n_classes": 4, **options}
        expected = estarfm(*scene, **kwargs)
        assert isinstance(expected, np.ndarray)
        source = ArraySource([(c1, f1), (c3, f3)], c2)
        prediction = prepare(source, **kwargs)
        assert prediction.halo == halo_rows(es.make_config(**kwargs))
        if "block_rows" in options:
            assert len(prediction.row_starts(source.height, source.width)) > 3
        out = predict_scene(prediction, source)
        assert out.dtype == np.float32
        assert np.array_equal(out, expected.astype(np.float32), equal_nan=True)


class _RecordingSource(ArraySource):
    """An ArraySource that records the row ranges read from it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.reads: list[tuple[int, int]] = []

    def block(self, top: int, stop: int) -> Any:
        self.reads.append((top, stop))
        return super().block(top, stop)


def test_prepare_reads_bounded_blocks() -> None:
    """Memory is bounded by the block: one streaming pass of <= 256-row blocks for the tolerances,
    then blocks of block_rows + 2 halo rows."""
    c1, f1, c3, f3, c2 = smooth_scene(18, size=300)
    source = _RecordingSource([(c1, f1), (c3, f3)], c2)
    prediction = prepare(source, half_window=3, block_rows=40)
    assert source.reads == [(0, 256), (256, 300)]
    source.reads.clear()
    rows = list(prediction.iter_rows(source, 0, 80))
    assert [r for r, _ in rows] == [0, 40]
    assert source.reads == [(0, 43), (37, 83)]


def test_estarfm_block_argument_checks() -> None:
    scene = smooth_scene(19, size=10)
    cfg = _config("idl", half_window=2)
    tol = np.full((2, 3), 0.01)
    with pytest.raises(ValueError, match=r"halo_top and halo_bottom must be integers in \[0, 2\]"):
        estarfm_block(*scene, tolerances=tol, halo_top=3, halo_bottom=0, config=cfg)
    with pytest.raises(ValueError, match="no rows left"):
        estarfm_block(*(x[:, :4] for x in scene), tolerances=tol, halo_top=2, halo_bottom=2, config=cfg)
    with pytest.raises(ValueError, match=r"tolerances must have shape \(2, C\) = \(2, 3\)"):
        estarfm_block(*scene, tolerances=tol[0], halo_top=0, halo_bottom=0, config=cfg)
    with pytest.raises(ValueError, match="tolerances must be >= 0"):
        estarfm_block(*scene, tolerances=-tol, halo_top=0, halo_bottom=0, config=cfg)
    assert halo_rows(_config("paper", half_window=5, coarse_factor=4)) == 5 + 3


@pytest.mark.parametrize("n_pairs", [1, 3])
def test_prepare_needs_exactly_two_pairs(n_pairs: int) -> None:
    c1, f1, _, _, c2 = smooth_scene(13, size=8)
    with pytest.raises(ValueError, match="exactly two reference pairs"):
        prepare(ArraySource([(c1, f1)] * n_pairs, c2), half_window=2)


def test_idl_blocks_emulation() -> None:
    scene = smooth_scene(14, size=20)
    options = {"half_window": 3, "n_classes": 4}
    out = estarfm(*scene, idl_blocks=8, **options)
    assert isinstance(out, np.ndarray)
    # Each 8 x 8 block is an independent scene (own std, windows clipped at its edges).
    for r0 in range(0, 20, 8):
        for c0 in range(0, 20, 8):
            part = estarfm(*(x[:, r0 : r0 + 8, c0 : c0 + 8] for x in scene), **options)
            assert np.array_equal(out[:, r0 : r0 + 8, c0 : c0 + 8], part)
    source = ArraySource([(scene[0], scene[1]), (scene[2], scene[3])], scene[4])
    streamed = predict_scene(prepare(source, idl_blocks=8, **options), source)
    assert np.array_equal(streamed, out.astype(np.float32))
    assert not np.array_equal(out, estarfm(*scene, **options))  # seams differ from the global run


# --------------------------------------------------------------------------------------------
# Done-when 3-5: configuration errors, invalid pixels, constant bands
# --------------------------------------------------------------------------------------------


def test_paper_preset_without_coarse_factor_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"coarse_factor.*v_scope='window'"):
        EstarfmConfig.from_preset("paper")
    with pytest.raises(ValueError, match="coarse_factor"):
        estarfm(*EX_ARGS, preset="paper", half_window=1)
    assert EstarfmConfig.from_preset("paper", coarse_factor=16).v_scope == "coarse_cell"
    assert EstarfmConfig.from_preset("paper", v_scope="window").coarse_factor is None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"half_window": 0}, r"half_window=0 .*>= 1"),
        ({"n_classes": -1}, r"n_classes=-1 .*> 0"),
        ({"tol_ddof": 2}, r"tol_ddof=2 .*0 or 1"),
        ({"min_similar": 0}, r"min_similar=0"),
        ({"max_similar": 3}, r"max_similar=3 .*>= min_similar \(6\)"),
        ({"v_gate": "big"}, r"v_gate='big' .*'change', 'std', 'none'"),
        ({"v_alpha": 1.5}, r"v_alpha=1.5 .*\(0, 1\)"),
        ({"v_slope_range": (5, 0)}, r"v_slope_range"),
        ({"valid_range": (1, 0)}, r"valid_range"),
        ({"fallback": "none"}, r"fallback='none'"),
        ({"weight_eps": 0.0}, r"weight_eps=0.0 .*r_one_rule"),
        ({"temporal_eps": 0}, r"temporal_eps=0"),
        ({"idl_blocks": 0}, r"idl_blocks=0"),
        ({"coarse_factor": 2.5}, r"coarse_factor=2.5"),
        ({"window": 3}, r"unknown ESTARFM option\(s\) \['window'\]"),
    ],
)
def test_config_errors_name_option_value_and_range(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EstarfmConfig.from_preset("idl", **options)


def test_presets_options_and_help() -> None:
    with pytest.raises(ValueError, match="unknown ESTARFM preset 'fast'"):
        EstarfmConfig.from_preset("fast")
    legacy = EstarfmConfig.from_preset("idl_legacy")
    assert (legacy.v_gate, legacy.fallback, legacy.gate_threshold) == (
        "std",
        "centre",
        pytest.approx(0.002828, abs=5e-7),
    )
    paper = EstarfmConfig.from_preset("paper", v_scope="window")
    assert (paper.tol_ddof, paper.similar_strict, paper.min_similar, paper.range_fix) == (0, False, 1, False)
    user_fields = {f.name for f in dataclasses.fields(EstarfmConfig)}
    assert user_fields <= set(OPTION_HELP)
    assert all(isinstance(v, str) and v for v in OPTION_HELP.values())
    with pytest.raises(ValueError, match="either preset or config"):
        estarfm(*EX_ARGS, preset="idl", config=EstarfmConfig())
    with pytest.raises(ValueError, match="share one"):
        estarfm(EX_C1, EX_F1, EX_C3, EX_F3, EX_C2[:, :2])
    with pytest.raises(ValueError, match="float reflectance"):
        estarfm(*(np.round(x * 1e4).astype(np.int16) for x in EX_ARGS))


def test_output_dtype_follows_inputs() -> None:
    scene = smooth_scene(15, size=12)
    out32 = estarfm(*(x.astype(np.float32) for x in scene), half_window=2)
    out64 = estarfm(*scene, half_window=2)
    assert isinstance(out32, np.ndarray) and isinstance(out64, np.ndarray)
    assert out32.dtype == np.float32 and out64.dtype == np.float64
    np.testing.assert_allclose(out32, out64, atol=1e-5)


def test_invalid_pixels_are_nan_and_do_not_leak() -> None:
    scene = [x.copy() for x in smooth_scene(16)]
    bad = np.zeros(scene[0].shape[1:], bool)
    bad[3:6, 10:14] = True
    bad[20, 2] = True
    scene[3][1, bad] = np.nan  # one band of fine_t3 makes the pixel invalid (section 3.0)
    for preset, options in (("idl", {}), ("paper", {"coarse_factor": 4})):
        out, diag = estarfm(*scene, preset=preset, half_window=3, return_diagnostics=True, **options)
        assert np.isnan(out[:, bad]).all() and np.isfinite(out[:, ~bad]).all()
        assert (diag.n_similar[bad] == 0).all()
        # Other values under invalid pixels: nothing else changes.
        changed = [x.copy() for x in scene]
        rng = np.random.default_rng(0)
        for x in changed[:3] + changed[4:]:
            x[:, bad] = rng.uniform(-1, 2, size=x[:, bad].shape)
        again = estarfm(*changed, preset=preset, half_window=3, **options)
        assert np.array_equal(out, again, equal_nan=True)
        # An explicit mask is the same as NaN.
        masked = estarfm(*changed, preset=preset, half_window=3, mask=~bad, **options)
        changed[4][:, bad] = np.nan
        assert np.array_equal(
            masked, estarfm(*changed, preset=preset, half_window=3, **options), equal_nan=True
        )


def test_constant_band_idl_falls_back_paper_does_not() -> None:
    c1, f1, c3, f3, c2 = smooth_scene(17)
    f1[0] = 0.05  # constant fine band: tol = 0
    _, idl_diag = estarfm(c1, f1, c3, f3, c2, preset="idl", half_window=3, return_diagnostics=True)
    assert idl_diag.fallback.all()
    for options in ({"v_scope": "window"}, {"coarse_factor": 4}):
        paper, diag = estarfm(
            c1, f1, c3, f3, c2, preset="paper", half_window=3, return_diagnostics=True, **options
        )
        assert not diag.fallback.any() and (diag.n_similar >= 1).all()
        assert np.isfinite(paper).all()


def test_fine_std_accumulator_blockwise() -> None:
    rng = np.random.default_rng(1)
    f1, f3 = rng.uniform(0, 0.5, (2, 3, 37, 11))
    valid = rng.uniform(size=(37, 11)) > 0.2
    for ddof in (0, 1):
        acc = FineStdAccumulator()
        for r0 in range(0, 37, 8):
            acc.update(f1[:, r0 : r0 + 8], f3[:, r0 : r0 + 8], valid[r0 : r0 + 8])
        expected = [[np.std(f[b][valid], ddof=ddof) for b in range(3)] for f in (f1, f3)]
        np.testing.assert_allclose(acc.std(ddof), expected, rtol=1e-13)


# --------------------------------------------------------------------------------------------
# Section 7: the estarfm-site sample (pairs 2001-05-24 + 2001-08-12, coarse 2001-07-11)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site() -> dict[str, np.ndarray]:
    import rasterio

    def load(name: str) -> np.ndarray:
        # the spec's reference run divides the int16 values by 10 000 in float64
        with rasterio.open(SAMPLE / name) as src:
            return src.read().astype(np.float64) / 1e4

    return {
        "args": (
            load("coarse_20010524.tif"), load("fine_20010524.tif"), load("coarse_20010812.tif"),
            load("fine_20010812.tif"), load("coarse_20010711.tif"),
        ),
        "truth": load("fine_20010711.tif"),
    }  # fmt: skip


def _rmse(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((pred - truth) ** 2, axis=(1, 2)))


def test_sample_idl_matches_spec_table(site: dict[str, Any]) -> None:
    pred, diag = estarfm(*site["args"], preset="idl", half_window=25, n_classes=4, return_diagnostics=True)
    assert pred.dtype == np.float64
    rmse = _rmse(pred, site["truth"])
    np.testing.assert_allclose(rmse, [0.005376, 0.004828, 0.012517], atol=2e-6)
    np.testing.assert_allclose(pred.mean(axis=(1, 2)), [0.0457028, 0.0312031, 0.1997952], atol=2e-7)
    np.testing.assert_allclose(pred[:, 0, 0], [0.0426613, 0.0247424, 0.2552916], atol=1e-7)
    np.testing.assert_allclose(pred[:, 200, 200], [0.0394985, 0.0185250, 0.1825925], atol=1e-7)
    assert diag.fallback.sum() == 7666
    assert np.median(diag.n_similar) == 190
    np.testing.assert_allclose((diag.V != 1).sum(axis=(1, 2)), [20, 17626, 33994], atol=SAMPLE_V_COUNT_ATOL)
    # Beats the trivial baseline F1 + (C2 - C1) from 0524 (mean RMSE 0.0124).
    c1, f1, _, _, c2 = site["args"]
    assert rmse.mean() < 0.0076 < _rmse(f1 + c2 - c1, site["truth"]).mean()


@pytest.mark.parametrize(
    ("preset", "options", "expected"),
    [
        ("idl", {"max_similar": 20}, [0.005430, 0.004905, 0.012952]),
        ("idl_legacy", {}, [0.005419, 0.004743, 0.016265]),
        ("paper", {"v_scope": "window"}, [0.005800, 0.004781, 0.020487]),
    ],
)
def test_sample_other_rows_of_the_table(
    site: dict[str, Any], preset: str, options: dict[str, Any], expected: list[float]
) -> None:
    pred = estarfm(*site["args"], preset=preset, half_window=25, n_classes=4, **options)
    np.testing.assert_allclose(_rmse(pred, site["truth"]), expected, atol=2e-6)


def test_sample_float32(site: dict[str, Any]) -> None:
    pred = estarfm(*(x.astype(np.float32) for x in site["args"]), half_window=25, n_classes=4)
    assert pred.dtype == np.float32
    np.testing.assert_allclose(_rmse(pred, site["truth"]), [0.005376, 0.004828, 0.012517], atol=5e-5)
