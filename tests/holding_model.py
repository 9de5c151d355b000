"""A user model (``--model holding:build``) whose ``ln`` runs cannot finish until the test
says so: interruption tests wait for events, never for time, and need a sweep that is
certain to have work left when their signal lands.

Every training step of an ``ln`` model waits until the file ``release`` exists in the
module's directory, and first touches ``holding-<pid>`` there, so a test knows which
process holds a run. Forward passes without gradients (the sweep's check before training,
evaluation) never wait, nor do the other kinds' runs.
"""

from __future__ import annotations

from pathlib import Path

SPEC = "holding:build"
HELD_KIND = "ln"  # as written in the source below

_SOURCE = """
import os
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


class HeldWhileTraining(nn.Module):
    def __init__(self, body, held):
        super().__init__()
        self.body = body
        self.held = held

    def forward(self, images):
        if self.held and torch.is_grad_enabled():
            (HERE / f"holding-{os.getpid()}").touch()
            while not (HERE / "release").exists():
                time.sleep(0.05)
        return self.body(images)


def build(norm, num_classes, input_shape):
    values = input_shape[0] * input_shape[1] * input_shape[2]
    body = nn.Sequential(
        nn.Flatten(), nn.Linear(values, 16), norm(16), nn.ReLU(), nn.Linear(16, num_classes)
    )
    return HeldWhileTraining(body, norm.kind == "ln")
"""


def write_holding_model(directory: Path) -> str:
    """Write the module into ``directory`` (run the sweep from there) and return its
    ``--model`` spec."""
    (directory / "holding.py").write_text(_SOURCE)
    return SPEC


def holders(directory: Path) -> list[int]:
    """The pids of the processes that are holding a run, or have held one."""
    return sorted(int(path.name.split("-")[1]) for path in directory.glob("holding-*"))


def release(directory: Path) -> None:
    """Let every held run, now and later, go on."""
    (directory / "release").touch()
