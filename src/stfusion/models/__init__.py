"""Neural network architectures (pure ``nn.Module``s: numbers in ``__init__``, tensors in and out).

``MODELS`` maps a model name (as stored in checkpoints and used on the command line) to its builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from stfusion.models.discriminator import PatchDiscriminator
from stfusion.models.mlffgan import MLFFGenerator
from stfusion.models.reference import (
    ReferenceCheckpointError,
    export_reference_state_dict,
    import_reference_state_dict,
)
from stfusion.models.residual import ResidualFusion


#: Generator builders by name: ``MODELS[name](bands, **kwargs)``.
def residual_mlffgan(bands: int, *, zero_mean: bool = False, **kwargs: Any) -> nn.Module:
    """MLFF-GAN generator predicting the correction to F1 + (C2 - C1) (our option, not the paper's).

    The generator's last 1x1 convolution starts at zero, so training starts from the coarse-delta
    prediction instead of random noise around it (an initialisation; the architecture is unchanged).
    ``zero_mean``: the correction has zero spatial mean per band and sample (tile), see ResidualFusion.
    """
    generator = MLFFGenerator(bands, **kwargs)
    head: nn.Conv2d = generator.decoder.head.out
    nn.init.zeros_(head.weight)
    if head.bias is not None:
        nn.init.zeros_(head.bias)
    return ResidualFusion(generator, zero_mean=zero_mean)


MODELS: dict[str, Callable[..., nn.Module]] = {"mlffgan": MLFFGenerator, "mlffgan-residual": residual_mlffgan}
#: Discriminator builders by name: ``DISCRIMINATORS[name](bands)``.
DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {"patchgan": PatchDiscriminator}

__all__ = [
    "DISCRIMINATORS",
    "MODELS",
    "MLFFGenerator",
    "PatchDiscriminator",
    "ReferenceCheckpointError",
    "ResidualFusion",
    "export_reference_state_dict",
    "import_reference_state_dict",
]
