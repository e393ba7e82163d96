"""`Distiller`: STKD and its baselines as one `keras.Model`, on every Keras backend.

STKD (Zhao et al. 2021, arXiv 2103.10047) feeds the teacher and the student
the *same* mixup virtual sample; the student learns the mixed label and the
teacher's softened distribution on that sample, which carries the similarity
between the categories of both source images.

How a step is built, on TensorFlow, JAX and PyTorch alike: Keras's own
trainer runs `train_step`, which calls `self(x, training=True)` and then
`compute_loss` and `compute_metrics`, as `keras.distillation.Distiller`
relies on. In training, `call` runs what the method declares
(`stkd_keras.methods.forward`): the mixup draw (from the Distiller's
`SeedGenerator`, a tracked state variable, so it advances inside a compiled
step), the frozen teacher outside the gradient, the student on what it sees,
and returns those outputs; `compute_loss` mixes the labels with the same
draw, asks the method for its loss terms, and reports each one. Keras then
supplies the gradients, loss scaling (`mixed_float16`), `jit_compile`,
distribution and the compiled metrics. In evaluation and prediction `call`
is the student's.
"""

from __future__ import annotations

import inspect
import sys

import keras
from keras import ops

from stkd_keras import backend_ops
from stkd_keras.methods import batch_context, check_teacher, forward, get_method, one_hot_labels, outputs_loss
from stkd_keras.methods.step import teacher_logits

# Keyword arguments of keras.Model itself (what `Model.get_config` returns); all others are method hyperparameters.
_MODEL_KWARGS = ("name", "trainable", "dtype")


def _model_shape(model, attribute: str):
    """`model.input_shape`/`output_shape` without the batch axis, or None if the model does not know it yet."""
    try:
        shape = getattr(model, attribute)
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, list) and len(shape) == 1:
        shape = shape[0]
    return tuple(shape[1:]) if isinstance(shape, tuple) else None


def _is_tf_dataset(data) -> bool:
    """Whether `data` is a `tf.data.Dataset` (answered without importing TensorFlow where it is not loaded)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


class _EpochCounter(keras.callbacks.Callback):
    """Sets the Distiller's epoch variable at the start of each epoch of `fit` (methods read it for warm-ups)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.epoch.assign(epoch)


