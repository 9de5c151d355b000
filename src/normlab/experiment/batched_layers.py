"""K replicas of a layer run as one layer, on input with the replicas folded into the channels.

The replicas of a model (built alike, differing in their numbers) train together when each
layer runs all K of them at once. Every layer here takes and returns the replicas' activations
*folded into the channel dim*: replica k's (N, C, *) activations are channels k*C to (k+1)*C
of one (N, K*C, *) tensor. In that layout most layers need no rewriting:

- a stateless layer that treats channels alike (ReLU, max pooling, ``Flatten`` from dim 1)
  runs as it is;
- a linear layer is a batched matrix product (one (N, F) x (F, out) product per replica),
  a convolution a grouped one (K groups);
- a norm whose statistics are per channel (batch norm, batch renormalization, frozen batch
  norm: their C running statistics become K*C) is the same layer *widened* to K*C channels;
- a norm whose statistics are per sample (layer norm, RMSNorm, group norm, instance norm
  without running statistics) normalizes the (N*K, C, *) view, each sample of each replica on
  its own, without affine, and each replica's affine follows;
- any other layer runs under ``vmap`` over the replicas (slower, the same numbers).

Each replica's numbers are those of its own layer up to rounding. Every :class:`Batched` layer
holds the replicas' tensors as its own parameters and buffers (one optimizer steps them all:
see normlab.experiment.stacked) and gives replica k's state back under the original names.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from normlab.layers import BatchNorm, BatchRenorm, FrozenBatchNorm
from normlab.layers.torch_norms import GroupNorm, InstanceNorm, LayerNorm, RMSNorm

_STATELESS = (nn.ReLU, nn.Identity, nn.MaxPool2d)
_PER_CHANNEL = (BatchNorm, BatchRenorm, FrozenBatchNorm)
_PER_SAMPLE = (LayerNorm, RMSNorm, GroupNorm, InstanceNorm)


def fold(images: torch.Tensor) -> torch.Tensor:
    """(K, N, C, *) inputs, one batch per replica, as the folded (N, K*C, *)."""
    return images.transpose(0, 1).flatten(1, 2)


def fold_shared(images: torch.Tensor, replicas: int) -> torch.Tensor:
    """(N, C, *) inputs that every replica sees, as the folded (N, K*C, *)."""
    return images.repeat(1, replicas, *[1] * (images.ndim - 2))


def unfold(folded: torch.Tensor, replicas: int) -> torch.Tensor:
    """Folded (N, K*C, *) activations as (K, N, C, *)."""
    return folded.unflatten(1, (replicas, -1)).transpose(0, 1)


class Batched(nn.Module):
    """K replicas of one layer as one module on folded input (see the module docstring).

    ``self.layout`` maps each name of the original layer's state_dict to where the replicas'
    values live: (attribute, original shape), the attribute holding the K replicas' values
    contiguously in replica order; or (attribute, None) for an integer buffer (a step count)
    that every replica shares.
    """

    def __init__(self, replicas: int) -> None:
        super().__init__()
        self.replicas = replicas
        self.layout: dict[str, tuple[str, torch.Size | None]] = {}

    def _hold(
        self, name: str, values: torch.Tensor, shape: torch.Size | None, parameter: bool
    ) -> None:
        """Hold ``values``, the K replicas' ``name`` in replica order, as attribute ``name``."""
        attribute = name.replace(".", "_")
        if parameter:
            self.register_parameter(attribute, nn.Parameter(values))
        else:
            self.register_buffer(attribute, values)
        self.layout[name] = (attribute, shape)

    def replica_state(self, index: int, *, grads: bool = False) -> dict[str, torch.Tensor]:
        """Replica ``index``'s state (or, with ``grads``, its parameters' gradients) under
        the original layer's names."""
        state = {}
        for name, (path, shape) in self.layout.items():
            module, _, attribute = path.rpartition(".")
            value = getattr(self.get_submodule(module), attribute)
            if grads:
                if not isinstance(value, nn.Parameter):
                    continue
                value = value.grad
            state[name] = self._replica_value(name, value, shape, index)
        return state

    def _replica_value(
        self, name: str, value: torch.Tensor, shape: torch.Size | None, index: int
    ) -> torch.Tensor:
        """Replica ``index``'s part of ``value``, the replicas' ``name`` (or its gradient)."""
        return value if shape is None else value.view(self.replicas, *shape)[index]


