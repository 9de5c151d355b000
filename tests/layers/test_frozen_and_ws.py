"""FrozenBatchNorm, weight-standardized conv/linear and spectral norm against torch and float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlab as nl

C = 5


def _randn(shape, seed=0, scale=1.0, shift=0.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype)


def _bn_eval_formula(x, mean, var, weight, bias, eps):
    """float64 (x - mean) / sqrt(var + eps) * weight + bias, stats broadcast over channels."""
    view = (1, -1) + (1,) * (x.ndim - 2)
    x = x.double()
    mean = mean.double().expand(x.shape[1]).view(view)
    var = var.double().expand(x.shape[1]).view(view)
    return (x - mean) / torch.sqrt(var + eps) * weight.double().view(view) + bias.double().view(
        view
    )


def _train_(bn: nn.Module, channels: int = C) -> None:
    """Set a random affine (if any) and run a few training batches so the stats move."""
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.copy_(1.0 + 0.5 * torch.randn(channels, generator=gen))
            bn.bias.copy_(0.5 * torch.randn(channels, generator=gen))
    bn.train()
    for step in range(3):
        bn(_randn((4, channels, 3, 3), seed=step, scale=2.0 + step, shift=1.0 - step))


# ---------------------------------------------------------------- FrozenBatchNorm


def _assert_frozen_matches(frozen, source, expected_fn, x):
    """Frozen output equals expected_fn(x) and the source's eval output, in train and eval."""
    source.eval()
    with torch.no_grad():
        source_out = source(x)
    expected = expected_fn(x)
    for mode in (True, False):
        frozen.train(mode)
        y = frozen(x)
        torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y, source_out, atol=1e-5, rtol=1e-5)


def test_frozen_from_torch_batchnorm2d_equals_its_eval_output():
    """from_batchnorm(torch BatchNorm2d) gives the source's eval output in train() and eval()."""
    bn = nn.BatchNorm2d(C, eps=1e-4)
    _train_(bn)
    frozen = nl.FrozenBatchNorm.from_batchnorm(bn)
    x = _randn((3, C, 4, 4), seed=20, shift=0.5)
    _assert_frozen_matches(
        frozen,
        bn,
        lambda t: _bn_eval_formula(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, 1e-4),
        x,
    )
    # Nothing moves in training mode.
    assert torch.equal(frozen.running_mean, bn.running_mean)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("convention", ["torch", "keras"])
@pytest.mark.parametrize("stats", ["channel", "scalar"])
def test_frozen_from_normlab_batchnorm_equals_its_eval_output(stats, convention, affine):
    """from_batchnorm(nl.BatchNorm) keeps stats, affine (1/0 without) and the convention's eps."""
    bn = nl.BatchNorm(C, stats=stats, convention=convention, affine=affine)
    _train_(bn)
    eps = 1e-3 if convention == "keras" else 1e-5  # the conventions' documented defaults
    frozen = nl.FrozenBatchNorm.from_batchnorm(bn)
    weight = bn.weight.detach() if affine else torch.ones(C)
    bias = bn.bias.detach() if affine else torch.zeros(C)
    stat_shape = (C,) if stats == "channel" else (1,)
    assert frozen.running_mean.shape == stat_shape
    assert not torch.allclose(bn.running_mean, torch.zeros(stat_shape))
    x = _randn((3, C, 4, 4), seed=21, scale=3.0, shift=-1.0)
    _assert_frozen_matches(
        frozen,
        bn,
        lambda t: _bn_eval_formula(t, bn.running_mean, bn.running_var, weight, bias, eps),
        x,
    )


