"""Norm specs: a kind with options written as text (``gn(groups=8)``), through the parser,
the run configuration and its id, the lab's models, the report and the command line."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from console_capture import printed, recording_console
from normlab import BatchNorm
from normlab.data import load_dataset
from normlab.experiment import RunConfig, check_runs, plan_runs
from normlab.experiment.train import build_run_model
from normlab.lab import compare
from normlab.norm_spec import format_norm, parse_norm, split_specs
from normlab.registry import make_norm
from normlab.report import Sweep, render_report, summary_table
from report_fixtures import make_record, write_results

# --- the text -------------------------------------------------------------------


def test_commas_inside_parentheses_do_not_split_kinds():
    text = "bn, gn(groups=8,eps=1e-3) ,ln,brn(r_max=2)"
    assert split_specs(text) == ["bn", "gn(groups=8,eps=1e-3)", "ln", "brn(r_max=2)"]


@pytest.mark.parametrize("text", ["gn(groups=8", "bn,gn(groups=8))", "gn)groups=8("])
def test_unbalanced_parentheses_are_refused(text):
    with pytest.raises(ValueError, match=r"unbalanced|unclosed"):
        split_specs(text)


def test_option_values_are_read_as_typed_values():
    assert parse_norm("gn(groups=8, eps=1e-3)") == ("gn", {"eps": 0.001, "groups": 8})
    assert parse_norm("bn(convention=keras)") == ("bn", {"convention": "keras"})
    assert parse_norm("batch(affine=false,momentum=none)") == (
        "bn",
        {"affine": False, "momentum": None},
    )
    assert parse_norm(" LayerNorm ") == ("ln", {})


def test_an_integer_for_a_float_option_is_that_float():
    _, options = parse_norm("brn(r_max=2)")
    assert options == {"r_max": 2.0} and type(options["r_max"]) is float
    assert parse_norm("brn(r_max=2)") == parse_norm("brn(r_max=2.0)")


@pytest.mark.parametrize(
    "spec", ["gn(groups=\u0668)", "gn(groups=\uff18)", "bn(eps=\u0661e-3)", "bn(eps=1_0e-3)"]
)
def test_numbers_are_written_in_ascii_digits_only(spec):
    """Python's int() and float() read Arabic-Indic and full-width digits and underscores;
    a spec reads 0-9 only, so one value has one spelling."""
    with pytest.raises(ValueError, match=r"is not a valid value|cannot read the option value"):
        parse_norm(spec)


def test_minus_zero_is_zero_in_the_options_and_the_run_id():
    assert parse_norm("bn(momentum=-0.0)") == parse_norm("bn(momentum=0.0)")
    assert str(parse_norm("bn(momentum=-0)")[1]["momentum"]) == "0.0"
    negative = RunConfig(norm="bn", norm_options={"momentum": -0.0})
    assert negative.run_id == RunConfig(norm="bn", norm_options={"momentum": 0.0}).run_id
    assert negative.norm_label == "bn(momentum=0.0)"


def test_an_unknown_option_is_refused_as_make_norm_refuses_it():
    with pytest.raises(TypeError) as by_make_norm:
        make_norm("gn", 16, grups=8)
    with pytest.raises(TypeError) as by_spec:
        parse_norm("gn(grups=8)")
    assert str(by_spec.value) == str(by_make_norm.value)
    assert "groups" in str(by_spec.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gn(groups=8.5)", r"groups=8\.5 of 'gn' .* takes int"),
        ("bn(convention=tf)", "takes 'torch' or 'keras'"),
        ("bn(affine=1)", "takes bool"),
        ("bn(eps=nan)", "finite"),
        ("ln(channel_dim=-1)", "set by the lab"),
        ("bn(device=cuda)", "set by the lab"),
        ("gn(groups)", "name=value"),
        ("gn(groups=8,groups=4)", "given twice"),
        ("gn(groups=[8])", "cannot read the option value"),
        ("gn(groups=8)x", "cannot read the norm"),
        ("gnn(groups=8)", "Did you mean 'gn'"),
    ],
)
def test_malformed_specs_are_refused_saying_what_to_write(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_norm(spec)


FLOATS = st.floats(1e-9, 1e3, allow_nan=False)
OPTIONS = {
    "gn": {"groups": st.integers(1, 64), "eps": FLOATS, "affine": st.booleans()},
    "bn": {
        "momentum": st.none() | st.floats(0, 1),
        "eps": FLOATS,
        "convention": st.sampled_from(["torch", "keras"]),
        "track_running_stats": st.booleans(),
    },
    "brn": {"r_max": FLOATS, "d_max": FLOATS, "warmup_steps": st.integers(0, 10**6)},
    "ln": {"over": st.sampled_from(["channels", "all"]), "bias": st.booleans()},
}


@st.composite
def kinds_with_options(draw):
    kind = draw(st.sampled_from(sorted(OPTIONS)))
    names = draw(st.sets(st.sampled_from(sorted(OPTIONS[kind]))))
    return kind, {name: draw(OPTIONS[kind][name]) for name in names}


@settings(max_examples=80, deadline=None, derandomize=True)
@given(kinds_with_options())
def test_a_formatted_spec_reads_back_as_the_same_kind_and_options(kind_options):
    kind, options = kind_options
    spec = format_norm(kind, options)
    assert parse_norm(spec) == (kind, options)
    assert split_specs(f"none,{spec},ln") == ["none", spec, "ln"]
    assert RunConfig(norm=kind, norm_options=options).norm_label == spec


# --- run configurations -----------------------------------------------------------


def test_options_enter_the_run_id_and_the_label():
    plain = RunConfig(norm="gn")
    grouped = RunConfig(norm="gn", norm_options={"groups": 8})
    assert grouped.run_id != plain.run_id
    assert "norm_options" not in plain.to_dict()
    assert grouped.to_dict()["norm_options"] == {"groups": 8}
    assert grouped.label.startswith("gn(groups=8) ")
    assert RunConfig(norm="group", norm_options={"eps": 1e-3, "groups": 8}).run_id == (
        RunConfig(norm="gn", norm_options={"groups": 8, "eps": 0.001}).run_id
    )
    assert RunConfig(norm="brn", norm_options={"r_max": 2}).run_id == (
        RunConfig(norm="brn", norm_options={"r_max": 2.0}).run_id
    )
    round_trip = RunConfig.from_dict(json.loads(json.dumps(grouped.to_dict())))
    assert round_trip == grouped and round_trip.run_id == grouped.run_id


def test_a_run_config_refuses_an_option_its_kind_does_not_take():
    with pytest.raises(TypeError, match="it accepts: groups, eps, affine"):
        RunConfig(norm="gn", norm_options={"grups": 8})


def test_plan_runs_reads_specs_and_plans_each_kind_with_options_once():
    runs = plan_runs(
        norms=["gn", "gn(groups=8,eps=1e-3)", "group(eps=0.001, groups=8)", "bn(convention=keras)"],
        batch_sizes=[32],
        seeds=2,
    )
    assert [run.norm_label for run in runs[::2]] == [
        "gn",
        "gn(eps=0.001,groups=8)",
        "bn(convention=keras)",
    ]
    assert len({run.run_id for run in runs}) == len(runs) == 6


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_the_models_build_the_kind_with_its_options(digits):
    for model in ("mlp", "cnn", "rnn"):
        config = RunConfig(
            model=model,
            norm="gn",
            norm_options={"groups": 4, "eps": 1e-3},
            model_options={"hidden": [16, 8]},
        )
        norms = [
            m for m in build_run_model(config, digits).modules() if isinstance(m, nn.GroupNorm)
        ]
        assert len(norms) == 2, model
        assert all(norm.num_groups == 4 and norm.eps == 1e-3 for norm in norms)
    keras = RunConfig(
        norm="bn", norm_options={"convention": "keras"}, model_options={"hidden": [8]}
    )
    layers = [m for m in build_run_model(keras, digits).modules() if isinstance(m, BatchNorm)]
    assert [(layer.momentum, layer.eps) for layer in layers] == [(0.99, 1e-3)]  # Keras' defaults


def test_check_runs_names_the_spec_that_cannot_train(digits):
    runs = plan_runs(
        norms=["gn(groups=3)"], batch_sizes=[8], seeds=1, model_options={"hidden": [16]}
    )
    with pytest.raises(ValueError, match=r"norm 'gn\(groups=3\)' in model 'mlp'"):
        check_runs(runs, digits)


# --- the report -----------------------------------------------------------------------


def test_the_report_labels_a_kind_with_options_as_its_spec(tmp_path):
    records = [
        make_record("gn", 32, seed, 0.9 + seed / 100, norm_options=options)
        for options in ({}, {"groups": 8}, {"groups": 8, "eps": 0.001})
        for seed in range(2)
    ]
    for record in records:
        if not record["config"]["norm_options"]:
            del record["config"]["norm_options"]
    sweep = Sweep.from_records(records)
    labels = ("gn", "gn(groups=8)", "gn(eps=0.001,groups=8)")
    assert sweep.norms == sweep.series == labels
    assert "norm_options" not in sweep.varying
    assert [str(cell) for cell in summary_table(sweep).columns[0].cells] == list(labels)
    page = render_report(write_results(tmp_path, records)).html.read_text()
    assert all(f">{label}<" in page for label in labels)


# --- the command line -------------------------------------------------------------------

SMALL = ["--seeds", "1", "--epochs", "1", "--hidden", "16", "--jobs", "1"]


def test_compare_trains_kinds_with_options_and_labels_them(tmp_path):
    out, console = tmp_path / "sweep", recording_console()
    compare(norms=["gn(groups=4)", "gn(groups=2)"], seeds=1, epochs=1, hidden=[16], jobs=1,
            out=out, console=console)  # fmt: skip
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["config"]["norm"], r["config"].get("norm_options")) for r in records] == [
        ("gn", {"groups": 4}),
        ("gn", {"groups": 2}),
    ]
    assert "gn(groups=4) b=32 seed=0" in printed(console)
    assert ">gn(groups=4)<" in (out / "report.html").read_text()


def test_compare_refuses_an_unknown_option_before_any_work(tmp_path, run_cli):
    out = tmp_path / "sweep"
    status, _, stderr = run_cli(["compare", "--norms", "bn,gn(grups=4)", *SMALL, "--out", str(out)])
    assert status == 2
    assert "unknown option(s) grups" in stderr and "it accepts: groups, eps, affine" in stderr
    assert not out.exists()
