"""Tests of the training losses (spec MLFF-GAN.md section 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from stfusion.losses import (
    MS_SSIM_MIN_SIZE,
    MSSSIM,
    GeneratorLoss,
    GeneratorLossWeights,
    L1Loss,
    MSSSIMLoss,
    SpectralCosineLoss,
    generator_loss,
    l1_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    ms_ssim,
    ms_ssim_loss,
    spectral_cosine_loss,
)

WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


# --- independent NumPy/SciPy MS-SSIM ---------------------------------------------------------------


def _np_gaussian(size: int, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _np_filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable correlation of (..., H, W) with ``window`` on both axes, valid mode."""
    size = window.size
    if size % 2:
        # scipy.ndimage centres an odd window, so dropping size // 2 pixels per border keeps only
        # outputs computed without the boundary extension: exactly the valid part.
        out = ndimage.correlate1d(image, window, axis=-2, mode="constant")
        out = ndimage.correlate1d(out, window, axis=-1, mode="constant")
        half = size // 2
        return out[..., half:-half, half:-half]
    # Even (shrunk) window: explicit sliding windows.
    out = sliding_window_view(image, size, axis=-2) @ window
    return sliding_window_view(out, size, axis=-1) @ window


def _np_ms_ssim(
    x: np.ndarray, y: np.ndarray, *, reference_bug: bool = False, data_range: float = 1.0
) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssims, css = [], []
    for scale in range(5):
        if scale:
            h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
            x = x[..., :h, :w].reshape(*x.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1))
            y = y[..., :h, :w].reshape(*y.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1))
        g = _np_gaussian(min(11, *x.shape[-2:]))
        mx, my = _np_filter_valid(x, g), _np_filter_valid(y, g)
        sxx = _np_filter_valid(x * x, g) - mx**2
        syy = _np_filter_valid(y * y, g) - my**2
        sxy = _np_filter_valid(x * y, g) - mx * my
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        ssim = (2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs
        ssims.append((ssim.mean() + 1) / 2)
        css.append((cs.mean() + 1) / 2)
    contrast = np.prod(np.array(css[:4]) ** WEIGHTS[:4])
    last = ssims[4] ** WEIGHTS[4]
    return float(contrast * last**4 if reference_bug else contrast * last)


def _pair(
    shape: tuple[int, ...], *, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=generator, dtype=torch.float64)
    # Smooth-ish target plus noise so every scale has a non-trivial SSIM.
    target = torch.nn.functional.avg_pool2d(target, 5, stride=1, padding=2)
    pred = (target + 0.1 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return pred.to(dtype), target.to(dtype)


# --- MS-SSIM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 192, 176), (1, 2, 170, 165)])
@pytest.mark.parametrize("reference_bug", [False, True])
def test_ms_ssim_matches_numpy(shape: tuple[int, ...], reference_bug: bool) -> None:
    pred, target = _pair(shape)
    expected = _np_ms_ssim(pred.numpy(), target.numpy(), reference_bug=reference_bug)
    got = ms_ssim(pred, target, reference_bug=reference_bug).item()
    assert abs(got - expected) < 1e-10
    got32 = ms_ssim(pred.float(), target.float(), reference_bug=reference_bug).item()
    assert abs(got32 - expected) < 1e-5


def test_ms_ssim_data_range_matches_numpy() -> None:
    pred, target = _pair((1, 2, 176, 176), seed=3)
    expected = _np_ms_ssim(2 * pred.numpy(), 2 * target.numpy(), data_range=2.0)
    assert abs(ms_ssim(2 * pred, 2 * target, data_range=2.0).item() - expected) < 1e-10


def test_ms_ssim_reference_bug_differs() -> None:
    pred, target = _pair((1, 3, 176, 176), seed=1)
    standard = ms_ssim(pred, target)
    buggy = ms_ssim(pred, target, reference_bug=True)
    assert buggy < standard  # the extra last-scale factors are < 1
    assert abs(standard.item() - buggy.item()) > 1e-4


def test_ms_ssim_identical_is_one() -> None:
    _, target = _pair((2, 6, 176, 200), dtype=torch.float32)
    assert ms_ssim(target, target).item() == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(target, target, reference_bug=True).item() == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)


def test_ms_ssim_too_small_raises_with_minimum() -> None:
    assert MS_SSIM_MIN_SIZE == 161
    small = torch.rand(1, 3, 160, 300)
    with pytest.raises(ValueError, match="161"):
        ms_ssim(small, small)
    ok = torch.rand(1, 1, 161, 161)
    assert 0.0 < ms_ssim(ok, ok.flip(-1)).item() <= 1.0


def test_ms_ssim_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        ms_ssim(torch.rand(1, 3, 176, 176), torch.rand(1, 2, 176, 176))


def test_ms_ssim_gradient_is_finite() -> None:
    pred, target = _pair((1, 2, 176, 176), dtype=torch.float32)
    pred.requires_grad_(True)
    ms_ssim_loss(pred, target).backward()
    assert pred.grad is not None
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0


# --- L1, cosine ---------------------------------------------------------------------------------


def test_l1_values_and_mask() -> None:
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.0], [0.0, 1.0]]]])
    assert l1_loss(pred, target).item() == pytest.approx(12.0 / 8)
    valid = torch.tensor([[[[True, False], [False, True]]]])
    assert l1_loss(pred, target, valid=valid).item() == pytest.approx((1 + 4 + 1 + 1) / 4)
    assert l1_loss(target, target).item() == 0.0
    none = torch.zeros_like(valid)
    assert l1_loss(pred, target, valid=none).item() == 0.0


