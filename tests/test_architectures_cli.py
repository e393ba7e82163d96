"""The command line with any Keras architecture (issue 23): applications by name, files, factories, starting weights,
a teacher of another image size, and the refusals, each answered before anything trains."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from stkd_keras.cli.main import cli

TINY = ["--epochs", "1", "--train-subset", "256", "--val-subset", "256", "--batch-size", "64", "--quiet"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def shades(tmp_path_factory):
    """A folder dataset of two classes told apart by shade: dark (30) and light (220) 20x20 RGB squares."""
    images = tmp_path_factory.mktemp("shades")
    for label, value in enumerate((30, 220)):
        for split, count in (("train", 16), ("val", 6)):
            for index in range(count):
                path = images / split / f"class{label}" / f"{index}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tf.io.encode_png(tf.fill((20, 20, 3), tf.constant(value, tf.uint8))).numpy())
    return images


@pytest.fixture(scope="module")
def small_teacher(shades, tmp_path_factory):
    """A cnn8 teacher trained at 12x12 (the students below read 32x32)."""
    output = tmp_path_factory.mktemp("teacher") / "run"
    result = run(
        "train-teacher", "--dataset", f"folder:{shades}", "--image-size", 12, "--model", "cnn8", "--epochs", 3,
        "--batch-size", 8, "--quiet", "--output", output,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return output


def test_a_mobilenetv3_student_learns_from_a_teacher_of_another_size(shades, small_teacher, tmp_path):
    output = tmp_path / "student"
    result = run(
        "distill", "--dataset", f"folder:{shades}", "--image-size", 32, "--student", "MobileNetV3Small",
        "--teacher", small_teacher, "--method", "kd", "--epochs", 1, "--batch-size", 8, "--output", output,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    student = keras.saving.load_model(output / "student.keras")
    assert student.input_shape == (None, 32, 32, 3) and student.output_shape == (None, 2)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["config"]["model"] == "MobileNetV3Small" and metrics["model"] == "MobileNetV3Small"
    # The teacher, measured through its input adapter on the student's 32x32 images, is the teacher measured at its
    # own 12x12: the shades are uniform, so resizing changes no pixel.
    own = json.loads((small_teacher / "metrics.json").read_text())["final_val_accuracy"]
    assert metrics["teacher"]["accuracy"] == pytest.approx(own, abs=1e-6)
    stored = json.loads((output / "preprocessing.json").read_text())
    assert stored["input_shape"] == [32, 32, 3] and stored["mean"] == pytest.approx([(30 + 220) / 2 / 255] * 3)


# Slow (about a minute: EfficientNetB0's graph); the default run checks the same rule in
# tests/test_architectures.py (test_efficientnet_reads_raw_pixels_and_normalises_them_with_the_dataset_statistics).
@pytest.mark.slow
def test_an_efficientnet_student_reads_raw_pixels(shades, small_teacher, tmp_path):
    output = tmp_path / "student"
    result = run(
        "distill", "--dataset", f"folder:{shades}", "--image-size", 32, "--student", "EfficientNetB0",
        "--teacher", small_teacher, "--method", "kd", "--epochs", 1, "--batch-size", 8, "--quiet", "--output", output,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stored = json.loads((output / "preprocessing.json").read_text())
    assert stored["mean"] == [0.0] * 3 and stored["std"] == pytest.approx([1 / 255] * 3)
    # Its Normalization layer holds the dataset's statistics (the mean of the two shades, on the 0-1 scale).
    student = keras.saving.load_model(output / "student.keras")
    normalization = next(layer for layer in student.layers if isinstance(layer, keras.layers.Normalization))
    mean = keras.ops.convert_to_numpy(normalization.weights[0])
    np.testing.assert_allclose(mean, [(30 + 220) / 2 / 255] * 3, rtol=1e-5)
    result = run("evaluate", "--model", output / "student.keras", "--dataset", f"folder:{shades}", "--quiet")
    assert result.exit_code == 0, result.output


def test_too_small_an_image_is_refused_before_the_teacher_trains(tmp_path):
    result = run("distill", "--student", "MobileNetV3Small", "--output", tmp_path / "run", *TINY)
    assert result.exit_code == 1
    assert (
        "Error: MobileNetV3Small needs inputs of at least 32x32 pixels, but the data's images are 28x28: set the "
        "run's image size (--image-size) to 32 or more." in result.output
    )
    assert "training a" not in result.output and not (tmp_path / "run").exists()


def test_model_and_weights_mistakes_are_one_sentence(tmp_path):
    cases = [
        (["--student", "nope:"], 2, "Unknown model 'nope:'"),
        (["--student-weights", tmp_path / "missing.weights.h5"], 1, "does not exist"),
        (["--student-weights", tmp_path / "w.npz"], 1, "Expected starting weights in a .weights.h5"),
        (["--student-weights", "imagenet"], 1, "ImageNet weights exist only for keras.applications models"),
        (["--student", tmp_path / "s.keras", "--student-weights", "imagenet"], 1, "brings its own weights"),
        (["--teacher-model", "MobileNetV3Small", "--teacher-weights", "x.npz"], 1, "Expected starting weights"),
    ]
    keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]).save(
        tmp_path / "given.keras"
    )
    cases.append(
        (
            ["--teacher", tmp_path / "given.keras", "--teacher-weights", "imagenet"],
            2,
            "--teacher brings its own weights",
        )
    )
    for options, code, message in cases:
        result = run("distill", *options, "--output", tmp_path / "run", *TINY)
        assert result.exit_code == code and message in result.output, (options, result.output)
    assert not (tmp_path / "run").exists()


FACTORY = """
import keras


