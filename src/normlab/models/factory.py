"""The user's own model in the lab as ``MODULE:FACTORY`` (``--model`` on the command line).

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

``MODULE`` is a dotted module name importable from ``sys.path`` or the current
directory (``mynets`` for ./mynets.py, ``pkg.models`` for ./pkg/models.py);
``FACTORY`` names a callable in it (dots reach into classes or submodules'
attributes). The current directory is searched *after* ``sys.path``, so that a
user's ``json.py`` or ``html.py`` there cannot stand in for the standard
library's in normlab or in the sweep's worker processes (which inherit
``sys.path``); a module there whose name Python finds elsewhere first is refused
by name.

Everything the user's code raises, ``SystemExit`` included, is refused with the
reason, and what the factory changed of torch's default dtype and of the torch,
``random`` and numpy generators is put back when it fails.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import random
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy
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
            f"model {spec!r} is not MODULE:FACTORY: a dotted module name, a colon and the "
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
    target: Any = _import_user_module(module_name, spec)
    for part in attribute.split("."):
        if not hasattr(target, part):
            public = sorted(
                name
                for name, value in vars(target).items()
                if callable(value) and not name.startswith("_")
            )
            raise ModelFactoryError(
                f"model {spec!r}: {getattr(target, '__name__', module_name)!r} has no "
                f"attribute {part!r}. Its public callables: {', '.join(public) or 'none'}."
            )
        target = getattr(target, part)
    if not callable(target):
        raise ModelFactoryError(
            f"model {spec!r} names a {type(target).__name__}, not a callable; it must name "
            f"a function {CONTRACT}."
        )
    try:
        inspect.signature(target).bind(norm=None, num_classes=0, input_shape=())
    except TypeError:
        raise ModelFactoryError(
            f"model {spec!r} must accept the keyword arguments norm, num_classes and "
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
    shape = tuple(input_shape)
    called = f"norm={norm!r}, num_classes={num_classes}, input_shape={shape}"
    with user_code(f"model {spec!r}: the factory, called with {called},"):
        model = factory(norm=norm, num_classes=num_classes, input_shape=shape)
    if not isinstance(model, nn.Module):
        raise ModelFactoryError(
            f"model {spec!r} returned a {type(model).__name__}; the factory must return "
            f"a torch.nn.Module ({CONTRACT})."
        )
    return model


def _local_candidate(top: str) -> Path | None:
    """``./top.py`` or the package ``./top/`` in the current directory, if there is one."""
    here = Path.cwd()
    if (here / f"{top}.py").is_file():
        return here / f"{top}.py"
    return here / top if (here / top).is_dir() else None


def _is_local(found: importlib.machinery.ModuleSpec, local: Path) -> bool:
    """Whether ``found`` is the module or package at ``local``."""
    targets = {local.resolve(), (local / "__init__.py").resolve()}
    locations = [found.origin, *(found.submodule_search_locations or [])]
    return any(location and Path(location).resolve() in targets for location in locations)


def _import_user_module(module_name: str, spec: str) -> ModuleType:
    """Import ``module_name`` from sys.path, else from the current directory (appended to
    sys.path, never put first); refused when ./MODULE exists but Python finds that name
    elsewhere first (a standard-library or installed module)."""
    top = module_name.partition(".")[0]
    local = _local_candidate(top)
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):  # a module in sys.modules without a spec (__main__)
        found = None
    if local is not None and found is not None and not _is_local(found, local):
        where = (
            "a standard-library module"
            if top in sys.stdlib_module_names
            else f"the module at {found.origin or list(found.submodule_search_locations or [])}"
        )
        raise ModelFactoryError(
            f"model {spec!r}: ./{local.name} is not what Python imports as {top!r}: that "
            f"name is {where}, which normlab or its libraries may use too. Rename "
            f"./{local.name} and the MODULE part of the model's spec."
        )
    if local is not None and found is None and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
        importlib.invalidate_caches()
    try:
        with user_code(f"importing {module_name!r} for model {spec!r}"):
            return importlib.import_module(module_name)
    except ModelFactoryError as error:
        missing = error.__cause__
        named = getattr(missing, "name", None) or ""
        if isinstance(missing, ModuleNotFoundError) and f"{module_name}.".startswith(f"{named}."):
            raise ModelFactoryError(
                f"cannot import {module_name!r} for model {spec!r}: {missing}. The module "
                "must be importable from the current directory or sys.path (e.g. ./"
                f"{module_name.replace('.', '/')}.py); run from its directory or set "
                "PYTHONPATH."
            ) from None
        raise


def _exit_text(exit_: SystemExit) -> str:
    return f"exited (sys.exit({exit_.code!r}))"


@contextlib.contextmanager
def user_code(what: str) -> Iterator[None]:
    """Run the user's code in the block: any exception it raises, ``SystemExit`` included,
    becomes a ModelFactoryError that starts with ``what``; then, and whenever the block
    changed torch's default dtype, the default dtype and the torch, ``random`` and numpy
    generators are put back as they were.

    Raises:
        ModelFactoryError: the block raised, or changed the default dtype.
    """
    dtype = torch.get_default_dtype()
    generators = torch.get_rng_state(), random.getstate(), numpy.random.get_state()

    def restore() -> None:
        torch.set_default_dtype(dtype)
        torch.set_rng_state(generators[0])
        random.setstate(generators[1])
        numpy.random.set_state(generators[2])

    try:
        yield
    except SystemExit as exit_:
        restore()
        hint = (
            " A model's module must not exit or parse the command line when "
            "imported (argparse's parse_args() reads normlab's own arguments): put that "
            "code under `if __name__ == '__main__':`."
            if what.startswith("importing")
            else ""
        )
        raise ModelFactoryError(f"{what} {_exit_text(exit_)}.{hint}") from None
    except Exception as error:
        restore()
        raise ModelFactoryError(f"{what} raised {type(error).__name__}: {error}") from error
    if torch.get_default_dtype() != dtype:
        changed = torch.get_default_dtype()
        restore()
        raise ModelFactoryError(
            f"{what} changed torch's default dtype from {dtype} to {changed} (restored). "
            "The lab trains in the default dtype, float32, on float32 images: build the "
            "model without torch.set_default_dtype."
        )


def run_factory_model(model: nn.Module, images: torch.Tensor, what: str) -> Any:
    """``model(images)`` for a user's factory model, as user code (see :func:`user_code`,
    whose message starts with ``what``); a layer that cannot take the data's images (a
    RuntimeError in the forward) is named, with what to change.

    Raises:
        ModelFactoryError: the forward raised or exited; a RuntimeError's message names
            the layer it came from and how to build the model for the data's images.
    """
    entered: list[tuple[nn.Module, tuple[Any, ...]]] = []
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [
        leaf.register_forward_pre_hook(lambda module, args: entered.append((module, args)))
        for leaf in leaves
    ]
    try:
        with user_code(what):
            return model(images)
    except ModelFactoryError as error:
        if not isinstance(error.__cause__, RuntimeError):
            raise
        raise ModelFactoryError(
            f"{str(error).rstrip('.')}. {_misfit(model, images, entered)}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()


def _misfit(
    model: nn.Module, images: torch.Tensor, entered: list[tuple[nn.Module, tuple[Any, ...]]]
) -> str:
    """Which layer of ``model`` could not take ``images`` (the last one ``entered``), and
    how to build the model for them."""
    shape = tuple(images.shape[1:])
    head = f"The data's images are (N, C, H, W) = {tuple(images.shape)}"
    fix = (
        f"Build the model for input_shape {shape} (the factory gets it): "
        f"{shape[0]} input channel(s) (timm: create_model(..., in_chans={shape[0]}); "
        "torchvision: replace the first convolution, e.g. model.conv1 = "
        f"nn.Conv2d({shape[0]}, 64, 7, 2, 3, bias=False)) and strides and pooling that fit "
        f"{'x'.join(map(str, shape[1:]))} images."
    )
    if not entered:
        return f"{head}. {fix}"
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
    return f"{head}; the layer that raised is {name!r} ({type(layer).__name__}). {fix}"
