"""The lab's models: shapes, where the norm sits, and the tutorials' layer sizes.

Parameter counts are checked against the same models built in Keras 3 (the
tutorials' framework), which is independent of the code under test.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from normlab.experiment.config import RunConfig
from normlab.layers import BatchNorm, LayerNorm
from normlab.models import RowRNN, build_model

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _keras_trainable(model) -> int:
    return sum(int(torch.tensor(w.shape).prod()) for w in model.trainable_weights)


@pytest.mark.parametrize("model", ["mlp", "cnn", "rnn"])  # resnet20, transformer: their own files
@pytest.mark.parametrize("norm", ["none", "bn", "bn-scalar", "ln", "gn", "rms"])
@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 12, 10)])
def test_every_model_maps_images_to_logits(model, norm, placement, shape):
    """(N, C, H, W) in, (N, classes) out, in train and eval mode, with gradients for every
    parameter."""
    torch.manual_seed(0)
    net = build_model(model, shape, 7, norm=norm, placement=placement)
    images = torch.rand(5, *shape)
    logits = net.train()(images)
    assert logits.shape == (5, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert net.eval()(images[:1]).shape == (1, 7)


def test_mlp_has_the_tutorials_sizes_and_keras_parameter_count():
    """Dense 128 relu, Dense 64 relu, Dense 10 on 784 inputs: Keras counts the same parameters."""
    net = build_model("mlp", (1, 28, 28), 10)
    widths = [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)]
    assert widths == [(784, 128), (128, 64), (64, 10)]
    reference = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    assert _trainable(net) == _keras_trainable(reference)


@pytest.mark.parametrize(
    ("norm", "keras_norm"),
    [
        ("bn", lambda: keras.layers.BatchNormalization()),
        ("ln", lambda: keras.layers.LayerNormalization()),
    ],
)
def test_mlp_with_a_norm_matches_keras_trainable_parameters(norm, keras_norm):
    """Dense, norm, ReLU per hidden layer: trainable parameters as in Keras (gamma and beta)."""
    net = build_model("mlp", (1, 28, 28), 10, norm=norm)
    reference = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(128),
            keras_norm(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(64),
            keras_norm(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(10),
        ]
    )
    assert _trainable(net) == _keras_trainable(reference)


def test_cnn_matches_the_tutorials_keras_cnn_parameter_count():
    """Conv 32 / Conv 64 3x3 'same' with batch norm, pooling, Dense 64, Dense 10 on 32x32x3."""
    net = build_model("cnn", (3, 32, 32), 10, norm="bn")
    layers = keras.layers
    reference = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Conv2D(32, 3, padding="same"),
            layers.BatchNormalization(),
            layers.Activation("relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same"),
            layers.BatchNormalization(),
            layers.Activation("relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(10),
        ]
    )
    assert _trainable(net) == _keras_trainable(reference)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("placement", ["before", "after"])
def test_placement_puts_the_norm_before_or_after_each_relu(placement):
    net = build_model("mlp", (1, 8, 8), 10, norm="bn", hidden=[16, 8], placement=placement)
    kinds = [
        BatchNorm if isinstance(m, BatchNorm) else nn.ReLU
        for m in net
        if isinstance(m, nn.ReLU | BatchNorm)
    ]
    pair = [BatchNorm, nn.ReLU] if placement == "before" else [nn.ReLU, BatchNorm]
    assert kinds == pair * 2


def test_hidden_widths_are_configurable():
    net = build_model("mlp", (1, 8, 8), 10, hidden=[32, 16, 8], norm="ln")
    widths = [m.out_features for m in net if isinstance(m, nn.Linear)]
    assert widths == [32, 16, 8, 10]
    assert [m.normalized_shape for m in net if isinstance(m, LayerNorm)] == [(32,), (16,), (8,)]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_reads_rows_as_steps(cell):
    """28x28 images are 28 steps of 28 values; the row order matters to the output."""
    net = build_model("rnn", (1, 28, 28), 10, norm="ln", cell=cell, hidden=[16])
    assert isinstance(net, RowRNN)
    recurrent = net.layers[0]
    assert isinstance(recurrent, nn.LSTM if cell == "lstm" else nn.GRU)
    assert recurrent.input_size == 28
    images = torch.rand(3, 1, 28, 28)
    net.eval()
    assert not torch.allclose(net(images), net(images.flip(2)))


@pytest.mark.parametrize(("placement", "features"), [("before", 3 * 10), ("after", 16)])
def test_rnn_placement_normalizes_layer_input_or_output(placement, features):
    """Pre-norm normalizes the C*W features entering a layer, post-norm its hidden outputs."""
    net = build_model("rnn", (3, 12, 10), 10, norm="bn", placement=placement, hidden=[16])
    assert net.norms[0].norm.num_features == features


def test_rnn_batch_norm_takes_statistics_per_feature_over_samples_and_steps():
    """bn over an (N, L, F) sequence: each feature's mean over N and L is 0 in training mode."""
    torch.manual_seed(0)
    net = build_model("rnn", (1, 6, 5), 4, norm="bn", placement="before", hidden=[8])
    captured = {}
    net.norms[0].register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    net.train()(3.0 + 2.0 * torch.randn(4, 1, 6, 5))
    out = captured["out"].double()  # (N, L, F)
    torch.testing.assert_close(
        out.mean((0, 1)), torch.zeros(5, dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        out.var((0, 1), unbiased=False), torch.ones(5, dtype=torch.float64), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "mpl"}, r"unknown model 'mpl'.*'mlp'.*MODULE:FACTORY"),
        ({"name": "cnn", "input_shape": (1, 2, 2)}, r"at least 4x4"),
        ({"name": "mlp", "cell": "gru"}, r"rnn model only"),
        ({"name": "rnn", "cell": "rnn"}, r"cell must be one of lstm, gru"),
        ({"name": "mlp", "placement": "middle"}, r"'before' or 'after'"),
        ({"name": "mlp", "hidden": [16, 0]}, r"positive"),
        ({"name": "mlp", "norm": "bnn"}, r"Did you mean 'bn'"),
    ],
)
def test_bad_model_options_say_what_to_do(kwargs, message):
    kwargs = {"input_shape": (1, 8, 8), "num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


def test_he_init_draws_weights_with_variance_two_over_fan_in_and_zero_bias() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10, hidden=[512, 256], init="he")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for layer in linears:
        fan_in = layer.weight.shape[1]
        std = layer.weight.double().std().item()
        assert abs(std / math.sqrt(2.0 / fan_in) - 1.0) < 0.05
        assert torch.count_nonzero(layer.bias) == 0


