"""The QAT/pruning fine-tuning: a tf_keras student trained with its run's distillation method, step by step.

Part of the QAT/pruning bridge (`stkd_keras.export.tfmot_bridge`), which runs it in its own process
(tf_keras, legacy Keras). The step's loss is the Distiller's own (`stkd_keras.methods.step_loss`), so a method
fine-tunes as it trained: for STKD (Zhao et al. 2021, arXiv 2103.10047) each batch is mixed, the teacher sees
the same mixed images, and the student learns the STKD loss. The method test kit (`stkd_keras.testing`)
checks that `batch_loss` equals the Distiller's loss for every registered method.
"""

from __future__ import annotations

import time

import numpy as np

# Progress is timed from this step on: the first ones trace and compile the step function.
TIMED_FROM_STEP = 3


def batch_loss(method, hyperparameters, images, labels, student, teacher, seed_generator, epoch, step):
    """One batch's fine-tuning loss: the Distiller's own (`stkd_keras.methods.step_loss`), regularisation included."""
    from stkd_keras import methods

    return methods.step_loss(
        method, hyperparameters, images, labels, student, teacher, seed_generator, epoch, step
    ).total


def _train_step(unit, values, student, teacher, optimizer, seed_generator, epoch_variable, step_variable):
    """One Adam step on a batch, as a tf.function that returns the batch's loss and counts the step."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            loss = batch_loss(
                unit, values, images, labels, student, teacher, seed_generator, epoch_variable, step_variable
            )
        gradients = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(gradients, student.trainable_variables))
        step_variable.assign_add(1)
        return loss

    return train_step


class _ProgressLog:
    """About ten lines per epoch (epoch, step, mean loss, time left) once a few steps are measured, to `log`."""

    def __init__(self, log, epochs: int, steps_per_epoch: int | None):
        self.log = log
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.total = epochs * steps_per_epoch if steps_per_epoch else None
        self.every = max(1, (steps_per_epoch or 100) // 10)
        self.clock, self.done = None, 0

    def step_done(self, epoch: int, losses: list[float]) -> None:
        """After each step: `losses` are the epoch's so far."""
        self.done += 1
        if self.done == TIMED_FROM_STEP:
            self.clock = time.perf_counter()
        if (
            self.log is None
            or self.done <= TIMED_FROM_STEP
            or not (len(losses) % self.every == 0 or self.done == TIMED_FROM_STEP + 20)
        ):
            return
        seconds_per_step = (time.perf_counter() - self.clock) / max(1, self.done - TIMED_FROM_STEP)
        left = f", about {_duration(seconds_per_step * (self.total - self.done))} left" if self.total else ""
        steps = f"step {len(losses)}/{self.steps_per_epoch}" if self.steps_per_epoch else f"step {len(losses)}"
        self.log(f"  epoch {epoch + 1}/{self.epochs}, {steps}: loss {np.mean(losses[-self.every :]):.4f}{left}")

    def epoch_done(self, epoch: int, mean_loss: float) -> None:
        if self.log is not None:
            self.log(f"  epoch {epoch + 1}/{self.epochs} done: mean loss {mean_loss:.4f}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def fine_tune(
    student,
    teacher,
    dataset,
    epochs: int,
    learning_rate: float,
    method: str,
    hyperparameters: dict,
    seed: int,
    on_epoch_end=None,
    steps_per_epoch: int | None = None,
    log=None,
    initial_epoch: int = 0,
) -> list[float]:
    """Trains `student` (tf_keras) for `epochs` on `dataset` with a registered distillation method.

    Returns the mean loss of each epoch.

    The step's loss is the Distiller's (`batch_loss`): e.g. for STKD, per
    batch, x_mix and y_mix from one mixup draw, z_t = teacher(x_mix) without
    gradient, and the STKD loss on student(x_mix). The fine-tuning continues a
    finished run, so its epochs count on from `initial_epoch` (the run's
    epochs): a method's warm-up (DKD's) is then over, as at the run's end.
    With `log`, progress goes there: an estimate of the whole fine-tuning's
    time once a few steps are measured, then about ten lines per epoch
    (epoch, step, mean loss, time left).
    """
    import keras
    import tensorflow as tf
    import tf_keras

    from stkd_keras import methods

    unit = methods.get_method(method)
    values = unit.make_hyperparameters(**hyperparameters)
    optimizer = tf_keras.optimizers.Adam(learning_rate)
    seed_generator = keras.random.SeedGenerator(seed)
    # Variables, as in the Distiller: the step function reads them without being traced again each epoch.
    epoch_variable = tf.Variable(initial_epoch, dtype=tf.int32, trainable=False)
    step_variable = tf.Variable(initial_epoch * (steps_per_epoch or 0), dtype=tf.int32, trainable=False)
    train_step = _train_step(unit, values, student, teacher, optimizer, seed_generator, epoch_variable, step_variable)
    progress = _ProgressLog(log, epochs, steps_per_epoch)
    history = []
    for epoch in range(epochs):
        epoch_variable.assign(initial_epoch + epoch)
        losses = []
        for images, labels in dataset:
            losses.append(float(train_step(images, labels)))
            progress.step_done(epoch, losses)
        history.append(float(np.mean(losses)))
        progress.epoch_done(epoch, history[-1])
        if on_epoch_end is not None:
            on_epoch_end()
    return history
