"""Batch norm with per-channel or scalar statistics, in torch's or Keras' convention."""

from __future__ import annotations

import enum
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normlab import functional as NF
from normlab._checks import check_choice
from normlab.distributed import check_global_count, global_moments, sync_batch_norm, world_size
from normlab.layers.base import RunningStatsNorm, RunningVar
from normlab.layers.norm_act import NormAct
from normlab.layers.norm_classes import converts_to_sync_batch_norm, norm_facts
from normlab.module_tree import replace_modules


class _Default(enum.Enum):
    """Marks an argument whose default depends on ``convention``."""

    CONVENTION = enum.auto()

    def __repr__(self) -> str:  # shown by help() and inspect.signature
        return "<convention's default>"


DEFAULT = _Default.CONVENTION

#: (momentum, eps) defaults of each convention.
CONVENTION_DEFAULTS: dict[str, tuple[float, float]] = {"torch": (0.1, 1e-5), "keras": (0.99, 1e-3)}


class BatchNorm(RunningStatsNorm):
    """Batch normalization over (N, C, *) input with per-channel or scalar statistics.

    A stand-in for ``torch.nn.BatchNorm1d/2d/3d``: the same positional
    arguments (``num_features, eps, momentum, affine, track_running_stats,
    device, dtype``, then keyword ``bias``), the same state_dict, and with
    the defaults the same numbers. normlab's own options are keyword-only.

    ``stats="channel"`` (the standard, "2s") keeps one mean and variance per
    channel, reduced over the batch and spatial dims: this is Ioffe & Szegedy
    2015's algorithm (one mean and variance per activation, per feature map in
    convolutions), and numerically ``torch.nn.BatchNorm1d/2d/3d``, sharing
    their state_dict. ``stats="scalar"`` ("1s") keeps one mean and one variance
    for every element of the batch, a simplification (not the original
    algorithm, whatever the tutorials say); the affine stays per channel and
    the running statistics have shape (1,).

    ``convention`` fixes what ``momentum`` means and what ``running_var``
    stores:

    ========================  ============================  ==============================
    convention                ``"torch"`` (default)         ``"keras"``
    ========================  ============================  ==============================
    running update            ``(1 - m) * old + m * batch``  ``m * old + (1 - m) * batch``
    default momentum, eps     0.1, 1e-5                      0.99, 1e-3
    stored variance           unbiased (n - 1)               biased (n), as Keras
    ``momentum=None``         cumulative moving average      not allowed
    ========================  ============================  ==============================

    Both normalize with the biased batch variance.

    torch's tools: built with ``stats="channel"``, ``convention="torch"`` and
    ``channel_dim=1`` (the defaults) the layer computes exactly what
    ``torch.nn.BatchNorm1d/2d/3d`` computes, and is then an instance of
    :class:`TorchBatchNorm`, a subclass that is also
    ``torch.nn.modules.batchnorm._BatchNorm``: the tools that look for torch's
    batch norms by that class (``torch.nn.SyncBatchNorm.convert_sync_batchnorm``,
    timm's ``convert_sync_batchnorm``, ``torch.func.replace_all_batch_norm_modules_``,
    "put every batch norm in eval mode" loops) treat it as one, and what
    they build from its attributes is right. Any other configuration (scalar
    statistics, Keras' momentum and stored variance, channels last) is not a
    ``_BatchNorm``: those tools would rebuild it as torch's batch norm and
    silently change what it computes, so they leave it alone. The class is
    chosen when the layer is built, so in torch's configuration ``stats``,
    ``convention`` and ``channel_dim`` cannot be changed afterwards (assigning
    another value raises AttributeError; build a new layer with
    ``normlab.make_norm`` or swap with ``normlab.replace_norms``). Tools that match exact
    classes (``torch.ao.quantization.fuse_modules``, ``torch.fx``'s
    ``optimization.fuse``, timm's ``freeze_batch_norm_2d``, which takes
    ``BatchNorm2d`` only) skip every normlab layer, as they skip torch's
    ``BatchNorm1d`` where they want ``BatchNorm2d``; use
    :func:`normlab.inference.fold_batchnorm` and :func:`normlab.inference.freeze`.
    Under ``torch.fx`` symbolic tracing the layer is one ``call_module`` node,
    as torch's are.

    Shape:
        - Input: (N, C, *), channels on dim 1, any memory format; or (N, *, C)
          with ``channel_dim=-1`` (the C features of (N, L, C) tokens).
        - Output: same shape, dtype and memory format as the input; with
          ``channel_dim=-1``, contiguous (as ``torch.nn.LayerNorm``'s).

    Training vs eval: in training mode the batch's statistics normalize the
    input and update the running ones; a batch whose statistics would each
    see one value is refused, and an empty batch gives an empty output and
    changes no statistic (as torch). In eval mode the running statistics
    normalize, so a sample's output does not depend on the rest of the batch.
    With ``track_running_stats=False`` there are no running statistics and
    the batch's statistics are used in both modes.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for numerical stability (finite, > 0).
        momentum: running-statistics momentum, in the convention's sense;
            None for a cumulative average (torch convention only).
        affine: learn a per-channel ``weight`` and ``bias``.
        track_running_stats: keep ``running_mean``, ``running_var`` and
            ``num_batches_tracked`` buffers.
        device, dtype: where and in which dtype to create parameters and buffers.
        bias: with ``affine``, learn a ``bias`` too (False: a weight only, as torch).
        stats: ``"channel"`` or ``"scalar"``.
        convention: ``"torch"`` or ``"keras"``.
        channel_dim: 1 for (N, C, *) input, -1 for (N, *, C).
    """

    _repr_fields = (
        "stats",
        "convention",
        "eps",
        "momentum",
        "affine",
        "track_running_stats",
    )

    def __init__(
        self,
        num_features: int,
        eps: float | _Default = DEFAULT,
        momentum: float | _Default | None = DEFAULT,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        stats: NF.Stats = "channel",
        convention: NF.Convention = "torch",
        channel_dim: int = 1,
    ) -> None:
        check_choice("stats", stats, NF.STATS)
        check_choice("convention", convention, NF.CONVENTIONS)
        torch_class = _TORCH_CLASSES.get(type(self))
        if torch_class is not None and (stats, convention, channel_dim) == ("channel", "torch", 1):
            # torch's configuration: the subclass that is also torch's _BatchNorm (same
            # state, one more base; a copy or unpickled layer keeps its class).
            self.__class__ = torch_class
        default_momentum, default_eps = CONVENTION_DEFAULTS[convention]
        momentum = default_momentum if momentum is DEFAULT else momentum
        eps = default_eps if eps is DEFAULT else eps
        if momentum is None and convention == "keras":
            raise ValueError(
                "momentum=None (cumulative average) exists only in the torch convention; "
                "with convention='keras' pass a momentum in [0, 1], e.g. 0.99."
            )
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            bias=bias,
            stat_size=num_features if stats == "channel" else 1,
            channel_dim=channel_dim,
            device=device,
            dtype=dtype,
        )
        self.stats = stats
        self.convention = convention

    @property
    def running_var_holds(self) -> RunningVar:
        """``"unbiased"`` in torch's convention, ``"biased"`` in Keras'."""
        return "unbiased" if self.convention == "torch" else "biased"

    def _normalize(self, input: torch.Tensor) -> torch.Tensor:
        # As torch's _BatchNorm: batch statistics in training, and in eval
        # too when there are no running statistics.
        use_batch_stats = self.training or self.running_mean is None
        keep = not self.training or self.track_running_stats
        output = NF.batch_norm(
            input,
            self.running_mean if keep else None,
            self.running_var if keep else None,
            self.weight,
            self.bias,
            use_batch_stats,
            self._step_momentum(),
            self.eps,
            stats=self.stats,
            convention=self.convention,
            layer=self._get_name(),
        )
        self._count_step()
        return output


