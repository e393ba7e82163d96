"""Any Keras architecture as a student or teacher (`stkd_keras.architectures`) and the teacher's input adapter.

Values are worked out apart from the code under test: parameter counts and MACs from the papers and Keras's own
documentation, weights compared with the file's source model, the adapter's arithmetic in numpy.
"""

import os
import textwrap

import keras
import numpy as np
import pytest

from stkd_keras import architectures
from stkd_keras.architectures import ArchitectureError, build_model, kind_of
from stkd_keras.input_adapter import InputAdapter, adapt_teacher
from stkd_keras.models import count_macs, count_trainable_parameters
from stkd_keras.run_steps import model_input_options, teacher_normalization


def test_kind_of_each_way_of_naming_a_model():
    assert kind_of("resnet8") == "zoo" and kind_of("MobileNetV2") == "zoo" and kind_of("ResNet50") == "zoo"
    assert kind_of("MobileNetV3Small") == "application" and kind_of("keras:MobileNetV2") == "application"
    assert kind_of("keras:ResNet50") == "application" and kind_of("EfficientNetV2B0") == "application"
    assert kind_of("runs/a [1]/student.keras") == "file"
    assert kind_of("my_models.heads:make") == "factory"
    for bad in ("resnet9", "keras:Nope", "module:", ":f", "a:b:c", "", "student.h5"):
        with pytest.raises(ArchitectureError, match="Unknown model|Expected a model name"):
            kind_of(bad)
    assert "keras:MobileNetV2" in architectures.application_names()
    assert "MobileNetV3Small" in architectures.application_names()


def test_every_listed_application_is_a_keras_application():
    for name in architectures.APPLICATIONS:
        assert callable(getattr(keras.applications, name))


# At 224x224x3 with 1,000 classes every family has its published size: parameters as Keras's documentation and
# model summaries give them, multiply-accumulates as the papers give them (MobileNetV3 Small 56M, MobileNetV2 300M,
# EfficientNet-B0 0.39B, ResNet-50 3.8-3.9G).
PUBLISHED = {
    "MobileNetV3Small": (2_554_968, 56e6),
    "keras:MobileNetV2": (3_538_984, 300e6),
    "EfficientNetB0": (5_330_571, 0.39e9),
    "keras:ResNet50": (25_636_712, 3.86e9),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_applications_have_their_published_size(name):
    model = build_model(name, 1000, (224, 224, 3))
    parameters, macs = PUBLISHED[name]
    assert model.count_params() == parameters
    assert count_macs(model) == pytest.approx(macs, rel=0.02)
    assert model.output_shape == (None, 1000)


def test_an_application_is_built_for_the_data_with_logits_out():
    model = build_model("MobileNetV3Small", 4, (32, 32, 1))
    assert model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, 4)
    assert not architectures.reads_raw_pixels(model)  # include_preprocessing=False: the pipeline normalises
    logits = keras.ops.convert_to_numpy(model(np.random.default_rng(0).normal(size=(3, 32, 32, 1)), training=False))
    assert not np.allclose(logits.sum(axis=1), 1.0)  # no softmax
    assert not architectures.reads_raw_pixels(build_model("EfficientNetV2B0", 4, (32, 32, 3)))
    # Keras builds MobileNetV3's BatchNorm with momentum 0.999: after a short run its moving statistics still hold
    # their initial values and evaluation is at chance; the zoo's (PyTorch's) 0.9 replaces it.
    momenta = {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}


def test_efficientnet_reads_raw_pixels_and_normalises_them_with_the_dataset_statistics():
    mean, std = (0.25, 0.5, 0.75), (0.1, 0.2, 0.3)
    model = build_model("EfficientNetB0", 3, (32, 32, 3), normalization=(mean, std))
    assert architectures.reads_raw_pixels(model)
    normalization = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    upto = keras.Model(model.input, normalization.output)
    pixels = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3)).astype("float32")
    expected = (pixels / 255 - np.asarray(mean)) / np.asarray(std)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(upto(pixels)), expected, rtol=1e-4, atol=1e-4)
    info = type("Info", (), {"input_shape": (32, 32, 3)})()
    assert model_input_options(model, info) == {"normalization": ([0.0] * 3, [1 / 255] * 3)}


