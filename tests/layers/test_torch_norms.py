"""ln, rms, gn and in from the registry against torch.nn's own modules and float64 formulas.

The oracles are torch.nn.LayerNorm, RMSNorm, GroupNorm, InstanceNorm1d/2d/3d and
formulas written here; normlab's modules must be those torch modules (subclasses),
load their state_dicts, and agree with them in values and gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm

import normlab as nl

C = 6
SHAPES = {2: (4, C), 3: (3, C, 5), 4: (2, C, 3, 4), 5: (2, C, 2, 3, 2)}
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
# Same torch kernel on both sides, so the tolerances only absorb reordering.
TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float64: {"atol": 1e-12, "rtol": 1e-12},
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
}
TORCH_CLASS = {"ln": nn.LayerNorm, "rms": nn.RMSNorm, "gn": nn.GroupNorm, "in": _InstanceNorm}
INSTANCE_NORM = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}


def _randn(shape, dtype=torch.float32, seed=0, scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype)


def _randomize_(module: nn.Module, seed: int = 1) -> None:
    """Give every parameter non-trivial values (weights around 1, biases around 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5
            p.copy_((noise + (1.0 if name.endswith("weight") else 0.0)).to(p.dtype))


def _gn_groups(ndim: int) -> int | None:
    """Registry default groups, except on (N, C) input where a group needs two channels."""
    return 3 if ndim == 2 else None


def _torch_oracle(kind: str, ndim: int, dtype: torch.dtype) -> tuple[nn.Module, object]:
    """The plain torch module for ``kind`` and a function applying it to (N, C, *) input."""
    if kind == "ln":
        mod = nn.LayerNorm(C, dtype=dtype)
        return mod, lambda x: mod(x.movedim(1, -1)).movedim(-1, 1)
    if kind == "rms":
        mod = nn.RMSNorm(C, dtype=dtype)
        return mod, lambda x: mod(x.movedim(1, -1)).movedim(-1, 1)
    if kind == "gn":
        groups = _gn_groups(ndim) or max(g for g in range(1, 33) if C % g == 0)
        mod = nn.GroupNorm(groups, C, dtype=dtype)
        return mod, mod
    mod = INSTANCE_NORM[ndim](C, affine=True, dtype=dtype)
    return mod, mod


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in module.named_parameters()}


CASES = [
    (kind, ndim)
    for kind in ("ln", "rms", "gn", "in")
    for ndim in (2, 3, 4, 5)
    if not (kind == "in" and ndim == 2) and not (kind in ("ln", "rms") and ndim == 5)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("kind", "ndim"), CASES)
def test_matches_torch_module_in_values_and_gradients(kind, ndim, dtype):
    """Outputs, input and parameter gradients, and eval outputs equal torch.nn's module."""
    options = {"groups": _gn_groups(ndim)} if kind == "gn" else {}
    module = nl.make_norm(kind, C, **options).to(dtype)
    assert isinstance(module, TORCH_CLASS[kind])
    _randomize_(module)
    oracle, apply_oracle = _torch_oracle(kind, ndim, dtype)
    oracle.load_state_dict(module.state_dict(), strict=True)

    x = _randn(SHAPES[ndim], dtype, scale=2.0, shift=0.5)
    grad_out = _randn(SHAPES[ndim], dtype, seed=7)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    y1 = module(x1)
    y2 = apply_oracle(x2)
    assert y1.shape == x.shape
    assert y1.dtype == dtype
    torch.testing.assert_close(y1, y2, **TOL[dtype])
    y1.backward(grad_out)
    y2.backward(grad_out)
    torch.testing.assert_close(x1.grad, x2.grad, **TOL[dtype])
    g1, g2 = _grads(module), _grads(oracle)
    assert g1.keys() == g2.keys() and g1
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], **TOL[dtype], msg=name)

    module.eval()
    oracle.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x), apply_oracle(x), **TOL[dtype])


