"""Models to distil with: CIFAR-style ResNets and a small CNN.

The ResNets follow the CIFAR ResNets of He et al. (2016) as the KD literature
uses them (the CRD / RepDistiller suite): a 3x3 stem, three stages of basic
blocks (n = (depth - 2) / 6 blocks each, the last two stages halving the
resolution), global average pooling and a linear classifier. Filters per
stage are (16, 16, 32, 64) times `width_multiplier`; the "x4" variants
(resnet8x4, resnet32x4) use (32, 64, 128, 256).

PyTorch behaviour is matched where Keras differs by default: BatchNorm with
epsilon 1e-5 and momentum 0.9 (PyTorch's 0.1), no convolution biases, and
stride-2 3x3 convolutions padded by one pixel on every side (Keras `"same"`
pads only the bottom/right for even inputs).

Every model returns logits (no softmax) and names every layer.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers

_BN_KWARGS = {"epsilon": 1e-5, "momentum": 0.9}
# PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="relu"), as in the reference ResNets.
_CONV_INIT = keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def _conv(x, filters, kernel_size, strides, name):
    """Conv without bias; 3x3 stride-2 convolutions get PyTorch's symmetric padding."""
    if kernel_size > 1 and strides > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name=name,
    )(x)


def apply_basic_block(x, filters: int, strides: int, name: str):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, strides, name=f"{name}_shortcut_conv")
        shortcut = layers.BatchNormalization(**_BN_KWARGS, name=f"{name}_shortcut_bn")(shortcut)
    x = _conv(x, filters, 3, strides, name=f"{name}_conv1")
    x = layers.BatchNormalization(**_BN_KWARGS, name=f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv(x, filters, 3, 1, name=f"{name}_conv2")
    x = layers.BatchNormalization(**_BN_KWARGS, name=f"{name}_bn2")(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def _classifier(x, num_classes: int):
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    # Logits in float32 so a mixed_float16 model still gives float32 outputs.
    return layers.Dense(num_classes, dtype="float32", name="logits")(x)


def _validate_common(input_shape, num_classes):
    if len(tuple(input_shape)) != 3 or any(int(d) <= 0 for d in input_shape):
        raise ValueError(
            f"Expected `input_shape` to be (height, width, channels) with positive sizes. Received: input_shape={input_shape!r}"
        )
    if int(num_classes) < 2:
        raise ValueError(f"Expected `num_classes` >= 2. Received: num_classes={num_classes!r}")


def resnet(
    depth: int,
    width_multiplier: int = 1,
    input_shape=(32, 32, 3),
    num_classes: int = 10,
    name: str | None = None,
) -> keras.Model:
    """A CIFAR-style ResNet (basic blocks) returning logits.

    Args:
        depth: 6n + 2 layers: 8, 14, 20, 32, 44, 56, 110, ...
        width_multiplier: 1 for (16, 16, 32, 64) filters; 4 for the "x4"
            variants with (32, 64, 128, 256) as in the KD literature; any
            other k gives (16k, 16k, 32k, 64k).
        input_shape: (height, width, channels); at least 4x4 (two stride-2 stages).
        num_classes: Number of output logits.
        name: Model name; defaults to `resnet{depth}` or `resnet{depth}x{k}`.

    Returns:
        A functional `keras.Model`.

    Raises:
        ValueError: If `depth` is not 6n + 2 or the shapes are invalid.

    Example:
    >>> model = resnet(8, 4, input_shape=(32, 32, 3), num_classes=100)  # resnet8x4
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"Expected `depth` = 6n + 2 with n >= 1 (8, 14, 20, 32, ...). Received: depth={depth!r}")
    if not isinstance(width_multiplier, int) or width_multiplier < 1:
        raise ValueError(f"Expected `width_multiplier` to be an int >= 1. Received: width_multiplier={width_multiplier!r}")
    _validate_common(input_shape, num_classes)
    if min(input_shape[0], input_shape[1]) < 4:
        raise ValueError(f"Expected an input of at least 4x4 for two stride-2 stages. Received: input_shape={input_shape!r}")
    if width_multiplier == 4:
        filters = (32, 64, 128, 256)
    else:
        filters = tuple(f * width_multiplier for f in (16, 16, 32, 64))
    if name is None:
        name = f"resnet{depth}" if width_multiplier == 1 else f"resnet{depth}x{width_multiplier}"
    blocks_per_stage = (depth - 2) // 6

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = _conv(inputs, filters[0], 3, 1, name="stem_conv")
    x = layers.BatchNormalization(**_BN_KWARGS, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, stage_filters in enumerate(filters[1:], start=1):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 1 and block == 0 else 1
            x = apply_basic_block(x, stage_filters, strides, name=f"stage{stage}_block{block + 1}")
    return keras.Model(inputs, _classifier(x, num_classes), name=name)


def small_cnn(width: int = 16, input_shape=(28, 28, 1), num_classes: int = 10, name: str | None = None) -> keras.Model:
    """A small VGG-like CNN: three conv-BN-ReLU stages (width, 2*width, 4*width), pooling, logits.

    Fast enough on a CPU to train in seconds; used for demos and tests.

    Args:
        width: Filters of the first stage.
        input_shape: (height, width, channels); at least 4x4.
        num_classes: Number of output logits.
        name: Model name; defaults to `cnn{width}`.
    """
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"Expected `width` to be an int >= 1. Received: width={width!r}")
    _validate_common(input_shape, num_classes)
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = inputs
    for stage, filters in enumerate((width, 2 * width, 4 * width), start=1):
        x = _conv(x, filters, 3, 1, name=f"stage{stage}_conv")
        x = layers.BatchNormalization(**_BN_KWARGS, name=f"stage{stage}_bn")(x)
        x = layers.ReLU(name=f"stage{stage}_relu")(x)
        if stage < 3:
            x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    return keras.Model(inputs, _classifier(x, num_classes), name=name or f"cnn{width}")


def _resnet_builder(depth: int, width_multiplier: int = 1) -> Callable[..., keras.Model]:
    return lambda input_shape, num_classes: resnet(depth, width_multiplier, input_shape, num_classes)


_MODELS: dict[str, Callable[..., keras.Model]] = {
    **{f"resnet{d}": _resnet_builder(d) for d in (8, 14, 20, 32, 44, 56, 110)},
    **{f"resnet{d}x4": _resnet_builder(d, 4) for d in (8, 14, 20, 32, 56, 110)},
    "cnn8": lambda input_shape, num_classes: small_cnn(8, input_shape, num_classes),
    "cnn16": lambda input_shape, num_classes: small_cnn(16, input_shape, num_classes),
    "cnn32": lambda input_shape, num_classes: small_cnn(32, input_shape, num_classes),
}


def list_models() -> list[str]:
    """Names accepted by `get_model`, sorted."""
    return sorted(_MODELS, key=lambda n: (n.rstrip("0123456789x"), len(n), n))


def get_model(name: str, num_classes: int, input_shape) -> keras.Model:
    """Builds a registered model by name.

    Args:
        name: One of `list_models()`.
        num_classes: Number of output logits.
        input_shape: (height, width, channels).

    Raises:
        ValueError: For an unknown name (the message lists the valid ones).
    """
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}. Expected one of: {', '.join(list_models())}.")
    return _MODELS[name](tuple(input_shape), int(num_classes))
