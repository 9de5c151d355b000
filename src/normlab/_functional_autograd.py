"""The autograd Functions behind :mod:`normlab.functional`, with hand-written backwards.

:class:`ScalarBatchNormFunction` is training-mode batch norm with one mean and variance
for the whole batch; :class:`SwitchableNormFunction` and
:class:`SwitchableNormFeaturesFunction` are switchable normalization on (N, C, *) and
(N, C) input. Each returns its statistics as outputs for ``setup_context`` (the form
torch.func needs), so the layers built on them also train inside ``vmap``. Call them
through :func:`normlab.functional.batch_norm` and :func:`normlab.functional.switchable_norm`,
which check their input first.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _compute_dtype(input: torch.Tensor) -> torch.dtype:
    """float32 for half-precision input, as torch's kernels accumulate; else the input's."""
    return torch.promote_types(input.dtype, torch.float32)


def _affine_shape(input: torch.Tensor) -> list[int]:
    """(1, C, 1, ...): the shape that broadcasts a (C,) vector over (N, C, *) input."""
    return [1, input.shape[1]] + [1] * (input.ndim - 2)


def channel_moments(input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of (N, C, *) input as (C,) tensors, in float32
    or wider: torch's batch-norm statistics kernel (two-pass, parallel over channels)."""
    channels, dtype = input.shape[1], _compute_dtype(input)
    if dtype == input.dtype:
        return torch.batch_norm_update_stats(input, None, None, 0.0)
    # Given float32 buffers, the kernel returns float32 statistics of half-precision input.
    scratch_mean = torch.zeros(channels, dtype=dtype, device=input.device)
    scratch_var = torch.ones(channels, dtype=dtype, device=input.device)
    return torch.batch_norm_update_stats(input, scratch_mean, scratch_var, 0.0)


def update_running_stats(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    count: int,
    momentum: float,
    convention: str,
) -> None:
    """Move the running statistics toward a batch's mean and biased variance of ``count``
    values, in the convention's sense of momentum and stored variance."""
    if convention == "torch":
        weight, var = momentum, var * (count / (count - 1))
    else:
        weight = 1.0 - momentum
    with torch.no_grad():
        running_mean.lerp_(mean.to(running_mean.dtype), weight)
        running_var.lerp_(var.to(running_var.dtype), weight)


class ScalarBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm with one mean and variance over every element of the batch.

    The statistics are the per-channel ones of torch's kernel (two-pass, parallel over
    channels) combined by the law of total variance; the output and the input gradient
    are one vectorized pass each of the form ``x * a_c + b_c`` (:func:`_scale_shift`),
    the input gradient then adding ``g * invstd * w_c`` in place. Backward, the
    per-channel sums of the upstream gradient g and of g * x_hat come from torch's
    batch-norm backward kernel (which forms x - mean before multiplying: stable for
    inputs with a large mean)::

        dx = invstd * (g * w_c - mean(g * w) - x_hat * mean(g * w * x_hat))

    Returns (output, mean, biased variance, 1 / sqrt(variance + eps)); the statistics are
    0-dim, in float32 or wider, and not differentiable. The statistics are handed to
    setup_context as outputs (the form torch.func needs), so the layer also trains inside
    ``vmap`` (normlab.experiment.batched_layers).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias, eps):
        dtype = _compute_dtype(input)
        channel_mean, channel_var = channel_moments(input)
        between, mean = torch.var_mean(channel_mean, correction=0)
        var = channel_var.mean() + between
        invstd = torch.rsqrt(var + eps)
        scale = invstd.expand(input.shape[1]) if weight is None else invstd * weight.to(dtype)
        shift = -mean * scale if bias is None else bias.to(dtype) - mean * scale
        return _scale_shift(input, scale, shift), mean, var, invstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, _ = inputs
        _, mean, var, invstd = output
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, var, invstd)
        ctx.set_materialize_grads(False)  # no zero tensors for the statistics' gradients

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output, _grad_mean, _grad_var, _grad_invstd):
        if grad_output is None:  # the output unused: no gradient to anything
            return None, None, None, None
        input, weight, mean, invstd = ctx.saved_tensors
        channels, count = input.shape[1], input.numel()
        sum_g_xhat, sum_g = _channel_sums(
            grad_output, input, mean.expand(channels), invstd.expand(channels)
        )
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            dtype = mean.dtype
            w = invstd.new_ones(channels) if weight is None else weight.to(dtype)
            mean_gw = torch.dot(w, sum_g.to(dtype)) / count
            mean_gw_xhat = torch.dot(w, sum_g_xhat.to(dtype)) / count
            # invstd * (g w_c - mean_gw - (x - mean) invstd mean_gw_xhat) = x k + c + g a_c
            k = -invstd * invstd * mean_gw_xhat
            c = -mean * k - invstd * mean_gw
            grad_input = _scale_shift(input, k.expand(channels), c.expand(channels), dtype)
            grad_input.addcmul_(grad_output, (invstd * w).view(_affine_shape(input)))
            grad_input = grad_input.to(input.dtype)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = sum_g_xhat.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = sum_g.to(ctx.bias_dtype)
        return grad_input, grad_weight, grad_bias, None


