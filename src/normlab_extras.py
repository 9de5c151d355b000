"""What the lab needs beyond the library, checked without importing it.

``pip install normlab`` installs the library (layers, functional, inference,
swap, conversion, checkpoints) with torch and numpy alone; the lab (the
``normlab`` command, compare, report, study, bench) needs the ``lab`` extra.
Where one of the extra's packages is missing, the lab says so in one line that
names the extra, instead of a ModuleNotFoundError from deep inside it.

This module imports only the standard library and lives outside the normlab
package, so the ``normlab`` command's launcher can check before torch imports.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

#: The lab extra's packages, import name -> distribution name (pyproject.toml's ``lab`` extra).
LAB_PACKAGES = {
    "rich": "rich",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "PIL": "pillow",
    "cloudpickle": "cloudpickle",
}

INSTALL_LAB = 'pip install "normlab[lab]"'


def missing_lab_packages(modules: Iterable[str] = LAB_PACKAGES) -> list[str]:
    """The distribution names of those of ``modules`` (import names of the lab extra's
    packages) that cannot be imported here; nothing is imported to find out."""
    return [LAB_PACKAGES[module] for module in _missing_modules(modules)]


def lab_extra_message(what: str, missing: Iterable[str]) -> str:
    """One line: ``what`` needs the lab extra, which packages are missing, how to install it."""
    return f"{what} needs the lab extra (not installed: {', '.join(missing)}): {INSTALL_LAB}"


def require_lab_extra(what: str, modules: Iterable[str] = LAB_PACKAGES) -> None:
    """Raise ModuleNotFoundError (an ImportError) naming the lab extra if any of ``modules``
    (import names of the lab extra's packages, all of them by default) is not installed.

    ``what`` names what needs them, the message's subject: "normlab's lab", "the digits".
    """
    missing = _missing_modules(modules)
    if missing:
        message = lab_extra_message(what, [LAB_PACKAGES[module] for module in missing])
        raise ModuleNotFoundError(message, name=missing[0])


def _missing_modules(modules: Iterable[str]) -> list[str]:
    return [module for module in modules if importlib.util.find_spec(module) is None]
