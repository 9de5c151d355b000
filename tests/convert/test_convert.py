"""normlab.convert: batch norm layers and Sequential models between Keras 3 and torch.

Oracles are the original layer or model (keras.layers.* on the torch backend, torch.nn
modules), Keras' own training step (``train_on_batch``) and float64 formulas of the
convention table in DESIGN.md; never normlab.convert itself.

Tolerances: the converted model performs the same float32 operations as the original, in
another order (Keras' batch norm multiplies by rsqrt(var + eps), torch divides by
sqrt(var + eps); convolutions run through different memory layouts), so outputs of order 1
agree to a few float32 ulps: atol = rtol = 1e-5. Keras 3.15's result_type maps float64 to
float32 (even result_type("float64", "float64")), so its BatchNormalization,
LayerNormalization and Dense compute float64 with float32 precision: outputs of float64
Keras models keep float32's tolerance; float64 weights must still round-trip bit for bit,
and normlab.keras' layers, which compute float64 in float64, get 1e-10.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.testing import assert_close

import normlab as nl

os.environ.setdefault("KERAS_BACKEND", "torch")

# Keras 3.15's torch backend turns its training logs into numpy with np.array(tensor), which
# numpy 2 flags because torch's __array__ takes no copy argument: Keras' warning, not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
C = 6
F32_TOL = {"atol": 1e-5, "rtol": 1e-5}
F64_TOL = {"atol": 1e-10, "rtol": 1e-10}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@pytest.fixture(scope="module")
def keras():
    """Keras 3 on the torch backend, or skip."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("these tests compare with Keras on the torch backend (KERAS_BACKEND=torch)")
    return keras


@pytest.fixture(scope="module")
def convert(keras):
    from normlab import convert

    return convert


@pytest.fixture(scope="module")
def nk(keras):
    import normlab.keras as nk

    return nk


def to_numpy(keras, value) -> np.ndarray:
    """A Keras variable or torch-backend tensor as numpy (np.array of either warns)."""
    if isinstance(value, keras.Variable):
        value = value.value
    return value.detach().cpu().numpy()


def keras_eval(keras, layer, x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """The Keras layer or model in inference mode on torch-layout ``x``, in torch's layout."""
    inputs = x.numpy()
    if channels_last and x.ndim > 2:
        inputs = np.moveaxis(inputs, 1, -1)
    out = to_numpy(keras, layer(inputs, training=False))
    if channels_last and out.ndim > 2:
        out = np.moveaxis(out, -1, 1)
    return torch.from_numpy(out.copy())


def torch_eval(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module(x)


def randomize_keras_batchnorm(keras, layer, rng: np.random.Generator) -> None:
    """Non-trivial gamma, beta and moving statistics (variance in [0.5, 2])."""
    for variable in (layer.gamma, layer.beta, layer.moving_mean):
        if variable is not None:
            variable.assign(rng.normal(size=variable.shape))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape))


def randomize_torch_batchnorm(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        if module.affine:
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen))
        module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen))
        module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) * 1.5 + 0.5)


def randomize_models_batchnorms(keras, model, seed: int = 0) -> None:
    """Random affine and moving statistics in every batch norm of a Keras or torch model."""
    if isinstance(model, nn.Module):
        gen = torch.Generator().manual_seed(seed)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nl.BatchNorm):
                randomize_torch_batchnorm(module, gen)
        return
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if hasattr(layer, "moving_variance"):
            randomize_keras_batchnorm(keras, layer, rng)


