"""The base of normlab's torch layers: shared argument checks, what each layer's running
variance holds, versioned state-dict loading, empty batches, and channels on the last dim.

Oracles: torch's own layers (same arguments, same state), float64 formulas, and for
``channel_dim=-1`` the same kind on the input with its channels moved to dim 1.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import normlab as nl
from normlab import functional as NF
from normlab.inference.layers import is_batch_norm, stores_unbiased_variance

C = 6
ALL_KINDS = ("bn", "bn-scalar", "brn", "switch", "frozen-bn", "sync-bn", "gn", "in", "ln", "rms")
RUNNING_KINDS = ("bn", "bn-scalar", "brn", "switch", "sync-bn")


def _options(kind: str) -> dict:
    """Options that make each kind's parameters matter (gn with 3 groups of 2 channels)."""
    return {"groups": 3} if kind == "gn" else {}


def _randomize(module: nn.Module, seed: int) -> None:
    """Random affine, running statistics and mixing logits, the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            if not tensor.is_floating_point():
                continue
            values = torch.rand(tensor.shape, generator=gen, dtype=torch.float64)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + values)
            else:
                tensor.copy_(values - 0.5 if "mean" in name or name == "bias" else 0.5 + values)


# 1. Shared argument checks


BAD_EPS = [float("nan"), float("inf"), -1.0, 0.0, "1e-5"]


@pytest.mark.parametrize("eps", BAD_EPS, ids=repr)
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_kind_refuses_an_eps_that_is_not_finite_and_positive(kind, eps):
    """Eps=nan made every output NaN, eps=inf only the bias; refused at
    construction, naming eps."""
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        nl.make_norm(kind, C, eps=eps, **_options(kind))


@pytest.mark.parametrize("momentum", [5.0, -0.1, float("nan"), float("inf"), "0.1"], ids=repr)
@pytest.mark.parametrize("kind", [*RUNNING_KINDS, "in"])
def test_every_kind_with_momentum_refuses_one_outside_0_1(kind, momentum):
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\]"):
        nl.make_norm(kind, C, momentum=momentum)


def test_the_layers_the_issue_names_refuse_bad_arguments():
    """SwitchableNorm(4, momentum=5.0, eps=-1.0) and FrozenBatchNorm(4, eps=-1.0)
    were accepted."""
    with pytest.raises(ValueError, match="momentum"):
        nl.SwitchableNorm(4, momentum=5.0)
    with pytest.raises(ValueError, match="eps"):
        nl.SwitchableNorm(4, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        nl.FrozenBatchNorm(4, eps=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        nl.BatchRenorm(4, momentum=1.5)


@pytest.mark.parametrize("num_features", [0, -3, True, 2.5, "4"], ids=repr)
@pytest.mark.parametrize(
    "build",
    [nl.BatchNorm, nl.BatchRenorm, nl.SwitchableNorm, nl.FrozenBatchNorm, nl.SyncBatchNorm],
    ids=lambda c: c.__name__,
)
def test_every_layer_refuses_a_num_features_that_is_not_a_positive_int(build, num_features):
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        build(num_features)


@pytest.mark.parametrize("kind", ["bn", "bn-scalar", "brn", "switch", "sync-bn"])
def test_momentum_none_is_the_cumulative_average_where_torch_has_it(kind):
    """momentum=None is accepted by every torch-convention layer with running statistics."""
    norm = nl.make_norm(kind, C, momentum=None)
    assert norm.momentum is None


# 2. What the running variance holds, read by the tools


@pytest.mark.parametrize(
    ("build", "holds"),
    [
        (lambda: nl.BatchNorm(C), "unbiased"),
        (lambda: nl.BatchNorm(C, stats="scalar"), "unbiased"),
        (lambda: nl.BatchNorm(C, convention="keras"), "biased"),
        (lambda: nl.SyncBatchNorm(C, convention="keras"), "biased"),
        (lambda: nl.BatchRenorm(C), "sigma2_minus_eps"),
        (lambda: nl.SwitchableNorm(C), "unbiased"),
    ],
)
def test_each_layer_declares_what_its_running_variance_holds(build, holds):
    """The declaration is what the inference tools read (no class tests)."""
    layer = build()
    assert layer.running_var_holds == holds
    assert is_batch_norm(layer)
    assert stores_unbiased_variance(layer) == (holds == "unbiased")


def test_batch_renorm_is_a_sibling_of_batch_norm():
    assert not issubclass(nl.BatchRenorm, nl.BatchNorm)
    assert issubclass(nl.BatchRenorm, nl.layers.RunningStatsNorm)
    assert issubclass(nl.BatchNorm, nl.layers.RunningStatsNorm)
    assert not is_batch_norm(nl.FrozenBatchNorm(C))


def test_a_new_layer_declaring_its_running_variance_is_handled_by_the_tools():
    """A layer the tools have never heard of is treated by its declaration alone."""

    class BiasedBatchNorm(nl.layers.RunningStatsNorm):
        running_var_holds = "biased"

        def __init__(self, num_features: int) -> None:
            super().__init__(num_features, 1e-5, 0.1, True, True)

        def _normalize(self, input: torch.Tensor) -> torch.Tensor:
            return input

    layer = BiasedBatchNorm(C)
    assert is_batch_norm(layer)
    assert not stores_unbiased_variance(layer)


# 3. Checks run once per training forward


@pytest.mark.parametrize("kind", RUNNING_KINDS)
def test_training_batch_is_checked_once(kind, monkeypatch):
    import normlab.functional

    calls = []
    original = normlab.functional.check_batch_statistics

    def counting(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(normlab.functional, "check_batch_statistics", counting)
    norm = nl.make_norm(kind, C)
    norm(torch.randn(4, C, 3))
    assert len(calls) == 1


# 4. State-dict versioning, as torch's _NormBase


def _without_counter(state: dict, version: int | None) -> dict:
    """``state`` as torch before 0.4.1 saved it: no num_batches_tracked, version 1 or none."""
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if version is None:
        return old
    stripped = type(state)(old)
    stripped._metadata = copy.deepcopy(state._metadata)
    for meta in stripped._metadata.values():
        meta["version"] = version
    return stripped


@pytest.mark.parametrize("version", [1, None])
@pytest.mark.parametrize(
    "build",
    [
        lambda: nl.BatchNorm(C),
        lambda: nl.BatchNorm(C, stats="scalar"),
        lambda: nl.SyncBatchNorm(C),
        lambda: nl.BatchRenorm(C),
        lambda: nl.SwitchableNorm(C),
    ],
)
def test_a_state_dict_from_before_num_batches_tracked_loads_as_into_torch(build, version):
    """Torch's BatchNorm2d loads an old state_dict without
    num_batches_tracked (the count starts at 0); so does every normlab layer that counts."""
    source = build()
    _randomize(source, 1)
    source.num_batches_tracked.fill_(7)
    old = _without_counter(source.state_dict(), version)
    torch_bn = nn.BatchNorm2d(C)
    torch_bn.load_state_dict(_without_counter(nn.BatchNorm2d(C).state_dict(), version))
    target = build()
    target.num_batches_tracked.fill_(3)
    target.load_state_dict(old)
    assert int(target.num_batches_tracked) == int(torch_bn.num_batches_tracked) == 0
    for name in ("running_mean", "running_var", "weight", "bias"):
        assert torch.equal(getattr(target, name), getattr(source, name)), name


def test_a_current_state_dict_without_the_counter_is_still_refused():
    """Version 2 state_dicts must hold num_batches_tracked (strict loading), as torch."""
    state = nl.BatchNorm(C).state_dict()
    del state["num_batches_tracked"]
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        nn.BatchNorm2d(C).load_state_dict(state)
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        nl.BatchNorm(C).load_state_dict(state)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_checkpoint_saved_by_this_version_loads(kind, tmp_path):
    """A state_dict saved to disk by this version (with its version metadata) loads back
    with weights_only=True into a fresh layer, which then computes the same."""
    source = nl.make_norm(kind, C, **_options(kind))
    _randomize(source, 2)
    path = tmp_path / "layer.pt"
    torch.save(source.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert state._metadata[""]["version"] == type(source)._version
    target = nl.make_norm(kind, C, **_options(kind))
    target.load_state_dict(state)
    x = torch.randn(3, C, 4, generator=torch.Generator().manual_seed(3))
    assert_close(target.eval()(x), source.eval()(x), rtol=0, atol=0)


# 5. Empty training batches


EMPTY_CASES = [
    ("bn", {}),
    ("bn", {"convention": "keras"}),
    ("bn-scalar", {}),
    ("bn-scalar", {"convention": "keras"}),
    ("sync-bn", {}),
    ("brn", {}),
    ("brn", {"warmup_steps": 2, "r_max_steps": 4, "d_max_steps": 4}),
    ("switch", {}),
]


@pytest.mark.parametrize("shape", [(0, C), (0, C, 5), (0, C, 2, 3)], ids=str)
@pytest.mark.parametrize(("kind", "options"), EMPTY_CASES, ids=str)
def test_an_empty_training_batch_is_what_torch_batch_norm_makes_of_it(kind, options, shape):
    """torch's BatchNorm on N=0 in training returns an empty output, zero gradients for the
    affine, leaves the running statistics alone and counts the step. Every batch-norm-like
    kind does the same (bn-scalar, brn and switch raised internal errors, bn with the Keras
    convention a ZeroDivisionError)."""
    ours = nl.make_norm(kind, C, **options)
    _randomize(ours, 4)
    reference = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d)[len(shape) - 2](C)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    x = torch.randn(shape, requires_grad=True)
    for module in (ours, reference):
        module.weight.grad = None
    y, y_ref = ours(x), reference(x.detach().requires_grad_())
    assert y.shape == y_ref.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert_close(ours.weight.grad, torch.zeros(C))
    assert_close(ours.bias.grad, torch.zeros(C))
    for name, tensor in ours.state_dict().items():
        if name == "num_batches_tracked":
            assert int(tensor) == int(before[name]) + 1 == int(reference.num_batches_tracked)
        else:
            assert torch.equal(tensor, before[name]), name
    assert ours.eval()(x).shape == x.shape


def test_merge_moments_is_the_moments_of_the_union():
    """The parallel-variance merge of parts equals float64 moments of the concatenation,
    with an empty part and parts with a large common offset (no E[x^2] - E[x]^2)."""
    gen = torch.Generator().manual_seed(5)
    parts = [1e4 + torch.randn(n, 3, generator=gen, dtype=torch.float64) for n in (5, 0, 17, 2)]
    counts = torch.tensor([[float(len(p))] for p in parts], dtype=torch.float64)
    means = torch.stack(
        [p.mean(0) if len(p) else torch.zeros(3, dtype=torch.float64) for p in parts]
    )
    m2s = torch.stack(
        [
            ((p - p.mean(0)) ** 2).sum(0) if len(p) else torch.zeros(3, dtype=torch.float64)
            for p in parts
        ]
    )
    count, mean, m2 = NF.merge_moments(counts, means, m2s)
    union = torch.cat(parts)
    assert float(count) == len(union)
    assert_close(mean, union.mean(0))
    assert_close(m2 / count, union.var(0, unbiased=False))


def test_extra_repr_names_bias_and_channel_dim_when_not_the_default():
    assert "bias=False" in repr(nl.BatchNorm(C, bias=False))
    assert "bias" not in repr(nl.BatchNorm(C))
    assert "channel_dim=-1" in repr(nl.make_norm("switch", C, channel_dim=-1))
    assert repr(nl.BatchNorm(C)) == (
        f"BatchNorm({C}, stats='channel', convention='torch', eps=1e-05, momentum=0.1, "
        "affine=True, track_running_stats=True)"
    )


def test_reset_parameters_restores_a_fresh_layer():
    for kind in ALL_KINDS:
        fresh = nl.make_norm(kind, C, **_options(kind))
        used = nl.make_norm(kind, C, **_options(kind))
        _randomize(used, 6)
        used.reset_parameters()
        for (name, a), b in zip(
            used.state_dict().items(), fresh.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), (kind, name)
