"""Drop-in parity of normlab.keras with the Keras layers it stands in for.

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
    return getattr(variable, "value", variable).detach().double()


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
    (batch, ...) mask, broadcast over the last axis whatever the channel axis (axis=1
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


def test_mask_that_does_not_broadcast_is_refused_with_the_shapes_in_training():
    """In training, where it counts; inference ignores the mask (of the right rank), as Keras."""
    x, mask = torch.randn(5, 2, 3), torch.ones(5, 3, dtype=torch.bool)
    layer = nlk.BatchNormalization(axis=1)
    with pytest.raises(ValueError, match=r"mask shape \(5, 3\).*input shape \(5, 2, 3\)"):
        layer(x, training=True, mask=mask)
    theirs = keras.layers.BatchNormalization(axis=1)
    assert_close(layer(x, training=False, mask=mask), theirs(x, training=False, mask=mask))


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
    """It keeps per-channel statistics only (as normlab.BatchRenorm); stats="scalar"
    built (1,) statistics that get_config dropped, so a reloaded model's weights did not load."""
    with pytest.raises(ValueError, match=r"per-channel.*BatchNormalization\(stats='scalar'\)"):
        nlk.BatchRenormalization(stats="scalar")


# 3. Every constructor argument of keras.layers.BatchNormalization, with the same meaning

# A non-default value for every argument of Keras' layer, in its positional order.
KERAS_BN_ARGS = {
    "axis": 1,
    "momentum": 0.7,
    "epsilon": 1e-2,
    "center": True,
    "scale": True,
    "beta_initializer": keras.initializers.Constant(0.25),
    "gamma_initializer": keras.initializers.Constant(1.5),
    "moving_mean_initializer": keras.initializers.Constant(0.5),
    "moving_variance_initializer": keras.initializers.Constant(2.0),
    "beta_regularizer": keras.regularizers.L2(0.1),
    "gamma_regularizer": keras.regularizers.L1(0.2),
    "beta_constraint": keras.constraints.MaxNorm(1.5),
    "gamma_constraint": keras.constraints.NonNeg(),
    "renorm": False,
    "renorm_clipping": {"rmax": 2.0, "rmin": 0.5},
    "renorm_momentum": 0.9,
    "synchronized": False,
}


def _check_same_layer(ours, theirs, shape) -> None:
    """Same weights (names, shapes, initial values, constraints), regularization losses,
    training and inference outputs and moving statistics."""
    ours.build(shape)
    theirs.build(shape)
    assert [(w.path.split("/")[-1], tuple(w.shape), w.trainable) for w in ours.weights] == [
        (w.path.split("/")[-1], tuple(w.shape), w.trainable) for w in theirs.weights
    ]
    for mine, keras_weight in zip(ours.weights, theirs.weights, strict=True):
        assert_close(value(mine), value(keras_weight), atol=0, rtol=0)
        assert type(mine.constraint) is type(keras_weight.constraint)
    for step in range(2):
        x = batch(shape, seed=20 + step).float()
        assert_close(ours(x, training=True), theirs(x, training=True), **F32)
        assert_close(value(ours.moving_mean), value(theirs.moving_mean), **F32)
        assert_close(value(ours.moving_variance), value(theirs.moving_variance), **F32)
    assert_close(ours(x, training=False), theirs(x, training=False), **F32)
    assert_close(ours(x), theirs(x), **F32)
    regularized = [w for w in ours.trainable_weights if w.regularizer is not None]
    assert len(ours.losses) == len(theirs.losses) == len(regularized)
    for mine, keras_loss in zip(ours.losses, theirs.losses, strict=True):
        assert_close(mine, keras_loss, **F32)


def test_every_keras_argument_has_keras_meaning_positionally_and_by_keyword():
    """Positional (Keras' order) and keyword construction give the layer Keras' does."""
    shape = (6, 3, 5)
    positional = list(KERAS_BN_ARGS.values())
    _check_same_layer(
        nlk.BatchNormalization(*positional), keras.layers.BatchNormalization(*positional), shape
    )
    _check_same_layer(
        nlk.BatchNormalization(**KERAS_BN_ARGS),
        keras.layers.BatchNormalization(**KERAS_BN_ARGS),
        shape,
    )


