"""Oracle tests for normlab.keras, the Keras 3 layers, on Keras' torch backend.

Oracles: normlab's torch layers (tested against torch.nn and float64 formulas in their own
files) after moving the channels from the Keras axis to dim 1 and converting momentum,
keras.layers.BatchNormalization (with and without renorm), and float64 formulas written here.
Keras variables are torch tensors underneath (``variable.value``), so gradients come from
torch.autograd.
"""

from __future__ import annotations

import importlib
import importlib.abc
import os
import sys
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import normlab as nl

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("normlab.keras is tested on Keras' torch backend", allow_module_level=True)

import normlab.keras as nlk  # noqa: E402

C = 4
SHAPES = {2: (16, C), 3: (6, 5, C), 4: (4, 5, 3, C)}
F64 = {"atol": 1e-10, "rtol": 1e-10}
# Keras' own layer computes in float32 (even for a float64 layer): float64 inputs holding float32
# values, compared at float32's tolerance.
F32 = {"atol": 2e-5, "rtol": 2e-5}
# Keras' torch backend converts variables to numpy (saving, fit) through __array__ without copy=.
KERAS_NUMPY_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword"
)


def make_batch(shape: tuple[int, ...], gen: torch.Generator, axis: int = -1) -> torch.Tensor:
    """float64 batch with per-channel means around 1 and spreads in [0.5, 2.5] along ``axis``."""
    view = [1] * len(shape)
    view[axis] = shape[axis]
    mean = 1.0 + torch.randn(shape[axis], dtype=torch.float64, generator=gen).view(view)
    std = 0.5 + 2.0 * torch.rand(shape[axis], dtype=torch.float64, generator=gen).view(view)
    return mean + std * torch.randn(shape, dtype=torch.float64, generator=gen)


def float32_values(x: torch.Tensor) -> torch.Tensor:
    return x.float().double()


def value(variable) -> torch.Tensor:
    """A Keras variable's current value as a float64 torch tensor."""
    return variable.value.detach().double()


def random_affine(gen: torch.Generator, *pairs) -> None:
    """Give each (keras layer, torch module) pair the same random gamma/weight and beta/bias."""
    layer, _ = pairs[0]
    gamma = 1.0 + 0.5 * torch.randn(layer.gamma.shape, dtype=torch.float64, generator=gen)
    beta = 0.5 * torch.randn(layer.beta.shape, dtype=torch.float64, generator=gen)
    for layer, module in pairs:
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
        if module is not None:
            with torch.no_grad():
                module.weight.copy_(gamma)
                module.bias.copy_(beta)


def grads(outputs: torch.Tensor, inputs: list[torch.Tensor], grad_out: torch.Tensor):
    return torch.autograd.grad(outputs, inputs, grad_out)


def bn_formula(x, axis, stats, eps, gamma=None, beta=None):
    """Batch norm in float64 from the definition: (output, batch mean, biased batch variance)."""
    axis %= x.ndim
    dims = (
        tuple(range(x.ndim)) if stats == "scalar" else tuple(d for d in range(x.ndim) if d != axis)
    )
    mean = x.mean(dims, keepdim=True)
    var = (x - mean).square().mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    view = [x.shape[axis] if d == axis else 1 for d in range(x.ndim)]
    if gamma is not None:
        y = y * gamma.view(view)
    if beta is not None:
        y = y + beta.view(view)
    return y, mean.flatten(), var.flatten()


# 1. BatchNormalization vs normlab.BatchNorm(convention="keras")


