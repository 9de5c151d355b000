"""Loading a checkpoint without running its code: ``torch.load(..., weights_only=True)`` and
nothing else.

A state_dict (or a training loop's dict holding one) loads as plain tensors.
A whole module saved with ``torch.save(model)`` loads only when every class it
names is on an explicit allow-list: torch.nn's modules, normlab's layers and
the lab's models (see :func:`allowed_classes`), and only when its module tree
is well formed (modules under ``_modules``, tensors under ``_parameters`` and
``_buffers``). What a checkpoint may construct is bounded by what it holds:
before anything is unpickled, a pickle that calls a constructor (a module's,
``bytearray``'s, a legacy tensor type's) rather than rebuilding tensors from the
file's own storages is refused (see :mod:`normlab.checkpoints.pickle_calls`), and
after loading, a tensor that views more elements than its storage holds (a
broadcast view, which any reading of its values would allocate whole). Anything
else is refused with a :class:`CheckpointError` that names the file, what was
refused, and what to save instead.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from functools import cache
from io import BytesIO
from pathlib import Path
from pickle import UnpicklingError
from typing import IO

import torch
from torch import nn

from normlab import layers as normlab_layers
from normlab import models as normlab_models
from normlab.checkpoints.pickle_calls import MAX_LAYERS, constructor_calls

#: Keys under which training loops commonly store the model's state_dict, tried in order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")

ZIP_MAGIC = b"PK\x03\x04"  # what torch.load checks to tell a zip checkpoint from a legacy one
LEGACY_PICKLES = 5  # magic number, protocol, system info, the object, its storage keys

_SAVE_STATE_DICT = (
    "If you wrote this file, save the model's state_dict instead: "
    "`torch.save(model.state_dict(), PATH)`, and inspect that."
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or may not be loaded safely; the message says why."""


@cache
def allowed_classes() -> tuple[type, ...]:
    """The classes a pickled module may name: what ``torch.load`` is allowed to construct.

    - every ``nn.Module`` subclass exported by ``torch.nn`` (containers, linear,
      conv, recurrent, pooling, activation and torch's normalization layers);
    - every layer class of :mod:`normlab.layers` (all of ``__all__``);
    - the classes the lab's models are made of, ``normlab.models.MODEL_CLASSES``
      (``mlp`` and ``cnn`` are ``nn.Sequential``).

    No other global is added. A saved normlab model needs none (checked on
    torch 2.13 with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on
    every registered kind inside Sequential, cnn, mlp and rnn models, trained
    and untrained): what else a pickled module names, ``collections.OrderedDict``
    (its ``_modules``, ``_parameters``, ``_buffers`` and hook dicts), ``set``
    (``_non_persistent_buffers_set``), ``torch.nn.parameter.Parameter``,
    ``torch._utils._rebuild_parameter`` and ``_rebuild_tensor_v2``, dtypes and
    ``torch.device``, is on torch's own weights-only list already; normlab's
    ``_Default`` sentinel never reaches a pickle, because ``BatchNorm``
    resolves it to numbers in ``__init__``. Hook wrappers
    (``torch.nn.modules.module._WrappedHook``) appear only with the legacy
    ``torch.nn.utils.spectral_norm``, which normlab does not use, and
    parametrized modules (normlab's ``spectral_norm``) cannot be pickled whole.
    """
    torch_modules = [
        obj for obj in vars(nn).values() if isinstance(obj, type) and issubclass(obj, nn.Module)
    ]
    normlab_modules = [getattr(normlab_layers, name) for name in normlab_layers.__all__]
    return (*torch_modules, *normlab_modules, *normlab_models.MODEL_CLASSES)


def _qualified_names(classes: tuple[type, ...]) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in classes}


# --------------------------------------------------------------------------- loading


def load_checkpoint(path: str | os.PathLike[str]) -> nn.Module | dict[str, torch.Tensor]:
    """Load ``path`` safely as a full module or a state_dict.

    Accepts what ``torch.save`` wrote from:

    - ``model.state_dict()`` (tensors by name), returned as a dict;
    - a dict holding a state_dict (or a module) under ``"state_dict"``,
      ``"model_state_dict"`` or ``"model"`` beside other entries (epoch,
      optimizer state, ...), as training loops save; the state_dict (or
      module) is returned and the rest ignored;
    - ``model`` itself, when every class it names is in
      :func:`allowed_classes`.

    Never unpickles arbitrary objects: ``weights_only=True`` always.

    Raises:
        CheckpointError: the file is missing, empty, not a torch checkpoint,
            corrupt, holds something other than a model or state_dict, or
            names a class or function outside the allow-list (the message
            names it and says to save the state_dict instead).
    """
    return locate_checkpoint(path)[0]


