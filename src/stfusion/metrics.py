"""Accuracy metrics for fused images, exactly as defined in METRICS.md.

Every metric is computed on the whole scene from one documented definition, and the settings used
(data ranges, ERGAS ratio, window sizes, pixel counts, masking rules) travel with the numbers in
:class:`MetricReport`. Nothing is clipped or dropped silently: excluded pixels are counted.

Inputs are the prediction ``P`` and the truth ``T``, float reflectance (0..1) of shape (C, H, W), and an
optional boolean validity mask (H, W).

Pixel exclusion (every metric): a pixel is used only if it is valid in the mask, finite in every band of
the truth and finite in every band of the prediction. Pixels that are valid and finite in the truth but
non-finite in the prediction (e.g. NaN where a method cannot predict) are counted as ``n_unpredicted``.

Windowed metrics (SSIM, UIQI): excluded pixels are first replaced by the constant 0 in both images (so
NaN/inf cannot spread through the filters), the local map is computed, and it is averaged only over
windows that lie entirely inside the image and contain no excluded pixel. The values of excluded pixels
therefore never change any metric. With no excluded pixel, SSIM is exactly
``skimage.metrics.structural_similarity(T_b, P_b, data_range=R_ssim)`` (7x7 uniform window, sample
covariance, K1 = 0.01, K2 = 0.03, mean over the map with a border of 3 pixels cropped, i.e. over
the windows that lie inside the image).

Band means are plain means of the per-band values (so one infinite PSNR makes the mean PSNR
infinite, one undefined CC makes the mean CC NaN). SAM and ERGAS are cross-band metrics and have only
a scene value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

#: Metrics computed per band (their band mean is reported too).
BAND_METRICS: tuple[str, ...] = ("rmse", "mae", "bias", "psnr", "ssim", "cc", "uiqi")
#: Cross-band metrics: one value for the scene, reported in the mean row only.
SCENE_METRICS: tuple[str, ...] = ("sam", "ergas")
#: Column order used in tables (the order of METRICS.md).
METRIC_COLUMNS: tuple[str, ...] = (
    "rmse",
    "mae",
    "bias",
    "psnr",
    "ssim",
    "cc",
    "sam",
    "ergas",
    "uiqi",
)
#: Label of the band-mean row returned by :meth:`MetricReport.rows`.
MEAN_ROW = "mean"

#: SSIM settings: scikit-image's defaults, fixed so that our SSIM equals its function.
SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03

MASKING_RULE = (
    "a pixel is used only if valid in the mask and finite in every band of truth and prediction; "
    "SSIM/UIQI: excluded pixels are set to 0 in both images before filtering and the local map is "
    "averaged only over windows lying entirely inside the image with no excluded pixel"
)
NONFINITE_ENCODING = (
    "to_dict()/JSON encode non-finite floats as the strings 'inf', '-inf', 'nan'; "
    "null means not computed or not applicable"
)


@dataclass(frozen=True)
class MetricReport:
    """Per-band and band-mean metrics of one prediction against the truth, with their conventions.

    Attributes:
        band_names: one name per band, length C.
        per_band: metric name (see :data:`BAND_METRICS`) -> tuple of C values.
        mean: metric name (every name of :data:`METRIC_COLUMNS`) -> band mean for the per-band
            metrics, scene value for SAM and ERGAS; ``None`` where not computed (ERGAS without a
            ratio).
        conventions: the settings and counts behind the numbers (JSON-safe values).

    Units: RMSE, MAE and bias in reflectance units (bias = prediction minus truth); PSNR in dB;
    SAM in degrees; SSIM, CC and UIQI dimensionless; ERGAS dimensionless (percent-scaled).
    """

    band_names: tuple[str, ...]
    per_band: dict[str, tuple[float, ...]]
    mean: dict[str, float | None]
    conventions: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per band plus a final ``"mean"`` row; keys ``"band"`` and :data:`METRIC_COLUMNS`.

        Values are Python floats (``inf``/``nan`` kept as floats) or ``None`` where a metric does not
        apply (SAM and ERGAS in band rows) or was not computed (ERGAS without a ratio).
        """
        out: list[dict[str, Any]] = []
        for index, name in enumerate(self.band_names):
            row: dict[str, Any] = {"band": name}
            for metric in METRIC_COLUMNS:
                row[metric] = self.per_band[metric][index] if metric in self.per_band else None
            out.append(row)
        mean_row: dict[str, Any] = {"band": MEAN_ROW}
        for metric in METRIC_COLUMNS:
            mean_row[metric] = self.mean.get(metric)
        out.append(mean_row)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"``.

        ``None`` (JSON null) means not computed / not applicable. :meth:`from_dict` inverts it.
        """
        return {
            "band_names": list(self.band_names),
            "per_band": {k: [encode_float(v) for v in vals] for k, vals in self.per_band.items()},
            "mean": {k: encode_float(v) for k, v in self.mean.items()},
            "conventions": {k: _json_safe(v) for k, v in self.conventions.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricReport:
        """Rebuild a report from :meth:`to_dict` output (e.g. read back from JSON)."""
        return cls(
            band_names=tuple(str(b) for b in data["band_names"]),
            per_band={
                str(k): tuple(_require_float(decode_float(v)) for v in vals)
                for k, vals in data["per_band"].items()
            },
            mean={str(k): decode_float(v) for k, v in data["mean"].items()},
            conventions=dict(data.get("conventions", {})),
        )


def encode_float(value: float | None) -> float | str | None:
    """Encode a float for strict JSON: finite floats unchanged, inf/-inf/nan as strings."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def decode_float(value: object) -> float | None:
    """Inverse of :func:`encode_float` (also accepts numbers and numeric strings)."""
    if value is None:
        return None
    if isinstance(value, str | int | float):
        return float(value)
    raise TypeError(f"cannot decode {value!r} as a float")


