"""Fashion-MNIST (and MNIST) from their IDX files, with numpy alone.

Debian's `dataset-fashion-mnist` installs the four gzipped IDX files in
`/usr/share/datasets/fashion-mnist`: the same files `keras.datasets.fashion_mnist`
downloads. Nothing here imports TensorFlow or Keras.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Per-channel statistics of the training images scaled to [0, 1].
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Reads a gzipped IDX file (the MNIST format) into a uint8 array."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"Cannot read IDX file {path}: {error}") from None
    if len(data) < 8:
        raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes.")
    magic, count = struct.unpack(">II", data[:8])
    if magic != expected_magic:
        raise ValueError(f"IDX file {path} has magic number {magic:#x}, expected {expected_magic:#x}.")
    dims = (count,)
    offset = 8
    if expected_magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        dims, offset = (count, rows, cols), 16
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"IDX file {path} is truncated: header promises {dims}, found {array.size} values.")
    return array.reshape(dims)


def find_fashion_mnist_idx(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The directory holding all four Fashion-MNIST IDX files, or None."""
    directory = Path(data_dir or DEBIAN_FASHION_MNIST_DIR)
    names = [name for pair in IDX_FILES.values() for name in pair]
    return directory if all((directory / name).is_file() for name in names) else None


def read_fashion_mnist_idx(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 28, 28, 1) uint8 and labels (n,) int64 of one split from the IDX files."""
    images_file, labels_file = IDX_FILES[split]
    images = _read_idx(Path(directory) / images_file, 0x803)
    labels = _read_idx(Path(directory) / labels_file, 0x801)
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels in {directory}.")
    if len(labels) and labels.max() >= 10:
        raise ValueError(
            f"Fashion-MNIST {split}: label {int(labels.max())} out of range 0..9 in {Path(directory) / labels_file}."
        )
    return images[..., None], labels.astype(np.int64)
