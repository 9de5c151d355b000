"""The user's own model in the lab: ``--model MODULE:FACTORY``.

The contract, one function the user writes::

    def factory(norm, num_classes, input_shape) -> torch.nn.Module

called with keywords. ``norm`` is a :class:`NormFactory`: ``norm(num_channels)``
builds the kind being studied for (N, C, *) input (a new module per call, as
torchvision's and timm's ``norm_layer`` argument expects), and
``norm(num_channels, channel_dim=-1)`` for (N, *, C) input such as
transformer tokens; ``norm.kind`` and ``norm.options`` name it. It is a
``functools.partial``, one of the forms timm's ``get_norm_layer`` takes, and
accepts the ``device=``/``dtype=`` keywords timm's models pass.
``num_classes`` is the data's class count and ``input_shape`` the (C, H, W) of
one image. The model maps (N, C, H, W) float images to (N, num_classes) logits.

``MODULE`` is a dotted module name importable from the current directory or
``sys.path`` (``mynets`` for ./mynets.py, ``pkg.models`` for
./pkg/models.py); ``FACTORY`` names a callable in it (dots reach into
classes or submodules' attributes).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from normlab.registry import make_norm

CONTRACT = "factory(norm, num_classes, input_shape) -> torch.nn.Module"
_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class ModelFactoryError(ValueError):
    """A ``MODULE:FACTORY`` model that cannot be used; the message says why and what to do."""


#: Keywords of timm's norm + activation layers (``BatchNormAct2d``): timm's EfficientNet,
#: MobileNetV3 and RegNet pass them when they build their norms from ``norm_layer``.
_NORM_ACT_KEYWORDS = ("apply_act", "act_layer", "act_kwargs", "inplace", "drop_layer")


def build_norm(
    num_channels: int,
    *,
    kind: str,
    channel_dim: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **options: Any,
) -> nn.Module:
    """A new ``kind`` module for ``num_channels`` channels on dim 1 (N, C, *) or, with
    ``channel_dim=-1``, on the last dim (N, *, C); what :class:`NormFactory` calls.

    Raises:
        TypeError: keywords of a norm + activation layer (``apply_act``, ``inplace``,
            ...): the caller wants an activation inside the norm and does not say which.
    """
    asked = [name for name in _NORM_ACT_KEYWORDS if name in options]
    if asked:
        raise TypeError(
            f"norm was called with {', '.join(asked)}: the model builds norm + activation "
            "layers from norm_layer (as timm's EfficientNet, MobileNetV3 and RegNet do with "
            "BatchNormAct2d) and does not say which activation, so a norm alone would drop "
            "it. Build the model with its own norms and swap them: "
            "normlab.replace_norms(model, norm.kind, **norm.options).model."
        )
    layout = {} if channel_dim == 1 else {"channel_dim": channel_dim}
    return make_norm(kind, num_channels, **layout, device=device, dtype=dtype, **options)


class NormFactory(functools.partial):
    """Builds the normalization being studied: ``norm(num_channels)`` -> a new module.

    ``functools.partial(build_norm, kind=kind, **options)``: a partial binding keywords
    only, which timm's ``get_norm_layer`` takes (it rebinds the keywords) and which
    hashes, as timm's ConvNeXt needs. ``norm(C, channel_dim=-1)`` builds the layer for
    (N, *, C) input; ``device=`` and ``dtype=`` place it.

    Attributes:
        kind: the registry kind (``"bn"``, ``"gn"``, ...).
        options: keyword options for every module built (``{"groups": 8}``).
    """

    def __new__(cls, kind: str, options: Mapping[str, Any] | None = None) -> NormFactory:
        return super().__new__(cls, build_norm, kind=kind, **dict(options or {}))

    @property
    def kind(self) -> str:
        return self.keywords["kind"]

    @property
    def options(self) -> dict[str, Any]:
        return {name: value for name, value in self.keywords.items() if name != "kind"}

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.kind, self.options)

    def __repr__(self) -> str:
        return f"NormFactory({self.kind!r}, {self.options!r})"


def is_factory_spec(name: str) -> bool:
    """Whether ``name`` names a user factory (``MODULE:FACTORY``) rather than a lab model."""
    return ":" in name


def check_factory_spec(spec: str) -> None:
    """Raise ModelFactoryError unless ``spec`` reads MODULE:FACTORY (nothing is imported)."""
    if not _SPEC.match(spec):
        raise ModelFactoryError(
            f"--model {spec!r} is not MODULE:FACTORY: a dotted module name, a colon and the "
            "name of a function in it, e.g. mynets:small_resnet for small_resnet in "
            "./mynets.py."
        )


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """Import ``MODULE`` and return its callable ``FACTORY``, checked against the contract.

    Raises:
        ModelFactoryError: the spec is malformed, the module cannot be imported
            (or raised while importing), the name is missing or not callable, or
            its signature cannot take ``norm``, ``num_classes`` and ``input_shape``.
    """
    check_factory_spec(spec)
    module_name, attribute = spec.split(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ModelFactoryError(
            f"cannot import {module_name!r} for --model {spec}: {error}. The module must be "
            f"importable from the current directory or sys.path (e.g. ./"
            f"{module_name.replace('.', '/')}.py); run from its directory or set PYTHONPATH."
        ) from None
    except Exception as error:
        raise ModelFactoryError(
            f"importing {module_name!r} for --model {spec} raised {type(error).__name__}: {error}"
        ) from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            public = sorted(
                name
                for name, value in vars(target).items()
                if callable(value) and not name.startswith("_")
            )
            raise ModelFactoryError(
                f"--model {spec}: {getattr(target, '__name__', module_name)!r} has no "
                f"attribute {part!r}. Its public callables: {', '.join(public) or 'none'}."
            )
        target = getattr(target, part)
    if not callable(target):
        raise ModelFactoryError(
            f"--model {spec} names a {type(target).__name__}, not a callable; it must name "
            f"a function {CONTRACT}."
        )
    try:
        inspect.signature(target).bind(norm=None, num_classes=0, input_shape=())
    except TypeError:
        raise ModelFactoryError(
            f"--model {spec} must accept the keyword arguments norm, num_classes and "
            f"input_shape ({CONTRACT}); its signature is {inspect.signature(target)}."
        ) from None
    except ValueError:  # no signature to read (some builtins): the call will tell
        pass
    return target


def build_factory_model(
    spec: str, norm: NormFactory, num_classes: int, input_shape: Sequence[int]
) -> nn.Module:
    """Call ``spec``'s factory with the contract's keywords and check that it returned a module.

    Raises:
        ModelFactoryError: see :func:`load_factory`, or the factory returned
            something other than an ``nn.Module``.
    """
    factory = load_factory(spec)
    try:
        model = factory(norm=norm, num_classes=num_classes, input_shape=tuple(input_shape))
    except (ModelFactoryError, ValueError, TypeError):
        raise
    except Exception as error:  # e.g. a library's AssertionError on an argument
        raise ModelFactoryError(
            f"--model {spec} raised {type(error).__name__} when called with norm={norm!r}, "
            f"num_classes={num_classes}, input_shape={tuple(input_shape)}: {error}"
        ) from error
    if not isinstance(model, nn.Module):
        raise ModelFactoryError(
            f"--model {spec} returned a {type(model).__name__}; the factory must return "
            f"a torch.nn.Module ({CONTRACT})."
        )
    return model


def run_factory_model(spec: str, model: nn.Module, images: torch.Tensor) -> Any:
    """``model(images)`` for the model of factory ``spec``; a model that cannot take the
    data's images is refused with the layer that failed and what to change.

    Raises:
        ModelFactoryError: the forward raised a RuntimeError (a layer built for other
            channels or sizes than the data's).
    """
    entered: list[tuple[nn.Module, tuple[Any, ...]]] = []
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [
        leaf.register_forward_pre_hook(lambda module, args: entered.append((module, args)))
        for leaf in leaves
    ]
    try:
        return model(images)
    except RuntimeError as error:
        raise ModelFactoryError(_misfit(spec, model, images, entered, error)) from None
    finally:
        for handle in handles:
            handle.remove()


def _misfit(
    spec: str,
    model: nn.Module,
    images: torch.Tensor,
    entered: list[tuple[nn.Module, tuple[Any, ...]]],
    error: RuntimeError,
) -> str:
    """Why ``model`` cannot run on ``images``, naming the layer that failed and the fix."""
    shape = tuple(images.shape[1:])
    head = f"--model {spec} cannot run on the data's images, (N, C, H, W) = {tuple(images.shape)}"
    fix = (
        f"Build the model for input_shape {shape} (the factory gets it): "
        f"{shape[0]} input channel(s) (timm: create_model(..., in_chans={shape[0]}); "
        "torchvision: replace the first convolution, e.g. model.conv1 = "
        f"nn.Conv2d({shape[0]}, 64, 7, 2, 3, bias=False)) and strides and pooling that fit "
        f"{'x'.join(map(str, shape[1:]))} images."
    )
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not entered:
        return f"{head}: {reason}. {fix}"
    layer, args = entered[-1]
    name = next((n for n, m in model.named_modules() if m is layer), "?")
    got = args[0] if args and isinstance(args[0], torch.Tensor) else None
    wanted = getattr(layer, "in_channels", None)
    if got is not None and wanted is not None and got.ndim > 1 and got.shape[1] != wanted:
        where = "the images themselves" if got is images else f"input of shape {tuple(got.shape)}"
        return (
            f"{head}: its layer {name!r} ({layer}) takes {wanted} channels and gets {where}, "
            f"with {got.shape[1]}. {fix}"
        )
    return f"{head}: its layer {name!r} ({type(layer).__name__}) raised: {reason}. {fix}"
