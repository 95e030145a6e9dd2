"""Tests of stfusion.metrics against docs/metrics.md: invariants, scikit-image and direct NumPy formulas."""

from __future__ import annotations

import doctest
import json
import logging
import math
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import stfusion.metrics as metrics_module
from stfusion.metrics import (
    BAND_METRICS,
    METRIC_COLUMNS,
    MetricReport,
    bias,
    cc,
    compute_metrics,
    ergas,
    mae,
    psnr,
    rmse,
    sam,
    ssim,
    uiqi,
    uiqi_map,
)


def _pair(
    shape: tuple[int, int, int] = (4, 32, 40), *, dtype: type = np.float32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.02, 0.6, size=shape)
    prediction = truth + rng.normal(0.0, 0.03, size=shape)
    return prediction.astype(dtype), truth.astype(dtype)


# ---------------------------------------------------------------------------------- perfect match


def test_perfect_prediction() -> None:
    _, truth = _pair()
    report = compute_metrics(truth.copy(), truth, ratio=0.05)
    for band_values in (report.per_band, {k: [v] for k, v in report.mean.items()}):
        for value in band_values["rmse"]:
            assert value == 0.0
        for value in band_values["mae"]:
            assert value == 0.0
        for value in band_values["psnr"]:
            assert value == math.inf
        for value in band_values["ssim"]:
            assert value == pytest.approx(1.0, abs=1e-12)
        for value in band_values["cc"]:
            assert value == pytest.approx(1.0, abs=1e-12)
        for value in band_values["uiqi"]:
            assert value == pytest.approx(1.0, abs=1e-12)
    assert report.mean["sam"] == 0.0
    assert report.mean["ergas"] == 0.0


# ------------------------------------------------------------------------------ scikit-image parity


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ssim_range", [2.0, 1.0])
def test_ssim_equals_skimage(dtype: type, ssim_range: float) -> None:
    prediction, truth = _pair(dtype=dtype)
    report = compute_metrics(prediction, truth, ssim_data_range=ssim_range)
    for band in range(truth.shape[0]):
        expected = structural_similarity(truth[band], prediction[band], data_range=ssim_range)
        assert report.per_band["ssim"][band] == expected  # exact: same computation
    assert report.conventions["ssim_data_range"] == ssim_range


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_psnr_equals_skimage(dtype: type, data_range: float) -> None:
    prediction, truth = _pair(dtype=dtype, seed=3)
    report = compute_metrics(prediction, truth, data_range=data_range)
    for band in range(truth.shape[0]):
        expected = peak_signal_noise_ratio(truth[band], prediction[band], data_range=data_range)
        assert report.per_band["psnr"][band] == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------- direct NumPy formulas


def test_pixel_metrics_match_numpy() -> None:
    prediction, truth = _pair(dtype=np.float64, seed=1)
    report = compute_metrics(prediction, truth, ratio=0.05)
    diff = prediction - truth
    np.testing.assert_allclose(report.per_band["rmse"], np.sqrt((diff**2).mean(axis=(1, 2))))
    np.testing.assert_allclose(report.per_band["mae"], np.abs(diff).mean(axis=(1, 2)))
    np.testing.assert_allclose(report.per_band["bias"], diff.mean(axis=(1, 2)))
    # bias sign: prediction minus truth
    biased = compute_metrics(truth + 0.01, truth)
    assert all(b == pytest.approx(0.01) for b in biased.per_band["bias"])
    for metric in BAND_METRICS:
        assert report.mean[metric] == pytest.approx(np.mean(report.per_band[metric]))


def test_ergas_sam_cc_match_numpy() -> None:
    prediction, truth = _pair(shape=(5, 24, 30), dtype=np.float64, seed=2)
    ratio = 25.0 / 500.0
    report = compute_metrics(prediction, truth, ratio=ratio)

    rmse = np.sqrt(((prediction - truth) ** 2).mean(axis=(1, 2)))
    ergas = 100.0 * ratio * np.sqrt(np.mean(rmse**2 / truth.mean(axis=(1, 2)) ** 2))
    assert report.mean["ergas"] == pytest.approx(ergas, abs=1e-6)

    p = prediction.reshape(5, -1)
    t = truth.reshape(5, -1)
    cos = (p * t).sum(0) / (np.linalg.norm(p, axis=0) * np.linalg.norm(t, axis=0))
    sam = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean()
    assert report.mean["sam"] == pytest.approx(sam, abs=1e-6)

    for band in range(5):
        cc = np.corrcoef(p[band], t[band])[0, 1]
        assert report.per_band["cc"][band] == pytest.approx(cc, abs=1e-6)


