"""The same comparison again resumes: finished runs are skipped and their records kept byte
for byte, a record that lost only its newline is a finished run, a record the report cannot
read stops the sweep before any training (and deleting it, as the message says, works), and
a report cut off by Ctrl-C is drawn by the next call."""

from __future__ import annotations

import json

import pytest

from console_capture import printed, recording_console
from normlab.lab import compare

SMALL = {"epochs": 1, "hidden": [16], "jobs": 1, "report": False}


def test_the_same_call_again_resumes_and_changes_nothing(tmp_path):
    out = tmp_path / "sweep"
    first = compare(norms=["ln"], seeds=2, out=out, progress=False, **SMALL)
    before = (out / "results.jsonl").read_bytes()
    console = recording_console()
    again = compare(norms=["ln"], seeds=2, out=out, console=console, **SMALL)
    assert "2 runs already finished, skipped" in printed(console)
    assert (out / "results.jsonl").read_bytes() == before
    assert again.records == first.records and again.complete
    console = recording_console()
    more = compare(norms=["ln"], seeds=3, out=out, console=console, **SMALL)  # one more seed
    assert "2 runs already finished" in printed(console)
    assert (out / "results.jsonl").read_bytes().startswith(before)
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    assert more.complete and len(more.records) == 3


def test_a_last_record_without_newline_is_kept_and_not_retrained(tmp_path):
    out = tmp_path / "R"
    call = {**SMALL, "norms": ["bn"], "batch_sizes": [128], "hidden": [8], "out": out}
    compare(seeds=1, progress=False, **call)
    results = out / "results.jsonl"
    first = results.read_bytes()
    results.write_bytes(first[:-1])  # truncate -s -1
    console = recording_console()
    compare(seeds=2, console=console, **call)
    said = printed(console)
    assert "removed" not in said and "1 runs already finished" in said
    text = results.read_bytes()
    assert text.startswith(first)
    ids = [json.loads(line)["run_id"] for line in text.splitlines()]
    assert len(ids) == len(set(ids)) == 2


def test_a_record_the_report_cannot_read_is_refused_before_training_and_the_advice_works(
    tmp_path,
):
    call = {**SMALL, "norms": ["none"], "batch_sizes": [128], "hidden": [8], "out": tmp_path}
    call["progress"] = False
    compare(seeds=1, **call)
    path = tmp_path / "results.jsonl"
    record = json.loads(path.read_text())
    del record["final"]["val_acc"]
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError) as refused:
        compare(seeds=2, **call)
    assert f"{path} line 1" in str(refused.value) and "delete its line" in str(refused.value)
    assert len(path.read_text().splitlines()) == 1  # nothing trained
    path.write_text("")  # follow the advice: delete the line, compare again
    compare(seeds=1, **call)
    assert [json.loads(line)["final"]["val_acc"] for line in path.read_text().splitlines()]


def _interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


def test_a_report_cut_off_by_ctrl_c_is_drawn_by_the_same_call_again(tmp_path, monkeypatch):
    import normlab.report

    monkeypatch.setattr(normlab.report, "render_report", _interrupt)
    out, console = tmp_path / "sweep", recording_console()
    call = {"norms": ["none"], "seeds": 1, "epochs": 1, "hidden": [16], "jobs": 1, "out": out}
    cut = compare(console=console, **call)
    assert cut.interrupted and cut.files == () and len(cut.records) == 1
    assert f"interrupted: 1 of 1 runs are saved in {out / 'results.jsonl'}" in printed(console)
    monkeypatch.undo()
    console = recording_console()
    again = compare(console=console, **call)  # renders what was saved
    assert not again.interrupted and "1 runs already finished" in printed(console)
    assert again.report == out / "report.html" and (out / "report.html").exists()
    assert again.records == cut.records
