"""The command line refuses what it cannot do before any work starts, says which option was
wrong and what it accepts, keeps every finished result, and lets real bugs show a traceback."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normlab.bench
import normlab.cli
import normlab.lab.comparison
import normlab.norms_table
from normlab.experiment import ResultsStore, RunConfig

SMALL = ["--epochs", "1", "--hidden", "8", "--jobs", "1", "--batch-sizes", "128"]


@pytest.fixture
def no_work(monkeypatch):
    """Make any work (loading data, timing layers) fail the test: a refusal must come first."""

    def work(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(normlab.lab.comparison, "load_dataset", work)
    monkeypatch.setattr(normlab.bench, "bench", work)


# --- a finished record that lost its newline is kept, not retrained ----------


def test_a_last_record_without_newline_is_kept_and_not_retrained(tmp_path, run_cli):
    out = tmp_path / "R"
    argv = ["compare", "--norms", "bn", *SMALL, "--out", str(out)]
    status, _, stderr = run_cli([*argv, "--seeds", "1"])
    assert status == 0, stderr
    results = out / "results.jsonl"
    first = results.read_bytes()
    results.write_bytes(first[:-1])  # truncate -s -1
    status, stdout, stderr = run_cli([*argv, "--seeds", "2"])
    assert status == 0, stderr
    assert "removed" not in stdout and "1 runs already finished" in stdout
    text = results.read_bytes()
    assert text.startswith(first)
    ids = [json.loads(line)["run_id"] for line in text.splitlines()]
    assert len(ids) == len(set(ids)) == 2


# --- one sweep per output directory -------------------------------------------


def test_a_second_sweep_on_a_busy_out_is_refused_before_any_work(tmp_path, run_cli, no_work):
    with ResultsStore(tmp_path).lock():
        status, _, stderr = run_cli(["compare", *SMALL, "--out", str(tmp_path)])
    assert status == 2
    assert "in use by another sweep" in stderr and f"pid {os.getpid()}" in stderr
    assert not (tmp_path / "results.jsonl").exists()


# --- every output path is checked before work --------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("file", "is a file"),
        ("under-a-file", "lies under the file"),
        ("jsonl", "names a .jsonl file"),
        ("results-is-a-directory", "results.jsonl is a directory"),
        ("report-is-a-directory", "report.html is a directory"),
        ("models-is-a-file", "models is not a directory"),
    ],
)
def test_an_unusable_out_is_refused_before_any_work(tmp_path, run_cli, no_work, case, message):
    out = tmp_path / "out"
    extra = []
    if case == "file":
        out.write_text("x")
    elif case == "under-a-file":
        (tmp_path / "plain").write_text("x")
        out = tmp_path / "plain" / "out"
    elif case == "jsonl":
        out = tmp_path / "out.jsonl"
    elif case == "results-is-a-directory":
        (out / "results.jsonl").mkdir(parents=True)
    elif case == "report-is-a-directory":
        (out / "report.html").mkdir(parents=True)
    else:
        out.mkdir()
        (out / "models").write_text("x")
        extra = ["--save-models"]
    status, stdout, stderr = run_cli(["compare", *SMALL, *extra, "--out", str(out)])
    assert status == 2, stdout + stderr
    assert message in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("case", ["directory", "under-a-file"])
def test_bench_checks_its_json_path_before_timing(tmp_path, run_cli, no_work, case):
    target = tmp_path
    if case == "under-a-file":
        (tmp_path / "plain").write_text("x")
        target = tmp_path / "plain" / "bench.json"
    status, _, stderr = run_cli(["bench", "--kinds", "bn", "--json", str(target)])
    assert status == 2
    assert str(target if case == "directory" else tmp_path / "plain") in stderr


# --- numbers are checked where they enter ------------------------------------


@pytest.mark.parametrize("lr", ["inf", "nan", "-1", "0", "-inf"])
def test_a_bad_lr_is_a_usage_error_before_any_work(tmp_path, run_cli, no_work, lr):
    status, _, stderr = run_cli(["compare", *SMALL, f"--lr={lr}", "--out", str(tmp_path)])
    assert status == 2
    assert "--lr" in stderr and "finite number above 0" in stderr
    assert not (tmp_path / "results.jsonl").exists()


_BAD = {
    "lr": st.one_of(
        st.sampled_from([math.inf, -math.inf, math.nan, 0.0, True]),
        st.floats(max_value=0.0),
        st.integers(max_value=0),
    ),
    "batch_size": st.one_of(st.integers(max_value=0), st.sampled_from([2.0, True, "32"])),
    "epochs": st.one_of(st.integers(max_value=0), st.sampled_from([1.5, False])),
    "seed": st.one_of(st.integers(max_value=-1), st.sampled_from([0.0, None])),
    "nproc": st.integers(max_value=0),
}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_run_config_refuses_every_bad_number_naming_the_field(data):
    field = data.draw(st.sampled_from(sorted(_BAD)))
    value = data.draw(_BAD[field])
    with pytest.raises(ValueError, match=rf"^`?{field}\b.*got"):
        RunConfig(**{field: value})


@settings(max_examples=30, deadline=None)
@given(
    lr=st.floats(min_value=1e-12, max_value=1e6),
    batch_size=st.integers(1, 4096),
    epochs=st.integers(1, 1000),
    seed=st.integers(0, 2**31),
)
def test_run_config_accepts_good_numbers(lr, batch_size, epochs, seed):
    config = RunConfig(lr=lr, batch_size=batch_size, epochs=epochs, seed=seed)
    assert RunConfig.from_dict(config.to_dict()) == config


# --- which option, what it accepts; ~ in every path --------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [("--epochs", "0"), ("--seeds", "0"), ("--jobs", "0"), ("--jobs", "-2"), ("--threads", "x")],
)
def test_a_bad_count_names_the_option_and_what_it_accepts(run_cli, option, value):
    status, _, stderr = run_cli(["compare", option, value])
    assert status == 2
    assert f"argument {option}" in stderr and "whole number of 1 or more" in stderr
    assert "_positive_int" not in stderr


def test_tilde_in_out_expands_like_data_dir(tmp_path, run_cli, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    status, _, stderr = run_cli(
        ["compare", "--norms", "none", "--seeds", "1", *SMALL, "--out", "~/x"]
    )
    assert status == 0, stderr
    assert (home / "x" / "results.jsonl").exists()
    assert not (work / "~").exists()
    parsed = normlab.cli.build_parser().parse_args(["compare", "--data-dir", "~/d", "--out", "~/x"])
    assert parsed.data_dir == home / "d" and parsed.out == home / "x"


# --- what cannot be read is named; the advice works -------------------------


def test_a_non_utf8_results_file_names_the_file_and_line(tmp_path, run_cli):
    store = ResultsStore(tmp_path)
    store.append({"run_id": "a", "config": {}})
    with open(store.path, "ab") as file:
        file.write(b"\xff\xfe\n")
    status, _, stderr = run_cli(["report", str(tmp_path)])
    assert status == 2
    assert f"{store.path} line 2" in stderr and "UTF-8" in stderr


def test_a_record_the_report_cannot_read_is_refused_before_training_and_the_advice_works(
    tmp_path, run_cli
):
    argv = ["compare", "--norms", "none", *SMALL, "--out", str(tmp_path), "--seeds"]
    assert run_cli([*argv, "1"])[0] == 0
    path = tmp_path / "results.jsonl"
    record = json.loads(path.read_text())
    del record["final"]["val_acc"]
    path.write_text(json.dumps(record) + "\n")
    status, _, stderr = run_cli([*argv, "2"])
    assert status == 2
    assert f"{path} line 1" in stderr and "delete its line" in stderr
    assert len(path.read_text().splitlines()) == 1  # nothing trained
    path.write_text("")  # follow the advice: delete the line, run compare again
    status, _, stderr = run_cli([*argv, "1"])
    assert status == 0, stderr
    assert [json.loads(line)["final"]["val_acc"] for line in path.read_text().splitlines()]


# --- a TypeError is a bug, not a usage error -------------------------------


def test_a_type_error_from_a_bug_shows_its_traceback(run_cli, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("a bug inside normlab")

    monkeypatch.setattr(normlab.norms_table, "norms_table", broken)
    with pytest.raises(TypeError, match="a bug inside normlab"):
        run_cli(["norms"])


# --- the study's paths: expanded like compare's, checked before any work ---------------


@pytest.mark.parametrize(
    "case", ["report-file", "report-under-a-file", "/sys/x", "/proc/x", "out-file"]
)
def test_the_study_refuses_an_unusable_path_before_any_work(tmp_path, run_cli, monkeypatch, case):
    import normlab.study.run

    def work(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(normlab.study.run, "load_dataset", work)
    out, report = tmp_path / "runs", tmp_path / "report"
    if case == "report-file":
        report.write_text("x")
    elif case == "report-under-a-file":
        (tmp_path / "plain").write_text("x")
        report = tmp_path / "plain" / "report"
    elif case == "out-file":
        out.write_text("x")
    else:
        report = Path(case)
    argv = ["study", "claims", "--data-dir", str(tmp_path), "--budget", "quick"]
    status, stdout, stderr = run_cli([*argv, "--out", str(out), "--report", str(report)])
    assert status == 2, stdout + stderr
    assert str(out if case == "out-file" else report) in stderr and "Traceback" not in stderr
    assert not Path(case).exists()
    assert case == "out-file" or not out.exists()


def test_tilde_in_every_study_path_expands(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    parsed = normlab.cli.build_parser().parse_args(
        ["study", "claims", "--data-dir", "~/d", "--out", "~/o", "--report", "~/r"]
    )
    assert (parsed.data_dir, parsed.out, parsed.report) == (
        tmp_path / "d",
        tmp_path / "o",
        tmp_path / "r",
    )
