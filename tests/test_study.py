"""The claims study: its plan, its statistics on records with planted effects, its report,
and (slow) the whole command on synthetic MNIST files."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from normlab.experiment.train import batch_slices, planned_steps
from normlab.report.claims import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from normlab.study import BUDGETS, plan
from normlab.study.claims import sections
from normlab.study.findings import Check, Group, Runs, adjust, compute
from normlab.study.report import render
from normlab.study.run import adjust_sections

QUICK = BUDGETS["quick"]
SEEDED = dataclasses.replace(QUICK, seeds=5, sweep_seeds=5)
"""Enough seeds that planted effects survive Holm's adjustment."""


def test_every_experiment_is_planned_with_distinct_runs():
    experiments = plan(QUICK, models=("mlp", "cnn", "rnn", "transformer", "resnet20"))
    assert {
        "batch",
        "equal-steps",
        "linear-lr",
        "lr",
        "depth",
        "dropout",
        "width",
        "rnn",
        "conv-small-batch",
        "transformer",
        "resnet20-small-batch",
    } == set(experiments)
    for name, runs in experiments.items():
        assert runs, name
        assert len({run.run_id for run in runs}) == len(runs), name
        assert all(run.dataset == "mnist" for run in runs)
    assert all(run.diagnostics for run in experiments["batch"] + experiments["depth"])
    for run in experiments["equal-steps"]:  # the epochs hold the steps at every batch size
        batches = len(batch_slices(run.train_subset, run.batch_size))
        assert planned_steps(run, batches) == QUICK.equal_steps
    assert {run.effective_lr for run in experiments["linear-lr"]} == {
        1e-3 * size / 32 for size in (min(QUICK.batch_sizes), max(QUICK.batch_sizes))
    }
    without = plan(QUICK, dropout=False)
    assert "dropout" not in without and "transformer" not in without


# --- statistics on planted effects -----------------------------------------------------


def _check(values_a, values_b, side="greater", margin=None) -> Check:
    spec = dict(
        key="k",
        title="t",
        quote="q",
        source="s",
        hypothesis="h",
        experiment="e",
        measure="m",
        side=side,
        margin=margin,
    )
    groups = (
        Group("a", 1, tuple(values_a), len(values_a)),
        Group("b", -1, tuple(values_b), len(values_b)),
    )
    return compute(Check(**spec, groups=groups))


def test_verdicts_read_holm_adjusted_p_values():
    clear = _check([10.0, 10.1, 9.9, 10.05], [0.0, 0.1, -0.1, 0.02])
    borderline = _check([1.0, 1.5, 0.5, 1.2], [0.0, 0.6, -0.2, 0.5])  # p between 0.01 and 0.05
    assert borderline.raw_verdict == SUPPORTED and 0.01 < borderline.p < 0.05
    alone = adjust([borderline])[0]
    assert alone.verdict == SUPPORTED and alone.p_adjusted == pytest.approx(borderline.p)
    crowded = adjust([clear, borderline, _check([0.0, 1.0], [0.5, 0.4])])
    assert crowded[0].verdict == SUPPORTED
    assert crowded[1].verdict == INCONCLUSIVE, "three tests: Holm must not reject p > 0.05 / 2"
    reverse = adjust([_check([0.0, 0.1, -0.1], [5.0, 5.1, 4.9])])[0]
    assert reverse.verdict == CONTRADICTED


def test_equivalence_claims_use_tost_and_are_contradicted_only_by_a_clear_difference():
    same = adjust([_check([1.0, 1.1, 0.9, 1.05, 0.95], [1.0, 0.9, 1.1, 1.0, 1.02], "within", 1.0)])
    assert same[0].verdict == SUPPORTED
    far = adjust([_check([5.0, 5.1, 4.9], [1.0, 0.9, 1.1], "within", 1.0)])
    assert far[0].verdict == CONTRADICTED
    few = compute(
        dataclasses.replace(same[0], groups=(same[0].groups[0], Group("b", -1, (1.0,), 1)))
    )
    assert few.estimate is None and few.verdict == "too few runs"


