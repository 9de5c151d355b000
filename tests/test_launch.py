"""The ``normlab`` command's launcher: a Ctrl-C while normlab and torch import."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = "import sys, normlab_launch; sys.exit(normlab_launch.main())"


def test_the_command_is_the_launcher():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["normlab"] == "normlab_launch:main"
    assert "normlab_launch" in project["tool"]["setuptools"]["py-modules"]


def test_ctrl_c_while_importing_exits_130_without_a_traceback(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    # -X importtime writes a stderr line as each module finishes importing: the first torch
    # module shows the process is inside normlab's import of torch.
    argv = [sys.executable, "-X", "importtime", "-c", LAUNCH]
    argv += ["compare", "--seeds", "1", "--epochs", "1", "--out", str(tmp_path / "sweep")]
    process = subprocess.Popen(
        argv,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        # A shell without job control starts background commands with SIGINT ignored, and
        # Python keeps it so: give the command the disposition a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.rsplit("|", 1)[-1].strip().startswith("torch"):  # inside torch's import
            process.send_signal(signal.SIGINT)
            break
    else:
        pytest.fail("torch was never imported: " + "".join(lines[-5:]))
    start = time.monotonic()
    rest = process.stderr.read()
    status = process.wait(timeout=120)
    assert time.monotonic() - start < 120
    messages = [line for line in rest.splitlines() if not line.startswith("import time:")]
    assert status == 130, "\n".join(messages)
    assert not any("Traceback" in line for line in messages), "\n".join(messages)
    assert any("interrupted while starting" in line for line in messages)
    assert not (tmp_path / "sweep").exists()
