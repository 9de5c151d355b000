"""scikit-learn's bundled 8x8 handwritten digits: the built-in data set, nothing to download."""

from __future__ import annotations

from normlab.data.dataset import Dataset, labels_to_long, pixels_to_float
from normlab_extras import require_lab_extra

VAL_FRACTION = 0.2
SPLIT_SEED = 0
MAX_PIXEL = 16  # the digits' pixel values are 0..16
SOURCE = "scikit-learn (bundled)"


def load_digits() -> Dataset:
    """The 1797 digits, split 80/20, stratified by class, with a fixed seed.

    The split is ``sklearn.model_selection.train_test_split(images, labels,
    test_size=0.2, stratify=labels, random_state=0)``, so every call returns
    the same 1437 training and 360 validation images.

    Returns:
        Dataset with train (1437, 1, 8, 8) and val (360, 1, 8, 8) float32
        images in [0, 1] (pixels / 16), int64 labels 0..9.

    Raises:
        ModuleNotFoundError: scikit-learn, from the lab extra, is not installed.
    """
    # Imported here: scikit-learn takes about a second to import, and only this loader needs it.
    require_lab_extra("the digits data set", ["sklearn"])
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    images, labels = sklearn_load_digits(return_X_y=True)
    train_x, val_x, train_y, val_y = train_test_split(
        images.reshape(-1, 1, 8, 8),
        labels,
        test_size=VAL_FRACTION,
        stratify=labels,
        random_state=SPLIT_SEED,
    )
    return Dataset(
        name="digits",
        train_x=pixels_to_float(train_x, MAX_PIXEL),
        train_y=labels_to_long(train_y),
        val_x=pixels_to_float(val_x, MAX_PIXEL),
        val_y=labels_to_long(val_y),
        num_classes=10,
        source=SOURCE,
    )
