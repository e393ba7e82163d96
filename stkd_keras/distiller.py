"""`Distiller`: STKD and its baselines as one `keras.Model`.

STKD (Zhao et al. 2021, arXiv 2103.10047) feeds the teacher and the student
the *same* mixup virtual sample; the student learns the mixed label and the
teacher's softened distribution on that sample, which carries the similarity
between the categories of both source images.

How a step is built (TF backend): `train_step` converts labels to one-hot,
draws the mixup batch on the device, runs the frozen teacher with
`training=False` (before the gradient tape opens) and then hands the student's
inputs, together with the targets, to Keras's own `train_step`. Keras then
supplies the gradient tape, loss scaling for `mixed_float16`, XLA
(`jit_compile=True`), `tf.distribute` and the compiled metrics; the loss terms
live in `compute_loss`.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from stkd_keras import losses as losses_lib
from stkd_keras import mixup as mixup_lib

METHODS = ("ce", "kd", "mixup", "kd_mixup_naive", "stkd")
METHOD_DESCRIPTIONS = {
    "ce": "student alone, cross-entropy on clean images (no teacher)",
    "kd": "Hinton KD on clean images",
    "mixup": "student alone on mixup samples (no teacher)",
    "kd_mixup_naive": "teacher on the clean images, student on mixup samples",
    "stkd": "STKD: teacher and student on the same mixup samples",
}
TEACHER_METHODS = frozenset({"kd", "kd_mixup_naive", "stkd"})
MIXUP_METHODS = frozenset({"mixup", "kd_mixup_naive", "stkd"})


def _scale_loss_for_distribution(loss):
    """Divides by the replica count so that gradients summed over replicas average them (as Keras losses do)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


def _model_shape(model, attribute: str):
    """`model.input_shape`/`output_shape` without the batch axis, or None if the model does not know it yet."""
    try:
        shape = getattr(model, attribute)
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, list) and len(shape) == 1:
        shape = shape[0]
    return tuple(shape[1:]) if isinstance(shape, tuple) else None


