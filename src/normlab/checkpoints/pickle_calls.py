"""What a checkpoint's pickle calls, read from its opcodes before anything is unpickled.

``weights_only=True`` lets a pickle call any allow-listed global with arguments of the file's
choosing: ``nn.Linear(20000, 20000)`` from a 1 kB file allocates 1.6 GB, as do
``bytearray(N)``, ``torch.FloatTensor(N, M)`` and ``torch.Tensor.__new__(torch.Tensor, N, M)``,
all on torch's own list. ``torch.save`` never writes such calls: it rebuilds tensors from the
storages in the file and containers from their items (:data:`REBUILDERS`), and restores a
module with ``cls.__new__(cls)`` and its ``__dict__``, never calling ``__init__``
(:data:`NEW_OBJECTS`, plus the allowed module classes). :func:`constructor_calls` lists the
other calls a pickle makes, without importing or constructing anything.
"""

from __future__ import annotations

import pickletools
from collections.abc import Iterable, Iterator
from typing import IO

from torch._utils import IMPORT_MAPPING, NAME_MAPPING

#: What a REDUCE may call: functions and types that only reassemble what the file holds.
REBUILDERS = frozenset(
    {
        "_codecs.encode",
        "builtins.complex",
        "builtins.set",
        "collections.Counter",
        "collections.OrderedDict",
        "torch.Size",
        "torch.device",
        "torch.serialization._get_layout",
        "torch._utils._rebuild_meta_tensor_no_storage",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
    }
)

MAX_LAYERS = 1024
"""The most layers a pickled module's ``num_layers`` may declare. torch rebuilds an old-format
recurrent layer's weight names in a loop over it, in time quadratic in the number: a 3 kB
file declaring ten million layers would keep the loader busy for days."""

#: What a NEWOBJ may create besides module classes (whose ``__new__`` allocates nothing).
NEW_OBJECTS = frozenset({"collections.OrderedDict", "torch.nn.parameter.Parameter"})

_MARK = object()


class _Global(str):
    """A global the pickle pushed: its dotted name, as torch's unpickler resolves it."""


def _global(arg: object) -> _Global:
    """The name of GLOBAL's argument ("module name"), with the Python 2 names that torch's
    unpickler maps to Python 3 ones mapped alike."""
    module, _, name = str(arg).partition(" ")
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return _Global(f"{module}.{name}")


def _calls(
    ops: Iterator[tuple[pickletools.OpcodeInfo, object, int | None]],
) -> Iterator[tuple[str, _Global]]:
    """(opcode name, callable) for every REDUCE and NEWOBJ whose callable is a global,
    following the pickle's stack and memo as pickletools.dis does. (torch's unpickler runs
    no other opcode that calls, nor DUP, MEMOIZE or the text memo opcodes.)"""
    stack: list[object] = []
    memo: dict[object, object] = {}
    for opcode, arg, _ in ops:
        name, before, after = opcode.name, opcode.stack_before, opcode.stack_after
        pushed: object = None
        if name == "MARK":
            stack.append(_MARK)
            continue
        if name == "GLOBAL":
            pushed = _global(arg)
        elif name in ("REDUCE", "NEWOBJ") and isinstance(stack[-2], _Global):
            yield name, stack[-2]
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            pushed = memo.get(arg)
        if pickletools.markobject in before:
            while stack.pop() is not _MARK:
                pass
            del stack[len(stack) - before.index(pickletools.markobject) :]
        elif before:
            del stack[-len(before) :]
        stack.extend([None] * (len(after) - 1) + [pushed] if after else [])


def _watch_layers(
    ops: Iterator[tuple[pickletools.OpcodeInfo, object, int | None]], oversized: list[int]
) -> Iterator[tuple[pickletools.OpcodeInfo, object, int | None]]:
    """``ops`` unchanged, noting in ``oversized`` every integer over MAX_LAYERS that a
    ``"num_layers"`` key is set to (the key, then its value, memo opcodes between them)."""
    key: object = None
    for op in ops:
        opcode, arg, _ = op
        if key == "num_layers" and isinstance(arg, int) and arg > MAX_LAYERS:
            oversized.append(arg)
        if opcode.name not in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
            key = arg
        yield op


def _stream_calls(file: IO[bytes], oversized: list[int]) -> tuple[list[tuple[str, _Global]], bool]:
    """The calls of the one pickle at ``file``'s position, read up to its STOP, and whether
    it was well formed; when it is not, the calls before the malformed opcode (the
    unpickler stops there too). Oversized layer counts go to ``oversized``."""
    found: list[tuple[str, _Global]] = []
    try:
        found.extend(_calls(_watch_layers(pickletools.genops(file), oversized)))
    except (ValueError, IndexError, EOFError, UnicodeDecodeError):
        return found, False
    return found, True


def constructor_calls(
    pickles: Iterable[IO[bytes]], module_classes: frozenset[str], resolvable: frozenset[str] | None
) -> list[str]:
    """The calls the pickles make other than rebuilding what the file holds: ``"Linear(...)"``
    style names, sorted, each once; and a module state declaring more than MAX_LAYERS
    layers, as ``"num_layers=N"``.

    Args:
        pickles: each pickle the loader will unpickle, positioned at its start (consecutive
            pickles may share one file: each is read up to its STOP).
        module_classes: dotted names of the module classes NEWOBJ may create.
        resolvable: dotted names the unpickler resolves at all (others it refuses by
            name, before calling them), or None to count every name as resolvable.
    """
    refused: set[str] = set()
    oversized: list[int] = []
    for file in pickles:
        calls, complete = _stream_calls(file, oversized)
        for opcode, target in calls:
            if resolvable is not None and target not in resolvable:
                continue
            if opcode == "REDUCE" and target not in REBUILDERS:
                refused.add(f"{target}(...)")
            elif opcode != "REDUCE" and target not in NEW_OBJECTS | module_classes:
                refused.add(f"{target}.__new__(...)")
        if not complete:  # the unpickler fails here: later pickles are never read
            break
    refused.update(f"num_layers={n}" for n in oversized)
    return sorted(refused)