def test_masks_are_checked() -> None:
    pred = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="bool"):
        l1_loss(pred, pred, valid=torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        spectral_cosine_loss(pred, pred, valid=torch.ones(1, 2, 2, 2, dtype=torch.bool))


def test_spectral_cosine_values() -> None:
    a = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    b = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    assert spectral_cosine_loss(a, 2.5 * a).item() == pytest.approx(0.0, abs=1e-7)  # parallel
    assert spectral_cosine_loss(a, b).item() == pytest.approx(1.0)  # orthogonal
    assert spectral_cosine_loss(a, -a).item() == pytest.approx(2.0)  # opposite
    pred = torch.cat([a, a], dim=-1)
    target = torch.cat([a, b], dim=-1)
    assert spectral_cosine_loss(pred, target).item() == pytest.approx(0.5)
    valid = torch.tensor([True, False]).view(1, 1, 1, 2)
    assert spectral_cosine_loss(pred, target, valid=valid).item() == pytest.approx(0.0, abs=1e-7)
    images = torch.rand(2, 6, 8, 8) + 0.01
    assert spectral_cosine_loss(images, images).item() == pytest.approx(0.0, abs=1e-6)


# --- LSGAN ------------------------------------------------------------------------------------------


def test_lsgan_hand_computed() -> None:
    d_real = torch.tensor([[[[1.0, 0.0]]]])  # (real - 1)^2 = 0, 1 -> mean 0.5
    d_fake = torch.tensor([[[[0.0, 2.0]]]])  # fake^2 = 0, 4 -> mean 2
    assert lsgan_discriminator_loss(d_real, d_fake).item() == pytest.approx(0.5 * (0.5 + 2.0))
    assert lsgan_generator_loss(d_fake).item() == pytest.approx(1.0)  # (0-1)^2, (2-1)^2 -> 1
    assert lsgan_discriminator_loss(torch.ones(1, 1, 3, 3), torch.zeros(1, 1, 3, 3)).item() == 0.0
    assert lsgan_generator_loss(torch.ones(1, 1, 3, 3)).item() == 0.0


# --- generator loss -------------------------------------------------------------------------------


def test_generator_loss_weights_defaults() -> None:
    weights = GeneratorLossWeights()
    assert (weights.adversarial, weights.l1, weights.cosine, weights.ms_ssim) == (0.01, 1.0, 1.0, 1.0)


def test_generator_loss_zero_at_optimum() -> None:
    _, target = _pair((2, 3, 176, 176), dtype=torch.float32)
    total, parts = generator_loss(target, target, torch.ones(2, 1, 25, 25), GeneratorLossWeights())
    assert set(parts) == {"l1", "ms_ssim", "cosine", "adversarial"}
    assert total.item() == pytest.approx(0.0, abs=1e-5)


def test_generator_loss_is_weighted_sum() -> None:
    pred, target = _pair((1, 3, 176, 176), dtype=torch.float32, seed=2)
    pred.requires_grad_(True)
    d_fake = torch.randn(1, 1, 25, 25)
    weights = GeneratorLossWeights(adversarial=0.5, l1=2.0, cosine=3.0, ms_ssim=4.0)
    total, parts = generator_loss(pred, target, d_fake, weights)
    expected = (
        2.0 * l1_loss(pred, target)
        + 4.0 * ms_ssim_loss(pred, target)
        + 3.0 * spectral_cosine_loss(pred, target)
        + 0.5 * lsgan_generator_loss(d_fake)
    )
    torch.testing.assert_close(total, expected)
    assert parts["adversarial"].item() == pytest.approx(lsgan_generator_loss(d_fake).item())
    assert not parts["l1"].requires_grad
    total.backward()
    assert pred.grad is not None


def test_generator_loss_skips_zero_weights_and_missing_discriminator() -> None:
    pred, target = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)  # too small for MS-SSIM
    total, parts = generator_loss(pred, target, None, GeneratorLossWeights(ms_ssim=0.0))
    assert set(parts) == {"l1", "cosine"}
    torch.testing.assert_close(total, parts["l1"] + parts["cosine"])


