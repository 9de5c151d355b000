"""Pure tensor functions behind normlab's layers.

Every function takes input of shape (N, C, *) with channels on dim 1, like
``torch.nn.functional``. Statistics are computed stably: batch norm goes
through torch's native kernel (a two-pass reduction on CPU), and the rest use
a two-pass mean and centered sum of squares, never E[x^2] - E[x]^2.
Scalar-statistics batch norm trains small batches through torch's batch-norm
kernel on a one-channel view; the autograd Functions with hand-written
backwards (scalar-statistics batch norm of larger batches, switchable norm)
live in the private module beside this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from normlab import _functional_autograd as _autograd
from normlab._checks import check_batch_statistics

__all__ = [
    "CONVENTIONS",
    "STATS",
    "Convention",
    "Stats",
    "batch_norm",
    "batch_renorm",
    "channel_affine",
    "count_per_statistic",
    "merge_moments",
    "switchable_norm",
    "weight_standardize",
    "with_channels_first",
]

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
    layer: str = "BatchNorm",
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
        layer: the layer named in errors (a module passes its class name).

    Returns:
        Tensor of the input's shape, dtype and memory format.

    Raises:
        ValueError: in training, one value per statistic (see check_batch_statistics).
    """
    if not training:
        return _batch_norm_eval(input, running_mean, running_var, weight, bias, eps)
    check_batch_statistics(input, layer, stats)
    if input.numel() == 0:
        return _empty_batch(input, weight, bias, eps)
    if stats == "scalar":
        _check_parameter_dtype(input, weight if weight is not None else running_mean)
        flat = _one_channel_view(input)
        if flat is not None:
            return _scalar_batch_norm_native(
                input, flat, running_mean, running_var, weight, bias, momentum, eps, convention
            )
        output, mean, var, _ = _autograd.ScalarBatchNormFunction.apply(input, weight, bias, eps)
        if running_mean is not None:
            _autograd.update_running_stats(
                running_mean, running_var, mean, var, input.numel(), momentum, convention
            )
        return output
    return _native_batch_norm_training(
        input, running_mean, running_var, weight, bias, momentum, eps, convention
    )


def _native_batch_norm_training(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    momentum: float,
    eps: float,
    convention: Convention,
) -> torch.Tensor:
    """torch's training-mode batch norm of (N, C, *) input, per channel, with the running
    statistics updated in the convention's terms. (torch.batch_norm, not F.batch_norm:
    the batch was checked, and on small batches each Python call is a visible share.)"""
    cudnn = torch.backends.cudnn.enabled
    if running_mean is None or convention == "torch":
        return torch.batch_norm(
            input, weight, bias, running_mean, running_var, True, momentum, eps, cudnn
        )
    # torch's kernel stores the unbiased variance, n / (n - 1) times Keras' biased one, with
    # weight 1 - m on the batch: let it update the stored variance in its terms, then convert.
    # (A copy, not running_var itself: autograd keeps the tensor it was given.)
    count = input.numel() // input.shape[1]
    unbiased_var = running_var * (count / (count - 1))
    output = torch.batch_norm(
        input, weight, bias, running_mean, unbiased_var, True, 1.0 - momentum, eps, cudnn
    )
    with torch.no_grad():
        # copy_, not out=: vmap has no rule for out= (normlab.experiment.batched_layers)
        running_var.copy_(unbiased_var * ((count - 1) / count))
    return output


#: Largest batch (in elements) that scalar-statistics batch norm normalizes as one channel
#: of torch's kernel; larger ones go through ScalarBatchNormFunction, whose reductions run
#: in parallel (the one-channel kernel reduces on one thread).
NATIVE_SCALAR_MAX_NUMEL = 1 << 16


def _one_channel_view(input: torch.Tensor) -> torch.Tensor | None:
    """(N, C, *) float32 or float64 input of at most NATIVE_SCALAR_MAX_NUMEL elements as
    the one channel (1, 1, numel) of its memory, when its memory is dense in the
    channels-first or channels-innermost order; else None."""
    if input.dtype not in (torch.float32, torch.float64):
        return None
    if input.numel() > NATIVE_SCALAR_MAX_NUMEL:
        return None
    if input.is_contiguous():
        return input.view(1, 1, -1)
    inner = input.movedim(1, -1)
    return inner.view(1, 1, -1) if inner.is_contiguous() else None


