"""ShuffleNetV1 (Zhang et al. 2018) and ShuffleNetV2 (Ma et al. 2018), the CIFAR variants of the KD literature.

ShuffleV1: 1x1 stem to 24 channels (no max-pool), three stages of (4, 8, 4)
bottlenecks with (240, 480, 960) output channels and 3 groups. A bottleneck:
grouped 1x1 conv (ungrouped for the very first block) -> BN -> ReLU -> channel
shuffle -> 3x3 depthwise (stride 2 in the first block of a stage) -> BN -> ReLU
-> grouped 1x1 conv -> BN; then ReLU(branch + x), or, with stride 2,
ReLU(concat(branch, avgpool3x3(x))).

ShuffleV2: 1x1 stem to 24 channels, three stages of a downsampling unit plus
(3, 7, 3) basic units with (116, 232, 464) channels, a 1x1 conv to 1024 channels.
A basic unit passes the first half of the channels through and transforms the
second (1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU); both units end with a
concatenation and a channel shuffle of 2 groups.

Both use PyTorch's default initialisation (the reference sets none).
"""

from __future__ import annotations

from keras import layers

from stkd_keras.models.layers import (
    TORCH_DEFAULT,
    ChannelShuffle,
    ChannelSplit,
    batch_norm,
    check_input,
    conv_bn_relu,
    depthwise_conv,
    finish_model,
    grouped_conv1x1,
    relu,
)


def apply_shufflev1_block(x, filters: int, strides: int, groups: int, name: str):
    in_channels = x.shape[-1]
    # With stride 2 the branch makes up the channels the pooled shortcut does not bring.
    branch_filters = filters - in_channels if strides == 2 else filters
    mid = branch_filters // 4
    first_groups = 1 if in_channels == 24 else groups
    y = grouped_conv1x1(x, mid, first_groups, name=f"{name}_conv1", initializer=TORCH_DEFAULT)
    y = relu(batch_norm(y, name=f"{name}_bn1"), name=f"{name}_relu1")
    if first_groups > 1:
        y = ChannelShuffle(first_groups, name=f"{name}_shuffle")(y)
    y = depthwise_conv(y, strides, name=f"{name}_dw_conv", initializer=TORCH_DEFAULT)
    y = relu(batch_norm(y, name=f"{name}_dw_bn"), name=f"{name}_dw_relu")
    y = grouped_conv1x1(y, branch_filters, groups, name=f"{name}_conv3", initializer=TORCH_DEFAULT)
    y = batch_norm(y, name=f"{name}_bn3")
    if strides == 2:
        # AvgPool2d(3, stride=2, padding=1) counting the zero padding, as PyTorch does by default.
        shortcut = layers.ZeroPadding2D(1, name=f"{name}_shortcut_pad")(x)
        shortcut = layers.AveragePooling2D(3, strides=2, padding="valid", name=f"{name}_shortcut_pool")(shortcut)
        y = layers.Concatenate(name=f"{name}_concat")([y, shortcut])
    else:
        y = layers.Add(name=f"{name}_add")([y, x])
    return relu(y, name=f"{name}_out")


def shufflenet_v1(groups: int = 3, input_shape=(32, 32, 3), num_classes: int = 100, name=None, include_features=False):
    """ShuffleNetV1 (3 groups: stage outputs 240, 480, 960) returning logits."""
    configs = {3: (240, 480, 960)}
    if groups not in configs:
        raise ValueError(f"Expected `groups` in {sorted(configs)}. Received: groups={groups!r}")
    name = name or "ShuffleV1"
    input_shape = check_input(input_shape, num_classes, 8, name)
    inputs = layers.Input(shape=input_shape, name="images")
    x = conv_bn_relu(inputs, 24, 1, 1, name="stem", initializer=TORCH_DEFAULT)
    for stage, (filters, count) in enumerate(zip(configs[groups], (4, 8, 4)), start=1):
        for block in range(count):
            x = apply_shufflev1_block(x, filters, 2 if block == 0 else 1, groups, name=f"stage{stage}_block{block + 1}")
    return finish_model(inputs, x, num_classes, name, include_features)


def apply_shufflev2_basic_block(x, name: str):
    identity, branch = ChannelSplit(2, name=f"{name}_split")(x)
    channels = branch.shape[-1]
    y = conv_bn_relu(branch, channels, 1, 1, name=f"{name}_1", initializer=TORCH_DEFAULT)
    y = batch_norm(depthwise_conv(y, 1, name=f"{name}_dw_conv", initializer=TORCH_DEFAULT), name=f"{name}_dw_bn")
    y = conv_bn_relu(y, channels, 1, 1, name=f"{name}_2", initializer=TORCH_DEFAULT)
    y = layers.Concatenate(name=f"{name}_concat")([identity, y])
    return ChannelShuffle(2, name=f"{name}_shuffle")(y)


def apply_shufflev2_down_block(x, filters: int, name: str):
    mid = filters // 2
    left = batch_norm(
        depthwise_conv(x, 2, name=f"{name}_left_dw_conv", initializer=TORCH_DEFAULT), name=f"{name}_left_dw_bn"
    )
    left = conv_bn_relu(left, mid, 1, 1, name=f"{name}_left_1", initializer=TORCH_DEFAULT)
    right = conv_bn_relu(x, mid, 1, 1, name=f"{name}_right_1", initializer=TORCH_DEFAULT)
    right = batch_norm(
        depthwise_conv(right, 2, name=f"{name}_right_dw_conv", initializer=TORCH_DEFAULT), name=f"{name}_right_dw_bn"
    )
    right = conv_bn_relu(right, mid, 1, 1, name=f"{name}_right_2", initializer=TORCH_DEFAULT)
    y = layers.Concatenate(name=f"{name}_concat")([left, right])
    return ChannelShuffle(2, name=f"{name}_shuffle")(y)


def shufflenet_v2(input_shape=(32, 32, 3), num_classes: int = 100, name=None, include_features=False):
    """ShuffleNetV2 (net size 1: 116, 232, 464 channels, 1024 before pooling) returning logits."""
    name = name or "ShuffleV2"
    input_shape = check_input(input_shape, num_classes, 8, name)
    inputs = layers.Input(shape=input_shape, name="images")
    x = conv_bn_relu(inputs, 24, 1, 1, name="stem", initializer=TORCH_DEFAULT)
    for stage, (filters, count) in enumerate(zip((116, 232, 464), (3, 7, 3)), start=1):
        x = apply_shufflev2_down_block(x, filters, name=f"stage{stage}_down")
        for block in range(count):
            x = apply_shufflev2_basic_block(x, name=f"stage{stage}_block{block + 1}")
    x = conv_bn_relu(x, 1024, 1, 1, name="head", initializer=TORCH_DEFAULT)
    return finish_model(inputs, x, num_classes, name, include_features)
