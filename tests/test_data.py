import gzip
import struct

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from stkd_keras import data as data_lib


def test_fashion_mnist_offline_split_sizes_and_labels():
    directory = data_lib.find_fashion_mnist_idx()
    # The IDX headers as published: magic 2051 (images) / 2049 (labels), then counts and 28x28.
    with gzip.open(directory / "train-images-idx3-ubyte.gz", "rb") as f:
        assert struct.unpack(">IIII", f.read(16)) == (2051, 60000, 28, 28)
    with gzip.open(directory / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        assert struct.unpack(">II", f.read(8)) == (2049, 10000)
    train_images, train_labels = data_lib.read_fashion_mnist_idx(directory, "train")
    test_images, test_labels = data_lib.read_fashion_mnist_idx(directory, "test")
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
    raw, raw_labels = data_lib.read_fashion_mnist_idx(data_lib.find_fashion_mnist_idx(), "test")
    np.testing.assert_allclose(images, (raw / 255.0 - 0.2860) / 0.3530, atol=1e-5)
    np.testing.assert_array_equal(labels, raw_labels)


def test_training_pipeline_augments_reproducibly():
    first, info = data_lib.load("fashion_mnist", "train", batch_size=64, subset=256, seed=3)
    again, _ = data_lib.load("fashion_mnist", "train", batch_size=64, subset=256, seed=3)
    other, _ = data_lib.load("fashion_mnist", "train", batch_size=64, subset=256, seed=4)
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


@pytest.mark.parametrize("name, classes, shape", [("cifar10", 10, (32, 32, 3)), ("cifar100", 100, (32, 32, 3)), ("mnist", 10, (28, 28, 1))])
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
    with pytest.raises(data_lib.DatasetNotFoundError, match=f"not on this machine.*{tmp_path}.*downloading is turned off"):
        data_lib.load("cifar10", "train", data_dir=str(tmp_path), download=False)


def test_missing_fashion_mnist_files(tmp_path):
    with pytest.raises(data_lib.DatasetNotFoundError, match=f"IDX files.*not found in {tmp_path}"):
        data_lib.load("fashion_mnist", data_dir=str(tmp_path))


def test_corrupt_idx_file(tmp_path):
    source = data_lib.find_fashion_mnist_idx()
    for pair in data_lib.IDX_FILES.values():
        for name in pair:
            (tmp_path / name).write_bytes((source / name).read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">IIII", 2051, 10000, 28, 28) + b"\0" * 100))
    with pytest.raises(ValueError, match="truncated"):
        data_lib.load("fashion_mnist", "test", data_dir=str(tmp_path))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'.*cifar10"):
        data_lib.load("imagenet")
    with pytest.raises(ValueError, match="split"):
        data_lib.load("fashion_mnist", "validation")
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
    train, info = data_lib.load(f"folder:{root}", "train", batch_size=4, image_size=(16, 16), augment=False, shuffle=False)
    test, test_info = data_lib.load(f"folder:{root}", "test", batch_size=4, image_size=(16, 16))
    assert info.class_names == ("apple", "banana", "cherry") and info.num_classes == 3 and info.input_shape == (16, 16, 3)
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
    data_lib.scan_image_folder.cache_clear()
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
    data_lib.scan_image_folder.cache_clear()
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
