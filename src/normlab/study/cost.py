"""The cost claims' evidence: isolated microbenchmarks, written to ``cost.json`` beside the
claims report and read by the claims about cost (normlab.study.cost_claims).

Training runs time their epochs on whatever else the machine is doing, so their step
times measure the machine's load as much as the norm. These timings are taken apart from
any run, with ``torch.utils.benchmark`` at one thread, and must be taken on an otherwise
idle machine (``normlab study claims --cost``). Each variant is timed in each of
``rounds`` rounds, every variant once per round in turn; a round plays the part of a
seed, so contrasts are paired within rounds and a slow spell of the machine lands on
every variant of the round alike. A variant's sample is the median time of one call in
its round.

Variants:

- ``step``: one training step of the tutorials' MLP (784-128-64-10, the norm before each
  ReLU) at batch 32 with the lab's Adam: zero the gradients, forward, cross-entropy,
  backward, update. Norms none, bn and ln.
- ``layer``, implementation ``matched``: per-channel ("2s") and scalar ("1s") batch-norm
  statistics through the same code, torch's fused batch-norm kernel without affine on a
  view of the input ((N, C, S) for 2s, (1, 1, N*C*S) for 1s), then the same per-channel
  affine; forward and backward in training mode. At the MLP's (32, 128) and the CNN's
  (32, 32, 28, 28).
- ``layer``, implementation ``normlab``: normlab's ``bn`` and ``bn-scalar`` as shipped,
  forward and backward in training mode, at (32, 128).

With MNIST at hand, also ``time-to-accuracy``: the wall seconds of training steps (the
lab's loop: Adam 1e-3, batch 32, the tutorials' MLP, one thread) until the validation
accuracy, checked every :data:`CHECK_EVERY` steps and not timed, first reaches
:data:`TARGET_ACCURACY`; one sample per norm (none, bn, ln) and seed, in turn, ``None``
for a seed that does not reach it within :data:`MAX_EPOCHS` epochs.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from normlab.data import Dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.train import evaluate, make_optimizer, seeded_model
from normlab.models import mlp
from normlab.registry import make_norm
from normlab.report.publish import publish

COST_FILE = "cost.json"
TARGET_ACCURACY = 0.97
CHECK_EVERY = 100
MAX_EPOCHS = 5
TIME_SEEDS = 5
ROUNDS = 10
MIN_RUN_TIME = 0.2
"""Seconds each variant is timed for in each round."""
STEP_NORMS = ("none", "bn", "ln")
LAYER_SHAPES = ((32, 128), (32, 32, 28, 28))
"""The tutorials' MLP's first hidden layer at batch 32, and the lab CNN's first."""

Variant = Callable[[], None]


def _step(norm: str) -> Variant:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = mlp(784, (128, 64), 10, norm=norm).train()
    optimizer = make_optimizer("adam", model.parameters(), 1e-3, None)
    images = torch.rand(32, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (32,), generator=generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def _layer(forward: Callable[[torch.Tensor], torch.Tensor], shape: Sequence[int]) -> Variant:
    """Forward and backward of ``forward`` on a (shape) input that needs its gradient."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator).requires_grad_()
    grad = torch.randn(*shape, generator=generator)

    def run() -> None:
        x.grad = None
        forward(x).backward(grad)

    return run


def matched_batch_norm(
    x: torch.Tensor, stats: str, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Batch norm of (N, C, *) ``x`` in training mode with one mean and variance per channel
    (``stats="2s"``) or one for the whole batch (``"1s"``), both through torch's fused
    batch-norm kernel without affine on a view of ``x``, then the same (C,) affine."""
    channels = x.shape[1]
    view = x.reshape(1, 1, -1) if stats == "1s" else x.reshape(x.shape[0], channels, -1)
    normalized = F.batch_norm(view, None, None, training=True).view(x.shape)
    affine_shape = (1, channels) + (1,) * (x.dim() - 2)
    return normalized * weight.view(affine_shape) + bias.view(affine_shape)


def _matched(stats: str, shape: Sequence[int]) -> Variant:
    weight = torch.ones(shape[1], requires_grad=True)
    bias = torch.zeros(shape[1], requires_grad=True)
    return _layer(lambda x: matched_batch_norm(x, stats, weight, bias), shape)


def _shipped(kind: str, shape: Sequence[int]) -> Variant:
    layer = make_norm(kind, shape[1]).train()
    return _layer(layer, shape)


def variants() -> list[tuple[dict[str, Any], Variant]]:
    """Every variant, with the fields a claim's arm selects it by."""
    found: list[tuple[dict[str, Any], Variant]] = []
    for norm in STEP_NORMS:
        found.append(({"measure": "step", "norm": norm}, _step(norm)))
    for shape in LAYER_SHAPES:
        for stats in ("2s", "1s"):
            fields = {"implementation": "matched", "stats": stats, "shape": list(shape)}
            found.append(({"measure": "layer", **fields}, _matched(stats, shape)))
    shape = LAYER_SHAPES[0]
    for kind, stats in (("bn", "2s"), ("bn-scalar", "1s")):
        fields = {"implementation": "normlab", "stats": stats, "shape": list(shape)}
        found.append(({"measure": "layer", **fields}, _shipped(kind, shape)))
    return found


def time_to_accuracy(
    norm: str, seed: int, data: Dataset, target: float = TARGET_ACCURACY
) -> float | None:
    """Wall seconds of the tutorials' MLP's training steps with ``norm`` (Adam 1e-3, batch
    32, initialized as the lab seeds a run, a fresh permutation of the data each epoch)
    until its validation accuracy, checked every :data:`CHECK_EVERY` steps outside the
    clock, reaches ``target``; None when it does not within :data:`MAX_EPOCHS` epochs."""
    config = RunConfig(
        dataset="mnist", norm=norm, seed=seed, batch_size=32, model_options={"hidden": [128, 64]}
    )
    model = seeded_model(config, data).train()
    optimizer = make_optimizer("adam", model.parameters(), 1e-3, None)
    generator = torch.Generator().manual_seed(seed)
    elapsed, steps = 0.0, 0
    for _ in range(MAX_EPOCHS):
        order = torch.randperm(len(data.train_x), generator=generator)
        for batch in order.split(32):
            clock = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.train_x[batch]), data.train_y[batch]).backward()
            optimizer.step()
            elapsed += time.perf_counter() - clock
            steps += 1
            if steps % CHECK_EVERY == 0 and evaluate(model, data.val_x, data.val_y)[1] >= target:
                return elapsed
    return None