def _require_float(value: float | None) -> float:
    if value is None:
        raise ValueError("per-band metric values cannot be null")
    return value


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def compute_metrics(
    prediction: np.ndarray,
    truth: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    data_range: float = 1.0,
    ssim_data_range: float = 2.0,
    ratio: float | None = None,
    uiqi_window: int = 8,
    band_names: Sequence[str] | None = None,
) -> MetricReport:
    """Compute every METRICS.md metric of ``prediction`` against ``truth``.

    Args:
        prediction: (C, H, W) float reflectance (0..1); NaN/inf mark unpredicted pixels.
        truth: (C, H, W) float reflectance, same shape.
        valid: optional (H, W) bool mask, True where the pixel is valid (not nodata in any input).
        data_range: R of PSNR = 10 log10(R^2 / MSE), reflectance units (default 1.0).
        ssim_data_range: data_range passed to scikit-image's SSIM (default 2.0, the MLFF-GAN
            paper's -1..1 convention; 1.0 is the 0..1 reflectance convention).
        ratio: ERGAS h / l = fine pixel size / coarse pixel size (e.g. 25 / 500 = 0.05 for
            Landsat-MODIS). ``None``: ERGAS is not computed and reported as ``None``.
        uiqi_window: side of the square UIQI sliding window (default 8, Wang and Bovik 2002).
        band_names: optional names of the C bands (default ``"b1"``, ``"b2"``, ...).

    Returns:
        A :class:`MetricReport`.

    Raises:
        ValueError: shapes, ranges or settings are invalid, or no pixel is valid.
        TypeError: non-float images or a non-bool mask.
    """
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    _check_images(prediction, truth)
    n_bands, height, width = truth.shape
    data_range = _check_positive("data_range", data_range)
    ssim_data_range = _check_positive("ssim_data_range", ssim_data_range)
    if ratio is not None:
        ratio = _check_positive("ratio", ratio)
    if isinstance(uiqi_window, bool) or not isinstance(uiqi_window, int | np.integer):
        raise TypeError(f"uiqi_window must be an int, got {uiqi_window!r}")
    uiqi_window = int(uiqi_window)
    if uiqi_window < 2:
        raise ValueError(f"uiqi_window must be >= 2 pixels, got {uiqi_window}")
    if min(height, width) < max(SSIM_WINDOW, uiqi_window):
        raise ValueError(
            f"images of {height}x{width} pixels are smaller than the SSIM window ({SSIM_WINDOW}) "
            f"or the UIQI window ({uiqi_window}); use images of at least "
            f"{max(SSIM_WINDOW, uiqi_window)} pixels per side"
        )
    names = _band_names(band_names, n_bands)

    mask_valid = _check_mask(valid, (height, width))
    truth_finite = np.isfinite(truth).all(axis=0)
    pred_finite = np.isfinite(prediction).all(axis=0)
    used = mask_valid & truth_finite & pred_finite
    n_pixels = height * width
    n_valid = int(used.sum())
    if n_valid == 0:
        raise ValueError("no valid pixel: every pixel is masked or non-finite in the truth or the prediction")
    n_masked = int((~mask_valid).sum())
    n_nonfinite_truth = int((mask_valid & ~truth_finite).sum())
    n_unpredicted = int((mask_valid & truth_finite & ~pred_finite).sum())
    all_used = n_valid == n_pixels

    per_band: dict[str, list[float]] = {name: [] for name in BAND_METRICS}
    truth_means: list[float] = []
    ssim_windows = _window_mask(used, SSIM_WINDOW)
    uiqi_windows = _window_mask(used, uiqi_window)
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
        per_band["psnr"].append(_psnr(p_band, t_band, used, all_used, data_range))
        per_band["cc"].append(_pearson(p64, t64))
        truth_means.append(float(np.mean(t64)))
        t_fill, p_fill = (t_band, p_band) if all_used else _fill(t_band, p_band, used)
        per_band["ssim"].append(_ssim(t_fill, p_fill, ssim_windows, all_used, ssim_data_range))
        per_band["uiqi"].append(_uiqi(p_fill, t_fill, uiqi_windows, uiqi_window))

    sam_value, sam_zero = _sam(prediction, truth, used)
    rmse_arr = np.asarray(per_band["rmse"])
    ergas_value: float | None = None
    if ratio is not None:
        ergas_value = _ergas(rmse_arr, np.asarray(truth_means), ratio)

    scene: dict[str, float | None] = {"sam": sam_value, "ergas": ergas_value}
    mean: dict[str, float | None] = {
        metric: (
            float(np.mean(np.asarray(per_band[metric], dtype=np.float64)))
            if metric in per_band
            else scene[metric]
        )
        for metric in METRIC_COLUMNS
    }

    conventions: dict[str, Any] = {
        "units": "reflectance 0..1; RMSE/MAE/bias in reflectance, PSNR dB, SAM degrees",
        "bias_sign": "prediction minus truth",
        "data_range": data_range,
        "psnr": "10 log10(data_range^2 / MSE_b); inf when MSE_b == 0",
        "ssim_data_range": ssim_data_range,
        "ssim": (
            f"skimage structural_similarity(truth_b, prediction_b, data_range=ssim_data_range): "
            f"{SSIM_WINDOW}x{SSIM_WINDOW} uniform window, sample covariance, "
            f"K1={SSIM_K1}, K2={SSIM_K2}, border of {(SSIM_WINDOW - 1) // 2} cropped"
        ),
        "ssim_window": SSIM_WINDOW,
        "ssim_n_windows": int(ssim_windows.sum()),
        "uiqi_window": uiqi_window,
        "uiqi_n_windows": int(uiqi_windows.sum()),
        "uiqi": (
            "Wang-Bovik Q in every window position fully inside the image, averaged; "
            "degenerate windows: both constant -> 2 mu_p mu_t / (mu_p^2 + mu_t^2), "
            "both zero mean only -> 2 sigma_pt / (sigma_p^2 + sigma_t^2), both all-zero -> 1"
        ),
        "cc": "Pearson correlation over used pixels; nan if a band is constant",
        "sam": "mean spectral angle in degrees over used pixels with non-zero vectors",
        "sam_zero_vectors": sam_zero,
        "ergas_ratio": ratio,
        "ergas": (
            "100 * ratio * sqrt(mean_b(RMSE_b^2 / mean(T_b)^2))"
            if ratio is not None
            else "not computed: ratio (fine / coarse pixel size) not given"
        ),
        "band_mean": "plain mean of per-band values (inf/nan propagate); SAM, ERGAS scene values",
        "n_pixels": n_pixels,
        "n_valid": n_valid,
        "n_excluded": n_pixels - n_valid,
        "n_masked": n_masked,
        "n_nonfinite_truth": n_nonfinite_truth,
        "n_unpredicted": n_unpredicted,
        "masking_rule": MASKING_RULE,
        "nonfinite_encoding": NONFINITE_ENCODING,
    }
    return MetricReport(
        band_names=names,
        per_band={k: tuple(v) for k, v in per_band.items()},
        mean=mean,
        conventions=conventions,
    )


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _check_images(prediction: np.ndarray, truth: np.ndarray) -> None:
    for name, image in (("prediction", prediction), ("truth", truth)):
        if image.ndim != 3:
            raise ValueError(
                f"{name} must have shape (C, H, W), got {image.shape}; "
                "add a band axis for a single band (image[None])"
            )
        if not np.issubdtype(image.dtype, np.floating):
            raise TypeError(
                f"{name} must be float reflectance (0..1), got dtype {image.dtype}; "
                "convert stored values with stfusion.transforms.to_reflectance"
            )
    if prediction.shape != truth.shape:
        raise ValueError(
            f"prediction and truth must have one shape, got {prediction.shape} and {truth.shape}"
        )
    if truth.shape[0] < 1:
        raise ValueError(f"images need at least one band, got shape {truth.shape}")


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _check_mask(valid: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if valid is None:
        return np.ones(shape, dtype=bool)
    valid = np.asarray(valid)
    if valid.dtype != np.bool_:
        raise TypeError(
            f"valid must be a bool mask (True = valid), got dtype {valid.dtype}; "
            "build it with a comparison, e.g. image != nodata"
        )
    if valid.shape != shape:
        raise ValueError(f"valid must have shape (H, W) = {shape}, got {valid.shape}")
    return valid


def _band_names(band_names: Sequence[str] | None, n_bands: int) -> tuple[str, ...]:
    if band_names is None:
        return tuple(f"b{i + 1}" for i in range(n_bands))
    if isinstance(band_names, str):
        raise TypeError("band_names must be a sequence of names, not a single string")
    names = tuple(str(name) for name in band_names)
    if len(names) != n_bands:
        raise ValueError(f"band_names has {len(names)} names for {n_bands} bands")
    if MEAN_ROW in names:
        raise ValueError(f"band name {MEAN_ROW!r} is reserved for the band-mean row")
    if len(set(names)) != len(names):
        raise ValueError(f"band_names must be unique, got {names}")
    return names


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _psnr(
    p_band: np.ndarray, t_band: np.ndarray, used: np.ndarray, all_used: bool, data_range: float
) -> float:
    # Same precision path as skimage.metrics.peak_signal_noise_ratio (difference in the common float
    # type, mean accumulated in float64) so that the values are identical for float32 inputs too.
    float_type = np.result_type(p_band.dtype, t_band.dtype, np.float32)
    diff = t_band.astype(float_type, copy=False) - p_band.astype(float_type, copy=False)
    squared = diff * diff if all_used else (diff * diff)[used]
    mse = float(np.mean(squared, dtype=np.float64))
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(data_range**2 / mse))


