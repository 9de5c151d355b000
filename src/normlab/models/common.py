"""What every lab model shares: where a norm goes relative to its activation."""

from __future__ import annotations

from torch import nn

PLACEMENTS = ("before", "after")


def check_placement(placement: str) -> None:
    """Raise ValueError unless ``placement`` is one of PLACEMENTS."""
    if placement not in PLACEMENTS:
        raise ValueError(
            f"placement must be 'before' or 'after' the activation; got {placement!r}."
        )


def dropout_layers(p: float) -> list[nn.Module]:
    """``[nn.Dropout(p)]``, or nothing at p = 0 (so a model without dropout is unchanged)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {p}.")
    return [nn.Dropout(p)] if p > 0 else []


def normalized_activation(norm: nn.Module, placement: str) -> list[nn.Module]:
    """[norm, ReLU] for ``placement="before"``, [ReLU, norm] for ``"after"``."""
    return [norm, nn.ReLU()] if placement == "before" else [nn.ReLU(), norm]
