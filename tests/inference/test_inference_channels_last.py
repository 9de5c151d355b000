"""The inference tools on batch norms with ``channel_dim=-1`` (channels on the last dim).

Oracles: the unfolded (or unfrozen) model's eval output computed in float64, and
the same kind with ``channel_dim=1`` on the input with its channels moved to dim 1.

A Linear's output features are its last dim, exactly what a ``channel_dim=-1``
norm normalizes, so that fold is exact on (N, *, features) input; after a
convolution (channels on dim 1) such a norm normalizes another dim, and folding
it into the convolution's channels would compute something else: it is kept,
listed with the layer's path and the reason.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import normlab as nl
from normlab.checkpoints.describing import norm_layers
from normlab.inference.folding import fold_batchnorm, unfoldable_batchnorms

FEATURES = 6
#: Kinds with running statistics that fold_batchnorm folds, with their options.
FOLDABLE = {
    "bn": {},
    "bn-scalar": {},
    "bn-keras": {"convention": "keras", "momentum": 0.5},
    "brn": {"r_max": 1.5, "d_max": 0.5},
    "sync-bn": {},
    "frozen-bn": {},
}
NORMLAB_BATCH_NORMS = (nl.BatchNorm, nl.BatchRenorm, nl.FrozenBatchNorm)


def _norm(name: str, channels: int = FEATURES, **extra) -> nn.Module:
    kind = "bn" if name == "bn-keras" else name
    return nl.make_norm(kind, channels, channel_dim=-1, **FOLDABLE[name], **extra)


def _data(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float32 input of mean 3 and std 2, far from the initial running stats (0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    return 3.0 + 2.0 * torch.randn(shape, generator=generator)


def _with_statistics(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """``model`` in eval mode after three training steps, its norms' affine (and a frozen
    norm's statistics) randomized."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for step in range(3):
            model(_data(input_shape, seed=100 + step))
        for module in model.modules():
            if isinstance(module, nl.FrozenBatchNorm):
                module.running_mean.copy_(3.0 + torch.randn_like(module.running_mean))
                module.running_var.copy_(0.5 + 4.0 * torch.rand_like(module.running_var))
            if isinstance(module, NORMLAB_BATCH_NORMS) and module.weight is not None:
                module.weight.copy_(0.5 + torch.rand_like(module.weight))
                module.bias.copy_(torch.randn_like(module.bias))
    return model.eval()


def _assert_same_function(actual_model: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    """``actual_model(x)`` (float32) == ``model``'s eval output computed in float64."""
    with torch.no_grad():
        expected = copy.deepcopy(model).double().eval()(x.double())
        actual = actual_model(x)
    scale = expected.abs().max().item()
    assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5 * scale)


def _norms_left(model: nn.Module) -> list[str]:
    return [
        name for name, module in model.named_modules() if isinstance(module, NORMLAB_BATCH_NORMS)
    ]