@pytest.mark.parametrize(
    "overrides",
    [{}, {"axis": -1, "center": False}, {"scale": False, "momentum": 0.0}],
    ids=["all", "no-center", "no-scale"],
)
def test_a_config_written_by_keras_loads_into_normlab(overrides):
    """normlab's from_config takes Keras' layer's get_config; every Keras key comes back
    unchanged from normlab's get_config (plus stats), and the layers compute the same."""
    theirs = keras.layers.BatchNormalization(**{**KERAS_BN_ARGS, **overrides})
    keras_config = theirs.get_config()
    ours = nlk.BatchNormalization.from_config(keras_config)
    config = ours.get_config()
    assert config.pop("stats") == "channel"
    assert config == keras_config
    _check_same_layer(ours, theirs, (6, 3, 5))


@KERAS_NUMPY_WARNING
def test_constraints_apply_in_fit_as_in_keras():
    """gamma_constraint NonNeg and beta_constraint MaxNorm after an optimizer step, as Keras."""
    gen = torch.Generator().manual_seed(5)
    x = batch((16, 3), seed=5).float().numpy()
    target = torch.randn(16, 3, generator=gen).numpy()
    results = []
    for cls in (nlk.BatchNormalization, keras.layers.BatchNormalization):
        keras.utils.set_random_seed(0)
        layer = cls(
            gamma_initializer=keras.initializers.Constant(0.01),
            gamma_constraint=keras.constraints.NonNeg(),
            beta_constraint=keras.constraints.MaxNorm(0.1, axis=0),
        )
        model = keras.Sequential([keras.Input((3,)), layer])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
        model.fit(x, target, batch_size=16, epochs=1, shuffle=False, verbose=0)
        results.append([value(w) for w in layer.weights])
    assert (results[0][0] >= 0).all() and results[0][0].eq(0).any()
    for mine, keras_value in zip(*results, strict=True):
        assert_close(mine, keras_value, **F32)


# 4. Keras' own test harness and cases (batch_normalization_test.py)


def _keras_layer_test(cls, **kwargs) -> None:
    """Keras' run_layer_test: weights, losses, masking, config and .keras round trips, fit."""
    from keras.src import testing

    testing.TestCase().run_layer_test(
        cls,
        expected_num_seed_generators=0,
        expected_num_losses=kwargs.pop("expected_num_losses", 0),
        **kwargs,
    )


@KERAS_NUMPY_WARNING
@pytest.mark.filterwarnings("ignore:`shuffle=True` was passed")
@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
@pytest.mark.parametrize(
    ("init_kwargs", "input_shape", "trainable", "losses"),
    [
        ({"center": True, "scale": True}, (2, 3), 2, 0),
        ({"center": False, "scale": False}, (2, 3), 0, 0),
        (
            {"center": True, "scale": True, "beta_regularizer": "l2", "gamma_regularizer": "l2"},
            (2, 4, 4, 3),
            2,
            2,
        ),
        ({"stats": "scalar"}, (2, 4, 4, 3), 2, 0),
    ],
    ids=["vector", "no-affine", "image-regularized", "scalar"],
)
def test_keras_test_bn_basics(init_kwargs, input_shape, trainable, losses):
    _keras_layer_test(
        nlk.BatchNormalization,
        init_kwargs=init_kwargs,
        call_kwargs={"training": True},
        input_shape=input_shape,
        expected_output_shape=input_shape,
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=2,
        expected_num_losses=losses,
        supports_masking=True,
    )


