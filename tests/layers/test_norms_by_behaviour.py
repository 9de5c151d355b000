"""Normalization layers known by what their forward computes, not by their class name.

A module shaped like a norm (a 1-d float ``weight``, maybe a ``bias`` of the same shape, an
``eps`` or ``variance_epsilon``, no buffers or children; or an ``nn.LayerNorm`` subclass with
a forward of its own) is recognized when its forward computes layer norm or RMS norm over the
last dim or over dim 1 of (N, C, H, W), scaled by ``weight`` or ``1 + weight``; anything else
is not a norm normlab knows. The modules below are written as their sources write them
(Segment Anything's ``LayerNorm2d``, DeBERTa's ``LayerNorm``, Nemotron's ``LayerNorm1P``) or
as look-alikes that compute something else.

Oracles: float64 formulas of layer and RMS norm, and torch's ``F.layer_norm``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlab as nl
from normlab.layers import norm_classes

C = 6


class LayerNorm2d(nn.Module):
    """Segment Anything's LayerNorm2d (segment_anything/modeling/common.py): layer norm over
    the channels of (N, C, H, W), written out; a plain nn.Module."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        x = self.weight[:, None, None] * x + self.bias[:, None, None]
        return x


class DebertaLayerNorm(nn.Module):
    """DeBERTa's LayerNorm: over the last dim, in float32, eps held as ``variance_epsilon``."""

    def __init__(self, size: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_type = hidden_states.dtype
        hidden_states = hidden_states.float()
        mean = hidden_states.mean(-1, keepdim=True)
        variance = (hidden_states - mean).pow(2).mean(-1, keepdim=True)
        hidden_states = (hidden_states - mean) / torch.sqrt(variance + self.variance_epsilon)
        hidden_states = hidden_states.to(input_type)
        return self.weight * hidden_states + self.bias


class LayerNorm1P(nn.LayerNorm):
    """Nemotron's LayerNorm1P: an nn.LayerNorm whose forward scales by ``1 + weight``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight + 1.0, self.bias, self.eps)


class RmsNormChannelsFirst(nn.Module):
    """RMS norm over the channels of (N, C, H, W), written out."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + self.eps)
        return x * self.weight[:, None, None]


# --- look-alikes: shaped like a norm, computing something else ------------------------


class WeightOnly(nn.Module):
    """Scales by the weight, normalizes nothing."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class WrongEpsLayerNorm(nn.Module):
    """Declares eps 1e-5, computes layer norm with 1e-6."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, 1e-6)


class UnbiasedLayerNorm(WrongEpsLayerNorm):
    """Layer norm with the unbiased (n - 1) variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class RmsNormWithBias(WrongEpsLayerNorm):
    """RMS norm plus a bias: what no RMS kind computes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * self.weight + self.bias


class LayerNormThenReLU(WrongEpsLayerNorm):
    """Layer norm, then an activation the facts would not say."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps).relu()


class LayoutByRank(WrongEpsLayerNorm):
    """Layer norm over dim 1 of 4-d input and over the last dim otherwise: no one layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.movedim(1, -1)
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.movedim(-1, 1) if x.ndim == 4 else x


class CenteredOnly(nn.LayerNorm):
    """An nn.LayerNorm subclass whose own forward only subtracts the mean."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return (input - input.mean(-1, keepdim=True)) * self.weight + self.bias


# (module, computes, channel_dim, eps, weight_offset)
RECOGNIZED = {
    "SAM LayerNorm2d": (lambda: LayerNorm2d(C), "layer norm", 1, 1e-6, 0.0),
    "DeBERTa LayerNorm": (lambda: DebertaLayerNorm(C), "layer norm", -1, 1e-12, 0.0),
    "Nemotron LayerNorm1P": (lambda: LayerNorm1P(C, eps=1e-5), "layer norm", -1, 1e-5, 1.0),
    "RMS norm channels first": (lambda: RmsNormChannelsFirst(C), "RMS norm", 1, 1e-6, 0.0),
}
#: The layers that compute in float32 whatever their input's dtype.
IN_FLOAT32 = {"DeBERTa LayerNorm"}

LOOKALIKES = {
    "weight only": lambda: WeightOnly(C),
    "wrong eps": lambda: WrongEpsLayerNorm(C),
    "unbiased variance": lambda: UnbiasedLayerNorm(C),
    "RMS norm with a bias": lambda: RmsNormWithBias(C),
    "layer norm then ReLU": lambda: LayerNormThenReLU(C),
    "layout by the input's rank": lambda: LayoutByRank(C),
}


def _randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return module


def _input(channel_dim: int, seed: int = 1) -> torch.Tensor:
    shape = (3, C, 4, 5) if channel_dim == 1 else (3, 4, C)
    return 2.0 + 3.0 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(RECOGNIZED))
def test_a_norm_is_recognized_by_what_its_forward_computes(name):
    build, computes, channel_dim, eps, offset = RECOGNIZED[name]
    facts = norm_classes.norm_facts(build())
    assert facts is not None
    assert (facts.computes, facts.channel_dim, facts.eps) == (computes, channel_dim, eps)
    assert (facts.weight_offset, facts.channels, facts.problem) == (offset, C, "")


@pytest.mark.parametrize("name", list(RECOGNIZED))
def test_the_matching_kind_computes_what_the_layer_computes(name):
    """In float64, where the written-out formulas and torch's kernels agree to float64's
    rounding (float32's for a layer that computes in float32)."""
    build, computes, channel_dim, _, _ = RECOGNIZED[name]
    model = nn.Sequential(nn.Identity(), _randomized(build())).double()
    x = _input(channel_dim).double()
    expected = model(x)
    kind = "ln" if computes == "layer norm" else "rms"
    replaced = nl.replace_norms(model, kind, example_input=x)
    assert replaced.replacements[0].layout == ("(N, C, *)" if channel_dim == 1 else "(N, *, C)")
    assert "changed" not in replaced.summary() and not replaced.skipped
    tolerance = 1e-6 if name in IN_FLOAT32 else 1e-12
    torch.testing.assert_close(model(x), expected, rtol=tolerance, atol=tolerance)


def test_sam_layernorm2d_swapped_into_a_model_trains_as_before():
    """Output, input gradient and parameter gradients of a conv + SAM LayerNorm2d model,
    before and after the swap to 'ln'."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, C, 3), _randomized(LayerNorm2d(C))).double()
    x = _input(1).double()[:, :3]
    swapped = nl.replace_norms(copy.deepcopy(model), "ln", example_input=x).model
    assert swapped[1].channel_dim == 1 and swapped[1].eps == 1e-6
    results = []
    for m in (model, swapped):
        xi = x.clone().requires_grad_(True)
        out = m(xi)
        out.square().sum().backward()
        results.append([out, xi.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(LOOKALIKES))
def test_a_module_shaped_like_a_norm_computing_something_else_is_not_recognized(name):
    module = _randomized(LOOKALIKES[name]())
    assert norm_classes.norm_facts(module) is None
    replaced = nl.replace_norms(nn.Sequential(nn.Linear(C, C), module), "ln")
    assert replaced.replacements == []


def test_a_layer_norm_subclass_computing_something_else_is_still_refused_by_name():
    model = nn.Sequential(nn.Linear(C, C), CenteredOnly(C))
    with pytest.raises(ValueError, match=r"CenteredOnly overrides LayerNorm's forward"):
        nl.replace_norms(model, "ln")


def test_recognizing_runs_no_hook_and_changes_nothing():
    """The forward is probed on a copy with probe weights: the layer's own weights, hooks
    and gradients are untouched."""
    module = _randomized(LayerNorm2d(C))
    weight, bias = module.weight.detach().clone(), module.bias.detach().clone()
    calls = []
    module.register_forward_hook(lambda *args: calls.append(args))
    assert norm_classes.is_norm_layer(module)
    assert calls == [] and module.weight.grad is None
    assert torch.equal(module.weight, weight) and torch.equal(module.bias, bias)


@pytest.mark.parametrize(
    ("device", "dtype"),
    [("meta", torch.float32), ("cpu", torch.bfloat16), ("cpu", torch.float16)],
    ids=["meta", "bfloat16", "float16"],
)
def test_the_layers_device_and_dtype_do_not_change_what_it_is_known_as(device, dtype):
    """The probe runs a float64 copy on the CPU: a layer not materialized yet, or held in
    a low precision, is known as in float32; the new layer takes its dtype."""
    with torch.device(device):
        module = LayerNorm2d(C).to(dtype)
    facts = norm_classes.norm_facts(module)
    assert facts is not None and (facts.computes, facts.channel_dim) == ("layer norm", 1)
    if device == "cpu":
        new = nl.replace_norms(module, "ln").model
        assert new.weight.dtype == dtype and new.channel_dim == 1


def test_inspect_says_a_channels_first_layer_norm_reads_dim_1():
    from normlab.checkpoints import norm_layers

    (layer,) = norm_layers(nn.Sequential(LayerNorm2d(C)))
    assert "layer norm" in layer.notes and "channels on dim 1" in layer.notes
    assert layer.eps == 1e-6 and layer.num_features == C
