"""The seeds of a configuration trained stacked (normlab.experiment.stacked) against the
oracle of each seed trained alone by train_model: in float64 to 1e-10 per replica (losses,
gradients, parameters and running statistics after several steps, records), refusals of
what cannot stack, and a stacked sweep's records against an unstacked one's."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from normlab.data import Dataset, load_dataset
from normlab.experiment.batched_layers import fold
from normlab.experiment.config import RunConfig, plan_runs
from normlab.experiment.executors.choose import executor_for
from normlab.experiment.executors.in_process import InProcessExecutor
from normlab.experiment.executors.pool import ProcessPoolExecutor
from normlab.experiment.stacked import (
    StackedModels,
    check_group,
    seed_groups,
    stack_refusal,
    stack_refusals,
    train_stacked,
)
from normlab.experiment.store import ResultsStore
from normlab.experiment.sweep import run_sweep
from normlab.experiment.train import seeded_model, train_model
from normlab.models import model_info
from normlab.models.registry import LAB_MODELS
from normlab.norm_spec import parse_norm
from normlab.registry import BUILT_IN

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")

SEEDS = (0, 1, 2)
TOLERANCE = 1e-10
# Specs beyond each kind's defaults whose code paths differ: Keras' convention, the
# cumulative average (the step count read on the host), batch renormalization's schedule.
VARIANTS = ("bn(convention=keras)", "bn(momentum=None)", "brn(warmup_steps=2,r_max_steps=5)")
SPECS = [kind.name for kind in BUILT_IN] + list(VARIANTS)
STACKING = [name for name in LAB_MODELS if model_info(name).stacks]
"""The models registered as stacking: each is checked here against its single runs."""


def _float64(data: Dataset) -> Dataset:
    """``data`` with float64 images (Dataset takes float32 from users; the oracle runs in
    float64, so its check is bypassed here)."""
    wide = dataclasses.replace(data)
    object.__setattr__(wide, "train_x", data.train_x.double())
    object.__setattr__(wide, "val_x", data.val_x.double())
    return wide


@pytest.fixture(scope="module")
def data64() -> Dataset:
    """A small float64 image set: 36 training and 20 validation 8x8 images, 4 classes."""
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(56, 1, 8, 8, generator=generator)
    labels = torch.arange(56) % 4
    data = Dataset("digits", images[:36], labels[:36], images[36:], labels[36:], 4, "test")
    return _float64(data)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these small models take 100x longer on a loaded machine with more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _configs(model: str, spec: str, **overrides) -> list[RunConfig]:
    """The seeds of one small run. SGD by default: a parameter whose gradient is zero up to
    rounding (the bias of a layer that batch norm follows) moves by its rounding noise times
    lr under SGD, but by about lr under Adam, in any two computations of the same run."""
    hidden = [6, 8] if model == "cnn" else [16, 12]
    kind, norm_options = parse_norm(spec)
    options = {"model": model, "norm": kind, "norm_options": dict(norm_options)}
    options |= {"batch_size": 8, "epochs": 2, "steps": 7}
    options |= {"model_options": {"hidden": hidden}, "optimizer": "sgd", "lr": 0.05}
    options |= overrides
    return [RunConfig(seed=seed, **options) for seed in SEEDS]


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a == b
    return math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE) or (
        math.isnan(a) and math.isnan(b)
    )


def _assert_same_numbers(single, stacked, where: str = "") -> None:
    """Every number of two records' JSON trees equal to TOLERANCE, every other leaf equal,
    except the wall-clock fields."""
    if isinstance(single, dict):
        assert single.keys() == stacked.keys(), where
        for key in single:
            if key not in ("seconds", "started"):
                _assert_same_numbers(single[key], stacked[key], f"{where}/{key}")
    elif isinstance(single, list):
        assert len(single) == len(stacked), where
        for i, (a, b) in enumerate(zip(single, stacked, strict=True)):
            _assert_same_numbers(a, b, f"{where}[{i}]")
    elif isinstance(single, float):
        assert _close(single, stacked), (where, single, stacked)
    else:
        assert single == stacked, (where, single, stacked)


def _assert_same_state(single: torch.nn.Module, stacked: torch.nn.Module) -> None:
    state, other = single.state_dict(), stacked.state_dict()
    assert state.keys() == other.keys()
    for name, value in state.items():
        torch.testing.assert_close(other[name], value, rtol=TOLERANCE, atol=TOLERANCE, msg=name)


@pytest.mark.parametrize("model", STACKING)
@pytest.mark.parametrize("spec", SPECS)
def test_each_replica_trains_as_the_single_run_of_its_seed(model, spec, data64, float64):
    configs = _configs(model, spec)
    try:
        singles = [train_model(config, data64) for config in configs]
    except ValueError as error:  # a kind the model cannot take is refused stacked as well
        with pytest.raises(ValueError, match=str(error)[:40]):
            train_stacked(configs, data64)
        return
    epochs = []
    stacked = train_stacked(configs, data64, on_epoch=lambda c, m: epochs.append((c.seed, m)))
    for (single_model, single_record), (model_k, record_k) in zip(singles, stacked, strict=True):
        _assert_same_state(single_model, model_k)
        _assert_same_numbers(single_record, record_k)
    assert [seed for seed, _ in epochs] == [0, 1, 2, 0, 1, 2]  # each replica's epochs, told


@pytest.mark.parametrize("model", STACKING)
@pytest.mark.parametrize("spec", ["bn", "bn-scalar", "brn", "switch", "ln", "gn"])
def test_each_replicas_loss_and_gradients_are_its_own_models(model, spec, data64, float64):
    configs = _configs(model, spec)
    models = [seeded_model(config, data64) for config in configs]
    if model == "mlp" and spec == "gn":
        pytest.skip("group norm needs more than one value per group: not on (N, C) features")
    stack = StackedModels([seeded_model(config, data64) for config in configs])
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(len(SEEDS), 5, 1, 8, 8, generator=generator)  # its own batch each
    labels = torch.randint(0, 4, (len(SEEDS), 5), generator=generator)
    losses = F.cross_entropy(
        stack(fold(images)).flatten(0, 1), labels.flatten(), reduction="none"
    ).view(labels.shape)
    losses.mean(1).sum().backward()
    for k, single in enumerate(models):
        loss = F.cross_entropy(single(images[k]), labels[k])
        loss.backward()
        assert _close(losses[k].mean().item(), loss.item())
        grads, state = stack.replica_state(k, grads=True), stack.replica_state(k)
        assert grads.keys() == dict(single.named_parameters()).keys()
        for name, parameter in single.named_parameters():
            torch.testing.assert_close(grads[name], parameter.grad, rtol=TOLERANCE, atol=TOLERANCE)
        assert state.keys() == single.state_dict().keys()
        for name, buffer in single.named_buffers():
            torch.testing.assert_close(state[name], buffer, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize(
    ("optimizer", "weight_decay"),
    [
        ("adam", None),
        ("adam", 0.1),
        ("adamw", None),
        ("adamw", 0.3),
        ("sgd", 0.1),
        ("rmsprop", None),
        ("rmsprop", 0.1),
    ],
)
def test_one_optimizer_over_stacked_parameters_is_each_replicas_own(
    optimizer, weight_decay, data64, float64
):
    # layer norm: no parameter whose gradient is zero up to rounding (see _configs)
    configs = _configs("mlp", "ln", optimizer=optimizer, weight_decay=weight_decay, lr=3e-2)
    singles = [train_model(config, data64) for config in configs]
    for (single_model, record), (model_k, record_k) in zip(
        singles, train_stacked(configs, data64), strict=True
    ):
        _assert_same_state(single_model, model_k)
        _assert_same_numbers(record, record_k)


def test_a_stacked_seeds_seconds_are_its_share_of_the_groups_wall_time(data64, float64):
    configs = _configs("mlp", "bn")
    start = time.perf_counter()
    records = [record for _, record in train_stacked(configs, data64)]
    wall = time.perf_counter() - start
    # each seed its share: together they cost the group's time, not three times it
    assert 0 < sum(record["seconds"] for record in records) <= wall
    for epoch in range(len(records[0]["history"])):
        assert sum(record["history"][epoch]["seconds"] for record in records) <= wall


def test_a_replica_that_diverges_is_recorded_so_and_the_others_go_on(data64, float64):
    # An lr at which seed 2's loss overflows in its first epoch and the others' stays finite
    # (found by trying; the single runs below are the oracle either way).
    configs = _configs("mlp", "none", lr=1e30, steps=None, epochs=3)
    singles = [train_model(config, data64)[1] for config in configs]
    statuses = [record["status"] for record in singles]
    assert "diverged" in statuses and "finished" in statuses, statuses
    done = []
    stacked = train_stacked(configs, data64, on_done=lambda c, m, r: done.append(c.seed))
    for single, (_, record) in zip(singles, stacked, strict=True):
        _assert_same_numbers(single, record)
    diverged = [c.seed for c, r in zip(configs, singles, strict=True) if r["status"] != "finished"]
    assert done[: len(diverged)] == diverged  # reported as soon as final, before the others


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"nproc": 2}, "data-parallel"),
        ({"diagnostics": True}, "diagnostics"),
        ({"model_options": {"dropout": 0.5}}, "dropout"),
        ({"model": "rnn"}, "'rnn' is not one of them"),
        ({"model": "my_models:small"}, "'my_models:small' is not one of them"),
    ],
)
def test_what_cannot_stack_is_refused_with_the_reason(overrides, reason):
    config = RunConfig(**overrides)
    assert reason in stack_refusal(config)
    with pytest.raises(ValueError, match="cannot train stacked"):
        check_group([config, dataclasses.replace(config, seed=1)])
    # such runs train alone, and the message lists the configuration once
    runs = [dataclasses.replace(config, seed=seed) for seed in SEEDS]
    assert seed_groups(runs) == [[run] for run in runs]
    assert stack_refusals(runs) == [(runs[0], stack_refusal(config))]


@pytest.mark.parametrize("model", [name for name in LAB_MODELS if name not in STACKING])
def test_a_model_not_registered_as_stacking_trains_its_seeds_alone(model):
    config = RunConfig(model=model)
    assert f"{model!r} is not one of them" in stack_refusal(config)
    runs = [dataclasses.replace(config, seed=seed) for seed in SEEDS]
    assert seed_groups(runs) == [[run] for run in runs]


def test_only_the_seeds_of_one_configuration_stack():
    a, b = RunConfig(norm="bn"), RunConfig(norm="ln")
    with pytest.raises(ValueError, match="more than its seed"):
        check_group([a, dataclasses.replace(b, seed=1)])
    with pytest.raises(ValueError, match="distinct seeds"):
        check_group([a, a])
    runs = [dataclasses.replace(c, seed=s) for s in SEEDS for c in (a, b)]
    assert seed_groups(runs) == [runs[0::2], runs[1::2]]
    assert stack_refusals(runs) == []


@pytest.mark.parametrize("executor", ["torchrun", "ray"])
def test_stack_seeds_is_refused_where_it_cannot_apply(executor):
    with pytest.raises(ValueError, match="`stack_seeds`"):
        executor_for(executor, stack_seeds=True)


@pytest.mark.parametrize(("jobs", "kind"), [(None, InProcessExecutor), (2, ProcessPoolExecutor)])
def test_stack_seeds_reaches_the_executor_on_this_machine(jobs, kind):
    executor = executor_for("processes", jobs=jobs, stack_seeds=True)
    assert isinstance(executor, kind) and executor.stack_seeds


def _tiny_sweep() -> list[RunConfig]:
    runs = plan_runs(
        norms=["none", "bn", "ln"],
        batch_sizes=[64],
        seeds=3,
        epochs=2,
        model_options={"hidden": [16]},
        train_subset=300,
    )
    return [*runs, dataclasses.replace(runs[0], model_options={"hidden": [16], "dropout": 0.2})]


def test_a_stacked_sweep_writes_the_records_of_an_unstacked_one(tmp_path):
    runs = _tiny_sweep()
    separate = run_sweep(runs, ResultsStore(tmp_path / "separate"), executor=InProcessExecutor())
    store = ResultsStore(tmp_path / "stacked")
    together = run_sweep(runs, store, executor=InProcessExecutor(stack_seeds=True))
    assert not separate.failed and not together.failed
    by_id = {record["run_id"]: record for record in separate.records}
    assert sorted(by_id) == sorted(run.run_id for run in runs)
    assert sorted(r["run_id"] for r in store.records()) == sorted(by_id)
    for record in store.records():
        single = by_id[record["run_id"]]
        assert record.keys() == single.keys() and record["config"] == single["config"]
        for a, b in zip(single["history"], record["history"], strict=True):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                assert _float32_close(key, a[key], b[key], single), (key, a, b)
        for key in ("train_loss", "val_loss", "val_acc", "train_acc"):
            assert _float32_close(key, single["final"][key], record["final"][key], single)


def test_pool_workers_train_stacked_seeds_as_the_sweeps_own_process_does(tmp_path):
    runs = _tiny_sweep()
    here = run_sweep(
        runs, ResultsStore(tmp_path / "here"), executor=InProcessExecutor(stack_seeds=True)
    )
    pool = ProcessPoolExecutor(jobs=2, stack_seeds=True)
    store = ResultsStore(tmp_path / "pool")
    there = run_sweep(runs, store, executor=pool)
    assert not here.failed and not there.failed
    by_id = {record["run_id"]: record for record in here.records}
    assert sorted(r["run_id"] for r in store.records()) == sorted(by_id)
    for record in store.records():
        own = by_id[record["run_id"]]
        assert record["config"] == own["config"]
        for a, b in zip(own["history"], record["history"], strict=True):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                assert math.isclose(a[key], b[key], rel_tol=1e-12), (key, a, b)


def _float32_close(key: str, single: float, stacked: float, record: dict) -> bool:
    """Equal up to float32 rounding, amplified by training: losses to 1e-3, accuracies to
    two samples (a near tie of two logits goes either way)."""
    if key.endswith("acc"):
        size = record["data"]["train_size" if key.startswith("train") else "val_size"]
        return abs(single - stacked) <= 2 / size + 1e-12
    return math.isclose(single, stacked, rel_tol=1e-3)


def test_a_stacked_sweep_resumes_the_seeds_not_yet_finished(tmp_path):
    runs = _tiny_sweep()[:6]
    store = ResultsStore(tmp_path)
    first = run_sweep(runs, store, executor=InProcessExecutor(stack_seeds=True))
    lines = store.path.read_text().splitlines(keepends=True)
    store.path.write_text("".join(lines[:4]))  # the last two seeds of bn did not finish
    again = run_sweep(runs, store, executor=InProcessExecutor(stack_seeds=True))
    assert again.skipped == 4 and len(again.records) == 2
    assert {r["run_id"] for r in again.records} == {r["run_id"] for r in first.records[4:]}
    assert store.path.read_text().splitlines(keepends=True)[:4] == lines[:4]


@pytest.mark.slow
def test_a_stacked_digits_sweep_matches_separate_runs_on_the_whole_set(tmp_path):
    data = load_dataset("digits")
    configs = [RunConfig(norm="bn", seed=seed, epochs=2) for seed in SEEDS]
    singles = [train_model(config, data)[1] for config in configs]
    for single, (_, record) in zip(singles, train_stacked(configs, data), strict=True):
        for a, b in zip(single["history"], record["history"], strict=True):
            assert _float32_close("val_loss", a["val_loss"], b["val_loss"], single)


def test_the_benchmark_times_stacked_against_separate_seeds(data64, monkeypatch):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train_speed.py"
    spec = importlib.util.spec_from_file_location("train_speed_stacked", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look it up there
    spec.loader.exec_module(bench)
    parts = (data64.train_x.float(), data64.train_y, data64.val_x.float(), data64.val_y)
    small = Dataset("mnist", *parts, 4, "test")
    row = bench.time_stacked(small, "bn", seeds=2, epochs=1, repeats=2)
    assert len(row["separate_seconds"]) == len(row["stacked_seconds"]) == 2
    assert row["ratio_best"] == min(row["separate_seconds"]) / min(row["stacked_seconds"])
    assert row["stacked_runs_per_hour"] == 3600 * 2 / min(row["stacked_seconds"])
    assert "stacked / separate" in [c.header for c in bench.stacked_table([row]).columns]


def test_a_failing_group_fails_the_seeds_it_had_not_finished(tmp_path, monkeypatch):
    import normlab.experiment.executors.training as training

    def first_then_fail(configs, data, *, on_epoch, on_done):
        model = seeded_model(configs[0], data)
        on_done(configs[0], model, {"run_id": configs[0].run_id, "status": "finished"})
        raise RuntimeError("replica trouble")

    monkeypatch.setattr(training, "train_stacked", first_then_fail)
    runs = _tiny_sweep()[:3]
    outcome = run_sweep(runs, ResultsStore(tmp_path), executor=InProcessExecutor(stack_seeds=True))
    assert [r["run_id"] for r in outcome.records] == [runs[0].run_id]
    assert [(c, e) for c, e in outcome.failed] == [
        (run, "RuntimeError: replica trouble") for run in runs[1:]
    ]


def test_a_stacked_sweep_saves_each_seeds_model(tmp_path):
    runs = _tiny_sweep()[3:6]  # bn: running statistics too
    executor = InProcessExecutor(stack_seeds=True, models_dir=tmp_path / "models")
    outcome = run_sweep(runs, ResultsStore(tmp_path), executor=executor)
    data = load_dataset("digits")
    for run, record in zip(runs, outcome.records, strict=True):
        saved = torch.load(tmp_path / record["model_file"], weights_only=True)
        assert record["model_file"] == f"models/{run.run_id}.pt"
        assert saved.keys() == seeded_model(run, data).state_dict().keys()
        assert saved["2.num_batches_tracked"] == record["final"]["steps"]


def test_the_float32_benchmark_tests_equivalence_of_stacked_and_separate_accuracies(data64):
    """benchmarks/stacked_float32.py, whose figures the README quotes, on a tiny set."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "stacked_float32.py"
    spec = importlib.util.spec_from_file_location("stacked_float32", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    inside = bench.equivalence([0.50, 0.52, 0.49, 0.51], [0.50, 0.51, 0.50, 0.50], margin=0.03)
    assert inside["equivalent"] and inside["low"] < inside["mean"] < inside["high"]
    assert math.isclose(inside["mean"], 0.0025)
    assert not bench.equivalence([0.6, 0.7, 0.6], [0.5, 0.5, 0.5], margin=0.03)["equivalent"]
    parts = (data64.train_x.float(), data64.train_y, data64.val_x.float(), data64.val_y)
    row = bench.compare_kind("mlp", "bn", 3, 1, Dataset("digits", *parts, 4, "test"), 0.03)
    assert len(row["separate"]) == len(row["stacked"]) == len(row["separate_float64"]) == 3
    assert row["mean_abs_stacked"] <= 1 and row["seed_std"] >= 0
    assert torch.get_default_dtype() == torch.float32
