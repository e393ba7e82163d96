"""VGG with BatchNorm, the CIFAR variants of the KD literature: vgg8, vgg11, vgg13, vgg16, vgg19.

Five blocks of 3x3 conv (with bias) - BN - ReLU layers; 2x2 max-pooling after
the first three blocks (and after the fourth when the input is 64 pixels or
taller, as the reference does for 64x64), global average pooling and a single
linear classifier (no hidden fully connected layers).
"""

from __future__ import annotations

import keras
from keras import layers

from stkd_keras.models.layers import check_input, conv_bn_relu, finish_model

CONFIGS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def vgg(depth: int, input_shape=(32, 32, 3), num_classes: int = 100, name=None, include_features=False):
    """A CIFAR VGG-BN (depth 8, 11, 13, 16 or 19) returning logits."""
    if depth not in CONFIGS:
        raise ValueError(f"Expected `depth` in {sorted(CONFIGS)}. Received: depth={depth!r}")
    name = name or f"vgg{depth}"
    input_shape = check_input(input_shape, num_classes, 8, name)
    inputs = layers.Input(shape=input_shape, name="images")
    x = inputs
    for block, widths in enumerate(CONFIGS[depth]):
        for index, filters in enumerate(widths):
            x = conv_bn_relu(x, filters, 3, 1, name=f"block{block}_{index + 1}", use_bias=True)
        if block < 3 or (block == 3 and input_shape[0] >= 64):
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return finish_model(
        inputs, x, num_classes, name, include_features, dense_initializer=keras.initializers.RandomNormal(stddev=0.01)
    )