@KERAS_NUMPY_WARNING
@pytest.mark.filterwarnings("ignore:`shuffle=True` was passed")
@pytest.mark.parametrize(
    ("cls", "init_kwargs", "input_shape", "weights", "masking"),
    [
        (nlk.BatchRenormalization, {"r_max": 2.0}, (2, 4, 4, 3), (2, 3), True),
        (nlk.SwitchableNormalization, {"axis": 1}, (2, 3, 4, 4), (4, 2), False),
        (nlk.WeightStandardizedConv2D, {"filters": 2, "kernel_size": 3}, (2, 5, 5, 3), (2, 0), 0),
        (nlk.WeightStandardizedDense, {"units": 2, "use_bias": False}, (2, 3), (1, 0), True),
    ],
    ids=["renorm", "switch", "ws-conv", "ws-dense"],
)
def test_keras_layer_harness_accepts_every_normlab_layer(
    cls, init_kwargs, input_shape, weights, masking
):
    """Masking support as the Keras original's (BatchNormalization, Conv2D, Dense)."""
    layer = cls(**init_kwargs)
    _keras_layer_test(
        cls,
        init_kwargs=init_kwargs,
        input_shape=input_shape,
        expected_output_shape=tuple(layer.compute_output_shape(input_shape)),
        expected_num_trainable_weights=weights[0],
        expected_num_non_trainable_weights=weights[1],
        supports_masking=bool(masking),
    )


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("input_shape", [(5, 2, 3), (5, 3, 3, 2)])
@pytest.mark.parametrize("initializers", [("zeros", "zeros"), ("ones", "ones"), ("zeros", "ones")])
def test_keras_test_correctness(axis, input_shape, initializers):
    """Keras' test_correctness, with Keras' layer as the oracle besides its own assertions."""
    kwargs = {
        "axis": axis,
        "momentum": 0,
        "moving_mean_initializer": initializers[0],
        "moving_variance_initializer": initializers[1],
    }
    ours = nlk.BatchNormalization(**kwargs)
    theirs = keras.layers.BatchNormalization(**kwargs)
    x = batch(input_shape, seed=axis).float().numpy()
    out, expected = x, x
    for _ in range(3):
        out, expected = ours(out, training=True), theirs(expected, training=True)
        assert_close(out, expected, **F32)
    dims = tuple(d for d in range(len(input_shape)) if d != axis % len(input_shape))
    assert_close(out.mean(dims), torch.zeros(input_shape[axis]), atol=1e-3, rtol=0)
    assert_close(out.std(dims, correction=0), torch.ones(input_shape[axis]), atol=1e-3, rtol=0)
    assert_close(value(ours.moving_mean), value(theirs.moving_mean), **F32)
    assert_close(value(ours.moving_variance), value(theirs.moving_variance), **F32)
    assert not torch.allclose(ours(x, training=False), ours(x, training=True))
    theirs(x, training=True)
    # momentum 0: inference after a training step on x normalizes as that step did
    assert_close(ours(x, training=False), ours(x, training=True), atol=1e-4, rtol=1e-4)
    assert_close(ours(x, training=False), theirs(x, training=False), **F32)


@KERAS_NUMPY_WARNING
@pytest.mark.parametrize("mask_value", [0.0, 0.1, 1])
def test_keras_test_batchnorm_ignore_masked_values(mask_value):
    """Keras' test_bachnorm_ignore_masked_values: Masking + fit, moving statistics of the kept
    steps only."""
    padded = np.array(
        [[[1, 5], [2, 5], [mask_value, mask_value], [mask_value, mask_value]]] * 10,
        dtype="float32",
    )
    inputs = keras.Input((None, 2))
    normed = nlk.BatchNormalization(momentum=0.0)(keras.layers.Masking(mask_value)(inputs))
    model = keras.Model(inputs, normed)
    model.compile("rmsprop", loss="mse")
    model.fit(x=padded, y=padded, batch_size=10, epochs=5, verbose=0)
    layer = model.layers[2]
    assert_close(value(layer.moving_mean), torch.tensor([1.5, 5.0], dtype=torch.float64))
    assert_close(value(layer.moving_variance), torch.tensor([0.25, 0.0], dtype=torch.float64))


def test_keras_test_trainable_behavior():
    """trainable=False: no trainable weights, inference output even with training=True."""
    layer = nlk.BatchNormalization(axis=-1, momentum=0.8, epsilon=1e-7)
    layer.build((1, 4, 4, 3))
    layer.trainable = False
    assert (len(layer.weights), len(layer.trainable_weights)) == (4, 0)
    x = batch((200, 4, 4, 3), seed=1).float()
    assert_close(layer(x, training=True), x, **F32)
    layer.trainable = True
    assert (len(layer.weights), len(layer.trainable_weights)) == (4, 2)


