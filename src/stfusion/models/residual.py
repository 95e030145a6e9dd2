"""Residual parameterisation of a fusion generator: predict the correction to F1 + (C2 - C1).

``ResidualFusion(generator)`` returns ``fine_t1 + (coarse_t2 - coarse_t1) + generator(...)``: the same
network (same architecture, parameters and losses on the final prediction), asked to learn only what the
coarse-delta baseline gets wrong. It is an option of ours (``--residual``), not part of the paper;
the generator's own state-dict keys are kept under the ``generator.`` prefix.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class ResidualFusion(nn.Module):
    """Wrap a generator with forward(coarse_t1=, fine_t1=, coarse_t2=) -> (B, C, H, W)."""

    def __init__(self, generator: nn.Module, *, zero_mean: bool = False) -> None:
        super().__init__()
        self.generator = generator
        # zero_mean: remove the per-sample, per-band spatial mean of the correction, so the prediction
        # keeps the mean of F1 + C2 - C1 (a date-specific offset cannot be learned from few pairs)
        self.zero_mean = zero_mean

    def _centre(self, correction: Tensor) -> Tensor:
        if not self.zero_mean:
            return correction
        return correction - correction.mean(dim=(-2, -1), keepdim=True)

    def forward(
        self, coarse_t1: Tensor | None = None, *, fine_t1: Tensor, coarse_t2: Tensor, **kwargs: Any
    ) -> Tensor:
        if coarse_t1 is None:
            raise ValueError("ResidualFusion needs coarse_t1 (the baseline is F1 + C2 - C1)")
        correction = self.generator(coarse_t1=coarse_t1, fine_t1=fine_t1, coarse_t2=coarse_t2, **kwargs)
        if isinstance(correction, tuple):
            return (fine_t1 + (coarse_t2 - coarse_t1) + self._centre(correction[0]), *correction[1:])  # type: ignore[return-value]
        return fine_t1 + (coarse_t2 - coarse_t1) + self._centre(correction)
