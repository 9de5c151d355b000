"""What a saved checkpoint holds about normalization: ``normlab inspect CHECKPOINT``.

A checkpoint is loaded with ``torch.load(..., weights_only=True)`` and nothing
else: a file can never run code here. A state_dict (or a training loop's dict
holding one) loads as plain tensors. A whole module saved with
``torch.save(model)`` loads only when every class it names is on an explicit
allow-list: torch.nn's modules, normlab's layers and the lab's models (see
:func:`allowed_classes`). Anything else is refused with a
:class:`CheckpointError` that names the refused class and says to save the
state_dict instead.

:func:`norm_layers` then lists the normalization layers with their running
statistics and affine as (mean, min, max) summaries, :func:`norm_layers_table`
renders them with rich, and :func:`describe` does both for a path.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from pickle import UnpicklingError

import torch
from rich import box
from rich.table import Table
from rich.text import Text
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.parameter import UninitializedTensorMixin

from normlab import layers as normlab_layers
from normlab.inference.layers import is_batch_norm, statistics_kind, tracks_running_stats
from normlab.layers import FrozenBatchNorm, SwitchableNorm
from normlab.models import RowRNN, _FeaturesAsChannels

#: Keys under which training loops commonly store the model's state_dict, tried in order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")

#: (mean, min, max) of a tensor's values.
Summary = tuple[float, float, float]

_SAVE_STATE_DICT = (
    "If you wrote this file, save the model's state_dict instead: "
    "`torch.save(model.state_dict(), PATH)`, and inspect that."
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or may not be loaded safely; the message says why."""


@cache
def allowed_classes() -> tuple[type, ...]:
    """The classes a pickled module may name: what ``torch.load`` is allowed to construct.

    - every ``nn.Module`` subclass exported by ``torch.nn`` (containers, linear,
      conv, recurrent, pooling, activation and torch's normalization layers);
    - every layer class of :mod:`normlab.layers` (all of ``__all__``);
    - the lab's models: :class:`normlab.models.RowRNN` and its private
      ``_FeaturesAsChannels`` wrapper (``mlp`` and ``cnn`` are ``nn.Sequential``).

    No other global is added. A saved normlab model needs none (checked on
    torch 2.13 with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on
    every registered kind inside Sequential, cnn, mlp and rnn models, trained
    and untrained): what else a pickled module names, ``collections.OrderedDict``
    (its ``_modules``, ``_parameters``, ``_buffers`` and hook dicts), ``set``
    (``_non_persistent_buffers_set``), ``torch.nn.parameter.Parameter``,
    ``torch._utils._rebuild_parameter`` and ``_rebuild_tensor_v2``, dtypes and
    ``torch.device``, is on torch's own weights-only list already; normlab's
    ``_Default`` sentinel never reaches a pickle, because ``BatchNorm``
    resolves it to numbers in ``__init__``. Hook wrappers
    (``torch.nn.modules.module._WrappedHook``) appear only with the legacy
    ``torch.nn.utils.spectral_norm``, which normlab does not use, and
    parametrized modules (normlab's ``spectral_norm``) cannot be pickled whole.
    """
    torch_modules = [
        obj for obj in vars(nn).values() if isinstance(obj, type) and issubclass(obj, nn.Module)
    ]
    normlab_modules = [getattr(normlab_layers, name) for name in normlab_layers.__all__]
    return (*torch_modules, *normlab_modules, RowRNN, _FeaturesAsChannels)


def _qualified_names(classes: tuple[type, ...]) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in classes}


# --------------------------------------------------------------------------- loading


def load_checkpoint(path: str | os.PathLike[str]) -> nn.Module | dict[str, torch.Tensor]:
    """Load ``path`` safely as a full module or a state_dict.

    Accepts what ``torch.save`` wrote from:

    - ``model.state_dict()`` (tensors by name), returned as a dict;
    - a dict holding a state_dict (or a module) under ``"state_dict"``,
      ``"model_state_dict"`` or ``"model"`` beside other entries (epoch,
      optimizer state, ...), as training loops save; the state_dict (or
      module) is returned and the rest ignored;
    - ``model`` itself, when every class it names is in
      :func:`allowed_classes`.

    Never unpickles arbitrary objects: ``weights_only=True`` always.

    Raises:
        CheckpointError: the file is missing, empty, not a torch checkpoint,
            corrupt, holds something other than a model or state_dict, or
            names a class or function outside the allow-list (the message
            names it and says to save the state_dict instead).
    """
    return _load(Path(path))[0]


def _load(path: Path) -> tuple[nn.Module | dict[str, torch.Tensor], str]:
    """The checkpoint and where it was in the file ("" at the top level, else a sentence)."""
    obj = _torch_load(path)
    found = _model_or_state_dict(obj)
    if found is not None:
        return found, ""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            found = _model_or_state_dict(obj.get(key))
            if found is not None:
                others = [str(other) for other in obj if other != key]
                beside = f"; the file also holds {', '.join(others)}" if others else ""
                return found, f"under {key!r}{beside}"
        if not obj:
            raise CheckpointError(
                f"{path}: holds an empty dict; there is no model or state_dict to inspect."
            )
        keys = ", ".join(repr(key) for key in list(obj)[:8])
        raise CheckpointError(
            f"{path}: holds a dict (keys {keys}{', ...' if len(obj) > 8 else ''}) that is "
            "neither a state_dict (tensors by name) nor has one under 'state_dict', "
            "'model_state_dict' or 'model'. Save model.state_dict(), or a dict with it under "
            "'state_dict'."
        )
    raise CheckpointError(
        f"{path}: holds a {type(obj).__name__}, not a model or a state_dict. "
        "Save model.state_dict() (or the model) with torch.save."
    )


