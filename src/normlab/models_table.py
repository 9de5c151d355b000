"""``normlab models``' table: every registered model with its facts, as the model registry
holds them (normlab.models.registry)."""

from __future__ import annotations

from rich import box
from rich.table import Table

from normlab.models import list_models, model_info
from normlab.models.registry import LAB_MODELS


def models_table() -> Table:
    """One row per registered model, the lab's own first, then the user's in registration
    order (``list_models()``): the options it takes, its default widths, whether its seeds
    train stacked, a training step's cost relative to ``mlp``'s, and where its builder is
    (``normlab`` for the lab's own)."""
    table = Table(title="Models the lab trains by name (model=...)", box=box.SIMPLE_HEAD)
    table.add_column("model")
    table.add_column("options")
    table.add_column("default hidden")
    table.add_column("stacks seeds")
    table.add_column("cost (x mlp)", justify="right")
    builders = {
        name: "normlab" if name in LAB_MODELS else model_info(name).source for name in list_models()
    }
    table.add_column("builder", min_width=max(map(len, builders.values())))  # whole, never cut
    for name, builder in builders.items():
        info = model_info(name)
        table.add_row(
            name,
            ", ".join(info.options) or "-",
            ",".join(map(str, info.default_hidden)) if info.default_hidden else "-",
            "yes" if info.stacks else "no",
            f"{info.cost:g}",
            builder,
        )
    table.caption = (
        "Your own: @normlab.models.register_model, or --model MODULE:FACTORY (not listed)."
    )
    return table