def locate_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[nn.Module | dict[str, torch.Tensor], str]:
    """As :func:`load_checkpoint`, and where in the file the model or state_dict was: ""
    at the top level, else a phrase (``"under 'state_dict'; the file also holds epoch"``).

    Raises:
        CheckpointError: as :func:`load_checkpoint`.
    """
    path = Path(path)
    obj = _torch_load(path)
    found = _model_or_state_dict(obj)
    if found is not None:
        _check_loaded(found, path)
        return found, ""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            found = _model_or_state_dict(obj.get(key))
            if found is not None:
                _check_loaded(found, path)
                others = [str(other) for other in obj if other != key]
                beside = f"; the file also holds {', '.join(others)}" if others else ""
                return found, f"under {key!r}{beside}"
        if not obj:
            raise CheckpointError(
                f"{path}: holds an empty dict; there is no model or state_dict to inspect."
            )
        keys = ", ".join(repr(key) for key in list(obj)[:8])
        raise CheckpointError(
            f"{path}: holds a dict (keys {keys}{', ...' if len(obj) > 8 else ''}) that is "
            "neither a state_dict (tensors by name) nor has one under 'state_dict', "
            "'model_state_dict' or 'model'. Save model.state_dict(), or a dict with it under "
            "'state_dict'."
        )
    raise CheckpointError(
        f"{path}: holds a {type(obj).__name__}, not a model or a state_dict. "
        "Save model.state_dict() (or the model) with torch.save."
    )


def _model_or_state_dict(obj: object) -> nn.Module | dict[str, torch.Tensor] | None:
    if isinstance(obj, nn.Module):
        return obj
    if (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        return dict(obj)
    return None


def _torch_load(path: Path) -> object:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file. Check the path to the checkpoint.")
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        raise CheckpointError(
            f"{path}: is a directory; pass the checkpoint file that torch.save wrote."
        )
    if not stat.S_ISREG(mode):  # never opened: a FIFO would block, /dev/zero never ends
        raise CheckpointError(
            f"{path}: is {_file_kind(mode)}, not a regular file; pass the checkpoint file "
            "that torch.save wrote (copy a piped checkpoint to a file first)."
        )
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path}: the file is empty (0 bytes), not a checkpoint; was it saved completely?"
        )
    try:
        with path.open("rb") as file:  # an error here is about the file, not its contents
            file.read(1)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read: {error.strerror or error}.") from error
    _refuse_constructor_calls(path)
    try:
        with (
            torch.serialization.safe_globals(list(allowed_classes())),
            warnings.catch_warnings(),
        ):
            # A plain pickle's protocol draws a warning before the load fails anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except UnpicklingError as error:
        raise _unpickling_error(path, error) from error
    # torch.load raises many types on bytes that are not a checkpoint, OSError (EINVAL) too
    # on a truncated one: the file itself was readable, so each means its contents are bad.
    except Exception as error:
        raise CheckpointError(
            f"{path}: not a torch checkpoint, or a corrupt or truncated one: torch.load "
            f"failed with {type(error).__name__}: {_reason(error) or 'no message'}. "
            "Pass a file written by torch.save, or save it again."
        ) from error


def _pickles(path: Path, stack: ExitStack) -> Iterator[IO[bytes]]:
    """Each pickle torch.load will unpickle from ``path``, as a file at its start: a zip
    checkpoint's data.pkl, read as torch reads it, or a legacy file's consecutive pickles.
    Nothing when the pickle cannot be found (torch.load then fails before unpickling)."""
    file = stack.enter_context(path.open("rb"))
    if file.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
        file.seek(0)
        yield from [file] * LEGACY_PICKLES
        return
    try:
        record = torch._C.PyTorchFileReader(str(path)).get_record("data.pkl")
    except Exception:  # not a readable torch zip: torch.load fails on it the same way
        return
    yield BytesIO(record)


def _refuse_constructor_calls(path: Path) -> None:
    """Fail when the checkpoint's pickle calls a constructor instead of rebuilding what the
    file holds; read from its opcodes, before anything is unpickled."""
    allowed = frozenset(_qualified_names(allowed_classes()))
    try:  # torch's own list, so that a name torch refuses keeps torch's message
        defaults = torch._weights_only_unpickler._get_allowed_globals()
        resolvable = allowed | frozenset(defaults)
    except AttributeError:
        resolvable = None
    with ExitStack() as stack:
        calls = constructor_calls(_pickles(path, stack), allowed, resolvable)
    layers = [call for call in calls if call.startswith("num_layers=")]
    if layers:
        raise CheckpointError(
            f"{path}: refused to load: a module in it declares {', '.join(layers)}, more "
            f"than {MAX_LAYERS}; torch rebuilds a recurrent layer's weights in a loop over "
            f"that number, which the file chooses. {_SAVE_STATE_DICT}"
        )
    if calls:
        raise CheckpointError(
            f"{path}: refused to load: its pickle calls {', '.join(calls)}, which torch.save "
            "never writes (it rebuilds tensors from the file's own bytes and modules without "
            "calling their constructors), and with arguments of the file's choosing such a "
            f"call can allocate any amount of memory. {_SAVE_STATE_DICT}"
        )


def _file_kind(mode: int) -> str:
    """What a file that is not a regular file or a directory is, from its ``st_mode``."""
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((kind for test, kind in kinds if test(mode)), "a special file")


