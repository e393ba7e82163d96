"""The one batch builder: a split from any source (`data_sources.RawSplit`) into batches of normalised images.

`stkd_keras.data.load` and `stkd_keras.data.load_arrays` both end here.
Two pipelines build the batches (see `stkd_keras.data`): "tf_data", a
prefetched `tf.data.Dataset` with stateless, seeded augmentation draws, and
"numpy", a `keras.utils.PyDataset` from `stkd_keras.array_pipeline`. This
module imports TensorFlow only inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING

import numpy as np

from stkd_keras.data import DatasetInfo, DatasetSpec

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from stkd_keras.data_sources import RawSplit


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """How the batches of a split are drawn; `load`'s arguments of the same names.

    Attributes:
        batch_size: Batch size (with `shard`: the global batch size).
        augment: Random crop (and flip); None: True for the "train" split.
        shuffle: Shuffle each epoch; None: True for the "train" split.
        seed: Seed of shuffling and augmentation (an int >= 0 for "numpy").
        drop_remainder: Drop the last incomplete batch.
        stream: For training runs: an endless stream of full batches
            (reshuffled on every pass over the data), in which batch k is a
            function of (seed, k) only, so a run resumed at step k sees
            exactly the batches an uninterrupted run sees.
        start_step: With `stream`: the first batch of the stream (the
            examples before it are skipped before any decoding or augmentation).
        shard: With `stream`: (index, count) to take rows
            [index * b / count, (index + 1) * b / count) of every global
            batch of b, as one of `count` data-parallel processes does.
    """

    batch_size: int = 128
    augment: bool | None = None
    shuffle: bool | None = None
    seed: int = 0
    drop_remainder: bool = False
    stream: bool = False
    start_step: int = 0
    shard: tuple[int, int] | None = None


def build_batches(
    raw: RawSplit, options: BatchOptions, pipeline: str, normalization: tuple | None, channels: int | None = None
) -> tuple[tf.data.Dataset | keras.utils.PyDataset, DatasetInfo]:
    """Batches of `raw` built by `pipeline` ("tf_data" or "numpy"), and the `DatasetInfo` that describes them.

    `normalization` is (mean, std) to use instead of the dataset's own.
    `channels` (None: the split's own) repeats a 1-channel split's images to
    that many channels in every batch, after augmentation and before
    normalisation, with one mean/std per channel of the batches.
    Warns when a training split lacks some of the dataset's classes.
    """
    training = raw.split == "train"
    options = dataclasses.replace(
        options,
        augment=training if options.augment is None else options.augment,
        shuffle=training if options.shuffle is None else options.shuffle,
    )
    spec = raw.spec
    channels = channels or spec.input_shape[-1]
    classes_present = None if raw.labels is None else _classes_present(raw, training)
    mean, std = _statistics(spec, normalization, channels)
    num_examples = raw.num_examples
    if pipeline == "numpy":
        images, labels = raw.as_arrays()
        num_examples = len(labels)
        batches = _numpy_pipeline(images, labels, spec, mean, std, options)
    else:
        batches = _tf_pipeline(raw.as_dataset(), num_examples, spec, mean, std, options)
    info = DatasetInfo(
        name=raw.name,
        split=raw.split,
        num_classes=spec.num_classes,
        input_shape=(*spec.input_shape[:2], channels),
        class_names=tuple(raw.class_names),
        mean=mean,
        std=std,
        num_examples=int(num_examples),
        source=raw.source,
        classes_present=classes_present,
    )
    return batches, info


def _statistics(spec: DatasetSpec, normalization, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """One mean and std per channel of the batches; those of a 1-channel split repeated when its gray is repeated."""
    mean, std = (
        (tuple(normalization[0]), tuple(normalization[1])) if normalization is not None else (spec.mean, spec.std)
    )
    if spec.input_shape[-1] == len(mean) == len(std) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"Expected one mean and std per channel ({channels}). Received: normalization={normalization!r}"
        )
    return mean, std


def _classes_present(raw: RawSplit, training: bool) -> int:
    classes_present = int(len(np.unique(raw.labels)))
    num_classes = raw.spec.num_classes
    if training and classes_present < num_classes:
        # stacklevel 4: the warning points at the caller of `load` / `load_arrays`, two calls above this one.
        warnings.warn(
            f"The {raw.split} split of {raw.name!r} holds examples of only {classes_present} of its {num_classes} "
            f"classes ({len(raw.labels)} examples); the model still predicts all {num_classes}.",
            stacklevel=4,
        )
    return classes_present


# --- The tf.data pipeline ------------------------------------------------------------------------


def _normalise(image, mean, std):
    """(image / 255 - mean) / std per channel of one raw image; a 1-channel image repeated to one channel per mean."""
    import tensorflow as tf

    if image.shape[-1] == 1 and len(mean) > 1:
        image = tf.tile(image, [1, 1, len(mean)])
    return (tf.cast(image, tf.float32) / 255.0 - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


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


def _tf_pipeline(dataset, num_examples: int, spec: DatasetSpec, mean, std, options: BatchOptions):
    """Augments, normalises, shuffles, batches and prefetches a `tf.data.Dataset` of raw (image, label) pairs."""
    import tensorflow as tf

    batch_size, seed, drop_remainder, shard = options.batch_size, options.seed, options.drop_remainder, options.shard
    buffer = min(max(num_examples, 1), 20000)
    if options.stream:
        # shuffle(seed) + repeat: pass p's order depends on (seed, p) only; skipping whole examples
        # before the maps keeps a resumed stream identical and cheap. Augmentation draws are keyed
        # by the example's position in the stream.
        first = options.start_step * batch_size
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat().skip(first)
        keyed = dataset.enumerate(start=first).map(
            lambda index, pair: (tf.stack([tf.cast(seed, tf.int64), index]), pair)
        )
        drop_remainder = True
    elif options.shuffle:
        # Outside training runs: reshuffled and re-augmented on every pass (keys drawn from a seeded stream).
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        keyed = tf.data.Dataset.zip((tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True), dataset))
    else:
        keyed = dataset.enumerate().map(lambda index, pair: (tf.stack([tf.cast(seed, tf.int64), index]), pair))
    if options.augment:
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


# --- The numpy pipeline --------------------------------------------------------------------------


def _numpy_pipeline(images, labels, spec: DatasetSpec, mean, std, options: BatchOptions):
    from stkd_keras import array_pipeline

    crop_padding, flip = (spec.crop_padding, spec.flip) if options.augment else (0, False)
    if options.stream:
        return array_pipeline.ArrayStream(
            images,
            labels,
            options.batch_size,
            mean,
            std,
            crop_padding=crop_padding,
            flip=flip,
            seed=options.seed,
            start_step=options.start_step,
            shard=options.shard,
            channels=len(mean),
        )
    return array_pipeline.ArrayBatches(
        images,
        labels,
        options.batch_size,
        mean,
        std,
        crop_padding=crop_padding,
        flip=flip,
        shuffle=options.shuffle,
        seed=options.seed,
        drop_remainder=options.drop_remainder,
        channels=len(mean),
    )
