"""Synchronized batch norm ("sync-bn"): nl.SyncBatchNorm and nl.convert_sync_batchnorm.

W gloo processes on this machine (tests/distributed_harness.py) each normalize their own
slice of a batch; together they must give what ONE process gives on the concatenated batch.
Oracles, never the code under test:

- a float64 batch-norm formula written in this file (mean, biased variance, autograd);
- ``normlab.BatchNorm`` (the single-process layer) on the concatenated batch;
- ``torch.nn.BatchNorm1d/2d`` in float64 on the concatenated batch (stats="channel",
  torch convention).

Input gradients are compared slice by slice; weight and bias gradients summed over the
processes (each process holds its share; DDP would average them); running statistics on
every process, which must also agree bit for bit with each other.

Every process group runs all the scenarios of its world size one after another (one spawn
per W keeps the file fast); the parametrized tests then read the saved results. A scenario
that raises stops its process group: the later scenarios report that they did not run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
import traceback
import zlib
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.testing import assert_close

import normlab as nl
from distributed_harness import DistributedRunError, run_in_process_group
from normlab.layers import TorchSyncBatchNorm

C = 3
SPATIAL = (3, 2)  # H, W of the 4-D inputs
STEPS = 3
MOMENTUM = {"torch": 0.3, "keras": 0.8}  # not the defaults, so that each step shows
EPS = {"torch": 1e-5, "keras": 1e-3}
LARGE_MEAN = 1e3

needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="needs torch.distributed with the gloo backend to run a CPU process group",
)

# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------


def rows_of(sizes: tuple[int, ...], ranks: tuple[int, ...]) -> slice:
    """The rows of the whole batch held by ``ranks`` (consecutive) when rank r holds sizes[r]."""
    start = sum(sizes[: ranks[0]])
    return slice(start, start + sum(sizes[r] for r in ranks))


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One layer configuration trained for STEPS steps by a process group.

    ``sizes[r]`` is the number of samples of rank r. ``groups`` splits the ranks into
    process groups given to the layer as ``process_group`` (each group must be a run of
    consecutive ranks); empty means the default group of all ranks (no argument).
    """

    world_size: int
    sizes: tuple[int, ...]
    ndim: int
    stats: str
    convention: str
    large_mean: bool  # float32 1e3 + N(0, 1) instead of float64 data of mean ~1
    groups: tuple[tuple[int, ...], ...] = ()
    cumulative: bool = False  # momentum=None

    @property
    def id(self) -> str:
        data = "float32-mean1e3" if self.large_mean else "float64"
        sizes = ",".join(map(str, self.sizes))
        parts = [f"W{self.world_size}", f"sizes{sizes}", f"{self.ndim}d", self.stats]
        parts += [self.convention, data]
        if self.groups:
            parts.append("groups" + "|".join(",".join(map(str, g)) for g in self.groups))
        if self.cumulative:
            parts.append("momentum-None")
        return "-".join(parts)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.large_mean else torch.float64

    @property
    def momentum(self) -> float | None:
        return None if self.cumulative else MOMENTUM[self.convention]

    @property
    def eps(self) -> float:
        return EPS[self.convention]

    def group_of(self, rank: int) -> tuple[int, ...]:
        for group in self.groups:
            if rank in group:
                return group
        return tuple(range(self.world_size))

    def rows(self, ranks: tuple[int, ...]) -> slice:
        return rows_of(self.sizes, ranks)

    def layer_options(self) -> dict[str, Any]:
        return {
            "stats": self.stats,
            "convention": self.convention,
            "momentum": self.momentum,
            "eps": self.eps,
        }


@dataclasses.dataclass(frozen=True)
class ModelJob:
    """A converted model (SyncNet) trained DDP-free for 2 steps by a process group."""

    world_size: int
    sizes: tuple[int, ...]

    @property
    def id(self) -> str:
        return f"W{self.world_size}-model-sizes{','.join(map(str, self.sizes))}"


SIZES = {2: [(4, 4), (5, 1)], 3: [(4, 4, 4), (3, 1, 6)]}  # unequal ones hold a 1-sample rank


def layer_scenarios(world_size: int) -> list[Scenario]:
    """Simplest first: a failure in an early scenario stops the later ones."""
    return [
        Scenario(world_size, sizes, ndim, stats, convention, large_mean)
        for large_mean in (False, True)
        for sizes in SIZES[world_size]
        for ndim in (2, 4)
        for stats in ("channel", "scalar")
        for convention in ("torch", "keras")
    ]


#: the layer's process_group argument: ranks 0 and 1 synchronize, rank 2 alone is plain bn;
#: also momentum=None (cumulative average) of the global statistics.
SUBGROUP_SCENARIO = Scenario(3, (3, 1, 6), 2, "channel", "torch", False, ((0, 1), (2,)), True)
MODEL_JOB = ModelJob(2, (5, 3))


@dataclasses.dataclass(frozen=True)
class OneValueJob:
    """A training batch of one value per statistic over all processes: (1, C) and (0, C)."""

    world_size: int
    stats: str
    num_features: int

    sizes = (1, 0)

    @property
    def id(self) -> str:
        return f"W{self.world_size}-one-value-{self.stats}-C{self.num_features}"


ONE_VALUE_JOBS = [OneValueJob(2, "channel", C), OneValueJob(2, "scalar", 1)]
Job = Scenario | ModelJob | OneValueJob


