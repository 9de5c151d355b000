"""Normlab's torch stand-ins are drop-in replacements for the originals.

Each original (torch.nn's BatchNorm1d/2d/3d, SyncBatchNorm, LayerNorm, RMSNorm,
GroupNorm, InstanceNorm1d/2d/3d; torchvision's FrozenBatchNorm2d as a float64
formula) and normlab's layer are built from the same arguments, positional and
keyword, get the same state, and go through the same train and eval steps
(including an empty batch): outputs, input and parameter gradients and buffers
must agree. Then what users do with modules: deepcopy, pickle, channels_last and
non-contiguous input, autocast, torch.compile.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import normlab as nl
from normlab.layers import GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from spec import CANONICAL_KINDS

C = 4
DTYPES = [torch.float32, torch.float64]
BATCH_NORMS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
INSTANCE_NORMS = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}

#: Constructor arguments shared by torch's batch and instance norms, positional and keyword.
NORM_BASE_ARGS = [
    ((C,), {}),
    ((C, 1e-3, 0.3), {}),
    ((C, 1e-3, None, True, True), {}),
    ((C,), {"eps": 1e-4, "momentum": None}),
    ((C,), {"affine": False}),
    ((C,), {"track_running_stats": False}),
    ((C, 1e-5, 0.1, False, False), {}),
    ((C,), {"bias": False}),
    ((C, 1e-5, 0.2, True, True, "cpu"), {"bias": False}),
]


def _same_state(ours: nn.Module, theirs: nn.Module, seed: int) -> None:
    """Random floating state in ``theirs``, loaded into ``ours`` through its state_dict."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in theirs.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=gen, dtype=torch.float64)
                tensor.copy_(values + (0.5 if "var" in name or name == "weight" else -0.5))
    ours.load_state_dict(theirs.state_dict())


def _tolerance(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}


