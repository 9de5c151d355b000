"""Swapping the normalization layers of any ``nn.Module`` for a registered kind.

:func:`replace_norms` finds every normalization layer of a model (torch's
and normlab's), builds the chosen kind for each with the layer's channel
count and layout, carries over the state that means the same in both, and
puts the new layer at every place the old one is registered. It checks
everything before it changes anything, and reports what it did.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.modules.lazy import LazyModuleMixin

from normlab.inference.layers import is_batch_norm
from normlab.layers import BatchNorm, FrozenBatchNorm, SwitchableNorm
from normlab.modes import eval_mode
from normlab.module_tree import module_paths, replace_modules
from normlab.registry import NormSpec, get_kind, make_norm

#: The layers replace_norms recognizes, with their subclasses: torch's BatchNorm1d/2d/3d,
#: SyncBatchNorm (and the lazy ones), InstanceNorm1d/2d/3d, LayerNorm, GroupNorm, RMSNorm;
#: normlab's BatchNorm (bn, bn-scalar, sync-bn, brn), SwitchableNorm, FrozenBatchNorm and
#: its torch subclasses.
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    _BatchNorm,
    _InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    BatchNorm,
    SwitchableNorm,
    FrozenBatchNorm,
)

LAYOUTS = {1: "(N, C, *)", -1: "(N, *, C)"}

#: Which modules to take: a class (its subclasses too) or a module-path pattern
#: (``fnmatch``: ``"layer1.*"``, ``"*.bn2"``), or a list of them.
Selector = type | str | Iterable[type | str]


@dataclass(frozen=True)
class Replacement:
    """One normalization layer replaced: where, what it was, what it became, what was kept.

    ``paths`` lists every name the layer is registered under (a shared layer
    has several; all now hold the one new layer). ``carried`` names the
    state copied from the old layer; ``reinitialized`` the new layer's state
    that starts fresh; ``dropped`` the old layer's state that the new one has
    no place for; ``why`` says why running statistics were not carried.
    """

    paths: tuple[str, ...]
    old: str
    kind: str
    channels: int
    layout: str
    carried: tuple[str, ...]
    reinitialized: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    why: str = ""

    @property
    def path(self) -> str:
        """The first name the layer is registered under (``""`` for the root)."""
        return self.paths[0]

    def __str__(self) -> str:
        where = " = ".join(path or "<root>" for path in self.paths)
        kept = ", ".join(self.carried) or "nothing"
        text = f"{where}: {self.old}({self.channels}) -> {self.kind}, {self.layout}; kept {kept}"
        if self.reinitialized:
            text += f"; new {', '.join(self.reinitialized)}"
        if self.dropped:
            text += f"; dropped {', '.join(self.dropped)}"
        return text + (f" ({self.why})" if self.why else "")


class Replaced(NamedTuple):
    """What :func:`replace_norms` returns: the model and one :class:`Replacement` per layer."""

    model: nn.Module
    replacements: list[Replacement]

    def summary(self) -> str:
        """One line per replaced layer."""
        return "\n".join(str(r) for r in self.replacements) or "no normalization layer replaced"


def is_norm_layer(module: nn.Module) -> bool:
    """Whether :func:`replace_norms` recognizes ``module`` (see :data:`NORM_LAYERS`)."""
    return isinstance(module, NORM_LAYERS)


def _channels_and_layout(module: nn.Module) -> tuple[int, int]:
    """(C, channel dim) of a recognized layer; ValueError for one over several dims."""
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError("a lazy layer not initialized yet; run one forward pass first")
    if isinstance(module, nn.GroupNorm):
        return module.num_channels, 1
    if isinstance(module, nn.LayerNorm | nn.RMSNorm) and not hasattr(module, "channel_dim"):
        shape = tuple(module.normalized_shape)
        if len(shape) != 1:
            raise ValueError(
                f"normalized_shape {shape} spans {len(shape)} dims; a kind normalizes "
                "one channel dim. exclude= this layer"
            )
        return shape[0], -1
    return module.num_features, getattr(module, "channel_dim", 1)


def _selected(module: nn.Module, paths: list[str], selector: list[type | str]) -> bool:
    return any(
        isinstance(module, item)
        if isinstance(item, type)
        else any(fnmatch.fnmatchcase(p, item) for p in paths)
        for item in selector
    )


def _selector(value: Selector | None, name: str) -> list[type | str] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, Iterable) and not isinstance(value, str) else [value]
    for item in items:
        if not isinstance(item, type | str):
            raise TypeError(
                f"{name}= takes layer classes or module-path patterns; got "
                f"{type(item).__name__} {item!r}."
            )
    return items


def _unmatched(items: list[type | str], layers: dict[nn.Module, list[str]]) -> list[str]:
    return [
        repr(item) if isinstance(item, str) else item.__name__
        for item in items
        if not any(_selected(m, paths, [item]) for m, paths in layers.items())
    ]


def _variance_held(module: nn.Module) -> str:
    """What ``running_var`` holds, as the layer declares it (``running_var_holds``:
    "unbiased", "biased", "sigma2_minus_eps"); torch's layers store the unbiased variance."""
    return getattr(module, "running_var_holds", "unbiased")


