"""``--model MODULE:FACTORY``: the user's own model through one contract,
``factory(norm, num_classes, input_shape) -> nn.Module``, and its refusals."""

from __future__ import annotations

import importlib.machinery
import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from console_capture import printed, recording_console
from normlab.data import load_dataset
from normlab.experiment import RunConfig, check_runs
from normlab.experiment.train import build_run_model, train_run
from normlab.lab import compare
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
    monkeypatch.setattr(sys, "path", [*sys.path])  # what the import appends goes afterwards
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


def test_a_run_hands_the_factory_its_norms_options(user_module):
    """``gn(groups=2)`` reaches the factory as NormFactory('gn', {'groups': 2})."""
    config = RunConfig(model="usernets:small_cnn", norm="gn", norm_options={"groups": 2})
    data = _tiny()
    check_runs([config], data)
    model = build_run_model(config, data)
    assert isinstance(model[1], GroupNorm) and model[1].num_groups == 2
    assert sys.modules["usernets"].calls[-1][0] == "gn"


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
    [({"hidden": [8]}, "hidden"), ({"cell": "gru"}, "cell"), ({"placement": "after"}, "")],
)
def test_lab_model_options_are_refused_for_a_factory(user_module, option, flag):
    with pytest.raises(ModelFactoryError, match=f"{flag or 'placement'}.*Drop them"):
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


def test_compare_trains_a_factory_from_the_current_directory_and_resumes(user_module):
    out = user_module / "sweep"
    call = {"model": "usernets:small_cnn", "norms": ["bn", "gn"], "epochs": 1, "seeds": 1}
    call |= {"jobs": 1, "train_subset": 60, "out": out, "report": False}
    sys.path.remove(str(user_module))  # the lab itself must make the current directory importable
    first = compare(**call, progress=False)
    assert first.complete and first.failed == []
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["config"]["model"] for r in records} == {"usernets:small_cnn"}
    assert {r["config"]["norm"] for r in records} == {"bn", "gn"}
    assert all(r["data"]["train_size"] == 60 for r in records)
    console = recording_console()
    compare(**call, console=console)
    assert "2 runs already finished, skipped" in printed(console)
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_compare_refuses_a_broken_factory_before_anything_trains(user_module):
    out = user_module / "sweep"
    with pytest.raises(ValueError) as refused:
        compare(model="usernets:wrong_classes", norms=["bn"], epochs=1, seeds=1, jobs=1,
                out=out, progress=False)  # fmt: skip
    assert "shape (8, 11) for a batch of 8 images" in str(refused.value)
    assert "(8, 10) tensor of logits" in str(refused.value)
    assert not (out / "results.jsonl").exists()


USER_CODE_THAT_MISBEHAVES = """
    import sys
    import torch
    from torch import nn

    def raises_runtime(norm, num_classes, input_shape):
        raise RuntimeError("no GPU here")

    def raises_key(norm, num_classes, input_shape):
        return {"a": 1}["depth"]

    def exits(norm, num_classes, input_shape):
        sys.exit(4)

    def reseeds_then_raises(norm, num_classes, input_shape):
        torch.manual_seed(1234)
        torch.set_default_dtype(torch.float64)
        raise RuntimeError("half built")

    def float64_model(norm, num_classes, input_shape):
        torch.set_default_dtype(torch.float64)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    def for_mnist(norm, num_classes, input_shape):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), norm(16), nn.Linear(16, num_classes))

    class Crashes(nn.Module):
        def forward(self, images):
            raise KeyError("features")

    def crashes_in_forward(norm, num_classes, input_shape):
        return Crashes()
"""

EXITING_MODULES = {
    "exits_zero": "import sys\nsys.exit(0)\n",
    "exits_three": "import sys\nsys.exit(3)\n",
    "parses_args": "import argparse\nparser = argparse.ArgumentParser()\n"
    "parser.add_argument('--size')\nparser.parse_args()\n",
}


@pytest.fixture
def misbehaving(tmp_path, monkeypatch):
    """Modules ``misbehaving`` and the EXITING_MODULES in the current directory, tmp_path."""
    monkeypatch.setattr(sys, "path", [*sys.path])  # what the import appends goes afterwards
    (tmp_path / "misbehaving.py").write_text(textwrap.dedent(USER_CODE_THAT_MISBEHAVES))
    for name, text in EXITING_MODULES.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("misbehaving", *EXITING_MODULES):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("exits_zero", r"exited \(sys\.exit\(0\)\)"),
        ("exits_three", r"exited \(sys\.exit\(3\)\)"),
        ("parses_args", r"exited \(sys\.exit\(2\)\).*parse_args"),
    ],
)
def test_a_factory_module_that_exits_when_imported_is_refused(misbehaving, module, message):
    with pytest.raises(ModelFactoryError, match=f"importing '{module}' for model .*{message}"):
        build_model(f"{module}:build", (1, 8, 8), 10, norm="bn")


@pytest.mark.parametrize("module", sorted(EXITING_MODULES))
def test_compare_refuses_a_factory_module_that_exits_and_says_why(misbehaving, module):
    with pytest.raises(ModelFactoryError) as refused:
        compare(model=f"{module}:build", norms=["bn"], epochs=1, out=misbehaving / "sweep",
                progress=False)  # fmt: skip
    assert f"importing '{module}' for model '{module}:build'" in str(refused.value)
    assert "exited" in str(refused.value)
    assert not (misbehaving / "sweep" / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("factory", "error"),
    [
        ("raises_runtime", "RuntimeError: no GPU here"),
        ("raises_key", "KeyError: 'depth'"),
        ("exits", r"exited \(sys\.exit\(4\)\)"),
        ("float64_model", "changed torch's default dtype from torch.float32 to torch.float64"),
    ],
)
def test_every_error_of_the_factory_is_a_refusal_naming_the_factory(misbehaving, factory, error):
    dtype = torch.get_default_dtype()
    with pytest.raises(ModelFactoryError, match=f"model 'misbehaving:{factory}': .*{error}"):
        build_model(f"misbehaving:{factory}", (1, 8, 8), 10, norm="bn")
    assert torch.get_default_dtype() == dtype