def _scalar_batch_norm_native(
    input: torch.Tensor,
    flat: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    momentum: float,
    eps: float,
    convention: Convention,
) -> torch.Tensor:
    """Training-mode scalar-statistics batch norm of small input by torch's kernels: batch
    norm of ``flat`` (``input``'s memory as one channel: one mean and variance, two-pass,
    and the running statistics updated in the kernel), then the per-channel affine as
    eval-mode batch norm with zero means, unit variances and eps 0 (``x * w_c + b_c``
    exactly), on the memory's own channels-first or channels-innermost (rows, C) view, so
    that the output keeps the input's strides. Two fused kernels forward and backward with
    their own autograd formulas: on small batches the cost is the count of dispatched ops."""
    normalized = _native_batch_norm_training(
        flat, running_mean, running_var, None, None, momentum, eps, convention
    )
    channels_first = input.is_contiguous()
    channels = input.shape[1]
    normalized = normalized.view(input.shape if channels_first else (-1, channels))
    if weight is not None or bias is not None:
        zeros, ones = _unit_statistics(channels, input.dtype, input.device)
        cudnn = torch.backends.cudnn.enabled
        normalized = torch.batch_norm(normalized, weight, bias, zeros, ones, False, 0.0, 0.0, cudnn)
    if channels_first:
        return normalized
    return normalized.view(input.movedim(1, -1).shape).movedim(-1, 1)


