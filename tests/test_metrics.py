"""Tests of stfusion.metrics against METRICS.md: invariants, scikit-image and direct NumPy formulas."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from stfusion.metrics import (
    BAND_METRICS,
    METRIC_COLUMNS,
    MetricReport,
    compute_metrics,
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
