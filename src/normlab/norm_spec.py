"""A normalization kind with options, written as text: ``gn(groups=8)``, ``bn(convention=keras)``.

The lab's command line and run labels name a norm by a *spec*: a registry
kind, optionally followed by its keyword options in parentheses,
``kind(name=value,name=value)``. Values are written as Python/JSON would:
``8`` (int), ``1e-3`` (float), ``true`` / ``false``, ``none``, or a bare word
(``keras``). Each value is checked against the option's type in the kind's
builder, so ``brn(r_max=2)`` is the float 2.0 and ``gn(groups=8.5)`` is refused.

In a comma list (``--norms "bn,gn(groups=8,eps=1e-3),ln"``) only the commas
outside parentheses separate kinds. Quote the list in a shell: ``(`` and ``)``
are shell syntax.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from normlab.registry import get_kind

LAB_SET = ("device", "dtype", "process_group", "channel_dim")
"""Options that the lab's models set themselves; a spec cannot give them."""

_OPTION = re.compile(r"^\s*([A-Za-z_]\w*)\s*=\s*(\S(?:.*\S)?)\s*$")
_WORD = re.compile(r"^[A-Za-z_][\w.-]*$")
_INT = re.compile(r"^[+-]?[0-9]+$")


def split_specs(text: str) -> list[str]:
    """Split a comma list of specs at the commas outside parentheses; blanks are dropped.

    Raises:
        ValueError: unbalanced parentheses.
    """
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' at character {index + 1} of {text!r}.")
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth:
        raise ValueError(f"unclosed '(' in {text!r}; write options as gn(groups=8).")
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def _literal(text: str) -> Any:
    """The typed value of one option value as written."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    if _INT.match(text):
        return int(text)
    if text.isascii() and "_" not in text:  # float() also reads other scripts' digits and 1_0
        try:
            return float(text) + 0.0  # -0.0 is 0.0: one value, one run id
        except ValueError:
            pass
    if _WORD.match(text):
        return text
    raise ValueError(
        f"cannot read the option value {text!r}: write a number (8, 1e-3), true, false, "
        "none or a word (keras)."
    )


def _annotation(kind: str, option: str) -> Any:
    entry = get_kind(kind)
    try:
        parameters = inspect.signature(entry.build, eval_str=True).parameters
    except (NameError, TypeError):  # an annotation that does not evaluate: no type check
        return Any
    parameter = parameters.get(option)
    return Any if parameter is None else parameter.annotation


def _typed(kind: str, option: str, value: Any) -> Any:
    """``value`` as the option's annotated type: an int where only float is taken becomes a
    float (so ``r_max=2`` and ``r_max=2.0`` are one run); anything else that the annotation
    does not allow is refused."""
    if isinstance(value, float):
        value += 0.0  # -0.0 is 0.0: one value, one run id
    annotation = _annotation(kind, option)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(annotation)
    members = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else ()
    choices = members or (annotation,)
    literals = [
        arg for c in choices if typing.get_origin(c) is typing.Literal for arg in typing.get_args(c)
    ]
    plain = {c for c in choices if isinstance(c, type)}
    if value is None and type(None) in plain:
        return None
    if isinstance(value, bool):
        if bool in plain:
            return value
    elif isinstance(value, int) and int in plain:
        return value
    elif isinstance(value, int | float) and float in plain:
        if not math.isfinite(value):
            raise ValueError(f"option {option}={value} of {kind!r} must be a finite number.")
        return float(value)
    elif isinstance(value, str) and value in literals:
        return value
    accepted = [repr(v) for v in literals]
    accepted += [t.__name__ for t in (bool, int, float) if t in plain]
    accepted += ["none"] if type(None) in plain else []
    raise ValueError(
        f"option {option}={_format_value(value)} of {kind!r} is not a valid value; "
        f"it takes {' or '.join(accepted) or 'no value from text'}."
    )


def check_norm(kind: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The canonical kind name and its options, typed and sorted by name.

    Raises:
        ValueError: unknown kind, an option the lab sets itself, or a value of the wrong type.
        TypeError: an option the kind does not take (the accepted ones are listed,
            as ``make_norm`` lists them).
    """
    name = get_kind(kind).name
    lab_set = sorted(set(options) & set(LAB_SET))
    if lab_set:
        raise ValueError(
            f"{', '.join(lab_set)} of {name!r} is set by the lab's models; drop it from the spec."
        )
    get_kind(name).check_options(options)
    return name, {key: _typed(name, key, options[key]) for key in sorted(options)}


def parse_norm(spec: str) -> tuple[str, dict[str, Any]]:
    """``"gn(groups=8, eps=1e-3)"`` -> ``("gn", {"eps": 0.001, "groups": 8})``.

    Raises:
        ValueError: malformed text, unknown kind or a value of the wrong type.
        TypeError: an option the kind does not take.
    """
    text = spec.strip()
    if "(" not in text and ")" not in text:
        return check_norm(text, {})
    match = re.fullmatch(r"([^()]*)\((.*)\)", text, flags=re.DOTALL)
    if match is None or "(" in match.group(2) or ")" in match.group(2):
        raise ValueError(
            f"cannot read the norm {spec!r}; write a kind with options as "
            "gn(groups=8) or gn(groups=8,eps=1e-3)."
        )
    kind, body = match.group(1).strip(), match.group(2)
    options: dict[str, Any] = {}
    for part in (p for p in body.split(",") if p.strip()):
        option = _OPTION.match(part)
        if option is None:
            raise ValueError(
                f"cannot read the option {part.strip()!r} of {spec!r}; write name=value."
            )
        key, value = option.groups()
        if key in options:
            raise ValueError(f"option {key!r} is given twice in {spec!r}.")
        options[key] = _literal(value)
    return check_norm(kind, options)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return repr(value) if isinstance(value, float) else str(value)


def format_norm(kind: str, options: Mapping[str, Any] | None = None) -> str:
    """A kind and its options as a spec that :func:`parse_norm` reads back:
    ``gn(eps=0.001,groups=8)``; the bare kind without options."""
    if not options:
        return kind
    return f"{kind}({','.join(f'{k}={_format_value(options[k])}' for k in sorted(options))})"
