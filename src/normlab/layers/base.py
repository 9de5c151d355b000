"""The base of normlab's own torch layers, modelled on torch's ``_NormBase``.

:class:`NormBase` owns what every layer shares: ``num_features``, ``eps`` and
``channel_dim`` with their checks, the affine, reset, ``extra_repr``,
versioned state-dict loading and the channels-last layout. :class:`RunningStatsNorm`
adds momentum, running statistics and the step count for the layers that
normalize with batch statistics in training, and each declares in
``running_var_holds`` what its ``running_var`` means, so that the inference,
checkpoint and conversion tools read that instead of testing classes.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import fx, nn

from normlab._checks import (
    check_channel_dim,
    check_eps,
    check_input,
    check_momentum,
    check_num_features,
)
from normlab.functional import with_channels_first

#: What a layer's ``running_var`` holds: the unbiased (n - 1) batch variance (torch),
#: the biased one (Keras), or sigma^2 - eps with sigma a running average of
#: sqrt(var + eps) (batch renormalization).
RunningVar = Literal["unbiased", "biased", "sigma2_minus_eps"]


def symbolic_call(module: nn.Module, input: Any) -> fx.Proxy | None:
    """``module``'s call on ``input`` as one ``call_module`` node while ``torch.fx`` traces
    symbolically (``input`` is a Proxy); None otherwise.

    torch.fx's tracer keeps torch.nn's own modules as single calls (leaves) and traces
    through every other module; a norm layer's forward reads shapes, checks its input and
    counts steps, which a Proxy cannot do. So each normlab layer records itself as a leaf,
    as torch's BatchNorm2d or LayerNorm is: the traced graph calls the layer, which keeps
    its checks, its train/eval switch and its step count when the graph runs. A tracer
    that makes the layer a leaf itself never calls its forward.
    """
    if not isinstance(input, fx.Proxy):
        return None
    tracer = input.tracer
    if not hasattr(tracer, "path_of_module"):  # a bare TracerBase: let it trace through
        return None
    return tracer.create_proxy("call_module", tracer.path_of_module(module), (input,), {})


class NormBase(nn.Module):
    """Shared arguments, checks, affine, reset, repr and state-dict versioning.

    Subclasses implement ``_normalize`` on (N, C, *) input; :meth:`forward`
    checks the input once and, for ``channel_dim=-1``, moves the channels of
    (N, *, C) input to dim 1 and back, so every layer reads either layout with
    the same parameters, buffers and state_dict keys.

    ``_version`` and ``_load_from_state_dict`` follow torch's ``_NormBase``: a
    state_dict saved before version 2 (no ``num_batches_tracked``) loads with
    the step count at 0. A future change of a buffer's meaning raises
    ``_version`` and migrates older state there.
    """

    _version = 2
    #: Attributes shown by ``extra_repr`` after ``num_features``.
    _repr_fields: tuple[str, ...] = ("eps",)

    def __init__(self, num_features: int, eps: float, *, channel_dim: int = 1) -> None:
        # nn.Module's, not super()'s: in a layer that is also torch's _BatchNorm (see
        # normlab.layers.batch_norm) the next class is _BatchNorm, whose arguments and
        # state this class sets itself.
        nn.Module.__init__(self)
        check_num_features(num_features)
        check_eps(eps)
        check_channel_dim(channel_dim)
        self.num_features = num_features
        self.eps = eps
        self.channel_dim = channel_dim

    def _register_affine(
        self, affine: bool, bias: bool, factory: dict[str, Any], *, as_buffers: bool = False
    ) -> None:
        """A (C,) ``weight`` of ones and ``bias`` of zeros (None without affine; no bias with
        ``bias=False``, as torch), as parameters or, for fixed layers, buffers."""
        for name, wanted, value in (
            ("weight", affine, torch.ones(self.num_features, **factory)),
            ("bias", affine and bias, torch.zeros(self.num_features, **factory)),
        ):
            if as_buffers:
                self.register_buffer(name, value if wanted else None)
            else:
                self.register_parameter(name, nn.Parameter(value) if wanted else None)

    def reset_running_stats(self) -> None:
        """Nothing to reset here; layers with running statistics override it."""

    def reset_parameters(self) -> None:
        """Reset the running statistics, then set weight to 1 and bias to 0."""
        self.reset_running_stats()
        with torch.no_grad():
            if self.weight is not None:
                self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        traced = symbolic_call(self, input)
        if traced is not None:
            return traced
        check_input(input, self.num_features, self._get_name(), channel_dim=self.channel_dim)
        return with_channels_first(self._normalize, input, self.channel_dim)

    def _normalize(self, input: torch.Tensor) -> torch.Tensor:
        """The layer's computation on (N, C, *) input, already checked."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        fields = [str(self.num_features)]
        fields += [f"{name}={getattr(self, name)!r}" for name in self._repr_fields]
        if getattr(self, "weight", None) is not None and self.bias is None:
            fields.append("bias=False")
        if self.channel_dim != 1:
            fields.append(f"channel_dim={self.channel_dim}")
        return ", ".join(fields)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        version = local_metadata.get("version", None)
        counter = getattr(self, "num_batches_tracked", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and counter is not None and key not in state_dict:
            # As torch: num_batches_tracked came with version 2; older state starts it at 0.
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class RunningStatsNorm(NormBase):
    """A layer that normalizes with batch statistics in training and keeps running ones.

    Adds ``momentum`` (torch's sense unless the layer says otherwise; None is
    the cumulative average where allowed), ``affine``, ``track_running_stats``,
    the ``running_mean``/``running_var``/``num_batches_tracked`` buffers and
    the step count, which :meth:`_step_momentum` reads and :meth:`_count_step`
    advances once the training forward has succeeded (a refused batch counts
    nothing).
    """

    #: What ``running_var`` holds; see :data:`RunningVar`.
    running_var_holds: RunningVar = "unbiased"
    _repr_fields = ("eps", "momentum", "affine", "track_running_stats")

    def __init__(
        self,
        num_features: int,
        eps: float,
        momentum: float | None,
        affine: bool,
        track_running_stats: bool,
        *,
        bias: bool = True,
        stat_size: int | None = None,
        allow_cumulative: bool = True,
        channel_dim: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, channel_dim=channel_dim)
        check_momentum(momentum, allow_none=allow_cumulative)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        factory = {"device": device, "dtype": dtype}
        self._register_affine(affine, bias, factory)
        size = num_features if stat_size is None else stat_size
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(size, **factory))
            self.register_buffer("running_var", torch.ones(size, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def reset_running_stats(self) -> None:
        """Set running_mean to 0, running_var to 1 and num_batches_tracked to 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def _step_momentum(self) -> float:
        """This forward's momentum: ``momentum``, or for None in training with a step count
        the cumulative average's 1 / (steps including this one), as torch's _BatchNorm."""
        if self.momentum is not None:
            return self.momentum
        if self.training and self.num_batches_tracked is not None:
            return 1.0 / float(self.num_batches_tracked + 1)
        return 0.0

    def _count_step(self) -> None:
        """Count a finished training step in ``num_batches_tracked``."""
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