class SyncBatchNorm(BatchNorm):
    """Batch norm whose training statistics span every process of a torch.distributed group
    (``sync-bn``).

    A stand-in for ``torch.nn.SyncBatchNorm``, with its positional arguments
    (``num_features, eps, momentum, affine, track_running_stats,
    process_group, device, dtype``, then keyword ``bias``).
    In training mode inside an initialized process group of more than one
    process, the mean and variance (per channel, or one for the whole batch
    with ``stats="scalar"``) are those of the batch of every process together,
    and so are the running-statistics updates and the input gradients: on W
    processes the layer computes what :class:`BatchNorm` computes on the
    concatenated batch (see :func:`normlab.distributed.sync_batch_norm`).
    Per-process batches may differ in size and hold a single sample. Works on
    CPU with gloo, unlike ``torch.nn.SyncBatchNorm``, which needs CUDA; on
    CUDA it needs only nccl's all_gather and all_reduce (untested here).
    Outside such a group, and in eval mode, it is exactly :class:`BatchNorm`.
    ``normlab.convert_sync_batchnorm`` converts a model's batch-norm layers.

    Shape:
        - Input: (N, C, *), this process's part of the batch (or (N, *, C)
          with ``channel_dim=-1``).
        - Output: same shape as the input.

    Args:
        as :class:`BatchNorm`, plus ``process_group``: the group to
        synchronize over (None: the default group).
    """

    def __init__(
        self,
        num_features: int,
        eps: float | _Default = DEFAULT,
        momentum: float | _Default | None = DEFAULT,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        stats: NF.Stats = "channel",
        convention: NF.Convention = "torch",
        channel_dim: int = 1,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
            bias=bias,
            stats=stats,
            convention=convention,
            channel_dim=channel_dim,
        )
        self.process_group = process_group

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """``module`` with its batch-norm layers replaced by :class:`SyncBatchNorm`, as
        ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: the same call on this class. It is
        :func:`normlab.convert_sync_batchnorm` (see there for what is converted); like torch's,
        it builds this base class whatever class it is called on."""
        return convert_sync_batchnorm(module, process_group)

    def _normalize(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size(self.process_group) > 1):
            return super()._normalize(input)
        moments = global_moments(input, self.stats, self.process_group)
        # Checked before sync_batch_norm so that a refused batch counts no step.
        check_global_count(moments[0], input, self.stats, self._get_name())
        output = sync_batch_norm(
            input,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None,
            self.weight,
            self.bias,
            self._step_momentum(),
            self.eps,
            stats=self.stats,
            convention=self.convention,
            group=self.process_group,
            moments=moments,
        )
        self._count_step()
        return output


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """``module`` with its batch-norm layers replaced by :class:`SyncBatchNorm` (a
    :class:`TorchSyncBatchNorm` in torch's configuration).

    Converts normlab's ``BatchNorm`` (``bn`` and ``bn-scalar``, either
    convention; not ``BatchRenorm``, nor ``SyncBatchNorm`` itself) and
    torch's batch norms (``BatchNorm1d/2d/3d``, their lazy forms once
    initialized, any subclass of their base ``_BatchNorm`` that is not
    already synchronized), as ``replace_norms`` takes them (see
    :func:`normlab.layers.norm_classes.converts_to_sync_batch_norm`),
    keeping stats, convention, eps, momentum, affine, parameters
    and running statistics; a subclass whose forward also applies a drop and
    an activation (timm's ``BatchNormAct2d``) becomes a
    :class:`normlab.layers.NormAct` of the synchronized layer and the same
    drop and activation. A layer shared by several parents becomes one
    synchronized layer. Other modules are left alone, as
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does.

    Returns:
        ``module`` converted in place, or the new layer when ``module`` is itself one.

    Raises:
        ValueError: a subclass whose own forward normlab does not know (see
            :func:`normlab.layers.norm_classes.norm_facts`), or a lazy layer not
            initialized yet; nothing is converted.
    """
    layers = [layer for layer in module.modules() if converts_to_sync_batch_norm(layer)]
    facts = {layer: norm_facts(layer) for layer in layers}
    unknown = [f"{type(layer).__name__}: {facts[layer].problem}" for layer in layers]
    unknown = [line for layer, line in zip(layers, unknown, strict=True) if facts[layer].problem]
    if unknown:
        raise ValueError(
            f"convert_sync_batchnorm cannot convert {'; '.join(unknown)}. Nothing was "
            "converted; convert those layers yourself."
        )
    converted: dict[nn.Module, nn.Module] = {}
    for layer in layers:
        sync = _synchronized(layer, process_group)
        after = facts[layer].after
        converted[layer] = NormAct(sync, **dict(after)).train(layer.training) if after else sync
    return replace_modules(module, converted)