def _record(config, value: float, gap: float = 1.0, seconds: float = 1e-3) -> dict:
    """A synthetic results record for ``config``, its accuracies set to ``value`` percent."""
    epochs = config.epochs
    history = [
        {
            "epoch": e,
            "val_acc": (value - 5 * (epochs - e)) / 100,
            "train_acc": 0.9,
            "train_loss": 0.3,
            "val_loss": 0.3,
            "seconds": 1.0,
        }
        for e in range(1, epochs + 1)
    ]
    probes = [
        {
            "epoch": e,
            "step": 10 * e,
            "loss": 1.0,
            "grad_norms": [1.0, 0.5, 0.25],
            "grad_ratio": 4.0,
            "activation_mean": [0, 0, 0],
            "activation_std": [1, 1, 1],
            "ics": [0.0, value / 1000, value / 1000],
            "ics_cosine": [1.0, 0.9, 0.9],
            "landscape": {
                "step_sizes": [0.1, 0.2],
                "losses": [0.9, 0.8],
                "gradient_changes": [0.1, 0.2],
                "loss_variation": value / 100,
                "gradient_predictiveness": 0.2,
                "beta_smoothness": 1.0,
            },
        }
        for e in range(epochs + 1)
    ]
    return {
        "run_id": config.run_id,
        "config": config.to_dict(),
        "status": "finished",
        "history": history,
        "final": {"val_acc": value / 100, "train_acc": (value + gap) / 100, "steps": 10},
        "diagnostics": {
            "layers": ["1", "4", "7"],
            "probe_size": 256,
            "step_seconds": [seconds] * epochs,
            "probes": probes,
        },
    }


def _planted(experiments, effect):
    rng = random.Random(0)
    return [
        _record(run, 90.0 + effect(run) + rng.gauss(0, 0.2))
        for runs in experiments.values()
        for run in runs
    ]


def test_a_planted_batch_norm_advantage_is_supported_and_its_absence_is_not():
    experiments = plan(SEEDED)
    bn_better = _planted(experiments, lambda run: 3.0 if run.norm == "bn" else 0.0)
    found = {
        t.key: t
        for s in adjust_sections(sections(Runs(experiments, bn_better), SEEDED))
        for t in s.tests
    }
    assert found["bn-beats-none"].verdict == SUPPORTED
    assert found["bn-beats-none"].estimate == pytest.approx(3.0, abs=0.5)
    assert found["ln-beats-none"].verdict == INCONCLUSIVE
    assert found["channel-generalizes"].verdict == SUPPORTED
    assert found["scalar-stable"].verdict == CONTRADICTED
    assert found["ln-rnn"].verdict == CONTRADICTED
    assert found["ln-transformer"].verdict == "not run"
    # The ICS of the planted records grows with accuracy: bn's is 3/90 larger.
    assert found["bn-reduces-ics"].estimate == pytest.approx(math.log10(93 / 90), abs=0.01)
    nothing = _planted(experiments, lambda run: 0.0)
    quiet = [
        t for s in adjust_sections(sections(Runs(experiments, nothing), SEEDED)) for t in s.tests
    ]
    assert not [
        t.key for t in quiet if t.verdict in (SUPPORTED, CONTRADICTED) and t.side != "within"
    ]


def test_the_report_has_every_claim_its_numbers_and_the_1s_2s_correction(tmp_path):
    from normlab.study import figures

    experiments = plan(QUICK)
    records = _planted(experiments, lambda run: 2.0 if run.norm == "bn" else 0.0)
    runs = Runs(experiments, records)
    tested = adjust_sections(sections(runs, QUICK))
    figures.write_all(runs, QUICK, tmp_path)
    text = render(
        tested,
        QUICK,
        "normlab study claims ...",
        records,
        [r for r in records if r["run_id"] in {c.run_id for c in experiments["batch"]}],
        60.0,
        ["the transformer model"],
        {"torch": "x", "normlab": "y", "cores": "2"},
    )
    assert "not the full study" in text
    assert "Ioffe & Szegedy 2015" in text and "per-channel '2s' variant" in text
    for section in tested:
        assert f"]({section.figure})" in text
        assert (tmp_path / section.figure).stat().st_size > 1000
        for test in section.tests:
            assert f"**{test.key}.**" in text
    assert text.count("Holm-adjusted p =") == sum(
        t.estimate is not None for s in tested for t in s.tests
    )


@pytest.mark.slow
def test_the_study_command_runs_end_to_end_on_mnist_files(tmp_path, run_cli):
    from data_fixtures import mnist_arrays, write_mnist_idx

    write_mnist_idx(tmp_path / "mnist", mnist_arrays(0, 600, 200))
    tiny = dataclasses.replace(
        QUICK,
        name="tiny",
        subset=300,
        equal_steps=20,
        dropout_subset=200,
        conv_subset=100,
        resnet_subset=100,
        epochs=1,
        dropout_epochs=2,
    )
    from normlab.study import run_study

    result = run_study(
        str(tmp_path / "mnist"),
        tmp_path / "runs",
        tmp_path / "report",
        budget=tiny,
        jobs=2,
        command="normlab study claims",
    )
    assert result.report is not None and result.finished == result.planned
    text = result.report.read_text()
    assert "bn-beats-none" in text and "Holm" in text
    again = run_study(
        str(tmp_path / "mnist"), tmp_path / "runs", tmp_path / "report", budget=tiny, jobs=1
    )
    assert again.outcome.records == [] and again.outcome.skipped == result.planned