def test_frozen_has_no_parameters_but_passes_input_gradients():
    """No parameters; the input gradient is weight / sqrt(running_var + eps) per channel."""
    bn = nn.BatchNorm2d(C)
    _train_(bn)
    frozen = nl.FrozenBatchNorm.from_batchnorm(bn)
    assert list(frozen.parameters()) == []
    x = _randn((2, C, 3, 3), seed=22).requires_grad_()
    frozen(x).sum().backward()
    scale = (bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + 1e-5)).float()
    torch.testing.assert_close(x.grad, scale.view(1, C, 1, 1).expand_as(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("stats", ["channel", "scalar"])
@pytest.mark.parametrize("shape", [(6, C), (2, C, 3, 3)])
def test_frozen_input_gradient_is_the_float64_formula_for_each_stats(stats, shape):
    """Upstream gradient times weight / sqrt(running_var + eps). (Scalar statistics once went
    to torch's kernel expanded, stride 0, and its backward read them wrongly.)"""
    frozen = nl.FrozenBatchNorm(C, stats=stats).double()
    with torch.no_grad():
        frozen.weight.copy_(_randn(C, seed=31, dtype=torch.float64))
        frozen.running_var.copy_(_randn(frozen.running_var.shape, seed=32).abs() + 0.5)
    x = _randn(shape, seed=33, dtype=torch.float64).requires_grad_()
    upstream = _randn(shape, seed=34, dtype=torch.float64)
    (frozen(x) * upstream).sum().backward()
    scale = frozen.weight / torch.sqrt(frozen.running_var + frozen.eps)
    expected = upstream * scale.view(C, *[1] * (len(shape) - 2))
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


def test_frozen_loads_torch_batchnorm2d_state_dict_strictly():
    """A torch BatchNorm2d state_dict (with num_batches_tracked) loads with strict=True."""
    bn = nn.BatchNorm2d(C)
    _train_(bn)
    frozen = nl.FrozenBatchNorm(C)
    frozen.load_state_dict(bn.state_dict(), strict=True)
    x = _randn((3, C, 2, 5), seed=23, shift=2.0)
    bn.eval()
    torch.testing.assert_close(frozen(x), bn(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "make_bn",
    [
        lambda: nn.BatchNorm2d(C, track_running_stats=False),
        lambda: nl.BatchNorm(C, track_running_stats=False),
    ],
    ids=["torch", "normlab"],
)
def test_frozen_from_batchnorm_without_running_stats_raises(make_bn):
    """Freezing a batch norm that keeps no running statistics is a ValueError."""
    with pytest.raises(ValueError, match="running"):
        nl.FrozenBatchNorm.from_batchnorm(make_bn())


# ------------------------------------------------------ weight standardization


def _standardize(weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Qiao et al. 2019 eq. 5 in float64: per output unit, biased var, eps inside the sqrt."""
    w = weight.double()
    flat = w.reshape(w.shape[0], -1)
    mean = flat.mean(1, keepdim=True)
    var = (flat - mean).square().mean(1, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).reshape(w.shape)


CONV_CASES = {
    "plain": ({"in_channels": 4, "out_channels": 6, "kernel_size": 3, "padding": 1}, {}),
    "groups2-nobias-stride2": (
        {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "groups": 2, "bias": False},
        {"stride": 2},
    ),
}


def _ws_conv(kwargs, extra, dtype, eps=None):
    options = {} if eps is None else {"eps": eps}
    module = nl.WSConv2d(**kwargs, **extra, **options).to(dtype)

    def reference(x, weight, bias):
        return F.conv2d(
            x,
            _standardize(weight, 1e-5 if eps is None else eps),
            bias,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
        )

    return module, reference


def _ws_linear(kwargs, extra, dtype, eps=None):
    options = {} if eps is None else {"eps": eps}
    module = nl.WSLinear(**kwargs, **options).to(dtype)

    def reference(x, weight, bias):
        return F.linear(x, _standardize(weight, 1e-5 if eps is None else eps), bias)

    return module, reference


WS_CASES = [
    pytest.param(_ws_conv, *CONV_CASES["plain"], (2, 4, 6, 5), id="conv"),
    pytest.param(_ws_conv, *CONV_CASES["groups2-nobias-stride2"], (2, 4, 7, 7), id="conv-g2"),
    pytest.param(_ws_linear, {"in_features": 5, "out_features": 7}, {}, (3, 5), id="linear"),
    pytest.param(
        _ws_linear, {"in_features": 5, "out_features": 3, "bias": False}, {}, (4, 2, 5), id="lin0"
    ),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("build", "kwargs", "extra", "x_shape"), WS_CASES)
def test_ws_layers_match_float64_standardized_weight(build, kwargs, extra, x_shape, dtype):
    """Outputs and gradients (input, weight through the standardization, bias) match float64."""
    torch.manual_seed(0)
    module, reference = build(kwargs, extra, dtype)
    with torch.no_grad():
        module.weight.mul_(3.0).add_(0.4)  # non-zero mean, non-unit scale
    x = _randn(x_shape, seed=1, dtype=dtype).requires_grad_()
    y = module(x)
    w64 = module.weight.detach().double().requires_grad_()
    b64 = None if module.bias is None else module.bias.detach().double().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y64 = reference(x64, w64, b64)
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 0}
    torch.testing.assert_close(y.double(), y64.detach(), **tol)
    grad_out = _randn(y.shape, seed=2, dtype=dtype)
    y.backward(grad_out)
    y64.backward(grad_out.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, **tol)
    torch.testing.assert_close(module.weight.grad.double(), w64.grad, **tol)
    if b64 is not None:
        torch.testing.assert_close(module.bias.grad.double(), b64.grad, **tol)
    # The gradient to the raw weight is not the plain conv/linear gradient.
    assert not torch.allclose(module.weight.grad.double(), x64.new_zeros(w64.shape), atol=1e-3)


@pytest.mark.parametrize(("build", "kwargs", "extra", "x_shape"), WS_CASES[:3])
def test_ws_eps_option_is_used(build, kwargs, extra, x_shape):
    """A large eps=0.5 enters inside the square root, as eq. 5."""
    module, reference = build(kwargs, extra, torch.float64, eps=0.5)
    x = _randn(x_shape, seed=3, dtype=torch.float64)
    bias = None if module.bias is None else module.bias.detach()
    expected = reference(x, module.weight.detach(), bias)
    torch.testing.assert_close(module(x), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("build", "kwargs", "extra", "x_shape"), WS_CASES)
def test_ws_large_mean_weights_are_stable_in_float32(build, kwargs, extra, x_shape):
    """Weights 1e3 + N(0, 1) in float32 standardize to within float32 rounding of float64."""
    module, reference = build(kwargs, extra, torch.float32)
    with torch.no_grad():
        module.weight.copy_(_randn(module.weight.shape, seed=4, shift=1e3))
    x = _randn(x_shape, seed=5)
    bias = None if module.bias is None else module.bias.detach().double()
    expected = reference(x.double(), module.weight.detach(), bias)
    torch.testing.assert_close(module(x).double(), expected, atol=3e-3, rtol=1e-3)


# --------------------------------------------------------------- spectral norm


def test_spectral_norm_is_torch_parametrization():
    """nl.spectral_norm is torch.nn.utils.parametrizations.spectral_norm itself."""
    assert nl.spectral_norm is torch.nn.utils.parametrizations.spectral_norm


def test_spectral_norm_divides_by_largest_singular_value_after_power_iterations():
    """After training-mode forwards, the Linear weight's singular values are s / s_max."""
    gen = torch.Generator().manual_seed(6)
    u, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    singular = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.3, 0.1], dtype=torch.float64)
    linear = nn.Linear(8, 6)
    with torch.no_grad():
        linear.weight.copy_((u @ torch.diag(singular) @ v[:6]).float())
    torch.manual_seed(7)  # the parametrization's random start vectors
    linear = nl.spectral_norm(linear)
    linear.train()
    x = _randn((3, 8), seed=8)
    for _ in range(10):
        linear(x)
    got = torch.linalg.svdvals(linear.weight.detach().double())
    assert got[0].item() == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(got, singular / singular[0], atol=1e-4, rtol=1e-4)
