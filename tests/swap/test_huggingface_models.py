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

import normlab as nl
from model_parity import max_difference, sgd_step, swap_options
from spec import CANONICAL_KINDS

transformers = pytest.importorskip("transformers")
from huggingface_models import (  # noqa: E402 (after the skip)
    IMAGE_MODELS,
    MATCHING,
    MODELS,
    WIDTH,
    model_and_input,
)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_norm_is_recognized_and_the_matching_kind_is_exact(name):
    model, x = model_and_input(name)
    norms = [m for m in model.modules() if "norm" in type(m).__name__.lower()]
    swapped = copy.deepcopy(model)
    replaced = nl.replace_norms(swapped, MATCHING[name], example_input=x)
    assert len(replaced.replacements) == len(norms) and not replaced.skipped
    assert "changed" not in replaced.summary()
    assert max_difference(model, swapped, x) == 0.0


@pytest.mark.parametrize("kind", CANONICAL_KINDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_every_kind_replaces_the_norms_and_trains_one_step(name, kind):
    model, x = model_and_input(name)
    options = swap_options(kind)
    if kind == "in" and name in IMAGE_MODELS - {"vit"}:
        options["exclude"] = "model.layernorm"  # on pooled (N, C): no positions to normalize
    nl.replace_norms(model, kind, example_input=x, **options)
    loss = sgd_step(model, x)
    assert torch.isfinite(loss) and torch.isfinite(model.eval()(x)).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_batch_norm_models_freeze_and_fold_within_1e_5(name):
    """Swapped to bn and run a few training steps, then frozen and folded: eval outputs
    stay within 1e-5 of the unfrozen, unfolded model's."""
    model, x = model_and_input(name)
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
