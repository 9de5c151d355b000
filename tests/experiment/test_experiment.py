"""The lab's experiment layer: run configs, the results store, the train loop and sweeps."""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from normlab.data import load_dataset
from normlab.experiment import ResultsStore, RunConfig, check_runs, plan_runs, run_sweep, train_run
from normlab.experiment.store import ResultsError, read_results
from normlab.experiment.train import batch_slices, evaluate


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _tiny(**overrides) -> RunConfig:
    options = {"epochs": 2, "batch_size": 64, "model_options": {"hidden": [32]}}
    return RunConfig(**{**options, **overrides})


# --- run configurations -------------------------------------------------------


def test_run_id_depends_on_every_field_and_on_nothing_else():
    base = RunConfig()
    assert base.run_id == RunConfig().run_id
    assert len(base.run_id) == 12
    changes = {
        "dataset": "mnist",
        "model": "cnn",
        "norm": "bn",
        "placement": "after",
        "batch_size": 64,
        "seed": 1,
        "epochs": 6,
        "lr": 0.01,
        "optimizer": "sgd",
        "model_options": {"hidden": [10]},
    }
    ids = {RunConfig(**{field: value}).run_id for field, value in changes.items()}
    assert len(ids) == len(changes) and base.run_id not in ids


def test_aliases_name_the_same_run():
    assert RunConfig(norm="BatchNorm").run_id == RunConfig(norm="bn").run_id
    assert RunConfig(norm="bn-1s").norm == "bn-scalar"
    assert RunConfig(dataset="Fashion_MNIST").run_id == RunConfig(dataset="fashion-mnist").run_id


def test_run_config_round_trips_through_json():
    config = RunConfig(norm="ln", model_options={"hidden": [8, 4]})
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_plan_runs_is_the_product_of_norms_batch_sizes_and_seeds():
    runs = plan_runs(norms=["none", "bn", "batch"], batch_sizes=[8, 32, 8], seeds=3)
    assert len(runs) == 2 * 2 * 3
    assert len({run.run_id for run in runs}) == len(runs)
    assert {(run.norm, run.batch_size, run.seed) for run in runs} == {
        (norm, size, seed) for norm in ("none", "bn") for size in (8, 32) for seed in range(3)
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seeds": 0}, "at least 1"),
        ({"optimizer": "adamm"}, "unknown optimizer"),
        ({"placement": "inside"}, "'before' or 'after'"),
        ({"batch_sizes": [0]}, "positive"),
        ({"norms": ["lnn"]}, "Did you mean 'ln'"),
    ],
)
def test_plan_runs_rejects_bad_options(options, message):
    arguments = {"norms": ["bn"], "batch_sizes": [32], "seeds": 1, **options}
    with pytest.raises(ValueError, match=message):
        plan_runs(**arguments)


# --- the results store ----------------------------------------------------------


def _record(run_id: str, value: float = 0.5) -> dict:
    return {"run_id": run_id, "config": {"seed": 0}, "final": {"val_loss": value}}


def test_store_appends_and_reads_records_in_order(tmp_path):
    store = ResultsStore(tmp_path / "out")
    for index in range(3):
        store.append(_record(f"r{index}", index / 10))
    assert [r["run_id"] for r in store.records()] == ["r0", "r1", "r2"]
    assert store.finished_ids() == {"r0", "r1", "r2"}
    assert read_results(store.path) == store.records()


