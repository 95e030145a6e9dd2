"""MLFF-GAN generator: multilevel feature fusion of a coarse/fine reference pair and a coarse target.

Architecture (spec MLFF-GAN.md section 2; Song et al., IEEE TGRS 60, 2022):

* a siamese *coarse encoder* applied with the same weights to ``coarse_t2`` (features K2_l) and to
  ``coarse_t1`` (features K1_l), and a separate *fine encoder* applied to ``fine_t1`` (features H_l),
  each giving five feature maps with 16, 32, 64, 128, 256 channels at scales 1, 1/2, 1/4, 1/8, 1/16;
* at every level a fusion: AdaIN re-styles the fine features with the coarse-t2 statistics
  (S_l), a change-attention map M_l in (0, 1) is computed from the coarse-t2 and coarse-t1 features,
  and the fused feature is Z_l = K2_l * M_l + S_l * (1 - M_l);
* a U-Net decoder from concat[Z_5, K2_5] up to full size with skip connections Z_4..Z_1, and a
  linear 1x1 output convolution (no output activation).

The model is pure: tensors in, tensors out. It does NOT apply the coarse degradation of spec section 5
(:func:`stfusion.transforms.degrade_coarse`): callers apply it to ``coarse_t1`` and ``coarse_t2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Spatial multiple required by the four stride-2 stages of the encoders.
SIZE_MULTIPLE: int = 16
#: Smallest padded side: keeps the deepest level at least 2 x 2, so that its reflection padding and
#: the unbiased per-channel variance of AdaIN are defined (a 1 x 1 map gives NaN variance).
MIN_PADDED_SIZE: int = 32
#: Negative slope of the LeakyReLU activations in the generator.
LEAKY_SLOPE: float = 0.01
#: Added to the unbiased variance before the square root in AdaIN.
ADAIN_EPS: float = 1e-5


class ResBlock(nn.Module):
    """Residual block: x + [pad, conv3x3, dropout, LeakyReLU, pad, conv3x3, dropout](x).

    Reflection padding of 1 before each 3x3 convolution; no normalisation and no activation after
    the sum. Shape-preserving: (B, C, H, W) -> (B, C, H, W); needs H, W >= 2.
    """

    def __init__(self, channels: int, *, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        body = self.dropout(self.conv1(F.pad(x, (1, 1, 1, 1), mode="reflect")))
        body = F.leaky_relu(body, LEAKY_SLOPE)
        body = self.dropout(self.conv2(F.pad(body, (1, 1, 1, 1), mode="reflect")))
        return x + body


class EncoderStage(nn.Module):
    """One encoder level: a convolution (``down``) followed by a :class:`ResBlock` (``res``).

    Level 1 uses a 7x7 stride-1 convolution with zero padding 3; deeper levels a 3x3 stride-2
    convolution with padding 1 that halves H and W. No activation between the two.
    """

    def __init__(self, in_channels: int, out_channels: int, *, first: bool, dropout: float) -> None:
        super().__init__()
        if first:
            self.down = nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=1, padding=3)
        else:
            self.down = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.res = ResBlock(out_channels, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W) at level 1, (B, C_out, H/2, W/2) deeper."""
        return self.res(self.down(x))


class FeatureEncoder(nn.Module):
    """Five-level convolutional encoder returning every level's feature map.

    Args:
        bands: input channels (spectral bands).
        channels: feature channels of the five levels.
        dropout: dropout probability inside the residual blocks.
    """

    def __init__(self, bands: int, *, channels: Sequence[int], dropout: float) -> None:
        super().__init__()
        inputs = [bands, *channels[:-1]]
        self.stages = nn.ModuleList(
            EncoderStage(c_in, c_out, first=index == 0, dropout=dropout)
            for index, (c_in, c_out) in enumerate(zip(inputs, channels, strict=True))
        )

    def forward(self, image: Tensor) -> list[Tensor]:
        """(B, bands, H, W), H and W multiples of 16 -> five maps (B, c_l, H / 2^l, W / 2^l), l = 0..4."""
        features = []
        x = image
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def adaptive_instance_norm(content: Tensor, style: Tensor, *, eps: float = ADAIN_EPS) -> Tensor:
    """AdaIN: give ``content`` the per-sample, per-channel mean and standard deviation of ``style``.

    S = (content - mean(content)) / std(content) * std(style) + mean(style), statistics over the spatial
    positions, std = sqrt(unbiased variance + eps). No learned parameters.

    Args:
        content: (B, C, H, W) features to re-style (fine-t1 features).
        style: (B, C, H', W') features providing the statistics (coarse-t2 features); H' * W' >= 2.
    Returns:
        (B, C, H, W) re-styled content.
    """
    c_var, c_mean = torch.var_mean(content, dim=(2, 3), keepdim=True, correction=1)
    s_var, s_mean = torch.var_mean(style, dim=(2, 3), keepdim=True, correction=1)
    return (content - c_mean) / torch.sqrt(c_var + eps) * torch.sqrt(s_var + eps) + s_mean


