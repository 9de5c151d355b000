"""Where modules sit in a model's tree, and replacing them at every place they are registered.

A module may be registered under several names: shared by two parents, held
twice by one ``Sequential``, or inside a container that is itself registered
twice. Replacing it means finding every one of those places in the tree as
it is, then changing them all; changing one place before finding the next
would walk a tree already half changed.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn


def module_paths(root: nn.Module) -> dict[nn.Module, list[str]]:
    """Every qualified name under which each module of ``root`` is registered.

    Modules come in ``named_modules`` order; each module's names in the order
    they are reached; ``root``'s own name is ``""``.
    """
    paths: dict[nn.Module, list[str]] = {}
    for path, module in root.named_modules(remove_duplicate=False):
        names = paths.setdefault(module, [])
        if path not in names:
            names.append(path)
    return paths


def replace_modules(root: nn.Module, replacements: Mapping[nn.Module, nn.Module]) -> nn.Module:
    """Put ``replacements[old]`` at every place where ``old`` is registered in ``root``.

    All places are found before any is changed, so a module reached through
    a container registered twice, or registered twice itself, is replaced
    everywhere and every place holds the same new module. The checks run
    first: when one fails nothing is changed.

    Args:
        root: the model; changed in place.
        replacements: each module to replace (by identity) and its replacement.

    Returns:
        ``root``, or its replacement when ``root`` itself is replaced (as
        ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does).

    Raises:
        ValueError: a module to replace is not in ``root``, or lies inside
            another module to replace (its place would vanish with its parent).
    """
    paths = module_paths(root)
    missing = [type(old).__name__ for old in replacements if old not in paths]
    if missing:
        raise ValueError(
            f"cannot replace {', '.join(missing)}: not a submodule of the "
            f"{type(root).__name__} given. Pass modules of that model."
        )
    for old in replacements:
        inner = [m for m in old.modules() if m is not old and m in replacements]
        if inner:
            raise ValueError(
                f"cannot replace {paths[old][0] or 'the root'} and "
                f"{paths[inner[0]][0]} together: the second lies inside the first. "
                "Replace only one of them."
            )
    if root in replacements:
        return replacements[root]
    places: dict[tuple[int, str], tuple[nn.Module, str, nn.Module]] = {}
    for old, new in replacements.items():
        for path in paths[old]:
            parent_path, _, name = path.rpartition(".")
            parent = root.get_submodule(parent_path)
            places[(id(parent), name)] = (parent, name, new)
    for parent, name, new in places.values():
        setattr(parent, name, new)
    return root
