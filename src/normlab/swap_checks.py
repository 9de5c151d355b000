"""What :func:`normlab.replace_norms` checks besides the layers themselves: the model (no
TorchScript holding norms), each old layer (no hooks, no references outside the module
tree) and, on an example input, the swapped model's forward pass."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from normlab.modes import eval_mode


def refuse_torchscript(model: nn.Module) -> None:
    """TypeError for a TorchScript module holding normalization layers: its compiled forward
    would keep calling the old layers whatever replace_norms registers."""
    for path, module in model.named_modules():
        if not isinstance(module, torch.jit.ScriptModule):
            continue
        names = {getattr(m, "original_name", "") for m in module.modules()}
        norms = sorted(n for n in names if "norm" in n.lower())
        if norms:
            where = f"TorchScript module at {path}" if path else "a TorchScript model"
            raise TypeError(
                f"replace_norms cannot change {where} (holding {', '.join(norms)}): its "
                "compiled forward keeps calling the layers it was scripted with. Swap the norms "
                "of the Python model before torch.jit.script."
            )


_HOOKS = (
    ("forward", "_forward_hooks"),
    ("forward pre", "_forward_pre_hooks"),
    ("backward", "_backward_hooks"),
    ("backward pre", "_backward_pre_hooks"),
)


def hooks_problem(module: nn.Module) -> str | None:
    """Why hooks registered on ``module`` forbid replacing it, or None."""
    kinds = [label for label, attribute in _HOOKS if getattr(module, attribute, None)]
    if not kinds:
        return None
    return (
        f"has {' and '.join(kinds)} hooks, which would not fire on the new layer; remove "
        "them (handle.remove()), swap, then register them on the new layer"
    )


def plain_references(model: nn.Module, targets: set[nn.Module]) -> dict[nn.Module, list[str]]:
    """Where ``targets`` are also held outside the module tree: in lists, tuples, sets or
    dicts kept as plain attributes of the model's modules (``"blocks.0.steps[1]"``)."""
    found: dict[nn.Module, list[str]] = {}

    def visit(value: Any, where: str, depth: int) -> None:
        if isinstance(value, nn.Module):
            if value in targets:
                found.setdefault(value, []).append(where)
            return
        if depth == 0:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{where}[{key!r}]", depth - 1)
        elif isinstance(value, list | tuple | set | frozenset):
            for index, item in enumerate(value):
                visit(item, f"{where}[{index}]", depth - 1)

    for path, module in model.named_modules():
        for attribute, value in vars(module).items():
            if attribute.startswith("_"):
                continue
            visit(value, f"{path}.{attribute}" if path else attribute, 3)
    return found


def check_forward(
    model: nn.Module,
    layers: dict[nn.Module, tuple[str, str]],
    example_input: Any,
    replaced: dict[nn.Module, str],
) -> None:
    """One eval forward pass of ``model`` on ``example_input`` (a tuple is unpacked).

    Each new layer in ``layers`` (-> its path, and "Old replaced by kind") must run and keep
    the shape of its input, and no old layer in ``replaced`` (-> "path (Old)") may run.
    ValueError names the first that does not."""
    current: list[nn.Module] = []
    wrong: list[str] = []
    stale: list[str] = []

    def enter(module: nn.Module, args: tuple) -> None:
        current.append(module)

    def leave(module: nn.Module, args: tuple, output: Any) -> None:
        current.pop()
        shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != shape:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            wrong.append(f"{layers[module][0]}: input {shape} gave {got}")

    def still_used(module: nn.Module, args: tuple) -> None:
        if replaced[module] not in stale:
            stale.append(replaced[module])

    hooks = [m.register_forward_pre_hook(enter) for m in layers]
    hooks += [m.register_forward_hook(leave) for m in layers]
    hooks += [m.register_forward_pre_hook(still_used) for m in replaced]
    try:
        with ExitStack() as modes, torch.no_grad():
            for module in [model, *replaced]:
                modes.enter_context(eval_mode(module))
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            model(*args)
    except Exception as error:  # any failure of the user's forward pass is reported
        where = ""
        if current:
            path, what = layers[current[-1]]
            where = f" in {path} ({what})"
        raise ValueError(
            f"the model with its norms replaced failed on example_input{where}: "
            f"{type(error).__name__}: {error}. Nothing was changed."
        ) from error
    finally:
        for hook in hooks:
            hook.remove()
    if stale:
        raise ValueError(
            f"{'; '.join(stale)} still ran on example_input though replaced: the model "
            "reaches it through a reference replace_norms cannot see (a closure, a global, "
            "a plain attribute). Register it as a submodule, or exclude= it. "
            "Nothing was changed."
        )
    if wrong:
        raise ValueError(
            "replaced layers changed the shape of their input: "
            f"{'; '.join(wrong)}. Nothing was changed."
        )