@pytest.mark.parametrize("kind", ["ln", "rms", "gn", "in"])
def test_channels_last_input_matches_torch(kind):
    """A channels_last (N, C, H, W) input gives torch's values and gradients."""
    module = nl.make_norm(kind, C)
    _randomize_(module)
    oracle, apply_oracle = _torch_oracle(kind, 4, torch.float32)
    oracle.load_state_dict(module.state_dict(), strict=True)
    x = _randn(SHAPES[4], shift=1.0).to(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    x1 = x.clone().requires_grad_()
    x2 = x.contiguous().requires_grad_()
    y1 = module(x1)
    y2 = apply_oracle(x2)
    torch.testing.assert_close(y1, y2, **TOL[torch.float32])
    grad_out = _randn(SHAPES[4], seed=3)
    y1.backward(grad_out)
    y2.backward(grad_out)
    torch.testing.assert_close(x1.grad, x2.grad, **TOL[torch.float32])


@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_channel_dim_last_is_torch_module_on_last_dim(kind):
    """channel_dim=-1 on (N, L, C) normalizes the last dim exactly as torch's module."""
    module = nl.make_norm(kind, C, channel_dim=-1)
    _randomize_(module)
    oracle = (nn.LayerNorm if kind == "ln" else nn.RMSNorm)(C)
    oracle.load_state_dict(module.state_dict(), strict=True)
    x = _randn((3, 5, C), shift=-0.7, scale=3.0)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    y1, y2 = module(x1), oracle(x2)
    torch.testing.assert_close(y1, y2, **TOL[torch.float32])
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL[torch.float32])


@pytest.mark.parametrize("shape", [(2, C, 3, 4), (3, C, 5), (4, C)])
def test_layer_norm_over_all_is_group_norm_with_one_group(shape):
    """ln over="all" on (N, C, *) equals torch GroupNorm(1, C) with the same affine."""
    module = nl.make_norm("ln", C, over="all")
    _randomize_(module)
    oracle = nn.GroupNorm(1, C)
    oracle.load_state_dict(module.state_dict(), strict=True)
    nn.LayerNorm(C).load_state_dict(module.state_dict(), strict=True)
    x = _randn(shape, scale=2.0, shift=1.5)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    y1, y2 = module(x1), oracle(x2)
    torch.testing.assert_close(y1, y2, **TOL[torch.float32])
    grad_out = _randn(shape, seed=5)
    y1.backward(grad_out)
    y2.backward(grad_out)
    torch.testing.assert_close(x1.grad, x2.grad, **TOL[torch.float32])
    torch.testing.assert_close(module.weight.grad, oracle.weight.grad, **TOL[torch.float32])
    torch.testing.assert_close(module.bias.grad, oracle.bias.grad, **TOL[torch.float32])


def test_layer_norm_over_all_channels_last_layout():
    """ln over="all", channel_dim=-1 on (N, L, C) equals GroupNorm(1, C) on the moved dims."""
    module = nl.make_norm("ln", C, over="all", channel_dim=-1)
    _randomize_(module)
    oracle = nn.GroupNorm(1, C)
    oracle.load_state_dict(module.state_dict(), strict=True)
    x = _randn((3, 5, C), shift=2.0)
    torch.testing.assert_close(
        module(x), oracle(x.movedim(-1, 1)).movedim(1, -1), **TOL[torch.float32]
    )


def _rms_all_reference(x, weight, eps, channel_dim):
    """float64 x / sqrt(mean(x^2 over all non-batch dims) + eps) * w_c."""
    x = x.double()
    dims = tuple(range(1, x.ndim))
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    return x / torch.sqrt(x.square().mean(dims, keepdim=True) + eps) * weight.double().view(shape)


@pytest.mark.parametrize(
    ("shape", "channel_dim"),
    [((2, C, 3, 4), 1), ((3, C, 5), 1), ((4, C), 1), ((3, 5, C), -1)],
)
@pytest.mark.parametrize("eps", [1e-6, None])
def test_rms_norm_over_all_matches_float64_formula(shape, channel_dim, eps):
    """rms over="all" divides by the RMS of every non-batch element, per-channel weight."""
    module = nl.make_norm("rms", C, over="all", channel_dim=channel_dim, eps=eps)
    _randomize_(module)
    nn.RMSNorm(C).load_state_dict(module.state_dict(), strict=True)
    x = _randn(shape, scale=2.0, shift=0.8).requires_grad_()
    ref_eps = torch.finfo(torch.float32).eps if eps is None else eps
    x64 = x.detach().double().requires_grad_()
    y = module(x)
    ref = _rms_all_reference(x64, module.weight.detach(), ref_eps, channel_dim)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
    grad_out = _randn(shape, seed=9)
    y.backward(grad_out)
    ref.backward(grad_out.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)


def _largest_divisor_at_most_32(c: int) -> int:
    return max(g for g in range(1, 33) if c % g == 0)


