"""Swapping the normalization layers of any ``nn.Module`` for a registered kind.

:func:`replace_norms` finds every normalization layer of a model (normlab's,
torch's, timm's, torchvision's and Hugging Face's: see
:mod:`normlab.layers.norm_classes`), builds the chosen kind for each with the
layer's channel count, layout and settings, carries over the state that means
the same in both, keeps whatever else the old layer's forward did (timm's drop
and activation), and puts the new layer at every place the old one is
registered. It checks everything before it changes anything, and reports what
it did, what changed and what it skipped.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from normlab.layers.norm_act import NormAct
from normlab.layers.norm_classes import NormFacts, is_norm_layer, norm_facts
from normlab.module_tree import module_paths, replace_modules
from normlab.registry import NormSpec, get_kind, make_norm
from normlab.swap_checks import check_forward, hooks_problem, plain_references, refuse_torchscript

__all__ = ["Replaced", "Replacement", "is_norm_layer", "replace_norms"]

LAYOUTS = {1: "(N, C, *)", -1: "(N, *, C)"}

#: Which modules to take: a class (its subclasses too) or a module-path pattern
#: (``fnmatch``: ``"layer1.*"``, ``"*.bn2"``), or a list of them.
Selector = type | str | Iterable[type | str]


@dataclass(frozen=True)
class Replacement:
    """One normalization layer replaced: where, what it was, what it became, what was kept.

    ``paths`` lists every name the layer is registered under (a shared layer
    has several; all now hold the one new layer); ``old`` names the old layer's
    class as its repr does (``BatchNorm`` for normlab's in torch's configuration
    too). ``carried`` names the state copied from the old layer;
    ``reinitialized`` the new layer's state that starts fresh; ``dropped`` the
    old layer's state that the new one has no place for; ``why`` says why
    running statistics were not carried.
    ``changed`` lists each setting whose value differs between the two
    (``"eps 1e-12 -> 1e-05"``); ``kept`` what the old forward also applied and
    the new layer keeps (``"act SiLU"``: the new layer is then a
    :class:`normlab.layers.NormAct`).
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
    changed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()

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
        if self.changed:
            text += f"; changed {', '.join(self.changed)}"
        if self.kept:
            text += f"; then {', '.join(self.kept)}, kept"
        return text + (f" ({self.why})" if self.why else "")


@dataclass(frozen=True)
class Replaced:
    """What :func:`replace_norms` returns: the model, one :class:`Replacement` per layer, and
    each normalization layer left as it was, with the reason (``"path (Class): why"``).

    Unpacks as ``model, replacements = replace_norms(...)``.
    """

    model: nn.Module
    replacements: list[Replacement]
    skipped: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.replacements))

    def summary(self) -> str:
        """One line per replaced layer, then one per skipped layer."""
        lines = [str(r) for r in self.replacements] or ["no normalization layer replaced"]
        return "\n".join(lines + [f"skipped {line}" for line in self.skipped])


def _where(module: nn.Module, paths: list[str]) -> str:
    return f"{paths[0] or '<root>'} ({module._get_name()})"


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


def _tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def _keeps_batch_statistics(facts: NormFacts) -> bool:
    """Running statistics of the batch: batch norms (switch's batch term too) and frozen
    ones; instance norm's running statistics average per-sample ones."""
    return facts.statistics in ("batch", "fixed") and facts.has_running_stats


def _carry(
    old: nn.Module, new: nn.Module, old_facts: NormFacts, new_facts: NormFacts
) -> tuple[list[str], str]:
    """Copy the affine where shapes match (``weight_offset + weight`` where the old forward
    scales by that) and the running statistics between layers that keep the same ones; the
    names copied and why running statistics were not."""
    carried, why = [], ""
    with torch.no_grad():
        for name in ("weight", "bias"):
            source, target = _tensor(old, name), _tensor(new, name)
            if source is not None and target is not None and source.shape == target.shape:
                offset = old_facts.weight_offset if name == "weight" else 0.0
                target.copy_(source + offset if offset else source)
                if isinstance(source, nn.Parameter) and isinstance(target, nn.Parameter):
                    target.requires_grad_(source.requires_grad)
                carried.append(f"weight (as {offset:g} + weight)" if offset else name)
        stats = [(_tensor(old, n), _tensor(new, n)) for n in ("running_mean", "running_var")]
        both = _keeps_batch_statistics(old_facts) and _keeps_batch_statistics(new_facts)
        if both and all(t is not None for pair in stats for t in pair):
            (old_mean, new_mean), (old_var, new_var) = stats
            frozen = "fixed" in (old_facts.statistics, new_facts.statistics)
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
        elif not old_facts.has_running_stats:
            pass
        elif not _keeps_batch_statistics(old_facts):
            why = f"{old._get_name()}'s running statistics average per-sample ones"
        else:
            why = "the new layer keeps no batch statistics"
    return carried, why


