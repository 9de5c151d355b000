"""The claims study: its plan, its statistics on records with planted effects, its report,
and (slow) the whole command on synthetic MNIST files."""

from __future__ import annotations

import dataclasses
import json
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
from report_fixtures import CORRUPTIONS, corrupt

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
            "val_acc": max(value - 5 * (epochs - e), 10.0) / 100,  # an accuracy: in [0, 1]
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


# --- the study's files: records checked, paths checked, the report replaced whole ---------

ALL_MODELS = ("mlp", "cnn", "rnn", "transformer", "resnet20")


def _finished_study(out, effect=lambda run: 0.0):
    """``out/results.jsonl`` holding a planted record for every run the quick study plans."""
    from report_fixtures import write_results

    return write_results(out, _planted(plan(QUICK, models=ALL_MODELS), effect))


@pytest.fixture
def no_work(monkeypatch):
    """Make the study's first piece of work (loading MNIST) fail the test."""
    import normlab.study.run

    def work(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(normlab.study.run, "load_dataset", work)


@pytest.fixture
def no_training(monkeypatch):
    """Let the study render from finished records without MNIST files or model checks."""
    import normlab.study.run

    monkeypatch.setattr(normlab.study.run, "load_dataset", lambda *args: None)
    monkeypatch.setattr(normlab.study.run, "check_runs", lambda *args: None)


@pytest.mark.parametrize("case", ["duplicate", *CORRUPTIONS])
def test_a_record_the_study_cannot_use_is_refused_before_any_work_naming_file_and_line(
    tmp_path, no_work, case
):
    from normlab.study import run_study

    out = _finished_study(tmp_path / "runs")
    lines = (out / "results.jsonl").read_text().splitlines()
    if case == "duplicate":
        lines.append(lines[4])
        where = "lines 5 and " + str(len(lines))
    else:
        lines[4] = json.dumps(corrupt(json.loads(lines[4]), case))
        where = "line 5"
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as caught:
        run_study("mnist", out, tmp_path / "report", budget=QUICK)
    assert f"{out / 'results.jsonl'} {where}" in str(caught.value)
    if case not in ("duplicate", "list-run-id"):  # a record of a run: the fix is to retrain it
        assert "run normlab study claims again" in str(caught.value)
    assert not (tmp_path / "report").exists()


def _report_files(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.mark.slow
def test_a_failure_while_writing_the_report_leaves_the_previous_report_whole(
    tmp_path, no_training, monkeypatch
):
    from normlab.study import figures, run_study

    out, report = tmp_path / "runs", tmp_path / "report"
    _finished_study(out, lambda run: 2.0 if run.norm == "bn" else 0.0)
    first = run_study(str(tmp_path), out, report, budget=QUICK, jobs=1)
    assert first.report == report / "claims.md"
    before = _report_files(report)
    assert "claims.md" in before and "landscape.png" in before
    _finished_study(out)  # other numbers, so that every file would change

    def broken(*args, **kwargs):
        raise RuntimeError("the disk filled up")

    monkeypatch.setattr(figures, "learning_rate", broken)  # after four figures are drawn
    with pytest.raises(RuntimeError, match="disk filled"):
        run_study(str(tmp_path), out, report, budget=QUICK, jobs=1)
    assert _report_files(report) == before
    assert sorted(p.name for p in report.iterdir() if not p.is_file()) == []


def test_publish_moves_every_file_in_or_none(tmp_path):
    from normlab.report.publish import MANIFEST, publish

    def draw(text, fail=False):
        def write(staging):
            (staging / "a.md").write_text(text)
            if fail:
                raise RuntimeError("drawing failed")
            (staging / "b.png").write_text(text)

        return write

    assert publish(tmp_path, draw("one")) == [tmp_path / "a.md", tmp_path / "b.png"]
    with pytest.raises(RuntimeError, match="drawing failed"):
        publish(tmp_path, draw("two", fail=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "a.md", "b.png"]
    assert (tmp_path / "a.md").read_text() == "one"
    publish(tmp_path, draw("three"))  # files normlab wrote are replaced
    assert (tmp_path / "b.png").read_text() == "three"


@pytest.mark.parametrize("name", ["claims.md", "gap.png"])
def test_a_report_folder_file_normlab_did_not_write_is_refused_before_any_work(
    tmp_path, no_work, name
):
    from normlab.study import run_study

    report = tmp_path / "report"
    report.mkdir()
    (report / name).write_text("my own notes")
    with pytest.raises(ValueError) as caught:
        run_study("mnist", tmp_path / "runs", report, budget=QUICK)
    assert str(report / name) in str(caught.value) and "normlab" in str(caught.value)
    assert (report / name).read_text() == "my own notes"
    assert sorted(p.name for p in report.iterdir()) == [name]


def test_a_missing_data_dir_is_refused_before_any_work(tmp_path, no_work):
    from normlab.study import run_study

    with pytest.raises(ValueError, match=r"does not exist.*MNIST IDX files \(--data-dir\)"):
        run_study(str(tmp_path / "mnist"), tmp_path / "runs", tmp_path / "report", budget=QUICK)
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", ["", "[]", "{", '{"wall_seconds": "x"}', "\xff"])
def test_an_unreadable_study_json_is_named_with_its_fix_before_any_work(tmp_path, no_work, content):
    from normlab.study import run_study

    out = tmp_path / "runs"
    out.mkdir()
    (out / "study.json").write_text(content, encoding="latin-1")
    with pytest.raises(ValueError) as caught:
        run_study("mnist", out, tmp_path / "report", budget=QUICK)
    message = str(caught.value)
    assert str(out / "study.json") in message and "delete" in message


def test_study_json_is_never_left_half_written(tmp_path, monkeypatch):
    import pathlib

    from normlab.study.run import _wall

    (tmp_path / "study.json").write_text('{"wall_seconds": 5.0}')

    def dies_half_way(self, data, *args, **kwargs):  # a kill in the middle of the write
        with open(self, "wb") as file:
            file.write((data.encode() if isinstance(data, str) else data)[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_text", dies_half_way)
    monkeypatch.setattr(pathlib.Path, "write_bytes", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        _wall(tmp_path, 2.0)
    monkeypatch.undo()
    assert json.loads((tmp_path / "study.json").read_text()) == {"wall_seconds": 5.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.json"]
    assert _wall(tmp_path, 2.0) == 7.0
