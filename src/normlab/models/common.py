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


def normalized_activation(norm: nn.Module, placement: str) -> list[nn.Module]:
    """[norm, ReLU] for ``placement="before"``, [ReLU, norm] for ``"after"``."""
    return [norm, nn.ReLU()] if placement == "before" else [nn.ReLU(), norm]