def torch_input(shape, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


# --------------------------------------------------------------------------------------------
# 1. batch norm layers, Keras -> torch


TORCH_BN_BY_NDIM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
SHAPES = {2: (16, C), 3: (8, C, 5), 4: (4, C, 5, 3), 5: (2, C, 3, 4, 2)}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize(("center", "scale"), [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("convention", ["torch", "keras"])
@pytest.mark.parametrize("ndim", [2, 3, 4, 5])
def test_keras_batchnorm_to_torch_keeps_state_and_eval_outputs(
    keras, convert, ndim, convention, center, scale, dtype
):
    """Type, momentum (1 - m for torch), eps (Keras' 1e-3, not torch's 1e-5), the moving
    statistics as stored, and the eval outputs of Keras' layer."""
    layer = keras.layers.BatchNormalization(center=center, scale=scale, dtype=dtype)
    keras_shape = (None, *SHAPES[ndim][2:], C)
    layer.build(keras_shape)
    randomize_keras_batchnorm(keras, layer, np.random.default_rng(ndim))
    module = convert.batchnorm_keras_to_torch(layer, convention=convention)
    if convention == "torch":
        assert type(module) is TORCH_BN_BY_NDIM[ndim]
        assert module.momentum == pytest.approx(1 - layer.momentum, abs=1e-15)
    else:
        assert type(module) is nl.BatchNorm
        assert (module.convention, module.stats, module.momentum) == ("keras", "channel", 0.99)
    assert module.eps == layer.epsilon == 1e-3
    assert module.running_mean.dtype == DTYPES[dtype]
    assert_close(module.running_mean.numpy(), to_numpy(keras, layer.moving_mean), **F64_TOL)
    assert_close(module.running_var.numpy(), to_numpy(keras, layer.moving_variance), **F64_TOL)
    assert module.affine == (center or scale)
    if center and not scale:
        assert not module.weight.requires_grad
        assert module.bias.requires_grad
    x = torch_input(SHAPES[ndim], DTYPES[dtype])
    assert_close(torch_eval(module, x), keras_eval(keras, layer, x).to(x.dtype), **F32_TOL)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("convention", ["torch", "keras"])
@pytest.mark.parametrize("ndim", [2, 4])
def test_normlab_keras_scalar_batchnorm_to_torch(keras, convert, nk, ndim, convention, dtype):
    """normlab.keras' stats="scalar" layer becomes normlab.BatchNorm(stats="scalar"); it
    computes in float64 for float64, so float64 outputs agree to float64 precision."""
    layer = nk.BatchNormalization(stats="scalar", momentum=0.9, epsilon=1e-4, dtype=dtype)
    layer.build((None, *SHAPES[ndim][2:], C))
    randomize_keras_batchnorm(keras, layer, np.random.default_rng(7))
    module = convert.batchnorm_keras_to_torch(layer, convention=convention)
    assert type(module) is nl.BatchNorm
    assert (module.stats, module.convention, module.eps) == ("scalar", convention, 1e-4)
    assert module.momentum == pytest.approx(0.9 if convention == "keras" else 0.1, abs=1e-15)
    assert module.running_mean.shape == module.running_var.shape == (1,)
    x = torch_input(SHAPES[ndim], DTYPES[dtype])
    tol = F64_TOL if dtype == "float64" else F32_TOL
    assert_close(torch_eval(module, x), keras_eval(keras, layer, x), **tol)


def test_channels_first_keras_batchnorm_converts_without_moving_axes(keras, convert):
    """A Keras layer on axis=1 already has torch's layout."""
    layer = keras.layers.BatchNormalization(axis=1)
    layer.build(SHAPES[4])
    randomize_keras_batchnorm(keras, layer, np.random.default_rng(3))
    module = convert.batchnorm_keras_to_torch(layer)
    x = torch_input(SHAPES[4])
    assert_close(torch_eval(module, x), keras_eval(keras, layer, x, channels_last=False), **F32_TOL)


# --------------------------------------------------------------------------------------------
# 2. batch norm layers, torch -> Keras


TORCH_BATCHNORMS = {
    "BatchNorm1d-2d-input": (lambda **kw: nn.BatchNorm1d(C, momentum=0.2, eps=1e-4, **kw), 2),
    "BatchNorm1d-3d-input": (lambda **kw: nn.BatchNorm1d(C, **kw), 3),
    "BatchNorm2d": (lambda **kw: nn.BatchNorm2d(C, **kw), 4),
    "BatchNorm3d": (lambda **kw: nn.BatchNorm3d(C, **kw), 5),
    "nl-torch": (lambda **kw: nl.BatchNorm(C, momentum=0.3, **kw), 4),
    "nl-keras": (lambda **kw: nl.BatchNorm(C, convention="keras", momentum=0.9, **kw), 4),
    "nl-scalar-torch": (lambda **kw: nl.BatchNorm(C, stats="scalar", **kw), 2),
    "nl-scalar-keras": (lambda **kw: nl.BatchNorm(C, stats="scalar", convention="keras", **kw), 4),
}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("kind", list(TORCH_BATCHNORMS))
def test_torch_batchnorm_to_keras_keeps_state_and_eval_outputs(
    keras, convert, nk, kind, affine, dtype
):
    """Keras-sense momentum (1 - m for the torch convention), eps kept, running statistics as
    stored, channels last, eval outputs of the torch module."""
    factory, ndim = TORCH_BATCHNORMS[kind]
    module = factory(affine=affine, dtype=DTYPES[dtype])
    randomize_torch_batchnorm(module, torch.Generator().manual_seed(len(kind)))
    input_ndim = ndim if kind in ("BatchNorm1d-3d-input", "nl-torch", "nl-keras") else None
    if kind == "nl-scalar-keras":
        input_ndim = 4
    layer = convert.batchnorm_torch_to_keras(module, input_ndim=input_ndim)
    scalar = getattr(module, "stats", "channel") == "scalar"
    assert type(layer) is (nk.BatchNormalization if scalar else keras.layers.BatchNormalization)
    assert layer.built
    assert layer.axis == -1
    keras_momentum = module.momentum if getattr(module, "convention", "") == "keras" else None
    if keras_momentum is None:
        keras_momentum = 1 - module.momentum
    assert layer.momentum == pytest.approx(keras_momentum, abs=1e-15)
    assert layer.epsilon == module.eps
    assert layer.center == layer.scale == affine
    assert layer.moving_mean.dtype == dtype
    assert_close(to_numpy(keras, layer.moving_mean), module.running_mean.numpy(), **F64_TOL)
    assert_close(to_numpy(keras, layer.moving_variance), module.running_var.numpy(), **F64_TOL)
    x = torch_input(SHAPES[ndim], DTYPES[dtype])
    tol = F64_TOL if scalar and dtype == "float64" else F32_TOL
    assert_close(keras_eval(keras, layer, x).to(x.dtype), torch_eval(module, x), **tol)


# --------------------------------------------------------------------------------------------
# 3. layer round trips


@pytest.mark.parametrize("convention", ["torch", "keras"])
@pytest.mark.parametrize(("center", "scale"), [(True, True), (False, True), (True, False)])
def test_keras_torch_keras_round_trip_gives_back_the_layer(
    keras, convert, convention, center, scale
):
    layer = keras.layers.BatchNormalization(momentum=0.95, epsilon=2e-3, center=center, scale=scale)
    layer.build((None, 5, 5, C))
    randomize_keras_batchnorm(keras, layer, np.random.default_rng(11))
    module = convert.batchnorm_keras_to_torch(layer, convention=convention)
    back = convert.batchnorm_torch_to_keras(module, input_ndim=4)
    assert type(back) is keras.layers.BatchNormalization
    assert (back.momentum, back.epsilon, back.center, back.scale) == (0.95, 2e-3, center, scale)
    assert [w.path.rsplit("/", 1)[-1] for w in back.weights] == [
        w.path.rsplit("/", 1)[-1] for w in layer.weights
    ]
    for ours, theirs in zip(back.weights, layer.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(keras, ours), to_numpy(keras, theirs))


@pytest.mark.parametrize("kind", list(TORCH_BATCHNORMS))
def test_torch_keras_torch_round_trip_gives_back_the_module(keras, convert, kind):
    factory, ndim = TORCH_BATCHNORMS[kind]
    module = factory(affine=True)
    randomize_torch_batchnorm(module, torch.Generator().manual_seed(5))
    convention = getattr(module, "convention", "torch")
    layer = convert.batchnorm_torch_to_keras(module, input_ndim=ndim)
    back = convert.batchnorm_keras_to_torch(layer, convention=convention)
    plain = convention == "torch" and getattr(module, "stats", "channel") == "channel"
    assert type(back) is (TORCH_BN_BY_NDIM[ndim] if plain else nl.BatchNorm)
    assert back.momentum == pytest.approx(module.momentum, abs=1e-15)
    assert back.eps == module.eps
    expected = {k: v for k, v in module.state_dict().items() if k != "num_batches_tracked"}
    actual = {k: v for k, v in back.state_dict().items() if k != "num_batches_tracked"}
    assert_close(actual, expected, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------
# 4. training after conversion: the conventions' running-statistics updates


def biased_batch_variance(x: torch.Tensor) -> torch.Tensor:
    """Per-channel variance over every dim but 1, divided by n, in float64."""
    x = x.double()
    dims = (0, *range(2, x.ndim))
    return (x - x.mean(dims, keepdim=True)).square().mean(dims)


@pytest.mark.parametrize("ndim", [2, 4])
def test_keras_convention_trains_on_as_keras_and_torch_convention_as_torch(keras, convert, ndim):
    """One training step after conversion from the same state:

    - convention="keras": training outputs and both moving statistics equal Keras' own step.
    - convention="torch": same outputs and moving mean; the moving variance blends in the
      unbiased batch variance, so it exceeds Keras' by (1 - m) * var_batch / (n - 1) (float64
      formula), n = values per channel.
    """
    layer = keras.layers.BatchNormalization(momentum=0.9)
    shape = SHAPES[ndim]
    layer.build((None, *shape[2:], C))
    randomize_keras_batchnorm(keras, layer, np.random.default_rng(ndim))
    as_keras = convert.batchnorm_keras_to_torch(layer, convention="keras")
    as_torch = convert.batchnorm_keras_to_torch(layer, convention="torch")
    x = torch_input(shape, seed=ndim) * 2 + 0.5
    keras_x = x.numpy() if ndim == 2 else np.moveaxis(x.numpy(), 1, -1)
    keras_y = to_numpy(keras, layer(keras_x, training=True))
    keras_y = torch.from_numpy(keras_y if ndim == 2 else np.moveaxis(keras_y, -1, 1).copy())
    moving_mean = torch.from_numpy(to_numpy(keras, layer.moving_mean))
    moving_var = torch.from_numpy(to_numpy(keras, layer.moving_variance))
    for module in (as_keras, as_torch):
        module.train()
        assert_close(module(x).detach(), keras_y, **F32_TOL)
        assert_close(module.running_mean, moving_mean, **F32_TOL)
    assert_close(as_keras.running_var, moving_var, **F32_TOL)
    n = x.numel() // C
    excess = (1 - 0.9) * biased_batch_variance(x) / (n - 1)
    assert (excess > 1e-3).all()  # large enough for the assertion below to tell them apart
    assert_close((as_torch.running_var - moving_var).double(), excess, **F32_TOL)


def test_scalar_stats_train_on_as_normlab_keras(keras, convert, nk):
    """normlab.keras' scalar layer and its conversion (convention="keras") take the same step."""
    layer = nk.BatchNormalization(stats="scalar", momentum=0.8)
    layer.build((None, 5, 3, C))
    randomize_keras_batchnorm(keras, layer, np.random.default_rng(2))
    module = convert.batchnorm_keras_to_torch(layer, convention="keras").train()
    x = torch_input(SHAPES[4]) * 3 - 1
    keras_y = to_numpy(keras, layer(np.moveaxis(x.numpy(), 1, -1), training=True))
    assert_close(module(x).detach(), torch.from_numpy(np.moveaxis(keras_y, -1, 1)), **F32_TOL)
    assert_close(module.running_mean.numpy(), to_numpy(keras, layer.moving_mean), **F32_TOL)
    assert_close(module.running_var.numpy(), to_numpy(keras, layer.moving_variance), **F32_TOL)


# --------------------------------------------------------------------------------------------
# 5. Sequential models


def keras_cnn(keras, dtype: str = "float32", norm: bool = True):
    """Conv (same, stride 1), BN, Conv (same, stride 2, odd size: asymmetric padding), Conv
    (valid), pool, Flatten with C > 1, BN and LN on the flat features, Dense."""
    layers = keras.layers
    norm_layers = (lambda: [layers.BatchNormalization(dtype=dtype)]) if norm else (lambda: [])
    return keras.Sequential(
        [
            keras.Input((10, 9, 3), dtype=dtype),
            layers.Conv2D(4, 3, padding="same", activation="relu", dtype=dtype),
            *norm_layers(),
            layers.Conv2D(5, 3, strides=2, padding="same", dtype=dtype),
            layers.ReLU(),
            layers.Conv2D(6, (3, 1), dilation_rate=(1, 2), dtype=dtype),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            *norm_layers(),
            layers.Dropout(0.3),
            layers.Dense(7, activation="tanh", dtype=dtype),
            layers.LayerNormalization(dtype=dtype),
            layers.Dense(3, dtype=dtype),
        ]
    )


def keras_mlp(keras, norm: str):
    layers = keras.layers
    norms = {
        "bn": layers.BatchNormalization,
        "ln": layers.LayerNormalization,
        "none": lambda: layers.Activation("linear"),
    }
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Flatten(),
            layers.Dense(16),
            norms[norm](),
            layers.Activation("relu"),
            layers.Dense(10),
        ]
    )


@pytest.mark.parametrize("convention", ["torch", "keras"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_keras_cnn_to_torch_and_back_computes_the_same(keras, convert, dtype, convention):
    model = keras_cnn(keras, dtype)
    randomize_models_batchnorms(keras, model)
    torch_model = convert.sequential_keras_to_torch(model, convention=convention)
    assert isinstance(torch_model, nn.Sequential)
    assert all(p.dtype == DTYPES[dtype] for p in torch_model.parameters())
    x = torch_input((5, 3, 10, 9), DTYPES[dtype])
    expected = keras_eval(keras, model, x)
    assert expected.shape == (5, 3)
    assert_close(torch_eval(torch_model, x), expected, **F32_TOL)
    back = convert.sequential_torch_to_keras(torch_model, (3, 10, 9))
    assert back.input_shape == model.input_shape
    assert_close(keras_eval(keras, back, x), expected, **F32_TOL)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_round_trips_keep_every_weight_bit_for_bit(keras, convert, dtype):
    """keras -> torch -> keras gives back each weight exactly (float64 stays float64), and
    torch -> keras -> torch the state_dict."""
    model = keras_cnn(keras, dtype)
    randomize_models_batchnorms(keras, model)
    torch_model = convert.sequential_keras_to_torch(model)
    back = convert.sequential_torch_to_keras(torch_model, (3, 10, 9))
    original = [to_numpy(keras, w) for w in model.weights]
    returned = [to_numpy(keras, w) for w in back.weights]
    assert len(returned) == len(original)
    for ours, theirs in zip(returned, original, strict=True):
        assert ours.dtype == theirs.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(ours, theirs)
    again = convert.sequential_keras_to_torch(back)
    assert_close(again.state_dict(), torch_model.state_dict(), atol=0, rtol=0)


def test_flatten_after_convolutions_permutes_the_next_dense_rows(keras, convert):
    """Keras flattens (H, W, C), torch (C, H, W): the torch Linear's weight is Keras' kernel
    transposed with its input rows reordered; reading one feature proves the order."""
    layers = keras.layers
    model = keras.Sequential([keras.Input((2, 3, 4)), layers.Flatten(), layers.Dense(1)])
    h, w, c = 1, 2, 3
    kernel = np.zeros((24, 1), dtype=np.float32)
    kernel[(h * 3 + w) * 4 + c] = 1.0  # Keras' flat index of (h, w, c)
    model.layers[-1].kernel.assign(kernel)
    torch_model = convert.sequential_keras_to_torch(model)
    x = torch_input((2, 4, 2, 3))
    assert_close(torch_eval(torch_model, x)[:, 0], x[:, c, h, w])


@pytest.mark.parametrize("norm", ["bn", "bn-scalar", "ln", "none"])
@pytest.mark.parametrize("placement", ["before", "after"])
def test_normlab_models_convert_to_keras(keras, convert, nk, norm, placement):
    """The lab's own MLP and CNN (the tutorials' models) as Keras models."""
    mlp = nl.models.mlp(64, [16, 8], 10, norm=norm, placement=placement)
    cnn = nl.models.cnn((3, 8, 8), [4, 6], 10, norm=norm, placement=placement)
    for model, shape in ((mlp, (1, 8, 8)), (cnn, (3, 8, 8))):
        randomize_models_batchnorms(keras, model)
        keras_model = convert.sequential_torch_to_keras(model, shape)
        x = torch_input((4, *shape))
        assert_close(keras_eval(keras, keras_model, x), torch_eval(model, x), **F32_TOL)
        back = convert.sequential_keras_to_torch(keras_model)
        assert_close(torch_eval(back, x), torch_eval(model, x), **F32_TOL)


CONV_PADDINGS = [
    (padding, stride)
    for padding in (0, 1, 2, (1, 0), "same", "valid")
    for stride in (1, 2)
    if not (padding == "same" and stride == 2)  # torch refuses padding="same" with strides
]


@pytest.mark.parametrize(("padding", "stride"), CONV_PADDINGS, ids=str)
@pytest.mark.parametrize("size", [7, 8])
def test_torch_conv_padding_converts(keras, convert, padding, stride, size):
    """Symmetric torch padding becomes "same" where Keras pads the same, else ZeroPadding2D;
    3x3 with padding 1 at stride 1 is plain "same"."""
    torch.manual_seed(size + stride)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=stride, padding=padding))
    keras_model = convert.sequential_torch_to_keras(model, (3, size, size))
    if (padding, stride) in ((1, 1), ("same", 1)):
        assert [layer.padding for layer in keras_model.layers] == ["same"]
    x = torch_input((2, 3, size, size))
    assert_close(keras_eval(keras, keras_model, x), torch_eval(model, x), **F32_TOL)


@pytest.mark.parametrize("kernel", [2, 3, 4, 5])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("size", [7, 8])
def test_keras_same_padding_converts(keras, convert, kernel, stride, size):
    """Keras' "same" pads one more at the bottom/right when the total is odd (even kernels,
    strides): a ZeroPad2d in torch then; symmetric otherwise."""
    layers = keras.layers
    keras.utils.set_random_seed(kernel + stride)
    model = keras.Sequential(
        [keras.Input((size, size, 2)), layers.Conv2D(3, kernel, stride, padding="same")]
    )
    torch_model = convert.sequential_keras_to_torch(model)
    x = torch_input((2, 2, size, size))
    assert_close(torch_eval(torch_model, x), keras_eval(keras, model, x), **F32_TOL)


KERAS_ACTIVATIONS = [
    "relu",
    "relu6",
    "tanh",
    "sigmoid",
    "elu",
    "selu",
    "silu",
    "gelu",
    "softplus",
    "softmax",
    "leaky_relu",
    "linear",
]


@pytest.mark.parametrize("activation", KERAS_ACTIVATIONS)
def test_keras_activations_convert(keras, convert, activation):
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation=activation)])
    torch_model = convert.sequential_keras_to_torch(model)
    x = torch_input((6, 5)) * 3
    assert_close(torch_eval(torch_model, x), keras_eval(keras, model, x), **F32_TOL)