def _scale_shift(
    input: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``input * scale_c + shift_c`` for (N, C, *) input and (C,) ``scale`` and ``shift``, in
    one vectorized pass, in the input's memory format; in ``dtype`` when given (the
    statistics' dtype, float32 for half-precision input), else in the input's dtype.

    The coefficients are made contiguous: a loop over channels with a stride-0 operand
    (an expanded 0-dim statistic) is not vectorized. Where the channels are not innermost
    (contiguous input with positions), torch's eval-mode batch-norm kernel does the pass,
    with zero means, unit variances and eps 0 (so its scale is ``scale`` and its shift
    ``shift`` exactly): an ``addcmul`` there reads two broadcast operands along the
    positions and falls back to an unvectorized loop.
    """
    scale, shift = scale.contiguous(), shift.contiguous()
    if input.dtype == _compute_dtype(input) and input.ndim > 2 and input.is_contiguous():
        channels = input.shape[1]
        zeros, ones = input.new_zeros(channels), input.new_ones(channels)
        return torch.batch_norm(input, scale, shift, zeros, ones, False, 0.0, 0.0, False)
    shape = _affine_shape(input)
    output = torch.addcmul(shift.view(shape), input, scale.view(shape))
    return output if dtype is not None else output.to(input.dtype)


def _save_switchable(ctx: Any, inputs: tuple[Any, ...], saved: tuple[torch.Tensor, ...]) -> None:
    """setup_context of both switchable-norm Functions: their forward returns the output
    followed by the tensors backward needs (the form torch.func needs, so the layers also
    train inside ``vmap``; see normlab.experiment.batched_layers); backward gets the input first."""
    input, weight, bias, mean_logits, var_logits, _, _, training = inputs[:8]
    ctx.mark_non_differentiable(*saved)
    ctx.save_for_backward(input, *saved)
    ctx.training = training
    ctx.dtypes = tuple(
        None if t is None else t.dtype for t in (input, weight, bias, mean_logits, var_logits)
    )


class SwitchableNormFunction(torch.autograd.Function):
    """Switchable normalization with a hand-written backward.

    The mixing works on per-(sample, channel) statistics of shape (N, C, 1, ...); what
    touches every element is the instance moments and one ``x * scale + shift`` pass
    forward, and backward the per-instance sums of g and g * (x - mu) and one
    ``x * k1 + k0 + g * scale`` pass. With S values per instance, s = 1 / sqrt(var + eps)
    and mixing weights w (means) and v (variances) over (IN, LN, BN)::

        d mu     = -weight * s * sum_S(g)
        d var    = -weight * s^3 * sum_S(g * (x - mu)) / 2
        d mu_in  = w_in d mu + (w_ln sum_C(d mu) + 2 v_ln sum_C(d var) (mu_in - mu_ln)) / C
                   + (w_bn sum_N(d mu) + 2 v_bn sum_N(d var) (mu_in - mu_bn)) / N
        d var_in = v_in d var + v_ln sum_C(d var) / C + v_bn sum_N(d var) / N
        dx       = g * weight * s + d mu_in / S + 2 d var_in (x - mu_in) / S

    (the BN terms only in training: in eval the running statistics are constants). Input
    of shape (N, C, *) with at least one spatial dim; (N, C) input is
    :class:`SwitchableNormFeaturesFunction`'.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
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
    ):
        dtype = _compute_dtype(input)
        x = input.to(dtype)
        batch = x.shape[0]
        stat_shape = _affine_shape(x)
        mean_in, var_in = _instance_moments(x)  # (N, C, 1, ...)
        mean_ln = mean_in.mean(1, keepdim=True)  # (N, 1, ...)
        var_ln = var_in.mean(1, keepdim=True) + _mean_squared_deviation(mean_in, mean_ln, (1,))
        if training:
            mean_bn = mean_in.mean(0, keepdim=True)  # (1, C, ...)
            var_bn = var_in.mean(0, keepdim=True) + _mean_squared_deviation(mean_in, mean_bn, (0,))
            update_running_stats(
                running_mean,
                running_var,
                mean_bn.flatten(),
                var_bn.flatten(),
                batch * x[0, 0].numel(),
                momentum,
                "torch",
            )
        else:
            # copies: they are outputs for setup_context, and must not alias the buffers
            mean_bn = running_mean.to(dtype, copy=True).view(stat_shape)
            var_bn = running_var.to(dtype, copy=True).view(stat_shape)
        terms = (0, 1, 2)
        mean_w = _mixing_weights(mean_logits, terms, dtype)
        var_w = _mixing_weights(var_logits, terms, dtype)
        means, variances = (mean_in, mean_ln, mean_bn), (var_in, var_ln, var_bn)
        mean = sum(w * m for w, m in zip(mean_w, means, strict=True))
        var = sum(v * s for v, s in zip(var_w, variances, strict=True))
        invstd = torch.rsqrt(var + eps)
        gamma = x.new_ones(stat_shape) if weight is None else weight.to(dtype).view(stat_shape)
        scale = invstd * gamma
        shift = -mean * scale if bias is None else bias.to(dtype).view(stat_shape) - mean * scale
        output = torch.addcmul(shift, x, scale)
        return output.to(input.dtype), gamma, mean, invstd, scale, mean_w, var_w, *means, *variances

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_switchable(ctx, inputs, output[1:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output, *_grad_saved):
        input, gamma, mean, invstd, scale, mean_w, var_w, *stats = ctx.saved_tensors
        x = input.to(_compute_dtype(input))
        means, variances = stats[:3], stats[3:]
        mean_in, mean_ln, mean_bn = means
        dtypes = ctx.dtypes
        g = grad_output.to(x.dtype)
        batch, channels = x.shape[:2]
        sum_g, sum_g_centered = _instance_sums(g, x, mean)
        d_mean = torch.mul(scale, sum_g).neg_()
        d_var = invstd.pow(3).mul_(sum_g_centered).mul_(gamma * -0.5)
        grads: list[torch.Tensor | None] = [None] * 10
        if dtypes[1] is not None and ctx.needs_input_grad[1]:
            grads[1] = (sum_g_centered * invstd).sum(0).flatten().to(dtypes[1])
        if dtypes[2] is not None and ctx.needs_input_grad[2]:
            grads[2] = sum_g.sum(0).flatten().to(dtypes[2])
        for index, weights, d_stat, values in (
            (3, mean_w, d_mean, means),
            (4, var_w, d_var, variances),
        ):
            if ctx.needs_input_grad[index]:
                # sum(d_stat * stat) for each term, reducing d_stat to the term's shape first
                d_weights = torch.stack(
                    [
                        (d_stat * values[0]).sum(),
                        (d_stat.sum(1, keepdim=True) * values[1]).sum(),
                        (d_stat.sum(0, keepdim=True) * values[2]).sum(),
                    ]
                )
                grads[index] = (weights * (d_weights - (weights * d_weights).sum())).to(
                    dtypes[index]
                )
        if not ctx.needs_input_grad[0]:
            return tuple(grads)
        # (d mu_stat + 2 d var_stat (mu_in - mu_stat)) / count, one addcmul per statistic
        d_mean_ln = mean_w[1] * d_mean.sum(1, keepdim=True) / channels
        d_var_ln = var_w[1] * d_var.sum(1, keepdim=True) / channels
        d_mean_in = torch.addcmul(d_mean_ln, mean_in - mean_ln, d_var_ln, value=2.0)
        d_var_in = d_var_ln
        if ctx.training:
            d_mean_bn = mean_w[2] * d_mean.sum(0, keepdim=True) / batch
            d_var_bn = var_w[2] * d_var.sum(0, keepdim=True) / batch
            d_mean_in += d_mean_bn
            d_mean_in.addcmul_(mean_in - mean_bn, d_var_bn, value=2.0)
            d_var_in = d_var_in + d_var_bn
        d_mean_in.addcmul_(d_mean, mean_w[0])  # a tensor weight: no host read
        d_var_in = torch.addcmul(d_var_in, d_var, var_w[0])
        size = x[0, 0].numel()
        k1 = d_var_in * (2.0 / size)
        k0 = d_mean_in.div_(size).sub_(k1 * mean_in)
        grads[0] = torch.addcmul(k0, x, k1).addcmul_(g, scale).to(dtypes[0])
        return tuple(grads)


class SwitchableNormFeaturesFunction(torch.autograd.Function):
    """Switchable normalization of (N, C) input, which mixes the LN and BN terms only.

    The mixed statistics are sums row[n] + column[c], so the only (N, C) tensors formed
    are x_hat, the inverse std s and the output forward, and three products backward;
    the rest is done in place (on CPU each fresh (N, C) buffer costs page faults). With
    A = g * weight * s and B = A * x_hat * s, d mu = -A and d var = -B / 2, and::

        dx = A + x * (a[n] + b[c]) + p[n] + q[c]
        a = -v_ln sum_C(B) / C,   p = -w_ln sum_C(A) / C - a * mu_ln
        b = -v_bn sum_N(B) / N,   q = -w_bn sum_N(A) / N - b * mu_bn   (training only)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
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
    ):
        dtype = _compute_dtype(input)
        x = input if input.dtype == dtype else input.to(dtype)
        batch, channels = x.shape
        # Row moments from layer norm's kernel (a stable Welford reduction) with eps 0:
        # 1 / rstd^2 is the biased variance, and 0 for a constant row (rstd = inf).
        _, mean_ln, rstd_ln = torch.native_layer_norm(x, [channels], None, None, 0.0)
        var_ln = rstd_ln.pow(-2)  # (N, 1)
        if training:
            mean_bn, var_bn = torch.batch_norm_update_stats(x, None, None, 0.0)
            update_running_stats(
                running_mean, running_var, mean_bn, var_bn, batch, momentum, "torch"
            )
            mean_bn, var_bn = mean_bn.view(1, channels), var_bn.view(1, channels)
        else:
            mean_bn = running_mean.to(dtype, copy=True).view(1, channels)
            var_bn = running_var.to(dtype, copy=True).view(1, channels)
        mean_w = torch.softmax(mean_logits[1:].to(dtype), 0)  # (LN, BN)
        var_w = torch.softmax(var_logits[1:].to(dtype), 0)
        w_ln, w_bn = mean_w.unbind()
        v_ln, v_bn = var_w.unbind()
        invstd = torch.add(var_ln * v_ln, torch.mul(var_bn, v_bn).add_(eps)).rsqrt_()
        x_hat = torch.sub(x, mean_ln * w_ln).sub_(mean_bn * w_bn).mul_(invstd)
        gamma = x.new_ones(1, channels) if weight is None else weight.to(dtype).view(1, -1)
        if bias is None:
            output = x_hat * gamma
        else:
            output = torch.addcmul(bias.to(dtype).view(1, -1), x_hat, gamma)
        saved = (x_hat, invstd, gamma, mean_w, var_w, mean_ln, mean_bn, var_ln, var_bn)
        return output.to(input.dtype), *saved

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_switchable(ctx, inputs, output[1:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output, *_grad_saved):
        input, x_hat, invstd, gamma, mean_w, var_w, mean_ln, mean_bn, var_ln, var_bn = (
            ctx.saved_tensors
        )
        dtype = _compute_dtype(input)
        x = input if input.dtype == dtype else input.to(dtype)
        dtypes = ctx.dtypes
        g = grad_output if grad_output.dtype == dtype else grad_output.to(dtype)
        batch, channels = x.shape
        grads: list[torch.Tensor | None] = [None] * 10
        sum_g_xhat, sum_g = _column_sums(g, x_hat)
        if dtypes[1] is not None and ctx.needs_input_grad[1]:
            grads[1] = sum_g_xhat.to(dtypes[1])
        if dtypes[2] is not None and ctx.needs_input_grad[2]:
            grads[2] = sum_g.to(dtypes[2])
        a = torch.mul(g, gamma).mul_(invstd)
        b = torch.mul(a, x_hat).mul_(invstd)
        a_rows, a_cols = a.sum(1, keepdim=True), a.sum(0, keepdim=True)
        b_rows, b_cols = b.sum(1, keepdim=True), b.sum(0, keepdim=True)
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            # softmax over (LN, BN) only: d logit_ln = w_ln w_bn (d_ln - d_bn) = -d logit_bn
            signs = x.new_tensor([0.0, 1.0, -1.0])
            for index, weights, d_ln_minus_bn in (
                (3, mean_w, (a_cols * mean_bn).sum() - (a_rows * mean_ln).sum()),
                (4, var_w, ((b_cols * var_bn).sum() - (b_rows * var_ln).sum()) * 0.5),
            ):
                if ctx.needs_input_grad[index]:
                    grads[index] = (signs * (weights.prod() * d_ln_minus_bn)).to(dtypes[index])
        if ctx.needs_input_grad[0]:
            w_ln, w_bn = mean_w.unbind()
            v_ln, v_bn = var_w.unbind()
            coefficient_rows = b_rows * (v_ln * (-1.0 / channels))
            grad = a.addcmul_(x, coefficient_rows)
            grad.add_(a_rows * (w_ln * (-1.0 / channels)) - coefficient_rows * mean_ln)
            if ctx.training:
                coefficient_cols = b_cols * (v_bn * (-1.0 / batch))
                grad.addcmul_(x, coefficient_cols)
                grad.add_(a_cols * (w_bn * (-1.0 / batch)) - coefficient_cols * mean_bn)
            grads[0] = grad if grad.dtype == dtypes[0] else grad.to(dtypes[0])
        return tuple(grads)


def _instance_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of each (sample, channel) of (N, C, *) x, as (N, C, 1, ...).

    (A mean and a centered mean square: faster than torch's batch-norm statistics kernel on
    the (1, N * C, S) view, which walks each instance alone.)
    """
    spatial = tuple(range(2, x.ndim))
    mean = x.mean(spatial, keepdim=True)
    return mean, _mean_squared_deviation(x, mean, spatial)


def _instance_sums(
    g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of g and of g * (x - mean) over each (sample, channel) of (N, C, *) tensors,
    as (N, C, 1, ...); ``mean`` is (N, C, 1, ...)."""
    n, c = x.shape[:2]
    if x.is_contiguous() and g.is_contiguous():
        # torch's batch-norm backward kernel on the (1, N * C, S) views, without a temporary
        sum_centered, sum_g = _channel_sums(
            g.view(1, n * c, -1), x.view(1, n * c, -1), mean.reshape(n * c), x.new_ones(n * c)
        )
        return sum_g.view(mean.shape), sum_centered.view(mean.shape)
    spatial = tuple(range(2, x.ndim))
    return (
        g.sum(spatial, keepdim=True),
        torch.sub(x, mean).mul_(g).sum(spatial, keepdim=True),
    )


def _column_sums(g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C,) sums over N of g * x and of g, for (N, C) tensors, without an (N, C) temporary."""
    channels = x.shape[1]
    return _channel_sums(g, x, x.new_zeros(channels), x.new_ones(channels))


def _channel_sums(
    g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel of (N, C, *) tensors, the sums of g * (x - mean) * invstd and of g
    (``mean`` and ``invstd`` (C,)), from torch's batch-norm backward kernel (which forms
    x - mean before multiplying: stable for inputs with a large mean).

    The kernel is called in its training form with a unit weight, although the input
    gradient is not asked for: the only form whose vmap rule returns both sums, so the
    layers built on it also train inside ``vmap`` (normlab.experiment.batched_layers).
    """
    channels = x.shape[1]
    _, sum_centered, sum_g = torch.ops.aten.native_batch_norm_backward(
        g,
        x,
        invstd.new_ones(channels),
        None,
        None,
        mean.contiguous(),  # a stride-0 view is misread on (N, C) input
        invstd.contiguous(),
        True,
        0.0,
        [False, True, True],
    )
    return sum_centered, sum_g


def _mixing_weights(
    logits: torch.Tensor, terms: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """(3,) softmax of ``logits`` over ``terms``, 0 for the terms left out."""
    weights = logits.new_zeros(3, dtype=dtype)
    weights[list(terms)] = torch.softmax(logits[list(terms)].to(dtype), 0)
    return weights


def _mean_squared_deviation(
    x: torch.Tensor, mean: torch.Tensor, dims: tuple[int, ...]
) -> torch.Tensor:
    """mean((x - mean)^2) over ``dims``, keeping them: the second pass of a two-pass variance."""
    return F.mse_loss(x, mean.expand_as(x), reduction="none").mean(dims, keepdim=True)