def jobs_for(world_size: int) -> list[Job]:
    extra: list[Job] = [MODEL_JOB, *ONE_VALUE_JOBS] if world_size == 2 else [SUBGROUP_SCENARIO]
    return [*layer_scenarios(world_size), *extra]


SCENARIOS = [*layer_scenarios(2), *layer_scenarios(3), SUBGROUP_SCENARIO]


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a (C,) or (1,) tensor to broadcast along dim 1 of an ndim-D input."""
    return t.view((1, -1) + (1,) * (ndim - 2))


def scenario_inputs(scenario: Scenario) -> dict[str, Any]:
    """Whole-batch inputs of every step, upstream gradients, an eval batch and the affine."""
    gen = torch.Generator().manual_seed(zlib.crc32(scenario.id.encode()))
    shape = (sum(scenario.sizes), C, *SPATIAL[: scenario.ndim - 2])

    def batch() -> torch.Tensor:
        if scenario.large_mean:
            return (LARGE_MEAN + torch.randn(shape, generator=gen, dtype=torch.float64)).float()
        mean = 1.0 + torch.randn(C, generator=gen, dtype=torch.float64)
        std = 0.5 + 2.0 * torch.rand(C, generator=gen, dtype=torch.float64)
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        return channel_view(mean, len(shape)) + channel_view(std, len(shape)) * noise

    def normal(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen, dtype=torch.float64).to(scenario.dtype)

    return {
        "x": [batch() for _ in range(STEPS)],
        "grad": [normal(*shape) for _ in range(STEPS)],
        "x_eval": batch(),
        "weight": 1.0 + 0.5 * normal(C),
        "bias": 0.5 * normal(C),
    }


# --------------------------------------------------------------------------------------
# Running a layer (in a worker on its slice, or as the single-process oracle)
# --------------------------------------------------------------------------------------


def train_and_eval(layer: nn.Module, data: dict[str, Any], rows: slice) -> dict[str, Any]:
    """STEPS training steps on ``rows`` of each batch, then eval: what the tests compare."""
    dtype = layer.weight.dtype
    with torch.no_grad():
        layer.weight.copy_(data["weight"])
        layer.bias.copy_(data["bias"])
    layer.train()
    out: dict[str, Any] = {"y": [], "grad_input": [], "grad_weight": [], "grad_bias": []}
    for x_all, grad_all in zip(data["x"], data["grad"], strict=True):
        x = x_all[rows].to(dtype).clone().requires_grad_()
        y = layer(x)
        grads = torch.autograd.grad(y, (x, layer.weight, layer.bias), grad_all[rows].to(dtype))
        out["y"].append(y.detach())
        for name, grad in zip(("grad_input", "grad_weight", "grad_bias"), grads, strict=True):
            out[name].append(grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        out[name] = layer.get_buffer(name).clone()
    layer.eval()
    with torch.no_grad():
        out["eval"] = layer(data["x_eval"][rows].to(dtype))
    return out


def formula_oracle(scenario: Scenario, data: dict[str, Any], rows: slice) -> dict[str, Any]:
    """The same quantities from the float64 batch-norm formula on ``rows`` of each batch."""
    ndim = scenario.ndim
    weight = data["weight"].double().requires_grad_()
    bias = data["bias"].double().requires_grad_()
    stat_shape = (C,) if scenario.stats == "channel" else (1,)
    running_mean = torch.zeros(stat_shape, dtype=torch.float64)
    running_var = torch.ones(stat_shape, dtype=torch.float64)
    dims = tuple(range(ndim)) if scenario.stats == "scalar" else (0, *range(2, ndim))
    out: dict[str, Any] = {"y": [], "grad_input": [], "grad_weight": [], "grad_bias": []}
    for step, (x_all, grad_all) in enumerate(zip(data["x"], data["grad"], strict=True)):
        x = x_all[rows].double().requires_grad_()
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).square().mean(dims, keepdim=True)  # biased, to normalize
        y = (x - mean) / torch.sqrt(var + scenario.eps) * channel_view(weight, ndim)
        y = y + channel_view(bias, ndim)
        grads = torch.autograd.grad(y, (x, weight, bias), grad_all[rows].double())
        out["y"].append(y.detach())
        for name, grad in zip(("grad_input", "grad_weight", "grad_bias"), grads, strict=True):
            out[name].append(grad)
        count = x.numel() // mean.numel()
        batch_mean, batch_var = mean.detach().flatten(), var.detach().flatten()
        if scenario.convention == "torch":
            m = 1.0 / (step + 1) if scenario.momentum is None else scenario.momentum
            running_mean = (1 - m) * running_mean + m * batch_mean
            running_var = (1 - m) * running_var + m * batch_var * count / (count - 1)
        else:
            m = scenario.momentum
            running_mean = m * running_mean + (1 - m) * batch_mean
            running_var = m * running_var + (1 - m) * batch_var
    out["running_mean"], out["running_var"] = running_mean, running_var
    out["num_batches_tracked"] = torch.tensor(STEPS)
    x = data["x_eval"][rows].double()
    normalized = (x - channel_view(running_mean, ndim)) / torch.sqrt(
        channel_view(running_var, ndim) + scenario.eps
    )
    out["eval"] = (normalized * channel_view(weight, ndim) + channel_view(bias, ndim)).detach()
    return out


# --------------------------------------------------------------------------------------
# The model of the convert_sync_batchnorm tests
# --------------------------------------------------------------------------------------

MODEL_INPUT = (2, 4, 4)  # (channels, H, W) of SyncNet's input
LR = 0.1


class SyncNet(nn.Module):
    """Every kind of layer convert_sync_batchnorm must replace, and some it must not touch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(MODEL_INPUT[0], C, 3, padding=1)
        self.torch_bn = nn.BatchNorm2d(C, eps=1e-4, momentum=0.2)
        self.scalar_keras = nl.make_norm("bn-scalar", C, convention="keras", momentum=0.9, eps=2e-3)
        self.renorm = nl.BatchRenorm(C)  # a BatchNorm subclass: not converted
        self.shared = nl.BatchNorm(C)
        self.pair = nn.Sequential(self.shared, nn.Conv2d(C, C, 1), self.shared)
        self.switch = nl.SwitchableNorm(C)
        self.layer_norm = nl.make_norm("ln", C)
        self.frozen = nl.FrozenBatchNorm(C)
        self.head = nn.Linear(C * MODEL_INPUT[1] * MODEL_INPUT[2], 5)
        self.head_bn = nn.BatchNorm1d(5, momentum=None)  # cumulative: needs num_batches_tracked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.torch_bn(self.conv(x)))
        x = self.renorm(self.scalar_keras(x))
        x = self.switch(self.pair(x))
        x = self.frozen(self.layer_norm(x))
        return self.head_bn(self.head(x.flatten(1)))


