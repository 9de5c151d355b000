"""torch's own normalization modules, adapted to (N, C, *) input.

Each class subclasses the torch module it names and keeps its signature,
parameters and state_dict; the math is torch's kernel. What is added: input
and argument checks with clear errors, ``channel_dim=-1`` for (N, *, C)
input, and for layer norm and RMSNorm the choice of which dims to normalize
on (N, C, *) input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm

from normlab._checks import (
    check_channel_dim,
    check_choice,
    check_eps,
    check_input,
    check_momentum,
    check_num_features,
    check_values_per_group,
)
from normlab.functional import channel_affine, with_channels_first
from normlab.layers.base import symbolic_call

Over = Literal["channels", "all"]
OVER: tuple[Over, ...] = ("channels", "all")
_LAYOUT_DOC = """
    Which values share one mean and variance, for each sample:

    ===================  =========================================  ===========================
    input                ``over="channels"`` (default)              ``over="all"``
    ===================  =========================================  ===========================
    (N, C)               the C features                             the same
    (N, C, H, W), (N,C,L) the C channels at each position, as        all C*H*W values, as
                         Keras' axis=-1 on NHWC and ConvNeXt's      GroupNorm(1, C)
                         LayerNorm2d
    (N, L, C),           the C features of each token, as
    ``channel_dim=-1``   ``torch.nn.LayerNorm(C)``                  all L*C values
    ===================  =========================================  ===========================

    With the default ``channel_dim=1``, an (N, L, C) tensor is read as L
    channels; transformer-style (N, L, C) input needs ``channel_dim=-1``.
    The affine is per channel in every case.
"""


def _check_layout(over: str, channel_dim: int) -> None:
    check_choice("over", over, OVER)
    check_channel_dim(channel_dim)


def _over_channels(
    input: torch.Tensor, last_dim_norm: Callable[[torch.Tensor], torch.Tensor], channel_dim: int
) -> torch.Tensor:
    """Apply a norm over the last dim to the channels of (N, C, *) or (N, *, C) input."""
    if channel_dim == -1 or input.ndim == 2:
        return last_dim_norm(input)
    return last_dim_norm(input.movedim(1, -1)).movedim(-1, 1)


class LayerNorm(nn.LayerNorm):
    __doc__ = (
        """``torch.nn.LayerNorm`` over the channels of (N, C, *) input.
"""
        + _LAYOUT_DOC
        + """
    Shape:
        - Input: (N, C, *) (or (N, *, C) with ``channel_dim=-1``).
        - Output: same shape as the input.

    Training vs eval: identical; statistics come from each sample alone.

    Args:
        num_features: C.
        eps, elementwise_affine, bias: as ``torch.nn.LayerNorm``.
        over: ``"channels"`` or ``"all"``.
        channel_dim: 1 or -1.
    """
    )

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        over: Over = "channels",
        channel_dim: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_num_features(num_features)
        check_eps(eps)
        _check_layout(over, channel_dim)
        super().__init__(num_features, eps, elementwise_affine, bias, device=device, dtype=dtype)
        self.num_features = num_features
        self.over = over
        self.channel_dim = channel_dim

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        traced = symbolic_call(self, input)
        if traced is not None:
            return traced
        check_input(input, self.num_features, "LayerNorm", channel_dim=self.channel_dim)
        if self.over == "all":
            normalized = F.layer_norm(input, input.shape[1:], eps=self.eps)
            return channel_affine(normalized, self.weight, self.bias, self.channel_dim)
        return _over_channels(input, super().forward, self.channel_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, over={self.over!r}, channel_dim={self.channel_dim}"


class RMSNorm(nn.RMSNorm):
    __doc__ = (
        """``torch.nn.RMSNorm`` over the channels of (N, C, *) input.

    ``y = x / sqrt(mean(x^2) + eps) * weight``, with no centering and no
    bias. ``eps=None`` uses ``torch.finfo(x.dtype).eps``, as torch.
