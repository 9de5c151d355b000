"""The lab's models by name, each registered once with its facts (as timm's
``register_model``): :func:`normlab.models.build_model`, the stacking code, the
executors and the CLI's model choices read them here.

A model's builder is called with keywords::

    builder(norm, num_classes, input_shape, **options) -> torch.nn.Module

``norm`` builds the normalization being studied: a :class:`~normlab.models.NormFactory`
for a kind's name (``norm(C)``, ``norm(C, channel_dim=-1)``, ``norm.kind``), or the
caller's own callable ``C -> module``. ``num_classes`` is the data's class count and
``input_shape`` the (C, H, W) of one image; the model maps (N, C, H, W) float images to
(N, num_classes) logits. ``options`` are those of the lab's model options
(:data:`MODEL_OPTIONS`) the model takes that reach its builder (:data:`BUILDER_OPTIONS`),
every one of them on every call; ``depth`` (repeat one width: it becomes ``hidden``),
``init`` and ``init_scale`` (re-initialize the built model) are applied by build_model.

Register your own with :func:`register_model`; it then builds by name, and trains in the
lab as ``model="name"``. Spawned processes (the pool's workers, a data-parallel run's
ranks) start without it and are handed :func:`user_models`, pickled: there a builder must
be defined at the top level of a module they can import (:func:`check_shippable`).
"""

from __future__ import annotations

import inspect
import math
import pickle
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, overload

from torch import nn

from normlab._checks import did_you_mean
from normlab.models.feedforward import cnn, mlp
from normlab.models.recurrent import RowRNN
from normlab.models.resnet import resnet20
from normlab.models.vit import transformer
from normlab.registry import NormSpec

MODEL_OPTIONS = ("placement", "hidden", "depth", "cell", "dropout", "init", "init_scale")
"""The lab's model options, the keywords of build_model beyond ``norm``."""
BUILDER_OPTIONS = ("placement", "hidden", "cell", "dropout")
"""The model options passed on to a builder that takes them; build_model applies the
others itself."""
_NAME = re.compile(r"^[A-Za-z][\w.-]*$")