@pytest.mark.parametrize(("channels", "expected"), [(64, 32), (48, 24), (20, 20), (7, 7)])
def test_group_norm_default_groups_is_largest_divisor_at_most_32(channels, expected):
    """gn picks the largest divisor of C that is <= 32 and normalizes like torch's GroupNorm."""
    assert _largest_divisor_at_most_32(channels) == expected
    module = nl.make_norm("gn", channels)
    assert module.num_groups == expected
    oracle = nn.GroupNorm(expected, channels)
    _randomize_(module)
    oracle.load_state_dict(module.state_dict(), strict=True)
    x = _randn((2, channels, 3, 3), shift=0.5)
    torch.testing.assert_close(module(x), oracle(x), **TOL[torch.float32])


def test_group_norm_explicit_groups_are_honored():
    """groups=8 gives 8 groups: the output of torch's GroupNorm(8, C), not GroupNorm(32, C)."""
    module = nl.make_norm("gn", 64, groups=8)
    assert module.num_groups == 8
    _randomize_(module)
    oracle = nn.GroupNorm(8, 64)
    oracle.load_state_dict(module.state_dict(), strict=True)
    x = _randn((2, 64, 3), shift=0.5) + torch.arange(64.0).view(1, 64, 1)
    y = module(x)
    torch.testing.assert_close(y, oracle(x), **TOL[torch.float32])
    other = nn.GroupNorm(32, 64)
    other.load_state_dict(module.state_dict(), strict=True)
    assert not torch.allclose(y, other(x), atol=1e-3)


@pytest.mark.parametrize(("channels", "groups"), [(64, 7), (6, 4), (20, 3)])
def test_group_norm_non_divisor_groups_raise(channels, groups):
    """groups that do not divide C is a ValueError."""
    with pytest.raises(ValueError, match="divi"):
        nl.make_norm("gn", channels, groups=groups)


def test_instance_norm_running_stats_match_torch():
    """in with track_running_stats=True keeps torch InstanceNorm2d's running stats and eval."""
    module = nl.make_norm("in", C, track_running_stats=True, momentum=0.2)
    oracle = nn.InstanceNorm2d(C, affine=True, track_running_stats=True, momentum=0.2)
    _randomize_(module)
    oracle.load_state_dict(module.state_dict(), strict=True)
    for step in range(4):
        x = _randn((3, C, 4, 5), seed=10 + step, scale=1.0 + step, shift=step - 1.5)
        torch.testing.assert_close(module(x), oracle(x), **TOL[torch.float32])
    assert int(module.num_batches_tracked) == int(oracle.num_batches_tracked)
    torch.testing.assert_close(module.running_mean, oracle.running_mean, **TOL[torch.float32])
    torch.testing.assert_close(module.running_var, oracle.running_var, **TOL[torch.float32])
    assert not torch.allclose(module.running_mean, torch.zeros(C))
    module.eval()
    oracle.eval()
    x = _randn((2, C, 4, 5), seed=99, shift=3.0)
    y = module(x)
    torch.testing.assert_close(y, oracle(x), **TOL[torch.float32])
    # Eval with running statistics is not per-instance normalization.
    assert y.mean((2, 3)).abs().max() > 0.1


def test_instance_norm_refuses_two_dimensional_input():
    """in on (N, C) input raises ValueError: no positions to normalize over."""
    module = nl.make_norm("in", C)
    with pytest.raises(ValueError, match=r"\(N, C, L\)"):
        module(torch.randn(4, C))


def test_instance_norm_registry_default_is_affine():
    """make_norm("in") has a learnable affine (torch's default has none)."""
    module = nl.make_norm("in", C)
    assert module.affine
    assert {name for name, _ in module.named_parameters()} == {"weight", "bias"}


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (1, 3, 2)], ids=str)
@pytest.mark.parametrize("channel_dim", [1, -1])
def test_layer_norm_over_all_takes_one_sample_like_a_batch(shape, channel_dim):
    """Layer norm is per sample: a sample alone gives the same output as inside a batch."""
    generator = torch.Generator().manual_seed(3)
    channels = shape[channel_dim]
    norm = nl.make_norm("ln", channels, over="all", channel_dim=channel_dim)
    sample = torch.randn(shape, generator=generator)
    batch = torch.cat([sample, torch.randn(shape, generator=generator)])
    torch.testing.assert_close(norm(sample), norm(batch)[:1], atol=0, rtol=0)
