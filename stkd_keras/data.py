"""Datasets as batched pipelines of normalised images, through one `load` API.

Sources:
- `fashion_mnist`: the four IDX files (Debian's `dataset-fashion-mnist`
  installs them in `/usr/share/datasets/fashion-mnist`; `data_dir` overrides),
  falling back to `tfds.load` when they are not there.
- `mnist`: the same four IDX files when `data_dir` holds them, else `tfds.load`
  (with `data_dir` as the TFDS data directory).
- `cifar10`, `cifar100`: `tfds.load`, which downloads when online.
- `cinic10`, `tiny_imagenet`: TFDS builders of this project
  (`stkd_keras.tfds_builders`) that download the official archive when online
  and otherwise read it, or its extracted folder, from `data_dir`.
- `folder:PATH`: your own images in `PATH/<class>/*.jpg|png|...` (or
  `PATH/train/<class>` with `PATH/val/<class>`), resized to `image_size`,
  with a deterministic validation split when none is given.
- Arrays you hold already: `load_arrays`.

Two pipelines build the batches; `load(..., pipeline=...)` chooses:
- "tf_data": a prefetched `tf.data.Dataset`: decode, augment (training only:
  random crop after zero padding, plus horizontal flip where flipping keeps
  the class), normalise with the dataset's mean/std, shuffle, batch. Its
  augmentation draws are stateless and seeded.
- "numpy": a `keras.utils.PyDataset` of numpy batches over the split held in
  memory (`stkd_keras.array_pipeline`): the same kind of augmentation and the
  same normalisation with numpy's draws, for Keras on JAX or PyTorch without
  TensorFlow. IDX datasets need nothing else; TFDS datasets and image folders
  are read with TensorFlow and then held as arrays.
- "auto" (the default): "tf_data" where `import tensorflow` works, else "numpy".

Either way the same seed gives the same batches. Augmentation lives here,
never inside a model, so exported models hold none of it. As in the KD
literature, the test split (Tiny-ImageNet: the labelled validation split)
serves for validation. To choose settings without reading it, `holdout=N`
sets the last N examples of the training split (by a fixed shuffle) apart as
the split "validation", and "train" no longer contains them. This module
imports TensorFlow only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# The IDX files are read with numpy alone (stkd_keras.idx); the Fashion-MNIST names stay importable from here.
from stkd_keras.backend_choice import tensorflow_available
from stkd_keras.idx import (  # noqa: F401
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IDX_FILES,
    find_fashion_mnist_idx,
    find_idx,
    idx_file_names,
    read_fashion_mnist_idx,
    read_idx,
)

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

SPLITS = ("train", "test", "validation")
FOLDER_PREFIX = "folder:"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VALIDATION_FOLDER_NAMES = ("val", "validation", "test")
PIPELINES = ("auto", "tf_data", "numpy")
INSTALL_TENSORFLOW = "pip install 'stkd-keras[tensorflow]'"
# Datasets that can be read from IDX files, and their names in messages.
IDX_DATASETS = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a dataset before reading it.

    `tfds_splits` maps our split names to the TFDS ones; `manual` datasets read
    their raw archive or folder from `data_dir` (TFDS's manual_dir).
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool
    download_host: str = ""
    class_names: tuple[str, ...] | None = None
    tfds_splits: tuple[tuple[str, str], ...] = (("train", "train"), ("test", "test"))
    manual: bool = False


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a loaded split is: shapes, classes, normalisation and where it came from.

    `classes_present` is the number of classes with at least one example in
    the split when that is known without an extra pass (None otherwise).
    """

    name: str
    split: str
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_examples: int
    source: str
    classes_present: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SPECS = {
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        (28, 28, 1),
        10,
        FASHION_MNIST_MEAN,
        FASHION_MNIST_STD,
        2,
        True,
        "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        FASHION_MNIST_CLASSES,
    ),
    # Digits change meaning when mirrored: crop only.
    "mnist": DatasetSpec(
        "mnist",
        (28, 28, 1),
        10,
        (0.1307,),
        (0.3081,),
        2,
        False,
        "storage.googleapis.com",
        tuple(str(i) for i in range(10)),
    ),
    "cifar10": DatasetSpec(
        "cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True, "www.cs.toronto.edu"
    ),
    "cifar100": DatasetSpec(
        "cifar100", (32, 32, 3), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4, True, "www.cs.toronto.edu"
    ),
    # The official CINIC-10 statistics (Darlow et al. 2018).
    "cinic10": DatasetSpec(
        "cinic10",
        (32, 32, 3),
        10,
        (0.47889522, 0.47227842, 0.43047404),
        (0.24205776, 0.23828046, 0.25874835),
        4,
        True,
        "datashare.ed.ac.uk",
        manual=True,
    ),
    # Tiny-ImageNet's test labels are not public: its labelled validation split is the test split.
    "tiny_imagenet": DatasetSpec(
        "tiny_imagenet",
        (64, 64, 3),
        200,
        (0.4802, 0.4481, 0.3975),
        (0.2302, 0.2265, 0.2262),
        8,
        True,
        "cs231n.stanford.edu",
        tfds_splits=(("train", "train"), ("test", "validation")),
        manual=True,
    ),
}


