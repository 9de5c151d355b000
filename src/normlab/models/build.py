"""``build_model``: a lab model, or the user's own factory, by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from normlab.models.common import check_init, initialize
from normlab.models.factory import (
    ModelFactoryError,
    NormFactory,
    build_factory_model,
    check_factory_spec,
    is_factory_spec,
)
from normlab.models.registry import (
    LAB_MODELS,
    ModelInfo,
    is_model,
    list_models,
    model_info,
    unknown_model,
)
from normlab.registry import NormSpec, get_kind, norm_factory

MODELS = LAB_MODELS
"""The lab's own models (see normlab.models.registry; :func:`list_models` adds the user's)."""
DEFAULT_HIDDEN = {name: model_info(name).default_hidden for name in LAB_MODELS}


def check_model_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a registered model or reads MODULE:FACTORY.

    Nothing is imported: a factory's module is imported when the model is built.
    """
    if is_factory_spec(name):
        check_factory_spec(name)
    elif not is_model(name):
        raise ValueError(unknown_model(name))


def _repeat_width(hidden: tuple[int, ...], depth: int, *, given: bool) -> tuple[int, ...]:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer; got {depth!r}.")
    if given and len(hidden) > 1:
        raise ValueError(
            f"depth repeats one width, but {len(hidden)} hidden widths were given "
            f"({list(hidden)}); give hidden a single width with depth."
        )
    return (hidden[0],) * depth


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: NormSpec = "none",
    placement: str = "before",
    hidden: Sequence[int] | None = None,
    cell: str = "lstm",
    depth: int | None = None,
    dropout: float = 0.0,
    init: str = "default",
    init_scale: float = 1.0,
) -> nn.Module:
    """The model ``name`` (registered, see normlab.models.registry, or the factory
    ``MODULE:FACTORY``) for (N, *input_shape) images with ``num_classes`` classes.

    ``norm`` is a kind's name (the builder gets it as a :class:`NormFactory`) or a
    callable ``C -> module`` (see :func:`normlab.registry.norm_factory`; the transformer
    calls it with ``channel_dim=-1``). The other options apply to the models that take
    them (``model_info(name).options``; a factory takes none), and are refused for the
    others unless at their defaults:

    ``hidden`` defaults to the model's widths (``model_info(name).default_hidden``): the
    layer widths of ``mlp``, the channels of ``cnn``, the recurrent sizes of ``rnn``, the
    stage widths of ``resnet20`` and the block widths of ``transformer`` (one per block,
    all equal). ``cell`` is ``rnn``'s. ``depth`` makes that many hidden layers (cnn
    stages, rnn layers, transformer blocks) of one width: ``hidden``'s single width, or
    the first default one. ``dropout`` is the probability of the ``nn.Dropout`` after
    each hidden block of mlp, cnn and rnn (0: none). ``init`` and ``init_scale``
    re-initialize the linear and convolution weights (see
    :func:`normlab.models.common.initialize`).
    """
    check_model_name(name)
    factory = is_factory_spec(name)
    info = _factory_info(name) if factory else model_info(name)
    given = [
        option
        for option, unset in (
            ("placement", placement == "before"),
            ("hidden", hidden is None),
            ("cell", cell == "lstm"),
            ("depth", depth is None),
            ("dropout", dropout == 0),
            ("init", init == "default"),
            ("init_scale", init_scale == 1.0),
        )
        if not unset
    ]
    _refuse_options_not_taken(name, info, given, factory=factory)
    options: dict[str, Any] = {"placement": placement, "cell": cell, "dropout": dropout}
    if "hidden" in info.options:
        options["hidden"] = _widths(info, hidden, depth)
    if "init" in info.options or "init_scale" in info.options:
        check_init(init, init_scale)
    # a kind's name as a NormFactory; a callable as it is; anything else refused
    builder_norm = NormFactory(get_kind(norm).name) if isinstance(norm, str) else norm_factory(norm)
    model = info.builder(
        norm=builder_norm,
        num_classes=num_classes,
        input_shape=tuple(input_shape),
        **{option: options[option] for option in info.passed_options},
    )
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model {name!r}: its builder {info.builder!r} returned a "
            f"{type(model).__name__}; a builder must return a torch.nn.Module."
        )
    return initialize(model, init, init_scale) if {"init", "init_scale"} & set(given) else model


def _factory_info(spec: str) -> ModelInfo:
    """The facts of the factory ``MODULE:FACTORY``: it takes none of the model options."""

    def build(norm: NormSpec, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        if not isinstance(norm, NormFactory):
            raise ModelFactoryError(
                f"your factory {spec} gets the norm as a NormFactory of a kind's name; "
                f"got a {type(norm).__name__}. Pass the kind's name or a NormFactory."
            )
        return build_factory_model(spec, norm, num_classes, input_shape)

    return ModelInfo(name="factory", builder=build)  # named by its spec where it is refused


def _refuse_options_not_taken(
    name: str, info: ModelInfo, given: list[str], *, factory: bool
) -> None:
    """Refuse the ``given`` options (those not at their defaults) that model ``name`` does
    not take."""
    not_taken = [option for option in given if option not in info.options]
    if not not_taken:
        return
    if factory:
        raise ModelFactoryError(
            f"{', '.join(not_taken)} configure the lab's own models; your factory "
            f"{name} decides its own layers and where its norms go. Drop them."
        )
    option = not_taken[0]
    takers = [name for name in list_models() if option in model_info(name).options]
    models = f"the {takers[0]} model" if len(takers) == 1 else f"the models {_listed(takers)}"
    takes = f"takes {_listed(info.options)}" if info.options else "takes none of them"
    raise ValueError(
        f"{option} applies to {models} only; got model {name!r}, which {takes}. Drop {option}."
    )


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _widths(info: ModelInfo, hidden: Sequence[int] | None, depth: int | None) -> tuple[int, ...]:
    """The hidden widths ``info``'s builder gets: ``hidden`` or its defaults, repeated
    ``depth`` times when given."""
    assert info.default_hidden is not None  # ModelInfo checks it for a model taking hidden
    widths = tuple(info.default_hidden if hidden is None else hidden)
    if not widths or min(widths) < 1:
        raise ValueError(f"hidden widths must be positive integers; got {list(widths)}.")
    if depth is not None:
        widths = _repeat_width(widths, depth, given=hidden is not None)
    return widths


def check_logits(name: str, logits: object, batch: int, num_classes: int) -> None:
    """Raise ValueError unless model ``name`` returned (batch, num_classes) floating logits."""
    expected = f"a ({batch}, {num_classes}) tensor of logits, (N, num_classes)"
    if not isinstance(logits, torch.Tensor):
        raise ValueError(
            f"model {name!r} returned a {type(logits).__name__} for a batch of {batch} "
            f"images; the lab trains on {expected}. Return the logits tensor itself."
        )
    if tuple(logits.shape) != (batch, num_classes) or not logits.is_floating_point():
        raise ValueError(
            f"model {name!r} returned a {logits.dtype} tensor of shape "
            f"{tuple(logits.shape)} for a batch of {batch} images; the lab trains on "
            f"{expected}."
        )
