"""The claims study: its plan, its statistics on records with planted effects, its report,
and (slow) the whole command on synthetic MNIST files."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import statistics

import pytest

from normlab.experiment.evaluations import BATCH_SIZES, SHIFTS
from normlab.report.claims import Claim, ClaimTest
from normlab.report.evaluation import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    TOO_FEW,
    UNDERTRAINED,
    Adequacy,
    Finding,
    Group,
    adjust,
    evaluate,
)
from normlab.study import BUDGETS, plan
from normlab.study.claims import sections
from normlab.study.findings import Runs
from normlab.study.plan import all_runs
from normlab.study.report import format_estimate, render, write_json
from normlab.study.run import adjust_sections
from report_fixtures import CORRUPTIONS, corrupt

QUICK = BUDGETS["quick"]
FULL = BUDGETS["full"]
SEEDED = dataclasses.replace(QUICK, seeds=5, replication_seeds=10)
"""Enough seeds that planted effects survive Holm's adjustment."""


def test_every_experiment_is_planned_with_distinct_runs_on_mnist():
    experiments = plan(FULL)
    assert list(experiments) == [
        "replication",
        "batch",
        "lr",
        "depth",
        "init",
        "dropout",
        "width",
        "ics",
        "group-norm",
        "after-training",
    ]
    for name, runs in experiments.items():
        assert runs, name
        assert len({run.run_id for run in runs}) == len(runs), name
        assert all(run.dataset == "mnist" for run in runs)
        full_data = name != "dropout"
        assert all((run.train_subset is None) == full_data for run in runs), name


def test_the_replication_is_the_tutorials_experiment_with_ten_seeds_per_norm():
    runs = plan(FULL)["replication"]
    assert {run.norm for run in runs} == {"none", "bn", "bn-scalar", "ln"}
    for run in runs:
        assert (run.model, run.model_options, run.placement) == (
            "mlp",
            {"hidden": [128, 64]},
            "before",
        )
        assert (run.optimizer, run.lr, run.batch_size, run.epochs) == ("adam", 1e-3, 32, 5)
        assert run.train_subset is None and not run.diagnostics
    assert all(len([r for r in runs if r.norm == n]) == 10 for n in ("none", "bn", "ln"))


def test_the_after_training_runs_are_the_tutorials_mlp_evaluated_after_training():
    runs = plan(FULL)["after-training"]
    replication = {r.run_id: r for r in plan(FULL)["replication"]}
    assert {run.norm for run in runs} == {"none", "bn", "bn-scalar", "ln"}
    for run in runs:
        assert run.evaluations and run.seed < FULL.seeds
        as_replicated = dataclasses.replace(run, evaluations=False)
        assert as_replicated.run_id in replication  # the same training, evaluated after it


def test_the_batch_experiment_shares_the_replications_runs_and_scales_adams_rate_by_sqrt():
    experiments = plan(FULL)
    replication = {run.run_id for run in experiments["replication"]}
    for run in experiments["batch"]:
        assert run.lr == pytest.approx(1e-3 * math.sqrt(run.batch_size / 32), rel=1e-5)
        if run.batch_size == 32 and run.norm != "brn":
            assert run.run_id in replication


def test_the_learning_rate_grid_spans_three_decades_about_sqrt_ten_apart():
    lrs = sorted({run.lr for run in plan(FULL)["lr"]})
    assert lrs[0] <= 0.003 and lrs[-1] >= 3.0
    assert all(2.5 < b / a < 3.7 for a, b in itertools.pairwise(lrs))
    assert {run.optimizer for run in plan(FULL)["lr"]} == {"sgd"}


def test_depth_has_a_he_initialized_baseline_and_group_norm_has_eight_groups():
    experiments = plan(FULL)
    he = [r for r in experiments["depth"] if r.model_options.get("init") == "he"]
    assert {r.norm for r in he} == {"none"}
    assert {len(r.model_options["hidden"]) for r in he} == set(FULL.depths)
    gn = [r for r in experiments["group-norm"] if r.norm == "gn"]
    assert gn and all(r.norm_options == {"groups": 8} for r in gn)
    assert 2 in {r.batch_size for r in gn}