@pytest.mark.parametrize("momentum", [0.99, 0.6])
@pytest.mark.parametrize("stats", ["channel", "scalar"])
@pytest.mark.parametrize(("ndim", "axis"), [(2, -1), (3, -1), (4, -1), (3, 1), (4, 1), (4, 2)])
def test_batch_normalization_matches_normlab_batch_norm(ndim, axis, stats, momentum):
    """Training outputs, input/gamma/beta gradients, moving stats and inference outputs, float64."""
    gen = torch.Generator().manual_seed(ndim + 10 * axis + (stats == "scalar"))
    shape = SHAPES[ndim]
    layer = nlk.BatchNormalization(axis=axis, momentum=momentum, stats=stats, dtype="float64")
    layer.build(shape)
    module = nl.BatchNorm(
        shape[axis], stats=stats, convention="keras", momentum=momentum, dtype=torch.float64
    )
    assert (layer.epsilon, layer.momentum) == (module.eps, module.momentum)
    random_affine(gen, (layer, module))
    for _ in range(3):
        x = make_batch(shape, gen, axis).requires_grad_()
        y = layer(x, training=True)
        expected = module(x.movedim(axis, 1)).movedim(1, axis)
        assert_close(y, expected, **F64)
        grad_out = torch.randn(shape, dtype=torch.float64, generator=gen)
        ours = grads(y, [x, layer.gamma.value, layer.beta.value], grad_out)
        theirs = grads(expected, [x, module.weight, module.bias], grad_out)
        for got, want in zip(ours, theirs, strict=True):
            assert_close(got, want, **F64)
        assert layer.moving_mean.shape == module.running_mean.shape
        assert_close(value(layer.moving_mean), module.running_mean, **F64)
        assert_close(value(layer.moving_variance), module.running_var, **F64)
    module.eval()
    x = make_batch(shape, gen, axis)
    with torch.no_grad():
        assert_close(layer(x, training=False), module(x.movedim(axis, 1)).movedim(1, axis), **F64)
        assert_close(layer(x), layer(x, training=False), atol=0, rtol=0)


# 2. stats="channel" vs keras.layers.BatchNormalization


