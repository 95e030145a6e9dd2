"""Conditional PatchGAN discriminator of MLFF-GAN (spec MLFF-GAN.md section 3, pix2pixHD style).

The discriminator sees a fine image (the real ``fine_t2`` or a generated one) concatenated along the
bands with the coarse image at t2, and scores overlapping patches: a 256 x 256 input gives a
35 x 35 map of raw scores (no sigmoid; the LSGAN losses in :mod:`stfusion.losses` expect raw scores).
2,775,745 trainable parameters for 6 bands.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Negative slope of the discriminator's LeakyReLU activations.
LEAKY_SLOPE: float = 0.2


class DiscriminatorBlock(nn.Module):
    """Conv 4x4 (with bias, padding 2), optional BatchNorm2d (``norm``), optional LeakyReLU(0.2).

    (B, C_in, H, W) -> (B, C_out, H // stride + 1, W // stride + 1).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int, norm: bool, activation: bool
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=stride, padding=2)
        self.norm: nn.BatchNorm2d | None = nn.BatchNorm2d(out_channels) if norm else None
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W')."""
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation:
            x = nn.functional.leaky_relu(x, LEAKY_SLOPE)
        return x


class PatchDiscriminator(nn.Module):
    """Single-scale conditional PatchGAN: 64 -> 128 -> 256 -> 512 -> 1 channels, no spectral norm.

    Args:
        bands: spectral bands of the fine and coarse images (the network sees 2 * bands channels).

    Attributes:
        blocks: five :class:`DiscriminatorBlock` (strides 2, 2, 2, 1, 1; BatchNorm on blocks 1-3).
    """

    def __init__(self, bands: int) -> None:
        super().__init__()
        if bands < 1:
            raise ValueError(f"bands must be >= 1, got {bands}")
        self.bands = bands
        self.blocks = nn.ModuleList(
            [
                DiscriminatorBlock(2 * bands, 64, stride=2, norm=False, activation=True),
                DiscriminatorBlock(64, 128, stride=2, norm=True, activation=True),
                DiscriminatorBlock(128, 256, stride=2, norm=True, activation=True),
                DiscriminatorBlock(256, 512, stride=1, norm=True, activation=True),
                DiscriminatorBlock(512, 1, stride=1, norm=False, activation=False),
            ]
        )

    def forward(self, fine: Tensor, coarse_t2: Tensor) -> Tensor:
        """Score the patches of ``fine`` given ``coarse_t2``.

        Args:
            fine: (B, C, H, W) real or generated fine image at t2, reflectance.
            coarse_t2: (B, C, H, W) coarse image at t2 on the fine grid (degraded like the generator's
                input), reflectance.
        Returns:
            (B, 1, h, w) raw patch scores; h = H // 8 + 3 for H divisible by 8 (256 -> 35).
        """
        if fine.ndim != 4 or fine.shape[1] != self.bands:
            raise ValueError(f"fine must have shape (B, {self.bands}, H, W), got {tuple(fine.shape)}")
        if coarse_t2.shape != fine.shape:
            raise ValueError(
                f"coarse_t2 has shape {tuple(coarse_t2.shape)} but fine has {tuple(fine.shape)}; "
                "they must match"
            )
        x = torch.cat([fine, coarse_t2], dim=1)
        for block in self.blocks:
            x = block(x)
        return x