# --- the verdict rules, on planted data ------------------------------------------------


def _check(values_a, values_b, side="greater", margin=None, seeds=False, primary=True) -> Finding:
    test = ClaimTest(
        id="k",
        claim=Claim("k", "t", "s", quote="q", margin=margin),
        hypothesis="h",
        experiment="e",
        measure="m",
        side=side,
        primary=primary,
    )
    groups = (
        Group("a", 1, tuple(values_a), len(values_a), seeds=tuple(range(len(values_a)))
              if seeds else ()),
        Group("b", -1, tuple(values_b), len(values_b), seeds=tuple(range(len(values_b)))
              if seeds else ()),
    )  # fmt: skip
    return evaluate(test, groups)


def _secondary(found: Finding) -> Finding:
    return dataclasses.replace(found, test=dataclasses.replace(found.test, primary=False))


def test_verdicts_read_holm_adjusted_p_values():
    clear = _check([10.0, 10.1, 9.9, 10.05], [0.0, 0.1, -0.1, 0.02])
    borderline = _check([1.0, 1.5, 0.5, 1.2], [0.0, 0.6, -0.2, 0.5])  # p between 0.01 and 0.05
    assert borderline.unadjusted == SUPPORTED and 0.01 < borderline.p < 0.05
    alone = adjust([borderline])[0]
    assert alone.verdict == SUPPORTED and alone.p_adjusted == pytest.approx(borderline.p)
    crowded = adjust([clear, borderline, _check([0.0, 1.0], [0.5, 0.4])])
    assert crowded[0].verdict == SUPPORTED
    assert crowded[1].verdict == INCONCLUSIVE, "three tests: Holm must not reject p > 0.05 / 2"
    reverse = adjust([_check([0.0, 0.1, -0.1], [5.0, 5.1, 4.9])])[0]
    assert reverse.verdict == CONTRADICTED


def test_holm_counts_the_primary_tests_only():
    clear = _check([10.0, 10.1, 9.9, 10.05], [0.0, 0.1, -0.1, 0.02])
    borderline = _check([1.0, 1.5, 0.5, 1.2], [0.0, 0.6, -0.2, 0.5])
    secondary = _secondary(borderline)
    many_secondaries = [secondary] * 5
    tested = adjust([clear, borderline, *many_secondaries])
    # In a family of two, Holm leaves the larger p as it is; counting the five secondary
    # tests would multiply it by six.
    assert tested[1].p_adjusted == pytest.approx(borderline.p)
    assert tested[1].verdict == SUPPORTED
    assert all(t.p_adjusted is None and t.verdict == SUPPORTED for t in tested[2:])


def test_an_equivalence_is_contradicted_only_when_the_interval_lies_outside_the_margin():
    # Excludes 0 but overlaps the margin: inconclusive, not contradicted.
    near = _check([0.8, 0.9, 1.0, 1.1, 1.2], [0.0, 0.05, -0.05, 0.02, -0.02], "within", 1.0)
    assert near.low > 0 and near.low < 1.0 < near.high
    assert adjust([near])[0].verdict == INCONCLUSIVE
    same = adjust([_check([1.0, 1.1, 0.9, 1.05, 0.95], [1.0, 0.9, 1.1, 1.0, 1.02], "within", 1.0)])
    assert same[0].verdict == SUPPORTED
    far = adjust([_check([5.0, 5.1, 4.9], [1.0, 0.9, 1.1], "within", 1.0)])
    assert far[0].verdict == CONTRADICTED and far[0].low > 1.0
    few = evaluate(same[0].test, (same[0].groups[0], Group("b", -1, (1.0,), 1)))
    assert few.low is None and few.p is None and few.verdict == TOO_FEW
    assert format_estimate(few) == "—", "the study shows no estimate without its interval"
    assert adjust([few])[0].verdict == TOO_FEW


