"""Mixup virtual samples, as STKD builds them.

For a batch (x, y) with one-hot y, a permutation p of the batch and
lambda ~ Beta(a, a):

    x_mix = lambda * x + (1 - lambda) * x[p]
    y_mix = lambda * y + (1 - lambda) * y[p]

Everything here runs inside a `jit_compile=True` (XLA) train step.
`keras.random.beta` cannot: its gamma sampler (`StatelessRandomGammaV3`) has no
XLA kernel. `sample_beta` therefore draws Beta(a, a) by inverting its CDF:
u ~ Uniform(0, 1) and lambda = I_u^{-1}(a, a), where I is the regularised
incomplete beta function (`tf.math.betainc`, which XLA compiles) and the
inverse is found by bisection. This is exact up to float32 rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf
from keras import ops

from stkd_keras.validation import positive_finite

# 2^-40 is far below float32 resolution around 0.5, so more steps change nothing.
_BISECTION_STEPS = 40


class MixupBatch(NamedTuple):
    """A batch of virtual samples.

    Attributes:
        images: `x_mix`, same shape and dtype as the input images.
        labels: `y_mix`, float32, same shape as the one-hot labels.
        lam: The mixing coefficients, shape `()` (per batch) or `(batch,)`
            (per sample).
        permutation: The int32 permutation `p` of the batch.
        sample_weight: Mixed sample weights, or None if none were given.
    """

    images: tf.Tensor
    labels: tf.Tensor
    lam: tf.Tensor
    permutation: tf.Tensor
    sample_weight: tf.Tensor | None


def validate_alpha(alpha: float) -> float:
    """Returns `alpha` as a float, or raises if it is not a valid Beta parameter (a finite number > 0)."""
    return positive_finite("mixup_alpha", alpha)


def sample_beta(shape, alpha: float, seed=None) -> tf.Tensor:
    """Draws float32 samples from the symmetric Beta(alpha, alpha) distribution.

    Uses inverse-CDF sampling (see the module docstring) so that it compiles
    under XLA, unlike `keras.random.beta`.

    Args:
        shape: Shape of the returned tensor.
        alpha: Concentration a > 0 of Beta(a, a).
        seed: An int, a `keras.random.SeedGenerator`, or None. Inside a
            compiled step pass a `SeedGenerator`: a fixed int gives the same
            draw on every call.

    Returns:
        A float32 tensor of the given shape with values in [0, 1].

    Raises:
        ValueError: If `alpha` is not a finite number > 0.

    Example:
    >>> lam = sample_beta((), 0.2, seed=keras.random.SeedGenerator(0))
    """
    alpha = validate_alpha(alpha)
    u = keras.random.uniform(shape, dtype="float32", seed=seed)
    a = tf.constant(alpha, dtype=tf.float32)
    lo = tf.zeros_like(u)
    hi = tf.ones_like(u)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        below = tf.math.betainc(a, a, mid) < u
        lo = tf.where(below, mid, lo)
        hi = tf.where(below, hi, mid)
    return 0.5 * (lo + hi)


def random_permutation(batch_size, seed=None) -> tf.Tensor:
    """A random permutation of `range(batch_size)` (argsort of uniform noise, XLA-safe)."""
    noise = keras.random.uniform((batch_size,), dtype="float32", seed=seed)
    return ops.cast(ops.argsort(noise), "int32")


def _broadcast_to_rank(lam, rank: int):
    """Reshapes per-sample lambdas (batch,) to (batch, 1, ..., 1) of the given rank."""
    if len(lam.shape) == 0:
        return lam
    return ops.reshape(lam, (-1,) + (1,) * (rank - 1))


def apply_mixup(
    images,
    labels,
    alpha: float = 0.2,
    per_sample: bool = False,
    seed=None,
    sample_weight=None,
) -> MixupBatch:
    """Builds mixup virtual samples from a batch.

    Args:
        images: Batch of images, shape `(batch, ...)`.
        labels: One-hot (or soft) labels, shape `(batch, num_classes)`.
        alpha: Concentration a of lambda ~ Beta(a, a).
        per_sample: If True, draw one lambda per sample; otherwise one per
            batch, shared by every pair (the original mixup recipe).
        seed: An int, a `keras.random.SeedGenerator`, or None (see
            `sample_beta`). The same int seed gives the same batch.
        sample_weight: Optional per-sample weights, mixed like the labels.

    Returns:
        A `MixupBatch`; `labels` still sum to 1 along the class axis.

    Raises:
        ValueError: If `alpha` is invalid or labels are not rank 2.

    Example:
    >>> batch = apply_mixup(x, keras.ops.one_hot(y, 10), alpha=0.2, seed=0)
    >>> batch.images.shape == x.shape
    True
    """
    if len(labels.shape) != 2:
        raise ValueError(
            "Expected one-hot `labels` of shape (batch, num_classes). "
            f"Received: labels.shape={tuple(labels.shape)}"
        )
    if isinstance(seed, int):
        # One generator for both draws, so lambda and p are not correlated.
        seed = keras.random.SeedGenerator(seed)
    images = ops.convert_to_tensor(images)
    labels = ops.cast(labels, "float32")
    batch_size = ops.shape(images)[0]
    lam = sample_beta((batch_size,) if per_sample else (), alpha, seed=seed)
    permutation = random_permutation(batch_size, seed=seed)

    lam_images = ops.cast(_broadcast_to_rank(lam, len(images.shape)), images.dtype)
    mixed_images = lam_images * images + (1 - lam_images) * ops.take(images, permutation, axis=0)
    lam_labels = _broadcast_to_rank(lam, 2)
    mixed_labels = lam_labels * labels + (1 - lam_labels) * ops.take(labels, permutation, axis=0)
    mixed_weight = None
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, "float32")
        lam_weight = _broadcast_to_rank(lam, len(sample_weight.shape))
        mixed_weight = lam_weight * sample_weight + (1 - lam_weight) * ops.take(
            sample_weight, permutation, axis=0
        )
    return MixupBatch(mixed_images, mixed_labels, lam, permutation, mixed_weight)
