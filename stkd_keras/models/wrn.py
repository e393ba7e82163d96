"""Wide ResNets (Zagoruyko & Komodakis 2016) as the KD literature builds them: wrn_16_1 ... wrn_40_2.

Pre-activation: a bare 3x3 stem conv (no BN/ReLU), three groups of n = (depth -
4) / 6 blocks with 16k, 32k, 64k filters (k the widen factor), a final BN-ReLU,
global average pooling and a linear classifier. A block computes
a = ReLU(BN(x)), conv3x3(stride) -> BN -> ReLU -> conv3x3, and adds x, or a
1x1 projection (no BN) of `a` when the width changes. No dropout.
"""

from __future__ import annotations

from keras import layers

from stkd_keras.models.layers import batch_norm, check_input, conv2d, finish_model, relu


def apply_wide_block(x, filters: int, strides: int, name: str):
    preactivated = relu(batch_norm(x, name=f"{name}_bn1"), name=f"{name}_relu1")
    if x.shape[-1] == filters:
        shortcut = x
    else:
        shortcut = conv2d(preactivated, filters, 1, strides, name=f"{name}_shortcut_conv")
    y = conv2d(preactivated, filters, 3, strides, name=f"{name}_conv1")
    y = relu(batch_norm(y, name=f"{name}_bn2"), name=f"{name}_relu2")
    y = conv2d(y, filters, 3, 1, name=f"{name}_conv2")
    return layers.Add(name=f"{name}_add")([shortcut, y])


def wide_resnet(
    depth: int, widen_factor: int, input_shape=(32, 32, 3), num_classes: int = 100, name=None, include_features=False
):
    """A Wide ResNet WRN-depth-k returning logits.

    Raises:
        ValueError: For a depth that is not 6n + 4 or a widen factor < 1.
    """
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"Expected `depth` = 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...). Received: depth={depth!r}")
    if not isinstance(widen_factor, int) or widen_factor < 1:
        raise ValueError(f"Expected `widen_factor` to be an int >= 1. Received: widen_factor={widen_factor!r}")
    name = name or f"wrn_{depth}_{widen_factor}"
    input_shape = check_input(input_shape, num_classes, 4, name)
    inputs = layers.Input(shape=input_shape, name="images")
    x = conv2d(inputs, 16, 3, 1, name="stem_conv")
    for group, filters in enumerate((16 * widen_factor, 32 * widen_factor, 64 * widen_factor), start=1):
        for block in range((depth - 4) // 6):
            strides = 2 if group > 1 and block == 0 else 1
            x = apply_wide_block(x, filters, strides, name=f"group{group}_block{block + 1}")
    x = relu(batch_norm(x, name="final_bn"), name="final_relu")
    return finish_model(inputs, x, num_classes, name, include_features)
