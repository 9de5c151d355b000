"""normlab.inference: recalibrate, calibrate_with_batch, freeze and eval_parity.

Oracles: statistics computed directly from all the data in float64, torch's
own BatchNorm in eval mode, and eval outputs before and after each change.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normlab as nl
from normlab.inference import (
    batch_norm_layers,
    calibrate_with_batch,
    eval_parity,
    freeze,
    recalibrate,
)
from normlab.layers import FrozenBatchNorm

C = 6


def _data(n: int = 96, features: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 3.0 + 2.0 * torch.randn(n, features, generator=generator)


def _trained(model: nn.Module, data: torch.Tensor, batch: int = 8) -> nn.Module:
    """A few training-mode passes, so running statistics are neither the initial ones nor
    the population's."""
    model.train()
    with torch.no_grad():
        for start in range(0, len(data), batch):
            model(data[start : start + batch])
    return model


NORMS = {
    "torch BatchNorm1d": lambda: nn.BatchNorm1d(C),
    "bn": lambda: nl.make_norm("bn", C),
    "bn keras": lambda: nl.make_norm("bn", C, convention="keras"),
    "bn-scalar": lambda: nl.make_norm("bn-scalar", C),
    "brn": lambda: nl.make_norm("brn", C),
    "switch": lambda: nl.make_norm("switch", C),
    "torch SyncBatchNorm": lambda: nn.SyncBatchNorm(C),
    "momentum None": lambda: nl.make_norm("bn", C, momentum=None),
    "affine False": lambda: nn.BatchNorm1d(C, affine=False),
}
UNBIASED = {
    "affine False",
    "torch BatchNorm1d",
    "bn",
    "bn-scalar",
    "switch",
    "torch SyncBatchNorm",
    "momentum None",
}


def _linear_bn(norm: str) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, C), NORMS[norm]())


def _expected_stats(features: torch.Tensor, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of every value the layer saw, in float64, per channel or (scalar) over
    all values."""
    values = features.double()
    values = values.reshape(1, -1) if norm == "bn-scalar" else values.T
    correction = 1 if norm in UNBIASED else 0
    return values.mean(1), values.var(1, correction=correction)


# --- recalibrate ---------------------------------------------------------------------


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("batch", [16, 7])  # equal batches, and a ragged last batch
def test_recalibrate_sets_the_population_statistics_of_all_the_data(norm, batch):
    data = _data()
    model = _trained(_linear_bn(norm), data)
    recalibrate(model, [data[i : i + batch] for i in range(0, len(data), batch)])
    with torch.no_grad():
        mean, var = _expected_stats(model[0](data), norm)
    layer = model[1]
    torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-5)


def test_recalibrate_on_conv_features_takes_statistics_over_samples_and_positions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, C, 3), nn.BatchNorm2d(C))
    images = 1.0 + torch.rand(20, 3, 9, 9)
    recalibrate(model, images.split(6))
    with torch.no_grad():
        features = model[0](images).double()
    torch.testing.assert_close(model[1].running_mean.double(), features.mean((0, 2, 3)))
    torch.testing.assert_close(
        model[1].running_var.double(), features.transpose(0, 1).reshape(C, -1).var(1)
    )


def test_a_deeper_layer_sees_inputs_normalized_with_batch_statistics():
    """Precise BN's convention: upstream batch-norm layers use each batch's own statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, C), nn.BatchNorm1d(C), nn.ReLU(), nn.Linear(C, 4), nn.BatchNorm1d(4)
    )
    data = _data()
    _trained(model, data)
    batches = data.split(16)
    recalibrate(model, batches)
    inputs = []
    with torch.no_grad():
        for batch in batches:
            hidden = model[0](batch).double()
            hidden = (hidden - hidden.mean(0)) / (hidden.var(0, correction=0) + 1e-5).sqrt()
            hidden = hidden * model[1].weight.double() + model[1].bias.double()
            inputs.append(model[3].double()(hidden.relu()))
        model[3].float()
    everything = torch.cat(inputs)
    torch.testing.assert_close(model[4].running_mean.double(), everything.mean(0))
    torch.testing.assert_close(model[4].running_var.double(), everything.var(0))


