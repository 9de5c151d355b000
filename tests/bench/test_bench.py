"""`normlab bench`: its cases compare like with like, its ratios and JSON are right.

No timed assertions: timings are only checked for being positive and for the
ratio being their quotient. The oracles are torch.nn's own modules (which
class each case is timed against, and that it computes the same output as
normlab's layer on the case's tensor) and the benchmark's list of shapes.
"""

from __future__ import annotations

import dataclasses
import json
import statistics

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from normlab import bench
from spec import CANONICAL_KINDS

LABELS = [kind for kind in CANONICAL_KINDS if kind != "none"]
LABELS.insert(LABELS.index("bn") + 1, "bn (keras)")
BATCH_NORM_LIKE = {"bn", "bn (keras)", "bn-scalar", "brn", "switch", "sync-bn", "frozen-bn"}
# The benchmark's shapes, with channels on dim 1.
MLP = {(n, c) for n in (32, 256, 4096) for c in (128, 1024)}
CNN = {
    (size, layout)
    for size in ((32, 64, 56, 56), (256, 256, 14, 14))
    for layout in ("contiguous", "channels_last")
}
# Small stand-ins for SHAPES (C = 64: gn's 32 default groups get two channels each).
TINY_SHAPES = {
    "mlp": (bench.Shape("mlp", (8, 64)), bench.Shape("mlp", (5, 64))),
    "cnn": (bench.Shape("cnn", (4, 64, 3, 3)), bench.Shape("cnn", (4, 64, 3, 3), "channels_last")),
    "seq": (bench.Shape("seq", (2, 64, 5), "tokens"),),
}


def _expected_baseline(label: str, size: tuple[int, ...], channel_dim: int) -> type[nn.Module]:
    """torch's class for ``label`` on input of ``size``: the speed table."""
    ndim = len(size)
    if label in BATCH_NORM_LIKE:
        return nn.BatchNorm2d if ndim == 4 else nn.BatchNorm1d
    if label == "in":
        return nn.InstanceNorm2d if ndim == 4 else nn.InstanceNorm1d
    return {"ln": nn.LayerNorm, "rms": nn.RMSNorm, "gn": nn.GroupNorm}[label]


def _torch_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if type(m).__module__.startswith("torch.nn")]


def test_default_cases_are_every_kind_on_every_shape_of_the_issue():
    """11 variants (every kind but none, plus bn (keras)) x 11 shapes, in the benchmark's sizes."""
    cases = bench.build_cases()
    assert [v.label for v in bench.default_variants()] == LABELS
    assert len(cases) == len(LABELS) * (len(MLP) + len(CNN) + 1)
    for label in LABELS:
        mine = [c for c in cases if c.variant.label == label]
        assert {c.size for c in mine if c.shape.group == "mlp"} == MLP
        assert {(c.size, c.layout) for c in mine if c.shape.group == "cnn"} == CNN
        (seq,) = [c for c in mine if c.shape.group == "seq"]
        if label in ("ln", "rms"):
            assert (seq.size, seq.layout, seq.options) == (
                (32, 512, 768),
                "(N, L, C)",
                {"channel_dim": -1},
            )
        else:
            assert (seq.size, seq.layout) == ((32, 768, 512), "(N, C, L)")
            assert seq.options.get("channel_dim", 1) == 1


@pytest.mark.parametrize("label", LABELS)
def test_each_case_is_timed_against_torchs_module_for_the_same_job(label):
    """Every case's baseline is torch's module for its rank, on the same channels and
    dtype, in the case's mode; `in` on (N, C) is skipped with the reason."""
    for case in [c for c in bench.build_cases() if c.variant.label == label]:
        channel_dim = case.options.get("channel_dim", 1)
        channels = case.size[channel_dim]
        if label == "in" and len(case.size) == 2:
            assert case.skipped is not None and "(N, C)" in case.skipped
            with pytest.raises(ValueError, match="skipped"):
                case.make_baseline(torch.float32)
            continue
        assert case.skipped is None
        ours = case.make_ours(torch.bfloat16)
        baseline = case.make_baseline(torch.bfloat16)
        (native,) = _torch_modules(baseline)
        assert type(native) is _expected_baseline(label, case.size, channel_dim)
        assert all(t.dtype == torch.bfloat16 for t in [*ours.parameters(), *baseline.parameters()])
        if label == "gn":
            assert (native.num_groups, native.num_channels) == (32, channels)
        elif label == "in":
            assert native.affine and native.num_features == channels
        elif label in ("ln", "rms"):
            assert tuple(native.normalized_shape) == (channels,)
        else:
            assert native.num_features == channels == ours.num_features
        if label == "bn (keras)":
            assert (native.eps, native.momentum) == (ours.eps, 0.01) == (1e-3, 0.01)
            assert ours.momentum == pytest.approx(1 - native.momentum)  # Keras' 0.99
        # frozen-bn is batch norm with fixed statistics: torch's layer in eval, affine frozen.
        assert case.baseline_eval_only == (label == "frozen-bn")
        assert all(not p.requires_grad for p in baseline.parameters()) == (label == "frozen-bn")


