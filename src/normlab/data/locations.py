"""Where other libraries leave downloaded data sets; resolved at call time, never cached.

``~`` is ``Path.home()`` (the ``HOME`` variable on POSIX) and ``.`` is the
current directory, both read when the function is called.
"""

from __future__ import annotations

import os
from pathlib import Path


def keras_datasets_dir() -> Path:
    """Keras' download cache: ``$KERAS_HOME/datasets``, else ``~/.keras/datasets``."""
    keras_home = os.environ.get("KERAS_HOME")
    return (Path(keras_home) if keras_home else Path.home() / ".keras") / "datasets"


def torchvision_roots() -> tuple[Path, Path]:
    """The ``root`` folders tutorials pass to torchvision: ``./data``, then ``~/data``."""
    return (Path.cwd() / "data", Path.home() / "data")
