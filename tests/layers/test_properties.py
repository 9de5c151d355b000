"""Property tests over every kind: shapes and dtypes, batch independence, train/eval, state_dict."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import normlab as nl
from spec import CANONICAL_KINDS

KINDS = list(CANONICAL_KINDS)
# Kinds whose training forward counts a step and updates running statistics.
RUNNING_KINDS = {"bn", "bn-scalar", "brn", "switch", "sync-bn"}
# Kinds that normalize with batch statistics in training.
BATCH_STAT_KINDS = RUNNING_KINDS
# Kinds whose output is the same in train and eval mode (for any options).
MODE_FREE_KINDS = {"ln", "rms", "gn", "none", "frozen-bn"}
BN_LIKE = {"bn", "bn-scalar", "sync-bn"}

PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None)


@dataclass
class Case:
    kind: str
    options: dict
    shape: tuple[int, ...]
    dtype: torch.dtype
    seed: int

    def build(self) -> torch.nn.Module:
        return nl.make_norm(self.kind, self.shape[1], dtype=self.dtype, **self.options)

    def batch(self, offset: int = 0, loc: float = 3.0, scale: float = 2.0) -> torch.Tensor:
        """A batch of mean ``loc`` and std ``scale``, far from the initial running stats."""
        generator = torch.Generator().manual_seed(self.seed + offset)
        x = torch.randn(self.shape, generator=generator, dtype=torch.float64)
        return (loc + scale * x).to(self.dtype)

    @property
    def tracks_running_stats(self) -> bool:
        return self.kind in RUNNING_KINDS and self.options.get("track_running_stats", True)

    @property
    def eval_uses_batch(self) -> bool:
        """bn/bn-scalar/sync-bn without running stats use batch stats in eval (as torch)."""
        return self.kind in BN_LIKE and not self.options.get("track_running_stats", True)


def _momentum(allow_none: bool) -> st.SearchStrategy:
    values = st.floats(0.05, 0.95)
    return st.one_of(st.none(), values) if allow_none else values


@st.composite
def _options(draw, kind: str, channels: int) -> dict:
    """Random options that are meaningful for ``kind``."""
    if kind in BN_LIKE:
        convention = draw(st.sampled_from(["torch", "keras"]))
        options = {
            "convention": convention,
            "affine": draw(st.booleans()),
            "momentum": draw(_momentum(allow_none=convention == "torch")),
            "track_running_stats": draw(st.booleans()),
        }
        if kind == "sync-bn":
            options["stats"] = draw(st.sampled_from(["channel", "scalar"]))
        return options
    if kind == "brn":
        warmup = draw(st.integers(0, 2))
        return {
            "affine": draw(st.booleans()),
            "momentum": draw(_momentum(allow_none=True)),
            "r_max": draw(st.floats(1.0, 5.0)),
            "d_max": draw(st.floats(0.0, 6.0)),
            "warmup_steps": warmup,
            "r_max_steps": draw(st.integers(warmup, 4)),
            "d_max_steps": draw(st.integers(warmup, 4)),
        }
    if kind == "switch":
        return {"affine": draw(st.booleans()), "momentum": draw(_momentum(allow_none=True))}
    if kind == "ln":
        return {
            "elementwise_affine": draw(st.booleans()),
            "bias": draw(st.booleans()),
            "over": draw(st.sampled_from(["channels", "all"])),
        }
    if kind == "rms":
        return {
            "elementwise_affine": draw(st.booleans()),
            "over": draw(st.sampled_from(["channels", "all"])),
        }
    if kind == "gn":
        divisors = [g for g in range(1, channels + 1) if channels % g == 0]
        return {"groups": draw(st.sampled_from([None, *divisors])), "affine": draw(st.booleans())}
    if kind == "in":
        return {
            "affine": draw(st.booleans()),
            "track_running_stats": draw(st.booleans()),
            "momentum": draw(st.floats(0.05, 0.95)),
        }
    if kind == "frozen-bn":
        return {"stats": draw(st.sampled_from(["channel", "scalar"]))}
    return {}


@st.composite
def cases(draw, kind: str) -> Case:
    """A kind with random options, batch shape (N, C, *spatial), dtype and seed.

    N >= 2 gives batch-statistics kinds more than one value per channel.
    """
    n = draw(st.integers(2, 6))
    c = draw(st.integers(1, 12))
    spatial = draw(st.lists(st.integers(1, 5), min_size=1 if kind == "in" else 0, max_size=2))
    if kind == "in" and math.prod(spatial) == 1:
        spatial[-1] = 2  # instance statistics need more than one position (as torch)
    options = draw(_options(kind, c))
    if kind == "gn":
        groups = options["groups"] or max(g for g in range(1, min(c, 32) + 1) if c % g == 0)
        if c // groups * math.prod(spatial) == 1:
            spatial.append(2)  # a group of one value is refused (see test_registry)
    shape = (n, c, *spatial)
    if kind in BATCH_STAT_KINDS:
        assert n * math.prod(spatial) > 1
    return Case(
        kind=kind,
        options=options,
        shape=shape,
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        seed=draw(st.integers(0, 2**16)),
    )


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Move parameters and statistics away from their initial values (variances stay positive)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor is None or not tensor.is_floating_point():
                continue
            noise = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + 2.0 * noise)
            else:
                tensor.copy_(2.0 * noise - 0.5)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _assert_states_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def _tolerance(dtype: torch.dtype) -> dict:
    return (
        {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    )


@pytest.mark.parametrize("kind", KINDS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_output_keeps_shape_and_dtype_and_is_finite(kind, data):
    """In train and eval mode the output has the input's shape and dtype and is finite."""
    case = data.draw(cases(kind))
    module = case.build()
    _randomize(module, case.seed)
    x = case.batch()
    for training in (True, False):
        module.train(training)
        with torch.no_grad():
            y = module(x)
        assert y.shape == x.shape
        assert y.dtype == x.dtype
        assert torch.isfinite(y).all(), f"non-finite output in {'train' if training else 'eval'}"