def _shared_integer(name: str, values: Sequence[torch.Tensor]) -> torch.Tensor:
    """The replicas' integer buffer ``name``, which they share: it must start equal."""
    if not all(bool((value == values[0]).all()) for value in values):
        raise ValueError(
            f"buffer {name!r} differs between the replicas; stacked replicas share "
            "their integer buffers, so they must start equal."
        )
    return values[0].clone()


class BatchedLinear(Batched):
    """K ``nn.Linear`` replicas: (N, K*F) -> (N, K*out), one matrix product per replica.

    The weights are held transposed, (K, F, out), the layout in which the product's
    gradient comes out (a gradient in another layout is copied into the weight's every step).
    """

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__(len(layers))
        for name, value in layers[0].named_parameters():
            values = torch.stack([m.get_parameter(name) for m in layers]).detach()
            if name == "weight":
                values = values.transpose(1, 2).contiguous()
            self._hold(name, values, value.shape, parameter=True)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        samples = len(input)
        stacked = input.view(samples, self.replicas, -1).transpose(0, 1)  # (K, N, F)
        bias = getattr(self, "bias", None)
        if bias is None:
            output = torch.bmm(stacked, self.weight)
        else:
            output = torch.baddbmm(bias.unsqueeze(1), stacked, self.weight)  # (K, N, out)
        return output.transpose(0, 1).reshape(samples, -1)

    def _replica_value(
        self, name: str, value: torch.Tensor, shape: torch.Size | None, index: int
    ) -> torch.Tensor:
        return (
            value[index].t()
            if name == "weight"
            else super()._replica_value(name, value, shape, index)
        )


class BatchedConv2d(Batched):
    """K ``nn.Conv2d`` replicas (zero padding) as one convolution in K groups:
    (N, K*C, H, W) -> (N, K*out, H', W')."""

    def __init__(self, layers: Sequence[nn.Conv2d]) -> None:
        super().__init__(len(layers))
        first = layers[0]
        self.geometry = (first.stride, first.padding, first.dilation, first.groups * self.replicas)
        for name, value in first.named_parameters():
            values = torch.cat([m.get_parameter(name) for m in layers]).detach()
            self._hold(name, values, value.shape, parameter=True)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.conv2d(input, self.weight, getattr(self, "bias", None), *self.geometry)


class WidenedNorm(Batched):
    """K replicas of a norm whose every statistic and affine is per channel, as the same
    layer widened to K*C channels, which owns the replicas' tensors (so its forward is the
    layer's own): (N, K*C, *) -> (N, K*C, *)."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__(len(layers))
        self.wide = copy.deepcopy(layers[0])
        self.wide.num_features *= self.replicas
        for name, value in layers[0].state_dict(keep_vars=True).items():
            values = [m.state_dict(keep_vars=True)[name] for m in layers]
            if value.ndim == 0:
                held, shape = _shared_integer(name, values), None
            else:
                held, shape = torch.cat(values).detach(), value.shape
            if isinstance(value, nn.Parameter):
                self.wide.register_parameter(name, nn.Parameter(held))
            else:
                self.wide.register_buffer(name, held)
            self.layout[name] = (f"wide.{name}", shape)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.wide(input)


class _AffineAfter(Batched):
    """K replicas of a norm with a per-channel affine: a view of the folded input normalized
    by ``self.plain``, a copy of the layer without its affine (see ``_normalize``), then
    each replica's own affine. (N, K*C, *) -> (N, K*C, *)."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__(len(layers))
        self.plain = copy.deepcopy(layers[0])
        for name in ("weight", "bias"):
            value = getattr(layers[0], name, None)
            if value is not None:
                setattr(self.plain, name, None)
                values = torch.stack([getattr(m, name) for m in layers]).detach()
                self._hold(name, values, value.shape, isinstance(value, nn.Parameter))

    def _normalize(self, input: torch.Tensor) -> torch.Tensor:
        """(N, K*C, *) folded input normalized, without affine."""
        raise NotImplementedError

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        samples, channels = len(input), input.shape[1] // self.replicas
        normalized = self._normalize(input).view(samples, self.replicas, channels, *input.shape[2:])
        shape = (1, self.replicas, channels) + (1,) * (input.ndim - 2)  # over (N, K, C, *)
        weight, bias = getattr(self, "weight", None), getattr(self, "bias", None)
        if weight is not None:
            normalized = normalized * weight.view(shape)
        if bias is not None:
            normalized = normalized + bias.view(shape)
        return normalized.flatten(1, 2)