def _uiqi_loop(p: np.ndarray, t: np.ndarray, window: int, ok: np.ndarray | None = None) -> float:
    """Direct Wang-Bovik Q over every window fully inside the image (and fully valid)."""
    values = []
    for i in range(t.shape[0] - window + 1):
        for j in range(t.shape[1] - window + 1):
            if ok is not None and not ok[i : i + window, j : j + window].all():
                continue
            a = p[i : i + window, j : j + window].astype(np.float64).ravel()
            b = t[i : i + window, j : j + window].astype(np.float64).ravel()
            cov = np.cov(a, b)
            q = 4 * cov[0, 1] * a.mean() * b.mean()
            q /= (cov[0, 0] + cov[1, 1]) * (a.mean() ** 2 + b.mean() ** 2)
            values.append(q)
    return float(np.mean(values))


@pytest.mark.parametrize("window", [8, 5])
def test_uiqi_matches_window_loop(window: int) -> None:
    prediction, truth = _pair(shape=(2, 13, 11), dtype=np.float64, seed=4)
    report = compute_metrics(prediction, truth, uiqi_window=window)
    for band in range(2):
        expected = _uiqi_loop(prediction[band], truth[band], window)
        assert report.per_band["uiqi"][band] == pytest.approx(expected, abs=1e-10)
    assert report.conventions["uiqi_n_windows"] == (13 - window + 1) * (11 - window + 1)


def test_uiqi_matches_window_loop_with_mask() -> None:
    prediction, truth = _pair(shape=(1, 16, 14), dtype=np.float64, seed=5)
    valid = np.ones((16, 14), dtype=bool)
    valid[2, 3] = False
    valid[12, 11] = False
    report = compute_metrics(prediction, truth, valid=valid)
    expected = _uiqi_loop(prediction[0], truth[0], 8, ok=valid)
    assert report.per_band["uiqi"][0] == pytest.approx(expected, abs=1e-10)


def test_uiqi_map_shape_and_degenerate_windows() -> None:
    ones = np.full((9, 10), 0.3)
    q = uiqi_map(ones, ones, window=8)
    assert q.shape == (2, 3)
    np.testing.assert_array_equal(q, 1.0)
    # both constant, different means: luminance term only
    q = uiqi_map(np.full((8, 8), 0.2), np.full((8, 8), 0.4), window=8)
    assert q[0, 0] == pytest.approx(2 * 0.2 * 0.4 / (0.2**2 + 0.4**2))
    # both all zero: identical, Q = 1
    assert uiqi_map(np.zeros((8, 8)), np.zeros((8, 8)))[0, 0] == 1.0


# --------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize("fill", ["random", "nan", "inf"])
def test_masked_pixels_do_not_change_metrics(fill: str) -> None:
    prediction, truth = _pair(shape=(3, 30, 36), seed=6)
    rng = np.random.default_rng(7)
    valid = rng.random((30, 36)) > 0.03
    valid[5:9, 10:20] = False
    reference = compute_metrics(prediction, truth, valid=valid, ratio=0.05)

    altered_p = prediction.copy()
    altered_t = truth.copy()
    n_masked = int((~valid).sum())
    if fill == "random":
        altered_p[:, ~valid] = rng.uniform(-5, 5, size=(3, n_masked))
        altered_t[:, ~valid] = rng.uniform(-5, 5, size=(3, n_masked))
    else:
        value = np.nan if fill == "nan" else np.inf
        altered_p[:, ~valid] = value
        altered_t[:, ~valid] = -value
    altered = compute_metrics(altered_p, altered_t, valid=valid, ratio=0.05)
    assert altered.per_band == reference.per_band  # exactly equal, not approximately
    assert altered.mean == reference.mean
    assert altered.conventions == reference.conventions
    assert reference.conventions["n_masked"] == n_masked
    assert reference.conventions["n_excluded"] == n_masked
    assert reference.conventions["ssim_n_windows"] > 0
    for value in (*reference.per_band["ssim"], *reference.per_band["uiqi"]):
        assert math.isfinite(value)


def test_masked_ssim_uses_only_clean_windows() -> None:
    # Masking the top rows is the same as evaluating the image below them (up to rounding).
    prediction, truth = _pair(shape=(2, 30, 25), dtype=np.float64, seed=8)
    valid = np.ones((30, 25), dtype=bool)
    valid[:10] = False
    report = compute_metrics(prediction, truth, valid=valid)
    for band in range(2):
        expected = structural_similarity(truth[band, 10:], prediction[band, 10:], data_range=2.0)
        assert report.per_band["ssim"][band] == pytest.approx(expected, abs=1e-10)
        expected_q = _uiqi_loop(prediction[band, 10:], truth[band, 10:], 8)
        assert report.per_band["uiqi"][band] == pytest.approx(expected_q, abs=1e-10)


