"""The command line refuses what it cannot do before any work starts, says which option was
wrong and what it accepts, and lets real bugs show a traceback (compare's own refusals, as
normlab.lab.compare makes them: tests/lab/test_refusals.py and tests/lab/test_resume.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normlab.bench
import normlab.cli
import normlab.norms_table
from normlab.experiment import ResultsStore, RunConfig

SMALL = ["--epochs", "1", "--hidden", "8", "--jobs", "1", "--batch-sizes", "128"]


@pytest.fixture
def no_work(monkeypatch):
    """Make timing layers fail the test: a refusal must come first."""

    def work(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(normlab.bench, "bench", work)


# --- every output path is checked before work (compare's: tests/lab/test_refusals.py) ----


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
# (compare's refusal of a bad lr, naming `lr`: tests/lab/test_refusals.py)


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