@keras.saving.register_keras_serializable(package="stkd_keras")
class Distiller(keras.Model):
    """Trains a student with STKD, KD or one of their baselines, inside `model.fit`.

    Methods, for a batch (x, y), mixup batch (x_mix, y_mix), teacher logits
    z_t and student logits z_s:

    - `ce`: CE(y, z_s(x)); no teacher.
    - `kd`: w_ce * CE(y, z_s(x)) + w_kd * KD(z_t(x), z_s(x)).
    - `mixup`: CE(y_mix, z_s(x_mix)); no teacher.
    - `kd_mixup_naive`: w_ce * CE(y_mix, z_s(x_mix)) + w_kd * KD(z_t(x), z_s(x_mix)).
    - `stkd`: w_ce * CE(y_mix, z_s(x_mix)) + w_kd * KD(z_t(x_mix), z_s(x_mix)).

    with KD = T^2 * KL(softmax(z_t/T) || softmax(z_s/T)). For the two mixup
    methods with a teacher, `clean_kd_weight` > 0 adds
    `clean_kd_weight * KD(z_t(x), z_s(x))` on the un-mixed batch (one more
    student forward pass). The methods without a teacher train on plain
    cross-entropy; the weights apply to the teacher methods.

    `call`, `evaluate` and `predict` use the student on clean images. The
    evaluation loss is `w_ce * CE + w_kd * KD` on clean images (CE alone
    without a teacher). Labels may be integer class ids or one-hot; the
    compiled metrics always receive one-hot (mixed, in training) labels, so
    `"accuracy"` resolves to categorical accuracy. Reported metrics: `loss`,
    `ce_loss`, `kd_loss` (with a teacher), `clean_kd_loss` (when used),
    `mixup_lambda` (training with mixup: the mean lambda drawn) and the
    compiled metrics.

    Args:
        student: The `keras.Model` to train; it returns logits.
        teacher: A trained `keras.Model` returning logits, frozen here. Required
            for `kd`, `kd_mixup_naive` and `stkd`; must be None otherwise.
        method: One of `METHODS`.
        temperature: T > 0.
        ce_weight: w_ce >= 0.
        kd_weight: w_kd >= 0.
        mixup_alpha: a > 0 of lambda ~ Beta(a, a).
        lambda_per_sample: Draw one lambda per sample instead of per batch.
        clean_kd_weight: Weight >= 0 of the extra KD term on clean images.
        seed: Seed of the mixup draws (lambda and permutation), or None.

    Raises:
        ValueError: For an unknown method, a teacher where none is used or
            none where one is needed, teacher and student shapes that
            disagree, a non-positive temperature or alpha, negative weights
            or weights that are all zero.

    Example:
    ```python
    distiller = Distiller(student, teacher, method="stkd")
    distiller.compile(optimizer="sgd", metrics=["accuracy"])
    distiller.fit(train_ds, validation_data=val_ds, epochs=10)
    distiller.student.save("student.keras")
    ```
    """

    def __init__(
        self,
        student,
        teacher=None,
        method="stkd",
        temperature=4.0,
        ce_weight=0.1,
        kd_weight=0.9,
        mixup_alpha=0.2,
        lambda_per_sample=False,
        clean_kd_weight=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(f"Expected `method` to be one of {METHODS}. Received: method={method!r}")
        if not isinstance(student, keras.Model):
            raise ValueError(f"Expected `student` to be a keras.Model. Received: student={student!r}")
        if method in TEACHER_METHODS and teacher is None:
            raise ValueError(f"Method {method!r} distils from a teacher, but none was given. Received: teacher=None")
        if method not in TEACHER_METHODS and teacher is not None:
            raise ValueError(
                f"Method {method!r} trains the student alone and uses no teacher. "
                f"Received: teacher={getattr(teacher, 'name', teacher)!r}; pass teacher=None or a method in {sorted(TEACHER_METHODS)}."
            )
        if teacher is not None and not isinstance(teacher, keras.Model):
            raise ValueError(f"Expected `teacher` to be a keras.Model. Received: teacher={teacher!r}")
        self.method = method
        self.temperature = losses_lib.validate_temperature(temperature)
        self.mixup_alpha = mixup_lib.validate_alpha(mixup_alpha)
        self.ce_weight, self.kd_weight, self.clean_kd_weight = losses_lib.validate_loss_weights(
            ce_weight=ce_weight, kd_weight=kd_weight, clean_kd_weight=clean_kd_weight
        )
        if self.clean_kd_weight > 0 and not (method in TEACHER_METHODS and method in MIXUP_METHODS):
            raise ValueError(
                "`clean_kd_weight` adds a KD term on clean images to a mixup method with a teacher "
                f"('kd_mixup_naive' or 'stkd'). Received: clean_kd_weight={clean_kd_weight!r} with method={method!r}"
            )
        self.lambda_per_sample = bool(lambda_per_sample)
        self.seed = seed
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            self._check_compatible(teacher, student)
            teacher.trainable = False
        self._seed_generator = keras.random.SeedGenerator(seed, name="mixup_seed")
        output_shape = _model_shape(student, "output_shape")
        if not output_shape or output_shape[-1] is None:
            raise ValueError(
                "Expected a built `student` whose output shape (batch, num_classes) is known; call it once on a batch "
                f"or use a functional model. Received: student output shape {output_shape}"
            )
        self.num_classes = int(output_shape[-1])

        self.ce_loss_tracker = keras.metrics.Mean(name="ce_loss")
        self.kd_loss_tracker = keras.metrics.Mean(name="kd_loss") if teacher is not None else None
        self.clean_kd_loss_tracker = keras.metrics.Mean(name="clean_kd_loss") if self.clean_kd_weight > 0 else None
        # Mean of the mixup coefficients drawn in training (TensorBoard / history.csv: is Beta(a, a) what we think?).
        self.lambda_tracker = keras.metrics.Mean(name="mixup_lambda") if self.uses_mixup else None

    @staticmethod
    def _check_compatible(teacher, student):
        for attribute, what in (("input_shape", "input"), ("output_shape", "output")):
            teacher_shape = _model_shape(teacher, attribute)
            student_shape = _model_shape(student, attribute)
            if teacher_shape is None or student_shape is None:
                continue
            if teacher_shape != student_shape:
                raise ValueError(
                    f"Teacher and student {what} shapes must match. Received: teacher {what} shape "
                    f"{teacher_shape}, student {what} shape {student_shape}"
                )

    @property
    def uses_mixup(self) -> bool:
        return self.method in MIXUP_METHODS

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """As `keras.Model.compile`; the loss is the method's own, so `loss` must stay None."""
        if loss is not None:
            raise ValueError(
                f"`Distiller` computes its loss from `method` ({self.method!r}); do not pass `loss` to compile(). Received: loss={loss!r}"
            )
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def _one_hot(self, labels):
        """Integer labels (batch,) or (batch, 1) become one-hot float32; one-hot labels are cast."""
        if len(labels.shape) == 2 and labels.shape[-1] == self.num_classes:
            return ops.cast(labels, "float32")
        if len(labels.shape) == 2 and labels.shape[-1] == 1:
            labels = ops.squeeze(labels, axis=-1)
        if len(labels.shape) != 1:
            raise ValueError(
                f"Expected labels of shape (batch,) or (batch, {self.num_classes}). Received: labels.shape={tuple(labels.shape)}"
            )
        return ops.one_hot(ops.cast(labels, "int32"), self.num_classes, dtype="float32")

    def _teacher_logits(self, images):
        return ops.stop_gradient(ops.cast(self.teacher(images, training=False), "float32"))

    def _training_batch(self, images, labels, sample_weight):
        """Returns (student inputs, targets, sample weight) for one training step."""
        targets = {"labels": labels}
        student_images = images
        if self.uses_mixup:
            mixed = mixup_lib.apply_mixup(
                images,
                labels,
                alpha=self.mixup_alpha,
                per_sample=self.lambda_per_sample,
                seed=self._seed_generator,
                sample_weight=sample_weight,
            )
            student_images, sample_weight = mixed.images, mixed.sample_weight
            targets["labels"] = mixed.labels
            self.lambda_tracker.update_state(ops.mean(mixed.lam))
        if self.teacher is not None:
            # STKD: the teacher sees what the student sees. KD and the naive
            # variant: the teacher sees the clean images.
            teacher_images = student_images if self.method == "stkd" else images
            targets["teacher_logits"] = self._teacher_logits(teacher_images)
        if self.clean_kd_loss_tracker is not None:
            targets["clean_images"] = images
            targets["clean_teacher_logits"] = (
                targets["teacher_logits"] if self.method == "kd_mixup_naive" else self._teacher_logits(images)
            )
        return student_images, targets, sample_weight

    def train_step(self, data):
        images, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        student_images, targets, sample_weight = self._training_batch(images, self._one_hot(labels), sample_weight)
        return super().train_step((student_images, targets, sample_weight))

    def test_step(self, data):
        images, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        targets = {"labels": self._one_hot(labels)}
        if self.teacher is not None:
            targets["teacher_logits"] = self._teacher_logits(images)
        logs = super().test_step((images, targets, sample_weight))
        logs.pop("mixup_lambda", None)  # No mixup in evaluation.
        return logs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        if not isinstance(y, dict):
            y = {"labels": self._one_hot(y)}
        ce = losses_lib.batch_mean(losses_lib.soft_cross_entropy(y["labels"], y_pred), sample_weight)
        self.ce_loss_tracker.update_state(ce)
        if self.teacher is None:
            total = ce
        else:
            kd = losses_lib.kd_loss(y["teacher_logits"], y_pred, self.temperature, sample_weight)
            self.kd_loss_tracker.update_state(kd)
            total = self.ce_weight * ce + self.kd_weight * kd
            if "clean_images" in y:
                clean_student_logits = self.student(y["clean_images"], training=True)
                clean_kd = losses_lib.kd_loss(y["clean_teacher_logits"], clean_student_logits, self.temperature)
                self.clean_kd_loss_tracker.update_state(clean_kd)
                total = total + self.clean_kd_weight * clean_kd
            elif self.clean_kd_loss_tracker is not None:
                # Evaluation runs on clean images, where the clean KD term is the KD term.
                self.clean_kd_loss_tracker.update_state(kd)
        if self.student.losses:
            total = total + ops.cast(ops.sum(self.student.losses), "float32")
        return _scale_loss_for_distribution(total)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels = y["labels"] if isinstance(y, dict) else self._one_hot(y)
        return super().compute_metrics(x, labels, y_pred, sample_weight=sample_weight)

    def get_config(self):
        return {
            **super().get_config(),
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": None if self.teacher is None else keras.saving.serialize_keras_object(self.teacher),
            "method": self.method,
            "temperature": self.temperature,
            "ce_weight": self.ce_weight,
            "kd_weight": self.kd_weight,
            "mixup_alpha": self.mixup_alpha,
            "lambda_per_sample": self.lambda_per_sample,
            "clean_kd_weight": self.clean_kd_weight,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        if config.get("teacher") is not None:
            config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)
