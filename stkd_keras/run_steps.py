"""Training one model into a run folder in three steps: prepare, fit, finish (`stkd_keras.training.train`).

`prepare_run` seeds the process, reads the data, loads and measures the
teacher, builds the student and its Distiller, compiles it and restores a
resumed run's checkpoint, and returns a `PreparedRun`; `fit_run` trains the
epochs left; `finish_run` writes metrics.json and preprocessing.json and
deletes the checkpoints. `finished_run_metrics` answers a resumed run that had
already finished.
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

from stkd_keras import architectures, backend_ops, checkpoints, distribution, divergence, progress, run_logs
from stkd_keras import data as data_lib
from stkd_keras import methods as methods_lib
from stkd_keras.config import RunConfig
from stkd_keras.distiller import Distiller
from stkd_keras.evaluation import check_model_fits_dataset, environment, evaluate_model, image_size_pair, load_model
from stkd_keras.input_adapter import adapt_teacher
from stkd_keras.optimizers import make_optimizer
from stkd_keras.runs import (
    CHECKPOINT_DIR,
    METRICS_FILE,
    MODEL_FILES,
    PREPROCESSING_FILE,
    RunError,
    read_preprocessing,
    write_json,
)

# Where a finished run's checkpoints go to be deleted.
_FINISHED_CHECKPOINTS = ".checkpoints-finished"

# How a run is given its teacher, in messages: the config field, and the command line's option.
TEACHER = "RunConfig.teacher (--teacher on the command line)"


@dataclasses.dataclass
class PreparedRun:
    """What `prepare_run` made of a run, for `fit_run` and `finish_run`: its models, data, steps and restored state."""

    config: RunConfig
    directory: Path
    role: str
    method: str
    setup: distribution.Setup
    model: keras.Model
    distiller: Distiller
    input_options: dict  # what the model's input asks of `data.load` beyond the config (`model_input_options`)
    train_info: data_lib.DatasetInfo
    val_data: object
    val_info: data_lib.DatasetInfo
    validation_label: str  # "10,000 test images", in progress labels
    teacher_summary: dict | None
    steps: int  # per epoch
    initial_epoch: int
    past_history: dict


def finished_run_metrics(directory: Path, role: str, log=print) -> dict | None:
    """The metrics of a resumed run whose every file was written (its leftover checkpoints deleted), else None."""
    finished = [directory / name for name in (MODEL_FILES[role], METRICS_FILE, PREPROCESSING_FILE)]
    if not all(path.is_file() for path in finished):
        return None
    # Killed after its last file was written, before the run folder moved into place: the work is done.
    for leftover in (CHECKPOINT_DIR, _FINISHED_CHECKPOINTS):
        shutil.rmtree(directory / leftover, ignore_errors=True)
    log(f"The {role} in {directory} had finished before the run stopped; keeping it.")
    return json.loads((directory / METRICS_FILE).read_text())


def prepare_run(
    config: RunConfig,
    directory: Path,
    role: str,
    setup: distribution.Setup,
    contexts: contextlib.ExitStack,
    *,
    teacher_location: str | os.PathLike | None = None,
    resume: bool = False,
    verbose: int | str = "auto",
    log=print,
) -> PreparedRun:
    """Seeds the process and builds, compiles and (with `resume`) restores a run's Distiller, ready to fit.

    Sets the precision policy of `config` and enters the run's determinism and
    the distribution's scope into `contexts`, which the caller closes after
    the model is saved: closing it also puts the process's policy back.
    """
    method = "ce" if role == "teacher" else config.method
    _seed_and_precision(config, contexts)
    native_info = _read_training_info(config, log)
    # Variables (student, teacher, optimizer, metrics) are created in the distribution's scope. Under a
    # tf.distribute strategy Keras's fit splits each global batch over the replicas and the Distiller
    # divides its loss by the replica count; under keras.distribution the step sees the global batch.
    contexts.enter_context(setup.scope())
    teacher = _load_teacher(config, role, method, teacher_location)
    model, inputs, train_info, (val_data, val_info) = _model_and_its_data(config, native_info)
    label = f"{val_info.num_examples:,} {'held-out training' if config.validation_holdout else 'test'} images"
    progress = _pass_progress(val_info, config.batch_size, f"Measuring the teacher on {label}", verbose, log)
    normalizations = ((train_info.mean, train_info.std), (native_info.mean, native_info.std))
    teacher, teacher_summary = _measure_teacher(
        config, teacher, teacher_location, normalizations, (val_data, val_info), log, progress
    )
    # Full batches from an endless stream: an epoch is `steps` batches (one pass, rounded down).
    steps = config.steps_per_epoch or max(1, train_info.num_examples // config.batch_size)
    distiller = _compiled_distiller(config, role, method, model, teacher, steps)
    initial_epoch, past_history = checkpoints.restore(distiller, directory, log) if resume else (0, {})
    _build_before_fit(distiller, train_info, config.batch_size // setup.process_count)
    if setup.description:
        log(setup.description)
    return PreparedRun(
        config=config,
        directory=directory,
        role=role,
        method=method,
        setup=setup,
        model=model,
        distiller=distiller,
        input_options=inputs,
        train_info=train_info,
        val_data=val_data,
        val_info=val_info,
        validation_label=label,
        teacher_summary=teacher_summary,
        steps=steps,
        initial_epoch=initial_epoch,
        past_history=past_history,
    )


def _seed_and_precision(config: RunConfig, contexts: contextlib.ExitStack) -> None:
    """Seeds the process and sets the run's determinism and precision policy, both put back when `contexts` closes."""
    contexts.callback(keras.mixed_precision.set_global_policy, keras.mixed_precision.global_policy())
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        contexts.enter_context(backend_ops.determinism())  # and the process's own setting back afterwards
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")


