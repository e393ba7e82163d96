import zipfile

import keras
import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from stkd_keras import models
from stkd_keras.models import layers

# Trainable parameters at 100 classes, 32x32x3, of the reference PyTorch definitions
# (HobbitLong/RepDistiller models/: sum(p.numel() for p in model.parameters()), torch 2.13 CPU).
# "MobileNetV2" is RepDistiller's mobile_half; ResNet18/ResNet50 come from its resnetv2.py.
REFERENCE_PARAMETERS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
    "ResNet18": 11_220_132,
    "ResNet50": 23_705_252,
}
# Models of our own (no reference): counted by hand from their definitions in the tests below.
OWN_MODELS = {"cnn8", "cnn16", "cnn32"}
# Full checks (training step, save/load, TFLite, ONNX) of these run only with `pytest -m slow`:
# the default run keeps one or two members of every family and block type.
# (Measured on 2 busy cores: 10-20 s for the small ones, up to 140 s for ResNet50; all 26 pass with -m slow.)
SLOW = {
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "ResNet18",
    "ResNet50",
    "cnn16",
    "cnn32",
    "ShuffleV1",  # about 45 s
    "vgg8",  # about 13 s; the default run exports resnet8, wrn_16_1 and cnn8
    "MobileNetV2",  # about 35 s
    # About 40 s; the default run builds, saves and loads ShuffleV2 (its own layers) and checks the shuffle's order.
    "ShuffleV2",
}


def zoo_params(names):
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in names]


def test_zoo_is_the_reference_suite_plus_small_cnns():
    assert set(models.list_models()) == set(REFERENCE_PARAMETERS) | OWN_MODELS
    # The CLI checks --model against the Keras-free list: it must be the zoo, in the zoo's order.
    from stkd_keras.config import MODEL_NAMES

    assert list(MODEL_NAMES) == models.list_models()


@pytest.mark.parametrize("name", list(REFERENCE_PARAMETERS))
def test_parameter_count_matches_reference(name):
    model = models.get_model(name, num_classes=100, input_shape=(32, 32, 3))
    assert models.count_trainable_parameters(model) == REFERENCE_PARAMETERS[name]


@pytest.mark.parametrize("name, expected", [("ResNet18", 11_271_432), ("ResNet50", 23_910_152)])
def test_tiny_imagenet_teachers_at_64x64(name, expected):
    # Reference counts at 200 classes; the 64x64 input leaves an 8x8 map before global pooling.
    model = models.get_model(name, num_classes=200, input_shape=(64, 64, 3), include_features=True)
    assert models.count_trainable_parameters(model) == expected
    assert tuple(model.outputs[1].shape[1:3]) == (8, 8)


def test_resnet8_parameter_count_by_hand():
    # stem 3x3x3x16 + BN(16); stage1: two 3x3x16x16 + 2 BN(16);
    # stage2: 3x3x16x32, 3x3x32x32, 1x1x16x32 + 3 BN(32); stage3: same with 32->64; fc 64x10 + 10.
    # BN counts gamma and beta (PyTorch parameters; running stats are buffers).
    expected = (
        27 * 16
        + 32
        + 2 * 9 * 16 * 16
        + 2 * 32
        + 9 * 16 * 32
        + 9 * 32 * 32
        + 16 * 32
        + 3 * 64
        + 9 * 32 * 64
        + 9 * 64 * 64
        + 32 * 64
        + 3 * 128
        + 64 * 10
        + 10
    )
    assert expected == 78042
    assert models.count_trainable_parameters(models.resnet(8, 1, (32, 32, 3), 10)) == expected


def test_small_cnn_parameter_count_by_hand():
    # conv 3x3x1x8 + BN(8); conv 3x3x8x16 + BN(16); conv 3x3x16x32 + BN(32); dense 32x10 + 10.
    expected = 9 * 8 + 16 + 9 * 8 * 16 + 32 + 9 * 16 * 32 + 64 + 32 * 10 + 10
    assert models.count_trainable_parameters(models.get_model("cnn8", 10, (28, 28, 1))) == expected


