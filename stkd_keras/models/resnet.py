"""ResNets: the CIFAR ResNets of the KD literature and ImageNet-style ResNet18/50 for small images.

CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4; He et al. 2016 as
the CRD/RepDistiller suite builds them): a 3x3 stem, three stages of n = (depth
- 2) / 6 post-activation basic blocks, the last two halving the resolution,
global average pooling and a linear classifier. Filters (16, 16, 32, 64);
(32, 64, 128, 256) for the "x4" variants. Projection shortcuts (1x1 conv + BN)
wherever the stride or the width changes.

ResNet18 / ResNet50: the ImageNet ResNets with a 3x3 stride-1 stem and no
max-pool (for 32x32 and 64x64 inputs, e.g. Tiny-ImageNet teachers); stages of
64, 128, 256, 512 planes, basic blocks (18) or bottlenecks with expansion 4
and the stride on the 3x3 convolution (50).
"""

from __future__ import annotations

from keras import layers

from stkd_keras.models.layers import batch_norm, check_input, conv2d, conv_bn_relu, finish_model, relu


def apply_basic_block(x, filters: int, strides: int, name: str):
    """conv3x3-BN-ReLU-conv3x3-BN, plus an identity or 1x1 conv-BN shortcut, then ReLU."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv2d(x, filters, 1, strides, name=f"{name}_shortcut_conv")
        shortcut = batch_norm(shortcut, name=f"{name}_shortcut_bn")
    x = conv_bn_relu(x, filters, 3, strides, name=f"{name}_1")
    x = conv_bn_relu(x, filters, 3, 1, name=f"{name}_2", activation=False)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return relu(x, name=f"{name}_out")


def apply_bottleneck_block(x, planes: int, strides: int, name: str, expansion: int = 4):
    """1x1-3x3(stride)-1x1 conv-BN with expansion 4, plus an identity or projection shortcut, then ReLU."""
    filters = planes * expansion
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv2d(x, filters, 1, strides, name=f"{name}_shortcut_conv")
        shortcut = batch_norm(shortcut, name=f"{name}_shortcut_bn")
    x = conv_bn_relu(x, planes, 1, 1, name=f"{name}_1")
    x = conv_bn_relu(x, planes, 3, strides, name=f"{name}_2")
    x = conv_bn_relu(x, filters, 1, 1, name=f"{name}_3", activation=False)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return relu(x, name=f"{name}_out")


def resnet(
    depth: int,
    width_multiplier: int = 1,
    input_shape=(32, 32, 3),
    num_classes: int = 10,
    name=None,
    include_features=False,
):
    """A CIFAR-style ResNet returning logits.

    Args:
        depth: 6n + 2: 8, 14, 20, 32, 44, 56, 110, ...
        width_multiplier: 1 for filters (16, 16, 32, 64); 4 for the "x4" variants
            (32, 64, 128, 256) of the KD literature; another k gives (16k, 16k, 32k, 64k).
        input_shape: (height, width, channels), at least 4x4.
        num_classes: Number of logits.
        name: Model name; defaults to `resnet{depth}` or `resnet{depth}x{k}`.
        include_features: Also return the last feature map (before pooling).

    Raises:
        ValueError: For a depth that is not 6n + 2, or invalid shapes.

    Example:
    >>> model = resnet(8, 4, input_shape=(32, 32, 3), num_classes=100)  # resnet8x4, 1.23M parameters
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"Expected `depth` = 6n + 2 with n >= 1 (8, 14, 20, 32, ...). Received: depth={depth!r}")
    if not isinstance(width_multiplier, int) or width_multiplier < 1:
        raise ValueError(
            f"Expected `width_multiplier` to be an int >= 1. Received: width_multiplier={width_multiplier!r}"
        )
    name = name or (f"resnet{depth}" if width_multiplier == 1 else f"resnet{depth}x{width_multiplier}")
    input_shape = check_input(input_shape, num_classes, 4, name)
    filters = (32, 64, 128, 256) if width_multiplier == 4 else tuple(f * width_multiplier for f in (16, 16, 32, 64))
    inputs = layers.Input(shape=input_shape, name="images")
    x = conv_bn_relu(inputs, filters[0], 3, 1, name="stem")
    for stage, stage_filters in enumerate(filters[1:], start=1):
        for block in range((depth - 2) // 6):
            strides = 2 if stage > 1 and block == 0 else 1
            x = apply_basic_block(x, stage_filters, strides, name=f"stage{stage}_block{block + 1}")
    return finish_model(inputs, x, num_classes, name, include_features)


def resnet_imagenet(depth: int, input_shape=(32, 32, 3), num_classes: int = 100, name=None, include_features=False):
    """ResNet18 (basic blocks [2, 2, 2, 2]) or ResNet50 (bottlenecks [3, 4, 6, 3]) for 32x32 / 64x64 inputs.

    The stem is a 3x3 stride-1 convolution without max-pool, so the network
    downsamples 8x (4x4 feature maps at 32x32, 8x8 at 64x64).
    """
    configs = {18: (apply_basic_block, (2, 2, 2, 2)), 50: (apply_bottleneck_block, (3, 4, 6, 3))}
    if depth not in configs:
        raise ValueError(f"Expected `depth` in {sorted(configs)}. Received: depth={depth!r}")
    block_fn, blocks = configs[depth]
    name = name or f"ResNet{depth}"
    input_shape = check_input(input_shape, num_classes, 8, name)
    inputs = layers.Input(shape=input_shape, name="images")
    x = conv_bn_relu(inputs, 64, 3, 1, name="stem")
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for block in range(count):
            strides = 2 if stage > 1 and block == 0 else 1
            x = block_fn(x, planes, strides, name=f"stage{stage}_block{block + 1}")
    return finish_model(inputs, x, num_classes, name, include_features)