def test_recalibrate_leaves_weights_modes_momentum_and_counters_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, C), nn.Dropout(0.5), nl.make_norm("brn", C, momentum=0.3))
    data = _data()
    _trained(model, data)
    model.eval()
    model[1].train()  # an unusual mix of modes must survive too
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    recalibrate(model, data.split(32))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert [m.training for m in model] == [False, True, False]
    assert model[2].momentum == 0.3
    # Dropout was off: the statistics are those of the linear layer's output itself.
    with torch.no_grad():
        mean, var = _expected_stats(model[0](data), "brn")
    torch.testing.assert_close(model[2].running_var.double(), var, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[2].running_mean.double(), mean, rtol=1e-5, atol=1e-5)


def test_recalibrate_accepts_input_target_pairs_and_stops_at_max_batches():
    data = _data()
    model = _linear_bn("bn")
    pairs = [(batch, torch.zeros(len(batch))) for batch in data.split(16)]
    recalibrate(model, iter(pairs), max_batches=2)
    with torch.no_grad():
        mean, var = _expected_stats(model[0](data[:32]), "bn")
    torch.testing.assert_close(model[1].running_mean.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var.double(), var, rtol=1e-5, atol=1e-5)


def test_a_layer_called_twice_pools_both_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(C)

        def forward(self, x):
            return self.norm(x) + self.norm(2.0 * x + 1.0)

    model = Twice()
    data = _data(features=C)
    recalibrate(model, data.split(24))
    mean, var = _expected_stats(torch.cat([data, 2.0 * data + 1.0]), "bn")
    torch.testing.assert_close(model.norm.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.norm.running_var.double(), var, rtol=1e-5, atol=1e-5)


def test_recalibrate_refuses_empty_batches_and_changes_nothing():
    model = _trained(_linear_bn("bn"), _data())
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="batches is empty"):
        recalibrate(model, [])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (nn.Sequential(nn.Linear(5, C), nn.LayerNorm(C)), "no batch-norm layer"),
        (
            nn.Sequential(nn.Linear(5, C), nn.BatchNorm1d(C, track_running_stats=False)),
            "track_running_stats",
        ),
    ],
)
def test_recalibrate_explains_what_it_cannot_do(model, message):
    with pytest.raises(ValueError, match=message):
        recalibrate(model, [_data()])


# --- calibrate_with_batch -------------------------------------------------------------


def test_calibration_batch_sets_its_statistics_and_reports_the_shift():
    data = _data()
    model = _trained(_linear_bn("bn"), data)
    old_mean = model[1].running_mean.double().clone()
    old_var = model[1].running_var.double().clone()
    batch = data[:24]
    shifts = calibrate_with_batch(model, batch)
    with torch.no_grad():
        mean, var = _expected_stats(model[0](batch), "bn")
    torch.testing.assert_close(model[1].running_mean.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var.double(), var, rtol=1e-5, atol=1e-5)
    (shift,) = shifts
    assert shift.name == "1"
    scale = (old_var + 1e-5).sqrt()
    assert shift.mean_shift == pytest.approx(
        ((mean - old_mean).abs() / scale).max().item(), rel=1e-4
    )
    ratio = (var + 1e-5) / (old_var + 1e-5)
    assert shift.var_ratio_min == pytest.approx(ratio.min().item(), rel=1e-4)
    assert shift.var_ratio_max == pytest.approx(ratio.max().item(), rel=1e-4)


# --- freeze ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "norm", ["torch BatchNorm1d", "bn", "bn keras", "bn-scalar", "brn", "affine False"]
)
def test_frozen_model_keeps_eval_outputs_in_every_mode(norm):
    data = _data()
    model = _trained(_linear_bn(norm), data)
    model.eval()
    with torch.no_grad():
        expected = model(data)
    frozen = freeze(model)
    assert frozen is model
    assert isinstance(model[1], FrozenBatchNorm)
    for training in (False, True):
        frozen.train(training)
        with torch.no_grad():
            torch.testing.assert_close(frozen(data), expected)
    state = copy.deepcopy(frozen.state_dict())
    frozen.train()
    output = frozen(data[:1])  # a batch of one is fine now
    output.sum().backward()
    assert all(torch.equal(state[k], v) for k, v in frozen.state_dict().items())
    assert not any(p.requires_grad for p in frozen[1].parameters())
    assert frozen[0].weight.grad is not None


def test_freeze_chosen_layers_by_name_or_module():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, C), nn.BatchNorm1d(C), nn.Linear(C, C), nl.make_norm("bn", C)
    )
    freeze(model, modules=["1"])
    assert isinstance(model[1], FrozenBatchNorm) and isinstance(model[3], nl.BatchNorm)
    freeze(model, modules=[model[3]])
    assert isinstance(model[3], FrozenBatchNorm)