def test_macs_by_hand():
    # resnet8 at 32x32, 10 classes: every conv is H*W*k*k*Cin*Cout at its output size.
    expected = (
        32 * 32 * 9 * 3 * 16
        + 2 * 32 * 32 * 9 * 16 * 16
        + 16 * 16 * (9 * 16 * 32 + 9 * 32 * 32 + 16 * 32)
        + 8 * 8 * (9 * 32 * 64 + 9 * 64 * 64 + 32 * 64)
        + 64 * 10
    )
    assert models.count_macs(models.get_model("resnet8", 10, (32, 32, 3))) == expected
    # A depthwise 3x3 conv costs H*W*9*C; a 1x1 conv with 3 groups H*W*Cin*Cout/3.
    inputs = keras.Input((4, 4, 6))
    x = layers.depthwise_conv(inputs, 1, name="dw")
    x = layers.grouped_conv1x1(x, 6, 3, name="grouped")
    assert models.count_macs(keras.Model(inputs, x)) == 4 * 4 * 9 * 6 + 4 * 4 * 6 * 6 // 3


def test_macs_of_the_layers_applications_and_your_own_models_use():
    # Separable 3x3 to 8 channels on 4x4x2: the depthwise part 16 * 9 * 2, the pointwise part 16 * 2 * 8.
    inputs = keras.Input((4, 4, 2))
    separable = keras.layers.SeparableConv2D(8, 3, padding="same")(inputs)
    assert models.count_macs(keras.Model(inputs, separable)) == 16 * (9 * 2 + 2 * 8)
    # Transposed 2x2, stride 2, to 3 channels: every input position spreads its 2 channels over 4 * 3 outputs.
    transposed = keras.layers.Conv2DTranspose(3, 2, strides=2)(inputs)
    assert models.count_macs(keras.Model(inputs, transposed)) == 16 * 4 * 2 * 3
    # A dense layer on a sequence of 5 vectors of 6 costs 5 * 6 * units; a backbone used as a layer counts whole.
    sequence = keras.Input((5, 6))
    assert models.count_macs(keras.Model(sequence, keras.layers.Dense(7)(sequence))) == 5 * 6 * 7
    backbone = keras.Model(inputs, separable)
    outer = keras.Input((4, 4, 2))
    head = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(backbone(outer)))
    assert models.count_macs(keras.Model(outer, head)) == 16 * (9 * 2 + 2 * 8) + 8 * 3