TORCH_ACTIVATIONS = {
    "ReLU": nn.ReLU(),
    "ReLU6": nn.ReLU6(),
    "Tanh": nn.Tanh(),
    "Sigmoid": nn.Sigmoid(),
    "ELU": nn.ELU(0.5),
    "SELU": nn.SELU(),
    "SiLU": nn.SiLU(),
    "GELU": nn.GELU(),
    "Softplus": nn.Softplus(),
    "LeakyReLU": nn.LeakyReLU(0.05),
    "Softmax": nn.Softmax(dim=1),
}


@pytest.mark.parametrize("name", list(TORCH_ACTIVATIONS))
def test_torch_activations_convert_on_images_and_features(keras, convert, name):
    """On (N, C, H, W), Softmax(dim=1) is over the channels: Keras' last axis."""
    activation = TORCH_ACTIVATIONS[name]
    for model, shape in (
        (nn.Sequential(nn.Linear(5, 4), activation), (5,)),
        (nn.Sequential(nn.Conv2d(2, 3, 1), activation), (2, 3, 3)),
    ):
        keras_model = convert.sequential_torch_to_keras(model, shape)
        x = torch_input((4, *shape)) * 3
        assert_close(keras_eval(keras, keras_model, x), torch_eval(model, x), **F32_TOL)