def test_a_shared_layer_is_frozen_once_everywhere():
    shared = nn.BatchNorm1d(C)
    model = nn.Sequential(nn.Sequential(shared), nn.Sequential(shared))
    freeze(model)
    assert isinstance(model[0][0], FrozenBatchNorm) and model[0][0] is model[1][0]


def test_freezing_a_layer_itself_returns_the_frozen_layer():
    layer = _trained(nn.Sequential(nn.BatchNorm1d(C)), _data(features=C))[0].eval()
    data = _data(features=C)
    frozen = freeze(layer)
    assert isinstance(frozen, FrozenBatchNorm)
    torch.testing.assert_close(frozen(data), layer(data))


@pytest.mark.parametrize(
    ("model", "modules", "message"),
    [
        (nn.Sequential(nn.Linear(5, C), nl.make_norm("switch", C)), None, "switchable"),
        (nn.Sequential(nn.BatchNorm1d(C, track_running_stats=False)), None, "track_running_stats"),
        (nn.Sequential(nn.BatchNorm1d(C)), ["bn1"], r"'bn1' is not a batch-norm layer.*: 0"),
        (
            nn.Sequential(nn.BatchNorm1d(C)),
            [nn.BatchNorm1d(C)],
            "not a batch-norm layer of the model",
        ),
    ],
)
def test_freeze_refuses_what_it_cannot_freeze_and_replaces_nothing(model, modules, message):
    before = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match=message):
        freeze(model, modules=modules)
    assert [type(m) for m in model.modules()] == before


# --- eval_parity ---------------------------------------------------------------------


def _deep_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, C), nl.make_norm("bn", C), nn.ReLU(), nn.Linear(C, 3), nn.BatchNorm1d(3)
    )


def test_eval_parity_measures_the_model_without_changing_it():
    data = _data()
    model = _trained(_deep_model(), data, batch=4)
    batch = data[:16]
    state = copy.deepcopy(model.state_dict())
    report = eval_parity(model, batch)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.training
    trial = copy.deepcopy(model).train()
    with torch.no_grad():
        out_train = trial(batch).double()
        out_eval = model.eval()(batch).double()
    assert report.output_change == pytest.approx(
        ((out_train - out_eval).norm() / out_eval.norm()).item(), rel=1e-4
    )
    assert report.max_abs_change == pytest.approx(
        (out_train - out_eval).abs().max().item(), rel=1e-4
    )
    agreement = (out_train.argmax(1) == out_eval.argmax(1)).double().mean().item()
    assert report.prediction_agreement == pytest.approx(agreement)
    assert report.batch_size == 16
    first = report.layers[0]
    assert [layer.name for layer in report.layers] == ["1", "4"]
    with torch.no_grad():
        features = model[0](batch).double()
    layer = model[1]
    scale = (layer.running_var.double() + layer.eps).sqrt()
    assert first.mean_shift == pytest.approx(
        ((features.mean(0) - layer.running_mean.double()).abs() / scale).max().item(), rel=1e-4
    )
    ratio = (features.var(0, correction=0) + layer.eps) / scale.square()
    assert first.var_ratio_min == pytest.approx(ratio.min().item(), rel=1e-4)
    assert first.var_ratio_max == pytest.approx(ratio.max().item(), rel=1e-4)


def test_after_calibrating_on_a_batch_its_first_layer_is_in_parity():
    data = _data()
    model = _trained(_linear_bn("bn"), data, batch=4)
    batch = data[:32]
    before = eval_parity(model, batch)
    calibrate_with_batch(model, batch)
    after = eval_parity(model, batch)
    (layer,) = after.layers
    assert layer.mean_shift < 1e-5
    assert layer.var_ratio_max == pytest.approx(31 / 32, rel=1e-4)  # biased batch, unbiased running
    assert after.output_change < before.layers[0].output_change
    assert after.output_change < 0.05


def test_eval_parity_needs_batch_statistics_to_compare():
    model = _trained(_linear_bn("bn"), _data())
    with pytest.raises(ValueError, match="more than one value per channel"):
        eval_parity(model, _data(n=1))
    with pytest.raises(ValueError, match="no batch-norm layer"):
        eval_parity(nn.Sequential(nn.Linear(5, C)), _data())


def test_the_inference_tools_find_every_batch_norm_kind():
    model = nn.Sequential(*(factory() for factory in NORMS.values()), nn.LayerNorm(C))
    names = [name for name, _ in batch_norm_layers(model)]
    assert names == [str(i) for i in range(len(NORMS))]