def test_the_tost_p_value_rejects_exactly_when_the_90_percent_interval_is_within_the_margin():
    from normlab.report.stats import contrast, equivalence_p_value

    rng = random.Random(3)
    for _ in range(200):
        a = [rng.gauss(rng.uniform(-1, 1), rng.uniform(0.1, 1)) for _ in range(rng.randint(2, 8))]
        b = [rng.gauss(0, rng.uniform(0.1, 1)) for _ in range(rng.randint(2, 8))]
        margin = rng.uniform(0.2, 2.0)
        ninety = contrast([a, b], [1, -1], level=0.90)
        inside = -margin < ninety.low and ninety.high < margin
        assert (equivalence_p_value(contrast([a, b], [1, -1]), margin) < 0.05) == inside


def test_runs_that_share_seeds_are_paired_and_a_seed_effect_cancels():
    rng = random.Random(0)
    seed_effect = [rng.gauss(0, 3.0) for _ in range(6)]  # init and data order, shared
    a = [90 + s + 0.5 + rng.gauss(0, 0.05) for s in seed_effect]
    b = [90 + s + rng.gauss(0, 0.05) for s in seed_effect]
    paired = _check(a, b, seeds=True)
    unpaired = _check(a, b, seeds=False)
    assert paired.paired and not unpaired.paired
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert paired.high - paired.low < (unpaired.high - unpaired.low) / 10
    assert adjust([paired])[0].verdict == SUPPORTED
    assert adjust([unpaired])[0].verdict == INCONCLUSIVE
    # The paired interval is the one-sample t interval of the per-seed differences.
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=statistics.fmean(diffs),
                                 scale=stats.sem(diffs))  # fmt: skip
    assert (paired.low, paired.high) == pytest.approx((low, high))


def test_the_minimum_detectable_effect_is_the_80_percent_power_effect_of_the_test():
    rng = random.Random(1)
    a = [rng.gauss(0, 1) for _ in range(400)]
    b = [rng.gauss(0, 1) for _ in range(400)]
    test = _check(a, b)
    se = math.sqrt(statistics.variance(a) / 400 + statistics.variance(b) / 400)
    assert test.mde == pytest.approx((1.959964 + 0.841621) * se, rel=0.01)  # normal quantiles
    inconclusive = _check([1.0, 1.4, 0.6], [0.9, 1.3, 0.5])
    assert inconclusive.mde > abs(inconclusive.estimate)


def test_an_undertrained_experiment_gets_no_verdict_and_leaves_the_holm_family():
    clear = _check([10.0, 10.1, 9.9, 10.05], [0.0, 0.1, -0.1, 0.02])
    borderline = _check([1.0, 1.5, 0.5, 1.2], [0.0, 0.6, -0.2, 0.5])
    short = evaluate(clear.test, clear.groups, Adequacy(97.5, 91.0, "mlp"))
    assert short.unadjusted == UNDERTRAINED and short.estimate is not None
    tested = adjust([short, borderline])
    assert tested[0].verdict == UNDERTRAINED and tested[0].p_adjusted is None
    assert tested[1].p_adjusted == pytest.approx(borderline.p), "a family of one"
    enough = evaluate(clear.test, clear.groups, Adequacy(97.5, 97.6, "mlp"))
    assert adjust([enough])[0].verdict == SUPPORTED


def test_a_run_ending_near_chance_counts_as_diverged_beside_nan():
    from normlab.study.measures import collapsed

    config = plan(QUICK)["lr"][0]
    assert collapsed(_record(config, 11.3))
    assert not collapsed(_record(config, 60.0))
    nan = {**_record(config, 11.3), "status": "diverged"}
    assert not collapsed(nan), "a NaN run is counted once, as NaN"
    runs = Runs({"lr": [config]}, [_record(config, 11.3)])
    from normlab.study.findings import group
    from normlab.study.measures import val_acc
    from normlab.study.report import describe

    g = group("x", 1, runs.get("lr"), val_acc)
    assert g.collapsed == 1 and "1 diverged: 1 at chance" in describe(g, "pp")


