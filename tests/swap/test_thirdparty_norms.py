"""timm's and torchvision's own normalization classes through replace_norms, freeze, fold,
convert_sync_batchnorm and inspect, on stand-ins of those classes (tests/thirdparty_standins.py)
and, where timm imports, on timm's real models.

Oracles: the original model (its outputs and gradients: a swap to the matching kind with the
layer's own settings computes the same function), and the layer's documented forward.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import normlab as nl
import thirdparty_standins as tp
from model_parity import max_difference, sgd_step, swap_options
from spec import CANONICAL_KINDS


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _images(n: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- item: a norm + activation layer keeps its activation ---------------------------------


def test_batchnormact_swapped_keeps_its_activation_and_summary_says_so():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), tp.BatchNormAct2d(8, act_layer=nn.ReLU)).eval()
    x = _images(2, 16)
    expected = model(x)
    replaced = nl.replace_norms(model, "bn", example_input=x)
    torch.testing.assert_close(replaced.model(x), expected, rtol=0, atol=0)
    assert (replaced.model(x) >= 0).all()
    assert "then act ReLU, kept" in replaced.summary()


@pytest.mark.parametrize(
    ("build", "kind", "options"),
    [
        (lambda: tp.EfficientNetBlock(), "bn", {}),
        (lambda: tp.ResNetV2Block(), "gn", {"groups": 4}),
    ],
    ids=["efficientnet-BatchNormAct2d", "resnetv2-GroupNormAct"],
)
def test_norm_act_models_swap_to_the_matching_kind_exactly(build, kind, options):
    """Outputs and gradients in train and eval: 0.0 difference."""
    model = tp.randomized(build())
    x = _images()
    swapped = copy.deepcopy(model)
    nl.replace_norms(swapped, kind, example_input=x, **options)
    assert max_difference(model, swapped, x) == 0.0


def test_freeze_and_fold_keep_the_activation_of_a_norm_act_layer():
    model = tp.randomized(tp.EfficientNetBlock()).eval()
    x = _images()
    expected = model(x)
    frozen = nl.inference.freeze(copy.deepcopy(model))
    torch.testing.assert_close(frozen(x), expected, rtol=0, atol=1e-5)
    folded = nl.inference.fold_batchnorm(model)
    assert not [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=1e-5)


def test_an_unknown_subclass_that_overrides_forward_is_refused_by_name():
    class ScaledBatchNorm2d(nn.BatchNorm2d):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(nn.Conv2d(3, 4, 1), ScaledBatchNorm2d(4))
    with pytest.raises(ValueError, match=r"ScaledBatchNorm2d overrides.*forward"):
        nl.replace_norms(model, "bn")
    with pytest.raises(ValueError, match=r"ScaledBatchNorm2d overrides.*forward"):
        nl.inference.freeze(model)


def test_recalibrate_sets_batchnormact2d_statistics_as_batchnorm2d_and_keeps_the_activation():
    """Precise BN on two BatchNormAct2d layers: each one's running statistics become the
    population mean and unbiased variance of its inputs over the calibration data (the
    second one's inputs through the first normalized with each batch's statistics, then
    its ReLU), computed in float64; in eval mode both activations still run."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        tp.BatchNormAct2d(8, act_layer=nn.ReLU),
        nn.Conv2d(8, 4, 1),
        tp.BatchNormAct2d(4, act_layer=nn.SiLU),
    )
    tp.randomized(model)
    reference = copy.deepcopy(model).double()
    images = 1.0 + _images(24, 8)
    batches = images.split(8)
    steps = [model[i].num_batches_tracked.clone() for i in (1, 3)]
    nl.inference.recalibrate(model, batches)

    def statistics(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels = values.transpose(0, 1).reshape(values.shape[1], -1)
        return channels.mean(1), channels.var(1)  # the unbiased variance, as torch stores

    def batch_normalized(values: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        mean, var = values.mean((0, 2, 3)), values.var((0, 2, 3), correction=0)
        shape = (1, -1, 1, 1)
        scale = layer.weight.view(shape) / (var.view(shape) + layer.eps).sqrt()
        return (values - mean.view(shape)) * scale + layer.bias.view(shape)

    with torch.no_grad():
        conv1, norm1, conv2, _ = reference
        first = [conv1(batch.double()) for batch in batches]
        second = [conv2(batch_normalized(h, norm1).relu()) for h in first]
        for layer, inputs in ((model[1], first), (model[3], second)):
            mean, var = statistics(torch.cat(inputs))
            torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-5)
    assert [model[i].num_batches_tracked for i in (1, 3)] == steps
    assert isinstance(model[1].act, nn.ReLU) and isinstance(model[3].act, nn.SiLU)

    model.eval()
    with torch.no_grad():
        hidden = model[1](model[0](images))
        expected = nn.functional.batch_norm(
            model[0](images), model[1].running_mean, model[1].running_var, model[1].weight,
            model[1].bias, eps=model[1].eps,
        ).relu()  # fmt: skip
    assert (hidden == 0).any() and (hidden >= 0).all()
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-6)


# --- item: channels-first LayerNorm2d --------------------------------------------------------


@pytest.mark.parametrize("width", [8, 5], ids=["W==C", "W!=C"])
def test_layernorm2d_is_swapped_reading_channels_on_dim_1(width):
    """timm's/torchvision's LayerNorm2d normalizes dim 1; with W == C a last-dim reading
    was silently wrong, otherwise refused with the wrong fix."""
    model = tp.randomized(nn.Sequential(nn.Conv2d(3, 8, 1), tp.LayerNorm2d(8)))
    x = torch.randn(2, 3, 4, width, generator=torch.Generator().manual_seed(3))
    swapped = copy.deepcopy(model)
    replaced = nl.replace_norms(swapped, "ln", example_input=x)
    assert replaced.replacements[0].layout == "(N, C, *)"
    assert max_difference(model, swapped, x) == 0.0


