"""Stand-ins for timm's and torchvision's normalization classes, for a machine where neither
imports (torchvision's wheel here is built for CUDA, and timm imports torchvision).

Each class has the name, torch base class, constructor arguments, attributes, buffers and
forward of the library class it stands for, as their source and documentation give them
(timm: ``timm/layers/norm_act.py``, ``timm/layers/norm.py``, ``timm/layers/fast_norm.py``;
torchvision: ``torchvision/ops/misc.py``, ``torchvision/models/convnext.py``); the code is
written here. Where both libraries have a class of one name (``FrozenBatchNorm2d``,
``LayerNorm2d``) they compute the same thing and one stand-in serves.

The small models at the end have the structure of the models that use them: an
EfficientNet/MobileNetV3 block (conv, BatchNormAct2d with SiLU, depthwise conv), a ResNetV2
pre-activation block (GroupNormAct), a ConvNeXt block (LayerNorm2d in the stem and
downsampling, channels-last LayerNorm in the block), a torchvision detection backbone
(FrozenBatchNorm2d) and a ViT block with RmsNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _act(act_layer: type[nn.Module] | None, apply_act: bool, inplace: bool) -> nn.Module:
    """timm's _create_act: the activation module, or Identity when none is applied."""
    if act_layer is None or not apply_act:
        return nn.Identity()
    try:
        return act_layer(inplace=inplace)
    except TypeError:  # GELU and friends take no inplace
        return act_layer()


def _drop(drop_layer: type[nn.Module] | None) -> nn.Module:
    return nn.Identity() if drop_layer is None else drop_layer()


# --- timm/layers/norm_act.py ------------------------------------------------------------


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNorm2d + drop + activation; inherits from BatchNorm2d so that its
    state_dict is a plain batch norm's."""

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        apply_act=True,
        act_layer=nn.ReLU,
        inplace=True,
        drop_layer=None,
        device=None,
        dtype=None,
    ):
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.drop = _drop(drop_layer)
        self.act = _act(act_layer, apply_act, inplace)

    def forward(self, x):
        assert x.ndim == 4, f"expected 4D input (got {x.ndim}D input)"
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        x = F.batch_norm(
            x,
            self.running_mean if use_buffers else None,
            self.running_var if use_buffers else None,
            self.weight,
            self.bias,
            batch_stats,
            factor,
            self.eps,
        )
        return self.act(self.drop(x))


