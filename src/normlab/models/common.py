"""What every lab model shares: where a norm goes relative to its activation."""

from __future__ import annotations

import math

from torch import nn

PLACEMENTS = ("before", "after")
INITS = ("default", "he")
"""Weight initializations: torch's default for each layer, or He et al. 2015's."""


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


def check_init(init: str, scale: float) -> None:
    """Raise ValueError unless ``init`` is one of INITS and ``scale`` a finite number > 0."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}; got {init!r}.")
    real = isinstance(scale, int | float) and not isinstance(scale, bool)
    if not (real and math.isfinite(scale) and scale > 0):
        raise ValueError(f"init_scale must be a finite number above 0; got {scale!r}.")


def initialize(model: nn.Module, init: str = "default", scale: float = 1.0) -> nn.Module:
    """Re-initialize ``model``'s linear and convolution weights in place and return it.

    ``init="he"`` draws each weight from N(0, 2 / fan_in) (He et al. 2015, for ReLU
    networks) and zeroes its bias; ``"default"`` keeps torch's initialization. Every such
    weight is then multiplied by ``scale``: 1 keeps it, 0.1 or 10 make a network
    initialized far from where normalization-free training works. Norm layers' affines
    are left as they are."""
    check_init(init, scale)
    for module in model.modules():
        if not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            continue
        if init == "he":
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if scale != 1.0:
            module.weight.data.mul_(scale)
    return model