def _record(config, value: float, gap: float = 1.0, seconds: float = 1e-3) -> dict:
    """A synthetic results record for ``config``, its accuracies set to ``value`` percent."""
    epochs = config.epochs
    history = [
        {
            "epoch": e,
            "val_acc": max(value - 5 * (epochs - e), 10.0) / 100,  # an accuracy: in [0, 1]
            "train_acc": 0.9,
            "train_loss": 0.3,
            "val_loss": 0.3,
            "seconds": 1.0,
        }
        for e in range(1, epochs + 1)
    ]
    probes = [
        {
            "epoch": e,
            "step": 10 * e,
            "loss": 1.0,
            "grad_norms": [1.0, 0.5, 0.25],
            "grad_ratio": 4.0,
            "activation_mean": [0, 0, 0],
            "activation_std": [1, 1, 1],
            "ics": [0.0, value / 1000, value / 1000],
            "ics_cosine": [1.0, 0.9, 0.9],
            "landscape": {
                "step_sizes": [0.1, 0.2],
                "losses": [0.9, 0.8],
                "gradient_changes": [0.1, 0.2],
                "loss_variation": value / 100,
                "gradient_predictiveness": 0.2,
                "beta_smoothness": 1.0,
            },
        }
        for e in range(epochs + 1)
    ]
    return {
        "run_id": config.run_id,
        "config": config.to_dict(),
        "status": "finished",
        "history": history,
        "final": {"val_acc": value / 100, "train_acc": min(value + gap, 100.0) / 100, "steps": 10},
        "diagnostics": {
            "layers": ["1", "4", "7"],
            "probe_size": 256,
            "step_seconds": [seconds] * epochs,
            "probes": probes,
        },
    }


def _planted(experiments, effect, base=98.6):
    """A record for every planned run: ``base`` + ``effect(run)`` + noise, in percent (above
    every experiment's adequacy threshold at the default base)."""
    rng = random.Random(0)
    return [_record(run, base + effect(run) + rng.gauss(0, 0.2)) for run in all_runs(experiments)]


def _found(experiments, records, budget=SEEDED):
    return {
        t.test.id: t
        for s in adjust_sections(sections(Runs(experiments, records), budget))
        for t in s.tests
    }


def test_a_planted_batch_norm_advantage_is_supported_and_its_absence_is_not():
    experiments = plan(SEEDED)
    found = _found(experiments, _planted(experiments, lambda run: 1.0 if run.norm == "bn" else 0))
    assert found["bn-beats-none"].verdict == SUPPORTED and found["bn-beats-none"].test.primary
    assert found["bn-beats-none"].estimate == pytest.approx(1.0, abs=0.2)
    assert found["bn-beats-none"].paired, "runs of one seed share init and data order"
    assert found["ln-beats-none"].verdict == INCONCLUSIVE
    assert found["ln-beats-none"].mde is not None
    assert found["channel-generalizes"].verdict == SUPPORTED
    assert found["scalar-stable"].verdict == CONTRADICTED
    assert found["ln-sequences"].verdict == "not run" and found["ln-sequences"].reason
    # The planted ICS grows with accuracy, and so does bn's relative ICS.
    assert found["bn-reduces-ics"].estimate == pytest.approx(math.log10(99.6 / 98.6), abs=0.01)
    nothing = _found(experiments, _planted(experiments, lambda run: 0.0))
    assert not [
        t.test.id
        for t in nothing.values()
        if t.test.primary and t.verdict in (SUPPORTED, CONTRADICTED) and t.test.side != "within"
    ]


def _with_evaluations(record: dict, drop: float, sensitivity: float) -> dict:
    """``record`` with an after-training block: every shift costs ``drop`` pp, and batch
    statistics at every other batch size cost ``sensitivity`` pp."""
    clean = record["final"]["val_acc"]
    record["evaluations"] = {
        "shifted_val_acc": {name: clean - drop / 100 for name in SHIFTS},
        "batch1_val_acc": clean,
        "batch1_samples": 2000,
        "batch1_train_mode": None,
        "batch_stats_val_acc": {
            str(size): clean - (0 if size == 32 else sensitivity / 100) for size in BATCH_SIZES
        },
    }
    return record