def _steps(ours: nn.Module, theirs: nn.Module, shape: tuple[int, ...], dtype: torch.dtype):
    """Train, train, eval, empty train batch, train, eval; compare everything at each."""
    gen = torch.Generator().manual_seed(1)
    tolerance = _tolerance(dtype)
    for step, training in enumerate((True, True, False, True, True, False)):
        batch = (0, *shape[1:]) if step == 3 else shape
        ours.train(training)
        theirs.train(training)
        x = 1.0 + 2.0 * torch.randn(batch, generator=gen, dtype=torch.float64)
        x_ours = x.to(dtype).requires_grad_()
        x_theirs = x.to(dtype).requires_grad_()
        upstream = torch.randn(batch, generator=gen, dtype=torch.float64).to(dtype)
        y_ours = ours(x_ours)
        try:
            y_theirs = theirs(x_theirs)
        except IndexError:
            # torch's instance norm fails on an empty batch with running statistics; ours
            # gives an empty output and changes nothing (the buffers are compared below).
            assert batch[0] == 0 and y_ours.shape == batch
            y_theirs = y_ours.detach()
            x_theirs = x_ours
        assert y_ours.dtype == y_theirs.dtype and y_ours.shape == y_theirs.shape
        assert_close(y_ours, y_theirs, **tolerance, msg=f"output, step {step}")
        (y_ours * upstream).sum().backward()
        if y_theirs.requires_grad:
            (y_theirs * upstream).sum().backward()
        else:
            for parameter in theirs.parameters():
                parameter.grad = torch.zeros_like(parameter)
        assert_close(x_ours.grad, x_theirs.grad, **tolerance, msg=f"input grad, step {step}")
        ours_params, theirs_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
        assert ours_params.keys() == theirs_params.keys()
        for name, parameter in ours_params.items():
            assert_close(parameter.grad, theirs_params[name].grad, **tolerance, msg=name)
            parameter.grad = theirs_params[name].grad = None
        ours_buffers, theirs_buffers = dict(ours.named_buffers()), dict(theirs.named_buffers())
        assert ours_buffers.keys() == theirs_buffers.keys()
        for name, buffer in ours_buffers.items():
            assert_close(buffer, theirs_buffers[name], **tolerance, msg=f"{name}, step {step}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("args", "kwargs"), NORM_BASE_ARGS, ids=str)
@pytest.mark.parametrize("shape", [(5, C), (5, C, 3), (3, C, 3, 2), (2, C, 2, 3, 2)], ids=str)
def test_batch_norm_is_torch_batch_norm_nd(shape, args, kwargs, dtype):
    theirs = BATCH_NORMS[len(shape)](*args, **kwargs, dtype=dtype)
    ours = nl.BatchNorm(*args, **kwargs, dtype=dtype)
    _same_state(ours, theirs, 0)
    _steps(ours, theirs, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [*NORM_BASE_ARGS[:8], ((C, 1e-4, None, True, True, None), {"bias": False})],
    ids=str,
)
def test_sync_batch_norm_is_torch_sync_batch_norm_in_one_process(args, kwargs, dtype):
    """Outside a process group torch's SyncBatchNorm is batch norm on CPU too; so is ours.
    process_group is the sixth positional argument of both."""
    theirs = nn.SyncBatchNorm(*args, **kwargs, dtype=dtype)
    ours = nl.SyncBatchNorm(*args, **kwargs, dtype=dtype)
    _same_state(ours, theirs, 0)
    _steps(ours, theirs, (5, C, 3), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((C,), {}), ((C, 1e-3, False), {}), ((C, 1e-4, True, False), {}), ((C,), {"bias": False})],
    ids=str,
)
@pytest.mark.parametrize("shape", [(5, C), (5, 3, C)], ids=str)
def test_layer_norm_is_torch_layer_norm(shape, args, kwargs, dtype):
    """torch's LayerNorm(C) normalizes the last dim: normlab's with channel_dim=-1 (the
    default channel_dim=1 is the same on (N, C))."""
    theirs = nn.LayerNorm(*args, **kwargs, dtype=dtype)
    ours = LayerNorm(*args, **kwargs, channel_dim=-1, dtype=dtype)
    _same_state(ours, theirs, 0)
    _steps(ours, theirs, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("args", "kwargs"), [((C,), {}), ((C, 1e-3, False), {}), ((C,), {"eps": None})], ids=str
)
@pytest.mark.parametrize("shape", [(5, C), (5, 3, C)], ids=str)
def test_rms_norm_is_torch_rms_norm(shape, args, kwargs, dtype):
    theirs = nn.RMSNorm(*args, **kwargs, dtype=dtype)
    ours = RMSNorm(*args, **kwargs, channel_dim=-1, dtype=dtype)
    _same_state(ours, theirs, 0)
    _steps(ours, theirs, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((2, C), {}), ((2, C, 1e-3, False), {}), ((4, C), {"bias": False}), ((1, C, 1e-4), {})],
    ids=str,
)
@pytest.mark.parametrize("shape", [(5, C, 3), (3, C, 2, 3)], ids=str)
def test_group_norm_is_torch_group_norm(shape, args, kwargs, dtype):
    theirs = nn.GroupNorm(*args, **kwargs, dtype=dtype)
    ours = GroupNorm(*args, **kwargs, dtype=dtype)
    _same_state(ours, theirs, 0)
    _steps(ours, theirs, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("args", "kwargs"), NORM_BASE_ARGS, ids=str)
@pytest.mark.parametrize("shape", [(5, C, 3), (3, C, 2, 3), (2, C, 2, 3, 2)], ids=str)
def test_instance_norm_is_torch_instance_norm_nd(shape, args, kwargs, dtype):
    theirs = INSTANCE_NORMS[len(shape) - 2](*args, **kwargs, dtype=dtype)
    ours = InstanceNorm(*args, **kwargs, dtype=dtype)
    _same_state(ours, theirs, 0)
    _steps(ours, theirs, shape, dtype)


