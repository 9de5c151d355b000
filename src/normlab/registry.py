"""Normalization kinds by name: the one place where "bn", "ln", ... are defined.

``make_norm(kind, num_features, **options)`` builds the module for a kind;
every module takes (N, C, *) input with channels on dim 1 (or, with
``channel_dim=-1``, (N, *, C) input) and returns the same shape. Where torch
already has the layer, the module is torch's (through a thin subclass that
checks the input, see normlab.layers).

A kind's entry (:class:`NormKind`) also carries every fact about it that a
tool needs: its aliases and options, the running statistics it keeps and the
layout it reads on transformer tokens. :func:`register_kind` adds a kind;
``normlab norms``, ``compare`` and the report then know it with no other
change (``normlab bench`` too, once :mod:`normlab.bench_targets` has its
baseline and speed target).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
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
    """A registered kind: how to build it and every fact about it that a tool reads.

    Attributes:
        name: the canonical name ("bn").
        build: ``build(num_features, **preset, **options)`` returns the module.
        summary: one line for ``normlab norms`` and the docs.
        aliases: other names for it, resolved like the name.
        preset: options the kind fixes (bn-scalar is BatchNorm with ``stats="scalar"``).
        running_stats: the running statistics a module of the kind keeps with its
            default options: ``"channel"`` (a mean and variance per channel, shape
            (C,)), ``"scalar"`` (one of each, shape (1,)) or None (none). What its
            ``running_var`` holds (unbiased, biased, sigma^2 - eps) depends on the
            options, so the layer declares it.
        tokens_last: on transformer tokens it reads the (N, L, C) layout, channels on
            the last dim (``channel_dim=-1``), as torch's LayerNorm does; the other
            kinds take the same sizes as (N, C, L).
    """

    name: str
    build: Callable[..., nn.Module]
    summary: str
    aliases: tuple[str, ...] = ()
    preset: dict[str, Any] = field(default_factory=dict)
    running_stats: str | None = None
    tokens_last: bool = False

    def __post_init__(self) -> None:
        if self.running_stats not in (None, "channel", "scalar"):
            raise ValueError(
                f"running_stats of kind {self.name!r} must be 'channel', 'scalar' or None; "
                f"got {self.running_stats!r}."
            )

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise TypeError naming the accepted options if ``options`` has one the kind does
        not take (or one its preset fixes)."""
        allowed = self.options()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            fixed = [name for name in unknown if name in self.preset]
            why = f" ({', '.join(fixed)} is fixed by the kind)" if fixed else ""
            raise TypeError(
                f"make_norm({self.name!r}) got unknown option(s) {', '.join(unknown)}{why}; "
                f"it accepts: {', '.join(allowed) or 'no options'}."
            )

    def options(self) -> list[str]:
        """The keyword options ``make_norm`` accepts for this kind."""
        params = list(inspect.signature(self.build).parameters.values())[1:]
        return [
            p.name
            for p in params
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in self.preset
        ]


BUILT_IN: tuple[NormKind, ...] = (
    NormKind("none", _identity, "no normalization (torch.nn.Identity)"),
    NormKind(
        "bn",
        BatchNorm,
        "batch norm, per-channel statistics ('2s', Ioffe & Szegedy's original); torch or Keras "
        "convention",
        ("batch", "bn-2s", "batchnorm"),
        {"stats": "channel"},
        running_stats="channel",
    ),
    NormKind(
        "bn-scalar",
        BatchNorm,
        "batch norm, one mean and variance over the whole batch ('1s', a simplification), "
        "per-channel affine",
        ("bn-1s",),
        {"stats": "scalar"},
        running_stats="scalar",
    ),
    NormKind(
        "ln",
        LayerNorm,
        "layer norm (torch.nn.LayerNorm) over the channels",
        ("layer", "layernorm"),
        tokens_last=True,
    ),
    NormKind(
        "rms",
        RMSNorm,
        "RMSNorm (torch.nn.RMSNorm) over the channels",
        ("rmsnorm",),
        tokens_last=True,
    ),
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
        "brn",
        BatchRenorm,
        "batch renormalization (Ioffe 2017), r/d clipping",
        ("batch-renorm",),
        running_stats="channel",
    ),
    NormKind(
        "switch",
        SwitchableNorm,
        "switchable norm (Luo et al. 2018): learned mix of IN, LN and BN statistics",
        ("switchable",),
        running_stats="channel",
    ),
    NormKind(
        "frozen-bn",
        FrozenBatchNorm,
        "batch norm with fixed statistics and affine",
        running_stats="channel",
    ),
    NormKind(
        "sync-bn",
        SyncBatchNorm,
        "batch norm to be synchronized across processes; 'bn' within one process",
        running_stats="channel",
    ),
)