CONVERTED = ("torch_bn", "scalar_keras", "shared", "pair.0", "pair.2", "head_bn")
UNTOUCHED = ("conv", "renorm", "pair.1", "switch", "layer_norm", "frozen", "head")


def set_training(net: SyncNet) -> None:
    """Train mode, except the layers that stay per process (batch renorm, switchable norm):
    in eval mode they use their running statistics, so the model's output does not depend
    on how the batch is split across processes."""
    net.train()
    net.renorm.eval()
    net.switch.eval()


def model_state() -> dict[str, torch.Tensor]:
    """A float64 SyncNet state with non-default running statistics, affines and step counts."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = SyncNet().double()
        net.train()
        for _ in range(2):
            net(torch.randn(8, *MODEL_INPUT, dtype=torch.float64))
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.add_(0.2 * torch.randn_like(parameter))
            net.frozen.weight.copy_(1 + 0.2 * torch.randn(C, dtype=torch.float64))
            net.frozen.bias.copy_(0.2 * torch.randn(C, dtype=torch.float64))
            net.frozen.running_mean.copy_(0.1 * torch.randn(C, dtype=torch.float64))
            net.frozen.running_var.copy_(1 + torch.rand(C, dtype=torch.float64))
    return {name: tensor.clone() for name, tensor in net.state_dict().items()}


def model_inputs(job: ModelJob) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(zlib.crc32(job.id.encode()))
    n = sum(job.sizes)

    def normal(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen, dtype=torch.float64)

    return {
        "state": model_state(),
        "x": [1.0 + 2.0 * normal(n, *MODEL_INPUT) for _ in range(2)],
        "grad": [normal(n, 5) for _ in range(2)],
        "x_eval": 1.0 + 2.0 * normal(n, *MODEL_INPUT),
    }


def train_model(net: SyncNet, data: dict[str, Any], rows: slice, sum_grads) -> dict[str, Any]:
    """Two SGD steps on loss = sum(output * grad); ``sum_grads`` makes the gradients global."""
    out: dict[str, Any] = {"y": []}
    for x, grad in zip(data["x"], data["grad"], strict=True):
        set_training(net)
        y = net(x[rows])
        (y * grad[rows]).sum().backward()
        sum_grads(net)
        with torch.no_grad():
            for parameter in net.parameters():
                parameter -= LR * parameter.grad
                parameter.grad = None
        out["y"].append(y.detach())
    net.eval()
    with torch.no_grad():
        out["eval"] = net(data["x_eval"][rows])
    out["state"] = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    return out


# --------------------------------------------------------------------------------------
# What each process runs
# --------------------------------------------------------------------------------------


def _all_reduce_gradients(net: nn.Module) -> None:
    for parameter in net.parameters():  # the same order on every process
        dist.all_reduce(parameter.grad)


def _check_in_step(world_size: int, after: str) -> None:
    """A collective that fails when the processes are no longer in step."""
    probe = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(probe)
    if probe.item() != world_size * (world_size + 1) / 2:
        raise AssertionError(f"processes out of step (probe {probe.item()}) after {after}")


def _run_job(rank: int, job: Job, data: dict[str, Any]) -> dict[str, Any]:
    if isinstance(job, OneValueJob):
        layer = nl.SyncBatchNorm(job.num_features, stats=job.stats)
        before = {name: tensor.clone() for name, tensor in layer.state_dict().items()}
        try:
            layer(data["x"][rows_of(job.sizes, (rank,))])
            message = None
        except ValueError as error:
            message = str(error)
        _check_in_step(job.world_size, "a refused batch")
        return {"message": message, "before": before, "after": layer.state_dict()}
    if isinstance(job, ModelJob):
        net = SyncNet().double()
        net.load_state_dict(data["state"])
        net = nl.convert_sync_batchnorm(net)
        return train_model(net, data, rows_of(job.sizes, (rank,)), _all_reduce_gradients)
    # Every process creates every group, in the same order, as torch.distributed requires.
    groups = {ranks: dist.new_group(list(ranks)) for ranks in job.groups}
    options = job.layer_options()
    if job.groups:
        options["process_group"] = groups[job.group_of(rank)]
    layer = nl.SyncBatchNorm(C, **options, dtype=job.dtype)
    result = train_and_eval(layer, data, job.rows((rank,)))
    # Eval mode must not communicate: rank r runs r extra eval passes, then a collective
    # checks that the processes are still in step.
    with torch.no_grad():
        for _ in range(rank):
            layer(data["x_eval"][job.rows((rank,))].to(job.dtype))
    _check_in_step(job.world_size, "eval-mode forwards: eval mode seems to communicate")
    return result


def sync_worker(rank: int, world_size: int, inputs_path: str) -> dict[str, Any]:
    """Run every job of this world size; stop at the first that raises (see module doc)."""
    inputs = torch.load(inputs_path, weights_only=True)
    probe = torch.tensor([float(rank + 1)])
    dist.all_reduce(probe)
    result: dict[str, Any] = {"all_reduce": probe, "jobs": {}}
    for job in jobs_for(world_size):
        try:
            result["jobs"][job.id] = _run_job(rank, job, inputs[job.id])
        except Exception:
            result["error"] = {"job": job.id, "traceback": traceback.format_exc()}
            break
    return result


def job_inputs(job: Job) -> dict[str, Any]:
    if isinstance(job, ModelJob):
        return model_inputs(job)
    if isinstance(job, OneValueJob):
        return {"x": torch.randn(1, job.num_features, generator=torch.Generator().manual_seed(0))}
    return scenario_inputs(job)


class DistributedRuns:
    """One process group per world size, run on first use and shared by the tests."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._runs: dict[int, tuple[dict, list[dict] | None, str | None]] = {}

    def inputs(self, world_size: int) -> dict[str, Any]:
        return self._run(world_size)[0]

    def results(self, world_size: int, job_id: str) -> list[dict[str, Any]]:
        """Each rank's results of one job; fails the test with the reason they are missing."""
        _, results, failure = self._run(world_size)
        if results is None:
            pytest.fail(f"the {world_size}-process group failed:\n{failure}", pytrace=False)
        per_rank = []
        for rank, result in enumerate(results):
            if job_id in result["jobs"]:
                per_rank.append(result["jobs"][job_id])
                continue
            error = result.get("error")
            if error is None:
                pytest.fail(f"rank {rank} has no result for {job_id}", pytrace=False)
            if error["job"] == job_id:
                pytest.fail(f"{job_id} raised on rank {rank}:\n{error['traceback']}", pytrace=False)
            last_line = error["traceback"].strip().splitlines()[-1]
            pytest.fail(
                f"{job_id} did not run: the earlier job {error['job']} raised on rank {rank} "
                f"and stopped its process group: {last_line}",
                pytrace=False,
            )
        return per_rank

    def all_reduce_probe(self, world_size: int) -> list[torch.Tensor]:
        _, results, failure = self._run(world_size)
        if results is None:
            pytest.fail(f"the {world_size}-process group failed:\n{failure}", pytrace=False)
        return [result["all_reduce"] for result in results]

    def _run(self, world_size: int) -> tuple[dict, list[dict] | None, str | None]:
        if world_size not in self._runs:
            inputs = {job.id: job_inputs(job) for job in jobs_for(world_size)}
            tmp = self._tmp.mktemp(f"sync-bn-W{world_size}")
            torch.save(inputs, tmp / "inputs.pt")
            try:
                results = run_in_process_group(
                    sync_worker, world_size, (str(tmp / "inputs.pt"),), tmp, timeout=120
                )
                self._runs[world_size] = (inputs, results, None)
            except DistributedRunError as error:
                self._runs[world_size] = (inputs, None, str(error))
        return self._runs[world_size]


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory: pytest.TempPathFactory) -> DistributedRuns:
    return DistributedRuns(tmp_path_factory)


