"""The model zoo: the standard teacher/student architectures of CIFAR knowledge distillation.

The names and the networks are those of the CRD / RepDistiller suite (Tian et
al. 2020), which mdistiller and most KD papers since use, so that a number from
stkd-keras can stand next to a number from a paper: the trainable parameter
counts equal those of the reference PyTorch definitions (tests/test_zoo.py).

Every model is a functional `keras.Model` returning logits (no softmax), built
from small `apply_*_block` functions with every layer named. Where Keras and
PyTorch differ, PyTorch's behaviour is matched (see `stkd_keras.models.layers`).
The final pooling is global average pooling, identical to the reference's
fixed-size pools at 32x32 and valid at other sizes (64x64 for Tiny-ImageNet).

Example:
>>> from stkd_keras.models import get_model, list_models
>>> teacher = get_model("resnet32x4", num_classes=100, input_shape=(32, 32, 3))
>>> student, features = get_model("resnet8x4", 100, (32, 32, 3), include_features=True).outputs
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import keras

from stkd_keras.models.cnn import small_cnn
from stkd_keras.models.layers import ChannelShuffle, ChannelSplit
from stkd_keras.models.mobilenetv2 import mobilenet_v2
from stkd_keras.models.resnet import resnet, resnet_imagenet
from stkd_keras.models.shufflenet import shufflenet_v1, shufflenet_v2
from stkd_keras.models.vgg import vgg
from stkd_keras.models.wrn import wide_resnet

_MODELS: dict[str, Callable[..., keras.Model]] = {
    **{f"resnet{d}": functools.partial(resnet, d, 1) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": functools.partial(resnet, 8, 4),
    "resnet32x4": functools.partial(resnet, 32, 4),
    **{f"wrn_{d}_{k}": functools.partial(wide_resnet, d, k) for d in (16, 40) for k in (1, 2)},
    **{f"vgg{d}": functools.partial(vgg, d) for d in (8, 11, 13, 16, 19)},
    "MobileNetV2": functools.partial(mobilenet_v2, 0.5, 6),
    "ShuffleV1": functools.partial(shufflenet_v1, 3),
    "ShuffleV2": shufflenet_v2,
    "ResNet18": functools.partial(resnet_imagenet, 18),
    "ResNet50": functools.partial(resnet_imagenet, 50),
    **{f"cnn{w}": functools.partial(small_cnn, w) for w in (8, 16, 32)},
}


def list_models() -> list[str]:
    """Names accepted by `get_model`, in the order of the zoo's table."""
    return list(_MODELS)


def get_model(name: str, num_classes: int, input_shape, include_features: bool = False) -> keras.Model:
    """Builds a zoo model by name.

    Args:
        name: One of `list_models()`.
        num_classes: Number of logits.
        input_shape: (height, width, channels).
        include_features: If True the model returns `[logits, features]`,
            `features` being the last feature map before global pooling (for
            feature-based distillation); layer names do not change.

    Raises:
        ValueError: For an unknown name (the message lists the valid ones) or
            an input too small for the network's downsampling.
    """
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}. Expected one of: {', '.join(_MODELS)}.")
    return _MODELS[name](input_shape=tuple(input_shape), num_classes=num_classes, include_features=include_features)


def count_trainable_parameters(model: keras.Model) -> int:
    """Trainable parameters, the count PyTorch reports (BatchNorm running statistics excluded)."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass on one image: convolutions and dense layers, nested models included.

    A convolution costs out_positions * kernel_positions * C_in / groups * C_out; a depthwise one out_positions *
    kernel_positions * C_out; a separable one its depthwise part then its pointwise part; a transposed one
    in_positions * kernel_positions * C_in * C_out; a dense layer positions * C_in * C_out. BatchNorm,
    activations, pooling and additions are left out, as in the MAC counts of the KD literature.
    """
    return int(sum(_layer_macs(layer) for layer in model.layers))


_CONVOLUTIONS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)
_TRANSPOSED = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)


def _layer_macs(layer) -> int:
    if isinstance(layer, keras.Model):
        return count_macs(layer)  # a backbone used as a layer of a model with a new head
    if isinstance(layer, keras.layers.Dense):
        return math.prod(layer.input.shape[1:-1]) * layer.input.shape[-1] * layer.units
    if not isinstance(layer, (*_CONVOLUTIONS, *_TRANSPOSED)):
        return 0
    in_shape, out_shape = layer.input.shape, layer.output.shape
    kernel, positions, in_channels = math.prod(layer.kernel_size), math.prod(out_shape[1:-1]), in_shape[-1]
    if isinstance(layer, _TRANSPOSED):
        return math.prod(in_shape[1:-1]) * kernel * in_channels * layer.filters
    if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        return positions * kernel * out_shape[-1]
    if isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
        middle = in_channels * layer.depth_multiplier
        return positions * (kernel * middle + middle * layer.filters)
    return positions * kernel * in_channels // layer.groups * layer.filters


__all__ = [
    "ChannelShuffle",
    "ChannelSplit",
    "count_macs",
    "count_trainable_parameters",
    "get_model",
    "list_models",
    "mobilenet_v2",
    "resnet",
    "resnet_imagenet",
    "shufflenet_v1",
    "shufflenet_v2",
    "small_cnn",
    "vgg",
    "wide_resnet",
]
