"""What the lab's speed work must not change: the train loop's metrics and optimizer steps,
data-parallel shares, runs trained by a sweep's worker processes; and that the end-to-end
benchmark's TF-Keras script reads the same MNIST and builds the same model as normlab."""

from __future__ import annotations

import copy
import importlib.util
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

from data_fixtures import mnist_arrays, write_mnist_idx
from normlab.data import Dataset, load_dataset
from normlab.experiment import RunConfig, train_run
from normlab.experiment.executors.pool import worker_main
from normlab.experiment.train import Partition, build_run_model, make_optimizer, train_model
from normlab.models import mlp

KERAS_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "keras_tutorial_mlp.py"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# --- the train loop ---------------------------------------------------------------------


@given(
    start=st.integers(0, 50),
    size=st.integers(1, 40),
    world=st.integers(1, 5),
)
def test_a_partition_share_is_torch_tensor_split_of_the_batch(start, size, world):
    batch = slice(start, start + size)
    positions = torch.arange(100)
    expected = torch.tensor_split(positions[batch], world)
    for rank in range(world):
        share = Partition(rank, world).share(batch)
        assert torch.equal(positions[share], expected[rank])


def _unique_images(n: int, classes: int = 4, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    return Dataset(
        name="digits",
        train_x=torch.rand(n, 1, 3, 3, generator=generator),
        train_y=torch.randint(0, classes, (n,), generator=generator),
        val_x=torch.rand(7, 1, 3, 3, generator=generator),
        val_y=torch.randint(0, classes, (7,), generator=generator),
        num_classes=classes,
        source="test",
    )


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_epoch_metrics_are_those_of_the_forward_passes_that_trained(norm, monkeypatch):
    """Training loss and accuracy recomputed in float64 from every training-mode forward pass
    (a hook sees the logits; each image is matched to its label), over batches of 16, 16
    and a partial 6."""
    data = _unique_images(38)
    label_of = {
        row.numpy().tobytes(): int(y) for row, y in zip(data.train_x, data.train_y, strict=True)
    }
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(module, inputs, output):
        if module.training:
            labels = [label_of[row.numpy().tobytes()] for row in inputs[0]]
            seen.append((output.detach().double(), torch.tensor(labels)))

    def hooked(config, data):
        model = build_run_model(config, data)
        model.register_forward_hook(record)
        return model

    monkeypatch.setattr("normlab.experiment.train.build_run_model", hooked)
    config = RunConfig(norm=norm, batch_size=16, epochs=2, model_options={"hidden": [8]})
    _, result = train_model(config, data)
    assert len(seen) == 2 * 3
    for epoch, history in enumerate(result["history"]):
        logits = torch.cat([out for out, _ in seen[3 * epoch : 3 * epoch + 3]])
        labels = torch.cat([lab for _, lab in seen[3 * epoch : 3 * epoch + 3]])
        assert sorted(labels.tolist()) == sorted(data.train_y.tolist())
        loss = F.cross_entropy(logits, labels, reduction="sum").item() / 38
        accuracy = (logits.argmax(1) == labels).double().mean().item()
        assert history["train_loss"] == pytest.approx(loss, rel=1e-6)
        assert history["train_acc"] == pytest.approx(accuracy)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("adam", lambda p: torch.optim.Adam(p, lr=1e-2, foreach=False)),
        ("adamw", lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=False)),
        ("sgd", lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, foreach=False)),
        ("rmsprop", lambda p: torch.optim.RMSprop(p, lr=1e-2, foreach=False)),
    ],
)
def test_the_lab_optimizers_take_torch_reference_steps(name, reference):
    """The fused steps the lab takes match torch's one-tensor-at-a-time implementation."""
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    theirs = copy.deepcopy(ours)
    optimizers = [make_optimizer(name, ours.parameters(), 1e-2), reference(theirs.parameters())]
    for step in range(6):
        x = torch.randn(8, 5, generator=torch.Generator().manual_seed(step))
        for model, optimizer in zip((ours, theirs), optimizers, strict=True):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for mine, expected in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert_close(mine, expected, rtol=1e-5, atol=1e-6)
    fused = optimizers[0].defaults.get("fused")
    assert fused is (None if name == "rmsprop" else True)  # torch has no fused rmsprop


# --- sweeps -------------------------------------------------------------------------


def test_a_worker_process_trains_the_numbers_this_process_trains(digits):
    """A sweep's worker process trains what train_run trains here at the same threads."""
    config = RunConfig(norm="bn", epochs=2, batch_size=64, model_options={"hidden": [16]})
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    worker = context.Process(target=worker_main, args=(theirs, os.getpid(), 1, None, None))
    worker.start()
    try:
        ours.send(digits)  # as the pool does: handles to the tensors' shared memory
        ours.send([config.to_dict()])  # a task: one run
        reports = []
        while not reports or reports[-1][0] not in ("finished", "failed"):
            assert ours.poll(300), "the worker sent nothing for 300 s"
            reports.append(ours.recv())
        ours.send(None)
        worker.join(60)
    finally:
        worker.kill()
    assert [kind for kind, _, _ in reports] == ["started", "epoch", "epoch", "finished"]
    assert {run_id for _, run_id, _ in reports} == {config.run_id}
    there = reports[-1][2]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = train_run(config, digits)
    finally:
        torch.set_num_threads(previous)
    assert there["final"] == here["final"]
    assert [{**e, "seconds": 0} for e in there["history"]] == [
        {**e, "seconds": 0} for e in here["history"]
    ]


# --- the benchmark's TF-Keras script ----------------------------------------------------


def _keras_script():
    spec = importlib.util.spec_from_file_location("keras_tutorial_mlp", KERAS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("gz", [False, True])
def test_the_keras_script_reads_the_mnist_normlab_reads(tmp_path, gz):
    arrays = mnist_arrays(seed=3)
    write_mnist_idx(tmp_path, arrays, gz=gz)
    train_x, train_y, val_x, val_y = _keras_script().load_mnist(tmp_path)
    data = load_dataset("mnist", tmp_path)
    np.testing.assert_array_equal(train_x, data.train_x[:, 0].numpy())
    np.testing.assert_array_equal(val_x, data.val_x[:, 0].numpy())
    np.testing.assert_array_equal(train_y, data.train_y.numpy())
    np.testing.assert_array_equal(val_y, data.val_y.numpy())


@pytest.mark.parametrize("norm", ["none", "bn", "ln"])
def test_the_keras_script_builds_normlabs_mlp(norm):
    """With normlab's weights (and running statistics) copied in, the Keras model's
    inference output is the softmax of normlab's eval-mode logits."""
    keras = pytest.importorskip("keras")
    torch.manual_seed(0)
    ours = mlp(784, [128, 64], 10, norm=norm).eval()
    for module in ours.modules():
        if hasattr(module, "running_mean"):  # statistics other than the initial 0 and 1
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    theirs = _keras_script().build(norm, keras)
    # torch's weight, bias, running mean and variance are Keras' kernel (transposed), bias,
    # gamma, beta, moving mean and variance, in the same order
    tensors = [t for t in ours.state_dict().values() if t.dtype.is_floating_point]
    weights = [t.T.numpy() if t.ndim == 2 else t.numpy() for t in tensors]
    theirs.set_weights(weights)
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        expected = ours(x).softmax(1).double()
    actual = torch.as_tensor(theirs.predict(x[:, 0].numpy(), verbose=0))
    assert_close(actual.double(), expected, rtol=1e-5, atol=1e-6)
