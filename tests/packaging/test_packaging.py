"""What ``pip install normlab`` gives without the lab extra, and what the lab says without it.

The library (layers, functional, inference, swap, conversion, checkpoints)
needs torch and numpy alone; the lab (the ``normlab`` command, compare, report,
study) needs the ``lab`` extra and, without it, says so in one line that names
the extra. The fast tests hide the lab's packages from a subprocess of this
environment; the slow one installs the wheel into a fresh virtual environment
that holds torch, numpy and what they require, nothing else.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from normlab_extras import INSTALL_LAB, LAB_PACKAGES

ROOT = Path(__file__).resolve().parents[2]
LAB_MODULES = tuple(LAB_PACKAGES)  # rich, scipy, sklearn, matplotlib, PIL
LAB_SUBPACKAGES = ("normlab.experiment", "normlab.report", "normlab.study")
LOADED_ON_FIRST_USE = ("normlab.data", "normlab.models")

# Run first in a subprocess: the lab's packages cannot be imported, as if not installed
# (find_spec says None, an import raises ModuleNotFoundError).
HIDE_THE_LAB = f"import sys\nfor name in {LAB_MODULES!r}:\n    sys.modules[name] = None\n"


def run_python(code: str, *args: str, env: dict[str, str] | None = None, python: str = ""):
    return subprocess.run(
        [python or sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,  # turns a hang into a failure
    )


def lab_extra_line(what: str, missing: list[str]) -> str:
    return f"{what} needs the lab extra (not installed: {', '.join(missing)}): {INSTALL_LAB}"


# --------------------------------------------------------------------------- pyproject.toml


def project() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def test_the_library_requires_torch_and_numpy_only():
    assert names(project()["dependencies"]) == {"torch", "numpy"}


def test_the_lab_extra_is_the_packages_the_lab_checks_for():
    extras = project()["optional-dependencies"]
    assert names(extras["lab"]) == {canonicalize_name(dist) for dist in LAB_PACKAGES.values()}
    assert "normlab[lab]" in extras["dev"]  # make test runs the lab's tests


# --------------------------------------------------------------------------- import normlab

LIST_LOADED = """
import json, sys
import normlab
print(json.dumps(sorted(sys.modules)))
"""


def test_import_normlab_loads_neither_the_labs_packages_nor_its_modules():
    result = run_python(LIST_LOADED)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    lab_packages = [name for name in loaded if name.split(".")[0] in LAB_MODULES]
    lab_modules = [
        name for name in loaded if name.startswith(LOADED_ON_FIRST_USE + LAB_SUBPACKAGES)
    ]
    assert lab_packages == []
    assert lab_modules == []


def test_the_labs_data_and_models_load_on_first_use():
    import torch

    import normlab
    from normlab import data

    assert normlab.models.mlp(4, [8], 3, norm="ln")(torch.zeros(2, 4)).shape == (2, 3)
    assert data.load_dataset is normlab.data.load_dataset
    assert {"data", "models"} <= set(dir(normlab))
    with pytest.raises(AttributeError, match="module 'normlab' has no attribute 'dataset'"):
        normlab.dataset  # noqa: B018


THE_LIBRARY_WITHOUT_THE_LAB = """
import torch
from torch import nn
import normlab as nl
import normlab.checkpoints, normlab.convert, normlab.distributed, normlab.inference

model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
nl.replace_norms(model, "bn-scalar")
nl.inference.recalibrate(model, [torch.randn(4, 3, 6, 6)])
nl.inference.fold_batchnorm(model.eval())
path = sys.argv[1]
torch.save(model.state_dict(), path)
checkpoint = nl.checkpoints.load_checkpoint(path)
print([layer.name for layer in nl.checkpoints.norm_layers(checkpoint)])
print(type(nl.models.build_model("mlp", (1, 8, 8), 10, norm="bn")).__name__)
for use in (lambda: nl.checkpoints.describe(path), lambda: nl.data.load_dataset("digits")):
    try:
        use()
    except ModuleNotFoundError as error:
        print(error)
"""


def test_the_library_works_without_the_labs_packages(tmp_path):
    code = HIDE_THE_LAB + THE_LIBRARY_WITHOUT_THE_LAB
    result = run_python(code, str(tmp_path / "checkpoint.pt"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "['1']",
        "Sequential",
        lab_extra_line("normlab.checkpoints.describe", ["rich"]),
        lab_extra_line("the digits data set", ["scikit-learn"]),
    ]


# --------------------------------------------------------------------------- the lab without it

IMPORT_THE_LAB = """
import importlib
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as error:
        print(type(error).__name__, error.name, error, sep=" | ")
