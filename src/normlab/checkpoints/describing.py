"""What a loaded checkpoint holds about normalization: ``normlab inspect CHECKPOINT``.

:func:`norm_layers` lists the normalization layers of a checkpoint loaded by
:mod:`normlab.checkpoints.loading` with their running statistics and affine as
(mean, min, max) summaries, :func:`norm_layers_table` renders them with rich
(from the lab extra), and :func:`describe` does both for a path. Whatever a
loaded file holds that a layer should not (complex statistics, an eps that is
not a number, statistics whose lengths disagree) becomes a note in the table,
never an exception.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.parameter import UninitializedTensorMixin

from normlab.checkpoints.loading import locate_checkpoint
from normlab.inference.layers import statistics_kind
from normlab.layers.norm_classes import (
    has_fixed_statistics,
    is_batch_norm,
    is_norm_layer,
    mixes_sample_statistics,
    norm_facts,
    tracks_running_stats,
)
from normlab_extras import require_lab_extra

if TYPE_CHECKING:
    from rich.table import Table

#: (mean, min, max) of a tensor's values.
Summary = tuple[float, float, float]

# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class NormLayerSummary:
    """One normalization layer found in a checkpoint.

    Tensor summaries are (mean, min, max) of the values, in float64; None
    where the layer has no such tensor. ``eps`` and ``momentum`` are None when
    unknown (a state_dict does not store them) or not used (no running
    statistics). ``kind`` is the class name, or ``"batch-norm statistics"``
    for a state_dict entry.
    """

    name: str
    kind: str
    num_features: int | None
    stats: str | None
    eps: float | None
    momentum: float | None
    running_mean: Summary | None
    running_var: Summary | None
    num_batches_tracked: int | None
    weight: Summary | None
    bias: Summary | None
    notes: str = ""


def norm_layers(
    checkpoint: nn.Module | Mapping[str, torch.Tensor],
) -> list[NormLayerSummary]:
    """The normalization layers of a loaded checkpoint, in module (or key) order.

    For a module: every normalization layer the norm-class table knows
    (:func:`normlab.layers.norm_classes.is_norm_layer`: normlab's, torch's,
    timm's, torchvision's, Hugging Face's), with its class,
    eps, momentum, running statistics and affine.

    For a state_dict only the tensors are known: a key prefix holding both
    ``running_mean`` and ``running_var`` is a batch-norm layer (its stats are
    ``"scalar"`` when ``running_mean`` has shape (1,) and ``weight`` has more
    than one element), reported with the ``num_batches_tracked``, ``weight``
    and ``bias`` under the same prefix. Layer norm, RMSNorm, group norm and
    instance norm without running statistics keep only a weight and bias,
    which a state_dict does not tell apart from any other affine layer, so
    they are not reported; load the full module to see them.
    """
    if isinstance(checkpoint, nn.Module):
        return [
            _module_summary(name, module)
            for name, module in checkpoint.named_modules()
            if is_norm_layer(module)
        ]
    return _state_dict_summaries(checkpoint)


def _summary(tensor: object) -> Summary | None:
    """(mean, min, max) of a real tensor's values; None for no tensor, an empty, uninitialized
    or complex one (see :func:`_tensor_notes`)."""
    if (
        not isinstance(tensor, torch.Tensor)
        or isinstance(tensor, UninitializedTensorMixin)
        or tensor.numel() == 0
        or tensor.is_complex()
    ):
        return None
    values = tensor.detach().double()
    return (values.mean().item(), values.min().item(), values.max().item())


def _count(tensor: object) -> int | None:
    if not isinstance(tensor, torch.Tensor) or tensor.numel() != 1 or tensor.is_complex():
        return None
    value = tensor.item()
    return int(value) if isinstance(value, int | bool) or math.isfinite(value) else None


def _number(module: nn.Module, attribute: str, notes: list[str]) -> float | None:
    """``module.<attribute>`` as a float; None (and a note) when it is set to something else."""
    value = getattr(module, attribute, None)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    notes.append(f"{attribute}={value!r} is not a number")
    return None


_TENSORS = ("running_mean", "running_var", "weight", "bias")


def _tensor_notes(tensors: Mapping[str, object], num_features: int | None) -> list[str]:
    """Notes on a layer's statistics and affine that hold whatever the layer is: complex
    values, and lengths that disagree with each other or with ``num_features``."""
    notes = []
    lengths = {}
    for name in _TENSORS:
        tensor = tensors.get(name)
        if not isinstance(tensor, torch.Tensor) or isinstance(tensor, UninitializedTensorMixin):
            continue
        if tensor.is_complex():
            notes.append(f"{name} holds {str(tensor.dtype).removeprefix('torch.')} values")
        if name.startswith("running") and tuple(tensor.shape) == (1,):
            continue  # scalar statistics: one value whatever the channels
        lengths[name] = tuple(tensor.shape)
    expected = {(num_features,)} if num_features is not None else set()
    if len(set(lengths.values()) | expected) > 1:
        parts = [f"num_features {num_features}"] if num_features is not None else []
        parts += [f"{name} {shape}" for name, shape in lengths.items()]
        notes.append(f"shapes disagree: {', '.join(parts)}")
    return notes


def _num_features(module: nn.Module) -> int | None:
    for attr in ("num_features", "num_channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    return int(shape[0]) if shape is not None and len(shape) == 1 else None


def _health_notes(running_mean: object, running_var: object, steps: int | None) -> list[str]:
    """Notes that hold for any layer with running statistics."""
    notes = []
    for name, tensor in (("running_mean", running_mean), ("running_var", running_var)):
        if isinstance(tensor, torch.Tensor) and not torch.isfinite(tensor).all():
            notes.append(f"{name} has NaN or inf")
    real_var = isinstance(running_var, torch.Tensor) and not running_var.is_complex()
    if real_var and bool((running_var < 0).any()):
        notes.append("running_var has negative values")
    if steps == 0:
        notes.append("num_batches_tracked=0: statistics never updated")
    return notes


def _module_notes(module: nn.Module) -> list[str]:
    notes = []
    tracking = tracks_running_stats(module)
    if is_batch_norm(module) and not tracking:
        notes.append("track_running_stats=False")
    holds = getattr(module, "running_var_holds", None)
    if holds == "sigma2_minus_eps":
        notes.append("running_var holds sigma^2 - eps (brn)")
    elif holds == "biased":
        notes.append("convention=keras: running_var is biased, momentum weighs the old value")
    if tracking and getattr(module, "momentum", 0.0) is None:
        notes.append("momentum=None: cumulative average")
    if mixes_sample_statistics(module):
        notes.append("running statistics are its BN term's")
    if has_fixed_statistics(module):
        notes.append("frozen: statistics and affine are fixed")
    if getattr(module, "channel_dim", 1) == -1:
        notes.append("channel_dim=-1: channels on the last dim")
    shape = getattr(module, "normalized_shape", None)
    if shape is not None and len(shape) != 1:
        notes.append(f"normalized_shape={tuple(shape)}")
    if isinstance(module, nn.RMSNorm) and getattr(module, "eps", None) is None:
        notes.append("eps=None: the input dtype's machine epsilon")
    facts = norm_facts(module)
    if facts is not None and facts.library not in ("torch", "normlab"):
        notes.append(f"{facts.library} {facts.computes}")
        if facts.channel_dim == 1 and facts.computes in ("layer norm", "RMS norm"):
            notes.append("channels on dim 1: (N, C, H, W)")
    if facts is not None and facts.weight_offset:
        notes.append(f"scales by {facts.weight_offset:g} + weight")
    if facts is not None and facts.after:
        notes.append(f"then {facts.does_more}")
    if facts is not None and facts.problem:
        notes.append(facts.problem)
    return notes


def _module_summary(name: str, module: nn.Module) -> NormLayerSummary:
    running_mean = getattr(module, "running_mean", None)
    running_var = getattr(module, "running_var", None)
    steps = _count(getattr(module, "num_batches_tracked", None))
    if is_batch_norm(module):
        stats: str | None = statistics_kind(module)
    else:
        stats = getattr(module, "stats", None)  # FrozenBatchNorm's; None for per-sample norms
    tracking = tracks_running_stats(module) and not has_fixed_statistics(module)
    notes = _module_notes(module)
    facts = norm_facts(module)
    eps = _number(module, "eps", notes)
    if eps is None and facts is not None:
        eps = facts.eps  # Hugging Face's variance_epsilon
    momentum = _number(module, "momentum", notes) if tracking else None
    num_features = _num_features(module)
    if num_features is None and facts is not None:
        num_features = facts.channels
    tensors = {name: getattr(module, name, None) for name in _TENSORS}
    notes += _tensor_notes(tensors, num_features)
    return NormLayerSummary(
        name=name,
        kind=module._get_name(),
        num_features=num_features,
        stats=stats if isinstance(stats, str) else None,
        eps=eps,
        momentum=momentum,
        running_mean=_summary(running_mean),
        running_var=_summary(running_var),
        num_batches_tracked=steps,
        weight=_summary(tensors["weight"]),
        bias=_summary(tensors["bias"]),
        notes="; ".join(notes + _health_notes(running_mean, running_var, steps)),
    )


def _state_dict_summaries(state_dict: Mapping[str, torch.Tensor]) -> list[NormLayerSummary]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = tensor
    return [
        _state_dict_summary(prefix, tensors)
        for prefix, tensors in groups.items()
        if "running_mean" in tensors and "running_var" in tensors
    ]


def _state_dict_summary(prefix: str, tensors: dict[str, torch.Tensor]) -> NormLayerSummary:
    running_mean = tensors["running_mean"]
    weight = tensors.get("weight")
    notes = []
    if tuple(running_mean.shape) == (1,):
        if weight is not None and weight.numel() > 1:
            stats: str | None = "scalar"
        elif weight is not None:
            stats = "channel"  # one channel: per-channel and scalar statistics coincide
        else:
            stats = None
            notes.append("running stats of shape (1,) and no weight: one channel, or scalar")
    else:
        stats = "channel"
    if weight is not None:
        num_features: int | None = weight.numel()
    else:
        num_features = running_mean.numel() if stats == "channel" else None
    steps = _count(tensors.get("num_batches_tracked"))
    if "num_batches_tracked" not in tensors:
        notes.append("no num_batches_tracked (frozen batch norm, or saved without it)")
    known = {"running_mean", "running_var", "num_batches_tracked", "weight", "bias"}
    others = [leaf for leaf in tensors if leaf not in known]
    if others:
        notes.append(f"also under this prefix: {', '.join(others)}")
    notes += _tensor_notes(tensors, None)
    return NormLayerSummary(
        name=prefix,
        kind="batch-norm statistics",
        num_features=num_features,
        stats=stats,
        eps=None,
        momentum=None,
        running_mean=_summary(running_mean),
        running_var=_summary(tensors["running_var"]),
        num_batches_tracked=steps,
        weight=_summary(weight),
        bias=_summary(tensors.get("bias")),
        notes="; ".join(notes + _health_notes(running_mean, tensors["running_var"], steps)),
    )


# --------------------------------------------------------------------------- rendering


def _range(summary: Summary | None) -> str:
    """Mean, min and max on three lines; one value when min and max print the same."""
    if summary is None:
        return "-"
    mean, low, high = (f"{value:.3g}" for value in summary)
    return mean if low == high else f"{mean}\n{low}\n{high}"


def _settings(layer: NormLayerSummary) -> str:
    lines = []
    if layer.stats is not None:
        lines.append(f"stats {layer.stats}")
    if layer.eps is not None:
        lines.append(f"eps {layer.eps:.3g}")
    if layer.momentum is not None:
        lines.append(f"mom. {layer.momentum:.3g}")
    if layer.num_batches_tracked is not None:
        lines.append(f"steps {layer.num_batches_tracked}")
    return "\n".join(lines) or "-"


def norm_layers_table(layers: list[NormLayerSummary], title: str) -> Table:
    """One row per layer, readable at 120 columns; the caption says how to read the cells,
    or, with no layers, that there are none.

    The settings column lists stats, eps, momentum and ``num_batches_tracked``
    (steps) where known; a tensor column shows the mean, min and max of its
    values on three lines, or a single value when they are all equal.
    """
    require_lab_extra("normlab.checkpoints.norm_layers_table", ["rich"])
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, box=box.SIMPLE_HEAD, show_lines=True)
    table.add_column("layer", overflow="fold", max_width=24)
    table.add_column("kind", overflow="fold", max_width=15)
    table.add_column("C", justify="right")
    table.add_column("settings", no_wrap=True)
    for column in ("running mean", "running var", "weight", "bias"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("notes", ratio=1, min_width=16)
    for layer in layers:
        cells = [
            layer.name or "(top level)",
            layer.kind,
            "-" if layer.num_features is None else str(layer.num_features),
            _settings(layer),
            _range(layer.running_mean),
            _range(layer.running_var),
            _range(layer.weight),
            _range(layer.bias),
            layer.notes,
        ]
        table.add_row(*(Text(cell) for cell in cells))  # Text: names are not read as markup
    if layers:
        table.caption = Text(
            "tensor cells: mean, min, max of the values (one value when min and max print "
            "the same); mom.: momentum; steps: num_batches_tracked; '-': none"
        )
    else:
        table.caption = Text("no normalization layer found")
    return table


def describe(path: str | os.PathLike[str]) -> tuple[str, Table]:
    """A one-line header for ``path`` (what it holds, how many normalization layers) and the
    table of its normalization layers.

    Raises:
        CheckpointError: as :func:`load_checkpoint`.
        ModuleNotFoundError: rich, from the lab extra, is not installed.
    """
    require_lab_extra("normlab.checkpoints.describe", ["rich"])
    from rich.text import Text

    checkpoint, where = locate_checkpoint(path)
    layers = norm_layers(checkpoint)
    count = len(layers)
    where = f" ({where})" if where else ""
    if isinstance(checkpoint, nn.Module):
        parameters = sum(p.numel() for p in checkpoint.parameters())
        holds = f"full module {type(checkpoint).__name__} ({parameters:,} parameters){where}"
        found = f"{count} normalization layer{'s' if count != 1 else ''}"
    else:
        holds = f"state_dict with {len(checkpoint)} tensors{where}"
        found = f"{count} batch-norm layer{'s' if count != 1 else ''}"
    header = f"{path}: {holds}; {found}"
    table = norm_layers_table(layers, f"Normalization layers in {Path(path).name}")
    if not isinstance(checkpoint, nn.Module):
        only = (
            "from a state_dict only layers with running statistics are found, without eps "
            "or momentum; layer, RMS, group and instance norms look like any affine layer"
        )
        if not layers:
            table.caption = Text(f"no batch-norm statistics found; {only}")
        else:
            table.caption = Text(f"{table.caption}\n{only}")
    return header, table
