"""What ``normlab bench`` times each kind against, and the speed it judges it by.

A kind's bench target (:class:`BenchTarget`) names torch's module that does the
kind's job on an input (its :class:`Baseline`), the speed target (the median
train fwd+bwd time as a ratio to the baseline, float32, all threads) and the
option sets timed as rows of their own (:class:`KindVariant`, e.g. bn's Keras
convention). The registry (:mod:`normlab.registry`) holds the kinds and their
facts; the bench's own baselines and targets live here.
:func:`register_bench_target` adds one for a registered kind, which ``normlab
bench`` then times with no other change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from normlab.layers.norm_classes import torch_batch_norm_for_rank
from normlab.registry import BUILT_IN, NormKind, default_groups, get_kind


class ChannelsLast(nn.Module):
    """torch's last-dim norm ``norm_cls(channels)`` on the channels of (N, C, *) input, as
    timm's LayerNorm2d: move dim 1 last, normalize, move it back.

    Shape:
        - Input: (N, C, *).
        - Output: same shape.
    """

    def __init__(self, norm_cls: type[nn.Module], channels: int, **factory: Any) -> None:
        super().__init__()
        self.norm = norm_cls(channels, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


@dataclass(frozen=True)
class Baseline:
    """torch's module that does a kind's job on one input: what ``normlab bench`` times the
    kind against, in the same dtype and mode on the same tensor.

    ``build(dtype=...)`` makes the module; ``eval_only`` keeps it in eval mode
    with its affine frozen in every job (frozen batch norm is that layer in
    both modes). ``skipped`` says why the kind has no job on this input (then
    ``build`` is None).
    """

    name: str
    build: Callable[..., nn.Module] | None = field(default=None, repr=False)
    eval_only: bool = False
    skipped: str | None = None


#: A kind's baseline on an input: ``(ndim, channels, make_norm options) -> Baseline``.
BaselineFor = Callable[[int, int, Mapping[str, Any]], Baseline]


@dataclass(frozen=True)
class KindVariant:
    """A kind with fixed options that the bench shows as a row of its own, e.g. bn's Keras
    convention, labelled ``"<kind> (<name>)"`` and written ``<kind>:<name>``."""

    name: str
    options: Mapping[str, Any]
    speed_target: float


@dataclass(frozen=True)
class BenchTarget:
    """What ``normlab bench`` times a kind against and judges it by.

    Attributes:
        baseline: torch's module that does the kind's job on an input.
        speed_target: the median train fwd+bwd time as a ratio to the baseline,
            float32, all threads, that ``normlab bench`` judges the kind against.
        variants: option sets timed as rows of their own, each with its target.
    """

    baseline: BaselineFor = field(repr=False)
    speed_target: float
    variants: tuple[KindVariant, ...] = ()

    def __post_init__(self) -> None:
        targets = [self.speed_target, *(v.speed_target for v in self.variants)]
        if not all(isinstance(t, int | float) and t > 0 for t in targets):
            raise ValueError(
                f"a speed target is a positive ratio to the baseline (1.05: at most 5% "
                f"slower); got {', '.join(map(repr, targets))}."
            )


def _batch_norm_baseline(ndim: int, channels: int, options: Mapping[str, Any]) -> Baseline:
    """torch's BatchNorm1d/2d/3d; with ``convention="keras"`` in torch's spelling of Keras'
    defaults (eps 1e-3, momentum 0.01)."""
    cls = torch_batch_norm_for_rank(ndim)
    if options.get("convention") == "keras":
        name = f"{cls.__name__}(eps=1e-3, momentum=0.01)"
        return Baseline(name, partial(cls, channels, eps=1e-3, momentum=0.01))
    return Baseline(cls.__name__, partial(cls, channels))


def _frozen_batch_norm_baseline(ndim: int, channels: int, options: Mapping[str, Any]) -> Baseline:
    """torch's BatchNorm1d/2d/3d held in eval mode with its affine frozen."""
    cls = torch_batch_norm_for_rank(ndim)
    return Baseline(f"{cls.__name__}, eval, frozen affine", partial(cls, channels), eval_only=True)