def test_unpredicted_and_nonfinite_truth_are_excluded_and_counted() -> None:
    prediction, truth = _pair(shape=(3, 20, 20), seed=9)
    prediction[1, 0, 0] = np.nan  # one band unpredicted -> whole pixel excluded
    prediction[:, 5, 5] = np.inf
    truth[2, 7, 7] = np.nan
    valid = np.ones((20, 20), dtype=bool)
    valid[19, 19] = False
    report = compute_metrics(prediction, truth, valid=valid)
    conv = report.conventions
    assert conv["n_unpredicted"] == 2
    assert conv["n_nonfinite_truth"] == 1
    assert conv["n_masked"] == 1
    assert conv["n_valid"] == 400 - 4
    assert conv["n_excluded"] == 4

    explicit = np.ones((20, 20), dtype=bool)
    for row, col in [(0, 0), (5, 5), (7, 7), (19, 19)]:
        explicit[row, col] = False
    clean_p, clean_t = prediction.copy(), truth.copy()
    clean_p[:, ~explicit] = 0.0
    clean_t[:, ~explicit] = 0.0
    same = compute_metrics(clean_p, clean_t, valid=explicit)
    assert same.per_band == report.per_band


def test_sam_zero_vectors_are_excluded_and_counted() -> None:
    prediction, truth = _pair(shape=(3, 12, 12), dtype=np.float64, seed=10)
    prediction[:, 0, 0] = 0.0
    truth[:, 1, 1] = 0.0
    report = compute_metrics(prediction, truth)
    assert report.conventions["sam_zero_vectors"] == 2
    keep = np.ones((12, 12), dtype=bool)
    keep[0, 0] = keep[1, 1] = False
    p = prediction[:, keep]
    t = truth[:, keep]
    cos = (p * t).sum(0) / (np.linalg.norm(p, axis=0) * np.linalg.norm(t, axis=0))
    assert report.mean["sam"] == pytest.approx(np.degrees(np.arccos(cos)).mean(), abs=1e-6)


# ------------------------------------------------------------------------------ report structure


def test_ergas_not_computed_without_ratio() -> None:
    prediction, truth = _pair()
    report = compute_metrics(prediction, truth)
    assert report.mean["ergas"] is None
    assert report.conventions["ergas_ratio"] is None
    assert "not computed" in report.conventions["ergas"]


def test_rows_and_dict_round_trip() -> None:
    _, truth = _pair(shape=(3, 16, 16))
    report = compute_metrics(truth, truth, band_names=["blue", "green", "red"], ratio=0.05)
    rows = report.rows()
    assert [row["band"] for row in rows] == ["blue", "green", "red", "mean"]
    assert all(set(row) == {"band", *METRIC_COLUMNS} for row in rows)
    assert rows[0]["sam"] is None and rows[-1]["sam"] == 0.0
    assert rows[0]["psnr"] == math.inf

    text = json.dumps(report.to_dict(), allow_nan=False)  # strict JSON: inf encoded as "inf"
    data = json.loads(text)
    assert data["mean"]["psnr"] == "inf"
    back = MetricReport.from_dict(data)
    assert back.per_band == report.per_band
    assert back.mean == report.mean
    assert back.band_names == report.band_names


# ------------------------------------------------------------------------------------------ errors


def test_argument_errors() -> None:
    prediction, truth = _pair(shape=(2, 16, 16))
    with pytest.raises(ValueError, match="one shape"):
        compute_metrics(prediction[:, :8], truth)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        compute_metrics(prediction[0], truth[0])
    with pytest.raises(TypeError, match="to_reflectance"):
        compute_metrics((prediction * 1e4).astype(np.int16), (truth * 1e4).astype(np.int16))
    with pytest.raises(TypeError, match="bool"):
        compute_metrics(prediction, truth, valid=np.ones((16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="valid must have shape"):
        compute_metrics(prediction, truth, valid=np.ones((16, 15), dtype=bool))
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="data_range"):
            compute_metrics(prediction, truth, data_range=bad)
        with pytest.raises(ValueError, match="ssim_data_range"):
            compute_metrics(prediction, truth, ssim_data_range=bad)
        with pytest.raises(ValueError, match="ratio"):
            compute_metrics(prediction, truth, ratio=bad)
    with pytest.raises(ValueError, match="uiqi_window"):
        compute_metrics(prediction, truth, uiqi_window=1)
    with pytest.raises(ValueError, match="band_names"):
        compute_metrics(prediction, truth, band_names=["a"])
    with pytest.raises(ValueError, match="reserved"):
        compute_metrics(prediction, truth, band_names=["a", "mean"])
    with pytest.raises(ValueError, match="smaller than"):
        compute_metrics(prediction[:, :6, :6], truth[:, :6, :6])
    with pytest.raises(ValueError, match="no valid pixel"):
        compute_metrics(prediction, truth, valid=np.zeros((16, 16), dtype=bool))


# --------------------------------------------------------------------- public per-metric functions

BAND_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "rmse": rmse,
    "mae": mae,
    "bias": bias,
    "psnr": psnr,
    "ssim": ssim,
    "cc": cc,
    "uiqi": uiqi,
}


