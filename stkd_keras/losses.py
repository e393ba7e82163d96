"""Loss terms of knowledge distillation and STKD.

The KD term (Hinton et al. 2015), per sample:

    kd = T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )

The STKD objective (Zhao et al. 2021, arXiv 2103.10047), for mixed labels
y_mix and the teacher and student logits on the same virtual sample:

    L = w_ce * CE(y_mix, softmax(z_s)) + w_kd * kd(z_t, z_s)

The methods (`stkd_keras.methods`) build their terms from the per-sample
pieces here: `kd_divergence`, `kd_loss`, `soft_cross_entropy`,
`standardize_logits`, `dkd_divergences`, `kd_divergence_from_probabilities`.
`stkd_loss`, `dkd_loss`, `KDLoss` and `STKDLoss` are deprecated (issue 22):
they composed the objectives a second time, without the methods' logit
standardisation, `mix_fraction` or clean-image term. A method's loss is
`stkd_keras.methods.step_loss` (one training step) or a `Distiller`.

All maths runs in float32, also when the logits come from a `mixed_float16`
model: softmax and log of float16 logits lose the small probabilities that
carry the similarity between classes.
"""

from __future__ import annotations

import warnings

import keras
from keras import ops

from stkd_keras.validation import positive_finite, validate_loss_weights


def warn_deprecated(name: str, method: str) -> None:
    """The deprecation of one of the composed losses, naming the method that replaces it."""
    warnings.warn(
        f"stkd_keras.losses.{name} is deprecated and will be removed in stkd-keras 0.2: it lacks the methods' logit "
        f"standardisation, mix_fraction and clean-image term. Use Distiller(student, teacher, method={method!r}), or "
        f"stkd_keras.methods.step_loss({method!r}, ...) for one step's loss.",
        DeprecationWarning,
        stacklevel=3,
    )


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
    """Batch mean of per-sample values, weighted by `sample_weight` if given (Keras's sum_over_batch_size)."""
    if sample_weight is None:
        return ops.mean(values)
    sample_weight = ops.reshape(ops.cast(sample_weight, "float32"), ops.shape(values))
    return ops.sum(values * sample_weight) / ops.cast(ops.size(values), "float32")


def kd_loss(teacher_logits, student_logits, temperature: float = 4.0, sample_weight=None):
    """Batch mean of `kd_divergence` (weighted by `sample_weight` if given)."""
    return batch_mean(kd_divergence(teacher_logits, student_logits, temperature), sample_weight)


def standardize_logits(logits):
    """Per-sample Z-score of the logits over the classes, float32.

    Logit standardisation (Sun et al., CVPR 2024, "Logit Standardization in
    Knowledge Distillation"): each sample's logits z become

        (z - mean(z)) / (std(z) + 1e-7)

    with the unbiased (n - 1) standard deviation over the n classes, as the
    authors' `normalize` computes it (`torch.std`). Applied to teacher and
    student logits before the temperature, it lets the student match the
    teacher's logit relations rather than their range.

    Args:
        logits: Logits, shape `(batch, num_classes)`, num_classes >= 2.

    Returns:
        A float32 tensor of the same shape, each row of mean 0 and unbiased
        standard deviation (almost) 1.
    """
    logits = ops.cast(logits, "float32")
    centred = logits - ops.mean(logits, axis=-1, keepdims=True)
    classes = ops.cast(ops.shape(logits)[-1], "float32")
    std = ops.sqrt(ops.sum(ops.square(centred), axis=-1, keepdims=True) / (classes - 1.0))
    return centred / (std + 1e-7)


def dkd_divergences(teacher_logits, student_logits, labels, temperature: float = 4.0):
    """Per-sample TCKD and NCKD of Decoupled Knowledge Distillation, each times T^2.

    Decoupled KD (Zhao et al., CVPR 2022) splits the KD term at the target
    class t. With p = softmax(z / T) of teacher (p^T) and student (p^S):

        TCKD = T^2 * KL([p^T_t, 1 - p^T_t] || [p^S_t, 1 - p^S_t])
        NCKD = T^2 * KL(softmax(z^T_others / T) || softmax(z^S_others / T))

    where z_others are the logits of the classes other than t (their
    softmax renormalised among themselves). This is mdistiller's `dkd_loss` (megvii-research/mdistiller,
    `mdistiller/distillers/DKD.py`), which drops the target class from the
    NCKD softmaxes by subtracting 1000 from its scaled logit; the binary
    probabilities are taken in log space here, which changes no value but
    avoids log(0) when p_t rounds to 1. Hinton's KD is, per sample,
    TCKD + (1 - p^T_t) * NCKD.

    Args:
        teacher_logits: Teacher logits, shape `(batch, num_classes)`.
        student_logits: Student logits, same shape.
        labels: One-hot or soft labels, same shape; the target class is
            each row's argmax (for mixed labels, the class of the larger
            share).
        temperature: Softening temperature T > 0.

    Returns:
        A pair of float32 tensors of shape `(batch,)`: TCKD, NCKD.

    Raises:
        ValueError: If `temperature` is not a finite number > 0.
    """
    temperature = validate_temperature(temperature)
    teacher = ops.cast(teacher_logits, "float32") / temperature
    student = ops.cast(student_logits, "float32") / temperature
    target_mask = ops.one_hot(ops.argmax(labels, axis=-1), ops.shape(student)[-1], dtype="float32")

    def binary_log_probs(scaled_logits):
        log_probs = ops.log_softmax(scaled_logits, axis=-1)
        log_target = ops.sum(log_probs * target_mask, axis=-1)
        # log(1 - p_t) as the log-sum of the other classes' probabilities (the target's, less 1000, adds
        # exp(-1000) = 0).
        log_others = ops.logsumexp(log_probs - 1000.0 * target_mask, axis=-1)
        return ops.stack([log_target, log_others], axis=-1)

    teacher_binary, student_binary = binary_log_probs(teacher), binary_log_probs(student)
    tckd = ops.sum(ops.exp(teacher_binary) * (teacher_binary - student_binary), axis=-1)
    teacher_others = ops.log_softmax(teacher - 1000.0 * target_mask, axis=-1)
    student_others = ops.log_softmax(student - 1000.0 * target_mask, axis=-1)
    nckd = ops.sum(ops.exp(teacher_others) * (teacher_others - student_others), axis=-1)
    return temperature**2 * tckd, temperature**2 * nckd