def test_case_inputs_have_the_case_layout_and_dtype():
    """channels_last cases time an NHWC-strided tensor; the others a contiguous one."""
    case = next(c for c in bench.build_cases([bench.Variant("bn")], ["cnn"]))
    assert case.make_input(torch.float32).is_contiguous()
    last = next(
        c for c in bench.build_cases([bench.Variant("bn")], ["cnn"]) if c.layout != "contiguous"
    )
    x = last.make_input(torch.bfloat16)
    assert x.dtype == torch.bfloat16 and x.shape == last.size
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _set_state(module: nn.Module, channels: int) -> None:
    """The same non-trivial affine and running statistics on any of the modules compared."""
    gen = torch.Generator().manual_seed(channels)
    values = {
        "weight": 1 + 0.5 * torch.randn(channels, generator=gen),
        "bias": 0.5 * torch.randn(channels, generator=gen),
        "running_mean": 0.3 * torch.randn(channels, generator=gen),
        "running_var": 0.5 + torch.rand(channels, generator=gen),
    }
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            key = name.rsplit(".", 1)[-1]
            if key in values:
                tensor.copy_(values[key])


# Kinds that are torch's job under another name; bn-scalar, brn and switch compute
# something else by design. Keras' convention stores the biased running variance, so
# its eval output differs from torch's after a training step.
SAME_TRAINING = ["bn", "bn (keras)", "sync-bn", "frozen-bn", "ln", "rms", "gn", "in"]
SAME_EVAL = [label for label in SAME_TRAINING if label != "bn (keras)"]


@pytest.mark.parametrize("label", SAME_TRAINING)
def test_ours_and_the_baseline_compute_the_same_on_the_case_tensor(label, monkeypatch):
    """On each (small) case tensor, one training step of ours and of torch's module give the
    same output and gradients, and then the same eval output: the ratio is like for like."""
    monkeypatch.setattr(bench, "SHAPES", TINY_SHAPES)
    variant = next(v for v in bench.default_variants() if v.label == label)
    for case in bench.build_cases([variant]):
        if case.skipped:
            continue
        x = case.make_input(torch.float32)
        grad = case.make_input(torch.float32, seed=1)
        ours, baseline = case.make_ours(torch.float32), case.make_baseline(torch.float32)
        outputs, grads = [], []
        for module, training in ((ours, True), (baseline, not case.baseline_eval_only)):
            _set_state(module, case.channels)
            xi = x.clone().requires_grad_()
            out = module.train(training)(xi)
            out.backward(grad)
            outputs.append(out)
            grads.append([xi.grad, *(p.grad for p in module.parameters() if p.requires_grad)])
        assert_close(outputs[0], outputs[1], msg=f"{label} on {case.size} {case.layout}")
        for mine, theirs in zip(*grads, strict=True):
            assert_close(mine, theirs, msg=f"{label} gradient on {case.size} {case.layout}")
        if label in SAME_EVAL:
            with torch.no_grad():
                assert_close(ours.eval()(x), baseline.eval()(x))