def test_modules_wrap_functions() -> None:
    pred, target = _pair((1, 2, 176, 176), dtype=torch.float32, seed=4)
    valid = torch.rand(1, 1, 176, 176) > 0.3
    torch.testing.assert_close(L1Loss()(pred, target, valid), l1_loss(pred, target, valid=valid))
    torch.testing.assert_close(SpectralCosineLoss()(pred, target), spectral_cosine_loss(pred, target))
    torch.testing.assert_close(
        MSSSIM(reference_bug=True)(pred, target), ms_ssim(pred, target, reference_bug=True)
    )
    torch.testing.assert_close(MSSSIMLoss()(pred, target), ms_ssim_loss(pred, target))
    d_fake = torch.rand(1, 1, 23, 23)
    total, _ = GeneratorLoss()(pred, target, d_fake)
    torch.testing.assert_close(total, generator_loss(pred, target, d_fake)[0])


def test_ms_ssim_fewer_scales_for_small_patches() -> None:
    """Our extension: fewer scales with renormalised weights; 5 scales is the paper's default."""
    from stfusion.losses import ms_ssim, ms_ssim_min_size, ms_ssim_scales_for

    assert [ms_ssim_min_size(s) for s in (1, 2, 3, 4, 5)] == [11, 21, 41, 81, 161]
    assert ms_ssim_scales_for(128) == 4 and ms_ssim_scales_for(256) == 5 and ms_ssim_scales_for(5) == 1
    torch.manual_seed(0)
    a, b = torch.rand(1, 2, 96, 96), torch.rand(1, 2, 96, 96)
    assert float(ms_ssim(a, a, scales=4)) == pytest.approx(1.0, abs=1e-6)
    value = float(ms_ssim(a, b, scales=4))
    assert 0.0 < value < 1.0
    one = float(ms_ssim(a, b, scales=1))
    assert 0.0 < one < 1.0
    with pytest.raises(ValueError, match="161"):
        ms_ssim(a, b)
    with pytest.raises(ValueError, match="scales"):
        ms_ssim(a, b, scales=6)


def test_generator_loss_ignores_invalid_pixels_in_every_term() -> None:
    """Masked (invalid) pixels change no term of the generator loss and get no gradient (issue 7)."""
    torch.manual_seed(0)
    target = torch.rand(2, 3, 40, 40)
    valid = torch.ones(2, 1, 40, 40, dtype=torch.bool)
    valid[:, :, 10:20, 5:30] = False
    pred = torch.rand(2, 3, 40, 40, requires_grad=True)
    other = pred.detach().clone()
    other[:, :, 10:20, 5:30] = 7.0  # wild values where invalid
    other.requires_grad_(True)
    weights = GeneratorLossWeights(adversarial=0.0)
    _, parts = generator_loss(pred, target, None, weights, valid=valid, ms_ssim_scales=2)
    total_other, parts_other = generator_loss(other, target, None, weights, valid=valid, ms_ssim_scales=2)
    assert {k: float(v) for k, v in parts.items()} == {k: float(v) for k, v in parts_other.items()}
    total_other.backward()
    assert other.grad is not None
    assert (other.grad[:, :, 10:20, 5:30] == 0).all() and other.grad.abs().sum() > 0
    # without the mask the wild values do change MS-SSIM (the check above can fail)
    _, unmasked = generator_loss(other.detach(), target, None, weights, ms_ssim_scales=2)
    assert float(unmasked["ms_ssim"]) != float(parts["ms_ssim"])
