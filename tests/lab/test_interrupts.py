"""Ctrl-C (or SIGTERM, which the lab takes as one) at any point of a comparison ends it with
an interrupted result that says what is saved, also when Python hands the interrupt on
wrapped in a RuntimeError; a RuntimeError that is no interrupt is a bug and propagates."""

from __future__ import annotations

import pytest

import normlab.lab.comparison
from console_capture import printed, recording_console
from normlab.lab import compare

SMALL = {"norms": ["bn"], "epochs": 1, "hidden": [16], "jobs": 1}


def _interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


def _interrupt_inside_a_class_body(*_args, **_kwargs):
    """A Ctrl-C while a module defines a class, as in matplotlib's import: Python 3.11 hands
    it on wrapped in a RuntimeError ("Error calling __set_name__")."""

    class Descriptor:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt

    class Owner:
        attribute = Descriptor()


@pytest.mark.parametrize("interrupt", [_interrupt, _interrupt_inside_a_class_body])
def test_ctrl_c_while_loading_the_data_is_an_interrupted_result(tmp_path, monkeypatch, interrupt):
    monkeypatch.setattr(normlab.lab.comparison, "load_dataset", interrupt)
    out, console = tmp_path / "sweep", recording_console()
    result = compare(seeds=2, out=out, console=console, **SMALL)
    assert result.interrupted and result.records == [] and result.files == ()
    assert not result.complete and len(result.runs) == 2
    assert f"interrupted: 0 of 2 runs are saved in {out / 'results.jsonl'}" in printed(console)


def test_a_runtime_error_that_is_no_interrupt_is_not_taken_for_one(tmp_path, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(normlab.lab.comparison, "load_dataset", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        compare(out=tmp_path / "sweep", progress=False, **SMALL)
