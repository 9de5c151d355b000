"""Registering a kind: its entry is the one place a kind's facts live, and every tool reads it.

The throwaway kind below is normalization by one group over every channel
(torch's ``GroupNorm(1, C)``), registered with a bench target of its own (a
baseline, a target and a variant, which live beside the bench, not in the
registry); `normlab norms`, `compare`, `report` and `bench` must take it with
no other change. The oracles are torch's modules and the built modules' own
buffers.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

import normlab as nl
from normlab import bench, bench_targets, registry
from normlab.experiment import plan_runs
from normlab.lab import compare
from normlab.models import build_model
from spec import CANONICAL_KINDS

THROWAWAY = "one-group"


def _one_group(
    num_features: int, *, eps: float = 1e-5, device: Any = None, dtype: Any = None
) -> nn.Module:
    return nn.GroupNorm(1, num_features, eps=eps, device=device, dtype=dtype)


def _one_group_baseline(ndim: int, channels: int, options: dict) -> bench_targets.Baseline:
    return bench_targets.Baseline("GroupNorm(1, C)", partial(nn.GroupNorm, 1, channels))


ONE_GROUP_TARGET = bench_targets.BenchTarget(
    _one_group_baseline,
    speed_target=1.25,
    variants=(bench_targets.KindVariant("loose", {"eps": 1e-3}, speed_target=1.75),),
)


@pytest.fixture
def throwaway_kind():
    """A kind registered for one test with its bench target, then removed."""
    kind = registry.register_kind(
        registry.NormKind(
            THROWAWAY,
            _one_group,
            "one group over every channel (a kind registered by the tests)",
            aliases=("onegroup-test",),
        )
    )
    bench_targets.register_bench_target("onegroup-test", ONE_GROUP_TARGET)
    yield kind
    if bench_targets.bench_target(THROWAWAY) is not None:
        bench_targets.unregister_bench_target(THROWAWAY)
    registry.unregister_kind(THROWAWAY)


def test_a_registered_kind_is_built_by_name_and_alias_and_then_forgotten(throwaway_kind):
    assert nl.norm_kinds()[-1] == THROWAWAY
    module = nl.make_norm("OneGroup_Test", 6, eps=1e-3)
    assert type(module) is nn.GroupNorm and (module.num_groups, module.eps) == (1, 1e-3)
    with pytest.raises(TypeError, match="eps"):
        nl.make_norm(THROWAWAY, 6, groups=2)
    registry.unregister_kind(THROWAWAY)
    with pytest.raises(ValueError, match="unknown normalization kind"):
        nl.make_norm(THROWAWAY, 6)
    assert nl.norm_kinds() == list(CANONICAL_KINDS)
    registry.register_kind(throwaway_kind)  # for the fixture's teardown


@pytest.mark.parametrize("name", ["bn", "Batch", "layer_norm"])
def test_a_name_or_alias_already_taken_is_refused_and_changes_nothing(name):
    with pytest.raises(ValueError, match="already name"):
        registry.register_kind(registry.NormKind("fresh", _one_group, "x", aliases=(name,)))
    assert nl.norm_kinds() == list(CANONICAL_KINDS)
    with pytest.raises(ValueError, match="unknown"):
        registry.get_kind("fresh")


def test_an_entry_needs_known_statistics_and_a_bench_target_its_baseline_and_target():
    with pytest.raises(ValueError, match="running_stats"):
        registry.NormKind("x", _one_group, "x", running_stats="per-sample")
    with pytest.raises(TypeError, match="speed_target"):
        bench_targets.BenchTarget(_one_group_baseline)
    with pytest.raises(ValueError, match="positive ratio"):
        bench_targets.BenchTarget(_one_group_baseline, speed_target=0.0)


def test_a_bench_target_is_for_a_registered_kind_and_only_once(throwaway_kind):
    with pytest.raises(ValueError, match="unknown normalization kind"):
        bench_targets.register_bench_target("no-such-kind", ONE_GROUP_TARGET)
    with pytest.raises(ValueError, match="already has a bench target"):
        bench_targets.register_bench_target(THROWAWAY, ONE_GROUP_TARGET)
    assert bench_targets.unregister_bench_target(THROWAWAY) is ONE_GROUP_TARGET
    assert bench_targets.bench_target("onegroup-test") is None
    assert THROWAWAY not in [v.label for v in bench.default_variants()]


def test_norms_table_has_a_row_for_the_registered_kind(run_cli, throwaway_kind):
    status, out, err = run_cli(["norms", "--shape", "4,6,3"])
    assert status == 0, err
    (row,) = [line for line in out.splitlines() if line.split()[:1] == [THROWAWAY]]
    assert "onegroup-test" in row and "GroupNorm" in row


def test_compare_and_report_take_the_registered_kind(run_cli, throwaway_kind, tmp_path):
    out = tmp_path / "sweep"
    result = compare(norms=["onegroup-test", THROWAWAY, "bn"], batch_sizes=[64], seeds=1,
                     epochs=1, hidden=[8], jobs=1, out=out, progress=False)  # fmt: skip
    assert result.complete and result.failed == []
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["config"]["norm"] for r in records] == [THROWAWAY, "bn"]
    assert all(r["status"] == "finished" for r in records)
    (out / "report.html").unlink()
    status, _, err = run_cli(["report", str(out)])
    assert status == 0, err
    assert THROWAWAY in (out / "report.html").read_text()


def test_bench_times_the_registered_kind_and_its_variant_against_its_baseline(
    run_cli, throwaway_kind, tmp_path, monkeypatch
):
    monkeypatch.setattr(bench, "SHAPES", {"mlp": (bench.Shape("mlp", (8, 6)),)})
    labels = [v.label for v in bench.default_variants()]
    assert labels[-2:] == [THROWAWAY, f"{THROWAWAY} (loose)"]
    path = tmp_path / "bench.json"
    argv = ["bench", "--kinds", f"{THROWAWAY},onegroup-test:loose", "--shapes", "mlp"]
    status, out, err = run_cli([*argv, "--threads", "1", "--min-run-time", "0.001"])
    assert status == 0, err
    status, out, err = run_cli([*argv, "--min-run-time", "0.001", "--json", str(path)])
    assert status == 0, err
    data = json.loads(path.read_text())
    assert {row["baseline"] for row in data["rows"]} == {"GroupNorm(1, C)"}
    assert all(row["ratio"] > 0 for row in data["rows"])
    targets = {entry["kind"]: entry["target"] for entry in data["summary"]}
    assert targets == {THROWAWAY: 1.25, f"{THROWAWAY} (loose)": 1.75}
    assert "≤ 1.25" in out and "≤ 1.75" in out


def test_bench_refuses_a_kind_without_a_baseline_or_an_unknown_variant(throwaway_kind):
    registry.unregister_kind(THROWAWAY)
    registry.register_kind(registry.NormKind(THROWAWAY, _one_group, "no baseline"))
    assert THROWAWAY not in [v.label for v in bench.default_variants()]
    with pytest.raises(ValueError, match="declares no benchmark baseline"):
        bench.parse_kinds(THROWAWAY)
    with pytest.raises(ValueError, match="bn:keras"):
        bench.parse_kinds("gn:loose")


BUFFERS_SHAPE = {"channel": (6,), "scalar": (1,), None: None}


@pytest.mark.parametrize("kind", CANONICAL_KINDS)
def test_each_kinds_declared_running_statistics_are_the_buffers_its_module_keeps(kind):
    module = nl.make_norm(kind, 6)
    running_mean = getattr(module, "running_mean", None)
    shape = None if running_mean is None else tuple(running_mean.shape)
    assert shape == BUFFERS_SHAPE[registry.get_kind(kind).running_stats]


@pytest.mark.parametrize("kind", [k for k in CANONICAL_KINDS if k != "none"])
def test_every_built_in_kind_but_none_has_a_baseline_and_a_target(kind):
    target = bench_targets.bench_target(kind)
    assert target is not None and target.speed_target >= 1.0
    assert bench.speed_targets()[kind] == target.speed_target


def test_the_registry_holds_only_facts_about_kinds():
    """Baselines and speed targets are the bench's: no registry entry carries them."""
    fields = {f.name for f in dataclasses.fields(registry.NormKind)}
    assert not fields & {"baseline", "speed_target", "variants"}
    assert bench_targets.bench_target("none") is None


