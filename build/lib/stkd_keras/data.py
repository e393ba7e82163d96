"""Datasets as batched, prefetched `tf.data` pipelines.

Sources:
- `fashion_mnist`: the four IDX files (Debian's `dataset-fashion-mnist`
  installs them in `/usr/share/datasets/fashion-mnist`; `data_dir` overrides),
  falling back to `tfds.load` when they are not there.
- `cifar10`, `cifar100`, `mnist` (and `fashion_mnist` without IDX files):
  `tfds.load`, which downloads when the machine is online.

The pipeline: normalise with the dataset's mean/std, augment (training only:
random crop after zero padding, plus horizontal flip where flipping keeps the
class), shuffle, batch, prefetch. The augmentation draws are stateless and
seeded, so the same seed gives the same batches. As in the KD literature, the
test split doubles as the validation split.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import socket
import struct
from pathlib import Path

import numpy as np
import tensorflow as tf

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "test")

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
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a dataset before reading it."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool
    download_host: str
    class_names: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a loaded split is: shapes, classes, normalisation and where it came from."""

    name: str
    split: str
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_examples: int
    source: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SPECS = {
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", (28, 28, 1), 10, (0.2860,), (0.3530,), 2, True, "fashion-mnist.s3-website.eu-central-1.amazonaws.com", FASHION_MNIST_CLASSES
    ),
    # Digits change meaning when mirrored: crop only.
    "mnist": DatasetSpec("mnist", (28, 28, 1), 10, (0.1307,), (0.3081,), 2, False, "storage.googleapis.com", tuple(str(i) for i in range(10))),
    "cifar10": DatasetSpec(
        "cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True, "www.cs.toronto.edu"
    ),
    "cifar100": DatasetSpec(
        "cifar100", (32, 32, 3), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4, True, "www.cs.toronto.edu"
    ),
}


class DatasetNotFoundError(RuntimeError):
    """A dataset is neither on this machine nor downloadable; the message says where we looked."""


def list_datasets() -> list[str]:
    """Names accepted by `load`."""
    return sorted(_SPECS)


def get_spec(name: str) -> DatasetSpec:
    """The `DatasetSpec` of a dataset name; raises `ValueError` listing valid names."""
    if name not in _SPECS:
        raise ValueError(f"Unknown dataset {name!r}. Expected one of: {', '.join(list_datasets())}.")
    return _SPECS[name]


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
    if labels.max() >= 10:
        raise ValueError(f"Fashion-MNIST {split}: label {int(labels.max())} out of range 0..9 in {directory}.")
    return images[..., None], labels.astype(np.int64)


def _host_resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _load_tfds(spec: DatasetSpec, split: str, tfds_dir: str | None, download: bool):
    """`tfds.load` of one split as (image uint8, label int64) pairs, with a one-sentence error when unavailable."""
    import tensorflow_datasets as tfds

    def tfds_load(allow_download):
        return tfds.load(
            spec.name, split=split, as_supervised=True, shuffle_files=False, data_dir=tfds_dir, download=allow_download, with_info=True
        )

    try:
        dataset, info = tfds_load(False)
    except AssertionError:  # tfds's way of saying the prepared data is not there.
        where = tfds.builder(spec.name, data_dir=tfds_dir).data_dir
        # Offline, tfds would retry its download for minutes before failing: ask the resolver first.
        if not download or not _host_resolves(spec.download_host):
            reason = "downloading is turned off" if not download else f"{spec.download_host} cannot be reached"
            hint = " or install Debian's dataset-fashion-mnist / pass --data-dir with the four IDX files" if spec.name == "fashion_mnist" else ""
            raise DatasetNotFoundError(
                f"Dataset {spec.name!r} is not on this machine (looked for prepared TFDS data in {where}) and {reason}; "
                f"prepare it on a connected machine with `tfds build {spec.name}` and copy the folder to {where}{hint}."
            ) from None
        dataset, info = tfds_load(True)
    class_names = spec.class_names or tuple(info.features["label"].names)
    try:
        num_examples = info.splits[split].num_examples
    except KeyError:  # Split metadata missing (e.g. tfds.testing.mock_data): count.
        num_examples = int(dataset.cardinality())
        if num_examples < 0:
            num_examples = int(dataset.reduce(0, lambda count, _: count + 1))
    return dataset, num_examples, class_names, f"tfds:{info.data_dir}"