# --------------------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------------------

EXACT = {"atol": 0.0, "rtol": 0.0}
FLOAT64 = {"atol": 1e-10, "rtol": 1e-10}


def tolerances(scenario: Scenario, oracle_dtype: torch.dtype, rows: slice) -> dict[str, dict]:
    """assert_close tolerances of each compared quantity, against an oracle of oracle_dtype.

    float64 data: reduction order only, 1e-10.

    float32 data of mean 1e3 and spread 1: the usual float32 rtol 1e-5 / atol 1e-6 for
    unit-scale values, scaled where the large mean enters. Each normalized value is
    x - mean with mean computed in float32; that mean is off by a few roundings of a
    number of size 1e3 (2^-24 * 1e3 = 6e-5 each), so outputs and input gradients get
    atol 1e-6 * (|mean| / std = 1e3) * 2 = 2e-3 (measured: up to 5e-4). Weight gradients
    sum that error over every value of a channel: atol 2e-3 * sqrt(values per weight).
    A variance does not feel a shifted mean to first order (one process, two-pass:
    measured 2e-7), but combining the processes' (count, mean, M2) adds
    n_k * (mean_k - mean)^2, and those differences of float32 means of size 1e3 carry the
    same 6e-5 roundings (measured: 1e-5). Running statistics: rtol 1e-5, atol 1e-4, still
    far below the one-pass E[x^2] - E[x]^2, which misses these batches' variances by more
    than 5e-2 (checked below). Eval outputs are (x - running_mean) / std, of size ~300:
    rtol 1e-5 with the same atol as training outputs. A float32 oracle carries its own
    error of the same size: twice the tolerance.
    """
    if not scenario.large_mean:
        return dict.fromkeys(("output", "param_grad", "stats"), FLOAT64)
    values_per_weight = (rows.stop - rows.start) * math.prod(SPATIAL[: scenario.ndim - 2])
    scale = 2.0 if oracle_dtype == torch.float32 else 1.0
    return {
        "output": {"atol": 2e-3 * scale, "rtol": 1e-5 * scale},
        "param_grad": {"atol": 2e-3 * math.sqrt(values_per_weight) * scale, "rtol": 1e-5 * scale},
        "stats": {"atol": 1e-4 * scale, "rtol": 1e-5 * scale},
    }


