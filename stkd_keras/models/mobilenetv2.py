"""MobileNetV2 (Sandler et al. 2018), the CIFAR variant of the KD literature ("MobileNetV2" = mobile_half).

Width multiplier 0.5, expansion T = 6, a 3x3 stride-2 stem, inverted residual
blocks (t, c, n, s) = (1, 16, 1, 1), (T, 24, 2, 1), (T, 32, 3, 2), (T, 64, 4, 2),
(T, 96, 3, 1), (T, 160, 3, 2), (T, 320, 1, 1) (the second stage keeps stride 1
for 32x32 inputs), a 1x1 conv to 1280 channels, global average pooling, linear.
Every block has its 1x1 expansion conv (also for t = 1), ReLU (not ReLU6).
"""

from __future__ import annotations

import keras
from keras import layers

from stkd_keras.models.layers import batch_norm, check_input, conv_bn_relu, depthwise_conv, finish_model, relu

SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def apply_inverted_residual(x, filters: int, strides: int, expansion: int, name: str):
    hidden = x.shape[-1] * expansion
    y = conv_bn_relu(x, hidden, 1, 1, name=f"{name}_expand")
    y = depthwise_conv(y, strides, name=f"{name}_dw_conv")
    y = relu(batch_norm(y, name=f"{name}_dw_bn"), name=f"{name}_dw_relu")
    y = conv_bn_relu(y, filters, 1, 1, name=f"{name}_project", activation=False)
    if strides == 1 and x.shape[-1] == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def mobilenet_v2(
    width_multiplier: float = 0.5,
    expansion: int = 6,
    input_shape=(32, 32, 3),
    num_classes: int = 100,
    name=None,
    include_features=False,
):
    """MobileNetV2 for small images returning logits (defaults: the KD literature's "MobileNetV2")."""
    if not width_multiplier > 0:
        raise ValueError(f"Expected `width_multiplier` > 0. Received: width_multiplier={width_multiplier!r}")
    name = name or "MobileNetV2"
    input_shape = check_input(input_shape, num_classes, 16, name)
    inputs = layers.Input(shape=input_shape, name="images")
    x = conv_bn_relu(inputs, int(32 * width_multiplier), 3, 2, name="stem")
    for stage, (t, c, n, s) in enumerate(SETTINGS):
        for block in range(n):
            x = apply_inverted_residual(
                x,
                int(c * width_multiplier),
                s if block == 0 else 1,
                expansion if t != 1 else 1,
                name=f"stage{stage}_block{block + 1}",
            )
    last_channels = 1280 if width_multiplier <= 1.0 else _make_divisible(1280 * width_multiplier)
    x = conv_bn_relu(x, last_channels, 1, 1, name="head")
    return finish_model(
        inputs, x, num_classes, name, include_features, dense_initializer=keras.initializers.RandomNormal(stddev=0.01)
    )


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded
