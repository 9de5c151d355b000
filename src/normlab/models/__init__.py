"""The lab's models, each built around one normalization kind from the registry,
and the user's own: registered by name with :func:`register_model` (see
normlab.models.registry, where every model's facts are), or as ``MODULE:FACTORY``
(see normlab.models.factory).

Every builder takes images of shape (N, C, H, W) and returns logits of shape
(N, num_classes); ``norm`` is any name ``normlab.make_norm`` accepts, or any
callable that takes a channel count C and returns a module for (N, C, *)
input (as timm's ``get_norm_layer``; the transformer calls it with
``channel_dim=-1`` for (N, L, C) tokens), and ``placement`` puts it before
or after each activation (for ``transformer``: before or after each
sublayer's residual addition, pre-norm or post-norm).

===========  ====================================================  ==========================
model        layers (``placement="before"``)                       ``placement="after"``
===========  ====================================================  ==========================
mlp          Flatten, [Linear, norm, ReLU] per hidden width,       Linear, ReLU, norm
             Linear (the tutorials' Dense 128 / 64 / 10)
cnn          [Conv 3x3 (padding 1), norm, ReLU, MaxPool 2] per     Conv, ReLU, norm, pool
             width, Flatten, Linear 64, ReLU, Linear (the
             tutorials' Conv 32 / Conv 64, Dense 64, Dense 10)
rnn          rows of the image as H steps of C*W values; per       the norm on each
             width a recurrent layer (LSTM or GRU) whose input     recurrent layer's
             sequence is normalized first; Linear on the last      output sequence
             step
resnet20     He et al. 2016's CIFAR ResNet: Conv 3x3, norm, ReLU;  each norm after its ReLU
             3 stages of 3 basic blocks (conv, norm, ReLU, conv,
             norm, + option A shortcut, ReLU) on 16/32/64
             channels; global average pool, Linear
transformer  4x4 patches as tokens, learned positions and class    post-norm:
             token; 4 pre-norm encoder blocks of width 64 (4       norm(x + f(x)),
             heads, MLP 128): x + f(norm(x)); final norm, Linear   no final norm
===========  ====================================================  ==========================

A recurrent layer's activations are inside the cell, so for ``rnn`` the
placement chooses pre-norm (normalize what enters each layer) or post-norm
(normalize what leaves it). The norm there sees (N, C, L) with the features
as channels: ``bn`` takes statistics per feature over samples and steps,
``ln`` over the features of each step. The transformer's norms see (N, L, C)
tokens with ``channel_dim=-1``, the same split.
"""

from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from normlab.models.build import (
    DEFAULT_HIDDEN,
    MODELS,
    build_model,
    check_logits,
    check_model_name,
)
from normlab.models.common import PLACEMENTS, check_placement
from normlab.models.factory import CONTRACT, ModelFactoryError, NormFactory
from normlab.models.feedforward import cnn, mlp
from normlab.models.recurrent import CELLS, FeaturesAsChannels, RowRNN
from normlab.models.registry import (
    MODEL_OPTIONS,
    ModelInfo,
    is_model,
    list_models,
    model_info,
    register_model,
)
from normlab.models.resnet import BasicBlock, PaddedIdentity, ResNet, resnet20
from normlab.models.vit import EncoderBlock, PatchEmbedding, VisionTransformer, transformer

#: Every module class the lab's models are made of beyond torch.nn's and normlab.layers'
#: (the transformer's attention holds its output projection as torch's
#: NonDynamicallyQuantizableLinear, which torch.nn does not export).
MODEL_CLASSES = (
    RowRNN,
    FeaturesAsChannels,
    ResNet,
    BasicBlock,
    PaddedIdentity,
    VisionTransformer,
    EncoderBlock,
    PatchEmbedding,
    NonDynamicallyQuantizableLinear,
)

__all__ = [
    "CELLS",
    "CONTRACT",
    "DEFAULT_HIDDEN",
    "MODELS",
    "MODEL_CLASSES",
    "MODEL_OPTIONS",
    "PLACEMENTS",
    "BasicBlock",
    "EncoderBlock",
    "FeaturesAsChannels",
    "ModelFactoryError",
    "ModelInfo",
    "NormFactory",
    "PaddedIdentity",
    "PatchEmbedding",
    "ResNet",
    "RowRNN",
    "VisionTransformer",
    "build_model",
    "check_logits",
    "check_model_name",
    "check_placement",
    "cnn",
    "is_model",
    "list_models",
    "mlp",
    "model_info",
    "register_model",
    "resnet20",
    "transformer",
]
