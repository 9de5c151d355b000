"""Each batched layer against its K replicas run one by one, in float64: outputs, input and
parameter gradients, and running statistics after training steps, in training and eval mode,
with every parameter and buffer drawn at random (a layer at its initial affine would hide
an affine applied to the wrong replica)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from normlab.experiment.batched_layers import Batched, VmappedLayer, batched, fold, unfold
from normlab.experiment.stacked import StackedModels
from normlab.models.feedforward import cnn, mlp
from normlab.norm_spec import parse_norm
from normlab.registry import BUILT_IN, make_norm

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")

REPLICAS = 3
TOLERANCE = 1e-10


def _norm(spec: str, channels: int) -> nn.Module:
    kind, options = parse_norm(spec)
    return make_norm(kind, channels, **dict(options))


# (id, builder, one replica's input shape (N, C, *))
LAYERS = [
    ("linear", lambda: nn.Linear(5, 4), (6, 5)),
    ("linear-no-bias", lambda: nn.Linear(5, 4, bias=False), (6, 5)),
    ("conv", lambda: nn.Conv2d(3, 4, 3, padding=1), (4, 3, 5, 5)),
    (
        "conv-strided-grouped",
        lambda: nn.Conv2d(4, 6, 3, stride=2, groups=2, bias=False),
        (4, 4, 7, 7),
    ),
    ("relu", nn.ReLU, (4, 3, 5, 5)),
    ("maxpool", lambda: nn.MaxPool2d(2), (4, 3, 6, 6)),
    ("flatten", nn.Flatten, (4, 3, 2, 2)),
]
NORM_SPECS = [kind.name for kind in BUILT_IN if kind.name != "none"] + [
    "bn(convention=keras)",
    "bn(momentum=None)",
    "bn-scalar(convention=keras)",
    "bn-scalar(momentum=None)",
    "frozen-bn(stats=scalar)",
    "brn(warmup_steps=1,r_max_steps=3)",
    "ln(over=all)",
    "rms(over=all)",
    "gn(groups=2)",
]
for spec in NORM_SPECS:
    LAYERS.append((f"{spec} on (N, C, H, W)", lambda spec=spec: _norm(spec, 4), (5, 4, 3, 3)))
    if not spec.startswith(("in", "gn")):  # they need positions
        LAYERS.append((f"{spec} on (N, C)", lambda spec=spec: _norm(spec, 4), (6, 4)))


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _replicas(build, count: int = REPLICAS) -> list[nn.Module]:
    """``count`` layers from ``build``, each floating-point tensor drawn at random (variances
    positive), integer buffers alike."""
    layers = []
    for k in range(count):
        layer = build()
        generator = torch.Generator().manual_seed(100 + k)
        with torch.no_grad():
            for name, value in layer.state_dict(keep_vars=True).items():
                if value.is_floating_point():
                    drawn = torch.rand(value.shape, generator=generator)
                    value.copy_(drawn + 0.5 if "var" in name else 2 * drawn - 1)
        layers.append(layer)
    return layers


def _assert_batched_is_each_replica(singles, layer, shape, training, generator, steps=2):
    """``layer`` (the batched ``singles``) on random folded input of each replica's ``shape``
    against each replica alone: outputs and input gradients, each of ``steps`` steps."""
    for module in (layer, *singles):
        module.train(training)
    count = len(singles)
    for _ in range(steps):  # a second step reads the first's running statistics and step count
        inputs = torch.randn(count, *shape, generator=generator, requires_grad=True)
        output = unfold(layer(fold(inputs)), count)
        upstream = torch.randn(output.shape, generator=generator)
        (output * upstream).sum().backward()
        for k, single in enumerate(singles):
            own_input = inputs[k].detach().clone().requires_grad_()
            own = single(own_input)
            (own * upstream[k]).sum().backward()
            torch.testing.assert_close(output[k], own, rtol=TOLERANCE, atol=TOLERANCE)
            torch.testing.assert_close(
                inputs.grad[k], own_input.grad, rtol=TOLERANCE, atol=TOLERANCE
            )


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(
    ("build", "shape"), [entry[1:] for entry in LAYERS], ids=[e[0] for e in LAYERS]
)
def test_a_batched_layer_computes_each_replicas_numbers(build, shape, mode):
    singles = _replicas(build)
    layer = batched([copy.deepcopy(single) for single in singles])
    generator = torch.Generator().manual_seed(3)
    _assert_batched_is_each_replica(singles, layer, shape, mode == "train", generator)
    if isinstance(layer, Batched):
        _assert_replica_states(layer, singles)


def _assert_replica_states(layer: Batched, singles: list[nn.Module]) -> None:
    """``layer.replica_state`` (values and gradients) is each of ``singles``' own."""
    for k, single in enumerate(singles):
        grads, state = layer.replica_state(k, grads=True), layer.replica_state(k)
        assert grads.keys() == dict(single.named_parameters()).keys()
        for name, parameter in single.named_parameters():
            torch.testing.assert_close(grads[name], parameter.grad, rtol=TOLERANCE, atol=TOLERANCE)
        assert state.keys() == single.state_dict().keys()
        for name, value in single.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=TOLERANCE, atol=TOLERANCE, msg=name)


