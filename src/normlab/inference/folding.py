"""Fold eval-mode batch norm into the Linear or convolution in front of it.

In eval mode batch norm is a fixed per-channel affine map,
``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, so after
a Linear or convolution it can be merged into that layer's weight and bias:
with ``s = weight / sqrt(running_var + eps)`` per output channel,

    W' = W * s        b' = b * s + (bias - running_mean * s)

and the network computes the same function with one layer fewer.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from normlab.layers.norm_act import NormAct
from normlab.layers.norm_classes import (
    is_batch_norm,
    is_batch_or_frozen_norm,
    mixes_sample_statistics,
    norm_facts,
    tracks_running_stats,
)

#: Layers a batch norm can be folded into. Exact types: a subclass (e.g. normlab's
#: WSConv2d) may change what its forward does with the weight.
FOLDABLE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@fx.wrap
def features_last_only(output: torch.Tensor, norm: str) -> torch.Tensor:
    """``output`` of a Linear that a batch norm (named ``norm``) was folded into, checked to
    be (N, features): the only shape on which the fold is exact.

    Raises:
        ValueError: ``output`` has another rank; the unfolded norm would have
            normalized its dim 1, and the Linear's features are its last dim.
    """
    if output.dim() != 2:
        raise ValueError(
            f"batch norm {norm!r} was folded into the Linear before it, which is exact only "
            f"for (N, features) outputs; this one is {tuple(output.shape)}, where the norm "
            "normalized dim 1 and the Linear's features are the last dim. Run the unfolded "
            "model on such inputs."
        )
    return output


class FoldedLinearCheck(nn.Module):
    """What replaces a batch norm folded into a Linear (in a model that could not be traced):
    passes (N, features) through and refuses any other shape (see features_last_only)."""

    def __init__(self, norm: str) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        return features_last_only(output, self.norm)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}"


EVAL_MODE_REQUIRED = (
    "fold_batchnorm folds eval-mode batch norm (it uses the running statistics); "
    "call model.eval() first"
)


def fold_batchnorm(model: nn.Module, *, strict: bool = False) -> nn.Module:
    """A copy of ``model`` with each eval-mode batch norm folded into the layer before it.

    A batch-norm layer is folded when its only input is the output of an
    ``nn.Linear``, ``nn.Conv1d/2d/3d`` or ``nn.ConvTranspose1d/2d/3d`` (any
    ``groups``, with or without bias) that feeds nothing else, whose output
    channels equal the norm's ``num_features``, and when neither module is
    called more than once. That layer's weight and bias absorb the norm
    (computed in float64, stored in the layer's dtype; a layer without bias
    gets one) and the norm disappears. Foldable norms: ``torch.nn``'s
    BatchNorm1d/2d/3d and SyncBatchNorm, normlab's ``BatchNorm`` (``bn`` and
    ``bn-scalar``, torch or Keras convention), ``SyncBatchNorm``,
    ``BatchRenorm`` and ``FrozenBatchNorm``; each must have running
    statistics. A Linear's features are the last dim of its output: a norm
    with ``channel_dim=-1`` normalizes exactly those and folds for any input
    shape, while for a norm on dim 1 the fold is exact only when the output is
    (N, features): the folded model checks that shape where the norm was and
    raises ``ValueError`` on any other (a (N, C, L) input, where the unfolded
    norm would normalize dim 1), never computing something else silently. A
    ``channel_dim=-1`` norm after a convolution (whose channels are dim 1)
    normalizes another dim and is kept, with that reason.

    The model is first traced with ``torch.fx`` (normlab's layers are kept
    as single calls), which finds the pairs in any forward; the result is
    then a ``torch.fx.GraphModule`` without the folded norms. A model that
    cannot be traced (e.g. control flow on tensor values) falls back to
    folding consecutive (layer, norm) children of each ``nn.Sequential``,
    wherever it sits, replacing the norm with ``nn.Identity``; the result is
    then a copy of the model's own class. The fallback cannot see a forward
    that calls a Sequential's children directly; fold such models only if
    they trace.

    Batch-norm layers that cannot be folded are kept and listed with the
    reason (see :func:`unfoldable_batchnorms`): in one ``UserWarning``, or,
    with ``strict=True``, in a ``ValueError``.

    Shape: the returned model maps the same inputs to the same outputs as
    ``model.eval()`` (up to float rounding).

    Training vs eval: folding uses the running statistics, which only eval
    mode uses, so every batch-norm layer of ``model`` must be in eval mode
    (``FrozenBatchNorm`` behaves the same in both and may be in either).
    ``model`` itself is never modified.

    Args:
        model: the network to fold.
        strict: raise instead of warning when some batch norm stays unfolded.

    Returns:
        The folded copy: a ``torch.fx.GraphModule`` when ``model`` could be
        traced, else a deep copy of ``model``.

    Raises:
        ValueError: a batch-norm layer is in training mode (call
            ``model.eval()`` first), or ``strict=True`` and some batch norm
            cannot be folded.
    """
    _check_eval_mode(model)
    plan = _plan(copy.deepcopy(model))
    if plan.unfoldable:
        listing = "\n".join(f"  {name!r}: {why}" for name, why in plan.unfoldable.items())
        count = len(plan.unfoldable)
        if strict:
            raise ValueError(
                f"fold_batchnorm(strict=True) cannot fold {count} batch-norm layer(s):\n"
                f"{listing}\nPut each directly after the Linear/Conv whose output it "
                "normalizes, or pass strict=False to fold the others and keep these."
            )
        warnings.warn(
            f"fold_batchnorm left {count} batch-norm layer(s) unfolded:\n{listing}",
            UserWarning,
            stacklevel=2,
        )
    return _apply(plan)


def unfoldable_batchnorms(model: nn.Module) -> dict[str, str]:
    """The batch-norm layers :func:`fold_batchnorm` would keep, as {qualified name: reason}.

    Names are ``model.named_modules()`` names, in module order; a layer
    registered under several names is listed under its first. Nothing is
    folded and ``model`` is not modified; its mode does not matter.
    """
    return _plan(copy.deepcopy(model)).unfoldable


@dataclass
class _Pair:
    """A (Linear/Conv, batch norm) pair to fold, by qualified name in the planned model."""

    layer: str
    norm: str
    norm_node: fx.Node | None = None  # set when planned on a traced graph


@dataclass
class _Plan:
    """What to fold in ``model`` (a private copy) and what cannot be folded, and why."""

    model: nn.Module
    pairs: list[_Pair] = field(default_factory=list)
    unfoldable: dict[str, str] = field(default_factory=dict)


def _after(norm: nn.Module) -> nn.Module | None:
    """What the norm's forward applies after normalizing (timm's drop and activation), as
    one module that stays where the norm was; None for nothing."""
    facts = norm_facts(norm)
    after = facts.after if facts is not None else ()
    return nn.Sequential(OrderedDict(after)) if after else None


def _norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, module) for name, module in model.named_modules() if is_batch_or_frozen_norm(module)
    ]


def _check_eval_mode(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if is_batch_norm(module) and module.training:
            raise ValueError(
                f"{EVAL_MODE_REQUIRED}: layer {name!r} ({module._get_name()}) is in training mode."
            )


def _norm_problem(norm: nn.Module) -> str | None:
    """Why this batch-norm layer cannot be folded wherever it sits, or None."""
    if mixes_sample_statistics(norm):
        return f"{norm._get_name()} mixes per-sample statistics"
    if not tracks_running_stats(norm):
        return "track_running_stats=False: no running statistics"
    facts = norm_facts(norm)
    return facts.problem if facts is not None and facts.problem else None


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _channel_dim(norm: nn.Module) -> int:
    """The dim the norm reads channels on: 1 (torch's layers, the default) or -1."""
    return getattr(norm, "channel_dim", 1)


def _layer_problem(layer: nn.Module, layer_name: str, norm: nn.Module) -> str | None:
    """Why ``norm`` cannot be folded into ``layer``, its input, or None."""
    if type(layer) not in FOLDABLE_LAYERS:
        if isinstance(layer, FOLDABLE_LAYERS):
            return (
                f"follows {type(layer).__name__}, a subclass of a Linear/Conv whose forward "
                "may use the weight differently; only torch's own classes are folded"
            )
        return f"follows {type(layer).__name__}, not a Linear/Conv"
    if _channel_dim(norm) == -1 and not isinstance(layer, nn.Linear):
        return (
            f"normalizes the last dim (channel_dim=-1) of its input {layer_name!r} "
            f"({type(layer).__name__}), whose channels are dim 1: a fold would scale the "
            "channels, not that dim"
        )
    channels = norm_facts(norm).channels
    if _out_channels(layer) != channels:
        return (
            f"channels do not match: its input {layer_name!r} has {_out_channels(layer)} "
            f"output channels, the norm {channels}"
        )
    return None


# --- planning on a torch.fx graph -------------------------------------------------


class _LayerTracer(fx.Tracer):
    """torch.fx tracer that keeps normlab's layers and the given norms as single calls,
    but traces through a NormAct, whose norm is one of them and whose drop and activation
    must stay after the folded norm.

    The norms are found before tracing: while it traces, torch.fx records every parameter
    a module's attributes are read for, so is_leaf_module must not read them."""

    def __init__(self, norms: list[nn.Module]) -> None:
        super().__init__()
        self.norms = {id(norm) for norm in norms}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            id(m) in self.norms
            or (type(m).__module__.startswith("normlab.layers") and not isinstance(m, NormAct))
            or super().is_leaf_module(m, module_qualified_name)
        )


