"""In-memory datasets as `keras.utils.PyDataset`s, with numpy alone: the data pipeline without TensorFlow.

The same kind of pipeline as the `tf.data` one in `stkd_keras.batches`: zero-pad
by `crop_padding` pixels and crop back to h x w at a random offset, mirror
left-right with probability 0.5 where `flip` is set (crop, then flip), then
normalise to float32 with (x / 255 - mean) / std per channel. The draws are
numpy's, not TensorFlow's, so the batches are not those of the `tf.data`
pipeline; only their distribution is the same. With `channels=3`, 1-channel
images are repeated to three equal channels after augmentation, before
normalisation (one mean/std per channel of the batches), so the split stays
1-channel in memory.

Two datasets:
- `ArrayStream`, for training runs: an endless stream of full batches in
  which batch k is a function of (seed, k) only. Stream position i lies in
  pass i // n over the data, whose order is
  `np.random.default_rng([seed, pass]).permutation(n)`; the crop offsets and
  flips of batch k come from `np.random.default_rng([seed, k, 1])`. Item i of
  the dataset is stream batch `start_step + i`, so a run resumed at step k
  sees exactly the batches an uninterrupted one sees. Keras's `fit` with
  `steps_per_epoch` keeps one iterator over an endless PyDataset across
  epochs and asks for items 0, 1, 2, ... in order.
- `ArrayBatches`: a finite pass in order (evaluation, validation), or
  reshuffled and re-augmented on every pass over the data.

Both keep PyDataset's single-threaded loading: a batch of 128 takes about
0.3 ms (28x28x1) to 1 ms (32x32x3) on one CPU core, far below a training
step, and two worker threads were slower for 28x28x1 and only 20% faster for
32x32x3 with the cores otherwise idle. Pass `workers=` /
`use_multiprocessing=` (PyDataset's arguments) to change it.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# The last entry of a draw's seed sequence, so that order and augmentation draws never share a seed.
_AUGMENTATION_KEY = 1
_EPOCH_ORDER_KEY = 2
_CACHED_ORDERS = 4


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 images (n, h, w, c) as float32 (images / 255 - mean) / std, per channel.

    The arithmetic is float32 and in the order written, as in the `tf.data`
    pipeline.
    """
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    count, height, width, channels = images.shape
    # Rows of h * w * c values against tiled statistics: numpy's inner loops run over long rows, not c values.
    values = images.reshape(count, -1).astype(np.float32)
    values /= np.float32(255.0)
    values -= np.tile(mean, height * width)
    values /= np.tile(std, height * width)
    return values.reshape(count, height, width, channels)


def draw_augmentation(rng: np.random.Generator, count: int, padding: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Crop offsets (count, 2) in [0, 2 * padding] (row, column) and flips (count,) with p = 0.5 where `flip`."""
    offsets = rng.integers(0, 2 * padding + 1, size=(count, 2))
    flips = rng.random(count) < 0.5
    return offsets, flips & bool(flip)


def crop_and_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, padding: int) -> np.ndarray:
    """Zero-pads images (n, h, w, c) by `padding`, crops h x w at `offsets`, then mirrors those with `flips`.

    Output image i is `padded[i, r:r + h, s:s + w]` with (r, s) = offsets[i],
    reversed along the width where flips[i].
    """
    count, height, width, channels = images.shape
    if padding:
        padded = np.zeros((count, height + 2 * padding, width + 2 * padding, channels), images.dtype)
        padded[:, padding : padding + height, padding : padding + width] = images
    else:
        padded = images
    out = np.empty_like(images)
    # Every h x w window of every image, as views: one fancy index picks each image's window (shape n, c, h, w).
    windows = sliding_window_view(padded, (height, width), axis=(1, 2))
    # Mirroring the crop at column s equals cropping the mirrored padded image at column 2 * padding - s.
    mirrored_windows = sliding_window_view(padded[:, :, ::-1], (height, width), axis=(1, 2))
    kept, mirrored = np.flatnonzero(~flips), np.flatnonzero(flips)
    out[kept] = np.moveaxis(windows[kept, offsets[kept, 0], offsets[kept, 1]], 1, -1)
    out[mirrored] = np.moveaxis(
        mirrored_windows[mirrored, offsets[mirrored, 0], 2 * padding - offsets[mirrored, 1]], 1, -1
    )
    return out


def repeat_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Images (n, h, w, 1) repeated to `channels` equal channels; images of `channels` channels unchanged."""
    return images if images.shape[-1] == channels else np.repeat(images, channels, axis=-1)


def _check_arrays(images, labels, mean, std, channels=None) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"Expected `images` to be uint8 of shape (n, height, width, channels). Received: dtype {images.dtype}, "
            f"shape {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Expected `labels` to be integers of shape ({len(images)},). Received: dtype {labels.dtype}, shape "
            f"{labels.shape}"
        )
    if channels is not None and channels != images.shape[-1] and images.shape[-1] != 1:
        raise ValueError(
            f"Expected `channels` to be None or the images' {images.shape[-1]} channels (only 1-channel images are "
            f"repeated). Received: channels={channels!r}"
        )
    channels = channels or images.shape[-1]
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(
            f"Expected one mean and one std > 0 per channel ({channels}). Received: mean={tuple(mean)!r}, "
            f"std={tuple(std)!r}"
        )
    return images, labels.astype(np.int64, copy=False)