class DatasetNotFoundError(RuntimeError):
    """A dataset is neither on this machine nor downloadable; the message says where we looked."""


def list_datasets() -> list[str]:
    """Names accepted by `load` (`folder:PATH` stands for any image folder)."""
    return [*_SPECS, f"{FOLDER_PREFIX}PATH"]


def get_spec(name: str) -> DatasetSpec:
    """The `DatasetSpec` of a named dataset; raises `ValueError` listing valid names."""
    if name not in _SPECS:
        raise ValueError(f"Unknown dataset {name!r}. Expected one of: {', '.join(list_datasets())}.")
    return _SPECS[name]


# --- TFDS ----------------------------------------------------------------------------------------


def _host_resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _has_files(directory) -> bool:
    return directory is not None and Path(directory).is_dir() and any(Path(directory).iterdir())


def _load_tfds(spec: DatasetSpec, split: str, tfds_dir, manual_dir, download: bool):
    """`tfds.load` of one split as (image uint8, label int64) pairs, with a one-sentence error when unavailable."""
    import tensorflow_datasets as tfds

    if spec.manual:
        import stkd_keras.tfds_builders  # noqa: F401  (registers cinic10 and tiny_imagenet)

    tfds_split = dict(spec.tfds_splits)[split]

    def tfds_load():
        return tfds.load(
            spec.name,
            split=tfds_split,
            as_supervised=True,
            shuffle_files=False,
            data_dir=tfds_dir,
            download=False,
            with_info=True,
        )

    try:
        dataset, info = tfds_load()
    except AssertionError:  # tfds's way of saying the prepared data is not there.
        builder = tfds.builder(spec.name, data_dir=tfds_dir)
        where = builder.data_dir
        if spec.manual and _has_files(manual_dir):
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
        elif download and _host_resolves(spec.download_host):
            builder.download_and_prepare()
        else:
            # Offline, tfds would retry its download for minutes before failing: the resolver answered first.
            reason = "downloading is turned off" if not download else f"{spec.download_host} cannot be reached"
            if spec.manual:
                hint = f"put the official archive or its extracted folder in a folder and pass it as --data-dir (looked in {manual_dir})"
            else:
                hint = f"prepare it on a connected machine with `tfds build {spec.name}` and copy the folder to {where}"
                if spec.name == "fashion_mnist":
                    hint += " (or install Debian's dataset-fashion-mnist, or pass --data-dir with the four IDX files)"
            raise DatasetNotFoundError(
                f"Dataset {spec.name!r} is not on this machine (looked for prepared TFDS data in {where}) and "
                f"{reason}; {hint}."
            ) from None
        dataset, info = tfds_load()
    class_names = spec.class_names or tuple(info.features["label"].names)
    try:
        num_examples = info.splits[tfds_split].num_examples
    except KeyError:  # Split metadata missing (e.g. tfds.testing.mock_data): count.
        num_examples = int(dataset.cardinality())
        if num_examples < 0:
            num_examples = int(dataset.reduce(0, lambda count, _: count + 1))
    return dataset, num_examples, class_names, f"tfds:{info.data_dir}"


# --- Image folders -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """A scanned `folder:` dataset: file lists per split, classes and training statistics."""

    root: Path
    class_names: tuple[str, ...]
    files: dict
    labels: dict
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


