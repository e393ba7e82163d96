import keras
import numpy as np
import pytest

from stkd_keras import models


def trainable_parameters(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_resnet8_parameter_count_by_hand():
    # stem 3x3x3x16 + BN(16); stage1: two 3x3x16x16 + 2 BN(16);
    # stage2: 3x3x16x32, 3x3x32x32, 1x1x16x32 + 3 BN(32); stage3: same with 32->64; fc 64x10 + 10.
    # BN counts gamma and beta (PyTorch parameters; running stats are buffers).
    expected = (
        27 * 16 + 32
        + 2 * 9 * 16 * 16 + 2 * 32
        + 9 * 16 * 32 + 9 * 32 * 32 + 16 * 32 + 3 * 64
        + 9 * 32 * 64 + 9 * 64 * 64 + 32 * 64 + 3 * 128
        + 64 * 10 + 10
    )
    assert expected == 78042
    assert trainable_parameters(models.resnet(8, 1, (32, 32, 3), 10)) == expected


@pytest.mark.parametrize(
    "name, millions",
    # Published CIFAR-100 counts (CRD, Tian et al. 2020, Table 1 / RepDistiller).
    [("resnet20", 0.28), ("resnet32", 0.47), ("resnet56", 0.86), ("resnet110", 1.74), ("resnet8x4", 1.23), ("resnet32x4", 7.43)],
)
def test_published_parameter_counts(name, millions):
    model = models.get_model(name, num_classes=100, input_shape=(32, 32, 3))
    assert round(trainable_parameters(model) / 1e6, 2) == millions


@pytest.mark.parametrize("name", ["resnet8", "resnet14", "resnet8x4", "cnn8"])
def test_output_shape_and_logits(name):
    model = models.get_model(name, num_classes=7, input_shape=(28, 28, 1))
    outputs = model(np.ones((2, 28, 28, 1), "float32"), training=False)
    assert tuple(outputs.shape) == (2, 7)
    assert model.layers[-1].get_config()["activation"] == "linear"


def test_stride_two_convolution_pads_symmetrically_like_pytorch():
    # PyTorch pads 1 pixel on every side; on an 8x8 input of ones a 3x3 all-ones kernel with stride 2
    # then sees 4 zero-padded pixels at the top-left output and 9 ones inside.
    model = models.resnet(8, 1, (8, 8, 16), 10)
    conv = model.get_layer("stage2_block1_conv1")
    probe = keras.Model(model.get_layer("stage2_block1_conv1_pad").input, conv.output)
    conv.set_weights([np.ones_like(conv.get_weights()[0])])
    out = np.asarray(probe(np.ones((1, 8, 8, 16), "float32")))[0, :, :, 0]
    assert out.shape == (4, 4)
    assert out[0, 0] == 4 * 16 and out[1, 1] == 9 * 16 and out[3, 3] == 9 * 16


def test_every_layer_named_after_its_block():
    model = models.resnet(14, 1, (32, 32, 3), 10)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert "stage3_block2_conv2" in names and "logits" in names


def test_save_load_round_trip(tmp_path):
    model = models.get_model("resnet8", 10, (28, 28, 1))
    x = np.random.default_rng(0).normal(size=(3, 28, 28, 1)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored(x, training=False), model(x, training=False), atol=1e-6)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="depth"):
        models.resnet(9)
    with pytest.raises(ValueError, match="Unknown model 'resnet9'.*resnet8"):
        models.get_model("resnet9", 10, (32, 32, 3))
    with pytest.raises(ValueError, match="at least 4x4"):
        models.resnet(8, 1, (2, 2, 3), 10)
    with pytest.raises(ValueError, match="num_classes"):
        models.resnet(8, 1, (32, 32, 3), 1)
