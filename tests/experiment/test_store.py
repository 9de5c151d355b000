"""The results store keeps every finished record, names the file and line of anything it cannot
read, refuses a second writer, and checks its paths before any run trains."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normlab.experiment import ResultsStore, plan_runs, run_sweep
from normlab.experiment.executors.in_process import InProcessExecutor
from normlab.experiment.store import (
    ResultsError,
    StoreBusyError,
    check_output_directory,
    read_results,
)
from normlab.experiment.sweep import run_sweep_locked


def _record(run_id: str, value: float = 0.5) -> dict:
    return {"run_id": run_id, "config": {"seed": 0}, "final": {"val_loss": value}}


# --- a complete last record without its newline is a finished run -----------


@settings(max_examples=30, deadline=None)
@given(count=st.integers(1, 4), ending=st.sampled_from([b"", b"\r", b" "]))
def test_a_whole_last_record_without_its_newline_is_kept(tmp_path_factory, count, ending):
    store = ResultsStore(tmp_path_factory.mktemp("store"))
    for index in range(count):
        store.append(_record(f"r{index}"))
    store.path.write_bytes(store.path.read_bytes()[:-1] + ending)
    ids = [f"r{index}" for index in range(count)]
    assert [r["run_id"] for r in store.records()] == ids
    assert store.finished_ids() == set(ids)
    assert store.repair() is None  # nothing removed ...
    assert store.path.read_bytes().endswith(b"\n")  # ... and the newline is back
    assert [r["run_id"] for r in store.records()] == ids


def test_append_after_a_whole_record_without_newline_keeps_both(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(_record("a"))
    store.path.write_bytes(store.path.read_bytes()[:-1])
    store.append(_record("b"))  # no repair() in between: a Python caller's sweep
    assert [r["run_id"] for r in store.records()] == ["a", "b"]
    assert store.path.read_bytes().count(b"\n") == 2


def test_append_after_a_partial_tail_cuts_it_and_says_so(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(_record("a"))
    with open(store.path, "ab") as file:
        file.write(b'{"run_id": "b", "conf')
    with pytest.warns(UserWarning, match="unfinished record"):
        store.append(_record("c"))
    assert [r["run_id"] for r in store.records()] == ["a", "c"]


def test_a_sweep_keeps_a_finished_run_whose_newline_was_lost(tmp_path):
    runs = plan_runs(
        norms=["bn"], batch_sizes=[128], seeds=2, epochs=1, model_options={"hidden": [8]}
    )
    store = ResultsStore(tmp_path)
    run_sweep(runs[:1], store)
    first = store.path.read_bytes()
    store.path.write_bytes(first[:-1])
    outcome = run_sweep(runs, store)
    assert outcome.skipped == 1 and len(outcome.records) == 1
    assert store.path.read_bytes().startswith(first)
    assert [r["run_id"] for r in store.records()] == [run.run_id for run in runs]


# --- what cannot be read is named by file and line -----------------------


def test_a_non_utf8_byte_is_an_error_naming_the_file_and_line(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(_record("a"))
    with open(store.path, "ab") as file:
        file.write(b'{"run_id": "\xff", "config": {}}\n')
    store.append(_record("b"))
    with pytest.raises(ResultsError, match=r"results\.jsonl line 2 .*UTF-8"):
        store.records()


# --- one writer per directory ----------------------------------------------


def _hold_lock(directory: str, ready, release) -> None:
    with ResultsStore(directory).lock():
        ready.set()
        release.wait(60)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(StoreBusyError) as caught, ResultsStore(tmp_path).lock():
            pass
        message = str(caught.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message
        assert "started" in message and str(tmp_path) in message
    finally:
        release.set()
        holder.join(60)
    with ResultsStore(tmp_path).lock():  # released when its holder ends
        pass


def test_the_lock_is_taken_once_and_refused_to_another_store_or_the_same_one_again(tmp_path):
    """One entry takes the lock for a whole sweep (compare, the study, run_sweep); a layer
    below that asked for it again would be a second owner, so it is refused too."""
    store = ResultsStore(tmp_path)
    with store.lock():
        assert store.holds_lock
        with pytest.raises(StoreBusyError, match=f"pid {os.getpid()}"), store.lock():
            pass
        assert store.holds_lock  # the refusal leaves the holder's lock as it was
        with (
            pytest.raises(StoreBusyError, match=f"pid {os.getpid()}"),
            ResultsStore(tmp_path).lock(),
        ):
            pass
        store.append(_record("a"))
    assert not store.holds_lock
    with ResultsStore(tmp_path).lock():
        pass


def test_run_sweep_is_refused_while_another_writer_holds_the_directory(tmp_path):
    runs = plan_runs(norms=["none"], batch_sizes=[128], seeds=1, epochs=1)
    with ResultsStore(tmp_path).lock(), pytest.raises(StoreBusyError):
        run_sweep(runs, ResultsStore(tmp_path))
    assert read_results(tmp_path) == []


def test_the_sweep_under_a_held_lock_refuses_a_caller_that_does_not_hold_it(tmp_path):
    runs = plan_runs(norms=["none"], batch_sizes=[128], seeds=1, epochs=1)
    store = ResultsStore(tmp_path)
    with pytest.raises(RuntimeError, match=r"holds .*lock\(\)"):
        run_sweep_locked(runs, store, InProcessExecutor())
    assert not store.path.exists()
    with store.lock():
        outcome = run_sweep_locked(runs, store, InProcessExecutor())
    assert [record["run_id"] for record in read_results(tmp_path)] == [runs[0].run_id]
    assert outcome.records == read_results(tmp_path)


def test_the_lock_file_is_not_inherited_by_child_processes(tmp_path):
    store = ResultsStore(tmp_path)
    with store.lock():
        fds = os.listdir(f"/proc/{os.getpid()}/fd") if sys.platform == "linux" else []
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{os.getpid()}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(tmp_path)):
                assert not os.get_inheritable(int(fd))


# --- every output path is checked before work -------------------------------


def test_a_jsonl_path_is_not_a_store_directory(tmp_path):
    with pytest.raises(ResultsError, match=r"directory.*results\.jsonl"):
        ResultsStore(tmp_path / "out.jsonl")


@pytest.mark.parametrize("case", ["file", "under-a-file", "results-is-a-directory", "jsonl"])
def test_unusable_output_directories_are_refused_without_side_effects(tmp_path, case):
    target = tmp_path / "out"
    if case == "file":
        target.write_text("x")
    elif case == "under-a-file":
        (tmp_path / "plain").write_text("x")
        target = tmp_path / "plain" / "out"
    elif case == "results-is-a-directory":
        (target / "results.jsonl").mkdir(parents=True)
    else:
        target = tmp_path / "out.jsonl"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ResultsError) as caught:
        check_output_directory(target)
    assert str(target) in str(caught.value) or "results.jsonl" in str(caught.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_listed_output_files_and_directories_are_checked_too(tmp_path):
    (tmp_path / "report.html").mkdir()
    with pytest.raises(ResultsError, match=r"report\.html.*directory"):
        check_output_directory(tmp_path, files=["report.html"])
    (tmp_path / "models").write_text("x")
    with pytest.raises(ResultsError, match=r"models.*not a directory"):
        check_output_directory(tmp_path, directories=["models"])
    check_output_directory(tmp_path / "new" / "deeper", files=["report.html"])
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any directory")
def test_an_unwritable_directory_is_refused(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ResultsError, match="cannot write"):
            check_output_directory(locked / "out")
    finally:
        locked.chmod(0o700)


def test_the_lock_file_records_who_holds_it(tmp_path):
    store = ResultsStore(tmp_path)
    with store.lock():
        holder = json.loads(store.lock_path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert "started" in holder


# --- a run is recorded once ------------------------------------------------------------


def test_a_run_recorded_twice_is_refused_naming_the_file_and_its_lines(tmp_path):
    store = ResultsStore(tmp_path)
    for run_id, value in [("a", 0.9), ("b", 0.5), ("c", 0.5), ("a", 0.1), ("c", 0.2)]:
        store.append(_record(run_id, value))
    with pytest.raises(ResultsError) as caught:
        store.finished_ids()
    message = str(caught.value)
    assert f"{store.path} lines 1 and 4" in message and "'a'" in message
    assert "lines 3 and 5" in message and "'c'" in message
    assert "delete" in message  # the fix


@pytest.mark.parametrize("run_id", [["a"], 3, None, ""])
def test_a_run_id_that_is_not_text_is_named_with_its_line(tmp_path, run_id):
    store = ResultsStore(tmp_path)
    store.append(_record("a"))
    store.append(_record(run_id))
    with pytest.raises(ResultsError, match=rf"{store.path} line 2 .*run_id"):
        store.records()


def test_a_sweep_given_a_run_twice_trains_and_records_it_once(tmp_path):
    from normlab.experiment.executors.contract import Executor

    class Recorder(Executor):
        def run(self, todo, sink, data=None):
            for config in todo:
                sink.finished(config, {"run_id": config.run_id, "config": config.to_dict()})

    (run,) = plan_runs(norms=["bn"], batch_sizes=[8], seeds=1)
    store = ResultsStore(tmp_path)
    outcome = run_sweep([run, run], store, executor=Recorder())
    assert [r["run_id"] for r in store.records()] == [run.run_id]
    assert len(outcome.records) == 1
