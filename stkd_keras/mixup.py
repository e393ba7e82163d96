"""Mixup virtual samples, as STKD builds them.

For a batch (x, y) with one-hot y, a permutation p of the batch and
lambda ~ Beta(a, a):

    x_mix = lambda * x + (1 - lambda) * x[p]
    y_mix = lambda * y + (1 - lambda) * y[p]

`draw` takes lambda and p, `mix` applies them to images, labels or sample
weights: every method's step mixes through them (`stkd_keras.methods.forward`).
`apply_mixup`, which did both, is deprecated: a second public mixup path. Everything here is written in
`keras.ops` and runs inside the compiled train step of every Keras backend;
the Beta draw is the one backend-specific piece (`stkd_keras.backend_ops`).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import keras
from keras import ops

from stkd_keras import backend_ops
from stkd_keras.validation import positive_finite


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

    images: Any
    labels: Any
    lam: Any
    permutation: Any
    sample_weight: Any


def validate_alpha(alpha: float) -> float:
    """Returns `alpha` as a float, or raises if it is not a valid Beta parameter (a finite number > 0)."""
    return positive_finite("mixup_alpha", alpha)


def sample_beta(shape, alpha: float, seed=None):
    """Draws float32 samples from the symmetric Beta(alpha, alpha) distribution.

    Compiles inside the train step of every backend (on TensorFlow, under XLA
    too, unlike `keras.random.beta`; see `stkd_keras.backend_ops`).

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
    return backend_ops.sample_beta(shape, validate_alpha(alpha), seed)


def random_permutation(batch_size, seed=None):
    """A random permutation of `range(batch_size)` (argsort of uniform noise, XLA-safe)."""
    noise = keras.random.uniform((batch_size,), dtype="float32", seed=seed)
    return ops.cast(ops.argsort(noise), "int32")


def _broadcast_to_rank(lam, rank: int):
    """Reshapes per-sample lambdas (batch,) to (batch, 1, ..., 1) of the given rank."""
    if len(lam.shape) == 0:
        return lam
    return ops.reshape(lam, (-1,) + (1,) * (rank - 1))


def draw(batch_size, alpha: float = 0.2, per_sample: bool = False, seed=None):
    """Draws the mixing coefficients and the permutation of one batch.

    Args:
        batch_size: Number of samples in the batch (an int or a scalar tensor).
        alpha: Concentration a of lambda ~ Beta(a, a).
        per_sample: If True, one lambda per sample (shape `(batch,)`);
            otherwise one per batch (shape `()`), shared by every pair (the
            original mixup recipe).
        seed: A `keras.random.SeedGenerator` (inside a compiled step), an int
            or None. Lambda is drawn first, then the permutation.

    Returns:
        `(lam, permutation)`: float32 coefficients and an int32 permutation of
        `range(batch_size)`.
    """
    lam = sample_beta((batch_size,) if per_sample else (), alpha, seed=seed)
    return lam, random_permutation(batch_size, seed=seed)


def mix_only_first(lam, batch_size, mix_fraction: float):
    """Per-sample coefficients that mix only the first round(mix_fraction * batch_size) samples of a batch.

    Those keep `lam` (a per-batch scalar is repeated for each of them); the
    others get lambda = 1, for which `mix` returns the clean sample and its
    own label. The choice is deterministic and draws no random numbers: a
    shuffled batch makes its first samples a random subset. Rounding is
    half to even (e.g. 0.5 of 5 samples mixes 2).

    Args:
        lam: Coefficients from `draw`, shape `()` or `(batch,)`.
        batch_size: Number of samples in the batch (an int or a scalar tensor).
        mix_fraction: The fraction of the batch to mix, in (0, 1].

    Returns:
        float32 coefficients of shape `(batch,)`.
    """
    count = ops.round(ops.cast(batch_size, "float32") * mix_fraction)
    mixed = ops.cast(ops.arange(batch_size), "float32") < count
    return ops.where(mixed, ops.cast(lam, "float32"), 1.0)


def mix(values, lam, permutation):
    """`lam * v + (1 - lam) * v[permutation]` along the batch axis, `lam` cast to the dtype of `values`.

    Applies one draw (`draw`) to images, labels or sample weights alike.
    """
    values = ops.convert_to_tensor(values)
    lam = ops.cast(_broadcast_to_rank(lam, len(values.shape)), values.dtype)
    return lam * values + (1 - lam) * ops.take(values, permutation, axis=0)


def apply_mixup(
    images,
    labels,
    alpha: float = 0.2,
    per_sample: bool = False,
    seed=None,
    sample_weight=None,
) -> MixupBatch:
    """Builds mixup virtual samples from a batch.

    Deprecated (removed in 0.2): `draw` then `mix`, as the methods' step
    (`stkd_keras.methods.forward`) does.

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
    warnings.warn(
        "stkd_keras.mixup.apply_mixup is deprecated and will be removed in stkd-keras 0.2: a second mixup path beside "
        "the methods' step. Use lam, permutation = mixup.draw(batch_size, alpha, per_sample, seed), then "
        "mixup.mix(images, lam, permutation) and mixup.mix(labels, lam, permutation).",
        DeprecationWarning,
        stacklevel=2,
    )
    if len(labels.shape) != 2:
        raise ValueError(
            f"Expected one-hot `labels` of shape (batch, num_classes). Received: labels.shape={tuple(labels.shape)}"
        )
    if isinstance(seed, int):
        # One generator for both draws, so lambda and p are not correlated.
        seed = keras.random.SeedGenerator(seed)
    images = ops.convert_to_tensor(images)
    lam, permutation = draw(ops.shape(images)[0], alpha, per_sample, seed)
    mixed_weight = None if sample_weight is None else mix(ops.cast(sample_weight, "float32"), lam, permutation)
    return MixupBatch(
        mix(images, lam, permutation),
        mix(ops.cast(labels, "float32"), lam, permutation),
        lam,
        permutation,
        mixed_weight,
    )
