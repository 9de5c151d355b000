"""Dataset loaders: built-in digits, MNIST / Fashion-MNIST (IDX or npz), CIFAR-10 -> tensors.

Everything is read from local files; nothing is ever downloaded.
"""

from normlab.data.catalog import DATASETS, dataset_name, load_dataset
from normlab.data.dataset import DataError, Dataset
from normlab.data.idx import read_idx
from normlab.data.memory import dataset_from_tensors
from normlab.data.subset import stratified_subset, train_subset

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "dataset_from_tensors",
    "dataset_name",
    "load_dataset",
    "read_idx",
    "stratified_subset",
    "train_subset",
]