class _TorchvisionFrozenBatchNorm2d(nn.Module):
    """Oracle: torchvision.ops.FrozenBatchNorm2d's formula, evaluated in float64."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *([1] * (x.ndim - 2)))
        w, b = self.weight.double().reshape(shape), self.bias.double().reshape(shape)
        rv = self.running_var.double().reshape(shape)
        rm = self.running_mean.double().reshape(shape)
        scale = w * (rv + self.eps).rsqrt()
        return (x.double() * scale + (b - rm * scale)).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("args", "kwargs"), [((C,), {}), ((C, 1e-3), {}), ((C,), {"eps": 0.5})])
def test_frozen_batch_norm_is_torchvision_frozen_batch_norm_2d(args, kwargs, dtype):
    """Same arguments, buffers (no parameters) and outputs; a BatchNorm2d state_dict loads
    into both (num_batches_tracked dropped)."""
    theirs = _TorchvisionFrozenBatchNorm2d(*args, **kwargs).to(dtype)
    ours = nl.FrozenBatchNorm(*args, **kwargs, dtype=dtype)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert not list(ours.parameters())
    trained = nn.BatchNorm2d(C, dtype=dtype)
    _same_state(nn.BatchNorm2d(C, dtype=dtype), trained, 2)
    ours.load_state_dict(trained.state_dict())
    theirs.load_state_dict({k: v for k, v in trained.state_dict().items() if "num" not in k})
    gen = torch.Generator().manual_seed(3)
    for training in (True, False):
        ours.train(training)
        x = torch.randn(3, C, 2, 3, generator=gen, dtype=dtype, requires_grad=True)
        x_ref = x.detach().requires_grad_()
        y, y_ref = ours(x), theirs(x_ref)
        assert_close(y, y_ref, **_tolerance(dtype))
        y.sum().backward()
        y_ref.sum().backward()
        assert_close(x.grad, x_ref.grad, **_tolerance(dtype))
    assert ours(torch.randn(0, C, 2, 2, dtype=dtype)).shape == (0, C, 2, 2)


# What users do with modules


STAND_INS = {
    "BatchNorm2d": (lambda: nn.BatchNorm2d(C), lambda: nl.BatchNorm(C)),
    "SyncBatchNorm": (lambda: nn.SyncBatchNorm(C), lambda: nl.SyncBatchNorm(C)),
    "GroupNorm": (lambda: nn.GroupNorm(2, C), lambda: GroupNorm(2, C)),
    "InstanceNorm2d": (
        lambda: nn.InstanceNorm2d(C, affine=True, track_running_stats=True),
        lambda: InstanceNorm(C, affine=True, track_running_stats=True),
    ),
    "LayerNorm": (lambda: nn.LayerNorm(C), lambda: LayerNorm(C, channel_dim=-1)),
    "RMSNorm": (lambda: nn.RMSNorm(C), lambda: RMSNorm(C, channel_dim=-1)),
}


def _input(name: str, gen: torch.Generator) -> torch.Tensor:
    """(N, C, H, W), or (N, H, W, C) for the layers that torch applies to the last dim."""
    x = torch.randn(3, C, 5, 4, generator=gen)
    return x.movedim(1, -1).contiguous() if name in ("LayerNorm", "RMSNorm") else x


@pytest.mark.parametrize("name", STAND_INS)
def test_deepcopy_and_pickle_keep_state_and_outputs(name):
    _, build = STAND_INS[name]
    layer = build()
    _same_state(layer, layer, 4)
    x = _input(name, torch.Generator().manual_seed(5))
    expected = copy.deepcopy(layer).eval()(x)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer)), loaded):
        assert type(clone) is type(layer)
        assert_close(clone.eval()(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", STAND_INS)
def test_channels_last_and_non_contiguous_input_as_torch(name):
    """Output values and memory format follow torch's on NHWC-strided and sliced input."""
    original, build = STAND_INS[name]
    theirs, ours = original(), build()
    _same_state(ours, theirs, 6)
    gen = torch.Generator().manual_seed(7)
    base = _input(name, gen)
    inputs = [base[:, :, ::2], base.transpose(-1, -2)]
    if base.shape[1] == C:
        inputs.append(base.contiguous(memory_format=torch.channels_last))
    for x in inputs:
        for training in (True, False):
            ours.train(training)
            theirs.train(training)
            y_ours, y_theirs = ours(x), theirs(x)
            assert_close(y_ours, y_theirs, rtol=1e-5, atol=1e-5)
            if x.is_contiguous(memory_format=torch.channels_last) and x.ndim == 4:
                assert y_ours.is_contiguous(memory_format=torch.channels_last) == (
                    y_theirs.is_contiguous(memory_format=torch.channels_last)
                )