class _Tagged(nn.Module):
    """A norm factory's module: the identity, remembering its channel count."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize(
    ("model", "hidden", "channels"),
    [("mlp", (5, 3), [5, 3]), ("cnn", (4, 2), [4, 2]), ("rnn", (5, 3), [24, 5])],
)
def test_build_model_takes_a_norm_factory_as_well_as_a_kind_name(model, hidden, channels):
    """A callable builds every norm, with the channel counts the kind name gets."""
    made = []

    def factory(num_channels: int) -> nn.Module:
        made.append(_Tagged(num_channels))
        return made[-1]

    net = build_model(model, (3, 8, 8), 10, norm=factory, hidden=hidden)
    assert [m.channels for m in made] == channels
    assert [m for m in net.modules() if isinstance(m, _Tagged)] == made
    by_name = build_model(model, (3, 8, 8), 10, norm="bn", hidden=hidden)
    assert [m.num_features for m in by_name.modules() if isinstance(m, nl.BatchNorm)] == channels
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_build_model_refuses_a_norm_that_is_neither_a_name_nor_callable():
    with pytest.raises(TypeError, match=r"kind's name .* or a callable"):
        build_model("mlp", (1, 4, 4), 10, norm=3)


def test_placement_is_checked_once_with_one_message_for_models_and_sweeps():
    with pytest.raises(ValueError) as from_model:
        build_model("mlp", (1, 4, 4), 10, placement="middle")
    with pytest.raises(ValueError) as from_plan:
        plan_runs(norms=["bn"], batch_sizes=[8], seeds=1, placement="middle")
    assert str(from_model.value) == str(from_plan.value)
    assert "'before' or 'after'" in str(from_plan.value)