def test_a_model_the_data_is_too_small_for_is_refused_naming_both():
    with pytest.raises(ArchitectureError) as error:
        build_model("MobileNetV3Small", 10, (28, 28, 1))
    assert "at least 32x32" in str(error.value) and "28x28" in str(error.value) and "image size" in str(error.value)


def _weights_of(model, name):
    return [keras.ops.convert_to_numpy(w) for w in model.get_layer(name).weights]


def test_starting_weights_from_a_keras_file_rebuild_the_classifier(tmp_path):
    source = build_model("MobileNetV3Small", 10, (32, 32, 3))
    source.save_weights(tmp_path / "source.weights.h5")
    model = build_model("MobileNetV3Small", 4, (32, 32, 3), weights=str(tmp_path / "source.weights.h5"))
    for name in ("conv", "expanded_conv_project"):
        for loaded, original in zip(_weights_of(model, name), _weights_of(source, name)):
            np.testing.assert_array_equal(loaded, original)
    assert model.get_layer("logits").weights[0].shape[-1] == 4  # the classifier: fresh, for 4 classes


def _stem_kernel(tf_keras, model):
    return next(layer for layer in model.layers if isinstance(layer, tf_keras.layers.Conv2D)).get_weights()[0]


def test_imagenet_files_in_keras_own_format_load_with_or_without_the_top(tmp_path, monkeypatch):
    """The .h5 files keras.applications downloads: written here by tf_keras, which made them."""
    tf_keras = pytest.importorskip("tf_keras")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    with pytest.raises(ArchitectureError) as missing:
        build_model("MobileNetV3Small", 4, (32, 32, 1), weights="imagenet")
    message = str(missing.value)
    assert "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/" in message
    assert str(tmp_path / "home" / "models" / "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5") in message
    options = {"input_shape": (32, 32, 3), "weights": None, "include_preprocessing": False}
    notop = tf_keras.applications.MobileNetV3Small(include_top=False, **options)
    (tmp_path / "home" / "models").mkdir(parents=True)
    notop.save_weights(tmp_path / "home" / "models" / architectures.APPLICATIONS["MobileNetV3Small"].imagenet)
    model = build_model("MobileNetV3Small", 4, (32, 32, 1), weights="imagenet")
    assert model.input_shape == (None, 32, 32, 3)  # ImageNet weights need RGB: the data repeats its gray channel
    # The stem convolution is the first layer with weights in both; its kernel came from the file.
    np.testing.assert_array_equal(_weights_of(model, "conv")[0], _stem_kernel(tf_keras, notop))
    top = tf_keras.applications.MobileNetV3Small(include_top=True, classes=1000, **options)
    top.save_weights(tmp_path / "top.h5")
    model = build_model("MobileNetV3Small", 4, (32, 32, 3), weights=str(tmp_path / "top.h5"))
    np.testing.assert_array_equal(_weights_of(model, "conv")[0], _stem_kernel(tf_keras, top))