def _plan(model: nn.Module) -> _Plan:
    tracer = _LayerTracer([module for _, module in _norm_layers(model)])
    try:
        graph = tracer.trace(model)
    except Exception as error:  # tracing fails in many ways (TraceError, TypeError, ...)
        return _plan_sequential(model, error)
    traced = fx.GraphModule(tracer.root, graph, type(model).__name__)
    return _plan_graph(traced, _norm_layers(model))


def _describe(node: fx.Node) -> str:
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "placeholder":
        return f"the model's input {node.target!r}"
    return f"{node.op} {node.target!r}"


def _plan_graph(traced: fx.GraphModule, norms: list[tuple[str, nn.Module]]) -> _Plan:
    nodes = traced.graph.nodes
    calls = Counter(node.target for node in nodes if node.op == "call_module")
    read_attributes = [node.target for node in nodes if node.op == "get_attr"]
    norm_nodes = {node.target: node for node in nodes if node.op == "call_module"}
    plan = _Plan(traced)

    def graph_problem(name: str, norm: nn.Module) -> str | None:
        if calls[name] == 0:
            return "not called as a module by the traced forward (the traced copy drops it)"
        if calls[name] > 1:
            return "module called more than once"
        node = norm_nodes[name]
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            return "called with arguments other than one tensor"
        source = node.args[0]
        if source.op != "call_module":
            return f"follows {_describe(source)}, not a Linear/Conv"
        layer_name = source.target
        problem = _layer_problem(traced.get_submodule(layer_name), layer_name, norm)
        if problem:
            return problem
        if calls[layer_name] > 1:
            return f"its input {layer_name!r} is a module called more than once"
        others = [user.name for user in source.users if user is not node]
        if others:
            return f"its input {layer_name!r} is also used by {', '.join(map(repr, others))}"
        for module_name in (layer_name, name):
            read = [a for a in read_attributes if a.startswith(f"{module_name}.")]
            if read:
                return f"the forward reads {read[0]!r} directly"
        return None

    for name, norm in norms:
        problem = _norm_problem(norm) or graph_problem(name, norm)
        if problem:
            plan.unfoldable[name] = problem
        else:
            node = norm_nodes[name]
            plan.pairs.append(_Pair(node.args[0].target, name, node))
    return plan


