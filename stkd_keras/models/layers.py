"""Building blocks shared by the zoo, matching PyTorch where Keras defaults differ.

- BatchNorm: epsilon 1e-5, momentum 0.9 (PyTorch's eps=1e-5, momentum=0.1).
- 3x3 stride-2 convolutions (and pools) pad one pixel on every side, as
  PyTorch's padding=1 does; Keras `"same"` pads only bottom/right on even inputs.
- Grouped 1x1 convolutions are built as one convolution per channel group and
  a concatenation: Keras's `Conv2D(groups=g)` runs a nested XLA function on
  CPU, which neither trains everywhere nor exports to ONNX.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

BN_KWARGS = {"epsilon": 1e-5, "momentum": 0.9}
# Initializers are named by their configs and built per layer: one shared instance would carry one
# seed, drawn at import time (before any `set_random_seed`), and give same-shaped layers equal kernels.
# kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, sqrt(2 / (k * k * C_out))).
KAIMING_FAN_OUT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}
# PyTorch's default for conv and linear layers: U(+-1/sqrt(fan_in)).
TORCH_DEFAULT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_in", "distribution": "uniform"},
}


def make_initializer(spec):
    """A fresh initializer (its own seed) from a config dict, or `spec` itself if it is already one."""
    return keras.initializers.get(dict(spec, config=dict(spec["config"]))) if isinstance(spec, dict) else spec


def shuffle_channels(inputs, groups: int):
    """ShuffleNet's channel shuffle of NHWC `inputs`: output channel j * groups + i is input i * (C / groups) + j.

    Keras ops only, so the tf_keras twin of `ChannelShuffle` (the QAT bridge's) runs this same function.
    """
    height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
    x = ops.reshape(inputs, (-1, height, width, groups, channels // groups))
    x = ops.transpose(x, (0, 1, 2, 4, 3))
    return ops.reshape(x, (-1, height, width, channels))


def split_channels(inputs, num_splits: int) -> list:
    """The channel axis of `inputs` in `num_splits` equal, contiguous parts (the tf_keras `ChannelSplit` uses it)."""
    return ops.split(inputs, num_splits, axis=-1)


@keras.saving.register_keras_serializable(package="stkd_keras")
class ChannelShuffle(layers.Layer):
    """ShuffleNet's channel shuffle: (H, W, g, C/g) -> transpose the last two axes -> (H, W, C).

    Output channel j * g + i is input channel i * (C / g) + j.
    """

    def __init__(self, groups, **kwargs):
        super().__init__(**kwargs)
        self.groups = int(groups)

    def call(self, inputs):
        return shuffle_channels(inputs, self.groups)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="stkd_keras")
class ChannelSplit(layers.Layer):
    """Splits the channel axis into `num_splits` equal, contiguous parts (returns a list)."""

    def __init__(self, num_splits, **kwargs):
        super().__init__(**kwargs)
        self.num_splits = int(num_splits)

    def call(self, inputs):
        return split_channels(inputs, self.num_splits)

    def compute_output_shape(self, input_shape):
        part = input_shape[-1] // self.num_splits
        return [(*input_shape[:-1], part) for _ in range(self.num_splits)]

    def get_config(self):
        return {**super().get_config(), "num_splits": self.num_splits}


def conv2d(x, filters, kernel_size, strides=1, name=None, use_bias=False, initializer=KAIMING_FAN_OUT):
    """A PyTorch-style convolution: padding kernel_size // 2 on every side."""
    pad = kernel_size // 2
    if pad and strides > 1:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=make_initializer(initializer),
        bias_initializer="zeros",
        name=name,
    )(x)


def grouped_conv1x1(x, filters, groups, name, initializer=KAIMING_FAN_OUT):
    """A 1x1 convolution with `groups` channel groups (group k maps input slice k to output slice k)."""
    if groups == 1:
        return conv2d(x, filters, 1, name=name, initializer=initializer)
    parts = ChannelSplit(groups, name=f"{name}_split")(x)
    outputs = [
        conv2d(part, filters // groups, 1, name=f"{name}_g{index}", initializer=initializer)
        for index, part in enumerate(parts)
    ]
    return layers.Concatenate(name=f"{name}_concat")(outputs)


def depthwise_conv(x, strides, name, initializer=None):
    """A 3x3 depthwise convolution without bias, padded like PyTorch."""
    channels = x.shape[-1]
    if initializer is None:
        # kaiming fan_out of a PyTorch depthwise conv counts 3 * 3 * C; Keras would count 3 * 3.
        initializer = keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / (9 * channels)))
    if strides > 1:
        x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.DepthwiseConv2D(
        3,
        strides=strides,
        padding=padding,
        use_bias=False,
        depthwise_initializer=make_initializer(initializer),
        name=name,
    )(x)


def batch_norm(x, name):
    return layers.BatchNormalization(**BN_KWARGS, name=name)(x)


def relu(x, name):
    return layers.ReLU(name=name)(x)


def conv_bn_relu(x, filters, kernel_size, strides, name, use_bias=False, initializer=KAIMING_FAN_OUT, activation=True):
    x = conv2d(x, filters, kernel_size, strides, name=f"{name}_conv", use_bias=use_bias, initializer=initializer)
    x = batch_norm(x, name=f"{name}_bn")
    return relu(x, name=f"{name}_relu") if activation else x


def check_input(input_shape, num_classes, downsampling: int, model_name: str) -> tuple[int, int, int]:
    """Validates (height, width, channels) and the class count; the input must survive the downsampling."""
    shape = tuple(input_shape)
    if len(shape) != 3 or any(not isinstance(d, int) or d <= 0 for d in shape):
        raise ValueError(
            "Expected `input_shape` to be (height, width, channels) of positive ints. Received: "
            f"input_shape={input_shape!r}"
        )
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"Expected `num_classes` to be an int >= 2. Received: num_classes={num_classes!r}")
    if min(shape[0], shape[1]) < downsampling:
        raise ValueError(
            f"{model_name} downsamples its input {downsampling}x, so it needs at least {downsampling}x{downsampling} "
            "pixels. "
            f"Received: input_shape={shape}"
        )
    return shape


def finish_model(inputs, features, num_classes, name, include_features=False, dense_initializer=TORCH_DEFAULT):
    """Global average pooling and a float32 logits layer; optionally also returns the penultimate feature map."""
    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    # Logits in float32, so a mixed_float16 model still returns float32 logits.
    logits = layers.Dense(
        num_classes,
        kernel_initializer=make_initializer(dense_initializer),
        bias_initializer="zeros",
        dtype="float32",
        name="logits",
    )(pooled)
    outputs = [logits, features] if include_features else logits
    return keras.Model(inputs, outputs, name=name)
