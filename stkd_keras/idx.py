"""MNIST-format datasets (Fashion-MNIST, MNIST) from their IDX files, with numpy alone.

Both datasets ship as the same four IDX files (train-images-idx3-ubyte.gz,
train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
t10k-labels-idx1-ubyte.gz). The files may also lie there un-gzipped, under
the same names without `.gz` or with the dot some mirrors use
(`train-images.idx3-ubyte`); gzip is recognised by its magic bytes.

Debian's `dataset-fashion-mnist` installs Fashion-MNIST's files in
`/usr/share/datasets/fashion-mnist`: the same files
`keras.datasets.fashion_mnist` downloads. Nothing here imports TensorFlow or
Keras.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
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
# The published names, gzipped: (images, labels) per split.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x803, 0x801
_GZIP_MAGIC = b"\x1f\x8b"


def idx_file_names() -> list[str]:
    """The four published (gzipped) file names, in the order of `IDX_FILES`."""
    return [name for pair in IDX_FILES.values() for name in pair]


def _candidates(name: str) -> tuple[str, ...]:
    """A published name and its un-gzipped spellings: `x-idx3-ubyte.gz`, `x-idx3-ubyte`, `x.idx3-ubyte`."""
    plain = name.removesuffix(".gz")
    stem, _, kind = plain.rpartition("-idx")
    return name, plain, f"{stem}.idx{kind}"


def _resolve(directory: Path, name: str) -> Path | None:
    return next((directory / c for c in _candidates(name) if (directory / c).is_file()), None)


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzipped or not, into a uint8 array."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"Cannot read IDX file {path}: {error}") from None
    if len(data) < 8:
        raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes.")
    magic, count = struct.unpack(">II", data[:8])
    if magic != expected_magic:
        raise ValueError(f"IDX file {path} has magic number {magic:#x}, expected {expected_magic:#x}.")
    dims = (count,)
    offset = 8
    if expected_magic == _IMAGES_MAGIC:
        if len(data) < 16:
            raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes.")
        rows, cols = struct.unpack(">II", data[8:16])
        dims, offset = (count, rows, cols), 16
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"IDX file {path} is truncated: header promises {dims}, found {array.size} values.")
    return array.reshape(dims)


def find_idx(data_dir: str | os.PathLike | None) -> Path | None:
    """The directory `data_dir` if it holds all four IDX files (gzipped or not), else None."""
    if data_dir is None:
        return None
    directory = Path(data_dir).expanduser()
    return directory if all(_resolve(directory, name) is not None for name in idx_file_names()) else None


def read_idx(
    directory: str | os.PathLike, split: str, num_classes: int = 10, dataset: str = "MNIST"
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, rows, cols, 1) uint8 and labels (n,) int64 of one split of an MNIST-format dataset.

    Args:
        directory: The folder with the four IDX files.
        split: "train" or "test".
        num_classes: Labels must lie in 0..num_classes - 1.
        dataset: The dataset's name, for error messages.

    Raises:
        ValueError: For a missing, unreadable or truncated file, images and
            labels of different counts, or a label out of range.
    """
    directory = Path(directory)
    images_name, labels_name = IDX_FILES[split]
    paths = [_resolve(directory, name) for name in (images_name, labels_name)]
    if None in paths:
        missing = images_name if paths[0] is None else labels_name
        raise ValueError(f"{dataset} {split}: IDX file {missing} (or its un-gzipped name) not found in {directory}.")
    images = _read_idx(paths[0], _IMAGES_MAGIC)
    labels = _read_idx(paths[1], _LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"{dataset} {split}: {len(images)} images but {len(labels)} labels in {directory}.")
    if len(labels) and labels.max() >= num_classes:
        raise ValueError(
            f"{dataset} {split}: label {int(labels.max())} out of range 0..{num_classes - 1} in {paths[1]}."
        )
    return images[..., None], labels.astype(np.int64)


def find_fashion_mnist_idx(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The directory holding all four Fashion-MNIST IDX files (default: Debian's folder), or None."""
    return find_idx(data_dir or DEBIAN_FASHION_MNIST_DIR)


def read_fashion_mnist_idx(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 28, 28, 1) uint8 and labels (n,) int64 of one split from the IDX files."""
    return read_idx(directory, split, num_classes=len(FASHION_MNIST_CLASSES), dataset="Fashion-MNIST")