# --- planning on nn.Sequential children (the fallback) ------------------------------


def _plan_sequential(model: nn.Module, trace_error: Exception) -> _Plan:
    places: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        places.setdefault(id(module), []).append(name)

    def shared(module: nn.Module) -> str | None:
        names = places[id(module)]
        return ", ".join(map(repr, names)) if len(names) > 1 else None

    plan = _Plan(model)
    pair_problems: dict[int, str] = {}
    for prefix, container in model.named_modules():
        if type(container).forward is not nn.Sequential.forward:
            continue
        children = list(container._modules.items())
        for (layer_key, layer), (norm_key, norm) in itertools.pairwise(children):
            if layer is None or not is_batch_or_frozen_norm(norm) or _norm_problem(norm):
                continue
            layer_name = f"{prefix}.{layer_key}" if prefix else layer_key
            problem = _layer_problem(layer, layer_name, norm)
            if not problem and shared(norm):
                problem = f"module registered at more than one place ({shared(norm)})"
            if not problem and shared(layer):
                problem = f"its input {layer_name!r} is registered at more than one place"
            if problem:
                pair_problems.setdefault(id(norm), problem)
            else:
                norm_name = f"{prefix}.{norm_key}" if prefix else norm_key
                plan.pairs.append(_Pair(layer_name, norm_name))

    folded = {pair.norm for pair in plan.pairs}
    untraced = (
        f"model could not be traced with torch.fx ({type(trace_error).__name__}: "
        f"{_first_line(trace_error)}); only nn.Sequential pairs were folded"
    )
    for name, norm in _norm_layers(model):
        if name not in folded:
            plan.unfoldable[name] = _norm_problem(norm) or pair_problems.get(id(norm)) or untraced
    return plan


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "no message"


