"""Pure tensor functions behind normlab's layers.

Every function takes input of shape (N, C, *) with channels on dim 1, like
``torch.nn.functional``. Statistics are computed stably: batch norm goes
through torch's native kernel (a two-pass reduction on CPU), and the rest use
a two-pass mean and centered sum of squares, never E[x^2] - E[x]^2.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from normlab._checks import check_batch_statistics

Stats = Literal["channel", "scalar"]
Convention = Literal["torch", "keras"]

STATS: tuple[Stats, ...] = ("channel", "scalar")
CONVENTIONS: tuple[Convention, ...] = ("torch", "keras")


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    stats: Stats = "channel",
    convention: Convention = "torch",
) -> torch.Tensor:
    """Batch normalization with per-channel or scalar statistics.

    Args:
        input: (N, C, *) tensor.
        running_mean, running_var: (C,) buffers for ``stats="channel"``, (1,)
            for ``stats="scalar"``; updated in place when ``training``. May be
            None when ``training`` (no running statistics are kept).
        weight, bias: (C,) per-channel affine, or None.
        training: normalize with the batch's statistics (and update the
            running ones) instead of the running statistics.
        momentum: weight of the running statistics' update in the
            convention's own sense: torch's ``new = (1 - m) * old + m * batch``
            (m = 0.1), Keras' ``new = m * old + (1 - m) * batch`` (m = 0.99).
        eps: added to the variance before the square root.
        stats: ``"channel"`` reduces over N and the spatial dims, one mean and
            variance per channel; ``"scalar"`` reduces over every element,
            one mean and one variance for the whole batch.
        convention: ``"torch"`` stores the unbiased batch variance in
            ``running_var``, ``"keras"`` the biased one. Both normalize with
            the biased variance.

    Returns:
        Tensor of the input's shape, dtype and memory format.
    """
    if training:
        check_batch_statistics(input, "BatchNorm")
    if not (training and convention == "keras" and running_mean is not None):
        torch_momentum = momentum if convention == "torch" else 1.0 - momentum
        return _native_batch_norm(
            input, running_mean, running_var, weight, bias, training, torch_momentum, eps, stats
        )
    # torch's kernel stores the unbiased variance with torch's momentum: let
    # it write the batch statistics into scratch buffers, then apply Keras'
    # update (biased variance) to the running ones.
    batch_mean = torch.zeros_like(running_mean)
    batch_var = torch.zeros_like(running_var)
    out = _native_batch_norm(input, batch_mean, batch_var, weight, bias, True, 1.0, eps, stats)
    count = _count_per_statistic(input, stats)
    with torch.no_grad():
        running_mean.mul_(momentum).add_(batch_mean, alpha=1.0 - momentum)
        running_var.mul_(momentum).add_(batch_var, alpha=(1.0 - momentum) * (count - 1) / count)
    return out


def batch_renorm(
    input: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    r_max: float,
    d_max: float,
) -> torch.Tensor:
    """Batch renormalization (Ioffe 2017, Algorithm 1).

    In training, with batch statistics mu_B, sigma_B = sqrt(var_B + eps)
    (biased var_B) and running sigma = sqrt(running_var + eps)::

        r = clip(sigma_B / sigma, 1 / r_max, r_max)     # no gradient
        d = clip((mu_B - mu) / sigma, -d_max, d_max)    # no gradient
        y = ((x - mu_B) / sigma_B * r + d) * weight + bias
        mu    <- mu    + momentum * (mu_B - mu)
        sigma <- sigma + momentum * (sigma_B - sigma)   # stored as running_var = sigma^2 - eps

    In eval mode it is batch norm with the running statistics. Shapes as in
    :func:`batch_norm` with ``stats="channel"``.
    """
    if not training:
        return F.batch_norm(input, running_mean, running_var, weight, bias, False, 0.0, eps)
    check_batch_statistics(input, "BatchRenorm")
    with torch.no_grad():
        batch_mean, batch_var = _channel_moments(input)
        batch_std = (batch_var + eps).sqrt()
        running_std = (running_var + eps).sqrt()
        r = (batch_std / running_std).clamp(1.0 / r_max, r_max).to(running_var.dtype)
        d = ((batch_mean - running_mean) / running_std).clamp(-d_max, d_max).to(running_var.dtype)
        running_mean.lerp_(batch_mean.to(running_mean.dtype), momentum)
        running_std.lerp_(batch_std.to(running_std.dtype), momentum)
        running_var.copy_(running_std.square().sub_(eps).clamp_(min=0.0))
    # (x_hat * r + d) * weight + bias == x_hat * (weight * r) + (weight * d + bias)
    scale = r if weight is None else weight * r
    shift = d if weight is None else weight * d
    if bias is not None:
        shift = shift + bias
    return F.batch_norm(input, None, None, scale, shift, True, 0.0, eps)


def switchable_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean_logits: torch.Tensor,
    var_logits: torch.Tensor,
    training: bool,
    momentum: float,
    eps: float,
) -> torch.Tensor:
    """Switchable normalization (Luo et al. 2018).

    Mixes instance, layer and batch statistics with learned softmax weights,
    one set for the means and one for the variances::

        mu  = sum_k softmax(mean_logits)_k * mu_k     k in (IN, LN, BN)
        var = sum_k softmax(var_logits)_k  * var_k
        y   = (x - mu) / sqrt(var + eps) * weight + bias

    All variances are biased, as in the paper's equations (the authors' code
    takes the unbiased instance variance). The LN and BN statistics are
    derived from the IN ones by the law of total variance (stable, no
    E[x^2] - E[x]^2). In
    training the BN statistics come from the batch and update
    ``running_mean`` and ``running_var`` (unbiased, torch's momentum); in
    eval mode the BN statistics are the running ones, so the output of a
    sample depends on that sample alone. For (N, C) input there are no
    positions to take instance statistics over: only the LN and BN terms are
    mixed, with the softmax over ``logits[1:]``, as in the authors'
    SwitchNorm1d.

    Args:
        input: (N, C, *) tensor.
        running_mean, running_var: (C,) buffers.
        weight, bias: (C,) affine, or None.
        mean_logits, var_logits: (3,) importance logits for (IN, LN, BN).

    Returns:
        Tensor of the input's shape and dtype.
    """
    if training:
        check_batch_statistics(input, "SwitchableNorm")
    n, c = input.shape[:2]
    compute_dtype = torch.promote_types(input.dtype, torch.float32)
    x = input.reshape(n, c, -1).to(compute_dtype)
    mean_in = x.mean(-1, keepdim=True)  # (N, C, 1)
    var_in = (x - mean_in).square().mean(-1, keepdim=True)
    mean_ln = mean_in.mean(1, keepdim=True)  # (N, 1, 1)
    var_ln = var_in.mean(1, keepdim=True) + (mean_in - mean_ln).square().mean(1, keepdim=True)
    if training:
        mean_bn = mean_in.mean(0, keepdim=True)  # (1, C, 1)
        var_bn = var_in.mean(0, keepdim=True) + (mean_in - mean_bn).square().mean(0, keepdim=True)
        count = x.shape[0] * x.shape[2]
        with torch.no_grad():
            running_mean.lerp_(mean_bn.flatten().to(running_mean.dtype), momentum)
            unbiased = var_bn.flatten() * (count / (count - 1))
            running_var.lerp_(unbiased.to(running_var.dtype), momentum)
    else:
        mean_bn = running_mean.to(compute_dtype).view(1, c, 1)
        var_bn = running_var.to(compute_dtype).view(1, c, 1)
    terms = slice(1, 3) if input.ndim == 2 else slice(0, 3)
    mean_w = torch.softmax(mean_logits[terms].to(compute_dtype), 0)
    var_w = torch.softmax(var_logits[terms].to(compute_dtype), 0)
    means = (mean_in, mean_ln, mean_bn)[terms]
    variances = (var_in, var_ln, var_bn)[terms]
    mean = sum(w * m for w, m in zip(mean_w, means, strict=True))
    var = sum(w * v for w, v in zip(var_w, variances, strict=True))
    normalized = ((x - mean) * torch.rsqrt(var + eps)).view(input.shape)
    return channel_affine(normalized.to(input.dtype), weight, bias)


def weight_standardize(weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Weight standardization (Qiao et al. 2019, eq. 5).

    Each output unit's weights (dim 0) are standardized over their fan-in::

        w_hat = (w - mean(w)) / sqrt(var(w) + eps)     var biased

    Args:
        weight: (C_out, *) weight of a linear or convolution layer.

    Returns:
        Tensor of the weight's shape.
    """
    dims = tuple(range(1, weight.ndim))
    centered = weight - weight.mean(dims, keepdim=True)
    var = centered.square().mean(dims, keepdim=True)
    return centered * torch.rsqrt(var + eps)


def channel_affine(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    channel_dim: int = 1,
) -> torch.Tensor:
    """Apply a (C,) scale and shift along ``channel_dim`` of x; returns x's shape and dtype.

    The affine is computed in the wider of x's and the parameters' dtypes,
    so float32 parameters on bfloat16 input get float32-accurate gradients,
    as in torch's native kernels.
    """
    if weight is None and bias is None:
        return x
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    if weight is None:
        return (x + bias.view(shape)).to(x.dtype)
    if bias is None:
        return (x * weight.view(shape)).to(x.dtype)
    return torch.addcmul(bias.view(shape), x, weight.view(shape)).to(x.dtype)


def _native_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    stats: Stats,
) -> torch.Tensor:
    """torch's batch-norm kernel (torch convention), extended to scalar statistics."""
    if stats == "channel":
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    channels = input.shape[1]
    if not training:
        # With fixed statistics, one shared mean and variance is the
        # per-channel formula with the statistic repeated over channels.
        return F.batch_norm(
            input,
            running_mean.expand(channels),
            running_var.expand(channels),
            weight,
            bias,
            False,
            0.0,
            eps,
        )
    # Scalar statistics are batch norm of one channel holding every element:
    # view the input's memory as (1, 1, numel), whatever its memory format.
    # bfloat16 input with float32 statistics is normalized in float32 so
    # that the affine and its gradients see a float32 x_hat, as inside
    # torch's own kernel.
    order = sorted(range(input.ndim), key=lambda d: -input.stride(d))
    stats_dtype = torch.float32 if running_mean is None else running_mean.dtype
    compute_dtype = torch.promote_types(input.dtype, stats_dtype)
    dense = input.permute(order).contiguous().to(compute_dtype)
    normalized = F.batch_norm(
        dense.view(1, 1, -1), running_mean, running_var, None, None, True, momentum, eps
    )
    restore = sorted(range(input.ndim), key=lambda i: order[i])
    normalized = normalized.view(dense.shape).permute(restore)
    return channel_affine(normalized, weight, bias).to(input.dtype)


def _channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of (N, C, *) x, two-pass, as (C,) tensors."""
    dims = (0, *range(2, x.ndim))
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    mean = x.mean(dims, keepdim=True)
    var = (x - mean).square().mean(dims)
    return mean.flatten(), var


def _count_per_statistic(input: torch.Tensor, stats: Stats) -> int:
    """Number of values behind each mean: N * prod(spatial), or numel for scalar stats."""
    return input.numel() if stats == "scalar" else input.numel() // input.shape[1]
