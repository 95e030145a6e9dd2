"""Accuracy metrics for fused images, exactly as defined in docs/metrics.md.

Every metric is computed on the whole scene from one documented definition, and the settings used
(data ranges, ERGAS ratio, window sizes, pixel counts, masking rules) travel with the numbers in
:class:`MetricReport`. Nothing is clipped or dropped silently: excluded pixels are counted.

Inputs are the prediction ``P`` and the truth ``T``, float reflectance (0..1) of shape (C, H, W), and an
optional boolean validity mask (H, W).

Public functions: one per metric, :func:`rmse`, :func:`mae`, :func:`bias`, :func:`psnr`, :func:`ssim`,
:func:`cc` and :func:`uiqi` (per-band values, a (C,) float64 array) and :func:`sam` and :func:`ergas`
(one float for the scene), plus :func:`uiqi_map`. :func:`compute_metrics` composes them into a
:class:`MetricReport`: the same private kernels, with the used-pixel and window masks computed once, so
its values equal theirs bit for bit. Every function checks its inputs and applies the rules below.

Pixel exclusion (every metric): a pixel is used only if it is valid in the mask, finite in every band of
the truth and finite in every band of the prediction. Pixels that are valid and finite in the truth but
non-finite in the prediction (e.g. NaN where a method cannot predict) are counted as ``n_unpredicted``.

Windowed metrics (SSIM, UIQI): excluded pixels are first replaced by the constant 0 in both images (so
NaN/inf cannot spread through the filters), the local map is computed, and it is averaged only over
windows that lie entirely inside the image and contain no excluded pixel. The values of excluded pixels
therefore never change any metric. With no excluded pixel, SSIM is exactly
``skimage.metrics.structural_similarity(T_b, P_b, data_range=R_ssim)`` (7x7 uniform window, sample
covariance, K1 = 0.01, K2 = 0.03, mean over the map with a border of 3 pixels cropped, i.e. over
the windows that lie inside the image). Images smaller than a window raise ValueError naming the
minimum size.

Truth without variation: :func:`compute_metrics` raises ValueError when every used value of every band
of the truth is one number (e.g. all zeros: both images read with a wrong scale would otherwise score
RMSE 0 and SSIM 1). The per-metric functions compute their definitions as they stand.

Band means are plain means of the per-band values (so one infinite PSNR makes the mean PSNR
infinite, one undefined CC makes the mean CC NaN). SAM and ERGAS are cross-band metrics and have only
a scene value.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from stfusion.blocks import MAX_MEDIAN_REFLECTANCE

log = logging.getLogger(__name__)

#: Metrics computed per band (their band mean is reported too).
BAND_METRICS: tuple[str, ...] = ("rmse", "mae", "bias", "psnr", "ssim", "cc", "uiqi")
#: Cross-band metrics: one value for the scene, reported in the mean row only.
SCENE_METRICS: tuple[str, ...] = ("sam", "ergas")
#: Column order used in tables (the order of docs/metrics.md).
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
# Checked inputs shared by every metric of one evaluation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scene:
    """Checked images and the used-pixel mask, computed once and shared by the metric kernels.

    ``prediction`` and ``truth`` are (C, H, W) float arrays; ``mask_valid``, ``truth_finite``,
    ``pred_finite`` and ``used`` are (H, W) bool; ``all_used`` is ``used.all()``.
    """

    prediction: np.ndarray
    truth: np.ndarray
    mask_valid: np.ndarray
    truth_finite: np.ndarray
    pred_finite: np.ndarray
    used: np.ndarray
    all_used: bool

    @property
    def n_bands(self) -> int:
        return int(self.truth.shape[0])

    def values(self, band: int) -> tuple[np.ndarray, np.ndarray]:
        """(N,) float64 prediction and truth values of the used pixels of one band."""
        p64 = self.prediction[band][self.used].astype(np.float64)
        t64 = self.truth[band][self.used].astype(np.float64)
        return p64, t64

    def filled(self, band: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) truth and prediction of one band with excluded pixels set to 0 (windowed metrics)."""
        t_band = self.truth[band]
        p_band = self.prediction[band]
        if self.all_used:
            return t_band, p_band
        t_fill, p_fill = _fill(t_band, p_band, self.used)
        return t_fill, p_fill