def _model_and_its_data(config: RunConfig, native_info: data_lib.DatasetInfo) -> tuple:
    """The run's model, what its input asks of the data, and the training split's and validation data as it reads
    them."""
    model = architectures.build_model(
        config.model,
        native_info.num_classes,
        native_info.input_shape,
        config.weights,
        (native_info.mean, native_info.std),
    )
    inputs = model_input_options(model, native_info)
    train_info = read_training_split(config, inputs) if inputs else native_info
    return model, inputs, train_info, _load_validation(config, inputs)


def _compiled_distiller(config: RunConfig, role: str, method: str, model, teacher, steps: int) -> Distiller:
    """The Distiller of `model` (and `teacher`), compiled with the run's optimizer, schedule and metrics."""
    distiller = Distiller(
        model, teacher, method=method, seed=config.seed, **(config.method_options if role == "student" else {})
    )
    distiller.compile(
        optimizer=make_optimizer(config, steps), metrics=_metrics_for_training(), jit_compile=config.jit_compile
    )
    return distiller


def data_options(config: RunConfig) -> dict:
    """The `data.load` options every read of a run's data shares: where the data is, and the image size."""
    return {"data_dir": config.data_dir, "download": config.download, "image_size": image_size_pair(config.image_size)}


def read_training_split(config: RunConfig, inputs: dict | None = None) -> data_lib.DatasetInfo:
    """Reads the training split of a run once, for its size and classes; fails when it cannot be read.

    `inputs` are what the model's input asks of the data (`model_input_options`); without them, the data as the
    dataset gives it at the run's image size.
    """
    _, info = data_lib.load(
        config.dataset,
        "train",
        config.batch_size,
        subset=config.train_subset,
        seed=config.seed,
        holdout=config.validation_holdout,
        **data_options(config),
        **(inputs or {}),
    )
    return info


def _read_training_info(config: RunConfig, log) -> data_lib.DatasetInfo:
    """The training split as the dataset gives it (its classes, image shape and statistics), with a warning for
    classes it lacks."""
    info = read_training_split(config)
    if info.classes_present is not None and info.classes_present < info.num_classes:
        log(
            f"Warning: the training data holds examples of only {info.classes_present} of the "
            f"{info.num_classes} classes the model predicts."
        )
    return info


def model_input_options(model: keras.Model, info: data_lib.DatasetInfo) -> dict:
    """What `model`'s input asks of `data.load` beyond the dataset's own: more channels, or raw pixels.

    A model that takes three channels of a gray dataset gets the gray channel repeated; a model that rescales and
    normalises its input itself (`architectures.reads_raw_pixels`) gets raw 0-255 pixels, i.e. mean 0 and std 1/255
    on the pipeline's 0-1 scale. Empty for a model that reads the data as the dataset gives it.
    """
    channels = int(model.input_shape[-1])
    options = {"channels": channels} if channels != info.input_shape[-1] else {}
    if architectures.reads_raw_pixels(model):
        options["normalization"] = architectures.raw_pixel_normalization(channels)
    return options


def _load_validation(config: RunConfig, inputs: dict) -> tuple:
    """The validation data (the test split, or the held-out training images) and its description."""
    holdout = config.validation_holdout
    return data_lib.load(
        config.dataset,
        "validation" if holdout else "test",
        max(config.batch_size, 256),
        subset=config.val_subset,
        holdout=holdout,
        **data_options(config),
        **inputs,
    )