def test_run_bench_skips_a_dtype_torch_cannot_run_and_says_why(monkeypatch):
    """A baseline that raises in a dtype gives skipped rows naming it, not a crash."""

    class Unsupported(nn.BatchNorm1d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("\"batch_norm\" not implemented for 'Half'")

    monkeypatch.setattr(bench, "SHAPES", TINY_SHAPES)
    (case, _) = bench.build_cases([bench.Variant("bn")], ["mlp"])
    case = dataclasses.replace(case, baseline_factory=lambda dtype: Unsupported(64))
    result = bench.run_bench([case], [torch.float16], threads=[1], min_run_time=0.001)
    assert [row.job for row in result.rows] == list(bench.JOBS)
    for row in result.rows:
        assert row.ratio is None and row.ours_s is None and row.dtype == "float16"
        assert "torch's BatchNorm1d" in row.skipped and "not implemented" in row.skipped


def _row(
    kind: str, ratio: float, dtype: str = "float32", threads: int = 2, job: str = ""
) -> bench.Row:
    return bench.Row(
        kind,
        {},
        [8, 64],
        "contiguous",
        dtype,
        threads,
        job or bench.TARGET_JOB,
        ratio,
        1.0,
        ratio,
        "BatchNorm1d",
    )


def test_summary_is_the_median_fwd_bwd_ratio_in_float32_per_thread_count():
    """Only train fwd+bwd rows in float32 enter the medians; the one at the all-threads
    count is compared with the speed target."""
    rows = [
        *(_row("bn", r) for r in (1.0, 1.2, 0.9)),
        _row("bn", 9.0, dtype="bfloat16"),
        _row("bn", 9.0, threads=1),
        _row("bn", 9.0, job="eval fwd"),
        *(_row("bn-scalar", r) for r in (2.0, 1.6, 1.7, 1.8)),
        _row("switch", 1.5, dtype="bfloat16"),
    ]
    result = bench.BenchResult({"all_threads": 2}, rows)
    summary = {entry["kind"]: entry for entry in bench.summarize(result)}
    assert summary["bn"] == {
        "kind": "bn",
        "median_ratio": 1.0,
        "shapes": 3,
        "target": 1.05,
        "met": True,
        "median_ratio_by_threads": {"1": 9.0, "2": 1.0},
    }
    assert summary["bn-scalar"]["median_ratio"] == pytest.approx(1.75)
    assert (summary["bn-scalar"]["target"], summary["bn-scalar"]["met"]) == (1.5, False)
    assert summary["bn-scalar"]["median_ratio_by_threads"] == {"2": pytest.approx(1.75)}
    assert (summary["switch"]["median_ratio"], summary["switch"]["met"]) == (None, None)
    assert summary["switch"]["median_ratio_by_threads"] == {}


def test_bench_cli_writes_ratios_tables_and_json(run_cli, monkeypatch, tmp_path):
    """A tiny `normlab bench --kinds bn,ln --shapes mlp`: tables on stdout, and JSON rows
    whose ratio is ours_s / baseline_s, with the summary their median."""
    monkeypatch.setattr(bench, "SHAPES", TINY_SHAPES)
    path = tmp_path / "out" / "bench.json"
    argv = ["bench", "--kinds", "bn,layer", "--shapes", "mlp", "--threads", "1,all"]
    status, out, err = run_cli([*argv, "--min-run-time", "0.001", "--json", str(path)])
    assert status == 0, err
    assert "ratio to torch's native layer" in out and "train fwd+bwd: median ratio" in out
    data = json.loads(path.read_text())
    env = data["environment"]
    assert env["torch"] == torch.__version__
    assert env["threads"] == [1, bench.all_threads()] and env["min_run_time_s"] == 0.001
    assert {"normlab", "cpu_count", "all_threads", "elapsed_s", "dtypes"} <= set(env)
    rows = data["rows"]
    threads = sorted({1, bench.all_threads()})
    expected = {
        (kind, tuple(shape.size), thread, job)
        for kind in ("bn", "ln")
        for shape in TINY_SHAPES["mlp"]
        for thread in threads
        for job in bench.JOBS
    }
    assert {(r["kind"], tuple(r["shape"]), r["threads"], r["job"]) for r in rows} == expected
    assert len(rows) == len(expected)
    keys = {"kind", "options", "shape", "layout", "dtype", "threads", "job", "ours_s"}
    keys |= {"baseline_s", "ratio", "baseline", "skipped"}
    for row in rows:
        assert set(row) == keys
        assert row["ours_s"] > 0 and row["baseline_s"] > 0 and row["skipped"] is None
        assert row["ratio"] == pytest.approx(row["ours_s"] / row["baseline_s"])
        assert row["baseline"] == {"bn": "BatchNorm1d", "ln": "LayerNorm"}[row["kind"]]
    for entry in data["summary"]:
        for count in threads:
            ratios = [
                r["ratio"]
                for r in rows
                if r["kind"] == entry["kind"]
                and r["job"] == "train fwd+bwd"
                and r["threads"] == count
            ]
            median = entry["median_ratio_by_threads"][str(count)]
            assert median == pytest.approx(statistics.median(ratios))
        assert entry["median_ratio"] == entry["median_ratio_by_threads"][str(env["all_threads"])]
        assert entry["met"] == (entry["median_ratio"] <= entry["target"])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--kinds", "bnn", "Did you mean 'bn'"),
        ("--kinds", "none", "no layer to time"),
        ("--kinds", "ln:keras", "bn:keras"),
        ("--kinds", ",", "comma-separated list"),
        ("--shapes", "cnnn", "Did you mean 'cnn'"),
        ("--dtype", "float8", "float32, bfloat16"),
        ("--threads", "0", "positive integers or 'all'"),
        ("--threads", "two", "positive integers or 'all'"),
        ("--min-run-time", "0", "positive number of seconds"),
    ],
)
def test_bad_options_are_usage_errors_that_name_the_fix(option, value, message, run_cli):
    status, out, err = run_cli(["bench", option, value])
    assert status == 2
    assert "Traceback" not in out + err
    assert option in err and message in err


