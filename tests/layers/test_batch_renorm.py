"""Batch renormalization ("brn") against Ioffe 2017 Algorithm 1, Keras' renorm and torch BN."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import normlab as nl

C = 5
EPS = 1e-5
MOMENTUM = 0.1
# Per-channel scale and offset of the batches: some channels far from the
# running statistics (clipped r and d), some close (unclipped).
SCALES = torch.tensor([0.2, 0.9, 1.05, 2.5, 6.0], dtype=torch.float64)
SHIFTS = torch.tensor([-2.0, 0.05, 0.0, 0.3, 4.0], dtype=torch.float64)


def _batch(step: int, shape=(6, C, 4, 3), dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + step)
    view = (1, -1) + (1,) * (len(shape) - 2)
    scale = SCALES.view(view) * (1.0 + 0.1 * step)
    shift = SHIFTS.view(view) + 0.05 * step
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype)


def _affine(seed: int = 1, channels: int = C) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = 1.0 + 0.5 * torch.randn(channels, generator=gen, dtype=torch.float64)
    bias = 0.5 * torch.randn(channels, generator=gen, dtype=torch.float64)
    return weight, bias


class RenormReference:
    """Ioffe 2017, Algorithm 1, in float64, with the running sigma as the moving average."""

    def __init__(self, weight, bias, *, r_max, d_max, eps=EPS, momentum=MOMENTUM, var0=1.0):
        channels = weight.numel()
        self.weight = weight.detach().double().clone().requires_grad_()
        self.bias = bias.detach().double().clone().requires_grad_()
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.sigma = torch.full((channels,), var0 + eps, dtype=torch.float64).sqrt()
        self.r_max, self.d_max, self.eps, self.momentum = r_max, d_max, eps, momentum
        self.r_clipped = torch.zeros(channels, dtype=torch.bool)
        self.d_clipped = torch.zeros(channels, dtype=torch.bool)
        self.r_free = torch.zeros(channels, dtype=torch.bool)
        self.d_free = torch.zeros(channels, dtype=torch.bool)

    @property
    def var(self) -> torch.Tensor:
        return self.sigma.square() - self.eps

    def train_step(self, x: torch.Tensor) -> torch.Tensor:
        dims = (0, *range(2, x.ndim))
        view = (1, -1) + (1,) * (x.ndim - 2)
        count = x.numel() // x.shape[1]
        mu_b = x.sum(dims) / count
        var_b = (x - mu_b.view(view)).square().sum(dims) / count
        sigma_b = torch.sqrt(var_b + self.eps)
        with torch.no_grad():
            r_raw = sigma_b / self.sigma
            d_raw = (mu_b - self.mean) / self.sigma
            r = r_raw.clamp(1.0 / self.r_max, self.r_max)
            d = d_raw.clamp(-self.d_max, self.d_max)
            self.r_clipped |= r != r_raw
            self.d_clipped |= d != d_raw
            self.r_free |= r == r_raw
            self.d_free |= d == d_raw
        x_hat = (x - mu_b.view(view)) / sigma_b.view(view) * r.view(view) + d.view(view)
        y = x_hat * self.weight.view(view) + self.bias.view(view)
        with torch.no_grad():
            self.mean = self.mean + self.momentum * (mu_b - self.mean)
            self.sigma = self.sigma + self.momentum * (sigma_b - self.sigma)
        return y

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.ndim - 2)
        scale = self.weight.detach() / torch.sqrt(self.var + self.eps)
        return (x - self.mean.view(view)) * scale.view(view) + self.bias.detach().view(view)


def _brn(weight, bias, dtype=torch.float64, **options) -> nl.BatchRenorm:
    module = nl.BatchRenorm(weight.numel(), momentum=MOMENTUM, eps=EPS, **options).to(dtype)
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(bias)
    return module


TOL = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 2e-5, "rtol": 2e-5},
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(6, C, 4, 3), (8, C, 7)], ids=["4d", "3d"])
def test_training_matches_algorithm_1_in_float64(dtype, shape):
    """Outputs, gradients (r, d constant) and running stats follow Algorithm 1, clipping active."""
    weight, bias = _affine()
    module = _brn(weight, bias, dtype, r_max=1.5, d_max=0.5)
    ref = RenormReference(weight, bias, r_max=1.5, d_max=0.5)
    tol = TOL[dtype]
    for step in range(5):
        x = _batch(step, shape, dtype)
        grad_out = _batch(50 + step, shape, dtype)
        module.zero_grad()
        x_mod = x.clone().requires_grad_()
        x_ref = x.double().requires_grad_()
        y = module(x_mod)
        y_ref = ref.train_step(x_ref)
        assert y.dtype == dtype
        torch.testing.assert_close(y.double(), y_ref.detach(), **tol)
        y.backward(grad_out)
        ref.weight.grad = ref.bias.grad = None
        y_ref.backward(grad_out.double())
        torch.testing.assert_close(x_mod.grad.double(), x_ref.grad, **tol)
        torch.testing.assert_close(module.weight.grad.double(), ref.weight.grad, **tol)
        torch.testing.assert_close(module.bias.grad.double(), ref.bias.grad, **tol)
        torch.testing.assert_close(module.running_mean.double(), ref.mean, **tol)
        torch.testing.assert_close(module.running_var.double(), ref.var, **tol)
    assert int(module.num_batches_tracked) == 5
    # The comparison exercised both clipped and unclipped corrections.
    assert ref.r_clipped.any() and ref.d_clipped.any()
    assert ref.r_free.any() and ref.d_free.any()

    module.eval()
    x = _batch(77, shape, dtype)
    torch.testing.assert_close(module(x).double(), ref.eval(x.double()), **tol)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 5),
    spatial=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    r_max=st.floats(1.0, 4.0),
    d_max=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_training_matches_algorithm_1_for_any_shape_and_limits(n, spatial, r_max, d_max, seed):
    """For random shapes and clip limits, two training steps follow Algorithm 1."""
    channels = 3
    weight, bias = _affine(seed, channels)
    module = _brn(weight, bias, r_max=r_max, d_max=d_max)
    ref = RenormReference(weight, bias, r_max=r_max, d_max=d_max)
    gen = torch.Generator().manual_seed(seed)
    shape = (n, channels, *spatial)
    for _ in range(2):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3.0 + 1.0
        x_ref = x.clone().requires_grad_()
        x_mod = x.clone().requires_grad_()
        y, y_ref = module(x_mod), ref.train_step(x_ref)
        torch.testing.assert_close(y, y_ref.detach(), **TOL[torch.float64])
        y.sum().backward()
        y_ref.sum().backward()
        torch.testing.assert_close(x_mod.grad, x_ref.grad, **TOL[torch.float64])
    torch.testing.assert_close(module.running_mean, ref.mean, **TOL[torch.float64])
    torch.testing.assert_close(module.running_var, ref.var, **TOL[torch.float64])


def test_matches_keras_batch_normalization_with_renorm():
    """Keras' BatchNormalization(renorm=True) agrees when normlab's sigma also starts at 1."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("the Keras oracle needs the torch backend")
    r_max, d_max = 1.5, 0.5
    weight, bias = _affine(seed=3)
    module = _brn(weight, bias, torch.float32, r_max=r_max, d_max=d_max)
    with torch.no_grad():
        module.running_var.fill_(1.0 - EPS)  # keras' moving stddev starts at sqrt(1)
    layer = keras.layers.BatchNormalization(
        axis=1,
        momentum=1.0 - MOMENTUM,
        epsilon=EPS,
        renorm=True,
        renorm_clipping={"rmin": 1.0 / r_max, "rmax": r_max, "dmax": d_max},
        renorm_momentum=1.0 - MOMENTUM,
    )
    shape = (8, C, 3, 3)
    layer.build(shape)
    layer.gamma.assign(weight.float())
    layer.beta.assign(bias.float())
    gamma, beta = layer.gamma.value, layer.beta.value
    # Keras computes in float32 with E[x^2] - E[x]^2; moderate means keep that exact enough.
    tol = {"atol": 1e-4, "rtol": 1e-4}
    ref = RenormReference(weight, bias, r_max=r_max, d_max=d_max, var0=1.0 - EPS)
    for step in range(4):
        x = _batch(step, shape, torch.float32)
        grad_out = _batch(60 + step, shape, torch.float32)
        module.zero_grad()
        gamma.grad = beta.grad = None
        x_mod = x.clone().requires_grad_()
        x_keras = x.clone().requires_grad_()
        y = module(x_mod)
        y_keras = layer(x_keras, training=True)
        ref.train_step(x.double())
        torch.testing.assert_close(y, y_keras, **tol)
        y.backward(grad_out)
        y_keras.backward(grad_out)
        torch.testing.assert_close(x_mod.grad, x_keras.grad, **tol)
        torch.testing.assert_close(module.weight.grad, gamma.grad, **tol)
        torch.testing.assert_close(module.bias.grad, beta.grad, **tol)
        moving_mean = torch.as_tensor(layer.moving_mean.value)
        moving_var = torch.as_tensor(layer.moving_variance.value)
        torch.testing.assert_close(module.running_mean, moving_mean, **tol)
        torch.testing.assert_close(module.running_var, moving_var, **tol)
    assert ref.r_clipped.any() and ref.d_clipped.any()
    module.eval()
    x = _batch(99, shape, torch.float32)
    torch.testing.assert_close(module(x), layer(x, training=False), **tol)


