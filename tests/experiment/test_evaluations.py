"""After-training evaluations (normlab.experiment.evaluations): shifted inputs, batch 1 and
batch statistics at other batch sizes.

Oracles: the shifts as their formulas, computed here on the images; batch norm's training
forward in float64 from its definition (batch mean, biased variance); eval mode's
independence of the batch (a model without batch norms, or in eval mode, gives each sample
the prediction it gets alone).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from normlab.data import load_dataset
from normlab.experiment import RunConfig, train_run
from normlab.experiment.evaluations import SHIFT_SEED, SHIFTS, evaluate_after_training


def _images(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=generator), torch.randint(
        0, 3, (n,), generator=generator
    )


def _mlp(norm: nn.Module | None = None, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(16, 8)]
    layers += [norm] if norm is not None else []
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 3)]
    return nn.Sequential(*layers).double()


def _trained_bn() -> nn.Sequential:
    model = _mlp(nn.BatchNorm1d(8))
    with torch.no_grad():  # running statistics that are not the initial ones
        for seed in range(3):
            model.train()(_images(32, seed=10 + seed)[0].double())
        model[2].weight.uniform_(0.5, 1.5)
        model[2].bias.uniform_(-0.5, 0.5)
    return model.eval()


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).double().mean().item()


def test_shifted_accuracies_are_the_models_accuracy_on_the_shifted_images():
    x, y = _images()
    x = x.double()
    model = _trained_bn()
    result = evaluate_after_training(model, x, y)
    generator = torch.Generator().manual_seed(SHIFT_SEED)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    noise_2 = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    expected_images = {
        "brightness +0.2": torch.clamp(x + 0.2, 0, 1),
        "brightness +0.4": torch.clamp(x + 0.4, 0, 1),
        "intensity x0.5": x / 2,
        "noise sd 0.2": torch.clamp(x + 0.2 * noise, 0, 1),
        "noise sd 0.4": torch.clamp(x + 0.4 * noise_2, 0, 1),
    }
    assert set(result["shifted_val_acc"]) == set(SHIFTS) == set(expected_images)
    with torch.no_grad():
        for name, images in expected_images.items():
            assert result["shifted_val_acc"][name] == _accuracy(model(images), y), name


def test_batch_one_accuracy_in_eval_mode_is_the_batched_one_and_training_mode_names_the_failure():
    x, y = _images(40)
    x = x.double()
    model = _trained_bn()
    result = evaluate_after_training(model, x, y)
    with torch.no_grad():
        assert result["batch1_val_acc"] == _accuracy(model(x), y)
    assert result["batch1_samples"] == 40
    assert "more than 1 value per channel" in result["batch1_train_mode"]
    assert evaluate_after_training(_mlp(nn.LayerNorm(8)), x, y)["batch1_train_mode"] is None


def test_batch_statistics_accuracy_follows_batch_norms_training_forward_in_float64():
    x, y = _images(64)
    x = x.double()
    model = _trained_bn()
    before = copy.deepcopy(model.state_dict())
    result = evaluate_after_training(model, x, y)
    first, bn, last = model[1], model[2], model[5]
    with torch.no_grad():
        for size in (2, 4, 8, 32):
            logits = []
            for batch in x.split(size):
                h = first(batch.flatten(1))
                mean = h.mean(0)
                var = ((h - mean) ** 2).mean(0)
                h = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
                logits.append(last(torch.relu(h)))
            expected = _accuracy(torch.cat(logits), y)
            assert result["batch_stats_val_acc"][str(size)] == pytest.approx(expected), size
    assert result["batch_stats_val_acc"]["128"] is None  # no whole batch of 128 in 64 images
    for name, tensor in model.state_dict().items():  # running statistics untouched
        assert torch.equal(tensor, before[name]), name
    assert not model.training


def test_without_batch_norms_batch_statistics_change_nothing_and_dropout_stays_off():
    x, y = _images(64)
    x = x.double()
    model = _mlp(nn.LayerNorm(8), dropout=0.9).eval()
    result = evaluate_after_training(model, x, y)
    with torch.no_grad():
        clean = _accuracy(model(x), y)
    assert {v for k, v in result["batch_stats_val_acc"].items() if int(k) <= 64} == {clean}
    assert result["batch1_val_acc"] == clean


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_a_run_with_evaluations_records_them_and_trains_as_without(digits):
    config = RunConfig(norm="bn", epochs=1, batch_size=64, model_options={"hidden": [32]})
    plain = train_run(config, digits)
    evaluated = train_run(RunConfig(**{**config.to_dict(), "evaluations": True}), digits)
    assert "evaluations" not in plain and "evaluations" not in config.to_dict()
    assert evaluated["final"] == plain["final"]
    assert evaluated["config"]["evaluations"] is True
    assert evaluated["run_id"] != plain["run_id"]
    block = evaluated["evaluations"]
    assert set(block["shifted_val_acc"]) == set(SHIFTS)
    assert block["batch1_val_acc"] == pytest.approx(plain["final"]["val_acc"], abs=1e-12)
    assert all(0.0 <= v <= 1.0 for v in block["batch_stats_val_acc"].values() if v is not None)
