"""Training runs: train a teacher, distil a student, resume either, each into its run folder.

The parts of a run live in their own modules: the configuration
(`stkd_keras.config.RunConfig`), run folders and staging (`stkd_keras.runs`),
checkpoints (`stkd_keras.checkpoints`), the per-epoch logs
(`stkd_keras.run_logs`), the divergence guard (`stkd_keras.divergence`), the
distribution engines (`stkd_keras.distribution`), evaluation
(`stkd_keras.evaluation`), and the steps of training one model
(`stkd_keras.run_steps`). This module assembles them: `train` prepares one
model's run (seeding, precision, distribution, data, teacher and student,
optimizer, callbacks), fits it and finishes it into a folder; `train_teacher`,
`distill` and `resume` are the runs the command line starts, callable from
Python too.

A run trains on the Keras backend of the process (TensorFlow, JAX or
PyTorch); `metrics.json` records which, and on how many devices.

Every finished run folder holds:
- `teacher.keras` or `student.keras`: the model after the last epoch,
- `history.csv`: one row of training/validation metrics per epoch,
- `tensorboard/`: the same figures as TensorBoard event files,
- `preprocessing.json`: the input shape, normalisation mean/std and class
  names the model was trained with, which evaluation and export reuse,
- `metrics.json`: final-epoch and best-epoch validation accuracy (named
  apart: the saved model is the final-epoch one), the resolved config, the
  seed, the dataset, the backend and the library versions,
- `run.json`: how the run was started (its configs and backend), for `resume`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from stkd_keras import architectures, backend_ops, checkpoints, distribution
from stkd_keras import methods as methods_lib
from stkd_keras.config import RunConfig
from stkd_keras.files import atomic_write, file_sha256
from stkd_keras.run_steps import (
    TEACHER,
    finish_run,
    finished_run_metrics,
    fit_run,
    prepare_run,
    read_training_split,
)
from stkd_keras.runs import (
    METRICS_FILE,
    MODEL_FILES,
    RUN_FILE,
    RunError,
    check_teacher_outside,
    find_unfinished_run,
    model_file,
    output_path,
    read_run_file,
    run_directory,
    write_run_file,
)


def train(
    config: RunConfig,
    directory: str | os.PathLike,
    role: str = "student",
    verbose: int | str = "auto",
    log=print,
    teacher_location: str | os.PathLike | None = None,
    resume: bool = False,
    setup: distribution.Setup | None = None,
    callbacks: list | None = None,
) -> dict:
    """Trains a model (teacher or student) into an existing folder and returns its metrics.

    `role="teacher"` trains `config.model` with cross-entropy alone;
    `role="student"` trains it with `config.method` (distilling from
    `config.teacher` for the teacher methods). `teacher_location` loads the
    teacher from elsewhere than `config.teacher` (a teacher trained in the
    staging folder of this run, recorded under its final path). With
    `resume=True` the run continues after the last committed checkpoint in
    `directory` (see `stkd_keras.checkpoints`). `setup` is the
    distribution of the run (default: `config.strategy` set up here);
    `callbacks` are passed to `fit` after the run's own.

    Raises:
        ValueError: For invalid hyperparameters, or a strategy the backend cannot run.
        RunError: For a missing/unloadable teacher, a model/dataset mismatch,
            or a diverged loss (the last good checkpoint is kept).
        DatasetNotFoundError: When the dataset is not available.
    """
    config.validate()
    directory = Path(directory)
    finished = finished_run_metrics(directory, role, log) if resume else None
    if finished is not None:
        return finished
    if resume and config.strategy == "multi_worker":
        raise RunError(
            "--resume is not supported with --strategy multi_worker: the workers cannot share the chief's checkpoint; "
            "restart the run."
        )
    # A multi-worker or multi-process setup must exist before the process runs a TensorFlow op or a JAX computation.
    setup = setup or distribution.setup(config.strategy, backend_ops.name())
    contexts = contextlib.ExitStack()
    try:
        run = prepare_run(
            config,
            directory,
            role,
            setup,
            contexts,
            teacher_location=teacher_location,
            resume=resume,
            verbose=verbose,
            log=log,
        )
        train_seconds = fit_run(run, verbose, log, callbacks)
        history = checkpoints.read_state(directory)["history"]
        atomic_write(directory / MODEL_FILES[role], run.model.save)
    finally:
        contexts.close()  # leaves the distribution's scope and puts the precision policy back, also on errors
    return finish_run(run, history, train_seconds)


@dataclasses.dataclass
class RunResult:
    """A finished run: its metrics and its folder (None in a worker process, whose chief writes the run)."""

    metrics: dict
    output: Path | None


def train_teacher(
    config: RunConfig,
    output: str | os.PathLike,
    overwrite: bool = False,
    verbose: int | str = "auto",
    log=print,
    cluster: dict | None = None,
) -> RunResult:
    """Trains `config.model` with cross-entropy into the run folder `output` (see the module docstring).

    Raises:
        RunError: When `output` already holds a run and `overwrite` is False, and as `train` does.
    """
    config = dataclasses.replace(config, method="ce", method_options={})
    return _run(
        "train-teacher",
        config,
        None,
        Path(output),
        resume=False,
        verbose=verbose,
        log=log,
        cluster=cluster,
        overwrite=overwrite,
    )


def distill(
    config: RunConfig,
    output: str | os.PathLike,
    teacher_config: RunConfig | None = None,
    overwrite: bool = False,
    verbose: int | str = "auto",
    log=print,
    cluster: dict | None = None,
) -> RunResult:
    """Distils `config.model` with `config.method` into the run folder `output`.

    With `teacher_config` (and no `config.teacher`), that teacher is trained
    first, into `output/teacher/`. A run killed at any moment continues with
    `resume(output)` from its last completed epoch.

    Raises:
        ValueError: For a teacher given to a method without one, none to a method that needs one
            (`methods.check_teacher`), and invalid hyperparameters.
        RunError: As `train` does.
    """
    config.validate()
    needs_teacher = methods_lib.get_method(config.method).needs_teacher
    # A teacher to train first stands for the teacher; a method without one ignores it (the command line always
    # makes one).
    methods_lib.check_teacher(
        config.method, config.teacher if config.teacher is not None or not needs_teacher else teacher_config, TEACHER
    )
    if not needs_teacher or config.teacher is not None:
        teacher_config = None
    if config.teacher is not None:
        config = dataclasses.replace(config, teacher=str(check_teacher_outside(config.teacher, output)))
    if teacher_config is not None:
        teacher_config.validate()
    warning = warmup_warning(config)
    if warning:
        log(warning)
    return _run(
        "distill",
        config,
        teacher_config,
        Path(output),
        resume=False,
        verbose=verbose,
        log=log,
        cluster=cluster,
        overwrite=overwrite,
    )


def warmup_warning(config: RunConfig) -> str | None:
    """A warning when the method's warm-up (`warmup_epochs`, e.g. DKD's 20) outlasts the run, else None.

    The distillation terms grow as min(1, epoch / warmup_epochs): a 1-epoch
    DKD run with the default 20 never gives them more than 1/20 of their weight.
    """
    warmup = getattr(config.hyperparameters(), "warmup_epochs", None)
    if warmup is None or warmup <= config.epochs:
        return None
    suggested = max(1, round(config.epochs / 12))
    return (
        f"Warning: {config.method}'s warm-up lasts {warmup} epochs, longer than this run's {config.epochs}: its "
        "distillation terms "
        f"never reach full weight (they end at {config.epochs}/{warmup} of it). mdistiller warms up over 1/12 of its "
        "run; for "
        f"this one, warmup_epochs={suggested} (--warmup-epochs {suggested})."
    )


def resume(
    output: str | os.PathLike,
    verbose: int | str = "auto",
    log=print,
    cluster: dict | None = None,
    command: str | None = None,
) -> RunResult:
    """Continues the unfinished run of `output` from its last committed epoch, with the configs in its run.json.

    `command` ("distill" or "train-teacher"), when given, must be the one that started the run.

    Raises:
        RunError: When there is no unfinished run of `output`, it started on
            another Keras backend than this process runs or with another
            command, or its teacher file changed since.
    """
    staging = find_unfinished_run(output)
    saved = read_run_file(staging)
    if saved is None:
        raise RunError(
            f"The unfinished run in {staging} recorded no run.json, so it cannot be resumed; start over with "
            "--overwrite, which discards it."
        )
    if command is not None and saved["command"] != command:
        raise RunError(
            f"The unfinished run of {output_path(output)} was started by `stkd-keras {saved['command']}`; continue it "
            "with "
            f"stkd-keras {saved['command']} --resume {output}."
        )
    recorded = saved.get("backend", "tensorflow")
    if recorded != backend_ops.name():
        raise RunError(
            f"The run of {output} started on the {recorded} backend and must continue on it; this process runs Keras "
            "on "
            f"{backend_ops.name()} (the command line switches by itself: stkd-keras distill --resume {output})."
        )
    recorded_teacher = saved.get("teacher_sha256")
    if recorded_teacher is not None and teacher_checksum(saved["config"].teacher) != recorded_teacher:
        raise RunError(
            f"The teacher {saved['config'].teacher} changed since this run started (its sha256 differs from the one in "
            f"{staging / RUN_FILE}); put the original back to resume, or start over with --overwrite."
        )
    return _run(
        saved["command"],
        saved["config"],
        saved.get("teacher_config"),
        Path(output),
        resume=True,
        verbose=verbose,
        log=log,
        cluster=cluster,
    )


def teacher_checksum(teacher: str | os.PathLike) -> str | None:
    """The sha256 of the teacher's .keras file (a run folder: its model file), or None when it is gone."""
    try:
        return file_sha256(model_file(teacher, "teacher"))
    except (RunError, OSError):
        return None


