"""``normlab models``: every registered model and its facts."""

from __future__ import annotations

import argparse

from normlab.cli.arguments import console


def _models(args: argparse.Namespace) -> int:
    from normlab.models_table import models_table

    console().print(models_table())
    return 0


def add_models(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser(
        "models",
        help="list every registered model with its options, default widths, whether its "
        "seeds stack and its cost",
        description="List the models compare trains by name (--model NAME): the lab's own "
        "and any registered in this process with normlab.models.register_model, each with "
        "the model options it takes, its default --hidden widths, whether --stack-seeds "
        "stacks its seeds, and a training step's cost relative to mlp's.",
    )
    models.set_defaults(run=_models)