@pytest.mark.parametrize(("center", "scale"), [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize(("ndim", "axis"), [(2, -1), (4, -1), (4, 1)])
def test_channel_stats_match_keras_batch_normalization(ndim, axis, center, scale):
    """Forward in training and inference, moving stats and gradients equal Keras' own layer's."""
    gen = torch.Generator().manual_seed(3 * ndim + axis)
    shape = SHAPES[ndim]
    kwargs = {"axis": axis, "momentum": 0.8, "center": center, "scale": scale, "dtype": "float64"}
    ours = nlk.BatchNormalization(**kwargs)
    theirs = keras.layers.BatchNormalization(**kwargs)
    ours.build(shape)
    theirs.build(shape)
    assert [w.path.split("/")[-1] for w in ours.weights] == [
        w.path.split("/")[-1] for w in theirs.weights
    ]
    for mine, keras_weight in zip(ours.trainable_weights, theirs.trainable_weights, strict=True):
        random = 1.0 + 0.5 * torch.randn(mine.shape, dtype=torch.float64, generator=gen)
        mine.assign(random)
        keras_weight.assign(random)
    params = [w.value for w in ours.trainable_weights]
    keras_params = [w.value for w in theirs.trainable_weights]
    for _ in range(3):
        x = float32_values(make_batch(shape, gen, axis)).requires_grad_()
        y = ours(x, training=True)
        expected = theirs(x, training=True)
        assert_close(y, expected.double(), **F32)
        grad_out = torch.randn(shape, dtype=torch.float64, generator=gen)
        for got, want in zip(
            grads(y, [x, *params], grad_out),
            grads(expected, [x, *keras_params], grad_out),
            strict=True,
        ):
            assert_close(got, want.double(), **F32)
        assert_close(value(ours.moving_mean), value(theirs.moving_mean), **F32)
        assert_close(value(ours.moving_variance), value(theirs.moving_variance), **F32)
    x = float32_values(make_batch(shape, gen, axis))
    with torch.no_grad():
        assert_close(ours(x, training=False), theirs(x, training=False).double(), **F32)


def test_center_and_scale_false_have_no_affine():
    """center=scale=False: no gamma/beta weights and the plain normalized batch, as torch's
    BatchNorm(affine=False) (scalar statistics too)."""
    gen = torch.Generator().manual_seed(7)
    shape = SHAPES[4]
    for stats in ("channel", "scalar"):
        layer = nlk.BatchNormalization(center=False, scale=False, stats=stats, dtype="float64")
        module = nl.BatchNorm(C, stats=stats, convention="keras", affine=False, dtype=torch.float64)
        x = make_batch(shape, gen)
        assert_close(layer(x, training=True), module(x.movedim(-1, 1)).movedim(1, -1), **F64)
        assert [w.path.split("/")[-1] for w in layer.weights] == ["moving_mean", "moving_variance"]


# 3. BatchRenormalization vs normlab.BatchRenorm and keras' renorm=True


def test_batch_renormalization_matches_normlab_batch_renorm():
    """Outputs, gradients, moving stats and step count, through the warm-up schedule, float64."""
    gen = torch.Generator().manual_seed(11)
    shape = SHAPES[4]
    schedule = {"r_max": 1.5, "d_max": 0.5, "warmup_steps": 1, "r_max_steps": 3, "d_max_steps": 4}
    layer = nlk.BatchRenormalization(momentum=0.7, dtype="float64", **schedule)
    layer.build(shape)
    module = nl.BatchRenorm(C, momentum=0.3, eps=1e-3, dtype=torch.float64, **schedule)
    batch_norm = nl.BatchNorm(C, convention="keras", momentum=0.7, dtype=torch.float64)
    random_affine(gen, (layer, module), (layer, batch_norm))
    corrected = False
    for step in range(6):
        # the mean and spread drift between batches, so r and d are clipped
        x = (make_batch(shape, gen) * (1 + step) + step).requires_grad_()
        y = layer(x, training=True)
        expected = module(x.movedim(-1, 1)).movedim(1, -1)
        assert_close(y, expected, **F64)
        plain = batch_norm(x.movedim(-1, 1)).movedim(1, -1)
        corrected |= (y - plain).abs().max().item() > 1e-2
        grad_out = torch.randn(shape, dtype=torch.float64, generator=gen)
        ours = grads(y, [x, layer.gamma.value, layer.beta.value], grad_out)
        theirs = grads(expected, [x, module.weight, module.bias], grad_out)
        for got, want in zip(ours, theirs, strict=True):
            assert_close(got, want, **F64)
        assert_close(value(layer.moving_mean), module.running_mean, **F64)
        assert_close(value(layer.moving_variance), module.running_var, **F64)
        assert int(layer.steps.value) == int(module.num_batches_tracked) == step + 1
    assert corrected, "r and d never changed the output: the test does not exercise renorm"
    module.eval()
    x = make_batch(shape, gen)
    with torch.no_grad():
        assert_close(layer(x, training=False), module(x.movedim(-1, 1)).movedim(1, -1), **F64)


def test_batch_renormalization_matches_keras_renorm():
    """keras.layers.BatchNormalization(renorm=True) with the settings the docstring names."""
    gen = torch.Generator().manual_seed(12)
    shape = SHAPES[3]
    r_max, d_max, momentum, eps = 1.5, 0.5, 0.7, 1e-3
    # Keras' moving stddev starts at sqrt(1); ours is sqrt(moving_variance + epsilon).
    ours = nlk.BatchRenormalization(
        momentum=momentum,
        r_max=r_max,
        d_max=d_max,
        moving_variance_initializer=keras.initializers.Constant(1.0 - eps),
        dtype="float64",
    )
    theirs = keras.layers.BatchNormalization(
        momentum=momentum,
        renorm=True,
        renorm_clipping={"rmin": 1.0 / r_max, "rmax": r_max, "dmax": d_max},
        renorm_momentum=momentum,
        dtype="float64",
    )
    ours.build(shape)
    theirs.build(shape)
    random_affine(gen, (ours, None), (theirs, None))
    tol = {"atol": 1e-4, "rtol": 1e-4}
    for step in range(4):
        x = float32_values(make_batch(shape, gen) * (1 + step) + step).requires_grad_()
        y = ours(x, training=True)
        expected = theirs(x, training=True)
        assert_close(y, expected.double(), **tol)
        grad_out = torch.randn(shape, dtype=torch.float64, generator=gen)
        mine = grads(y, [x, ours.gamma.value, ours.beta.value], grad_out)
        keras_grads = grads(expected, [x, theirs.gamma.value, theirs.beta.value], grad_out)
        for got, want in zip(mine, keras_grads, strict=True):
            assert_close(got, want.double(), **tol)
        assert_close(value(ours.moving_mean), value(theirs.moving_mean), **tol)
        assert_close(value(ours.moving_variance), value(theirs.moving_variance), **tol)
    x = float32_values(make_batch(shape, gen))
    with torch.no_grad():
        assert_close(ours(x, training=False), theirs(x, training=False).double(), **tol)


# 4. SwitchableNormalization vs normlab.SwitchableNorm


@pytest.mark.parametrize(("ndim", "axis"), [(2, -1), (3, -1), (4, -1), (4, 1)])
def test_switchable_normalization_matches_normlab_switchable_norm(ndim, axis):
    """Outputs and gradients (input, gamma, beta, both logits) in training, the moving mean,
    the moving (biased) variance against a float64 formula, and inference outputs."""
    gen = torch.Generator().manual_seed(20 + ndim + axis)
    shape = SHAPES[ndim]
    channels = shape[axis]
    momentum = 0.7
    layer = nlk.SwitchableNormalization(axis=axis, momentum=momentum, dtype="float64")
    layer.build(shape)
    module = nl.SwitchableNorm(channels, momentum=1.0 - momentum, eps=1e-3, dtype=torch.float64)
    random_affine(gen, (layer, module))
    for name in ("mean_logits", "var_logits"):
        logits = torch.randn(3, dtype=torch.float64, generator=gen)
        getattr(layer, name).assign(logits)
        with torch.no_grad():
            getattr(module, name).copy_(logits)
    params = [layer.gamma, layer.beta, layer.mean_logits, layer.var_logits]
    module_params = [module.weight, module.bias, module.mean_logits, module.var_logits]
    moving_var = torch.ones(channels, dtype=torch.float64)
    for _ in range(3):
        x = make_batch(shape, gen, axis).requires_grad_()
        y = layer(x, training=True)
        expected = module(x.movedim(axis, 1)).movedim(1, axis)
        assert_close(y, expected, **F64)
        grad_out = torch.randn(shape, dtype=torch.float64, generator=gen)
        ours = grads(y, [x, *(p.value for p in params)], grad_out)
        for got, want in zip(ours, grads(expected, [x, *module_params], grad_out), strict=True):
            assert_close(got, want, **F64)
        _, _, batch_var = bn_formula(x.detach(), axis, "channel", 1e-3)
        moving_var = momentum * moving_var + (1 - momentum) * batch_var
        assert_close(value(layer.moving_mean), module.running_mean, **F64)
        assert_close(value(layer.moving_variance), moving_var, **F64)
    module.eval()
    with torch.no_grad():  # torch's running_var is unbiased: give it the Keras layer's
        module.running_var.copy_(value(layer.moving_variance))
    x = make_batch(shape, gen, axis)
    with torch.no_grad():
        assert_close(layer(x, training=False), module(x.movedim(axis, 1)).movedim(1, axis), **F64)


# 5. Weight standardization vs normlab.WSConv2d / WSLinear


@pytest.mark.parametrize(("groups", "strides"), [(1, 1), (2, (2, 1))])
def test_weight_standardized_conv2d_matches_wsconv2d(groups, strides):
    """Outputs and input/kernel/bias gradients; Keras kernel (kh, kw, in, out) = torch
    weight (out, in, kh, kw) permuted."""
    gen = torch.Generator().manual_seed(30 + groups)
    x = make_batch((2, 7, 6, 4), gen).requires_grad_()
    layer = nlk.WeightStandardizedConv2D(
        6, (3, 2), strides=strides, groups=groups, epsilon=1e-4, dtype="float64"
    )
    module = nl.WSConv2d(4, 6, (3, 2), stride=strides, groups=groups, eps=1e-4, dtype=torch.float64)
    layer.build(x.shape)
    bias = torch.randn(6, dtype=torch.float64, generator=gen)
    layer.kernel.assign(module.weight.detach().permute(2, 3, 1, 0))
    layer.bias.assign(bias)
    with torch.no_grad():
        module.bias.copy_(bias)
    y = layer(x)
    expected = module(x.movedim(-1, 1)).movedim(1, -1)
    assert_close(y, expected, **F64)
    grad_out = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    got_x, got_kernel, got_bias = grads(y, [x, layer.kernel.value, layer.bias.value], grad_out)
    want_x, want_weight, want_bias = grads(expected, [x, module.weight, module.bias], grad_out)
    assert_close(got_x, want_x, **F64)
    assert_close(got_kernel, want_weight.permute(2, 3, 1, 0), **F64)
    assert_close(got_bias, want_bias, **F64)


def test_weight_standardized_dense_matches_wslinear():
    """Rank-3 input: outputs and gradients; Keras kernel (in, out) = torch weight (out, in).T."""
    gen = torch.Generator().manual_seed(31)
    x = make_batch((3, 5, 4), gen).requires_grad_()
    layer = nlk.WeightStandardizedDense(6, dtype="float64")
    module = nl.WSLinear(4, 6, dtype=torch.float64)
    layer.build(x.shape)
    layer.kernel.assign(module.weight.detach().T)
    layer.bias.assign(module.bias.detach())
    y = layer(x)
    expected = module(x)
    # keras.ops.matmul computes float64 in float32 on the torch backend (as keras' own Dense)
    assert_close(y, expected, **F32)
    grad_out = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    got = grads(y, [x, layer.kernel.value, layer.bias.value], grad_out)
    want = grads(expected, [x, module.weight, module.bias], grad_out)
    assert_close(got[0], want[0], **F32)
    assert_close(got[1], want[1].T, **F32)
    assert_close(got[2], want[2], **F32)


# 6. Stability: float32 input with a large mean


def _switchable_formula(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Channels-last switchable norm with equal weights, from the definitions:
    (output, biased BN variance). Rank-2 input mixes LN and BN only."""
    terms = [tuple(range(1, x.ndim)), tuple(range(x.ndim - 1))]  # LN, BN
    if x.ndim > 2:
        terms.append(tuple(range(1, x.ndim - 1)))  # IN
    stats = []
    for dims in terms:
        mean = x.mean(dims, keepdim=True)
        stats.append((mean, (x - mean).square().mean(dims, keepdim=True)))
    mean = sum(m for m, _ in stats) / len(terms)
    var = sum(v for _, v in stats) / len(terms)
    return (x - mean) / torch.sqrt(var + eps), stats[1][1].flatten()


@pytest.mark.parametrize("shape", [(256, 64), (16, 12, 12, 8)], ids=["2d", "4d"])
@pytest.mark.parametrize("kind", ["channel", "scalar", "renorm", "switch"])
def test_float32_statistics_are_stable_for_large_means(kind, shape):
    """1e4 + N(0, 1) in float32: outputs within 1e-2, moving variance within 1e-3 (relative) of
    float64, as normlab's torch layers. Keras' own layer, with ops.moments' E[x^2] - E[x]^2, is
    off by far more on the same batch."""
    gen = torch.Generator().manual_seed(2024)
    x = (1e4 + torch.randn(shape, generator=gen, dtype=torch.float64)).float()
    x64 = x.double()
    # momentum 0: the moving statistics become this batch's statistics
    if kind == "switch":
        layer = nlk.SwitchableNormalization(momentum=0.0)
        expected, var = _switchable_formula(x64, layer.epsilon)
    elif kind == "renorm":
        layer = nlk.BatchRenormalization(momentum=0.0)
        # The first step pulls toward the initial moving statistics (r, d clipped) and sets
        # them to the batch's; on the second step r = 1, d = 0: batch norm.
        layer(x, training=True)
        expected, _, var = bn_formula(x64, -1, "channel", layer.epsilon)
    else:
        layer = nlk.BatchNormalization(momentum=0.0, stats=kind)
        expected, _, var = bn_formula(x64, -1, kind, layer.epsilon)
    y = layer(x, training=True)
    assert y.dtype == torch.float32
    assert_close(y.double(), expected, atol=1e-2, rtol=0)
    assert_close(value(layer.moving_variance), var, atol=0, rtol=1e-3)
    keras_layer = keras.layers.BatchNormalization(momentum=0.0)
    keras_layer(x, training=True)
    _, _, channel_var = bn_formula(x64, -1, "channel", 1e-3)
    assert (value(keras_layer.moving_variance) - channel_var).abs().max() > 0.1


def test_half_precision_input_keeps_float32_statistics():
    """mixed_bfloat16: bfloat16 output, float32 moving statistics equal to the float64 formula
    on the bfloat16 values (a bfloat16 computation would be off by about 1e-2)."""
    gen = torch.Generator().manual_seed(5)
    x = (10 + make_batch(SHAPES[4], gen)).bfloat16()
    layer = nlk.BatchNormalization(momentum=0.0, dtype="mixed_bfloat16")
    y = layer(x, training=True)
    assert y.dtype == torch.bfloat16
    assert layer.moving_mean.dtype == "float32"
    _, mean, var = bn_formula(x.double(), -1, "channel", layer.epsilon)
    assert_close(value(layer.moving_mean), mean, atol=0, rtol=1e-6)
    assert_close(value(layer.moving_variance), var, atol=0, rtol=1e-5)


# 7. Modes: training, inference, trainable=False


def _trained(kind: str):
    """A float64 layer of ``kind`` with moving statistics moved off their initial values."""
    layer = {
        "channel": lambda: nlk.BatchNormalization(momentum=0.5, dtype="float64"),
        "scalar": lambda: nlk.BatchNormalization(momentum=0.5, stats="scalar", dtype="float64"),
        "renorm": lambda: nlk.BatchRenormalization(momentum=0.5, dtype="float64"),
        "switch": lambda: nlk.SwitchableNormalization(momentum=0.5, dtype="float64"),
    }[kind]()
    layer(make_batch(SHAPES[3], torch.Generator().manual_seed(40)), training=True)
    return layer


@pytest.mark.parametrize("kind", ["channel", "scalar", "renorm", "switch"])
def test_trainable_false_means_inference_mode(kind):
    """trainable=False: training=True normalizes with the moving statistics and changes no state."""
    layer = _trained(kind)
    layer.trainable = False
    state = [value(w).clone() for w in layer.weights]
    x = make_batch(SHAPES[3], torch.Generator().manual_seed(41))
    y = layer(x, training=True)
    assert_close(y, layer(x, training=False), atol=0, rtol=0)
    for before, weight in zip(state, layer.weights, strict=True):
        assert_close(value(weight), before, atol=0, rtol=0)
    if kind in ("channel", "scalar"):
        mean, var = value(layer.moving_mean), value(layer.moving_variance)
        expected = (x - mean) / torch.sqrt(var + layer.epsilon)
        assert_close(y, expected * value(layer.gamma) + value(layer.beta), **F64)


@pytest.mark.parametrize("kind", ["channel", "scalar", "renorm", "switch"])
def test_inference_output_of_a_sample_does_not_depend_on_the_batch(kind):
    """training=False (and the default training=None) use the moving statistics only."""
    layer = _trained(kind)
    x = make_batch(SHAPES[3], torch.Generator().manual_seed(42))
    with torch.no_grad():
        whole = layer(x)
        assert_close(layer(x, training=False), whole, atol=0, rtol=0)
        assert_close(layer(x[:1], training=False), whole[:1], **F64)


@KERAS_NUMPY_WARNING
@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_fit_updates_and_trainable_false_freezes_the_moving_statistics():
    """model.fit() runs the layer in training mode; a frozen layer keeps its state in fit()."""
    gen = torch.Generator().manual_seed(43)
    x = make_batch(SHAPES[3], gen).float().numpy()
    target = torch.randn(SHAPES[3], generator=gen).numpy()
    layer = nlk.BatchNormalization(momentum=0.5)
    model = keras.Sequential([keras.Input(SHAPES[3][1:]), layer])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
    model.fit(x, target, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    _, mean, var = bn_formula(torch.from_numpy(x).double(), -1, "channel", layer.epsilon)
    assert_close(value(layer.moving_mean), 0.5 * mean, **F32)
    assert_close(value(layer.moving_variance), 0.5 + 0.5 * var, **F32)
    layer.trainable = False
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
    model.fit(x, target, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert_close(value(layer.moving_mean), 0.5 * mean, **F32)


# 8. Masks


@pytest.mark.parametrize(
    ("stats", "axis"), [("channel", -1), ("channel", 1), ("scalar", -1), ("scalar", 1)]
)
def test_mask_excludes_positions_from_batch_statistics(stats, axis):
    """Masked-out positions do not count in the mean and variance (float64 formula on the kept
    values). As in Keras, the mask has the input's shape without its last axis and is broadcast
    over that axis, whatever the channel axis; channel statistics also equal Keras' layer."""
    gen = torch.Generator().manual_seed(50)
    shape = (5, 6, C) if axis == -1 else (5, C, 6)
    x = make_batch(shape, gen, axis)
    mask = torch.rand(shape[:-1], generator=gen) > 0.3
    layer = nlk.BatchNormalization(axis=axis, stats=stats, momentum=0.0, dtype="float64")
    y = layer(x, training=True, mask=mask)
    weights = mask[..., None].expand(shape).double()
    dims = (0, 1, 2) if stats == "scalar" else tuple(d for d in range(3) if d != axis % 3)
    count = weights.sum(dims, keepdim=True)
    mean = (x * weights).sum(dims, keepdim=True) / count
    var = ((x - mean).square() * weights).sum(dims, keepdim=True) / count
    assert_close(value(layer.moving_mean), mean.flatten(), **F64)
    assert_close(value(layer.moving_variance), var.flatten(), **F64)
    assert_close(y, (x - mean) / torch.sqrt(var + layer.epsilon), **F64)
    if stats == "channel":
        keras_layer = keras.layers.BatchNormalization(axis=axis, momentum=0.0, dtype="float64")
        expected = keras_layer(float32_values(x), training=True, mask=mask)
        assert_close(layer(float32_values(x), training=True, mask=mask), expected.double(), **F32)


# 9. Serialization


LAYERS = {
    "channel": (lambda: nlk.BatchNormalization(momentum=0.5, epsilon=1e-2), (6, 5, C)),
    "scalar": (lambda: nlk.BatchNormalization(axis=1, momentum=0.5, stats="scalar"), (C, 5, 3)),
    "renorm": (
        lambda: nlk.BatchRenormalization(
            momentum=0.5, r_max=1.5, d_max=0.5, warmup_steps=1, r_max_steps=3, d_max_steps=2
        ),
        (6, 5, C),
    ),
    "switch": (lambda: nlk.SwitchableNormalization(momentum=0.5, center=False), (6, 5, C)),
    "ws-conv": (
        lambda: nlk.WeightStandardizedConv2D(5, 3, padding="same", epsilon=1e-4),
        (6, 5, C),
    ),
    "ws-dense": (lambda: nlk.WeightStandardizedDense(5, activation="relu"), (6, C)),
}


@KERAS_NUMPY_WARNING
@pytest.mark.parametrize("kind", list(LAYERS))
def test_model_saves_to_keras_file_and_loads_with_identical_outputs(kind, tmp_path):
    """A Sequential with the layer, trained a few steps, round-trips through a .keras file
    (no custom_objects: the classes are registered) and through get_config/from_config."""
    make_layer, input_shape = LAYERS[kind]
    layer = make_layer()
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    model = keras.Sequential([keras.Input(input_shape), layer])
    gen = torch.Generator().manual_seed(60)
    for weight in layer.trainable_weights:
        weight.assign(1.0 + 0.3 * torch.randn(weight.shape, generator=gen))
    batch = (8, *input_shape)
    for _ in range(2):
        model(make_batch(batch, gen).float(), training=True)
    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_layer = loaded.layers[0]
    assert type(loaded_layer) is type(layer)
    assert loaded_layer.get_config() == layer.get_config()
    for saved, restored in zip(layer.weights, loaded_layer.weights, strict=True):
        assert saved.path.split("/")[-1] == restored.path.split("/")[-1]
        assert_close(value(restored), value(saved), atol=0, rtol=0)
    x = make_batch(batch, gen).float()
    with torch.no_grad():
        assert_close(loaded(x, training=False), model(x, training=False), atol=0, rtol=0)
        assert_close(loaded(x, training=True), model(x, training=True), atol=0, rtol=0)


# 10. Errors


def test_unknown_stats_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="stats must be one of 'channel', 'scalar'; got 'chanel'"):
        nlk.BatchNormalization(stats="chanel")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: nlk.BatchNormalization(momentum=1.5), "momentum must be in"),
        (lambda: nlk.BatchNormalization(epsilon=0.0), "epsilon must be positive"),
        (lambda: nlk.SwitchableNormalization(momentum=-0.1), "momentum must be in"),
        (lambda: nlk.BatchRenormalization(r_max=0.5), "r_max >= 1"),
        (lambda: nlk.BatchRenormalization(warmup_steps=-1), "must be >= 0"),
        (lambda: nlk.WeightStandardizedDense(3, epsilon=-1.0), "epsilon must be positive"),
    ],
    ids=["momentum", "epsilon", "switch-momentum", "r_max", "steps", "ws-epsilon"],
)
def test_bad_arguments_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", [nlk.BatchNormalization, nlk.SwitchableNormalization])
def test_input_that_does_not_fit_the_built_layer_is_refused(cls):
    """Wrong rank or channel count after build, rank-1 input, and an axis out of range."""
    layer = cls()
    layer(torch.randn(SHAPES[4]))
    with pytest.raises(ValueError, match="expected ndim=4, found ndim=3"):
        layer(torch.randn(SHAPES[3]))
    with pytest.raises(ValueError, match=f"expected axis -1 of input shape to have value {C}"):
        layer(torch.randn(4, 5, 3, C + 1))
    with pytest.raises(ValueError, match="rank 2 or more"):
        cls()(torch.randn(C))
    with pytest.raises(ValueError, match=r"axis=3, out of range for rank-3 input"):
        cls(axis=3)(torch.randn(SHAPES[3]))


