"""BatchNorm whose training statistics span every process of a data-parallel run.

:func:`convert_batchnorm` swaps it into a model before training under ``torchrun``
(:mod:`stfusion.distributed` sets up the process group).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks.

    ``torch.nn.SyncBatchNorm`` only runs on GPUs; this one runs on any backend (gloo on CPU, nccl on
    GPU) through the differentiable ``torch.distributed.nn.functional.all_reduce``, so a data-parallel
    run normalises exactly like one process with the whole batch (up to float rounding: the variance
    is E[x^2] - E[x]^2, summed in float64). Same parameters and buffers as BatchNorm2d, so checkpoints load
    into either. Outside training, or without a process group, it is plain BatchNorm2d.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        channels = input.shape[1]
        x = input.double()
        local = torch.cat(
            [
                x.sum(dim=(0, 2, 3)),
                (x * x).sum(dim=(0, 2, 3)),
                x.new_full((1,), float(input.numel() // channels)),
            ]
        )
        total = dist_nn.all_reduce(local)
        count = total[-1]
        mean = total[:channels] / count
        var = total[channels : 2 * channels] / count - mean * mean
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                momentum = (
                    self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                )
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
        shape = (1, channels, 1, 1)
        scale = torch.rsqrt(var + self.eps).float()
        out = (input.float() - mean.float().view(shape)) * scale.view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by a :class:`CrossRankBatchNorm2d` (same state)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = CrossRankBatchNorm2d(
                child.num_features,
                eps=child.eps,
                momentum=child.momentum,
                affine=child.affine,
                track_running_stats=child.track_running_stats,
            ).to(next(iter(child.state_dict().values())).device)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            convert_batchnorm(child)
    return module