"""


def test_importing_the_lab_without_its_extra_names_the_extra():
    code = "import sys\nsys.modules['scipy'] = None\n" + IMPORT_THE_LAB
    result = run_python(code, *LAB_SUBPACKAGES)
    assert result.returncode == 0, result.stderr
    line = lab_extra_line("normlab's lab (compare, report, study)", ["scipy"])
    assert result.stdout.splitlines() == [f"ModuleNotFoundError | scipy | {line}"] * 3


LAUNCH = """
import normlab_launch
status = normlab_launch.main()
print(status, "normlab" in sys.modules, "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["compare", "--help"], "normlab compare"),
        (["study", "claims"], "normlab study"),
        (["--help"], "normlab"),
        ([], "normlab"),
    ],
)
def test_the_command_without_the_lab_extra_says_so_in_one_line(args, what):
    result = run_python(HIDE_THE_LAB + LAUNCH, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 False False\n"  # exit status 1, before importing normlab or torch
    assert result.stderr == lab_extra_line(what, [LAB_PACKAGES[m] for m in LAB_MODULES]) + "\n"


# --------------------------------------------------------------------------- a fresh environment


def torch_and_numpy_entries() -> list[Path]:
    """The site-packages entries of torch, numpy and what they require (no extras)."""
    todo, seen = ["torch", "numpy"], set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    entries = set()
    for name in seen:
        distribution = importlib.metadata.distribution(name)
        for file in distribution.files or []:
            top = file.parts[0]
            if top not in ("..", "__pycache__") and not top.endswith(".pth"):
                entries.add(Path(distribution.locate_file(top)))
    return sorted(entries)


CHECK_THE_FRESH_ENVIRONMENT = """
import importlib.metadata, importlib.util, json, sys

import torch
from torch import nn

import normlab as nl

report = {
    "normlab": nl.__file__,
    "importable": [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None],
    "loaded": sorted(m for m in sys.modules if m.startswith(("normlab.data", "normlab.models",
        "normlab.experiment", "normlab.report", "normlab.study"))),
    "requires": [r for r in importlib.metadata.requires("normlab") if "extra ==" not in r],
    "trained": {},
}
for kind in nl.norm_kinds():
    torch.manual_seed(0)
    # No conv bias: a norm that removes each channel's mean gives it no gradient.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nl.make_norm(kind, 8),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trained = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trained]
    loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 6, 6)), torch.arange(8) % 4)
    loss.backward()
    optimizer.step()
    changed = all(not torch.equal(b, p) for b, p in zip(before, trained))
    report["trained"][kind] = [bool(torch.isfinite(loss)), len(trained) >= 3 and changed]
try:
    import normlab.experiment
except ImportError as error:
    report["experiment"] = str(error)
print(json.dumps(report))
"""


def clean_environment() -> dict[str, str]:
    """This process's environment without what would show the fresh one other packages."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))
    }


@pytest.mark.slow  # builds a wheel and a virtual environment, imports torch afresh
def test_a_fresh_environment_with_torch_and_numpy_builds_and_trains_every_kind(tmp_path):
    from normlab import norm_kinds

    source = tmp_path / "project"  # a copy: building writes build/ and *.egg-info beside it
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    wheels, env_dir = tmp_path / "wheels", tmp_path / "env"
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels]
    subprocess.run([*build, source], check=True, capture_output=True, env=clean_environment())
    (wheel,) = wheels.glob("normlab-*.whl")

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env_dir], check=True)
    python = env_dir / "bin" / "python"
    site = Path(
        run_python(
            "import sysconfig; print(sysconfig.get_path('purelib'))", python=str(python)
        ).stdout.strip()
    )
    assert site.is_relative_to(env_dir), site
    for entry in torch_and_numpy_entries():
        (site / entry.name).symlink_to(entry)

    # Without --no-deps: pip checks that torch and numpy alone satisfy normlab's requirements.
    install = [*pip, "--python", python, "install", "--no-index", wheel]
    result = subprocess.run(install, capture_output=True, text=True, env=clean_environment())
    assert result.returncode == 0, result.stdout + result.stderr

    result = run_python(
        CHECK_THE_FRESH_ENVIRONMENT, *LAB_MODULES, python=str(python), env=clean_environment()
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert Path(report["normlab"]).is_relative_to(site)
    assert report["importable"] == []
    assert report["loaded"] == []
    assert names(report["requires"]) == {"torch", "numpy"}
    # Each kind: a finite loss, and one SGD step changed every trainable parameter.
    assert report["trained"] == {kind: [True, True] for kind in norm_kinds()}
    every_module = [LAB_PACKAGES[m] for m in LAB_MODULES]
    assert report["experiment"] == lab_extra_line(
        "normlab's lab (compare, report, study)", every_module
    )

    command = [env_dir / "bin" / "normlab", "compare", "--help"]
    result = subprocess.run(command, capture_output=True, text=True, env=clean_environment())
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == lab_extra_line("normlab compare", every_module) + "\n"
