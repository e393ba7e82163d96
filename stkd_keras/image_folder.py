"""Your own images as a dataset: `folder:PATH`, one folder of images per class.

`PATH/<class>/*.jpg|png|...`, or `PATH/train/<class>` with `PATH/val/<class>`
(or `validation`, `test`). Without a validation folder a fixed fraction of
each class is held out. Every image is decoded once when the folder is
scanned, so a corrupt file is named before training starts; the mean/std are
measured on the training images after resizing. The images are decoded with
TensorFlow (imported only inside the functions that need it) and resized to
`image_size`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from stkd_keras.data import FOLDER_PREFIX, DatasetNotFoundError, DatasetSpec
from stkd_keras.data_sources import RawSplit, chosen_examples, stored_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VALIDATION_FOLDER_NAMES = ("val", "validation", "test")


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


def _validation_folder(validation_root: Path, train_root: Path, class_names) -> tuple[list[str], list[int]]:
    """The files and labels of a validation folder, whose classes must be among the training folder's."""
    unknown = sorted(p.name for p in validation_root.iterdir() if p.is_dir() and p.name not in class_names)
    if unknown:
        raise ValueError(
            f"Validation folder {validation_root / unknown[0]} is a class the training folder {train_root} lacks."
        )
    present = tuple(n for n in class_names if (validation_root / n).is_dir())
    val_files, val_labels = _class_files(validation_root, present)
    return val_files, [class_names.index(present[i]) for i in val_labels]


def _hold_out(files: list[str], labels: list[int], class_names, validation_fraction: float) -> tuple[list, ...]:
    """(train files, train labels, validation files, validation labels): `validation_fraction` of each class held out.

    At least one image of each class with more than one is held out, chosen
    by a seed-0 shuffle of the class's sorted file names.
    """
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
    return train_files, train_labels, val_files, val_labels


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
        val_files, val_labels = _validation_folder(validation_root, train_root, class_names)
        train_files, train_labels = files, labels
    else:
        train_files, train_labels, val_files, val_labels = _hold_out(files, labels, class_names, validation_fraction)
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
    """The `DatasetSpec` of a scanned folder at `image_size`: crop padding of an eighth of the height, and flips."""
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


def read_folder_split(
    name: str, split: str, subset: int | None, holdout: int | None, image_size: tuple[int, int] | None
) -> RawSplit:
    """`split` of the image folder `name` (`folder:PATH`), resized to `image_size` (default 32x32).

    The examples are chosen as from IDX files (`data_sources.chosen_examples`),
    then kept in file order; they are decoded lazily, as a `tf.data.Dataset`.
    """
    import tensorflow as tf

    image_size = tuple(image_size or (32, 32))
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"Expected `image_size` = (height, width). Received: image_size={image_size!r}")
    folder = scan_image_folder(str(Path(name[len(FOLDER_PREFIX) :]).expanduser().resolve()), image_size)
    files, labels = folder.files[stored_split(split)], folder.labels[stored_split(split)]
    chosen = chosen_examples(len(labels), split, subset, holdout)
    if chosen is not None:
        order = np.sort(chosen)
        files, labels = [files[i] for i in order], labels[order]
    dataset = tf.data.Dataset.from_tensor_slices((files, labels)).map(
        lambda f, y: (_decode(f, image_size), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    spec = folder_spec(folder, image_size)
    return RawSplit(name, split, spec, len(labels), folder.class_names, folder.source, labels=labels, dataset=dataset)
