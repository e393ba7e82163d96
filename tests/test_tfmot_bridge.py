"""The tfmot bridge (QAT and pruning through tf_keras), run as the subprocess it is meant to be.

The students are tiny and trained here for a few seconds on real Fashion-MNIST
images; each bridge run fine-tunes for one epoch on 1000 images. Numbers the
bridge reports are checked against what this test measures itself in the
int8 file (accuracy through ai_edge_litert, zeros in the int8 kernels).
"""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from keras import layers

import learning

from stkd_keras import data as data_lib
from stkd_keras.models import get_model
from stkd_keras.models.layers import ChannelShuffle, ChannelSplit, conv_bn_relu

EVAL_IMAGES = 500
BRIDGE_OPTIONS = [
    "--dataset",
    "fashion_mnist",
    "--epochs",
    "1",
    "--train-subset",
    "1000",
    "--eval-subset",
    str(EVAL_IMAGES),
    "--representative",
    "100",
]


def train_briefly(model, images=2000, epochs=2):
    dataset, _ = data_lib.load("fashion_mnist", "train", 32, subset=images)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(dataset, epochs=epochs, verbose=0, shuffle=False)  # data_lib.load already shuffles
    return model


def run_bridge(*arguments):
    return subprocess.run(
        [sys.executable, "-m", "stkd_keras.export.tfmot_bridge", *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=900,
    )


def run_bridge_ok(tmp_path, name, *arguments):
    output, report = tmp_path / f"{name}.tflite", tmp_path / f"{name}.json"
    result = run_bridge(*arguments, *BRIDGE_OPTIONS, "--output", output, "--report", report)
    assert result.returncode == 0, result.stderr[-3000:]
    return output, json.loads(report.read_text())


@pytest.fixture(scope="module")
def evaluation_images():
    dataset, _ = data_lib.load("fashion_mnist", "test", 256, augment=False, shuffle=False, subset=EVAL_IMAGES)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
    """A cnn8 student and a cnn16 teacher, each trained for two epochs on 2000 images (about 0.6 test accuracy).

    The student untrained is kept beside them (untrained_student.keras): the line its training must clear.
    """
    folder = tmp_path_factory.mktemp("pair")
    keras.utils.set_random_seed(0)
    student = get_model("cnn8", 10, (28, 28, 1))
    student.save(folder / "untrained_student.keras")
    train_briefly(student).save(folder / "student.keras")
    train_briefly(get_model("cnn16", 10, (28, 28, 1))).save(folder / "teacher.keras")
    return folder / "student.keras", folder / "teacher.keras"


def int8_accuracy(path, images, labels):
    """Top-1 accuracy of an int8 .tflite file, quantizing the inputs with the input tensor's scale and zero point."""
    interpreter = Interpreter(model_path=str(path))
    detail = interpreter.get_input_details()[0]
    scale, zero_point = detail["quantization"]
    interpreter.resize_tensor_input(detail["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], np.clip(np.round(images / scale + zero_point), -128, 127).astype(np.int8))
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return float(np.mean(logits.argmax(-1) == labels))


def int8_kernel_zeros(path):
    """Zeros and size of the weights of every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED op of a .tflite file.

    Int8 quantization maps 0 to 0 (weights are symmetric, zero point 0) and BatchNorm folding scales
    whole output channels, so every weight pruned in float is still a zero here.
    """
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    zeros = size = 0
    # The LiteRT interpreter has no public op listing; _get_ops_details has been stable since TF 2.x.
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            kernel = interpreter.get_tensor(op["inputs"][1])
            assert kernel.dtype == np.int8
            zeros += int(np.sum(kernel == 0))
            size += kernel.size
    return zeros, size


@pytest.mark.learning
def test_qat_distilled_student_parity_and_int8_file(saved_pair, evaluation_images, tmp_path):
    student, teacher = saved_pair
    output, report = run_bridge_ok(
        tmp_path,
        "qat",
        "--model",
        student,
        "--teacher",
        teacher,
        "--mode",
        "qat",
        "--method",
        "kd",
        "--hyperparameters",
        '{"temperature": 2.0}',
    )
    assert report["parity_max_abs_diff"]["student"] <= 1e-5
    assert report["parity_max_abs_diff"]["teacher"] <= 1e-5
    # Fine-tuned with the method and hyperparameters it was given, the others at the method's defaults.
    assert (
        report["teacher"] == str(teacher) and report["method"] == "kd" and report["loss"] == "Hinton KD on clean images"
    )
    assert report["hyperparameters"] == {
        "temperature": 2.0,
        "logit_standardization": False,
        "ce_weight": 0.1,
        "kd_weight": 0.9,
    }

    interpreter = Interpreter(model_path=str(output))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    images, labels = evaluation_images
    accuracy = int8_accuracy(output, images, labels)
    # The int8 file classifies: 0.134 above the student untrained, on 500 images (tests/learning.py). Seen on AMD
    # EPYC (AVX2): 0.106 -> 0.550 with oneDNN, 0.558 without: margin left 0.31.
    untrained = learning.accuracy(keras.saving.load_model(student.parent / "untrained_student.keras"), images, labels)
    learning.assert_learned("QAT int8 file", untrained, accuracy, len(labels))
    assert accuracy == pytest.approx(report["int8_top1_accuracy"], abs=0.01)
    assert report["int8_size_bytes"] == output.stat().st_size
    assert (report["int8_input_dtype"], report["int8_output_dtype"]) == ("int8", "int8")


# Slow (25 s): the default run fine-tunes with QAT (above); `pytest -m slow` prunes here and through the CLI.
@pytest.mark.slow
def test_prune_reaches_the_target_sparsity_in_the_int8_file(saved_pair, tmp_path):
    student, teacher = saved_pair
    output, report = run_bridge_ok(
        tmp_path, "prune", "--model", student, "--teacher", teacher, "--mode", "prune", "--sparsity", "0.5"
    )
    assert report["parity_max_abs_diff"]["student"] <= 1e-5
    assert (
        report["method"] == "stkd" and report["hyperparameters"]["mixup_alpha"] == 0.2
    )  # with a teacher: STKD by default
    pruning = report["pruning"]
    assert pruning["schedule"]["final_sparsity"] == 0.5
    assert set(pruning["per_layer_sparsity"]) == {"stage1_conv", "stage2_conv", "stage3_conv", "logits"}

    # Counted in the int8 file: the kernels the bridge counted (cnn8 prunes all of them), and at least its zeros.
    zeros, size = int8_kernel_zeros(output)
    assert size == pruning["prunable_weights"]
    assert zeros / size == pytest.approx(0.5, abs=0.02)
    assert zeros / size >= pruning["overall_sparsity"] - 1e-9
    assert pruning["overall_sparsity"] == pytest.approx(0.5, abs=0.02)


# Slow (30 s): the default run quantizes with QAT and prunes a resnet (above); this one ShuffleNet's own layers.
@pytest.mark.slow
@pytest.mark.learning
def test_channel_shuffle_and_split_quantize_without_a_teacher(evaluation_images, tmp_path):
    keras.utils.set_random_seed(1)
    inputs = layers.Input((28, 28, 1), name="images")
    x = conv_bn_relu(inputs, 16, 3, 1, name="stem")
    x = layers.MaxPooling2D(2, name="stem_pool")(x)
    left, right = ChannelSplit(2, name="split")(x)
    right = conv_bn_relu(right, 8, 3, 1, name="branch")
    x = ChannelShuffle(2, name="shuffle")(layers.Concatenate(name="concat")([left, right]))
    x = conv_bn_relu(x, 32, 3, 2, name="head")
    logits = layers.Dense(10, name="logits")(layers.GlobalAveragePooling2D(name="pool")(x))
    model = keras.Model(inputs, logits, name="mini_shuffle")
    images, labels = evaluation_images
    untrained = learning.accuracy(model, images, labels)
    train_briefly(model).save(tmp_path / "mini_shuffle.keras")

    output, report = run_bridge_ok(
        tmp_path, "mini_shuffle_qat", "--model", tmp_path / "mini_shuffle.keras", "--mode", "qat"
    )
    assert report["parity_max_abs_diff"] == {"student": pytest.approx(0, abs=1e-5)}
    assert report["teacher"] is None and report["method"] == "ce" and report["hyperparameters"] == {}
    accuracy = int8_accuracy(output, images, labels)
    # Seen on AMD EPYC (AVX2): 0.150 -> 0.594 with oneDNN, 0.598 without: margin left 0.31.
    learning.assert_learned("ShuffleNet-block int8 file", untrained, accuracy, len(labels))
    # The channel layers carry their input's quantization: int8 costs little against the QAT float model. Seen:
    # int8 within 0.004 of float, oneDNN on and off.
    assert accuracy == pytest.approx(report["float_top1_accuracy"], abs=0.05)


def test_unsupported_layer_is_named_in_one_line(tmp_path):
    inputs = layers.Input((28, 28, 1), name="images")
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.LayerNormalization(name="norm")(x)
    logits = layers.Dense(10, name="logits")(layers.GlobalAveragePooling2D(name="pool")(x))
    keras.Model(inputs, logits).save(tmp_path / "norm.keras")

    result = run_bridge(
        "--model",
        tmp_path / "norm.keras",
        "--mode",
        "qat",
        *BRIDGE_OPTIONS,
        "--output",
        tmp_path / "x.tflite",
        "--report",
        tmp_path / "x.json",
    )
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(
        "Error: Layer 'norm' of class LayerNormalization is not supported by the tf_keras bridge"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.tflite").exists() and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--method", "stkd"], "Error: Method 'stkd' distils from a teacher, but none was given; pass --teacher"),
        (
            ["--method", "mixup", "--hyperparameters", '{"temperature": 2}'],
            "Error: Method 'mixup' has no hyperparameter `temperature`",
        ),
        (["--method", "hinton"], "Error: Expected `method` to be one of"),
        (
            ["--hyperparameters", "[1]"],
            "Error: Invalid value for --hyperparameters: Expected a JSON object. Received: [1]",
        ),
    ],
)
def test_bad_method_is_refused_before_any_work(arguments, message, saved_pair, tmp_path):
    student, _ = saved_pair
    result = run_bridge(
        "--model",
        student,
        "--mode",
        "qat",
        *arguments,
        *BRIDGE_OPTIONS,
        "--output",
        tmp_path / "x.tflite",
        "--report",
        tmp_path / "x.json",
    )
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.tflite").exists() and not (tmp_path / "x.json").exists()