def test_switchable_normalization_refuses_the_batch_axis_as_channels():
    with pytest.raises(ValueError, match="batch on axis 0"):
        nlk.SwitchableNormalization(axis=0)(torch.randn(SHAPES[3]))


@pytest.mark.parametrize("kind", ["channel", "renorm", "switch"])
def test_training_with_one_value_per_statistic_raises_and_changes_nothing(kind):
    layer = _trained(kind)
    state = [value(w).clone() for w in layer.weights]
    with pytest.raises(ValueError, match="needs more than one value per statistic"):
        layer(torch.randn(1, 1, C, dtype=torch.float64), training=True)
    for before, weight in zip(state, layer.weights, strict=True):
        assert_close(value(weight), before, atol=0, rtol=0)


def test_scalar_statistics_accept_a_single_sample():
    """One sample of C channels is C values for one scalar statistic: allowed."""
    layer = nlk.BatchNormalization(stats="scalar", dtype="float64")
    x = torch.randn(1, C, dtype=torch.float64)
    expected, _, _ = bn_formula(x, -1, "scalar", layer.epsilon)
    assert_close(layer(x, training=True), expected, **F64)


def test_mask_of_the_wrong_rank_is_refused():
    layer = nlk.BatchNormalization()
    with pytest.raises(ValueError, match="one dimension less"):
        layer(torch.randn(SHAPES[3]), training=True, mask=torch.ones(SHAPES[3], dtype=torch.bool))


