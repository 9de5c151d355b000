"""resnet20: He et al. 2016's CIFAR ResNet with any kind at every norm position.

The parameter count is checked against the paper's architecture written out
as a formula (§4.2: 6n + 2 layers, 3x3 convolutions, option A shortcuts,
Table 6's 0.27 M), not against the code under test.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab.checkpoints import load_checkpoint
from normlab.models import PaddedIdentity, ResNet, build_model
from normlab.registry import make_norm, norm_kinds

NORM_NAMES = ("stem_norm", "norm1", "norm2")


def _norm_positions(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: module
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in NORM_NAMES
    }


def _paper_parameters(in_channels: int, classes: int, n: int, affine_per_channel: int) -> int:
    """He et al. 2016, §4.2: a 3x3 conv of 16 filters, then 2n 3x3 convs on 16, 32 and 64
    channels each (bias-free, as every conv is followed by a norm), option A (parameter-free)
    shortcuts, global pooling and a fully connected layer; ``affine_per_channel`` parameters
    per normalized channel (2 for batch norm's gamma and beta)."""
    widths = (16, 32, 64)
    convs = 9 * in_channels * 16
    normalized = 16
    previous = 16
    for width in widths:
        convs += 9 * (previous * width + (2 * n - 1) * width * width)
        normalized += 2 * n * width
        previous = width
    return convs + affine_per_channel * normalized + 64 * classes + classes


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_resnet20_has_the_papers_parameter_count(shape):
    model = build_model("resnet20", shape, 10, norm="bn")
    count = sum(p.numel() for p in model.parameters())
    assert count == _paper_parameters(shape[0], 10, n=3, affine_per_channel=2)
    assert round(count / 1e6, 2) == 0.27  # Table 6: ResNet-20, 0.27 M
    bare = build_model("resnet20", shape, 10, norm="none")
    assert sum(p.numel() for p in bare.parameters()) == _paper_parameters(
        shape[0], 10, n=3, affine_per_channel=0
    )


@pytest.mark.parametrize(
    ("shape", "sides"), [((3, 32, 32), (32, 16, 8)), ((1, 28, 28), (28, 14, 7))]
)
def test_resnet20_has_20_weighted_layers_and_the_papers_feature_maps(shape, sides):
    """19 convolutions and one fully connected layer; stages on 32x32, 16x16 and 8x8 maps
    (28, 14, 7 for MNIST) with 16, 32 and 64 channels; no 1x1 projection shortcuts (option A)."""
    model = build_model("resnet20", shape, 10, norm="bn")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) for c in convs)
    assert len([m for m in model.modules() if isinstance(m, nn.Linear)]) == 1
    shapes = []
    for stage in model.stages:
        stage.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    assert model(torch.rand(2, *shape)).shape == (2, 10)
    assert shapes == [(width, side, side) for width, side in zip((16, 32, 64), sides, strict=True)]


@pytest.mark.parametrize("kind", norm_kinds())
@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("shape", [(1, 7, 7), (3, 8, 8)])
def test_every_kind_sits_at_every_norm_position_and_trains(kind, placement, shape):
    """The stem's norm and both norms of each of the 9 blocks are the kind, each sees its
    conv's channels on dim 1, and the model trains (every trainable parameter gets a gradient)
    and evaluates, on one- and three-channel images (small, to keep the suite fast; the
    28x28 and 32x32 shapes are checked above)."""
    torch.manual_seed(0)
    model = ResNet(shape, 10, widths=(4, 8, 8), blocks=3, norm=kind, placement=placement)
    positions = _norm_positions(model)
    assert len(positions) == 19
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = inputs[0].shape

        return hook

    for name, module in positions.items():
        assert type(module) is type(make_norm(kind, 4))
        module.register_forward_hook(record(name))
    images = torch.rand(4, *shape)
    logits = model.train()(images)
    assert logits.shape == (4, 10)
    assert set(seen) == set(positions)
    assert seen["stem_norm"] == (4, 4, *shape[1:])
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.eval()(images[:1]).shape == (1, 10)


@pytest.mark.parametrize("placement", ["before", "after"])
def test_placement_puts_the_norm_before_or_after_the_relu(placement):
    """Before (the paper): a block ends with ReLU, so its output is non-negative. After: it
    ends with the norm, so in training mode each channel of its output has batch mean 0."""
    torch.manual_seed(0)
    model = build_model("resnet20", (1, 12, 12), 10, norm="bn", placement=placement)
    out = model.stages[0][0](torch.randn(6, 16, 12, 12)).double()
    if placement == "before":
        assert out.min() >= 0
        assert out.mean() > 0.1
    else:
        assert out.min() < 0
        torch.testing.assert_close(
            out.mean((0, 2, 3)), torch.zeros(16, dtype=torch.float64), atol=1e-5, rtol=0
        )


def test_option_a_shortcut_subsamples_and_pads_with_zero_channels():
    x = torch.randn(2, 3, 5, 7)
    out = PaddedIdentity(3, 8, stride=2)(x)
    expected = torch.zeros(2, 8, 3, 4)
    for i in range(3):
        for j in range(4):
            expected[:, :3, i, j] = x[:, :, 2 * i, 2 * j]
    assert torch.equal(out, expected)
    assert not list(PaddedIdentity(3, 8, 2).parameters())


def test_stage_widths_follow_hidden_and_bad_ones_are_refused():
    model = build_model("resnet20", (1, 8, 8), 10, hidden=(8, 16), norm="gn")
    assert [stage[0].conv1.out_channels for stage in model.stages] == [8, 16]
    with pytest.raises(ValueError, match="must not decrease"):
        build_model("resnet20", (1, 8, 8), 10, hidden=(16, 8))


def test_a_saved_resnet20_loads_whole_through_the_checkpoint_allow_list(tmp_path):
    """normlab.checkpoints loads the whole module with weights_only=True: every class it is
    made of is on the allow-list, and the loaded model computes the same logits."""
    torch.manual_seed(0)
    model = build_model("resnet20", (1, 8, 8), 10, norm="ln").eval()
    torch.save(model, tmp_path / "model.pt")
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert type(loaded) is type(model)
    images = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
