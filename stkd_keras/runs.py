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
import fcntl
import json
import os
import shutil
import zipfile
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


def model_file(path: str | os.PathLike, role: str = "student") -> Path:
    """The `.keras` file a path names (a run folder: its model file), checked without loading Keras.

    Raises:
        RunError: For a missing file or folder, a file without the .keras
            suffix, or one that is not a Keras archive (a .keras file is a zip).
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / MODEL_FILES[role], *(path / name for name in MODEL_FILES.values())]
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None:
            raise RunError(f"No {' or '.join(MODEL_FILES.values())} in folder {path}.")
        path = found
    if not path.exists():
        raise RunError(f"Model file {path} does not exist.")
    if not path.is_file():
        raise RunError(f"Expected a .keras model file. Received: {path}")
    if path.suffix != ".keras":
        raise RunError(f"Expected a .keras model file. Received: {path}")
    if not zipfile.is_zipfile(path):
        raise RunError(f"{path} is not a Keras model file: a .keras file is a zip archive, and this one is not.")
    return path


class RunError(RuntimeError):
    """A run cannot start or finish; the message is meant for the user as it is."""


class OutputInUse(RunError):
    """Another process holds the lock of an output folder."""


@contextlib.contextmanager
def output_lock(output: str | os.PathLike):
    """Holds an exclusive OS lock on `output` for the block; refuses at once, naming the holder, when another process has it.

    The lock is `flock` on `.NAME.lock` beside the output, so a killed process
    frees it with its file descriptors. The file holds the holder's process id
    and is removed on release; a process that locked a file another had just
    removed sees that its inode is gone and takes the lock again.

    Raises:
        OutputInUse: When another process holds the lock.
    """
    output = Path(output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    path = output.parent / f".{output.name}.lock"
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise OutputInUse(f"{output} is in use by process {holder} (lock {path}); wait for it to finish or choose another --output.") from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the file was removed by the holder that just released it: lock the new one
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        handle.close()


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

    The output is locked for the whole block (`output_lock`): a second run
    into it, `--resume` included, is refused at once. A run that fails after
    completing an epoch keeps its staging folder (with its checkpoints) so
    that `resume=True` can continue it; one that fails before (bad input)
    leaves nothing behind. A new run refuses to start beside an unfinished
    one, unless `overwrite`, which discards it.
    """
    output = Path(output).absolute()
    with output_lock(output):
        if resume:
            staging = find_unfinished_run(output)
            if output.exists() and any(output.iterdir()) and not overwrite:
                raise RunError(f"Output folder {output} already holds a finished run; nothing to resume.")
        else:
            check_output_free(output, overwrite)
            for stale in output.parent.glob(f".{output.name}.partial-*"):
                if _resumable(stale) and not overwrite:
                    raise RunError(
                        f"An unfinished run of {output} exists ({describe_unfinished(stale)}); continue it with --resume {output}, "
                        "or start over with --overwrite."
                    )
                shutil.rmtree(stale, ignore_errors=True)
            staging = output.parent / f".{output.name}.partial-{os.getpid()}"
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


def describe_unfinished(staging: Path) -> str:
    """How far an unfinished run got, e.g. "epoch 2 of 30" (or where its teacher, trained first, stands)."""
    saved = read_run_file(staging) or {}

    def of(config) -> str:
        return f" of {config.epochs}" if config is not None else ""

    if (staging / METRICS_FILE).is_file():
        return "finished, not yet moved into place"
    epoch = _committed_epoch(staging)
    if epoch is not None:
        return f"epoch {epoch}{of(saved.get('config'))}"
    if (staging / "teacher" / MODEL_FILES["teacher"]).is_file():
        return f"its teacher trained, the student at epoch 0{of(saved.get('config'))}"
    epoch = _committed_epoch(staging / "teacher")
    if epoch is not None:
        return f"its teacher at epoch {epoch}{of(saved.get('teacher_config'))}"
    return "no epoch completed"


def _committed_epoch(folder: Path) -> int | None:
    """The last epoch committed by `stkd_keras.checkpointing` in `folder`, or None."""
    try:
        return int(json.loads((folder / CHECKPOINT_DIR / STATE_FILE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _resumable(staging: Path) -> bool:
    """A staging folder worth keeping: it holds a committed checkpoint, a finished teacher, or a finished run."""
    return any(staging.rglob(STATE_FILE)) or any(staging.rglob(MODEL_FILES["teacher"])) or (staging / METRICS_FILE).is_file()


def unfinished_runs(folder: str | os.PathLike) -> list[dict]:
    """The unfinished runs that can be resumed in `folder` (at any depth) or of `folder` itself.

    Returns:
        One entry per run, sorted by output: `output` (the --output it was
        started with), `progress` (e.g. "epoch 2 of 30"), `command`
        (train-teacher or distill) and `staging` (its hidden folder).
    """
    folder = Path(folder).absolute()
    candidates = {*folder.parent.glob(f".{folder.name}.partial-*")}
    if folder.is_dir():
        candidates |= {path for path in folder.rglob(".*.partial-*") if ".partial-" in path.name}
    found = []
    for staging in candidates:
        if not staging.is_dir() or not _resumable(staging) or any(".partial-" in parent.name for parent in staging.relative_to(folder.parent).parents):
            continue
        output = staging.parent / staging.name[1 : staging.name.rindex(".partial-")]
        saved = read_run_file(staging) or {}
        found.append({"output": output, "progress": describe_unfinished(staging), "command": saved.get("command", "distill"), "staging": staging})
    return sorted(found, key=lambda run: str(run["output"]))


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


def check_preprocessing_fits(preprocessing: dict, dataset: str, model_path) -> None:
    """Refuses a dataset whose images cannot take the model's normalisation (another channel count), in one sentence.

    Raises:
        RunError: Naming the dataset the model was trained on and the one asked for.
    """
    from stkd_keras import data as data_lib

    trained_on = preprocessing.get("dataset")
    if dataset == trained_on or dataset.startswith(data_lib.FOLDER_PREFIX) or dataset not in data_lib.list_datasets():
        return
    channels = len(preprocessing.get("mean") or ())
    wanted = data_lib.get_spec(dataset).input_shape
    if channels and channels != wanted[-1]:
        shape = "x".join(str(size) for size in preprocessing.get("input_shape") or ()) or f"{channels}-channel"
        raise RunError(
            f"{model_path} was trained on {trained_on} ({shape} images) and cannot read {dataset} "
            f"({'x'.join(str(size) for size in wanted)} images); use --dataset {trained_on}, or a model trained on {dataset}."
        )
