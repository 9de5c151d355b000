"""fold_batchnorm: eval-mode batch norm folded into the Linear/Conv before it.

Oracles: the unfolded model's eval output computed in float64 (``model.double()``)
for every case, and torch's ``fuse_conv_bn_eval`` / ``fuse_linear_bn_eval`` for the
folded weights of torch BatchNorm pairs.

Tolerances: a float32 layer's output has rounding error of about K * 2**-24 of
sum(|w * x|) over its K fan-in terms (K <= a few hundred here), well below
rtol=1e-5 of the output for all but outputs near zero, where the sum cancels;
those get ``atol = 1e-5 * max|output|``, i.e. 1e-5 relative to the output's
scale. Folded weights are compared at the same relative tolerance.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from torch.testing import assert_close

import normlab as nl
from normlab.inference.folding import fold_batchnorm, unfoldable_batchnorms
from normlab.inference.layers import batch_norm_layers
from normlab.models import build_model

PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def data(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """float32 input of mean 3 and std 2, far from the initial running stats (0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    return 3.0 + 2.0 * torch.randn(shape, generator=generator)


def norm_modules(model: nn.Module) -> list[nn.Module]:
    return [m for _, m in batch_norm_layers(model)] + [
        m for m in model.modules() if isinstance(m, nl.FrozenBatchNorm)
    ]


def with_statistics(model: nn.Module, input_shape: tuple[int, ...], steps: int = 3) -> nn.Module:
    """``model`` in eval mode, with running statistics and affine far from their defaults.

    A few training-mode forwards on data of mean 3 and std 2 move the running
    statistics; each norm's weight and bias are then randomized (FrozenBatchNorm,
    which learns nothing, gets random buffers).
    """
    model.train()
    with torch.no_grad():
        for step in range(steps):
            model(data(input_shape, seed=100 + step))
        for module in norm_modules(model):
            if isinstance(module, nl.FrozenBatchNorm):
                module.running_mean.copy_(3.0 + torch.randn_like(module.running_mean))
                module.running_var.copy_(0.5 + 4.0 * torch.rand_like(module.running_var))
            if module.weight is not None:
                module.weight.copy_(
                    torch.randn_like(module.weight).sign() * (0.5 + torch.rand_like(module.weight))
                )
                module.bias.copy_(torch.randn_like(module.bias))
    return model.eval()


def float64_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The unfolded model's eval output, computed in float64."""
    with torch.no_grad():
        return copy.deepcopy(model).double().eval()(x.double())


def assert_same_function(folded: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    """Folded float32 output == unfolded eval output (float64 oracle), at rtol 1e-5."""
    expected = float64_reference(model, x)
    with torch.no_grad():
        actual = folded(x)
    assert actual.dtype == torch.float32
    scale = expected.abs().max().item()
    assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5 * scale)


def fold_quietly(model: nn.Module) -> nn.Module:
    """fold_batchnorm, failing the test on any warning (everything must fold)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fold_batchnorm(model)


# --- pairs that fold ------------------------------------------------------------------


def bn(kind: str, channels: int, **options) -> nn.Module:
    return nl.make_norm(kind, channels, **options)


# (layer, norm, input shape); every norm follows its layer in an nn.Sequential.
PAIRS: dict[str, Callable[[], tuple[nn.Module, nn.Module, tuple[int, ...]]]] = {
    "linear-bn1d": lambda: (nn.Linear(6, 5), nn.BatchNorm1d(5), (8, 6)),
    "linear-nobias-bn1d": lambda: (nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5), (8, 6)),
    "conv1d-bn1d": lambda: (nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4), (8, 3, 10)),
    "conv2d-bn2d": lambda: (nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), (8, 3, 6, 6)),
    "conv2d-nobias-bn2d": lambda: (nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), (8, 3, 6, 6)),
    "conv3d-bn3d": lambda: (nn.Conv3d(2, 3, 2), nn.BatchNorm3d(3), (4, 2, 4, 4, 4)),
    "conv2d-groups2": lambda: (nn.Conv2d(4, 6, 3, groups=2), nn.BatchNorm2d(6), (8, 4, 6, 6)),
    "conv2d-groups2-nobias": lambda: (
        nn.Conv2d(4, 6, 3, groups=2, bias=False),
        nn.BatchNorm2d(6),
        (8, 4, 6, 6),
    ),
    "conv2d-depthwise": lambda: (nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4), (8, 4, 6, 6)),
    "conv2d-depthwise-x2-nobias": lambda: (
        nn.Conv2d(4, 8, 3, groups=4, bias=False),
        nn.BatchNorm2d(8),
        (8, 4, 6, 6),
    ),
    "convT1d": lambda: (nn.ConvTranspose1d(3, 4, 3, stride=2), nn.BatchNorm1d(4), (8, 3, 5)),
    "convT2d": lambda: (nn.ConvTranspose2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), (8, 3, 4, 4)),
    "convT2d-groups2": lambda: (
        nn.ConvTranspose2d(4, 6, 3, groups=2),
        nn.BatchNorm2d(6),
        (8, 4, 4, 4),
    ),
    "convT2d-groups2-nobias": lambda: (
        nn.ConvTranspose2d(4, 6, 3, groups=2, bias=False),
        nn.BatchNorm2d(6),
        (8, 4, 4, 4),
    ),
    "convT3d-groups3": lambda: (
        nn.ConvTranspose3d(3, 6, 2, groups=3),
        nn.BatchNorm3d(6),
        (4, 3, 3, 3, 3),
    ),
    "bn1d-affine-false": lambda: (nn.Linear(6, 5), nn.BatchNorm1d(5, affine=False), (8, 6)),
    "bn2d-momentum-none": lambda: (
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, momentum=None),
        (8, 3, 6, 6),
    ),
    "torch-syncbn": lambda: (nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4), (8, 3, 6, 6)),
    "normlab-bn": lambda: (nn.Conv2d(3, 4, 3), bn("bn", 4), (8, 3, 6, 6)),
    "normlab-bn-linear": lambda: (nn.Linear(6, 5), bn("bn", 5), (8, 6)),
    "normlab-bn-scalar": lambda: (nn.Conv2d(3, 4, 3), bn("bn-scalar", 4), (8, 3, 6, 6)),
    "normlab-bn-scalar-convT-groups2": lambda: (
        nn.ConvTranspose2d(4, 6, 3, groups=2),
        bn("bn-scalar", 6),
        (8, 4, 4, 4),
    ),
    "normlab-bn-keras": lambda: (
        nn.Conv2d(3, 4, 3),
        bn("bn", 4, convention="keras", momentum=0.5),
        (8, 3, 6, 6),
    ),
    "normlab-bn-scalar-keras": lambda: (
        nn.Linear(6, 5),
        bn("bn-scalar", 5, convention="keras", momentum=0.5),
        (8, 6),
    ),
    "normlab-bn-affine-false": lambda: (
        nn.Conv2d(3, 4, 3),
        bn("bn", 4, affine=False),
        (8, 3, 6, 6),
    ),
    "normlab-bn-momentum-none": lambda: (
        nn.Conv2d(3, 4, 3),
        bn("bn-scalar", 4, momentum=None),
        (8, 3, 6, 6),
    ),
    "normlab-brn": lambda: (nn.Conv2d(3, 4, 3), bn("brn", 4), (8, 3, 6, 6)),
    "normlab-sync-bn": lambda: (nn.Conv1d(3, 4, 3), bn("sync-bn", 4), (8, 3, 10)),
    "frozen-bn": lambda: (nn.Conv2d(3, 4, 3), bn("frozen-bn", 4), (8, 3, 6, 6)),
    "frozen-bn-scalar": lambda: (
        nn.Linear(6, 5, bias=False),
        bn("frozen-bn", 5, stats="scalar"),
        (8, 6),
    ),
}


def build_pair(case: str) -> tuple[nn.Sequential, tuple[int, ...]]:
    layer, norm, input_shape = PAIRS[case]()
    model = nn.Sequential(layer, norm, nn.ReLU())
    return with_statistics(model, input_shape), input_shape


@pytest.mark.parametrize("case", list(PAIRS))
def test_pair_folds_to_the_same_function(case: str) -> None:
    model, input_shape = build_pair(case)
    layer = model[0]

    folded = fold_quietly(model)

    assert isinstance(folded, fx.GraphModule)
    assert norm_modules(folded) == []
    folded_layer = folded.get_submodule("0")
    assert type(folded_layer) is type(layer)
    assert folded_layer.bias is not None  # a layer without bias gets one
    assert folded_layer.weight.dtype == folded_layer.bias.dtype == torch.float32
    assert_same_function(folded, model, data(input_shape, seed=1))


TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def torch_can_fuse(case: str) -> bool:
    """torch's fuser takes torch BatchNorm; it scales dim 1 of a transposed weight, which is
    right only for groups=1, and its Linear version needs affine=True. The other cases are
    checked by their output alone."""
    layer, norm, _ = PAIRS[case]()
    grouped_transpose = isinstance(layer, TRANSPOSED) and layer.groups > 1
    linear_without_affine = isinstance(layer, nn.Linear) and norm.weight is None
    is_torch_norm = isinstance(norm, nn.modules.batchnorm._BatchNorm)
    return is_torch_norm and not grouped_transpose and not linear_without_affine


TORCH_PAIRS = [case for case in PAIRS if torch_can_fuse(case)]


@pytest.mark.parametrize("case", TORCH_PAIRS)
def test_torch_pairs_fold_as_torch_fuses(case: str) -> None:
    model, _ = build_pair(case)
    layer, norm = copy.deepcopy(model[0]), copy.deepcopy(model[1])
    if isinstance(layer, nn.Linear):
        expected = fuse_linear_bn_eval(layer, norm)
    else:
        expected = fuse_conv_bn_eval(layer, norm, transpose=isinstance(layer, TRANSPOSED))

    folded = fold_quietly(model).get_submodule("0")

    for name in ("weight", "bias"):
        actual, wanted = getattr(folded, name), getattr(expected, name)
        scale = wanted.abs().max().item()
        assert_close(actual, wanted, rtol=1e-5, atol=1e-6 * scale)


def test_the_original_model_is_unchanged() -> None:
    model, _ = build_pair("conv2d-nobias-bn2d")
    state = {key: value.clone() for key, value in model.state_dict().items()}
    modules = dict(model.named_modules())

    fold_quietly(model)

    assert dict(model.named_modules()) == modules
    assert model[0].bias is None
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not model.training


def test_training_mode_is_refused() -> None:
    model, _ = build_pair("normlab-bn")
    model[1].train()
    with pytest.raises(ValueError, match=r"call model\.eval\(\) first.*'1'"):
        fold_batchnorm(model)


def test_frozen_batch_norm_folds_in_training_mode() -> None:
    model, input_shape = build_pair("frozen-bn")
    model.train()
    folded = fold_quietly(model)
    assert_same_function(folded.eval(), model.eval(), data(input_shape, seed=1))


# --- a forward that is not a chain --------------------------------------------------


class Residual(nn.Module):
    """conv -> bn -> + skip -> relu -> conv -> bn, on (N, 4, H, W)."""

    def __init__(self, kind: str = "bn") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = bn(kind, 4)
        self.conv2 = nn.Conv2d(4, 6, 1)
        self.bn2 = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)) + x)
        return self.bn2(self.conv2(y))


@pytest.mark.parametrize("kind", ["bn", "bn-scalar"])
def test_custom_forward_is_folded_through_fx(kind: str) -> None:
    model = with_statistics(Residual(kind), (8, 4, 5, 5))

    folded = fold_quietly(model)

    assert isinstance(folded, fx.GraphModule)
    assert norm_modules(folded) == []
    assert_same_function(folded, model, data((8, 4, 5, 5), seed=1))


# --- layers that cannot be folded are listed --------------------------------------


class SkipFromConv(nn.Module):
    """The conv's output feeds the norm and the skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.norm(y) + y


class SharedNorm(nn.Module):
    """One norm called after two convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv1(x)) + self.norm(self.conv2(x))


class SharedConv(nn.Module):
    """One conv called twice, each time followed by its own norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(4)
        self.norm2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv(self.norm1(self.conv(x))))


