"""Where `stkd_keras.data.load` reads a split from: IDX files, tensorflow-datasets, or arrays you hold.

Every source reads one split into a `RawSplit`: raw uint8 images and int64
labels, in memory or as a `tf.data.Dataset` of (image, label) pairs, with
the facts of the dataset they belong to. `stkd_keras.batches` turns any
`RawSplit` into batches. Which examples a split holds under `subset` and
`holdout` is decided here, in one place (`held_out`, `chosen_examples`).
Image folders (`folder:PATH`) are a source of their own,
`stkd_keras.image_folder`. TensorFlow and tensorflow-datasets are imported
only inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stkd_keras.data import FOLDER_PREFIX, INSTALL_TENSORFLOW, DatasetNotFoundError, DatasetSpec
from stkd_keras.idx import DEBIAN_FASHION_MNIST_DIR, find_fashion_mnist_idx, find_idx, idx_file_names, read_idx

if TYPE_CHECKING:
    import tensorflow as tf

# Datasets that can be read from IDX files, and their names in messages.
IDX_DATASETS = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}
# Images per task of `resize_images`: each task fills its own rows of one preallocated output.
_RESIZE_CHUNK = 1024
_RESIZE_THREADS = 8


@dataclasses.dataclass(frozen=True, eq=False)
class RawSplit:
    """One split as its source read it, before batching: raw pixels, labels and what the dataset is.

    A source gives `images` and `labels` in memory (IDX files, arrays) or
    `dataset`, a `tf.data.Dataset` of (image uint8, label int64) pairs (TFDS,
    image folders), with `labels` too where they are known without decoding
    the images (image folders). `name` is the name the split was asked for
    and `split` the split ("train", "test" or "validation").
    """

    name: str
    split: str
    spec: DatasetSpec
    num_examples: int
    class_names: tuple[str, ...]
    source: str
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    dataset: tf.data.Dataset | None = None

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 and labels int64 in memory, read from `dataset` when the source gave one (numpy pipeline)."""
        if self.images is not None:
            return self.images, self.labels
        images, labels = [], []
        for image_batch, label_batch in self.dataset.batch(1024).as_numpy_iterator():
            images.append(image_batch)
            labels.append(label_batch)
        if not images:
            return np.zeros((0, *self.spec.input_shape), np.uint8), np.zeros((0,), np.int64)
        return np.concatenate(images).astype(np.uint8, copy=False), np.concatenate(labels).astype(np.int64)

    def as_dataset(self) -> tf.data.Dataset:
        """A `tf.data.Dataset` of raw (image, label) pairs, made from the arrays when the source gave arrays."""
        if self.dataset is not None:
            return self.dataset
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices((self.images, self.labels))


# --- Resizing ------------------------------------------------------------------------------------


