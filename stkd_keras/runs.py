"""Run folders: staging, the refusal to overwrite, run.json and the small JSON files of a run.

A run writes into a staging folder beside its output folder and renames it
into place only when it has finished, so an interrupted or failed run leaves
no half-written model under the output name, and an existing run folder is
replaced only when the caller allows it (`overwrite=True`). A staging folder
that holds a committed checkpoint (`stkd_keras.checkpoints`) or a finished
teacher is kept, for `--resume`.

Nothing here imports Keras: the command line reads a run's `run.json` (and
with it the backend the run started on) before a backend is chosen.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

from stkd_keras.config import RunConfig
from stkd_keras.files import atomic_write

MODEL_FILES = {"teacher": "teacher.keras", "student": "student.keras"}
PREPROCESSING_FILE = "preprocessing.json"
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
# Where `stkd_keras.checkpoints` commits a run's state.
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
# The hidden folders beside an output: `.NAME.partial-PID` (a run being written), `.NAME.replaced-PID` (the run it
# replaces, for the moment of the swap). Matched by exact name, never as a glob pattern built from a user's name.
_STAGING = re.compile(r"\.(?P<output>.+)\.partial-(?P<pid>[0-9]+)", re.DOTALL)
# The longest sibling name is `.NAME.replaced-PID`, a PID having at most 7 digits on Linux (pid_max <= 2**22).
_SIBLING_OVERHEAD = len(".") + len(".replaced-") + 7


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


def output_path(output: str | os.PathLike) -> Path:
    """The folder a run or export writes: `output` made absolute, with `..` and symbolic links resolved.

    Every command resolves its output once, here, so a symlink (dangling or
    not) or a path through `..` names the same folder for the lock, the
    staging folder, the refusal to overwrite and `--resume`; the run is written
    where the link points.

    Raises:
        RunError: When the folder's name leaves no room for the hidden names
            beside it (`.NAME.partial-PID`) within the file system's limit.
    """
    resolved = Path(os.path.realpath(os.path.abspath(output)))
    limit = _name_max(resolved.parent) - _SIBLING_OVERHEAD
    size = len(os.fsencode(resolved.name))
    if size > limit:
        raise RunError(
            f"The output name {resolved.name[:40]}... is {size} bytes long; at most {limit} fit beside the hidden "
            "folders a run "
            "keeps next to it (.NAME.partial-PID): choose a shorter --output."
        )
    return resolved


def _name_max(folder: Path) -> int:
    """The file system's longest file name under `folder` (its nearest existing ancestor), 255 where it cannot say."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return os.pathconf(candidate, "PC_NAME_MAX")
            except (OSError, ValueError):
                break
    return 255


