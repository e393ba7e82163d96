import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from stkd_keras import array_pipeline, idx, image_folder
from stkd_keras import data as data_lib

PIPELINES = ("tf_data", "numpy")


def test_fashion_mnist_offline_split_sizes_and_labels():
    directory = idx.find_fashion_mnist_idx()
    # The IDX headers as published: magic 2051 (images) / 2049 (labels), then counts and 28x28.
    with gzip.open(directory / "train-images-idx3-ubyte.gz", "rb") as f:
        assert struct.unpack(">IIII", f.read(16)) == (2051, 60000, 28, 28)
    with gzip.open(directory / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        assert struct.unpack(">II", f.read(8)) == (2049, 10000)
    train_images, train_labels = idx.read_fashion_mnist_idx(directory, "train")
    test_images, test_labels = idx.read_fashion_mnist_idx(directory, "test")
    assert train_images.shape == (60000, 28, 28, 1) and test_images.shape == (10000, 28, 28, 1)
    assert train_images.dtype == np.uint8 and train_images.min() == 0 and train_images.max() == 255
    # Fashion-MNIST is balanced: 6000 / 1000 images per class.
    np.testing.assert_array_equal(np.bincount(train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test_labels), [1000] * 10)
    # Its published mean/std (0.2860, 0.3530) are what the pipeline normalises with.
    assert train_images.mean() / 255 == pytest.approx(0.2860, abs=5e-4)
    assert train_images.std() / 255 == pytest.approx(0.3530, abs=5e-4)


def test_pipeline_normalises_and_batches():
    dataset, info = data_lib.load("fashion_mnist", "test", batch_size=500)
    assert info.num_examples == 10000 and info.num_classes == 10 and info.class_names[9] == "Ankle boot"
    images = np.concatenate([x.numpy() for x, _ in dataset])
    labels = np.concatenate([y.numpy() for _, y in dataset])
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.float32
    assert images.mean() == pytest.approx(0.0, abs=0.02) and images.std() == pytest.approx(1.0, abs=0.02)
    # The test split is neither shuffled nor augmented: it equals the normalised IDX data.
    raw, raw_labels = idx.read_fashion_mnist_idx(idx.find_fashion_mnist_idx(), "test")
    np.testing.assert_allclose(images, (raw / 255.0 - 0.2860) / 0.3530, atol=1e-5)
    np.testing.assert_array_equal(labels, raw_labels)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_training_pipeline_augments_reproducibly(pipeline):
    first, info = data_lib.load("fashion_mnist", "train", batch_size=64, subset=256, seed=3, pipeline=pipeline)
    again, _ = data_lib.load("fashion_mnist", "train", batch_size=64, subset=256, seed=3, pipeline=pipeline)
    other, _ = data_lib.load("fashion_mnist", "train", batch_size=64, subset=256, seed=4, pipeline=pipeline)
    assert info.num_examples == 256
    a = np.concatenate([x for x, _ in first])
    np.testing.assert_array_equal(a, np.concatenate([x for x, _ in again]))
    assert not np.array_equal(a, np.concatenate([x for x, _ in other]))
    # Same 256 images whatever the seed (the subset is fixed), only order and augmentation differ.
    labels = lambda ds: np.sort(np.concatenate([y for _, y in ds]))
    np.testing.assert_array_equal(labels(first), labels(other))
    # Padding is black before normalisation: cropped-in borders take the value of pixel 0.
    black = (0.0 - 0.2860) / 0.3530
    assert np.isclose(a, black, atol=1e-5).mean() > 0.3


@pytest.mark.parametrize(
    "name, classes, shape", [("cifar10", 10, (32, 32, 3)), ("cifar100", 100, (32, 32, 3)), ("mnist", 10, (28, 28, 1))]
)
def test_tfds_path_with_mock_data(name, classes, shape):
    with tfds.testing.mock_data(num_examples=24):
        dataset, info = data_lib.load(name, "train", batch_size=8, seed=0)
        images, labels = next(iter(dataset))
    assert info.num_classes == classes and info.input_shape == shape and info.num_examples == 24
    assert images.shape == (8, *shape) and images.dtype == "float32"
    assert labels.dtype == "int64" and 0 <= int(np.min(labels)) and int(np.max(labels)) < classes
    # Normalised per channel: values lie within [(0 - mean) / std, (1 - mean) / std].
    mean, std = np.array(info.mean), np.array(info.std)
    assert np.all(images.numpy() >= (0 - mean) / std - 1e-5) and np.all(images.numpy() <= (1 - mean) / std + 1e-5)


def test_missing_tfds_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(
        data_lib.DatasetNotFoundError, match=f"not on this machine.*{tmp_path}.*downloading is turned off"
    ):
        data_lib.load("cifar10", "train", data_dir=str(tmp_path), download=False)


def test_missing_fashion_mnist_files(tmp_path):
    with pytest.raises(data_lib.DatasetNotFoundError, match=f"IDX files.*not found in {tmp_path}"):
        data_lib.load("fashion_mnist", data_dir=str(tmp_path))


def test_corrupt_idx_file(tmp_path):
    source = idx.find_fashion_mnist_idx()
    for pair in idx.IDX_FILES.values():
        for name in pair:
            (tmp_path / name).write_bytes((source / name).read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">IIII", 2051, 10000, 28, 28) + b"\0" * 100)
    )
    with pytest.raises(ValueError, match="truncated"):
        data_lib.load("fashion_mnist", "test", data_dir=str(tmp_path))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'.*cifar10"):
        data_lib.load("imagenet")
    with pytest.raises(ValueError, match="split"):
        data_lib.load("fashion_mnist", "val")
    with pytest.raises(ValueError, match="The split 'validation' is the training examples set apart by `holdout`"):
        data_lib.load("fashion_mnist", "validation")
    with pytest.raises(ValueError, match="`holdout` only with the 'train' and 'validation' splits"):
        data_lib.load("fashion_mnist", "test", holdout=10)
    with pytest.raises(ValueError, match=r"`holdout` below the 60000 examples of the training split"):
        data_lib.load("fashion_mnist", "validation", holdout=60000)
    with pytest.raises(ValueError, match="`holdout` to be an int >= 1"):
        data_lib.load("fashion_mnist", "train", holdout=0)
    with pytest.raises(ValueError, match="batch_size"):
        data_lib.load("fashion_mnist", batch_size=0)


