"""Freezing batch norm: fixed statistics and affine, whatever the mode."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from normlab.inference.layers import batch_norm_layers
from normlab.layers import FrozenBatchNorm, NormAct
from normlab.layers.norm_classes import mixes_sample_statistics, norm_facts
from normlab.module_tree import replace_modules


def _selected(model: nn.Module, modules: Iterable[str | nn.Module] | None) -> list[nn.Module]:
    layers = batch_norm_layers(model)
    if modules is None:
        return [layer for _, layer in layers]
    by_name = dict(layers)
    chosen = []
    for item in modules:
        if isinstance(item, nn.Module):
            if not any(item is layer for _, layer in layers):
                raise ValueError(
                    f"the {type(item).__name__} in modules= is not a batch-norm layer of the model."
                )
            chosen.append(item)
        elif item in by_name:
            chosen.append(by_name[item])
        else:
            raise ValueError(
                f"{item!r} is not a batch-norm layer of the model; its batch-norm layers are: "
                f"{', '.join(by_name) or 'none'}."
            )
    return chosen


def freeze(model: nn.Module, *, modules: Iterable[str | nn.Module] | None = None) -> nn.Module:
    """Replace batch-norm layers with :class:`normlab.FrozenBatchNorm`, in place.

    Each frozen layer keeps the original's running statistics, affine and eps
    as buffers: it normalizes with them in every mode, nothing in it is
    updated or receives a gradient, and the model's eval outputs are
    unchanged. A layer whose forward also applies a drop and an activation
    (timm's ``BatchNormAct2d``) becomes a :class:`normlab.layers.NormAct` of
    the frozen layer and the same drop and activation. This is how one
    fine-tunes with small batches. A layer shared by several parents is
    replaced by one frozen layer everywhere.

    Args:
        model: a module with torch's or normlab's batch-norm layers.
        modules: the layers to freeze, by qualified name or as module
            objects; all batch-norm layers when None.

    Returns:
        ``model``, or the frozen layer when ``model`` is itself a batch-norm layer.

    Raises:
        ValueError: an unknown name in ``modules``, or a layer that cannot be
            frozen: ``SwitchableNorm`` (its output mixes per-sample
            statistics) or one without running statistics. Nothing is
            replaced when any selected layer cannot be frozen.
    """
    selected = _selected(model, modules)
    names = {id(layer): name for name, layer in batch_norm_layers(model)}

    def where(layer: nn.Module) -> str:
        return f"{names[id(layer)] or layer._get_name()} ({layer._get_name()})"

    refused = [where(layer) for layer in selected if mixes_sample_statistics(layer)]
    if refused:
        raise ValueError(
            f"cannot freeze {', '.join(refused)}: switchable norm mixes per-sample statistics "
            "into its output, which fixed statistics cannot reproduce. Pass modules= naming "
            "the other batch-norm layers."
        )
    unknown = [f"{where(layer)}: {norm_facts(layer).problem}" for layer in selected]
    unknown = [line for line in unknown if not line.endswith(": ")]
    if unknown:
        raise ValueError(
            f"cannot freeze {'; '.join(unknown)}. Nothing was changed; pass modules= naming "
            "the other batch-norm layers."
        )
    frozen: dict[nn.Module, nn.Module] = {}
    for layer in selected:
        try:
            frozen[layer] = FrozenBatchNorm.from_batchnorm(layer)
        except ValueError as error:
            raise ValueError(f"{names[id(layer)] or 'model'}: {error}") from None
        after = norm_facts(layer).after
        if after:
            frozen[layer] = NormAct(frozen[layer], **dict(after)).train(layer.training)
    return replace_modules(model, frozen)