def test_a_kind_that_does_not_apply_to_a_shape_is_listed_as_skipped(run_cli, monkeypatch, tmp_path):
    """`in` on (N, C) batches: rows without times, the reason under the table, and the
    summary says it was not measured."""
    monkeypatch.setattr(bench, "SHAPES", TINY_SHAPES)
    path = tmp_path / "bench.json"
    status, out, err = run_cli(
        ["bench", "--kinds", "instance", "--shapes", "mlp", "--json", str(path)]
    )
    assert status == 0, err
    assert "skipped: in on 8x64, 5x64 (float32): instance norm needs positions" in out
    assert "not measured" in out
    rows = json.loads(path.read_text())["rows"]
    assert len(rows) == len(TINY_SHAPES["mlp"]) * len(bench.JOBS)
    assert all(r["ratio"] is None and "positions" in r["skipped"] for r in rows)


def test_profile_says_per_phase_where_each_modules_time_goes():
    """`profile_cases` on a tiny case: for normlab's module and torch's, each phase's wall
    time, aten op count, time inside the ops (never more than the wall time) and the ops
    that took it, at each thread count asked for."""
    from normlab.bench_profile import PHASES, profile_cases

    variants = bench.parse_kinds("bn-scalar,frozen-bn")
    cases = [bench._case(v, shape) for v in variants for shape in TINY_SHAPES["mlp"][:1]]
    profiles = profile_cases(cases, threads=[1, 2], steps=2)
    seen = {(p.kind, p.threads, p.module, p.phase) for p in profiles}
    expected = {
        (kind, threads, module, phase)
        for kind, baseline in (("bn-scalar", "BatchNorm1d"), ("frozen-bn", None))
        for threads in (1, 2)
        for module in ("normlab", baseline or cases[1].baseline)
        for phase in PHASES
    }
    assert seen == expected
    for p in profiles:
        assert p.shape == [8, 64] and p.layout == "contiguous"
        assert p.wall_us > 0 and p.ops >= 1 and 0 < p.kernel_us <= p.wall_us * 1.01
        assert 0.0 <= p.outside_share < 1.0
        assert p.top and all(name.startswith("aten::") for name, _ in p.top)
    torchs = [p for p in profiles if p.module == "BatchNorm1d" and p.phase == PHASES[0]]
    assert all(
        any(
            name in ("aten::native_batch_norm", "aten::_batch_norm_with_update")
            for name, _ in p.top
        )
        for p in torchs
    ), "the ops torch's own batch norm spends its time in"


def test_bench_cli_profile_prints_the_phases_and_writes_json(run_cli, monkeypatch, tmp_path):
    """`normlab bench --profile --kinds switch --shapes mlp`: a table of every phase of
    normlab's and torch's module, and the same figures as JSON."""
    monkeypatch.setattr(bench, "SHAPES", TINY_SHAPES)
    path = tmp_path / "profile.json"
    argv = ["bench", "--profile", "--profile-steps", "2", "--kinds", "switch", "--shapes", "mlp"]
    status, out, err = run_cli([*argv, "--json", str(path)])
    assert status == 0, err
    assert "Where the time goes" in out and "train bwd" in out and "eval fwd" in out
    rows = json.loads(path.read_text())["profiles"]
    assert {(r["module"], r["phase"], r["threads"]) for r in rows} == {
        (module, phase, 1)
        for module in ("normlab", "BatchNorm1d")
        for phase in ("train fwd", "train bwd", "eval fwd")
    } and len(rows) == 2 * 3 * len(TINY_SHAPES["mlp"])
    assert all(0 <= r["outside_share"] < 1 and r["kernel_us"] <= r["wall_us"] * 1.01 for r in rows)