class ConvBN(nn.Module):
    """1x1 convolution (with bias) followed by BatchNorm2d: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        return self.norm(self.conv(x))


class ChangeAttention(nn.Module):
    """Change-attention map M = sigmoid(BN(conv1x1(BN(conv1x1(K2)) - BN(conv1x1(other))))).

    ``proj_t2`` projects the coarse-t2 features, ``proj_t1`` the comparison features (coarse-t1
    features, or the AdaIN output in two-input mode), ``to_map`` reduces their difference to one
    channel. Large M means "trust the coarse t2 features" at that position.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj_t2 = ConvBN(channels, channels)
        self.proj_t1 = ConvBN(channels, channels)
        self.to_map = ConvBN(channels, 1)

    def forward(self, coarse_t2: Tensor, other: Tensor) -> Tensor:
        """(B, C, h, w) and (B, C, h, w) -> (B, 1, h, w) map in (0, 1)."""
        return torch.sigmoid(self.to_map(self.proj_t2(coarse_t2) - self.proj_t1(other)))


class LevelFusion(nn.Module):
    """Fusion of one level: Z = K2 * M + S * (1 - M) with S = AdaIN(H, K2) and M the attention map.

    Args:
        channels: feature channels of the level.
        adain: re-style the fine features with AdaIN; otherwise S = H.
        attention: use a learned :class:`ChangeAttention` map; otherwise M = 0.5 everywhere.
        two_input: compare K2 with S instead of K1 in the attention (coarse t1 not needed).
    """

    def __init__(self, channels: int, *, adain: bool, attention: bool, two_input: bool) -> None:
        super().__init__()
        self.adain = adain
        self.two_input = two_input
        self.attention: ChangeAttention | None = ChangeAttention(channels) if attention else None

    def forward(self, fine_t1: Tensor, coarse_t2: Tensor, coarse_t1: Tensor | None) -> tuple[Tensor, Tensor]:
        """Fuse one level's features, each (B, C, h, w).

        Returns:
            fused (B, C, h, w) and the attention map (B, 1, h, w) (constant 0.5 without attention).
        """
        styled = adaptive_instance_norm(fine_t1, coarse_t2) if self.adain else fine_t1
        if self.attention is None:
            weight = coarse_t2.new_full((coarse_t2.shape[0], 1, *coarse_t2.shape[2:]), 0.5)
        else:
            other = styled if self.two_input else coarse_t1
            if other is None:
                raise ValueError("coarse_t1 features are required unless two_input=True")
            weight = self.attention(coarse_t2, other)
        return coarse_t2 * weight + styled * (1.0 - weight), weight


class DecoderStage(nn.Module):
    """Transposed conv k4 s2 p1 (``up``) + LeakyReLU(0.01), then a :class:`ResBlock` (``res``).

    (B, C_in, h, w) -> (B, C_out, 2h, 2w).
    """

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
        self.res = ResBlock(out_channels, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, h, w) -> (B, C_out, 2h, 2w)."""
        return self.res(F.leaky_relu(self.up(x), LEAKY_SLOPE))


class OutputHead(nn.Module):
    """Full-resolution head: ResBlock(2c) -> conv1x1(2c -> c) -> ResBlock(c) -> conv1x1(c -> bands).

    Linear output (no activation): (B, 2c, H, W) -> (B, bands, H, W) reflectance.
    """

    def __init__(self, channels: int, bands: int, *, dropout: float) -> None:
        super().__init__()
        self.res_wide = ResBlock(2 * channels, dropout=dropout)
        self.squeeze = nn.Conv2d(2 * channels, channels, kernel_size=1)
        self.res_narrow = ResBlock(channels, dropout=dropout)
        self.out = nn.Conv2d(channels, bands, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 2c, H, W) -> (B, bands, H, W)."""
        return self.out(self.res_narrow(self.squeeze(self.res_wide(x))))


