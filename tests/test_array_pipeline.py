"""The numpy / PyDataset pipeline: stream determinism, passes, crop and flip, normalisation, shards, Keras's fit.

Nothing here imports TensorFlow: these tests run on whichever Keras backend
runs the tests.
"""

import keras
import numpy as np
import pytest

from stkd_keras import array_pipeline

IDENTITY = ((0.0,), (1.0,))  # Normalisation to x / 255: the raw pixels come back as round(x * 255).


def raw(batch_images):
    return np.rint(batch_images * 255.0).astype(np.int64)


def random_images(count, shape=(6, 6, 1), low=0, seed=0):
    return np.random.default_rng(seed).integers(low, 256, (count, *shape), dtype=np.uint8)


def id_images(count, shape=(4, 4, 1)):
    """Image i is filled with the value i, so a batch says which examples it holds."""
    return np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None], (count, *shape)).copy()


def test_stream_batch_is_a_function_of_seed_and_step():
    images, labels = random_images(50, (8, 8, 3)), np.arange(50) % 10
    options = {"batch_size": 16, "mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_padding": 2, "flip": True}
    stream = array_pipeline.ArrayStream(images, labels, seed=5, **options)
    assert stream.num_batches is None
    batches = [stream[k] for k in range(8)]
    # Read again in another order, and from fresh streams that start at step k: the same batches.
    for k in (7, 3, 0):
        np.testing.assert_array_equal(stream[k][0], batches[k][0])
        resumed = array_pipeline.ArrayStream(images, labels, seed=5, start_step=k, **options)
        np.testing.assert_array_equal(resumed[0][0], batches[k][0])
        np.testing.assert_array_equal(resumed[0][1], batches[k][1])
        if k + 1 < len(batches):
            np.testing.assert_array_equal(resumed[1][0], batches[k + 1][0])
    other = array_pipeline.ArrayStream(images, labels, seed=6, **options)
    assert not np.array_equal(other[3][0], batches[3][0])
    # 50 examples in batches of 16: batch 3 (positions 48..63) straddles passes 0 and 1 and is still full.
    assert (
        batches[3][0].shape == (16, 8, 8, 3) and batches[3][0].dtype == np.float32 and batches[3][1].dtype == np.int64
    )