# (model, input shape, {name: part of the reason})
UNFOLDABLE: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...], dict[str, str]]]] = {
    "after-relu": lambda: (
        nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.BatchNorm1d(5)),
        (8, 6),
        {"2": "follows ReLU, not a Linear/Conv"},
    ),
    "no-running-stats-torch": lambda: (
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)),
        (8, 3, 6, 6),
        {"1": "track_running_stats=False: no running statistics"},
    ),
    "no-running-stats-normlab": lambda: (
        nn.Sequential(nn.Conv2d(3, 4, 3), bn("bn-scalar", 4, track_running_stats=False)),
        (8, 3, 6, 6),
        {"1": "track_running_stats=False: no running statistics"},
    ),
    "switchable": lambda: (
        nn.Sequential(nn.Conv2d(3, 4, 3), bn("switch", 4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)),
        (8, 3, 6, 6),
        {"1": "SwitchableNorm mixes per-sample statistics"},
    ),
    "conv-feeds-skip": lambda: (
        SkipFromConv(),
        (8, 4, 5, 5),
        {"norm": "its input 'conv' is also used by 'add'"},
    ),
    "shared-norm": lambda: (
        SharedNorm(),
        (8, 4, 5, 5),
        {"norm": "module called more than once"},
    ),
    "shared-conv": lambda: (
        SharedConv(),
        (8, 4, 5, 5),
        {
            "norm1": "its input 'conv' is a module called more than once",
            "norm2": "its input 'conv' is a module called more than once",
        },
    ),
    "after-weight-standardized-conv": lambda: (
        nn.Sequential(nl.WSConv2d(3, 4, 3), nn.BatchNorm2d(4)),
        (8, 3, 6, 6),
        {"1": "follows WSConv2d, a subclass of a Linear/Conv"},
    ),
    # Linear on (N, L, features) puts the features last; BatchNorm1d normalizes dim 1.
    "linear-features-last": lambda: (
        nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(3)),
        (8, 3, 6),
        {"1": "channels do not match"},
    ),
    "lab-mlp-after-relu": lambda: (
        build_model("mlp", (1, 8, 8), 10, norm="bn", placement="after"),
        (8, 1, 8, 8),
        {"3": "follows ReLU, not a Linear/Conv", "6": "follows ReLU, not a Linear/Conv"},
    ),
    "lab-cnn-after-relu": lambda: (
        build_model("cnn", (1, 8, 8), 10, norm="bn", placement="after"),
        (8, 1, 8, 8),
        {"2": "follows ReLU, not a Linear/Conv", "6": "follows ReLU, not a Linear/Conv"},
    ),
}