def test_help_lists_every_option():
    result = run_bridge("--help")
    assert result.returncode == 0
    for option in (
        "--model",
        "--teacher",
        "--mode",
        "--method",
        "--hyperparameters",
        "--sparsity",
        "--representative",
        "--output",
        "--report",
    ):
        assert option in result.stdout


@pytest.mark.parametrize("method", __import__("stkd_keras.methods", fromlist=["list_methods"]).list_methods())
def test_the_fine_tuning_loss_is_the_distillers(method):
    """One loss for both trainers: on the same weights, batch, mixup draw and epoch, the QAT/pruning fine-tuning's loss
    (tf_keras models) equals the Distiller's. The bridge once built its context without the epoch, so a DKD fine-tune
    kept its distillation terms at 1/20 of their weight for good."""
    import tf_keras

    from stkd_keras import Distiller
    from stkd_keras.export.tf_keras_rebuild import custom_layer_classes, to_tf_keras
    from stkd_keras.export.tfmot_fine_tune import batch_loss
    from stkd_keras.methods import get_method

    unit = get_method(method)
    keras.utils.set_random_seed(1)
    student, teacher = get_model("cnn8", 10, (28, 28, 1)), get_model("cnn16", 10, (28, 28, 1))
    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((16, 28, 28, 1)).astype("float32"), rng.integers(0, 10, 16)
    custom = custom_layer_classes(tf_keras)
    legacy_student = to_tf_keras(student, tf_keras, custom)
    legacy_teacher = to_tf_keras(teacher, tf_keras, custom) if unit.needs_teacher else None
    totals = {}
    for epoch in (0, 25):
        distiller = Distiller(student, teacher if unit.needs_teacher else None, method=method, seed=7)
        distiller.epoch.assign(epoch)
        expected = float(distiller.compute_loss(images, labels, training=True))
        values = unit.make_hyperparameters()
        got = float(
            batch_loss(
                unit, values, images, labels, legacy_student, legacy_teacher, keras.random.SeedGenerator(7), epoch, 0
            )
        )
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-5), (method, epoch)
        totals[epoch] = got
    if method.startswith("dkd"):
        # Past its warm-up the distillation terms weigh 20 times more (1/20 -> 1): the epoch reaches the loss. Seen for
        # dkd: 2.317 at epoch 0 and 2.621 at epoch 25 (CE 2.30, distillation terms 0.32).
        assert totals[25] > totals[0] + 0.1