def test_keras_test_large_value_within_autocast_scope():
    """Moving statistics are not autocast: a float16 scope keeps 70000."""
    layer = nlk.BatchNormalization()
    layer.build((1, 4, 4, 3))
    large = torch.full((3,), 70000.0)
    with keras.src.backend.AutocastScope("float16"):
        layer.moving_variance.assign(large)
        assert_close(layer.moving_variance.value, large, atol=0, rtol=0)


# 5. .keras files that mix Keras' and normlab's layers


@KERAS_NUMPY_WARNING
def test_model_mixing_keras_and_normlab_layers_saves_and_loads(tmp_path):
    """A functional model with Keras' and normlab's layers, trained with fit, round-trips
    through a .keras file without custom_objects: same configs, weights and outputs."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = nlk.BatchNormalization(momentum=0.5)(x)
    x = nlk.WeightStandardizedConv2D(4, 3, strides=2, use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.5)(x)
    x = nlk.SwitchableNormalization(momentum=0.5)(x)
    x = nlk.BatchRenormalization(momentum=0.5, r_max=2.0, d_max=1.0)(x)
    x = keras.layers.Flatten()(x)
    x = nlk.WeightStandardizedDense(6, activation="relu")(x)
    x = nlk.BatchNormalization(stats="scalar", momentum=0.5)(x)
    outputs = keras.layers.Dense(2)(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    gen = torch.Generator().manual_seed(7)
    data = torch.randn(32, 8, 8, 3, generator=gen).numpy()
    model.fit(data, torch.randn(32, 2, generator=gen).numpy(), batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "mixed.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for saved, restored in zip(model.layers, loaded.layers, strict=True):
        assert type(restored) is type(saved)
        assert restored.get_config() == saved.get_config()
    for saved, restored in zip(model.weights, loaded.weights, strict=True):
        assert_close(value(restored), value(saved), atol=0, rtol=0)
    x = torch.from_numpy(data[:8])
    assert_close(loaded(x, training=False), model(x, training=False), atol=0, rtol=0)


# 6. The weight-standardized layers take every argument of Keras' Conv2D and Dense


def _standardized(kernel: torch.Tensor, eps: float) -> torch.Tensor:
    """Each output unit's weights (last axis) standardized over the others, float64."""
    w = kernel.double()
    dims = tuple(range(w.ndim - 1))
    mean = w.mean(dims, keepdim=True)
    return (w - mean) / torch.sqrt((w - mean).square().mean(dims, keepdim=True) + eps)


