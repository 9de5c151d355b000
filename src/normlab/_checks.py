"""Input validation shared by every normlab layer.

Each check raises an error that names what was wrong and what to do instead.
"""

from __future__ import annotations

import difflib
import math

import torch


def check_input(
    x: torch.Tensor,
    num_features: int,
    layer: str,
    *,
    channel_dim: int = 1,
    min_ndim: int = 2,
) -> None:
    """Check that ``x`` is a floating tensor of shape (N, C, *) with C == num_features.

    ``channel_dim`` is 1 for torch's (N, C, *) layout and -1 for channels-last
    (N, *, C) input.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor; got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(
            f"{layer} expects a floating-point input; got dtype {x.dtype}. "
            "Convert it first, e.g. x.float()."
        )
    layout = "(N, C, *)" if channel_dim == 1 else "(N, *, C)"
    if x.ndim < min_ndim:
        if min_ndim > 2:
            raise ValueError(
                f"{layer} normalizes each channel over its positions, so it needs input "
                f"of shape (N, C, L), (N, C, H, W) or more; got shape {tuple(x.shape)}, "
                "where each channel holds a single value per sample. "
                "For (N, C) features use 'ln' or 'bn'."
            )
        hint = (
            "add a batch dimension for a single sample: x.unsqueeze(0)"
            if x.ndim == 1
            else "pass a tensor with a batch dimension"
        )
        raise ValueError(
            f"{layer} expects input of shape {layout} with C={num_features}; "
            f"got shape {tuple(x.shape)} ({x.ndim}-D). To fix it, {hint}."
        )
    channels = x.shape[channel_dim]
    if channels != num_features:
        if channel_dim == 1:
            fix = (
                f"build the layer with num_features={channels}, or, for channels-last "
                "data, move the channels to dim 1 with x.movedim(-1, 1)"
            )
        else:
            fix = f"build the layer with num_features={channels}"
        raise ValueError(
            f"{layer} was built for {num_features} channels but the input has "
            f"{channels} on dim {channel_dim} (shape {tuple(x.shape)}, layout {layout}). "
            f"To fix it, {fix}."
        )


def check_batch_statistics(x: torch.Tensor, layer: str, stats: str = "channel") -> None:
    """Refuse a training-mode batch whose statistics would each see a single value.

    With one value per statistic the batch variance is zero and the output is
    the bias alone, whatever the input; torch raises for the same case. A
    per-channel statistic sees N * prod(spatial) values; a scalar one
    (``stats="scalar"``) every element of the batch. An empty batch is not
    refused (torch's batch norm returns an empty output for it).
    """
    positions = math.prod(x.shape[2:])
    per_statistic = x.numel() if stats == "scalar" else x.shape[0] * positions
    if per_statistic == 1:
        # Counts, not x's shape: a channels-last layer passes its input moved to (N, C, *).
        if stats == "scalar":
            what, got = "value in the whole batch", "a batch of a single element"
        else:
            what, got = "value per channel", "1 sample with 1 position per channel"
        raise ValueError(
            f"{layer} in training mode needs more than one {what}; got {got}. "
            "Use eval mode, LayerNorm/GroupNorm, or a larger batch."
        )


def check_values_per_group(x: torch.Tensor, values_per_group: int, layer: str, fix: str) -> None:
    """Refuse input where each normalized group of one sample holds a single value.

    Such a group normalizes to 0 whatever the input, so the output is the
    bias alone. torch refuses this only when the batch also has one sample;
    normlab refuses it for every batch size, since the statistics are per
    sample.
    """
    if values_per_group == 1:
        raise ValueError(
            f"{layer} on input of shape {tuple(x.shape)} normalizes groups of a single "
            f"value, so every output would be the bias alone. {fix}"
        )


def check_num_features(num_features: int) -> None:
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"num_features must be a positive int; got {num_features!r}.")


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_eps(eps: float) -> None:
    """eps is added to a variance before a square root: a finite number > 0."""
    if not _is_real(eps) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(
            f"eps must be a finite number > 0 (it is added to the variance); got {eps!r}. "
            "Use e.g. 1e-5."
        )


def check_momentum(momentum: float | None, *, allow_none: bool = True) -> None:
    """momentum weighs a running-statistics update: a finite number in [0, 1], or None for
    torch's cumulative average where the layer has one."""
    if momentum is None and allow_none:
        return
    if not _is_real(momentum) or not 0.0 <= momentum <= 1.0:
        none = " or None (cumulative average)" if allow_none else ""
        raise ValueError(f"momentum must be a number in [0, 1]{none}; got {momentum!r}.")


def check_channel_dim(channel_dim: int) -> None:
    if channel_dim not in (1, -1) or isinstance(channel_dim, bool):
        raise ValueError(
            f"channel_dim must be 1 for (N, C, *) input or -1 for (N, *, C) input; "
            f"got {channel_dim!r}."
        )


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


def name_key(name: str) -> str:
    """Lookup key for names typed by users: case, spaces, '-' and '_' do not matter
    ("Batch_Norm" and "batchnorm" are the same key)."""
    if not isinstance(name, str):
        return ""
    return "".join(ch for ch in name.strip().lower() if ch not in " -_")


def did_you_mean(name: str, names_by_key: dict[str, str]) -> str:
    """The hint " Did you mean 'a' or 'b'?" for the names closest to ``name``, or "".

    Args:
        name: what the user typed.
        names_by_key: each known name (or alias) under its ``name_key``.
    """
    keys = difflib.get_close_matches(name_key(name), names_by_key, n=3, cutoff=0.4)
    close = list(dict.fromkeys(names_by_key[key] for key in keys))
    return f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
