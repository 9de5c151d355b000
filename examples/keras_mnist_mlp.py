"""The tutorials' Keras MLP (Dense 128 / 64 / 10) on MNIST, with Keras' or normlab's norm layers.

    python examples/keras_mnist_mlp.py --data-dir ../shared/data/mnist         # Keras' BN
    python examples/keras_mnist_mlp.py --data-dir ../shared/data/mnist --layers normlab \
        --stats scalar                                                          # normlab's "1s"
    python examples/keras_mnist_mlp.py --dataset digits --norm ln               # built-in data

Flatten, then per hidden width Dense, the norm and ReLU, then Dense to the classes (logits);
Adam with learning rate 0.001, batch size 32, as the tutorials (and ``normlab compare``'s
``mlp``). ``--norm bn`` is ``keras.layers.BatchNormalization`` with ``--layers keras`` and
``normlab.keras.BatchNormalization(stats=...)`` with ``--layers normlab``; ``--norm ln`` is
``keras.layers.LayerNormalization`` (normlab has no Keras layer norm of its own).

Prints the validation accuracy after each epoch and at the end, then converts the trained
model to torch with ``normlab.convert`` and back, and prints how far the converted models'
eval outputs (logits) are from the trained model's on validation images.

Data comes from ``normlab.data.load_dataset`` (local files only, nothing is downloaded).
The Keras backend is KERAS_BACKEND's; when unset, this script sets it to "torch" before
Keras is imported (Keras fixes its backend at import).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse
import sys
import time

import keras
import numpy as np
import torch

import normlab.keras
from normlab.convert import (
    max_abs_difference,
    sequential_keras_to_torch,
    sequential_torch_to_keras,
)
from normlab.data import DataError, Dataset, load_dataset

NORMS = ("none", "bn", "ln")
LAYERS = ("keras", "normlab")
STATS = ("channel", "scalar")
HIDDEN = (128, 64)
LEARNING_RATE = 1e-3
EVAL_BATCH = 1000  # inference batch: batch norm then uses its moving statistics, any size works
CONVERSION_SAMPLES = 1000  # validation images on which the conversions are compared


def norm_layer(norm: str, layers: str = "keras", stats: str = "channel") -> keras.layers.Layer:
    """The normalization layer for ``--norm``, ``--layers`` and ``--stats`` (not for "none")."""
    if norm == "ln":
        return keras.layers.LayerNormalization()
    if layers == "keras":
        return keras.layers.BatchNormalization()
    return normlab.keras.BatchNormalization(stats=stats)


def build_mlp(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    norm: str = "bn",
    layers: str = "keras",
    stats: str = "channel",
    hidden: tuple[int, ...] = HIDDEN,
) -> keras.Sequential:
    """The tutorials' MLP: (N, H, W, C) images -> (N, num_classes) logits."""
    model_layers: list[keras.layers.Layer] = [keras.Input(input_shape), keras.layers.Flatten()]
    for width in hidden:
        model_layers.append(keras.layers.Dense(width))
        if norm != "none":
            model_layers.append(norm_layer(norm, layers, stats))
        model_layers.append(keras.layers.Activation("relu"))
    model_layers.append(keras.layers.Dense(num_classes))
    return keras.Sequential(model_layers)


def add_arguments(parser: argparse.ArgumentParser, default_dataset: str) -> None:
    """The flags both Keras examples take."""
    parser.add_argument("--layers", choices=LAYERS, default="keras",
                        help="whose batch norm layer: Keras' own or normlab.keras'")  # fmt: skip
    parser.add_argument("--stats", choices=STATS, default="channel",
                        help="statistics of normlab's batch norm (--layers normlab)")  # fmt: skip
    parser.add_argument("--norm", choices=NORMS, default="bn",
                        help="none, batch norm (bn) or layer norm (ln)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dataset", default=default_dataset,
                        help="digits (built in), mnist, fashion-mnist or cifar10")  # fmt: skip
    parser.add_argument("--data-dir", help="where the data set's files are")
    parser.add_argument("--limit", type=int, help="train on the first N training images only")
    parser.add_argument("--seed", type=int, default=0)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse and cross-check the flags of :func:`add_arguments`."""
    args = parser.parse_args(argv)
    if args.layers == "keras" and args.stats != "channel":
        parser.error("--stats scalar exists only in normlab's layer: add --layers normlab")
    if args.layers == "normlab" and args.norm == "ln":
        parser.error("--norm ln is Keras' LayerNormalization: use --layers keras")
    if args.epochs < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--epochs, --batch-size and --limit must be positive")
    return args


def to_keras(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor -> (N, H, W, C) numpy array, Keras' channels-last layout."""
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def describe(args: argparse.Namespace) -> str:
    if args.norm == "none":
        return "no normalization"
    if args.norm == "ln":
        return "keras.layers.LayerNormalization"
    if args.layers == "keras":
        return "keras.layers.BatchNormalization"
    return f"normlab.keras.BatchNormalization(stats={args.stats!r})"