def dkd_loss(
    teacher_logits,
    student_logits,
    labels,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    sample_weight=None,
):
    """Batch mean of alpha * TCKD + beta * NCKD (`dkd_divergences`, T^2 included), weighted by `sample_weight` if given.

    Deprecated (removed in 0.2): the registered method's own loss is `methods.step_loss`.

    The distillation part of DKD (Zhao et al., CVPR 2022) as mdistiller's
    `dkd_loss` computes it: summed over the classes, averaged over the
    batch; no cross-entropy and no warm-up (the `dkd` method adds both).
    Defaults: mdistiller's CIFAR-100 DKD (alpha 1, beta 8, T 4).

    Example:
    >>> dkd_loss(teacher_logits, student_logits, one_hot_labels, alpha=1.0, beta=8.0, temperature=4.0)
    """
    warn_deprecated("dkd_loss", "dkd")
    tckd, nckd = dkd_divergences(teacher_logits, student_logits, labels, temperature)
    return batch_mean(alpha * tckd + beta * nckd, sample_weight)


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

    Deprecated (removed in 0.2): the registered method's own loss is `methods.step_loss`.

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
    warn_deprecated("stkd_loss", "stkd")
    per_sample = ce_weight * soft_cross_entropy(labels, student_logits) + kd_weight * kd_divergence(
        teacher_logits, student_logits, temperature
    )
    return batch_mean(per_sample, sample_weight)


@keras.saving.register_keras_serializable(package="stkd_keras")
class KDLoss(keras.losses.Loss):
    """Hinton's KD term as a Keras loss: `y_true` are teacher logits, `y_pred` student logits.

    Deprecated (removed in 0.2): the registered method's own loss is `methods.step_loss`.

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
        warn_deprecated("KDLoss", "kd")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = validate_temperature(temperature)

    def call(self, y_true, y_pred):
        return kd_divergence(y_true, y_pred, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="stkd_keras")
class STKDLoss(keras.losses.Loss):
    """The STKD objective as a Keras loss.

    Deprecated (removed in 0.2): the registered method's own loss is `methods.step_loss`.

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
        warn_deprecated("STKDLoss", "stkd")
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


def kd_divergence_from_probabilities(teacher_probabilities, student_logits, temperature: float = 4.0):
    """Per-sample KD term T^2 * KL(p_t || softmax(z_s/T)) for a teacher distribution given as probabilities.

    For soft targets that are not the softmax of one set of logits, such as
    the mixture lam * softmax(z_t(x_i)/T) + (1 - lam) * softmax(z_t(x_p(i))/T)
    of STKD's `soft_target="mixed_teacher"`. Given softmax(z_t/T) it equals
    `kd_divergence(z_t, z_s, T)`. Classes of probability 0 add nothing
    (0 * log 0 = 0).

    Args:
        teacher_probabilities: Teacher probabilities at temperature T, shape
            `(batch, num_classes)`, each row summing to 1.
        student_logits: Student logits, same shape.
        temperature: Softening temperature T > 0 of the student (the teacher
            probabilities are taken as already softened by it).

    Returns:
        A float32 tensor of shape `(batch,)`.

    Raises:
        ValueError: If `temperature` is not a finite number > 0.
    """
    temperature = validate_temperature(temperature)
    probabilities = ops.cast(teacher_probabilities, "float32")
    # log(1) stands in where p = 0, so neither the value nor a gradient sees log(0).
    teacher_log_probs = ops.log(ops.where(probabilities > 0, probabilities, 1.0))
    student_log_probs = ops.log_softmax(ops.cast(student_logits, "float32") / temperature, axis=-1)
    return temperature**2 * ops.sum(probabilities * (teacher_log_probs - student_log_probs), axis=-1)


def kd_loss_from_probabilities(teacher_probabilities, student_logits, temperature: float = 4.0, sample_weight=None):
    """Batch mean of `kd_divergence_from_probabilities` (weighted by `sample_weight` if given).

    Example:
    >>> p_t = keras.ops.softmax(teacher_logits / 4.0)
    >>> kd_loss_from_probabilities(p_t, student_logits, 4.0)  # == kd_loss(teacher_logits, student_logits, 4.0)
    """
    return batch_mean(
        kd_divergence_from_probabilities(teacher_probabilities, student_logits, temperature), sample_weight
    )
