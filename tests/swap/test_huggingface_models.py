"""Hugging Face models (BERT, GPT-2, ViT, T5, Llama, Mistral, Qwen2, Gemma, ConvNeXt,
ConvNeXt V2) built from tiny configs with random weights (nothing downloaded) through
replace_norms, freeze and fold.

Oracles: the original model. A swap to the matching kind with the layer's own settings
(eps included) computes the same function: outputs and gradients in train and eval mode.
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

import normlab as nl
from spec import CANONICAL_KINDS

transformers = pytest.importorskip("transformers")

WIDTH = 16


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
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


def _difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest |a - b| over train and eval outputs and every parameter gradient."""
    worst = 0.0
    for training in (True, False):
        results = []
        for model in (a, b):
            model.train(training).zero_grad()
            out = model(x)
            out.square().mean().backward()
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            results.append((out.detach(), grads))
        (out_a, grads_a), (out_b, grads_b) = results
        assert set(grads_a) == set(grads_b)
        diffs = [(out_a - out_b).abs().max()]
        diffs += [(grads_a[n] - grads_b[n]).abs().max() for n in grads_a]
        worst = max(worst, max(d.item() for d in diffs))
    return worst


@pytest.mark.parametrize("name", list(MODELS))
def test_every_norm_is_recognized_and_the_matching_kind_is_exact(name):
    model, x = _model(name)
    norms = [m for m in model.modules() if "norm" in type(m).__name__.lower()]
    swapped = copy.deepcopy(model)
    replaced = nl.replace_norms(swapped, MATCHING[name], example_input=x)
    assert len(replaced.replacements) == len(norms) and not replaced.skipped
    assert "changed" not in replaced.summary()
    assert _difference(model, swapped, x) == 0.0


@pytest.mark.parametrize("kind", CANONICAL_KINDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_every_kind_replaces_the_norms_and_trains_one_step(name, kind):
    model, x = _model(name)
    options = {"groups": 2} if kind == "gn" else {}
    if kind == "frozen-bn":
        options["identity_statistics"] = True
    if kind == "in" and name in IMAGE_MODELS - {"vit"}:
        options["exclude"] = "model.layernorm"  # on pooled (N, C): no positions to normalize
    nl.replace_norms(model, kind, example_input=x, **options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = model.train()(x).square().mean()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and torch.isfinite(model.eval()(x)).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_batch_norm_models_freeze_and_fold_within_1e_5(name):
    """Swapped to bn and run a few training steps, then frozen and folded: eval outputs
    stay within 1e-5 of the unfrozen, unfolded model's."""
    model, x = _model(name)
    nl.replace_norms(model, "bn", example_input=x)
    with torch.no_grad():
        for _ in range(3):
            model.train()(x)
    model.eval()
    expected = model(x)
    frozen = nl.inference.freeze(copy.deepcopy(model))
    torch.testing.assert_close(frozen(x), expected, rtol=0, atol=1e-5)
    with pytest.warns(UserWarning):  # norms on the residual stream follow no Linear
        folded = nl.inference.fold_batchnorm(model)
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("module", "cls"),
    [
        ("llama", "LlamaRMSNorm"),
        ("t5", "T5LayerNorm"),
        ("mistral", "MistralRMSNorm"),
        ("qwen2", "Qwen2RMSNorm"),
        ("gemma", "GemmaRMSNorm"),
    ],
)
def test_rms_norm_classes_are_recognized_by_structure_and_swapped_exactly(module, cls):
    """Each family's own RMS norm class (Gemma's scales by 1 + weight, a zero-initialized
    weight): recognized without its name, and 'rms' computes what it computes."""
    norm_cls = getattr(
        importlib.import_module(f"transformers.models.{module}.modeling_{module}"), cls
    )
    norm = norm_cls(WIDTH, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(WIDTH, generator=torch.Generator().manual_seed(2)))
    x = torch.randn(3, 5, WIDTH, generator=torch.Generator().manual_seed(3))
    replaced = nl.replace_norms(copy.deepcopy(norm), "rms", example_input=x)
    assert replaced.model.eps == 1e-5 and replaced.model.channel_dim == -1
    torch.testing.assert_close(replaced.model(x), norm(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("module", "cls", "data_format"),
    [
        ("convnext", "ConvNextLayerNorm", "channels_first"),
        ("convnext", "ConvNextLayerNorm", "channels_last"),
        ("convnextv2", "ConvNextV2LayerNorm", "channels_first"),
        ("sam", "SamLayerNorm", "channels_first"),
    ],
)
def test_layer_norm_classes_are_recognized_by_behaviour_and_swapped_exactly(
    module, cls, data_format
):
    """nn.LayerNorm subclasses with a forward of their own that reads ``data_format``:
    recognized by what that forward computes, channels where it reads them, and 'ln'
    computes the same, to the bit."""
    norm_cls = getattr(
        importlib.import_module(f"transformers.models.{module}.modeling_{module}"), cls
    )
    norm = norm_cls(WIDTH, eps=1e-5, data_format=data_format)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(WIDTH, generator=generator))
        norm.bias.copy_(torch.randn(WIDTH, generator=generator))
    shape = (3, WIDTH, 4, 5) if data_format == "channels_first" else (3, 4, 5, WIDTH)
    x = torch.randn(shape, generator=generator)
    replaced = nl.replace_norms(copy.deepcopy(norm), "ln", example_input=x)
    channel_dim = 1 if data_format == "channels_first" else -1
    assert replaced.model.eps == 1e-5 and replaced.model.channel_dim == channel_dim
    assert torch.equal(replaced.model(x), norm(x))
