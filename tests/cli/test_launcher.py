"""The ``normlab`` command's launcher: a Ctrl-C while normlab and torch import."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = "import sys, normlab_launch; sys.exit(normlab_launch.main())"


def test_the_command_is_the_launcher():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["normlab"] == "normlab_launch:main"
    assert "normlab_launch" in project["tool"]["setuptools"]["py-modules"]


# Run before the launcher: an import hook that, once normlab is importing, stops the import
# of torch until a signal ends it, and says so on stderr. A SIGINT sent after that line lands
# while normlab is importing, however fast or slow the machine.
HOLD_TORCHS_IMPORT = """
import sys, time

class HoldTorchsImport:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "normlab" in sys.modules:
            print("holding the import of torch", file=sys.stderr, flush=True)
            while True:
                time.sleep(0.05)
        return None

sys.meta_path.insert(0, HoldTorchsImport())
"""


def test_ctrl_c_while_importing_exits_130_without_a_traceback(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    argv = [sys.executable, "-c", HOLD_TORCHS_IMPORT + LAUNCH]
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
    try:
        before = []
        for line in process.stderr:
            if line == "holding the import of torch\n":
                process.send_signal(signal.SIGINT)
                break
            before.append(line)
        else:
            pytest.fail("normlab never imported torch: " + "".join(before[-5:]))
        _, rest = process.communicate(timeout=120)  # the timeout only turns a hang into a failure
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130, rest
    assert "Traceback" not in rest, rest
    assert "interrupted while starting" in rest, rest
    assert not (tmp_path / "sweep").exists()