def test_one_sgd_step_in_each_framework_from_the_same_state_agrees(keras, convert):
    """Keras' train_on_batch and a torch SGD step on the converted model (convention="keras")
    leave models with the same weights, moving statistics and eval outputs."""
    layers = keras.layers
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            layers.Conv2D(4, 3, padding="same"),
            layers.BatchNormalization(momentum=0.9),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(8),
            layers.BatchNormalization(momentum=0.9),
            layers.Activation("relu"),
            layers.Dense(3),
        ]
    )
    randomize_models_batchnorms(keras, model, seed=4)
    torch_model = convert.sequential_keras_to_torch(model, convention="keras")
    initial = {name: value.clone() for name, value in torch_model.state_dict().items()}
    x = torch_input((16, 2, 6, 6), seed=9)
    y = torch.arange(16) % 3
    lr = 0.5
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.train_on_batch(np.moveaxis(x.numpy(), 1, -1), y.numpy())
    optimizer = torch.optim.SGD(torch_model.parameters(), lr=lr)
    torch_model.train()
    F.cross_entropy(torch_model(x), y).backward()
    optimizer.step()
    again = convert.sequential_keras_to_torch(model, convention="keras")
    trained, expected = torch_model.state_dict(), again.state_dict()
    for name in expected:
        if not name.endswith("num_batches_tracked"):
            assert_close(trained[name], expected[name], **F32_TOL, msg=name)
        if name.endswith(("weight", "running_mean", "running_var")):  # biases before BN: no grad
            moved = (trained[name] - initial[name]).abs().max()
            assert moved > 1e-3, f"{name} did not change: the step would prove nothing"
    x_eval = torch_input((5, 2, 6, 6), seed=10)
    assert_close(torch_eval(torch_model, x_eval), keras_eval(keras, model, x_eval), **F32_TOL)