def _scene(prediction: np.ndarray, truth: np.ndarray, valid: np.ndarray | None) -> _Scene:
    """Apply the pixel-exclusion rule of the module docstring; images already checked."""
    mask_valid = _check_mask(valid, truth.shape[1:])
    truth_finite = np.isfinite(truth).all(axis=0)
    pred_finite = np.isfinite(prediction).all(axis=0)
    used = mask_valid & truth_finite & pred_finite
    n_used = int(used.sum())
    if n_used == 0:
        raise ValueError("no valid pixel: every pixel is masked or non-finite in the truth or the prediction")
    return _Scene(
        prediction=prediction,
        truth=truth,
        mask_valid=mask_valid,
        truth_finite=truth_finite,
        pred_finite=pred_finite,
        used=used,
        all_used=n_used == used.size,
    )


def _checked_scene(prediction: np.ndarray, truth: np.ndarray, valid: np.ndarray | None) -> _Scene:
    prediction, truth = _check_images(prediction, truth)
    return _scene(prediction, truth, valid)


def _band_array(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Public metric functions
# --------------------------------------------------------------------------------------------------


def rmse(prediction: np.ndarray, truth: np.ndarray, *, valid: np.ndarray | None = None) -> np.ndarray:
    """Root-mean-square error per band, ``sqrt(mean((P_b - T_b)^2))`` over the used pixels.

    Args:
        prediction: (C, H, W) float reflectance (0..1); NaN/inf mark unpredicted pixels.
        truth: (C, H, W) float reflectance, same shape.
        valid: optional (H, W) bool mask, True where the pixel is valid.

    Returns:
        (C,) float64, reflectance units.

    Raises:
        ValueError: bad shapes, or no used pixel. TypeError: non-float images or a non-bool mask.

    Errors of +-0.125 on every pixel give an RMSE of 0.125:

    >>> truth = np.array([[[0.25, 0.5], [0.75, 0.5]]])
    >>> prediction = truth + np.array([[[0.125, -0.125], [0.125, -0.125]]])
    >>> rmse(prediction, truth)
    array([0.125])
    """
    scene = _checked_scene(prediction, truth, valid)
    return _band_array([_rmse(_difference(*scene.values(b))) for b in range(scene.n_bands)])


def mae(prediction: np.ndarray, truth: np.ndarray, *, valid: np.ndarray | None = None) -> np.ndarray:
    """Mean absolute error per band, ``mean(abs(P_b - T_b))`` over the used pixels.

    Args:
        prediction: (C, H, W) float reflectance (0..1); NaN/inf mark unpredicted pixels.
        truth: (C, H, W) float reflectance, same shape.
        valid: optional (H, W) bool mask, True where the pixel is valid.

    Returns:
        (C,) float64, reflectance units.

    Raises:
        ValueError: bad shapes, or no used pixel. TypeError: non-float images or a non-bool mask.

    Errors of +0.25 on two pixels and 0 on the other two: MAE = (0.25 + 0.25) / 4 = 0.125
    (RMSE would be sqrt(0.125 / 4) = 0.177):

    >>> truth = np.array([[[0.25, 0.5], [0.75, 0.5]]])
    >>> prediction = truth + np.array([[[0.25, 0.0], [0.25, 0.0]]])
    >>> mae(prediction, truth)
    array([0.125])
    """
    scene = _checked_scene(prediction, truth, valid)
    return _band_array([_mae(_difference(*scene.values(b))) for b in range(scene.n_bands)])


def bias(prediction: np.ndarray, truth: np.ndarray, *, valid: np.ndarray | None = None) -> np.ndarray:
    """Mean difference per band, ``mean(P_b - T_b)`` over the used pixels (prediction minus truth).

    Args:
        prediction: (C, H, W) float reflectance (0..1); NaN/inf mark unpredicted pixels.
        truth: (C, H, W) float reflectance, same shape.
        valid: optional (H, W) bool mask, True where the pixel is valid.

    Returns:
        (C,) float64, reflectance units; positive when the prediction is too bright.

    Raises:
        ValueError: bad shapes, or no used pixel. TypeError: non-float images or a non-bool mask.

    A prediction 0.125 too bright everywhere except one masked pixel (whose value is ignored):

    >>> truth = np.array([[[0.25, 0.5], [0.75, 0.5]]])
    >>> prediction = truth + 0.125
    >>> prediction[0, 1, 1] = 9.0
    >>> bias(prediction, truth, valid=np.array([[True, True], [True, False]]))
    array([0.125])
    """
    scene = _checked_scene(prediction, truth, valid)
    return _band_array([_bias(_difference(*scene.values(b))) for b in range(scene.n_bands)])


def psnr(
    prediction: np.ndarray,
    truth: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    data_range: float = 1.0,
) -> np.ndarray:
    """Peak signal-to-noise ratio per band, ``10 log10(data_range^2 / MSE_b)`` over the used pixels.

    With no excluded pixel it equals ``skimage.metrics.peak_signal_noise_ratio(T_b, P_b,
    data_range=data_range)``; ``inf`` where the band is reproduced exactly (MSE 0).

    Args:
        prediction: (C, H, W) float reflectance (0..1); NaN/inf mark unpredicted pixels.
        truth: (C, H, W) float reflectance, same shape.
        valid: optional (H, W) bool mask, True where the pixel is valid.
        data_range: R, reflectance units (default 1.0, the 0..1 reflectance range).

    Returns:
        (C,) float64, decibels.

    Raises:
        ValueError: bad shapes, non-positive data_range, or no used pixel. TypeError: non-float
        images, a non-numeric data_range or a non-bool mask.

    Errors of +-0.125 everywhere: MSE = 1/64, PSNR = 10 log10(64) = 18.0618 dB; a second band
    equal to the truth has PSNR inf:

    >>> truth = np.array([[[0.25, 0.5], [0.75, 0.5]]] * 2)
    >>> prediction = truth + np.array([[[0.125, -0.125], [0.125, -0.125]], [[0.0, 0.0], [0.0, 0.0]]])
    >>> psnr(prediction, truth).round(4)
    array([18.0618,     inf])
    """
    prediction, truth = _check_images(prediction, truth)
    data_range = _check_positive("data_range", data_range)
    scene = _scene(prediction, truth, valid)
    return _band_array(
        [_psnr(prediction[b], truth[b], scene.used, scene.all_used, data_range) for b in range(scene.n_bands)]
    )


def ssim(
    prediction: np.ndarray,
    truth: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    data_range: float = 2.0,
) -> np.ndarray:
    """Structural similarity per band: scikit-image's SSIM (7x7 uniform window) on the used windows.

    With no excluded pixel the value is exactly ``skimage.metrics.structural_similarity(T_b, P_b,
    data_range=data_range)``; otherwise the SSIM map is averaged over the windows that lie inside
    the image and contain no excluded pixel (NaN if there is none), see the module docstring.

    Args:
        prediction: (C, H, W) float reflectance (0..1), H and W >= 7; NaN/inf mark unpredicted pixels.
        truth: (C, H, W) float reflectance, same shape.
        valid: optional (H, W) bool mask, True where the pixel is valid.
        data_range: scikit-image's ``data_range`` (default 2.0, the MLFF-GAN paper's -1..1
            convention; 1.0 is the 0..1 reflectance convention).

    Returns:
        (C,) float64, dimensionless (1 for a perfect prediction).

    Raises:
        ValueError: bad shapes, images smaller than the window, non-positive data_range, or no used
        pixel. TypeError: non-float images, a non-numeric data_range or a non-bool mask.

    A 7x7 image has a single window. Rows 1/8 .. 7/8 (mean 0.5) predicted 0.25 too bright: the
    contrast and structure terms are 1 and SSIM is the luminance term
    (2 * 0.75 * 0.5 + C1) / (0.75^2 + 0.5^2 + C1) with C1 = (0.01 * 2)^2, i.e. 0.7504 / 0.8129:

    >>> truth = np.repeat(np.arange(1, 8) / 8, 7).reshape(1, 7, 7)
    >>> ssim(truth + 0.25, truth).round(6)
    array([0.923115])
    """
    prediction, truth = _check_images(prediction, truth)
    data_range = _check_positive("data_range", data_range)
    _check_size(truth.shape, {"SSIM": SSIM_WINDOW})
    scene = _scene(prediction, truth, valid)
    windows = _window_mask(scene.used, SSIM_WINDOW)
    return _band_array(
        [_ssim(*scene.filled(b), windows, scene.all_used, data_range) for b in range(scene.n_bands)]
    )


def cc(prediction: np.ndarray, truth: np.ndarray, *, valid: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlation coefficient of ``P_b`` and ``T_b`` per band over the used pixels.

    Args:
        prediction: (C, H, W) float reflectance (0..1); NaN/inf mark unpredicted pixels.
        truth: (C, H, W) float reflectance, same shape.
        valid: optional (H, W) bool mask, True where the pixel is valid.

    Returns:
        (C,) float64 in -1..1, dimensionless; NaN for a band that is constant in either image.

    Raises:
        ValueError: bad shapes, or no used pixel. TypeError: non-float images or a non-bool mask.

    Truth 1, 2, 3, 4 (eighths) against 1, 3, 2, 4: centred values (-1.5, -0.5, 0.5, 1.5) and
    (-1.5, 0.5, -0.5, 1.5), so CC = (2.25 - 0.25 - 0.25 + 2.25) / 5 = 0.8:

    >>> truth = np.array([[[1.0, 2.0], [3.0, 4.0]]]) / 8
    >>> prediction = np.array([[[1.0, 3.0], [2.0, 4.0]]]) / 8
    >>> cc(prediction, truth).round(12)
    array([0.8])
    """
    scene = _checked_scene(prediction, truth, valid)
    return _band_array([_pearson(*scene.values(b)) for b in range(scene.n_bands)])


def uiqi(
    prediction: np.ndarray,
    truth: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    window: int = 8,
) -> np.ndarray:
    """Wang-Bovik universal image quality index per band, averaged over ``window`` x ``window`` windows.

    Q is computed in every window position that lies inside the image and contains no excluded
    pixel (see :func:`uiqi_map` for Q and its degenerate windows) and averaged; NaN if there is no
    such window.

    Args:
        prediction: (C, H, W) float reflectance (0..1), H and W >= window; NaN/inf mark unpredicted
            pixels.
        truth: (C, H, W) float reflectance, same shape.
        valid: optional (H, W) bool mask, True where the pixel is valid.
        window: side of the square sliding window in pixels (default 8, Wang and Bovik 2002).

    Returns:
        (C,) float64 in -1..1, dimensionless (1 for a perfect prediction).

    Raises:
        ValueError: bad shapes, images smaller than the window, window < 2, or no used pixel.
        TypeError: non-float images, a non-int window or a non-bool mask.

    An 8x8 image has a single window. Rows 1/16, 3/16, ..., 15/16 (mean 0.5) predicted 0.25 too
    bright: variances and covariance are equal, so Q = 2 * 0.75 * 0.5 / (0.75^2 + 0.5^2) = 12/13:

    >>> truth = np.repeat(np.arange(1, 16, 2) / 16, 8).reshape(1, 8, 8)
    >>> uiqi(truth + 0.25, truth).round(6)
    array([0.923077])
    """
    prediction, truth = _check_images(prediction, truth)
    window = _check_window("window", window)
    _check_size(truth.shape, {"UIQI": window})
    scene = _scene(prediction, truth, valid)
    windows = _window_mask(scene.used, window)
    return _band_array([_uiqi_band(scene, b, windows, window) for b in range(scene.n_bands)])


def sam(prediction: np.ndarray, truth: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """Spectral angle mapper: mean over used pixels of the angle between the C-band vectors.

    Pixels where either vector is all zero have no angle and are left out (``compute_metrics``
    counts them as ``sam_zero_vectors``); NaN if every used pixel has a zero vector.

    Args:
        prediction: (C, H, W) float reflectance (0..1); NaN/inf mark unpredicted pixels.
        truth: (C, H, W) float reflectance, same shape.
        valid: optional (H, W) bool mask, True where the pixel is valid.

    Returns:
        The scene's mean spectral angle, degrees (0 for a perfect prediction).

    Raises:
        ValueError: bad shapes, or no used pixel. TypeError: non-float images or a non-bool mask.

    Two bands; the truth spectrum (0.5, 0.5) predicted as (0.5, 0): 45 degrees at every pixel:

    >>> truth = np.full((2, 2, 2), 0.5)
    >>> prediction = truth.copy()
    >>> prediction[1] = 0.0
    >>> round(sam(prediction, truth), 9)
    45.0
    """
    scene = _checked_scene(prediction, truth, valid)
    value, _ = _sam(scene.prediction, scene.truth, scene.used)
    return value


def ergas(
    prediction: np.ndarray,
    truth: np.ndarray,
    *,
    ratio: float,
    valid: np.ndarray | None = None,
) -> float:
    """ERGAS, ``100 * ratio * sqrt(mean_b(RMSE_b^2 / mean(T_b)^2))`` over the used pixels.

    Args:
        prediction: (C, H, W) float reflectance (0..1); NaN/inf mark unpredicted pixels.
        truth: (C, H, W) float reflectance, same shape.
        ratio: h / l = fine pixel size / coarse pixel size, e.g. 25 / 500 = 0.05 for
            Landsat-MODIS. Required: there is no meaningful default.
        valid: optional (H, W) bool mask, True where the pixel is valid.

    Returns:
        The scene's ERGAS, dimensionless (percent-scaled; 0 for a perfect prediction; inf if a
        band of the truth has mean 0 and a non-zero RMSE).

    Raises:
        ValueError: bad shapes, non-positive ratio, or no used pixel. TypeError: non-float images,
        a non-numeric ratio or a non-bool mask.

    One band of mean 0.5 with RMSE 0.125 and ratio 0.05: 100 * 0.05 * 0.125 / 0.5 = 1.25:

    >>> truth = np.array([[[0.25, 0.5], [0.75, 0.5]]])
    >>> prediction = truth + np.array([[[0.125, -0.125], [0.125, -0.125]]])
    >>> ergas(prediction, truth, ratio=0.05)
    1.25
    """
    prediction, truth = _check_images(prediction, truth)
    ratio = _check_ratio(ratio)
    scene = _scene(prediction, truth, valid)
    rmse_values: list[float] = []
    truth_means: list[float] = []
    for band in range(scene.n_bands):
        p64, t64 = scene.values(band)
        rmse_values.append(_rmse(_difference(p64, t64)))
        truth_means.append(_mean(t64))
    return _ergas(np.asarray(rmse_values), np.asarray(truth_means), ratio)


# --------------------------------------------------------------------------------------------------
# Every metric of a scene
# --------------------------------------------------------------------------------------------------


def _warn_unscaled(truth: np.ndarray, used: np.ndarray, data_range: float) -> None:
    """A logged warning when ``truth`` holds reflectance x 10000 (or digital numbers) but ``data_range``
    is reflectance's 1.0: RMSE and MAE come out in the file's units, PSNR and SSIM are meaningless.
    Judged on at most ~100 000 used values."""
    if data_range != 1.0:
        return
    flat = used.reshape(-1)
    positions = np.arange(0, flat.size, max(1, flat.size // 100_000))
    positions = positions[flat[positions]]
    if not positions.size:  # few used pixels, between the strided ones
        positions = np.flatnonzero(flat)[:100_000]
    if not positions.size:
        return
    median = float(np.median(np.abs(truth.reshape(truth.shape[0], -1)[:, positions])))
    if median > MAX_MEDIAN_REFLECTANCE:
        log.warning(
            "truth does not hold reflectance 0..1 (median |value| %.4g) while data_range is 1.0: RMSE and "
            "MAE are in its units and PSNR/SSIM assume 0..1; divide both images by 10000 (stored integers) "
            "or give data_range and ssim_data_range in their units",
            median,
        )


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
    """Compute every docs/metrics.md metric of ``prediction`` against ``truth``.

    The values are those of :func:`rmse`, :func:`mae`, :func:`bias`, :func:`psnr`, :func:`ssim`,
    :func:`cc`, :func:`uiqi`, :func:`sam` and :func:`ergas` with the same arguments (the used-pixel
    mask and the window masks are computed once and shared).

    A truth without variation is refused: if every used value of every band is one number (an
    all-zero truth, typically read with the wrong scale, band or nodata), a prediction read the same
    wrong way would score RMSE 0 and SSIM 1. That raises ValueError instead of reporting a perfect
    score. A constant or all-zero *prediction* against a varying truth is scored normally (and
    badly).

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
        ValueError: shapes, ranges or settings are invalid, images are smaller than the SSIM or
            UIQI window (the message gives the minimum size), no pixel is valid, or the truth has
            no variation ("truth has no variation ... check the scale").
        TypeError: non-float images or a non-bool mask.

    Logs a warning when the truth holds reflectance x 10000 or digital numbers (median |value| above
    1.5) while ``data_range`` is 1.0.

    An 8x8 truth with rows 1/16, 3/16, ..., 15/16 predicted 0.25 too bright:

    >>> truth = np.repeat(np.arange(1, 16, 2) / 16, 8).reshape(1, 8, 8)
    >>> report = compute_metrics(truth + 0.25, truth, ratio=0.05)
    >>> report.per_band["rmse"], report.per_band["bias"], round(report.mean["ergas"], 9)
    ((0.25,), (0.25,), 2.5)
    """
    prediction, truth = _check_images(prediction, truth)
    n_bands, height, width = truth.shape
    data_range = _check_positive("data_range", data_range)
    ssim_data_range = _check_positive("ssim_data_range", ssim_data_range)
    if ratio is not None:
        ratio = _check_ratio(ratio)
    uiqi_window = _check_window("uiqi_window", uiqi_window)
    _check_size(truth.shape, {"SSIM": SSIM_WINDOW, "UIQI": uiqi_window})
    names = _band_names(band_names, n_bands)
    scene = _scene(prediction, truth, valid)
    used = scene.used
    _warn_unscaled(truth, used, data_range)

    n_pixels = height * width
    n_valid = int(used.sum())
    n_masked = int((~scene.mask_valid).sum())
    n_nonfinite_truth = int((scene.mask_valid & ~scene.truth_finite).sum())
    n_unpredicted = int((scene.mask_valid & scene.truth_finite & ~scene.pred_finite).sum())

    # Pixel metrics first (cheap): the truth check below must come before the windowed metrics.
    per_band: dict[str, list[float]] = {name: [] for name in BAND_METRICS}
    truth_means: list[float] = []
    truth_low, truth_high = math.inf, -math.inf
    for band in range(n_bands):
        p64, t64 = scene.values(band)
        diff = _difference(p64, t64)
        per_band["rmse"].append(_rmse(diff))
        per_band["mae"].append(_mae(diff))
        per_band["bias"].append(_bias(diff))
        per_band["psnr"].append(_psnr(prediction[band], truth[band], used, scene.all_used, data_range))
        per_band["cc"].append(_pearson(p64, t64))
        truth_means.append(_mean(t64))
        truth_low = min(truth_low, float(t64.min()))
        truth_high = max(truth_high, float(t64.max()))
    if truth_low == truth_high:
        raise ValueError(
            f"truth has no variation: all {n_valid} used pixels of its {n_bands} band(s) equal "
            f"{truth_low:g}, so any prediction read the same way would score as perfect; "
            "check the scale, the band order and the nodata value of the truth"
        )

    ssim_windows = _window_mask(used, SSIM_WINDOW)
    uiqi_windows = _window_mask(used, uiqi_window)
    for band in range(n_bands):
        t_fill, p_fill = scene.filled(band)
        per_band["ssim"].append(_ssim(t_fill, p_fill, ssim_windows, scene.all_used, ssim_data_range))
        per_band["uiqi"].append(_uiqi(p_fill, t_fill, uiqi_windows, uiqi_window))

    sam_value, sam_zero = _sam(prediction, truth, used)
    ergas_value: float | None = None
    if ratio is not None:
        ergas_value = _ergas(_band_array(per_band["rmse"]), _band_array(truth_means), ratio)

    scene_values: dict[str, float | None] = {"sam": sam_value, "ergas": ergas_value}
    mean: dict[str, float | None] = {
        metric: (
            float(np.mean(np.asarray(per_band[metric], dtype=np.float64)))
            if metric in per_band
            else scene_values[metric]
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


def _check_images(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
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
    return prediction, truth


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _check_ratio(ratio: float) -> float:
    """ERGAS's h/l: fine over coarse pixel size, so at most 1 (a coarse/fine ratio of 16 is 1/16 here)."""
    ratio = _check_positive("ratio", ratio)
    if ratio > 1:
        raise ValueError(
            f"ratio is the fine / coarse pixel size h/l, at most 1 (e.g. 30 m / 480 m = 0.0625), got "
            f"{ratio:g}; for a coarse / fine ratio of {ratio:g} give {1 / ratio:g}"
        )
    return ratio


def _check_window(name: str, window: int) -> int:
    if isinstance(window, bool) or not isinstance(window, int | np.integer):
        raise TypeError(f"{name} must be an int, got {window!r}")
    window = int(window)
    if window < 2:
        raise ValueError(f"{name} must be >= 2 pixels, got {window}")
    return window


def check_image_size(height: int, width: int, *, uiqi_window: int = 8) -> None:
    """ValueError unless images of ``height`` x ``width`` pixels can be scored by
    :func:`compute_metrics` (at least one SSIM and one UIQI window), giving the minimum size."""
    _check_size((height, width), {"SSIM": SSIM_WINDOW, "UIQI": uiqi_window})


def _check_size(shape: tuple[int, ...], windows: Mapping[str, int]) -> None:
    """Images (..., H, W) must hold at least one of each named square window."""
    height, width = shape[-2:]
    needed = max(windows.values())
    if min(height, width) < needed:
        which = " or ".join(f"the {name} window ({size})" for name, size in windows.items())
        raise ValueError(
            f"images of {height}x{width} pixels are smaller than {which}; "
            f"use images of at least {needed} pixels per side"
        )


def _check_mask(valid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
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
# Metric kernels: one formula each, on checked inputs (1-D float64 values of the used pixels, or
# (H, W) bands with the used / window masks computed by the caller)
# --------------------------------------------------------------------------------------------------


def _difference(p64: np.ndarray, t64: np.ndarray) -> np.ndarray:
    return p64 - t64


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values))


