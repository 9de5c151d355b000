"""Drop-in parity of normlab.keras with the Keras layers it stands in for (issue 15).

Oracle: Keras' own layers on the torch backend (keras.layers.BatchNormalization, Conv2D,
Dense), called with the same arguments, masks and weights; the cases come from Keras' own
tests (keras/src/layers/normalization/batch_normalization_test.py). Keras' BatchNormalization
computes in float32, so its inputs hold float32 values and the comparisons use float32's
tolerance.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.testing import assert_close

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("normlab.keras is tested on Keras' torch backend", allow_module_level=True)

import normlab.keras as nlk  # noqa: E402

F32 = {"atol": 2e-5, "rtol": 2e-5}
# Keras' torch backend converts variables to numpy (saving, fit) through __array__ without copy=.
KERAS_NUMPY_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword"
)


def batch(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float32 values (as float64) centered on 5 with spread 10, as Keras' test_correctness."""
    gen = torch.Generator().manual_seed(seed)
    return (5.0 + 10.0 * torch.randn(shape, dtype=torch.float64, generator=gen)).float().double()


def value(variable) -> torch.Tensor:
    return variable.value.detach().double()


def same_weights(ours, theirs, seed: int) -> None:
    """Give both built layers the same random value for every weight they share by name."""
    gen = torch.Generator().manual_seed(seed)
    theirs_by_name = {w.path.split("/")[-1]: w for w in theirs.weights}
    for weight in ours.weights:
        name = weight.path.split("/")[-1]
        random = 0.5 + torch.rand(weight.shape, dtype=torch.float64, generator=gen)
        weight.assign(random)
        theirs_by_name[name].assign(random)


# 1. Masks: Keras' mask is the input's shape without its last axis, for every channel axis


MASK_CASES = [
    (shape, axis) for shape in [(6, 4), (5, 2, 3), (4, 3, 5, 2)] for axis in range(len(shape))
]


@pytest.mark.parametrize(("shape", "axis"), MASK_CASES, ids=[f"{s}-axis{a}" for s, a in MASK_CASES])
def test_mask_means_what_it_means_in_keras_for_every_axis(shape, axis):
    """Training and inference outputs and moving statistics equal Keras' layer with the same
    (batch, ...) mask, broadcast over the last axis whatever the channel axis (issue 15: axis=1
    on (batch, steps, features) crashed)."""
    gen = torch.Generator().manual_seed(len(shape) + 10 * axis)
    mask = torch.rand(shape[:-1], generator=gen) > 0.3
    mask.view(-1)[0] = True
    ours = nlk.BatchNormalization(axis=axis, momentum=0.5)
    theirs = keras.layers.BatchNormalization(axis=axis, momentum=0.5)
    ours.build(shape)
    theirs.build(shape)
    same_weights(ours, theirs, seed=axis)
    for step in range(2):
        x = batch(shape, seed=step).float()
        assert_close(ours(x, training=True, mask=mask), theirs(x, training=True, mask=mask), **F32)
        assert_close(value(ours.moving_mean), value(theirs.moving_mean), **F32)
        assert_close(value(ours.moving_variance), value(theirs.moving_variance), **F32)
    x = batch(shape, seed=9).float()
    assert_close(ours(x, training=False, mask=mask), theirs(x, training=False, mask=mask), **F32)


def test_mask_broadcasts_as_keras_test_masked_broadcast_normalization():
    """Keras' test_masked_broadcast_normalization: a (1, 2, 1) mask for (1, 2, 3, 4) input."""
    x = torch.ones(1, 2, 3, 4)
    layer = nlk.BatchNormalization(axis=-1, momentum=0.0, epsilon=1e-3)
    y = layer(x, training=True, mask=torch.ones(1, 2, 1))
    assert_close(y, torch.zeros_like(y), atol=1e-6, rtol=0)
    assert_close(value(layer.moving_mean), torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert_close(
        value(layer.moving_variance), torch.zeros(4, dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_fully_masked_input_as_keras_test_input_fully_masked():
    """Keras' test_input_fully_masked: no value counts, the output is zeros."""
    layer = nlk.BatchNormalization(scale=False, center=False, synchronized=False)
    y = layer(np.zeros((4, 5)), mask=np.zeros((4,), dtype=np.float32), training=True)
    assert_close(y, torch.zeros(4, 5), atol=0, rtol=0)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("shape", [(5, 2, 3), (5, 3, 3, 2)])
def test_masking_layer_mask_as_keras_test_correctness(shape, axis):
    """Keras' test_correctness: a Masking layer's (batch, steps) mask (steps zeroed) in training
    and inference, equal to Keras' layer; the inference output ignores the mask."""
    ours = nlk.BatchNormalization(axis=axis, momentum=0.0)
    theirs = keras.layers.BatchNormalization(axis=axis, momentum=0.0)
    x = batch(shape, seed=3).float().numpy()
    x[:, 1, ...] = 0.0
    x[0, 0, ...] = 0.0
    masked = keras.layers.Masking()(x)
    for training in (True, False, True):
        assert_close(ours(masked, training=training), theirs(masked, training=training), **F32)
        assert_close(value(ours.moving_variance), value(theirs.moving_variance), **F32)
    assert_close(ours(masked, training=False), ours(x, training=False), atol=0, rtol=0)


def test_mask_that_does_not_broadcast_is_refused_with_the_shapes():
    layer = nlk.BatchNormalization(axis=1)
    with pytest.raises(ValueError, match=r"mask shape \(5, 3\).*input shape \(5, 2, 3\)"):
        layer(torch.randn(5, 2, 3), training=True, mask=torch.ones(5, 3, dtype=torch.bool))


# 2. Keras' constructor arguments that normlab does not compute differently


def test_synchronized_false_is_accepted_and_serialized():
    layer = nlk.BatchNormalization(synchronized=False)
    assert layer.get_config()["synchronized"] is False
    assert nlk.BatchNormalization.from_config(layer.get_config()).synchronized is False


def test_synchronized_true_is_refused_with_what_to_use_instead():
    """Keras' own layer refuses it outside TensorFlow; normlab's never synchronizes."""
    with pytest.raises(ValueError, match=r"synchronized=True.*SyncBatchNorm"):
        nlk.BatchNormalization(synchronized=True)


def test_renorm_false_and_its_options_are_accepted_and_serialized():
    """renorm=False: Keras ignores renorm_clipping and renorm_momentum, and stores them."""
    layer = nlk.BatchNormalization(renorm=False, renorm_clipping={"rmax": 2.0}, renorm_momentum=0.9)
    config = layer.get_config()
    assert (config["renorm"], config["renorm_clipping"], config["renorm_momentum"]) == (
        False,
        {"rmax": 2.0},
        0.9,
    )
    assert nlk.BatchNormalization.from_config(config).get_config() == config


def test_renorm_true_is_refused_with_the_batch_renormalization_it_maps_to():
    with pytest.raises(
        ValueError,
        match=r"renorm=True.*normlab.keras.BatchRenormalization\(r_max=3.0, d_max=5.0",
    ):
        nlk.BatchNormalization(
            renorm=True, renorm_clipping={"rmin": 1 / 3, "rmax": 3.0, "dmax": 5.0}
        )


def test_batch_renormalization_refuses_scalar_statistics():
    """It keeps per-channel statistics only (as normlab.BatchRenorm); issue 15: stats="scalar"
    built (1,) statistics that get_config dropped, so a reloaded model's weights did not load."""
    with pytest.raises(ValueError, match=r"per-channel.*BatchNormalization\(stats='scalar'\)"):
        nlk.BatchRenormalization(stats="scalar")