def _reason(error: BaseException) -> str:
    """torch's error message without its boilerplate (which suggests weights_only=False)."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in str(error).splitlines()]
    kept = [line for line in lines if line and not line.startswith(boilerplate)]
    return " ".join(kept).strip()


def _unpickling_error(path: Path, error: UnpicklingError) -> CheckpointError:
    refused = _refused_globals(path, str(error))
    if refused:
        names = ", ".join(refused)
        which = (
            "which is not a torch.nn module, a normlab layer or a normlab model"
            if len(refused) == 1
            else "which are not torch.nn modules, normlab layers or normlab models"
        )
        return CheckpointError(
            f"{path}: refused to load: it names {names}, {which}. "
            "Only those are loaded (weights_only=True), "
            "because loading any other class or function from a file can run code. "
            f"{_SAVE_STATE_DICT}"
        )
    return CheckpointError(
        f"{path}: not a checkpoint that can be loaded safely ({_reason(error)}): the file is "
        "corrupt, not written by torch.save (a plain pickle is refused too), or builds "
        f"objects other than tensors and modules. {_SAVE_STATE_DICT}"
    )


def _refused_globals(path: Path, message: str) -> list[str]:
    """The globals ``path`` names outside torch's and normlab's allow-lists, sorted."""
    try:
        # Reads the pickle's opcodes only; nothing is imported or constructed.
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: fall back to the name in torch's message
        names = []
    allowed = _qualified_names(allowed_classes())
    refused = sorted(name for name in names if name not in allowed)
    if not refused:
        refused = re.findall(r"GLOBAL (\S+)", message)
    return refused


def _check_loaded(found: nn.Module | dict[str, torch.Tensor], path: Path) -> None:
    _check_module_tree(found, path)
    _check_tensor_sizes(found, path)


def _named_tensors(found: nn.Module | dict[str, torch.Tensor]) -> Iterator[tuple[str, object]]:
    """Every tensor a tool may read in ``found``: a state_dict's values; a module tree's
    parameters, buffers and tensor attributes, by dotted name."""
    if not isinstance(found, nn.Module):
        yield from found.items()
        return
    for prefix, module in found.named_modules():
        attributes = vars(module)
        for key, value in [
            *attributes["_parameters"].items(),
            *attributes["_buffers"].items(),
            *attributes.items(),
        ]:
            yield (f"{prefix}.{key}" if prefix else str(key)), value


def _check_tensor_sizes(found: nn.Module | dict[str, torch.Tensor], path: Path) -> None:
    """Fail when a tensor has more elements than its storage holds: a broadcast view (stride
    0) of a few bytes can declare billions of elements, which reading its values (its mean,
    a float64 copy) would allocate whole."""
    for name, tensor in _named_tensors(found):
        if (
            not isinstance(tensor, torch.Tensor)
            or tensor.layout != torch.strided
            or tensor.device.type == "meta"
        ):
            continue
        needed = tensor.numel() * tensor.element_size()
        held = tensor.untyped_storage().nbytes()
        if needed > held:
            raise CheckpointError(
                f"{path}: {name!r} is a tensor of shape {tuple(tensor.shape)} "
                f"({needed:,} bytes) viewing {held:,} bytes of storage: a broadcast or "
                "overlapping view, which reading its values would allocate whole. Save "
                "tensors that own their memory (`t.contiguous()` or `t.clone()`), e.g. "
                "`torch.save({k: v.clone() for k, v in model.state_dict().items()}, PATH)`."
            )


def _check_module_tree(found: nn.Module | dict[str, torch.Tensor], path: Path) -> None:
    """Fail unless every module in ``found`` holds modules (or None) under ``_modules`` and
    tensors (or None) under ``_parameters`` and ``_buffers``, as torch builds them; a pickle
    can hold anything there, and every tool that walks the tree would then fail midway."""
    if not isinstance(found, nn.Module):
        return
    pending: list[tuple[str, nn.Module]] = [("", found)]
    seen: set[int] = set()
    while pending:
        prefix, module = pending.pop()
        if id(module) in seen:  # shared, or a module that contains itself
            continue
        seen.add(id(module))
        for registry, wanted in (
            ("_modules", nn.Module),
            ("_parameters", torch.Tensor),
            ("_buffers", torch.Tensor),
        ):
            entries = vars(module).get(registry)
            if not isinstance(entries, Mapping):
                raise CheckpointError(
                    f"{path}: module {prefix or '(top level)'!r} "
                    f"({type(module).__name__}) has no {registry} mapping; the file is "
                    f"corrupt or was not written by torch.save. {_SAVE_STATE_DICT}"
                )
            for key, value in entries.items():
                name = f"{prefix}.{key}" if prefix else str(key)
                if value is not None and not isinstance(value, wanted):
                    raise CheckpointError(
                        f"{path}: {name!r} in {registry} of {type(module).__name__} is a "
                        f"{type(value).__name__}, where torch keeps a {wanted.__name__}; the "
                        f"module is malformed and cannot be inspected. {_SAVE_STATE_DICT}"
                    )
                if registry == "_modules" and value is not None:
                    pending.append((name, value))
