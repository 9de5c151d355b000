"""Oracle tests for batch norm: nl.BatchNorm ("bn", "bn-scalar") and nl.SyncBatchNorm ("sync-bn").

Oracles are torch.nn.BatchNorm1d/2d/3d, keras.layers.BatchNormalization on the torch backend,
and float64 formulas written in this file; never normlab code.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

import normlab as nl

os.environ.setdefault("KERAS_BACKEND", "torch")

C = 6
SHAPES = {2: (32, C), 3: (8, C, 5), 4: (4, C, 5, 3), 5: (2, C, 3, 4, 2)}
TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
DTYPES = [torch.float64, torch.float32, torch.bfloat16]
MEMORY_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}

# normlab vs torch.nn on the same input: same arithmetic up to reduction order.
TORCH_TOL = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
}
# normlab vs a float64 formula evaluated on the same (rounded) input values.
FORMULA_TOL = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 2e-5, "rtol": 2e-5},
    torch.bfloat16: {"atol": 5e-2, "rtol": 2e-2},
}


@pytest.fixture(scope="module")
def keras():
    """Keras 3 on the torch backend, or skip."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("the Keras oracle needs KERAS_BACKEND=torch")
    return keras


def param_dtype(dtype: torch.dtype) -> torch.dtype:
    """Parameter dtype used with an input dtype: bf16 input runs with float32 parameters (AMP)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def make_batch(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    gen: torch.Generator,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """A batch with per-channel means around 1 and spreads around 2 (not a standard normal)."""
    channels = shape[1]
    view = (1, channels) + (1,) * (len(shape) - 2)
    mean = 1.0 + torch.randn(channels, dtype=torch.float64, generator=gen).view(view)
    std = 0.5 + 2.0 * torch.rand(channels, dtype=torch.float64, generator=gen).view(view)
    x = mean + std * torch.randn(shape, dtype=torch.float64, generator=gen)
    return x.to(dtype).contiguous(memory_format=memory_format)


def randomize_affine(gen: torch.Generator, *modules: nn.Module) -> None:
    """Copy the same random weight and bias into every module."""
    weight = 1.0 + 0.5 * torch.randn(modules[0].weight.shape, generator=gen, dtype=torch.float64)
    bias = 0.5 * torch.randn(modules[0].bias.shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        for module in modules:
            module.weight.copy_(weight)
            module.bias.copy_(bias)


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a (C,) tensor to broadcast along dim 1 of an ndim-D input."""
    return t.view((1, -1) + (1,) * (ndim - 2))


# 1. stats="channel", torch convention vs torch.nn.BatchNorm1d/2d/3d