class SyncBatchNormAct(nn.SyncBatchNorm):
    """timm's SyncBatchNorm whose forward then applies ``drop`` and ``act`` when set (timm's
    convert_sync_batchnorm copies them from a BatchNormAct2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if hasattr(self, "drop"):
            x = self.drop(x)
        if hasattr(self, "act"):
            x = self.act(x)
        return x


def _frozen_affine(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, 1, 1)
    scale = module.weight.reshape(shape) * (module.running_var.reshape(shape) + module.eps).rsqrt()
    return scale, module.bias.reshape(shape) - module.running_mean.reshape(shape) * scale


class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.misc.FrozenBatchNorm2d (timm uses it too): batch norm whose statistics
    and affine are buffers; no num_features attribute."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = _frozen_affine(self)
        return x * scale + shift


class FrozenBatchNormAct2d(nn.Module):
    """timm's FrozenBatchNorm2d + drop + activation."""

    def __init__(
        self, num_features, eps=1e-5, apply_act=True, act_layer=nn.ReLU, inplace=True,
        drop_layer=None,
    ):  # fmt: skip
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.drop = _drop(drop_layer)
        self.act = _act(act_layer, apply_act, inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = _frozen_affine(self)
        return self.act(self.drop(x * scale + shift))


class GroupNormAct(nn.GroupNorm):
    """timm's GroupNorm + drop + activation; channels first in the signature."""

    def __init__(
        self,
        num_channels,
        num_groups=32,
        eps=1e-5,
        affine=True,
        group_size=None,
        apply_act=True,
        act_layer=nn.ReLU,
        inplace=True,
        drop_layer=None,
    ):
        groups = num_channels // group_size if group_size else num_groups
        super().__init__(groups, num_channels, eps=eps, affine=affine)
        self.drop = _drop(drop_layer)
        self.act = _act(act_layer, apply_act, inplace)

    def forward(self, x):
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return self.act(self.drop(x))


class GroupNorm1Act(GroupNormAct):
    """timm's GroupNorm1Act: one group."""

    def __init__(self, num_channels, eps=1e-5, affine=True, **kwargs):
        super().__init__(num_channels, 1, eps, affine, **kwargs)


class LayerNormAct(nn.LayerNorm):
    """timm's LayerNorm over the last dim + drop + activation."""

    def __init__(
        self, normalization_shape, eps=1e-5, affine=True, apply_act=True, act_layer=nn.ReLU,
        inplace=True, drop_layer=None,
    ):  # fmt: skip
        super().__init__(normalization_shape, eps=eps, elementwise_affine=affine)
        self.drop = _drop(drop_layer)
        self.act = _act(act_layer, apply_act, inplace)

    def forward(self, x):
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return self.act(self.drop(x))


class LayerNormAct2d(LayerNormAct):
    """timm's LayerNormAct on the channels of (N, C, H, W)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return self.act(self.drop(x.permute(0, 3, 1, 2)))


# --- timm/layers/norm.py -------------------------------------------------------------------


class GroupNorm(nn.GroupNorm):
    """timm's GroupNorm: channels first in the signature, F.group_norm forward."""

    def __init__(self, num_channels, num_groups=32, eps=1e-5, affine=True):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class GroupNorm1(GroupNorm):
    """timm's GroupNorm1: one group over (C, *)."""

    def __init__(self, num_channels, **kwargs):
        super().__init__(num_channels, 1, **kwargs)


class LayerNorm(nn.LayerNorm):
    """timm's LayerNorm: eps 1e-6 by default, F.layer_norm over the last dim."""

    def __init__(self, num_channels, eps=1e-6, affine=True):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class LayerNorm2d(nn.LayerNorm):
    """timm's and torchvision's (convnext) LayerNorm2d: a LayerNorm over the channels of
    (N, C, H, W), computed on the permuted (N, H, W, C) tensor."""

    def __init__(self, num_channels, eps=1e-6, affine=True):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class RmsNorm(nn.Module):
    """timm's RmsNorm over the last dim (an nn.Module holding normalized_shape, eps, weight)."""

    def __init__(self, channels, eps=1e-6, affine=True, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = (channels,)
        self.eps = eps
        self.elementwise_affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(channels, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class RmsNorm2d(RmsNorm):
    """timm's RmsNorm2d: RMS over dim 1 of (N, C, H, W) (timm's rms_norm2d)."""

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return x if self.weight is None else x * self.weight.reshape(1, -1, 1, 1)


# --- models shaped like the ones that use these classes -------------------------------------


class EfficientNetBlock(nn.Module):
    """EfficientNet/MobileNetV3 at toy size: stem conv + BatchNormAct2d(SiLU), a depthwise conv
    + BatchNormAct2d(SiLU), a 1x1 projection + BatchNormAct2d without activation, a head."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(width, act_layer=nn.SiLU)
        self.conv_dw = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.bn2 = BatchNormAct2d(width, act_layer=nn.SiLU, drop_layer=lambda: nn.Dropout(0.0))
        self.conv_pw = nn.Conv2d(width, width, 1, bias=False)
        self.bn3 = BatchNormAct2d(width, apply_act=False)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.bn1(self.conv_stem(x))
        x = self.bn3(self.conv_pw(self.bn2(self.conv_dw(x)))) + x
        return self.head(x.mean((2, 3)))


class ResNetV2Block(nn.Module):
    """ResNetV2 (BiT) at toy size: pre-activation GroupNormAct before each conv."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.norm1 = GroupNormAct(width, 4)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.norm2 = GroupNormAct(width, 4)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.norm = GroupNormAct(width, 4)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.conv2(self.norm2(self.conv1(self.norm1(x))))
        return self.head(self.norm(x).mean((2, 3)))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt at toy size: patchify stem + LayerNorm2d, a block (depthwise conv, permute,
    last-dim LayerNorm, MLP, permute back), LayerNorm2d + 2x2 conv downsampling, a head."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 2, 2), LayerNorm2d(width))
        self.dwconv = nn.Conv2d(width, width, 7, padding=3, groups=width)
        self.norm = LayerNorm(width)
        hidden = 4 * width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.downsample = nn.Sequential(LayerNorm2d(width), nn.Conv2d(width, 2 * width, 2, 2))
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.mlp(self.norm(self.dwconv(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.head(self.downsample(x).mean((2, 3)))


class FrozenBackbone(nn.Module):
    """torchvision's detection backbones at toy size: conv + FrozenBatchNorm2d + ReLU, twice,
    and a FrozenBatchNormAct2d (timm's frozen stem)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = FrozenBatchNormAct2d(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.head(self.bn2(self.conv2(x)).mean((2, 3)))


class RmsViTBlock(nn.Module):
    """A ViT block with timm's RmsNorm on (N, L, C) tokens and an RmsNorm2d-normalized stem."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 2, 2)
        self.stem_norm = RmsNorm2d(width)
        self.norm1 = RmsNorm(width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.norm2 = LayerNormAct(width, act_layer=nn.GELU)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        tokens = self.stem_norm(self.stem(x)).flatten(2).transpose(1, 2)
        y = self.norm1(tokens)
        tokens = tokens + self.attn(y, y, y, need_weights=False)[0]
        return self.head(self.norm2(tokens).mean(1))


def randomized(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial affine and running statistics in every norm (fixed-statistics ones too)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name in ("weight", "bias", "running_mean"):
                tensor = getattr(module, name, None)
                if isinstance(tensor, torch.Tensor) and tensor.dim() == 1:
                    tensor.copy_(torch.randn(tensor.shape, generator=generator))
            var = getattr(module, "running_var", None)
            if isinstance(var, torch.Tensor):
                var.copy_(torch.rand(var.shape, generator=generator) + 0.5)
    return model


#: Models shaped like timm's and torchvision's, by name: (builder, the kind that computes what
#: their norms compute with the options it needs, or None where they mix kinds).
MODELS = {
    "efficientnet (BatchNormAct2d)": (EfficientNetBlock, "bn", {}),
    "resnetv2 (GroupNormAct)": (ResNetV2Block, "gn", {"groups": 4}),
    "convnext (LayerNorm2d, LayerNorm)": (ConvNeXtBlock, "ln", {}),
    "detection backbone (FrozenBatchNorm2d, FrozenBatchNormAct2d)": (
        FrozenBackbone, "frozen-bn", {}
    ),
    "vit (RmsNorm, RmsNorm2d, LayerNormAct)": (RmsViTBlock, None, {}),
}  # fmt: skip
