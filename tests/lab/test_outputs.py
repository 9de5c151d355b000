"""What a comparison leaves in ``out``: one record per run, the plots and the report, each
run's saved model, the diagnostics asked for; on the built-in digits and on CIFAR-10 and
MNIST files, as ``normlab.lab.compare`` writes and returns them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from console_capture import printed, recording_console
from data_fixtures import cifar_arrays, mnist_arrays, write_cifar_bin, write_mnist_idx
from normlab.experiment import RunConfig, read_results
from normlab.lab import compare

SMALL = {"epochs": 1, "hidden": [16], "jobs": 1}


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_compare_writes_results_plots_and_report(tmp_path):
    out, console = tmp_path / "sweep", recording_console()
    result = compare(norms=["none", "bn"], batch_sizes=[32, 128], seeds=2, out=out,
                     console=console, **SMALL)  # fmt: skip
    assert result.complete and result.failed == [] and not result.interrupted
    records = _records(out)
    assert len(records) == 8 and result.records == records
    assert {(r["config"]["norm"], r["config"]["batch_size"]) for r in records} == {
        ("none", 32),
        ("none", 128),
        ("bn", 32),
        ("bn", 128),
    }
    names = ("curves.png", "batch_size.png", "report.html")
    assert result.files == tuple(out / name for name in names)
    assert result.report == out / "report.html"
    for path in result.files:
        assert path.stat().st_size > 0, path.name
    said = printed(console)
    assert "[8/8]" in said
    assert "8 runs: digits" in said


@pytest.mark.parametrize("model", ["cnn", "rnn"])
def test_the_lab_trains_on_cifar10_and_mnist_files(tmp_path, model):
    """The tutorials' CNN on 32x32x3 CIFAR-10 and the row-by-row RNN on 28x28 MNIST, read from
    small files in the published formats."""
    cifar = write_cifar_bin(tmp_path, cifar_arrays(seed=0, n=8))
    mnist = tmp_path / "mnist"
    write_mnist_idx(mnist, mnist_arrays(seed=0, n_train=40, n_val=10), gz=True)
    for dataset, data_dir in (("cifar10", cifar), ("mnist", mnist)):
        out = tmp_path / f"{dataset}-{model}"
        result = compare(data=dataset, data_dir=data_dir, model=model, norms=["bn", "ln"],
                         batch_sizes=[8], seeds=1, out=out, report=False, progress=False,
                         **SMALL)  # fmt: skip
        assert result.complete and result.failed == []
        records = _records(out)
        assert [r["config"]["norm"] for r in records] == ["bn", "ln"]
        assert all(r["status"] == "finished" for r in records)
        assert records[0]["data"]["input_shape"] == (
            [3, 32, 32] if dataset == "cifar10" else [1, 28, 28]
        )


def test_saved_models_reload_to_the_recorded_accuracy(tmp_path):
    """``save_models`` writes each run's state_dict (here from the pool's workers); rebuilt from
    the record's config and loaded with weights_only=True, the model scores the recorded
    validation accuracy."""
    import torch

    from normlab.data import load_dataset
    from normlab.experiment.train import build_run_model, evaluate

    out = tmp_path / "sweep"
    result = compare(norms=["none", "bn"], seeds=1, epochs=1, hidden=[16], jobs=2,
                     save_models=True, out=out, report=False, progress=False)  # fmt: skip
    assert result.complete and result.failed == []
    data = load_dataset("digits")
    records = _records(out)
    assert len(records) == 2
    for record in records:
        assert record["model_file"] == f"models/{record['run_id']}.pt"
        model = build_run_model(RunConfig.from_dict(record["config"]), data)
        model.load_state_dict(torch.load(out / record["model_file"], weights_only=True))
        _, accuracy = evaluate(model, data.val_x, data.val_y)
        assert accuracy == record["final"]["val_acc"]
    assert not list((out / "models").glob("*.partial"))


def test_compare_records_diagnostics_and_scaled_rates(tmp_path):
    out = tmp_path / "sweep"
    compare(norms=["bn"], batch_sizes=[16, 64], seeds=1, epochs=2, hidden=[16], jobs=1,
            diagnostics=True, lr_scaling="linear", steps=40, out=out, report=False,
            progress=False)  # fmt: skip
    records = read_results(out)
    assert sorted(r["config"]["batch_size"] for r in records) == [16, 64]
    for record in records:
        config = RunConfig.from_dict(record["config"])
        assert (
            config.lr_scaling == "linear" and config.effective_lr == 1e-3 * config.batch_size / 32
        )
        assert record["final"]["steps"] == 40
        assert len(record["diagnostics"]["probes"]) == record["final"]["epochs_run"] + 1
