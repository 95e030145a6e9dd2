"""Training losses of MLFF-GAN: L1, MS-SSIM, spectral cosine and least-squares GAN terms.

Pure functions first, thin ``nn.Module`` wrappers at the end (kornia style). Images are (B, C, H, W)
reflectance (0..1 nominal); discriminator outputs are raw patch scores (B, 1, h, w).

Generator objective of the reference (spec MLFF-GAN.md section 4)::

    L_G = 1.0 * L1 + 1.0 * (1 - MS-SSIM) + 1.0 * (1 - mean cosine) + 0.01 * mean((D(fake) - 1)^2)

and the LSGAN discriminator objective ``0.5 * [mean(D(fake)^2) + mean((D(real) - 1)^2)]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Per-scale exponents of MS-SSIM (Wang, Simoncelli & Bovik 2003), finest scale first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Side of the Gaussian window of (MS-)SSIM, in pixels.
SSIM_WINDOW: int = 11
#: Standard deviation of the Gaussian window, in pixels.
SSIM_SIGMA: float = 1.5
#: Smallest image side accepted by the 5-scale MS-SSIM: (window - 1) * 2^(scales - 1) + 1.
MS_SSIM_MIN_SIZE: int = (SSIM_WINDOW - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1


def _check_pair(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.ndim != 4:
        raise ValueError(f"{name}: pred must have shape (B, C, H, W), got {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")


def _check_valid(valid: Tensor, pred: Tensor, name: str) -> None:
    expected = (pred.shape[0], 1, *pred.shape[2:])
    if valid.dtype != torch.bool or tuple(valid.shape) != expected:
        raise ValueError(
            f"{name}: valid must be a bool mask of shape {expected}, got {valid.dtype} {tuple(valid.shape)}"
        )


def _masked_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of (B, K, H, W) values over the positions where the (B, 1, H, W) mask is True.

    A mask with no True position gives 0 (still attached to the graph), so an all-cloud patch
    contributes nothing instead of NaN.
    """
    if valid is None:
        return values.mean()
    weights = valid.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def l1_loss(pred: Tensor, target: Tensor, *, valid: Tensor | None = None) -> Tensor:
    """Mean absolute error.

    Args:
        pred: (B, C, H, W) prediction, reflectance.
        target: (B, C, H, W) reference, reflectance.
        valid: optional (B, 1, H, W) bool mask; the mean runs over valid pixels and all bands.
    Returns:
        scalar tensor, reflectance units.
    """
    _check_pair(pred, target, "l1_loss")
    if valid is not None:
        _check_valid(valid, pred, "l1_loss")
    return _masked_mean((pred - target).abs(), valid)