def _pearson(p64: np.ndarray, t64: np.ndarray) -> float:
    pc = p64 - p64.mean()
    tc = t64 - t64.mean()
    denom = math.sqrt(float(np.dot(pc, pc)) * float(np.dot(tc, tc)))
    if denom == 0.0:
        return math.nan
    return float(np.dot(pc, tc)) / denom


def _sam(prediction: np.ndarray, truth: np.ndarray, used: np.ndarray) -> tuple[float, int]:
    """Mean spectral angle (degrees) over used pixels, and the number of zero-vector pixels."""
    p = prediction[:, used].astype(np.float64)  # (C, N)
    t = truth[:, used].astype(np.float64)
    p_norm = np.sqrt(np.sum(p * p, axis=0))
    t_norm = np.sqrt(np.sum(t * t, axis=0))
    nonzero = (p_norm > 0) & (t_norm > 0)
    n_zero = int((~nonzero).sum())
    if not nonzero.any():
        return math.nan, n_zero
    u = p[:, nonzero] / p_norm[nonzero]
    v = t[:, nonzero] / t_norm[nonzero]
    # Equal to arccos(<u, v>) mathematically, but accurate for small angles too (Kahan): arccos
    # loses half the digits near 0 and would report a few 1e-6 degrees for identical spectra.
    angle = 2.0 * np.arctan2(np.sqrt(np.sum((u - v) ** 2, axis=0)), np.sqrt(np.sum((u + v) ** 2, axis=0)))
    return float(np.degrees(np.mean(angle))), n_zero


