"""transformer: a small ViT-style encoder with any kind at every norm position, on (N, L, C)
tokens through ``channel_dim=-1``; pre-norm and post-norm.

The parameter count is checked against the architecture written out as a
formula (patch projection, class token, positions, per block the attention's
in/out projections, the MLP and two norms, final norm, head).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.checkpoints import load_checkpoint
from normlab.models import PatchEmbedding, VisionTransformer, build_model
from normlab.registry import make_norm, norm_kinds


def _norm_positions(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: module
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in ("norm1", "norm2", "final_norm")
    }


def _formula_parameters(shape, classes, dim, depth, mlp_dim, patch, norm_params, cls=True):
    channels, height, width = shape
    tokens = math.ceil(height / patch) * math.ceil(width / patch) + cls
    embed = channels * patch * patch * dim + dim
    attention = 3 * dim * dim + 3 * dim + dim * dim + dim
    mlp = dim * mlp_dim + mlp_dim + mlp_dim * dim + dim
    block = attention + mlp + 2 * norm_params
    return embed + cls * dim + tokens * dim + depth * block + norm_params + dim * classes + classes


@pytest.mark.parametrize(("shape", "tokens"), [((1, 28, 28), 49), ((3, 32, 32), 64)])
def test_default_transformer_parameters_match_the_formula(shape, tokens):
    model = build_model("transformer", shape, 10, norm="ln")
    count = sum(p.numel() for p in model.parameters())
    assert count == _formula_parameters(shape, 10, 64, 4, 128, 4, norm_params=2 * 64)
    assert model.position.shape == (1, tokens + 1, 64)
    assert model(torch.rand(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("kind", norm_kinds())
@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 6, 10)])
def test_every_kind_sits_at_every_norm_position_and_trains(kind, placement, shape):
    """Two norms per block (and a final one for pre-norm) are the kind, each sees (N, L, C)
    tokens with the features last, and the model trains and evaluates."""
    torch.manual_seed(0)
    model = VisionTransformer(shape, 5, norm=kind, placement=placement, dim=8, depth=2, heads=2)
    positions = _norm_positions(model)
    expected = {"blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2"}
    if placement == "before":
        expected.add("final_norm")
    else:
        assert model.final_norm is None
    assert set(positions) == expected
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = inputs[0].shape

        return hook

    for name, module in positions.items():
        assert type(module) is type(make_norm(kind, 8, channel_dim=-1))
        module.register_forward_hook(record(name))
    images = torch.rand(4, *shape)
    logits = model.train()(images)
    assert logits.shape == (4, 5)
    tokens = math.ceil(shape[1] / 4) * math.ceil(shape[2] / 4) + 1
    assert set(seen) == expected
    assert all(s == (4, tokens, 8) for s in seen.values())
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.eval()(images[:1]).shape == (1, 5)


@pytest.mark.parametrize("placement", ["before", "after"])
def test_pre_norm_keeps_the_residual_stream_and_post_norm_normalizes_it(placement):
    """Post-norm: a block's output is norm(x + f(x)), so with layer norm each token has mean 0
    and variance 1 over its features. Pre-norm: x + f(norm(x)) is not normalized."""
    torch.manual_seed(0)
    model = VisionTransformer((1, 8, 8), 3, norm="ln", placement=placement, dim=8, heads=2)
    tokens = 3.0 + 2.0 * torch.randn(2, 5, 8)
    out = model.blocks[0](tokens).double()
    normalized = torch.allclose(out.mean(-1), torch.zeros(2, 5, dtype=torch.float64), atol=1e-5)
    normalized &= torch.allclose(
        out.var(-1, unbiased=False), torch.ones(2, 5, dtype=torch.float64), atol=1e-3
    )
    assert normalized == (placement == "after")


def test_patches_are_zero_padded_tiles_projected_in_row_major_order():
    """The embedding equals the projection applied by hand to each tile of the zero-padded
    image."""
    torch.manual_seed(0)
    embed = PatchEmbedding(2, 3, patch=4)
    images = torch.randn(1, 2, 6, 9)
    padded = F.pad(images, (0, 3, 0, 2))
    weight, bias = embed.project.weight, embed.project.bias
    expected = torch.stack(
        [
            (weight * padded[0, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]).sum((1, 2, 3)) + bias
            for i in range(2)
            for j in range(3)
        ]
    )
    torch.testing.assert_close(embed(images)[0], expected, atol=1e-5, rtol=1e-5)


def test_mean_pooling_has_no_class_token():
    model = VisionTransformer((1, 8, 8), 4, dim=8, heads=2, pool="mean")
    assert model.class_token is None
    assert model.position.shape == (1, 4, 8)
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden": [64, 32]}, "share one width"),
        ({"hidden": [30, 30]}, "4 attention heads cannot split 30"),
    ],
)
def test_bad_transformer_options_say_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("transformer", (1, 8, 8), 10, **kwargs)


def test_bad_pool_is_refused():
    with pytest.raises(ValueError, match="'cls' or 'mean'"):
        VisionTransformer((1, 8, 8), 4, pool="max")


def test_a_saved_transformer_loads_whole_through_the_checkpoint_allow_list(tmp_path):
    """normlab.checkpoints loads the whole module with weights_only=True: every class it is
    made of is on the allow-list, and the loaded model computes the same logits."""
    torch.manual_seed(0)
    model = build_model("transformer", (1, 8, 8), 10, norm="ln").eval()
    torch.save(model, tmp_path / "model.pt")
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert type(loaded) is type(model)
    images = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