def _gaussian_window(size: int, sigma: float, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Centre at size // 2 as in the reference, which matters only for a shrunk even-sized window.
    coords = torch.arange(size, dtype=dtype, device=device) - size // 2
    window = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return window / window.sum()


def _filter_valid(images: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian filter of (N, C, H, W) per channel, valid mode: (N, C, H - k + 1, W - k + 1)."""
    channels = images.shape[1]
    size = window.numel()
    out = F.conv2d(images, window.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
    return F.conv2d(out, window.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)


def _ssim_and_cs(pred: Tensor, target: Tensor, *, c1: float, c2: float) -> tuple[Tensor, Tensor]:
    """Mean SSIM and mean contrast-structure term at one scale (scalars over batch, bands, pixels)."""
    size = min(SSIM_WINDOW, pred.shape[-2], pred.shape[-1])
    window = _gaussian_window(size, SSIM_SIGMA, dtype=pred.dtype, device=pred.device)
    batch = pred.shape[0]
    stats = _filter_valid(torch.cat([pred, target, pred * pred, target * target, pred * target]), window)
    mu_p, mu_t, e_pp, e_tt, e_pt = stats.split(batch)
    var_p = e_pp - mu_p * mu_p
    var_t = e_tt - mu_t * mu_t
    cov = e_pt - mu_p * mu_t
    cs_map = (2.0 * cov + c2) / (var_p + var_t + c2)
    ssim_map = (2.0 * mu_p * mu_t + c1) / (mu_p * mu_p + mu_t * mu_t + c1) * cs_map
    return ssim_map.mean(), cs_map.mean()


def ms_ssim_min_size(scales: int) -> int:
    """Smallest image side for ``scales`` MS-SSIM scales: (window - 1) * 2^(scales - 1) + 1."""
    return (SSIM_WINDOW - 1) * 2 ** (scales - 1) + 1


def ms_ssim_scales_for(size: int) -> int:
    """The most MS-SSIM scales (1..5) that fit an image side of ``size`` pixels."""
    scales = len(MS_SSIM_WEIGHTS)
    while scales > 1 and size < ms_ssim_min_size(scales):
        scales -= 1
    return scales


def ms_ssim(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float = 1.0,
    reference_bug: bool = False,
    scales: int = len(MS_SSIM_WEIGHTS),
) -> Tensor:
    """Multi-scale structural similarity, as used in the MLFF-GAN generator loss.

    For scales j = 1..5 (image average-pooled 2x2, floor, between scales): filter with an 11 x 11
    Gaussian (sigma 1.5, normalised, applied separably per band, valid mode: no padding) and compute
    the SSIM map and the contrast-structure map cs = (2 cov + C2) / (var_p + var_t + C2) with
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = ``data_range``. ``ssim_j`` and ``cs_j`` are the means of the
    maps over batch, bands and valid pixels. Each is mapped to [0, 1] by x' = (x + 1) / 2. Where a
    scale is smaller than 11 px (sides 161..175 at the fifth scale), the window shrinks to
    min(11, h, w) px, sigma 1.5, centred at size // 2, as in the reference.

    Combination:

    * default: ``prod_{j=1..4} cs'_j ** w_j * ssim'_5 ** w_5`` (Wang et al. 2003, on mapped values);
    * ``reference_bug=True``: ``prod_{j=1..4} (cs'_j ** w_j * ssim'_5 ** w_5)``
      = ``prod_{j=1..4} cs'_j ** w_j * ssim'_5 ** (4 w_5)``, i.e. the last-scale factor multiplied in
      four times, reproducing the reference implementation for parity work.

    The weights w = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). No validity mask: invalid pixels must
    be filled (e.g. with the target) by the caller if they should not count.

    Args:
        pred: (B, C, H, W) prediction, reflectance; min(H, W) >= 161 (:data:`MS_SSIM_MIN_SIZE`).
        target: (B, C, H, W) reference, reflectance.
        data_range: dynamic range L of the values (1.0 for reflectance 0..1).
        reference_bug: reproduce the reference's combination (see above).
        scales: number of scales (default 5, the paper's). Fewer scales (our extension, for patches
            below 161 px) use the first ``scales`` weights renormalised to sum to 1; the minimum side
            is then :func:`ms_ssim_min_size` (``scales``).
    Returns:
        scalar tensor in [0, 1]; 1 for identical images.
    Raises:
        ValueError: shapes differ or are not 4-D, or an image side is below 161 px.
    """
    _check_pair(pred, target, "ms_ssim")
    if not 1 <= scales <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"ms_ssim: scales must be in 1..{len(MS_SSIM_WEIGHTS)}, got {scales}")
    min_size = ms_ssim_min_size(scales)
    if min(pred.shape[-2:]) < min_size:
        raise ValueError(
            f"ms_ssim needs images of at least {min_size} x {min_size} px for "
            f"{scales} scales with an {SSIM_WINDOW}-px window, got "
            f"{tuple(pred.shape[-2:])}; use larger patches (the reference trains on 256)"
        )
    if data_range <= 0:
        raise ValueError(f"ms_ssim: data_range must be positive, got {data_range}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=pred.dtype, device=pred.device)
    if scales < len(MS_SSIM_WEIGHTS):
        weights = weights / weights.sum()
    ssims, css = [], []
    for scale in range(scales):
        if scale > 0:
            pred = F.avg_pool2d(pred, 2)
            target = F.avg_pool2d(target, 2)
        ssim_j, cs_j = _ssim_and_cs(pred, target, c1=c1, c2=c2)
        ssims.append(ssim_j)
        css.append(cs_j)
    last = ((ssims[-1] + 1.0) / 2.0) ** weights[-1]
    if scales == 1:
        return last
    cs_mapped = (torch.stack(css[:-1]) + 1.0) / 2.0
    contrast = torch.prod(cs_mapped ** weights[:-1])
    if reference_bug:
        return contrast * last ** max(scales - 1, 1)
    return contrast * last


def ms_ssim_loss(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float = 1.0,
    reference_bug: bool = False,
    scales: int = len(MS_SSIM_WEIGHTS),
) -> Tensor:
    """1 - :func:`ms_ssim` (scalar; 0 for identical images). Same arguments and checks."""
    return 1.0 - ms_ssim(pred, target, data_range=data_range, reference_bug=reference_bug, scales=scales)


def spectral_cosine_loss(
    pred: Tensor, target: Tensor, *, valid: Tensor | None = None, eps: float = 1e-8
) -> Tensor:
    """1 - mean cosine similarity between the band vectors of ``pred`` and ``target``.

    The cosine is taken along the band axis at every pixel and averaged over pixels and batch
    (valid pixels only when a mask is given). Pixels whose vector norm is below ``eps`` count as
    cosine 0 (``torch.nn.functional.cosine_similarity`` semantics).

    Args:
        pred: (B, C, H, W) prediction, reflectance.
        target: (B, C, H, W) reference, reflectance.
        valid: optional (B, 1, H, W) bool mask.
        eps: norm floor.
    Returns:
        scalar tensor in [0, 2]; 0 when the spectra are parallel everywhere.
    """
    _check_pair(pred, target, "spectral_cosine_loss")
    if valid is not None:
        _check_valid(valid, pred, "spectral_cosine_loss")
    cosine = F.cosine_similarity(pred, target, dim=1, eps=eps).unsqueeze(1)
    return 1.0 - _masked_mean(cosine, valid)


def lsgan_discriminator_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """Least-squares GAN discriminator loss 0.5 * [mean((d_real - 1)^2) + mean(d_fake^2)].

    Args:
        d_real: (B, 1, h, w) raw scores of real images.
        d_fake: (B, 1, h, w) raw scores of generated images; compute them from a *detached* fake so
            that this loss does not reach the generator.
    Returns:
        scalar tensor.
    """
    return 0.5 * (((d_real - 1.0) ** 2).mean() + (d_fake**2).mean())


def lsgan_generator_loss(d_fake: Tensor) -> Tensor:
    """Least-squares GAN generator loss mean((d_fake - 1)^2), d_fake (B, 1, h, w) raw scores."""
    return ((d_fake - 1.0) ** 2).mean()


@dataclass(frozen=True)
class GeneratorLossWeights:
    """Weights of the generator loss terms (reference defaults)."""

    adversarial: float = 0.01
    l1: float = 1.0
    cosine: float = 1.0
    ms_ssim: float = 1.0


def generator_loss(
    pred: Tensor,
    target: Tensor,
    d_fake: Tensor | None,
    weights: GeneratorLossWeights | None = None,
    *,
    valid: Tensor | None = None,
    data_range: float = 1.0,
    reference_bug: bool = False,
    ms_ssim_scales: int = len(MS_SSIM_WEIGHTS),
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total MLFF-GAN generator loss and its named, unweighted parts.

    total = w.l1 * L1 + w.ms_ssim * (1 - MS-SSIM) + w.cosine * (1 - cosine) + w.adversarial * LSGAN_G.
    Terms with weight 0 are not computed (so MS-SSIM's 161-px minimum does not apply when its weight
    is 0).

    Args:
        pred: (B, C, H, W) generated fine image at t2, reflectance.
        target: (B, C, H, W) true fine image at t2, reflectance.
        d_fake: (B, 1, h, w) discriminator scores of ``pred`` (not detached), or None to train without
            the adversarial term.
        weights: term weights; the reference defaults when None.
        valid: optional (B, 1, H, W) bool mask. L1 and cosine average over valid pixels only; MS-SSIM
            (a windowed statistic) is computed with ``pred`` replaced by ``target`` at invalid pixels,
            so they add no error and no gradient (their values still enter the window statistics).
        data_range: dynamic range for MS-SSIM.
        reference_bug: MS-SSIM combination of the reference (see :func:`ms_ssim`).
        ms_ssim_scales: MS-SSIM scales (5, the paper's; fewer for patches below 161 px).
    Returns:
        ``(total, parts)``: total is a scalar tensor with gradient; parts maps ``"l1"``, ``"ms_ssim"``,
        ``"cosine"``, ``"adversarial"`` (those computed) to detached scalar tensors of the unweighted
        losses.
    """
    weights = GeneratorLossWeights() if weights is None else weights
    terms: dict[str, Tensor] = {}
    if weights.l1:
        terms["l1"] = l1_loss(pred, target, valid=valid)
    if weights.ms_ssim:
        ms_pred = pred if valid is None else torch.where(valid, pred, target)
        terms["ms_ssim"] = ms_ssim_loss(
            ms_pred, target, data_range=data_range, reference_bug=reference_bug, scales=ms_ssim_scales
        )
    if weights.cosine:
        terms["cosine"] = spectral_cosine_loss(pred, target, valid=valid)
    if weights.adversarial and d_fake is not None:
        terms["adversarial"] = lsgan_generator_loss(d_fake)
    factors = asdict(weights)
    total = pred.new_zeros(())
    for name, value in terms.items():
        total = total + factors[name] * value
    return total, {name: value.detach() for name, value in terms.items()}


class L1Loss(nn.Module):
    """Module form of :func:`l1_loss`: ``forward(pred, target, valid=None)``."""

    def forward(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        """(B, C, H, W) x 2 (+ optional (B, 1, H, W) bool mask) -> scalar."""
        return l1_loss(pred, target, valid=valid)


class MSSSIM(nn.Module):
    """Module form of :func:`ms_ssim` (the similarity, 1 = identical)."""

    def __init__(self, *, data_range: float = 1.0, reference_bug: bool = False) -> None:
        super().__init__()
        self.data_range = data_range
        self.reference_bug = reference_bug

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """(B, C, H, W) x 2 -> scalar."""
        return ms_ssim(pred, target, data_range=self.data_range, reference_bug=self.reference_bug)


class MSSSIMLoss(MSSSIM):
    """Module form of :func:`ms_ssim_loss` (1 - MS-SSIM)."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """(B, C, H, W) x 2 -> scalar."""
        return 1.0 - super().forward(pred, target)


class SpectralCosineLoss(nn.Module):
    """Module form of :func:`spectral_cosine_loss`: ``forward(pred, target, valid=None)``."""

    def __init__(self, *, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        """(B, C, H, W) x 2 (+ optional (B, 1, H, W) bool mask) -> scalar."""
        return spectral_cosine_loss(pred, target, valid=valid, eps=self.eps)


class GeneratorLoss(nn.Module):
    """Module form of :func:`generator_loss` holding the weights and MS-SSIM options."""

    def __init__(
        self,
        weights: GeneratorLossWeights | None = None,
        *,
        data_range: float = 1.0,
        reference_bug: bool = False,
    ) -> None:
        super().__init__()
        self.weights = GeneratorLossWeights() if weights is None else weights
        self.data_range = data_range
        self.reference_bug = reference_bug

    def forward(
        self, pred: Tensor, target: Tensor, d_fake: Tensor | None, valid: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """See :func:`generator_loss`."""
        return generator_loss(
            pred,
            target,
            d_fake,
            self.weights,
            valid=valid,
            data_range=self.data_range,
            reference_bug=self.reference_bug,
        )
