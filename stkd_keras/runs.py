"""Run folders: staging, the refusal to overwrite, run.json and the small JSON files of a run.

A run writes into a staging folder beside its output folder and renames it
into place only when it has finished, so an interrupted or failed run leaves
no half-written model under the output name, and an existing run folder is
replaced only when the caller allows it (`overwrite=True`). A staging folder
that holds a committed checkpoint (`stkd_keras.checkpointing`) or a finished
teacher is kept, for `--resume`.

Nothing here imports Keras: the command line reads a run's `run.json` (and
with it the backend the run started on) before a backend is chosen.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from stkd_keras.config import RunConfig
from stkd_keras.files import atomic_write

MODEL_FILES = {"teacher": "teacher.keras", "student": "student.keras"}
PREPROCESSING_FILE = "preprocessing.json"
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
# Where `stkd_keras.checkpointing` commits a run's state.
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"


class RunError(RuntimeError):
    """A run cannot start or finish; the message is meant for the user as it is."""


def check_output_free(output: str | os.PathLike, overwrite: bool) -> Path:
    """Refuses an output folder that already holds something, unless `overwrite`."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise RunError(f"Output {output} exists and is not a folder; choose another --output.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise RunError(f"Output folder {output} already holds a run; pass --overwrite to replace it or choose another --output.")
    return output


@contextlib.contextmanager
def run_directory(output: str | os.PathLike, overwrite: bool = False, resume: bool = False, log=print):
    """Yields a staging folder that becomes `output` only when the block finishes without error.

    A run that fails after completing an epoch keeps its staging folder (with
    its checkpoints) so that `resume=True` can continue it; one that fails
    before (bad input) leaves nothing behind.
    """
    output = Path(output).absolute()
    if resume:
        staging = find_unfinished_run(output)
        if output.exists() and any(output.iterdir()) and not overwrite:
            raise RunError(f"Output folder {output} already holds a finished run; nothing to resume.")
    else:
        check_output_free(output, overwrite)
        output.parent.mkdir(parents=True, exist_ok=True)
        for stale in output.parent.glob(f".{output.name}.partial-*"):
            if not _resumable(stale):
                shutil.rmtree(stale, ignore_errors=True)
        staging = output.parent / f".{output.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    try:
        yield staging
    except BaseException:
        if _resumable(staging):
            log(f"The unfinished run is kept in {staging}; continue it with --resume {output}.")
        else:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if output.exists():
        previous = output.parent / f".{output.name}.replaced-{os.getpid()}"
        os.replace(output, previous)
    os.replace(staging, output)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _resumable(staging: Path) -> bool:
    """A staging folder worth keeping: it holds a committed checkpoint or a finished teacher."""
    return any(staging.rglob(STATE_FILE)) or any(staging.rglob(MODEL_FILES["teacher"]))


def find_unfinished_run(output: str | os.PathLike) -> Path:
    """The staging folder of an unfinished run of `output` (the newest, if several)."""
    output = Path(output).absolute()
    candidates = sorted(output.parent.glob(f".{output.name}.partial-*"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise RunError(f"No unfinished run of {output} to resume (looked for {output.parent}/.{output.name}.partial-*).")
    return candidates[-1]



def write_run_file(directory: Path, payload: dict) -> None:
    """Records how a run was started (its resolved configs), so --resume can rebuild it."""
    def encode(value):
        return value.to_dict() if isinstance(value, RunConfig) else value

    write_json(directory / RUN_FILE, {key: encode(value) for key, value in payload.items()})


def read_run_file(directory: Path) -> dict | None:
    """The configs a run was started with, as `RunConfig`s, or None when the run never recorded them."""
    path = Path(directory) / RUN_FILE
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    for key in ("config", "teacher_config"):
        if payload.get(key) is not None:
            payload[key] = RunConfig.from_dict(payload[key])
    return payload


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Writes JSON atomically (temporary file, then rename)."""
    atomic_write(path, lambda temporary: temporary.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n"))


def read_preprocessing(model_path: str | os.PathLike) -> dict | None:
    """The `preprocessing.json` stored beside a model (or in its run folder), if any."""
    path = Path(model_path)
    candidate = (path if path.is_dir() else path.parent) / PREPROCESSING_FILE
    if not candidate.is_file():
        return None
    try:
        return json.loads(candidate.read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"Cannot read {candidate}: {error}") from None