@pytest.mark.parametrize("kind", KINDS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_eval_output_of_a_sample_does_not_depend_on_the_batch(kind, data):
    """In eval mode sample i's output is the same alone, in its batch, or among other samples.

    bn, bn-scalar and sync-bn with track_running_stats=False are the documented exception:
    they use batch statistics in eval too, so the output does change with the other samples.
    """
    case = data.draw(cases(kind))
    if case.eval_uses_batch:
        # With two values per statistic, each normalizes to about +-1 whatever the others are.
        scalar = case.options.get("stats") == "scalar" or kind == "bn-scalar"
        values = math.prod(case.shape) // (1 if scalar else case.shape[1])
        assume(values > 2)
    module = case.build()
    _randomize(module, case.seed)
    with torch.no_grad():
        module.train()(case.batch(offset=1))  # non-trivial running statistics, where kept
        module.eval()
        x = case.batch()
        i = data.draw(st.integers(0, case.shape[0] - 1), label="sample")
        others = case.batch(offset=2, loc=-5.0, scale=4.0)
        others[i] = x[i]
        in_batch = module(x)[i]
        among_others = module(others)[i]
        if case.eval_uses_batch:
            assert not torch.allclose(in_batch, among_others), "eval ignored the batch"
            return
        alone = module(x[i : i + 1])[0]
    torch.testing.assert_close(alone, in_batch, **_tolerance(case.dtype))
    torch.testing.assert_close(among_others, in_batch, **_tolerance(case.dtype))


@pytest.mark.parametrize("kind", KINDS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_eval_forward_changes_no_buffer(kind, data):
    """An eval-mode forward leaves the whole state_dict (running stats, step count) unchanged."""
    case = data.draw(cases(kind))
    module = case.build()
    _randomize(module, case.seed)
    with torch.no_grad():
        module.train()(case.batch(offset=1))
        before = _state(module)
        module.eval()(case.batch())
    _assert_states_equal(_state(module), before)


@pytest.mark.parametrize("kind", sorted(RUNNING_KINDS))
@PROPERTY_SETTINGS
@given(data=st.data())
def test_training_forward_counts_a_step_and_updates_running_stats(kind, data):
    """A training forward adds 1 to num_batches_tracked and moves running_mean/var.

    The batch has mean 3 and std 2, so its statistics differ from the initial (0, 1).
    Without running statistics (track_running_stats=False) there are no such buffers.
    """
    case = data.draw(cases(kind))
    module = case.build().train()
    if not case.tracks_running_stats:
        assert module.running_mean is None and module.running_var is None
        assert module.num_batches_tracked is None
        with torch.no_grad():
            module(case.batch())
        assert all(not name.startswith("running") for name in module.state_dict())
        return
    for step in (1, 2):
        before = _state(module)
        with torch.no_grad():
            module(case.batch(offset=step))
        assert int(module.num_batches_tracked) == int(before["num_batches_tracked"]) + 1 == step
        assert not torch.equal(module.running_mean, before["running_mean"])
        assert not torch.equal(module.running_var, before["running_var"])


@pytest.mark.parametrize("kind", sorted(MODE_FREE_KINDS | {"in"}))
@PROPERTY_SETTINGS
@given(data=st.data())
def test_output_is_identical_in_train_and_eval(kind, data):
    """ln, rms, gn, none and frozen-bn (and in without running stats) ignore the mode."""
    case = data.draw(cases(kind))
    if kind == "in" and case.options["track_running_stats"]:
        case.options["track_running_stats"] = False
    module = case.build()
    _randomize(module, case.seed)
    x = case.batch()
    with torch.no_grad():
        train_out = module.train()(x)
        eval_out = module.eval()(x)
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=0)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_frozen_bn_state_is_unchanged_by_training_forwards(data):
    """frozen-bn has no parameters and its buffers survive train-mode forwards unchanged."""
    case = data.draw(cases("frozen-bn"))
    module = case.build()
    _randomize(module, case.seed)
    assert list(module.parameters()) == []
    before = _state(module)
    module.train()
    for step in range(3):
        module(case.batch(offset=step))
    _assert_states_equal(_state(module), before)


@pytest.mark.parametrize("kind", ["bn", "bn-scalar", "sync-bn"])
@PROPERTY_SETTINGS
@given(data=st.data())
def test_training_output_is_standardized_with_default_affine(kind, data):
    """With weight 1 and bias 0, a training forward gives mean 0 and biased var v/(v+eps).

    Per channel for bn (and sync-bn with stats='channel'); over the whole batch for scalar
    statistics. v is the biased batch variance, computed here in float64.
    """
    case = data.draw(cases(kind))
    module = case.build().train()
    x = case.batch()
    with torch.no_grad():
        y = module(x).double()
    x64 = x.double()
    scalar = module.stats == "scalar"
    reduce = tuple(d for d in range(x.ndim) if scalar or d != 1)
    v = x64.var(dim=reduce, unbiased=False)
    tol = {"rtol": 1e-4, "atol": 1e-4} if case.dtype == torch.float32 else {"rtol": 0, "atol": 1e-9}
    torch.testing.assert_close(y.mean(dim=reduce), torch.zeros_like(v), **tol)
    torch.testing.assert_close(y.var(dim=reduce, unbiased=False), v / (v + module.eps), **tol)


def _train_twice(case: Case) -> torch.nn.Module:
    module = case.build()
    _randomize(module, case.seed)
    module.train()
    with torch.no_grad():
        for step in (1, 2):
            module(case.batch(offset=step))
    return module


def _assert_same_behaviour(loaded: torch.nn.Module, original: torch.nn.Module, case: Case) -> None:
    """Same eval output, then the same train output and resulting state, bit for bit."""
    exact = {"rtol": 0, "atol": 0}
    x = case.batch(offset=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), original.eval()(x), **exact)
        torch.testing.assert_close(loaded.train()(x), original.train()(x), **exact)
    _assert_states_equal(_state(loaded), _state(original))


@pytest.mark.parametrize("kind", KINDS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_state_dict_round_trip_restores_behaviour(kind, data):
    """A fresh module loading a trained state_dict (strict) behaves identically, train and eval."""
    case = data.draw(cases(kind))
    original = _train_twice(case)
    fresh = case.build()
    fresh.load_state_dict(original.state_dict(), strict=True)
    _assert_same_behaviour(fresh, original, case)


@pytest.mark.parametrize("kind", KINDS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_state_dict_survives_torch_save_and_weights_only_load(kind, data):
    """torch.save of the state_dict to a buffer, torch.load(weights_only=True), strict load."""
    case = data.draw(cases(kind))
    original = _train_twice(case)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = case.build()
    fresh.load_state_dict(state, strict=True)
    _assert_same_behaviour(fresh, original, case)