def test_store_writes_strict_json_with_null_for_nan(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(_record("nan", float("nan")))
    line = store.path.read_text().strip()
    assert "NaN" not in line
    assert json.loads(line)["final"]["val_loss"] is None


def test_a_partial_last_line_is_skipped_and_repair_cuts_it(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(_record("a"))
    whole = store.path.read_bytes()
    with open(store.path, "ab") as file:
        file.write(b'{"run_id": "b", "conf')
    assert [r["run_id"] for r in store.records()] == ["a"]
    assert store.repair() == '{"run_id": "b", "conf'
    assert store.path.read_bytes() == whole
    assert store.repair() is None
    store.append(_record("c"))
    assert [r["run_id"] for r in store.records()] == ["a", "c"]


@pytest.mark.parametrize("bad", ["not json", '["a list"]', '{"no": "run id"}'])
def test_a_malformed_finished_line_is_an_error_naming_the_line(tmp_path, bad):
    store = ResultsStore(tmp_path)
    store.append(_record("a"))
    with open(store.path, "a") as file:
        file.write(bad + "\n")
    store.append(_record("b"))
    with pytest.raises(ResultsError, match=r"results.jsonl line 2"):
        store.records()


def _append_many(directory: str, writer: int) -> None:
    store = ResultsStore(directory)
    for index in range(40):
        store.append({**_record(f"{writer}-{index}"), "padding": "x" * 3000})


def test_appends_from_several_processes_never_interleave(tmp_path):
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    ids = [record["run_id"] for record in read_results(tmp_path)]
    assert sorted(ids) == sorted(f"{w}-{i}" for w in range(4) for i in range(40))


# --- the train loop --------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "batch", "expected"),
    [(10, 4, [4, 4, 2]), (9, 4, [4, 4]), (8, 4, [4, 4]), (1, 4, [1]), (5, 1, [1] * 5)],
)
def test_batch_slices_keep_partial_batches_but_not_a_last_single_sample(size, batch, expected):
    slices = batch_slices(size, batch)
    assert [s.stop - s.start for s in slices] == expected
    assert all(a.stop == b.start for a, b in itertools.pairwise(slices))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(size=st.integers(1, 500), batch=st.integers(1, 64))
def test_batch_slices_cover_the_data_in_order_dropping_at_most_one_sample(size, batch):
    slices = batch_slices(size, batch)
    assert slices[0].start == 0
    assert all(a.stop == b.start for a, b in itertools.pairwise(slices))
    assert all(s.stop - s.start == batch for s in slices[:-1])
    assert 1 <= slices[-1].stop - slices[-1].start <= batch
    dropped = size - slices[-1].stop
    assert dropped in (0, 1)
    assert dropped == (1 if batch > 1 and size > 1 and size % batch == 1 else 0)


def test_same_seed_gives_the_same_numbers_and_another_seed_does_not(digits):
    first = train_run(_tiny(norm="bn", seed=3), digits)
    again = train_run(_tiny(norm="bn", seed=3), digits)
    other = train_run(_tiny(norm="bn", seed=4), digits)
    assert first["history"] == [
        {**epoch, "seconds": first_epoch["seconds"]}
        for epoch, first_epoch in zip(again["history"], first["history"], strict=True)
    ]
    assert first["final"] == again["final"]
    assert first["history"][-1]["val_loss"] != other["history"][-1]["val_loss"]


def test_record_has_the_schema_the_store_and_report_read(digits):
    config = _tiny(norm="ln", epochs=3)
    epochs_seen = []
    record = train_run(config, digits, on_epoch=epochs_seen.append)
    assert record["run_id"] == config.run_id
    assert RunConfig.from_dict(record["config"]) == config
    assert record["status"] == "finished"
    assert [e["epoch"] for e in record["history"]] == [1, 2, 3]
    assert [m.epoch for m in epochs_seen] == [1, 2, 3]
    assert record["final"]["epochs_run"] == 3 and record["final"]["diverged_epoch"] is None
    assert record["final"]["val_acc"] == record["history"][-1]["val_acc"]
    assert record["data"]["train_size"] == len(digits.train_x)
    assert record["data"]["samples_per_epoch"] == len(digits.train_x)
    assert record["seconds"] >= sum(e["seconds"] for e in record["history"])
    assert {"normlab", "torch", "python", "platform"} <= set(record["versions"])
    json.dumps(record, allow_nan=False)


def test_metrics_equal_a_direct_computation_in_eval_mode(digits):
    """Validation numbers are an eval-mode pass: recompute them from scratch on the trained
    model's state (via a hook on the last epoch) and compare."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Linear(16, 10))
    model.train()
    stats_before = model[2].running_mean.clone()
    loss, accuracy = evaluate(model, digits.val_x, digits.val_y)
    assert model.training, "evaluate must restore training mode"
    assert torch.equal(model[2].running_mean, stats_before), "evaluate must not update statistics"
    model.eval()
    with torch.no_grad():
        logits = model(digits.val_x)
    assert loss == pytest.approx(F.cross_entropy(logits, digits.val_y).item(), rel=1e-6)
    assert accuracy == pytest.approx((logits.argmax(1) == digits.val_y).double().mean().item())


@pytest.mark.parametrize("norm", ["none", "bn", "ln"])
def test_the_tutorial_mlp_learns_digits(digits, norm):
    record = train_run(RunConfig(norm=norm, epochs=5, batch_size=32), digits)
    assert record["final"]["val_acc"] > 0.9
    losses = [epoch["train_loss"] for epoch in record["history"]]
    assert losses[-1] < losses[0]


def test_a_loss_that_turns_nan_ends_the_run_as_diverged(digits):
    config = _tiny(norm="none", optimizer="sgd", lr=1e12, epochs=4)
    record = train_run(config, digits)
    assert record["status"] == "diverged"
    assert record["final"]["diverged_epoch"] == 1
    assert len(record["history"]) == record["final"]["epochs_run"] == 1
    assert not math.isfinite(record["history"][0]["train_loss"])


# --- sweeps ----------------------------------------------------------------------


def _sweep(norms=("none", "bn"), seeds=2):
    return plan_runs(
        norms=list(norms), batch_sizes=[128], seeds=seeds, epochs=1, model_options={"hidden": [16]}
    )


def test_a_sweep_writes_every_run_and_resumes_where_it_stopped(tmp_path):
    runs = _sweep()
    store = ResultsStore(tmp_path)
    outcome = run_sweep(runs, store)
    assert len(outcome.records) == len(runs) and outcome.skipped == 0
    assert {r["run_id"] for r in store.records()} == {run.run_id for run in runs}
    again = run_sweep(runs, store)
    assert again.records == [] and again.skipped == len(runs)
    lines = store.path.read_text().splitlines(keepends=True)
    store.path.write_text("".join(lines[:2]))  # as if the last two runs had not finished
    resumed = run_sweep(runs, store)
    assert resumed.skipped == 2 and len(resumed.records) == 2
    assert store.path.read_text().splitlines(keepends=True)[:2] == lines[:2]
    assert sorted(r["run_id"] for r in store.records()) == sorted(run.run_id for run in runs)


def test_a_pool_of_processes_gives_the_same_numbers_as_one_process(tmp_path):
    runs = _sweep()
    here = run_sweep(runs, ResultsStore(tmp_path / "here"), jobs=1, threads=1)
    pooled = run_sweep(runs, ResultsStore(tmp_path / "pool"), jobs=2, threads=1)
    assert not pooled.failed
    by_id = {r["run_id"]: r for r in pooled.records}
    for record in here.records:
        other = by_id[record["run_id"]]
        assert other["final"] == record["final"]
        assert [e["val_loss"] for e in other["history"]] == [
            e["val_loss"] for e in record["history"]
        ]


class _Events:
    def __init__(self):
        self.events = []

    def run_started(self, config):
        self.events.append(("started", config.norm))

    def epoch_done(self, config, metrics):
        self.events.append(("epoch", config.norm))

    def run_done(self, config, record):
        self.events.append(("done", config.norm))

    def run_failed(self, config, error):
        self.events.append(("failed", config.norm, error))


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_run_is_reported_and_the_sweep_goes_on(tmp_path, jobs):
    runs = _sweep(norms=("in", "none"), seeds=1)  # instance norm cannot take (N, C) features
    listener = _Events()
    outcome = run_sweep(runs, ResultsStore(tmp_path), jobs=jobs, listener=listener)
    assert [config.norm for config, _ in outcome.failed] == ["in"]
    assert "InstanceNorm" in outcome.failed[0][1]
    assert [r["config"]["norm"] for r in outcome.records] == ["none"]
    assert ("done", "none") in listener.events and ("epoch", "none") in listener.events
    assert any(event[:2] == ("failed", "in") for event in listener.events)


def test_check_runs_names_the_run_that_cannot_train(digits):
    with pytest.raises(
        ValueError, match=r"norm 'bn' in model 'mlp' at batch size 1.*more than one"
    ):
        check_runs(plan_runs(norms=["ln", "bn"], batch_sizes=[1], seeds=1), digits)
    with pytest.raises(ValueError, match=r"norm 'in'.*\(N, C, L\)"):
        check_runs(plan_runs(norms=["in"], batch_sizes=[32], seeds=1), digits)
    check_runs(plan_runs(norms=["ln", "in"], batch_sizes=[1], seeds=1, model="cnn"), digits)