def staging_folders(output: Path) -> list[Path]:
    """The staging folders (`.NAME.partial-PID`) of `output`, oldest first, matched by exact name."""
    try:
        entries = list(output.parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        match = _STAGING.fullmatch(entry.name)
        if match and match["output"] == output.name and entry.is_dir() and not entry.is_symlink():
            found.append(entry)
    return sorted(found, key=lambda path: (path.stat().st_mtime, path.name))


def check_teacher_outside(teacher: str | os.PathLike, output: str | os.PathLike) -> Path:
    """The teacher's path resolved (`..` and symbolic links followed), refused when its model file lies inside `output`.

    Replacing the output would delete the teacher the run reads, and the run's
    metrics.json would name a missing file. The resolved path is the one a
    run records, so no spelling of the path slips past the comparison.

    Raises:
        RunError: When the teacher's model file lies inside `output`, or is missing.
    """
    resolved = Path(os.path.realpath(teacher))
    folder = output_path(output)
    if model_file(resolved, "teacher").is_relative_to(folder):
        raise RunError(
            f"The teacher {resolved} lies inside {folder}, which this run would replace; copy the teacher elsewhere "
            "and pass "
            "that copy as --teacher, or choose another --output."
        )
    return resolved


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` is a stkd-keras run: it holds the run's own record, run.json."""
    return (folder / RUN_FILE).is_file()


class OutputInUse(RunError):
    """Another process holds the lock of an output folder."""


@contextlib.contextmanager
def output_lock(output: str | os.PathLike):
    """Holds an exclusive OS lock on `output` for the block; refuses at once, naming the holder, if another has it.

    The lock is `flock` on `.NAME.lock` beside the output, so a killed process
    frees it with its file descriptors. The file holds the holder's process id
    and is removed on release; a process that locked a file another had just
    removed sees that its inode is gone and takes the lock again.

    Raises:
        OutputInUse: When another process holds the lock.
    """
    output = output_path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    path = output.parent / f".{output.name}.lock"
    while True:
        try:
            handle = open(path, "a+")
        except OSError as error:
            error.filename = str(output)  # e.g. a read-only file system: name the folder asked for, not the lock file
            raise
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise OutputInUse(
                f"{output} is in use by process {holder} (lock {path}); wait for it to finish or choose another "
                "--output."
            ) from None
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
    """Refuses an output folder that already holds something, unless `overwrite` and it is a run (or empty).

    `--overwrite` replaces a stkd-keras run folder (`is_run_folder`), never a
    folder of other files.
    """
    output = output_path(output)
    if output.exists() and not output.is_dir():
        raise RunError(f"Output {output} exists and is not a folder; choose another --output.")
    if output.is_dir() and any(output.iterdir()):
        if not is_run_folder(output):
            raise RunError(
                f"Output folder {output} holds files that are not a stkd-keras run (it has no {RUN_FILE}); "
                "--overwrite replaces only a run folder, so choose another --output."
            )
        if not overwrite:
            raise RunError(
                f"Output folder {output} already holds a run; pass --overwrite to replace it or choose another "
                "--output."
            )
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
    output = output_path(output)
    with output_lock(output):
        if resume:
            staging = find_unfinished_run(output)
            if output.exists() and any(output.iterdir()):
                if not (read_run_file(staging) or {}).get("replaces_finished_run"):
                    raise RunError(f"Output folder {output} already holds a finished run; nothing to resume.")
                log(
                    f"Resuming the unfinished run started with --overwrite ({describe_unfinished(staging)}); the "
                    "finished run in "
                    f"{output} stays until this one finishes and replaces it."
                )
        else:
            check_output_free(output, overwrite)
            for stale in staging_folders(output):
                if _resumable(stale) and not overwrite:
                    resumable = (stale / RUN_FILE).is_file()
                    raise RunError(
                        f"An unfinished run of {output} exists ({describe_unfinished(stale)}); "
                        + (
                            f"continue it with --resume {output}, or start over with --overwrite."
                            if resumable
                            else f"it cannot be resumed (its {RUN_FILE} is missing), "
                            "so start over with --overwrite, which discards it."
                        )
                    )
                shutil.rmtree(stale, ignore_errors=True)
            staging = output.parent / f".{output.name}.partial-{os.getpid()}"
            staging.mkdir()
        try:
            yield staging
        except BaseException as error:
            if isinstance(error, OSError) and error.filename is None:
                error.filename = str(staging)  # e.g. a full disk met inside a writer that does not say where
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
    try:
        saved = read_run_file(staging) or {}
    except RunError:
        saved = {}  # a damaged run.json: the epochs still show, without their total

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
    """The last epoch committed by `stkd_keras.checkpoints` in `folder`, or None."""
    try:
        return int(json.loads((folder / CHECKPOINT_DIR / STATE_FILE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _resumable(staging: Path) -> bool:
    """A staging folder worth keeping: it holds a committed checkpoint, a finished teacher, or a finished run."""
    return (
        any(staging.rglob(STATE_FILE))
        or any(staging.rglob(MODEL_FILES["teacher"]))
        or (staging / METRICS_FILE).is_file()
    )


def unfinished_runs(folder: str | os.PathLike) -> list[dict]:
    """The unfinished runs that can be resumed in `folder` (at any depth) or of `folder` itself.

    Returns:
        One entry per run, sorted by output: `output` (the --output it was
        started with), `progress` (e.g. "epoch 2 of 30"), `command`
        (train-teacher or distill) and `staging` (its hidden folder).
    """
    folder = output_path(folder)
    candidates = {*staging_folders(folder)}
    if folder.is_dir():
        candidates |= {path for path in folder.rglob(".*.partial-*") if _STAGING.fullmatch(path.name)}
    found = []
    for staging in candidates:
        if (
            not staging.is_dir()
            or not _resumable(staging)
            or any(_STAGING.fullmatch(parent.name) for parent in staging.relative_to(folder.parent).parents)
        ):
            continue
        output = staging.parent / _STAGING.fullmatch(staging.name)["output"]
        try:
            saved, damaged = read_run_file(staging) or {}, None
        except RunError as error:
            saved, damaged = {}, str(error)
        progress = describe_unfinished(staging)
        if damaged or not (staging / RUN_FILE).is_file():
            progress += f"; it cannot be resumed ({damaged or f'its {RUN_FILE} is missing'})"
        found.append(
            {
                "output": output,
                "progress": progress,
                "command": saved.get("command", "distill"),
                "staging": staging,
                "resumable": damaged is None and (staging / RUN_FILE).is_file(),
            }
        )
    return sorted(found, key=lambda run: str(run["output"]))


def find_unfinished_run(output: str | os.PathLike) -> Path:
    """The staging folder of an unfinished run of `output` (the newest, if several)."""
    output = output_path(output)
    candidates = staging_folders(output)
    if not candidates:
        raise RunError(
            f"No unfinished run of {output} to resume (looked for {output.parent}/.{output.name}.partial-PID)."
        )
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
    try:
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict) or not isinstance(payload.get("command"), str):
            raise ValueError("it is not a run record")
        for key in ("config", "teacher_config"):
            if payload.get(key) is not None:
                payload[key] = RunConfig.from_dict(payload[key])
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise RunError(f"{path} is damaged ({error}); the run it describes cannot be read.") from None
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
            f"({'x'.join(str(size) for size in wanted)} images); use --dataset {trained_on}, or a model trained on "
            f"{dataset}."
        )


def check_evaluable(model_path: str | os.PathLike, dataset: str) -> None:
    """Checks without Keras that a model can be evaluated on `dataset`, so a mistake is answered before it loads.

    An exported .tflite / .onnx file must exist; a Keras model must be a .keras file (or its run folder) whose
    recorded preprocessing, if any, fits the dataset.

    Raises:
        RunError: For a missing or non-Keras model file, or a dataset the model's normalisation cannot take.
    """
    if Path(model_path).suffix in (".tflite", ".onnx"):
        if not Path(model_path).is_file():
            raise RunError(f"Model file {model_path} does not exist.")
        return
    model_file(model_path)
    preprocessing = read_preprocessing(model_path)
    if preprocessing is not None:
        check_preprocessing_fits(preprocessing, dataset, model_path)


def evaluation_file(model_path: str | os.PathLike, dataset: str, split: str) -> Path:
    """Where an evaluation's results go unless told: beside the model, named for the dataset and split.

    `evaluation_fashion_mnist_test.json` for a Keras model (or its run folder); an exported file's name comes
    first (`evaluation_student_int8_tflite_fashion_mnist_test.json`); a `folder:PATH` dataset is named
    `folder-<last part of PATH>`.
    """
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    label = f"folder-{Path(dataset[len('folder:') :]).name}" if dataset.startswith("folder:") else dataset
    if model_path.suffix in (".tflite", ".onnx"):
        return folder / f"evaluation_{model_path.name.replace('.', '_')}_{label}_{split}.json"
    return folder / f"evaluation_{label}_{split}.json"