class _BackendMissing(importlib.abc.MetaPathFinder):
    """Makes ``import keras`` fail as it does when its backend (TensorFlow by default) is absent."""

    def find_spec(self, name, path, target=None):
        if name == "keras":
            raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
        return None


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing", 'needs Keras 3, which is not installed.*pip install "normlab\\[keras\\]"'),
        ("keras-2", 'found Keras 2.15.0.*pip install "normlab\\[keras\\]"'),
        ("no-backend", "tensorflow is not installed.*KERAS_BACKEND=torch"),
    ],
)
def test_import_without_a_usable_keras_3_names_the_fix(monkeypatch, case, match):
    for name in [m for m in sys.modules if m == "normlab.keras" or m.startswith("normlab.keras.")]:
        monkeypatch.delitem(sys.modules, name)
    if case == "missing":
        monkeypatch.setitem(sys.modules, "keras", None)
    elif case == "keras-2":
        fake = types.ModuleType("keras")
        fake.__version__ = "2.15.0"
        monkeypatch.setitem(sys.modules, "keras", fake)
    else:
        monkeypatch.delitem(sys.modules, "keras")
        monkeypatch.setattr(sys, "meta_path", [_BackendMissing(), *sys.meta_path])
    with pytest.raises(ImportError, match=match):
        importlib.import_module("normlab.keras")