@pytest.mark.parametrize("name", STAND_INS)
def test_autocast_output_dtype_as_torch(name):
    original, build = STAND_INS[name]
    theirs, ours = original(), build()
    x = _input(name, torch.Generator().manual_seed(8))
    for training in (True, False):
        ours.train(training)
        theirs.train(training)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_ours, y_theirs = ours(x.bfloat16()), theirs(x.bfloat16())
        assert y_ours.dtype == y_theirs.dtype
        assert_close(y_ours.float(), y_theirs.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_torch_compile_of_a_small_model_matches_eager():
    """A conv net with normlab's batch and group norm compiles and matches eager, train and
    eval, outputs and gradients."""

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, C, 3),
            nl.BatchNorm(C),
            nn.ReLU(),
            GroupNorm(2, C),
            nn.Flatten(),
            nn.Linear(C * 6 * 6, 2),
        )

    eager, compiled_model = build(), build()
    compiled = torch.compile(compiled_model)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    for training in (True, True, False):
        eager.train(training)
        compiled_model.train(training)
        y, y_compiled = eager(x), compiled(x)
        assert_close(y_compiled, y, rtol=1e-4, atol=1e-5)
        y.sum().backward()
        y_compiled.sum().backward()
        for a, b in zip(eager.parameters(), compiled_model.parameters(), strict=True):
            assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5)
    for a, b in zip(eager.buffers(), compiled_model.buffers(), strict=True):
        assert_close(b, a, rtol=1e-4, atol=1e-5)


def _compile_cases() -> list:
    kinds = [("bn (keras)", "bn", {"convention": "keras"})]
    kinds += [(kind, kind, {}) for kind in CANONICAL_KINDS if kind != "none"]
    return [
        pytest.param(kind, options, ndim, id=f"{label}-{ndim}d")
        for label, kind, options in kinds
        for ndim in (2, 4)
        if not (kind in ("in", "gn") and ndim == 2)  # both refuse (N, C): one value per group
    ]


@pytest.mark.parametrize(("kind", "options", "ndim"), _compile_cases())
def test_torch_compile_traces_every_kind_whole_and_matches_eager(kind, options, ndim):
    """torch.compile(fullgraph=True) of a model holding each kind: no graph break inside the
    layer, and outputs, gradients and buffers as eager, in training and eval steps.

    The aot_eager backend traces the forward and the backward as inductor would, without
    generating code; fullgraph=True raises at the first graph break.
    """
    channels = 8

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nl.make_norm(kind, channels, **options), nn.ReLU())

    eager, compiled_model = build(), build()
    torch._dynamo.reset()  # each kind's own graphs, not a recompile of the previous test's
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    shape = (6, channels) if ndim == 2 else (4, channels, 3, 5)
    gen = torch.Generator().manual_seed(10)
    for training in (True, True, False):
        eager.train(training)
        compiled_model.train(training)
        x = (1.0 + 2.0 * torch.randn(shape, generator=gen)).requires_grad_()
        x_compiled = x.detach().clone().requires_grad_()
        y, y_compiled = eager(x), compiled(x_compiled)
        assert_close(y_compiled, y, rtol=1e-5, atol=1e-5)
        grad = torch.randn(shape, generator=gen)
        y.backward(grad)
        y_compiled.backward(grad)
        assert_close(x_compiled.grad, x.grad, rtol=1e-5, atol=1e-5)
        for a, b in zip(eager.parameters(), compiled_model.parameters(), strict=True):
            assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5)
    for a, b in zip(eager.buffers(), compiled_model.buffers(), strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-5)