def test_init_scale_multiplies_every_linear_and_conv_weight_and_leaves_norms_alone() -> None:
    torch.manual_seed(0)
    base = build_model("cnn", (1, 8, 8), 10, hidden=[4], norm="bn")
    torch.manual_seed(0)
    scaled = build_model("cnn", (1, 8, 8), 10, hidden=[4], norm="bn", init_scale=10.0)
    for (name, a), (_, b) in zip(base.named_parameters(), scaled.named_parameters(), strict=True):
        weight_of_a_layer = name.endswith("weight") and a.dim() > 1
        torch.testing.assert_close(b, a * 10.0 if weight_of_a_layer else a, rtol=0, atol=0)


def test_init_options_at_their_defaults_leave_the_run_id_as_it_was() -> None:
    plain = RunConfig(model_options={"hidden": [16]})
    same = RunConfig(model_options={"hidden": [16], "init": "default", "init_scale": 1.0})
    he = RunConfig(model_options={"hidden": [16], "init": "he"})
    assert same.run_id == plain.run_id
    assert he.run_id != plain.run_id


@pytest.mark.parametrize(("init", "scale"), [("xavier", 1.0), ("he", 0.0), ("he", float("nan"))])
def test_a_bad_init_is_refused_with_the_choices(init: str, scale: float) -> None:
    with pytest.raises(ValueError, match="init"):
        build_model("mlp", (1, 8, 8), 10, init=init, init_scale=scale)