def _fold_quietly(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fold_batchnorm(model)


# --- fold_batchnorm ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 4), (8, 5, 4), (4, 3, 5, 4)], ids=str)
@pytest.mark.parametrize("name", list(FOLDABLE))
def test_a_linear_then_a_channels_last_norm_folds_exactly_on_any_rank(name, shape):
    model = _with_statistics(nn.Sequential(nn.Linear(4, FEATURES), _norm(name), nn.ReLU()), shape)

    folded = _fold_quietly(model)

    assert _norms_left(folded) == []
    _assert_same_function(folded, model, _data(shape, seed=1))
    _assert_same_function(folded, model, _data((2, 7, 4), seed=2))  # another rank, same fold


class Untraceable(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it, so the Sequential fallback
    folds ``body``."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * (2.0 if x.sum() > 0 else 1.0)


@pytest.mark.parametrize("name", ["bn", "frozen-bn"])
def test_the_sequential_fallback_folds_a_channels_last_linear_pair_on_any_rank(name):
    shape = (8, 5, 4)
    model = _with_statistics(Untraceable(nn.Sequential(nn.Linear(4, FEATURES), _norm(name))), shape)

    folded = _fold_quietly(model)

    assert _norms_left(folded) == []
    _assert_same_function(folded, model, _data(shape, seed=1))


# A convolution whose output's last dim happens to equal the norm's num_features: the
# norm normalizes that spatial dim, which no fold into the convolution's channels computes.
CONVOLUTIONS = {
    "conv1d": (lambda: nn.Conv1d(3, 4, 3), 5, (8, 3, 7)),
    "conv2d": (lambda: nn.Conv2d(3, 6, 3, padding=1), 6, (8, 3, 6, 6)),
    "conv2d-same-channels": (lambda: nn.Conv2d(3, 6, 3, padding=1), 6, (8, 3, 5, 6)),
    "convT1d": (lambda: nn.ConvTranspose1d(3, 4, 3), 7, (8, 3, 5)),
}


@pytest.mark.parametrize("traced", [True, False], ids=["traced", "fallback"])
@pytest.mark.parametrize("name", ["bn", "bn-scalar", "frozen-bn"])
@pytest.mark.parametrize("case", list(CONVOLUTIONS))
def test_a_channels_last_norm_after_a_convolution_is_kept_with_its_reason(case, name, traced):
    layer, width, shape = CONVOLUTIONS[case]
    body = nn.Sequential(layer(), _norm(name, width))
    model = _with_statistics(body if traced else Untraceable(body), shape)
    path = "1" if traced else "body.1"

    listed = unfoldable_batchnorms(model)
    with pytest.warns(UserWarning, match="channel_dim=-1") as caught:
        folded = fold_batchnorm(model)

    assert list(listed) == [path]
    assert "channel_dim=-1" in listed[path] and "dim 1" in listed[path]
    assert f"{path!r}: {listed[path]}" in str(caught[0].message)
    assert _norms_left(folded) == [path]
    _assert_same_function(folded, model, _data(shape, seed=1))
    with pytest.raises(ValueError, match=f"'{path}': normalizes the last dim"):
        fold_batchnorm(model, strict=True)


class TokenEncoder(nn.Module):
    """A ViT/BERT-style block on (N, L, 4) tokens: an embedding Linear followed by its
    LayerNorm (foldable once swapped for a batch norm), then a pre-norm MLP residual."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, FEATURES)
        self.embed_norm = nn.LayerNorm(FEATURES)
        self.norm = nn.LayerNorm(FEATURES)
        self.mlp = nn.Sequential(nn.Linear(FEATURES, 8), nn.GELU(), nn.Linear(8, FEATURES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed_norm(self.embed(x))
        return h + self.mlp(self.norm(h))


@pytest.mark.parametrize("kind", ["bn", "bn-scalar", "brn"])
def test_layer_norms_swapped_for_batch_norm_fold_where_they_follow_a_linear(kind):
    shape = (8, 5, 4)
    swapped = nl.replace_norms(TokenEncoder(), kind).model
    assert swapped.embed_norm.channel_dim == swapped.norm.channel_dim == -1
    model = _with_statistics(swapped, shape)

    listed = unfoldable_batchnorms(model)
    with pytest.warns(UserWarning):
        folded = fold_batchnorm(model)

    assert list(listed) == ["norm"]  # follows the residual stream, not a Linear
    assert "follows" in listed["norm"]
    assert _norms_left(folded) == ["norm"]
    _assert_same_function(folded, model, _data(shape, seed=1))


# --- freeze, recalibrate, eval_parity -----------------------------------------------------


@pytest.mark.parametrize("name", ["bn", "bn-scalar", "bn-keras", "brn", "sync-bn"])
def test_freeze_keeps_the_channels_on_the_last_dim(name):
    shape = (8, 5, 4)
    model = _with_statistics(nn.Sequential(nn.Linear(4, FEATURES), _norm(name)), shape)
    original = copy.deepcopy(model)

    nl.inference.freeze(model)

    assert isinstance(model[1], nl.FrozenBatchNorm)
    assert model[1].channel_dim == -1
    _assert_same_function(model, original, _data(shape, seed=1))
    _assert_same_function(model.train(), original, _data(shape, seed=2))  # frozen in any mode


def _moved_pair(name: str) -> tuple[nn.Module, nn.Module]:
    """The kind with channel_dim=-1 and with channel_dim=1, in the same state."""
    last = _norm(name)
    kind = "bn" if name == "bn-keras" else name
    first = nl.make_norm(kind, FEATURES, **FOLDABLE[name])
    with torch.no_grad():
        for index, tensor in enumerate(last.state_dict().values()):
            if tensor.is_floating_point():
                gen = torch.Generator().manual_seed(index)
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
    first.load_state_dict(last.state_dict())
    return last, first


@pytest.mark.parametrize("name", ["bn", "bn-scalar", "bn-keras", "brn", "sync-bn"])
def test_eval_parity_reads_the_channels_where_the_layer_does(name):
    last, first = _moved_pair(name)
    x = _data((8, 5, FEATURES), seed=3)

    on_last = nl.inference.eval_parity(nn.Sequential(last), x)
    on_first = nl.inference.eval_parity(nn.Sequential(first), x.movedim(-1, 1))

    for got, want in zip(on_last.layers, on_first.layers, strict=True):
        for field in ("mean_shift", "var_ratio_min", "var_ratio_max", "output_change"):
            assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-5), field
    assert on_last.output_change == pytest.approx(on_first.output_change, rel=1e-5)


@pytest.mark.parametrize("name", ["bn-keras", "sync-bn"])
def test_recalibration_of_channels_last_layers_matches_the_moved_input(name):
    last, first = _moved_pair(name)
    batches = [_data((4, 5, FEATURES), seed=seed) for seed in range(3)]

    nl.inference.recalibrate(last, batches)
    nl.inference.recalibrate(first, [x.movedim(-1, 1) for x in batches])

    assert_close(last.running_mean, first.running_mean)
    assert_close(last.running_var, first.running_var)


# --- normlab inspect ----------------------------------------------------------------------


def test_inspect_says_which_layers_read_channels_on_the_last_dim(tmp_path, run_cli):
    model = nn.Sequential(
        nn.Linear(4, FEATURES),
        _norm("bn"),
        nn.Linear(FEATURES, 3),
        nl.BatchNorm(3),
        nl.FrozenBatchNorm(3, channel_dim=-1),
    )
    path = tmp_path / "model.pt"
    torch.save(model, path)

    notes = {layer.name: layer.notes for layer in norm_layers(model)}
    status, out, err = run_cli(["inspect", str(path)])

    assert "channel_dim=-1" in notes["1"] and "channel_dim=-1" in notes["4"]
    assert "channel_dim" not in notes["3"]
    assert status == 0, err
    assert out.count("channel_dim=-1") == 2, out