def test_unit_limits_are_batch_norm_in_training():
    """r_max=1, d_max=0: outputs, input gradients and running mean are torch BatchNorm2d's."""
    weight, bias = _affine(seed=4)
    module = _brn(weight, bias, torch.float32, r_max=1.0, d_max=0.0)
    bn = nn.BatchNorm2d(C, eps=EPS, momentum=MOMENTUM)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    for step in range(3):
        x = _batch(step, dtype=torch.float32)
        x_mod = x.clone().requires_grad_()
        x_bn = x.clone().requires_grad_()
        y, y_bn = module(x_mod), bn(x_bn)
        torch.testing.assert_close(y, y_bn, atol=1e-5, rtol=1e-5)
        y.backward(x)
        y_bn.backward(x)
        torch.testing.assert_close(x_mod.grad, x_bn.grad, atol=1e-5, rtol=1e-5)
    # running_var is sigma^2 - eps with the biased variance: by design not BN's.
    torch.testing.assert_close(module.running_mean, bn.running_mean, atol=1e-6, rtol=1e-6)


def test_eval_is_batch_norm_eval_with_the_same_running_stats():
    """Eval output equals torch BatchNorm2d eval after loading brn's state_dict."""
    weight, bias = _affine(seed=5)
    module = _brn(weight, bias, torch.float32)
    for step in range(3):
        module(_batch(step, dtype=torch.float32))
    module.eval()
    bn = nn.BatchNorm2d(C, eps=EPS).eval()
    bn.load_state_dict(module.state_dict(), strict=True)
    x = _batch(40, dtype=torch.float32)
    before = module.num_batches_tracked.clone()
    torch.testing.assert_close(module(x), bn(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(module.num_batches_tracked, before)
    assert torch.equal(module.running_mean, bn.running_mean)


def _expected_limits(step, *, r_max, d_max, warmup, r_steps, d_steps):
    """The paper's schedule: (1, 0) during warm-up, then linear to the final limits."""
    if step < warmup:
        return 1.0, 0.0
    r_frac = min(1.0, (step - warmup) / (r_steps - warmup))
    d_frac = min(1.0, (step - warmup) / (d_steps - warmup))
    return 1.0 + (r_max - 1.0) * r_frac, d_max * d_frac


@pytest.mark.parametrize("step", [0, 4, 5, 10, 15, 100])
def test_clip_limits_follow_linear_warmup_schedule(step):
    """clip_limits: (1, 0) before warmup_steps, linear to r_max/d_max at r_max_steps/d_max_steps."""
    module = nl.BatchRenorm(C, r_max=3.0, d_max=5.0, warmup_steps=5, r_max_steps=15, d_max_steps=10)
    expected = _expected_limits(step, r_max=3.0, d_max=5.0, warmup=5, r_steps=15, d_steps=10)
    assert module.clip_limits(step) == pytest.approx(expected, abs=1e-12)


def test_clip_schedule_is_driven_by_num_batches_tracked():
    """With warmup_steps=3 the first 3 training steps are plain BN; the counter sets the limits."""
    weight, bias = _affine(seed=6)
    module = _brn(
        weight, bias, r_max=3.0, d_max=5.0, warmup_steps=3, r_max_steps=10, d_max_steps=10
    )
    bn = nn.BatchNorm2d(C, eps=EPS, momentum=MOMENTUM).double()
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    for step in range(3):
        x = _batch(step)
        torch.testing.assert_close(module(x), bn(x), **TOL[torch.float64])
    assert int(module.num_batches_tracked) == 3

    # Jump the counter past the ramp: the next step uses the final limits (3, 5).
    with torch.no_grad():
        module.num_batches_tracked.fill_(100)
    ref = RenormReference(weight, bias, r_max=3.0, d_max=5.0)
    ref.mean = module.running_mean.clone()
    ref.sigma = (module.running_var + EPS).sqrt()
    x = _batch(3)
    y = module(x)
    torch.testing.assert_close(y, ref.train_step(x).detach(), **TOL[torch.float64])
    assert not torch.allclose(y, bn(x), atol=1e-3)
    assert int(module.num_batches_tracked) == 101