class UNetDecoder(nn.Module):
    """U-Net decoder of MLFF-GAN.

    D4 = stage0(concat[Z5, K2_5]), D3 = stage1(concat[Z4, D4]), D2 = stage2(concat[Z3, D3]),
    D1 = stage3(concat[Z2, D2]), out = head(concat[Z1, D1]); the fused map always comes first in the
    concatenation (this order fixes the weight layout of the reference checkpoint).
    """

    def __init__(self, bands: int, *, channels: Sequence[int], dropout: float) -> None:
        super().__init__()
        depth = len(channels)
        self.stages = nn.ModuleList(
            DecoderStage(2 * channels[level], channels[level - 1], dropout=dropout)
            for level in range(depth - 1, 0, -1)
        )
        self.head = OutputHead(channels[0], bands, dropout=dropout)

    def forward(self, fused: Sequence[Tensor], deepest_coarse_t2: Tensor) -> Tensor:
        """Decode.

        Args:
            fused: five fused maps Z_1..Z_5, (B, c_l, H / 2^l, W / 2^l) for l = 0..4.
            deepest_coarse_t2: K2_5, (B, c_5, H / 16, W / 16).
        Returns:
            (B, bands, H, W).
        """
        x = deepest_coarse_t2
        for stage, skip in zip(self.stages, reversed(fused[1:]), strict=True):
            x = stage(torch.cat([skip, x], dim=1))
        return self.head(torch.cat([fused[0], x], dim=1))


def _pad_to_multiple(image: Tensor, height: int, width: int) -> Tensor:
    """Pad bottom/right of (B, C, H, W) to (height, width): reflect, or replicate when too small."""
    pad_h, pad_w = height - image.shape[-2], width - image.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return image
    # Reflection needs the pad to be smaller than the side it mirrors.
    mode = "reflect" if pad_h < image.shape[-2] and pad_w < image.shape[-1] else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


