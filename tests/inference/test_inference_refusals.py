"""The inference tools refuse what they cannot compute, before changing anything, and say what to
pass instead; a fold that would be wrong for some inputs never runs on them silently.
Oracles: the model's own unfolded eval output, its state before the call, float64 statistics."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import normlab as nl
from normlab.inference import eval_parity, fold_batchnorm, recalibrate
from normlab.modes import eval_mode, modes_restored

C = 6
NORMS = {
    "torch BatchNorm1d": lambda: nn.BatchNorm1d(C),
    "bn": lambda: nl.make_norm("bn", C),
    "bn keras": lambda: nl.make_norm("bn", C, convention="keras"),
    "bn-scalar": lambda: nl.make_norm("bn-scalar", C),
    "brn": lambda: nl.make_norm("brn", C),
    "switch": lambda: nl.make_norm("switch", C),
}


def _data(n: int = 96, features: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 3.0 + 2.0 * torch.randn(n, features, generator=generator)


def _model(norm: str) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, C), NORMS[norm]())
    with torch.no_grad():
        for start in range(0, 64, 8):
            model(_data()[start : start + 8])
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[key], value) for key, value in model.state_dict().items())


# --- an empty batch never turns the statistics into NaN ---------------------------


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("where", [0, 1, 2])
def test_an_empty_batch_is_refused_naming_it_and_nothing_changes(norm, where):
    model, x = _model(norm), _data()
    batches = [x[:32], x[32:64], x[64:]]
    batches.insert(where, x[:0])
    before = _state(model)
    with pytest.raises(ValueError, match=rf"batch {where} of batches has no samples"):
        recalibrate(model, batches)
    assert _unchanged(model, before)
    assert model.training


@pytest.mark.parametrize("norm", list(NORMS))
def test_a_failure_midway_leaves_every_statistic_as_it_was(norm):
    model, x = _model(norm), _data()
    before = _state(model)
    with pytest.raises(TypeError, match="batch 2 of batches must be a tensor"):
        recalibrate(model, [x[:32], x[32:64], "not a batch"])
    assert _unchanged(model, before)


# --- wrong arguments get errors that say what to pass ----------------------------


def test_eval_parity_of_an_empty_batch_says_so():
    model = _model("bn").eval()
    before = _state(model)
    with pytest.raises(ValueError, match=r"has no samples \(shape \(0, 4\)\)"):
        eval_parity(model, _data()[:0])
    assert _unchanged(model, before)


def test_recalibrate_with_a_bare_tensor_says_to_wrap_it():
    model = _model("bn")
    before = _state(model)
    with pytest.raises(TypeError, match=r"one tensor of shape \(96, 4\).*\[x\]"):
        recalibrate(model, _data())
    assert _unchanged(model, before)


@settings(max_examples=20, deadline=None)
@given(bad=st.one_of(st.integers(max_value=0), st.sampled_from([1.5, True, "2"])))
def test_max_batches_must_be_a_positive_integer(bad):
    model = _model("bn")
    with pytest.raises(ValueError, match=rf"max_batches must be a positive integer.*{bad!r}"):
        recalibrate(model, [_data()], max_batches=bad)


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_max_batches_counts_batches(limit):
    model, x = _model("torch BatchNorm1d"), _data()
    batches = list(x.split(16))
    recalibrate(model, batches, max_batches=limit)
    with torch.no_grad():
        seen = model[0](torch.cat(batches[:limit])).double()
    torch.testing.assert_close(model[1].running_mean.double(), seen.mean(0))
    torch.testing.assert_close(model[1].running_var.double(), seen.var(0))


# --- a Linear + batch norm fold is exact for (N, features) and refused otherwise ----


def _linear_norm(norm: str) -> nn.Sequential:
    model = _model(norm)
    if norm == "switch":  # switchable norm is never folded
        model[1] = nn.BatchNorm1d(C)
        model.train()(_data()[:16])
    return model.eval()


@pytest.mark.parametrize("norm", [name for name in NORMS if name != "switch"])
def test_a_folded_linear_is_exact_on_features_and_refuses_a_channels_first_input(norm):
    model = _linear_norm(norm)
    folded = fold_batchnorm(model)
    x2 = _data(16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x2), model(x2), rtol=1e-5, atol=1e-5)
        x3 = _data(16 * C).reshape(16, C, 4)
        model(x3)  # the unfolded model takes (N, C, L) ...
        with pytest.raises(ValueError, match=r"'1'.*\(N, features\).*\(16, 6, 6\)"):
            folded(x3)  # ... and the folded one refuses it rather than differ


def test_the_issue_example_never_differs_silently():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    model.train()(torch.randn(64, 6, 4) * 2 + 1)
    model.eval()
    x = torch.randn(16, 6, 4)
    with torch.no_grad():
        expected = model(x)
        try:
            actual = fold_batchnorm(model)(x)
        except ValueError as error:
            assert "(N, features)" in str(error)
        else:
            torch.testing.assert_close(actual, expected)


def test_the_sequential_fallback_guards_its_linear_folds_too():
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, C), nn.BatchNorm1d(C))

        def forward(self, x):
            return self.body(x) * (2.0 if x.sum() > 0 else 1.0)

    model = Untraceable()
    model.train()(_data(32))
    model.eval()
    folded = fold_batchnorm(model)
    with torch.no_grad():
        torch.testing.assert_close(folded(_data(8)), model(_data(8)), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match=r"\(N, features\)"):
            folded(_data(16 * C).reshape(16, C, 4))


def test_a_folded_conv_takes_any_batch_without_a_guard():
    model = nn.Sequential(nn.Conv1d(3, C, 3), nn.BatchNorm1d(C))
    model.train()(torch.randn(8, 3, 10))
    folded = fold_batchnorm(model.eval())
    assert [type(m) for m in folded.modules()][1:] == [nn.Conv1d]


# --- one helper for modes ---------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(modes=st.lists(st.booleans(), min_size=5, max_size=5))
def test_modes_are_restored_module_by_module_even_after_an_error(modes):
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Sequential(nn.BatchNorm1d(2)))
    modules = list(model.modules())
    for module, training in zip(modules, modes, strict=True):
        module.training = training
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not any(module.training for module in modules)
        raise RuntimeError
    assert [module.training for module in modules] == modes
    with modes_restored(model):
        model.train()
    assert [module.training for module in modules] == modes


def test_evaluate_restores_each_modules_own_mode():
    from normlab.experiment.train import evaluate

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Dropout())
    model.train()
    model[2].eval()
    evaluate(model, torch.randn(5, 1, 2, 2), torch.zeros(5, dtype=torch.int64))
    assert [m.training for m in model.modules()] == [True, True, True, False]


def test_eval_parity_restores_each_modules_own_mode():
    model = _model("bn")
    model[0].eval()
    eval_parity(model, _data(16))
    assert [m.training for m in model.modules()] == [True, False, True]