def _rmse(diff: np.ndarray) -> float:
    return math.sqrt(float(np.mean(diff * diff)))


def _mae(diff: np.ndarray) -> float:
    return float(np.mean(np.abs(diff)))


def _bias(diff: np.ndarray) -> float:
    return float(np.mean(diff))


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
        prediction: (H, W) float image, finite, H and W >= window.
        truth: (H, W) float image, finite, same shape.
        window: side of the square sliding window (>= 2).

    Returns:
        (H - window + 1, W - window + 1) float64 map; entry [i, j] is Q of the window whose top-left
        pixel is (i, j). Q = 4 s_pt m_p m_t / ((s_p^2 + s_t^2)(m_p^2 + m_t^2)); windows where this
        is 0/0 follow Wang and Bovik's reference code: both windows constant ->
        2 m_p m_t / (m_p^2 + m_t^2); both zero-mean -> 2 s_pt / (s_p^2 + s_t^2); both all-zero -> 1.

    Both windows constant, means 0.25 and 0.5: Q = 2 * 0.25 * 0.5 / (0.25^2 + 0.5^2) = 0.8:

    >>> uiqi_map(np.full((8, 9), 0.25), np.full((8, 9), 0.5)).round(12)
    array([[0.8, 0.8]])
    """
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    if prediction.ndim != 2 or prediction.shape != truth.shape:
        raise ValueError(
            f"prediction and truth must be (H, W) of one shape, got {prediction.shape}, {truth.shape}"
        )
    window = _check_window("window", window)
    _check_size(truth.shape, {"UIQI": window})
    full = _uiqi_full(prediction, truth, window)
    half = window // 2
    height, width = truth.shape
    return full[half : height - window + half + 1, half : width - window + half + 1]


def _uiqi_band(scene: _Scene, band: int, windows: np.ndarray, window: int) -> float:
    t_fill, p_fill = scene.filled(band)
    return _uiqi(p_fill, t_fill, windows, window)


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