# --- folder: datasets ----------------------------------------------------------------------------

SHADES = {"apple": 0, "banana": 128, "cherry": 255}


def write_image(path, value, size=(40, 40), encoding="png", channels=3):
    image = tf.fill((*size, channels), tf.constant(value, tf.uint8))
    data = tf.io.encode_png(image) if encoding == "png" else tf.io.encode_jpeg(image, quality=100)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.numpy())


def make_folder(root, per_class=5, layout="flat"):
    for name, value in SHADES.items():
        for index in range(per_class):
            if layout == "flat":
                write_image(root / name / f"{index}.png", value)
            else:
                split = "val" if index == 0 else "train"
                write_image(root / split / name / f"{index}.png", value)
    return root


def collect(dataset):
    images = np.concatenate([x.numpy() for x, _ in dataset])
    labels = np.concatenate([y.numpy() for _, y in dataset])
    return images, labels


def test_folder_dataset_with_held_out_validation(tmp_path):
    root = make_folder(tmp_path / "fruit")
    (root / "apple" / "notes.txt").write_text("not an image")
    train, info = data_lib.load(
        f"folder:{root}", "train", batch_size=4, image_size=(16, 16), augment=False, shuffle=False
    )
    test, test_info = data_lib.load(f"folder:{root}", "test", batch_size=4, image_size=(16, 16))
    assert (
        info.class_names == ("apple", "banana", "cherry") and info.num_classes == 3 and info.input_shape == (16, 16, 3)
    )
    # 10% of 5 images rounds to 0, but every class keeps at least one for validation: 4 + 1 per class.
    assert info.num_examples == 12 and test_info.num_examples == 3
    images, labels = collect(train)
    np.testing.assert_array_equal(np.bincount(labels), [4, 4, 4])
    # Solid shades 0, 128, 255 in equal numbers: mean and std worked out by hand.
    shades = np.array([0, 128, 255]) / 255.0
    mean, std = shades.mean(), shades.std()
    np.testing.assert_allclose(info.mean, [mean] * 3, atol=1e-5)
    np.testing.assert_allclose(info.std, [std] * 3, atol=1e-5)
    for label, value in enumerate(SHADES.values()):
        np.testing.assert_allclose(images[labels == label], (value / 255.0 - mean) / std, atol=1e-4)
    # The held-out images are the same on every scan (seed-0 choice over sorted file names).
    image_folder.scan_image_folder.cache_clear()
    _, again = collect(data_lib.load(f"folder:{root}", "test", batch_size=4, image_size=(16, 16))[0])
    np.testing.assert_array_equal(collect(test)[1], again)


