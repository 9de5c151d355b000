"""`normlab.replace_norms`: every normalization layer of a model, swapped for any kind.

The models are written here the way torchvision and timm write theirs: a
ResNet-18-shaped network (BatchNorm2d after each conv, downsample branches,
a ReLU shared within each block, one norm registered at two places) and a
ViT/BERT-style encoder (LayerNorm(C) over the last dim of (N, L, C) tokens,
pre-norm and post-norm). Oracles: the original model (its layers' state and
output shapes), ``make_norm`` for what each kind builds, and the spec tables
below for what each layer's running statistics hold.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normlab as nl
from normlab.swap import Replaced
from spec import CANONICAL_KINDS

KINDS = list(CANONICAL_KINDS)
C = 8


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: torch's thread pool only adds waits on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: conv-bn-relu-conv-bn, plus the input (downsampled
    by a 1x1 conv and a BatchNorm2d when the shape changes); one ReLU used twice."""

    def __init__(self, cin: int, cout: int, stride: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """ResNet-18's structure at toy size: stem conv + bn + relu + maxpool, two stages of two
    blocks (the second downsampling), pooling, fc; the stem's norm is also registered as
    ``head_norm`` (a module shared by two parents)."""

    def __init__(self, norm: type[nn.Module] = nn.BatchNorm2d, width: int = C) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(
            BasicBlock(width, width, 1, norm), BasicBlock(width, width, 1, norm)
        )
        self.layer2 = nn.Sequential(
            BasicBlock(width, 2 * width, 2, norm), BasicBlock(2 * width, 2 * width, 1, norm)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, 10)
        self.extra = nn.Sequential(self.bn1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.extra(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(self.pool(x).flatten(1))


class EncoderLayer(nn.Module):
    """A transformer encoder layer on (N, L, C) tokens: pre-norm (ViT) or post-norm (BERT)."""

    def __init__(self, dim: int, norm: type[nn.Module], pre_norm: bool) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1 = norm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = norm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self._attend(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self._attend(x))
        return self.norm2(x + self.mlp(x))


class Encoder(nn.Module):
    """Patch embedding, learned positions, two encoder layers, a final norm (pre-norm
    only, as ViT), mean pooling, a head."""

    def __init__(
        self, norm: type[nn.Module] = nn.LayerNorm, pre_norm: bool = True, dim: int = C
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 5, dim, generator=_gen(3)))
        self.layers = nn.ModuleList(EncoderLayer(dim, norm, pre_norm) for _ in range(2))
        self.norm = norm(dim) if pre_norm else nn.Identity()
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(1))


class SubclassedBatchNorm2d(nn.BatchNorm2d):
    """A user's subclass of torch's layer (as timm's BatchNormAct2d is)."""


def _conv_net(norm: nn.Module, dims: int = 2) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    return nn.Sequential(conv(2, C, 3, padding=1), norm, nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))


def _images(dims: int = 2, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 2, *(5,) * dims, generator=_gen(dims))