def _ergas(rmse: np.ndarray, truth_means: np.ndarray, ratio: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = rmse**2 / truth_means**2
    return float(100.0 * ratio * np.sqrt(np.mean(terms)))


def _fill(t_band: np.ndarray, p_band: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, ...]:
    """Copies with excluded pixels set to 0, so their values cannot reach any filter output."""
    return tuple(np.where(used, band, np.zeros((), dtype=band.dtype)) for band in (t_band, p_band))


def _window_mask(used: np.ndarray, window: int) -> np.ndarray:
    """(H, W) bool: True at the filter-output positions whose window lies inside the image and
    contains only used pixels (scipy.ndimage window placement, origin 0)."""
    height, width = used.shape
    inside = np.zeros_like(used)
    half = window // 2
    # scipy places a size-w window at output i over inputs i - w//2 .. i - w//2 + w - 1.
    inside[half : height - window + half + 1, half : width - window + half + 1] = True
    if used.all():
        return inside
    clean = ndimage.minimum_filter(used.astype(np.uint8), size=window, mode="constant", cval=0)
    return inside & clean.astype(bool)


def _ssim(
    t_band: np.ndarray,
    p_band: np.ndarray,
    windows: np.ndarray,
    all_used: bool,
    ssim_data_range: float,
) -> float:
    mssim, ssim_map = structural_similarity(
        t_band,
        p_band,
        data_range=ssim_data_range,
        win_size=SSIM_WINDOW,
        K1=SSIM_K1,
        K2=SSIM_K2,
        full=True,
    )
    if all_used:
        return float(mssim)  # scikit-image's own border-cropped mean, bit for bit
    if not windows.any():
        return math.nan
    return float(np.mean(ssim_map[windows], dtype=np.float64))


def uiqi_map(prediction: np.ndarray, truth: np.ndarray, *, window: int = 8) -> np.ndarray:
    """Wang-Bovik universal image quality index in every ``window`` x ``window`` position.

    Args:
        prediction: (H, W) float image, finite.
        truth: (H, W) float image, finite, same shape.
        window: side of the square sliding window.

    Returns:
        (H - window + 1, W - window + 1) float64 map; entry [i, j] is Q of the window whose top-left
        pixel is (i, j). Q = 4 s_pt m_p m_t / ((s_p^2 + s_t^2)(m_p^2 + m_t^2)); windows where this
        is 0/0 follow Wang and Bovik's reference code: both windows constant ->
        2 m_p m_t / (m_p^2 + m_t^2); both zero-mean -> 2 s_pt / (s_p^2 + s_t^2); both all-zero -> 1.
    """
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    if prediction.ndim != 2 or prediction.shape != truth.shape:
        raise ValueError(
            f"prediction and truth must be (H, W) of one shape, got {prediction.shape}, {truth.shape}"
        )
    full = _uiqi_full(prediction, truth, window)
    half = window // 2
    height, width = truth.shape
    return full[half : height - window + half + 1, half : width - window + half + 1]


def _uiqi(p_band: np.ndarray, t_band: np.ndarray, windows: np.ndarray, window: int) -> float:
    if not windows.any():
        return math.nan
    q = _uiqi_full(p_band, t_band, window)
    return float(np.mean(q[windows], dtype=np.float64))


def _uiqi_full(p_band: np.ndarray, t_band: np.ndarray, window: int) -> np.ndarray:
    """Q at every scipy filter-output position (only interior positions are meaningful)."""
    p = p_band.astype(np.float64)
    t = t_band.astype(np.float64)

    def box(x: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(x, size=window, mode="constant", cval=0.0)

    mu_p = box(p)
    mu_t = box(t)
    # Moments of shifted data: same variances, less cancellation in E[x^2] - E[x]^2.
    pc = p - float(np.mean(p))
    tc = t - float(np.mean(t))
    mpc = box(pc)
    mtc = box(tc)
    var_p = np.maximum(box(pc * pc) - mpc * mpc, 0.0)
    var_t = np.maximum(box(tc * tc) - mtc * mtc, 0.0)
    cov = box(pc * tc) - mpc * mtc
    # Exact zeros for constant windows, so the 0/0 rules below do not depend on rounding noise.
    const_p = _constant_windows(p, window)
    const_t = _constant_windows(t, window)
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


def _constant_windows(x: np.ndarray, window: int) -> np.ndarray:
    hi = ndimage.maximum_filter(x, size=window, mode="nearest")
    lo = ndimage.minimum_filter(x, size=window, mode="nearest")
    return np.asarray(hi == lo)