@keras.saving.register_keras_serializable(package="stkd_keras")
class Distiller(keras.Model):
    """Trains a student with STKD, KD or any registered method, inside `model.fit`, on any Keras backend.

    The built-in methods, for a batch (x, y), mixup batch (x_mix, y_mix),
    teacher logits z_t and student logits z_s:

    - `ce`: CE(y, z_s(x)); no teacher.
    - `kd`: w_ce * CE(y, z_s(x)) + w_kd * KD(z_t(x), z_s(x)).
    - `mixup`: CE(y_mix, z_s(x_mix)); no teacher.
    - `kd_mixup_naive`: w_ce * CE(y_mix, z_s(x_mix)) + w_kd * KD(z_t(x), z_s(x_mix)).
    - `stkd`: w_ce * CE(y_mix, z_s(x_mix)) + w_kd * KD(z_t(x_mix), z_s(x_mix)).
    - `dkd`: w_ce * CE(y, z_s(x)) + warm-up * (alpha * TCKD + beta * NCKD),
      KD split at the target class (Decoupled KD, `stkd_keras.methods.dkd`).

    with KD = T^2 * KL(softmax(z_t/T) || softmax(z_s/T)). With
    `logit_standardization` the KD terms standardise z_t and z_s per sample
    first; the presets `kd+ls`, `stkd+ls` and `dkd+ls` switch it on with
    its authors' settings. For the two mixup
    methods with a teacher, `clean_kd_weight` > 0 adds
    `clean_kd_weight * KD(z_t(x), z_s(x))` on the un-mixed batch (one more
    student forward pass); the preset `stkd_clean_kd` sets it to 0.5.
    `stkd`'s `mix_fraction` mixes only part of each batch and its
    `soft_target="mixed_teacher"` mixes the teacher's distributions on the
    clean images instead of running it on x_mix (see `stkd_keras.methods.stkd`).
    `stkd_keras.methods.list_methods()` lists every registered method; each
    one's hyperparameters and their defaults are its dataclass
    (`get_method(name).defaults()`).

    `evaluate` and `predict` use the student on clean images, and so does
    `call` outside training (in training it returns the step's outputs, a
    dict). The evaluation loss is the method's loss on clean images, every
    network seeing the clean batch. Labels may be integer class ids or
    one-hot; the compiled metrics always receive one-hot (mixed, in training)
    labels, so `"accuracy"` resolves to categorical accuracy. Reported
    metrics: `loss`, each of the method's loss terms unweighted (`ce_loss`,
    `kd_loss`, `clean_kd_loss`, ...), `mixup_lambda` (training with mixup:
    the mean lambda drawn, a sample that `mix_fraction` leaves clean counting
    as 1) and the compiled metrics. In training, a method that mixes
    reports each compiled metric as `mixed_<name>`
    (`mixed_accuracy`): it is scored against the mixed labels, so it sits
    below the validation figure (`val_accuracy`, on real labels). Losses the
    student adds (regularizers) are added to the loss, as Keras does.

    Args:
        student: The `keras.Model` to train; it returns logits.
        teacher: A trained `keras.Model` returning logits, frozen here.
            Required by the methods that need a teacher; must be None
            otherwise.
        method: The name of a registered method (or preset).
        seed: Seed of the mixup draws (lambda and permutation), or None.
        **hyperparameters: The method's hyperparameters (e.g. `temperature`,
            `ce_weight`, `kd_weight`, `mixup_alpha`, `lambda_per_sample`,
            `clean_kd_weight` for `stkd`); those not given take the method's
            defaults. `name`, `trainable` and `dtype` go to `keras.Model`.

    Attributes:
        student, teacher: The two models.
        method: The method's name; `distillation_method` is the method itself.
        hyperparameters: The method's hyperparameters (a dataclass).
        epoch, step: Variables holding the current epoch of `fit` and the
            number of training steps taken.

    Raises:
        ValueError: For an unknown method, a hyperparameter the method does
            not have or cannot use, a teacher where none is used or none
            where one is needed, or teacher and student shapes that disagree.

    Example:
    ```python
    distiller = Distiller(student, teacher, method="stkd", temperature=4.0)
    distiller.compile(optimizer="sgd", metrics=["accuracy"])
    distiller.fit(train_ds, validation_data=val_ds, epochs=10)
    distiller.student.save("student.keras")
    ```
    """

    def __init__(self, student, teacher=None, method="stkd", seed=None, **kwargs):
        model_kwargs = {key: kwargs.pop(key) for key in _MODEL_KWARGS if key in kwargs}
        # autocast=False: the mixup arithmetic and the labels stay in float32 under a mixed policy;
        # each network casts its own inputs to its compute dtype.
        super().__init__(autocast=False, **model_kwargs)
        self.distillation_method = get_method(method)
        self.method = self.distillation_method.name
        self.hyperparameters = self.distillation_method.make_hyperparameters(**kwargs)
        if not isinstance(student, keras.Model):
            raise ValueError(f"Expected `student` to be a keras.Model. Received: student={student!r}")
        check_teacher(self.distillation_method, teacher, "teacher")
        if teacher is not None and not isinstance(teacher, keras.Model):
            raise ValueError(f"Expected `teacher` to be a keras.Model. Received: teacher={teacher!r}")
        self.seed = seed
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            self._check_compatible(teacher, student)
            teacher.trainable = False
        output_shape = _model_shape(student, "output_shape")
        if not output_shape or output_shape[-1] is None:
            raise ValueError(
                "Expected a built `student` whose output shape (batch, num_classes) is known; call it once on a batch "
                f"or use a functional model. Received: student output shape {output_shape}"
            )
        self.num_classes = int(output_shape[-1])
        self._seed_generator = keras.random.SeedGenerator(seed, name="mixup_seed")
        self.epoch = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False, name="epoch")
        self.step = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False, name="step", aggregation="only_first_replica"
        )
        self._term_trackers = {
            name: keras.metrics.Mean(name=name) for name in self.distillation_method.term_names(self.hyperparameters)
        }
        # Mean of the mixup coefficients drawn in training (TensorBoard / history.csv: is Beta(a, a) what we think?).
        self._lambda_tracker = keras.metrics.Mean(name="mixup_lambda") if self.distillation_method.mixes else None

    @property
    def mixup_seed_generator(self) -> keras.random.SeedGenerator:
        """The `SeedGenerator` of the mixup draws, checkpointed so that a resumed run draws as an uninterrupted one."""
        return self._seed_generator

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

    def call(self, inputs, training=None):
        if training:
            return forward(
                self.distillation_method, self.hyperparameters, inputs, self.student, self.teacher, self._seed_generator
            )
        return self.student(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """As `keras.Model.compile`; the loss is the method's own, so `loss` must stay None."""
        if loss is not None:
            raise ValueError(
                f"`Distiller` computes its loss from `method` ({self.method!r}); do not pass `loss` to compile(). "
                f"Received: loss={loss!r}"
            )
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def fit(self, *args, **kwargs):
        """As `keras.Model.fit`; the Distiller adds one callback of its own, which keeps `epoch` current.

        A `tf.data.Dataset` orders its own batches, so for one `shuffle`
        defaults to False here, where Keras's True would only draw its warning
        that the argument is ignored.
        """
        arguments = inspect.signature(super().fit).bind(*args, **kwargs).arguments
        if "shuffle" not in arguments and _is_tf_dataset(arguments.get("x")):
            arguments["shuffle"] = False
        counter = _EpochCounter()
        counter.set_model(self)  # a CallbackList the caller built is not given the model again by fit
        callbacks = arguments.get("callbacks") or []
        if isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks.callbacks.append(counter)
        else:
            arguments["callbacks"] = [*callbacks, counter]
        return super().fit(**arguments)

    def _outputs(self, x, y_pred) -> dict:
        """What `outputs_loss` takes: the step's outputs in training (`y_pred` a dict), the clean logits otherwise."""
        if isinstance(y_pred, dict):
            return y_pred
        outputs = {"logits": y_pred}
        if self.teacher is not None:
            outputs["teacher_logits"] = teacher_logits(self.teacher, x)
        return outputs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        training = isinstance(y_pred, dict)
        total, terms = outputs_loss(
            self.distillation_method,
            self.hyperparameters,
            y,
            self._outputs(x, y_pred),
            sample_weight,
            epoch=self.epoch.value,
            step=self.step.value,
            training=training,
            regularization_losses=self.losses,
        )
        for name, term in terms.items():
            self._term_trackers[name].update_state(term.value)
        if training and y_pred.get("lam") is not None:
            self._lambda_tracker.update_state(ops.mean(y_pred["lam"]))
        if training:
            self.step.assign_add(1)
        return backend_ops.scale_loss_for_distribution(total)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        training = isinstance(y_pred, dict)
        labels, logits = one_hot_labels(y, self.num_classes), y_pred
        if training:  # the compiled metrics see the labels and sample weights the student trained on
            context = batch_context(labels, y_pred, sample_weight)
            labels, logits, sample_weight = context.labels, context.student_logits, context.sample_weight
        logs = super().compute_metrics(x, labels, logits, sample_weight=sample_weight)
        if not training:
            logs.pop("mixup_lambda", None)  # No mixup in evaluation.
        elif self.distillation_method.mixes:
            # Scored against mixed labels, training accuracy sits below validation accuracy; its name says why. Only
            # the logs are renamed: the metric objects keep their names, so validation stays `val_accuracy`.
            own = {"loss", "mixup_lambda", *self._term_trackers}
            logs = {name if name in own else f"mixed_{name}": value for name, value in logs.items()}
        return logs

    def get_config(self):
        return {
            **super().get_config(),
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": None if self.teacher is None else keras.saving.serialize_keras_object(self.teacher),
            "method": self.method,
            "seed": self.seed,
            **self.hyperparameters.to_dict(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        if config.get("teacher") is not None:
            config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)
