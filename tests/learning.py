"""The line a trained model must clear to count as having learned, worked out from the test's own sizes.

A threshold read off one machine's results fails on another: the same seeded
run lands a few images apart under other vector instructions (AVX2 or AVX-512,
oneDNN on or off; issue 25). So a learning assertion here compares the
trained model with the *same* model before training, on the same n images,
and asks for a gain that sampling could not explain:

    accuracy_after - accuracy_before >= STANDARD_ERRORS / sqrt(n)

Why that margin: the difference of two accuracies on the same images is the
mean of n values a_i - b_i in {-1, 0, 1}, whose variance is at most 1, so its
standard error is at most 1 / sqrt(n) whatever the two models share. Three of
them: 0.095 on 1000 images, 0.134 on 500, 0.173 on 300.

Every test that asserts what training learned carries the `learning` marker;
`.ci/run` runs those again under a second arithmetic (PyTorch's portable
kernels, TensorFlow without oneDNN), so a line that only one instruction set
clears fails on every machine.
"""

from __future__ import annotations

import math

import keras
import numpy as np

STANDARD_ERRORS = 3.0


def accuracy(model, images, labels) -> float:
    """Top-1 accuracy of a Keras model (logits or probabilities out) on numpy images and integer labels."""
    logits = keras.ops.convert_to_numpy(model.predict(images, batch_size=256, verbose=0))
    return float(np.mean(logits.argmax(-1) == np.asarray(labels).reshape(-1)))


def learned_margin(count: int) -> float:
    """The least gain in accuracy on `count` images that counts as learning: STANDARD_ERRORS / sqrt(count)."""
    return STANDARD_ERRORS / math.sqrt(count)


def assert_learned(name: str, before: float, after: float, count: int) -> None:
    """Asserts that `after` clears `before` by `learned_margin(count)`; prints the figures (pytest -s shows them)."""
    line = before + learned_margin(count)
    print(
        f"LEARNED {name}: before {before:.3f}, after {after:.3f}, line {line:.3f}, margin left {after - line:+.3f} "
        f"({count} images)"
    )
    assert after >= line, (
        f"{name}: accuracy {after:.3f} after training is not {learned_margin(count):.3f} ({STANDARD_ERRORS:g} standard "
        "errors "
        f"on {count} images) above {before:.3f} before training"
    )