def _batch_norm_like(module: nn.Module) -> bool:
    """Keeps batch statistics for eval: torch's and normlab's batch norms, ``switch``'s batch
    term, ``frozen-bn`` (instance norm's running statistics average per-sample ones)."""
    return is_batch_norm(module) or isinstance(module, FrozenBatchNorm)


def _tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def _carry(old: nn.Module, new: nn.Module) -> tuple[list[str], str]:
    """Copy the affine where shapes match and the running statistics between layers that
    keep the same ones; the names copied and why running statistics were not."""
    carried, why = [], ""
    with torch.no_grad():
        for name in ("weight", "bias"):
            source, target = _tensor(old, name), _tensor(new, name)
            if source is not None and target is not None and source.shape == target.shape:
                target.copy_(source)
                if isinstance(source, nn.Parameter) and isinstance(target, nn.Parameter):
                    target.requires_grad_(source.requires_grad)
                carried.append(name)
        stats = [(_tensor(old, n), _tensor(new, n)) for n in ("running_mean", "running_var")]
        both = _batch_norm_like(old) and _batch_norm_like(new)
        if both and all(t is not None for pair in stats for t in pair):
            (old_mean, new_mean), (old_var, new_var) = stats
            frozen = isinstance(old, FrozenBatchNorm) or isinstance(new, FrozenBatchNorm)
            held = _variance_held(old), _variance_held(new)
            if old_mean.shape != new_mean.shape:
                why = (
                    f"running statistics of shape {tuple(old_mean.shape)} do not fit "
                    f"{tuple(new_mean.shape)}"
                )
            elif not frozen and held[0] != held[1]:
                why = f"running_var holds {held[0]!r} variance; the new layer keeps {held[1]!r}"
            else:
                new_mean.copy_(old_mean)
                new_var.copy_(old_var)
                carried += ["running_mean", "running_var"]
                steps = _tensor(old, "num_batches_tracked"), _tensor(new, "num_batches_tracked")
                if steps[0] is not None and steps[1] is not None:
                    steps[1].copy_(steps[0])
                    carried.append("num_batches_tracked")
        elif _tensor(old, "running_mean") is None:
            pass
        elif not _batch_norm_like(old):
            why = f"{type(old).__name__}'s running statistics average per-sample ones"
        else:
            why = "the new layer keeps no batch statistics"
    return carried, why