@settings(max_examples=40, deadline=None)
@given(
    spec=st.sampled_from(["bn", "bn-scalar", "brn", "frozen-bn", "ln", "rms", "gn", "in"]),
    replicas=st.integers(1, 4),
    samples=st.integers(2, 5),
    channels=st.integers(1, 6),
    positions=st.sampled_from([(), (3,), (2, 3)]),
    training=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_number_of_replicas_of_any_shape_compute_each_replicas_numbers(
    spec, replicas, samples, channels, positions, training, seed
):
    """Property: for 1 to 4 replicas, (N, C), (N, C, L) and (N, C, H, W) input of any size,
    in training and eval mode, the batched layer computes each replica's numbers."""
    if spec in ("gn", "in") and not positions:
        positions = (3,)  # they normalize over positions
    singles = _replicas(lambda: _norm(spec, channels), replicas)
    layer = batched([copy.deepcopy(single) for single in singles])
    generator = torch.Generator().manual_seed(seed)
    shape = (samples, channels, *positions)
    _assert_batched_is_each_replica(singles, layer, shape, training, generator)
    _assert_replica_states(layer, singles)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("kind", [kind.name for kind in BUILT_IN])
def test_every_built_in_kind_but_switch_has_a_batched_rule_and_holds_each_parameter_once(
    model, kind
):
    """vmap is the fallback for what has no rule: about twice as slow per step, so a kind
    that falls back by accident loses the stacking's speed without a wrong number."""
    build = (lambda: mlp(16, norm=kind)) if model == "mlp" else (lambda: cnn((1, 8, 8), norm=kind))
    try:
        models = [build() for _ in range(REPLICAS)]
    except ValueError:
        pytest.skip(f"{kind} does not fit {model}")
    stack = StackedModels(models)
    fallbacks = [layer for layer in stack.layers if isinstance(layer, VmappedLayer)]
    assert len(fallbacks) == (2 if kind == "switch" else 0)
    # the replicas' parameters, each once, and nothing else for the optimizer to step
    held = sum(parameter.numel() for parameter in stack.parameters())
    assert held == sum(parameter.numel() for model in models for parameter in model.parameters())


def test_replicas_whose_step_counts_differ_are_refused():
    layers = _replicas(lambda: _norm("bn", 4))
    layers[1].num_batches_tracked += 1
    with pytest.raises(ValueError, match=r"num_batches_tracked.*must start equal"):
        batched(layers)


def test_models_that_are_not_sequentials_of_the_same_layers_are_refused():
    with pytest.raises(ValueError, match=r"nn\.Sequential models with the same layers"):
        StackedModels([mlp(16, norm="bn"), mlp(16, norm="ln")])
    with pytest.raises(ValueError, match=r"nn\.Sequential models with the same layers"):
        StackedModels([nn.Linear(3, 2), nn.Linear(3, 2)])