def measure(
    rounds: int = ROUNDS,
    min_run_time: float = MIN_RUN_TIME,
    data: Dataset | None = None,
    seeds: int = TIME_SEEDS,
) -> dict[str, Any]:
    """Time every variant in ``rounds`` interleaved rounds at one thread, and with ``data``
    (MNIST) the time to accuracy of ``seeds`` seeds per norm.

    Returns:
        ``{"machine": ..., "torch": ..., "threads": 1, "samples": [record, ...]}``: one
        record per variant and round, ``{"config": {fields, "seed": round}, "seconds": t,
        "status": "finished"}``, the form the claims' arms select runs in.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        found = variants()
        samples = []
        for round_ in range(rounds):
            for fields, variant in found:
                timer = benchmark.Timer("variant()", globals={"variant": variant}, num_threads=1)
                seconds = timer.blocked_autorange(min_run_time=min_run_time).median
                config = {**fields, "seed": round_}
                samples.append({"config": config, "seconds": seconds, "status": "finished"})
        for seed in range(seeds if data is not None else 0):
            for norm in STEP_NORMS:
                seconds = time_to_accuracy(norm, seed, data)
                config = {"measure": "time-to-accuracy", "norm": norm, "seed": seed}
                samples.append({"config": config, "seconds": seconds, "status": "finished"})
    finally:
        torch.set_num_threads(previous)
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "threads": 1,
        "rounds": rounds,
        "samples": samples,
    }


def write_cost(report_dir: Path, measured: Mapping[str, Any]) -> Path:
    """Write ``measured`` (see :func:`measure`) to ``report_dir``'s cost file, published
    like the report's other files (normlab.report.publish)."""
    text = json.dumps(measured, indent=1, sort_keys=True) + "\n"

    def draw(staging: Path) -> None:
        (staging / COST_FILE).write_text(text, encoding="utf-8")

    publish(report_dir, draw)
    return Path(report_dir) / COST_FILE


def read_cost(report_dir: Path) -> list[dict[str, Any]]:
    """The cost samples kept in ``report_dir`` (none when it has no cost file).

    Raises:
        ValueError: the file cannot be read as cost samples; the message names it and the
            command that writes it again.
    """
    path = Path(report_dir) / COST_FILE
    if not path.exists():
        return []
    try:
        samples = json.loads(path.read_text(encoding="utf-8"))["samples"]
        if not all(isinstance(s["config"], dict) and _time(s["seconds"]) for s in samples):
            raise ValueError("a sample without a config or a positive time (or null)")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} cannot be read as the cost microbenchmarks ({error}); measure them again "
            "on an idle machine with `normlab study claims --cost --report DIR`."
        ) from None
    return samples


def _time(seconds: object) -> bool:
    """A sample's time: positive seconds, or None for a target never reached."""
    return seconds is None or (isinstance(seconds, int | float) and seconds > 0)
