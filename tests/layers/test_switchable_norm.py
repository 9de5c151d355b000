"""Switchable normalization ("switch") against a float64 formula of Luo et al. 2018.

The oracle computes the IN, LN and BN statistics directly from their
definitions (means and biased variances over the right dims of the raw input),
not from each other, so it is independent of the library's derivation.
"""

from __future__ import annotations

import copy

import pytest
import torch

import normlab as nl

C = 6
EPS = 1e-5
MOMENTUM = 0.1
MEAN_LOGITS = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
VAR_LOGITS = torch.tensor([-0.2, 0.9, 0.1], dtype=torch.float64)


def _moments(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of x over dims, straight from the definition."""
    mean = x.mean(dims, keepdim=True)
    return mean, (x - mean).square().mean(dims, keepdim=True)


class SwitchReference:
    """Luo et al. 2018 in float64: softmax-weighted IN, LN and BN statistics."""

    def __init__(self, weight, bias, mean_logits, var_logits, channels=C):
        def leaf(t):
            return t.detach().double().clone().requires_grad_()

        self.weight, self.bias = leaf(weight), leaf(bias)
        self.mean_logits, self.var_logits = leaf(mean_logits), leaf(var_logits)
        self.running_mean = torch.zeros(channels, dtype=torch.float64)
        self.running_var = torch.ones(channels, dtype=torch.float64)

    def params(self) -> dict[str, torch.Tensor]:
        return {
            "weight": self.weight,
            "bias": self.bias,
            "mean_logits": self.mean_logits,
            "var_logits": self.var_logits,
        }

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1)  # (N, C, L)
        length = flat.shape[2]
        mean_ln, var_ln = _moments(flat, (1, 2))  # per sample over (C, L)
        if training:
            mean_bn, var_bn = _moments(flat, (0, 2))  # per channel over (N, L)
            count = n * length
            with torch.no_grad():
                unbiased = var_bn.flatten() * count / (count - 1)
                self.running_mean = (1 - MOMENTUM) * self.running_mean + MOMENTUM * (
                    mean_bn.flatten()
                )
                self.running_var = (1 - MOMENTUM) * self.running_var + MOMENTUM * unbiased
        else:
            mean_bn = self.running_mean.view(1, c, 1)
            var_bn = self.running_var.view(1, c, 1)
        if x.ndim == 2:  # no positions: IN is dropped, softmax over (LN, BN)
            mean_w = torch.softmax(self.mean_logits[1:], 0)
            var_w = torch.softmax(self.var_logits[1:], 0)
            mean = mean_w[0] * mean_ln + mean_w[1] * mean_bn
            var = var_w[0] * var_ln + var_w[1] * var_bn
        else:
            mean_in, var_in = _moments(flat, (2,))  # per (sample, channel) over L
            mean_w = torch.softmax(self.mean_logits, 0)
            var_w = torch.softmax(self.var_logits, 0)
            mean = mean_w[0] * mean_in + mean_w[1] * mean_ln + mean_w[2] * mean_bn
            var = var_w[0] * var_in + var_w[1] * var_ln + var_w[2] * var_bn
        y = (flat - mean) / torch.sqrt(var + EPS)
        y = y * self.weight.view(1, c, 1) + self.bias.view(1, c, 1)
        return y.reshape(x.shape)


def _input(shape, seed=0, dtype=torch.float64):
    """Batches with per-sample and per-channel offsets, so IN, LN and BN stats all differ."""
    gen = torch.Generator().manual_seed(seed)
    view = (shape[0], shape[1]) + (1,) * (len(shape) - 2)
    offsets = torch.randn(view, generator=gen, dtype=torch.float64) * 2.0
    scales = 0.5 + torch.rand(view, generator=gen, dtype=torch.float64) * 2.0
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scales + offsets
    return x.to(dtype)


def _module(dtype=torch.float64, seed=1, channels=C) -> nl.SwitchableNorm:
    module = nl.SwitchableNorm(channels, momentum=MOMENTUM, eps=EPS).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.copy_(1.0 + 0.5 * torch.randn(channels, generator=gen, dtype=torch.float64))
        module.bias.copy_(0.5 * torch.randn(channels, generator=gen, dtype=torch.float64))
        module.mean_logits.copy_(MEAN_LOGITS)
        module.var_logits.copy_(VAR_LOGITS)
    return module


def _reference(module: nl.SwitchableNorm) -> SwitchReference:
    return SwitchReference(
        module.weight, module.bias, module.mean_logits, module.var_logits, module.num_features
    )


TOL = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 5e-5, "rtol": 5e-5},
}
SHAPES = {"4d": (4, C, 3, 5), "4d-channels-last": (4, C, 3, 5), "3d": (5, C, 7), "2d": (8, C)}


def _check_step(module, ref, x, grad_out, training, tol):
    """One forward/backward through both; compare outputs and every gradient."""
    module.zero_grad()
    for p in ref.params().values():
        p.grad = None
    x_mod = x.clone().requires_grad_()
    x_ref = x.double().requires_grad_()
    y = module(x_mod)
    y_ref = ref(x_ref, training)
    assert y.dtype == x.dtype and y.shape == x.shape
    torch.testing.assert_close(y.double(), y_ref.detach(), **tol)
    y.backward(grad_out)
    y_ref.backward(grad_out.double())
    torch.testing.assert_close(x_mod.grad.double(), x_ref.grad, **tol)
    for name, p in ref.params().items():
        got = getattr(module, name).grad
        torch.testing.assert_close(got.double(), p.grad, **tol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("layout", list(SHAPES))
def test_training_and_eval_match_luo_formula(layout, dtype):
    """Outputs, all gradients and running stats over steps, then eval with running BN stats."""
    shape = SHAPES[layout]
    module = _module(dtype)
    ref = _reference(module)
    tol = TOL[dtype]
    for step in range(3):
        x = _input(shape, seed=10 + step, dtype=dtype)
        if layout.endswith("channels-last"):
            x = x.contiguous(memory_format=torch.channels_last)
            assert copy.deepcopy(module)(x).is_contiguous(memory_format=torch.channels_last)
        grad_out = _input(shape, seed=30 + step, dtype=dtype)
        _check_step(module, ref, x, grad_out, True, tol)
        torch.testing.assert_close(module.running_mean.double(), ref.running_mean, **tol)
        torch.testing.assert_close(module.running_var.double(), ref.running_var, **tol)
    assert int(module.num_batches_tracked) == 3

    module.eval()
    x = _input(shape, seed=50, dtype=dtype)
    _check_step(module, ref, x, _input(shape, seed=51, dtype=dtype), False, tol)
    torch.testing.assert_close(module.running_mean.double(), ref.running_mean, **tol)
    assert int(module.num_batches_tracked) == 3


def test_eval_output_of_a_sample_does_not_depend_on_the_batch():
    """In eval mode a sample's output is the same alone or inside a batch."""
    module = _module()
    module(_input((4, C, 3, 3), seed=2))
    module.eval()
    x = _input((4, C, 3, 3), seed=3)
    torch.testing.assert_close(module(x)[1:2], module(x[1:2]), atol=1e-12, rtol=1e-12)


def test_two_dimensional_input_mixes_only_layer_and_batch_stats():
    """For (N, C) input the IN logit has no effect; LN and BN weights are softmax(logits[1:])."""
    x = _input((8, C), seed=4)
    outputs = []
    for in_logit in (-5.0, 0.0, 5.0):
        module = _module()
        with torch.no_grad():
            module.mean_logits[0] = in_logit
            module.var_logits[0] = in_logit
        outputs.append(module(x))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(outputs[0], outputs[2], atol=1e-12, rtol=1e-12)


def test_large_mean_input_is_stable_in_float32():
    """1e4 + N(0, 1) float32 input stays within 1e-2 of the float64 formula."""
    shape = (8, C, 4, 4)
    gen = torch.Generator().manual_seed(5)
    x = (1e4 + torch.randn(shape, generator=gen)).float()
    module = _module(torch.float32)
    ref = _reference(module)
    y = module(x)
    expected = ref(x.double(), True).detach()
    torch.testing.assert_close(y.double(), expected, atol=1e-2, rtol=0)
    torch.testing.assert_close(module.running_var.double(), ref.running_var, atol=1e-2, rtol=1e-3)