def _synchronized(layer: nn.Module, process_group: Any) -> SyncBatchNorm:
    """A SyncBatchNorm with ``layer``'s settings, parameters, buffers and mode."""
    sync = SyncBatchNorm(
        layer.num_features,
        bias=layer.bias is not None or layer.weight is None,
        channel_dim=getattr(layer, "channel_dim", 1),
        stats=getattr(layer, "stats", "channel"),
        convention=getattr(layer, "convention", "torch"),
        eps=layer.eps,
        momentum=layer.momentum,
        affine=layer.affine,
        track_running_stats=layer.track_running_stats,
        process_group=process_group,
        device=_device(layer),
        dtype=_dtype(layer),
    )
    # A norm + activation layer's state_dict also holds its activation's (e.g. PReLU's).
    state = {k: v for k, v in layer.state_dict().items() if k.split(".")[0] not in ("act", "drop")}
    sync.load_state_dict(state)
    sync.train(layer.training)
    return sync


#: The settings that choose whether ``BatchNorm(...)`` is also torch's ``_BatchNorm``.
_CONFIGURATION = ("stats", "convention", "channel_dim")
_UNSET = object()


class _FixedTorchConfiguration(nn.Module):
    """Refuses a new ``stats``, ``convention`` or ``channel_dim`` once set: the layer's class,
    torch's ``_BatchNorm`` or not, was chosen from them (see :class:`BatchNorm`)."""

    #: The registry's name for the layer, for the error's fix.
    _kind = "bn"

    def __setattr__(self, name: str, value: Any) -> None:
        held = self.__dict__.get(name, _UNSET) if name in _CONFIGURATION else _UNSET
        if held is not _UNSET and (not isinstance(value, type(held)) or value != held):
            raise AttributeError(_configuration_fixed(self, name, held, value))
        super().__setattr__(name, value)


