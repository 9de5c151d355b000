"""Sweep axes: every run option that takes a comma list, the product they make, run ids that
stay what they were, the size bound of a plan, and the report's grouping by what varies."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest
import torch
from torch import nn

import normlab.experiment.config as config_module
from console_capture import printed, recording_console
from normlab.experiment import RunConfig, plan_runs
from normlab.experiment.train import make_optimizer
from normlab.lab import compare
from normlab.models import build_model
from normlab.report import Sweep, summary_table
from report_fixtures import make_record

# --- run ids of configurations that existed before these axes ----------------------------

OLD_FIELDS = ("dataset", "model", "norm", "placement", "batch_size", "seed", "epochs", "lr")


def _old_run_id(**changes) -> str:
    """The run id as normlab computed it before norm options and the new axes existed: the
    SHA-1 of the canonical JSON of exactly these fields (nproc and sync_bn only when set)."""
    data = {
        "dataset": "digits",
        "model": "mlp",
        "norm": "none",
        "placement": "before",
        "batch_size": 32,
        "seed": 0,
        "epochs": 5,
        "lr": 1e-3,
        "optimizer": "adam",
        "model_options": {},
        **changes,
    }
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"norm": "bn", "batch_size": 4, "seed": 2},
        {"model": "rnn", "model_options": {"hidden": [16]}, "lr": 0.01, "optimizer": "sgd"},
        {"model_options": {"cell": "gru"}, "model": "rnn", "placement": "after"},
        {"norm": "bn", "nproc": 2, "sync_bn": True},
    ],
)
def test_single_valued_configurations_keep_their_run_ids(changes):
    assert RunConfig(**changes).run_id == _old_run_id(**changes)
    lists = {"norms": [changes.get("norm", "none")], "batch_sizes": [changes.get("batch_size", 32)]}
    planned = plan_runs(
        **lists,
        seeds=changes.get("seed", 0) + 1,
        model=changes.get("model", "mlp"),
        placement=changes.get("placement", "before"),
        lr=changes.get("lr", 1e-3),
        optimizer=changes.get("optimizer", "adam"),
        model_options=changes.get("model_options"),
        nproc=changes.get("nproc", 1),
        sync_bn=changes.get("sync_bn", False),
    )
    assert planned[-1].run_id == _old_run_id(**changes)


def test_options_at_their_default_do_not_change_the_run_id():
    assert RunConfig(model_options={"dropout": 0.0}).run_id == _old_run_id()
    assert RunConfig(model_options={"depth": None}).run_id == _old_run_id()
    assert RunConfig(weight_decay=0.1).run_id != _old_run_id()
    assert RunConfig(model_options={"depth": 4}).run_id != _old_run_id()


def test_an_old_results_directory_resumes_when_the_same_values_are_listed(tmp_path):
    """A sweep run with single values, then again with lists that contain them, trains only
    the runs that are new."""
    out = tmp_path / "sweep"
    small = {"norms": ["ln"], "seeds": 1, "epochs": 1, "hidden": [8], "jobs": 1, "out": out}
    compare(**small, report=False, progress=False)
    before = (out / "results.jsonl").read_text()
    console = recording_console()
    compare(**small, lr=[0.001, 0.01], dropout=[0, 0.25], report=False, console=console)
    said = printed(console)
    assert "(1 runs already finished, skipped)" in said
    assert "lr 0.001 / 0.01, dropout 0.0 / 0.25" in said
    after = (out / "results.jsonl").read_text()
    assert after.startswith(before) and len(after.splitlines()) == 4


# --- the product ------------------------------------------------------------------------


def test_plan_runs_is_the_product_of_every_axis():
    axes = {
        "norms": ["bn", "ln"],
        "placement": ["before", "after"],
        "optimizer": ["adam", "sgd"],
        "lr": [1e-3, 1e-2, 1e-1],
        "weight_decay": [None, 0.1],
        "model_options": [{"depth": 2}, {"depth": 8, "dropout": 0.5}],
        "batch_sizes": [8, 32],
    }
    runs = plan_runs(**axes, seeds=2)
    expected = set(
        itertools.product(
            *[[json.dumps(value, sort_keys=True) for value in values] for values in axes.values()],
            range(2),
        )
    )
    got = {
        (
            *(
                json.dumps(value, sort_keys=True)
                for value in (
                    run.norm,
                    run.placement,
                    run.optimizer,
                    run.lr,
                    run.weight_decay,
                    run.model_options,
                    run.batch_size,
                )
            ),
            run.seed,
        )
        for run in runs
    }
    assert got == expected and len(runs) == len(expected)
    assert len({run.run_id for run in runs}) == len(runs)
    assert [run.seed for run in runs[:4]] == [0, 1, 0, 1]  # seeds innermost


def test_duplicates_in_a_list_are_planned_once():
    runs = plan_runs(norms=["bn"], batch_sizes=[32], seeds=1, lr=[0.01, 0.01, 0.1])
    assert [run.lr for run in runs] == [0.01, 0.1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"optimizer": ["adam", "adamm"]}, "unknown optimizer 'adamm'"),
        ({"placement": ["before", "inside"]}, "'before' or 'after' the activation; got 'inside'"),
        ({"weight_decay": [0.1, -1.0]}, "`weight_decay` must be a finite number >= 0"),
        ({"weight_decay": [float("nan")]}, "`weight_decay` must be a finite number >= 0"),
        ({"model_options": [{"dropout": 1.0}]}, r"`dropout` must be in \[0, 1\)"),
    ],
)
def test_a_bad_value_in_any_list_is_refused(options, message):
    with pytest.raises(ValueError, match=message):
        plan_runs(norms=["bn"], batch_sizes=[32], seeds=1, **options)


# --- the size of a plan -----------------------------------------------------------


def test_an_absurd_sweep_is_refused_before_any_configuration_is_built(monkeypatch):
    """``--seeds 100000000`` used to build every configuration up front and run out of
    memory; it must be refused, naming its size, before the first one is built."""
    built = []
    original = RunConfig.__post_init__

    def counting(self):
        built.append(1)
        if len(built) > 1000:
            raise RuntimeError("plan_runs built configurations of a sweep it should refuse")
        original(self)

    monkeypatch.setattr(config_module.RunConfig, "__post_init__", counting)
    with pytest.raises(ValueError, match=r"200,000,000 runs \(2 norms x 100,000,000 seeds\)"):
        plan_runs(norms=["bn", "ln"], batch_sizes=[32], seeds=100_000_000)
    assert built == []


def test_the_bound_counts_every_axis():
    axes = {"norms": ["bn", "ln"], "batch_sizes": [4, 8], "lr": [0.1, 0.01, 0.001]}
    assert len(plan_runs(**axes, seeds=5, max_runs=60)) == 60
    with pytest.raises(ValueError, match=r"60 runs .* at most 59"):
        plan_runs(**axes, seeds=5, max_runs=59)


def test_compare_refuses_an_absurd_sweep_before_any_work(tmp_path):
    out, console = tmp_path / "sweep", recording_console()
    with pytest.raises(ValueError, match=r"300,000,000 runs .* at most"):
        compare(seeds=100_000_000, out=out, console=console)
    assert printed(console) == "" and not out.exists()


# --- the models' new options ---------------------------------------------------------


@pytest.mark.parametrize("model", ["mlp", "cnn", "rnn"])
def test_depth_is_that_many_hidden_layers_of_one_width(model):
    shape = (1, 16, 16)
    deep = build_model(model, shape, 10, norm="ln", hidden=[12], depth=4)
    layers = [m for m in deep.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.LSTM)]
    hidden_layers = [m for m in layers if not (isinstance(m, nn.Linear) and m.out_features == 10)]
    if model == "cnn":
        hidden_layers = [m for m in hidden_layers if isinstance(m, nn.Conv2d)]
    assert len(hidden_layers) == 4
    widths = [
        getattr(m, "out_features", None) or getattr(m, "out_channels", None) or m.hidden_size
        for m in hidden_layers
    ]
    assert widths == [12] * 4
    norms = [m for m in deep.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 4
    assert deep(torch.randn(3, *shape)).shape == (3, 10)


def test_depth_without_hidden_repeats_the_first_default_width():
    net = build_model("mlp", (1, 8, 8), 10, depth=3)
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)] == [128] * 3 + [10]


def test_depth_with_several_widths_is_refused():
    with pytest.raises(ValueError, match="give hidden a single width"):
        build_model("mlp", (1, 8, 8), 10, hidden=[16, 8], depth=3)


@pytest.mark.parametrize("model", ["mlp", "cnn", "rnn"])
def test_dropout_zero_leaves_the_model_as_it_was_and_dropout_acts_in_training_only(model):
    shape = (1, 8, 8)
    torch.manual_seed(0)
    plain = build_model(model, shape, 10, hidden=[16])
    torch.manual_seed(0)
    zero = build_model(model, shape, 10, hidden=[16], dropout=0.0)
    assert repr(zero) == repr(plain)
    for a, b in zip(plain.state_dict().values(), zero.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(0)  # dropout has no parameters: the same seed gives the same weights
    dropped = build_model(model, shape, 10, hidden=[16], dropout=0.5)
    assert [m.p for m in dropped.modules() if isinstance(m, nn.Dropout)]
    assert all(m.p == 0.5 for m in dropped.modules() if isinstance(m, nn.Dropout))
    x = torch.randn(16, *shape)
    with torch.no_grad():
        assert torch.equal(dropped.eval()(x), plain.eval()(x))
        assert not torch.equal(dropped.train()(x), plain.train()(x))


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_weight_decay_reaches_the_optimizer_and_none_keeps_torchs_default(name):
    reference = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
        "rmsprop": torch.optim.RMSprop,
    }[name]
    parameter = [nn.Parameter(torch.zeros(2))]
    default = reference(parameter, lr=0.1).defaults["weight_decay"]
    assert make_optimizer(name, parameter, 0.1).defaults["weight_decay"] == default
    assert make_optimizer(name, parameter, 0.1, 0.25).defaults["weight_decay"] == 0.25


# --- the report groups by every axis that varies -------------------------------------------


def test_the_report_groups_and_labels_by_every_varying_axis():
    records = []
    for lr, depth, seed in itertools.product((0.001, 0.01), (2, 8), range(2)):
        model_options = {"hidden": [16], "depth": depth}
        records.append(make_record("bn", 32, seed, 0.9, lr=lr, model_options=model_options))
    records.append(
        make_record(
            "bn", 32, 0, 0.8, lr=0.01, weight_decay=0.1, model_options={"hidden": [16], "depth": 2}
        )
    )
    sweep = Sweep.from_records(records)
    assert sweep.experiment_fields == ("lr", "depth", "weight_decay")
    assert sweep.series == (
        "bn (lr=0.001, depth=2, weight_decay=default)",
        "bn (lr=0.001, depth=8, weight_decay=default)",
        "bn (lr=0.01, depth=2, weight_decay=default)",
        "bn (lr=0.01, depth=8, weight_decay=default)",
        "bn (lr=0.01, depth=2, weight_decay=0.1)",
    )
    assert [len(sweep.series_group(series, 32)) for series in sweep.series] == [2, 2, 2, 2, 1]
    rows = [str(cell) for cell in summary_table(sweep).columns[0].cells]
    assert rows == list(sweep.series)


def test_compare_sweeps_the_product_and_names_what_varies(tmp_path):
    out, console = tmp_path / "sweep", recording_console()
    compare(norms=["ln"], lr=[1e-3, 1e-2], depth=[1, 2], hidden=[8], seeds=1, epochs=1, jobs=1,
            out=out, console=console)  # fmt: skip
    said = printed(console)
    assert "4 runs: digits" in said and "lr 0.001 / 0.01, depth 1 / 2" in said
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["config"]["lr"], r["config"]["model_options"]["depth"]) for r in records) == [
        (0.001, 1),
        (0.001, 2),
        (0.01, 1),
        (0.01, 2),
    ]
    page = (out / "report.html").read_text()
    assert "ln (lr=0.001, depth=2)" in page and "ln (lr=0.01, depth=1)" in page
