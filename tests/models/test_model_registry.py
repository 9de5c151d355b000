"""The model registry (normlab.models.registry): each lab model's facts agree with what its
builder builds, the user's own models by name (``@register_model``) in build_model and the
lab, and the refusals of duplicate, unknown and inconsistent registrations."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from normlab.data import load_dataset, train_subset
from normlab.experiment import RunConfig, check_runs
from normlab.experiment.ddp import train_distributed
from normlab.experiment.executors.pool import ProcessPoolExecutor
from normlab.experiment.store import ResultsStore
from normlab.experiment.sweep import run_sweep
from normlab.experiment.train import build_run_model, train_run
from normlab.layers import GroupNorm, LayerNorm
from normlab.models import (
    MODEL_OPTIONS,
    MODELS,
    NormFactory,
    build_model,
    is_model,
    list_models,
    model_info,
    register_model,
)
from normlab.models import registry as model_registry
from normlab.models.registry import LAB_MODELS, check_shippable
from normlab.registry import make_norm

SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these small models are slower with more on a loaded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, given back as it was after the test."""
    monkeypatch.setattr(model_registry, "_MODELS", dict(model_registry._MODELS))


def tiny(norm, num_classes, input_shape):
    """A user's builder: (N, C, H, W) -> (N, num_classes), one normalized hidden layer."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 8),
        norm(8),
        nn.ReLU(),
        nn.Linear(8, num_classes),
    )


def wide(norm, num_classes, input_shape, *, hidden, dropout):
    """A user's builder that takes the lab's hidden and dropout options."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for out in hidden:
        layers += [nn.Linear(width, out), norm(out), nn.ReLU(), nn.Dropout(dropout)]
        width = out
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


# --- the lab's models: facts against builders ----------------------------------------------


def _non_default(name: str, option: str):
    """A value of ``option`` other than its default that model ``name`` can build with."""
    info = model_info(name)
    values = {
        "placement": "after",
        "hidden": [8] * len(info.default_hidden or (1,)),
        "depth": 3,
        "cell": "gru",
        "dropout": 0.25,
        "init": "he",
        "init_scale": 2.0,
    }
    return values[option]


def _build(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, SHAPE, 4, norm="ln", **options)