def _last_dim_baseline(cls: type[nn.Module]) -> BaselineFor:
    """torch's ``cls(C)`` on the last dim; on the channels of (N, C, *) input moved there
    and back (:class:`ChannelsLast`)."""

    def baseline(ndim: int, channels: int, options: Mapping[str, Any]) -> Baseline:
        if ndim == 2 or options.get("channel_dim") == -1:
            return Baseline(cls.__name__, partial(cls, channels))
        return Baseline(f"{cls.__name__} on movedim(1, -1)", partial(ChannelsLast, cls, channels))

    return baseline


def _group_norm_baseline(ndim: int, channels: int, options: Mapping[str, Any]) -> Baseline:
    groups = options.get("groups") or default_groups(channels)
    return Baseline(f"GroupNorm({groups}, {channels})", partial(nn.GroupNorm, groups, channels))


def _instance_norm_baseline(ndim: int, channels: int, options: Mapping[str, Any]) -> Baseline:
    if ndim < 3:
        reason = "instance norm needs positions: (N, C) holds one value per channel per sample"
        return Baseline("InstanceNorm", skipped=reason)
    cls = nn.InstanceNorm2d if ndim == 4 else nn.InstanceNorm1d
    return Baseline(f"{cls.__name__}(affine=True)", partial(cls, channels, affine=True))


#: The built-in kinds' targets. Kinds that dispatch to torch's kernels (frozen-bn to
#: F.batch_norm, sync-bn in one process to bn) share bn's target; torch has no
#: scalar-statistics batch norm, so bn-scalar's ratio is the price of that choice.
BUILT_IN_TARGETS: dict[str, BenchTarget] = {
    "bn": BenchTarget(
        _batch_norm_baseline, 1.05, (KindVariant("keras", {"convention": "keras"}, 1.10),)
    ),
    "bn-scalar": BenchTarget(_batch_norm_baseline, 1.5),
    "ln": BenchTarget(_last_dim_baseline(nn.LayerNorm), 1.05),
    "rms": BenchTarget(_last_dim_baseline(nn.RMSNorm), 1.05),
    "gn": BenchTarget(_group_norm_baseline, 1.05),
    "in": BenchTarget(_instance_norm_baseline, 1.05),
    "brn": BenchTarget(_batch_norm_baseline, 2.0),
    "switch": BenchTarget(_batch_norm_baseline, 2.0),
    "frozen-bn": BenchTarget(_frozen_batch_norm_baseline, 1.05),
    "sync-bn": BenchTarget(_batch_norm_baseline, 1.05),
}

# Each target with the registry entry it was given for: a kind unregistered and registered
# anew under the same name starts without one.
_TARGETS: dict[str, tuple[NormKind, BenchTarget]] = {
    kind.name: (kind, BUILT_IN_TARGETS[kind.name]) for kind in BUILT_IN if kind.name != "none"
}


def register_bench_target(kind: str, target: BenchTarget) -> BenchTarget:
    """Have ``normlab bench`` time the registered kind ``kind`` (a name or alias) against
    ``target``'s baseline and judge it by its speed target; returns ``target``.

    Raises:
        ValueError: an unknown kind, or one that already has a bench target.
    """
    entry = get_kind(kind)
    if bench_target(entry.name) is not None:
        raise ValueError(
            f"kind {entry.name!r} already has a bench target; unregister_bench_target() it first."
        )
    _TARGETS[entry.name] = (entry, target)
    return target


def unregister_bench_target(kind: str) -> BenchTarget:
    """Remove the bench target of the registered kind ``kind`` and return it.

    Raises:
        ValueError: an unknown kind, or one without a bench target.
    """
    entry = get_kind(kind)
    target = bench_target(entry.name)
    if target is None:
        raise ValueError(f"kind {entry.name!r} has no bench target.")
    del _TARGETS[entry.name]
    return target


def bench_target(kind: str) -> BenchTarget | None:
    """The bench target of the registered kind ``kind`` (a name or alias), or None when it
    has none (``none``, the identity, has nothing to time).

    Raises:
        ValueError: an unknown kind (the closest are named).
    """
    entry = get_kind(kind)
    given = _TARGETS.get(entry.name)
    return given[1] if given is not None and given[0] is entry else None