def _pass_progress(val_info: data_lib.DatasetInfo, batch_size: int, label: str, verbose, log):
    """The progress of one pass over the validation data; None under --quiet (verbose=0): silence, as asked."""
    if verbose == 0:
        return None
    return progress.PassProgress(progress.batches(val_info.num_examples, max(batch_size, 256)), label, log)


def fit_run(run: PreparedRun, verbose: int | str = "auto", log=print, callbacks: list | None = None) -> float:
    """Trains the epochs a prepared run has left; returns the seconds it took (0 when none was left).

    `callbacks` are passed to `fit` after the run's own.

    Raises:
        RunError: For a diverged loss (the last good checkpoint is kept).
    """
    config, directory = run.config, run.directory
    if run.initial_epoch >= config.epochs:
        # Killed after its last checkpoint but before the model was saved: nothing is left to train.
        log(f"All {config.epochs} epochs were committed before the run stopped; saving its model and metrics.")
        return 0.0
    train_data, _ = data_lib.load(
        config.dataset,
        "train",
        config.batch_size,
        subset=config.train_subset,
        seed=config.seed,
        holdout=config.validation_holdout,
        stream=True,
        start_step=run.initial_epoch * run.steps,
        **data_options(config),
        **run.input_options,
        **_shard(run.setup),
    )
    log(
        f"Training {run.role} {run.model.name} ({run.model.count_params():,} parameters) with method {run.method!r} on "
        f"{run.train_info.name} ({run.train_info.num_examples} training images) for {config.epochs} epoch(s) of "
        f"{run.steps} steps on the {backend_ops.name()} backend"
        + (f", resuming at epoch {run.initial_epoch + 1}." if run.initial_epoch else ".")
    )
    guard = divergence.StopOnNonFinite()
    run_callbacks = _run_callbacks(directory, guard, run.initial_epoch, run.past_history, log)
    validating = f"Validating on {run.validation_label}"
    started = time.perf_counter()
    run.distiller.fit(
        train_data,
        validation_data=run.val_data,
        epochs=config.epochs,
        initial_epoch=run.initial_epoch,
        steps_per_epoch=run.steps,
        shuffle=False,  # The pipeline shuffles.
        # Keras's fit shows nothing while it validates: a long validation (JAX, PyTorch on CPU) gets its own progress.
        callbacks=[
            *run_callbacks,
            *filter(None, [_pass_progress(run.val_info, config.batch_size, validating, verbose, log)]),
            *(callbacks or []),
        ],
        verbose=verbose,
    )
    train_seconds = time.perf_counter() - started
    if guard.failure:
        state = checkpoints.read_state(directory)
        kept = f"the last good checkpoint (epoch {state['epoch']}) is kept" if state else "no epoch completed"
        raise RunError(f"Training diverged: {guard.failure}; {kept}. {guard.advice()}")
    return train_seconds


def finish_run(run: PreparedRun, history: dict, train_seconds: float) -> dict:
    """Writes a trained run's metrics.json and preprocessing.json, deletes its checkpoints, returns its metrics."""
    config, directory = run.config, run.directory
    metrics = {
        "role": run.role,
        "model": run.model.name,
        "parameters": int(run.model.count_params()),
        "method": run.method,
        **_summarise_history(history, config.validation_holdout),
        **_final_evaluation(run),
        "teacher": run.teacher_summary,
        **_training_time(history, run.initial_epoch, train_seconds),
        "resumed_at_epoch": run.initial_epoch or None,
        "seed": config.seed,
        "backend": backend_ops.name(),
        "replicas": run.setup.replicas,
        "config": config.to_dict(),
        "dataset": {"train": run.train_info.to_dict(), "validation": run.val_info.to_dict()},
        "environment": environment(),
    }
    write_json(directory / METRICS_FILE, metrics)
    write_json(directory / PREPROCESSING_FILE, preprocessing_record(run.train_info, config.image_size))
    # Renamed first (atomic), then deleted: a kill part-way through never leaves a half-deleted checkpoint that
    # --resume would read as "no epoch committed".
    if (directory / CHECKPOINT_DIR).exists():
        os.replace(directory / CHECKPOINT_DIR, directory / _FINISHED_CHECKPOINTS)
    shutil.rmtree(directory / _FINISHED_CHECKPOINTS, ignore_errors=True)
    return metrics