def _run(
    command, config, teacher_config, output: Path, resume: bool, verbose, log, cluster, overwrite: bool = False
) -> RunResult:
    """Runs (or resumes) a whole run: staging folder, run.json, the teacher first when asked, then the model."""
    output = output_path(output)
    setup = distribution.setup(config.strategy, backend_ops.name(), cluster)
    if resume and setup.process_count > 1:
        raise RunError(
            "--resume is not supported for a run of several processes: only process 0 holds the checkpoint; restart "
            "the run."
        )
    if teacher_config is not None and not resume:
        # The teacher trains first: a dataset that cannot be read, or a student that cannot be built for it (too
        # small an image size, a file or factory of another shape, weights that do not fit), stops the run before
        # it, not after.
        info = read_training_split(config)
        architectures.build_model(config.model, info.num_classes, info.input_shape, config.weights)
    if not setup.chief:  # The chief writes the run; the others train into a temporary folder.
        directory, final = distribution.worker_directory(), None
    else:
        directory, final = run_directory(output, overwrite, resume=resume, log=log), output
    with directory as staging:
        staging = Path(staging)
        if not resume:
            config = _write_run_record(staging, final, command, config, teacher_config)
        options = {"verbose": verbose, "log": log, "resume": resume, "setup": setup}
        if command == "train-teacher":
            metrics = train(config, staging, role="teacher", **options)
        else:
            teacher_location = _train_teacher_first(teacher_config, staging, final, options)
            metrics = train(config, staging, role="student", teacher_location=teacher_location, **options)
    return RunResult(metrics, final)