def _check_common(batch_size, seed, crop_padding) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be an int >= 1. Received: batch_size={batch_size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Expected `seed` to be an int >= 0. Received: seed={seed!r}")
    if not isinstance(crop_padding, (int, np.integer)) or crop_padding < 0:
        raise ValueError(f"Expected `crop_padding` to be an int >= 0. Received: crop_padding={crop_padding!r}")


class ArrayStream(keras.utils.PyDataset):
    """An endless stream of full, shuffled, augmented and normalised batches of in-memory images.

    Stream batch k holds stream positions k * b ... (k + 1) * b - 1 (b the
    global `batch_size`). Position i is example `order(i // n)[i % n]`, with
    `order(p) = np.random.default_rng([seed, p]).permutation(n)`: every
    example once per pass, and a batch may straddle two passes. The crop
    offsets and flips of batch k are drawn from
    `np.random.default_rng([seed, k, 1])`. So batch k is a function of
    (seed, k) only, and `self[i]` is stream batch `start_step + i`.

    With `shard=(index, count)`, `self[i]` holds only rows
    [index * b / count, (index + 1) * b / count) of the global batch: the
    process `index` of `count` in multi-process data parallelism; the shards
    concatenate to the global batch.

    Args:
        images: uint8 array (n, height, width, channels).
        labels: Integer class ids (n,); batches carry them as int64.
        batch_size: The global batch size b.
        mean: Per-channel mean of the images scaled to [0, 1].
        std: Per-channel standard deviation, likewise.
        crop_padding: Zero padding before the random crop (0: no crop).
        flip: Mirror left-right with probability 0.5.
        seed: Seed (an int >= 0) of the order and the augmentation.
        start_step: The stream batch that `self[0]` is.
        shard: (index, count) to take one slice of every global batch.
        channels: The channels of the batches (None: the images' own); 1-channel
            images are repeated to them. `mean` and `std` have one value per
            channel of the batches.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`.

    Raises:
        ValueError: For arrays of the wrong dtype or shape, statistics that
            do not match the channels, no examples, or a shard that does not
            divide the batch evenly.

    Example:

    ```python
    stream = ArrayStream(images, labels, 128, (0.286,), (0.353,), crop_padding=2, flip=True, seed=0)
    model.fit(stream, epochs=10, steps_per_epoch=len(images) // 128)
    ```
    """

    def __init__(
        self,
        images,
        labels,
        batch_size,
        mean,
        std,
        *,
        crop_padding=0,
        flip=False,
        seed=0,
        start_step=0,
        shard=None,
        channels=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_common(batch_size, seed, crop_padding)
        self.images, self.labels = _check_arrays(images, labels, mean, std, channels)
        self.channels = len(mean)
        if len(self.labels) == 0:
            raise ValueError("Expected at least one example for a stream. Received: 0 images")
        if not isinstance(start_step, (int, np.integer)) or start_step < 0:
            raise ValueError(f"Expected `start_step` to be an int >= 0. Received: start_step={start_step!r}")
        if shard is not None:
            index, count = shard
            if not (
                isinstance(count, (int, np.integer))
                and count >= 1
                and isinstance(index, (int, np.integer))
                and 0 <= index < count
            ):
                raise ValueError(
                    f"Expected `shard` = (index, count) with 0 <= index < count. Received: shard={shard!r}"
                )
            if batch_size % count:
                raise ValueError(
                    f"Expected the global batch size to divide evenly over {count} shards. Received: "
                    f"batch_size={batch_size}"
                )
        self.batch_size = int(batch_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_padding, self.flip = int(crop_padding), bool(flip)
        self.seed, self.start_step = int(seed), int(start_step)
        self.shard = None if shard is None else (int(shard[0]), int(shard[1]))
        self._orders = {}

    @property
    def num_batches(self):
        return None  # Endless: Keras's adapters then ask for items 0, 1, 2, ...

    def pass_order(self, pass_index: int) -> np.ndarray:
        """The example order of pass `pass_index` over the data."""
        order = self._orders.get(pass_index)
        if order is None:
            order = np.random.default_rng([self.seed, pass_index]).permutation(len(self.labels))
            if len(self._orders) >= _CACHED_ORDERS:
                self._orders.pop(next(iter(self._orders)))
            self._orders[pass_index] = order
        return order

    def batch_indices(self, step: int) -> np.ndarray:
        """The example indices of global stream batch `step` (all b rows, whatever the shard)."""
        count = len(self.labels)
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)
        passes = positions // count
        indices = np.empty(self.batch_size, np.int64)
        for pass_index in range(int(passes[0]), int(passes[-1]) + 1):
            members = passes == pass_index
            indices[members] = self.pass_order(pass_index)[positions[members] % count]
        return indices

    def stream_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Stream batch `step` (this process's shard of it): float32 images and int64 labels."""
        indices = self.batch_indices(step)
        rows = slice(None)
        if self.shard is not None:
            index, count = self.shard
            size = self.batch_size // count
            rows = slice(index * size, (index + 1) * size)
        images = self.images[indices[rows]]
        if self.crop_padding or self.flip:
            rng = np.random.default_rng([self.seed, step, _AUGMENTATION_KEY])
            offsets, flips = draw_augmentation(rng, self.batch_size, self.crop_padding, self.flip)
            images = crop_and_flip(images, offsets[rows], flips[rows], self.crop_padding)
        return normalize(repeat_channels(images, self.channels), self.mean, self.std), self.labels[indices[rows]]

    def __getitem__(self, index):
        if index < 0:
            raise IndexError(f"An endless stream has no item {index}.")
        return self.stream_batch(self.start_step + int(index))


class ArrayBatches(keras.utils.PyDataset):
    """A finite pass over in-memory images in batches: ordered for evaluation, or shuffled and augmented.

    Without `shuffle`, item j holds examples j * b ... (j + 1) * b - 1 in
    order; there are ceil(n / b) items, the last one short, or n // b with
    `drop_remainder`. With `shuffle`, pass e (counted by `epoch`) takes the
    examples in the order `np.random.default_rng([seed, e, 2]).permutation(n)`,
    and every `on_epoch_end` (Keras calls it after each epoch; a full
    `for batch in dataset` loop does too) moves on to the next pass. The
    crop offsets and flips of item j in pass e come from
    `np.random.default_rng([seed, e, j, 1])`, so without `shuffle` the
    augmentation is the same on every pass, as in the `tf.data` pipeline.

    Args:
        images: uint8 array (n, height, width, channels).
        labels: Integer class ids (n,); batches carry them as int64.
        batch_size: Batch size.
        mean: Per-channel mean of the images scaled to [0, 1].
        std: Per-channel standard deviation, likewise.
        crop_padding: Zero padding before the random crop (0: no crop).
        flip: Mirror left-right with probability 0.5.
        shuffle: Reshuffle on every pass.
        seed: Seed (an int >= 0) of the order and the augmentation.
        drop_remainder: Leave out the last, short batch.
        channels: The channels of the batches (None: the images' own); 1-channel
            images are repeated to them. `mean` and `std` have one value per
            channel of the batches.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`.

    Raises:
        ValueError: For arrays of the wrong dtype or shape, or statistics
            that do not match the channels.

    Example:

    ```python
    validation = ArrayBatches(test_images, test_labels, 256, (0.286,), (0.353,))
    model.evaluate(validation)
    ```
    """

    def __init__(
        self,
        images,
        labels,
        batch_size,
        mean,
        std,
        *,
        crop_padding=0,
        flip=False,
        shuffle=False,
        seed=0,
        drop_remainder=False,
        channels=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_common(batch_size, seed, crop_padding)
        self.images, self.labels = _check_arrays(images, labels, mean, std, channels)
        self.channels = len(mean)
        self.batch_size = int(batch_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_padding, self.flip = int(crop_padding), bool(flip)
        self.shuffle, self.seed, self.drop_remainder = bool(shuffle), int(seed), bool(drop_remainder)
        self.epoch = 0
        self._order = (None, None)

    def __len__(self):
        count = len(self.labels)
        return count // self.batch_size if self.drop_remainder else math.ceil(count / self.batch_size)

    def _epoch_order(self) -> np.ndarray:
        epoch, order = self._order
        if epoch != self.epoch:
            order = np.random.default_rng([self.seed, self.epoch, _EPOCH_ORDER_KEY]).permutation(len(self.labels))
            self._order = (self.epoch, order)
        return order

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch {index} is out of range for {len(self)} batches.")
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        if self.shuffle:
            indices = self._epoch_order()[rows]
            images, labels = self.images[indices], self.labels[indices]
        else:
            images, labels = self.images[rows], self.labels[rows]
        if self.crop_padding or self.flip:
            rng = np.random.default_rng([self.seed, self.epoch, int(index), _AUGMENTATION_KEY])
            offsets, flips = draw_augmentation(rng, len(labels), self.crop_padding, self.flip)
            images = crop_and_flip(images, offsets, flips, self.crop_padding)
        return normalize(repeat_channels(images, self.channels), self.mean, self.std), labels

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]
        self.on_epoch_end()

    def on_epoch_end(self):
        if self.shuffle:
            self.epoch += 1