def test_starting_weights_that_fit_nothing_or_are_not_weights_are_refused(tmp_path):
    build_model("resnet8", 10, (32, 32, 3)).save_weights(tmp_path / "resnet8.weights.h5")
    with pytest.raises(ArchitectureError, match="fit only .* layers of MobileNetV3Small.*another architecture"):
        build_model("MobileNetV3Small", 4, (32, 32, 3), weights=str(tmp_path / "resnet8.weights.h5"))
    (tmp_path / "broken.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(ArchitectureError, match="Cannot read starting weights"):
        build_model("resnet8", 4, (32, 32, 3), weights=str(tmp_path / "broken.weights.h5"))
    with pytest.raises(ArchitectureError, match="does not exist"):
        build_model("resnet8", 4, (32, 32, 3), weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ArchitectureError, match="Expected starting weights in a .weights.h5"):
        build_model("resnet8", 4, (32, 32, 3), weights=str(tmp_path / "model.keras"))
    with pytest.raises(ArchitectureError, match="ImageNet weights exist only for keras.applications"):
        build_model("resnet8", 4, (32, 32, 3), weights="imagenet")


def test_a_keras_file_is_the_starting_architecture_and_weights(tmp_path):
    source = build_model("resnet8", 10, (32, 32, 3))
    source.save(tmp_path / "start.keras")
    model = build_model(str(tmp_path / "start.keras"), 10, (32, 32, 3))
    for loaded, original in zip(model.weights, source.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(original))
    # A gray dataset's channel is repeated for a model that takes RGB.
    assert build_model(str(tmp_path / "start.keras"), 10, (32, 32, 1)).input_shape == (None, 32, 32, 3)
    with pytest.raises(ArchitectureError) as error:
        build_model(str(tmp_path / "start.keras"), 10, (28, 28, 1))
    assert str(error.value) == (
        f"{tmp_path / 'start.keras'} takes 32x32x3 images and predicts 10 classes, but the data has 28x28x1 images "
        "and 10 classes: set the image size to 32."
    )
    with pytest.raises(ArchitectureError, match="predicts 10 classes, but the data has 32x32x3 images and 5 classes"):
        build_model(str(tmp_path / "start.keras"), 5, (32, 32, 3))
    with pytest.raises(ArchitectureError, match="brings its own weights"):
        build_model(str(tmp_path / "start.keras"), 10, (32, 32, 3), weights=str(tmp_path / "w.weights.h5"))


FACTORY = """
import keras


def make(num_classes, input_shape):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="head")(x), name="mine")


def probabilities(num_classes, input_shape):
    inputs = keras.Input(input_shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def fixed(num_classes, input_shape):
    return make(3, (16, 16, 1))


def broken(num_classes, input_shape):
    raise RuntimeError("no GPU")

NOT_A_FUNCTION = 3
"""


def test_a_factory_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "house_models.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [path for path in __import__("sys").path if path not in ("", os.getcwd())])
    model = build_model("house_models:make", 7, (24, 24, 1))
    assert model.name == "mine" and model.input_shape == (None, 24, 24, 1) and model.output_shape == (None, 7)
    assert count_trainable_parameters(model) == 3 * 3 * 4 + 4 + 4 * 7 + 7
    cases = {
        "house_models:probabilities": "ends in a softmax",
        "house_models:fixed": "built a model for 16x16x1 images and 3 classes, but it was asked for 24x24x1 images "
        "and 7 classes",
        "house_models:broken": r"house_models:broken\(num_classes=7, input_shape=\(24, 24, 1\)\) failed: RuntimeError",
        "house_models:NOT_A_FUNCTION": "has no function 'NOT_A_FUNCTION'",
        "house_models:absent": "has no function 'absent'",
        "no_such_module:make": "Cannot import 'no_such_module'.*working directory and PYTHONPATH",
    }
    for spec, message in cases.items():
        with pytest.raises(ArchitectureError, match=message):
            build_model(spec, 7, (24, 24, 1))


def test_the_adapter_renormalises_repeats_and_resizes_as_numpy_does():
    source = ((0.3,), (0.2,))
    target = ((0.4, 0.5, 0.6), (0.1, 0.2, 0.4))
    images = np.random.default_rng(2).normal(size=(2, 8, 8, 1)).astype("float32")
    adapted = keras.ops.convert_to_numpy(InputAdapter(source, target, (8, 8))(images))
    pixels = images * 0.2 + 0.3
    expected = (np.repeat(pixels, 3, axis=-1) - np.asarray(target[0])) / np.asarray(target[1])
    np.testing.assert_allclose(adapted, expected, rtol=1e-5, atol=1e-5)
    back = keras.ops.convert_to_numpy(InputAdapter(target, source, (8, 8))(expected.astype("float32")))
    np.testing.assert_allclose(back, images, rtol=1e-4, atol=1e-4)  # RGB of repeated gray: the mean is the gray
    # A constant image stays that constant at any size.
    constant = np.full((1, 6, 6, 1), 0.7, "float32")
    resized = keras.ops.convert_to_numpy(InputAdapter(source, source, (15, 9))(constant))
    assert resized.shape == (1, 15, 9, 1)
    np.testing.assert_allclose(resized, 0.7, rtol=1e-5)


def test_a_teacher_of_another_size_and_normalisation_is_wrapped_and_a_matching_one_is_not(tmp_path):
    teacher = build_model("resnet8", 5, (32, 32, 1))
    same = ((0.3,), (0.2,))
    assert adapt_teacher(teacher, (32, 32, 1), same, same) is teacher
    wrapped = adapt_teacher(teacher, (64, 64, 3), ((0.0,) * 3, (1 / 255,) * 3), same)
    assert wrapped.input_shape == (None, 64, 64, 3) and wrapped.output_shape == (None, 5)
    assert wrapped.name == teacher.name
    # The teacher sees, through the wrapper, what it would see of the same picture at its own size and normalisation.
    gray = np.full((1, 32, 32, 1), 128.0, "float32")
    direct = keras.ops.convert_to_numpy(teacher((gray / 255 - 0.3) / 0.2, training=False))
    through = keras.ops.convert_to_numpy(wrapped(np.full((1, 64, 64, 3), 128.0, "float32"), training=False))
    np.testing.assert_allclose(through, direct, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="only gray and RGB"):
        adapt_teacher(teacher, (32, 32, 2), ((0.0, 0.0), (1.0, 1.0)), same)


def test_the_teacher_normalisation_comes_from_its_record_or_its_layers(tmp_path):
    teacher = build_model("resnet8", 5, (32, 32, 3))
    (tmp_path / "preprocessing.json").write_text('{"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}')
    assert teacher_normalization(teacher, tmp_path / "teacher.keras", ((0.5,), (0.25,))) == (
        [0.1, 0.2, 0.3],
        [0.4, 0.5, 0.6],
    )
    assert teacher_normalization(teacher, tmp_path / "none" / "t.keras", ((0.5,), (0.25,))) == (
        [0.5] * 3,
        [0.25] * 3,
    )
    raw = build_model("EfficientNetB0", 5, (32, 32, 3))
    assert teacher_normalization(raw, tmp_path / "none" / "t.keras", ((0.5,), (0.25,))) == ([0.0] * 3, [1 / 255] * 3)


def test_a_mobilenetv3_student_trains_one_short_epoch_with_a_teacher_of_another_size():
    """On every backend (tests/test_backends.py runs it on JAX and PyTorch): the compiled step takes an application
    student and a teacher that reads its inputs through the adapter."""
    from stkd_keras import Distiller

    keras.utils.set_random_seed(0)
    teacher = adapt_teacher(
        build_model("cnn8", 4, (28, 28, 1)), (32, 32, 3), ((0.0,) * 3, (1.0,) * 3), ((0.0,), (1.0,))
    )
    student = build_model("MobileNetV3Small", 4, (32, 32, 3))
    before = _weights_of(student, "conv")[0].copy()
    distiller = Distiller(student, teacher, method="stkd")
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    rng = np.random.default_rng(0)
    images, labels = rng.normal(size=(32, 32, 32, 3)).astype("float32"), rng.integers(0, 4, size=32)
    history = distiller.fit(images, labels, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][-1]) and history["kd_loss"][-1] > 0
    assert not np.array_equal(_weights_of(student, "conv")[0], before)
