"""Where a layer's time goes: ``normlab bench --profile``.

For each case of :mod:`normlab.bench` (a kind on a shape) this runs normlab's
module and torch's baseline under ``torch.profiler`` for a few steps of each
phase -- the training forward, the training backward (into the input and the
parameters, as ``normlab bench`` times it) and the eval forward -- and reports per
step and phase: the wall time under the profiler, the number of aten ops
dispatched, the time inside them (the self CPU time of every ``aten::`` op, so
nested ops count once) and the share of the wall time spent outside them
(Python, autograd bookkeeping, module hooks: the overhead that dominates small
tensors), with the ops that took the most time.

The profiler adds a little time per op to the wall time and to the share outside
kernels, the same for both modules: read the two side by side, not as absolute
figures. A slow shape of ``normlab bench`` is diagnosed by its line here: a
large share outside kernels or many more ops than torch's says the overhead is
in the Python around the kernels; a large kernel time says the kernels
themselves are slower.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from rich import box
from rich.table import Table
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from normlab.bench import Case

#: The phases profiled, each a ``record_function`` range around its part of a step.
PHASES: tuple[str, ...] = ("train fwd", "train bwd", "eval fwd")
#: Steps profiled per module and mode, after as many unprofiled warm-up steps.
DEFAULT_STEPS = 10
#: Ops named per phase in the table, the most time-consuming first.
TOP_OPS = 3


@dataclass(frozen=True)
class PhaseProfile:
    """One phase of one module on one case, per step: ``wall_us`` under the profiler,
    ``ops`` aten ops dispatched, ``kernel_us`` inside them, and ``top`` the ops that took
    the most of it as (name, microseconds per step)."""

    kind: str
    shape: list[int]
    layout: str
    threads: int
    module: str
    phase: str
    wall_us: float
    kernel_us: float
    ops: float
    top: list[tuple[str, float]]

    @property
    def outside_share(self) -> float:
        """The share of the wall time outside aten ops (0 to 1)."""
        return max(0.0, 1.0 - self.kernel_us / self.wall_us) if self.wall_us > 0 else 0.0


def _step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, training: bool) -> None:
    if not training:
        with torch.no_grad(), record_function("eval fwd"):
            module(x)
        return
    x.grad = None
    module.zero_grad(set_to_none=True)
    with record_function("train fwd"):
        output = module(x)
    with record_function("train bwd"):
        output.backward(grad)


def profile_module(
    module: nn.Module, x: torch.Tensor, grad: torch.Tensor, steps: int = DEFAULT_STEPS
) -> dict[str, tuple[float, float, float, Counter]]:
    """Per phase: (wall us, kernel us, ops, {op name: self us}), each per step.

    Each aten op is counted in the phase whose ``record_function`` range it starts in
    (the backward runs on the calling thread for CPU tensors).
    """
    ranges: list[tuple[int, int, str]] = []
    totals: dict[str, list] = {}
    for training in (True, False):
        module.train(training)
        for _ in range(steps):
            _step(module, x, grad, training)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(steps):
                _step(module, x, grad, training)
        events = profiler.events()
        ranges = sorted(
            (e.time_range.start, e.time_range.end, e.name) for e in events if e.name in PHASES
        )
        starts = [start for start, _, _ in ranges]
        for start, end, name in ranges:
            totals.setdefault(name, [0.0, 0.0, 0, Counter()])[0] += end - start
        for event in events:
            if not event.name.startswith("aten::"):
                continue
            index = bisect.bisect_right(starts, event.time_range.start) - 1
            if index < 0 or event.time_range.start > ranges[index][1]:
                continue
            entry = totals[ranges[index][2]]
            entry[1] += event.self_cpu_time_total
            entry[2] += 1
            entry[3][event.name] += event.self_cpu_time_total
    module.train(True)
    return {
        phase: (
            wall / steps,
            kernel / steps,
            ops / steps,
            Counter({k: v / steps for k, v in by_op.items()}),
        )
        for phase, (wall, kernel, ops, by_op) in totals.items()
    }


def profile_cases(
    cases: Sequence[Case],
    dtype: torch.dtype = torch.float32,
    threads: Sequence[int] = (1,),
    steps: int = DEFAULT_STEPS,
) -> list[PhaseProfile]:
    """Profile normlab's module and the baseline of every case at each thread count.

    Returns:
        One :class:`PhaseProfile` per case, thread count, module (``"normlab"``, then the
        baseline's name) and phase; skipped cases give none.
    """
    if steps < 1:
        raise ValueError(f"steps must be 1 or more; got {steps}.")
    previous = torch.get_num_threads()
    profiles = []
    try:
        for case in cases:
            if case.skipped is not None:
                continue
            x = case.make_input(dtype).requires_grad_()
            grad = case.make_input(dtype, seed=1)
            torch.manual_seed(0)
            modules = {"normlab": case.make_ours(dtype), case.baseline: case.make_baseline(dtype)}
            for count in threads:
                torch.set_num_threads(count)
                for name, module in modules.items():
                    phases = profile_module(module, x, grad, steps)
                    for phase in PHASES:
                        if phase not in phases:
                            continue  # a baseline held in eval mode has no backward into x
                        wall, kernel, ops, by_op = phases[phase]
                        profiles.append(
                            PhaseProfile(
                                case.variant.label,
                                list(case.size),
                                case.layout,
                                count,
                                name,
                                phase,
                                wall,
                                kernel,
                                ops,
                                [(op, us) for op, us in by_op.most_common(TOP_OPS)],
                            )
                        )
    finally:
        torch.set_num_threads(previous)
    return profiles


#: Short names of the bench's layouts in the profile table.
_LAYOUT_TAGS = {"channels_last": " NHWC", "(N, L, C)": " NLC", "(N, C, L)": " NCL"}


def profile_table(profiles: Sequence[PhaseProfile]) -> Table:
    """One line per case, thread count and phase: normlab's figures beside torch's."""
    table = Table(
        title="Where the time goes, per step under torch.profiler (normlab | torch)",
        caption="kernels: self CPU time of aten ops; outside: the rest of the wall time "
        "(Python, autograd, dispatch); the profiler inflates both modules' outside share alike",
        box=box.SIMPLE_HEAD,
    )
    for column in ("kind", "shape", "thr", "phase"):
        table.add_column(column, no_wrap=True)
    for column in ("µs", "ratio", "ops", "kernels µs", "outside"):
        table.add_column(column, no_wrap=True, justify="right")
    table.add_column("normlab's top ops, µs", min_width=30)
    lines: dict[tuple, dict[bool, PhaseProfile]] = {}
    for p in profiles:
        key = (p.kind, tuple(p.shape), p.layout, p.threads, p.phase)
        lines.setdefault(key, {})[p.module == "normlab"] = p
    previous = None
    for (kind, shape, layout, threads, phase), pair in lines.items():
        if previous is not None and kind != previous:
            table.add_section()
        previous = kind
        ours, theirs = pair.get(True), pair.get(False)
        ratio = (
            f"{ours.wall_us / theirs.wall_us:.2f}"
            if ours is not None and theirs is not None and theirs.wall_us > 0
            else "-"
        )
        table.add_row(
            kind,
            "x".join(map(str, shape)) + _LAYOUT_TAGS.get(layout, ""),
            str(threads),
            phase,
            _both(pair, "{:.0f}", lambda p: p.wall_us),
            ratio,
            _both(pair, "{:.0f}", lambda p: p.ops),
            _both(pair, "{:.0f}", lambda p: p.kernel_us),
            _both(pair, "{:.0%}", lambda p: p.outside_share),
            ", ".join(f"{op.removeprefix('aten::')} {us:.0f}" for op, us in ours.top)
            if ours is not None
            else "",
        )
    return table


def _both(pair: dict[bool, PhaseProfile], fmt: str, value: Callable[[PhaseProfile], float]) -> str:
    """normlab's figure | torch's, "-" for a module without this phase."""
    return " | ".join(
        "-" if pair.get(ours) is None else fmt.format(value(pair[ours])) for ours in (True, False)
    )
