"""Training runs: train a teacher, distil a student, resume either, each into its run folder.

The parts of a run live in their own modules: the configuration
(`stkd_keras.config.RunConfig`), run folders and staging (`stkd_keras.runs`),
checkpoints and the per-epoch logs (`stkd_keras.checkpointing`), the
distribution engines (`stkd_keras.distribute`), evaluation
(`stkd_keras.evaluation`). This module assembles them: `train` builds one run
(seeding, precision, distribution, data, teacher and student, optimizer,
callbacks) and trains it into a folder; `train_teacher`, `distill` and
`resume` are the runs the command line starts, callable from Python too.

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
import json
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from stkd_keras import backend, checkpointing, distribute, progress
from stkd_keras import data as data_lib
from stkd_keras import methods as methods_lib
from stkd_keras.config import RunConfig, teacher_config_for  # noqa: F401  (teacher_config_for stays importable from here)
from stkd_keras.distiller import Distiller
from stkd_keras.evaluation import (  # noqa: F401  (evaluation's names stay importable from here)
    check_model_fits_dataset,
    environment,
    evaluate,
    evaluate_model,
    image_size_pair,
    load_model,
)
from stkd_keras.files import atomic_write, file_sha256
from stkd_keras.models import get_model
from stkd_keras.runs import (  # noqa: F401  (run-folder names stay importable from here)
    METRICS_FILE,
    MODEL_FILES,
    PREPROCESSING_FILE,
    RUN_FILE,
    RunError,
    check_output_free,
    check_teacher_outside,
    find_unfinished_run,
    model_file,
    output_path,
    read_preprocessing,
    read_run_file,
    run_directory,
    write_json,
    write_run_file,
)


def _metrics_for_training():
    return [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"),
    ]


def _summarise_history(history: dict, holdout: int | None = None) -> dict:
    """Final-epoch and best-epoch validation figures, named apart."""
    val_accuracy = history.get("val_accuracy", [])
    if not val_accuracy:
        return {}
    epochs = len(val_accuracy)
    best = int(np.argmax(val_accuracy))

    def epoch_row(index):
        row = {"epoch": index + 1}
        row.update({key: float(values[index]) for key, values in history.items() if key.startswith("val_")})
        return row

    return {
        "final_epoch": epoch_row(epochs - 1),
        "best_epoch": epoch_row(best),
        "final_val_accuracy": float(val_accuracy[-1]),
        "best_val_accuracy": float(val_accuracy[best]),
        "note": (
            f"Validation is {holdout} training images held out from training"
            if holdout
            else "Validation is the test split"
        )
        + ". The saved model is the final-epoch model; best_epoch is reported for reference only.",
    }


def train(
    config: RunConfig,
    directory: str | os.PathLike,
    role: str = "student",
    verbose: int | str = "auto",
    log=print,
    teacher_location: str | os.PathLike | None = None,
    resume: bool = False,
    setup: distribute.Setup | None = None,
    callbacks: list | None = None,
) -> dict:
    """Trains a model (teacher or student) into an existing folder and returns its metrics.

    `role="teacher"` trains `config.model` with cross-entropy alone;
    `role="student"` trains it with `config.method` (distilling from
    `config.teacher` for the teacher methods). `teacher_location` loads the
    teacher from elsewhere than `config.teacher` (a teacher trained in the
    staging folder of this run, recorded under its final path). With
    `resume=True` the run continues after the last committed checkpoint in
    `directory` (see `stkd_keras.checkpointing`). `setup` is the
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
    method = "ce" if role == "teacher" else config.method
    finished = [directory / name for name in (MODEL_FILES[role], METRICS_FILE, PREPROCESSING_FILE)]
    if resume and all(path.is_file() for path in finished):
        # Killed after its last file was written, before the run folder moved into place: the work is done.
        for leftover in (checkpointing.CHECKPOINT_DIR, _FINISHED_CHECKPOINTS):
            shutil.rmtree(directory / leftover, ignore_errors=True)
        log(f"The {role} in {directory} had finished before the run stopped; keeping it.")
        return json.loads((directory / METRICS_FILE).read_text())
    if resume and config.strategy == "multi_worker":
        raise RunError(
            "--resume is not supported with --strategy multi_worker: the workers cannot share the chief's checkpoint; "
            "restart the run."
        )
    # A multi-worker or multi-process setup must exist before the process runs a TensorFlow op or a JAX computation.
    setup = setup or distribute.setup(config.strategy, backend.name())
    previous_policy = keras.mixed_precision.global_policy()
    keras.utils.set_random_seed(config.seed)
    exit_stack = contextlib.ExitStack()
    try:
        if config.deterministic:
            exit_stack.enter_context(backend.determinism())  # and the process's own setting back afterwards
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        data_options = {
            "data_dir": config.data_dir,
            "download": config.download,
            "image_size": image_size_pair(config.image_size),
        }
        holdout = config.validation_holdout
        # Read the data once to know its size; the step-indexed training stream is built below.
        _, train_info = data_lib.load(
            config.dataset,
            "train",
            config.batch_size,
            subset=config.train_subset,
            seed=config.seed,
            holdout=holdout,
            **data_options,
        )
        if train_info.classes_present is not None and train_info.classes_present < train_info.num_classes:
            log(
                f"Warning: the training data holds examples of only {train_info.classes_present} of the "
                f"{train_info.num_classes} classes the model predicts."
            )
        val_data, val_info = data_lib.load(
            config.dataset,
            "validation" if holdout else "test",
            max(config.batch_size, 256),
            subset=config.val_subset,
            holdout=holdout,
            **data_options,
        )
        # Variables (student, teacher, optimizer, metrics) are created in the distribution's scope. Under a
        # tf.distribute strategy Keras's fit splits each global batch over the replicas and the Distiller
        # divides its loss by the replica count; under keras.distribution the step sees the global batch.
        exit_stack.enter_context(setup.scope())
        val_batches = progress.batches(val_info.num_examples, max(config.batch_size, 256))
        val_images = f"{val_info.num_examples:,} {'held-out training' if holdout else 'test'} images"

        def pass_progress(label: str):  # None under --quiet (verbose=0): silence, as asked
            return progress.PassProgress(val_batches, label, log) if verbose != 0 else None

        teacher_progress = pass_progress(f"Measuring the teacher on {val_images}")
        teacher, teacher_summary = _load_teacher(
            config, role, method, teacher_location, val_data, val_info, log, teacher_progress
        )
        model = get_model(config.model, train_info.num_classes, train_info.input_shape)
        distiller = Distiller(
            model, teacher, method=method, seed=config.seed, **(config.method_options if role == "student" else {})
        )
        # Full batches from an endless stream: an epoch is `steps` batches (one pass, rounded down).
        steps = config.steps_per_epoch or max(1, train_info.num_examples // config.batch_size)
        distiller.compile(
            optimizer=make_optimizer(config, steps), metrics=_metrics_for_training(), jit_compile=config.jit_compile
        )
        initial_epoch, past_history = checkpointing.restore(distiller, directory, log) if resume else (0, {})
        _build_before_fit(distiller, train_info, config.batch_size // setup.process_count)
        if setup.description:
            log(setup.description)
        if initial_epoch >= config.epochs:
            # Killed after its last checkpoint but before the model was saved: nothing is left to train.
            log(f"All {config.epochs} epochs were committed before the run stopped; saving its model and metrics.")
            train_seconds = 0.0
        else:
            train_data, _ = data_lib.load(
                config.dataset,
                "train",
                config.batch_size,
                subset=config.train_subset,
                seed=config.seed,
                holdout=holdout,
                stream=True,
                start_step=initial_epoch * steps,
                **data_options,
                **_shard(setup),
            )
            log(
                f"Training {role} {model.name} ({model.count_params():,} parameters) with method {method!r} on "
                f"{train_info.name} ({train_info.num_examples} training images) for {config.epochs} epoch(s) of "
                f"{steps} steps "
                f"on the {backend.name()} backend"
                + (f", resuming at epoch {initial_epoch + 1}." if initial_epoch else ".")
            )
            guard = checkpointing.StopOnNonFinite()
            run_callbacks = _run_callbacks(directory, guard, initial_epoch, past_history, log)
            started = time.perf_counter()
            distiller.fit(
                train_data,
                validation_data=val_data,
                epochs=config.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps,
                shuffle=False,  # The pipeline shuffles.
                # Keras's fit shows nothing while it validates: a long validation (JAX, PyTorch on CPU) gets its own progress.
                callbacks=[
                    *run_callbacks,
                    *filter(None, [pass_progress(f"Validating on {val_images}")]),
                    *(callbacks or []),
                ],
                verbose=verbose,
            )
            train_seconds = time.perf_counter() - started
            if guard.failure:
                state = checkpointing.read_state(directory)
                kept = f"the last good checkpoint (epoch {state['epoch']}) is kept" if state else "no epoch completed"
                raise RunError(f"Training diverged: {guard.failure}; {kept}. {guard.advice()}")
        history = checkpointing.read_state(directory)["history"]
        model_path = directory / MODEL_FILES[role]
        atomic_write(model_path, model.save)
    finally:
        exit_stack.close()  # leaves the distribution's scope, also on errors
        keras.mixed_precision.set_global_policy(previous_policy)

    metrics = {
        "role": role,
        "model": model.name,
        "parameters": int(model.count_params()),
        "method": method,
        **_summarise_history(history, config.validation_holdout),
        "teacher": teacher_summary,
        "train_seconds": round(train_seconds, 2),
        "resumed_at_epoch": initial_epoch or None,
        "seed": config.seed,
        "backend": backend.name(),
        "replicas": setup.replicas,
        "config": config.to_dict(),
        "dataset": {"train": train_info.to_dict(), "validation": val_info.to_dict()},
        "environment": environment(),
    }
    write_json(directory / METRICS_FILE, metrics)
    write_json(directory / PREPROCESSING_FILE, preprocessing_record(train_info, config.image_size))
    # Renamed first (atomic), then deleted: a kill part-way through never leaves a half-deleted checkpoint that
    # --resume would read as "no epoch committed".
    if (directory / checkpointing.CHECKPOINT_DIR).exists():
        os.replace(directory / checkpointing.CHECKPOINT_DIR, directory / _FINISHED_CHECKPOINTS)
    shutil.rmtree(directory / _FINISHED_CHECKPOINTS, ignore_errors=True)
    return metrics


# Where a finished run's checkpoints go to be deleted.
_FINISHED_CHECKPOINTS = ".checkpoints-finished"


# How a run is given its teacher, in messages: the config field, and the command line's option.
TEACHER = "RunConfig.teacher (--teacher on the command line)"


def _load_teacher(
    config: RunConfig, role: str, method: str, location, val_data, val_info, log, progress=None
) -> tuple[keras.Model | None, dict | None]:
    """The frozen teacher of a method that needs one, measured on the validation split (None, None otherwise).

    `progress` (a `stkd_keras.progress.PassProgress`, or None for silence) follows the measurement.
    """
    unit = methods_lib.check_teacher(method, config.teacher if role == "student" else None, TEACHER)
    if not unit.needs_teacher:
        return None, None
    teacher = load_model(location or config.teacher, role="teacher")
    check_model_fits_dataset(teacher, val_info, "teacher")
    summary = {"path": str(config.teacher), "name": teacher.name, **evaluate_model(teacher, val_data, progress)}
    log(f"Teacher {teacher.name}: val top-1 {summary['accuracy']:.4f} on {val_info.num_examples} images.")
    if summary["accuracy"] < 1.5 / val_info.num_classes:
        log(
            f"Warning: the teacher is near chance ({summary['accuracy']:.4f} against {1 / val_info.num_classes:.4f}); "
            "distilling from it teaches noise. Check the teacher and the dataset."
        )
    return teacher, summary


def _run_callbacks(directory: Path, guard, initial_epoch: int, past_history: dict, log) -> list:
    """The callbacks of every run: divergence guard, learning-rate log, history.csv, checkpoints, TensorBoard."""
    tensorboard = checkpointing.tensorboard_callback(directory / "tensorboard", log)
    return [
        guard,
        checkpointing.LearningRateLogger(),
        checkpointing.HistoryLogger(
            directory / "history.csv", append=initial_epoch > 0, committed_epochs=initial_epoch
        ),
        checkpointing.RunCheckpoint(directory, past_history, guard),
        *([tensorboard] if tensorboard else []),
    ]


def _build_before_fit(distiller: Distiller, info: data_lib.DatasetInfo, batch_size: int) -> None:
    """Builds the Distiller, its metrics and loss trackers on a batch of zeros, so that `fit` reads the stream once.

    Keras's JAX and PyTorch trainers build an unbuilt model inside `fit` from
    a batch they take from the training data, then start the data again. A
    `tf.data` stream reshuffles on every new pass it is asked for (and an
    abandoned pass keeps drawing shuffle seeds while it prefetches), so the
    batches after that restart would no longer be batch k = f(seed, k), and a
    resumed run (its model already built) would see other batches than an
    uninterrupted one. Evaluating one batch of zeros builds everything first;
    it changes no weight, no optimizer state and no mixup draw.
    """
    images = np.zeros((batch_size, *info.input_shape), "float32")
    distiller.evaluate(images, np.zeros((batch_size,), "int64"), batch_size=batch_size, verbose=0)


def _shard(setup: distribute.Setup) -> dict:
    """The data options of one process of a multi-process JAX run: its share of every global batch."""
    if setup.process_count == 1:
        return {}
    return {"shard": (setup.process_index, setup.process_count)}


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
    # A teacher to train first stands for the teacher; a method without one ignores it (the command line always makes one).
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
    if recorded != backend.name():
        raise RunError(
            f"The run of {output} started on the {recorded} backend and must continue on it; this process runs Keras "
            "on "
            f"{backend.name()} (the command line switches by itself: stkd-keras distill --resume {output})."
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
    setup = distribute.setup(config.strategy, backend.name(), cluster)
    if resume and setup.process_count > 1:
        raise RunError(
            "--resume is not supported for a run of several processes: only process 0 holds the checkpoint; restart "
            "the run."
        )
    if teacher_config is not None and not resume:
        # The teacher trains first: a dataset that cannot be read stops the run before it, not after.
        data_lib.load(
            config.dataset,
            "train",
            config.batch_size,
            subset=config.train_subset,
            seed=config.seed,
            holdout=config.validation_holdout,
            data_dir=config.data_dir,
            download=config.download,
            image_size=image_size_pair(config.image_size),
        )
    if not setup.chief:  # The chief writes the run; the others train into a temporary folder.
        directory, final = distribute.worker_directory(), None
    else:
        directory, final = run_directory(output, overwrite, resume=resume, log=log), output
    with directory as staging:
        staging = Path(staging)
        if not resume:
            record = {"command": command, "backend": backend.name()}
            if teacher_config is not None:
                config = dataclasses.replace(config, teacher=str((final or staging).absolute() / "teacher"))
            elif config.teacher is not None:
                record["teacher_sha256"] = teacher_checksum(
                    config.teacher
                )  # a teacher swapped before --resume is refused
            if final is not None and final.is_dir() and any(final.iterdir()):
                record["replaces_finished_run"] = (
                    True  # started with --overwrite: --resume may continue it over the old run
                )
            write_run_file(staging, {**record, "config": config, "teacher_config": teacher_config})
        if command == "train-teacher":
            metrics = train(config, staging, role="teacher", verbose=verbose, log=log, resume=resume, setup=setup)
        else:
            teacher_location = None
            if teacher_config is not None:
                teacher_dir = staging / "teacher"
                if not (teacher_dir / METRICS_FILE).is_file():
                    log(
                        f"No trained teacher given: training a {teacher_config.model} teacher first (saved to "
                        f"{(final or staging) / 'teacher'})."
                    )
                    teacher_dir.mkdir(exist_ok=True)
                    train(
                        teacher_config,
                        teacher_dir,
                        role="teacher",
                        verbose=verbose,
                        log=log,
                        resume=resume,
                        setup=setup,
                    )
                teacher_location = teacher_dir
            metrics = train(
                config,
                staging,
                role="student",
                verbose=verbose,
                log=log,
                teacher_location=teacher_location,
                resume=resume,
                setup=setup,
            )
    return RunResult(metrics, final)


def make_optimizer(config: RunConfig, steps_per_epoch: int):
    """SGD (momentum, decoupled weight decay) or Adam with the configured learning-rate schedule."""
    if config.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps_per_epoch * config.epochs)
    elif config.lr_schedule == "step":
        boundaries = [epoch * steps_per_epoch for epoch in config.lr_decay_epochs]
        values = [config.learning_rate * config.lr_decay_rate**i for i in range(len(boundaries) + 1)]
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    else:
        rate = config.learning_rate
    if config.optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=config.weight_decay or None)
    return keras.optimizers.SGD(rate, momentum=config.momentum, weight_decay=config.weight_decay or None)


def preprocessing_record(info: data_lib.DatasetInfo, image_size: int | None = None) -> dict:
    """What a model needs applied to its inputs: stored beside it, reused by evaluation and export."""
    return {
        "dataset": info.name,
        "input_shape": list(info.input_shape),
        "image_size": image_size,
        "mean": list(info.mean),
        "std": list(info.std),
        "class_names": list(info.class_names),
        "pixel_scale": "pixels / 255, then (x - mean) / std per channel",
    }