def _padded_side(side: int) -> int:
    return max(MIN_PADDED_SIZE, -(-side // SIZE_MULTIPLE) * SIZE_MULTIPLE)


class MLFFGenerator(nn.Module):
    """MLFF-GAN generator: predicts the fine image at t2 from (coarse t1, fine t1, coarse t2).

    5,925,285 trainable parameters for 6 bands with the default channels (coarse encoder 1,969,200,
    fine encoder 1,969,200, five attention modules 178,079, decoder 1,808,806).

    Args:
        bands: number of spectral bands of every input and of the output.
        adain: AdaIN re-styling of the fine features (ablation switch; off: S_l = H_l).
        attention: learned change-attention fusion (ablation switch; off: Z_l = (K2_l + S_l) / 2).
        two_input: attention compares coarse-t2 features with S_l instead of coarse-t1 features, so
            ``coarse_t1`` is not used and may be None.
        channels: feature channels of the five encoder levels.
        dropout: dropout probability in every residual block (active in training mode only).

    Attributes:
        coarse_encoder: siamese encoder shared by coarse t2 and coarse t1.
        fine_encoder: encoder of fine t1.
        fusions: one :class:`LevelFusion` per level (their attention modules hold the parameters).
        decoder: :class:`UNetDecoder`.
    """

    def __init__(
        self,
        bands: int,
        *,
        adain: bool = True,
        attention: bool = True,
        two_input: bool = False,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if bands < 1:
            raise ValueError(f"bands must be >= 1, got {bands}")
        channels = tuple(int(c) for c in channels)
        if len(channels) != 5 or min(channels) < 1:
            raise ValueError(f"channels must be five positive ints (one per level), got {channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.bands = bands
        self.channels = channels
        self.two_input = two_input
        self.coarse_encoder = FeatureEncoder(bands, channels=channels, dropout=dropout)
        self.fine_encoder = FeatureEncoder(bands, channels=channels, dropout=dropout)
        self.fusions = nn.ModuleList(
            LevelFusion(c, adain=adain, attention=attention, two_input=two_input) for c in channels
        )
        self.decoder = UNetDecoder(bands, channels=channels, dropout=dropout)

    def _check(self, name: str, image: Tensor | None, like: Tensor | None = None) -> Tensor:
        if image is None:
            raise ValueError(f"{name} is required (B, {self.bands}, H, W) reflectance")
        if image.ndim != 4 or image.shape[1] != self.bands:
            raise ValueError(f"{name} must have shape (B, {self.bands}, H, W), got {tuple(image.shape)}")
        if like is not None and image.shape != like.shape:
            raise ValueError(
                f"{name} has shape {tuple(image.shape)} but fine_t1 has {tuple(like.shape)}; "
                "all inputs must share one (B, C, H, W) shape (resample coarse images onto the fine grid)"
            )
        return image

    @overload
    def forward(
        self,
        coarse_t1: Tensor | None = ...,
        fine_t1: Tensor | None = ...,
        coarse_t2: Tensor | None = ...,
        *,
        return_attention: Literal[False] = ...,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        coarse_t1: Tensor | None = ...,
        fine_t1: Tensor | None = ...,
        coarse_t2: Tensor | None = ...,
        *,
        return_attention: Literal[True],
    ) -> tuple[Tensor, list[Tensor]]: ...

    def forward(
        self,
        coarse_t1: Tensor | None = None,
        fine_t1: Tensor | None = None,
        coarse_t2: Tensor | None = None,
        *,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Predict the fine image at t2.

        Any H and W are accepted: the inputs are padded at the bottom and right to a multiple of 16
        (at least 32) by reflection (replication when the image is smaller than the pad), and the
        output is cropped back.

        Args:
            coarse_t1: (B, C, H, W) coarse image at t1 on the fine grid, reflectance (already degraded
                by the caller if wanted). Ignored, and may be None, when ``two_input=True``.
            fine_t1: (B, C, H, W) fine image at t1, reflectance.
            coarse_t2: (B, C, H, W) coarse image at t2 on the fine grid, reflectance.
            return_attention: also return the five attention maps.
        Returns:
            fine_t2: (B, C, H, W) predicted reflectance (linear output, not clipped); with
            ``return_attention``, also a list of five maps (B, 1, ceil(H / 2^l), ceil(W / 2^l)),
            l = 0..4, values in (0, 1) (constant 0.5 when attention is disabled).
        """
        fine_t1 = self._check("fine_t1", fine_t1)
        coarse_t2 = self._check("coarse_t2", coarse_t2, fine_t1)
        coarse = coarse_t2
        if not self.two_input:
            coarse = torch.cat([coarse_t2, self._check("coarse_t1", coarse_t1, fine_t1)], dim=0)
        height, width = fine_t1.shape[-2:]
        padded_h, padded_w = _padded_side(height), _padded_side(width)

        batch = fine_t1.shape[0]
        # One pass of the siamese encoder over both dates: no batch statistics inside, so identical
        # to two separate passes.
        coarse_features = self.coarse_encoder(_pad_to_multiple(coarse, padded_h, padded_w))
        fine_features = self.fine_encoder(_pad_to_multiple(fine_t1, padded_h, padded_w))

        fused: list[Tensor] = []
        maps: list[Tensor] = []
        for fusion, fine, coarse_level in zip(self.fusions, fine_features, coarse_features, strict=True):
            k2 = coarse_level[:batch]
            k1 = None if self.two_input else coarse_level[batch:]
            z, weight = fusion(fine, k2, k1)
            fused.append(z)
            maps.append(weight)

        out = self.decoder(fused, coarse_features[-1][:batch])[..., :height, :width]
        if not return_attention:
            return out
        cropped = [m[..., : -(-height // 2**level), : -(-width // 2**level)] for level, m in enumerate(maps)]
        return out, cropped