@dataclass(frozen=True)
class ModelInfo:
    """What the lab knows about one model.

    Attributes:
        name: the name it builds by (``build_model(name, ...)``, ``model="name"``).
        builder: ``builder(norm, num_classes, input_shape, **options)`` -> the model
            (see the module docstring).
        options: the model options (of :data:`MODEL_OPTIONS`) it takes; build_model
            refuses the others, unless at their defaults.
        default_hidden: its widths when ``hidden`` is not given (layer widths, channels,
            recurrent sizes, stage or block widths); None when it takes no ``hidden``.
        stacks: whether the seeds of a configuration can train as one batched model
            (normlab.experiment.stacked), checked against single runs.
        cost: the time of a training step relative to ``mlp``'s at the same batch, a
            rough guide to how long its runs take.
    """

    name: str
    builder: Callable[..., nn.Module]
    options: tuple[str, ...] = ()
    default_hidden: tuple[int, ...] | None = None
    stacks: bool = False
    cost: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"a model's name starts with a letter and holds letters, digits, '_', '.' "
                f"and '-' only (a ':' would read as MODULE:FACTORY); got {self.name!r}."
            )
        if not callable(self.builder):
            raise TypeError(
                f"model {self.name!r}: the builder must be callable; got a "
                f"{type(self.builder).__name__}."
            )
        options = tuple(self.options)
        unknown = [option for option in options if option not in MODEL_OPTIONS]
        if unknown:
            raise ValueError(
                f"model {self.name!r}: unknown model option {unknown[0]!r}; the lab's model "
                f"options are {', '.join(MODEL_OPTIONS)}."
            )
        object.__setattr__(self, "options", tuple(o for o in MODEL_OPTIONS if o in options))
        self._check_hidden()
        real = isinstance(self.cost, int | float) and not isinstance(self.cost, bool)
        if not (real and math.isfinite(self.cost) and self.cost > 0):
            raise ValueError(
                f"model {self.name!r}: cost must be a finite number above 0 (a step's time "
                f"relative to mlp's); got {self.cost!r}."
            )
        self._check_signature()

    def _check_hidden(self) -> None:
        takes = "hidden" in self.options
        if "depth" in self.options and not takes:
            raise ValueError(
                f"model {self.name!r}: depth repeats one of its hidden widths, so a model "
                "that takes depth takes hidden too; add 'hidden' to its options."
            )
        if not takes:
            if self.default_hidden is not None:
                raise ValueError(
                    f"model {self.name!r} has default_hidden but does not take hidden; add "
                    "'hidden' to its options or drop default_hidden."
                )
            return
        widths = self.default_hidden
        if not (
            isinstance(widths, Sequence)
            and widths
            and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)
        ):
            raise ValueError(
                f"model {self.name!r} takes hidden, so it needs default_hidden, its "
                f"widths when none are given (positive integers); got {widths!r}."
            )
        object.__setattr__(self, "default_hidden", tuple(widths))

    def _check_signature(self) -> None:
        keywords = {"norm": None, "num_classes": 0, "input_shape": ()}
        keywords |= {option: None for option in self.passed_options}
        try:
            signature = inspect.signature(self.builder)
        except (TypeError, ValueError):  # no signature to read (some builtins): a call will tell
            return
        try:
            signature.bind(**keywords)
        except TypeError:
            raise TypeError(
                f"model {self.name!r}: its builder must accept the keyword arguments "
                f"{', '.join(keywords)}; its signature is {signature}."
            ) from None

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with the builder by value where a reference to its module cannot travel
        (a lambda, a closure, a notebook's function), as Ray ships functions: cloudpickle's
        bytes, which a spawned worker loads without importing the builder's module."""
        import cloudpickle

        facts = (self.name, self.options, self.default_hidden, self.stacks, self.cost)
        return _unpickle_info, (cloudpickle.dumps(self.builder), *facts)

    @property
    def source(self) -> str:
        """Where its builder is defined, as ``module.qualified_name``."""
        return _where(self.builder)

    @property
    def passed_options(self) -> tuple[str, ...]:
        """The options its builder gets (on every call): those of BUILDER_OPTIONS it takes."""
        return tuple(option for option in BUILDER_OPTIONS if option in self.options)


def _add(info: ModelInfo) -> None:
    """Register ``info``; the same builder again under its name replaces its entry."""
    held = _MODELS.get(info.name)
    if held is not None and not (info.name not in LAB_MODELS and _same_builder(held, info)):
        raise ValueError(
            f"a model named {info.name!r} is already registered (builder "
            f"{_where(held.builder)}); registering {_where(info.builder)} under that name "
            "would change what it builds. Register it under another name: "
            "@register_model(name='...')."
        )
    _MODELS[info.name] = info


def _where(builder: Callable[..., Any]) -> str:
    module = getattr(builder, "__module__", None) or "?"
    return f"{module}.{getattr(builder, '__qualname__', repr(builder))}"


def _same_builder(held: ModelInfo, info: ModelInfo) -> bool:
    """Whether ``info`` is ``held``'s builder defined again (a reloaded module, a notebook
    cell run twice): the same module, qualified name and code (two lambdas of one function
    share a qualified name, not their code)."""
    if held.builder is info.builder:
        return True
    code = [getattr(b, "__code__", None) for b in (held.builder, info.builder)]
    same_code = None in code or (
        code[0].co_code == code[1].co_code and code[0].co_consts == code[1].co_consts
    )
    return same_code and _where(held.builder) == _where(info.builder)


@overload
def register_model(builder: Callable[..., nn.Module], /) -> Callable[..., nn.Module]: ...


@overload
def register_model(
    *,
    name: str | None = None,
    options: Iterable[str] = (),
    default_hidden: Sequence[int] | None = None,
    cost: float = 1.0,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]: ...


def register_model(
    builder: Callable[..., nn.Module] | None = None,
    /,
    *,
    name: str | None = None,
    options: Iterable[str] = (),
    default_hidden: Sequence[int] | None = None,
    cost: float = 1.0,
) -> Any:
    """Register a model builder under ``name`` (default: the function's name), as a
    decorator, bare or with arguments; the builder is returned unchanged::

        @normlab.models.register_model
        def small_cnn(norm, num_classes, input_shape):
            return nn.Sequential(nn.Conv2d(input_shape[0], 16, 3), norm(16), ...)

        normlab.models.build_model("small_cnn", (1, 28, 28), 10, norm="bn")

    The builder is called as the module docstring says, with the lab's model ``options``
    it takes (e.g. ``options=("hidden", "dropout")`` with ``default_hidden=(64,)``: it
    then gets ``hidden`` and ``dropout`` on every call). Its seeds train separately (the
    stacked training is checked on the lab's own models only). Registering the same
    function again (a notebook cell run twice) replaces its entry.

    Raises:
        ValueError: the name is taken by another builder (a lab model's included), is
            not a name, or the facts are inconsistent (see :class:`ModelInfo`).
        TypeError: the builder cannot take the keywords it would be called with.
    """

    def register(function: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        label = name if name is not None else getattr(function, "__name__", None)
        info = ModelInfo(
            name=label,  # type: ignore[arg-type]  # checked by ModelInfo
            builder=function,
            options=tuple(options),
            default_hidden=None if default_hidden is None else tuple(default_hidden),
            cost=cost,
        )
        _add(info)
        return function

    return register if builder is None else register(builder)


def list_models() -> list[str]:
    """The registered models' names: the lab's own, then the user's, in registration order."""
    return list(_MODELS)


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _MODELS


def model_info(name: str) -> ModelInfo:
    """The registered model ``name``'s facts.

    Raises:
        ValueError: no model of that name; the closest are named.
    """
    info = _MODELS.get(name)
    if info is None:
        raise ValueError(unknown_model(name))
    return info


def unknown_model(name: str) -> str:
    """The message for a model name that is neither registered nor MODULE:FACTORY."""
    hint = did_you_mean(name, {model: model for model in _MODELS})
    return (
        f"unknown model {name!r}.{hint} Choose one of {', '.join(_MODELS)}, your own as "
        "MODULE:FACTORY (see normlab.models.factory), or register yours with "
        "@normlab.models.register_model."
    )


def user_models() -> tuple[ModelInfo, ...]:
    """The models registered beyond the lab's own that can travel to another process: what
    a worker process, which starts without them, is handed (see :func:`adopt_models`). A
    run of one that cannot is refused by :func:`check_shippable` before any work."""
    return tuple(
        info for name, info in _MODELS.items() if name not in LAB_MODELS and not _stays(info)
    )


def adopt_models(models: Iterable[ModelInfo]) -> None:
    """Register ``models`` (another process's :func:`user_models`) here; one registered
    already with the same builder is kept.

    Raises:
        ValueError: a name registered here with another builder.
    """
    for info in models:
        _add(info)


def _unpickle_info(builder: bytes, *facts: Any) -> ModelInfo:
    """A :class:`ModelInfo` from its pickled builder and its facts (see its __reduce__)."""
    name, options, default_hidden, stacks, cost = facts
    return ModelInfo(name, pickle.loads(builder), options, default_hidden, stacks, cost)


def _stays(info: ModelInfo) -> str | None:
    """Why ``info``'s builder cannot be handed to a spawned process; None when it can."""
    try:
        pickle.dumps(info)
    except Exception as error:
        return f"it cannot be pickled ({type(error).__name__}: {error})"
    return None


def check_shippable(name: str) -> None:
    """Raise ValueError unless a spawned worker process can be handed the model ``name``
    with :func:`user_models`: a registered model's builder travels pickled, by value where
    needed (a lambda, a closure, a notebook's function). The lab's models and
    ``MODULE:FACTORY`` specs always can.

    Raises:
        ValueError: the builder holds something that does not pickle (an open file, a
            lock, a generator); the message names it and says how to make it travel.
    """
    if name in LAB_MODELS or not is_model(name):
        return
    info = model_info(name)
    reason = _stays(info)
    if reason is None:
        return
    raise ValueError(
        f"model {name!r} is registered in this process; worker processes are handed its "
        f"builder {_where(info.builder)} pickled, and {reason}. Let the builder make what "
        "it needs itself instead of holding it, or train in this process (one job)."
    )


def _mlp(
    norm: NormSpec,
    num_classes: int,
    input_shape: Sequence[int],
    *,
    placement: str,
    hidden: Sequence[int],
    dropout: float,
) -> nn.Module:
    in_features = math.prod(input_shape)
    return mlp(in_features, hidden, num_classes, norm=norm, placement=placement, dropout=dropout)


def _cnn(
    norm: NormSpec,
    num_classes: int,
    input_shape: Sequence[int],
    *,
    placement: str,
    hidden: Sequence[int],
    dropout: float,
) -> nn.Module:
    return cnn(input_shape, hidden, num_classes, norm=norm, placement=placement, dropout=dropout)


def _rnn(
    norm: NormSpec,
    num_classes: int,
    input_shape: Sequence[int],
    *,
    placement: str,
    hidden: Sequence[int],
    cell: str,
    dropout: float,
) -> nn.Module:
    return RowRNN(
        input_shape, hidden, num_classes, norm=norm, placement=placement, cell=cell, dropout=dropout
    )


def _resnet20(
    norm: NormSpec,
    num_classes: int,
    input_shape: Sequence[int],
    *,
    placement: str,
    hidden: Sequence[int],
) -> nn.Module:
    return resnet20(input_shape, num_classes, norm=norm, placement=placement, widths=hidden)


def _transformer(
    norm: NormSpec,
    num_classes: int,
    input_shape: Sequence[int],
    *,
    placement: str,
    hidden: Sequence[int],
) -> nn.Module:
    return transformer(input_shape, num_classes, norm=norm, placement=placement, widths=hidden)


_EVERY = ("placement", "hidden", "depth", "init", "init_scale")
_LAB = (
    ModelInfo("mlp", _mlp, (*_EVERY, "dropout"), (128, 64), stacks=True, cost=1.0),
    ModelInfo("cnn", _cnn, (*_EVERY, "dropout"), (32, 64), stacks=True, cost=4.0),
    ModelInfo("rnn", _rnn, (*_EVERY, "cell", "dropout"), (128, 128), cost=4.0),
    # resnet20's depth is in its name; it takes no dropout, nor does the transformer
    ModelInfo(
        "resnet20", _resnet20, tuple(o for o in _EVERY if o != "depth"), (16, 32, 64), cost=30.0
    ),
    ModelInfo("transformer", _transformer, _EVERY, (64, 64, 64, 64), cost=8.0),
)
LAB_MODELS = tuple(info.name for info in _LAB)
"""The lab's own models, in the order the CLI lists them."""
_MODELS: dict[str, ModelInfo] = {info.name: info for info in _LAB}
