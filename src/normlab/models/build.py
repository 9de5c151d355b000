"""``build_model``: a lab model, or the user's own factory, by name."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from normlab._checks import did_you_mean
from normlab.models.common import check_init, initialize
from normlab.models.factory import (
    ModelFactoryError,
    NormFactory,
    build_factory_model,
    check_factory_spec,
    is_factory_spec,
)
from normlab.models.feedforward import cnn, mlp
from normlab.models.recurrent import RowRNN
from normlab.models.resnet import resnet20
from normlab.models.vit import transformer
from normlab.registry import NormSpec

MODELS = ("mlp", "cnn", "rnn", "resnet20", "transformer")
DEFAULT_HIDDEN = {
    "mlp": (128, 64),
    "cnn": (32, 64),
    "rnn": (128, 128),
    "resnet20": (16, 32, 64),
    "transformer": (64, 64, 64, 64),
}


def check_model_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a lab model or reads MODULE:FACTORY.

    Nothing is imported: a factory's module is imported when the model is built.
    """
    if is_factory_spec(name):
        check_factory_spec(name)
    elif name not in MODELS:
        hint = did_you_mean(name, {model: model for model in MODELS})
        raise ValueError(
            f"unknown model {name!r}.{hint} Choose one of {', '.join(MODELS)}, or your own "
            "as MODULE:FACTORY (see normlab.models.factory)."
        )


def _repeat_width(hidden: tuple[int, ...], depth: int, *, given: bool) -> tuple[int, ...]:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer; got {depth!r}.")
    if given and len(hidden) > 1:
        raise ValueError(
            f"depth repeats one width, but {len(hidden)} hidden widths were given "
            f"({list(hidden)}); give --hidden a single width with --depth."
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
    """The lab's model ``name`` (or the factory ``MODULE:FACTORY``) for (N, *input_shape)
    images with ``num_classes`` classes.

    ``hidden`` defaults to DEFAULT_HIDDEN: the layer widths of ``mlp``, the
    channels of ``cnn``, the recurrent sizes of ``rnn``, the stage widths of
    ``resnet20`` and the block widths of ``transformer`` (one per block, all
    equal). ``cell`` applies to ``rnn`` only. ``norm`` is a kind's name or a
    callable ``C -> module`` (see :func:`normlab.registry.norm_factory`; the
    transformer calls it with ``channel_dim=-1``). A factory gets ``norm``, a
    kind's name, as a :class:`NormFactory` and takes neither ``hidden``,
    ``cell`` nor ``placement``. ``depth`` makes that many hidden layers (cnn
    stages, rnn layers, transformer blocks) of one width: ``hidden``'s single
    width, or the first default one. ``dropout`` is the probability of the
    ``nn.Dropout`` after each hidden block of mlp, cnn and rnn (0: none). ``init`` and
    ``init_scale`` re-initialize the linear and convolution weights (see
    :func:`normlab.models.common.initialize`).
    """
    check_model_name(name)
    if is_factory_spec(name):
        given = [
            option
            for option, unset in (
                ("--hidden", hidden is None),
                ("--cell", cell == "lstm"),
                ("--placement", placement == "before"),
                ("--depth", depth is None),
                ("--dropout", dropout == 0),
                ("init", init == "default"),
                ("init_scale", init_scale == 1.0),
            )
            if not unset
        ]
        if not isinstance(norm, str):
            raise ModelFactoryError(
                f"your factory {name} gets the norm as a NormFactory of a kind's name; "
                f"got a {type(norm).__name__}. Pass the kind's name."
            )
        if given:
            raise ModelFactoryError(
                f"{', '.join(given)} configure the lab's own models; your factory {name} "
                "decides its own layers and where its norms go. Drop them."
            )
        return build_factory_model(name, NormFactory(norm), num_classes, input_shape)
    check_init(init, init_scale)
    return initialize(
        _lab_model(name, input_shape, num_classes, norm, placement, hidden, cell, depth, dropout),
        init,
        init_scale,
    )


def _lab_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    norm: NormSpec,
    placement: str,
    hidden: Sequence[int] | None,
    cell: str,
    depth: int | None,
    dropout: float,
) -> nn.Module:
    if name != "rnn" and cell != "lstm":
        raise ValueError(f"--cell applies to the rnn model only; got model {name!r}.")
    given = hidden is not None
    hidden = tuple(DEFAULT_HIDDEN[name] if hidden is None else hidden)
    if not hidden or min(hidden) < 1:
        raise ValueError(f"hidden widths must be positive integers; got {list(hidden)}.")
    if depth is not None:
        if name == "resnet20":
            raise ValueError("--depth does not apply to resnet20 (its depth is in its name).")
        hidden = _repeat_width(hidden, depth, given=given)
    options = {"norm": norm, "placement": placement}
    if dropout:
        if name in ("resnet20", "transformer"):
            raise ValueError(f"--dropout applies to mlp, cnn and rnn; got model {name!r}.")
        options["dropout"] = dropout
    if name == "mlp":
        in_features = 1
        for size in input_shape:
            in_features *= size
        return mlp(in_features, hidden, num_classes, **options)
    if name == "cnn":
        return cnn(input_shape, hidden, num_classes, **options)
    if name == "resnet20":
        return resnet20(input_shape, num_classes, widths=hidden, **options)
    if name == "transformer":
        return transformer(input_shape, num_classes, widths=hidden, **options)
    return RowRNN(input_shape, hidden, num_classes, cell=cell, **options)


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