# --------------------------------------------------------------------------------------------
# 6. max_abs_difference


def test_max_abs_difference_reports_a_changed_weight(keras, convert):
    """Dense vs Linear with one weight off by delta: the difference is |delta * x_i|."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    torch_model = convert.sequential_keras_to_torch(model)
    with torch.no_grad():
        torch_model[0].weight[1, 2] += 0.25
    x = torch.tensor([[1.0, 2.0, -4.0], [0.5, 0.0, 2.0]])
    assert convert.max_abs_difference(model, torch_model, x) == pytest.approx(1.0, rel=1e-6)
    torch_model.train()
    convert.max_abs_difference(model, torch_model, x)
    assert torch_model.training  # the mode is restored


def test_check_compares_in_eval_mode_and_restores_modes(keras, convert):
    """With dropout the models agree only in eval mode: the check must run there."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9), nn.BatchNorm1d(4)).train()
    model[2].eval()
    keras_model = convert.sequential_torch_to_keras(model, (4,))
    assert model.training and model[1].training and not model[2].training
    x = torch_input((8, 4))
    assert convert.max_abs_difference(keras_model, model, x) < 1e-5


# --------------------------------------------------------------------------------------------
# 7. errors


def test_unsupported_keras_layer_is_named(keras, convert):
    layers = keras.layers
    model = keras.Sequential([keras.Input((8, 2)), layers.Conv1D(2, 3, name="conv1d_x")])
    with pytest.raises(convert.ConversionError, match=r"(?s)supported: \(None, F\)"):
        convert.sequential_keras_to_torch(model)
    model = keras.Sequential(
        [keras.Input((4,)), layers.Dense(3), layers.GaussianNoise(0.1, name="noise")]
    )
    with pytest.raises(convert.ConversionError, match=r"'noise' .*GaussianNoise.*supported"):
        convert.sequential_keras_to_torch(model)


