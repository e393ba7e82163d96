"""The divergence guard of a training run: stop at the first NaN or inf, say where it appeared and what to do.

`StopOnNonFinite` watches the training loss after every step and every
weight after every epoch, before `stkd_keras.checkpoints.RunCheckpoint`
would commit the epoch; `non_finite_variable` names the first broken weight
(`stkd_keras.evaluation` refuses such a model too).
"""

from __future__ import annotations

import math

import keras
import numpy as np


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops at the first non-finite training loss, or at an epoch's end that left a non-finite weight, and says where.

    A loss can stay finite while a run explodes (a BatchNorm moving variance
    overflowing to inf, say): so every weight and non-trainable variable of
    the model is checked at each epoch's end too, before `RunCheckpoint`
    (placed after this callback) would commit it.
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.failure: str | None = None
        self.before_any_update = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.failure is None and loss is not None and not math.isfinite(float(loss)):
            # Keras reports a step's loss from the weights before its update: at the first step of a new run no
            # update has happened yet, so the learning rate cannot be the cause.
            self.before_any_update = self.epoch == 0 and batch == 0
            self.failure = f"the loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}"
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.failure is not None:
            return
        student = getattr(self.model, "student", None)
        broken = non_finite_variable(student if student is not None else self.model)
        if broken is not None:
            self.failure = f"{broken} holds NaN or inf after epoch {epoch + 1} (the loss stayed finite)"
            self.model.stop_training = True

    def advice(self) -> str:
        """What to do about the failure: the cause it points to, and a command that can work."""
        if self.before_any_update:
            return (
                "It was already non-finite before any weight changed, so the inputs or the hyperparameters (a "
                "temperature or "
                "loss weight too large for float32) are the cause, not the learning rate: fix them and start over with "
                "--overwrite."
            )
        return (
            "Start over with a lower --learning-rate and --overwrite (a resumed run keeps its recorded learning rate)."
        )


def non_finite_variable(model: keras.Model) -> str | None:
    """The path of the first variable of `model` holding NaN or inf, or None.

    Every weight counts, non-trainable ones too (a BatchNorm moving variance, say).
    """
    for variable in model.weights:
        if not np.isfinite(keras.ops.convert_to_numpy(variable)).all():
            return variable.path
    return None