def _normalise(images, spec: DatasetSpec):
    mean = tf.constant(spec.mean, tf.float32)
    std = tf.constant(spec.std, tf.float32)
    return (tf.cast(images, tf.float32) / 255.0 - mean) / std


def _augment(image, seed, spec: DatasetSpec):
    """Pad-and-crop (and flip) one raw image with stateless, seeded draws."""
    height, width, channels = spec.input_shape
    if spec.crop_padding:
        pad = spec.crop_padding
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.image.stateless_random_crop(padded, (height, width, channels), seed=seed)
    if spec.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed[::-1])
    return image


def load(
    name: str,
    split: str = "train",
    batch_size: int = 128,
    augment: bool | None = None,
    shuffle: bool | None = None,
    subset: int | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    seed: int = 0,
    drop_remainder: bool = False,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Loads one split as a batched, prefetched `tf.data.Dataset` of (images, labels).

    Images are float32, normalised with the dataset's mean/std; labels are
    int64 class ids.

    Args:
        name: One of `list_datasets()`.
        split: "train" or "test" (the test split is the validation split).
        batch_size: Batch size.
        augment: Random crop (and flip); defaults to True for "train".
        shuffle: Shuffle each epoch; defaults to True for "train".
        subset: Use only the first `subset` examples of a fixed shuffle of
            the split (the same examples for every seed and method).
        data_dir: For fashion_mnist, the folder with the four IDX files; for
            tfds datasets, the TFDS data directory.
        download: Let tfds download a missing dataset.
        seed: Seed of shuffling and augmentation.
        drop_remainder: Drop the last incomplete batch.

    Returns:
        `(dataset, info)`.

    Raises:
        ValueError: For an unknown name or split, a non-positive batch size or subset.
        DatasetNotFoundError: When the data is not on this machine and cannot be downloaded.
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise ValueError(f"Expected `split` to be one of {SPLITS}. Received: split={split!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be an int >= 1. Received: batch_size={batch_size!r}")
    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise ValueError(f"Expected `subset` to be an int >= 1 or None. Received: subset={subset!r}")
    training = split == "train"
    augment = training if augment is None else augment
    shuffle = training if shuffle is None else shuffle

    idx_dir = find_fashion_mnist_idx(data_dir) if name == "fashion_mnist" else None
    if name == "fashion_mnist" and data_dir is not None and idx_dir is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST IDX files ({', '.join(n for pair in IDX_FILES.values() for n in pair)}) not found in {data_dir}."
        )
    if idx_dir is not None:
        images, labels = read_fashion_mnist_idx(idx_dir, split)
        if subset is not None:
            order = np.random.default_rng(0).permutation(len(labels))[:subset]
            images, labels = images[order], labels[order]
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        num_examples, class_names, source = len(labels), spec.class_names, f"idx:{idx_dir}"
    else:
        dataset, num_examples, class_names, source = _load_tfds(spec, split, data_dir if name != "fashion_mnist" else None, download)
        if subset is not None:
            # tfds order is fixed (shuffle_files=False): the first examples are a fixed subset.
            dataset = dataset.take(subset)
            num_examples = min(num_examples, subset)

    if shuffle:
        dataset = dataset.shuffle(min(num_examples, 20000), seed=seed, reshuffle_each_iteration=True)
    if augment:
        # Augment the raw uint8 image, so padding is black as in torchvision's RandomCrop(padding=...).
        seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda pair, s: (_augment(pair[0], s, spec), pair[1]), num_parallel_calls=tf.data.AUTOTUNE
        )
    dataset = dataset.map(lambda image, label: (_normalise(image, spec), label), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    info = DatasetInfo(
        name=name,
        split=split,
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        class_names=tuple(class_names),
        mean=spec.mean,
        std=spec.std,
        num_examples=int(num_examples),
        source=source,
    )
    return dataset, info