"""
        + _LAYOUT_DOC
        + """
    Shape:
        - Input: (N, C, *) (or (N, *, C) with ``channel_dim=-1``).
        - Output: same shape as the input.

    Training vs eval: identical; statistics come from each sample alone.

    Args:
        num_features: C.
        eps, elementwise_affine: as ``torch.nn.RMSNorm``.
        over: ``"channels"`` or ``"all"``.
        channel_dim: 1 or -1.
    """
    )

    def __init__(
        self,
        num_features: int,
        eps: float | None = None,
        elementwise_affine: bool = True,
        *,
        over: Over = "channels",
        channel_dim: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_num_features(num_features)
        if eps is not None:
            check_eps(eps)
        _check_layout(over, channel_dim)
        super().__init__(num_features, eps, elementwise_affine, device=device, dtype=dtype)
        self.num_features = num_features
        self.over = over
        self.channel_dim = channel_dim

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        traced = symbolic_call(self, input)
        if traced is not None:
            return traced
        check_input(input, self.num_features, "RMSNorm", channel_dim=self.channel_dim)
        if self.over == "all":
            normalized = F.rms_norm(input, input.shape[1:], eps=self.eps)
            return channel_affine(normalized, self.weight, None, self.channel_dim)
        return _over_channels(input, super().forward, self.channel_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, over={self.over!r}, channel_dim={self.channel_dim}"


class GroupNorm(nn.GroupNorm):
    """``torch.nn.GroupNorm`` with input checks and a channels-last option.

    Splits the C channels into ``num_groups`` groups and normalizes each
    group of each sample over its channels and positions; per-channel
    affine. Signature and state_dict as torch's:
    ``GroupNorm(num_groups, num_channels, eps, affine, device, dtype, *, bias)``;
    ``num_groups`` must divide ``num_channels`` (the error names the nearest
    divisors). (The registry's ``"gn"`` picks the groups itself: 32, or the
    largest divisor of C below 32.)

    Each group must hold more than one value per sample: an (N, C) input
    with one channel per group would output the bias alone, and is refused
    (in torch only when N == 1).

    Shape:
        - Input: (N, C, *) (or (N, *, C) with ``channel_dim=-1``).
        - Output: same shape as the input.

    Training vs eval: identical; statistics come from each sample alone.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        channel_dim: int = 1,
    ) -> None:
        check_num_features(num_channels)
        check_eps(eps)
        check_channel_dim(channel_dim)
        if num_groups < 1 or num_channels % num_groups:
            divisors = [g for g in range(1, num_channels + 1) if num_channels % g == 0]
            nearest = sorted(divisors, key=lambda g: (abs(g - num_groups), -g))[:2]
            raise ValueError(
                f"GroupNorm needs num_groups to divide the {num_channels} channels; got "
                f"num_groups={num_groups}. Use a divisor of {num_channels}, e.g. "
                f"{' or '.join(map(str, sorted(nearest)))}."
            )
        super().__init__(
            num_groups, num_channels, eps, affine, device=device, dtype=dtype, bias=bias
        )
        self.channel_dim = channel_dim

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        traced = symbolic_call(self, input)
        if traced is not None:
            return traced
        check_input(input, self.num_channels, "GroupNorm", channel_dim=self.channel_dim)
        return with_channels_first(self._normalize, input, self.channel_dim)

    def _normalize(self, input: torch.Tensor) -> torch.Tensor:
        per_group = self.num_channels // self.num_groups * math.prod(input.shape[2:])
        check_values_per_group(
            input,
            per_group,
            f"GroupNorm with {self.num_groups} groups",
            "Use fewer groups (each needs at least 2 values), or 'ln' for (N, C) input.",
        )
        return super().forward(input)

    def extra_repr(self) -> str:
        channel_dim = f", channel_dim={self.channel_dim}" if self.channel_dim != 1 else ""
        return super().extra_repr() + channel_dim


class InstanceNorm(_InstanceNorm):
    """``torch.nn.InstanceNorm1d/2d/3d`` as one module for (N, C, *) input, any rank >= 3.

    Normalizes each channel of each sample over its positions. Arguments
    (``num_features, eps, momentum, affine, track_running_stats, device,
    dtype``, then keyword ``bias``), defaults (``affine=False``,
    ``track_running_stats=False``) and state_dict as torch's; the registry's
    ``"in"`` turns ``affine`` on. Unlike torch's, an unbatched (C, L) input
    is refused: channels are always on dim 1 (or last, with ``channel_dim=-1``).

    Shape:
        - Input: (N, C, L), (N, C, H, W) or (N, C, D, H, W); or (N, *, C)
          with ``channel_dim=-1``.
        - Output: same shape as the input.

    Training vs eval: identical unless ``track_running_stats=True``, in
    which case eval mode normalizes with the running statistics, as torch.
    An empty batch gives an empty output and changes no statistic (torch's
    raises an internal IndexError for some options).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        channel_dim: int = 1,
    ) -> None:
        check_num_features(num_features)
        check_eps(eps)
        check_momentum(momentum)
        check_channel_dim(channel_dim)
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            bias=bias,
        )
        self.channel_dim = channel_dim

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        traced = symbolic_call(self, input)
        if traced is not None:
            return traced
        check_input(
            input, self.num_features, "InstanceNorm", min_ndim=3, channel_dim=self.channel_dim
        )
        return with_channels_first(self._normalize, input, self.channel_dim)

    def _normalize(self, input: torch.Tensor) -> torch.Tensor:
        if self.training or not self.track_running_stats:
            check_values_per_group(
                input,
                math.prod(input.shape[2:]),
                "InstanceNorm",
                "It needs more than one position per channel; for (N, C, 1, ...) use 'ln' or 'bn'.",
            )
        if input.numel() == 0:
            # torch's instance-norm kernel fails on some empty batches (IndexError); its
            # batch-norm kernel gives what batch norm does: an empty output, zero affine
            # gradients and no statistic touched.
            return F.batch_norm(input, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return self._apply_instance_norm(input)

    def extra_repr(self) -> str:
        channel_dim = f", channel_dim={self.channel_dim}" if self.channel_dim != 1 else ""
        return super().extra_repr() + channel_dim
