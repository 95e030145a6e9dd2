"""Tests for stfusion.baselines.fsdaf against docs/specs/FSDAF.md (sections 3, 6, 7).

Reference implementations kept here (not in the package) to check the compiled kernels:
``reference_similar`` is the NumPy final step of commit 8d77b7c (``_similar_chunk``), and
``reference_kmeans`` / ``reference_classify`` its k-means iterations and BLAS classification.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import numpy as np
import pytest

from stfusion.baselines import fsdaf as fsdaf_module
from stfusion.baselines.fsdaf import (
    OPTION_HELP,
    FSDAFConfig,
    block_margin_cells,
    block_row_starts,
    block_windows,
    cell_table,
    classify,
    distribute_residual,
    estimate_scale_factor,
    evaluate_tps,
    fit_classes,
    fit_noise_fix,
    fit_tps,
    fsdaf,
    homogeneity_index,
    prepare,
    scene_statistics,
    similar_pixel_prediction,
    similarity_threshold,
    unmix_class_change,
)
from stfusion.blocks import ArraySource, Block, ReferencePair, predict_scene

PRESETS = ["fsdaf_idl", "zhu2016"]


def block_mean(image: np.ndarray, s: int) -> np.ndarray:
    """Coarse image on the fine grid: mean of each s x s cell, replicated (partial cells too)."""
    h, w = image.shape[-2:]
    nr, nc = -(-h // s), -(-w // s)
    pad = [(0, 0)] * (image.ndim - 2) + [(0, nr * s - h), (0, nc * s - w)]
    total = np.pad(image, pad).reshape(*image.shape[:-2], nr, s, nc, s).sum(axis=(-3, -1))
    count = np.pad(np.ones((h, w)), pad[-2:]).reshape(nr, s, nc, s).sum(axis=(-3, -1))
    cells = total / count
    return np.repeat(np.repeat(cells, s, axis=-2), s, axis=-1)[..., :h, :w]


def blob_scene(
    h: int = 64, w: int = 64, seed: int = 0, noise: float = 0.002
) -> tuple[np.ndarray, np.ndarray]:
    """Spec section 7 layout: 2 bands, 3 blob-shaped classes, uniform noise; returns (F1, L)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    labels = np.ones((h, w), dtype=np.int32)
    labels[(yy - 0.3 * h) ** 2 + (xx - 0.3 * w) ** 2 < (0.16 * h) ** 2] = 2
    labels[(yy > 0.62 * h) & (xx > 0.45 * w)] = 3
    base = np.array([[0.10, 0.30], [0.05, 0.45], [0.30, 0.20]])
    fine = np.stack([base[labels - 1, b] for b in range(2)])
    fine = fine + rng.uniform(-noise, noise, fine.shape)
    return fine, labels