def test_the_fine_tuning_contract_is_one_dataclass_written_as_json(tmp_path):
    """The export and the bridge process once shared an untyped dict as argv; now one frozen dataclass, as JSON."""
    from stkd_keras.export.plan import FineTuning

    spec = FineTuning(
        mode="prune",
        model="s.keras",
        dataset="fashion_mnist",
        mean=(0.286,),
        std=(0.353,),
        sparsity=0.7,
        method="dkd",
        hyperparameters={"temperature": 2.0},
        initial_epoch=20,
    )
    assert FineTuning.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match=r"takes the fields .*Received: \['dataset', 'epoch', 'mode', 'model'\]"):
        FineTuning.from_json('{"mode": "qat", "model": "m", "dataset": "d", "epoch": 3}')
    # An edited spec: a field missing, or a value of the wrong kind, is one sentence too (the process shows it as an
    # error line).
    with pytest.raises(ValueError, match=r"\['dataset', 'mode', 'model'\] among them. Received: \['dataset', 'mode'\]"):
        FineTuning.from_json('{"mode": "qat", "dataset": "d"}')
    with pytest.raises(ValueError, match="Expected `epochs` to be an int >= 1. Received: epochs='3'"):
        FineTuning.from_json('{"mode": "qat", "model": "m", "dataset": "d", "epochs": "3"}')
    with pytest.raises(ValueError, match="Give mean and std together"):
        FineTuning(mode="qat", model="m", dataset="d", mean=(0.1,))
    with pytest.raises(ValueError, match="Expected mode 'qat' or 'prune'"):
        FineTuning(mode="distill", model="m", dataset="d")
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    result = run_bridge("--spec", path, "--epochs", "3")
    assert result.returncode == 2 and "--spec holds the whole fine-tuning; drop --epochs." in result.stderr
    result = run_bridge("--mode", "qat")
    assert result.returncode == 2 and "Missing option(s) --model, --dataset, --output, --report" in result.stderr
    path.write_text('{"mode": "qat", "dataset": "fashion_mnist"}')  # truncated by hand: no traceback, one line
    result = run_bridge("--spec", path)
    assert (
        result.returncode == 1
        and "Error: A fine-tuning spec takes the fields" in result.stderr
        and "Traceback" not in result.stderr
    )
    path.write_text('{"mode": "qat", "model": "m.keras", "dataset": "fashion_mnist"')  # cut mid-way: not JSON
    result = run_bridge("--spec", path)
    assert result.returncode == 1 and "Error: Expecting" in result.stderr and "Traceback" not in result.stderr