def _configuration_fixed(layer: nn.Module, name: str, held: object, value: object) -> str:
    kind, channels = layer._kind, layer.num_features
    fix = f"build a new layer: normlab.make_norm({kind!r}, {channels}, {name}={value!r})"
    if name != "channel_dim":  # replace_norms reads the layout from each layer
        fix += (
            f", or swap the model's layers, keeping their weights: "
            f"normlab.replace_norms(model, {kind!r}, {name}={value!r})"
        )
    return (
        f"{layer._get_name()}'s {name} is fixed when the layer is built ({name}={held!r}): in "
        "torch's configuration (stats='channel', convention='torch', channel_dim=1) the layer "
        "is also torch's _BatchNorm, which torch's and timm's tools rebuild as torch's batch "
        f"norm, so changing it in place would make them compute something else. To get "
        f"{name}={value!r}, {fix}."
    )


class TorchBatchNorm(_FixedTorchConfiguration, BatchNorm, _BatchNorm):
    """:class:`BatchNorm` in torch's configuration (per-channel statistics, torch's
    convention, channels on dim 1), which is also ``torch.nn.modules.batchnorm._BatchNorm``.

    Not built directly: ``BatchNorm(...)`` returns one when its arguments give torch's
    configuration (see :class:`BatchNorm`, "torch's tools"). It computes and holds
    exactly what ``torch.nn.BatchNorm1d/2d/3d`` does, so the tools that rebuild any
    ``_BatchNorm`` from its ``num_features, eps, momentum, affine,
    track_running_stats`` and buffers (torch's and timm's ``convert_sync_batchnorm``)
    rebuild it faithfully. Its name in reprs and errors is ``BatchNorm``. Its ``stats``,
    ``convention`` and ``channel_dim`` cannot be changed: assigning another value raises
    AttributeError saying how to build the layer wanted.
    """

    def _get_name(self) -> str:
        return "BatchNorm"


class TorchSyncBatchNorm(_FixedTorchConfiguration, SyncBatchNorm, _BatchNorm):
    """:class:`SyncBatchNorm` in torch's configuration, also
    ``torch.nn.modules.batchnorm._BatchNorm``, as torch's ``SyncBatchNorm`` is; built by
    ``SyncBatchNorm(...)``, as :class:`TorchBatchNorm` by ``BatchNorm(...)``. Its name in
    reprs and errors is ``SyncBatchNorm``; its ``stats``, ``convention`` and
    ``channel_dim`` cannot be changed."""

    _kind = "sync-bn"

    def _get_name(self) -> str:
        return "SyncBatchNorm"


#: The class ``BatchNorm(...)`` and ``SyncBatchNorm(...)`` build in torch's configuration.
_TORCH_CLASSES: dict[type, type] = {BatchNorm: TorchBatchNorm, SyncBatchNorm: TorchSyncBatchNorm}


def _tensors(layer: nn.Module) -> list[torch.Tensor]:
    return [*layer.parameters(), *(b for b in layer.buffers() if b.is_floating_point())]


def _device(layer: nn.Module) -> torch.device | None:
    tensors = _tensors(layer)
    return tensors[0].device if tensors else None


def _dtype(layer: nn.Module) -> torch.dtype | None:
    tensors = _tensors(layer)
    return tensors[0].dtype if tensors else None
