"""A teacher that reads other inputs than its student: resized and renormalised inside the step.

The Distiller gives the teacher the very batch the student sees (mixup samples or clean images). A teacher trained
at another image size, on another channel count or with another normalisation (a 32x32 zoo teacher for a 96x96
MobileNetV3 student; a normalised teacher for an EfficientNet student that reads raw pixels) gets that batch through
`InputAdapter`: the student's normalisation undone, the channels matched, the teacher's normalisation applied and
the images resized to the teacher's size, on the device, inside the compiled step, on every backend.

Channels: one gray channel is repeated to three; three channels are averaged to one (exact for the gray images a
gray dataset repeats to three channels). Resizing is bilinear, antialiased when it shrinks, as image folders are
read.
"""

from __future__ import annotations

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="stkd_keras")
class InputAdapter(keras.layers.Layer):
    """Maps images normalised one way, at one size, to images normalised another way at another size.

    Args:
        source: (mean, std) per channel of the incoming images, on the 0-1 pixel scale.
        target: (mean, std) per channel the outgoing images are normalised with.
        size: (height, width) of the outgoing images.
    """

    def __init__(self, source, target, size, **kwargs):
        super().__init__(**kwargs)
        self.source = [list(map(float, values)) for values in source]
        self.target = [list(map(float, values)) for values in target]
        self.size = tuple(int(side) for side in size)

    def call(self, images):
        images = keras.ops.cast(images, "float32")
        pixels = images * np.asarray(self.source[1], "float32") + np.asarray(self.source[0], "float32")
        source_channels, target_channels = len(self.source[0]), len(self.target[0])
        if source_channels == 1 and target_channels == 3:
            pixels = keras.ops.repeat(pixels, 3, axis=-1)
        elif source_channels == 3 and target_channels == 1:
            pixels = keras.ops.mean(pixels, axis=-1, keepdims=True)
        adapted = (pixels - np.asarray(self.target[0], "float32")) / np.asarray(self.target[1], "float32")
        if tuple(adapted.shape[1:3]) != self.size:
            shrinks = adapted.shape[1] > self.size[0] or adapted.shape[2] > self.size[1]
            adapted = keras.ops.image.resize(adapted, self.size, interpolation="bilinear", antialias=shrinks)
        return adapted

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, len(self.target[0]))

    def get_config(self):
        return {**super().get_config(), "source": self.source, "target": self.target, "size": self.size}


def adapt_teacher(teacher: keras.Model, input_shape, source, target) -> keras.Model:
    """`teacher` reading images of `input_shape` normalised with `source` = (mean, std); itself when nothing differs.

    `target` is the (mean, std) the teacher was trained with.
    """
    teacher_shape = tuple(teacher.input_shape[1:])
    same_normalisation = all(np.allclose(a, b) for a, b in zip(_per_channel(source), _per_channel(target)))
    if tuple(input_shape) == teacher_shape and same_normalisation:
        return teacher
    if len(source[0]) != input_shape[-1] or len(target[0]) != teacher_shape[-1]:
        raise ValueError(
            f"Expected one mean and std per channel: {len(source[0])} for inputs {tuple(input_shape)}, "
            f"{len(target[0])} for the teacher's {teacher_shape}."
        )
    if input_shape[-1] != teacher_shape[-1] and {input_shape[-1], teacher_shape[-1]} != {1, 3}:
        raise ValueError(
            f"The teacher {teacher.name!r} reads {teacher_shape[-1]}-channel images and the student "
            f"{input_shape[-1]}-channel ones; only gray and RGB can be matched."
        )
    inputs = keras.Input(tuple(input_shape), name="student_input")
    adapted = InputAdapter(source, target, teacher_shape[:2], name="teacher_input_adapter")(inputs)
    # The wrapper keeps the teacher's name: progress lines and metrics.json name the teacher, not the adapter.
    return keras.Model(inputs, teacher(adapted), name=teacher.name)


def _per_channel(normalization) -> list[np.ndarray]:
    return [np.asarray(values, "float64") for values in normalization]
