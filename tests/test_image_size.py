"""`data.load(image_size=..., channels=...)`: resized and channel-repeated images from every source, and the readers
of a saved model's data (evaluation, export) at the model's own input shape."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from stkd_keras import data as data_lib
from stkd_keras import data_sources, evaluation, idx
from stkd_keras import export as export_lib
from stkd_keras.run_steps import preprocessing_record
from stkd_keras.runs import write_json

PIPELINES = ("tf_data", "numpy")
MEAN, STD = idx.FASHION_MNIST_MEAN[0], idx.FASHION_MNIST_STD[0]


def batches_of(dataset) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(np.asarray(x), np.asarray(y)) for x, y in dataset]
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])


def fashion_test_subset(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The raw test images and labels `subset=count` reads: the first `count` of the documented fixed shuffle."""
    images, labels = idx.read_fashion_mnist_idx(idx.find_fashion_mnist_idx(), "test")
    chosen = np.random.default_rng(0).permutation(len(labels))[:count]
    return images[chosen], labels[chosen]


def pillow_resized(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Each gray image resized on its own by Pillow's bilinear filter: (n, height, width) uint8."""
    return np.stack(
        [
            np.asarray(Image.fromarray(image[..., 0]).resize((width, height), Image.Resampling.BILINEAR))
            for image in images
        ]
    )


def test_resize_is_pillows_bilinear_filter_worked_by_hand():
    """A triangle filter over pixel centres: interpolation when enlarging, a widened (antialiasing) one when shrinking.

    Enlarging [0, 255] to 4 pixels: output centres 0.25, 0.75, 1.25, 1.75 against input centres 0.5, 1.5, weights
    1 - distance: 0, 0.25 * 255 = 63.75, 0.75 * 255 = 191.25, 255. Shrinking [0, 0, 255, 255] to 2 pixels: the
    triangle is twice as wide; output centre 1.0 weighs the inputs 0.75, 0.75, 0.25, 0 -> 0.25 * 255 / 1.75 =
    36.43; centre 3.0 by symmetry 255 - 36.43 = 218.57. Plain bilinear sampling would give 0 and 255.
    """
    enlarged = data_sources.resize_images(np.array([0, 255], np.uint8).reshape(1, 1, 2, 1), (1, 4))
    np.testing.assert_array_equal(enlarged.ravel(), [0, 64, 191, 255])
    shrunk = data_sources.resize_images(np.array([0, 0, 255, 255], np.uint8).reshape(1, 1, 4, 1), (1, 2))
    np.testing.assert_array_equal(shrunk.ravel(), [36, 219])
    # TFDS images go through tf.image.resize(antialias=True): the same filter, in floating point.
    pairs = tf.data.Dataset.from_tensor_slices((np.array([0, 0, 255, 255], np.uint8).reshape(1, 1, 4, 1), [0]))
    (tf_shrunk, _), *_ = data_sources.resize_dataset(pairs, (1, 2)).as_numpy_iterator()
    np.testing.assert_array_equal(tf_shrunk.ravel(), [36, 219])


@pytest.mark.parametrize("size", [(36, 44), (20, 14)])
def test_resized_idx_batches_are_pillows_resize_normalised_the_same_on_both_pipelines(size):
    """Enlarged and shrunk (not square: height and width cannot swap unseen) Fashion-MNIST test images."""
    raw, raw_labels = fashion_test_subset(40)
    expected = ((pillow_resized(raw, *size).astype(np.float64) / 255 - MEAN) / STD)[..., None]
    results = {}
    for pipeline in PIPELINES:
        dataset, info = data_lib.load("fashion_mnist", "test", 16, subset=40, image_size=size, pipeline=pipeline)
        results[pipeline] = batches_of(dataset)
        assert info.input_shape == (*size, 1) and info.num_examples == 40
        np.testing.assert_allclose(results[pipeline][0], expected, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(results[pipeline][1], raw_labels)
    # Both pipelines batch the same uint8 pixels with the same float32 arithmetic: identical floats.
    np.testing.assert_array_equal(results["tf_data"][0], results["numpy"][0])


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_three_channels_repeat_the_gray_one(pipeline):
    gray, info = data_lib.load("fashion_mnist", "test", 16, subset=40, image_size=(32, 32), pipeline=pipeline)
    colour, colour_info = data_lib.load(
        "fashion_mnist", "test", 16, subset=40, image_size=(32, 32), channels=3, pipeline=pipeline
    )
    gray_images, labels = batches_of(gray)
    colour_images, colour_labels = batches_of(colour)
    assert colour_images.shape == (40, 32, 32, 3) and colour_info.input_shape == (32, 32, 3)
    for channel in range(3):
        np.testing.assert_array_equal(colour_images[..., channel], gray_images[..., 0])
    np.testing.assert_array_equal(colour_labels, labels)
    # The statistics are the gray ones, once per channel, so each channel is normalised as the gray one was.
    assert colour_info.mean == (MEAN,) * 3 and colour_info.std == (STD,) * 3 and info.mean == (MEAN,)
    # A 1-value normalisation (a 1-channel model's) is repeated too; a 2-value one fits neither.
    custom, custom_info = data_lib.load(
        "fashion_mnist", "test", 16, subset=40, channels=3, normalization=((0.5,), (0.25,)), pipeline=pipeline
    )
    raw, _ = fashion_test_subset(40)
    np.testing.assert_allclose(batches_of(custom)[0], np.repeat((raw / 255 - 0.5) / 0.25, 3, axis=-1), atol=1e-5)
    assert custom_info.mean == (0.5,) * 3
    with pytest.raises(ValueError, match=r"one mean and std per channel \(3\)"):
        data_lib.load("fashion_mnist", "test", subset=4, channels=3, normalization=((0.5, 0.5), (0.2, 0.2)))


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_native_size_and_channels_read_the_files_unchanged(pipeline):
    plain, plain_info = data_lib.load("fashion_mnist", "test", 32, subset=64, pipeline=pipeline)
    native, native_info = data_lib.load(
        "fashion_mnist", "test", 32, subset=64, image_size=(28, 28), channels=1, pipeline=pipeline
    )
    np.testing.assert_array_equal(batches_of(native)[0], batches_of(plain)[0])
    assert native_info == plain_info
    # The raw split is the file's own array, not a resized copy.
    raw, _ = fashion_test_subset(64)
    spec = data_lib.get_spec("fashion_mnist")
    split = data_sources.read_idx_split(spec, idx.find_fashion_mnist_idx(), "test", 64, None, (28, 28))
    assert split.spec is spec and np.array_equal(split.images, raw)


def test_crop_padding_scales_with_the_height():
    spec = data_lib.get_spec("fashion_mnist")  # 2 pixels of padding at 28x28
    assert spec.resized(None) is spec and spec.resized((28, 28)) is spec
    # 2 * 96 / 28 = 6.86 -> 7; 2 * 14 / 28 = 1; never below 1.
    assert spec.resized((96, 80)).crop_padding == 7 and spec.resized((96, 80)).input_shape == (96, 80, 1)
    assert spec.resized((14, 14)).crop_padding == 1 and spec.resized((4, 4)).crop_padding == 1
    assert data_lib.get_spec("cifar10").resized((224, 224)).crop_padding == 28


def test_augmented_stream_crops_the_resized_image_with_the_scaled_padding():
    """Numpy stream batch 0 at 56x56x3: each image is a crop (maybe mirrored) of its resized image padded by 4."""
    stream, info = data_lib.load(
        "fashion_mnist", "train", 16, subset=64, image_size=(56, 56), channels=3, stream=True, pipeline="numpy"
    )
    images, labels = stream[0]
    assert images.shape == (16, 56, 56, 3) and info.input_shape == (56, 56, 3)
    raw, raw_labels = idx.read_fashion_mnist_idx(idx.find_fashion_mnist_idx(), "train")
    chosen = np.random.default_rng(0).permutation(len(raw_labels))[:64][np.random.default_rng([0, 0]).permutation(64)]
    np.testing.assert_array_equal(labels, raw_labels[chosen[:16]])
    pixels = np.rint((images * STD + MEAN) * 255)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    padded = np.pad(pillow_resized(raw[chosen[:16]], 56, 56), ((0, 0), (4, 4), (4, 4))).astype(float)
    offsets = []  # per image, the (row, column) offsets of the crops (or mirrored crops) it equals
    for i in range(16):
        windows = {(r, c): padded[i, r : r + 56, c : c + 56] for r in range(9) for c in range(9)}
        image = pixels[i, ..., 0]
        offsets.append([o for o, w in windows.items() if np.array_equal(image, w) or np.array_equal(image, w[:, ::-1])])
    assert all(offsets)
    # Offsets 0..8 are drawn; with the native 2-pixel padding they would all lie in 2..6 of this 4-pixel frame.
    assert any(min(offset) < 2 or max(offset) > 6 for found in offsets for offset in found)


def write_folder(root, colour=True):
    for name, value in (("dark", 30), ("light", 220)):
        (root / name).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((12, 12, 3) if colour else (12, 12), value + i, np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_refusals_say_what_was_expected(tmp_path):
    folder = write_folder(tmp_path / "shades")
    with pytest.raises(ValueError, match="whose images are in colour \\(colour is never converted to gray\\)"):
        data_lib.load(f"folder:{folder}", "train", 4, channels=1)
    with pytest.raises(ValueError, match=r"Expected `channels` = 3 or None for 'cifar10'.*Received: channels=1"):
        data_lib.load("cifar10", "train", channels=1, download=False, data_dir=str(tmp_path))
    for channels in (2, 4, 0, True, 3.0):
        with pytest.raises(ValueError, match=r"Expected `channels` = None, 1 or 3 for 'fashion_mnist'"):
            data_lib.load("fashion_mnist", "test", channels=channels)
    for size in ((0, 5), (32,), 32, (32.0, 32), (32, 32, 3)):
        with pytest.raises(ValueError, match=r"Expected `image_size` = \(height, width\), two ints >= 1"):
            data_lib.load("fashion_mnist", "test", image_size=size)
    # A folder already gives three channels: channels=3 changes nothing.
    _, info = data_lib.load(f"folder:{folder}", "train", 4, image_size=(8, 8), channels=3)
    assert info.input_shape == (8, 8, 3)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_tfds_images_are_resized_as_they_are_read(pipeline):
    with tfds.testing.mock_data(num_examples=12):
        raw = np.stack([image for image, _ in tfds.as_numpy(tfds.load("cifar10", split="test", as_supervised=True))])
        dataset, info = data_lib.load("cifar10", "test", 5, image_size=(40, 24), pipeline=pipeline)
        images, _ = batches_of(dataset)
        gray, gray_info = data_lib.load("mnist", "test", 5, image_size=(20, 36), channels=3, pipeline=pipeline)
        gray_raw = np.stack([image for image, _ in tfds.as_numpy(tfds.load("mnist", split="test", as_supervised=True))])
        gray_images, _ = batches_of(gray)
    assert info.input_shape == (40, 24, 3) and images.shape == (12, 40, 24, 3)
    mean, std = np.array(info.mean), np.array(info.std)
    pixels = np.rint((images * std + mean) * 255)
    # tf.image.resize's antialiased bilinear is Pillow's filter up to rounding (Pillow rounds between its passes).
    pillow = np.stack([np.asarray(Image.fromarray(image).resize((24, 40), Image.Resampling.BILINEAR)) for image in raw])
    assert np.abs(pixels - pillow).max() <= 1
    exact = np.clip(np.round(tf.image.resize(raw, (40, 24), antialias=True).numpy()), 0, 255)
    np.testing.assert_allclose(images, (exact / 255 - mean) / std, atol=1e-5)
    assert gray_info.input_shape == (20, 36, 3) and gray_info.mean == (0.1307,) * 3
    gray_exact = np.clip(np.round(tf.image.resize(gray_raw, (20, 36), antialias=True).numpy()), 0, 255)
    np.testing.assert_allclose(gray_images, np.repeat((gray_exact / 255 - 0.1307) / 0.3081, 3, axis=-1), atol=1e-5)


def tiny_model(input_shape) -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    # Wide weights: logits far apart, so float32 runtimes agree with Keras on every argmax.
    logits = keras.layers.Dense(10, kernel_initializer=keras.initializers.RandomNormal(stddev=3.0), name="logits")(x)
    return keras.Model(inputs, logits, name="tiny")


def run_folder(folder, input_shape, image_size):
    """A run folder as a training run leaves it: student.keras and preprocessing.json."""
    folder.mkdir()
    model = tiny_model(input_shape)
    model.save(folder / "student.keras")
    _, info = data_lib.load("fashion_mnist", "test", 8, subset=8, image_size=image_size, channels=input_shape[-1])
    write_json(folder / "preprocessing.json", preprocessing_record(info, image_size and image_size[0]))
    return model


def test_a_three_channel_model_on_fashion_mnist_evaluates(tmp_path):
    folder = tmp_path / "run"
    model = run_folder(folder, (32, 32, 3), (32, 32))
    stored = json.loads((folder / "preprocessing.json").read_text())
    assert stored["input_shape"] == [32, 32, 3] and stored["mean"] == [MEAN] * 3
    result = evaluation.evaluate(folder, "fashion_mnist", subset=100)
    raw, labels = fashion_test_subset(100)
    images = np.repeat(((pillow_resized(raw, 32, 32) / 255 - MEAN) / STD)[..., None], 3, axis=-1)
    logits = model.predict(images.astype(np.float32), verbose=0)
    assert result["num_examples"] == 100
    assert result["accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == labels), abs=1e-6)
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    assert result["top5_accuracy"] == pytest.approx(np.mean(np.any(top5 == labels[:, None], -1)), abs=1e-6)
    assert result["normalization"] == {"mean": [MEAN] * 3, "std": [STD] * 3, "from": "preprocessing.json"}


@pytest.mark.filterwarnings("ignore:The train split of 'fashion_mnist' holds examples of only")
def test_export_data_at_the_models_input_shape(tmp_path):
    """A 28x28x1 model's export data is the plain split's; a 32x32x3 model's is resized with its gray repeated."""
    run_folder(tmp_path / "plain", (28, 28, 1), None)
    plain = json.loads((tmp_path / "plain" / "preprocessing.json").read_text())
    assert plain["input_shape"] == [28, 28, 1] and plain["image_size"] is None
    data = export_lib.load_export_data("fashion_mnist", plain, verify_images=50, representative_images=20)
    reference, _ = data_lib.load("fashion_mnist", "test", 256, subset=50, augment=False, shuffle=False)
    np.testing.assert_array_equal(data.images, batches_of(reference)[0])
    run_folder(tmp_path / "colour", (32, 32, 3), (32, 32))
    colour = json.loads((tmp_path / "colour" / "preprocessing.json").read_text())
    data = export_lib.load_export_data("fashion_mnist", colour, verify_images=50, representative_images=20)
    raw, labels = fashion_test_subset(50)
    expected = np.repeat(((pillow_resized(raw, 32, 32) / 255 - MEAN) / STD)[..., None], 3, axis=-1)
    assert data.images.shape == (50, 32, 32, 3) and data.representative.shape == (20, 32, 32, 3)
    np.testing.assert_allclose(data.images, expected, atol=1e-5)
    np.testing.assert_array_equal(data.labels, labels)


@pytest.mark.filterwarnings("ignore:The train split of 'fashion_mnist' holds examples of only")
def test_an_exported_three_channel_model_evaluates_in_its_runtime(tmp_path):
    folder = tmp_path / "run"
    model = run_folder(folder, (32, 32, 3), (32, 32))
    preprocessing = json.loads((folder / "preprocessing.json").read_text())
    data = export_lib.load_export_data("fashion_mnist", preprocessing, verify_images=60, representative_images=20)
    export_lib.export_model(
        model, tmp_path / "exported", data, preprocessing, formats=("tflite",), quantize="float32", log=lambda *_: None
    )
    result = evaluation.evaluate(tmp_path / "exported" / "student_float32.tflite", "fashion_mnist", subset=60)
    logits = model.predict(data.images, verbose=0)
    assert result["num_examples"] == 60 and result["runtime"] == "ai_edge_litert"
    assert result["accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == data.labels), abs=1e-6)