def _write_run_record(staging: Path, final: Path | None, command: str, config, teacher_config) -> RunConfig:
    """Writes a new run's run.json; returns its config, the teacher it trains first named by its final path."""
    record = {"command": command, "backend": backend_ops.name()}
    if teacher_config is not None:
        config = dataclasses.replace(config, teacher=str((final or staging).absolute() / "teacher"))
    elif config.teacher is not None:
        record["teacher_sha256"] = teacher_checksum(config.teacher)  # a teacher swapped before --resume is refused
    if final is not None and final.is_dir() and any(final.iterdir()):
        record["replaces_finished_run"] = True  # started with --overwrite: --resume may continue it over the old run
    write_run_file(staging, {**record, "config": config, "teacher_config": teacher_config})
    return config


def _train_teacher_first(teacher_config, staging: Path, final: Path | None, options: dict) -> Path | None:
    """The folder of the teacher a run trains first, trained there unless it already was; None for a given teacher.

    `options` are `train`'s verbose, log, resume and setup.
    """
    if teacher_config is None:
        return None
    teacher_dir = staging / "teacher"
    if not (teacher_dir / METRICS_FILE).is_file():
        options["log"](
            f"No trained teacher given: training a {teacher_config.model} teacher first (saved to "
            f"{(final or staging) / 'teacher'})."
        )
        teacher_dir.mkdir(exist_ok=True)
        train(teacher_config, teacher_dir, role="teacher", **options)
    return teacher_dir
