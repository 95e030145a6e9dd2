"""Tests of the MLFF-GAN generator and the PatchGAN discriminator (spec MLFF-GAN.md sections 2-3)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from stfusion.models import DISCRIMINATORS, MODELS, MLFFGenerator, PatchDiscriminator
from stfusion.models.batchnorm import CrossRankBatchNorm2d, convert_batchnorm
from stfusion.models.mlffgan import adaptive_instance_norm


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _inputs(bands: int, height: int, width: int, *, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(batch, bands, height, width, generator=generator)
        for name in ("coarse_t1", "fine_t1", "coarse_t2")
    }


def test_registry() -> None:
    assert MODELS["mlffgan"] is MLFFGenerator
    assert DISCRIMINATORS["patchgan"] is PatchDiscriminator


def test_generator_parameter_counts_match_spec() -> None:
    # Figures from spec section 2 (6 bands).
    model = MLFFGenerator(6)
    assert _count(model) == 5_925_285
    assert _count(model.coarse_encoder) == 1_969_200
    assert _count(model.fine_encoder) == 1_969_200
    assert _count(model.fusions) == 178_079
    assert _count(model.decoder) == 1_808_806


def test_discriminator_parameter_count_and_output_shape() -> None:
    model = PatchDiscriminator(6)
    assert _count(model) == 2_775_745
    fine = torch.rand(2, 6, 256, 256)
    with torch.inference_mode():
        scores = model(fine, torch.rand(2, 6, 256, 256))
    assert scores.shape == (2, 1, 35, 35)


def test_discriminator_rejects_mismatched_inputs() -> None:
    model = PatchDiscriminator(4)
    with pytest.raises(ValueError, match="coarse_t2"):
        model(torch.rand(1, 4, 64, 64), torch.rand(1, 4, 32, 64))
    with pytest.raises(ValueError, match="fine"):
        model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("bands", [3, 4, 6, 8])
@pytest.mark.parametrize("size", [(256, 256), (250, 250), (333, 517)])
def test_generator_output_shape_any_size(bands: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = MLFFGenerator(bands).eval()
    inputs = _inputs(bands, *size)
    with torch.inference_mode():
        out = model(**inputs)
    assert out.shape == (1, bands, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (16, 16), (20, 40)])
def test_generator_tiny_sizes(size: tuple[int, int]) -> None:
    # Reflection padding would exceed these sides: the model falls back to replication.
    model = MLFFGenerator(3).eval()
    with torch.inference_mode():
        out = model(**_inputs(3, *size))
    assert out.shape == (1, 3, *size)
    assert torch.isfinite(out).all()


def test_generator_positional_and_keyword_calls_agree() -> None:
    torch.manual_seed(0)
    model = MLFFGenerator(4).eval()
    inputs = _inputs(4, 48, 40)
    with torch.inference_mode():
        by_keyword = model(**inputs)
        by_position = model(inputs["coarse_t1"], inputs["fine_t1"], inputs["coarse_t2"])
    torch.testing.assert_close(by_keyword, by_position)


def test_generator_padding_does_not_leak_between_batch_items() -> None:
    # The siamese encoder runs C2 and C1 in one batch; a sample's output must not depend on others.
    torch.manual_seed(0)
    model = MLFFGenerator(3).eval()
    inputs = _inputs(3, 40, 56, batch=3)
    with torch.inference_mode():
        full = model(**inputs)
        single = model(**{name: value[1:2] for name, value in inputs.items()})
    torch.testing.assert_close(full[1:2], single, atol=1e-5, rtol=1e-5)


def test_attention_maps_shapes_and_range() -> None:
    torch.manual_seed(0)
    model = MLFFGenerator(6).eval()
    with torch.inference_mode():
        out, maps = model(**_inputs(6, 50, 70), return_attention=True)
    assert out.shape == (1, 6, 50, 70)
    assert len(maps) == 5
    for level, weight in enumerate(maps):
        assert weight.shape == (1, 1, -(-50 // 2**level), -(-70 // 2**level))
        assert ((weight > 0) & (weight < 1)).all()


def test_gradients_reach_every_generator_parameter() -> None:
    # Eval mode: BatchNorm uses running statistics, so the biases of the 1x1 convolutions that feed
    # a BatchNorm receive gradient (with batch statistics they cancel exactly); dropout is off.
    torch.manual_seed(0)
    model = MLFFGenerator(4, adain=True, attention=True).eval()
    inputs = _inputs(4, 32, 48, batch=2)
    out = model(**inputs)
    (out * torch.randn_like(out)).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_training_mode_backward_runs() -> None:
    torch.manual_seed(0)
    model = MLFFGenerator(3).train()
    out = model(**_inputs(3, 32, 32, batch=2))
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = MLFFGenerator(3)
    inputs = _inputs(3, 32, 32, batch=2)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs), model(**inputs))


def _copy_of(model: MLFFGenerator, switch: dict[str, bool]) -> MLFFGenerator:
    other = MLFFGenerator(
        model.bands,
        adain=switch.get("adain", True),
        attention=switch.get("attention", True),
        two_input=switch.get("two_input", False),
    )
    # Attention-free models lack the attention tensors: copy what exists.
    other.load_state_dict(model.state_dict(), strict=switch.get("attention", True))
    return other.eval()


@pytest.mark.parametrize("switch", [{"adain": False}, {"attention": False}, {"two_input": True}])
def test_ablation_switches_change_the_output(switch: dict[str, bool]) -> None:
    torch.manual_seed(0)
    base = MLFFGenerator(4).eval()
    ablated = _copy_of(base, switch)
    inputs = _inputs(4, 32, 32, batch=2)
    with torch.inference_mode():
        reference = base(**inputs)
        changed = ablated(**inputs)
    assert changed.shape == reference.shape
    assert not torch.allclose(reference, changed, atol=1e-6)


def test_attention_off_has_no_attention_parameters_and_half_maps() -> None:
    model = MLFFGenerator(6, attention=False).eval()
    assert _count(model.fusions) == 0
    with torch.inference_mode():
        _, maps = model(**_inputs(6, 32, 32), return_attention=True)
    assert all(torch.all(m == 0.5) for m in maps)


def test_two_input_mode_ignores_coarse_t1() -> None:
    torch.manual_seed(0)
    model = MLFFGenerator(3, two_input=True).eval()
    inputs = _inputs(3, 32, 32)
    with torch.inference_mode():
        without = model(fine_t1=inputs["fine_t1"], coarse_t2=inputs["coarse_t2"])
        with_t1 = model(**inputs)
    torch.testing.assert_close(without, with_t1)


def test_missing_or_mismatched_inputs_raise() -> None:
    model = MLFFGenerator(3)
    inputs = _inputs(3, 32, 32)
    with pytest.raises(ValueError, match="coarse_t1"):
        model(fine_t1=inputs["fine_t1"], coarse_t2=inputs["coarse_t2"])
    with pytest.raises(ValueError, match="coarse_t2"):
        model(inputs["coarse_t1"], inputs["fine_t1"], torch.rand(1, 3, 16, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(**_inputs(4, 32, 32))


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="channels"):
        MLFFGenerator(6, channels=(16, 32, 64, 128))
    with pytest.raises(ValueError, match="dropout"):
        MLFFGenerator(6, dropout=1.0)
    with pytest.raises(ValueError, match="bands"):
        MLFFGenerator(0)


def test_adain_matches_formula() -> None:
    # S = (H - mean H) / sqrt(var_unbiased H + 1e-5) * sqrt(var_unbiased K + 1e-5) + mean K (spec 2).
    generator = torch.Generator().manual_seed(1)
    content = torch.rand(2, 3, 4, 5, generator=generator, dtype=torch.float64)
    style = 3.0 * torch.rand(2, 3, 4, 5, generator=generator, dtype=torch.float64) + 1.0
    out = adaptive_instance_norm(content, style)
    flat_c, flat_s = content.flatten(2), style.flatten(2)
    expected = (content - flat_c.mean(-1)[..., None, None]) / (flat_c.var(-1) + 1e-5).sqrt()[
        ..., None, None
    ] * (flat_s.var(-1) + 1e-5).sqrt()[..., None, None] + flat_s.mean(-1)[..., None, None]
    torch.testing.assert_close(out, expected)
    # The output carries the style statistics (up to eps).
    torch.testing.assert_close(out.flatten(2).mean(-1), flat_s.mean(-1))


def test_custom_channels() -> None:
    model = MLFFGenerator(2, channels=(4, 8, 8, 16, 16), dropout=0.0).eval()
    with torch.inference_mode():
        assert model(**_inputs(2, 33, 17)).shape == (1, 2, 33, 17)


def test_residual_zero_mean_correction_keeps_the_coarse_delta_mean() -> None:
    torch.manual_seed(0)
    model = MODELS["mlffgan-residual"](3, zero_mean=True, dropout=0.0)
    nn.init.normal_(model.generator.decoder.head.out.weight)  # a non-zero correction
    x = _inputs(3, 40, 56, batch=2)
    out = model(**x).detach()
    base = x["fine_t1"] + x["coarse_t2"] - x["coarse_t1"]
    correction = out - base
    assert correction.abs().max() > 1e-3
    torch.testing.assert_close(correction.mean(dim=(-2, -1)), torch.zeros(2, 3), atol=1e-6, rtol=0)
    plain = MODELS["mlffgan-residual"](3, dropout=0.0)
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(plain(**x).mean(dim=(-2, -1)), base.mean(dim=(-2, -1)), atol=1e-4)


def test_cross_rank_batchnorm_without_a_process_group_is_batchnorm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()), nn.BatchNorm2d(4))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    plain = copy.deepcopy(model)
    converted = convert_batchnorm(model)
    assert converted is model
    kinds = [type(m) for m in converted.modules() if isinstance(m, nn.BatchNorm2d)]
    assert kinds == [CrossRankBatchNorm2d, CrossRankBatchNorm2d]
    for a, b in zip(plain.state_dict().values(), converted.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(converted(x), plain(x))  # training mode: batch statistics
    for a, b in zip(plain.state_dict().values(), converted.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)  # the running statistics moved alike
    converted.eval()
    plain.eval()
    torch.testing.assert_close(converted(x), plain(x))