def test_planted_after_training_effects_are_found_by_the_tests_of_their_claims():
    experiments = plan(SEEDED)
    drops = {"none": 5.0, "bn": 8.0, "bn-scalar": 8.0, "ln": 5.0}
    sensitivities = {"none": 0.0, "bn": 1.0, "bn-scalar": 4.0, "ln": 0.0}
    rng = random.Random(1)
    records = [
        _with_evaluations(
            record,
            drops[record["config"]["norm"]] + rng.gauss(0, 0.2),
            sensitivities[record["config"]["norm"]] + rng.gauss(0, 0.2),
        )
        if record["config"].get("evaluations")
        else record
        for record in _planted(experiments, lambda run: 0.0)
    ]
    found = _found(experiments, records)
    assert found["bn-input-shift"].verdict == SUPPORTED
    assert found["bn-input-shift"].estimate == pytest.approx(3.0, abs=0.3)
    assert found["channel-batch-fluctuation"].verdict == SUPPORTED
    assert found["channel-batch-fluctuation"].estimate == pytest.approx(3.0, abs=0.3)
    assert found["ln-online"].verdict == INCONCLUSIVE  # nothing planted at batch 1
    assert all(found[k].paired for k in ("bn-input-shift", "ln-online"))


def test_every_claim_has_one_primary_test():
    experiments = plan(SEEDED)
    tested = adjust_sections(
        sections(Runs(experiments, _planted(experiments, lambda run: 0.0)), SEEDED)
    )
    for section in tested:
        if section.key in ("replication", "not-yet-tested", "regularizes", "bn-deep"):
            continue
        assert sum(t.test.primary for t in section.tests) == 1, section.key


def test_an_experiment_short_of_its_threshold_is_not_tested_rather_than_judged():
    experiments = plan(SEEDED)
    short = _found(
        experiments, _planted(experiments, lambda run: 3.0 if run.norm == "bn" else 0, base=90.0)
    )
    assert short["bn-beats-none"].verdict == UNDERTRAINED
    assert short["bn-beats-none"].adequacy.best < short["bn-beats-none"].adequacy.threshold
    assert all(t.p_adjusted is None for t in short.values() if t.verdict == UNDERTRAINED)


def test_the_report_has_every_claim_its_numbers_and_the_1s_2s_correction(tmp_path):
    from normlab.study import figures

    experiments = plan(QUICK)
    records = _planted(experiments, lambda run: 2.0 if run.norm == "bn" else 0.0)
    runs = Runs(experiments, records)
    tested = adjust_sections(sections(runs, QUICK))
    figures.write_all(runs, QUICK, tmp_path)
    text = render(tested, QUICK, "normlab study claims ...", runs, len(records) + 3)
    assert "not the full study" in text and "3 planned runs have not finished yet" in text
    assert "Ioffe & Szegedy 2015" in text and "per-channel '2s' variant" in text
    assert "97.38" in text and "97.76" in text, "the tutorial's numbers beside the replication"
    for section in tested:
        if section.figure:
            assert f"]({section.figure})" in text
            assert (tmp_path / section.figure).stat().st_size > 1000
        for test in section.tests:
            assert f"**{test.test.id}.**" in text
    assert text.count("Holm-adjusted p =") == sum(
        t.p_adjusted is not None for s in tested for t in s.tests
    )


