"""The claims study's evidence: its records looked up through the plan, grouped as each
declared test's arms ask, and whether each experiment trained its models; then each test
evaluated by the one claims engine (normlab.report.evaluation).

The study pairs its runs by seed (runs of one seed share initialization and data order
across norms), Holm-adjusts its primary tests only (:func:`adjust`), and judges no claim
whose experiment did not train its best configuration to the experiment's adequacy
threshold: such a claim is *not tested (undertrained)*, whatever its numbers, and leaves
the Holm family.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from normlab.experiment.config import RunConfig
from normlab.report.evaluation import Adequacy, Finding, Group, evaluate
from normlab.study import measures as m
from normlab.study.cells import Runs
from normlab.study.plan import FIT_THRESHOLD, THRESHOLDS
from normlab.study.sections import DeclaredSection, Section, StudyTest

FULL_TRAIN = 60000
"""MNIST's training images: the training-set size of a run without a subset."""


def group(
    label: str, weight: float, records: Sequence[Mapping[str, Any]], measure: m.Measure
) -> Group:
    """The group of ``records``' values of ``measure`` (runs without a value are left out),
    each with its run's seed."""
    pairs = [(measure(record), record.get("config", {}).get("seed")) for record in records]
    kept = [(v, seed) for v, seed in pairs if v is not None and math.isfinite(v)]
    diverged = sum(record.get("status") == "diverged" for record in records)
    seeds = tuple(seed for _, seed in kept)
    return Group(
        label,
        weight,
        tuple(v for v, _ in kept),
        len(records),
        diverged,
        seeds if all(isinstance(seed, int) for seed in seeds) else (),
        sum(m.collapsed(record) for record in records),
    )


def adequacy(runs: Runs, experiment: str, threshold: float, measure: m.Measure) -> Adequacy:
    """The best configuration of ``experiment`` (its runs grouped by everything but the
    seed) by mean ``measure``, against ``threshold``."""
    configs = runs.configs(experiment)
    facts = {
        "name": experiment,
        "models": sorted({c.model for c in configs}),
        "train_size": sorted({c.train_subset or FULL_TRAIN for c in configs}),
        "epochs": sorted({c.epochs for c in configs}),
        "seeds": len({c.seed for c in configs}),
        "batch_sizes": sorted({c.batch_size for c in configs}),
    }
    by_config: dict[str, list[float]] = {}
    labels: dict[str, str] = {}
    for config in configs:
        record = runs.by_id.get(config.run_id)
        value = measure(record) if record is not None else None
        if value is None or not math.isfinite(value):
            continue
        key = _without_seed(config)
        by_config.setdefault(key, []).append(value)
        labels[key] = _config_label(config)
    if not by_config:
        return Adequacy(threshold, None, facts=facts)
    key = max(by_config, key=lambda k: statistics.fmean(by_config[k]))
    return Adequacy(threshold, statistics.fmean(by_config[key]), labels[key], facts)


def _without_seed(config: RunConfig) -> str:
    return replace(config, seed=0).run_id


def _config_label(config: RunConfig) -> str:
    options = ", ".join(f"{k} {v}" for k, v in sorted(config.model_options.items()))
    optimizer = f"{config.optimizer} lr {config.effective_lr:g}"
    return (
        f"{config.model} ({options}), {config.norm_label}, batch {config.batch_size}, {optimizer}"
    )


def trained(runs: Runs, experiment: str, fit: bool = False) -> Adequacy:
    """Whether ``experiment``'s best configuration reached its model's validation threshold
    or, with ``fit``, fit its training set (FIT_THRESHOLD training accuracy)."""
    if fit:
        return adequacy(runs, experiment, FIT_THRESHOLD, m.train_acc)
    configs = runs.configs(experiment)
    model = configs[0].model if configs else "mlp"
    return adequacy(runs, experiment, THRESHOLDS.get(model, 0.0), m.val_acc)


def evaluate_test(declared: StudyTest, runs: Runs) -> Finding:
    """``declared``'s test on its arms' records (not yet Holm-adjusted)."""
    test = declared.test
    gate = trained(runs, declared.trained_on, declared.fit) if declared.trained_on else None
    if not test.arms:
        return evaluate(test, (), gate)
    measure = test.value
    if measure is None:
        raise ValueError(f"the study's test {test.id!r} has arms but no value to compare.")
    groups = [group(arm.label, arm.weight, runs.select(arm.where), measure) for arm in test.arms]
    return evaluate(test, groups, gate)


def evaluate_section(declared: DeclaredSection, runs: Runs) -> Section:
    """``declared`` with its tests evaluated on ``runs``."""
    tests = tuple(evaluate_test(test, runs) for test in declared.tests)
    return Section(declared.key, declared.title, tests, declared.figure, declared.tables)
