"""A small VGG-like CNN for demos and tests: three conv-BN-ReLU stages, pooling, logits."""

from __future__ import annotations

from keras import layers

from stkd_keras.models.layers import check_input, conv_bn_relu, finish_model


def small_cnn(width: int = 16, input_shape=(28, 28, 1), num_classes: int = 10, name=None, include_features=False):
    """Stages of width, 2*width and 4*width filters, 2x2 max-pooling after the first two.

    Trains in seconds on a CPU.
    """
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"Expected `width` to be an int >= 1. Received: width={width!r}")
    name = name or f"cnn{width}"
    input_shape = check_input(input_shape, num_classes, 4, name)
    inputs = layers.Input(shape=input_shape, name="images")
    x = inputs
    for stage, filters in enumerate((width, 2 * width, 4 * width), start=1):
        x = conv_bn_relu(x, filters, 3, 1, name=f"stage{stage}")
        if stage < 3:
            x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    return finish_model(inputs, x, num_classes, name, include_features)