def test_the_report_is_regenerated_identically_from_the_committed_records(tmp_path):
    import gzip

    from normlab.study.run import RECORDS_FILE, render_from_records, write_committed

    experiments = plan(QUICK)
    records = _planted(experiments, lambda run: 2.0 if run.norm == "bn" else 0.0)
    for record in records:
        record["data"] = {"source": "/home/someone/data/mnist", "train_size": 60000}
    write_committed(tmp_path / "a", records)
    raw = gzip.decompress((tmp_path / "a" / RECORDS_FILE).read_bytes()).decode()
    assert "/home/someone" not in raw, "no path of the machine that ran them"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / RECORDS_FILE).write_bytes((tmp_path / "a" / RECORDS_FILE).read_bytes())
    for folder in ("a", "b"):
        render_from_records(tmp_path / folder, QUICK, "normlab study claims --report-only")
    for name in ("claims.md", "claims.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    document = json.loads((tmp_path / "a" / "claims.json").read_text())
    test = next(t for t in document["tests"] if t["id"] == "bn-beats-none")
    assert test["primary"] and test["verdict"] in (SUPPORTED, INCONCLUSIVE)
    for field in ("estimate", "interval", "p", "holm_p", "minimum_detectable_effect", "source"):
        assert field in test
    facts = test["experiment"]
    assert facts["threshold"] == 97.5 and facts["seeds"] == QUICK.replication_seeds
    assert facts["trained"] is True
    assert facts["best_mean_val_acc"] == pytest.approx(100.6, abs=0.5)


def _claims_json(tmp_path) -> dict:
    """The quick study's claims.json on planted records with no effect."""
    experiments = plan(QUICK)
    records = _planted(experiments, lambda run: 0.0)
    tested = adjust_sections(sections(Runs(experiments, records), QUICK))
    write_json(tmp_path / "claims.json", tested, QUICK, records)
    return json.loads((tmp_path / "claims.json").read_text(encoding="utf-8"))


SHARED_WITH_COMPARE = (
    "ln-beats-none",
    "bn-beats-none",
    "bn-small-batch",
    "ln-batch-independent",
    "scalar-stable",
    "channel-generalizes",
    "bn-regularizes",
)
"""The claims that both the claims study and normlab compare's report test."""


def test_the_compare_report_states_each_claim_as_the_study_does(tmp_path):
    import html

    from normlab.report import render_report
    from report_fixtures import records_from_values, write_results

    values = {
        (norm, size): [0.95, 0.951, 0.952]
        for norm in ("none", "bn", "bn-scalar", "ln")
        for size in (8, 64)
    }
    folder = write_results(tmp_path / "compare", records_from_values(values))
    page = html.unescape(render_report(folder).html.read_text(encoding="utf-8"))
    shared = [t for t in _claims_json(tmp_path)["tests"] if t["id"] in SHARED_WITH_COMPARE]
    assert {t["id"] for t in shared} == set(SHARED_WITH_COMPARE)
    for test in shared:
        assert test["claim"] in page, test["id"]
        assert test["source"] in page, test["id"]
        if test["margin"] is not None:
            assert f"within ±{test['margin']:g} pp" in page


def test_each_primary_test_states_its_own_claim(tmp_path):
    primaries = [t for t in _claims_json(tmp_path)["tests"] if t["primary"]]
    statements = [t["claim"] for t in primaries]
    repeated = {s for s in statements if statements.count(s) > 1}
    assert not repeated, f"primary tests of different claims state {repeated}"


EVALUATION = (
    "normlab.report.catalogue",
    "normlab.report.claims",
    "normlab.report.compare_claims",
    "normlab.report.evaluation",
    "normlab.report.stats",
    "normlab.study.cells",
    "normlab.study.claims",
    "normlab.study.findings",
    "normlab.study.mechanism_claims",
    "normlab.study.sections",
    "normlab.study.training_claims",
)
RENDERING = (
    "normlab.report.html",
    "normlab.report.plots",
    "normlab.report.tables",
    "normlab.study.figures",
    "normlab.study.report",
    "normlab.study.tables",
)


def _imports(module: str) -> dict[str, set[str]]:
    """The modules ``module`` imports from, each with the names it takes."""
    import ast
    import importlib.util
    import pathlib

    origin = importlib.util.find_spec(module).origin
    tree = ast.parse(pathlib.Path(origin).read_text(encoding="utf-8"))
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.setdefault(node.module, set()).update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, set())
    return found


@pytest.mark.parametrize("module", EVALUATION)
def test_evaluation_imports_no_rendering(module):
    drawn = {"rich", "matplotlib", *RENDERING}
    for imported in _imports(module):
        assert imported.split(".")[0] not in drawn and imported not in drawn, imported