def test_convnext_swaps_to_layer_norm_exactly():
    model = tp.randomized(tp.ConvNeXtBlock())
    x = _images()
    swapped = copy.deepcopy(model)
    nl.replace_norms(swapped, "ln", example_input=x)
    assert max_difference(model, swapped, x) == 0.0


# --- item: frozen-bn from a layer without running statistics ---------------------------------


def test_frozen_bn_from_group_norm_is_refused_unless_asked():
    model = tp.ResNetV2Block()
    with pytest.raises(ValueError, match=r"identity_statistics=True.*Nothing was changed"):
        nl.replace_norms(model, "frozen-bn")
    replaced = nl.replace_norms(model, "frozen-bn", identity_statistics=True)
    assert "identity statistics" in replaced.summary()


# --- item: eps and momentum carried and reported ---------------------------------------------


def test_eps_and_momentum_are_carried_and_every_changed_setting_is_listed():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, eps=1e-3, momentum=0.01), nn.LayerNorm(8, eps=1e-12)
    )
    replaced = nl.replace_norms(model, "bn")
    assert (model[1].eps, model[1].momentum) == (1e-3, 0.01)
    assert model[2].eps == 1e-12
    assert "changed" not in replaced.summary()
    replaced = nl.replace_norms(model, "bn", eps=1e-5)
    assert "changed eps 0.001 -> 1e-05" in replaced.summary()
    keras = nl.replace_norms(nn.BatchNorm2d(4, momentum=0.01), "bn", convention="keras").model
    assert keras.momentum == pytest.approx(0.99)


# --- item: convert_sync_batchnorm takes subclasses ---------------------------------------------


def test_convert_sync_batchnorm_converts_a_norm_act_subclass_keeping_its_activation():
    model = tp.randomized(tp.EfficientNetBlock()).eval()
    x = _images()
    expected = model(x)
    converted = nl.convert_sync_batchnorm(model)
    assert not [m for m in converted.modules() if isinstance(m, tp.BatchNormAct2d)]
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)


# --- every stand-in class: recognized, swapped to each kind, described -----------------------


@pytest.mark.parametrize("kind", CANONICAL_KINDS)
@pytest.mark.parametrize("name", list(tp.MODELS))
def test_every_kind_replaces_every_standin_class_and_trains_one_step(name, kind):
    build, _, _ = tp.MODELS[name]
    model = tp.randomized(build())
    x = _images()
    replaced = nl.replace_norms(model, kind, example_input=x, **swap_options(kind))
    assert len(replaced.replacements) >= 2 and not replaced.skipped
    left = [
        m for m in model.modules() if type(m).__module__ == tp.__name__ and nl.swap.is_norm_layer(m)
    ]
    assert not left
    loss = sgd_step(model, x)
    assert torch.isfinite(loss)
    assert torch.isfinite(model(x)).all()


def test_inspect_describes_the_standin_classes():
    from normlab.checkpoints import norm_layers

    layers = {layer.name: layer for layer in norm_layers(tp.RmsViTBlock())}
    assert set(layers) == {"stem_norm", "norm1", "norm2"}
    assert "channels on dim 1" in layers["stem_norm"].notes
    assert "then act GELU" in layers["norm2"].notes
    assert layers["norm1"].eps == 1e-6 and layers["norm1"].num_features == 8


def test_inspect_notes_that_torchvisions_frozen_batch_norms_are_frozen():
    """torchvision's and timm's FrozenBatchNorm2d are frozen as normlab's FrozenBatchNorm is:
    the same note, and no momentum (they keep statistics but never update them)."""
    from normlab.checkpoints import norm_layers

    layers = {layer.name: layer for layer in norm_layers(tp.FrozenBackbone())}
    assert set(layers) == {"bn1", "bn2"}
    for layer in layers.values():
        assert "frozen: statistics and affine are fixed" in layer.notes
        assert layer.momentum is None and layer.running_mean is not None


# --- real timm models, where timm imports ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "options"),
    [
        ("efficientnet_b0", "bn", {}),
        ("resnetv2_50", "gn", {"groups": 32}),
        ("convnext_atto", "ln", {}),
    ],
)
def test_real_timm_models_swap_to_the_matching_kind_exactly(name, kind, options):
    timm = pytest.importorskip("timm")
    model = tp.randomized(timm.create_model(name, pretrained=False, num_classes=10))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    swapped = copy.deepcopy(model)
    nl.replace_norms(swapped, kind, example_input=x, **options)
    assert max_difference(model, swapped, x) == 0.0


def test_a_swapped_norm_act_layer_folds_into_the_conv_before_it_keeping_its_activation():
    """replace_norms turns BatchNormAct2d into NormAct(bn, drop, act); fold_batchnorm folds
    that bn as it folds the original's and keeps the activation where the norm was."""
    model = tp.randomized(tp.EfficientNetBlock()).eval()
    nl.replace_norms(model, "bn")
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a norm left unfolded warns
        folded = nl.inference.fold_batchnorm(copy.deepcopy(model))
    assert not [m for m in folded.modules() if nl.inference.batch_norm_layers(m)]
    assert [type(m) for m in folded.modules() if isinstance(m, nn.SiLU | nn.ReLU)]
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=1e-5)
