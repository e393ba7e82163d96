"""Loss terms of knowledge distillation and STKD.

The KD term (Hinton et al. 2015), per sample:

    kd = T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )

The STKD objective (Zhao et al. 2021, arXiv 2103.10047), for mixed labels
y_mix and the teacher and student logits on the same virtual sample:

    L = w_ce * CE(y_mix, softmax(z_s)) + w_kd * kd(z_t, z_s)

All maths runs in float32, also when the logits come from a `mixed_float16`
model: softmax and log of float16 logits lose the small probabilities that
carry the similarity between classes.
"""

from __future__ import annotations

import keras
from keras import ops

from stkd_keras.validation import positive_finite, validate_loss_weights  # noqa: F401  (validate_loss_weights: public here too)


def validate_temperature(temperature) -> float:
    """Returns `temperature` as a float, or raises if it is not a finite number > 0."""
    return positive_finite("temperature", temperature)


def kd_divergence(teacher_logits, student_logits, temperature: float = 4.0):
    """Per-sample KD term T^2 * KL(softmax(z_t/T) || softmax(z_s/T)).

    Args:
        teacher_logits: Teacher logits, shape `(batch, num_classes)`.
        student_logits: Student logits, same shape.
        temperature: Softening temperature T > 0.

    Returns:
        A float32 tensor of shape `(batch,)`.
    """
    temperature = validate_temperature(temperature)
    teacher_log_probs = ops.log_softmax(ops.cast(teacher_logits, "float32") / temperature, axis=-1)
    student_log_probs = ops.log_softmax(ops.cast(student_logits, "float32") / temperature, axis=-1)
    kl = ops.sum(ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    return temperature**2 * kl


def soft_cross_entropy(labels, logits):
    """Per-sample cross-entropy -sum(y * log softmax(z)) for soft (mixed) labels, float32."""
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    return -ops.sum(ops.cast(labels, "float32") * log_probs, axis=-1)


def batch_mean(values, sample_weight=None):
    """Mean over the batch of per-sample values, each weighted by `sample_weight` if given (Keras's sum_over_batch_size)."""
    if sample_weight is None:
        return ops.mean(values)
    sample_weight = ops.reshape(ops.cast(sample_weight, "float32"), ops.shape(values))
    return ops.sum(values * sample_weight) / ops.cast(ops.size(values), "float32")


def kd_loss(teacher_logits, student_logits, temperature: float = 4.0, sample_weight=None):
    """Batch mean of `kd_divergence` (weighted by `sample_weight` if given)."""
    return batch_mean(kd_divergence(teacher_logits, student_logits, temperature), sample_weight)


def stkd_loss(
    labels,
    teacher_logits,
    student_logits,
    temperature: float = 4.0,
    ce_weight: float = 0.1,
    kd_weight: float = 0.9,
    sample_weight=None,
):
    """The STKD objective, batch mean: w_ce * CE(y_mix, z_s) + w_kd * kd(z_t, z_s).

    Args:
        labels: Mixed one-hot labels y_mix, shape `(batch, num_classes)`.
        teacher_logits: Teacher logits on the mixed images.
        student_logits: Student logits on the same mixed images.
        temperature: T > 0.
        ce_weight: w_ce.
        kd_weight: w_kd.
        sample_weight: Optional per-sample weights.

    Returns:
        A float32 scalar.
    """
    per_sample = ce_weight * soft_cross_entropy(labels, student_logits) + kd_weight * kd_divergence(
        teacher_logits, student_logits, temperature
    )
    return batch_mean(per_sample, sample_weight)


@keras.saving.register_keras_serializable(package="stkd_keras")
class KDLoss(keras.losses.Loss):
    """Hinton's KD term as a Keras loss: `y_true` are teacher logits, `y_pred` student logits.

    Args:
        temperature: Softening temperature T > 0.
        reduction, name, dtype: As for `keras.losses.Loss`; `dtype` defaults
            to float32 whatever the global dtype policy.

    Raises:
        ValueError: If `temperature` is not > 0.

    Example:
    >>> loss = KDLoss(temperature=4.0)(teacher_logits, student_logits)
    """

    def __init__(self, temperature=4.0, reduction="sum_over_batch_size", name="kd_loss", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = validate_temperature(temperature)

    def call(self, y_true, y_pred):
        return kd_divergence(y_true, y_pred, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="stkd_keras")
class STKDLoss(keras.losses.Loss):
    """The STKD objective as a Keras loss.

    `y_true` is a dict `{"labels": y_mix, "teacher_logits": z_t}`; `y_pred` are
    the student logits on the same virtual samples.

    Args:
        temperature: T > 0.
        ce_weight: w_ce >= 0.
        kd_weight: w_kd >= 0 (not both zero).

    Raises:
        ValueError: For a non-positive temperature, a negative weight or two
            zero weights.

    Example:
    >>> loss = STKDLoss()({"labels": y_mix, "teacher_logits": z_t}, z_s)
    """

    def __init__(
        self,
        temperature=4.0,
        ce_weight=0.1,
        kd_weight=0.9,
        reduction="sum_over_batch_size",
        name="stkd_loss",
        dtype="float32",
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = validate_temperature(temperature)
        self.ce_weight, self.kd_weight = validate_loss_weights(ce_weight=ce_weight, kd_weight=kd_weight)

    def call(self, y_true, y_pred):
        return self.ce_weight * soft_cross_entropy(y_true["labels"], y_pred) + self.kd_weight * kd_divergence(
            y_true["teacher_logits"], y_pred, self.temperature
        )

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "ce_weight": self.ce_weight,
            "kd_weight": self.kd_weight,
        }