@pytest.mark.parametrize("module", RENDERING)
def test_rendering_only_reads_evaluated_claims(module):
    """Rendering reads findings and the records; it computes no contrast or verdict."""
    import normlab.report.evaluation as evaluation

    imports = _imports(module)
    assert "normlab.report.stats" not in imports and "normlab.study.findings" not in imports
    assert "normlab.report.compare_claims" not in imports
    for name in imports.get("normlab.report.evaluation", ()):
        assert not callable(getattr(evaluation, name)) or isinstance(
            getattr(evaluation, name), type
        ), f"{module} calls normlab.report.evaluation.{name}"


@pytest.mark.slow
def test_the_study_command_runs_end_to_end_on_mnist_files(tmp_path, run_cli):
    from data_fixtures import mnist_arrays, write_mnist_idx

    write_mnist_idx(tmp_path / "mnist", mnist_arrays(0, 600, 200))
    tiny = dataclasses.replace(
        QUICK,
        name="tiny",
        subset=300,
        batch_sizes=(8, 32),
        lrs=(0.1,),
        depths=(2,),
        widths=(16,),
        init_scales=(1.0,),
        fit_subset=100,
        fit_epochs=1,
        small_batches=(32,),
        ics_depth=2,
    )
    from normlab.study import run_study

    result = run_study(
        str(tmp_path / "mnist"),
        tmp_path / "runs",
        tmp_path / "report",
        budget=tiny,
        jobs=2,
        command="normlab study claims",
    )
    assert result.report is not None and result.finished == result.planned
    text = result.report.read_text()
    assert "bn-beats-none" in text and "Holm" in text
    again = run_study(
        str(tmp_path / "mnist"), tmp_path / "runs", tmp_path / "report", budget=tiny, jobs=1
    )
    assert again.outcome.records == [] and again.outcome.skipped == result.planned


# --- the study's files: records checked, paths checked, the report replaced whole ---------


def _finished_study(out, effect=lambda run: 0.0):
    """``out/results.jsonl`` holding a planted record for every run the quick study plans."""
    from report_fixtures import write_results

    return write_results(out, _planted(plan(QUICK), effect))