def test_folder_dataset_with_train_and_val_folders(tmp_path):
    root = make_folder(tmp_path / "fruit", layout="split")
    _, info = data_lib.load(f"folder:{root}", "train", image_size=(8, 8))
    _, test_info = data_lib.load(f"folder:{root}", "test", image_size=(8, 8))
    assert info.num_examples == 12 and test_info.num_examples == 3
    assert "validation: " in info.source


def test_folder_grayscale_and_jpeg_become_rgb(tmp_path):
    root = make_folder(tmp_path / "fruit")
    write_image(root / "banana" / "gray.jpg", 128, encoding="jpeg", channels=1)
    images, labels = collect(data_lib.load(f"folder:{root}", "train", image_size=(16, 16), augment=False)[0])
    assert images.shape[1:] == (16, 16, 3)


def test_folder_corrupt_and_truncated_images_are_named(tmp_path):
    root = make_folder(tmp_path / "fruit")
    (root / "banana" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"Cannot decode image file .*banana/broken.png"):
        data_lib.load(f"folder:{root}", image_size=(16, 16))
    (root / "banana" / "broken.png").unlink()
    write_image(root / "cherry" / "cut.jpg", 200, encoding="jpeg")
    full = (root / "cherry" / "cut.jpg").read_bytes()
    (root / "cherry" / "cut.jpg").write_bytes(full[: len(full) // 2])
    image_folder.scan_image_folder.cache_clear()
    with pytest.raises(ValueError, match=r"Cannot decode image file .*cherry/cut.jpg"):
        data_lib.load(f"folder:{root}", image_size=(16, 16))


def test_folder_structure_errors(tmp_path):
    root = make_folder(tmp_path / "fruit")
    (root / "durian").mkdir()
    with pytest.raises(ValueError, match=r"Class folder .*durian holds no images"):
        data_lib.load(f"folder:{root}")
    single = tmp_path / "single"
    write_image(single / "apple" / "0.png", 0)
    with pytest.raises(ValueError, match=r"needs at least two class folders; found 1: \['apple'\]"):
        data_lib.load(f"folder:{single}")
    split = make_folder(tmp_path / "split", layout="split")
    write_image(split / "val" / "durian" / "0.png", 10)
    with pytest.raises(ValueError, match=r"Validation folder .*val/durian is a class the training folder"):
        data_lib.load(f"folder:{split}")
    with pytest.raises(data_lib.DatasetNotFoundError, match="does not exist"):
        data_lib.load(f"folder:{tmp_path / 'nowhere'}")


def test_subset_missing_classes_warns():
    with pytest.warns(UserWarning, match=r"holds examples of only \d of its 10 classes"):
        _, info = data_lib.load("fashion_mnist", "train", subset=3)
    assert info.classes_present <= 3


# --- The numpy pipeline, and data without TensorFlow ---------------------------------------------


def test_auto_pipeline_is_tf_data_where_tensorflow_imports():
    dataset, _ = data_lib.load("fashion_mnist", "test", 100, subset=200)
    assert isinstance(dataset, tf.data.Dataset) and data_lib.resolve_pipeline() == "tf_data"
    numpy_dataset, _ = data_lib.load("fashion_mnist", "test", 100, subset=200, pipeline="numpy")
    assert isinstance(numpy_dataset, array_pipeline.ArrayBatches)
    with pytest.raises(ValueError, match="pipeline"):
        data_lib.load("fashion_mnist", pipeline="jax")
    with pytest.raises(ValueError, match="only with stream=True"):
        data_lib.load("fashion_mnist", shard=(0, 2))


@pytest.mark.parametrize("split", ["train", "test"])
def test_numpy_pipeline_reads_the_same_subset_as_tf_data(split):
    options = {"batch_size": 100, "subset": 300, "augment": False, "shuffle": False}
    tf_batches, tf_info = data_lib.load("fashion_mnist", split, **options)
    numpy_batches, numpy_info = data_lib.load("fashion_mnist", split, pipeline="numpy", **options)
    assert numpy_info == tf_info
    tf_images, tf_labels = collect(tf_batches)
    numpy_images = np.concatenate([x for x, _ in numpy_batches])
    numpy_labels = np.concatenate([y for _, y in numpy_batches])
    # The subset is the first 300 of np.random.default_rng(0).permutation(n), in that order.
    raw, raw_labels = idx.read_fashion_mnist_idx(idx.find_fashion_mnist_idx(), split)
    order = np.random.default_rng(0).permutation(len(raw_labels))[:300]
    np.testing.assert_array_equal(numpy_labels, raw_labels[order])
    np.testing.assert_array_equal(numpy_labels, tf_labels)
    np.testing.assert_allclose(numpy_images, (raw[order] / 255.0 - 0.2860) / 0.3530, atol=1e-5)
    np.testing.assert_allclose(numpy_images, tf_images, atol=1e-6)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_holdout_sets_the_last_training_examples_of_the_fixed_shuffle_apart(pipeline):
    options = {"batch_size": 500, "augment": False, "shuffle": False, "pipeline": pipeline}
    raw, raw_labels = idx.read_fashion_mnist_idx(idx.find_fashion_mnist_idx(), "train")
    permutation = np.random.default_rng(0).permutation(60000)
    validation, validation_info = data_lib.load("fashion_mnist", "validation", holdout=1000, **options)
    images, labels = (np.concatenate([np.asarray(part) for part in parts]) for parts in zip(*validation))
    # "validation" is the last 1000 of the shuffle, never augmented, in that order.
    assert validation_info.split == "validation" and validation_info.num_examples == 1000
    np.testing.assert_array_equal(labels, raw_labels[permutation[-1000:]])
    np.testing.assert_allclose(images, (raw[permutation[-1000:]] / 255.0 - 0.2860) / 0.3530, atol=1e-5)
    # A training subset keeps the examples it has without a holdout (the first of the same shuffle) ...
    with_holdout, info = data_lib.load("fashion_mnist", "train", subset=300, holdout=1000, **options)
    without, _ = data_lib.load("fashion_mnist", "train", subset=300, **options)
    np.testing.assert_array_equal(
        np.concatenate([np.asarray(y) for _, y in with_holdout]), raw_labels[permutation[:300]]
    )
    np.testing.assert_array_equal(np.concatenate([np.asarray(y) for _, y in without]), raw_labels[permutation[:300]])
    assert info.num_examples == 300
    # ... and the whole training split loses exactly the held-out 1000, with a subset of validation taking its first.
    _, whole = data_lib.load("fashion_mnist", "train", holdout=1000, **options)
    first, first_info = data_lib.load("fashion_mnist", "validation", subset=100, holdout=1000, **options)
    assert whole.num_examples == 59000 and first_info.num_examples == 100
    np.testing.assert_array_equal(
        np.concatenate([np.asarray(y) for _, y in first]), raw_labels[permutation[-1000:-900]]
    )


def test_holdout_from_tfds_and_image_folders(tmp_path):
    with tfds.testing.mock_data(num_examples=24):
        _, all_labels = collect(data_lib.load("cifar10", "train", 8, augment=False, shuffle=False)[0])
        train, info = data_lib.load("cifar10", "train", 8, augment=False, shuffle=False, holdout=6)
        validation, validation_info = data_lib.load("cifar10", "validation", 8, holdout=6)
        # From TFDS the held-out examples are the last in TFDS's fixed order.
        assert (info.num_examples, validation_info.num_examples) == (18, 6)
        np.testing.assert_array_equal(collect(train)[1], all_labels[:18])
        np.testing.assert_array_equal(collect(validation)[1], all_labels[18:])
    root = make_folder(tmp_path / "fruit")  # 12 training images, 4 per class, in class order
    order = np.sort(np.random.default_rng(0).permutation(12)[9:])
    _, folder_labels = collect(data_lib.load(f"folder:{root}", "validation", 4, image_size=(8, 8), holdout=3)[0])
    np.testing.assert_array_equal(folder_labels, np.repeat([0, 1, 2], 4)[order])
    assert data_lib.load(f"folder:{root}", "train", 4, image_size=(8, 8), holdout=3)[1].num_examples == 9


def test_numpy_stream_through_load_matches_its_definition():
    stream, info = data_lib.load(
        "fashion_mnist", "train", 32, subset=100, seed=7, stream=True, start_step=3, pipeline="numpy"
    )
    _, raw_labels = idx.read_fashion_mnist_idx(idx.find_fashion_mnist_idx(), "train")
    subset = np.random.default_rng(0).permutation(len(raw_labels))[:100]
    # Stream batch 3 holds positions 96..127: the last 4 of pass 0, then the first 28 of pass 1.
    positions = np.arange(96, 128)
    orders = [np.random.default_rng([7, p]).permutation(100) for p in (0, 1)]
    expected = np.array([orders[i // 100][i % 100] for i in positions])
    images, labels = stream[0]
    np.testing.assert_array_equal(labels, raw_labels[subset][expected])
    assert images.shape == (32, 28, 28, 1) and info.num_examples == 100
    shards = [
        data_lib.load(
            "fashion_mnist", "train", 32, subset=100, seed=7, stream=True, start_step=3, pipeline="numpy", shard=(i, 2)
        )[0]
        for i in (0, 1)
    ]
    np.testing.assert_array_equal(np.concatenate([shard[0][0] for shard in shards]), images)


def test_tf_data_stream_shards_concatenate_to_the_global_batch():
    options = {"batch_size": 12, "subset": 60, "seed": 2, "stream": True, "start_step": 4}
    full = collect(data_lib.load("fashion_mnist", "train", **options)[0].take(2))
    shards = [collect(data_lib.load("fashion_mnist", "train", shard=(i, 3), **options)[0].take(2)) for i in range(3)]
    for batch in range(2):
        rows = slice(4 * batch, 4 * batch + 4)
        np.testing.assert_array_equal(
            np.concatenate([shard[0][rows] for shard in shards]), full[0][12 * batch : 12 * batch + 12]
        )
        np.testing.assert_array_equal(
            np.concatenate([shard[1][rows] for shard in shards]), full[1][12 * batch : 12 * batch + 12]
        )


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_load_arrays(pipeline):
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(10)
    dataset, info = data_lib.load_arrays(images, labels, "cifar10", "test", batch_size=4, pipeline=pipeline)
    assert (
        info.source == "arrays"
        and info.num_examples == 10
        and info.classes_present == 10
        and info.class_names[3] == "3"
    )
    values = np.concatenate([np.asarray(x) for x, _ in dataset])
    mean, std = np.array(data_lib.get_spec("cifar10").mean), np.array(data_lib.get_spec("cifar10").std)
    np.testing.assert_allclose(values, (images / 255.0 - mean) / std, atol=1e-5)
    stream, _ = data_lib.load_arrays(images, labels, "cifar10", stream=True, batch_size=4, pipeline=pipeline)
    assert np.asarray(next(iter(stream))[0]).shape == (4, 32, 32, 3)
    with pytest.raises(ValueError, match=r"uint8 of shape \(n, 32, 32, 3\)"):
        data_lib.load_arrays(images[..., :1], labels, "cifar10", pipeline=pipeline)
    with pytest.raises(ValueError, match=r"labels` in 0..9"):
        data_lib.load_arrays(images, labels + 1, "cifar10", pipeline=pipeline)


def test_numpy_pipeline_reads_tfds_and_folders_with_tensorflow(tmp_path):
    with tfds.testing.mock_data(num_examples=24):
        tf_images, tf_labels = collect(data_lib.load("cifar10", "test", batch_size=8)[0])
        numpy_batches, info = data_lib.load("cifar10", "test", batch_size=8, pipeline="numpy")
    assert info.num_examples == 24 and len(numpy_batches) == 3
    np.testing.assert_allclose(np.concatenate([x for x, _ in numpy_batches]), tf_images, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([y for _, y in numpy_batches]), tf_labels)
    root = make_folder(tmp_path / "fruit")
    folder_batches, folder_info = data_lib.load(
        f"folder:{root}", "train", 4, image_size=(8, 8), augment=False, shuffle=False, pipeline="numpy"
    )
    np.testing.assert_array_equal(np.concatenate([y for _, y in folder_batches]), [0] * 4 + [1] * 4 + [2] * 4)
    assert folder_info.num_examples == 12


def write_idx(directory, split, images, labels, gzipped):
    """MNIST-format files: magic 2051 / 2049, counts, 28 x 28, then the bytes."""
    images_name, labels_name = idx.IDX_FILES[split]
    if not gzipped:
        images_name, labels_name = images_name[:-3], labels_name[:-3]
    pack = gzip.compress if gzipped else bytes
    (directory / images_name).write_bytes(pack(struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes()))
    (directory / labels_name).write_bytes(
        pack(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())
    )


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_mnist_from_idx_files(tmp_path, pipeline):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    write_idx(tmp_path, "train", train, np.array([0, 1, 2, 3, 4, 5]), gzipped=True)
    write_idx(tmp_path, "test", test, np.array([9, 8, 7, 6]), gzipped=False)
    batches, info = data_lib.load("mnist", "test", 3, data_dir=str(tmp_path), pipeline=pipeline)
    # Read from the IDX files (not tfds), normalised with MNIST's statistics, in order.
    assert info.source == f"idx:{tmp_path}" and info.num_examples == 4 and info.classes_present == 4
    images = np.concatenate([np.asarray(x) for x, _ in batches])
    np.testing.assert_allclose(images[..., 0], (test / 255.0 - 0.1307) / 0.3081, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([np.asarray(y) for _, y in batches]), [9, 8, 7, 6])
    with pytest.warns(UserWarning, match="only 6 of its 10 classes"):
        stream, train_info = data_lib.load("mnist", "train", 4, data_dir=str(tmp_path), stream=True, pipeline=pipeline)
    assert train_info.num_examples == 6 and np.asarray(next(iter(stream))[0]).shape == (4, 28, 28, 1)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">II", 2049, 6) + bytes([0, 1, 2, 3, 4, 10]))
    )
    with pytest.raises(ValueError, match="label 10 out of range 0..9"):
        data_lib.load("mnist", "train", data_dir=str(tmp_path), pipeline=pipeline)


WITHOUT_TENSORFLOW = r"""
import sys
sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError, wherever it happens
import json

import keras
import numpy as np

from stkd_keras import data, idx

report = {"backend": keras.backend.backend(), "pipeline": data.resolve_pipeline()}
stream, info = data.load("fashion_mnist", "train", 64, stream=True, subset=256)
images, labels = stream[0]
report.update(
    is_py_dataset=isinstance(stream, keras.utils.PyDataset), num_batches=stream.num_batches, shape=list(images.shape),
    dtype=str(images.dtype), label_dtype=str(labels.dtype), num_examples=info.num_examples, source=info.source,
)
# Stream batch 0 is the first 64 of pass 0's order over the subset; each image a crop (or mirrored crop) of the
# padded one.
raw, raw_labels = idx.read_fashion_mnist_idx(idx.find_fashion_mnist_idx(), "train")
subset = np.random.default_rng(0).permutation(len(raw_labels))[:256]
chosen = subset[np.random.default_rng([0, 0]).permutation(256)[:64]]
report["labels_match"] = bool(np.array_equal(labels, raw_labels[chosen]))
pixels = np.rint((images * 0.3530 + 0.2860) * 255)
padded = np.pad(raw[chosen], ((0, 0), (2, 2), (2, 2), (0, 0))).astype(float)
crops = [padded[:, r : r + 28, c : c + 28] for r in range(5) for c in range(5)]
report["crops_match"] = bool(all(
    any(np.array_equal(pixels[i], crop[i]) or np.array_equal(pixels[i], crop[i][:, ::-1]) for crop in crops)
    for i in range(64)
))
# Resized (Pillow) and with the gray channel repeated, still without TensorFlow.
from PIL import Image

resized, resized_info = data.load("fashion_mnist", "test", 8, subset=8, image_size=(32, 32), channels=3)
test_raw, _ = idx.read_fashion_mnist_idx(idx.find_fashion_mnist_idx(), "test")
first = test_raw[np.random.default_rng(0).permutation(len(test_raw))[:8], ..., 0]
expected = np.stack([np.asarray(Image.fromarray(i).resize((32, 32), Image.Resampling.BILINEAR)) for i in first])
got = np.rint((resized[0][0] * 0.3530 + 0.2860) * 255)
report["resized_match"] = bool(all(np.array_equal(got[..., c], expected) for c in range(3)))
report["resized_shape"] = list(resized_info.input_shape)
try:
    data.load("cifar10", "train", 64)
except data.DatasetNotFoundError as error:
    report["cifar10_error"] = str(error)
report["tensorflow_modules"] = sorted(
    m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("tensorflow", "tensorflow_datasets")
)
print(json.dumps(report))
"""


def test_load_without_tensorflow():
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax" and report["pipeline"] == "numpy"
    assert report["is_py_dataset"] and report["num_batches"] is None
    assert report["shape"] == [64, 28, 28, 1] and report["dtype"] == "float32" and report["label_dtype"] == "int64"
    assert report["num_examples"] == 256 and report["source"].startswith("idx:")
    assert report["labels_match"] and report["crops_match"]
    assert report["resized_match"] and report["resized_shape"] == [32, 32, 3]
    message = report["cifar10_error"]
    assert message.startswith("Dataset 'cifar10' is read through tensorflow-datasets, which needs TensorFlow;")
    assert "pip install 'stkd-keras[tensorflow]'" in message and message.count(". ") == 0 and message.endswith(".")
    assert report["tensorflow_modules"] == []
