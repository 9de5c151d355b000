"""What a normalization layer computes, for every class normlab recognizes.

The one place that answers "is this module a normalization layer, which kind, and what
does it compute?": normlab's own layers, torch's, timm's and torchvision's (by class
name and base class, as those libraries write them), and the layer and RMS norms that
Hugging Face and other model code write for themselves (``LlamaRMSNorm``, ``GemmaRMSNorm``,
``ConvNextLayerNorm``, Segment Anything's ``LayerNorm2d``, ...), by what their forward
computes on a probe input (see :mod:`normlab.layers._by_behaviour`), so a new model
family's copy of such a class is covered too.

:func:`norm_facts` says what a layer computes; the predicates below answer the tools'
yes/no questions from the same table:

- :func:`is_norm_layer`: any layer the table knows (``replace_norms``, ``normlab inspect``).
- :func:`is_batch_norm`: batch statistics in training, running ones in eval when tracked
  (``recalibrate``, ``calibrate``, ``eval_parity``, ``freeze``, ``fold_batchnorm``).
- :func:`tracks_running_stats`: the layer holds running statistics (the inference tools,
  ``normlab inspect``).
- :func:`has_fixed_statistics`: a frozen batch norm (``normlab inspect``).
- :func:`is_batch_or_frozen_norm`: either of the two (``fold_batchnorm``).
- :func:`mixes_sample_statistics`: switchable norm, which no fixed statistics reproduce
  (``freeze``, ``fold_batchnorm`` and ``FrozenBatchNorm.from_batchnorm`` refuse it).
- :func:`is_synchronized` and :func:`converts_to_sync_batch_norm`: what
  ``convert_sync_batchnorm`` leaves and what it converts.

:data:`TORCH_BATCH_NORM_RANKS` and :func:`torch_batch_norm_for_rank` say which input
ranks torch's batch-norm classes take (the Keras converter, ``normlab bench``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.modules.lazy import LazyModuleMixin

from normlab.layers._by_behaviour import behaviour, number_attribute
from normlab.layers.base import NormBase, RunningStatsNorm
from normlab.layers.batch_renorm import BatchRenorm
from normlab.layers.switchable_norm import SwitchableNorm

#: torch's normalization classes whose forward normlab knows (their subclasses too, as long as
#: they keep that forward).
TORCH_NORM_CLASSES: tuple[type[nn.Module], ...] = (
    _BatchNorm,
    _InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)

#: The input ranks each of torch's batch-norm classes takes: (N, C) or (N, C, L);
#: (N, C, H, W); (N, C, D, H, W).
TORCH_BATCH_NORM_RANKS: dict[type[_BatchNorm], tuple[int, ...]] = {
    nn.BatchNorm1d: (2, 3),
    nn.BatchNorm2d: (4,),
    nn.BatchNorm3d: (5,),
}


@dataclass(frozen=True)
class ThirdPartyClass:
    """A third-party normalization class, recognized by its name and its torch base class.

    ``computes`` is one of :data:`COMPUTES`; ``channel_dim`` where it reads the channels
    (1: (N, C, *); -1: the last dim); ``after``: the attributes holding modules its forward
    applies to the normalized output, in order (timm's drop, then activation).
    """

    name: str
    libraries: str
    base: type[nn.Module]
    computes: str
    channel_dim: int
    after: tuple[str, ...] = ()


#: What a layer computes, and the statistics it normalizes with.
COMPUTES = {
    "batch norm": "batch",  # the batch's in training; running ones in eval (when tracked)
    "frozen batch norm": "fixed",  # the running statistics in every mode
    "switchable norm": "batch",
    "layer norm": "sample",  # each sample's own
    "RMS norm": "sample",
    "group norm": "sample",
    "instance norm": "sample",
}

_ACT = ("drop", "act")

#: timm's and torchvision's own normalization classes.
THIRD_PARTY: tuple[ThirdPartyClass, ...] = (
    ThirdPartyClass("BatchNormAct2d", "timm", nn.BatchNorm2d, "batch norm", 1, _ACT),
    ThirdPartyClass("SyncBatchNormAct", "timm", nn.SyncBatchNorm, "batch norm", 1, _ACT),
    ThirdPartyClass("FrozenBatchNormAct2d", "timm", nn.Module, "frozen batch norm", 1, _ACT),
    ThirdPartyClass("FrozenBatchNorm2d", "timm, torchvision", nn.Module, "frozen batch norm", 1),
    ThirdPartyClass("GroupNormAct", "timm", nn.GroupNorm, "group norm", 1, _ACT),
    ThirdPartyClass("GroupNorm1Act", "timm", nn.GroupNorm, "group norm", 1, _ACT),
    ThirdPartyClass("GroupNorm", "timm", nn.GroupNorm, "group norm", 1),
    ThirdPartyClass("GroupNorm1", "timm", nn.GroupNorm, "group norm", 1),
    ThirdPartyClass("LayerNorm", "timm", nn.LayerNorm, "layer norm", -1),
    ThirdPartyClass("LayerNorm2d", "timm, torchvision", nn.LayerNorm, "layer norm", 1),
    ThirdPartyClass("LayerNormAct", "timm", nn.LayerNorm, "layer norm", -1, _ACT),
    ThirdPartyClass("LayerNormAct2d", "timm", nn.LayerNorm, "layer norm", 1, _ACT),
    ThirdPartyClass("RmsNorm", "timm", nn.Module, "RMS norm", -1),
    ThirdPartyClass("RmsNorm2d", "timm", nn.Module, "RMS norm", 1),
)
_BY_NAME = {entry.name: entry for entry in THIRD_PARTY}


@dataclass(frozen=True)
class NormFacts:
    """What one normalization layer computes.

    Attributes:
        library: "normlab", "torch", "timm", "torchvision" (or both), "Hugging Face", or
            the top-level package of another class known by what its forward computes.
        computes: one of :data:`COMPUTES` ("batch norm", "layer norm", ...).
        statistics: "batch", "fixed" or "sample" (see :data:`COMPUTES`).
        channels: C, or None where it cannot be read (``problem`` says why).
        channel_dim: 1 for (N, C, \\*) input, -1 for channels on the last dim.
        eps: the eps its forward adds, or None where it has none (torch's
            ``RMSNorm(eps=None)`` uses the input dtype's).
        momentum: its running-statistics momentum (batch statistics only).
        has_running_stats: it keeps running statistics.
        weight_offset: the forward scales by ``weight_offset + weight`` (1 for
            Gemma's RMS norm and Nemotron's ``LayerNorm1P``, 0 for every other).
        after: what the forward applies after normalizing, in order, as
            (attribute, module): timm's drop and activation (identities left out).
        problem: why the tools cannot rebuild it as another layer, or "".
    """

    library: str
    computes: str
    channels: int | None
    channel_dim: int
    eps: float | None
    momentum: float | None = None
    has_running_stats: bool = False
    weight_offset: float = 0.0
    after: tuple[tuple[str, nn.Module], ...] = ()
    problem: str = ""

    @property
    def statistics(self) -> str:
        return COMPUTES[self.computes]

    @property
    def does_more(self) -> str:
        """What the forward does besides normalizing, as text ("" for nothing)."""
        return ", then ".join(f"{name} {type(module).__name__}" for name, module in self.after)


def norm_facts(module: nn.Module) -> NormFacts | None:
    """What ``module`` computes, or None when it is not a normalization layer normlab knows."""
    if isinstance(module, NormBase):
        return _normlab_facts(module)
    own = type(module).__module__.startswith(("torch.", "normlab."))
    entry = None if own else _BY_NAME.get(type(module).__name__)
    if entry is not None and isinstance(module, entry.base):
        return _third_party_facts(module, entry)
    if isinstance(module, TORCH_NORM_CLASSES):
        facts = _torch_facts(module)
        if facts.problem and isinstance(module, nn.LayerNorm):  # a forward of its own
            return _facts_by_behaviour(module) or facts
        return facts
    return _facts_by_behaviour(module)


# --- the tools' questions -------------------------------------------------------------


def is_norm_layer(module: nn.Module) -> bool:
    """Whether :func:`norm_facts` recognizes ``module``: a normalization layer normlab knows."""
    return norm_facts(module) is not None


def is_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` normalizes with batch statistics in training mode and may keep
    running statistics for eval mode: torch's batch norms (``BatchNorm1d/2d/3d``, their lazy
    forms, ``SyncBatchNorm``, any subclass of their base ``_BatchNorm``, timm's
    ``BatchNormAct2d`` and ``SyncBatchNormAct``) and normlab's layers with running
    statistics (``bn``, ``bn-scalar``, ``brn``, ``switch``, ``sync-bn``).

    The layers whose :func:`norm_facts` say ``statistics == "batch"``, told by class alone,
    without running a forward.
    """
    return isinstance(module, _BatchNorm | RunningStatsNorm)


def tracks_running_stats(module: nn.Module) -> bool:
    """Whether the layer holds running statistics: a ``running_mean`` tensor (a batch norm
    with ``track_running_stats=True``, a frozen batch norm, an instance norm that tracks)."""
    return isinstance(getattr(module, "running_mean", None), torch.Tensor)


def has_fixed_statistics(module: nn.Module) -> bool:
    """Whether ``module`` is a frozen batch norm, normalizing with its running statistics in
    every mode: normlab's ``FrozenBatchNorm``, torchvision's and timm's ``FrozenBatchNorm2d``,
    timm's ``FrozenBatchNormAct2d``."""
    if is_batch_norm(module):
        return False
    facts = norm_facts(module)
    return facts is not None and facts.statistics == "fixed"


def is_batch_or_frozen_norm(module: nn.Module) -> bool:
    """A batch norm or a frozen one: the layers that are a per-channel affine map in eval
    mode when they hold running statistics (what ``fold_batchnorm`` looks at)."""
    return is_batch_norm(module) or has_fixed_statistics(module)


def mixes_sample_statistics(module: nn.Module) -> bool:
    """Whether a batch norm's output mixes per-sample statistics into it in every mode
    (switchable norm's instance and layer terms), so that no fixed statistics reproduce its
    eval output: it can be neither frozen nor folded."""
    return isinstance(module, SwitchableNorm)


def is_synchronized(module: nn.Module) -> bool:
    """Whether a batch norm already computes its statistics across processes: it holds a
    ``process_group``, as torch's, normlab's, timm's and apex's ``SyncBatchNorm`` do."""
    return is_batch_norm(module) and hasattr(module, "process_group")


def converts_to_sync_batch_norm(module: nn.Module) -> bool:
    """Whether ``convert_sync_batchnorm`` replaces ``module`` by a synchronized batch norm:
    a batch norm that normlab's ``SyncBatchNorm`` computes within one process (torch's
    batch norms and their subclasses, normlab's ``bn`` and ``bn-scalar``), not one already
    synchronized, nor batch renormalization or switchable norm, which it does not compute."""
    return (
        is_batch_norm(module)
        and not isinstance(module, BatchRenorm)
        and not mixes_sample_statistics(module)
        and not is_synchronized(module)
    )


def torch_batch_norm_for_rank(rank: int) -> type[_BatchNorm] | None:
    """torch's batch-norm class for input of ``rank`` dims (see :data:`TORCH_BATCH_NORM_RANKS`),
    or None for a rank none takes."""
    return next((cls for cls, ranks in TORCH_BATCH_NORM_RANKS.items() if rank in ranks), None)


def _momentum(module: nn.Module) -> float | None:
    return number_attribute(module, "momentum")


def _own_forward_problem(module: nn.Module, known: type[nn.Module]) -> str:
    """Why ``module`` cannot be read as ``known`` computes: its class overrides forward."""
    for cls in type(module).__mro__:
        if "forward" in vars(cls):
            if issubclass(known, cls) or cls.__module__.startswith(("torch.", "normlab.")):
                return ""
            return (
                f"its class {type(module).__name__} overrides {known.__name__}'s forward, so "
                "normlab cannot tell what else it computes (an activation, a drop)"
            )
    return ""


def _normlab_facts(module: NormBase) -> NormFacts:
    if isinstance(module, SwitchableNorm):
        computes = "switchable norm"
    elif isinstance(module, RunningStatsNorm):
        computes = "batch norm"
    else:
        computes = "frozen batch norm"
    return NormFacts(
        "normlab",
        computes,
        module.num_features,
        module.channel_dim,
        number_attribute(module, "eps"),
        _momentum(module) if isinstance(module, RunningStatsNorm) else None,
        tracks_running_stats(module),
        problem=_own_forward_problem(module, NormBase),
    )


def _shape_channels(shape: object) -> tuple[int | None, str]:
    shape = tuple(shape) if isinstance(shape, tuple | list | torch.Size) else (shape,)
    if len(shape) == 1 and isinstance(shape[0], int):
        return shape[0], ""
    return None, (
        f"normalized_shape {shape} spans {len(shape)} dims; a kind normalizes one channel dim. "
        "exclude= this layer"
    )


def _torch_facts(module: nn.Module) -> NormFacts:
    channel_dim = getattr(module, "channel_dim", 1)
    problem = ""
    if isinstance(module, _BatchNorm | _InstanceNorm):
        computes = "batch norm" if isinstance(module, _BatchNorm) else "instance norm"
        channels = module.num_features
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            channels, problem = None, "a lazy layer not initialized yet; run one forward pass first"
    elif isinstance(module, nn.GroupNorm):
        computes, channels = "group norm", module.num_channels
    else:
        computes = "layer norm" if isinstance(module, nn.LayerNorm) else "RMS norm"
        if hasattr(module, "channel_dim"):  # normlab's LayerNorm / RMSNorm
            channels = module.num_features
        else:
            channels, problem = _shape_channels(module.normalized_shape)
            channel_dim = -1
    known = next(cls for cls in TORCH_NORM_CLASSES if isinstance(module, cls))
    batch = isinstance(module, _BatchNorm)
    return NormFacts(
        "normlab" if type(module).__module__.startswith("normlab.") else "torch",
        computes,
        channels,
        channel_dim,
        number_attribute(module, "eps"),
        _momentum(module) if batch else None,
        tracks_running_stats(module),
        problem=problem or _own_forward_problem(module, known),
    )


def _third_party_facts(module: nn.Module, entry: ThirdPartyClass) -> NormFacts:
    problem = ""
    if entry.base is nn.Module:  # frozen batch norms and RMS norms hold their own tensors
        weight = getattr(module, "weight", None)
        shape = getattr(module, "normalized_shape", None)
        if shape is not None:
            channels, problem = _shape_channels(shape)
        elif isinstance(weight, torch.Tensor) and weight.dim() == 1:
            channels = weight.shape[0]
        else:
            channels, problem = None, "no 1-d weight to read the channel count from"
    elif isinstance(module, nn.GroupNorm):
        channels = module.num_channels
    elif isinstance(module, nn.LayerNorm):
        channels, problem = _shape_channels(module.normalized_shape)
    else:
        channels = module.num_features
    after = tuple(
        (name, getattr(module, name))
        for name in entry.after
        if isinstance(getattr(module, name, None), nn.Module)
        and not isinstance(getattr(module, name), nn.Identity)
    )
    batch = entry.computes == "batch norm"
    return NormFacts(
        entry.libraries,
        entry.computes,
        channels,
        entry.channel_dim,
        number_attribute(module, "eps"),
        _momentum(module) if batch else None,
        tracks_running_stats(module),
        after=after,
        problem=problem,
    )


# --- layer and RMS norms known by what their forward computes -----------------------


def _facts_by_behaviour(module: nn.Module) -> NormFacts | None:
    """Facts for a module whose forward computes layer or RMS norm (see
    :func:`normlab.layers._by_behaviour.behaviour`); None for any other module."""
    found = behaviour(module)
    if found is None:
        return None
    package = type(module).__module__.split(".")[0]
    return NormFacts(
        "Hugging Face" if package == "transformers" else package,
        found.computes,
        module.weight.shape[0],
        found.channel_dim,
        found.eps,
        weight_offset=found.weight_offset,
    )