def _like(module: nn.Module) -> dict[str, Any]:
    """The device and dtype of ``module``'s floating tensors, for building its successor."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    return {"device": tensors[0].device, "dtype": tensors[0].dtype} if tensors else {}


def _builder(kind: NormSpec, options: dict[str, Any]) -> tuple[str, Callable[..., nn.Module]]:
    """The new kind's name for the report and ``build(channels, channel_dim, like)``."""
    if not isinstance(kind, str):
        if not callable(kind):
            raise TypeError(
                f"kind must be a registered kind's name or a callable taking the channel "
                f"count; got {type(kind).__name__}."
            )
        if options:
            raise TypeError(
                f"options ({', '.join(options)}) go to a kind given by name; a factory "
                "takes its own: pass functools.partial(factory, ...) instead."
            )
        name = getattr(kind, "__qualname__", None) or repr(kind)

        def call_factory(channels: int, channel_dim: int, like: dict[str, Any]) -> nn.Module:
            new = kind(channels)
            if not isinstance(new, nn.Module):
                raise TypeError(
                    f"a factory given as kind must return a new torch.nn.Module for the channel "
                    f"count it is called with; {name}({channels}) got {type(new).__name__} "
                    f"{new!r}."
                )
            return new

        return name, call_factory
    entry = get_kind(kind)
    accepted = entry.options()
    for fixed in ("channel_dim", "device", "dtype"):
        if fixed in options:
            raise TypeError(
                f"{fixed} is taken from each replaced layer (its layout, its tensors); "
                f"drop {fixed}= from the options."
            )
    entry.check_options(options)

    def build(channels: int, channel_dim: int, like: dict[str, Any]) -> nn.Module:
        extra = {name: value for name, value in like.items() if name in accepted}
        if channel_dim != 1:
            if "channel_dim" not in accepted:
                raise ValueError(
                    f"{entry.name!r} cannot read channels on the last dim (channel_dim=-1), "
                    "where this layer reads them"
                )
            extra["channel_dim"] = channel_dim
        return make_norm(entry.name, channels, **options, **extra)

    return entry.name, build


def _refuse_torchscript(model: nn.Module) -> None:
    """TypeError for a TorchScript module holding normalization layers: its compiled forward
    would keep calling the old layers whatever replace_norms registers."""
    for path, module in model.named_modules():
        if not isinstance(module, torch.jit.ScriptModule):
            continue
        names = {getattr(m, "original_name", "") for m in module.modules()}
        norms = sorted(n for n in names if "norm" in n.lower())
        if norms:
            where = f"TorchScript module at {path}" if path else "a TorchScript model"
            raise TypeError(
                f"replace_norms cannot change {where} (holding {', '.join(norms)}): its "
                "compiled forward keeps calling the layers it was scripted with. Swap the norms "
                "of the Python model before torch.jit.script."
            )


_HOOKS = (
    ("forward", "_forward_hooks"),
    ("forward pre", "_forward_pre_hooks"),
    ("backward", "_backward_hooks"),
    ("backward pre", "_backward_pre_hooks"),
)


def _hooks_problem(module: nn.Module) -> str | None:
    """Why hooks registered on ``module`` forbid replacing it, or None."""
    kinds = [label for label, attribute in _HOOKS if getattr(module, attribute, None)]
    if not kinds:
        return None
    return (
        f"has {' and '.join(kinds)} hooks, which would not fire on the new layer; remove "
        "them (handle.remove()), swap, then register them on the new layer"
    )


def _plain_references(model: nn.Module, targets: set[nn.Module]) -> dict[nn.Module, list[str]]:
    """Where ``targets`` are also held outside the module tree: in lists, tuples, sets or
    dicts kept as plain attributes of the model's modules (``"blocks.0.steps[1]"``)."""
    found: dict[nn.Module, list[str]] = {}

    def visit(value: Any, where: str, depth: int) -> None:
        if isinstance(value, nn.Module):
            if value in targets:
                found.setdefault(value, []).append(where)
            return
        if depth == 0:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{where}[{key!r}]", depth - 1)
        elif isinstance(value, list | tuple | set | frozenset):
            for index, item in enumerate(value):
                visit(item, f"{where}[{index}]", depth - 1)

    for path, module in model.named_modules():
        for attribute, value in vars(module).items():
            if attribute.startswith("_"):
                continue
            visit(value, f"{path}.{attribute}" if path else attribute, 3)
    return found


