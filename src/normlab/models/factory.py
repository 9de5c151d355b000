"""The user's own model in the lab: ``--model MODULE:FACTORY``.

The contract, one function the user writes::

    def factory(norm, num_classes, input_shape) -> torch.nn.Module

called with keywords. ``norm`` is a :class:`NormFactory`: ``norm(num_channels)``
builds the kind being studied for (N, C, *) input (a new module per call, as
torchvision's and timm's ``norm_layer`` argument expects), and
``norm(num_channels, channel_dim=-1)`` for (N, *, C) input such as
transformer tokens; ``norm.kind`` and ``norm.options`` name it.
``num_classes`` is the data's class count and ``input_shape`` the (C, H, W) of
one image. The model maps (N, C, H, W) float images to (N, num_classes) logits.

``MODULE`` is a dotted module name importable from the current directory or
``sys.path`` (``mynets`` for ./mynets.py, ``pkg.models`` for
./pkg/models.py); ``FACTORY`` names a callable in it (dots reach into
classes or submodules' attributes).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from normlab.registry import make_norm

CONTRACT = "factory(norm, num_classes, input_shape) -> torch.nn.Module"
_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class ModelFactoryError(ValueError):
    """A ``MODULE:FACTORY`` model that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class NormFactory:
    """Builds the normalization being studied: ``norm(num_channels)`` -> a new module.

    Attributes:
        kind: the registry kind (``"bn"``, ``"gn"``, ...).
        options: keyword options for every module built (``{"groups": 8}``).
    """

    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self, num_channels: int, *, channel_dim: int = 1) -> nn.Module:
        """A new ``kind`` module for ``num_channels`` channels on dim 1 (N, C, *) or, with
        ``channel_dim=-1``, on the last dim (N, *, C)."""
        layout = {} if channel_dim == 1 else {"channel_dim": channel_dim}
        return make_norm(self.kind, num_channels, **layout, **self.options)


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
    model = factory(norm=norm, num_classes=num_classes, input_shape=tuple(input_shape))
    if not isinstance(model, nn.Module):
        raise ModelFactoryError(
            f"--model {spec} returned a {type(model).__name__}; the factory must return "
            f"a torch.nn.Module ({CONTRACT})."
        )
    return model