@pytest.mark.parametrize("case", list(UNFOLDABLE))
def test_unfoldable_layers_are_listed_with_their_reason(case: str) -> None:
    model, input_shape, expected = UNFOLDABLE[case]()
    model = with_statistics(model, input_shape)

    listed = unfoldable_batchnorms(model)
    with pytest.warns(UserWarning) as caught:
        folded = fold_batchnorm(model)

    assert list(listed) == list(expected)
    for name, reason in expected.items():
        assert reason in listed[name]
    assert len(caught) == 1
    message = str(caught[0].message)
    for name, reason in listed.items():
        assert f"{name!r}: {reason}" in message
    kept = {type(module) for module in norm_modules(folded)}
    assert len(norm_modules(folded)) == len(expected), kept
    assert_same_function(folded, model, data(input_shape, seed=1))
    with pytest.raises(ValueError, match="strict=True") as raised:
        fold_batchnorm(model, strict=True)
    assert all(reason in str(raised.value) for reason in listed.values())


def test_norm_after_an_add_is_listed() -> None:
    class AddThenNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.norm = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.conv(x) + x)

    model = with_statistics(AddThenNorm(), (8, 4, 3, 3))
    assert unfoldable_batchnorms(model) == {"norm": "follows add, not a Linear/Conv"}


