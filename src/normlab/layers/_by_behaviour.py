"""Normalization layers known by what their forward computes, not by their class.

Hugging Face writes a norm class per model family (``LlamaRMSNorm``, ``T5LayerNorm``,
``GemmaRMSNorm``, ``ConvNextLayerNorm``, ...) and models such as Segment Anything write
their own ``LayerNorm2d``. A module shaped like a norm is run once on probe inputs, and is
known by the one formula its output matches: layer norm or RMS norm, over the last dim of
(N, L, C) or over dim 1 of (N, C, H, W), scaled by ``weight`` or ``1 + weight``. Anything
else is not known; nothing is guessed.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

#: How close the probe's output must come to the formula: float32's rounding, since many
#: forwards compute in float32 whatever their input (a different formula, or eps, is far off).
_TOLERANCE = 50 * torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class Behaviour:
    """What a module's forward was found to compute.

    ``computes``: "layer norm" or "RMS norm"; ``channel_dim``: -1 (the last dim of
    (N, \\*, C)) or 1 (dim 1 of (N, C, H, W)); ``eps``: the eps its forward adds;
    ``weight_offset``: it scales by ``weight_offset + weight`` (0 or 1).
    """

    computes: str
    channel_dim: int
    eps: float
    weight_offset: float


def behaviour(module: nn.Module) -> Behaviour | None:
    """What ``module`` computes, when it is shaped like a norm and its forward matches
    exactly one known formula on the probes; None otherwise.

    Shaped like a norm: a 1-d float ``weight`` parameter, at most a ``bias`` parameter of
    the same shape besides it, no buffers, no child modules, and a finite ``eps`` or
    ``variance_epsilon`` >= 0 (``variance_epsilon`` read first). RMS norm has no bias.

    The forward runs without hooks on a copy of ``module`` whose weight and bias are random
    float64 probe values on the CPU (so the layer's own tensors, device and dtype do not
    matter), on a (2, L, C) and a (2, C, H, W) float64 probe with L, H, W other than C;
    half of the probe's rows are scaled so that their variance is about eps, so a forward
    adding another eps (or none) does not match.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1 or not weight.is_floating_point():
        return None
    parameters = dict(module.named_parameters(recurse=False))
    bias = parameters.get("bias")
    if (
        set(parameters) - {"weight", "bias"}
        or (bias is not None and bias.shape != weight.shape)
        or any(True for _ in module.buffers())
        or any(True for _ in module.children())
    ):
        return None
    eps = number_attribute(module, "variance_epsilon")
    eps = number_attribute(module, "eps") if eps is None else eps
    if eps is None or not math.isfinite(eps) or eps < 0:
        return None
    found = _matches(module, weight.shape[0], bias is not None, eps)
    return found[0] if len(found) == 1 else None


def number_attribute(module: nn.Module, name: str) -> float | None:
    """``module.name`` as a float when it is an int or float (not a bool); None otherwise."""
    value = getattr(module, name, None)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _matches(module: nn.Module, channels: int, has_bias: bool, eps: float) -> list[Behaviour]:
    """Every formula the forward's output matches on the probes."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(channels, generator=generator, dtype=torch.float64)
    bias = torch.randn(channels, generator=generator, dtype=torch.float64) if has_bias else None
    twin = _twin(module, weight, bias)
    found = []
    for channel_dim in (-1, 1):
        probe = _probe(channels, channel_dim, eps, generator)
        output = _run(twin, probe)
        if output is None:
            continue
        for computes, offset in itertools.product(("layer norm", "RMS norm"), (0.0, 1.0)):
            if computes == "RMS norm" and has_bias:
                continue
            expected = _formula(probe, computes, channel_dim, eps, offset + weight, bias)
            if torch.allclose(output, expected, rtol=_TOLERANCE, atol=_TOLERANCE):
                found.append(Behaviour(computes, channel_dim, eps, offset))
    return found


def _twin(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A shallow copy of ``module`` holding the probe's weight and bias in place of its own:
    its other attributes (eps, data_format, ...) are shared, its hooks never run."""
    twin = copy.copy(module)
    probes = {"weight": weight, "bias": bias}
    twin.__dict__["_parameters"] = {
        name: None if value is None else nn.Parameter(probes[name], requires_grad=False)
        for name, value in module._parameters.items()
    }
    return twin


def _probe(channels: int, channel_dim: int, eps: float, generator: torch.Generator) -> torch.Tensor:
    """(2, L, C) for ``channel_dim=-1``, (2, C, H, W) for 1, in float64: values around 1 (so
    layer norm and RMS norm differ), every other row of C values scaled to sqrt(eps)."""
    others = [size for size in (2, 3, 4, 5) if size != channels][:2]
    shape = (2, others[0], channels) if channel_dim == -1 else (2, channels, *others)
    probe = 1.0 + torch.randn(shape, generator=generator, dtype=torch.float64)
    scale_shape = list(shape)
    scale_shape[channel_dim] = 1
    scale = torch.ones(scale_shape, dtype=torch.float64)
    scale.view(-1)[::2] = max(math.sqrt(eps), 1e-12)
    return probe * scale


def _run(twin: nn.Module, probe: torch.Tensor) -> torch.Tensor | None:
    """The forward's float64 output on ``probe``, or None where it fails or changes the
    shape. ``type(twin).forward`` is called, not the module, so no hook runs."""
    try:
        with torch.no_grad():
            output = type(twin).forward(twin, probe)
    except Exception:  # a forward that cannot take the probe is not this norm
        return None
    if not isinstance(output, torch.Tensor) or output.shape != probe.shape:
        return None
    return output.to(torch.float64)


def _formula(
    x: torch.Tensor,
    computes: str,
    channel_dim: int,
    eps: float,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Layer norm or RMS norm of float64 ``x`` over ``channel_dim``, times ``scale``, plus
    ``bias``."""
    if computes == "layer norm":
        x = x - x.mean(channel_dim, keepdim=True)
    x = x * (x.square().mean(channel_dim, keepdim=True) + eps).rsqrt()
    shape = (-1,) if channel_dim == -1 else (-1, 1, 1)
    x = x * scale.view(shape)
    return x if bias is None else x + bias.view(shape)
