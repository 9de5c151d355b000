"""The `normlab models` command: every registered model with the facts the model registry
holds about it, the user's own included."""

from __future__ import annotations

import pytest
from torch import nn

from normlab.models import list_models, model_info, register_model
from normlab.models.registry import LAB_MODELS
from normlab.models_table import models_table

# What the lab's own models are, as the README's Models section specifies them.
LAB = {
    "mlp": ("128,64", "yes"),
    "cnn": ("32,64", "yes"),
    "rnn": ("128,128", "no"),
    "resnet20": ("16,32,64", "no"),
    "transformer": ("64,64,64,64", "no"),
}


@pytest.fixture
def registry(monkeypatch):
    """A registry of this test's own: what it registers is forgotten afterwards."""
    from normlab.models import registry

    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))


def wide_net(norm, num_classes, input_shape, *, hidden, dropout):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden[0]), norm(hidden[0]), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(hidden[0], num_classes))  # fmt: skip


def _rows() -> dict[str, dict[str, str]]:
    table = models_table()
    headers = [column.header for column in table.columns]
    cells = [[str(cell) for cell in column.cells] for column in table.columns]
    return {row[0]: dict(zip(headers, row, strict=True)) for row in zip(*cells, strict=True)}


def test_the_table_has_a_row_of_the_registrys_facts_for_every_lab_model():
    rows = _rows()
    assert list(rows) == list(LAB_MODELS) == list(LAB)
    for name, (hidden, stacks) in LAB.items():
        info = model_info(name)
        assert rows[name]["options"] == ", ".join(info.options)
        assert "hidden" in rows[name]["options"] and "placement" in rows[name]["options"]
        assert rows[name]["default hidden"] == hidden
        assert rows[name]["stacks seeds"] == stacks
        assert float(rows[name]["cost (x mlp)"]) == info.cost
        assert rows[name]["builder"] == "normlab"
    assert float(rows["mlp"]["cost (x mlp)"]) == 1.0
    assert "dropout" not in rows["resnet20"]["options"]
    assert "cell" in rows["rnn"]["options"] and "cell" not in rows["mlp"]["options"]


def test_a_user_registered_model_is_listed_after_the_labs_with_its_facts(registry):
    register_model(options=("hidden", "dropout"), default_hidden=(24,), cost=2.5)(wide_net)
    rows = _rows()
    assert list(rows) == [*LAB_MODELS, "wide_net"] == list_models()
    assert rows["wide_net"] == {
        "model": "wide_net",
        "options": "hidden, dropout",
        "default hidden": "24",
        "stacks seeds": "no",
        "cost (x mlp)": "2.5",
        "builder": f"{__name__}.wide_net",
    }


def test_a_model_without_options_shows_none(registry):
    register_model(name="bare")(lambda norm, num_classes, input_shape: nn.Flatten())
    row = _rows()["bare"]
    assert (row["options"], row["default hidden"], row["cost (x mlp)"]) == ("-", "-", "1")


def test_normlab_models_prints_every_registered_model(run_cli, registry):
    register_model(options=("hidden", "dropout"), default_hidden=(24,), cost=2.5)(wide_net)
    status, out, err = run_cli(["models"])
    assert status == 0, err
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert [name for name in names if name in list_models()] == [*LAB_MODELS, "wide_net"]
    (row,) = [line for line in out.splitlines() if line.split()[:1] == ["wide_net"]]
    assert row.split()[1:] == ["hidden,", "dropout", "24", "no", "2.5", f"{__name__}.wide_net"]
    assert "register_model" in out


def test_models_is_listed_in_the_commands_help(run_cli):
    status, out, _ = run_cli(["--help"])
    assert status == 0 and "models" in out and "norms" in out
