"""The cost claims' microbenchmarks (normlab.study.cost) and their tests (cost_claims).

Oracles: batch norm's training forward in float64 from its definition (per-channel or one
mean and biased variance for the whole batch); planted timings for the verdicts.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from normlab.report.evaluation import INCONCLUSIVE, SUPPORTED
from normlab.study import cost
from normlab.study.cells import Runs
from normlab.study.claims import declared
from normlab.study.findings import evaluate_section
from normlab.study.plan import BUDGETS, plan

QUICK = BUDGETS["quick"]


@pytest.mark.parametrize("stats", ["1s", "2s"])
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5, 2)])
def test_the_matched_implementation_is_batch_norm_in_float64(stats, shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64) * 3 + 1
    weight = torch.randn(shape[1], generator=generator, dtype=torch.float64)
    bias = torch.randn(shape[1], generator=generator, dtype=torch.float64)
    dims = tuple(range(x.dim())) if stats == "1s" else (0, *range(2, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    affine = (1, shape[1]) + (1,) * (len(shape) - 2)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * weight.view(affine) + bias.view(affine)
    got = cost.matched_batch_norm(x, stats, weight, bias)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def _cost_sections():
    keys = ("bn-overhead", "scalar-cheaper", "bn-faster-wall")
    return [s for s in declared(QUICK) if s.key in keys]


def test_every_arm_of_the_cost_tests_selects_one_sample_per_round():
    from normlab.data import load_dataset

    measured = cost.measure(rounds=2, min_run_time=0.001, data=load_dataset("digits"), seeds=2)
    samples = measured["samples"]
    assert measured["threads"] == 1
    assert all(s["seconds"] is None or s["seconds"] > 0 for s in samples)
    runs = Runs(plan(QUICK), [], {"cost": samples})
    for section in _cost_sections():
        for declared_test in section.tests:
            for arm in declared_test.test.arms:
                chosen = runs.select(arm.where)
                assert sorted(s["config"]["seed"] for s in chosen) == [0, 1], arm.label


def _planted(slower: dict[tuple, float]) -> list[dict]:
    """Ten rounds of every variant at 100 µs times a planted factor, with noise."""
    rng = random.Random(0)
    samples = []
    for round_ in range(10):
        for fields, _ in cost.variants():
            key = (fields["measure"], fields.get("norm") or fields["stats"])
            seconds = 1e-4 * slower.get(key, 1.0) * (1 + rng.gauss(0, 0.01))
            samples.append({"config": {**fields, "seed": round_}, "seconds": seconds})
    for seed in range(5):
        for norm in cost.STEP_NORMS:
            seconds = 10.0 * slower.get(("time-to-accuracy", norm), 1.0) * (1 + rng.gauss(0, 0.01))
            config = {"measure": "time-to-accuracy", "norm": norm, "seed": seed}
            samples.append({"config": config, "seconds": seconds})
    return samples


def test_planted_costs_get_the_verdicts_of_their_claims():
    samples = _planted(
        {("step", "bn"): 1.3, ("layer", "1s"): 0.8, ("time-to-accuracy", "none"): 1.5}
    )
    runs = Runs(plan(QUICK), [], {"cost": samples})
    found = {t.test.id: t for s in _cost_sections() for t in evaluate_section(s, runs).tests}
    assert found["bn-overhead"].verdict == SUPPORTED
    assert found["bn-overhead"].estimate == pytest.approx(
        torch.tensor(1.3).log10().item(), abs=0.01
    )
    assert found["bn-overhead"].paired
    assert found["bn-overhead (ln / none)"].verdict == INCONCLUSIVE
    assert found["scalar-cheaper"].verdict == SUPPORTED
    assert found["bn-faster-wall"].verdict == SUPPORTED and found["bn-faster-wall"].paired
    nothing = Runs(plan(QUICK), [], {"cost": _planted({})})
    found = {t.test.id: t for s in _cost_sections() for t in evaluate_section(s, nothing).tests}
    assert found["bn-overhead"].verdict == INCONCLUSIVE


def test_without_measurements_the_cost_tests_wait_for_them(tmp_path):
    assert cost.read_cost(tmp_path) == []
    runs = Runs(plan(QUICK), [], {"cost": cost.read_cost(tmp_path)})
    for section in _cost_sections():
        for finding in evaluate_section(section, runs).tests:
            assert finding.verdict not in (SUPPORTED, INCONCLUSIVE)


@pytest.mark.parametrize(
    "content",
    ["{", '{"samples": [{"seconds": 1}]}', '{"samples": [{"config": {}, "seconds": -1}]}'],
)
def test_a_cost_file_that_cannot_be_read_is_named_with_the_command_that_rewrites_it(
    tmp_path, content
):
    (tmp_path / cost.COST_FILE).write_text(content)
    with pytest.raises(ValueError, match=r"cost\.json cannot be read.*--cost"):
        cost.read_cost(tmp_path)


def test_write_cost_publishes_the_file_read_cost_reads(tmp_path):
    measured = {"threads": 1, "samples": [{"config": {"measure": "step"}, "seconds": 1e-3}]}
    path = cost.write_cost(tmp_path, measured)
    assert json.loads(path.read_text())["samples"] == measured["samples"]
    assert cost.read_cost(tmp_path) == measured["samples"]


def test_the_cost_flag_measures_writes_and_regenerates_the_report(tmp_path, run_cli, monkeypatch):
    from data_fixtures import mnist_arrays, write_mnist_idx

    planted = {"threads": 1, "rounds": 10, "samples": _planted({("step", "bn"): 1.3})}
    calls = []
    monkeypatch.setattr(cost, "measure", lambda data: calls.append(len(data.train_x)) or planted)
    write_mnist_idx(tmp_path / "mnist", mnist_arrays(0, n_train=20, n_val=10))
    report = tmp_path / "report"
    argv = ["study", "claims", "--budget", "quick", "--cost", "--report", str(report)]
    status, _, err = run_cli(argv)
    assert status != 0 and "--data-dir" in err and calls == []
    status, _, err = run_cli([*argv, "--data-dir", str(tmp_path / "mnist")])
    assert status == 0, err
    assert calls == [20] and cost.read_cost(report) == planted["samples"]
    text = (report / "claims.md").read_text()
    assert "| bn-overhead | primary |" in text
    assert "batch norm adds computational overhead" in text.lower()


def test_time_to_accuracy_counts_training_steps_until_the_target_and_none_beyond(monkeypatch):
    from normlab.data import load_dataset

    digits = load_dataset("digits")
    monkeypatch.setattr(cost, "CHECK_EVERY", 5)
    reached = cost.time_to_accuracy("bn", 0, digits, target=0.5)
    assert reached is not None and reached > 0
    monkeypatch.setattr(cost, "MAX_EPOCHS", 1)
    assert cost.time_to_accuracy("bn", 0, digits, target=1.01) is None