# 11. Properties


@settings(max_examples=25, deadline=None)
@given(
    dims=st.lists(st.integers(2, 4), min_size=2, max_size=4),
    axis_index=st.integers(0, 3),
    negative=st.booleans(),
    stats=st.sampled_from(["channel", "scalar"]),
    seed=st.integers(0, 2**16),
)
def test_any_shape_and_axis_matches_the_formula(dims, axis_index, negative, stats, seed):
    """Rank 2-4, any axis (negative or not): output shape, training output and moving stats."""
    axis = axis_index % len(dims)
    if negative:
        axis -= len(dims)
    gen = torch.Generator().manual_seed(seed)
    x = make_batch(tuple(dims), gen, axis)
    layer = nlk.BatchNormalization(axis=axis, momentum=0.0, stats=stats, dtype="float64")
    layer.build(x.shape)
    gamma = 1.0 + torch.rand(dims[axis], dtype=torch.float64, generator=gen)
    beta = torch.randn(dims[axis], dtype=torch.float64, generator=gen)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    y = layer(x, training=True)
    expected, mean, var = bn_formula(x, axis, stats, layer.epsilon, gamma, beta)
    assert tuple(layer.compute_output_shape(x.shape)) == tuple(x.shape)
    assert_close(y, expected, **F64)
    assert_close(value(layer.moving_mean), mean, **F64)
    assert_close(value(layer.moving_variance), var, **F64)