def _settings(old: nn.Module, facts: NormFacts, options: dict[str, Any]) -> dict[str, Any]:
    """The old layer's settings for a new layer of the kind given by name, as options:
    ``eps``; for a batch norm also ``momentum`` (turned into the new convention's sense)
    and ``track_running_stats``. Options the caller gave win."""
    settings: dict[str, Any] = {}
    if facts.eps is not None:
        settings["eps"] = facts.eps
    if facts.statistics == "batch" and hasattr(old, "momentum"):
        momentum = facts.momentum
        conventions = getattr(old, "convention", "torch"), options.get("convention", "torch")
        if conventions[0] == conventions[1]:
            settings["momentum"] = momentum
        elif momentum is not None:
            settings["momentum"] = 1.0 - momentum
        if isinstance(getattr(old, "track_running_stats", None), bool):
            settings["track_running_stats"] = old.track_running_stats
    return {name: value for name, value in settings.items() if name not in options}


def _changed(old: NormFacts, new: NormFacts) -> list[str]:
    """Each setting whose value differs between the old and the new layer."""
    changes = []
    if old.eps != new.eps:
        changes.append(f"eps {old.eps:g} -> {new.eps:g}" if None not in (old.eps, new.eps) else
                       f"eps {old.eps} -> {new.eps}")  # fmt: skip
    both = old.statistics == new.statistics == "batch"
    if both and old.has_running_stats and new.has_running_stats and old.momentum != new.momentum:
        changes.append(f"momentum {old.momentum} -> {new.momentum}")
    if old.has_running_stats != new.has_running_stats and both:
        changes.append(f"track_running_stats {old.has_running_stats} -> {new.has_running_stats}")
    return changes