def test_keras_subclasses_are_refused_not_miscomputed(keras, convert, nk):
    """normlab.keras' weight-standardized Conv2D subclasses Conv2D; converting it as a plain
    Conv2D would drop the standardization."""
    for layer in (
        nk.WeightStandardizedConv2D(2, 3, name="ws"),
        nk.BatchRenormalization(name="ws"),
    ):
        model = keras.Sequential([keras.Input((6, 6, 2)), layer])
        with pytest.raises(convert.ConversionError, match=r"'ws'.*exact types"):
            convert.sequential_keras_to_torch(model)


def test_unsupported_torch_module_is_named(keras, convert):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.GroupNorm(2, 4)))
    with pytest.raises(convert.ConversionError, match=r"'1\.0' \(torch\.nn\.GroupNorm\).*Linear"):
        convert.sequential_torch_to_keras(model, (4,))


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (nn.BatchNorm1d(C, track_running_stats=False), "track_running_stats=False"),
        (nn.BatchNorm1d(C, momentum=None), "momentum=None"),
        (nl.BatchRenorm(C), "expected torch.nn.BatchNorm1d/2d/3d or normlab.BatchNorm"),
        (nn.LayerNorm(C), "expected torch.nn.BatchNorm1d/2d/3d"),
    ],
)
def test_torch_batchnorm_errors(keras, convert, module, message):
    with pytest.raises(convert.ConversionError, match=message):
        convert.batchnorm_torch_to_keras(module)