@pytest.mark.parametrize("name", zoo_params(models.list_models()))
def test_model_trains_saves_and_exports(name, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 32, 32, 3)).astype("float32")
    y = np.array([1, 3, 5, 7])
    keras.utils.set_random_seed(0)
    model = models.get_model(name, num_classes=10, input_shape=(32, 32, 3))
    assert model.name == name
    outputs = model.predict(x, verbose=0)
    assert outputs.shape == (4, 10) and np.all(np.isfinite(outputs))

    # A few training steps on a fixed batch lower its loss. The drop is robust to the CPU's arithmetic: seen on
    # AMD EPYC (AVX2), oneDNN on and off, the least is cnn8's 2.259 -> 2.180 (3.5%), while the two arithmetics
    # differ by at most 0.07 at the third step (MobileNetV2; 0.0 for most networks) and never reorder the steps.
    # Eagerly: tracing the train step of a ShuffleNet into a graph took 32 s on 2 cores, the three eager steps 7 s.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
    assert losses[-1] < losses[0]

    # .keras round trip: identical outputs.
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(restored.predict(x, verbose=0), expected)

    # Settle the BatchNorm moving statistics on the batch, as training would: with the initial ones
    # (mean 0, variance 1) activations grow with depth and logits reach the hundreds, where float32
    # rounding alone exceeds the parity bound.
    settle = tf.function(lambda images: model(images, training=True))
    for _ in range(30):
        settle(x)
    expected = model.predict(x, verbose=0)

    # TFLite and ONNX (float32) give the Keras logits.
    model.export(str(tmp_path / "model.tflite"), format="litert", verbose=False)
    interpreter = Interpreter(str(tmp_path / "model.tflite"))
    input_detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(input_detail["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], x)
    interpreter.invoke()
    tflite_logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(tflite_logits, expected, atol=1e-4, rtol=0)

    model.export(str(tmp_path / "model.onnx"), format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(onnx_logits, expected, atol=1e-4, rtol=0)


def test_include_features_keeps_layer_names():
    plain = models.get_model("wrn_16_1", 10, (32, 32, 3))
    with_features = models.get_model("wrn_16_1", 10, (32, 32, 3), include_features=True)
    assert [layer.name for layer in plain.layers] == [layer.name for layer in with_features.layers]
    logits, features = with_features.outputs
    assert tuple(logits.shape) == (None, 10) and tuple(features.shape) == (None, 8, 8, 64)


def test_stride_two_convolution_pads_symmetrically_like_pytorch():
    # PyTorch pads 1 pixel on every side; on an 8x8 input of ones a 3x3 all-ones kernel with stride 2
    # then sees 4 zero-padded pixels at the top-left output and 9 ones inside.
    model = models.resnet(8, 1, (8, 8, 16), 10)
    conv = model.get_layer("stage2_block1_1_conv")
    probe = keras.Model(model.get_layer("stage2_block1_1_conv_pad").input, conv.output)
    conv.set_weights([np.ones_like(conv.get_weights()[0])])
    out = np.asarray(probe(np.ones((1, 8, 8, 16), "float32")))[0, :, :, 0]
    assert out.shape == (4, 4)
    assert out[0, 0] == 4 * 16 and out[1, 1] == 9 * 16 and out[3, 3] == 9 * 16


def test_channel_shuffle_order():
    # Output channel j * g + i is input channel i * (C / g) + j: for C = 6, g = 2 -> 0, 3, 1, 4, 2, 5.
    x = np.arange(6, dtype="float32").reshape(1, 1, 1, 6)
    np.testing.assert_array_equal(np.asarray(models.ChannelShuffle(2)(x)).ravel(), [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(np.asarray(models.ChannelShuffle(3)(x)).ravel(), [0, 2, 4, 1, 3, 5])


def test_every_layer_named_after_its_block():
    for name in ("resnet14", "ShuffleV2"):
        layer_names = [layer.name for layer in models.get_model(name, 10, (32, 32, 3)).layers]
        assert len(layer_names) == len(set(layer_names))
        assert "logits" in layer_names and "images" in layer_names
    assert "stage3_block2_2_conv" in [layer.name for layer in models.get_model("resnet14", 10, (32, 32, 3)).layers]


def test_plain_models_need_nothing_from_stkd_keras_to_load(tmp_path):
    models.get_model("resnet8", 10, (32, 32, 3)).save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        assert "stkd_keras" not in archive.read("config.json").decode()


def test_a_shufflenet_student_loads_in_a_process_that_only_evaluates(tmp_path):
    """`evaluation.load_model` in a fresh process that never imported the zoo: ShuffleNet's own layers were unknown
    ("Could not locate class 'ChannelShuffle'") until the CLI happened to import the models first."""
    import subprocess
    import sys

    models.get_model("ShuffleV2", 10, (32, 32, 3)).save(tmp_path / "shuffle.keras")
    script = (
        "import sys\nfrom stkd_keras.evaluation import load_model\n"
        "print(sum(layer.__class__.__name__ == 'ChannelShuffle' for layer in load_model(sys.argv[1]).layers))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "shuffle.keras")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # ShuffleNetV2 (Ma et al. 2018) at 1x: stages of 4, 8 and 4 blocks, one channel shuffle each.
    assert result.stdout.split()[-1] == "16"


def test_invalid_arguments():
    with pytest.raises(ValueError, match="depth"):
        models.resnet(9)
    with pytest.raises(ValueError, match="Unknown model 'resnet9'.*resnet8.*ShuffleV2"):
        models.get_model("resnet9", 10, (32, 32, 3))
    with pytest.raises(ValueError, match="downsamples its input 4x, so it needs at least 4x4 pixels"):
        models.resnet(8, 1, (2, 2, 3), 10)
    with pytest.raises(ValueError, match="MobileNetV2 downsamples its input 16x.*Received: input_shape=\\(8, 8, 3\\)"):
        models.get_model("MobileNetV2", 10, (8, 8, 3))
    with pytest.raises(ValueError, match="num_classes"):
        models.resnet(8, 1, (32, 32, 3), 1)
    with pytest.raises(ValueError, match="widen_factor"):
        models.wide_resnet(16, 0)


def test_initialisation_is_seeded_and_not_shared_between_layers():
    keras.utils.set_random_seed(11)
    first = models.get_model("resnet14", 10, (32, 32, 3))
    keras.utils.set_random_seed(11)
    second = models.get_model("resnet14", 10, (32, 32, 3))
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Two same-shaped convolutions must not start equal (a shared initializer instance would make them so).
    kernel_a = first.get_layer("stage1_block1_1_conv").get_weights()[0]
    kernel_b = first.get_layer("stage1_block2_1_conv").get_weights()[0]
    assert kernel_a.shape == kernel_b.shape and not np.array_equal(kernel_a, kernel_b)