@pytest.mark.parametrize("track_running_stats", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ndim", [2, 3, 4, 5])
def test_channel_stats_match_torch_batchnorm_over_training_steps_and_eval(
    ndim, dtype, momentum, affine, track_running_stats
):
    """Outputs, all gradients, running stats and eval outputs equal torch.nn.BatchNorm*d's."""
    gen = torch.Generator().manual_seed(ndim * 100 + DTYPES.index(dtype))
    options = {
        "momentum": momentum,
        "affine": affine,
        "track_running_stats": track_running_stats,
        "dtype": param_dtype(dtype),
    }
    ours = nl.BatchNorm(C, **options)
    ref = TORCH_BN[ndim](C, **options)
    if affine:
        randomize_affine(gen, ours, ref)
    tol = TORCH_TOL[dtype]
    for _ in range(3):
        x = make_batch(SHAPES[ndim], dtype, gen)
        x_ours = x.clone().requires_grad_()
        x_ref = x.clone().requires_grad_()
        y_ours, y_ref = ours(x_ours), ref(x_ref)
        assert y_ours.dtype == dtype
        assert_close(y_ours, y_ref, **tol)
        grad = torch.randn(y_ref.shape, generator=gen, dtype=torch.float64).to(dtype)
        y_ours.backward(grad)
        y_ref.backward(grad)
        assert_close(x_ours.grad, x_ref.grad, **tol)
        if affine:
            assert_close(ours.weight.grad, ref.weight.grad, **tol)
            assert_close(ours.bias.grad, ref.bias.grad, **tol)
            ours.zero_grad()
            ref.zero_grad()
    if track_running_stats:
        assert_close(ours.running_mean, ref.running_mean, **tol)
        assert_close(ours.running_var, ref.running_var, **tol)
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 3
    else:
        assert ours.running_mean is None
        assert ours.running_var is None
        assert ours.num_batches_tracked is None
    ours.eval()
    ref.eval()
    x = make_batch(SHAPES[ndim], dtype, gen)
    with torch.no_grad():
        assert_close(ours(x), ref(x), **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ndim", [4, 5])
def test_channels_last_input_matches_torch_and_stays_channels_last(ndim, dtype):
    """channels_last input: same values as torch, and the output keeps the memory format."""
    gen = torch.Generator().manual_seed(7 + ndim)
    memory_format = MEMORY_FORMATS[ndim]
    ours = nl.BatchNorm(C, dtype=param_dtype(dtype))
    ref = TORCH_BN[ndim](C, dtype=param_dtype(dtype))
    randomize_affine(gen, ours, ref)
    tol = TORCH_TOL[dtype]
    for _ in range(3):
        x = make_batch(SHAPES[ndim], dtype, gen, memory_format)
        x_ours = x.clone().requires_grad_()
        x_ref = x.clone().requires_grad_()
        y_ours, y_ref = ours(x_ours), ref(x_ref)
        assert y_ref.is_contiguous(memory_format=memory_format)
        assert y_ours.is_contiguous(memory_format=memory_format)
        assert_close(y_ours, y_ref, **tol)
        grad = torch.randn(y_ref.shape, generator=gen).to(dtype)
        y_ours.backward(grad)
        y_ref.backward(grad)
        assert_close(x_ours.grad, x_ref.grad, **tol)
    assert_close(ours.running_mean, ref.running_mean, **tol)
    assert_close(ours.running_var, ref.running_var, **tol)
    ours.eval()
    ref.eval()
    x = make_batch(SHAPES[ndim], dtype, gen, memory_format)
    with torch.no_grad():
        y_ours = ours(x)
        assert y_ours.is_contiguous(memory_format=memory_format)
        assert_close(y_ours, ref(x), **tol)


def test_bfloat16_parameters_and_buffers_match_torch():
    """A module built with dtype=bfloat16 trains and evaluates like torch's bf16 BatchNorm2d."""
    gen = torch.Generator().manual_seed(11)
    ours = nl.BatchNorm(C, dtype=torch.bfloat16)
    ref = nn.BatchNorm2d(C, dtype=torch.bfloat16)
    randomize_affine(gen, ours, ref)
    tol = TORCH_TOL[torch.bfloat16]
    for _ in range(3):
        x = make_batch(SHAPES[4], torch.bfloat16, gen)
        y_ours, y_ref = ours(x), ref(x)
        assert y_ours.dtype == torch.bfloat16
        assert_close(y_ours, y_ref, **tol)
    assert ours.running_var.dtype == torch.bfloat16
    assert_close(ours.running_mean, ref.running_mean, **tol)
    assert_close(ours.running_var, ref.running_var, **tol)
    ours.eval()
    ref.eval()
    x = make_batch(SHAPES[4], torch.bfloat16, gen)
    assert_close(ours(x), ref(x), **tol)


def test_bn_kind_builds_channel_batch_norm_like_torch():
    """make_norm("bn", C) is per-channel batch norm with torch's defaults."""
    gen = torch.Generator().manual_seed(3)
    ours = nl.make_norm("bn", C)
    ref = nn.BatchNorm2d(C)
    x = make_batch(SHAPES[4], torch.float32, gen)
    assert_close(ours(x), ref(x), **TORCH_TOL[torch.float32])
    assert_close(ours.running_var, ref.running_var, **TORCH_TOL[torch.float32])
    assert set(ours.state_dict()) == set(ref.state_dict())


# 2. state_dict interchange with torch.nn.BatchNorm*d


def train_steps(module: nn.Module, ndim: int, gen: torch.Generator, steps: int = 3) -> None:
    """Run a few training steps (forward only: the running statistics move)."""
    module.train()
    for _ in range(steps):
        module(make_batch(SHAPES[ndim], torch.float32, gen))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("ndim", [2, 3, 4, 5])
@pytest.mark.parametrize("direction", ["torch_to_normlab", "normlab_to_torch"])
def test_state_dict_interchanges_strictly_with_torch(direction, ndim, affine):
    """A trained state_dict loads strictly in the other library and gives the same eval outputs."""
    gen = torch.Generator().manual_seed(ndim + 20 * affine)
    ours = nl.BatchNorm(C, affine=affine)
    ref = TORCH_BN[ndim](C, affine=affine)
    source, target = (ref, ours) if direction == "torch_to_normlab" else (ours, ref)
    if affine:
        randomize_affine(gen, source)
    train_steps(source, ndim, gen)
    target.load_state_dict(source.state_dict(), strict=True)
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert target.num_batches_tracked.item() == 3
    source.eval()
    target.eval()
    x = make_batch(SHAPES[ndim], torch.float32, gen)
    with torch.no_grad():
        assert_close(target(x), source(x), **TORCH_TOL[torch.float32])


def test_scalar_stats_state_dict_has_torch_names_and_one_statistic():
    """bn-scalar keeps torch's parameter/buffer names; the running stats have shape (1,)."""
    state = nl.make_norm("bn-scalar", C).state_dict()
    assert set(state) == set(nn.BatchNorm2d(C).state_dict())
    assert state["running_mean"].shape == state["running_var"].shape == (1,)
    assert state["weight"].shape == state["bias"].shape == (C,)


# 3. convention="keras" vs keras.layers.BatchNormalization (torch backend)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", ["default", 0.9])
@pytest.mark.parametrize("ndim", [2, 4])
def test_keras_convention_matches_keras_batchnormalization(keras, ndim, momentum, affine):
    """Training outputs, gradients, moving stats and inference outputs equal Keras' layer's.

    Keras 3 on the torch backend computes in float32 even for a float64 layer (its result_type
    maps float64 to float32), so the inputs are float32 values and the tolerance is float32's.
    """
    gen = torch.Generator().manual_seed(ndim + 10 * affine)
    kwargs = {} if momentum == "default" else {"momentum": momentum}
    shape = SHAPES[ndim]
    layer = keras.layers.BatchNormalization(
        axis=1, center=affine, scale=affine, dtype="float64", **kwargs
    )
    layer.build(shape)
    ours = nl.BatchNorm(C, convention="keras", affine=affine, dtype=torch.float64, **kwargs)
    assert ours.momentum == layer.momentum
    assert ours.eps == layer.epsilon
    if affine:
        randomize_affine(gen, ours)
        layer.gamma.assign(ours.weight.detach().numpy())
        layer.beta.assign(ours.bias.detach().numpy())
    tol = {"atol": 2e-5, "rtol": 2e-5}
    for _ in range(4):
        x = make_batch(shape, torch.float32, gen).double()
        x_ours = x.clone().requires_grad_()
        x_keras = x.clone().requires_grad_()
        y_ours = ours(x_ours)
        y_keras = layer(x_keras, training=True)
        assert_close(y_ours, y_keras.double(), **tol)
        grad = torch.randn(shape, generator=gen, dtype=torch.float64)
        y_ours.backward(grad)
        y_keras.backward(grad)
        assert_close(x_ours.grad, x_keras.grad.double(), **tol)
        if affine:
            assert_close(ours.weight.grad, layer.gamma.value.grad.double(), **tol)
            assert_close(ours.bias.grad, layer.beta.value.grad.double(), **tol)
            ours.zero_grad()
            layer.gamma.value.grad = None
            layer.beta.value.grad = None
        assert_close(ours.running_mean, layer.moving_mean.value.detach(), **tol)
        assert_close(ours.running_var, layer.moving_variance.value.detach(), **tol)
    ours.eval()
    x = make_batch(shape, torch.float32, gen).double()
    with torch.no_grad():
        assert_close(ours(x), layer(x, training=False).double(), **tol)


# 4. stats="scalar" (and "channel") vs a float64 formula


def reference_batch_norm(x64, weight64, bias64, eps, stats="scalar"):
    """Training-mode batch norm in float64: returns (y, batch mean, biased batch var).

    stats="scalar": one mean and variance over every element; "channel": one per channel over
    N and the spatial dims. The affine is per channel in both cases.
    """
    dims = tuple(range(x64.ndim)) if stats == "scalar" else (0, *range(2, x64.ndim))
    mean = x64.mean(dims, keepdim=True)
    var = (x64 - mean).square().mean(dims, keepdim=True)
    y = (x64 - mean) / torch.sqrt(var + eps)
    if weight64 is not None:
        y = y * channel_view(weight64, x64.ndim) + channel_view(bias64, x64.ndim)
    return y, mean.detach().flatten(), var.detach().flatten()


def reference_eval(x64, running_mean, running_var, weight64, bias64, eps):
    """Eval-mode batch norm in float64 with (C,) or (1,) running statistics."""
    mean = channel_view(running_mean, x64.ndim)
    var = channel_view(running_var, x64.ndim)
    y = (x64 - mean) / torch.sqrt(var + eps)
    if weight64 is not None:
        y = y * channel_view(weight64, x64.ndim) + channel_view(bias64, x64.ndim)
    return y


def initial_running_stats(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(size, dtype=torch.float64), torch.ones(size, dtype=torch.float64)


def updated_running_stats(running, batch_mean, batch_var, count, convention, momentum, step):
    """The running (mean, var) after one batch, from the convention table in DESIGN.md.

    count is the number of values behind each statistic (numel for scalar stats).
    """
    mean, var = running
    if convention == "torch":
        m = 1.0 / step if momentum is None else momentum
        unbiased = batch_var * count / (count - 1)
        return (1 - m) * mean + m * batch_mean, (1 - m) * var + m * unbiased
    keep = momentum
    return keep * mean + (1 - keep) * batch_mean, keep * var + (1 - keep) * batch_var


LAYOUTS = {
    "2d": (SHAPES[2], torch.contiguous_format),
    "3d": (SHAPES[3], torch.contiguous_format),
    "4d": (SHAPES[4], torch.contiguous_format),
    "4d-channels-last": (SHAPES[4], torch.channels_last),
    "5d-channels-last": (SHAPES[5], torch.channels_last_3d),
}
CONVENTION_MOMENTA = [
    ("torch", 0.1),
    ("torch", 0.3),
    ("torch", None),
    ("keras", 0.99),
    ("keras", 0.9),
]


@pytest.mark.parametrize(("convention", "momentum"), CONVENTION_MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["bn-scalar", "bn"])
def test_training_and_eval_match_float64_formula(kind, layout, dtype, convention, momentum):
    """Outputs, input/weight/bias gradients, running stats and eval outputs equal the formula.

    bn-scalar: one statistic over all elements, shape (1,); bn: per channel, shape (C,). The
    running variance is unbiased (n - 1) in the torch convention and biased in Keras'.
    """
    stats = "scalar" if kind == "bn-scalar" else "channel"
    shape, memory_format = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(len(shape) + 10 * DTYPES.index(dtype))
    options = {"convention": convention, "dtype": param_dtype(dtype)}
    if convention == "torch" or momentum != 0.99:  # Keras' 0.99 is the default: do not pass it
        options["momentum"] = momentum
    ours = nl.make_norm(kind, C, **options)
    eps = 1e-5 if convention == "torch" else 1e-3
    assert ours.eps == eps
    randomize_affine(gen, ours)
    weight64 = ours.weight.detach().double().requires_grad_()
    bias64 = ours.bias.detach().double().requires_grad_()
    tol = FORMULA_TOL[dtype]
    stat_tol = FORMULA_TOL[param_dtype(dtype)]
    stat_size = 1 if stats == "scalar" else C
    running = initial_running_stats(stat_size)
    numel = torch.Size(shape).numel()
    count = numel if stats == "scalar" else numel // C  # values behind each statistic
    for step in range(1, 4):
        x = make_batch(shape, dtype, gen, memory_format).requires_grad_()
        x64 = x.detach().double().requires_grad_()
        y = ours(x)
        y_ref, batch_mean, batch_var = reference_batch_norm(x64, weight64, bias64, eps, stats)
        assert y.dtype == dtype
        assert y.is_contiguous(memory_format=memory_format)
        assert_close(y.double(), y_ref, **tol)
        # grad in the output's memory format, as in training (torch's own bf16 kernel rounds
        # the weight/bias gradients to bf16 for channels_last input with a contiguous grad)
        grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        grad = grad.contiguous(memory_format=memory_format)
        y.backward(grad)
        y_ref.backward(grad.double())
        assert_close(x.grad.double(), x64.grad, **tol)
        assert_close(ours.weight.grad.double(), weight64.grad, **tol)
        assert_close(ours.bias.grad.double(), bias64.grad, **tol)
        ours.zero_grad()
        weight64.grad = bias64.grad = None
        running = updated_running_stats(
            running, batch_mean, batch_var, count, convention, momentum, step
        )
        assert ours.running_mean.shape == ours.running_var.shape == (stat_size,)
        assert_close(ours.running_mean.double(), running[0], **stat_tol)
        assert_close(ours.running_var.double(), running[1], **stat_tol)
    assert ours.num_batches_tracked.item() == 3
    ours.eval()
    x = make_batch(shape, dtype, gen, memory_format)
    with torch.no_grad():
        y = ours(x)
    y_ref = reference_eval(x.double(), *running, weight64.detach(), bias64.detach(), eps)
    assert y.is_contiguous(memory_format=memory_format)
    assert_close(y.double(), y_ref, **tol)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["bn-scalar", "bn"])
def test_eval_mode_gradients_match_float64_formula(kind, layout):
    """Fine-tuning in eval mode: input/weight/bias gradients of the running-statistics formula.

    (torch's CPU backward misreads a (1,) statistic broadcast over (N, C) input: a regression
    test for bn-scalar's eval path.)
    """
    shape, memory_format = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(7)
    ours = nl.make_norm(kind, C, dtype=torch.float64)
    randomize_affine(gen, ours)
    ours.running_mean.uniform_(-1.0, 1.0, generator=gen)
    ours.running_var.uniform_(0.5, 2.0, generator=gen)
    ours.eval()
    weight64 = ours.weight.detach().clone().requires_grad_()
    bias64 = ours.bias.detach().clone().requires_grad_()
    x = make_batch(shape, torch.float64, gen, memory_format).requires_grad_()
    x64 = x.detach().clone().requires_grad_()
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    ours(x).backward(grad)
    y_ref = reference_eval(x64, ours.running_mean, ours.running_var, weight64, bias64, ours.eps)
    y_ref.backward(grad)
    tol = FORMULA_TOL[torch.float64]
    assert_close(x.grad, x64.grad, **tol)
    assert_close(ours.weight.grad, weight64.grad, **tol)
    assert_close(ours.bias.grad, bias64.grad, **tol)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=str)
@pytest.mark.parametrize("kind", ["bn", "bn-scalar"])
def test_bfloat16_input_gives_float32_accurate_parameter_gradients(kind, memory_format):
    """bf16 input with float32 parameters (AMP): weight/bias gradients are float32-accurate.

    torch.nn.BatchNorm2d is within 1e-5 of the float64 formula here; a gradient reduced or
    rounded in bf16 is off by about 4e-3 relative.
    """
    stats = "scalar" if kind == "bn-scalar" else "channel"
    gen = torch.Generator().manual_seed(12)
    ours = nl.make_norm(kind, C)
    randomize_affine(gen, ours)
    weight64 = ours.weight.detach().double().requires_grad_()
    bias64 = ours.bias.detach().double().requires_grad_()
    x = make_batch((8, C, 5, 3), torch.bfloat16, gen, memory_format)
    grad = torch.randn(x.shape, generator=gen).to(torch.bfloat16)
    grad = grad.contiguous(memory_format=memory_format)
    ours(x).backward(grad)
    y_ref = reference_batch_norm(x.double(), weight64, bias64, 1e-5, stats)[0]
    y_ref.backward(grad.double())
    assert ours.weight.grad.dtype == torch.float32
    assert_close(ours.weight.grad.double(), weight64.grad, atol=1e-3, rtol=1e-3)
    assert_close(ours.bias.grad.double(), bias64.grad, atol=1e-3, rtol=1e-3)


def test_scalar_stats_module_in_bfloat16_trains_like_the_formula():
    """bn-scalar built with dtype=bfloat16 keeps bf16 buffers and matches the float64 formula."""
    gen = torch.Generator().manual_seed(13)
    ours = nl.make_norm("bn-scalar", C, dtype=torch.bfloat16)
    randomize_affine(gen, ours)
    x = make_batch((8, C, 5, 3), torch.bfloat16, gen)
    y = ours(x)
    weight64, bias64 = ours.weight.detach().double(), ours.bias.detach().double()
    y_ref, mean, var = reference_batch_norm(x.double(), weight64, bias64, 1e-5)
    assert y.dtype == ours.running_var.dtype == torch.bfloat16
    assert_close(y.double(), y_ref, **FORMULA_TOL[torch.bfloat16])
    unbiased = var * x.numel() / (x.numel() - 1)
    assert_close(ours.running_mean.double(), 0.1 * mean.reshape(1), atol=2e-2, rtol=2e-2)
    assert_close(ours.running_var.double(), 0.9 + 0.1 * unbiased.reshape(1), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("kind", ["bn", "bn-scalar"])
def test_float64_input_to_a_float32_module_is_refused_like_torch(kind):
    """No silent downcast: as torch.nn.BatchNorm2d, a dtype mismatch raises."""
    x = torch.randn(4, C, 3, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        nn.BatchNorm2d(C)(x)
    with pytest.raises(RuntimeError):
        nl.make_norm(kind, C)(x)


@pytest.mark.parametrize("track_running_stats", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("convention", ["torch", "keras"])
@pytest.mark.parametrize("kind", ["bn-scalar", "bn"])
def test_without_affine_or_running_stats_matches_formula(
    kind, convention, affine, track_running_stats
):
    """No affine: the plain formula; no running stats: no buffers and batch stats in eval too."""
    stats = "scalar" if kind == "bn-scalar" else "channel"
    gen = torch.Generator().manual_seed(5)
    ours = nl.make_norm(
        kind,
        C,
        convention=convention,
        affine=affine,
        track_running_stats=track_running_stats,
        dtype=torch.float64,
    )
    eps, momentum = (1e-5, 0.1) if convention == "torch" else (1e-3, 0.99)
    assert (ours.weight is None) is not affine
    weight = ours.weight.detach() if affine else None
    bias = ours.bias.detach() if affine else None
    tol = FORMULA_TOL[torch.float64]
    running = initial_running_stats(1 if stats == "scalar" else C)
    for step in range(1, 3):
        x = make_batch(SHAPES[4], torch.float64, gen)
        expected, mean, var = reference_batch_norm(x, weight, bias, eps, stats)
        assert_close(ours(x), expected, **tol)
        count = x.numel() if stats == "scalar" else x.numel() // C
        running = updated_running_stats(running, mean, var, count, convention, momentum, step)
    ours.eval()
    x = make_batch(SHAPES[4], torch.float64, gen)
    if track_running_stats:
        expected = reference_eval(x, *running, weight, bias, eps)
        assert ours.num_batches_tracked.item() == 2
    else:
        assert ours.running_mean is None
        assert ours.running_var is None
        assert ours.num_batches_tracked is None
        expected = reference_batch_norm(x, weight, bias, eps, stats)[0]
    assert_close(ours(x), expected, **tol)


@pytest.mark.parametrize("convention", ["torch", "keras"])
@pytest.mark.parametrize("kind", ["bn-scalar", "bn"])
def test_gradients_pass_gradcheck(kind, convention):
    """Training-mode input and affine gradients agree with finite differences (float64)."""
    gen = torch.Generator().manual_seed(6)
    norm = nl.make_norm(kind, 3, convention=convention, dtype=torch.float64)
    x = make_batch((4, 3, 2), torch.float64, gen).requires_grad_()
    weight = (1 + torch.rand(3, generator=gen, dtype=torch.float64)).requires_grad_()
    bias = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_()

    def forward(x, weight, bias):
        return torch.func.functional_call(norm, {"weight": weight, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(forward, (x, weight, bias))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4),
    c=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 4), max_size=2).map(tuple),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_scalar_stats_match_formula_for_any_shape(n, c, spatial, channels_last, seed):
    """bn-scalar equals the float64 formula for any (N, C, *) shape, in both memory formats."""
    shape = (n, c, *spatial)
    if n * torch.Size(spatial).numel() == 1:
        shape = (n + 1, c, *spatial)
    memory_format = torch.contiguous_format
    if channels_last and len(shape) == 4:
        memory_format = torch.channels_last
    gen = torch.Generator().manual_seed(seed)
    ours = nl.BatchNorm(c, stats="scalar", dtype=torch.float64)
    randomize_affine(gen, ours)
    x = make_batch(shape, torch.float64, gen, memory_format)
    expected, mean, var = reference_batch_norm(x, ours.weight.detach(), ours.bias.detach(), 1e-5)
    y = ours(x)
    assert y.shape == x.shape
    assert y.is_contiguous(memory_format=memory_format)
    assert_close(y, expected, **FORMULA_TOL[torch.float64])
    numel = x.numel()
    assert_close(ours.running_mean, 0.1 * mean)
    assert_close(ours.running_var, 0.9 + 0.1 * var * numel / (numel - 1))


# 5. Stability: float32 input with a large mean


@pytest.mark.parametrize("shape", [(256, 64), (16, 8, 12, 12)], ids=["2d", "4d"])
@pytest.mark.parametrize(
    ("kind", "convention"),
    [("bn", "torch"), ("bn", "keras"), ("bn-scalar", "torch"), ("bn-scalar", "keras")],
)
def test_float32_statistics_are_stable_for_large_means(kind, convention, shape):
    """1e4 + N(0, 1) in float32: outputs within 1e-2, running var within 1e-3 of float64.

    The one-pass E[x^2] - E[x]^2 in float32 is off by more than 1 on the same data.
    """
    gen = torch.Generator().manual_seed(2024)
    x = (1e4 + torch.randn(shape, generator=gen, dtype=torch.float64)).float()
    # momentum such that the running statistics become this batch's statistics
    momentum = 1.0 if convention == "torch" else 0.0
    ours = nl.make_norm(kind, shape[1], momentum=momentum, convention=convention)
    y = ours(x)
    dims = tuple(range(x.ndim)) if kind == "bn-scalar" else (0, *range(2, x.ndim))
    x64 = x.double()
    mean = x64.mean(dims, keepdim=True)
    var = (x64 - mean).square().mean(dims, keepdim=True)
    expected = (x64 - mean) / torch.sqrt(var + ours.eps)
    assert_close(y.double(), expected, atol=1e-2, rtol=0)
    count = x.numel() // mean.numel()
    stored_var = var * count / (count - 1) if convention == "torch" else var
    assert_close(ours.running_mean.double(), mean.flatten(), atol=0, rtol=1e-6)
    assert_close(ours.running_var.double(), stored_var.flatten(), atol=0, rtol=1e-3)
    naive = x.square().mean(dims, keepdim=True) - x.mean(dims, keepdim=True).square()
    assert (naive.double() - var).abs().max() > 1


# 6. Errors


@pytest.mark.parametrize("shape", [(1, C), (1, C, 1), (1, C, 1, 1)], ids=str)
@pytest.mark.parametrize(
    ("kind", "options"),
    [
        *[(k, {"convention": c}) for k in ("bn", "sync-bn") for c in ("torch", "keras")],
        ("brn", {}),
        ("switch", {}),
    ],
    ids=str,
)
def test_training_with_one_value_per_channel_raises(kind, options, shape):
    """A training batch with one value per channel is refused, and leaves the state unchanged."""
    norm = nl.make_norm(kind, C, **options)
    before = {name: t.clone() for name, t in norm.state_dict().items()}
    with pytest.raises(ValueError, match="more than one value per channel"):
        norm(torch.randn(shape))
    for name, tensor in norm.state_dict().items():
        assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize("shape", [(1, C), (1, C, 1, 1)], ids=str)
@pytest.mark.parametrize("kind", ["bn", "bn-scalar", "sync-bn"])
def test_one_value_per_channel_works_in_eval_mode(kind, shape):
    """In eval mode the running statistics normalize a single value per channel."""
    gen = torch.Generator().manual_seed(1)
    norm = nl.make_norm(kind, C, dtype=torch.float64).eval()
    randomize_affine(gen, norm)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    expected = x / (1 + 1e-5) ** 0.5 * channel_view(norm.weight, x.ndim) + channel_view(
        norm.bias, x.ndim
    )
    assert_close(norm(x), expected.detach())


def test_eval_without_running_stats_needs_more_than_one_value_like_torch():
    """Without running stats eval uses batch stats, so (1, C) is refused, as in torch."""
    with pytest.raises(ValueError):
        nn.BatchNorm1d(C, track_running_stats=False).eval()(torch.randn(1, C))
    norm = nl.make_norm("bn", C, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="more than one value per channel"):
        norm(torch.randn(1, C))


@pytest.mark.parametrize("convention", ["torch", "keras"])
@pytest.mark.parametrize("shape", [(1, C), (1, C, 1), (1, C, 1, 1)], ids=str)
def test_scalar_stats_train_on_one_sample_whose_statistic_sees_c_values(shape, convention):
    """Bn-scalar's single statistic sees all C values of a (1, C) batch, so it
    trains on it (float64 formula), as the Keras layer does; only a batch with one value in
    all is refused, and a refused batch changes no state."""
    gen = torch.Generator().manual_seed(2)
    norm = nl.make_norm("bn-scalar", C, convention=convention, dtype=torch.float64)
    randomize_affine(gen, norm)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    expected, _, _ = reference_batch_norm(x, norm.weight, norm.bias, norm.eps)
    assert_close(norm(x), expected.detach())
    assert int(norm.num_batches_tracked) == 1
    single = nl.make_norm("bn-scalar", 1, convention=convention)
    before = {name: t.clone() for name, t in single.state_dict().items()}
    with pytest.raises(ValueError, match="more than one value in the whole batch"):
        single(torch.randn((1, 1, *shape[2:])))
    for name, tensor in single.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_one_sample_with_several_positions_trains_like_torch():
    """(1, C, 4, 4) has 16 values per channel: bn trains on it like torch's BatchNorm2d."""
    gen = torch.Generator().manual_seed(4)
    ours, ref = nl.make_norm("bn", C), nn.BatchNorm2d(C)
    x = make_batch((1, C, 4, 4), torch.float32, gen)
    assert_close(ours(x), ref(x), **TORCH_TOL[torch.float32])
    assert_close(ours.running_var, ref.running_var, **TORCH_TOL[torch.float32])
    scalar = nl.make_norm("bn-scalar", C, affine=False)
    assert_close(scalar(x).double(), reference_batch_norm(x.double(), None, None, 1e-5)[0])


@pytest.mark.parametrize("kind", ["bn", "bn-scalar", "sync-bn"])
def test_input_errors_name_the_problem(kind):
    """Wrong channel count, 1-D input and integer dtype raise errors that say what is wrong."""
    norm = nl.make_norm(kind, C)
    with pytest.raises(ValueError) as excinfo:
        norm(torch.randn(4, 11, 3))
    message = str(excinfo.value)
    assert re.search(rf"\b{C}\b", message)
    assert re.search(r"\b11\b", message)
    with pytest.raises(ValueError, match=re.escape("(N, C, *)")):
        norm(torch.randn(C))
    with pytest.raises(TypeError, match="floating"):
        norm(torch.ones(4, C, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating"):
        norm.eval()(torch.ones(4, C, dtype=torch.int32))


@pytest.mark.parametrize(
    "options",
    [
        {"convention": "keras", "momentum": None},
        {"stats": "spatial"},
        {"convention": "tensorflow"},
        {"momentum": -0.1},
        {"momentum": 1.5},
        {"convention": "keras", "momentum": 1.01},
    ],
    ids=str,
)
def test_invalid_constructor_options_raise_value_error(options):
    """keras + momentum=None, unknown stats/convention and momentum outside [0, 1] are refused."""
    with pytest.raises(ValueError):
        nl.BatchNorm(C, **options)


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_momentum_bounds_are_accepted(momentum):
    """momentum 0 and 1 are valid: 1 replaces the running stats by the batch's (torch)."""
    norm = nl.BatchNorm(C, momentum=momentum, dtype=torch.float64)
    x = make_batch((16, C), torch.float64, torch.Generator().manual_seed(0))
    norm(x)
    expected = x.mean(0) if momentum == 1.0 else torch.zeros(C, dtype=torch.float64)
    assert_close(norm.running_mean, expected)


# 7. sync-bn without a process group is bn


def check_sync_bn_is_bn(options: dict) -> None:
    """Train and evaluate SyncBatchNorm next to BatchNorm on 2-D to 5-D batches: identical."""
    gen = torch.Generator().manual_seed(9)
    sync, plain = nl.SyncBatchNorm(C, **options), nl.BatchNorm(C, **options)
    randomize_affine(gen, sync, plain)
    exact = {"atol": 0, "rtol": 0}
    for ndim in SHAPES:
        x = make_batch(SHAPES[ndim], torch.float32, gen).requires_grad_()
        y_sync, y_plain = sync(x), plain(x)
        assert_close(y_sync, y_plain, **exact)
        grad = torch.randn(x.shape, generator=gen)
        assert_close(
            torch.autograd.grad(y_sync, x, grad)[0], torch.autograd.grad(y_plain, x, grad)[0]
        )
    for name, buffer in plain.named_buffers():
        assert_close(sync.get_buffer(name), buffer, **exact)
    sync.eval()
    plain.eval()
    x = make_batch(SHAPES[4], torch.float32, gen)
    assert_close(sync(x), plain(x), **exact)


@pytest.mark.parametrize(
    "options",
    [{}, {"stats": "scalar"}, {"convention": "keras"}, {"momentum": None}],
    ids=str,
)
def test_sync_bn_without_process_group_is_bn(options):
    """SyncBatchNorm subclasses BatchNorm and, with no process group, gives identical results."""
    assert issubclass(nl.SyncBatchNorm, nl.BatchNorm)
    assert isinstance(nl.make_norm("sync-bn", C), nl.SyncBatchNorm)
    assert not (dist.is_available() and dist.is_initialized())
    check_sync_bn_is_bn(options)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_sync_bn_in_a_single_process_group_is_bn():
    """A process group of one process has nothing to synchronize: still exactly bn."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        check_sync_bn_is_bn({})
    finally:
        dist.destroy_process_group()


# 8. reset_running_stats / reset_parameters as torch


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track_running_stats", [True, False])
def test_resets_match_torch(track_running_stats, momentum):
    """Resets behave as torch's BatchNorm2d's.

    reset_running_stats keeps the affine and restarts the statistics (and the cumulative
    average); reset_parameters also sets weight to 1 and bias to 0.
    """
    gen = torch.Generator().manual_seed(8)
    options = {"momentum": momentum, "track_running_stats": track_running_stats}
    ours, ref = nl.BatchNorm(C, **options), nn.BatchNorm2d(C, **options)
    randomize_affine(gen, ours, ref)
    train_steps(ours, 4, torch.Generator().manual_seed(1))
    train_steps(ref, 4, torch.Generator().manual_seed(1))
    ours.reset_running_stats()
    ref.reset_running_stats()
    assert set(ours.state_dict()) == set(ref.state_dict())
    for name, value in ref.state_dict().items():
        assert_close(ours.state_dict()[name], value, atol=0, rtol=0)
    assert not torch.equal(ours.weight, torch.ones(C))
    x = make_batch(SHAPES[4], torch.float32, gen)
    ours(x)
    ref(x)
    for name, value in ref.state_dict().items():
        assert_close(ours.state_dict()[name], value, **TORCH_TOL[torch.float32])
    ours.reset_parameters()
    ref.reset_parameters()
    for name, value in ref.state_dict().items():
        assert_close(ours.state_dict()[name], value, atol=0, rtol=0)
    assert torch.equal(ours.weight, torch.ones(C))
    assert torch.equal(ours.bias, torch.zeros(C))


def test_scalar_stats_reset_running_stats():
    """bn-scalar resets its (1,) statistics to mean 0, var 1 and the step count to 0."""
    norm = nl.make_norm("bn-scalar", C)
    train_steps(norm, 4, torch.Generator().manual_seed(2))
    assert norm.num_batches_tracked.item() == 3
    norm.reset_running_stats()
    assert_close(norm.running_mean, torch.zeros(1), atol=0, rtol=0)
    assert_close(norm.running_var, torch.ones(1), atol=0, rtol=0)
    assert norm.num_batches_tracked.item() == 0


class MyBatchNorm(nl.BatchNorm):
    """A user's subclass: errors name it, not its base."""


@pytest.mark.parametrize("channel_dim", [1, -1])
@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda **kw: nl.BatchNorm(C, **kw), "BatchNorm"),
        (lambda **kw: nl.BatchNorm(1, stats="scalar", **kw), "BatchNorm"),
        (lambda **kw: nl.SyncBatchNorm(C, **kw), "SyncBatchNorm"),
        (lambda **kw: nl.SyncBatchNorm(1, stats="scalar", **kw), "SyncBatchNorm"),
        (lambda **kw: nl.BatchRenorm(C, **kw), "BatchRenorm"),
        (lambda **kw: nl.SwitchableNorm(C, **kw), "SwitchableNorm"),
        (lambda **kw: MyBatchNorm(C, **kw), "MyBatchNorm"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_refused_training_batch_names_the_layer_the_user_built(build, name, channel_dim):
    """The refusal moved into the functional; it still names the layer's own class, and with
    channel_dim=-1 it does not describe the moved (N, C, *) view as the user's input."""
    norm = build(channel_dim=channel_dim)
    x = torch.randn(1, norm.num_features, 1).movedim(1, channel_dim)
    with pytest.raises(ValueError, match="more than one value") as raised:
        norm(x)
    message = str(raised.value)
    assert message.startswith(f"{name} in training mode"), message
    if norm.num_features > 1 and channel_dim == -1:
        assert str(tuple(x.movedim(-1, 1).shape)) not in message, message