def _same(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models are the same layers with the same numbers computing the same
    function (in eval mode, on one fixed batch)."""
    images = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(1))
    state, other = a.state_dict(), b.state_dict()
    return (
        repr(a) == repr(b)
        and state.keys() == other.keys()
        and all(torch.equal(state[k], other[k]) for k in state)
        and torch.equal(a.eval()(images), b.eval()(images))
    )


def test_the_lab_models_are_registered_in_the_clis_order():
    assert MODELS == LAB_MODELS == ("mlp", "cnn", "rnn", "resnet20", "transformer")
    assert list_models()[: len(LAB_MODELS)] == list(LAB_MODELS)
    assert all(is_model(name) for name in LAB_MODELS)


@pytest.mark.parametrize("name", LAB_MODELS)
@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_a_model_takes_the_options_it_is_registered_with_and_refuses_the_others(name, option):
    value = _non_default(name, option)
    if option in model_info(name).options:
        assert not _same(_build(name, **{option: value}), _build(name))
    else:
        with pytest.raises(ValueError, match=rf"^{option} applies to .* got model '{name}'"):
            _build(name, **{option: value})


@pytest.mark.parametrize("name", LAB_MODELS)
def test_a_models_default_widths_are_what_it_builds_without_hidden(name):
    info = model_info(name)
    assert _same(_build(name), _build(name, hidden=list(info.default_hidden)))


def test_dropout_is_taken_by_the_models_that_add_dropout_layers():
    for name in LAB_MODELS:
        takes = "dropout" in model_info(name).options
        if takes:
            model = _build(name, dropout=0.25)
            assert any(isinstance(m, nn.Dropout) for m in model.modules()), name


def test_stacking_and_cost_are_facts_of_every_model():
    assert [name for name in LAB_MODELS if model_info(name).stacks] == ["mlp", "cnn"]
    assert model_info("mlp").cost == 1.0  # the reference
    assert all(model_info(name).cost > 0 for name in LAB_MODELS)


@pytest.mark.parametrize("name", LAB_MODELS)
def test_a_kinds_name_builds_what_make_norm_builds(name):
    """A name reaches the builder as a NormFactory: the same layers as make_norm's."""
    torch.manual_seed(0)
    by_callable = build_model(name, SHAPE, 4, norm=partial(make_norm, "bn"))
    torch.manual_seed(0)
    assert _same(build_model(name, SHAPE, 4, norm="bn"), by_callable)


# --- the user's own models ------------------------------------------------------------------


def test_a_registered_model_builds_by_name_with_the_kind_as_a_norm_factory(registry):
    seen = []

    def recorded(norm, num_classes, input_shape):
        seen.append((norm, num_classes, input_shape))
        return tiny(norm, num_classes, input_shape)

    assert register_model(name="recorded")(recorded) is recorded
    assert is_model("recorded") and list_models()[-1] == "recorded"
    model = build_model("recorded", SHAPE, 4, norm="layer")
    ((norm, classes, shape),) = seen
    assert isinstance(norm, NormFactory) and (norm.kind, norm.options) == ("ln", {})
    assert (classes, shape) == (4, SHAPE)
    assert isinstance(model[2], LayerNorm)
    info = model_info("recorded")
    assert (info.builder, info.options, info.stacks) == (recorded, (), False)


def test_register_model_bare_uses_the_functions_name(registry):
    assert register_model(tiny) is tiny
    assert model_info("tiny").builder is tiny


def test_a_registered_model_trains_in_the_lab_with_its_norms_options(registry):
    register_model(tiny)
    data = train_subset(load_dataset("digits"), 40)
    config = RunConfig(model="tiny", norm="gn", norm_options={"groups": 2}, epochs=1)
    check_runs([config], data)
    assert isinstance(build_run_model(config, data)[2], GroupNorm)
    record = train_run(config, data)
    assert record["status"] == "finished"
    assert record["config"]["model"] == "tiny"


def test_a_registered_model_gets_the_lab_options_it_takes(registry):
    register_model(name="wide", options=("hidden", "dropout"), default_hidden=(8,))(wide)
    built = build_model("wide", SHAPE, 4, hidden=[5, 3], dropout=0.5)
    assert [m.out_features for m in built if isinstance(m, nn.Linear)] == [5, 3, 4]
    assert {m.p for m in built if isinstance(m, nn.Dropout)} == {0.5}
    default = build_model("wide", SHAPE, 4)
    assert [m.out_features for m in default if isinstance(m, nn.Linear)] == [8, 4]
    assert {m.p for m in default if isinstance(m, nn.Dropout)} == {0.0}
    with pytest.raises(ValueError, match=r"^cell applies to the rnn model only; got model 'wide'"):
        build_model("wide", SHAPE, 4, cell="gru")
    with pytest.raises(ValueError, match=r"^depth applies to .*'wide', which takes hidden and"):
        build_model("wide", SHAPE, 4, depth=2)


def test_a_model_without_options_refuses_every_option(registry):
    register_model(tiny)
    with pytest.raises(ValueError, match=r"^hidden applies to .*'tiny', which takes none"):
        build_model("tiny", SHAPE, 4, hidden=[8])


@pytest.mark.slow
def test_a_registered_model_trains_in_worker_processes(registry, tmp_path):
    """The pool's workers start without the user's registrations: they are handed them."""
    register_model(tiny)
    data = train_subset(load_dataset("digits"), 40)
    runs = [RunConfig(model="tiny", norm=norm, epochs=1) for norm in ("bn", "ln")]
    outcome = run_sweep(
        runs, ResultsStore(tmp_path), executor=ProcessPoolExecutor(jobs=2), data=data
    )
    assert not outcome.failed, outcome.failed
    assert len(ResultsStore(tmp_path).finished_ids()) == 2


@pytest.mark.slow
def test_a_registered_model_trains_data_parallel(registry):
    """The ranks of a data-parallel run start without the user's registrations too."""
    register_model(tiny)
    record = train_distributed(RunConfig(model="tiny", norm="bn", epochs=1, nproc=2), None)
    assert record["status"] == "finished"


# --- refusals -------------------------------------------------------------------------------


def test_a_duplicate_name_is_refused_naming_the_fix(registry):
    register_model(tiny)

    def another(norm, num_classes, input_shape):
        return tiny(norm, num_classes, input_shape)

    with pytest.raises(ValueError, match=r"'tiny' is already registered.*@register_model\(name="):
        register_model(name="tiny")(another)
    with pytest.raises(ValueError, match="'mlp' is already registered"):
        register_model(name="mlp")(tiny)
    assert model_info("tiny").builder is tiny
    register_model(tiny)  # the same function again (a notebook cell run twice) replaces it
    assert list_models().count("tiny") == 1


def test_an_unknown_name_suggests_the_closest(registry):
    register_model(tiny)
    with pytest.raises(ValueError, match=r"unknown model 'tinny'\. Did you mean 'tiny'"):
        build_model("tinny", SHAPE, 4)
    with pytest.raises(ValueError, match=r"unknown model 'mpl'\. Did you mean 'mlp'.*register"):
        model_info("mpl")
    with pytest.raises(ValueError, match="unknown model 'tinny'"):
        RunConfig(model="tinny")


@pytest.mark.parametrize(
    ("facts", "error", "message"),
    [
        ({"name": "my:net"}, ValueError, "would read as MODULE:FACTORY"),
        ({"name": ""}, ValueError, "starts with a letter"),
        ({"options": ("width",)}, ValueError, "unknown model option 'width'"),
        ({"options": ("hidden",)}, ValueError, "needs default_hidden"),
        ({"options": ("depth",), "default_hidden": (8,)}, ValueError, "takes hidden too"),
        ({"default_hidden": (8,)}, ValueError, "does not take hidden"),
        ({"cost": 0}, ValueError, "cost must be a finite number above 0"),
        ({"options": ("dropout",)}, TypeError, r"accept the keyword arguments .*dropout"),
    ],
)
def test_inconsistent_facts_are_refused_at_registration(registry, facts, error, message):
    with pytest.raises(error, match=message):
        register_model(**{"name": "bad", **facts})(tiny)
    assert not is_model("bad")


def test_a_builder_that_returns_no_module_is_refused(registry):
    register_model(name="nothing")(lambda norm, num_classes, input_shape: None)
    with pytest.raises(ValueError, match=r"model 'nothing': .*returned a NoneType"):
        build_model("nothing", SHAPE, 4)


def test_a_model_worker_processes_cannot_be_handed_is_refused_before_any_work(registry):
    import threading

    lock = threading.Lock()  # a builder holding a lock cannot travel, by value or not
    register_model(name="locked")(
        lambda norm, num_classes, input_shape: lock and tiny(norm, 4, SHAPE)
    )
    register_model(name="closure")(lambda norm, num_classes, input_shape: tiny(norm, 4, SHAPE))
    register_model(tiny)
    for name in ("tiny", "mlp", "closure"):  # a lambda travels by value
        check_shippable(name)
    with pytest.raises(ValueError, match=r"'locked' is registered in this process.*pickled"):
        check_shippable("locked")
    with pytest.raises(ValueError, match="instead of holding it"):
        ProcessPoolExecutor(jobs=2).check([RunConfig(model="locked")])
    with pytest.raises(ValueError, match="'locked' is registered in this process"):
        check_runs([RunConfig(model="locked", nproc=2)], load_dataset("digits"))