@keras.saving.register_keras_serializable(package="house")
class Halve(keras.layers.Layer):
    def call(self, x):
        return x / 2


def make(num_classes, input_shape):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(Halve()(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="head")(x), name="house_model")
"""


def test_a_factory_in_your_own_code_trains_and_evaluates(tmp_path, monkeypatch):
    (tmp_path / "house.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.chdir(tmp_path)
    result = run("train-teacher", "--model", "house:make", "--output", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    model = keras.saving.load_model(tmp_path / "run" / "teacher.keras")
    assert model.name == "house_model" and model.output_shape == (None, 10)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["model"] == "house:make"
    result = run("evaluate", "--model", tmp_path / "run", "--dataset", "fashion_mnist", "--subset", 100, "--quiet")
    assert result.exit_code == 0, result.output
    # In a fresh process, the factory's own layer (Halve) is found: loading the model imports the module its
    # metrics.json names.
    script = "from stkd_keras.evaluation import load_model; print(load_model('run', role='teacher').layers[1].name)"
    loaded = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0 and loaded.stdout.split()[-1].startswith("halve"), loaded.stderr[-2000:]


def test_a_keras_file_that_takes_rgb_trains_on_fashion_mnist_resized_and_repeated(tmp_path):
    from stkd_keras.architectures import build_model

    build_model("cnn8", 10, (32, 32, 3)).save(tmp_path / "start.keras")
    output = tmp_path / "run"
    options = ["--model", tmp_path / "start.keras", "--image-size", 32, "--output", output, *TINY]
    result = run("train-teacher", *options)
    assert result.exit_code == 0, result.output
    stored = json.loads((output / "preprocessing.json").read_text())
    # Fashion-MNIST's gray statistics, repeated for the three channels the model takes.
    assert stored["input_shape"] == [32, 32, 3] and stored["mean"] == pytest.approx([0.2860] * 3, abs=1e-4)
    result = run("evaluate", "--model", output, "--dataset", "fashion_mnist", "--subset", 100, "--quiet")
    assert result.exit_code == 0, result.output
    # Outside its run folder, with no preprocessing.json to say how it was trained, a 32x32x3 model is not fed
    # Fashion-MNIST resized and repeated: it is refused.
    (tmp_path / "bare").mkdir()
    (output / "teacher.keras").rename(tmp_path / "bare" / "model.keras")
    result = run("evaluate", "--model", tmp_path / "bare" / "model.keras", "--dataset", "fashion_mnist")
    assert result.exit_code == 1 and "takes inputs (32, 32, 3)" in result.output and "(28, 28, 1)" in result.output


def test_a_teacher_of_another_dataset_is_refused_though_it_could_read_the_images(shades, small_teacher, tmp_path):
    result = run("distill", "--teacher", small_teacher, "--output", tmp_path / "run", *TINY)
    assert result.exit_code == 1 and not (tmp_path / "run").exists()
    assert (
        f"Error: The teacher {small_teacher} was trained on folder:{shades}, and this run distils on fashion_mnist: "
        "its classes are not this dataset's; give a teacher trained on fashion_mnist." in result.output
    )