def test_a_refused_factory_leaves_the_default_dtype_and_the_generators_as_they_were(misbehaving):
    import random

    import numpy

    torch.manual_seed(5)
    random.seed(5)
    numpy.random.seed(5)
    states = torch.get_rng_state(), random.getstate(), numpy.random.get_state()[1].copy()
    with pytest.raises(ModelFactoryError, match="RuntimeError: half built"):
        build_model("misbehaving:reseeds_then_raises", (1, 8, 8), 10, norm="bn")
    assert torch.get_default_dtype() == torch.float32
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert (numpy.random.get_state()[1] == states[2]).all()


@pytest.mark.parametrize(
    ("factory", "error"),
    [
        ("for_mnist", r"RuntimeError: mat1 and mat2 shapes cannot be multiplied \(8x64"),
        ("crashes_in_forward", "KeyError: 'features'"),
    ],
)
def test_check_runs_refuses_a_factory_model_whose_first_forward_fails(misbehaving, factory, error):
    data = load_dataset("digits")
    run = RunConfig(model=f"misbehaving:{factory}", norm="bn", batch_size=16)
    with pytest.raises(ModelFactoryError) as refused:
        check_runs([run], data)
    message = str(refused.value)
    assert f"model 'misbehaving:{factory}'" in message and "norm 'bn'" in message
    assert "batch size 16" in message and "first forward pass" in message
    assert re.search(error, message), message


@pytest.mark.parametrize("factory", ["raises_runtime", "raises_key", "float64_model", "for_mnist"])
def test_compare_refuses_a_failing_factory_as_a_usage_error(misbehaving, factory):
    """Refused as a ModelFactoryError, a ValueError: the command prints it without a
    traceback (as every ValueError of the library, tests/cli/test_compare_command.py)."""
    with pytest.raises(ModelFactoryError, match=f"misbehaving:{factory}"):
        compare(model=f"misbehaving:{factory}", norms=["bn"], epochs=1,
                out=misbehaving / "sweep", progress=False)  # fmt: skip
    assert torch.get_default_dtype() == torch.float32
    assert not (misbehaving / "sweep" / "results.jsonl").exists()


SHADOWS = "raise ImportError('the user's own {name}.py was imported in place of the library')\n"


def test_the_current_directory_is_searched_after_sys_path(user_module):
    sys.path.remove(str(user_module))
    (user_module / "html.py").write_text(SHADOWS.format(name="html"))
    build_model("usernets:small_cnn", (3, 6, 6), 4, norm="bn")
    assert sys.path[-1] == str(user_module)
    assert importlib.machinery.PathFinder.find_spec("html").origin != str(user_module / "html.py")


@pytest.mark.parametrize("name", ["json", "html"])
def test_a_factory_module_named_as_a_standard_library_module_is_refused(user_module, name):
    (user_module / f"{name}.py").write_text((user_module / "usernets.py").read_text())
    with pytest.raises(ModelFactoryError, match=rf"\./{name}\.py is not what Python imports"):
        build_model(f"{name}:small_cnn", (3, 6, 6), 4, norm="bn")
    assert "small_cnn" not in vars(sys.modules[name])


LAUNCHER = """
import sys

from normlab_launch import main

if __name__ == "__main__":
    sys.exit(main())
"""


@pytest.mark.slow  # three compare commands in fresh processes, two with worker processes
def test_compare_does_not_import_the_users_json_or_html_in_place_of_the_librarys(tmp_path):
    """The `normlab` script's own directory, not the current one, is first on sys.path; the
    worker processes of --jobs 2 inherit sys.path, and import the user's factory too."""
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    (bin_dir / "normlab").write_text(LAUNCHER)
    (work / "usernets.py").write_text(textwrap.dedent(GOOD))
    for name in ("json", "html"):
        (work / f"{name}.py").write_text(SHADOWS.format(name=name))
    small = ["--norms", "bn", "--epochs", "1", "--train-subset", "60", "--seeds", "2"]
    for extra in (
        ["--jobs", "1"],
        ["--jobs", "2"],
        ["--jobs", "2", "--model", "usernets:small_cnn"],
    ):
        out = work / f"out{len(extra)}{extra[1]}"
        argv = [sys.executable, str(bin_dir / "normlab"), "compare", *small, *extra]
        done = subprocess.run(
            [*argv, "--out", str(out)], cwd=work, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_compare_leaves_the_current_directory_off_sys_path_without_a_factory(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    result = compare(norms=["none"], epochs=1, train_subset=60, seeds=1, jobs=1,
                     out=tmp_path / "out", report=False, progress=False)  # fmt: skip
    assert result.complete
    assert str(tmp_path) not in sys.path and "" not in sys.path


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
        ("head_for_28", r"mat1 and mat2.*the layer that raised is '3' \(Linear\).*fit 8x8 images"),
        (
            "asserts",
            r"called with norm=NormFactory\('bn', \{\}\), num_classes=10, "
            r"input_shape=\(1, 8, 8\), raised AssertionError: in_chans",
        ),
    ],
)
def test_a_model_that_does_not_fit_the_data_is_refused_with_what_to_change(
    misfit_module, factory, message
):
    data = load_dataset("digits")
    with pytest.raises(ModelFactoryError, match=message):
        check_runs([RunConfig(model=f"misfits:{factory}", norm="bn", batch_size=4)], data)