@pytest.fixture
def no_work(monkeypatch):
    """Make the study's first piece of work (loading MNIST) fail the test."""
    import normlab.study.run

    def work(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(normlab.study.run, "load_dataset", work)


@pytest.fixture
def no_training(monkeypatch):
    """Let the study render from finished records without MNIST files or model checks."""
    import normlab.study.run

    monkeypatch.setattr(normlab.study.run, "load_dataset", lambda *args: None)
    monkeypatch.setattr(normlab.study.run, "check_runs", lambda *args: None)


@pytest.mark.parametrize("case", ["duplicate", *CORRUPTIONS])
def test_a_record_the_study_cannot_use_is_refused_before_any_work_naming_file_and_line(
    tmp_path, no_work, case
):
    from normlab.study import run_study

    out = _finished_study(tmp_path / "runs")
    lines = (out / "results.jsonl").read_text().splitlines()
    if case == "duplicate":
        lines.append(lines[4])
        where = "lines 5 and " + str(len(lines))
    else:
        lines[4] = json.dumps(corrupt(json.loads(lines[4]), case))
        where = "line 5"
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as caught:
        run_study("mnist", out, tmp_path / "report", budget=QUICK)
    assert f"{out / 'results.jsonl'} {where}" in str(caught.value)
    if case not in ("duplicate", "list-run-id"):  # a record of a run: the fix is to retrain it
        assert "run normlab study claims again" in str(caught.value)
    assert not (tmp_path / "report").exists()


def _report_files(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.mark.slow
def test_a_failure_while_writing_the_report_leaves_the_previous_report_whole(
    tmp_path, no_training, monkeypatch
):
    from normlab.study import figures, run_study

    out, report = tmp_path / "runs", tmp_path / "report"
    _finished_study(out, lambda run: -2.0 if run.norm == "bn" else 0.0)  # accuracies <= 100%
    first = run_study(str(tmp_path), out, report, budget=QUICK, jobs=1)
    assert first.report == report / "claims.md"
    before = _report_files(report)
    assert "claims.md" in before and "landscape.png" in before
    _finished_study(out)  # other numbers, so that every file would change

    def broken(*args, **kwargs):
        raise RuntimeError("the disk filled up")

    monkeypatch.setitem(figures.FIGURES, "learning_rate.png", broken)  # after three are drawn
    with pytest.raises(RuntimeError, match="disk filled"):
        run_study(str(tmp_path), out, report, budget=QUICK, jobs=1)
    after = _report_files(report)
    # The records are kept beside the report after every invocation, before it is drawn.
    assert after.pop("records.jsonl.gz") != before.pop("records.jsonl.gz")
    assert after == before
    assert sorted(p.name for p in report.iterdir() if not p.is_file()) == []


def test_publish_moves_every_file_in_or_none(tmp_path):
    from normlab.report.publish import MANIFEST, publish

    def draw(text, fail=False):
        def write(staging):
            (staging / "a.md").write_text(text)
            if fail:
                raise RuntimeError("drawing failed")
            (staging / "b.png").write_text(text)

        return write

    assert publish(tmp_path, draw("one")) == [tmp_path / "a.md", tmp_path / "b.png"]
    with pytest.raises(RuntimeError, match="drawing failed"):
        publish(tmp_path, draw("two", fail=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "a.md", "b.png"]
    assert (tmp_path / "a.md").read_text() == "one"
    publish(tmp_path, draw("three"))  # files normlab wrote are replaced
    assert (tmp_path / "b.png").read_text() == "three"


@pytest.mark.parametrize("name", ["claims.md", "depth.png"])
def test_a_report_folder_file_normlab_did_not_write_is_refused_before_any_work(
    tmp_path, no_work, name
):
    from normlab.study import run_study

    report = tmp_path / "report"
    report.mkdir()
    (report / name).write_text("my own notes")
    with pytest.raises(ValueError) as caught:
        run_study("mnist", tmp_path / "runs", report, budget=QUICK)
    assert str(report / name) in str(caught.value) and "normlab" in str(caught.value)
    assert (report / name).read_text() == "my own notes"
    assert sorted(p.name for p in report.iterdir()) == [name]


def test_a_missing_data_dir_is_refused_before_any_work(tmp_path, no_work):
    from normlab.study import run_study

    with pytest.raises(ValueError, match=r"does not exist.*MNIST IDX files \(`data_dir`\)"):
        run_study(str(tmp_path / "mnist"), tmp_path / "runs", tmp_path / "report", budget=QUICK)
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", ["", "[]", "{", '{"wall_seconds": "x"}', "\xff"])
def test_an_unreadable_study_json_is_named_with_its_fix_before_any_work(tmp_path, no_work, content):
    from normlab.study import run_study

    out = tmp_path / "runs"
    out.mkdir()
    (out / "study.json").write_text(content, encoding="latin-1")
    with pytest.raises(ValueError) as caught:
        run_study("mnist", out, tmp_path / "report", budget=QUICK)
    message = str(caught.value)
    assert str(out / "study.json") in message and "delete" in message


def test_study_json_is_never_left_half_written(tmp_path, monkeypatch):
    import pathlib

    from normlab.study.run import _wall

    (tmp_path / "study.json").write_text('{"wall_seconds": 5.0}')

    def dies_half_way(self, data, *args, **kwargs):  # a kill in the middle of the write
        with open(self, "wb") as file:
            file.write((data.encode() if isinstance(data, str) else data)[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_text", dies_half_way)
    monkeypatch.setattr(pathlib.Path, "write_bytes", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        _wall(tmp_path, 2.0)
    monkeypatch.undo()
    assert json.loads((tmp_path / "study.json").read_text()) == {"wall_seconds": 5.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.json"]
    assert _wall(tmp_path, 2.0) == 7.0
