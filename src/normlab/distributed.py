"""Batch norm whose training statistics span every process of a torch.distributed group.

Each process reduces its own part of the batch to a count, a mean and a
centered sum of squares per statistic; one ``all_gather`` shares them and
every process combines them with the parallel-variance formula (Chan et
al.), never E[x^2] - E[x]^2. The backward pass needs two global sums per
statistic, shared with one ``all_reduce``. So on W processes with batches
B_1..B_W the outputs, input gradients and running statistics are those of
one process on the concatenated batch, and each process's parameter
gradient is its share of that process's (their sum is the whole).
It uses only all_gather and all_reduce, which gloo (CPU) and nccl (CUDA) both provide;
it is tested on gloo only (no GPU was available).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from normlab.functional import Stats, count_per_statistic, merge_moments


def world_size(group: Any = None) -> int:
    """Processes in ``group`` (the default group when None); 1 outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def _reduced_dims(input: torch.Tensor, stats: Stats) -> tuple[int, ...]:
    if stats == "scalar":
        return tuple(range(input.ndim))
    return (0, *range(2, input.ndim))


def _as_statistic(values: torch.Tensor, input: torch.Tensor, stats: Stats) -> torch.Tensor:
    """(C,) or (1,) statistics shaped to broadcast against (N, C, *) input."""
    if stats == "scalar":
        return values.reshape((1,) * input.ndim)
    return values.reshape(1, -1, *([1] * (input.ndim - 2)))


def global_moments(
    input: torch.Tensor, stats: Stats, group: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Count, mean and centered sum of squares of the whole distributed batch.

    Args:
        input: this process's (N_k, C, *) part; N_k may differ between
            processes and may be 0.
        stats: ``"channel"`` (C,) statistics or ``"scalar"`` (1,).

    Returns:
        (count, mean, m2): the number of values behind each statistic, as a
        0-d tensor, and (C,) or (1,) tensors, in float32 or wider.
    """
    compute = torch.promote_types(input.dtype, torch.float32)
    values = input.to(compute)
    dims = _reduced_dims(input, stats)
    count = float(count_per_statistic(input, stats)) if input.numel() else 0.0
    size = 1 if stats == "scalar" else input.shape[1]
    if count:
        mean = values.mean(dims).reshape(size)
        m2 = (values - _as_statistic(mean, input, stats)).square().sum(dims).reshape(size)
    else:
        mean = m2 = torch.zeros(size, dtype=compute, device=input.device)
    local = torch.cat([torch.full((1,), count, dtype=compute, device=input.device), mean, m2])
    gathered = [torch.empty_like(local) for _ in range(world_size(group))]
    dist.all_gather(gathered, local, group=group)
    table = torch.stack(gathered)  # (W, 1 + 2 * size)
    return merge_moments(table[:, :1], table[:, 1 : 1 + size], table[:, 1 + size :])


class _SyncNormalize(torch.autograd.Function):
    """x_hat * weight + bias with global statistics; the backward all-reduces its two sums."""

    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        mean: torch.Tensor,
        invstd: torch.Tensor,
        count: torch.Tensor,
        stats: Stats,
        group: Any,
    ) -> torch.Tensor:
        x_hat = (input - _as_statistic(mean, input, stats)) * _as_statistic(invstd, input, stats)
        ctx.save_for_backward(x_hat, weight, invstd, count)
        ctx.stats, ctx.group = stats, group
        ctx.has_bias = bias is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        output = x_hat
        if weight is not None:
            output = output * _as_statistic(weight, input, "channel")
        if bias is not None:
            output = output + _as_statistic(bias, input, "channel")
        return output.to(input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        x_hat, weight, invstd, count = ctx.saved_tensors
        stats, dims = ctx.stats, _reduced_dims(x_hat, ctx.stats)
        grad = grad_output.to(x_hat.dtype)
        grad_x_hat = grad if weight is None else grad * _as_statistic(weight, x_hat, "channel")
        sums = torch.cat(
            [grad_x_hat.sum(dims).reshape(-1), (grad_x_hat * x_hat).sum(dims).reshape(-1)]
        )
        dist.all_reduce(sums, group=ctx.group)
        sum_grad, sum_grad_x_hat = sums.chunk(2)
        grad_input = _as_statistic(invstd, x_hat, stats) * (
            grad_x_hat
            - _as_statistic(sum_grad / count, x_hat, stats)
            - x_hat * _as_statistic(sum_grad_x_hat / count, x_hat, stats)
        )
        channel_dims = _reduced_dims(x_hat, "channel")
        grad_weight = None if weight is None else (grad * x_hat).sum(channel_dims).to(weight.dtype)
        grad_bias = grad.sum(channel_dims).to(ctx.bias_dtype) if ctx.has_bias else None
        return (
            grad_input.to(grad_output.dtype),
            grad_weight,
            grad_bias,
            None,
            None,
            None,
            None,
            None,
        )


def check_global_count(
    count: torch.Tensor, input: torch.Tensor, stats: Stats, layer: str = "SyncBatchNorm"
) -> None:
    """Refuse a distributed batch with a single value per statistic (nothing to normalize with);
    ``layer`` is named in the error."""
    if count <= 1:
        raise ValueError(
            f"{layer} in training mode needs more than one value per "
            f"{'batch' if stats == 'scalar' else 'channel'} over all processes; got "
            f"{int(count)} in all (this process's input has shape {tuple(input.shape)}). "
            "Use eval mode or larger batches."
        )


def sync_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    momentum: float,
    eps: float,
    *,
    stats: Stats = "channel",
    convention: str = "torch",
    group: Any = None,
    moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Training-mode batch norm over the batch of every process in ``group``.

    Args:
        input: this process's (N_k, C, *) part of the batch.
        running_mean, running_var: updated in place from the global
            statistics as :func:`normlab.functional.batch_norm` would on the
            concatenated batch (torch: unbiased variance, ``(1 - m) * old + m
            * new``; keras: biased, ``m * old + (1 - m) * new``); None keeps none.
        weight, bias: (C,) affine or None.
        momentum, eps, stats, convention: as normlab.functional.batch_norm.
        moments: :func:`global_moments` of ``input`` when already gathered.

    Returns:
        This process's part of the output, shaped as ``input``.

    Raises:
        ValueError: the whole distributed batch has one value per statistic.
    """
    count, mean, m2 = global_moments(input, stats, group) if moments is None else moments
    check_global_count(count, input, stats)
    var = m2 / count
    if running_mean is not None:
        with torch.no_grad():
            stored = m2 / (count - 1) if convention == "torch" else var
            keep = 1.0 - momentum if convention == "torch" else momentum
            running_mean.mul_(keep).add_(mean.to(running_mean.dtype), alpha=1.0 - keep)
            running_var.mul_(keep).add_(stored.to(running_var.dtype), alpha=1.0 - keep)
    invstd = (var + eps).rsqrt()
    return _SyncNormalize.apply(input, weight, bias, mean, invstd, count, stats, group)
