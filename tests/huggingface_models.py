"""Hugging Face models (BERT, GPT-2, ViT, T5, Llama, Mistral, Qwen2, Gemma, ConvNeXt,
ConvNeXt V2) built from tiny configs with random weights, nothing downloaded: what the
tests and benchmarks/third_party_models.py run replace_norms, freeze and fold on.
Import it only where transformers imports."""

from __future__ import annotations

import torch
import transformers
from torch import nn

import normlab as nl

WIDTH = 16


def _bert():
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertModel(config)


def _gpt2():
    config = transformers.GPT2Config(
        vocab_size=50, n_embd=WIDTH, n_layer=2, n_head=2, n_positions=16,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2Model(config)


def _vit():
    config = transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=WIDTH, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.ViTModel(config, add_pooling_layer=False)


def _t5():
    config = transformers.T5Config(
        vocab_size=50, d_model=WIDTH, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
        dropout_rate=0.0,
    )  # fmt: skip
    return transformers.T5EncoderModel(config)


def _llama():
    config = transformers.LlamaConfig(
        vocab_size=50, hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
    )  # fmt: skip
    return transformers.LlamaModel(config)


def _decoder(name: str):
    """Mistral's, Qwen2's or Gemma's decoder (Gemma's RMS norm scales by 1 + weight)."""
    config = getattr(transformers, f"{name}Config")(
        vocab_size=50, hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=16,
    )  # fmt: skip
    return getattr(transformers, f"{name}Model")(config)


def _convnext(name: str = "ConvNext"):
    """ConvNeXt (or V2): channels-first ConvNextLayerNorm in the stem and downsampling,
    channels-last ones in the blocks, torch's LayerNorm after pooling."""
    config = getattr(transformers, f"{name}Config")(
        num_channels=3, patch_size=2, num_stages=2, hidden_sizes=[8, WIDTH], depths=[1, 1],
        drop_path_rate=0.0,
    )  # fmt: skip
    return getattr(transformers, f"{name}Model")(config)


MODELS = {
    "bert": _bert,
    "gpt2": _gpt2,
    "vit": _vit,
    "t5": _t5,
    "llama": _llama,
    "mistral": lambda: _decoder("Mistral"),
    "qwen2": lambda: _decoder("Qwen2"),
    "gemma": lambda: _decoder("Gemma"),
    "convnext": _convnext,
    "convnextv2": lambda: _convnext("ConvNextV2"),
}
#: The kind that computes what each model's norms compute.
MATCHING = {
    "bert": "ln",
    "gpt2": "ln",
    "vit": "ln",
    "t5": "rms",
    "llama": "rms",
    "mistral": "rms",
    "qwen2": "rms",
    "gemma": "rms",
    "convnext": "ln",
    "convnextv2": "ln",
}
IMAGE_MODELS = {"vit", "convnext", "convnextv2"}


class Wrapped(nn.Module):
    """The model's last hidden state as a plain tensor output, on fixed inputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            return self.model(pixel_values=x).last_hidden_state
        return self.model(input_ids=x).last_hidden_state


def model_and_input(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = Wrapped(MODELS[name]())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norms with weights and biases that are not ones and zeros
        for module in model.modules():
            if nl.swap.is_norm_layer(module):
                for tensor in (getattr(module, "weight", None), getattr(module, "bias", None)):
                    if isinstance(tensor, torch.Tensor):
                        tensor.copy_(torch.randn(tensor.shape, generator=generator))
    if name in IMAGE_MODELS:
        x = torch.randn(4, 3, 8, 8, generator=generator)
    else:
        x = torch.randint(0, 50, (4, 6), generator=generator)
    return model, x