def _check_forward(
    model: nn.Module,
    layers: dict[nn.Module, Replacement],
    example_input: Any,
    replaced: dict[nn.Module, str] | None = None,
) -> None:
    """One eval forward pass of ``model``; each layer in ``layers`` must run and keep the
    shape of its input, and no module of ``replaced`` (old layer -> its description) may run.
    ValueError names the first that does not."""
    current: list[nn.Module] = []
    wrong: list[str] = []
    stale: list[str] = []

    def enter(module: nn.Module, args: tuple) -> None:
        current.append(module)

    def leave(module: nn.Module, args: tuple, output: Any) -> None:
        current.pop()
        shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != shape:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            wrong.append(f"{layers[module].path or '<root>'}: input {shape} gave {got}")

    def still_used(module: nn.Module, args: tuple) -> None:
        if (replaced or {})[module] not in stale:
            stale.append(replaced[module])

    hooks = [m.register_forward_pre_hook(enter) for m in layers]
    hooks += [m.register_forward_hook(leave) for m in layers]
    hooks += [m.register_forward_pre_hook(still_used) for m in replaced or {}]
    try:
        with ExitStack() as modes, torch.no_grad():
            for module in [model, *(replaced or {})]:
                modes.enter_context(eval_mode(module))
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            model(*args)
    except Exception as error:  # any failure of the user's forward pass is reported
        where = ""
        if current:
            failed = layers[current[-1]]
            where = f" in {failed.path or '<root>'} ({failed.old} replaced by {failed.kind})"
        raise ValueError(
            f"the model with its norms replaced failed on example_input{where}: "
            f"{type(error).__name__}: {error}. Nothing was changed."
        ) from error
    finally:
        for hook in hooks:
            hook.remove()
    if stale:
        raise ValueError(
            f"{'; '.join(stale)} still ran on example_input though replaced: the model "
            "reaches it through a reference replace_norms cannot see (a closure, a global, "
            "a plain attribute). Register it as a submodule, or exclude= it. "
            "Nothing was changed."
        )
    if wrong:
        raise ValueError(
            "replaced layers changed the shape of their input: "
            f"{'; '.join(wrong)}. Nothing was changed."
        )


