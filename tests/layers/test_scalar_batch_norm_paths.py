"""bn-scalar's two training paths against float64 formulas, in every memory layout.

Training-mode batch norm with scalar statistics runs float32 and float64 batches of up to
``normlab.functional.NATIVE_SCALAR_MAX_NUMEL`` elements through torch's batch-norm kernel
on a one-channel view of their memory (then the affine), and larger ones (and other
dtypes, and strided input) through a hand-written autograd Function. Each test here runs
both paths on the same small input by moving that limit, so that either is held to the
oracles: the float64 formula, finite differences and float32 input with a large mean.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import normlab as nl
from normlab import functional as NF

C = 6
PATHS = {"native": 1 << 40, "function": 0}
LAYOUTS = ["features", "contiguous", "channels_last", "tokens", "strided"]
TOL = {"atol": 1e-10, "rtol": 1e-10}


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    """Which training path bn-scalar takes on the tests' small inputs."""
    monkeypatch.setattr(NF, "NATIVE_SCALAR_MAX_NUMEL", PATHS[request.param])
    return request.param


def make_input(
    layout: str, gen: torch.Generator, dtype=torch.float64, loc=1.0, channels=C, batch=4
) -> torch.Tensor:
    """(N, C, *) input with per-channel means around ``loc`` and spreads around 2, held as
    ``layout`` says: (N, C) features, contiguous or channels_last (N, C, H, W), (N, C, L)
    moved from (N, L, C) token memory, or a strided slice."""
    sizes = {"features": (4 * batch,), "tokens": (batch, 7)}.get(layout, (batch, 5, 6))
    shape = (sizes[0], channels, *sizes[1:])
    view = (1, channels) + (1,) * (len(shape) - 2)
    mean = loc + torch.randn(channels, dtype=torch.float64, generator=gen).view(view)
    std = 0.5 + 2.0 * torch.rand(channels, dtype=torch.float64, generator=gen).view(view)
    x = (mean + std * torch.randn(shape, dtype=torch.float64, generator=gen)).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "tokens":
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    elif layout == "strided":
        x = x[..., ::2]
    return x


def formula(x64, weight64, bias64, eps):
    """Training-mode batch norm in float64, one mean and biased variance over every
    element, per-channel affine: (y, mean, var)."""
    mean = x64.mean()
    var = (x64 - mean).square().mean()
    view = (1, -1) + (1,) * (x64.ndim - 2)
    y = (x64 - mean) / torch.sqrt(var + eps)
    if weight64 is not None:
        y = y * weight64.view(view) + bias64.view(view)
    return y, mean.detach(), var.detach()


@pytest.mark.parametrize(
    ("convention", "momentum"), [("torch", 0.1), ("torch", None), ("keras", 0.9)]
)
@pytest.mark.parametrize("input_grad", [True, False], ids=["input-grad", "affine-grad-only"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_path_matches_the_float64_formula(path, layout, input_grad, convention, momentum):
    """Output (in the input's memory format), running statistics over two steps and every
    gradient equal the float64 formula, on either path and in every layout."""
    gen = torch.Generator().manual_seed(31)
    ours = nl.make_norm(
        "bn-scalar", C, convention=convention, momentum=momentum, dtype=torch.float64
    )
    with torch.no_grad():
        ours.weight.copy_(1.0 + 0.5 * torch.randn(C, generator=gen, dtype=torch.float64))
        ours.bias.copy_(0.5 * torch.randn(C, generator=gen, dtype=torch.float64))
    weight64 = ours.weight.detach().clone().requires_grad_()
    bias64 = ours.bias.detach().clone().requires_grad_()
    running_mean, running_var = (
        torch.zeros(1, dtype=torch.float64),
        torch.ones(1, dtype=torch.float64),
    )
    for step in (1, 2):
        x = make_input(layout, gen).requires_grad_(input_grad)
        x64 = x.detach().clone().requires_grad_(input_grad)
        y = ours(x)
        y_ref, mean, var = formula(x64, weight64, bias64, ours.eps)
        assert_close(y, y_ref, **TOL)
        if layout != "strided":
            assert y.stride() == x.stride()
        grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        y.backward(grad)
        y_ref.backward(grad)
        if input_grad:
            assert_close(x.grad, x64.grad, **TOL)
        assert_close(ours.weight.grad, weight64.grad, **TOL)
        assert_close(ours.bias.grad, bias64.grad, **TOL)
        ours.zero_grad()
        weight64.grad = bias64.grad = None
        count = x.numel()
        if convention == "torch":
            m = 1.0 / step if momentum is None else momentum
            running_mean = (1 - m) * running_mean + m * mean
            running_var = (1 - m) * running_var + m * var * count / (count - 1)
        else:
            running_mean = momentum * running_mean + (1 - momentum) * mean
            running_var = momentum * running_var + (1 - momentum) * var
        assert_close(ours.running_mean, running_mean.reshape(1), **TOL)
        assert_close(ours.running_var, running_var.reshape(1), **TOL)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_path_passes_gradcheck(path, layout, affine):
    """Input and affine gradients of either path agree with finite differences (float64)."""
    gen = torch.Generator().manual_seed(32)
    norm = nl.make_norm("bn-scalar", 3, affine=affine, dtype=torch.float64)
    x = make_input(layout, gen, channels=3, batch=1).requires_grad_()
    if not affine:
        assert torch.autograd.gradcheck(norm, (x,))
        return
    weight = (1 + torch.rand(3, generator=gen, dtype=torch.float64)).requires_grad_()
    bias = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_()

    def forward(x, weight, bias):
        return torch.func.functional_call(norm, {"weight": weight, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(forward, (x, weight, bias))


@pytest.mark.parametrize("input_grad", [True, False], ids=["input-grad", "affine-grad-only"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_path_is_stable_for_large_means(path, layout, input_grad):
    """float32 1e4 + N(0, 1)-like input: the output within 1e-2 and the running variance
    within 1e-3 relative of float64, where E[x^2] - E[x]^2 in float32 is off by more than 1.
    """
    gen = torch.Generator().manual_seed(33)
    x = make_input(layout, gen, dtype=torch.float32, loc=1e4).requires_grad_(input_grad)
    ours = nl.make_norm("bn-scalar", C, momentum=1.0)  # weight 1, bias 0
    y = ours(x)
    x64 = x.detach().double()
    expected, mean, var = formula(x64, None, None, ours.eps)
    assert_close(y.detach().double(), expected, atol=1e-2, rtol=0)
    count = x.numel()
    assert_close(ours.running_mean.double(), mean.reshape(1), atol=0, rtol=1e-6)
    assert_close(
        ours.running_var.double(), (var * count / (count - 1)).reshape(1), atol=0, rtol=1e-3
    )
    y.backward(torch.ones_like(y))  # the backward of either path runs on such input
    x32 = x.detach()
    naive = x32.square().mean() - x32.mean().square()
    assert (naive.double() - var).abs() > 1


def test_training_after_a_first_call_under_inference_mode():
    """The affine's unit statistics, made once per (channels, dtype, device), are made as
    tensors that autograd may save even when the first call runs under inference_mode."""
    norm = nl.make_norm("bn-scalar", 5)
    with torch.inference_mode():
        norm(torch.randn(4, 5))
    x = torch.randn(4, 5, requires_grad=True)
    norm(x).sum().backward()
    assert x.grad is not None and norm.weight.grad is not None