def test_a_fully_foldable_model_lists_nothing_in_any_mode() -> None:
    model, _ = build_pair("normlab-bn-scalar")
    assert unfoldable_batchnorms(model.train()) == {}


# --- models torch.fx cannot trace --------------------------------------------------


class DataDependent(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, bias=False),
            bn("bn", 4),
            nn.ReLU(),
            nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2), bn("bn-scalar", 6)),
        )
        self.head_norm = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)
        if x.sum() > 0:
            y = y * 2.0
        return self.head_norm(y)


def test_untraceable_model_folds_its_sequential_pairs() -> None:
    model = with_statistics(DataDependent(), (8, 3, 6, 6))

    with pytest.warns(UserWarning) as caught:
        folded = fold_batchnorm(model)

    assert type(folded) is DataDependent
    assert isinstance(folded.features[1], nn.Identity)
    assert isinstance(folded.features[3][1], nn.Identity)
    assert [name for name, _ in batch_norm_layers(folded)] == ["head_norm"]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "'head_norm': model could not be traced with torch.fx (TraceError" in message
    assert "only nn.Sequential pairs were folded" in message
    x = data((8, 3, 6, 6), seed=1)
    assert_same_function(folded, model, x)
    assert_same_function(folded, model, -x)  # the other branch


class UntraceableShared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(4, 4, 3, padding=1)
        norm = nn.BatchNorm2d(4)
        self.body = nn.Sequential(conv, nn.BatchNorm2d(4), conv, norm, nn.ReLU(), norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) if x.sum() > 0 else -self.body(x)