def _image_files(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_files(split_root: Path, class_names) -> tuple[list[str], list[int]]:
    files, labels = [], []
    for label, name in enumerate(class_names):
        folder = split_root / name
        found = _image_files(folder) if folder.is_dir() else []
        if not found:
            raise ValueError(f"Class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        files += found
        labels += [label] * len(found)
    return files, labels


def _decode(path, image_size):
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    if image_size is not None:
        image = tf.image.resize(image, image_size, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0, 255), tf.uint8)


def _check_and_measure(files: list[str], image_size) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Decodes every image once (in parallel); names the first that fails; returns per-channel mean/std."""
    import tensorflow as tf

    indices = tf.data.Dataset.from_tensor_slices((np.arange(len(files)), files))
    decoded = indices.map(lambda i, f: (i, _decode(f, image_size)), num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    seen = np.zeros(len(files), bool)
    total = np.zeros(3)
    total_squares = np.zeros(3)
    pixels = 0
    for index_batch, image_batch in decoded.batch(256):
        seen[index_batch.numpy()] = True
        values = image_batch.numpy().reshape(-1, 3).astype(np.float64) / 255.0
        total += values.sum(axis=0)
        total_squares += (values**2).sum(axis=0)
        pixels += len(values)
    bad = np.flatnonzero(~seen)
    if len(bad):
        others = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(f"Cannot decode image file {files[bad[0]]}{others}: corrupt, truncated or not an image.")
    mean = total / pixels
    std = np.sqrt(np.maximum(total_squares / pixels - mean**2, 1e-12))
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(v), 6) for v in std)


@functools.lru_cache(maxsize=8)
def scan_image_folder(path: str, image_size: tuple[int, int], validation_fraction: float = 0.1) -> ImageFolder:
    """Scans `PATH/<class>/*` (or `PATH/train/<class>` + `PATH/val/<class>`) and checks every image.

    Without a validation folder, a fixed `validation_fraction` of each class
    (at least one image, chosen by a seed-0 shuffle of the sorted file names)
    is held out, the same on every run. The mean/std are measured on the
    training images after resizing.

    Raises:
        DatasetNotFoundError: If `path` is not a folder.
        ValueError: For fewer than two classes, an empty class folder, a
            validation class the training split lacks, or an image that does
            not decode (the message names the file).
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetNotFoundError(f"Image folder {root} does not exist.")
    train_root = root / "train" if (root / "train").is_dir() else root
    class_names = tuple(sorted(p.name for p in train_root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if train_root == root:
        class_names = tuple(n for n in class_names if n not in VALIDATION_FOLDER_NAMES)
    if len(class_names) < 2:
        raise ValueError(
            f"Image folder {train_root} needs at least two class folders; found {len(class_names)}: "
            f"{list(class_names)}."
        )
    files, labels = _class_files(train_root, class_names)
    validation_root = next(
        (root / n for n in VALIDATION_FOLDER_NAMES if train_root != root and (root / n).is_dir()), None
    )
    if validation_root is not None:
        unknown = sorted(p.name for p in validation_root.iterdir() if p.is_dir() and p.name not in class_names)
        if unknown:
            raise ValueError(
                f"Validation folder {validation_root / unknown[0]} is a class the training folder {train_root} lacks."
            )
        present = tuple(n for n in class_names if (validation_root / n).is_dir())
        val_files, val_labels = _class_files(validation_root, present)
        val_labels = [class_names.index(present[i]) for i in val_labels]
        train_files, train_labels = files, labels
    else:
        if not 0 < validation_fraction < 1:
            raise ValueError(
                f"Expected 0 < `validation_fraction` < 1. Received: validation_fraction={validation_fraction!r}"
            )
        rng = np.random.default_rng(0)
        train_files, train_labels, val_files, val_labels = [], [], [], []
        for label in range(len(class_names)):
            members = [f for f, l in zip(files, labels) if l == label]
            order = rng.permutation(len(members))
            held_out = max(1, round(validation_fraction * len(members))) if len(members) > 1 else 0
            val_files += [members[i] for i in sorted(order[:held_out])]
            train_files += [members[i] for i in sorted(order[held_out:])]
            val_labels += [label] * held_out
            train_labels += [label] * (len(members) - held_out)
    mean, std = _check_and_measure(train_files, image_size)
    _check_and_measure(val_files, image_size)
    return ImageFolder(
        root=root,
        class_names=class_names,
        files={"train": train_files, "test": val_files},
        labels={"train": np.array(train_labels, np.int64), "test": np.array(val_labels, np.int64)},
        mean=mean,
        std=std,
        source=f"folder:{root}"
        + (
            f" (validation: {validation_root})"
            if validation_root
            else f" ({validation_fraction:.0%} of each class held out)"
        ),
    )


def folder_spec(folder: ImageFolder, image_size: tuple[int, int]) -> DatasetSpec:
    height, width = image_size
    return DatasetSpec(
        f"{FOLDER_PREFIX}{folder.root}",
        (height, width, 3),
        len(folder.class_names),
        folder.mean,
        folder.std,
        crop_padding=max(1, height // 8),
        flip=True,
        class_names=folder.class_names,
    )


# --- Choosing the pipeline -----------------------------------------------------------------------


def resolve_pipeline(pipeline: str = "auto") -> str:
    """The pipeline `load` builds for `pipeline`: "tf_data" or "numpy" ("auto": "tf_data" where TensorFlow imports).

    Raises:
        ValueError: For an unknown name, or "tf_data" without TensorFlow.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"Expected `pipeline` to be one of {PIPELINES}. Received: pipeline={pipeline!r}")
    if pipeline == "auto":
        return "tf_data" if tensorflow_available() else "numpy"
    if pipeline == "tf_data" and not tensorflow_available():
        raise ValueError(
            f"The tf_data pipeline needs TensorFlow, which cannot be imported here; install it ({INSTALL_TENSORFLOW}) "
            "or use pipeline='numpy'."
        )
    return pipeline


def _tensorflow_missing(name: str, data_dir) -> DatasetNotFoundError:
    """The one-sentence error for a dataset that only TensorFlow can read, on a machine without it."""
    idx_hint = "use a dataset read from IDX files: fashion_mnist, or mnist with --data-dir holding its four IDX files"
    if name.startswith(FOLDER_PREFIX):
        return DatasetNotFoundError(
            f"Image folders ({name}) are decoded with TensorFlow, which cannot be imported here; install it "
            f"({INSTALL_TENSORFLOW}) or {idx_hint}."
        )
    if name == "fashion_mnist":
        return DatasetNotFoundError(
            f"Fashion-MNIST's four IDX files are not in {DEBIAN_FASHION_MNIST_DIR}, and reading it through "
            "tensorflow-datasets needs TensorFlow, "
            "which cannot be imported here; install Debian's dataset-fashion-mnist, pass --data-dir with the four IDX "
            "files, "
            f"or install TensorFlow ({INSTALL_TENSORFLOW})."
        )
    if name == "mnist" and data_dir is not None:
        return DatasetNotFoundError(
            f"Dataset 'mnist' has no IDX files in {data_dir} ({', '.join(idx_file_names())}, gzipped or not), and "
            "reading it through "
            f"tensorflow-datasets needs TensorFlow, which cannot be imported here; put the IDX files there "
            f"or install TensorFlow ({INSTALL_TENSORFLOW})."
        )
    return DatasetNotFoundError(
        f"Dataset {name!r} is read through tensorflow-datasets, which needs TensorFlow; install it "
        f"({INSTALL_TENSORFLOW}) or {idx_hint}."
    )


def _idx_directory(name: str, data_dir) -> Path | None:
    """Where the IDX files of `name` are: fashion_mnist looks in Debian's folder by default, mnist only in `data_dir`."""
    if name == "fashion_mnist":
        return find_fashion_mnist_idx(data_dir)
    if name == "mnist":
        return find_idx(data_dir)
    return None


# --- The tf.data pipeline ------------------------------------------------------------------------


def _normalise(images, mean, std):
    import tensorflow as tf

    return (tf.cast(images, tf.float32) / 255.0 - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _augment(image, seed, spec: DatasetSpec):
    """Pad-and-crop (and flip) one raw image with stateless, seeded draws."""
    import tensorflow as tf

    height, width, channels = spec.input_shape
    if spec.crop_padding:
        pad = spec.crop_padding
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.image.stateless_random_crop(padded, (height, width, channels), seed=seed)
    if spec.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed[::-1])
    return image


def _tf_pipeline(
    dataset,
    num_examples,
    spec,
    mean,
    std,
    batch_size,
    augment,
    shuffle,
    seed,
    drop_remainder,
    stream,
    start_step,
    shard,
):
    """Augments, normalises, shuffles, batches and prefetches a `tf.data.Dataset` of raw (image, label) pairs."""
    import tensorflow as tf

    buffer = min(max(num_examples, 1), 20000)
    if stream:
        # shuffle(seed) + repeat: pass p's order depends on (seed, p) only; skipping whole examples
        # before the maps keeps a resumed stream identical and cheap. Augmentation draws are keyed
        # by the example's position in the stream.
        first = start_step * batch_size
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat().skip(first)
        keyed = dataset.enumerate(start=first).map(
            lambda index, pair: (tf.stack([tf.cast(seed, tf.int64), index]), pair)
        )
        drop_remainder = True
    elif shuffle:
        # Outside training runs: reshuffled and re-augmented on every pass (keys drawn from a seeded stream).
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        keyed = tf.data.Dataset.zip((tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True), dataset))
    else:
        keyed = dataset.enumerate().map(lambda index, pair: (tf.stack([tf.cast(seed, tf.int64), index]), pair))
    if augment:
        dataset = keyed.map(
            lambda key, pair: (_augment(pair[0], key, spec), pair[1]), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        dataset = keyed.map(lambda key, pair: pair)
    dataset = dataset.map(
        lambda image, label: (_normalise(image, mean, std), label), num_parallel_calls=tf.data.AUTOTUNE
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if shard is not None:
        size = batch_size // shard[1]
        rows = slice(shard[0] * size, (shard[0] + 1) * size)
        dataset = dataset.map(lambda images, labels: (images[rows], labels[rows]))
    return dataset.prefetch(tf.data.AUTOTUNE)


def _as_arrays(dataset, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """A `tf.data.Dataset` of raw (image, label) pairs read into memory, for the numpy pipeline."""
    images, labels = [], []
    for image_batch, label_batch in dataset.batch(1024).as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    if not images:
        return np.zeros((0, *spec.input_shape), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(images).astype(np.uint8, copy=False), np.concatenate(labels).astype(np.int64)


# --- Building the batches ------------------------------------------------------------------------


def _check_options(split, batch_size, subset, stream, start_step, shard, holdout=None) -> None:
    if split not in SPLITS:
        raise ValueError(f"Expected `split` to be one of {SPLITS}. Received: split={split!r}")
    if holdout is not None and (not isinstance(holdout, (int, np.integer)) or holdout < 1):
        raise ValueError(f"Expected `holdout` to be an int >= 1 or None. Received: holdout={holdout!r}")
    if split == "validation" and holdout is None:
        raise ValueError("The split 'validation' is the training examples set apart by `holdout`: pass holdout=N.")
    if split == "test" and holdout is not None:
        raise ValueError(
            "Expected `holdout` only with the 'train' and 'validation' splits (it divides the training split). "
            f"Received: split={split!r}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be an int >= 1. Received: batch_size={batch_size!r}")
    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise ValueError(f"Expected `subset` to be an int >= 1 or None. Received: subset={subset!r}")
    if not isinstance(start_step, (int, np.integer)) or start_step < 0:
        raise ValueError(f"Expected `start_step` to be an int >= 0. Received: start_step={start_step!r}")
    if shard is not None:
        if not stream:
            raise ValueError(
                "Expected `shard` only with stream=True (it slices every global training batch). Received: "
                f"shard={shard!r}"
            )
        if len(shard) != 2 or not all(isinstance(v, (int, np.integer)) for v in shard) or not 0 <= shard[0] < shard[1]:
            raise ValueError(f"Expected `shard` = (index, count) with 0 <= index < count. Received: shard={shard!r}")
        if batch_size % shard[1]:
            raise ValueError(
                f"Expected the global batch size to divide evenly over {shard[1]} shards. Received: "
                f"batch_size={batch_size}"
            )


def _statistics(spec: DatasetSpec, normalization) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = (
        (tuple(normalization[0]), tuple(normalization[1])) if normalization is not None else (spec.mean, spec.std)
    )
    if len(mean) != spec.input_shape[-1] or len(std) != spec.input_shape[-1]:
        raise ValueError(
            f"Expected one mean and std per channel ({spec.input_shape[-1]}). Received: normalization={normalization!r}"
        )
    return mean, std


def _classes_present(labels, spec: DatasetSpec, name: str, split: str, training: bool) -> int:
    classes_present = int(len(np.unique(labels)))
    if training and classes_present < spec.num_classes:
        warnings.warn(
            f"The {split} split of {name!r} holds examples of only {classes_present} of its {spec.num_classes} classes "
            f"({len(labels)} examples); the model still predicts all {spec.num_classes}.",
            stacklevel=3,
        )
    return classes_present


def _held_out(num_examples: int, split: str, holdout: int | None) -> tuple[int, int]:
    """(start, stop) of `split` in the training split's fixed order when `holdout` examples are set apart at its end."""
    if split == "test" or holdout is None:
        return 0, num_examples
    if holdout >= num_examples:
        raise ValueError(
            f"Expected `holdout` below the {num_examples} examples of the training split, to leave some to train on. "
            f"Received: holdout={holdout}"
        )
    return (num_examples - holdout, num_examples) if split == "validation" else (0, num_examples - holdout)


def _chosen_examples(num_examples: int, split: str, subset: int | None, holdout: int | None) -> np.ndarray | None:
    """Indices of the examples `split` reads from an array source (None: all, in file order).

    A subset takes the first `subset` of the fixed shuffle
    `np.random.default_rng(0).permutation(n)`; a holdout the last `holdout`
    of the same shuffle, so a training subset is the same with or without
    one, as long as the two do not overlap.
    """
    if subset is None and (split == "test" or holdout is None):
        return None
    start, stop = _held_out(num_examples, split, holdout)
    return np.random.default_rng(0).permutation(num_examples)[start:stop][:subset]


def _numpy_pipeline(
    images, labels, spec, mean, std, batch_size, augment, shuffle, seed, drop_remainder, stream, start_step, shard
):
    from stkd_keras import array_pipeline

    crop_padding, flip = (spec.crop_padding, spec.flip) if augment else (0, False)
    if stream:
        return array_pipeline.ArrayStream(
            images,
            labels,
            batch_size,
            mean,
            std,
            crop_padding=crop_padding,
            flip=flip,
            seed=seed,
            start_step=start_step,
            shard=shard,
        )
    return array_pipeline.ArrayBatches(
        images,
        labels,
        batch_size,
        mean,
        std,
        crop_padding=crop_padding,
        flip=flip,
        shuffle=shuffle,
        seed=seed,
        drop_remainder=drop_remainder,
    )


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
    image_size: tuple[int, int] | None = None,
    normalization: tuple | None = None,
    tfds_dir: str | os.PathLike | None = None,
    stream: bool = False,
    start_step: int = 0,
    pipeline: str = "auto",
    shard: tuple[int, int] | None = None,
    holdout: int | None = None,
) -> tuple[tf.data.Dataset | keras.utils.PyDataset, DatasetInfo]:
    """Loads one split as batches of (images, labels): a `tf.data.Dataset`, or a `keras.utils.PyDataset` of numpy arrays.

    Images are float32, normalised with the dataset's mean/std; labels are
    int64 class ids. `pipeline` chooses what builds the batches (see the
    module docstring); both honour every argument below.

    Args:
        name: One of `list_datasets()`, or `folder:PATH`.
        split: "train", "test" (the split used for validation unless a
            holdout is set apart), or "validation" (the held-out training
            examples; needs `holdout`).
        batch_size: Batch size (with `shard`: the global batch size).
        augment: Random crop (and flip); defaults to True for "train".
        shuffle: Shuffle each epoch; defaults to True for "train".
        subset: Use only `subset` examples: from IDX files and image
            folders, the first `subset` of the fixed shuffle
            `np.random.default_rng(0).permutation(n)` (the same examples for
            every seed, method and pipeline); from TFDS, the first `subset`.
            With `holdout`, of the examples left to the split.
        data_dir: fashion_mnist: the folder with the four IDX files;
            mnist: the folder with its four IDX files, or else the TFDS data
            directory; cinic10 / tiny_imagenet: the folder holding the
            official archive or its extracted folder (TFDS manual_dir);
            cifar10 / cifar100: the TFDS data directory.
        download: Let tfds download a missing dataset.
        seed: Seed of shuffling and augmentation (an int >= 0 for "numpy").
        drop_remainder: Drop the last incomplete batch.
        image_size: (height, width) for `folder:` datasets (default 32x32).
        normalization: (mean, std) to use instead of the dataset's own, e.g.
            those stored with a trained model.
        tfds_dir: Where TFDS keeps prepared data for cinic10 / tiny_imagenet
            (default: TFDS's own, `~/tensorflow_datasets`).
        stream: For training runs: an endless stream of full batches
            (reshuffled on every pass over the data), in which batch k is a
            function of (seed, k) only, so a run resumed at step k sees
            exactly the batches an uninterrupted run sees.
        start_step: With `stream`: the first batch of the stream (the
            examples before it are skipped before any decoding or augmentation).
        pipeline: "auto" (tf.data where TensorFlow imports, else numpy),
            "tf_data" or "numpy".
        shard: With `stream`: (index, count) to take rows
            [index * b / count, (index + 1) * b / count) of every global
            batch of b, as one of `count` data-parallel processes does.
        holdout: Set the last `holdout` training examples apart as the split
            "validation" (from IDX files and image folders: the last of the
            fixed shuffle above, so a training subset keeps its examples;
            from TFDS: the last in TFDS's order); "train" then reads only
            the others. Pass the same value for both splits.

    Returns:
        `(dataset, info)`: dataset a `tf.data.Dataset` ("tf_data") or a
        `keras.utils.PyDataset` ("numpy"; `stkd_keras.array_pipeline`).

    Raises:
        ValueError: For an unknown name, split or pipeline, invalid sizes,
            or bad data (the message names the file or folder).
        DatasetNotFoundError: When the data is not on this machine and
            cannot be downloaded, or only TensorFlow could read it and it is
            not installed.
    """
    _check_options(split, batch_size, subset, stream, start_step, shard, holdout)
    pipeline = resolve_pipeline(pipeline)
    training = split == "train"
    source_split = "test" if split == "test" else "train"  # "validation" is part of the training split
    augment = training if augment is None else augment
    shuffle = training if shuffle is None else shuffle
    # The source gives either arrays (IDX files) or a tf.data.Dataset of raw pairs (TFDS, image folders).
    images, labels, dataset = None, None, None

    if name.startswith(FOLDER_PREFIX):
        if not tensorflow_available():
            raise _tensorflow_missing(name, data_dir)
        import tensorflow as tf

        image_size = tuple(image_size or (32, 32))
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"Expected `image_size` = (height, width). Received: image_size={image_size!r}")
        folder = scan_image_folder(str(Path(name[len(FOLDER_PREFIX) :]).expanduser().resolve()), image_size)
        spec = folder_spec(folder, image_size)
        files, labels = folder.files[source_split], folder.labels[source_split]
        chosen = _chosen_examples(len(labels), split, subset, holdout)
        if chosen is not None:
            order = np.sort(chosen)
            files, labels = [files[i] for i in order], labels[order]
        dataset = tf.data.Dataset.from_tensor_slices((files, labels)).map(
            lambda f, y: (_decode(f, image_size), y), num_parallel_calls=tf.data.AUTOTUNE
        )
        num_examples, class_names, source = len(labels), folder.class_names, folder.source
    else:
        spec = get_spec(name)
        idx_dir = _idx_directory(name, data_dir)
        if name == "fashion_mnist" and data_dir is not None and idx_dir is None:
            raise DatasetNotFoundError(
                f"Fashion-MNIST IDX files ({', '.join(idx_file_names())}) not found in {data_dir}."
            )
        if idx_dir is not None:
            images, labels = read_idx(idx_dir, source_split, spec.num_classes, IDX_DATASETS[name])
            chosen = _chosen_examples(len(labels), split, subset, holdout)
            if chosen is not None:
                images, labels = images[chosen], labels[chosen]
            num_examples, class_names, source = len(labels), spec.class_names, f"idx:{idx_dir}"
        else:
            if not tensorflow_available():
                raise _tensorflow_missing(name, data_dir)
            manual_dir = data_dir if spec.manual else None
            tfds_data_dir = tfds_dir if spec.manual else (data_dir if name != "fashion_mnist" else None)
            dataset, num_examples, class_names, source = _load_tfds(
                spec, source_split, tfds_data_dir, manual_dir, download
            )
            start, stop = _held_out(num_examples, split, holdout)
            if (start, stop) != (0, num_examples):
                dataset, num_examples = dataset.skip(start).take(stop - start), stop - start
            if subset is not None:
                # tfds order is fixed (shuffle_files=False): the first examples are a fixed subset.
                dataset = dataset.take(subset)
                num_examples = min(num_examples, subset)

    classes_present = None if labels is None else _classes_present(labels, spec, name, split, training)
    mean, std = _statistics(spec, normalization)
    options = {
        "batch_size": batch_size,
        "augment": augment,
        "shuffle": shuffle,
        "seed": seed,
        "drop_remainder": drop_remainder,
        "stream": stream,
        "start_step": start_step,
        "shard": shard,
    }
    if pipeline == "numpy":
        if images is None:
            images, labels = _as_arrays(dataset, spec)
            num_examples = len(labels)
        batches = _numpy_pipeline(images, labels, spec, mean, std, **options)
    else:
        if dataset is None:
            import tensorflow as tf

            dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        batches = _tf_pipeline(dataset, num_examples, spec, mean, std, **options)
    info = DatasetInfo(
        name=name,
        split=split,
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        class_names=tuple(class_names),
        mean=mean,
        std=std,
        num_examples=int(num_examples),
        source=source,
        classes_present=classes_present,
    )
    return batches, info


def load_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    spec: DatasetSpec | str,
    split: str = "train",
    batch_size: int = 128,
    augment: bool | None = None,
    shuffle: bool | None = None,
    seed: int = 0,
    drop_remainder: bool = False,
    normalization: tuple | None = None,
    stream: bool = False,
    start_step: int = 0,
    pipeline: str = "auto",
    shard: tuple[int, int] | None = None,
) -> tuple[tf.data.Dataset | keras.utils.PyDataset, DatasetInfo]:
    """Batches raw images you hold in memory through the same pipelines as `load`.

    The images are raw pixels, as read from files: uint8 (n, height, width,
    channels) matching `spec.input_shape`; `spec` gives the normalisation
    (unless `normalization` does) and the augmentation (`crop_padding`,
    `flip`). Every other argument means what it means for `load`.

    Args:
        images: uint8 array (n, height, width, channels).
        labels: Integer class ids (n,) in 0 .. spec.num_classes - 1.
        spec: A `DatasetSpec`, or the name of a dataset in `list_datasets()`
            whose statistics and augmentation the arrays share.
        split: "train" or "test": the defaults of `augment` and `shuffle`,
            and `info.split`.
        batch_size, augment, shuffle, seed, drop_remainder, normalization,
            stream, start_step, pipeline, shard: As for `load`.

    Returns:
        `(dataset, info)`, with `info.source == "arrays"`.

    Raises:
        ValueError: For arrays of the wrong dtype, shape or label range, or
            an invalid option.

    Example:

    ```python
    images, labels = stkd_keras.idx.read_fashion_mnist_idx(directory, "train")
    stream, info = load_arrays(images[:512], labels[:512], "fashion_mnist", stream=True, pipeline="numpy")
    ```
    """
    _check_options(split, batch_size, None, stream, start_step, shard)
    pipeline = resolve_pipeline(pipeline)
    spec = get_spec(spec) if isinstance(spec, str) else spec
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.shape[1:] != tuple(spec.input_shape):
        raise ValueError(
            f"Expected `images` to be uint8 of shape (n, {', '.join(map(str, spec.input_shape))}). Received: dtype "
            f"{images.dtype}, shape {images.shape}"
        )
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Expected `labels` to be integers of shape ({len(images)},). Received: dtype {labels.dtype}, shape "
            f"{labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise ValueError(
            f"Expected `labels` in 0..{spec.num_classes - 1}. Received: labels from {labels.min()} to {labels.max()}"
        )
    labels = labels.astype(np.int64)
    training = split == "train"
    augment = training if augment is None else augment
    shuffle = training if shuffle is None else shuffle
    classes_present = _classes_present(labels, spec, spec.name, split, training)
    mean, std = _statistics(spec, normalization)
    options = {
        "batch_size": batch_size,
        "augment": augment,
        "shuffle": shuffle,
        "seed": seed,
        "drop_remainder": drop_remainder,
        "stream": stream,
        "start_step": start_step,
        "shard": shard,
    }
    if pipeline == "numpy":
        batches = _numpy_pipeline(images, labels, spec, mean, std, **options)
    else:
        import tensorflow as tf

        batches = _tf_pipeline(
            tf.data.Dataset.from_tensor_slices((images, labels)), len(labels), spec, mean, std, **options
        )
    info = DatasetInfo(
        name=spec.name,
        split=split,
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        class_names=tuple(spec.class_names or (str(i) for i in range(spec.num_classes))),
        mean=mean,
        std=std,
        num_examples=len(labels),
        source="arrays",
        classes_present=classes_present,
    )
    return batches, info


@contextlib.contextmanager
def _absl_warnings_off():
    """Raises absl's Python logger (the one tfds writes to) to errors only while the block runs."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def describe(name: str, data_dir: str | os.PathLike | None = None, tfds_dir=None) -> dict:
    """Where a named dataset would be read from and whether it is available here, without reading it."""
    spec = get_spec(name)
    idx_dir = _idx_directory(name, data_dir)
    if idx_dir is not None:
        return {"name": name, "source": f"IDX files in {idx_dir}", "available": True}
    if not tensorflow_available():
        return {
            "name": name,
            "source": "tensorflow-datasets, which needs TensorFlow (not importable here)",
            "available": False,
        }
    import tensorflow_datasets as tfds

    if spec.manual:
        import stkd_keras.tfds_builders  # noqa: F401
    with _absl_warnings_off():  # tfds warns of each folder without a dataset_info.json it looks into
        builder = tfds.builder(name, data_dir=tfds_dir if spec.manual else data_dir)
        prepared, folder = builder.is_prepared(), builder.data_dir
    if prepared:
        return {"name": name, "source": f"TFDS data in {folder}", "available": True}
    if spec.manual and _has_files(data_dir):
        return {
            "name": name,
            "source": f"official files in {data_dir} (prepared into {folder} on first use)",
            "available": True,
        }
    where = f"TFDS data in {folder}" + (", or the official files in --data-dir" if spec.manual else "")
    downloadable = _host_resolves(spec.download_host)
    return {
        "name": name,
        "source": where
        + (
            f"; downloadable from {spec.download_host}" if downloadable else f"; {spec.download_host} cannot be reached"
        ),
        "available": downloadable,
    }