@pytest.mark.parametrize(
    ("module", "input_ndim", "message"),
    [
        (nn.BatchNorm1d(C), 4, "BatchNorm1d.* takes rank-2 or 3 input; got input_ndim=4"),
        (nn.BatchNorm2d(C), 2, "BatchNorm2d.* takes rank-4 input; got input_ndim=2"),
        (nn.BatchNorm3d(C), 4, "BatchNorm3d.* takes rank-5 input; got input_ndim=4"),
        (nl.BatchNorm(C, stats="scalar"), 6, "takes rank-2 to 5 input; got input_ndim=6"),
    ],
)
def test_torch_batchnorm_to_keras_refuses_a_rank_its_class_does_not_take(
    keras, convert, module, input_ndim, message
):
    """Each torch class takes the ranks torch's own input check does; normlab's any of 2 to 5."""
    with pytest.raises(convert.ConversionError, match=message):
        convert.batchnorm_torch_to_keras(module.eval(), input_ndim=input_ndim, check=False)


def test_keras_batchnorm_errors(keras, convert):
    with pytest.raises(convert.ConversionError, match="not built"):
        convert.batchnorm_keras_to_torch(keras.layers.BatchNormalization())
    renorm = keras.layers.BatchNormalization(renorm=True)
    renorm.build((None, C))
    with pytest.raises(convert.ConversionError, match="renorm=True"):
        convert.batchnorm_keras_to_torch(renorm)
    middle = keras.layers.BatchNormalization(axis=2)
    middle.build((None, 3, C, 4))
    with pytest.raises(convert.ConversionError, match="only the channel axis"):
        convert.batchnorm_keras_to_torch(middle)
    built = keras.layers.BatchNormalization()
    built.build((None, 4, 4, C))
    with pytest.raises(convert.ConversionError, match="built for rank-4"):
        convert.batchnorm_keras_to_torch(built, input_ndim=2)
    with pytest.raises(ValueError, match="convention"):
        convert.batchnorm_keras_to_torch(built, convention="tf")