def test_untraceable_model_lists_shared_modules() -> None:
    model = with_statistics(UntraceableShared(), (8, 4, 5, 5))

    listed = unfoldable_batchnorms(model)

    assert listed == {
        "body.1": "its input 'body.0' is registered at more than one place",
        "body.3": "module registered at more than one place ('body.3', 'body.5')",
    }
    with pytest.warns(UserWarning):
        folded = fold_batchnorm(model)
    assert_same_function(folded, model, data((8, 4, 5, 5), seed=1))


# --- the lab's models ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("kind", ["bn", "bn-scalar"])
def test_lab_models_with_norm_before_relu_fold_completely(name: str, kind: str) -> None:
    model = with_statistics(build_model(name, (1, 8, 8), 10, norm=kind), (16, 1, 8, 8))
    assert len(batch_norm_layers(model)) == 2

    folded = fold_quietly(model)

    assert batch_norm_layers(folded) == []
    assert_same_function(folded, model, data((16, 1, 8, 8), seed=1))


# --- property ------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    groups=st.integers(1, 3),
    in_per_group=st.integers(1, 3),
    out_per_group=st.integers(1, 3),
    kernel=st.integers(1, 3),
    bias=st.booleans(),
    transposed=st.booleans(),
    kind=st.sampled_from(["bn", "bn-scalar"]),
)
def test_property_folded_conv_matches_unfolded(
    groups: int,
    in_per_group: int,
    out_per_group: int,
    kernel: int,
    bias: bool,
    transposed: bool,
    kind: str,
) -> None:
    in_channels, out_channels = groups * in_per_group, groups * out_per_group
    conv_type = nn.ConvTranspose2d if transposed else nn.Conv2d
    conv = conv_type(in_channels, out_channels, kernel, groups=groups, bias=bias)
    input_shape = (6, in_channels, 5, 5)
    model = with_statistics(nn.Sequential(conv, bn(kind, out_channels)), input_shape)

    folded = fold_quietly(model)

    assert norm_modules(folded) == []
    assert_same_function(folded, model, data(input_shape, seed=1))