def _final_evaluation(run: PreparedRun) -> dict:
    """The final model's calibration on the validation split and, when that is held-out training images, its
    top-1, top-5 and calibration on the test split (`test`), where a choice made on the held-out images is judged."""
    final = {"final_val_calibration": evaluate_model(run.model, run.val_data)["calibration"]}
    if run.config.validation_holdout:
        test_data, info = data_lib.load(
            run.config.dataset, "test", max(run.config.batch_size, 256), **data_options(run.config), **run.input_options
        )
        final["test"] = {"num_examples": info.num_examples, **evaluate_model(run.model, test_data)}
    return final


def _metrics_for_training():
    return [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"),
    ]


def _training_time(history: dict, initial_epoch: int, seconds: float) -> dict:
    """`train_seconds`: this process's `fit`, plus the epochs earlier processes committed before a resume where they
    were timed; `timed_epochs`: how many epochs that figure covers (all of them, but for a run resumed from a
    checkpoint written before epochs were timed)."""
    epochs = checkpoints.history_epochs(history)
    earlier = checkpoints.timed_seconds(history, initial_epoch)
    return {
        "train_seconds": round(seconds + (earlier or 0.0), 2),
        "timed_epochs": epochs if earlier is not None else epochs - initial_epoch,
    }


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


def _load_teacher(config: RunConfig, role: str, method: str, location) -> keras.Model | None:
    """The frozen teacher of a method that needs one (None otherwise), as saved."""
    unit = methods_lib.check_teacher(method, config.teacher if role == "student" else None, TEACHER)
    if not unit.needs_teacher:
        return None
    return load_model(location or config.teacher, role="teacher")


def teacher_normalization(teacher: keras.Model, location, dataset_normalization: tuple) -> tuple:
    """The (mean, std) the teacher was trained with: from its preprocessing.json, else raw pixels for a model that
    rescales its input itself, else the dataset's own `dataset_normalization` (a gray one repeated for an RGB
    teacher)."""
    recorded = read_preprocessing(location)
    channels = int(teacher.input_shape[-1])
    if recorded is not None and len(recorded.get("mean") or ()) == channels:
        return recorded["mean"], recorded["std"]
    if architectures.reads_raw_pixels(teacher):
        return architectures.raw_pixel_normalization(channels)
    mean, std = (list(values) for values in dataset_normalization)
    return (mean * channels, std * channels) if len(mean) == 1 else (mean, std)


def _check_teacher_dataset(location, dataset: str) -> None:
    """Refuses a teacher whose preprocessing.json says it learnt another dataset's classes."""
    recorded = (read_preprocessing(location) or {}).get("dataset")
    if recorded is None or _same_dataset(recorded, dataset):
        return
    raise RunError(
        f"The teacher {location} was trained on {recorded}, and this run distils on {dataset}: its classes are "
        f"not this dataset's; give a teacher trained on {dataset}."
    )


def _same_dataset(first: str, second: str) -> bool:
    if first.startswith(data_lib.FOLDER_PREFIX) and second.startswith(data_lib.FOLDER_PREFIX):
        prefix = len(data_lib.FOLDER_PREFIX)
        return Path(first[prefix:]).expanduser().resolve() == Path(second[prefix:]).expanduser().resolve()
    return first == second


def _measure_teacher(
    config: RunConfig, teacher, location, normalizations, validation, log, progress=None
) -> tuple[keras.Model | None, dict | None]:
    """The teacher reading the student's inputs (`input_adapter`), measured on the validation split.

    `normalizations` are the student's (mean, std) and the dataset's own; `progress` (a
    `stkd_keras.progress.PassProgress`, or None for silence) follows the measurement.
    """
    if teacher is None:
        return None, None
    val_data, val_info = validation
    location = location or config.teacher
    _check_teacher_dataset(location, val_info.name)
    student, dataset = normalizations
    teacher = adapt_teacher(teacher, val_info.input_shape, student, teacher_normalization(teacher, location, dataset))
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
    tensorboard = run_logs.tensorboard_callback(directory / "tensorboard", log)
    return [
        guard,
        run_logs.LearningRateLogger(),
        run_logs.HistoryLogger(directory / "history.csv", append=initial_epoch > 0, committed_epochs=initial_epoch),
        checkpoints.RunCheckpoint(directory, past_history, guard),
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


def _shard(setup: distribution.Setup) -> dict:
    """The data options of one process of a multi-process JAX run: its share of every global batch."""
    if setup.process_count == 1:
        return {}
    return {"shard": (setup.process_index, setup.process_count)}


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