def _hex(values: Iterable[float | None]) -> list[str | None]:
    """Exact bit patterns (NaN compares equal to NaN, -0.0 differs from 0.0)."""
    return [None if v is None else float(v).hex() for v in values]


def _messy_pair(seed: int, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random (C, H, W) pair and (H, W) mask with NaN/inf in both images, zero spectra, a constant band."""
    rng = np.random.default_rng(seed)
    prediction, truth = _pair(shape=(3, 23, 29), dtype=dtype, seed=seed)
    valid = rng.random((23, 29)) > 0.05
    valid[2:6, 3:9] = False
    prediction[1, 10, 10] = np.nan
    prediction[:, 15, 4] = np.inf
    truth[2, 20, 20] = np.nan
    truth[:, 7, 22] = 0.0  # zero spectrum: left out of SAM
    prediction[2] = np.where(np.isfinite(prediction[2]), prediction.dtype.type(0.25), prediction[2])
    return prediction, truth, valid


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_public_functions_equal_compute_metrics(dtype: type, masked: bool) -> None:
    prediction, truth, valid = _messy_pair(11, dtype)
    mask = valid if masked else None
    report = compute_metrics(
        prediction, truth, valid=mask, data_range=2.0, ssim_data_range=1.0, ratio=0.05, uiqi_window=5
    )
    settings: dict[str, dict[str, Any]] = {
        "psnr": {"data_range": 2.0},
        "ssim": {"data_range": 1.0},
        "uiqi": {"window": 5},
    }
    for name, function in BAND_FUNCTIONS.items():
        values = function(prediction, truth, valid=mask, **settings.get(name, {}))
        assert isinstance(values, np.ndarray)
        assert values.dtype == np.float64 and values.shape == (3,)
        assert _hex(values) == _hex(report.per_band[name]), name
    scene_sam = sam(prediction, truth, valid=mask)
    scene_ergas = ergas(prediction, truth, ratio=0.05, valid=mask)
    assert type(scene_sam) is float and type(scene_ergas) is float
    assert _hex([scene_sam, scene_ergas]) == _hex([report.mean["sam"], report.mean["ergas"]])
    assert math.isnan(report.per_band["cc"][2])  # the constant band


def test_public_functions_defaults() -> None:
    # psnr R = 1, ssim R = 2 and uiqi window 8 by default, as in compute_metrics
    prediction, truth = _pair(shape=(2, 16, 16), seed=12)
    report = compute_metrics(prediction, truth)
    for name, function in BAND_FUNCTIONS.items():
        assert _hex(function(prediction, truth)) == _hex(report.per_band[name]), name


def test_public_functions_exclude_pixels_like_compute_metrics() -> None:
    # A NaN in one band of the prediction removes the pixel from every band, as in compute_metrics.
    prediction, truth = _pair(shape=(2, 12, 12), dtype=np.float64, seed=13)
    prediction[1, 3, 4] = np.nan
    explicit = np.ones((12, 12), dtype=bool)
    explicit[3, 4] = False
    cleaned = prediction.copy()
    cleaned[1, 3, 4] = 123.0
    for name, function in BAND_FUNCTIONS.items():
        assert _hex(function(prediction, truth)) == _hex(function(cleaned, truth, valid=explicit)), name
    assert sam(prediction, truth) == sam(cleaned, truth, valid=explicit)
    assert ergas(prediction, truth, ratio=0.1) == ergas(cleaned, truth, ratio=0.1, valid=explicit)
    # and the value at a masked pixel never matters
    cleaned[:, 3, 4] = -7.0
    assert _hex(rmse(prediction, truth)) == _hex(rmse(cleaned, truth, valid=explicit))


def test_public_function_errors() -> None:
    prediction, truth = _pair(shape=(2, 16, 16))
    functions: list[Callable[..., Any]] = [*BAND_FUNCTIONS.values(), sam, partial(ergas, ratio=0.05)]
    for function in functions:
        with pytest.raises(ValueError, match="one shape"):
            function(prediction[:, :8], truth)
        with pytest.raises(ValueError, match=r"\(C, H, W\)"):
            function(prediction[0], truth[0])
        with pytest.raises(TypeError, match="to_reflectance"):
            function((prediction * 1e4).astype(np.int16), (truth * 1e4).astype(np.int16))
        with pytest.raises(TypeError, match="bool"):
            function(prediction, truth, valid=np.ones((16, 16), dtype=np.uint8))
        with pytest.raises(ValueError, match="valid must have shape"):
            function(prediction, truth, valid=np.ones((16, 15), dtype=bool))
        with pytest.raises(ValueError, match="no valid pixel"):
            function(prediction, truth, valid=np.zeros((16, 16), dtype=bool))
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="data_range"):
            psnr(prediction, truth, data_range=bad)
        with pytest.raises(ValueError, match="data_range"):
            ssim(prediction, truth, data_range=bad)
        with pytest.raises(ValueError, match="ratio"):
            ergas(prediction, truth, ratio=bad)
    with pytest.raises(TypeError, match="ratio"):
        ergas(prediction, truth)  # type: ignore[call-arg]  # required: no hidden default
    with pytest.raises(ValueError, match="window must be >= 2"):
        uiqi(prediction, truth, window=1)
    with pytest.raises(TypeError, match="window must be an int"):
        uiqi(prediction, truth, window=8.0)  # type: ignore[arg-type]


# ------------------------------------------------ bit-identity with the previous compute_metrics
#
# A frozen copy of the numerical core of compute_metrics as it was before the per-metric functions
# existed (commit 86f6ad3), kept self-contained (NumPy, SciPy and scikit-image only) so that a change
# to any shared kernel in stfusion.metrics shows up here. Comparing with a recomputation rather than
# with stored numbers keeps the test exact on every platform and library version (log10, arctan2 and
# summation may round differently elsewhere, but identically for both copies on one machine).


def _previous_compute_metrics(
    prediction: np.ndarray,
    truth: np.ndarray,
    valid: np.ndarray | None,
    data_range: float,
    ssim_data_range: float,
    ratio: float | None,
    uiqi_window: int,
) -> tuple[dict[str, list[float]], dict[str, float | None], dict[str, int]]:
    from scipy import ndimage

    def window_mask(used: np.ndarray, window: int) -> np.ndarray:
        height, width = used.shape
        inside = np.zeros_like(used)
        half = window // 2
        inside[half : height - window + half + 1, half : width - window + half + 1] = True
        if used.all():
            return inside
        clean = ndimage.minimum_filter(used.astype(np.uint8), size=window, mode="constant", cval=0)
        return inside & clean.astype(bool)

    def constant_windows(x: np.ndarray, window: int) -> np.ndarray:
        hi = ndimage.maximum_filter(x, size=window, mode="nearest")
        lo = ndimage.minimum_filter(x, size=window, mode="nearest")
        return np.asarray(hi == lo)

    def uiqi_full(p_band: np.ndarray, t_band: np.ndarray, window: int) -> np.ndarray:
        p = p_band.astype(np.float64)
        t = t_band.astype(np.float64)

        def box(x: np.ndarray) -> np.ndarray:
            return ndimage.uniform_filter(x, size=window, mode="constant", cval=0.0)

        mu_p = box(p)
        mu_t = box(t)
        pc = p - float(np.mean(p))
        tc = t - float(np.mean(t))
        mpc = box(pc)
        mtc = box(tc)
        var_p = np.maximum(box(pc * pc) - mpc * mpc, 0.0)
        var_t = np.maximum(box(tc * tc) - mtc * mtc, 0.0)
        cov = box(pc * tc) - mpc * mtc
        const_p = constant_windows(p, window)
        const_t = constant_windows(t, window)
        var_p[const_p] = 0.0
        var_t[const_t] = 0.0
        cov[const_p | const_t] = 0.0
        d_sigma = var_p + var_t
        d_mu = mu_p * mu_p + mu_t * mu_t
        q = np.ones_like(mu_p)
        both = (d_sigma > 0) & (d_mu > 0)
        q[both] = 4.0 * cov[both] * mu_p[both] * mu_t[both] / (d_sigma[both] * d_mu[both])
        only_mu = (d_sigma == 0) & (d_mu > 0)
        q[only_mu] = 2.0 * mu_p[only_mu] * mu_t[only_mu] / d_mu[only_mu]
        only_sigma = (d_sigma > 0) & (d_mu == 0)
        q[only_sigma] = 2.0 * cov[only_sigma] / d_sigma[only_sigma]
        return q

    n_bands, height, width = truth.shape
    mask_valid = np.ones((height, width), dtype=bool) if valid is None else valid
    truth_finite = np.isfinite(truth).all(axis=0)
    pred_finite = np.isfinite(prediction).all(axis=0)
    used = mask_valid & truth_finite & pred_finite
    n_valid = int(used.sum())
    all_used = n_valid == height * width

    per_band: dict[str, list[float]] = {name: [] for name in BAND_METRICS}
    truth_means: list[float] = []
    ssim_windows = window_mask(used, 7)
    uiqi_windows = window_mask(used, uiqi_window)
    for band in range(n_bands):
        t_band = truth[band]
        p_band = prediction[band]
        t64 = t_band[used].astype(np.float64)
        p64 = p_band[used].astype(np.float64)
        diff = p64 - t64
        mse = float(np.mean(diff * diff))
        per_band["rmse"].append(math.sqrt(mse))
        per_band["mae"].append(float(np.mean(np.abs(diff))))
        per_band["bias"].append(float(np.mean(diff)))
        # PSNR
        float_type = np.result_type(p_band.dtype, t_band.dtype, np.float32)
        d = t_band.astype(float_type, copy=False) - p_band.astype(float_type, copy=False)
        squared = d * d if all_used else (d * d)[used]
        mse_psnr = float(np.mean(squared, dtype=np.float64))
        per_band["psnr"].append(
            math.inf if mse_psnr == 0.0 else float(10.0 * np.log10(data_range**2 / mse_psnr))
        )
        # CC
        pc = p64 - p64.mean()
        tc = t64 - t64.mean()
        denom = math.sqrt(float(np.dot(pc, pc)) * float(np.dot(tc, tc)))
        per_band["cc"].append(math.nan if denom == 0.0 else float(np.dot(pc, tc)) / denom)
        truth_means.append(float(np.mean(t64)))
        # SSIM and UIQI on bands with excluded pixels set to 0
        if all_used:
            t_fill, p_fill = t_band, p_band
        else:
            t_fill = np.where(used, t_band, np.zeros((), dtype=t_band.dtype))
            p_fill = np.where(used, p_band, np.zeros((), dtype=p_band.dtype))
        mssim, ssim_map = structural_similarity(
            t_fill, p_fill, data_range=ssim_data_range, win_size=7, K1=0.01, K2=0.03, full=True
        )
        if all_used:
            per_band["ssim"].append(float(mssim))
        elif not ssim_windows.any():
            per_band["ssim"].append(math.nan)
        else:
            per_band["ssim"].append(float(np.mean(ssim_map[ssim_windows], dtype=np.float64)))
        if not uiqi_windows.any():
            per_band["uiqi"].append(math.nan)
        else:
            q = uiqi_full(p_fill, t_fill, uiqi_window)
            per_band["uiqi"].append(float(np.mean(q[uiqi_windows], dtype=np.float64)))

    # SAM
    p = prediction[:, used].astype(np.float64)
    t = truth[:, used].astype(np.float64)
    p_norm = np.sqrt(np.sum(p * p, axis=0))
    t_norm = np.sqrt(np.sum(t * t, axis=0))
    nonzero = (p_norm > 0) & (t_norm > 0)
    sam_zero = int((~nonzero).sum())
    sam_value = math.nan
    if nonzero.any():
        u = p[:, nonzero] / p_norm[nonzero]
        v = t[:, nonzero] / t_norm[nonzero]
        angle = 2.0 * np.arctan2(np.sqrt(np.sum((u - v) ** 2, axis=0)), np.sqrt(np.sum((u + v) ** 2, axis=0)))
        sam_value = float(np.degrees(np.mean(angle)))
    # ERGAS
    ergas_value: float | None = None
    if ratio is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.asarray(per_band["rmse"]) ** 2 / np.asarray(truth_means) ** 2
        ergas_value = float(100.0 * ratio * np.sqrt(np.mean(terms)))

    scene: dict[str, float | None] = {"sam": sam_value, "ergas": ergas_value}
    mean = {
        metric: float(np.mean(np.asarray(per_band[metric], dtype=np.float64)))
        if metric in per_band
        else scene[metric]
        for metric in METRIC_COLUMNS
    }
    counts = {
        "n_valid": n_valid,
        "sam_zero_vectors": sam_zero,
        "ssim_n_windows": int(ssim_windows.sum()),
        "uiqi_n_windows": int(uiqi_windows.sum()),
    }
    return per_band, mean, counts


def _identity_cases() -> Iterable[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Clean, masked, NaN/inf, zero-spectrum, constant-band and all-masked-window inputs."""
    for dtype in (np.float32, np.float64):
        prediction, truth = _pair(shape=(4, 32, 40), dtype=dtype, seed=20)
        yield prediction, truth, {}
        yield truth.copy(), truth, {"ratio": 0.05}
        yield prediction, truth, {"ratio": 0.05, "data_range": 2.0, "ssim_data_range": 1.0}
        messy_p, messy_t, valid = _messy_pair(21, dtype)
        yield messy_p, messy_t, {"valid": valid, "ratio": 0.05}
        yield messy_p, messy_t, {"ratio": 0.1, "uiqi_window": 5}
        yield messy_p, messy_t, {"valid": valid, "uiqi_window": 2}
        sparse = np.random.default_rng(22).random((23, 29)) > 0.7  # no clean 7x7 window: SSIM nan
        yield messy_p, messy_t, {"valid": sparse, "ratio": 0.05}
    for seed in range(30, 42):  # random sizes, settings and masks
        rng = np.random.default_rng(seed)
        shape = (int(rng.integers(1, 6)), int(rng.integers(8, 30)), int(rng.integers(8, 30)))
        dtype = (np.float32, np.float64)[seed % 2]
        prediction, truth = _pair(shape=shape, dtype=dtype, seed=seed)
        prediction[rng.random(shape) < 0.002] = np.nan
        truth[rng.random(shape) < 0.001] = np.nan
        valid = rng.random(shape[1:]) > rng.choice([0.0, 0.02, 0.3])
        yield prediction, truth, {"valid": valid, "ratio": 0.05, "uiqi_window": int(rng.choice([3, 8]))}


def test_compute_metrics_bit_identical_to_previous_composition() -> None:
    for index, (prediction, truth, settings) in enumerate(_identity_cases()):
        settings = {"data_range": 1.0, "ssim_data_range": 2.0, "ratio": None, "uiqi_window": 8} | settings
        report = compute_metrics(prediction, truth, **settings)
        per_band, mean, counts = _previous_compute_metrics(
            prediction,
            truth,
            settings.get("valid"),
            settings["data_range"],
            settings["ssim_data_range"],
            settings["ratio"],
            settings["uiqi_window"],
        )
        for metric in BAND_METRICS:
            assert _hex(report.per_band[metric]) == _hex(per_band[metric]), (index, metric)
        for metric in METRIC_COLUMNS:
            assert _hex([report.mean[metric]]) == _hex([mean[metric]]), (index, metric)
        for key, value in counts.items():
            assert report.conventions[key] == value, (index, key)


# ------------------------------------------------------------------- degenerate truth / prediction


@pytest.mark.parametrize("value", [0.0, 0.3])
def test_truth_without_variation_is_refused(value: float) -> None:
    # Both images read with a wrong scale (e.g. all zeros) must not be reported as a perfect match.
    constant = np.full((3, 16, 16), value, dtype=np.float32)
    with pytest.raises(ValueError, match=r"truth has no variation.*check the scale"):
        compute_metrics(constant.copy(), constant, ratio=0.05)
    prediction, _ = _pair(shape=(3, 16, 16))
    with pytest.raises(ValueError, match="truth has no variation"):
        compute_metrics(prediction, constant)


def test_truth_without_variation_counts_used_pixels_only() -> None:
    truth = np.full((2, 16, 16), 0.2)
    prediction = truth.copy()
    valid = np.ones((16, 16), dtype=bool)
    valid[0, :] = False
    truth[:, 0, :] = 0.7  # varies only where masked ...
    truth[1, 5, 5] = np.nan  # ... or non-finite
    with pytest.raises(ValueError, match="truth has no variation"):
        compute_metrics(prediction, truth, valid=valid)
    # Spread anywhere among the used values is enough: here between bands.
    truth[1] = 0.4
    report = compute_metrics(truth + 0.01, truth, valid=valid)
    assert report.per_band["rmse"] == pytest.approx((0.01, 0.01))
    # The per-metric functions compute their definitions as they stand; only compute_metrics, the
    # scene report, refuses a truth without variation.
    zeros = np.zeros((1, 8, 8))
    assert rmse(zeros, zeros)[0] == 0.0


@pytest.mark.parametrize("value", [0.0, 0.25])
def test_constant_prediction_is_scored_normally(value: float) -> None:
    # An all-zero (or constant) prediction against a varying truth gets bad metrics, not an error.
    _, truth = _pair(shape=(3, 20, 24), dtype=np.float64, seed=14)
    prediction = np.full_like(truth, value)
    report = compute_metrics(prediction, truth, ratio=0.05)
    expected_rmse = np.sqrt(((value - truth) ** 2).mean(axis=(1, 2)))
    np.testing.assert_allclose(report.per_band["rmse"], expected_rmse, rtol=1e-12)
    np.testing.assert_allclose(report.per_band["bias"], value - truth.mean(axis=(1, 2)), rtol=1e-12)
    assert all(v > 0.1 for v in report.per_band["rmse"])
    assert all(math.isfinite(v) and v < 25 for v in report.per_band["psnr"])
    assert all(v < 0.5 for v in report.per_band["ssim"])
    assert all(math.isnan(v) for v in report.per_band["cc"])  # undefined for a constant band
    assert report.per_band["uiqi"] == (0.0, 0.0, 0.0)  # no covariance in any window
    expected_ergas = 100 * 0.05 * np.sqrt(np.mean(expected_rmse**2 / truth.mean(axis=(1, 2)) ** 2))
    assert report.mean["ergas"] == pytest.approx(expected_ergas, rel=1e-12)
    if value == 0.0:  # every spectrum of the prediction is the zero vector: no angle anywhere
        assert math.isnan(report.mean["sam"] or 0.0)
        assert report.conventions["sam_zero_vectors"] == 20 * 24
    else:
        assert report.mean["sam"] is not None and report.mean["sam"] > 1.0


def test_unpredicted_everywhere_is_an_error() -> None:
    _, truth = _pair(shape=(2, 16, 16))
    with pytest.raises(ValueError, match="no valid pixel"):
        compute_metrics(np.full_like(truth, np.nan), truth)


# ----------------------------------------------------------------------------- images too small


def test_images_smaller_than_the_windows() -> None:
    prediction, truth = _pair(shape=(2, 20, 20))
    expected = "smaller than the SSIM window (7) or the UIQI window (8); use images of at least 8 pixels"
    with pytest.raises(ValueError, match=re.escape(f"images of 6x6 pixels are {expected}")):
        compute_metrics(prediction[:, :6, :6], truth[:, :6, :6])
    with pytest.raises(ValueError, match=re.escape(f"images of 7x20 pixels are {expected}")):
        compute_metrics(prediction[:, :7], truth[:, :7])
    with pytest.raises(ValueError, match="at least 7 pixels per side"):
        compute_metrics(prediction[:, :, :6], truth[:, :, :6], uiqi_window=5)
    with pytest.raises(ValueError, match="at least 12 pixels per side"):
        compute_metrics(prediction[:, :11], truth[:, :11], uiqi_window=12)
    compute_metrics(prediction[:, :7, :7], truth[:, :7, :7], uiqi_window=5)  # exactly fits

    with pytest.raises(
        ValueError, match=re.escape("smaller than the SSIM window (7); use images of at least 7")
    ):
        ssim(prediction[:, :6], truth[:, :6])
    assert ssim(prediction[:, :7, :7], truth[:, :7, :7]).shape == (2,)
    with pytest.raises(
        ValueError, match=re.escape("smaller than the UIQI window (5); use images of at least 5")
    ):
        uiqi(prediction[:, :4], truth[:, :4], window=5)
    assert uiqi(prediction[:, :5, :5], truth[:, :5, :5], window=5).shape == (2,)
    with pytest.raises(ValueError, match="at least 8 pixels per side"):
        uiqi_map(prediction[0, :7], truth[0, :7])
    with pytest.raises(ValueError, match="window must be >= 2"):
        uiqi_map(prediction[0], truth[0], window=1)
    # metrics without a window work on any size
    assert rmse(prediction[:, :1, :1], truth[:, :1, :1]).shape == (2,)


# ------------------------------------------------------------------------------------------ doctests


def test_doctests() -> None:
    public = [rmse, mae, bias, psnr, ssim, cc, uiqi, sam, ergas, uiqi_map, compute_metrics]
    for function in public:
        assert ">>> " in (function.__doc__ or ""), f"{function.__name__} has no example"
    result = doctest.testmod(metrics_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted >= len(public)


def test_ergas_ratio_is_fine_over_coarse_and_a_coarse_ratio_is_refused_with_its_inverse() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.05, 0.4, (3, 16, 16))
    prediction = truth + rng.normal(0, 0.01, truth.shape)
    assert compute_metrics(prediction, truth, ratio=0.0625).mean["ergas"] is not None
    for call in (
        lambda: compute_metrics(prediction, truth, ratio=16),
        lambda: metrics_module.ergas(prediction, truth, ratio=16),
    ):
        with pytest.raises(
            ValueError, match=r"at most 1 .* got 16; for a coarse / fine ratio of 16 give 0\.0625"
        ):
            call()
    run = subprocess.run(
        [sys.executable, str(Path(__file__).parent.parent / "run.py"), "--data_dir", "d", "--ratio", "16"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "for a coarse/fine ratio of 16 give 0.0625" in run.stderr, run.stderr


def test_reflectance_x_10000_with_reflectance_ranges_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = np.random.default_rng(3)
    truth = rng.uniform(0.05, 0.4, (2, 16, 16))
    with caplog.at_level(logging.WARNING, logger="stfusion.metrics"):
        compute_metrics(truth + 0.01, truth)  # reflectance: no warning
        compute_metrics((truth + 0.01) * 1e4, truth * 1e4, data_range=1e4, ssim_data_range=2e4)
        assert not caplog.records
        report = compute_metrics((truth + 0.01) * 1e4, truth * 1e4)
    assert re.search(r"truth does not hold reflectance 0\.\.1 \(median \|value\| 2\d\d\d", caplog.text)
    assert report.per_band["rmse"][0] == pytest.approx(100.0)  # in the images' units, as warned