#: (zeros, ones) per (channels, dtype, device): the statistics that make eval-mode batch
#: norm apply its affine alone. Read-only; made once, since on small batches two
#: allocations per step are a visible share.
_UNIT_STATISTICS: dict[tuple[int, torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}


def _unit_statistics(
    channels: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """(C,) zeros and ones of ``dtype`` on ``device`` (fresh ones while torch.compile
    traces: a graph reads no module-level cache)."""
    if torch.compiler.is_compiling():
        return torch.zeros(channels, dtype=dtype, device=device), torch.ones(
            channels, dtype=dtype, device=device
        )
    key = (channels, dtype, device)
    unit = _UNIT_STATISTICS.get(key)
    if unit is None:
        with torch.inference_mode(False):  # tensors that autograd may save, made anywhere
            zeros = torch.zeros(channels, dtype=dtype, device=device)
            unit = _UNIT_STATISTICS[key] = (zeros, torch.ones_like(zeros))
    return unit


def _empty_batch(
    input: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """The output of an empty training batch, as torch's batch norm: empty, with zero
    gradients for the affine, and no running statistics touched."""
    return F.batch_norm(input, None, None, weight, bias, True, 0.0, eps)


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
    *,
    layer: str = "BatchRenorm",
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
    :func:`batch_norm` with ``stats="channel"``; ``layer`` is named in errors.
    """
    if not training:
        return F.batch_norm(input, running_mean, running_var, weight, bias, False, 0.0, eps)
    check_batch_statistics(input, layer)
    if input.numel() == 0:
        return _empty_batch(input, weight, bias, eps)
    with torch.no_grad():
        batch_mean, batch_var = _autograd.channel_moments(input)
        batch_std = batch_var.add_(eps).sqrt_()
        running_std = torch.add(running_var, eps).sqrt_()
        dtype = running_var.dtype
        r = torch.div(batch_std, running_std).clamp_(1.0 / r_max, r_max)
        d = torch.sub(batch_mean, running_mean).div_(running_std).clamp_(-d_max, d_max)
        if r.dtype != dtype:
            r, d, batch_mean, batch_std = (t.to(dtype) for t in (r, d, batch_mean, batch_std))
        running_mean.lerp_(batch_mean, momentum)
        running_var.copy_(
            running_std.lerp_(batch_std, momentum).square_().sub_(eps).clamp_(min=0.0)
        )
    # (x_hat * r + d) * weight + bias == x_hat * (weight * r) + (weight * d + bias)
    if weight is None:
        scale, shift = r, d if bias is None else d + bias
    else:
        scale = weight * r
        shift = weight * d if bias is None else torch.addcmul(bias, weight, d)
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
    *,
    layer: str = "SwitchableNorm",
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
        layer: the layer named in errors (a module passes its class name).

    Returns:
        Tensor of the input's shape and dtype.
    """
    if training:
        check_batch_statistics(input, layer)
    if input.numel() == 0:
        return _empty_batch(input, weight, bias, eps)
    function = (
        _autograd.SwitchableNormFunction
        if input.ndim > 2
        else _autograd.SwitchableNormFeaturesFunction
    )
    return function.apply(
        input,
        weight,
        bias,
        mean_logits,
        var_logits,
        running_mean,
        running_var,
        training,
        momentum,
        eps,
    )[0]


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


def _batch_norm_eval(
    input: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Batch norm with fixed (C,) or (1,) statistics: torch's kernel, a (1,) statistic
    repeated over the channels."""
    channels = input.shape[1]
    if running_mean.numel() != channels:
        # copies: torch's CPU backward misreads stride-0 statistics, and its fast forward
        # kernels take contiguous ones only
        running_mean = running_mean.expand(channels).contiguous()
        running_var = running_var.expand(channels).contiguous()
    return F.batch_norm(input, running_mean, running_var, weight, bias, False, 0.0, eps)


def _check_parameter_dtype(input: torch.Tensor, parameter: torch.Tensor | None) -> None:
    """Refuse what torch's batch-norm kernel refuses: parameters of another dtype than the
    input, except float32 parameters with bfloat16 or float16 input."""
    if parameter is None or parameter.dtype == input.dtype:
        return
    if parameter.dtype == torch.float32 and input.dtype in (torch.bfloat16, torch.float16):
        return
    raise RuntimeError(
        f"batch norm got {input.dtype} input and {parameter.dtype} parameters; convert the "
        f"input (x.to({parameter.dtype})) or the module (module.to({input.dtype}))."
    )


def count_per_statistic(input: torch.Tensor, stats: Stats) -> int:
    """Number of values behind each mean: N * prod(spatial), or numel for scalar stats."""
    return input.numel() if stats == "scalar" else input.numel() // input.shape[1]


def merge_moments(
    counts: torch.Tensor, means: torch.Tensor, m2s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge K partial moments into those of the union (Chan et al.'s parallel variance).

    Stable: no E[x^2] - E[x]^2. Parts with count 0 contribute nothing.

    Args:
        counts: (K, 1) numbers of values behind each part's statistics.
        means: (K, S) means of each part (S statistics, e.g. one per channel).
        m2s: (K, S) centered sums of squares of each part.

    Returns:
        (count, mean, m2): a 0-d total count and (S,) mean and centered sum of squares;
        the biased variance is m2 / count, the unbiased one m2 / (count - 1).
    """
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    m2 = (m2s + counts * (means - mean).square()).sum(0)
    return total, mean, m2


def with_channels_first(
    function: Callable[[torch.Tensor], torch.Tensor], input: torch.Tensor, channel_dim: int
) -> torch.Tensor:
    """``function`` of (N, C, *) input applied to input with channels on ``channel_dim``.

    For ``channel_dim=-1`` the channels of (N, *, C) input are moved to dim 1 (a view,
    no copy) and the output's back, so a layer written for (N, C, *) reads the C features
    of (N, L, C) tokens or NHWC images with unchanged parameters and buffers. The output
    is then contiguous, as ``torch.nn.LayerNorm``'s on (N, *, C) input (callers ``.view``
    it); for 4-D and 5-D input torch's kernels keep the channels-last layout of the moved
    view, so only (N, L, C) output is copied.
    """
    if channel_dim == 1 or input.ndim <= 2:
        return function(input)
    return function(input.movedim(-1, 1)).movedim(1, -1).contiguous()