def _model_or_state_dict(obj: object) -> nn.Module | dict[str, torch.Tensor] | None:
    if isinstance(obj, nn.Module):
        return obj
    if (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        return dict(obj)
    return None


def _torch_load(path: Path) -> object:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file. Check the path to the checkpoint.")
    if path.is_dir():
        raise CheckpointError(
            f"{path}: is a directory; pass the checkpoint file that torch.save wrote."
        )
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path}: the file is empty (0 bytes), not a checkpoint; was it saved completely?"
        )
    try:
        with (
            torch.serialization.safe_globals(list(allowed_classes())),
            warnings.catch_warnings(),
        ):
            # A plain pickle's protocol draws a warning before the load fails anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except UnpicklingError as error:
        raise _unpickling_error(path, error) from error
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read: {error.strerror or error}.") from error
    except Exception as error:  # torch.load raises many types on bytes that are not a checkpoint
        raise CheckpointError(
            f"{path}: not a torch checkpoint, or a corrupt or truncated one: torch.load "
            f"failed with {type(error).__name__}: {_reason(error) or 'no message'}. "
            "Pass a file written by torch.save, or save it again."
        ) from error


def _reason(error: BaseException) -> str:
    """torch's error message without its boilerplate (which suggests weights_only=False)."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in str(error).splitlines()]
    kept = [line for line in lines if line and not line.startswith(boilerplate)]
    return " ".join(kept).strip()


def _unpickling_error(path: Path, error: UnpicklingError) -> CheckpointError:
    refused = _refused_globals(path, str(error))
    if refused:
        names = ", ".join(refused)
        which = (
            "which is not a torch.nn module, a normlab layer or a normlab model"
            if len(refused) == 1
            else "which are not torch.nn modules, normlab layers or normlab models"
        )
        return CheckpointError(
            f"{path}: refused to load: it names {names}, {which}. "
            "Only those are loaded (weights_only=True), "
            "because loading any other class or function from a file can run code. "
            f"{_SAVE_STATE_DICT}"
        )
    return CheckpointError(
        f"{path}: not a checkpoint that can be loaded safely ({_reason(error)}): the file is "
        "corrupt, not written by torch.save (a plain pickle is refused too), or builds "
        f"objects other than tensors and modules. {_SAVE_STATE_DICT}"
    )


def _refused_globals(path: Path, message: str) -> list[str]:
    """The globals ``path`` names outside torch's and normlab's allow-lists, sorted."""
    try:
        # Reads the pickle's opcodes only; nothing is imported or constructed.
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: fall back to the name in torch's message
        names = []
    allowed = _qualified_names(allowed_classes())
    refused = sorted(name for name in names if name not in allowed)
    if not refused:
        refused = re.findall(r"GLOBAL (\S+)", message)
    return refused


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


def is_norm_layer(module: nn.Module) -> bool:
    """Whether :func:`norm_layers` reports ``module``: batch-norm layers (per
    :func:`normlab.inference.layers.is_batch_norm`), FrozenBatchNorm, and torch's
    or normlab's LayerNorm, RMSNorm, GroupNorm and InstanceNorm."""
    return is_batch_norm(module) or isinstance(
        module, FrozenBatchNorm | nn.LayerNorm | nn.RMSNorm | nn.GroupNorm | _InstanceNorm
    )


def norm_layers(
    checkpoint: nn.Module | Mapping[str, torch.Tensor],
) -> list[NormLayerSummary]:
    """The normalization layers of a loaded checkpoint, in module (or key) order.

    For a module: every layer :func:`is_norm_layer` accepts, with its class,
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
    if (
        not isinstance(tensor, torch.Tensor)
        or isinstance(tensor, UninitializedTensorMixin)
        or tensor.numel() == 0
    ):
        return None
    values = tensor.detach().double()
    return (values.mean().item(), values.min().item(), values.max().item())


def _count(tensor: object) -> int | None:
    return int(tensor.item()) if isinstance(tensor, torch.Tensor) and tensor.numel() == 1 else None


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
    if isinstance(running_var, torch.Tensor) and bool((running_var < 0).any()):
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
    if isinstance(module, SwitchableNorm):
        notes.append("running statistics are its BN term's")
    if isinstance(module, FrozenBatchNorm):
        notes.append("frozen: statistics and affine are fixed")
    shape = getattr(module, "normalized_shape", None)
    if shape is not None and len(shape) != 1:
        notes.append(f"normalized_shape={tuple(shape)}")
    if isinstance(module, nn.RMSNorm) and module.eps is None:
        notes.append("eps=None: the input dtype's machine epsilon")
    return notes


def _module_summary(name: str, module: nn.Module) -> NormLayerSummary:
    running_mean = getattr(module, "running_mean", None)
    running_var = getattr(module, "running_var", None)
    steps = _count(getattr(module, "num_batches_tracked", None))
    if is_batch_norm(module):
        stats: str | None = statistics_kind(module)
    else:
        stats = getattr(module, "stats", None)  # FrozenBatchNorm's; None for per-sample norms
    tracking = tracks_running_stats(module) and not isinstance(module, FrozenBatchNorm)
    eps = getattr(module, "eps", None)
    return NormLayerSummary(
        name=name,
        kind=type(module).__name__,
        num_features=_num_features(module),
        stats=stats,
        eps=float(eps) if eps is not None else None,
        momentum=getattr(module, "momentum", None) if tracking else None,
        running_mean=_summary(running_mean),
        running_var=_summary(running_var),
        num_batches_tracked=steps,
        weight=_summary(getattr(module, "weight", None)),
        bias=_summary(getattr(module, "bias", None)),
        notes="; ".join(_module_notes(module) + _health_notes(running_mean, running_var, steps)),
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
    """
    checkpoint, where = _load(Path(path))
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