# --- folding -------------------------------------------------------------------------


def _apply(plan: _Plan) -> nn.Module:
    model = plan.model
    for pair in plan.pairs:
        layer = model.get_submodule(pair.layer)
        norm = model.get_submodule(pair.norm)
        _fold_into(layer, norm)
        # A Linear's features are the last dim. A channel_dim=-1 norm normalizes exactly
        # that; one on dim 1 matches it only for (N, features), so that fold checks the
        # shape where the norm was.
        guarded = isinstance(layer, nn.Linear) and _channel_dim(norm) == 1
        after = _after(norm)
        if pair.norm_node is None:
            check = FoldedLinearCheck(pair.norm) if guarded else nn.Identity()
            model.set_submodule(pair.norm, check if after is None else nn.Sequential(check, after))
            continue
        replacement = pair.norm_node.args[0]
        if guarded:
            with model.graph.inserting_before(pair.norm_node):
                replacement = model.graph.call_function(
                    features_last_only, (pair.norm_node.args[0], pair.norm)
                )
        if after is not None:  # the node now calls the drop and activation alone
            pair.norm_node.args = (replacement,)
            model.set_submodule(pair.norm, after)
            continue
        pair.norm_node.replace_all_uses_with(replacement)
        model.graph.erase_node(pair.norm_node)
        model.delete_submodule(pair.norm)
    if isinstance(model, fx.GraphModule):
        model.graph.lint()
        model.recompile()
    return model


@torch.no_grad()
def _fold_into(layer: nn.Module, norm: nn.Module) -> None:
    """Replace ``layer``'s weight and bias with those of ``norm(layer(x))`` in eval mode.

    ``layer`` weights: Linear (out, in), Conv (out, in / groups, *k), ConvTranspose
    (in, out / groups, *k). The norm's statistics have shape (out,) or (1,).
    """
    weight = layer.weight
    wide = {"dtype": torch.float64, "device": weight.device}
    channels = _out_channels(layer)
    variance = norm.running_var.to(**wide).expand(channels)
    mean = norm.running_mean.to(**wide).expand(channels)
    gamma = torch.ones(channels, **wide) if norm.weight is None else norm.weight.to(**wide)
    beta = torch.zeros(channels, **wide) if norm.bias is None else norm.bias.to(**wide)
    bias = torch.zeros(channels, **wide) if layer.bias is None else layer.bias.to(**wide)
    scale = gamma / torch.sqrt(variance + norm.eps)

    if isinstance(layer, _TRANSPOSED):
        # (in, out / groups, *k) -> (groups, in / groups, out / groups, *k): input group g
        # feeds output channels g * out / groups ... (g + 1) * out / groups - 1.
        groups = layer.groups
        per_group = weight.to(**wide).unflatten(0, (groups, -1))
        scale_shape = (groups, 1, channels // groups) + (1,) * (weight.ndim - 2)
        new_weight = (per_group * scale.view(scale_shape)).flatten(0, 1)
    else:
        new_weight = weight.to(**wide) * scale.view((-1,) + (1,) * (weight.ndim - 1))
    new_bias = bias * scale + (beta - mean * scale)

    layer.weight = nn.Parameter(new_weight.to(weight.dtype), requires_grad=weight.requires_grad)
    layer.bias = nn.Parameter(new_bias.to(weight.dtype), requires_grad=weight.requires_grad)