def test_each_pass_is_a_permutation():
    count, batch, seed = 50, 10, 11
    stream = array_pipeline.ArrayStream(id_images(count), np.arange(count) % 7, batch, *IDENTITY, seed=seed)
    ids = np.concatenate([raw(stream[k][0])[:, 0, 0, 0] for k in range(3 * count // batch)])
    labels = np.concatenate([stream[k][1] for k in range(3 * count // batch)])
    np.testing.assert_array_equal(labels, ids % 7)
    passes = ids.reshape(3, count)
    for index, order in enumerate(passes):
        np.testing.assert_array_equal(np.sort(order), np.arange(count))
        # The documented order of pass p: np.random.default_rng([seed, p]).permutation(n).
        np.testing.assert_array_equal(order, np.random.default_rng([seed, index]).permutation(count))
    assert not np.array_equal(passes[0], passes[1])


def match_crop(original, augmented, padding):
    """Every (row, column, flipped) such that `augmented` is that crop of the zero-padded `original`."""
    height, width, _ = original.shape
    padded = np.pad(original, ((padding, padding), (padding, padding), (0, 0)))
    found = []
    for row in range(2 * padding + 1):
        for column in range(2 * padding + 1):
            crop = padded[row : row + height, column : column + width]
            for flipped, candidate in ((False, crop), (True, crop[:, ::-1])):
                if np.array_equal(candidate, augmented):
                    found.append((row, column, flipped))
    return found


@pytest.mark.parametrize("flip", [True, False])
def test_augmentation_is_a_crop_of_the_padded_image(flip):
    # Pixels 1..255 inside, 0 only in the padding: exactly one offset and flip reproduces each image.
    count, padding = 40, 2
    images = random_images(count, (6, 7, 2), low=1, seed=1)
    stream = array_pipeline.ArrayStream(
        images, np.arange(count), 32, (0.0, 0.0), (1.0, 1.0), crop_padding=padding, flip=flip, seed=2
    )
    matches = []
    for k in range(40):
        batch_images, batch_labels = stream[k]
        for augmented, label in zip(raw(batch_images), batch_labels):
            found = match_crop(images[label], augmented, padding)
            assert len(found) == 1, found
            matches.append(found[0])
    rows, columns, flips = (np.array(values) for values in zip(*matches))
    # Offsets cover 0 .. 2 * padding in both directions; 1280 draws of p = 0.5: 0.5 +- 0.014 (one sd).
    assert set(rows) == set(columns) == set(range(2 * padding + 1))
    if flip:
        assert abs(flips.mean() - 0.5) < 0.05
    else:
        assert not flips.any()


def test_normalisation_by_hand():
    images = np.zeros((3, 2, 2, 3), np.uint8)
    images[1], images[2] = 51, 255
    mean, std = (0.5, 0.25, 0.1), (0.2, 0.5, 0.25)
    batches = array_pipeline.ArrayBatches(images, [0, 1, 2], 3, mean, std)
    values, labels = batches[0]
    # 0 / 255 = 0, 51 / 255 = 0.2, 255 / 255 = 1, then (v - mean) / std per channel.
    expected = [[-2.5, -0.5, -0.4], [-1.5, -0.1, 0.4], [2.5, 1.5, 3.6]]
    assert values.dtype == np.float32 and labels.dtype == np.int64
    for index in range(3):
        np.testing.assert_allclose(values[index], np.broadcast_to(expected[index], (2, 2, 3)), atol=1e-6)


@pytest.mark.parametrize("count", [2, 3, 4])
def test_shards_concatenate_to_the_global_batch(count):
    images, labels = random_images(30, (5, 5, 3), seed=3), np.arange(30)
    options = {"batch_size": 12, "mean": (0.4,) * 3, "std": (0.2,) * 3, "crop_padding": 1, "flip": True, "seed": 4}
    full = array_pipeline.ArrayStream(images, labels, **options)
    shards = [array_pipeline.ArrayStream(images, labels, shard=(index, count), **options) for index in range(count)]
    for k in range(4):
        parts = [shard[k] for shard in shards]
        assert all(len(part[1]) == 12 // count for part in parts)
        np.testing.assert_array_equal(np.concatenate([part[0] for part in parts]), full[k][0])
        np.testing.assert_array_equal(np.concatenate([part[1] for part in parts]), full[k][1])


def test_invalid_shards_and_arrays():
    images, labels = random_images(10), np.arange(10)
    with pytest.raises(ValueError, match="divide evenly over 3 shards"):
        array_pipeline.ArrayStream(images, labels, 8, *IDENTITY, shard=(0, 3))
    with pytest.raises(ValueError, match="0 <= index < count"):
        array_pipeline.ArrayStream(images, labels, 8, *IDENTITY, shard=(2, 2))
    with pytest.raises(ValueError, match="uint8"):
        array_pipeline.ArrayBatches(images.astype(np.float32), labels, 8, *IDENTITY)
    with pytest.raises(ValueError, match="one mean and one std"):
        array_pipeline.ArrayBatches(images, labels, 8, (0.1, 0.2), (0.3, 0.4))


def test_evaluation_batches_are_ordered_and_the_last_is_short():
    images, labels = random_images(23, seed=5), np.arange(23) % 4
    batches = array_pipeline.ArrayBatches(images, labels, 10, (0.3,), (0.2,))
    assert len(batches) == 3 and [len(batches[i][1]) for i in range(3)] == [10, 10, 3]
    values = np.concatenate([batches[i][0] for i in range(3)])
    np.testing.assert_allclose(values, (images / 255.0 - 0.3) / 0.2, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([batches[i][1] for i in range(3)]), labels)
    with pytest.raises(IndexError):
        batches[3]
    assert len(array_pipeline.ArrayBatches(images, labels, 10, (0.3,), (0.2,), drop_remainder=True)) == 2


def test_shuffled_batches_reshuffle_every_pass():
    count = 30
    batches = array_pipeline.ArrayBatches(id_images(count), np.arange(count), 8, *IDENTITY, shuffle=True, seed=9)
    first = np.concatenate([raw(x)[:, 0, 0, 0] for x, _ in batches])  # A full loop ends the pass.
    second = np.concatenate([raw(x)[:, 0, 0, 0] for x, _ in batches])
    np.testing.assert_array_equal(np.sort(first), np.arange(count))
    np.testing.assert_array_equal(np.sort(second), np.arange(count))
    assert not np.array_equal(first, second)
    again = array_pipeline.ArrayBatches(id_images(count), np.arange(count), 8, *IDENTITY, shuffle=True, seed=9)
    np.testing.assert_array_equal(np.concatenate([raw(x)[:, 0, 0, 0] for x, _ in again]), first)


class RecordInputs(keras.layers.Layer):
    """Keeps a copy of every concrete training batch it sees (symbolic build passes are skipped)."""

    def __init__(self, seen, **kwargs):
        super().__init__(**kwargs)
        self.record = seen.append  # Not the list itself: Keras would track a copy of a list attribute.

    def call(self, inputs, training=None):
        if training:
            try:
                self.record(np.array(keras.ops.convert_to_numpy(inputs)))
            except Exception:  # A symbolic tensor or tracer of the backend (shape inference): nothing to record.
                pass
        return inputs


def fit_and_record(stream, epochs, steps, initial_epoch=0):
    seen = []
    inputs = keras.Input((4, 4, 1))
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(RecordInputs(seen)(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    model.fit(stream, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps, shuffle=False, verbose=0)
    return seen


def test_fit_with_steps_per_epoch_consumes_the_stream_in_order():
    images, labels = random_images(20, (4, 4, 1), seed=6), np.arange(20) % 3
    options = {"batch_size": 8, "mean": (0.5,), "std": (0.5,), "crop_padding": 1, "flip": True, "seed": 1}
    stream = array_pipeline.ArrayStream(images, labels, **options)
    epochs, steps = 3, 2
    seen = fit_and_record(stream, epochs, steps)
    # Stream batches 0, 1, 2, ... across the epochs: Keras keeps one iterator over an endless PyDataset.
    expected = [stream.stream_batch(k)[0] for k in range(epochs * steps)]
    assert len(seen) == epochs * steps
    for k in range(epochs * steps):
        np.testing.assert_allclose(seen[k], expected[k], atol=1e-6)
    # A run resumed at epoch 2 (start_step = 2 * steps) sees what the uninterrupted run saw in its last epoch.
    resumed = fit_and_record(
        array_pipeline.ArrayStream(images, labels, start_step=2 * steps, **options), epochs, steps, initial_epoch=2
    )
    assert len(resumed) == steps
    for k in range(steps):
        np.testing.assert_allclose(resumed[k], seen[2 * steps + k], atol=1e-6)
