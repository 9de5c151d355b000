"""A small transformer encoder for image classification, after Dosovitskiy et al. 2021 (ViT).

The image is cut into non-overlapping patch x patch tiles, each projected to a
token of ``dim`` features; a learned positional embedding is added (and a
learned class token prepended); encoder blocks of multi-head self-attention
and a two-layer GELU MLP follow, each sublayer with a residual connection and
a norm; the class token (or the mean of the tokens) goes to a Linear head.

Every norm sees the (N, L, dim) tokens with the features last, built by
``make_norm(kind, dim, channel_dim=-1)``: ``ln`` normalizes each token's
features (the convention), ``bn`` takes per-feature statistics over the
samples and the tokens (Shen et al. 2020's batch norm in a transformer).

``placement="before"`` is pre-norm (x + f(norm(x)), a final norm before the
head: ViT, GPT-2); ``"after"`` is post-norm (norm(x + f(x)), no final norm:
Vaswani et al. 2017, BERT).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from normlab.models.common import check_placement
from normlab.registry import NormSpec, norm_factory

POOLS = ("cls", "mean")


class PatchEmbedding(nn.Module):
    """Non-overlapping patch x patch tiles, each projected linearly to ``dim`` features.

    H and W are zero-padded at the bottom and right up to multiples of ``patch``
    (as timm's ``dynamic_img_pad``), so every pixel is in a token.

    Shape:
        - Input: (N, C, H, W).
        - Output: (N, ceil(H / patch) * ceil(W / patch), dim), tokens in row-major order.
    """

    def __init__(self, channels: int, dim: int, patch: int) -> None:
        super().__init__()
        if patch < 1:
            raise ValueError(f"patch_size must be a positive integer; got {patch}.")
        self.patch = patch
        self.project = nn.Conv2d(channels, dim, patch, stride=patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        images = F.pad(images, (0, -width % self.patch, 0, -height % self.patch))
        return self.project(images).flatten(2).transpose(1, 2)


class EncoderBlock(nn.Module):
    """Self-attention and an MLP, each with a residual connection and a norm.

    Shape:
        - Input: (N, L, dim).
        - Output: (N, L, dim).
    """

    def __init__(
        self, dim: int, heads: int, mlp_dim: int, norm: Callable[..., nn.Module], placement: str
    ) -> None:
        super().__init__()
        check_placement(placement)
        self.placement = placement
        self.norm1 = norm(dim, channel_dim=-1)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = norm(dim, channel_dim=-1)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def _attend(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.attention(tokens, tokens, tokens, need_weights=False)[0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.placement == "before":
            tokens = tokens + self._attend(self.norm1(tokens))
            return tokens + self.mlp(self.norm2(tokens))
        tokens = self.norm1(tokens + self._attend(tokens))
        return self.norm2(tokens + self.mlp(tokens))


class VisionTransformer(nn.Module):
    """Patch embedding, learned positions, encoder blocks and a Linear head.

    Args:
        input_shape: (C, H, W) of one image.
        num_classes: outputs of the head.
        norm: a kind ``normlab.make_norm`` accepts, or a callable
            ``(C, channel_dim=-1) -> module`` for (N, L, C) tokens.
        placement: ``"before"`` for pre-norm, ``"after"`` for post-norm.
        dim: features per token (the width of the residual stream).
        depth: encoder blocks.
        heads: attention heads; must divide ``dim``.
        mlp_ratio: the MLP's hidden width is ``mlp_ratio * dim``.
        patch_size: side of the square patches.
        pool: ``"cls"`` (a learned class token) or ``"mean"`` (the mean of the tokens).

    Shape:
        - Input: (N, C, H, W).
        - Output: (N, num_classes) logits.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int = 10,
        *,
        norm: NormSpec = "ln",
        placement: str = "before",
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
        patch_size: int = 4,
        pool: str = "cls",
    ) -> None:
        super().__init__()
        check_placement(placement)
        if pool not in POOLS:
            raise ValueError(f"pool must be 'cls' or 'mean'; got {pool!r}.")
        if heads < 1 or dim % heads:
            raise ValueError(
                f"{heads} attention heads cannot split {dim} features evenly; "
                "use a width that is a multiple of the number of heads."
            )
        if depth < 1:
            raise ValueError(f"a transformer needs at least one block; got depth={depth}.")
        channels, height, width = input_shape
        self.placement = placement
        self.pool = pool
        make = norm_factory(norm)
        self.embed = PatchEmbedding(channels, dim, patch_size)
        tokens = math.ceil(height / patch_size) * math.ceil(width / patch_size) + (pool == "cls")
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.position = nn.Parameter(torch.empty(1, tokens, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(
            *(EncoderBlock(dim, heads, mlp_ratio * dim, make, placement) for _ in range(depth))
        )
        # Pre-norm leaves the residual stream unnormalized, so it ends with a norm of its own.
        self.final_norm = make(dim, channel_dim=-1) if placement == "before" else None
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(images)
        if self.class_token is not None:
            tokens = torch.cat([self.class_token.expand(len(tokens), -1, -1), tokens], 1)
        tokens = self.blocks(tokens + self.position)
        if self.final_norm is not None:
            tokens = self.final_norm(tokens)
        pooled = tokens[:, 0] if self.pool == "cls" else tokens.mean(1)
        return self.head(pooled)


def transformer(
    input_shape: Sequence[int],
    num_classes: int = 10,
    *,
    norm: NormSpec = "ln",
    placement: str = "before",
    widths: Sequence[int] = (64, 64, 64, 64),
    **options: int | str,
) -> VisionTransformer:
    """A :class:`VisionTransformer` with one encoder block per entry of ``widths``.

    Every block has the same width (the residual stream's), so ``widths`` is
    ``depth`` copies of ``dim``; ``options`` are VisionTransformer's others
    (heads, mlp_ratio, patch_size, pool).
    """
    if not widths or len(set(widths)) != 1:
        raise ValueError(
            f"transformer blocks share one width (the residual stream's); got {list(widths)}. "
            "Repeat one width once per block, e.g. 64,64,64,64 for 4 blocks of 64."
        )
    return VisionTransformer(
        input_shape,
        num_classes,
        norm=norm,
        placement=placement,
        dim=widths[0],
        depth=len(widths),
        **options,
    )