def class_change_scene(
    h: int = 64, w: int = 64, s: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    f1, labels = blob_scene(h, w)
    delta = np.array([[0.04, 0.02], [0.0, -0.05], [-0.10, 0.01]])
    f2 = f1 + np.stack([delta[labels - 1, b] for b in range(2)])
    return block_mean(f1, s), f1, block_mean(f2, s), f2, labels


def patchy_scene(h: int, w: int, s: int, bands: int = 3, seed: int = 0) -> tuple[np.ndarray, ...]:
    """float32 scene with patchy classes, class changes and a smooth extra change (TPS matters)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 4, (h // 5 + 2, w // 5 + 2))
    labels = np.repeat(np.repeat(cells, 5, 0), 5, 1)[:h, :w]
    base = rng.uniform(0.05, 0.4, (4, bands))
    f1 = base[labels].transpose(2, 0, 1) + rng.normal(0, 0.01, (bands, h, w))
    yy, xx = np.mgrid[:h, :w]
    f2 = f1 + rng.normal(0, 0.03, (4, bands))[labels].transpose(2, 0, 1)
    f2 += 0.03 * np.sin(yy / 9.0)[None] * np.cos(xx / 13.0)[None]
    return tuple(a.astype(np.float32) for a in (block_mean(f1, s), f1, block_mean(f2, s), f2))


SMALL = {"window": 6, "n_similar": 10}


# ---------------------------------------------------------------- NumPy references (commit 8d77b7c)


def reference_similar(
    f1: np.ndarray,
    change: np.ndarray,
    labels: np.ndarray | None,
    *,
    window: int,
    n_similar: int,
    threshold: np.ndarray | None,
    weighting: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The NumPy final step of commit 8d77b7c (``_similar_chunk``) on a whole image.

    Returns (prediction (nb, H·W), selected offsets (H·W, n, 2), weights (H·W, n)).
    """
    w = window
    dy, dx = np.mgrid[-w : w + 1, -w : w + 1]
    dy, dx = dy.ravel(), dx.ravel()
    d = np.sqrt(dy**2 + dx**2)
    order = np.lexsort((dx, dy, d))
    offsets, dist = np.column_stack([dy[order], dx[order]]), d[order]
    n_off = offsets.shape[0]
    nb, h, wd = f1.shape
    f1p = np.pad(f1, ((0, 0), (w, w), (w, w)), constant_values=np.nan)
    dtp = np.pad(np.asarray(change, dtype=np.float64), ((0, 0), (w, w), (w, w)))
    lp = None if labels is None else np.pad(np.where(np.isfinite(f1).all(axis=0), labels, 0), w)
    t = f1p[:, w : h + w, w : wd + w]
    m = h * wd
    t_valid = np.isfinite(t).all(axis=0)
    inv = 1.0 / (np.abs(t) + 1e-8)
    keys = np.empty((n_off, h, wd), dtype=np.float32)
    for o in range(n_off):
        oy, ox = offsets[o]
        q = f1p[:, w + oy : h + w + oy, w + ox : wd + w + ox]
        diff = np.abs(q - t)
        if threshold is not None:
            cand = (diff < np.asarray(threshold, dtype=t.dtype)[:, None, None]).all(axis=0)
        else:
            assert lp is not None
            lt = lp[w : h + w, w : wd + w]
            cand = (lp[w + oy : h + w + oy, w + ox : wd + w + ox] == lt) & (lt > 0)
        score = (diff * inv).sum(axis=0)
        if threshold is not None:
            score += 1e-5
            score *= 10.0 + dist[o] / w
        if o == 0:
            cand = t_valid
            score = np.full_like(score, 1e-4 if threshold is not None else 0.0)
        keys[o] = np.where(cand, score, np.inf)
    bits = max(1, int(n_off - 1).bit_length())
    packed = keys.reshape(n_off, m).T.view(np.int32).astype(np.int64, order="C")
    packed <<= bits
    packed |= np.arange(n_off, dtype=np.int64)
    n = min(n_similar, n_off)
    part = np.partition(packed, n - 1, axis=1)[:, :n] if n < n_off else packed
    sel = (part & ((1 << bits) - 1)).astype(np.intp)
    used = (part >> bits) < np.int64(np.float32(np.inf).view(np.int32))
    rr, cc = np.mgrid[w : h + w, w : wd + w]
    flat = (rr.ravel()[:, None] + offsets[sel, 0]) * (wd + 2 * w) + (cc.ravel()[:, None] + offsets[sel, 1])
    tt = t.reshape(nb, m)
    q = f1p.reshape(nb, -1)[:, flat].astype(np.float64)
    spectral = (np.abs(q - tt[:, :, None]) / (np.abs(tt[:, :, None]) + 1e-8)).sum(axis=0)
    with np.errstate(invalid="ignore"):
        omega = 1.0 / (1.0 + dist[sel] / w)
        if weighting == "idl":
            omega = omega / (1.0 + spectral)
    omega = np.where(used, omega, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = omega / omega.sum(axis=1, keepdims=True)
    gathered = np.where(used[None], dtp.reshape(nb, -1)[:, flat], 0.0)
    pred = tt.astype(np.float64) + (weights[None] * gathered).sum(axis=2)
    pred[:, ~t_valid.ravel()] = np.nan
    return pred, np.where(used[..., None], offsets[sel], 0), np.where(used, weights, 0.0)


def reference_kmeans(x: np.ndarray, centres: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """The NumPy Lloyd iterations of commit 8d77b7c's fit_classes."""
    centres = centres.copy()
    labels = np.full(x.shape[0], -1)
    for _ in range(max_iter):
        dist = ((x[:, None, :] - centres[None]) ** 2).sum(axis=2)
        new = dist.argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(centres.shape[0]):
            members = labels == j
            if members.any():
                centres[j] = x[members].mean(axis=0)
            else:
                centres[j] = x[int(dist[np.arange(x.shape[0]), labels].argmax())]
    return centres


def reference_classify(fine: np.ndarray, valid: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Commit 8d77b7c's classify (distances through a BLAS matrix product)."""
    labels = np.zeros(valid.shape, dtype=np.int32)
    pixels = np.asarray(fine[:, valid], dtype=np.float64).T
    dist = (centres**2).sum(axis=1)[None, :] - 2.0 * pixels @ centres.T
    labels[valid] = dist.argmin(axis=1) + 1
    return labels


# ---------------------------------------------------------------- worked examples (7.2)


def test_unmixing_worked_example() -> None:
    fractions = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    got = unmix_class_change(fractions, np.array([[0.04], [-0.02], [0.01]]))
    np.testing.assert_allclose(got[:, 0], [0.04, -0.02], atol=1e-9)
    # rows cell1, cell3, cell2, cell3 with y = (0.04, 0.02, -0.02, 0.02): duplicates kept
    got = unmix_class_change(fractions, np.array([[0.04], [-0.02], [0.02]]))
    np.testing.assert_allclose(got[:, 0], [0.045, -0.015], atol=1e-9)


def test_unmixing_bounds_equal_and_absent_class() -> None:
    fractions = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    got = unmix_class_change(fractions, np.full((3, 2), 0.03))
    np.testing.assert_allclose(got, 0.03, atol=1e-15)  # lo = hi: g = lo; absent class: mean
    got = unmix_class_change(fractions, np.array([[0.1], [0.0], [-0.1]]))
    assert got[2, 0] == pytest.approx(0.0)  # absent class 3 -> mean ΔC


def test_unmixing_bounds_respected_and_streaming() -> None:
    rng = np.random.default_rng(1)
    fractions = rng.dirichlet([0.3, 0.3, 0.3], size=500)
    delta = rng.normal(0, 0.05, (500, 2))
    delta[17] = np.nan  # a cell without valid pixels
    got = unmix_class_change(fractions, delta, n_pure=40)
    ok = np.isfinite(delta).all(axis=1)
    sd = delta[ok].std(axis=0, ddof=1)
    assert (got >= delta[ok].min(axis=0) - sd - 1e-12).all() and (
        got <= delta[ok].max(axis=0) + sd + 1e-12
    ).all()
    # fed in row chunks (as the streaming pass does) it is the same computation
    acc = fsdaf_module._Unmixing(3, 2, n_pure=40, min_fraction=0.01)
    for start in range(0, 500, 37):
        acc.add(fractions[start : start + 37], delta[start : start + 37])
    np.testing.assert_allclose(acc.solve((0.1, 0.9)), got, atol=1e-13)


@pytest.mark.parametrize(
    ("residual", "expected_w", "expected_r"),
    [
        (
            0.02,
            [1.846153841, 6.15e-9, 0.923076924, 1.230769229],
            [0.036923077, 1.2e-10, 0.018461538, 0.024615385],
        ),
        (-0.02, [1e-8, 1.0, 1.0, 2.0], [-2e-10, -0.02, -0.02, -0.04]),
    ],
)
def test_residual_distribution_worked_example(
    residual: float, expected_w: list[float], expected_r: list[float]
) -> None:
    temporal = np.zeros((1, 2, 2))
    spatial = np.array([[[0.03, -0.01], [0.01, 0.02]]])
    hi = np.array([[1.0, 1.0], [0.5, 0.0]])
    r = distribute_residual(
        temporal,
        spatial,
        np.full((1, 1, 1), residual),
        hi,
        np.ones((2, 2), bool),
        scale_factor=2,
        sign_rule=True,
        eps_cw=1e-10,
    )
    np.testing.assert_allclose(r.ravel(), expected_r, atol=1e-9)
    np.testing.assert_allclose(r.ravel() / residual, expected_w, atol=1e-8)
    assert r.mean() == pytest.approx(residual, abs=1e-15)


FINAL_F1 = np.array([[[0.20, 0.21, 0.40], [0.19, 0.20, 0.22], [0.45, 0.20, 0.18]]])
FINAL_DT = np.array([[[0.010, 0.012, -0.05], [0.008, 0.011, 0.020], [-0.040, 0.009, 0.015]]])


@pytest.mark.parametrize(("weighting", "expected"), [("idl", 0.21017442299), ("paper", 0.21017157288)])
def test_final_step_worked_example(weighting: str, expected: float) -> None:
    pred = similar_pixel_prediction(
        FINAL_F1,
        FINAL_DT,
        window=1,
        n_similar=5,
        rule="threshold",
        weighting=weighting,  # type: ignore[arg-type]
        threshold=np.array([0.025]),
        targets=(slice(1, 2), slice(1, 2)),
    )
    assert pred[0, 0, 0] == pytest.approx(expected, abs=1e-9)
    # the reference selects (1,1), (2,1), (0,0), (0,1), (1,0): (0,1) and (1,0) tie, nearer/raster first
    _, sel, weights = reference_similar(
        FINAL_F1, FINAL_DT, None, window=1, n_similar=5, threshold=np.array([0.025]), weighting="idl"
    )
    assert {tuple(int(v) for v in o) for o in sel[4]} == {(0, 0), (1, 0), (-1, -1), (-1, 0), (0, -1)}
    np.testing.assert_allclose(
        sorted(weights[4]), sorted([0.34884599, 0.17442299, 0.14449674, 0.16611714, 0.16611714]), atol=1e-8
    )


# ---------------------------------------------------------------- compiled kernels vs references


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", ["threshold", "class"])
def test_final_step_matches_numpy_reference(dtype: type, rule: str) -> None:
    """Random scenes with many exact ties (quantised values) and invalid pixels."""
    rng = np.random.default_rng(3)
    # (bands, shape, window, n_similar); n_similar 1 and 2 exercise a list that is full at once
    cases = ((1, (23, 31), 3, 7), (3, (29, 19), 4, 20), (6, (17, 22), 2, 30), (2, (13, 11), 2, 1))
    cases += ((4, (9, 14), 3, 2),)
    for nb, (h, wd), window, n_sim in cases:
        f1 = (np.round(rng.uniform(0.05, 0.3, (nb, h, wd)) * 100) / 100).astype(dtype)
        f1[:, rng.random((h, wd)) < 0.07] = np.nan
        change = rng.normal(0, 0.01, (nb, h, wd))
        labels = rng.integers(1, 4, (h, wd))
        th = np.full(nb, 0.04) if rule == "threshold" else None
        for weighting in ("idl", "paper"):
            ref, _, _ = reference_similar(
                f1, change, labels, window=window, n_similar=n_sim, threshold=th, weighting=weighting
            )
            got = similar_pixel_prediction(
                f1,
                change,
                window=window,
                n_similar=n_sim,
                rule=rule,  # type: ignore[arg-type]
                weighting=weighting,  # type: ignore[arg-type]
                threshold=np.full(nb, 0.04),
                class_map=labels,
            )
            np.testing.assert_array_equal(np.isnan(got), np.isnan(ref.reshape(nb, h, wd)))
            np.testing.assert_allclose(got, ref.reshape(nb, h, wd), atol=1e-12, equal_nan=True)


def test_final_weights_invariants() -> None:
    f1, _ = blob_scene(20, 20, seed=3, noise=0.05)
    th = np.array([0.02, 0.02])
    kw: dict[str, Any] = {"window": 4, "n_similar": 7, "threshold": th}
    # weights sum to 1: a constant change is passed through unchanged
    const = similar_pixel_prediction(f1, np.full_like(f1, 0.03), **kw)
    np.testing.assert_allclose(const - f1, 0.03, atol=1e-12)
    # the target itself is always selected with a positive weight
    for r, c in ((0, 0), (10, 7), (19, 19)):
        spike = np.zeros_like(f1)
        spike[:, r, c] = 1.0
        pred = similar_pixel_prediction(f1, spike, targets=(slice(r, r + 1), slice(c, c + 1)), **kw)
        assert (pred[:, 0, 0] - f1[:, r, c] > 0).all()


def test_kmeans_and_classify_match_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    f1, _ = blob_scene(60, 50, seed=4, noise=0.03)
    valid = rng.random((60, 50)) > 0.05
    x = f1[:, valid].T
    centres = fit_classes(x, n_classes=4, seed=1)
    # same k-means++ seeding, then the reference iterations: identical centres
    seeds = rng.permutation(x)[:4]
    np.testing.assert_array_equal(
        fsdaf_module._kernels().lloyd(x.copy(), seeds.copy(), 100), reference_kmeans(x, seeds)
    )
    np.testing.assert_array_equal(classify(f1, valid, centres), reference_classify(f1, valid, centres))


def test_tps_interpolates_control_points() -> None:
    rng = np.random.default_rng(0)
    pts = np.column_stack([np.repeat(np.arange(5) * 8 + 3.5, 5), np.tile(np.arange(5) * 8 + 3.5, 5)])
    vals = rng.uniform(0, 1, (25, 3))
    tps = fit_tps(pts, vals)
    grid = evaluate_tps(tps, np.arange(40), np.arange(40))
    at = np.stack([evaluate_tps(tps, np.array([r]), np.array([c]))[:, 0, 0] for r, c in pts])
    np.testing.assert_allclose(at, vals, atol=1e-9)
    # matches SciPy's thin-plate RBF (same unique interpolant)
    from scipy.interpolate import RBFInterpolator

    ref = RBFInterpolator(pts, vals, kernel="thin_plate_spline", degree=1)
    yy, xx = np.mgrid[:40, :40]
    expected = ref(np.column_stack([yy.ravel(), xx.ravel()])).T.reshape(3, 40, 40)
    np.testing.assert_allclose(grid, expected, atol=1e-8)


@pytest.mark.parametrize(
    ("s", "n", "rows", "cols"), [(16, 12, (16, 176), (0, 150)), (9, 9, (0, 90), (18, 85))]
)
def test_tps_lattice_fft_matches_direct_sum(
    s: int, n: int, rows: tuple[int, int], cols: tuple[int, int]
) -> None:
    """Cell-centre lattice by FFT plus off-lattice (partial cell) points directly = direct sum."""
    rng = np.random.default_rng(2)
    c = (s - 1) / 2
    pts = [(i * s + c, j * s + c) for i in range(n) for j in range(n) if (i, j) != (3, 4)]  # one missing
    pts += [(n * s + 1.0, j * s + c) for j in range(n)] + [(i * s + c, n * s + 2.5) for i in range(n)]
    pts_a = np.array(pts)
    tps = fit_tps(pts_a, rng.normal(0.2, 0.03, (len(pts), 2)))
    fast = fsdaf_module._evaluate_tps_cells(tps, rows, cols, s, n_jobs=None)
    direct = evaluate_tps(tps, np.arange(*rows), np.arange(*cols))
    np.testing.assert_allclose(fast, direct, atol=1e-11)


@pytest.mark.parametrize("n_rhs", [1, 4, 6])
def test_lu_solve_kernel_matches_lapack(n_rhs: int) -> None:
    """The kernel's triangular solves (used by fit_tps) give LAPACK getrs's solution, for right-hand
    sides solved three at a time and one at a time."""
    from scipy import linalg

    rng = np.random.default_rng(5)
    a = rng.normal(size=(120, 120))  # pivoting: rows are interchanged
    factors = linalg.lu_factor(a)
    assert (factors[1] != np.arange(120)).any()
    rhs = rng.normal(size=(120, n_rhs))
    solution = rhs.T.copy()  # solved in place
    fsdaf_module._kernels().lu_solve(*factors, solution)
    np.testing.assert_allclose(solution.T, linalg.lu_solve(factors, rhs), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a @ solution.T, rhs, atol=1e-9)


def _cell_inputs(seed: int) -> tuple[np.ndarray, ...]:
    """(nb, 37, 29) float64 arrays and a validity mask with an empty 4 x 4 cell; cells of 4 pixels,
    partial cells at the bottom and right edges."""
    rng = np.random.default_rng(seed)
    a, b, c, d = (rng.uniform(0.0, 0.5, (3, 37, 29)) for _ in range(4))
    valid = rng.random((37, 29)) > 0.2
    valid[8:12, 4:8] = False
    return a, b, c, d, valid


def test_cell_means_kernel_matches_numpy() -> None:
    """Cell means over valid pixels (eqs. 1-3, 8): NaN for a cell without valid pixels."""
    c1, c2, fixed, temporal, valid = _cell_inputs(7)
    s, (nr, nc) = 4, (10, 8)
    count = np.empty((nr, nc), np.int64)
    means = np.empty((4, 3, nr, nc))
    fsdaf_module._kernels().cell_means(c1, c2, fixed, temporal, valid, s, count, means)
    for i in range(nr):
        for j in range(nc):
            cell = (slice(i * s, i * s + s), slice(j * s, j * s + s))
            v = valid[cell]
            assert count[i, j] == v.sum()
            for q, a in enumerate((c1, c2, fixed, temporal)):
                expected = a[(slice(None), *cell)][:, v].mean(axis=1) if v.any() else np.full(3, np.nan)
                np.testing.assert_allclose(means[q, :, i, j], expected, rtol=1e-13)
    assert np.isnan(means[:, :, 2, 1]).all()


@pytest.mark.parametrize("sign_rule", [True, False])
def test_residual_share_kernel_matches_numpy(sign_rule: bool) -> None:
    """Eqs. 12-16 cell by cell in NumPy (the weights' clamp at 10 with the reference sign rule)."""
    temporal, spatial, homog, _, valid = _cell_inputs(8)
    valid[8:12, 4:8] = True  # every cell has valid pixels
    homog = homog[0] * 2.0
    s, (nr, nc) = 4, (10, 8)
    residual = np.random.default_rng(9).normal(0.0, 0.05, (3, nr, nc))
    out = np.empty_like(temporal)
    fsdaf_module._kernels().residual_share(
        temporal, spatial, residual, homog, valid, s, sign_rule, 1e-10, out
    )
    for i in range(nr):
        for j in range(nc):
            cell = (slice(i * s, i * s + s), slice(j * s, j * s + s))
            v, hi = valid[cell], homog[cell]
            for b in range(3):
                r = residual[b, i, j]
                e = spatial[b][cell] - temporal[b][cell]
                if sign_rule:
                    e = np.abs(np.minimum(e, 0.0) if r <= 0 else np.maximum(e, 0.0))
                cw = np.where(v, e * hi + (abs(r) if sign_rule else r) * (1.0 - hi) + 1e-10, 0.0)
                w = cw / cw[v].mean()
                if sign_rule:
                    w = np.where(w > 10.0, w[v].mean(), w)
                    w = np.where(v, w / w[v].mean(), 0.0)
                np.testing.assert_allclose(out[b][cell], np.where(v, w * r, 0.0), rtol=1e-12, atol=1e-15)


def test_total_change_kernel_matches_numpy() -> None:
    """Eqs. 17-19 as np.clip and np.where do them: a NaN bound gives NaN, low > high gives high."""
    rng = np.random.default_rng(10)
    temporal, fixed = rng.normal(size=(2, 3, 20, 22))
    temporal[0, 3, 4] = np.nan
    share = rng.normal(size=(3, 10, 12))
    valid = rng.random((10, 12)) > 0.2
    bounds = [
        (np.array([-0.5, -1.0, np.nan]), np.array([0.5, 0.2, 1.0])),
        (np.array([0.3, -1, -2]), np.array([0.1, 1, 2])),
    ]
    for (low, high), clamp in itertools.product(bounds, (True, False)):
        out = np.empty_like(share)
        fsdaf_module._kernels().total_change(temporal, share, fixed, valid, 3, 4, clamp, low, high, out)
        f2 = temporal[:, 3:13, 4:16] + share
        if clamp:
            f2 = np.clip(f2, low[:, None, None], high[:, None, None])
        np.testing.assert_array_equal(out, np.where(valid, f2 - fixed[:, 3:13, 4:16], np.nan))


@pytest.mark.parametrize("limit", [1, 3, 5, 1000])
def test_distinct_rows_counts_as_numpy_unique(limit: int) -> None:
    """k-means' k: distinct spectra (as floats: -0.0 is 0.0), counted up to the limit."""
    rng = np.random.default_rng(11)
    for x in (rng.integers(0, 2, (500, 2)).astype(float), np.zeros((40, 3)), np.array([[0.0, 1], [-0.0, 1]])):
        assert fsdaf_module._distinct_rows(x, limit) == min(limit, np.unique(x, axis=0).shape[0])


def test_tps_collinear_points() -> None:
    pts = np.array([[3.5, 3.5], [3.5, 11.5], [3.5, 19.5]])
    tps = fit_tps(pts, np.array([[0.1], [0.2], [0.4]]))
    got = evaluate_tps(tps, np.array([3.5]), pts[:, 1])[0, 0]
    np.testing.assert_allclose(got, [0.1, 0.2, 0.4], atol=1e-9)


def test_homogeneity_index_clipped_window() -> None:
    labels = np.array([[1, 1, 2], [1, 2, 2], [0, 2, 2]])
    hi = homogeneity_index(labels, 1)
    assert hi[0, 0] == pytest.approx(3 / 4)  # corner: clipped 2x2 window
    assert hi[1, 1] == pytest.approx(5 / 9)
    assert np.isnan(hi[2, 0])


def test_noise_fix_thresholds() -> None:
    values = np.arange(1, 20001, dtype=np.float64)[None] / 20001
    noise = fit_noise_fix(values, dn_min=0.0, dn_max=1.0)
    # N = 20000: lo = v[2], hi = v[19998] -> fills v[3], v[19997]
    assert noise.fill_low[0] == values[0, 3] and noise.fill_high[0] == values[0, 19997]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_order_statistics_are_exact(dtype: type) -> None:
    """Radix select over bit patterns, values fed in blocks, equals sorting (with heavy ties)."""
    rng = np.random.default_rng(5)
    values = np.concatenate(
        [rng.normal(0.2, 0.1, 30_000), np.full(20_000, 0.25), -np.abs(rng.normal(0, 1, 500))]
    )
    values = rng.permutation(values).astype(dtype)
    ranks = [0, 3, 9_999, 30_000, values.size - 1]
    order = fsdaf_module._OrderStatistics([ranks], np.dtype(dtype))
    while not order.done:
        for start in range(0, values.size, 7_001):
            order.feed(0, values[start : start + 7_001])
        order.finish_pass()
    np.testing.assert_array_equal(order.values(), np.sort(values)[ranks].astype(np.float64))


# ---------------------------------------------------------------- invariants (7)


@pytest.mark.parametrize("preset", PRESETS)
def test_no_change_returns_f1(preset: str) -> None:
    _, f1, _, _, labels = class_change_scene()
    c1 = block_mean(f1, 8)
    pred, diag = fsdaf(
        c1, f1, c1, scale_factor=8, class_map=labels, preset=preset, return_diagnostics=True, **SMALL
    )
    np.testing.assert_array_equal(pred, f1.astype(np.float32))
    assert np.abs(diag.class_change).max() == 0.0
    assert np.nanmax(np.abs(diag.residual)) == 0.0


@pytest.mark.parametrize("preset", PRESETS)
def test_uniform_change(preset: str) -> None:
    _, f1, _, _, labels = class_change_scene()
    c1 = block_mean(f1, 8)
    pred = fsdaf(c1, f1, c1 + 0.03, scale_factor=8, class_map=labels, preset=preset, **SMALL)
    np.testing.assert_allclose(pred, f1 + 0.03, atol=2e-7)


@pytest.mark.parametrize("preset", PRESETS)
def test_class_specific_change_exact(preset: str) -> None:
    c1, f1, c2, f2, labels = class_change_scene()
    pred, diag = fsdaf(
        c1, f1, c2, scale_factor=8, class_map=labels, preset=preset, return_diagnostics=True, **SMALL
    )
    np.testing.assert_allclose(diag.class_change, [[0.04, 0.02], [0.0, -0.05], [-0.10, 0.01]], atol=1e-12)
    np.testing.assert_allclose(pred, f2, atol=2e-7)


@pytest.mark.parametrize("preset", PRESETS)
def test_conservation_and_weights_with_land_cover_change(preset: str) -> None:
    f1, labels = blob_scene()
    yy, xx = np.mgrid[:64, :64]
    f2 = f1.copy()
    grown = ((yy - 19) ** 2 + (xx - 19) ** 2 < 16**2) & (labels != 2)
    f2[:, grown] = np.array([0.05, 0.45])[:, None]
    c1, c2 = block_mean(f1, 8), block_mean(f2, 8)
    config = FSDAFConfig.from_preset(preset, scale_factor=8, clamp_t2=False, noise_fix=False, **SMALL)
    pred, diag = fsdaf(c1, f1, c2, class_map=labels, config=config, return_diagnostics=True)

    def per_cell(image: np.ndarray) -> np.ndarray:
        return image.reshape(*image.shape[:-2], 8, 8, 8, 8).mean(axis=(-3, -1))

    # 4. mean over each cell of (F2' - F1') equals ΔC (no clamp)
    np.testing.assert_allclose(per_cell(diag.total_change), per_cell(c2 - c1), atol=1e-12)
    # 5. residual weights >= 0 with mean 1 (reference sign rule only), HI in (0, 1]
    if preset == "fsdaf_idl":
        weights = diag.residual_share / diag.residual
        ok = np.abs(diag.residual) > 1e-9
        assert (weights[ok] >= -1e-9).all()
        np.testing.assert_allclose(per_cell(np.where(ok, weights, 1.0)), 1.0, atol=1e-9)
    assert (diag.homogeneity > 0).all() and (diag.homogeneity <= 1).all()
    # 7. land-cover change sanity (reference preset)
    if preset == "fsdaf_idl":
        rmse = np.sqrt(((pred - f2) ** 2).mean())
        assert rmse < np.sqrt(((f1 - f2) ** 2).mean())


# ---------------------------------------------------------------- paper simulation (7.1)


def test_paper_simulation_class_change() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:480, :480]
    rect = (yy >= 301) & (yy <= 399) & (xx >= 251) & (xx <= 419)
    line = (xx >= 60) & (xx <= 62) & (yy >= 261)
    labels = np.full((480, 480), 2, dtype=np.int32)
    labels[(yy - 150) ** 2 + (xx - 150) ** 2 <= 56**2] = 1
    labels[rect | line] = 3

    def scene(radius: int, circle: float, other: float) -> np.ndarray:
        img = np.full((480, 480), 0.5)
        img[rect | line] = other
        img[(yy - 150) ** 2 + (xx - 150) ** 2 <= radius**2] = circle
        return (img + rng.uniform(-0.001, 0.001, img.shape))[None]

    f1, f2 = scene(56, 0.01, 0.3), scene(72, 0.05, 0.2)
    config = FSDAFConfig.from_preset(scale_factor=16, n_pure=10)
    stats = scene_statistics(
        ArraySource([(block_mean(f1, 16), f1)], block_mean(f2, 16)), config=config, class_map=labels
    )
    assert stats is not None
    np.testing.assert_allclose(stats.class_change[:, 0], [0.04, 0.0, -0.10], atol=2e-3)


# ---------------------------------------------------------------- masks, edges, bands


@pytest.mark.parametrize("preset", PRESETS)
def test_nan_and_mask_give_nan_and_do_not_leak(preset: str) -> None:
    c1, f1, c2, f2, labels = class_change_scene()
    f1n = f1.copy()
    f1n[0, 10, 12] = np.nan  # NaN in one band invalidates the pixel
    c2n = c2.copy()
    c2n[:, 40:48, 0:8] = np.nan  # a whole invalid coarse cell
    mask = np.ones((64, 64), bool)
    mask[30, 30] = False
    cmap = labels.copy()
    cmap[5, 50] = 0  # unclassified
    pred = fsdaf(c1, f1n, c2n, scale_factor=8, class_map=cmap, valid_mask=mask, preset=preset, **SMALL)
    assert np.isnan(pred[:, 10, 12]).all() and np.isnan(pred[:, 30, 30]).all()
    assert np.isnan(pred[:, 5, 50]).all() and np.isnan(pred[:, 40:48, 0:8]).all()
    ok = np.isfinite(pred).all(axis=0)
    assert ok.sum() == 64 * 64 - 3 - 64
    # the coarse means still include the masked pixels, so aggregation is only nearly exact
    tol = 1e-3 if preset == "fsdaf_idl" else 5e-3  # paper weights amplify the mismatch
    np.testing.assert_allclose(pred[:, ok], f2[:, ok], atol=tol)


@pytest.mark.parametrize("preset", PRESETS)
def test_partial_cells(preset: str) -> None:
    h, w, s = 61, 53, 8  # not multiples of s: trailing cells of 5 and 5 pixels
    f1, labels = blob_scene(h, w)
    delta = np.array([[0.04, 0.02], [0.0, -0.05], [-0.10, 0.01]])
    f2 = f1 + np.stack([delta[labels - 1, b] for b in range(2)])
    c1, c2 = block_mean(f1, s), block_mean(f2, s)
    pred, diag = fsdaf(
        c1, f1, c2, scale_factor=s, class_map=labels, preset=preset, return_diagnostics=True, **SMALL
    )
    assert pred.shape == (2, h, w) and pred.dtype == np.float32
    np.testing.assert_allclose(pred, f2, atol=2e-7)
    np.testing.assert_allclose(diag.class_change, delta, atol=1e-12)


def test_bands_independent_in_per_band_steps() -> None:
    """Steps 3.3-3.8 are per band (spec 1): with a given class map, permuting or subsetting the
    bands permutes ΔF, F_SP and ΔF_tot. (3.10 is not: S_q sums over bands.)"""
    c1, f1, c2, _, labels = class_change_scene()
    rng = np.random.default_rng(5)
    c2 = c2 + rng.normal(0, 0.01, c2.shape)  # non-trivial residuals
    kw: dict[str, Any] = dict(scale_factor=8, class_map=labels, **SMALL)
    _, both = fsdaf(c1, f1, c2, return_diagnostics=True, **kw)
    _, swapped = fsdaf(c1[::-1], f1[::-1], c2[::-1], return_diagnostics=True, **kw)
    _, single = fsdaf(c1[:1], f1[:1], c2[:1], return_diagnostics=True, **kw)
    for name in ("spatial", "residual", "residual_share", "total_change"):
        np.testing.assert_allclose(getattr(swapped, name)[::-1], getattr(both, name), atol=1e-12)
        np.testing.assert_allclose(getattr(single, name)[0], getattr(both, name)[0], atol=1e-12)
    np.testing.assert_allclose(swapped.class_change[:, ::-1], both.class_change, atol=1e-15)
    np.testing.assert_allclose(single.class_change[:, 0], both.class_change[:, 0], atol=1e-15)


def test_kmeans_fallback_deterministic() -> None:
    c1, f1, c2, f2, _ = class_change_scene()
    a, diag = fsdaf(c1, f1, c2, scale_factor=8, n_classes=3, return_diagnostics=True, **SMALL)
    b = fsdaf(c1, f1, c2, scale_factor=8, n_classes=3, **SMALL)
    np.testing.assert_array_equal(a, b)
    assert diag.class_map.max() == 3
    np.testing.assert_allclose(a, f2, atol=2e-7)


# ---------------------------------------------------------------- blocks and streaming


def test_block_windows_cover_and_margin() -> None:
    config = FSDAFConfig.from_preset(scale_factor=8, window=10, block_size=3)
    assert block_margin_cells(config) == 2 + 3  # ⌈10/8⌉ + max(⌈10/8⌉, tps_margin 3)
    wins = block_windows(61, 53, config=config)
    cover = np.zeros((61, 53), int)
    for win in wins:
        cover[win.core] += 1
        assert win.read[0].start % 8 == 0 and win.read[1].start % 8 == 0
    assert (cover == 1).all()
    assert block_row_starts(61, config=config) == [0, 24, 48]


@pytest.mark.parametrize("preset", PRESETS)
def test_blocked_matches_global(preset: str) -> None:
    h, w, s = 90, 75, 6
    f1, labels = blob_scene(h, w, seed=2, noise=0.01)
    rng = np.random.default_rng(7)
    f2 = f1 + 0.02 * (labels == 2) + rng.normal(0, 0.005, f1.shape)
    f2[:, 60:80, 5:30] += 0.08  # land-cover-like change: nonzero residuals and TPS matters
    c1, c2 = block_mean(f1, s), block_mean(f2, s)
    kw: dict[str, Any] = dict(scale_factor=s, class_map=labels, preset=preset, window=5, n_similar=8)
    glob, gd = fsdaf(c1, f1, c2, block_size=15, return_diagnostics=True, **kw)  # 15 cells: one block
    blocked, bd = fsdaf(c1, f1, c2, block_size=4, return_diagnostics=True, **kw)
    # everything but the TPS is exact in block mode
    np.testing.assert_array_equal(bd.temporal, gd.temporal)
    np.testing.assert_allclose(bd.homogeneity, gd.homogeneity, atol=1e-15)
    np.testing.assert_allclose(bd.residual, gd.residual, atol=1e-15)
    if preset == "fsdaf_idl":  # the paper's signed weights amplify TPS differences
        diff = np.abs(blocked - glob)
        assert np.sqrt((diff**2).mean()) < 2e-3
    # a TPS-independent case is exact
    same = fsdaf(c1, f1, c1 + 0.01, block_size=4, **kw)
    np.testing.assert_array_equal(same, fsdaf(c1, f1, c1 + 0.01, block_size=15, **kw))


def test_blocked_exact_when_blocks_cover_tps() -> None:
    """With a TPS margin covering the whole image each block fits the global TPS: exact."""
    c1, f1, c2, _, labels = class_change_scene()
    rng = np.random.default_rng(1)
    c2 = c2 + block_mean(rng.normal(0, 0.01, c2.shape), 8)
    kw: dict[str, Any] = dict(scale_factor=8, class_map=labels, **SMALL)
    glob = fsdaf(c1, f1, c2, **kw)
    blocked = fsdaf(c1, f1, c2, block_size=2, tps_margin=8, **kw)
    np.testing.assert_allclose(blocked, glob, atol=1e-6)


@pytest.mark.parametrize("kmeans", [True, False])
def test_prepare_streaming_equals_in_memory(kmeans: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """predict_scene(prepare(source)) is fsdaf(arrays) whatever the statistics blocks, over several
    strips; any strip predicted on its own gives the same rows."""
    h, w, s = 100, 47, 6
    c1, f1, c2, _ = patchy_scene(h, w, s, seed=1)
    f1[:, 40:43, 10:30] = np.nan  # nodata rows crossing a strip boundary
    opts: dict[str, Any] = dict(scale_factor=s, block_size=4, window=5, n_similar=8)
    if not kmeans:
        opts["class_map"] = np.repeat(np.arange(h)[:, None] // 13 % 3, w, axis=1) + 1
    monkeypatch.setattr(fsdaf_module, "_KMEANS_SAMPLE", 700)  # sampling by index is exercised
    expected = fsdaf(c1, f1, c2, **opts)
    # one thread, blocks one after the other: the same numbers as concurrent blocks
    np.testing.assert_array_equal(fsdaf(c1, f1, c2, n_jobs=1, **opts), expected)
    monkeypatch.setattr(fsdaf_module, "_STAT_ROWS", 11)  # statistics from other row blocks
    source = ArraySource([(c1, f1)], c2)
    prediction = prepare(source, **opts)
    starts = prediction.row_starts(h, w)
    assert starts == list(range(0, h, 24)) and len(starts) == 5
    np.testing.assert_array_equal(predict_scene(prediction, source), expected)
    rows = dict(prediction.iter_rows(source, starts[2], starts[3]))
    np.testing.assert_array_equal(rows[starts[2]], expected[:, starts[2] : starts[3]])


def test_streaming_statistics_equal_in_memory_estimators() -> None:
    """Noise clamp (exact quantiles), thresholds and class changes from passes over row blocks
    equal the in-memory computations of commit 8d77b7c (whole-image sort, std, cell table)."""
    h, w, s = 90, 70, 5
    c1, f1, c2, _ = patchy_scene(h, w, s, seed=3)
    labels = np.repeat(np.repeat(np.arange(18 * 14).reshape(18, 14) % 4 + 1, 5, 0), 5, 1)
    config = FSDAFConfig.from_preset(scale_factor=s, n_pure=30)
    stats = scene_statistics(ArraySource([(c1, f1)], c2), config=config, class_map=labels)
    assert stats is not None and stats.noise is not None
    values = f1.reshape(3, -1)
    noise = fit_noise_fix(values, dn_min=0.0, dn_max=1.0)
    for name in ("low", "high", "fill_low", "fill_high"):
        np.testing.assert_array_equal(getattr(stats.noise, name), getattr(noise, name))
    np.testing.assert_allclose(stats.similarity_threshold, similarity_threshold(values, 4), rtol=1e-13)
    fixed = fsdaf_module.apply_noise_fix(f1, noise)
    table = cell_table(c1, fixed, c2, labels, np.ones((h, w), bool), scale_factor=s, n_classes=4)
    change = unmix_class_change(table.fractions, table.delta_coarse, n_pure=30)
    np.testing.assert_allclose(stats.class_change, change, atol=1e-13)


def test_map_blocks_keeps_row_order_and_raises() -> None:
    """The statistics passes' block map: results in row order with concurrent threads, errors raised."""
    rng = np.random.default_rng(0)
    images = [rng.random((2, 23, 5)).astype(np.float32) for _ in range(3)]
    source = ArraySource([(images[0], images[1])], images[2])

    def top(block: Block) -> int:
        time.sleep(0.01 * (block.top % 2))  # odd blocks finish later
        return block.top

    for threads in (1, 2):
        with fsdaf_module._threads(threads):
            assert list(fsdaf_module._map_blocks(source, 3, top)) == list(range(0, 23, 3))

    def fail(block: Block) -> int:
        if block.top == 6:
            raise ValueError("bad block")
        return block.top

    with fsdaf_module._threads(2), pytest.raises(ValueError, match="bad block"):
        list(fsdaf_module._map_blocks(source, 3, fail))


def test_prepare_large_scene_blocks_bound_the_tps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2000 x 1750 scene at s = 8, generated block by block: statistics by passes, and the
    first strip's TPS systems hold one block plus margin, never the scene."""

    rng = np.random.default_rng(0)
    # periodic patterns (periods not multiples of s) so that rows are generated cheaply, block by block
    pattern = (0.1 + 0.3 * rng.random((2, 97, 89))).astype(np.float32)
    coarse_cells = (0.1 + 0.3 * rng.random((2, 13, 11))).astype(np.float32)

    class Generated:
        bands, height, width, n_pairs = 2, 2000, 1750, 1

        def block(self, top: int, stop: int) -> Block:
            rows, cols = np.arange(top, stop), np.arange(self.width)
            fine = pattern[:, rows % 97][:, :, cols % 89]
            coarse = coarse_cells[:, (rows // 8) % 13][:, :, (cols // 8) % 11]
            pair = ReferencePair(coarse=coarse, fine=fine)
            return Block(top=top, pairs=(pair,), coarse_t2=coarse + np.float32(0.01))

    sizes: list[int] = []
    original = fsdaf_module._tps_factors

    def spy(pts: np.ndarray, *args: Any) -> Any:
        sizes.append(pts.shape[0])
        return original(pts, *args)

    monkeypatch.setattr(fsdaf_module, "_tps_factors", spy)
    source = Generated()
    # a class map that costs no memory (a broadcast view); default block_size
    classes = np.broadcast_to((np.arange(1750) // 50 % 3 + 1).astype(np.int32), (2000, 1750))
    prediction = prepare(source, scale_factor=8, window=2, n_similar=4, class_map=classes)
    starts = prediction.row_starts(2000, 1750)
    assert starts[1] == 30 * 8
    row, strip = next(iter(prediction.iter_rows(source, 0, starts[1])))
    assert row == 0 and strip.shape == (2, 240, 1750) and np.isfinite(strip).all()
    margin = block_margin_cells(FSDAFConfig.from_preset(scale_factor=8, window=2))
    assert sizes and max(sizes) <= (30 + 2 * margin) ** 2 < 250 * 219
    with pytest.raises(ValueError, match="block_size=400"):
        prepare(source, scale_factor=8, block_size=400)


# ---------------------------------------------------------------- equality with commit 8d77b7c on real data

#: Predictions of commit 8d77b7c (NumPy FSDAF) on the bundled samples, float32 inputs read as
#: int16 * 1e-4: 40 pixels (rows, cols drawn with default_rng(2024)) and the sum over the image.
#: lgc-flood: pair 20041126, coarse 20041228, scale_factor=16 (global = one 30-cell block).
#: cia-crop: pair 20011008, coarse 20011017, scale_factor=8, block_size=16 (both presets).
OLD_CODE = {
    "lgc_idl_s16": {
        "rows": [
            220,
            81,
            156,
            115,
            37,
            44,
            31,
            307,
            50,
            416,
            79,
            247,
            223,
            126,
            37,
            271,
            152,
            172,
            165,
            86,
            296,
            102,
            468,
            324,
            97,
            383,
            282,
            384,
            383,
            68,
            436,
            234,
            330,
            473,
            477,
            286,
            438,
            2,
            439,
            148,
        ],
        "cols": [
            26,
            196,
            80,
            438,
            332,
            152,
            376,
            444,
            279,
            267,
            319,
            211,
            119,
            300,
            376,
            257,
            214,
            294,
            327,
            377,
            22,
            412,
            137,
            165,
            115,
            345,
            279,
            31,
            331,
            126,
            49,
            28,
            6,
            120,
            442,
            226,
            282,
            106,
            145,
            247,
        ],
        "sum": 84408.84339697775,
        "values": [
            (0.082957685, 0.0793739036, 0.253422379),
            (0.0712301135, 0.0803749785, 0.205649853),
            (0.0915464163, 0.11448095, 0.180939361),
            (0.101649679, 0.13365756, 0.248273179),
            (0.0507991947, 0.0455478095, 0.199445173),
            (0.0637623519, 0.0564197041, 0.303525418),
            (0.0355991349, 0.0337923877, 0.148505434),
            (0.0708772615, 0.0561943166, 0.307799131),
            (0.0800938681, 0.0881049186, 0.239261404),
            (0.0990568325, 0.103795357, 0.209174514),
            (0.0650020316, 0.0724643022, 0.196096808),
            (0.0853025839, 0.103371255, 0.159793526),
            (0.0818726867, 0.0803960636, 0.302020818),
            (0.0610261746, 0.064271681, 0.1787512),
            (0.0370904654, 0.030373143, 0.15459986),
            (0.084046714, 0.102524586, 0.167171404),
            (0.0833517462, 0.0949294791, 0.190637589),
            (0.125646204, 0.155612126, 0.227437049),
            (0.0951613262, 0.110086791, 0.306815207),
            (0.0356437676, 0.036895778, 0.158305913),
            (0.108819656, 0.127406627, 0.238007188),
            (0.0882348567, 0.105584651, 0.164306641),
            (0.0658596382, 0.0612087362, 0.237685189),
            (0.0865673348, 0.0908936635, 0.17523478),
            (0.0461123325, 0.0459719859, 0.150713995),
            (0.0410340913, 0.0383878499, 0.196528822),
            (0.0948744863, 0.113780223, 0.18864277),
            (0.0665876046, 0.0601788014, 0.31054911),
            (0.0490866117, 0.0434510745, 0.197746366),
            (0.0633445233, 0.0636766776, 0.210287735),
            (0.0580255054, 0.0644672513, 0.22245656),
            (0.0818920359, 0.0798262209, 0.257887989),
            (0.0422951281, 0.0424804203, 0.153952599),
            (0.0689295083, 0.0661407039, 0.235233471),
            (0.0629726797, 0.0381813385, 0.405565172),
            (0.0730101913, 0.0879926607, 0.142895043),
            (0.0548047647, 0.048767928, 0.189644992),
            (0.0449065231, 0.0389971323, 0.161341295),
            (0.0679357722, 0.0676732212, 0.236003622),
            (0.0815742686, 0.0933821499, 0.203915775),
        ],
    },
    "cia_idl_s8_b16": {
        "rows": [
            114,
            42,
            81,
            60,
            19,
            23,
            16,
            160,
            26,
            216,
            41,
            128,
            116,
            65,
            19,
            141,
            79,
            89,
            86,
            45,
            154,
            53,
            243,
            168,
            50,
            199,
            147,
            199,
            199,
            35,
            227,
            121,
            171,
            246,
            248,
            149,
            228,
            1,
            228,
            77,
        ],
        "cols": [
            146,
            97,
            84,
            86,
            156,
            18,
            138,
            92,
            85,
            222,
            120,
            217,
            66,
            233,
            168,
            101,
            91,
            220,
            73,
            47,
            40,
            137,
            220,
            213,
            160,
            211,
            36,
            248,
            191,
            135,
            12,
            221,
            215,
            110,
            207,
            50,
            92,
            39,
            180,
            80,
        ],
        "sum": 44795.80764125234,
        "values": [
            (0.0426956117, 0.0757997185, 0.101409286, 0.200726807, 0.231981769, 0.1699512),
            (0.0439908803, 0.0758951977, 0.100545175, 0.170538023, 0.210288823, 0.148133159),
            (0.0549948402, 0.0723540261, 0.0972099453, 0.157904163, 0.221962288, 0.187357292),
            (0.0305783432, 0.0607328415, 0.0449617021, 0.561399162, 0.204753622, 0.0786266848),
            (0.0930395871, 0.134532198, 0.148194745, 0.119684011, 0.0782191604, 0.0560057797),
            (0.0337413698, 0.0602039658, 0.0626336783, 0.258006334, 0.224538863, 0.139728799),
            (0.0418778583, 0.065060012, 0.116228513, 0.156286865, 0.243939757, 0.182130292),
            (0.0428723283, 0.0650029704, 0.092285715, 0.179613456, 0.197704643, 0.152619138),
            (0.0387126282, 0.0598555915, 0.0823626965, 0.145936221, 0.201788545, 0.180803001),
            (0.0402283184, 0.077710785, 0.0880001634, 0.246437773, 0.217507362, 0.147809982),
            (0.0526553579, 0.0719893575, 0.0851339921, 0.10943225, 0.0379878059, 0.0239215903),
            (0.031344559, 0.0574440435, 0.0722340122, 0.228739232, 0.246491641, 0.166071206),
            (0.0313979574, 0.0644409508, 0.0707442984, 0.252459466, 0.166073442, 0.0968897343),
            (0.00889150985, 0.0297691301, 0.0176136997, 0.358531266, 0.09178029, 0.0287260041),
            (0.0381965265, 0.0590508617, 0.0865194201, 0.129216909, 0.200110257, 0.140801921),
            (0.0302515458, 0.0561998785, 0.0779528692, 0.125063196, 0.168136939, 0.137079731),
            (0.0431612469, 0.0606928095, 0.0808680207, 0.136161044, 0.200882107, 0.154471487),
            (0.0343883038, 0.0554488301, 0.0713747516, 0.103116691, 0.13888526, 0.103898562),
            (0.0539295003, 0.0830612481, 0.117847674, 0.198480606, 0.282932907, 0.221269548),
            (0.0207588021, 0.0470428392, 0.0499906354, 0.238850772, 0.132668853, 0.080167219),
            (0.0248754062, 0.0567426942, 0.0750953108, 0.287031531, 0.227188691, 0.152061224),
            (0.0278180577, 0.0500318743, 0.0519049764, 0.257284403, 0.130581722, 0.0664733201),
            (0.0325559713, 0.0689793676, 0.104434371, 0.135742053, 0.224221081, 0.159098387),
            (0.0191485044, 0.0421209037, 0.0313481949, 0.537949622, 0.166255638, 0.0817078128),
            (0.0365066975, 0.053466849, 0.0728529394, 0.13539128, 0.193814307, 0.1693203),
            (0.0213701632, 0.0464726016, 0.0449843369, 0.329329163, 0.158099502, 0.0920496285),
            (0.0311787389, 0.0613390282, 0.0674675182, 0.237854123, 0.198112488, 0.122523762),
            (0.0302736741, 0.0540605523, 0.0512079373, 0.266745031, 0.202094898, 0.122569397),
            (0.010817959, 0.0332152173, 0.0165609643, 0.332494974, 0.0714547709, 0.018912157),
            (0.0623228997, 0.0854258463, 0.108164899, 0.181034103, 0.235040978, 0.167672172),
            (0.00804965477, 0.0349770002, 0.0187521446, 0.434235364, 0.112247676, 0.0426465459),
            (0.0301090553, 0.059330035, 0.0864066407, 0.187486231, 0.191473484, 0.147864684),
            (0.0110963602, 0.0394158997, 0.0237067007, 0.49347806, 0.13995932, 0.0639795139),
            (0.021672735, 0.049605079, 0.035212446, 0.315854847, 0.121792153, 0.0464384146),
            (0.0728262365, 0.0966503993, 0.114852443, 0.219135374, 0.280166656, 0.219889715),
            (0.0249343868, 0.0518536977, 0.0621002056, 0.267074853, 0.178106487, 0.0991662368),
            (0.00836376473, 0.0312030241, 0.0151467798, 0.431379408, 0.0582230166, 0.00316045503),
            (0.0549206845, 0.0858182833, 0.115816489, 0.224057734, 0.275469661, 0.213871554),
            (0.0345787443, 0.0707313418, 0.117122091, 0.176317766, 0.207878709, 0.176164269),
            (0.0473567992, 0.0688023195, 0.0812395215, 0.172036722, 0.194674313, 0.149061069),
        ],
    },
    "cia_zhu2016_s8_b16": {
        "rows": [
            114,
            42,
            81,
            60,
            19,
            23,
            16,
            160,
            26,
            216,
            41,
            128,
            116,
            65,
            19,
            141,
            79,
            89,
            86,
            45,
            154,
            53,
            243,
            168,
            50,
            199,
            147,
            199,
            199,
            35,
            227,
            121,
            171,
            246,
            248,
            149,
            228,
            1,
            228,
            77,
        ],
        "cols": [
            146,
            97,
            84,
            86,
            156,
            18,
            138,
            92,
            85,
            222,
            120,
            217,
            66,
            233,
            168,
            101,
            91,
            220,
            73,
            47,
            40,
            137,
            220,
            213,
            160,
            211,
            36,
            248,
            191,
            135,
            12,
            221,
            215,
            110,
            207,
            50,
            92,
            39,
            180,
            80,
        ],
        "sum": 45005.77023672119,
        "values": [
            (0.0421613678, 0.0764396861, 0.101741374, -0.480810583, 0.232311502, 0.162702799),
            (0.0463774689, 0.076824531, 0.141011402, 0.170473859, 0.217332199, 0.1547236),
            (0.108003907, 0.0739784762, 0.0960279703, 0.154771581, 0.203616187, 0.222758099),
            (0.0351017416, 0.0629254431, 0.0552939847, 0.531464338, 0.224390075, 0.146923825),
            (0.0955410302, 0.129749641, -0.994013071, 0.18492046, 0.0827459022, 0.0660655946),
            (0.0335179195, 0.0598892011, 0.0617727563, 0.251613408, 0.223725587, 0.137333333),
            (0.0429199338, 0.0654859692, 0.116940223, 0.163614571, 0.243465707, 0.185274348),
            (0.0448851325, 0.0686271265, 0.13502185, -0.112035871, 0.207225621, 0.130446851),
            (0.0393399037, 0.0611786805, 0.0823320672, 0.164516717, 0.206101686, 0.180126697),
            (0.0406828262, 0.0909800157, 0.159540266, 0.0213827621, 0.201714665, 0.126547337),
            (0.0496155173, 0.0785669535, 0.0831707269, 0.12188445, 0.0563284867, 0.0395902395),
            (0.0264333393, 0.0562654957, 0.483005941, 0.226146773, 0.241278321, 0.144678712),
            (0.0335058346, 0.0597818457, 0.0761361793, 0.185416684, 0.160469249, 0.103250235),
            (0.00637447881, 0.0396556221, 0.0214205179, 0.338420838, 0.0650438666, 0.030585859),
            (0.0387204774, 0.0602014512, 0.683114052, 0.13171047, 0.201464921, 0.142313927),
            (0.0270882174, 0.0312430095, 0.0694119334, 0.158420786, 0.162340969, 0.12396916),
            (0.04150258, 0.0640896559, 0.0467832983, 0.134965643, 0.205254838, -0.0145776924),
            (0.0720741078, 0.0617607981, 0.0137503501, 0.157246977, 0.105014198, 0.0729230046),
            (0.0509573333, -1.61230266, 0.105186619, 0.177846044, 0.293491215, 0.210027933),
            (0.0102249356, 0.0475773066, 0.0568777993, 0.268148631, 0.142006084, 0.257852852),
            (0.0241068602, 0.0573015697, 0.0752000213, 0.289541245, 0.222535223, 0.15126051),
            (0.0307838582, 0.0467940681, 0.0752472058, 0.256268978, 0.141406864, 0.0767213553),
            (-0.00155589031, 0.069402881, 0.105733775, 0.136487171, 0.233234227, 0.25329712),
            (0.0195083562, 0.0439422503, 0.0338229947, 0.679562986, 0.165478215, 0.082558319),
            (0.0355342291, -0.00280060642, 0.081061095, 0.13510412, 0.204085737, 0.1710888),
            (0.0299196038, 0.0495322347, 0.114543021, 0.325702846, 0.129786268, 0.069471024),
            (0.0313179269, 0.0610265024, 0.0658263788, 0.244368196, 0.199989796, 0.130794451),
            (0.0311484337, 0.0551991463, 0.0429492295, 0.26987049, 0.179131806, 0.117434673),
            (0.00497852499, 0.0129569368, 0.00109878578, 0.320723027, 0.0291097686, 0.00404874375),
            (0.0595383942, 0.0813386962, 0.113644578, 0.194054306, 0.241341591, 0.171319574),
            (0.0145299872, 0.0499540046, 0.0402751006, 0.457345188, 0.134882346, 0.0632157177),
            (0.0250731595, 0.0558086224, 0.0578006469, 0.195493892, 0.196858123, 0.147559732),
            (0.0117359376, 0.0412654318, 0.0262465999, 0.585918903, 0.136251733, 0.0645904317),
            (-0.0022149838, 0.0502921753, 0.00485563138, 0.253580034, 0.130714491, 0.0517884307),
            (0.0728849247, 0.0995408297, 0.121587098, 0.219788969, 0.281046242, 0.219332963),
            (0.0233985689, 0.0501076356, 0.0636667535, 0.273670793, 0.176669553, 0.0984706804),
            (0.00949402805, 0.0344790816, 0.0164764095, 0.431495517, -0.0138001861, -0.0549302176),
            (0.0535751916, 0.0848812535, 0.11420431, 0.226265594, 0.275442153, 0.210482225),
            (0.0321922004, 0.0676199943, 0.0762298107, 0.167147577, 0.204896778, 0.17367959),
            (0.0461341217, 3.09425712, 0.0740191191, 0.119123735, 0.17706643, 0.115313336),
        ],
    },
}

OLD_CASES = {
    "lgc_idl_s16": ("lgc-flood", "20041126", "20041228", {"scale_factor": 16}),
    "cia_idl_s8_b16": ("cia-crop", "20011008", "20011017", {"scale_factor": 8, "block_size": 16}),
    "cia_zhu2016_s8_b16": (
        "cia-crop",
        "20011008",
        "20011017",
        {"scale_factor": 8, "block_size": 16, "preset": "zhu2016"},
    ),
}


def read_sample(dataset: str, role: str, date: str) -> np.ndarray:
    import rasterio

    from stfusion.sample import DATASETS

    with rasterio.open(DATASETS[dataset] / f"{role}_{date}.tif") as src:
        return src.read().astype(np.float32) * np.float32(1e-4)


@pytest.mark.parametrize("case", list(OLD_CASES))
def test_equals_commit_8d77b7c_on_samples(case: str) -> None:
    dataset, t1, t2, opts = OLD_CASES[case]
    c1, f1, c2 = (
        read_sample(dataset, "coarse", t1),
        read_sample(dataset, "fine", t1),
        read_sample(dataset, "coarse", t2),
    )
    pred = fsdaf(c1, f1, c2, **opts)
    ref = OLD_CODE[case]
    got = pred[:, ref["rows"], ref["cols"]].T
    # values of the zhu2016 preset reach ~10 (unclamped paper weights): 1e-6 is then ~1 float32 ulp
    np.testing.assert_allclose(got, np.array(ref["values"]), atol=1e-6, rtol=2.5e-7)
    assert np.isfinite(pred).all()
    assert float(pred.astype(np.float64).sum()) == pytest.approx(ref["sum"], abs=pred.size * 1e-7)


# ---------------------------------------------------------------- scale factor estimate


@pytest.mark.parametrize("s", [2, 3, 5, 8, 16, 20])
def test_scale_factor_of_block_replicated_images(s: int) -> None:
    rng = np.random.default_rng(s)
    h, w = 7 * s + s // 2 + 1, 9 * s + 1  # partial trailing cells
    image = block_mean(rng.uniform(0.05, 0.4, (2, h, w)), s)
    image[:, : 2 * s, : 3 * s] = np.nan  # nodata cells are ignored
    assert estimate_scale_factor(image) == s
    assert estimate_scale_factor(image[0]) == s


@pytest.mark.parametrize("s", [6.0, 9.26, 12.0])
def test_scale_factor_of_bilinear_resampled_images(s: float) -> None:
    from scipy.ndimage import zoom

    rng = np.random.default_rng(1)
    coarse = rng.uniform(0.05, 0.4, (3, int(420 / s) + 2, int(420 / s) + 2))
    image = np.stack([zoom(b, s, order=1, grid_mode=True, mode="nearest")[:400, :400] for b in coarse])
    assert abs(estimate_scale_factor(np.round(image * 1e4) / 1e4) - s) <= 1.0


def test_scale_factor_errors() -> None:
    with pytest.raises(ValueError, match="constant"):
        estimate_scale_factor(np.full((2, 40, 40), 0.3))
    with pytest.raises(ValueError, match="no two adjacent finite"):
        estimate_scale_factor(np.full((2, 40, 40), np.nan))
    with pytest.raises(ValueError, match="shape"):
        estimate_scale_factor(np.zeros((2, 2, 3, 4)))
    # the messages say how to give it, in Python and on the command line
    for image in (np.full((2, 40, 40), 0.3), np.random.default_rng(0).uniform(size=(2, 3, 3))):
        with pytest.raises(ValueError) as error:
            estimate_scale_factor(image)
        assert "set it: scale_factor=N" in str(error.value), error.value
        assert "--option scale_factor=N or --coarse-ratio N" in str(error.value), error.value


@pytest.mark.parametrize(
    ("dataset", "date", "low", "high"),
    [
        ("lgc-flood", "20041126", 16, 16),
        ("cia-crop", "20011008", 8, 10),
        ("estarfm-site", "20010524", 12, 20),
    ],
)
def test_scale_factor_of_bundled_samples(dataset: str, date: str, low: int, high: int) -> None:
    """lgc-flood: 16 x 16 block means (exact); cia-crop: 50 m vs ~463 m MODIS (~9.3); estarfm-site:
    30 m vs 500 m MODIS on a sheared grid (~16.7)."""
    assert low <= estimate_scale_factor(read_sample(dataset, "coarse", date)) <= high


def test_fsdaf_estimates_scale_factor_when_not_given(caplog: pytest.LogCaptureFixture) -> None:
    c1, f1, c2, _ = patchy_scene(96, 80, 8, seed=4)
    with caplog.at_level("INFO", logger="stfusion.baselines.fsdaf"):
        _, diag = fsdaf(c1, f1, c2, return_diagnostics=True, window=4, n_similar=6)
    assert diag.config.scale_factor == 8
    assert "scale factor 8 estimated from the coarse image" in caplog.text  # -v shows it


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"preset": "nope"}, "preset='nope'"),
        ({"window": 0}, "window=0"),
        ({"window": 2.5}, "window=2.5"),
        ({"n_similar": 0}, "n_similar=0"),
        ({"quantiles": (0.9, 0.1)}, "quantiles=\\(0.9, 0.1\\)"),
        ({"final_weighting": "x"}, "final_weighting='x'"),
        ({"similar_rule": "x"}, "similar_rule='x'"),
        ({"block_size": 0}, "block_size=0"),
        ({"dn_min": 1.0, "dn_max": 0.0}, "dn_max=0.0"),
        ({"scale_factor": 0}, "scale_factor=0"),
        ({"noise_fix": "yes"}, "noise_fix='yes'"),
        ({"n_jobs": 0}, "n_jobs=0"),
        ({"eps_cw": -1.0}, "eps_cw=-1.0"),
        ({"windw": 3}, "unknown FSDAF option windw=3"),
        ({"class_map": np.ones((3, 3), int)}, "class_map"),
        ({"class_map": np.ones((16, 16))}, "integer"),
        ({"valid_mask": np.ones((2, 2), bool)}, "valid_mask"),
    ],
)
def test_option_validation(options: dict[str, object], message: str) -> None:
    image = np.full((1, 16, 16), 0.2, dtype=np.float32)
    kw: dict[str, object] = {"scale_factor": 4, **options}
    with pytest.raises(ValueError, match=message):
        fsdaf(image, image, image, **kw)  # type: ignore[arg-type]


def test_option_help_covers_every_option() -> None:
    fields = set(FSDAFConfig.__dataclass_fields__)
    assert set(OPTION_HELP) == fields
    assert all(isinstance(text, str) and text and "\n" not in text for text in OPTION_HELP.values())


def test_shape_config_and_pair_errors() -> None:
    image = np.full((1, 16, 16), 0.2, dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        fsdaf(image, image[:, :8], image, scale_factor=4)
    config = FSDAFConfig.from_preset(scale_factor=4)
    with pytest.raises(ValueError, match="either config"):
        fsdaf(image, image, image, config=config, window=3)
    with pytest.raises(ValueError, match="one reference pair"):
        prepare(ArraySource([(image, image), (image, image)], image), scale_factor=4)


def test_all_invalid_gives_nan() -> None:
    image = np.full((2, 16, 16), np.nan, dtype=np.float32)
    assert np.isnan(fsdaf(image, image, image)).all()
    assert math.isnan(float(fsdaf(image, image, image, scale_factor=4)[0, 0, 0]))


def test_cells_follow_the_coarse_pixels_of_a_scene_cut_anywhere() -> None:
    """A scene cut 5 rows and 8 columns into the 16-pixel coarse cells of the LGC sample: its cells are
    found on the coarse pixels (not squares from pixel (0, 0)), in memory and block by block alike."""
    from stfusion import raster
    from stfusion.sample import DATASETS

    root = DATASETS["lgc-flood"]
    names = ("coarse_20041126", "fine_20041126", "coarse_20041228")
    crop = (slice(None), slice(5, 5 + 120), slice(8, 8 + 136))
    c1, f1, c2 = (raster.read(root / f"{name}.tif").data[crop] for name in names)
    assert fsdaf_module.estimate_cell_offset(c1, 16) == (11, 8)
    assert fsdaf_module.estimate_cell_offset(f1, 16) == (0, 0)  # not block-replicated: no edges to find
    whole = fsdaf(c1, f1, c2, scale_factor=16, block_size=4)
    assert np.isfinite(whole).all()
    # the same as the scene given with the rest of its first coarse pixels as NaN (cells from (0, 0))
    pad = ((0, 0), (5, 0), (8, 0))
    padded = [np.pad(a, pad, constant_values=np.nan) for a in (c1, f1, c2)]
    assert fsdaf_module.estimate_cell_offset(padded[0], 16) == (0, 0)
    np.testing.assert_array_equal(whole, fsdaf(*padded, scale_factor=16, block_size=4)[:, 5:, 8:])
    # block by block over row ranges (as ranks split a scene), and with diagnostics
    source = ArraySource([(c1, f1)], c2)
    prepared = fsdaf_module.prepare(source, scale_factor=16, block_size=4)
    starts = prepared.row_starts(source.height, source.width)
    assert starts[0] == 0 and starts[1] % 16 == 11  # strips end on coarse pixels' edges
    parts = [
        values
        for first, stop in itertools.pairwise([*starts, source.height])
        for _, values in prepared.iter_rows(source, first, stop)
    ]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    # a scene taller than the rows the offset is found on: found in its middle rows, placed in the scene
    tall = (slice(None), slice(5, 5 + 700), slice(8, 8 + 40))
    tall_c1 = raster.read(root / f"{names[0]}.tif").data[tall]
    assert fsdaf_module._cell_alignment(ArraySource([(tall_c1, tall_c1)], tall_c1), 16) == (5, 8)
    aligned = (slice(None), slice(16, 16 + 700), slice(0, 40))
    plain_c1 = raster.read(root / f"{names[0]}.tif").data[aligned]
    assert fsdaf_module._cell_alignment(ArraySource([(plain_c1, plain_c1)], plain_c1), 16) == (0, 0)
    for diagnose in (False, True):  # maps are checked against the scene's own shape, not the padded one
        with pytest.raises(ValueError, match=r"class_map must have shape \(120, 136\)"):
            fsdaf(
                c1, f1, c2, scale_factor=16, class_map=np.ones((119, 136), int), return_diagnostics=diagnose
            )
    diagnosed, diagnostics = fsdaf(c1, f1, c2, scale_factor=16, block_size=4, return_diagnostics=True)
    np.testing.assert_array_equal(diagnosed, whole)
    assert diagnostics.temporal.shape == whole.shape and diagnostics.class_map.shape == whole.shape[1:]


def test_kmeans_sample_is_drawn_by_position_so_a_masked_pixel_changes_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The k-means sample is a draw of pixel positions over the whole scene, the valid ones kept, topped
    up to min(sample size, valid pixels) by the valid pixels of lowest fixed priority: masking pixels
    outside it leaves the sample (and so every class) as it was, masking drawn ones swaps each for one
    top-up pixel, and a scene with few valid pixels samples them all (a draw over the valid pixels by
    index drew a new sample for any mask, and changed classes everywhere)."""
    c1, f1, c2, _ = patchy_scene(60, 60, 5)
    monkeypatch.setattr(fsdaf_module, "_KMEANS_SAMPLE", 500)
    drawn = np.sort(np.random.default_rng(0).choice(3600, 500, False))
    samples: list[np.ndarray] = []
    fit = fsdaf_module.fit_classes

    def recorded(x: np.ndarray, **kwargs: Any) -> np.ndarray:
        samples.append(x.copy())
        return fit(x, **kwargs)

    monkeypatch.setattr(fsdaf_module, "fit_classes", recorded)
    config = fsdaf_module.FSDAFConfig(scale_factor=5)
    undrawn = np.setdiff1d(np.arange(3600), drawn)
    few = np.ones(3600, bool)
    few[undrawn[:40]] = False  # 40 valid pixels, none of them drawn
    masks = {"none": [], "undrawn": list(undrawn[[7, 1500]]), "drawn": list(drawn[[3, 400]])}
    for positions in [*masks.values(), list(np.flatnonzero(few))]:
        fine = f1.copy()
        fine[:, np.asarray(positions, int) // 60, np.asarray(positions, int) % 60] = np.nan
        fsdaf_module.scene_statistics(ArraySource([(c1, fine)], c2), config=config)
    clean, outside, inside, sparse = samples
    flat = f1.reshape(3, -1)
    np.testing.assert_array_equal(clean, flat[:, drawn].T)
    np.testing.assert_array_equal(outside, clean)
    priority = fsdaf_module._sample_priority(undrawn, 0)
    np.testing.assert_array_equal(inside[:498], np.delete(clean, [3, 400], axis=0))
    np.testing.assert_array_equal(inside[498:], flat[:, undrawn[np.argsort(priority)[:2]]].T)
    assert sparse.shape == (40, 3)
    np.testing.assert_array_equal(np.sort(sparse, axis=0), np.sort(flat[:, undrawn[:40]].T, axis=0))