def _source(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A model whose normalization layers are all of the source ``name``, and its input."""
    if name == "resnet18-like":
        return TinyResNet(), torch.randn(4, 3, 8, 8, generator=_gen(0))
    if name in ("vit-like (pre-norm)", "bert-like (post-norm)"):
        return Encoder(pre_norm=name.startswith("vit")), torch.randn(4, 5, 6, generator=_gen(1))
    if name == "RMSNorm tokens":
        return Encoder(nn.RMSNorm), torch.randn(4, 5, 6, generator=_gen(1))
    if name == "BatchNorm1d (N, C)":
        model = nn.Sequential(nn.Linear(6, C), nn.BatchNorm1d(C), nn.ReLU(), nn.Linear(C, 3))
        return model, torch.randn(4, 6, generator=_gen(2))
    if name == "BatchNorm1d (N, C, L)":
        return _conv_net(nn.BatchNorm1d(C), 1), _images(1)
    if name == "BatchNorm3d":
        return _conv_net(nn.BatchNorm3d(C), 3), _images(3)
    if name == "SyncBatchNorm":
        return _conv_net(nn.SyncBatchNorm(C)), _images()
    if name == "GroupNorm":
        return _conv_net(nn.GroupNorm(2, C)), _images()
    if name.startswith("InstanceNorm"):
        dims = int(name[-2])
        layer = getattr(nn, name)(C, affine=True, track_running_stats=dims == 2)
        return _conv_net(layer, dims), _images(dims)
    if name == "subclass of BatchNorm2d":
        return _conv_net(SubclassedBatchNorm2d(C)), _images()
    kind = name.removeprefix("normlab ")
    return _conv_net(nl.make_norm(kind, C)), _images()


SOURCES_CHANNELS_FIRST = [
    "resnet18-like",
    "BatchNorm1d (N, C)",
    "BatchNorm1d (N, C, L)",
    "BatchNorm3d",
    "SyncBatchNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "subclass of BatchNorm2d",
    *(f"normlab {kind}" for kind in KINDS if kind != "none"),
]
SOURCES_LAST_DIM = ["vit-like (pre-norm)", "bert-like (post-norm)", "RMSNorm tokens"]

#: Pairs the kind cannot run on the source's real input: refused with example_input.
NEEDS_POSITIONS = {"BatchNorm1d (N, C)"}  # instance norm has one value per channel
ONE_VALUE_PER_GROUP = {"BatchNorm1d (N, C)"}  # gn's default 8 groups of 8 features

#: What each layer's running_var holds (None: no running statistics).
TORCH_BN = "unbiased"
VARIANCE_OF_KIND = {
    "bn": "unbiased",
    "bn-scalar": "unbiased",
    "sync-bn": "unbiased",
    "switch": "unbiased",
    "brn": "sigma2_minus_eps",
    "frozen-bn": "fixed",
}


INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nl.layers.InstanceNorm)


def _variance_held(layer: nn.Module, kind: str | None) -> str | None:
    """Batch statistics a layer keeps for eval (instance norm's average per-sample ones)."""
    if getattr(layer, "running_var", None) is None or isinstance(layer, INSTANCE_NORMS):
        return None
    return VARIANCE_OF_KIND.get(kind, TORCH_BN) if kind else TORCH_BN


def _norms(model: nn.Module) -> dict[str, nn.Module]:
    return {p: m for p, m in model.named_modules() if nl.swap.is_norm_layer(m)}


def _prepared(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Non-trivial affine and running statistics in every norm (a few training steps on
    shifted input, then random affine)."""
    model.train()
    with torch.no_grad():
        for step in range(2):
            model(3 + 2 * x.roll(step, 0))
        for index, layer in enumerate(_norms(model).values()):
            for name in ("weight", "bias"):
                tensor = getattr(layer, name, None)
                if isinstance(tensor, torch.Tensor):
                    tensor.copy_(torch.randn(tensor.shape, generator=_gen(index)))
    return model


def _source_kind(name: str) -> str | None:
    return name.removeprefix("normlab ") if name.startswith("normlab ") else None


def _check_swap(source: str, kind: str, **options) -> None:
    model, x = _source(source)
    _prepared(model, x)
    expected_shape = model(x).shape
    before = copy.deepcopy(model)
    old_layers = _norms(before)
    every_path = {
        p for p, m in before.named_modules(remove_duplicate=False) if m in old_layers.values()
    }
    replaced = nl.replace_norms(model, kind, example_input=x, **options)
    assert isinstance(replaced, Replaced) and replaced.model is model
    assert {p for r in replaced.replacements for p in r.paths} == every_path
    assert [r.path for r in replaced.replacements] == list(old_layers)
    last_dim = source in SOURCES_LAST_DIM
    for report in replaced.replacements:
        old, new = old_layers[report.path], model.get_submodule(report.path)
        for other in report.paths[1:]:
            assert model.get_submodule(other) is new
        fresh = nl.make_norm(kind, report.channels, **({"channel_dim": -1} if last_dim else {}))
        assert type(new) is type(fresh)
        assert report.old == old._get_name() and report.kind == kind  # as repr names it
        assert report.layout == ("(N, *, C)" if last_dim else "(N, C, *)")
        assert new.training == old.training
        expected = []
        for name in ("weight", "bias"):
            mine, theirs = getattr(old, name, None), getattr(new, name, None)
            tensors = isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor)
            if tensors and mine.shape == theirs.shape:
                torch.testing.assert_close(theirs, mine, rtol=0, atol=0)
                expected.append(name)
        held = _variance_held(old, _source_kind(source)), _variance_held(new, kind)
        same_shape = held[0] and held[1] and old.running_mean.shape == new.running_mean.shape
        if same_shape and ("fixed" in held or held[0] == held[1]):
            torch.testing.assert_close(new.running_mean, old.running_mean, rtol=0, atol=0)
            torch.testing.assert_close(new.running_var, old.running_var, rtol=0, atol=0)
            expected += ["running_mean", "running_var"]
            steps = [getattr(layer, "num_batches_tracked", None) for layer in (old, new)]
            if None not in steps:
                assert steps[1] == steps[0]
                expected.append("num_batches_tracked")
        assert list(report.carried) == expected, report
        state = [n for n, _ in [*fresh.named_parameters(), *fresh.named_buffers()]]
        assert sorted(report.reinitialized) == sorted(n for n in state if n not in expected)
        had = [n for n, _ in [*old.named_parameters(), *old.named_buffers()]]
        assert sorted(report.dropped) == sorted(n for n in had if n not in expected)
    for training in (True, False):
        out = model.train(training)(x)
        assert out.shape == expected_shape and torch.isfinite(out).all()
    out.sum().backward()


#: Sources without per-channel batch statistics: frozen-bn would get identity statistics.
NO_BATCH_STATISTICS = {
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    *(f"normlab {kind}" for kind in ("bn-scalar", "ln", "rms", "gn", "in")),
    *SOURCES_LAST_DIM,
}


def _check_swap_or_identity_statistics(source: str, kind: str) -> None:
    """frozen-bn from a layer without batch statistics of its shape is refused (it would not
    normalize at all) unless identity_statistics=True asks for it."""
    if kind == "frozen-bn" and source in NO_BATCH_STATISTICS:
        _check_refused(source, kind, "keeps fixed statistics.*identity_statistics=True")
        _check_swap(source, kind, identity_statistics=True)
    else:
        _check_swap(source, kind)


def _check_refused(source: str, kind: str, reason: str) -> None:
    model, x = _source(source)
    _prepared(model, x)
    slots = dict(model.named_modules(remove_duplicate=False))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=reason) as error:
        nl.replace_norms(model, kind, example_input=x)
    assert "Nothing was changed" in str(error.value)
    assert dict(model.named_modules(remove_duplicate=False)) == slots
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state[name], rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", SOURCES_CHANNELS_FIRST)
def test_channels_first_layers_become_any_kind_with_their_state(source, kind):
    """Forward shapes in train and eval, the carried state, or the refusal, per pair."""
    if kind == "in" and source in NEEDS_POSITIONS:
        _check_refused(source, kind, r"in 1 \(BatchNorm1d replaced by in\).*position")
    elif kind == "gn" and source in ONE_VALUE_PER_GROUP:
        _check_refused(source, kind, r"in 1 \(BatchNorm1d replaced by gn\).*fewer groups")
    else:
        _check_swap_or_identity_statistics(source, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", SOURCES_LAST_DIM)
def test_last_dim_layers_become_any_kind_reading_the_last_dim(source, kind):
    """LayerNorm(C) / RMSNorm(C) on (N, L, C) tokens: every kind with channel_dim=-1, so
    batch norm in a transformer normalizes each of the C features over N and L."""
    _check_swap_or_identity_statistics(source, kind)


def test_a_kind_on_tokens_normalizes_the_last_dim_as_on_moved_dims():
    """The new batch norm in the encoder computes what the same kind computes on the tokens
    moved to (N, C, L): layout kept, not reread."""
    model, x = _source("vit-like (pre-norm)")
    nl.replace_norms(model, "bn", example_input=x)
    layer = model.layers[0].norm1
    tokens = torch.randn(4, 5, C, generator=_gen(5))
    reference = nl.make_norm("bn", C)
    reference.load_state_dict(layer.state_dict())
    expected = reference(tokens.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(layer.train()(tokens), expected)
    torch.testing.assert_close(layer.running_var, reference.running_var)


def test_a_shared_norm_is_replaced_once_at_every_place():
    model, _ = _source("resnet18-like")
    replaced = nl.replace_norms(model, "gn", groups=2)
    (shared,) = [r for r in replaced.replacements if len(r.paths) > 1]
    assert shared.paths == ("bn1", "extra.0")
    assert model.bn1 is model.extra[0] and isinstance(model.bn1, nn.GroupNorm)
    assert model.bn1.num_groups == 2
    assert "bn1 = extra.0: BatchNorm2d(8) -> gn" in replaced.summary()


def test_a_norm_that_is_the_root_gives_a_new_root():
    bn = nn.BatchNorm2d(C)
    replaced = nl.replace_norms(bn, "ln", example_input=torch.randn(2, C, 3, 3))
    assert isinstance(replaced.model, nn.LayerNorm) and replaced.model is not bn
    assert replaced.replacements[0].paths == ("",)


def test_include_and_exclude_select_by_class_and_by_path_pattern():
    model, x = _source("resnet18-like")
    replaced = nl.replace_norms(model, "gn", include="layer2.*", exclude=["*.downsample.*"])
    paths = [r.path for r in replaced.replacements]
    assert paths == ["layer2.0.bn1", "layer2.0.bn2", "layer2.1.bn1", "layer2.1.bn2"]
    assert isinstance(model.layer2[0].downsample[1], nn.BatchNorm2d)
    assert isinstance(model.layer1[0].bn1, nn.BatchNorm2d)
    replaced = nl.replace_norms(model, "ln", include=[nn.BatchNorm2d], exclude="bn1")
    assert "bn1" not in [r.path for r in replaced.replacements]
    assert not any(type(m) is nn.BatchNorm2d for n, m in model.named_modules() if n != "bn1")
    assert model(x).shape == (4, 10)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("include", "layer9.*", r"include= 'layer9\.\*' matches no normalization layer.*bn1"),
        ("exclude", nn.LayerNorm, "exclude= LayerNorm matches no normalization layer"),
        ("include", 3, None),
    ],
)
def test_a_selector_that_matches_nothing_or_is_not_a_selector_is_refused(option, value, message):
    model, _ = _source("resnet18-like")
    slots = dict(model.named_modules(remove_duplicate=False))
    if message is None:
        with pytest.raises(TypeError, match="classes or module-path patterns"):
            nl.replace_norms(model, "gn", **{option: value})
    else:
        with pytest.raises(ValueError, match=message):
            nl.replace_norms(model, "gn", **{option: value})
    assert dict(model.named_modules(remove_duplicate=False)) == slots


def test_a_multi_dim_normalized_shape_is_refused_with_its_path_and_nothing_changes():
    model = nn.Sequential(nn.Conv2d(2, C, 1), nn.BatchNorm2d(C), nn.LayerNorm((C, 5, 5)))
    slots = dict(model.named_modules(remove_duplicate=False))
    with pytest.raises(ValueError, match=r"2 \(LayerNorm\): normalized_shape \(8, 5, 5\)"):
        nl.replace_norms(model, "bn")
    assert dict(model.named_modules(remove_duplicate=False)) == slots
    replaced = nl.replace_norms(model, "bn", exclude="2", example_input=_images())
    assert [r.path for r in replaced.replacements] == ["1"]


def test_options_reach_every_new_layer_and_bad_ones_are_refused_first():
    model, x = _source("resnet18-like")
    slots = dict(model.named_modules(remove_duplicate=False))
    for options, error in (({"grups": 2}, "grups"), ({"channel_dim": -1}, "channel_dim")):
        with pytest.raises(TypeError, match=error):
            nl.replace_norms(model, "gn", **options)
    with pytest.raises(ValueError, match="unknown normalization kind"):
        nl.replace_norms(model, "gnn")
    with pytest.raises(ValueError, match=r"bn1 \(BatchNorm2d\).*divide"):
        nl.replace_norms(model, "gn", groups=3)
    assert dict(model.named_modules(remove_duplicate=False)) == slots
    nl.replace_norms(model, "bn", convention="keras", example_input=x)
    assert {m.convention for m in _norms(model).values()} == {"keras"}


def test_a_factory_builds_each_new_layer_from_the_channel_count():
    model, x = _source("resnet18-like")
    replaced = nl.replace_norms(model, lambda c: nn.GroupNorm(4, c), example_input=x)
    assert {(m.num_groups, m.num_channels) for m in _norms(model).values()} == {(4, 8), (4, 16)}
    assert replaced.replacements[0].kind.endswith("<locals>.<lambda>")
    with pytest.raises(TypeError, match=r"functools\.partial"):
        nl.replace_norms(model, nn.LayerNorm, eps=1e-3)


def test_a_factory_whose_layer_fails_on_the_example_is_undone():
    model, x = _source("vit-like (pre-norm)")
    slots = dict(model.named_modules(remove_duplicate=False))
    with pytest.raises(ValueError, match=r"layers\.0\.norm1 \(LayerNorm replaced by BatchNorm1d"):
        nl.replace_norms(model, nn.BatchNorm1d, example_input=x)
    assert dict(model.named_modules(remove_duplicate=False)) == slots


def test_device_dtype_and_mode_of_each_layer_are_kept():
    model, x = _source("resnet18-like")
    model.double().eval()
    nl.replace_norms(model, "brn", example_input=x.double())
    for layer in _norms(model).values():
        assert isinstance(layer, nl.BatchRenorm) and not layer.training
        floats = [t for t in layer.state_dict().values() if t.is_floating_point()]
        assert floats and all(t.dtype == torch.float64 for t in floats)


def test_a_model_without_norms_is_returned_unchanged_with_an_empty_report():
    model = nn.Sequential(nn.Linear(3, 3))
    replaced = nl.replace_norms(model, "bn")
    assert replaced.model is model and replaced.replacements == []
    assert replaced.summary() == "no normalization layer replaced"