def test_model_errors(keras, convert):
    layers = keras.layers
    channels_first = keras.Sequential(
        [keras.Input((2, 6, 6)), layers.Conv2D(2, 3, data_format="channels_first")]
    )
    with pytest.raises(convert.ConversionError, match="channels_last"):
        convert.sequential_keras_to_torch(channels_first)
    dense_on_images = keras.Sequential([keras.Input((6, 6, 2)), layers.Dense(3)])
    with pytest.raises(convert.ConversionError, match="put a Flatten before it"):
        convert.sequential_keras_to_torch(dense_on_images)
    padded_pool = keras.Sequential([keras.Input((5, 5, 2)), layers.MaxPooling2D(padding="same")])
    with pytest.raises(convert.ConversionError, match="padding='same'"):
        convert.sequential_keras_to_torch(padded_pool)
    with pytest.raises(convert.ConversionError, match="not built"):
        convert.sequential_keras_to_torch(keras.Sequential([layers.Dense(3)]))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(convert.ConversionError, match=r"expects 3 channels.*check input_shape"):
        convert.sequential_torch_to_keras(model, (2, 8, 8))
    with pytest.raises(convert.ConversionError, match=r"\(C, H, W\) or \(F,\)"):
        convert.sequential_torch_to_keras(model, (3, 8))
    with pytest.raises(convert.ConversionError, match="ceil_mode=False"):
        convert.sequential_torch_to_keras(nn.Sequential(nn.MaxPool2d(2, padding=1)), (1, 4, 4))
    with pytest.raises(convert.ConversionError, match="Softmax over"):
        convert.sequential_torch_to_keras(nn.Sequential(nn.Softmax(dim=-1)), (1, 4, 4))


@pytest.mark.parametrize("ndim", [2, 3, 4])
def test_channels_last_normlab_batchnorm_converts_without_moving_axes(keras, convert, ndim):
    """normlab.BatchNorm(channel_dim=-1) takes (N, *, C), Keras' layout: the layer computes
    what the module computes on the same input (it was checked on (N, C, *) and refused)."""
    gen = torch.Generator().manual_seed(ndim)
    module = nl.BatchNorm(C, channel_dim=-1, dtype=torch.float64)
    with torch.no_grad():
        module.running_mean.copy_(torch.randn(C, generator=gen, dtype=torch.float64))
        module.running_var.copy_(1 + torch.rand(C, generator=gen, dtype=torch.float64))
        module.weight.copy_(torch.randn(C, generator=gen, dtype=torch.float64))
    layer = convert.batchnorm_torch_to_keras(module, input_ndim=ndim)
    x = torch.randn(3, *([5] * (ndim - 2)), C, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        expected = module.eval()(x)
    assert_close(to_numpy(keras, layer(x, training=False)), expected.numpy(), **F32_TOL)


def test_channels_last_batchnorm_in_a_channels_first_model_is_refused(keras, convert):
    model = nn.Sequential(nn.Conv2d(3, C, 3), nl.BatchNorm(C, channel_dim=-1))
    with pytest.raises(convert.ConversionError, match=r"channel_dim=-1.*\(N, C, H, W\)"):
        convert.sequential_torch_to_keras(model, (3, 8, 8))
