"""The per-epoch logs of a training run: the learning rate, history.csv and TensorBoard event files.

All of them work on every Keras backend: where TensorFlow is missing (a run
on JAX or PyTorch), `tensorboard_callback` writes the event files with the
`tensorboard` package alone (`TensorBoardScalars`). Epochs are counted from
1 in every log, as the run's output and metrics.json count them.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import keras

from stkd_keras.backend_selection import tensorflow_available
from stkd_keras.files import atomic_write


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


def tensorboard_callback(folder: str | os.PathLike, log=print) -> keras.callbacks.Callback | None:
    """Keras's TensorBoard callback where TensorFlow is installed (it writes via `tf.summary`), else TensorBoardScalars.

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
    """Keras's TensorBoard callback, its epoch figures at steps counted from 1 (as history.csv and metrics.json do)."""

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