def train_and_convert(model: keras.Sequential, data: Dataset, args: argparse.Namespace) -> int:
    """Train ``model`` on ``data``, printing the validation accuracy per epoch and at the end,
    then print the eval-output error of its conversion to torch and back."""
    limit = len(data.train_x) if args.limit is None else args.limit
    train_x, train_y = to_keras(data.train_x[:limit]), data.train_y[:limit].numpy()
    val_x, val_y = to_keras(data.val_x), data.val_y.numpy()
    print(f"{describe(args)} on {data.name}: {len(train_x)} training and {len(val_x)} "
          f"validation images, batch size {args.batch_size}, {args.epochs} epochs, "
          f"seed {args.seed}, Keras backend {keras.backend.backend()}")  # fmt: skip
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    accuracy = 0.0
    for epoch in range(1, args.epochs + 1):
        history = model.fit(
            train_x, train_y, batch_size=args.batch_size, epochs=1, shuffle=True, verbose=0
        )
        scores = model.evaluate(val_x, val_y, batch_size=EVAL_BATCH, verbose=0, return_dict=True)
        accuracy = 100 * scores["accuracy"]
        print(f"epoch {epoch}: loss {history.history['loss'][-1]:.4f}, train accuracy "
              f"{100 * history.history['accuracy'][-1]:.2f}%, validation accuracy "
              f"{accuracy:.2f}% ({time.perf_counter() - start:.1f} s)")  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"validation accuracy after {args.epochs} epochs: {accuracy:.2f}% ({seconds:.1f} s)")
    report_conversion(model, data.val_x[:CONVERSION_SAMPLES], data.input_shape)
    return 0


def logits(model: keras.Sequential, images: torch.Tensor) -> np.ndarray:
    """The model's inference-mode output on (N, C, H, W) ``images``, as numpy."""
    outputs = model(to_keras(images), training=False)
    if isinstance(outputs, torch.Tensor):  # convert_to_numpy warns on torch tensors (numpy 2)
        return outputs.detach().cpu().numpy()
    return keras.ops.convert_to_numpy(outputs)


def report_conversion(
    model: keras.Sequential, images: torch.Tensor, input_shape: tuple[int, ...]
) -> None:
    """Convert ``model`` to torch and back and print the largest eval-output differences."""
    torch_model = sequential_keras_to_torch(model)
    to_torch = max_abs_difference(model, torch_model, images)
    back = sequential_torch_to_keras(torch_model, input_shape)
    original = logits(model, images)
    round_trip = np.abs(logits(back, images) - original)
    print(f"normlab.convert on {len(images)} validation images, eval logits (largest "
          f"|logit| {np.abs(original).max():.1f}): keras -> torch max |difference| "
          f"{to_torch:.2e}, keras -> torch -> keras {round_trip.max():.2e}")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, default_dataset="mnist")
    return parser


def run(data: Dataset, args: argparse.Namespace) -> int:
    """Build the MLP for ``data``, train it and report, as ``main`` does after loading."""
    keras.utils.set_random_seed(args.seed)
    channels, height, width = data.input_shape
    model = build_mlp(
        (height, width, channels),
        data.num_classes,
        norm=args.norm,
        layers=args.layers,
        stats=args.stats,
    )
    return train_and_convert(model, data, args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        data = load_dataset(args.dataset, args.data_dir)
    except DataError as error:
        print(f"{error}\n(--dataset digits is built in.)", file=sys.stderr)
        return 1
    return run(data, args)


if __name__ == "__main__":
    raise SystemExit(main())