class PerSampleNorm(_AffineAfter):
    """K replicas of a norm whose statistics are each sample's own (layer norm, RMSNorm,
    group norm, instance norm without running statistics): the layer normalizes the
    (N*K, C, *) view, each sample of each replica on its own."""

    def _normalize(self, input: torch.Tensor) -> torch.Tensor:
        samples, channels = len(input) * self.replicas, input.shape[1] // self.replicas
        return self.plain(input.reshape(samples, channels, *input.shape[2:]))


class ScalarStatsNorm(_AffineAfter):
    """K replicas of batch norm with one mean and variance over the whole batch ("1s"):
    per-channel batch norm over the (N, K, C*...) view, one channel per replica, whose K
    running statistics are the replicas' (1,) ones."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__(layers)
        self.plain.stats = "channel"
        self.plain.num_features = self.replicas
        for name, value in layers[0].named_buffers():
            if name in ("weight", "bias"):  # a frozen layer's affine, held above
                continue
            values = [m.get_buffer(name) for m in layers]
            if value.ndim == 0:
                held, shape = _shared_integer(name, values), None
            else:
                held, shape = torch.cat(values), value.shape
            self.plain.register_buffer(name, held)
            self.layout[name] = (f"plain.{name}", shape)

    def _normalize(self, input: torch.Tensor) -> torch.Tensor:
        return self.plain(input.reshape(len(input), self.replicas, -1)).view_as(input)


class VmappedLayer(Batched):
    """Any layer's K replicas under ``vmap`` over the (N, K, C, *) view of folded input, each
    with its own parameters and floating-point buffers; integer buffers (step counts) are
    held once and shared, so that a layer that reads one on the host still can."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__(len(layers))
        params, buffers = stack_module_state(list(layers))
        self.shared: dict[str, torch.Tensor] = {}
        for name, value in layers[0].state_dict(keep_vars=True).items():
            if name in params:
                self._hold(name, params[name].detach(), value.shape, parameter=True)
            elif value.is_floating_point():
                self._hold(name, buffers[name], value.shape, parameter=False)
            else:
                values = _shared_integer(name, [m.get_buffer(name) for m in layers])
                self._hold(name, values, None, parameter=False)
        # The replicas' tensors are passed to every call: the template holds no data.
        self.template = [copy.deepcopy(layers[0]).to("meta")]

    def _call(self, state: dict[str, torch.Tensor], input: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template[0], state, (input,))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self.template[0].train(self.training)
        batched, shared = {}, {}
        for name, (attribute, shape) in self.layout.items():
            (shared if shape is None else batched)[name] = getattr(self, attribute)
        step = vmap(lambda state, x: self._call(state | shared, x), in_dims=(0, 1), out_dims=1)
        return step(batched, input.unflatten(1, (self.replicas, -1))).flatten(1, 2)


def _per_channel(layer: nn.Module) -> bool:
    """Every statistic and affine of ``layer`` per channel, channels on dim 1."""
    if not isinstance(layer, _PER_CHANNEL) or layer.channel_dim != 1:
        return False
    if getattr(layer, "stats", "channel") != "channel":
        return False
    return all(
        value.ndim == 0 or value.shape == (layer.num_features,)
        for value in layer.state_dict().values()
    )


def _per_sample(layer: nn.Module) -> bool:
    """``layer``'s statistics each sample's own, channels on dim 1, and no running state."""
    return (
        isinstance(layer, _PER_SAMPLE)
        and layer.channel_dim == 1
        and not list(layer.buffers())
        and {name for name, _ in layer.named_parameters()} <= {"weight", "bias"}
    )


def _scalar_stats(layer: nn.Module) -> bool:
    """``layer`` a batch norm with scalar statistics, channels on dim 1."""
    return (
        isinstance(layer, (BatchNorm, FrozenBatchNorm))
        and layer.stats == "scalar"
        and layer.channel_dim == 1
    )


def batched(layers: Sequence[nn.Module]) -> Batched | nn.Module:
    """One layer that runs the replicas ``layers`` (built alike) on folded input."""
    first = layers[0]
    if type(first) in _STATELESS or (type(first) is nn.Flatten and first.start_dim == 1):
        return first
    if type(first) is nn.Linear:
        return BatchedLinear(layers)
    if type(first) is nn.Conv2d and first.padding_mode == "zeros":
        return BatchedConv2d(layers)
    if _per_channel(first):
        return WidenedNorm(layers)
    if _per_sample(first):
        return PerSampleNorm(layers)
    if _scalar_stats(first):
        return ScalarStatsNorm(layers)
    return VmappedLayer(layers)