def compare(actual: torch.Tensor, expected: torch.Tensor, what: str, **tol: float) -> None:
    if expected.dtype != actual.dtype:
        actual = actual.to(expected.dtype)
    assert_close(actual, expected, **tol, msg=lambda message: f"{what}: {message}")


# --------------------------------------------------------------------------------------
# Tests: the harness itself
# --------------------------------------------------------------------------------------


@needs_gloo
@pytest.mark.parametrize("world_size", [2, 3])
def test_harness_process_group_all_reduces(distributed_runs, world_size):
    """The harness starts W gloo processes whose all_reduce sums one value from each."""
    probes = distributed_runs.all_reduce_probe(world_size)
    assert len(probes) == world_size
    for probe in probes:
        assert probe.item() == world_size * (world_size + 1) / 2


def _failing_work(rank: int, world_size: int) -> dict[str, Any]:
    if rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    dist.all_reduce(torch.ones(1))  # waits for rank 1 until the harness kills it
    return {}


@needs_gloo
def test_harness_fails_fast_with_the_traceback_of_a_failing_process(tmp_path):
    """A process that raises fails the run at once with its traceback; the one waiting on
    it in a collective is killed rather than waited for."""
    with pytest.raises(DistributedRunError, match="rank 1 fails on purpose") as excinfo:
        run_in_process_group(_failing_work, 2, (), tmp_path, timeout=60)
    assert "--- rank 1 ---" in str(excinfo.value)


def _hanging_work(rank: int, world_size: int) -> dict[str, Any]:
    if rank == 0:
        dist.all_reduce(torch.ones(1))  # rank 1 never joins
    else:
        time.sleep(3600)
    return {}


@needs_gloo
@pytest.mark.slow
def test_harness_kills_a_hanging_process_group(tmp_path):
    """A hang fails the run after the timeout instead of stalling the test session."""
    with pytest.raises(DistributedRunError, match="did not finish within 15 s"):
        run_in_process_group(_hanging_work, 2, (), tmp_path, timeout=15)


# --------------------------------------------------------------------------------------
# Tests: SyncBatchNorm in W processes == BatchNorm in one on the concatenated batch
# --------------------------------------------------------------------------------------


def single_process_oracles(scenario: Scenario, data: dict[str, Any], rows: slice):
    """(name, results, dtype) of every oracle of ``scenario`` on the concatenated ``rows``."""
    yield "float64 formula", formula_oracle(scenario, data, rows), torch.float64
    bn = nl.BatchNorm(C, **scenario.layer_options(), dtype=scenario.dtype)
    yield f"normlab.BatchNorm ({scenario.dtype})", train_and_eval(bn, data, rows), scenario.dtype
    if scenario.stats == "channel" and scenario.convention == "torch":
        torch_bn = {2: nn.BatchNorm1d, 4: nn.BatchNorm2d}[scenario.ndim]
        module = torch_bn(C, eps=scenario.eps, momentum=scenario.momentum, dtype=torch.float64)
        name = f"torch.nn.{torch_bn.__name__} (float64)"
        yield name, train_and_eval(module, data, rows), torch.float64


@needs_gloo
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_sync_batch_norm_matches_one_process_on_the_concatenated_batch(distributed_runs, scenario):
    """Training outputs, input gradients, summed weight/bias gradients, running statistics
    after STEPS steps and eval outputs equal the single-process layer's on the
    concatenated batch, for equal and unequal per-process batches (one of a single sample)."""
    per_rank = distributed_runs.results(scenario.world_size, scenario.id)
    data = distributed_runs.inputs(scenario.world_size)[scenario.id]
    groups = scenario.groups or (tuple(range(scenario.world_size)),)
    for group in groups:
        rows = scenario.rows(group)
        results = [per_rank[rank] for rank in group]
        for oracle, expected, oracle_dtype in single_process_oracles(scenario, data, rows):
            tol = tolerances(scenario, oracle_dtype, rows)
            where = f"ranks {group} vs {oracle}"
            for step in range(STEPS):
                for name in ("y", "grad_input"):
                    got = torch.cat([result[name][step] for result in results])
                    compare(
                        got, expected[name][step], f"{where}, step {step}, {name}", **tol["output"]
                    )
                for name in ("grad_weight", "grad_bias"):
                    got = torch.stack([result[name][step] for result in results]).sum(0)
                    what = f"{where}, step {step}, {name} summed over processes"
                    compare(got, expected[name][step], what, **tol["param_grad"])
            for rank, result in zip(group, results, strict=True):
                for name in ("running_mean", "running_var"):
                    compare(
                        result[name],
                        expected[name],
                        f"{where}, rank {rank}, {name}",
                        **tol["stats"],
                    )
                assert result["num_batches_tracked"].item() == STEPS, (where, rank)
            got = torch.cat([result["eval"] for result in results])
            compare(got, expected["eval"], f"{where}, eval output", **tol["output"])
        for result in results[1:]:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                what = f"{name} differs between the processes of group {group}"
                compare(result[name], results[0][name], what, **EXACT)
            for name in ("y", "grad_input", "grad_weight", "grad_bias"):
                assert result[name][0].dtype == scenario.dtype, name