_REGISTERED: dict[str, NormKind] = {kind.name: kind for kind in BUILT_IN}
_BY_KEY: dict[str, NormKind] = {
    name_key(name): kind for kind in BUILT_IN for name in (kind.name, *kind.aliases)
}
#: Each name and alias as spelled, under its key (for "did you mean").
_NAMES: dict[str, str] = {name_key(n): n for kind in BUILT_IN for n in (kind.name, *kind.aliases)}


def register_kind(kind: NormKind) -> NormKind:
    """Add ``kind`` to the registry, after the kinds already there, and return it.

    From then on, in this process, ``make_norm``, ``normlab norms``, ``compare``
    and the report know it by its name and aliases (``bench`` once
    :func:`normlab.bench_targets.register_bench_target` gives it a baseline).
    Processes started afterwards by spawn (``compare --jobs N``, Ray) import
    normlab afresh: register the kind in a module they import.

    Raises:
        ValueError: its name or an alias already names a kind.
    """
    taken = [name for name in (kind.name, *kind.aliases) if name_key(name) in _BY_KEY]
    if taken:
        owners = ", ".join(f"{name!r} ({_BY_KEY[name_key(name)].name})" for name in taken)
        raise ValueError(
            f"cannot register kind {kind.name!r}: {owners} already name(s) a registered kind. "
            "Choose other names, or unregister_kind() the old one first."
        )
    _REGISTERED[kind.name] = kind
    for name in (kind.name, *kind.aliases):
        _BY_KEY[name_key(name)], _NAMES[name_key(name)] = kind, name
    return kind


def unregister_kind(name: str) -> NormKind:
    """Remove the kind called ``name`` (or an alias of it) and return its entry.

    Raises:
        ValueError: unknown name.
    """
    kind = get_kind(name)
    del _REGISTERED[kind.name]
    for alias in (kind.name, *kind.aliases):
        del _BY_KEY[name_key(alias)], _NAMES[name_key(alias)]
    return kind


def registered_kinds() -> tuple[NormKind, ...]:
    """Every registered kind's entry, in registry order (the built-in kinds first)."""
    return tuple(_REGISTERED.values())


def norm_kinds() -> list[str]:
    """Canonical names of the registered kinds, in registry order."""
    return list(_REGISTERED)


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
    entry.check_options(options)
    return entry.build(num_features, **entry.preset, **options)


#: A norm as the models take it: a kind's name, or any callable building the module for C.
NormSpec = str | Callable[[int], nn.Module]


def norm_factory(norm: NormSpec) -> Callable[[int], nn.Module]:
    """A callable ``num_features -> module`` for ``norm``, as timm's ``get_norm_layer``.

    Args:
        norm: a kind's name or alias (checked now), or any callable that takes
            the channel count C and returns a module mapping (N, C, *) input to
            the same shape (returned as it is).

    Raises:
        ValueError: an unknown kind name (the closest are named).
        TypeError: ``norm`` is neither a name nor callable.
    """
    if isinstance(norm, str):
        return partial(make_norm, get_kind(norm).name)
    if callable(norm):
        return norm
    raise TypeError(
        f"norm must be a kind's name (one of {', '.join(norm_kinds())}) or a callable "
        f"taking the channel count and returning a module; got {type(norm).__name__}."
    )