def replace_norms(
    model: nn.Module,
    kind: NormSpec,
    /,
    *,
    include: Selector | None = None,
    exclude: Selector | None = None,
    example_input: Any = None,
    **options: Any,
) -> Replaced:
    """Replace every normalization layer of ``model`` with the kind ``kind``, in place.

    Recognized layers (and their subclasses): torch's ``BatchNorm1d/2d/3d``,
    ``SyncBatchNorm``, ``InstanceNorm1d/2d/3d``, ``LayerNorm``, ``GroupNorm``,
    ``RMSNorm``; normlab's ``BatchNorm`` family, ``SwitchableNorm``,
    ``FrozenBatchNorm`` and its torch-based layers.

    Each new layer gets the old one's channel count C and layout: channels on
    dim 1 for the batch, group and instance norms (and normlab's layers with
    ``channel_dim=1``), on the last dim for torch's ``LayerNorm(C)`` and
    ``RMSNorm(C)``, which normalize the last dim of (N, \\*, C) input (tokens,
    NHWC); the new layer then reads the last dim (``channel_dim=-1``). Its
    device, dtype and train/eval mode are the old layer's; its options
    (``eps``, ``momentum``, ...) are the kind's defaults or ``options``, never
    the old layer's. State carried over: ``weight`` and ``bias`` where both
    layers have them with the same shape; ``running_mean``, ``running_var``
    (and ``num_batches_tracked``) between layers that keep running statistics
    of the same shape and meaning (any into ``frozen-bn``). Everything else
    starts fresh and the report says so.

    Args:
        model: any module; changed in place.
        kind: a registered kind's name or alias, or a callable taking the
            channel count and returning the new layer (then no ``options``;
            it must read the layout itself: check with ``example_input``).
        include: only these layers: classes, or ``fnmatch`` patterns of module
            paths (``"layer1.*"``, ``"*.downsample.1"``), or a list of them.
        exclude: not these layers (same forms); applied after ``include``.
        example_input: when given, ``model(example_input)`` (a tuple is
            unpacked) runs once in eval mode without gradients after the
            swap; a replaced layer that fails or changes its input's shape
            undoes the whole swap and raises.
        **options: the kind's options, as ``make_norm`` takes them.

    Returns:
        ``Replaced(model, replacements)``: the model (the new layer when
        ``model`` is itself a normalization layer, as
        ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` returns) and one
        :class:`Replacement` per layer replaced (a shared layer once).

    Raises:
        ValueError: unknown kind; an ``include``/``exclude`` item that matches
            no normalization layer; layers the kind cannot replace (each named
            with its path and the reason: a multi-dim ``normalized_shape``,
            channels on the last dim for a kind that cannot read them, options
            that do not fit its channel count); a failure on ``example_input``.
            Nothing is changed.
        TypeError: an option the kind does not take, or a bad ``include``/``exclude``.
    """
    _refuse_torchscript(model)
    name, build = _builder(kind, options)
    include_items, exclude_items = _selector(include, "include"), _selector(exclude, "exclude")
    layers = {m: paths for m, paths in module_paths(model).items() if is_norm_layer(m)}
    for items, label in ((include_items, "include"), (exclude_items, "exclude")):
        unmatched = _unmatched(items or [], layers)
        if unmatched:
            where = "; ".join(f"{p[0] or '<root>'} ({type(m).__name__})" for m, p in layers.items())
            raise ValueError(
                f"{label}= {', '.join(unmatched)} matches no normalization layer of the model; "
                f"its normalization layers are: {where or 'none'}."
            )
    chosen = [
        (m, paths)
        for m, paths in layers.items()
        if (include_items is None or _selected(m, paths, include_items))
        and not (exclude_items and _selected(m, paths, exclude_items))
    ]
    all_paths = module_paths(model)
    held = _plain_references(model, {m for m, _ in chosen})
    new_layers: dict[nn.Module, nn.Module] = {}
    built_for: dict[nn.Module, str] = {}
    reports: dict[nn.Module, Replacement] = {}
    refused = []
    for old, paths in chosen:
        where = f"{paths[0] or '<root>'} ({type(old).__name__})"
        problem = _hooks_problem(old)
        if old in held:
            problem = (
                f"also held at {', '.join(held[old])}, which replace_norms cannot update and "
                "the forward may still call; hold it in an nn.ModuleList or nn.ModuleDict, "
                "or exclude= it"
            )
        if problem:
            refused.append(f"{where}: {problem}")
            continue
        try:
            channels, channel_dim = _channels_and_layout(old)
            new = build(channels, channel_dim, _like(old))
        except ValueError as error:
            refused.append(f"{where}: {error}")
            continue
        if new in built_for or new in all_paths:
            first = built_for[new] if new in built_for else all_paths[new][0] or "<root>"
            why = "the same module as for" if new in built_for else "a module of the model at"
            refused.append(
                f"{where}: the factory returned {why} {first}; each layer needs a new module "
                "(a cached factory would tie the layers together)"
            )
            continue
        built_for[new] = paths[0] or "<root>"
        new.train(old.training)
        carried, why = _carry(old, new)
        fresh = [n for n, _ in [*new.named_parameters(), *new.named_buffers()] if n not in carried]
        lost = [n for n, _ in [*old.named_parameters(), *old.named_buffers()] if n not in carried]
        new_layers[old] = new
        reports[new] = Replacement(
            tuple(paths),
            type(old).__name__,
            name,
            channels,
            LAYOUTS[channel_dim],
            tuple(carried),
            tuple(fresh),
            tuple(lost),
            why,
        )
    if refused:
        raise ValueError(
            f"cannot replace these layers with {name!r}: {'; '.join(refused)}. "
            "Nothing was changed; exclude= them or choose another kind."
        )
    swapped = replace_modules(model, new_layers)
    if example_input is not None:
        old_layers = {
            old: f"{paths[0] or '<root>'} ({type(old).__name__})" for old, paths in chosen
        }
        try:
            _check_forward(swapped, reports, example_input, old_layers)
        except ValueError:
            _put_back(swapped, [(old, paths) for old, paths in chosen if old in new_layers])
            raise
    return Replaced(swapped, list(reports.values()))


def _put_back(model: nn.Module, places: list[tuple[nn.Module, list[str]]]) -> None:
    """Register each old layer again at each of its paths (the root needs nothing: the
    caller still holds the old model)."""
    for old, paths in places:
        for path in paths:
            if path:
                parent_path, _, name = path.rpartition(".")
                setattr(model.get_submodule(parent_path), name, old)
