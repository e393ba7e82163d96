"""Checkpoints of a training run that survive SIGKILL, on every Keras backend.

`RunCheckpoint` writes, after every completed epoch, the Distiller's weights
(student, teacher, optimizer state and step counter, hence the learning-rate
schedule position) to `checkpoints/epoch-K.weights.h5` and then, as the commit
point, `checkpoints/state.json` (epoch, mixup seed-generator state, history so
far, with each epoch's seconds of training as `epoch_seconds`), each through
a temporary file and `os.replace`. A kill at any moment leaves the previous
commit intact; the epoch before it is kept too, so a corrupt latest
checkpoint falls back to the one before with a clear message.
The data pipeline is a function of (seed, epoch) (`stkd_keras.data.load` with
`epochs=`), so a resumed run sees the batches an uninterrupted one sees.

Keras's `BackupAndRestore` is close, but writes weights in place (a kill mid-write
corrupts the only copy) and does not restore the mixup seed state; hence this.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from stkd_keras.divergence import StopOnNonFinite
from stkd_keras.files import atomic_write
from stkd_keras.runs import CHECKPOINT_DIR, STATE_FILE, RunError


# The history entry holding each committed epoch's wall-clock seconds (training and validation), so that a run resumed
# after a kill can count the time its earlier processes spent: see `timed_seconds`.
EPOCH_SECONDS = "epoch_seconds"


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
        # Epochs are timed only where every earlier one was (a run started by a version that did not time them
        # stays untimed), so `epoch_seconds[k]` is always epoch k + 1's.
        self.timed = len(self.history.get(EPOCH_SECONDS, [])) == history_epochs(self.history)
        self.started = None

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite(float((logs or {}).get("loss", 0.0))) or (self.guard is not None and self.guard.failure):
            return  # Never commit a diverged state: the last good checkpoint stays the latest.
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        if self.timed and self.started is not None:
            self.history.setdefault(EPOCH_SECONDS, []).append(round(time.perf_counter() - self.started, 3))
        else:
            self.timed = False
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
    for key, values in history.items():
        if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
            return f"the history's {key!r} holds a value that is not a number"
    if any(not 0 <= value < math.inf for value in history.get(EPOCH_SECONDS, [])):
        return f"the history's {EPOCH_SECONDS!r} holds a negative or infinite duration"
    return None


def history_epochs(history: dict) -> int:
    """How many epochs a committed history holds (its metrics' length; `epoch_seconds` may be shorter)."""
    return max((len(values) for key, values in history.items() if key != EPOCH_SECONDS), default=0)


def timed_seconds(history: dict, epochs: int) -> float | None:
    """The seconds the first `epochs` epochs of a committed `history` took, or None where they were not all timed."""
    seconds = history.get(EPOCH_SECONDS, [])[:epochs]
    return float(sum(seconds)) if len(seconds) == epochs else None


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
