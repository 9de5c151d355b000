"""The `normlab norms` command: a table of every kind applied to one batch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spec import CANONICAL_KINDS

CANONICAL = CANONICAL_KINDS
SCRIPT = Path(sys.executable).with_name("normlab")


def _row_names(output: str) -> set[str]:
    """The first cell of every table row: the word each line starts with."""
    return {match.group(1) for match in re.finditer(r"^\W*([a-z][a-z-]*)\s", output, re.M)}


def test_norms_prints_every_canonical_kind(run_cli):
    """`normlab norms` exits 0 and has a row for each canonical kind."""
    status, out, _ = run_cli(["norms"])
    assert status == 0
    assert set(CANONICAL) <= _row_names(out)


def test_norms_on_a_2d_batch_explains_that_instance_norm_needs_spatial_dims(run_cli):
    """With --shape 4,6 every kind still gets a row, and 'in' says it needs spatial dims."""
    status, out, err = run_cli(["norms", "--shape", "4,6"])
    assert status == 0, err
    assert set(CANONICAL) <= _row_names(out)
    assert "Traceback" not in out + err
    assert re.search(r"spatial|\(N, C, L\)", out, re.I), out


@pytest.mark.parametrize("shape", ["2,3,5", "3,4,2,2,2"])
def test_norms_accepts_other_ranks(shape, run_cli):
    """1-D and 3-D spatial batches produce the table too."""
    status, out, err = run_cli(["norms", "--shape", shape, "--seed", "1"])
    assert status == 0, err
    assert set(CANONICAL) <= _row_names(out)


@pytest.mark.parametrize("shape", ["abc", "4,x", "8", "4,0", "4,-2", ""])
def test_bad_shape_is_a_usage_error_not_a_traceback(shape, run_cli):
    """A malformed --shape exits non-zero with an argparse-style message naming --shape."""
    status, out, err = run_cli(["norms", "--shape", shape])
    assert status not in (0, None)
    assert "Traceback" not in out + err
    assert "--shape" in err
    assert repr(shape) in err or shape in err


def test_installed_console_script_prints_the_table():
    """The installed `normlab` script runs `norms`, exits 0 and lists bn-scalar."""
    assert SCRIPT.exists(), f"console script not installed at {SCRIPT}"
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    result = subprocess.run(
        [str(SCRIPT), "norms"], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "bn-scalar" in result.stdout
    assert set(CANONICAL) <= _row_names(result.stdout)


def test_inspect_prints_the_batch_norm_layers_of_a_saved_model(tmp_path, run_cli):
    import torch

    from normlab.models import build_model

    model = build_model("mlp", (1, 8, 8), 10, norm="bn-scalar", hidden=[12, 6])
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    status, out, err = run_cli(["inspect", str(path)])
    assert status == 0, err
    assert "2 batch-norm layers" in out
    assert "stats scalar" in out
    status, _, err = run_cli(["inspect", str(tmp_path / "missing.pt")])
    assert status == 2 and "no such file" in err
