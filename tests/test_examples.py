"""The examples run, at small scale, and say what they measured."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bn_inference_scores_every_remedy_and_frozen_and_folded_match_eval(capsys):
    example = _load("bn_inference")
    assert example.main(["--epochs", "1", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    scores = dict(re.findall(r"│ (.+?)\s+│\s+([\d.]+) │", out))
    assert len(scores) == 6, out
    eval_mode = scores["eval mode, running statistics from training"]
    assert scores["frozen (FrozenBatchNorm), in training mode"] == eval_mode
    assert scores["folded into the Linear layers (eval)"] == eval_mode
    assert all(0 <= float(score) <= 100 for score in scores.values())
    assert "predictions agree" in out
