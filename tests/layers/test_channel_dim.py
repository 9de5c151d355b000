"""Every kind reads channels on the last dim with ``channel_dim=-1``.

Oracle: the same kind with the default ``channel_dim=1`` on the input with its
channels moved to dim 1 (``x.movedim(-1, 1)``), from the same state: outputs,
input and parameter gradients and buffers over training steps and in eval.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import normlab as nl

C = 6
KINDS = ("bn", "bn-scalar", "brn", "switch", "frozen-bn", "sync-bn", "gn", "in", "ln", "rms")
OPTIONS = {"gn": {"groups": 3}, "brn": {"r_max": 1.5, "d_max": 0.5}}


def _pair(kind: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    last = nl.make_norm(kind, C, channel_dim=-1, dtype=torch.float64, **OPTIONS.get(kind, {}))
    first = nl.make_norm(kind, C, dtype=torch.float64, **OPTIONS.get(kind, {}))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in last.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen, dtype=torch.float64))
    first.load_state_dict(last.state_dict())
    return last, first


@pytest.mark.parametrize("shape", [(5, 7, C), (3, 4, 5, C), (8, C)], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_channels_last_is_the_same_kind_on_moved_dims(kind, shape):
    if kind == "in" and len(shape) == 2:
        pytest.skip("instance norm needs positions")
    last, first = _pair(kind)
    assert list(last.state_dict()) == list(first.state_dict())  # same keys, no wrapper
    gen = torch.Generator().manual_seed(1)
    for step, training in enumerate((True, True, False, True, False)):
        last.train(training)
        first.train(training)
        x = (3.0 + 2.0 * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_()
        moved = x.detach().movedim(-1, 1).requires_grad_()
        upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
        y_last = last(x)
        y_first = first(moved).movedim(1, -1)
        assert y_last.shape == x.shape
        assert_close(y_last, y_first, msg=f"output, step {step}")
        (y_last * upstream).sum().backward()
        (y_first * upstream).sum().backward()
        assert_close(x.grad, moved.grad.movedim(1, -1), msg=f"input grad, step {step}")
        for (name, p_last), p_first in zip(
            last.named_parameters(), first.parameters(), strict=True
        ):
            assert_close(p_last.grad, p_first.grad, msg=f"{name} grad, step {step}")
            p_last.grad = p_first.grad = None
        for (name, b_last), b_first in zip(last.named_buffers(), first.buffers(), strict=True):
            assert_close(b_last, b_first, rtol=0, atol=0, msg=f"{name}, step {step}")


@pytest.mark.parametrize("kind", KINDS)
def test_channels_last_checks_the_last_dim(kind):
    """The channel count is read from the last dim, and a mismatch names it."""
    norm = nl.make_norm(kind, C, channel_dim=-1, **OPTIONS.get(kind, {}))
    with pytest.raises(ValueError, match=r"on dim -1"):
        norm(torch.randn(4, C, 5))


@pytest.mark.parametrize("channel_dim", [0, 2, -2, True])
@pytest.mark.parametrize("kind", KINDS)
def test_other_channel_dims_are_refused(kind, channel_dim):
    with pytest.raises(ValueError, match="channel_dim must be 1"):
        nl.make_norm(kind, C, channel_dim=channel_dim, **OPTIONS.get(kind, {}))


@pytest.mark.parametrize("kind", ["bn", "bn-scalar", "brn", "switch"])
def test_recalibration_reads_the_channels_where_the_layer_does(kind):
    """Precise-BN statistics of a channels-last layer are those of the same kind on the
    moved input (the recorder reads the layer's channel_dim)."""
    last, first = _pair(kind)
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(4, 5, C, generator=gen, dtype=torch.float64) for _ in range(3)]
    nl.inference.recalibrate(last, batches)
    nl.inference.recalibrate(first, [x.movedim(-1, 1) for x in batches])
    assert_close(last.running_mean, first.running_mean)
    assert_close(last.running_var, first.running_var)