def _like(module: nn.Module) -> dict[str, Any]:
    """The device and dtype of ``module``'s floating tensors, for building its successor."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    return {"device": tensors[0].device, "dtype": tensors[0].dtype} if tensors else {}


Builder = Callable[[int, int, dict[str, Any], dict[str, Any]], nn.Module]


def _builder(kind: NormSpec, options: dict[str, Any]) -> tuple[str, Builder]:
    """The new kind's name for the report and ``build(channels, channel_dim, like, settings)``
    (``settings``: the old layer's, as :func:`_settings` gives them; a factory takes none)."""
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

        def call_factory(channels: int, channel_dim: int, like: dict, settings: dict) -> nn.Module:
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

    def build(channels: int, channel_dim: int, like: dict, settings: dict) -> nn.Module:
        extra = {name: value for name, value in like.items() if name in accepted}
        carried = {
            name: value
            for name, value in settings.items()
            if name in accepted and (name == "eps" or entry.running_stats is not None)
        }
        if channel_dim != 1:
            if "channel_dim" not in accepted:
                raise ValueError(
                    f"{entry.name!r} cannot read channels on the last dim (channel_dim=-1), "
                    "where this layer reads them"
                )
            extra["channel_dim"] = channel_dim
        try:
            return make_norm(entry.name, channels, **options, **carried, **extra)
        except ValueError as error:
            if not carried:
                raise
            given = ", ".join(f"{name}={value!r}" for name, value in carried.items())
            raise ValueError(
                f"{error} (carried from the old layer: {given}; pass your own)"
            ) from None

    return entry.name, build


def _skipped_norm_like(model: nn.Module, recognized: set[nn.Module]) -> list[str]:
    """Modules whose class name says normalization that normlab does not recognize."""
    return [
        f"{_where(module, paths)}: its class is not one normlab knows (see the README's table "
        "of recognized classes), so what it computes is unknown; swap it with a factory of "
        "your own, or leave it"
        for module, paths in module_paths(model).items()
        if module not in recognized
        and "norm" in type(module).__name__.lower()
        and not isinstance(module, NormAct)
        and any(True for _ in module.parameters(recurse=False))
    ]


def replace_norms(
    model: nn.Module,
    kind: NormSpec,
    /,
    *,
    include: Selector | None = None,
    exclude: Selector | None = None,
    example_input: Any = None,
    identity_statistics: bool = False,
    **options: Any,
) -> Replaced:
    """Replace every normalization layer of ``model`` with the kind ``kind``, in place.

    Recognized layers: torch's ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``,
    ``InstanceNorm1d/2d/3d``, ``LayerNorm``, ``GroupNorm``, ``RMSNorm`` (and
    subclasses that keep their forward); normlab's layers; timm's and
    torchvision's norm (+ activation) classes; and the layer and RMS norms
    that Hugging Face's and other model code write for themselves (Llama's,
    T5's, Gemma's, ConvNeXt's, Segment Anything's ``LayerNorm2d``), known by
    what their forward computes (see :mod:`normlab.layers.norm_classes` and
    the README's table). A subclass whose own forward normlab does not know
    is refused by name.

    Each new layer gets the old one's channel count C and layout: channels on
    dim 1 for the batch, group and instance norms, ``LayerNorm2d`` and
    ``RmsNorm2d``, the channels-first layer norms known by their forward
    (and normlab's layers with ``channel_dim=1``), on the last
    dim for ``LayerNorm(C)`` and the RMS norms over (N, \\*, C) input (tokens,
    NHWC); the new layer then reads the last dim (``channel_dim=-1``). Its
    device, dtype and train/eval mode are the old layer's; so are its ``eps``
    and, from a batch norm into a kind with running statistics, its
    ``momentum`` (in the new convention's sense) and ``track_running_stats``,
    where the kind takes them and ``options`` do not set them. Every setting
    that still differs is listed in the report. State carried over:
    ``weight`` and ``bias`` where both layers have them with the same shape
    (Gemma's and Nemotron's ``1 + weight`` as such); ``running_mean``, ``running_var`` (and
    ``num_batches_tracked``) between layers that keep running statistics of
    the same shape and meaning (any into ``frozen-bn``). Everything else
    starts fresh and the report says so. A layer whose forward also applies a
    drop or an activation (timm's ``BatchNormAct2d``, ``GroupNormAct``, ...)
    becomes a :class:`normlab.layers.NormAct`: the new layer, then the same
    drop and activation modules.

    Args:
        model: any module; changed in place.
        kind: a registered kind's name or alias, or a callable taking the
            channel count and returning a new layer each call (then no
            ``options``; it must read the layout itself: check with
            ``example_input``).
        include: only these layers: classes, or ``fnmatch`` patterns of module
            paths (``"layer1.*"``, ``"*.downsample.1"``), or a list of them.
        exclude: not these layers (same forms); applied after ``include``.
        example_input: when given, ``model(example_input)`` (a tuple is
            unpacked) runs once in eval mode without gradients after the
            swap; a replaced layer that fails or changes its input's shape, or
            an old layer that still runs, undoes the whole swap and raises.
        identity_statistics: allow a kind with fixed statistics (``frozen-bn``)
            to replace a layer that has no batch statistics to give it; it then
            normalizes with mean 0 and variance 1, i.e. only applies the affine.
        **options: the kind's options, as ``make_norm`` takes them.

    Returns:
        ``Replaced(model, replacements, skipped)``: the model (the new layer
        when ``model`` is itself a normalization layer, as
        ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` returns), one
        :class:`Replacement` per layer replaced (a shared layer once), and the
        layers left as they were, each with the reason.

    Raises:
        ValueError: unknown kind; an ``include``/``exclude`` item that matches
            no normalization layer; layers the kind cannot replace (each named
            with its path and the reason: a multi-dim ``normalized_shape``, a
            forward normlab does not know, channels on the last dim for a kind
            that cannot read them, options that do not fit, hooks on the layer,
            the layer held in a plain list, a factory returning one module
            twice or a module of the model, fixed statistics with none to fix);
            a failure on ``example_input``. Nothing is changed.
        TypeError: an option the kind does not take, a bad ``include``/``exclude``,
            a factory that returns no module, or a TorchScript model.
    """
    refuse_torchscript(model)
    name, build = _builder(kind, options)
    include_items, exclude_items = _selector(include, "include"), _selector(exclude, "exclude")
    all_paths = module_paths(model)
    layers = {m: paths for m, paths in all_paths.items() if is_norm_layer(m)}
    for items, label in ((include_items, "include"), (exclude_items, "exclude")):
        unmatched = _unmatched(items or [], layers)
        if unmatched:
            where = "; ".join(_where(m, p) for m, p in layers.items())
            raise ValueError(
                f"{label}= {', '.join(unmatched)} matches no normalization layer of the model; "
                f"its normalization layers are: {where or 'none'}."
            )
    chosen, skipped = [], []
    for m, paths in layers.items():
        if include_items is not None and not _selected(m, paths, include_items):
            skipped.append(f"{_where(m, paths)}: not matched by include=")
        elif exclude_items and _selected(m, paths, exclude_items):
            skipped.append(f"{_where(m, paths)}: matched by exclude=")
        else:
            chosen.append((m, paths))
    skipped += _skipped_norm_like(model, set(layers))
    held = plain_references(model, {m for m, _ in chosen})
    new_layers: dict[nn.Module, nn.Module] = {}
    built_for: dict[nn.Module, str] = {}
    reports: dict[nn.Module, Replacement] = {}
    refused = []
    for old, paths in chosen:
        where = _where(old, paths)
        facts = norm_facts(old)
        problem = facts.problem or hooks_problem(old)
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
            new = build(
                facts.channels, facts.channel_dim, _like(old), _settings(old, facts, options)
            )
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
        new_facts = norm_facts(new)
        if new_facts is None:  # a factory's own module: nothing more is known about it
            new_facts = NormFacts("", "layer norm", facts.channels, facts.channel_dim, None)
        carried, why = _carry(old, new, facts, new_facts)
        if new_facts.statistics == "fixed" and "running_mean" not in carried:
            if not identity_statistics:
                refused.append(
                    f"{where}: {name!r} keeps fixed statistics and this layer has none to "
                    f"give it ({why or 'it keeps no running statistics'}), so it would normalize "
                    "with mean 0 and variance 1, i.e. not at all. Swap to 'bn' and train or "
                    "normlab.inference.recalibrate the model first, then freeze it; or pass "
                    "identity_statistics=True"
                )
                continue
            why = why or "no batch statistics to carry: identity statistics"
        fresh = [n for n, _ in [*new.named_parameters(), *new.named_buffers()]]
        lost = [n for n, _ in [*old.named_parameters(), *old.named_buffers()]]
        named = [c.split(" ")[0] for c in carried]
        if facts.after:
            new = NormAct(new, **dict(facts.after))
            new.train(old.training)
        new_layers[old] = new
        reports[new] = Replacement(
            tuple(paths),
            old._get_name(),
            name,
            facts.channels,
            LAYOUTS[facts.channel_dim],
            tuple(carried),
            tuple(n for n in fresh if n not in named),
            tuple(n for n in lost if n not in named and n.split(".")[0] not in ("act", "drop")),
            why,
            tuple(_changed(facts, new_facts)) if new_facts.library else (),
            tuple(f"{attribute} {type(m).__name__}" for attribute, m in facts.after),
        )
    if refused:
        raise ValueError(
            f"cannot replace these layers with {name!r}: {'; '.join(refused)}. "
            "Nothing was changed; exclude= them or choose another kind."
        )
    swapped = replace_modules(model, new_layers)
    if example_input is not None:
        described = {
            new: (r.path or "<root>", f"{r.old} replaced by {r.kind}") for new, r in reports.items()
        }
        old_layers = {old: _where(old, paths) for old, paths in chosen}
        try:
            check_forward(swapped, described, example_input, old_layers)
        except ValueError:
            _put_back(swapped, chosen)
            raise
    return Replaced(swapped, list(reports.values()), tuple(skipped))


def _put_back(model: nn.Module, places: list[tuple[nn.Module, list[str]]]) -> None:
    """Register each old layer again at each of its paths (the root needs nothing: the
    caller still holds the old model)."""
    for old, paths in places:
        for path in paths:
            if path:
                parent_path, _, name = path.rpartition(".")
                setattr(model.get_submodule(parent_path), name, old)
