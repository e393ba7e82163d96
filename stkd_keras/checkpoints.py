"""Checkpoints that survive SIGKILL, and the guards and logs of a training run, on every Keras backend.

`RunCheckpoint` writes, after every completed epoch, the Distiller's weights
(student, teacher, optimizer state and step counter, hence the learning-rate
schedule position) to `checkpoints/epoch-K.weights.h5` and then, as the commit
point, `checkpoints/state.json` (epoch, mixup seed-generator state, history so
far), each through a temporary file and `os.replace`. A kill at any moment
leaves the previous commit intact; the epoch before it is kept too, so a
corrupt latest checkpoint falls back to the one before with a clear message.
The data pipeline is a function of (seed, epoch) (`stkd_keras.data.load` with
`epochs=`), so a resumed run sees the batches an uninterrupted one sees.

Keras's `BackupAndRestore` is close, but writes weights in place (a kill mid-write
corrupts the only copy) and does not restore the mixup seed state; hence this.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
from pathlib import Path

import keras
import numpy as np

from stkd_keras.backend_selection import tensorflow_available
from stkd_keras.files import atomic_write
from stkd_keras.runs import CHECKPOINT_DIR, STATE_FILE, RunError


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


def _weights_name(epoch: int) -> str:
    return f"epoch-{epoch}.weights.h5"


class RunCheckpoint(keras.callbacks.Callback):
    """Commits the run's state at the end of every epoch (see the module docstring).

    Args:
        directory: The run folder; checkpoints go to `directory/checkpoints/`.
        history: History of the epochs before this `fit` (when resuming).
        guard: The run's `StopOnNonFinite`, placed before this callback: an
            epoch it found diverged is never committed.
    """

    def __init__(self, directory: str | os.PathLike, history: dict | None = None, guard: StopOnNonFinite | None = None):
        super().__init__()
        self.folder = Path(directory) / CHECKPOINT_DIR
        self.history = {key: list(values) for key, values in (history or {}).items()}
        self.guard = guard

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite(float((logs or {}).get("loss", 0.0))) or (self.guard is not None and self.guard.failure):
            return  # Never commit a diverged state: the last good checkpoint stays the latest.
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.folder.mkdir(parents=True, exist_ok=True)
        completed = epoch + 1
        atomic_write(self.folder / _weights_name(completed), lambda path: self.model.save_weights(str(path)))
        previous = read_state(self.folder.parent)
        state = {
            "epoch": completed,
            "previous_epoch": previous["epoch"] if previous else None,
            "seed_state": _seed_state(self.model),
            "history": self.history,
        }
        atomic_write(self.folder / STATE_FILE, lambda path: path.write_text(json.dumps(state)))
        # Keep this epoch and the one before it; older weights are no longer needed.
        keep = {_weights_name(completed), _weights_name(state["previous_epoch"] or 0)}
        for old in self.folder.glob("epoch-*.weights.h5"):
            if old.name not in keep:
                old.unlink()


def _seed_state(model):
    generator = getattr(model, "mixup_seed_generator", None)
    return None if generator is None else np.asarray(generator.state.numpy()).tolist()


def read_state(directory: str | os.PathLike) -> dict | None:
    """The committed checkpoint state of a run folder, or None when it has none.

    Raises:
        RunError: When the state file exists but is damaged (truncated, edited
            into another shape): a run never restarts silently over its checkpoints.
    """
    path = Path(directory) / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        problem = _state_problem(state)
    except (ValueError, UnicodeDecodeError) as error:
        problem = f"it is not JSON: {error}"
    if problem:
        raise RunError(
            f"The checkpoint state {path} is damaged ({problem}); its checkpoints are kept. Restore the file, "
            "or start the run over with --overwrite."
        )
    return state


def _state_problem(state) -> str | None:
    """What is wrong with a parsed state.json, or None (the fields `RunCheckpoint` writes, with their types)."""
    if not isinstance(state, dict):
        return f"expected a JSON object, found {type(state).__name__}"
    for field in ("epoch", "history"):
        if field not in state:
            return f"the field {field!r} is missing"
    if not isinstance(state["epoch"], int) or isinstance(state["epoch"], bool) or state["epoch"] < 1:
        return f"the epoch is {state['epoch']!r}, not a whole number >= 1"
    previous = state.get("previous_epoch")
    if previous is not None and (
        not isinstance(previous, int) or isinstance(previous, bool) or not 0 <= previous < state["epoch"]
    ):
        return f"the previous epoch is {previous!r}"
    history = state["history"]
    if not isinstance(history, dict) or not all(isinstance(values, list) for values in history.values()):
        return "the history is not a mapping of lists"
    return None


def restore(model, directory: str | os.PathLike, log=print) -> tuple[int, dict]:
    """Loads the latest good checkpoint of a run folder into a compiled, built model.

    Returns:
        (completed epochs, history of those epochs); (0, {}) when there is no checkpoint.

    Raises:
        RuntimeError: When a checkpoint exists but neither it nor the one before loads.
    """
    state = read_state(directory)
    if state is None:
        return 0, {}
    folder = Path(directory) / CHECKPOINT_DIR
    if not model.built:
        # A subclassed model builds on its first call; one batch of zeros is enough.
        model(np.zeros((1, *model.student.input_shape[1:]), "float32"))
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    for epoch in (state["epoch"], state.get("previous_epoch")):
        if not epoch:
            continue
        try:
            model.load_weights(str(folder / _weights_name(epoch)))
        except Exception as error:  # h5py/OSError/ValueError for a truncated or corrupt file.
            log(
                f"Warning: checkpoint {folder / _weights_name(epoch)} cannot be loaded ({type(error).__name__}); "
                "trying the one before."
            )
            continue
        history = {key: values[:epoch] for key, values in state["history"].items()}
        if epoch == state["epoch"] and state.get("seed_state") is not None:
            generator = model.mixup_seed_generator
            generator.state.assign(np.asarray(state["seed_state"], dtype=generator.state.dtype))
        log(f"Resuming after epoch {epoch} from {folder}.")
        return epoch, history
    raise RunError(
        f"No checkpoint in {folder} can be loaded (both are damaged); the run cannot be resumed: start it over with "
        "--overwrite."
    )


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the learning rate in force at the end of each epoch to the logs (history.csv, TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        optimizer = self.model.optimizer
        rate = optimizer.learning_rate
        logs["learning_rate"] = float(
            keras.ops.convert_to_numpy(rate(optimizer.iterations) if callable(rate) else rate)
        )


class HistoryLogger(keras.callbacks.CSVLogger):
    """Keras's `CSVLogger`, numbering epochs from 1 as the run's log and metrics.json do.

    Appending (a resumed run) to a history.csv that an earlier version of
    this library began, with epochs from 0 and the training accuracy on mixed
    labels named `accuracy`, goes on in that file's numbering and columns, so
    that a file reads one way from its first row to its last
    (`stkd_keras.reporting.read_history` reads both kinds).

    A row is written when an epoch ends, just before its checkpoint is
    committed: a run killed between the two resumes from the epoch before,
    so on resume the rows past the `committed_epochs` are dropped first and
    every epoch keeps one row.

    Args:
        filename: The CSV file.
        append: Whether to append to an existing file (resume) or overwrite it.
        committed_epochs: On resume, the epochs the restored checkpoint holds
            (None: keep every row already in the file).
    """

    def __init__(self, filename: str | os.PathLike, append: bool = False, committed_epochs: int | None = None):
        super().__init__(str(filename), append=append)
        self.committed_epochs = committed_epochs
        self.first_epoch = 1
        self.columns: list[str] | None = None

    def on_train_begin(self, logs=None):
        self.first_epoch, self.columns = 1, None
        if self.append and os.path.isfile(self.filename):
            with open(self.filename, newline="") as f:
                rows = list(csv.reader(f))
            header, body = (rows[0], rows[1:]) if rows else (None, [])
            if header and body and header[0] == "epoch" and body[0][0].isdigit():
                self.columns, self.first_epoch = header, int(body[0][0])
                kept = [
                    row
                    for row in body
                    if self.committed_epochs is None
                    or row
                    and row[0].isdigit()
                    and int(row[0]) - self.first_epoch < self.committed_epochs
                ]
                if len(kept) < len(body):
                    _write_csv_atomically(self.filename, [header, *kept])
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.columns:  # a file begun with `accuracy` for the training accuracy on mixed labels keeps that column
            for name in [name for name in logs if name.startswith("mixed_") and name not in self.columns]:
                if name.removeprefix("mixed_") in self.columns:
                    logs[name.removeprefix("mixed_")] = logs.pop(name)
        super().on_epoch_end(epoch + self.first_epoch, logs)


def _write_csv_atomically(path: str | os.PathLike, rows: list[list[str]]) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="") as f:
            csv.writer(f).writerows(rows)

    atomic_write(path, write)


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
    """The path of the first weight or non-trainable variable (e.g. a BatchNorm moving variance) of `model` holding NaN or inf, or None."""
    for variable in model.weights:
        if not np.isfinite(keras.ops.convert_to_numpy(variable)).all():
            return variable.path
    return None


def tensorboard_callback(folder: str | os.PathLike, log=print) -> keras.callbacks.Callback | None:
    """Keras's TensorBoard callback where TensorFlow is installed (it writes through `tf.summary`), else `TensorBoardScalars`.

    Without TensorFlow and without the `tensorboard` package, None, and a
    warning: the run goes on without event files (history.csv holds the same figures).
    """
    if tensorflow_available():
        return TensorBoard(str(folder), write_graph=False)
    if importlib.util.find_spec("tensorboard") is None:
        log(
            "Warning: neither TensorFlow nor the tensorboard package is installed, so this run writes no TensorBoard "
            "logs "
            "(history.csv holds the same figures); pip install tensorboard to have them."
        )
        return None
    return TensorBoardScalars(folder)


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback, its epoch figures at steps counted from 1 (as history.csv and metrics.json count)."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)


class TensorBoardScalars(keras.callbacks.Callback):
    """The epoch figures as TensorBoard event files, written without TensorFlow.

    It uses the `tensorboard` package's own summary writer and lays the files
    out as Keras's TensorBoard callback does: `train/` holds `epoch_<metric>`
    and `validation/` the `val_` metrics under the same names, so TensorBoard
    draws a run trained on JAX or PyTorch like one trained on TensorFlow.
    Steps are epochs counted from 1, as `TensorBoard` above writes them.
    """

    def __init__(self, folder: str | os.PathLike):
        super().__init__()
        self.folder = Path(folder)
        self._writers = {}

    def _writer(self, split: str):
        if split not in self._writers:
            from tensorboard.summary import Writer

            self._writers[split] = Writer(str(self.folder / split))
        return self._writers[split]

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            split, name = ("validation", key[len("val_") :]) if key.startswith("val_") else ("train", key)
            self._writer(split).add_scalar(f"epoch_{name}", float(value), step=epoch + 1)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