def one_pass_variance_error(scenario: Scenario, data: dict[str, Any]) -> float:
    """Largest error of the float32 E[x^2] - E[x]^2 over the whole batch, as from all-reduced
    sums and sums of squares, against the float64 two-pass variance."""
    dims = (
        tuple(range(scenario.ndim))
        if scenario.stats == "scalar"
        else (0, 2, 3)[: scenario.ndim - 1]
    )
    worst = 0.0
    for x in data["x"]:
        count = x.numel() // (C if scenario.stats == "channel" else 1)
        one_pass = x.square().sum(dims) / count - (x.sum(dims) / count).square()
        x64 = x.double()
        two_pass = (x64 - x64.mean(dims, keepdim=True)).square().mean(dims)
        worst = max(worst, (one_pass.double() - two_pass).abs().max().item())
    return worst


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s.large_mean], ids=lambda s: s.id)
def test_large_mean_batches_defeat_the_one_pass_variance(scenario):
    """The float32 scenarios' tolerances separate a stable variance from E[x^2] - E[x]^2:
    on their batches the one-pass formula is off by more than 5e-2, 500 times the
    running-statistics tolerance (1e-4 + 1e-5 * ~1 for a variance of ~1)."""
    data = scenario_inputs(scenario)
    assert one_pass_variance_error(scenario, data) > 5e-2


# --------------------------------------------------------------------------------------
# Tests: convert_sync_batchnorm
# --------------------------------------------------------------------------------------


def expected_options(module: nn.Module) -> dict[str, Any]:
    """The SyncBatchNorm options a converted ``module`` must have."""
    is_torch = isinstance(module, nn.modules.batchnorm._BatchNorm)
    return {
        "num_features": module.num_features,
        "stats": "channel" if is_torch else module.stats,
        "convention": "torch" if is_torch else module.convention,
        "eps": module.eps,
        "momentum": module.momentum,
        "affine": module.affine,
        "track_running_stats": module.track_running_stats,
    }


def check_converted(converted: nn.Module, original: nn.Module, where: str = "module") -> None:
    """A SyncBatchNorm with the original's options, training flag and state (dtype too)."""
    # in torch's configuration, normlab's SyncBatchNorm that is also torch's _BatchNorm
    torchs = (converted.stats, converted.convention, converted.channel_dim) == (
        "channel",
        "torch",
        1,
    )
    expected = TorchSyncBatchNorm if torchs else nl.SyncBatchNorm
    assert type(converted) is expected, (
        f"{where} is a {type(converted).__name__} after conversion, not a {expected.__name__}"
    )
    for name, value in expected_options(original).items():
        assert getattr(converted, name) == value, (where, name, getattr(converted, name), value)
    assert converted.training == original.training, where
    expected, got = original.state_dict(), converted.state_dict()
    assert set(got) == set(expected), where
    for name, tensor in expected.items():
        assert_close(got[name], tensor, **EXACT, msg=lambda m, n=name: f"{where}.{n}: {m}")


