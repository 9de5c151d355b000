"""The tutorials' Keras CNN (Conv 32 / Conv 64 3x3 with batch norm, Dense 64, Dense 10) on CIFAR-10.

    python examples/keras_cifar_cnn.py --data-dir ./cifar-10-batches-py               # Keras' BN
    python examples/keras_cifar_cnn.py --data-dir ./cifar-10-batches-py --layers normlab

Per width a 3x3 convolution (padding "same"), the norm, ReLU and 2x2 max pooling; then
Flatten, Dense 64 with ReLU and Dense to the classes (logits): ``normlab compare``'s ``cnn``
in Keras. Flags, training and the closing conversion report are those of
``keras_mnist_mlp.py`` (run ``--help``); ``--norm ln`` normalizes each pixel's channels.

CIFAR-10 is read from local files by ``normlab.data.load_dataset`` (nothing is downloaded);
``--dataset digits`` runs on the built-in 8x8 digits instead. The Keras backend is
KERAS_BACKEND's; when unset, it is set to "torch" before Keras is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse
import sys

import keras
from keras_mnist_mlp import add_arguments, norm_layer, parse_args, train_and_convert

from normlab.data import DataError, Dataset, load_dataset

HIDDEN = (32, 64)
DENSE = 64


def build_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    norm: str = "bn",
    layers: str = "keras",
    stats: str = "channel",
    hidden: tuple[int, ...] = HIDDEN,
    dense: int = DENSE,
) -> keras.Sequential:
    """The tutorials' CNN: (N, H, W, C) images -> (N, num_classes) logits.

    Each width halves H and W, so they must be at least 2 ** len(hidden).
    """
    height, width, _ = input_shape
    if min(height, width) < 2 ** len(hidden):
        raise ValueError(
            f"a CNN with {len(hidden)} pooling stages needs images of at least "
            f"{2 ** len(hidden)}x{2 ** len(hidden)}; got {height}x{width}."
        )
    model_layers: list[keras.layers.Layer] = [keras.Input(input_shape)]
    for channels in hidden:
        model_layers.append(keras.layers.Conv2D(channels, 3, padding="same"))
        if norm != "none":
            model_layers.append(norm_layer(norm, layers, stats))
        model_layers += [keras.layers.Activation("relu"), keras.layers.MaxPooling2D(2)]
    model_layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(dense, activation="relu"),
        keras.layers.Dense(num_classes),
    ]
    return keras.Sequential(model_layers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, default_dataset="cifar10")
    return parser


def run(data: Dataset, args: argparse.Namespace) -> int:
    """Build the CNN for ``data``, train it and report, as ``main`` does after loading."""
    keras.utils.set_random_seed(args.seed)
    channels, height, width = data.input_shape
    model = build_cnn(
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
