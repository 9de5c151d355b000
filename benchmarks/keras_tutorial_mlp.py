"""The tutorials' MLP in tf.keras, trained with ``model.fit`` on MNIST: the TF-Keras side of
benchmarks/train_speed.py.

It runs in its own virtual environment (.venv-tf, benchmarks/requirements-tf.txt), without
normlab or torch: it reads the MNIST IDX files itself with numpy and gzip.

The model is normlab's ``mlp`` with its default ``placement="before"`` (see
normlab.models): Flatten, [Dense, norm, ReLU] for widths 128 and 64, Dense 10 with
softmax (the same function as normlab's logits under cross-entropy). The norms use
torch's constants so the two sides train the same model: batch norm with eps 1e-5 and
running-statistics momentum 0.1 in torch's sense (0.9 in Keras'), layer norm with eps
1e-5 (Keras' moving variance stays the biased one, its convention; the training step's
work is the same). Adam, learning rate 1e-3, batch 32, the data as numpy arrays, shuffled
each epoch.

Prints one JSON line: per epoch the training seconds (the epoch's wall time less the
validation pass inside it), validation seconds and accuracy, plus steps per epoch.

    .venv-tf/bin/python benchmarks/keras_tutorial_mlp.py --data-dir ../shared/data/mnist \
        --norm bn --epochs 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
NORMS = ("none", "bn", "ln")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (raw or gzip'd) as a numpy array of its stored shape and type."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}).")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * dims)
    if data.size != math.prod(shape):
        raise ValueError(f"{path} holds {data.size} values; its header says {shape}.")
    return data.reshape(shape)


def load_mnist(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, t10k images, t10k labels): images (N, 28, 28) float32 in
    [0, 1], labels (N,) int64, from the four IDX files (each raw or .gz) in ``directory``."""
    arrays = []
    for name in IDX_FILES:
        candidates = [directory / name, directory / f"{name}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"{directory} has no {name} (or {name}.gz); put MNIST's four IDX files there."
            )
        arrays.append(read_idx(path))
    train_x, train_y, val_x, val_y = arrays
    return (
        train_x.astype(np.float32) / 255.0,
        train_y.astype(np.int64),
        val_x.astype(np.float32) / 255.0,
        val_y.astype(np.int64),
    )


def build(norm: str, keras: object) -> object:
    """The tutorials' MLP with ``norm`` ("none", "bn" or "ln") before each hidden ReLU."""
    layers = keras.layers
    stack = [keras.Input((28, 28)), layers.Flatten()]
    for width in (128, 64):
        stack.append(layers.Dense(width))
        if norm == "bn":
            stack.append(layers.BatchNormalization(momentum=0.9, epsilon=1e-5))
        elif norm == "ln":
            stack.append(layers.LayerNormalization(epsilon=1e-5))
        stack.append(layers.Activation("relu"))
    stack.append(layers.Dense(10, activation="softmax"))
    return keras.Sequential(stack)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--norm", choices=NORMS, default="none")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, help="TensorFlow's intra-op threads (default: its own, every core)"
    )
    args = parser.parse_args()

    import tensorflow as tf

    if args.threads:  # before TensorFlow runs anything
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)

    keras = tf.keras
    keras.utils.set_random_seed(args.seed)
    train_x, train_y, val_x, val_y = load_mnist(args.data_dir)
    model = build(args.norm, keras)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    class Clock(keras.callbacks.Callback):
        """Wall time of each epoch and of the validation pass inside it."""

        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[dict[str, float]] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch_start = time.perf_counter()
            self.val_seconds = 0.0

        def on_test_begin(self, logs: dict | None = None) -> None:
            self.val_start = time.perf_counter()

        def on_test_end(self, logs: dict | None = None) -> None:
            self.val_seconds += time.perf_counter() - self.val_start

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            total = time.perf_counter() - self.epoch_start
            self.epochs.append(
                {
                    "epoch": epoch + 1,
                    "train_seconds": total - self.val_seconds,
                    "val_seconds": self.val_seconds,
                    "val_acc": float(logs["val_accuracy"]),
                }
            )

    clock = Clock()
    model.fit(
        train_x,
        train_y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(val_x, val_y),
        shuffle=True,
        verbose=0,
        callbacks=[clock],
    )
    result = {
        "norm": args.norm,
        "batch_size": args.batch_size,
        "steps_per_epoch": math.ceil(len(train_x) / args.batch_size),
        "epochs": clock.epochs,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