def test_convert_sync_batchnorm_replaces_exactly_the_batch_norms():
    """torch BatchNorm1d/2d and normlab BatchNorm (bn-scalar, Keras convention too) become
    SyncBatchNorm with copied options and state; a shared layer stays one object; batch
    renorm, switchable, layer and frozen norms and the other modules are the same objects;
    eval outputs are unchanged."""
    net = SyncNet().double()
    net.load_state_dict(model_state())
    original = copy.deepcopy(net)
    untouched = {name: net.get_submodule(name) for name in UNTOUCHED}
    converted = nl.convert_sync_batchnorm(net)
    for name in CONVERTED:
        check_converted(converted.get_submodule(name), original.get_submodule(name), name)
    assert converted.pair[0] is converted.shared
    assert converted.pair[2] is converted.shared
    for name, module in untouched.items():
        assert converted.get_submodule(name) is module, name
    assert type(converted.renorm) is nl.BatchRenorm
    remaining = [
        name
        for name, module in converted.named_modules()
        if isinstance(module, nl.BatchNorm | nn.modules.batchnorm._BatchNorm)
        and not isinstance(module, nl.SyncBatchNorm)
    ]
    assert remaining == []
    got, expected = converted.state_dict(), original.state_dict()
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert_close(got[name], tensor, **EXACT, msg=lambda m, n=name: f"{n}: {m}")
    x = 1.0 + 2.0 * torch.randn(
        6, *MODEL_INPUT, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    converted.eval()
    original.eval()
    assert_close(converted(x), original(x), **FLOAT64)


class OwnBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A user's batch norm written on torch's base class, as torch's BatchNorm1d/2d/3d are."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        pass


LONE_LAYERS = {
    "torch BatchNorm1d eps momentum": lambda: nn.BatchNorm1d(C, eps=1e-3, momentum=0.05),
    "torch BatchNorm2d no affine": lambda: nn.BatchNorm2d(C, affine=False),
    "torch BatchNorm3d no running stats": lambda: nn.BatchNorm3d(C, track_running_stats=False),
    "torch BatchNorm2d cumulative": lambda: nn.BatchNorm2d(C, momentum=None),
    "bn-scalar keras": lambda: nl.make_norm("bn-scalar", C, convention="keras"),
    "bn keras momentum eps": lambda: nl.BatchNorm(C, convention="keras", momentum=0.5, eps=1e-2),
    "bn-scalar no affine cumulative": lambda: nl.BatchNorm(
        C, stats="scalar", affine=False, momentum=None
    ),
    "bn no running stats": lambda: nl.BatchNorm(C, track_running_stats=False),
    "torch _BatchNorm subclass": lambda: OwnBatchNorm(C, momentum=0.2),
}
LONE_INPUT = {nn.BatchNorm1d: (8, C), nn.BatchNorm3d: (4, C, 2, 3, 2)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("make", LONE_LAYERS.values(), ids=LONE_LAYERS.keys())
def test_convert_sync_batchnorm_of_a_lone_layer(make, dtype):
    """The layer itself (the root) is converted, like torch's convert_sync_batchnorm, with
    options, training flag, dtype and state copied; without a process group it then trains
    and evaluates as the original (torch's kernels: float32 up to rounding)."""
    gen = torch.Generator().manual_seed(5)
    module = make().to(dtype)
    shape = LONE_INPUT.get(type(module), (4, C, 3, 2))

    def batch() -> torch.Tensor:
        return 1.0 + 2.0 * torch.randn(shape, generator=gen, dtype=dtype)

    module.train()
    for _ in range(2):
        module(batch())
    if module.affine:
        with torch.no_grad():
            module.weight.add_(0.3 * torch.randn(C, generator=gen, dtype=dtype))
            module.bias.add_(0.3 * torch.randn(C, generator=gen, dtype=dtype))
    original = copy.deepcopy(module)
    converted = nl.convert_sync_batchnorm(module)
    check_converted(converted, original)
    tol = FLOAT64 if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
    x = batch()
    assert_close(converted(x), original(x), **tol)
    for name, tensor in original.state_dict().items():
        assert_close(converted.state_dict()[name], tensor, **tol)
    converted.eval()
    original.eval()
    assert_close(converted(x), original(x), **tol)


def test_convert_sync_batchnorm_keeps_eval_mode_and_leaves_other_models_alone():
    """An eval-mode model stays in eval mode; a model without batch norm is returned as is."""
    net = SyncNet().eval()
    converted = nl.convert_sync_batchnorm(net)
    assert not any(module.training for module in converted.modules())
    assert type(converted.torch_bn) is TorchSyncBatchNorm
    plain = nn.Sequential(nn.Linear(4, C), nl.make_norm("ln", C), nl.BatchRenorm(C))
    children = list(plain)
    converted = nl.convert_sync_batchnorm(plain)
    assert converted is plain
    assert all(a is b for a, b in zip(converted, children, strict=True))


def test_convert_sync_batchnorm_refuses_a_lazy_layer_before_its_first_forward():
    """An uninitialized LazyBatchNorm2d has no channel count to build the synchronized layer
    from; left as it is, it would train unsynchronized without a word. Once initialized it
    is a BatchNorm2d and is converted."""
    model = nn.Sequential(nn.Conv2d(3, C, 1), nn.LazyBatchNorm2d())
    with pytest.raises(ValueError, match="LazyBatchNorm2d: a lazy layer not initialized yet"):
        nl.convert_sync_batchnorm(model)
    assert type(model[1]) is nn.LazyBatchNorm2d
    model(torch.randn(2, 3, 4, 4))
    converted = nl.convert_sync_batchnorm(model)
    assert type(converted[1]) is TorchSyncBatchNorm


@needs_gloo
def test_converted_model_in_two_processes_trains_like_one_process(distributed_runs):
    """SyncNet converted and trained 2 SGD steps in 2 processes (gradients summed by hand,
    no DDP; batches of 5 and 3) gives the outputs, state and eval outputs of the
    unconverted model trained on the concatenated batches in one process."""
    job = MODEL_JOB
    per_rank = distributed_runs.results(job.world_size, job.id)
    data = distributed_runs.inputs(job.world_size)[job.id]
    net = SyncNet().double()
    net.load_state_dict(data["state"])
    expected = train_model(net, data, slice(None), lambda net: None)
    tol = {"atol": 1e-9, "rtol": 1e-9}
    for step in range(2):
        got = torch.cat([result["y"][step] for result in per_rank])
        compare(got, expected["y"][step], f"step {step} outputs", **tol)
    compare(torch.cat([r["eval"] for r in per_rank]), expected["eval"], "eval outputs", **tol)
    for rank, result in enumerate(per_rank):
        assert list(result["state"]) == list(expected["state"])
        for name, tensor in expected["state"].items():
            compare(result["state"][name], tensor, f"rank {rank} state {name}", **tol)


@needs_gloo
@pytest.mark.parametrize("job", ONE_VALUE_JOBS, ids=lambda j: j.id)
def test_one_value_per_statistic_over_all_processes_is_refused(distributed_runs, job):
    """Batches of 1 and 0 samples: one value per statistic in all. Every process raises the
    ValueError that says so (none hangs), and the refused batch changes no state."""
    per_rank = distributed_runs.results(job.world_size, job.id)
    unit = "channel" if job.stats == "channel" else "(channel|batch)"
    for rank, result in enumerate(per_rank):
        assert result["message"] is not None, f"rank {rank} trained on one value per statistic"
        assert re.search(f"more than one value per {unit}", result["message"]), result["message"]
    for rank, result in enumerate(per_rank):
        for name, tensor in result["before"].items():
            assert torch.equal(result["after"][name], tensor), (
                f"rank {rank}: the refused batch changed {name} "
                f"from {tensor.tolist()} to {result['after'][name].tolist()}"
            )


# --------------------------------------------------------------------------------------
# Tests: without a process group (or in a group of one), SyncBatchNorm is BatchNorm
# --------------------------------------------------------------------------------------

IN_PROCESS_OPTIONS = [
    {},
    {"stats": "scalar"},
    {"convention": "keras"},
    {"stats": "scalar", "convention": "keras", "momentum": 0.5},
    {"momentum": None},
    {"affine": False, "track_running_stats": False},
]


def affine(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in (module.weight, module.bias) if p is not None]


def check_same_as_batch_norm(options: dict[str, Any], **sync_only: Any) -> None:
    """Train 3 steps on 2-D and 4-D batches and evaluate: bit-identical to BatchNorm."""
    gen = torch.Generator().manual_seed(11)
    for shape in [(6, C), (4, C, 3, 2)]:
        sync = nl.SyncBatchNorm(C, **options, **sync_only)
        plain = nl.BatchNorm(C, **options)
        assert (sync.eps, sync.momentum) == (plain.eps, plain.momentum)
        if plain.affine:
            with torch.no_grad():
                for module in (sync, plain):
                    module.weight.copy_(torch.linspace(0.5, 1.5, C))
                    module.bias.copy_(torch.linspace(-0.3, 0.3, C))
        for _ in range(STEPS):
            x = (1.0 + 2.0 * torch.randn(shape, generator=gen)).requires_grad_()
            grad = torch.randn(shape, generator=gen)
            y_sync, y_plain = sync(x), plain(x)
            assert_close(y_sync, y_plain, **EXACT)
            got = torch.autograd.grad(y_sync, [x, *affine(sync)], grad)
            want = torch.autograd.grad(y_plain, [x, *affine(plain)], grad)
            for a, b in zip(got, want, strict=True):
                assert_close(a, b, **EXACT)
        for (name, a), (_, b) in zip(sync.named_buffers(), plain.named_buffers(), strict=True):
            assert_close(a, b, **EXACT, msg=lambda m, n=name: f"{n}: {m}")
        assert list(sync.state_dict()) == list(plain.state_dict())
        sync.eval()
        plain.eval()
        x = 1.0 + 2.0 * torch.randn(shape, generator=gen)
        assert_close(sync(x), plain(x), **EXACT)


@pytest.mark.parametrize("options", IN_PROCESS_OPTIONS, ids=str)
def test_without_a_process_group_sync_batch_norm_is_batch_norm(options):
    """No process group: outputs, gradients, running statistics and eval outputs are
    exactly BatchNorm's, with the same defaults; process_group=None is accepted."""
    assert issubclass(nl.SyncBatchNorm, nl.BatchNorm)
    assert not (dist.is_available() and dist.is_initialized())
    check_same_as_batch_norm(options)
    check_same_as_batch_norm(options, process_group=None)


@pytest.fixture
def group_of_one():
    """An initialized gloo process group of this process alone."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with the gloo backend")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("options", IN_PROCESS_OPTIONS[:3], ids=str)
def test_in_a_group_of_one_process_sync_batch_norm_is_batch_norm(group_of_one, options):
    """W == 1: nothing to synchronize, exactly BatchNorm."""
    check_same_as_batch_norm(options)


@pytest.mark.parametrize("in_group", [False, True], ids=["no group", "group of one"])
@pytest.mark.parametrize(
    ("options", "shape"),
    [
        ({}, (1, C)),
        ({"convention": "keras"}, (1, C, 1, 1)),
        ({"stats": "scalar"}, (1, 1)),
    ],
    ids=str,
)
def test_one_value_per_statistic_is_refused(request, in_group, options, shape):
    """A training batch of one value per statistic raises the ValueError that names it,
    and changes no state."""
    if in_group:
        request.getfixturevalue("group_of_one")
    norm = nl.SyncBatchNorm(shape[1], **options)
    before = {name: tensor.clone() for name, tensor in norm.state_dict().items()}
    per = "in the whole batch" if options.get("stats") == "scalar" else "per channel"
    with pytest.raises(ValueError, match=f"more than one value {per}") as excinfo:
        norm(torch.randn(shape))
    got = "a batch of a single" if options.get("stats") == "scalar" else "1 sample with 1 position"
    assert f"got {got}" in str(excinfo.value)
    for name, tensor in norm.state_dict().items():
        assert torch.equal(tensor, before[name]), name
