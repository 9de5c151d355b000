"""Normalization kinds by name: the one place where "bn", "ln", ... are defined.

``make_norm(kind, num_features, **options)`` builds the module for a kind;
every module takes (N, C, *) input with channels on dim 1 (or, with
``channel_dim=-1``, (N, *, C) input) and returns the same shape. Where torch
already has the layer, the module is torch's (through a thin subclass that
checks the input, see normlab.layers).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from normlab._checks import check_channel_dim, check_num_features, did_you_mean, name_key
from normlab.layers import (
    BatchNorm,
    BatchRenorm,
    FrozenBatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    RMSNorm,
    SwitchableNorm,
    SyncBatchNorm,
)

DEFAULT_GROUPS = 32


def default_groups(num_features: int, preferred: int = DEFAULT_GROUPS) -> int:
    """The largest divisor of ``num_features`` that is at most ``preferred``."""
    return max(g for g in range(1, min(preferred, num_features) + 1) if num_features % g == 0)


def _identity(
    num_features: int, *, channel_dim: int = 1, device: Any = None, dtype: Any = None
) -> nn.Module:
    """Identity; it has no parameters, so device and dtype have nothing to place, and any
    layout (``channel_dim``) is its own."""
    check_channel_dim(channel_dim)
    return nn.Identity()


def _group_norm(
    num_features: int,
    *,
    groups: int | None = None,
    eps: float = 1e-5,
    affine: bool = True,
    bias: bool = True,
    channel_dim: int = 1,
    device: Any = None,
    dtype: Any = None,
) -> nn.Module:
    groups = default_groups(num_features) if groups is None else groups
    return GroupNorm(
        groups,
        num_features,
        eps=eps,
        affine=affine,
        bias=bias,
        channel_dim=channel_dim,
        device=device,
        dtype=dtype,
    )


def _instance_norm(
    num_features: int,
    *,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
    affine: bool = True,
    track_running_stats: bool = False,
    bias: bool = True,
    channel_dim: int = 1,
    device: Any = None,
    dtype: Any = None,
) -> nn.Module:
    return InstanceNorm(
        num_features,
        eps,
        momentum,
        affine=affine,
        track_running_stats=track_running_stats,
        bias=bias,
        channel_dim=channel_dim,
        device=device,
        dtype=dtype,
    )


@dataclass(frozen=True)
class NormKind:
    """A registered kind: its name, aliases, what builds it and a one-line summary."""

    name: str
    build: Callable[..., nn.Module]
    summary: str
    aliases: tuple[str, ...] = ()
    preset: dict[str, Any] = field(default_factory=dict)

    def options(self) -> list[str]:
        """The keyword options ``make_norm`` accepts for this kind."""
        params = list(inspect.signature(self.build).parameters.values())[1:]
        return [
            p.name
            for p in params
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in self.preset
        ]


KINDS: tuple[NormKind, ...] = (
    NormKind("none", _identity, "no normalization (torch.nn.Identity)"),
    NormKind(
        "bn",
        BatchNorm,
        "batch norm, per-channel statistics ('2s'); torch or Keras convention",
        ("batch", "bn-2s", "batchnorm"),
        {"stats": "channel"},
    ),
    NormKind(
        "bn-scalar",
        BatchNorm,
        "batch norm, one mean and variance over the whole batch ('1s'), per-channel affine",
        ("bn-1s",),
        {"stats": "scalar"},
    ),
    NormKind(
        "ln", LayerNorm, "layer norm (torch.nn.LayerNorm) over the channels", ("layer", "layernorm")
    ),
    NormKind("rms", RMSNorm, "RMSNorm (torch.nn.RMSNorm) over the channels", ("rmsnorm",)),
    NormKind(
        "gn",
        _group_norm,
        "group norm (torch.nn.GroupNorm), groups=32 or a divisor",
        ("group", "groupnorm"),
    ),
    NormKind(
        "in",
        _instance_norm,
        "instance norm (torch.nn.InstanceNorm*d), affine=True; needs (N, C, L...) input",
        ("instance", "instancenorm"),
    ),
    NormKind(
        "brn", BatchRenorm, "batch renormalization (Ioffe 2017), r/d clipping", ("batch-renorm",)
    ),
    NormKind(
        "switch",
        SwitchableNorm,
        "switchable norm (Luo et al. 2018): learned mix of IN, LN and BN statistics",
        ("switchable",),
    ),
    NormKind("frozen-bn", FrozenBatchNorm, "batch norm with fixed statistics and affine"),
    NormKind(
        "sync-bn",
        SyncBatchNorm,
        "batch norm to be synchronized across processes; 'bn' within one process",
    ),
)


_NAMES: dict[str, str] = {name_key(n): n for kind in KINDS for n in (kind.name, *kind.aliases)}
_BY_KEY: dict[str, NormKind] = {
    name_key(name): kind for kind in KINDS for name in (kind.name, *kind.aliases)
}


def norm_kinds() -> list[str]:
    """Canonical names of the registered kinds, in registry order."""
    return [kind.name for kind in KINDS]


def get_kind(name: str) -> NormKind:
    """The registered kind called ``name`` or one of its aliases.

    Case, spaces, '-' and '_' are ignored: "BatchNorm", "batch_norm" and
    "batch-norm" all name "bn".

    Raises:
        ValueError: unknown name; the message names the closest kinds.
    """
    key = name_key(name)
    if key in _BY_KEY:
        return _BY_KEY[key]
    raise ValueError(
        f"unknown normalization kind {name!r}.{did_you_mean(name, _NAMES)} "
        f"Known kinds: {', '.join(norm_kinds())}."
    )


def make_norm(kind: str, num_features: int, **options: Any) -> nn.Module:
    """Build the normalization module ``kind`` for ``num_features`` channels.

    Args:
        kind: a name from :func:`norm_kinds` or an alias ("batch", "bn-2s",
            "batchnorm", "bn-1s", "layer", "layernorm", "rmsnorm", "group",
            "groupnorm", "instance", "instancenorm", "batch-renorm",
            "switchable"), in any case, with or without '-' and '_'.
        num_features: C, the channel count of the (N, C, *) input.
        **options: keyword options of the kind's module, e.g.
            ``convention="keras"`` for "bn", ``groups=8`` for "gn",
            ``over="all"`` for "ln".

    Returns:
        A module mapping (N, C, *) input to output of the same shape.

    Raises:
        ValueError: unknown kind (the closest are named) or bad num_features.
        TypeError: an option the kind does not take (the valid ones are listed).
    """
    entry = get_kind(kind)
    check_num_features(num_features)
    allowed = entry.options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        fixed = [name for name in unknown if name in entry.preset]
        why = f" ({', '.join(fixed)} is fixed by the kind)" if fixed else ""
        raise TypeError(
            f"make_norm({entry.name!r}) got unknown option(s) {', '.join(unknown)}{why}; "
            f"it accepts: {', '.join(allowed) or 'no options'}."
        )
    return entry.build(num_features, **entry.preset, **options)