def resize_images(images: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """uint8 images (n, h, w, c) resized to `image_size` (height, width) with Pillow's bilinear filter.

    Pillow's `Image.Resampling.BILINEAR` is a triangle filter over pixel
    centres whose support widens with the scale when shrinking, so it
    antialiases as `tf.image.resize(..., antialias=True)` does; Pillow
    computes it in fixed point and rounds to uint8. Each image is resized on
    its own, exactly as `PIL.Image.resize` does it, by a few threads (Pillow
    releases the GIL) that fill one preallocated uint8 output: the memory is
    the output alone. Images already of `image_size` are returned as they are.
    Pillow, unlike TensorFlow, is there on every backend (Matplotlib needs it).
    """
    from PIL import Image

    count, height, width, channels = images.shape
    height_out, width_out = image_size
    if (height, width) == (height_out, width_out):
        return images
    out = np.empty((count, height_out, width_out, channels), np.uint8)

    def resize_chunk(start: int) -> None:
        for i in range(start, min(start + _RESIZE_CHUNK, count)):
            picture = Image.fromarray(images[i, ..., 0] if channels == 1 else images[i])
            resized = picture.resize((width_out, height_out), Image.Resampling.BILINEAR)
            out[i] = np.asarray(resized).reshape(height_out, width_out, channels)

    with ThreadPoolExecutor(min(_RESIZE_THREADS, os.cpu_count() or 1)) as pool:
        list(pool.map(resize_chunk, range(0, count, _RESIZE_CHUNK)))  # list(): raises the first task's error
    return out


def resize_dataset(dataset: tf.data.Dataset, image_size: tuple[int, int]) -> tf.data.Dataset:
    """(image uint8, label) pairs, each image resized by `tf.image.resize(..., antialias=True)` and rounded to uint8."""
    import tensorflow as tf

    def resize(image, label):
        resized = tf.image.resize(image, image_size, antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8), label

    return dataset.map(resize, num_parallel_calls=tf.data.AUTOTUNE)


# --- Which examples a split holds ----------------------------------------------------------------


def stored_split(split: str) -> str:
    """The split of the files that holds `split`: "validation" is part of the training split."""
    return "test" if split == "test" else "train"


def held_out(num_examples: int, split: str, holdout: int | None) -> tuple[int, int]:
    """(start, stop) of `split` in the training split's fixed order when `holdout` examples are set apart at its end."""
    if split == "test" or holdout is None:
        return 0, num_examples
    if holdout >= num_examples:
        raise ValueError(
            f"Expected `holdout` below the {num_examples} examples of the training split, to leave some to train on. "
            f"Received: holdout={holdout}"
        )
    return (num_examples - holdout, num_examples) if split == "validation" else (0, num_examples - holdout)


def chosen_examples(num_examples: int, split: str, subset: int | None, holdout: int | None) -> np.ndarray | None:
    """Indices of the examples `split` reads from an array source (None: all, in file order).

    A subset takes the first `subset` of the fixed shuffle
    `np.random.default_rng(0).permutation(n)`; a holdout the last `holdout`
    of the same shuffle, so a training subset is the same with or without
    one, as long as the two do not overlap.
    """
    if subset is None and (split == "test" or holdout is None):
        return None
    start, stop = held_out(num_examples, split, holdout)
    return np.random.default_rng(0).permutation(num_examples)[start:stop][:subset]


# --- Sources that need TensorFlow ----------------------------------------------------------------


def tensorflow_missing(name: str, data_dir) -> DatasetNotFoundError:
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


# --- IDX files -----------------------------------------------------------------------------------


def idx_directory(name: str, data_dir) -> Path | None:
    """Where the IDX files of `name` are: fashion_mnist looks in Debian's folder by default, mnist in `data_dir`."""
    if name == "fashion_mnist":
        return find_fashion_mnist_idx(data_dir)
    if name == "mnist":
        return find_idx(data_dir)
    return None


def read_idx_split(
    spec: DatasetSpec,
    directory: Path,
    split: str,
    subset: int | None,
    holdout: int | None,
    image_size: tuple[int, int] | None = None,
) -> RawSplit:
    """`split` of an IDX dataset from the four files in `directory`, its examples chosen by `chosen_examples`.

    With `image_size`, the chosen images are resized once, here (`resize_images`), so both pipelines batch the same
    uint8 pixels.
    """
    images, labels = read_idx(directory, stored_split(split), spec.num_classes, IDX_DATASETS[spec.name])
    chosen = chosen_examples(len(labels), split, subset, holdout)
    if chosen is not None:
        images, labels = images[chosen], labels[chosen]
    spec = spec.resized(image_size)
    images = resize_images(images, spec.input_shape[:2])
    source = f"idx:{directory}"
    return RawSplit(spec.name, split, spec, len(labels), spec.class_names, source, images=images, labels=labels)


# --- Arrays you hold -----------------------------------------------------------------------------


def read_arrays(images: np.ndarray, labels: np.ndarray, spec: DatasetSpec, split: str) -> RawSplit:
    """Raw images and labels held in memory as a split of `spec`, after checking their dtype, shape and range."""
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
    class_names = tuple(spec.class_names or (str(i) for i in range(spec.num_classes)))
    labels = labels.astype(np.int64)
    return RawSplit(spec.name, split, spec, len(labels), class_names, "arrays", images=images, labels=labels)


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
                hint = (
                    "put the official archive or its extracted folder in a folder and pass it as --data-dir "
                    f"(looked in {manual_dir})"
                )
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


def read_tfds_split(
    spec: DatasetSpec,
    split: str,
    subset: int | None,
    holdout: int | None,
    data_dir,
    tfds_dir,
    download: bool,
    image_size: tuple[int, int] | None = None,
) -> RawSplit:
    """`split` through tensorflow-datasets; `subset` takes the first examples of TFDS's order, `holdout` the last.

    `data_dir` is the TFDS data directory, except for datasets read from
    their official files (`spec.manual`), where it is the folder holding
    them and `tfds_dir` the TFDS data directory. With `image_size`, each
    image is resized as it is read (`resize_dataset`); a training shuffle
    buffer then holds up to 20,000 resized images (3 GB at 224x224x3).
    """
    manual_dir = data_dir if spec.manual else None
    tfds_data_dir = tfds_dir if spec.manual else (data_dir if spec.name != "fashion_mnist" else None)
    dataset, num_examples, class_names, source = _load_tfds(
        spec, stored_split(split), tfds_data_dir, manual_dir, download
    )
    start, stop = held_out(num_examples, split, holdout)
    if (start, stop) != (0, num_examples):
        dataset, num_examples = dataset.skip(start).take(stop - start), stop - start
    if subset is not None:
        # tfds order is fixed (shuffle_files=False): the first examples are a fixed subset.
        dataset = dataset.take(subset)
        num_examples = min(num_examples, subset)
    resized = spec.resized(image_size)
    if resized is not spec:
        dataset = resize_dataset(dataset, resized.input_shape[:2])
    return RawSplit(spec.name, split, resized, num_examples, tuple(class_names), source, dataset=dataset)


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


def describe_tfds(spec: DatasetSpec, data_dir: str | os.PathLike | None, tfds_dir) -> dict:
    """Where tensorflow-datasets would read `spec` from and whether it is available, without reading it."""
    import tensorflow_datasets as tfds

    if spec.manual:
        import stkd_keras.tfds_builders  # noqa: F401
    with _absl_warnings_off():  # tfds warns of each folder without a dataset_info.json it looks into
        builder = tfds.builder(spec.name, data_dir=tfds_dir if spec.manual else data_dir)
        prepared, folder = builder.is_prepared(), builder.data_dir
    if prepared:
        return {"name": spec.name, "source": f"TFDS data in {folder}", "available": True}
    if spec.manual and _has_files(data_dir):
        return {
            "name": spec.name,
            "source": f"official files in {data_dir} (prepared into {folder} on first use)",
            "available": True,
        }
    where = f"TFDS data in {folder}" + (", or the official files in --data-dir" if spec.manual else "")
    downloadable = _host_resolves(spec.download_host)
    return {
        "name": spec.name,
        "source": where
        + (
            f"; downloadable from {spec.download_host}" if downloadable else f"; {spec.download_host} cannot be reached"
        ),
        "available": downloadable,
    }
