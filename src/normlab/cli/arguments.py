"""What every command shares: argparse types, the console, and Python argument names in the
library's messages turned into flags."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence

from rich.console import Console

from normlab.norm_spec import parse_norm, split_specs

FLAGS = {"data": "--dataset"}
"""Python arguments whose flag is not their name with dashes (``batch_sizes`` is
``--batch-sizes``)."""

_ARGUMENT = re.compile(r"`([a-z][a-z0-9_]*)`")


def as_flags(message: str, known: Sequence[str]) -> str:
    """``message`` with each Python argument it names in backticks (`` `batch_sizes` ``)
    written as the command's flag (``--batch-sizes``); ``known`` are the command's flags'
    destinations. Other backticked text is left as it is."""

    def flag(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in FLAGS:
            return FLAGS[name]
        return f"--{name.replace('_', '-')}" if name in known else match.group(0)

    return _ARGUMENT.sub(flag, message)


def console() -> Console:
    """A console for tables: the terminal's width, or 120 columns when piped to a file."""
    made = Console(soft_wrap=True)
    if not made.is_terminal:
        made.width = 120
    return made


def batch_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a batch shape N,C[,spatial...] of positive integers, e.g. 16,8,4,4; "
            f"got {text!r}"
        )
    return shape


def comma_list(convert: Callable[[str], object], what: str) -> Callable[[str], list]:
    """An argparse type for a comma-separated list of ``what``."""

    def parse(text: str) -> list:
        try:
            items = [convert(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            items = []
        if not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {what}; got {text!r}"
            )
        return items

    return parse


def norm_specs(text: str) -> list[str]:
    """An argparse type for ``--norms``: specs split at the commas outside parentheses, each
    parsed and checked against its kind's options (see normlab.norm_spec)."""
    try:
        specs = split_specs(text)
        for spec in specs:
            parse_norm(spec)
    except (ValueError, TypeError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not specs:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of normalization kinds; got {text!r}"
        )
    return specs


def choice(choices: Sequence[str]) -> Callable[[str], str]:
    """A converter for ``comma_list`` that accepts one of ``choices``."""

    def check(text: str) -> str:
        if text not in choices:
            # argparse's own wording for a single choice
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(choices)})"
            )
        return text

    return check


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more; got {text!r}")
    return value