CONV_CASES = {
    "all": dict(
        strides=(2, 1),
        padding="same",
        data_format="channels_first",
        dilation_rate=1,
        groups=2,
        activation="relu",
        use_bias=True,
        kernel_initializer="he_normal",
        bias_initializer=keras.initializers.Constant(0.1),
        kernel_regularizer=keras.regularizers.L2(0.01),
        bias_regularizer=keras.regularizers.L1(0.01),
        activity_regularizer=keras.regularizers.L2(0.001),
        kernel_constraint=None,
        bias_constraint=keras.constraints.MaxNorm(2.0),
        lora_rank=2,
        lora_alpha=4,
    ),
    "dilated": dict(dilation_rate=(2, 1), padding="valid", use_bias=False),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_weight_standardized_conv2d_takes_every_conv2d_argument(case):
    """Conv2D's arguments positionally and by keyword: Conv2D's config (plus epsilon), its
    losses, and Conv2D's output with the standardized kernel."""
    kwargs = CONV_CASES[case]
    keras_names = ["strides", "padding", "data_format", "dilation_rate", "groups", "activation"]
    positional = [4, 3, *(kwargs[name] for name in keras_names if name in kwargs)]
    if len(positional) != 2 + len(keras_names):
        positional = [4, 3]
    rest = {k: v for k, v in kwargs.items() if k not in keras_names or len(positional) == 2}
    theirs = keras.layers.Conv2D(*positional, **rest, dtype="float64")
    ours = nlk.WeightStandardizedConv2D(*positional, **rest, epsilon=1e-4, dtype="float64")
    config = ours.get_config()
    assert config.pop("epsilon") == 1e-4
    assert {k: v for k, v in config.items() if k != "name"} == {
        k: v for k, v in theirs.get_config().items() if k != "name"
    }
    channels_first = kwargs.get("data_format") == "channels_first"
    shape = (3, 4, 9, 8) if channels_first else (3, 9, 8, 4)
    x = batch(shape, seed=11)
    ours.build(shape)
    theirs.build(shape)
    for mine, keras_weight in zip(ours.weights, theirs.weights, strict=True):
        random = torch.randn(mine.shape, dtype=torch.float64, generator=torch.Generator())
        mine.assign(random)
        keras_weight.assign(random)
    y = ours(x)
    theirs._kernel.assign(_standardized(value(theirs.kernel), 1e-4))
    if theirs.lora_enabled:
        theirs.lora_kernel_b.assign(torch.zeros(theirs.lora_kernel_b.shape, dtype=torch.float64))
        theirs._kernel.assign(_standardized(value(ours.kernel), 1e-4))
    assert_close(y, theirs(x), atol=1e-10, rtol=1e-10)
    assert len(ours.losses) == len(theirs.losses)


def test_weight_standardized_dense_takes_every_dense_argument():
    """Dense's arguments positionally (units, activation, use_bias, ...) and lora: Dense's
    config (plus epsilon) and Dense's output with the standardized kernel."""
    kwargs = dict(
        kernel_initializer="he_uniform",
        bias_initializer=keras.initializers.Constant(0.2),
        kernel_regularizer=keras.regularizers.L2(0.01),
        bias_regularizer=keras.regularizers.L1(0.01),
        activity_regularizer=keras.regularizers.L2(0.001),
        kernel_constraint=None,
        bias_constraint=keras.constraints.NonNeg(),
        lora_rank=2,
        lora_alpha=3,
        quantization_config=None,
    )
    theirs = keras.layers.Dense(5, "tanh", True, **kwargs, dtype="float64")
    ours = nlk.WeightStandardizedDense(5, "tanh", True, **kwargs, dtype="float64")
    config = ours.get_config()
    assert config.pop("epsilon") == 1e-5
    assert {k: v for k, v in config.items() if k != "name"} == {
        k: v for k, v in theirs.get_config().items() if k != "name"
    }
    x = batch((6, 4), seed=12)
    ours.build(x.shape)
    theirs.build(x.shape)
    gen = torch.Generator().manual_seed(12)
    for mine, keras_weight in zip(ours.weights, theirs.weights, strict=True):
        random = torch.randn(mine.shape, dtype=torch.float64, generator=gen)
        mine.assign(random)
        keras_weight.assign(random)
    y = ours(x)
    theirs.lora_kernel_b.assign(torch.zeros(theirs.lora_kernel_b.shape, dtype=torch.float64))
    theirs._kernel.assign(_standardized(value(ours.kernel), 1e-5))
    assert_close(y, theirs(x), atol=1e-10, rtol=1e-10)
    assert len(ours.losses) == len(theirs.losses)


def test_a_config_written_by_keras_conv2d_and_dense_loads_into_the_ws_layers():
    conv = keras.layers.Conv2D(3, 2, strides=2, padding="same", use_bias=False)
    dense = keras.layers.Dense(4, activation="relu")
    for theirs, cls in ((conv, nlk.WeightStandardizedConv2D), (dense, nlk.WeightStandardizedDense)):
        config = cls.from_config(theirs.get_config()).get_config()
        assert config.pop("epsilon") == 1e-5
        assert config == theirs.get_config()


def test_weight_standardized_dense_refuses_quantization_with_the_reason():
    """A quantized Dense computes with its quantized kernel, never the standardized one."""
    with pytest.raises(ValueError, match=r"quantiz.*standardiz"):
        nlk.WeightStandardizedDense(
            4, quantization_config=keras.quantizers.Int8QuantizationConfig()
        )
