"""The examples run, at small scale, and say what they measured."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


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


def test_own_model_swaps_a_torchvision_style_resnet_and_trains_it_through_the_lab(tmp_path, capsys):
    """The example's factory builds a model with BatchNorm2d hard-coded, replace_norms swaps
    every one (stem, blocks, downsample branch) and the lab trains each kind on it."""
    example = _load("own_model")
    argv = ["--norms", "bn,gn,ln", "--batch-sizes", "16", "--epochs", "1"]
    assert example.main([*argv, "--train-subset", "120", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    swapped = [line for line in out.splitlines() if "BatchNorm2d" in line]
    assert len(swapped) == 6, out  # stem, 2 per block, the downsample branch's
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["config"]["norm"] for r in records} == {"bn", "gn", "ln"}
    assert {r["config"]["model"] for r in records} == {"small_resnet"}
    assert all(r["data"]["train_size"] == 120 for r in records)
    assert all(0 <= r["final"]["val_acc"] <= 1 for r in records)
    for kind in ("bn", "gn", "ln"):
        assert re.search(rf"│ {kind}\s+│\s+16\s+│", out), out


def test_the_readmes_own_model_factory_runs_as_written(tmp_path, monkeypatch):
    """README's "Your own model": its mynets.py, as printed, passes check_runs on the
    default digits data for each norm of its example command."""
    import sys

    from normlab.data import load_dataset
    from normlab.experiment import RunConfig, check_runs

    readme = (EXAMPLES.parent / "README.md").read_text()
    code = re.search(r"```python\n(# mynets\.py.*?)```", readme, re.DOTALL).group(1)
    (tmp_path / "mynets.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        data = load_dataset("digits")
        runs = [
            RunConfig(model="mynets:small_resnet", norm=n, batch_size=4) for n in ("bn", "gn", "ln")
        ]
        check_runs(runs, data)
    finally:
        sys.modules.pop("mynets", None)
