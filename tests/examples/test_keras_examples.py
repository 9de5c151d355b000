"""The Keras examples run at small scale, report what they measured, and Keras' batch norm and
normlab.keras' (stats="channel") train identically from the same seed."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from normlab.data import Dataset

os.environ.setdefault("KERAS_BACKEND", "torch")

# Keras 3.15's torch backend turns its training logs into numpy with np.array(tensor), which
# numpy 2 flags because torch's __array__ takes no copy argument: Keras' warning, not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ACCURACY = re.compile(r"epoch \d+: .*validation accuracy (\d+\.\d+)%")
FINAL = re.compile(r"validation accuracy after \d+ epochs: (\d+\.\d+)%")
CONVERSION = re.compile(r"keras -> torch max \|difference\| (\S+), keras -> torch -> keras (\S+)")
# Largest eval-logit difference accepted after conversion: float32 rounding of logits of
# order 10 through a few layers (measured: about 1e-6).
CONVERSION_TOL = 1e-4


@pytest.fixture(scope="module")
def examples():
    """The two example modules; keras_cifar_cnn imports keras_mnist_mlp from its folder."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("the examples are tested on the torch backend (KERAS_BACKEND=torch)")
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield {name: _load(name) for name in ("keras_mnist_mlp", "keras_cifar_cnn")}
    finally:
        sys.path.remove(str(EXAMPLES))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measured(out: str) -> tuple[list[float], float, float, float]:
    """(validation accuracy per epoch, final accuracy, keras->torch error, round-trip error)."""
    history = [float(value) for value in ACCURACY.findall(out)]
    final = FINAL.search(out)
    conversion = CONVERSION.search(out)
    assert history and final and conversion, out
    return history, float(final.group(1)), float(conversion.group(1)), float(conversion.group(2))


def check_report(out: str, epochs: int) -> list[float]:
    history, final, to_torch, round_trip = measured(out)
    assert len(history) == epochs
    assert all(0 <= accuracy <= 100 for accuracy in history)
    assert final == history[-1]
    assert to_torch < CONVERSION_TOL
    assert round_trip < CONVERSION_TOL
    return history


def run_mlp(examples, capsys, argv: list[str]) -> str:
    assert examples["keras_mnist_mlp"].main(["--dataset", "digits", *argv]) == 0
    return capsys.readouterr().out


def test_mlp_keras_and_normlab_channel_batchnorm_train_identically(examples, capsys):
    """Same seed, same math (per-channel batch norm, Keras' momentum and biased variance):
    the validation accuracy history is the same with either layer.

    The layers differ only in float32 rounding (Keras' one-pass variance and fused affine);
    over thousands of Adam steps that rounding moves the Dense biases before batch norm,
    whose exact gradient is zero, so full-scale runs drift apart by a few tenths of a point.
    """
    argv = ["--norm", "bn", "--epochs", "2", "--limit", "640"]
    keras_out = run_mlp(examples, capsys, [*argv, "--layers", "keras"])
    normlab_out = run_mlp(examples, capsys, [*argv, "--layers", "normlab", "--stats", "channel"])
    assert "keras.layers.BatchNormalization on digits: 640 training" in keras_out
    assert "normlab.keras.BatchNormalization(stats='channel')" in normlab_out
    assert check_report(keras_out, 2) == check_report(normlab_out, 2)


@pytest.mark.parametrize(
    "argv",
    [
        ["--norm", "bn", "--layers", "normlab", "--stats", "scalar"],
        ["--norm", "ln"],
        ["--norm", "none"],
    ],
    ids=["bn-scalar", "ln", "none"],
)
def test_mlp_runs_and_converts_with_each_norm(examples, capsys, argv):
    out = run_mlp(examples, capsys, [*argv, "--epochs", "1", "--limit", "320"])
    check_report(out, 1)


def synthetic_cifar(seed: int = 0) -> Dataset:
    """A tiny 32x32x3 data set whose class shifts the mean of one channel block."""
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=gen)
        images = torch.rand((n, 3, 32, 32), generator=gen) * 0.5
        for image, label in zip(images, labels.tolist(), strict=True):
            image[label % 3, : 3 * (label // 3 + 1)] += 0.5
        return images.clamp_(0, 1), labels

    train_x, train_y = split(96)
    val_x, val_y = split(48)
    return Dataset("cifar10", train_x, train_y, val_x, val_y, 10, "synthetic (test)")


def test_cnn_runs_on_32x32x3_and_keras_and_normlab_layers_agree(examples, capsys):
    cnn = examples["keras_cifar_cnn"]
    outputs = []
    for layers in (["--layers", "keras"], ["--layers", "normlab", "--stats", "channel"]):
        args = cnn.parse_args(cnn.build_parser(), ["--epochs", "2", "--batch-size", "16", *layers])
        assert cnn.run(synthetic_cifar(), args) == 0
        outputs.append(capsys.readouterr().out)
    assert "on cifar10: 96 training and 48 validation images" in outputs[0]
    assert check_report(outputs[0], 2) == check_report(outputs[1], 2)


def test_cnn_with_scalar_stats_and_layer_norm_converts(examples, capsys):
    cnn = examples["keras_cifar_cnn"]
    for argv in (["--layers", "normlab", "--stats", "scalar"], ["--norm", "ln"]):
        args = cnn.parse_args(cnn.build_parser(), ["--epochs", "1", *argv])
        assert cnn.run(synthetic_cifar(1), args) == 0
        check_report(capsys.readouterr().out, 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stats", "scalar"], "--stats scalar exists only in normlab's layer"),
        (["--layers", "normlab", "--norm", "ln"], "--norm ln is Keras' LayerNormalization"),
        (["--epochs", "0"], "must be positive"),
    ],
)
def test_inconsistent_flags_are_refused(examples, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        examples["keras_mnist_mlp"].main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_says_where_it_looked_and_what_is_built_in(examples, capsys, tmp_path):
    cnn = examples["keras_cifar_cnn"]
    assert cnn.main(["--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path) in err
    assert "--dataset digits is built in" in err
