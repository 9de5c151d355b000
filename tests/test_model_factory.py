"""``--model MODULE:FACTORY``: the user's own model through one contract,
``factory(norm, num_classes, input_shape) -> nn.Module``, and its refusals."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from torch import nn

from normlab.data import load_dataset
from normlab.experiment import RunConfig, check_runs
from normlab.experiment.train import train_run
from normlab.layers import GroupNorm, LayerNorm
from normlab.models import ModelFactoryError, NormFactory, build_model

GOOD = """
    import torch
    from torch import nn

    calls = []

    def small_cnn(norm, num_classes, input_shape):
        calls.append((norm.kind, num_classes, input_shape))
        channels = input_shape[0]
        return nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1, bias=False),
            norm(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, num_classes),
        )

    def wrong_classes(norm, num_classes, input_shape):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))

    class Pair(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

        def forward(self, images):
            logits = self.head(images)
            return logits, logits

    def returns_tuple(norm, num_classes, input_shape):
        return Pair(num_classes)

    def returns_dict(norm, num_classes, input_shape):
        return {"model": None}

    def takes_one(model_norm):
        return nn.Identity()

    NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``usernets`` importable from tmp_path, as a user's file in the current
    directory; forgotten afterwards."""
    (tmp_path / "usernets.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "broken_nets.py").write_text("raise RuntimeError('needs a GPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("usernets", "broken_nets"):
        sys.modules.pop(name, None)


def test_the_factory_gets_the_norm_classes_and_shape_and_its_model_trains(user_module):
    model = build_model("usernets:small_cnn", (3, 6, 6), 4, norm="gn")
    assert sys.modules["usernets"].calls == [("gn", 4, (3, 6, 6))]
    assert isinstance(model[1], GroupNorm)
    logits = model.train()(torch.rand(5, 3, 6, 6))
    assert logits.shape == (5, 4)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_norm_builds_a_new_module_per_call_with_the_kinds_options_and_layout():
    norm = NormFactory("gn", {"groups": 2})
    first, second = norm(8), norm(8)
    assert first is not second
    assert isinstance(first, GroupNorm) and first.num_groups == 2
    tokens = NormFactory("ln")(6, channel_dim=-1)
    assert isinstance(tokens, LayerNorm)
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(tokens(x), nn.functional.layer_norm(x, (6,)))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("usernets", r"unknown model 'usernets'.*MODULE:FACTORY"),
        ("usernets:", "is not MODULE:FACTORY"),
        ("user-nets:small_cnn", "is not MODULE:FACTORY"),
        ("nosuchmodule:build", r"cannot import 'nosuchmodule'.*No module named"),
        ("broken_nets:build", r"importing 'broken_nets'.*RuntimeError: needs a GPU"),
        ("usernets:small_cn", r"has no attribute 'small_cn'.*small_cnn"),
        ("usernets:NOT_CALLABLE", "names a int, not a callable"),
        ("usernets:takes_one", r"must accept the keyword arguments norm, num_classes"),
        ("usernets:returns_dict", r"returned a dict; the factory must return a torch.nn.Module"),
    ],
)
def test_a_factory_that_cannot_be_used_is_refused_with_the_reason(user_module, spec, message):
    with pytest.raises(ValueError, match=message):
        build_model(spec, (1, 8, 8), 10, norm="bn")


@pytest.mark.parametrize(
    ("option", "flag"),
    [({"hidden": [8]}, "--hidden"), ({"cell": "gru"}, "--cell"), ({"placement": "after"}, "")],
)
def test_lab_model_options_are_refused_for_a_factory(user_module, option, flag):
    with pytest.raises(ModelFactoryError, match=f"{flag or '--placement'}.*Drop them"):
        build_model("usernets:small_cnn", (1, 8, 8), 10, **option)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("usernets:wrong_classes", r"shape \(4, 11\).*\(4, 10\) tensor of logits"),
        ("usernets:returns_tuple", "returned a tuple.*Return the logits tensor itself"),
    ],
)
def test_wrong_outputs_are_refused_before_training(user_module, spec, message):
    data = load_dataset("digits")
    with pytest.raises(ValueError, match=message):
        check_runs([RunConfig(model=spec, norm="bn", batch_size=4)], data)


def test_an_unimportable_factory_is_refused_by_check_runs_as_itself(user_module):
    """Not wrapped in the norm-at-batch-size message: the problem is the factory."""
    data = load_dataset("digits")
    with pytest.raises(ModelFactoryError, match=r"^cannot import 'nosuchmodule'"):
        check_runs([RunConfig(model="nosuchmodule:build", norm="bn")], data)


def test_the_run_id_records_the_factory(user_module):
    config = RunConfig(model="usernets:small_cnn", norm="bn")
    assert config.to_dict()["model"] == "usernets:small_cnn"
    assert config.run_id != RunConfig(model="usernets:wrong_classes", norm="bn").run_id
    record = train_run(RunConfig(model="usernets:small_cnn", norm="ln", epochs=1), _tiny())
    assert record["config"]["model"] == "usernets:small_cnn"
    assert record["status"] == "finished"


def _tiny():
    from normlab.data import train_subset

    return train_subset(load_dataset("digits"), 40)


def test_compare_trains_a_factory_from_the_current_directory_and_resumes(user_module, run_cli):
    out = user_module / "sweep"
    argv = ["compare", "--model", "usernets:small_cnn", "--norms", "bn,gn", "--epochs", "1"]
    argv += ["--seeds", "1", "--jobs", "1", "--train-subset", "60", "--out", str(out)]
    sys.path.remove(str(user_module))  # the CLI itself must make the current directory importable
    status, stdout, stderr = run_cli(argv)
    assert status == 0, stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["config"]["model"] for r in records} == {"usernets:small_cnn"}
    assert {r["config"]["norm"] for r in records} == {"bn", "gn"}
    assert all(r["data"]["train_size"] == 60 for r in records)
    status, stdout, stderr = run_cli(argv)
    assert status == 0, stderr
    assert "2 runs already finished, skipped" in stdout.replace("\n", " ")
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_compare_refuses_a_broken_factory_before_anything_trains(user_module, run_cli):
    out = user_module / "sweep"
    argv = ["compare", "--model", "usernets:wrong_classes", "--norms", "bn", "--epochs", "1"]
    status, stdout, stderr = run_cli([*argv, "--seeds", "1", "--jobs", "1", "--out", str(out)])
    assert status == 2
    assert "shape (8, 11) for a batch of 8 images" in stderr
    assert "(8, 10) tensor of logits" in stderr
    assert "Traceback" not in stdout + stderr
    assert not (out / "results.jsonl").exists()


# --- the norm where timm and torchvision take norm_layer ---------------------------
# timm cannot be imported here: its factory functions are reproduced from their source.


def _timm_get_norm_layer(norm_layer):
    """timm.layers.get_norm_layer for a non-string: asserts the type, unbinds a partial's
    keywords and rebinds them on its function."""
    import functools
    import types

    assert isinstance(norm_layer, type | str | types.FunctionType | functools.partial)
    kwargs = {}
    if isinstance(norm_layer, functools.partial):
        kwargs.update(norm_layer.keywords)
        norm_layer = norm_layer.func
    return functools.partial(norm_layer, **kwargs) if kwargs else norm_layer


def _timm_get_norm_act_layer(norm_layer):
    """timm.layers.get_norm_act_layer for a partial of a function: the function is taken
    to build norm + activation layers, called as EfficientNet does."""
    import functools
    import types

    layer = _timm_get_norm_layer(norm_layer)
    assert isinstance(layer, functools.partial) and isinstance(layer.func, types.FunctionType)
    return layer


@pytest.mark.parametrize("kind", ["bn", "gn", "ln", "frozen-bn", "none"])
def test_norm_is_what_timms_get_norm_layer_takes_with_device_and_dtype(kind):
    norm = NormFactory(kind, {"groups": 2} if kind == "gn" else {})
    layer = _timm_get_norm_layer(norm)
    dd = {"device": None, "dtype": torch.float64}
    built = layer(8, **dd)  # timm's ResNet, ConvNeXt and ViT pass device= and dtype=
    assert type(built) is type(norm(8))
    assert all(
        t.dtype == torch.float64 for t in built.state_dict().values() if t.is_floating_point()
    )
    assert {norm: 1}[norm] == 1  # ConvNeXt looks it up in a dict: it hashes


def test_timms_vit_takes_the_tokens_layout_through_a_partial():
    import functools

    norm = _timm_get_norm_layer(functools.partial(NormFactory("bn"), channel_dim=-1))
    tokens = torch.randn(4, 5, 8)
    torch.testing.assert_close(
        norm(8, device=None, dtype=None).train()(tokens),
        nn.functional.batch_norm(tokens.reshape(20, 8), None, None, training=True).view(4, 5, 8),
    )


def test_a_norm_and_activation_request_is_refused_with_the_fix():
    """timm's EfficientNet builds norm + activation layers from norm_layer and never says
    which activation: a norm alone would silently drop it."""
    layer = _timm_get_norm_act_layer(NormFactory("bn"))
    with pytest.raises(TypeError, match=r"inplace.*does not say which activation.*replace_norms"):
        layer(8, inplace=True, device=None, dtype=None)


MISFITS = """
    from torch import nn

    def stem_for_rgb(norm, num_classes, input_shape):
        # torchvision's resnet18 stem, built for 3 channels whatever the data
        model = nn.Sequential()
        model.add_module("conv1", nn.Conv2d(3, 8, 7, 2, 3, bias=False))
        model.add_module("bn1", norm(8))
        model.add_module("pool", nn.AdaptiveAvgPool2d(1))
        model.add_module("flat", nn.Flatten())
        model.add_module("fc", nn.Linear(8, num_classes))
        return model

    def head_for_28(norm, num_classes, input_shape):
        return nn.Sequential(
            nn.Conv2d(input_shape[0], 4, 3, padding=1), norm(4), nn.Flatten(),
            nn.Linear(4 * 28 * 28, num_classes),
        )

    def asserts(norm, num_classes, input_shape):
        assert input_shape[0] == 3, "in_chans"
"""


@pytest.fixture
def misfit_module(tmp_path, monkeypatch):
    (tmp_path / "misfits.py").write_text(textwrap.dedent(MISFITS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("misfits", None)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            "stem_for_rgb",
            r"layer 'conv1' \(Conv2d\(3, 8.*takes 3 channels and gets the images themselves, "
            r"with 1\. Build the model for input_shape \(1, 8, 8\).*in_chans=1",
        ),
        ("head_for_28", r"layer '3' \(Linear\) raised: mat1 and mat2.*fit 8x8 images"),
        ("asserts", r"raised AssertionError when called with norm=NormFactory\('bn', \{\}\)"),
    ],
)
def test_a_model_that_does_not_fit_the_data_is_refused_with_what_to_change(
    misfit_module, factory, message
):
    data = load_dataset("digits")
    with pytest.raises(ModelFactoryError, match=message):
        check_runs([RunConfig(model=f"misfits:{factory}", norm="bn", batch_size=4)], data)
