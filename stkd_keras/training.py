"""Runs: train a teacher, distil a student, evaluate a model, with their output folders.

A run writes into a staging folder beside its output folder and renames it
into place only when it has finished, so an interrupted or failed run leaves
no half-written model under the output name, and an existing run folder is
replaced only when the caller allows it (`overwrite=True`).

Every finished run folder holds:
- `teacher.keras` or `student.keras`: the model after the last epoch,
- `history.csv`: one row of training/validation metrics per epoch,
- `preprocessing.json`: the input shape, normalisation mean/std and class
  names the model was trained with, which evaluation and export reuse,
- `metrics.json`: final-epoch and best-epoch validation accuracy (named
  apart: the saved model is the final-epoch one), the resolved config, the
  seed, the dataset and the library versions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from stkd_keras import checkpointing
from stkd_keras import data as data_lib
from stkd_keras import distribute
from stkd_keras import methods as methods_lib
from stkd_keras.distiller import Distiller
from stkd_keras.files import atomic_write
from stkd_keras.models import get_model

MODEL_FILES = {"teacher": "teacher.keras", "student": "student.keras"}
PREPROCESSING_FILE = "preprocessing.json"


class RunError(RuntimeError):
    """A run cannot start or finish; the message is meant for the user as it is."""


@dataclasses.dataclass
class RunConfig:
    """Everything that determines a training run (saved in `metrics.json`).

    `method_options` holds the method's hyperparameters given for this run;
    the others take the method's defaults (`stkd_keras.methods`). Written out
    (`to_dict`, in metrics.json and run.json) the config is one flat mapping
    in which the method's resolved hyperparameters stand beside the other
    fields, as recipes write them.
    """

    dataset: str = "fashion_mnist"
    model: str = "resnet8"
    method: str = "ce"
    teacher: str | None = None
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    method_options: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    train_subset: int | None = None
    val_subset: int | None = None
    steps_per_epoch: int | None = None
    jit_compile: bool = False
    mixed_precision: bool = False
    data_dir: str | None = None
    download: bool = True
    image_size: int | None = None
    optimizer: str = "sgd"
    lr_schedule: str = "cosine"
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_rate: float = 0.1
    deterministic: bool = False
    strategy: str = "default"

    def validate(self) -> None:
        """Raises `ValueError` for a value no run can use."""
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected `{name}` to be an int >= 1. Received: {name}={value!r}")
        for name in ("train_subset", "val_subset", "steps_per_epoch", "image_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Expected `{name}` to be an int >= 1 or unset. Received: {name}={value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"Expected `learning_rate` > 0. Received: learning_rate={self.learning_rate!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"Expected 0 <= `momentum` < 1. Received: momentum={self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"Expected `weight_decay` >= 0. Received: weight_decay={self.weight_decay!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"Expected `optimizer` in ('sgd', 'adam'). Received: optimizer={self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"Expected `lr_schedule` in ('cosine', 'step', 'constant'). Received: lr_schedule={self.lr_schedule!r}")
        epochs = list(self.lr_decay_epochs)
        if self.lr_schedule == "step" and (not epochs or epochs != sorted(set(epochs)) or not 0 < epochs[0] or epochs[-1] >= self.epochs):
            raise ValueError(
                f"Expected increasing `lr_decay_epochs` between 1 and epochs - 1 = {self.epochs - 1} for the step schedule. "
                f"Received: lr_decay_epochs={self.lr_decay_epochs!r}"
            )
        if self.strategy not in distribute.STRATEGIES:
            raise ValueError(f"Expected `strategy` in {distribute.STRATEGIES}. Received: strategy={self.strategy!r}")
        if not 0 < self.lr_decay_rate <= 1:
            raise ValueError(f"Expected 0 < `lr_decay_rate` <= 1. Received: lr_decay_rate={self.lr_decay_rate!r}")
        # The Distiller checks these too; checking here refuses a bad run before any data is read.
        self.hyperparameters()

    def hyperparameters(self) -> methods_lib.Hyperparameters:
        """The method's hyperparameters: `method_options` over the method's defaults (raises `ValueError` for bad ones)."""
        return methods_lib.get_method(self.method).make_hyperparameters(**self.method_options)

    def to_dict(self) -> dict:
        """The config as one flat mapping, the method's hyperparameters resolved beside the other fields."""
        fields = dataclasses.asdict(self)
        del fields["method_options"]
        return {**fields, **self.hyperparameters().to_dict()}

    @classmethod
    def from_dict(cls, fields: dict) -> RunConfig:
        """The inverse of `to_dict`; also reads configs written before methods were units.

        Those held every method's hyperparameters as top-level fields, also
        for methods without them (a `ce` run had a temperature): a field that
        is a hyperparameter of some registered method goes to
        `method_options` when the run's method has it, and is dropped when
        it has not.
        """
        fields = dict(fields)
        own = {field.name for field in dataclasses.fields(cls)}
        method = methods_lib.get_method(fields.get("method", cls.method))
        options = dict(fields.pop("method_options", None) or {})
        for name in methods_lib.hyperparameter_fields():
            if name in fields and name not in own:
                value = fields.pop(name)
                if name in method.hyperparameter_names():
                    options.setdefault(name, value)
        unknown = sorted(set(fields) - own)
        if unknown:
            raise ValueError(f"Unknown run config field `{unknown[0]}`. Valid fields: {', '.join(sorted(own))}.")
        fields["lr_decay_epochs"] = tuple(fields.get("lr_decay_epochs") or ())
        return cls(**fields, method_options=options)


def environment() -> dict:
    """Versions and hardware a result was measured with."""
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
    }


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
    return any(staging.rglob(checkpointing.STATE_FILE)) or any(staging.rglob(MODEL_FILES["teacher"]))


def find_unfinished_run(output: str | os.PathLike) -> Path:
    """The staging folder of an unfinished run of `output` (the newest, if several)."""
    output = Path(output).absolute()
    candidates = sorted(output.parent.glob(f".{output.name}.partial-*"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise RunError(f"No unfinished run of {output} to resume (looked for {output.parent}/.{output.name}.partial-*).")
    return candidates[-1]


RUN_FILE = "run.json"


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


def load_model(path: str | os.PathLike, role: str = "student") -> keras.Model:
    """Loads a `.keras` model, or a run folder's model; one clear error when it cannot."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / MODEL_FILES[role], *(path / name for name in MODEL_FILES.values())]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise RunError(f"No {' or '.join(MODEL_FILES.values())} in folder {path}.")
        path = found
    if not path.is_file():
        raise RunError(f"Model file {path} does not exist.")
    if path.suffix != ".keras":
        raise RunError(f"Expected a .keras model file. Received: {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a corrupt archive.
        raise RunError(f"Cannot load Keras model {path}: {type(error).__name__}: {error}") from None


def check_model_fits_dataset(model: keras.Model, info: data_lib.DatasetInfo, what: str) -> None:
    """Refuses a model whose input shape or class count disagrees with the dataset."""
    input_shape = tuple(model.input_shape[1:])
    classes = model.output_shape[-1]
    if input_shape != tuple(info.input_shape) or classes != info.num_classes:
        raise RunError(
            f"The {what} {model.name!r} takes inputs {input_shape} and predicts {classes} classes, but dataset "
            f"{info.name!r} has inputs {tuple(info.input_shape)} and {info.num_classes} classes."
        )


def _metrics_for_training():
    return [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"),
    ]


def _summarise_history(history: dict) -> dict:
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
        "note": "Validation is the test split. The saved model is the final-epoch model; best_epoch is reported for reference only.",
    }


def train(
    config: RunConfig,
    directory: str | os.PathLike,
    role: str = "student",
    verbose: int | str = "auto",
    log=print,
    teacher_location: str | os.PathLike | None = None,
    resume: bool = False,
) -> dict:
    """Trains a model (teacher or student) into an existing folder and returns its metrics.

    `role="teacher"` trains `config.model` with cross-entropy alone;
    `role="student"` trains it with `config.method` (distilling from
    `config.teacher` for the teacher methods). `teacher_location` loads the
    teacher from elsewhere than `config.teacher` (a teacher trained in the
    staging folder of this run, recorded under its final path). With
    `resume=True` the run continues after the last committed checkpoint in
    `directory` (see `stkd_keras.checkpointing`).

    Raises:
        ValueError: For invalid hyperparameters.
        RunError: For a missing/unloadable teacher, a model/dataset mismatch,
            or a diverged loss (the last good checkpoint is kept).
        DatasetNotFoundError: When the dataset is not available.
    """
    config.validate()
    directory = Path(directory)
    method = "ce" if role == "teacher" else config.method
    previous_policy = keras.mixed_precision.global_policy()
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if resume and config.strategy == "multi_worker":
        raise RunError("--resume is not supported with --strategy multi_worker: the workers cannot share the chief's checkpoint; restart the run.")
    # MultiWorkerMirroredStrategy must exist before the process runs a TensorFlow op (the data below).
    strategy = distribute.get_strategy(config.strategy)
    exit_stack = contextlib.ExitStack()
    try:
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        data_options = {"data_dir": config.data_dir, "download": config.download, "image_size": _image_size(config.image_size)}
        # Read the data once to know its size; the epoch-indexed training pipeline is built below.
        _, train_info = data_lib.load(config.dataset, "train", config.batch_size, subset=config.train_subset, seed=config.seed, **data_options)
        if train_info.classes_present is not None and train_info.classes_present < train_info.num_classes:
            log(
                f"Warning: the training data holds examples of only {train_info.classes_present} of the "
                f"{train_info.num_classes} classes the model predicts."
            )
        val_data, val_info = data_lib.load(config.dataset, "test", max(config.batch_size, 256), subset=config.val_subset, **data_options)
        # (MultiWorker)MirroredStrategy: variables (student, teacher, optimizer, metrics) are created in
        # its scope; Keras's fit then splits each global batch over the replicas. The Distiller divides its
        # loss by the replica count, and its loss parts are keras.metrics trackers, so figures match one device.
        exit_stack.enter_context(strategy.scope())
        teacher, teacher_summary = None, None
        if methods_lib.get_method(method).needs_teacher:
            if config.teacher is None:
                raise RunError(f"Method {method!r} needs a teacher; pass --teacher.")
            teacher = load_model(teacher_location or config.teacher, role="teacher")
            check_model_fits_dataset(teacher, val_info, "teacher")
            teacher_summary = {"path": str(config.teacher), "name": teacher.name, **_evaluate_keras(teacher, val_data)}
            log(f"Teacher {teacher.name}: val top-1 {teacher_summary['accuracy']:.4f} on {val_info.num_examples} images.")
            if teacher_summary["accuracy"] < 1.5 / val_info.num_classes:
                log(
                    f"Warning: the teacher is near chance ({teacher_summary['accuracy']:.4f} against {1 / val_info.num_classes:.4f}); "
                    "distilling from it teaches noise. Check --teacher and the dataset."
                )
        elif config.teacher is not None and role == "student":
            raise RunError(f"Method {method!r} trains the student alone; drop --teacher or choose one of {list(methods_lib.list_methods(needs_teacher=True))}.")

        model = get_model(config.model, train_info.num_classes, train_info.input_shape)
        distiller = Distiller(model, teacher, method=method, seed=config.seed, **(config.method_options if role == "student" else {}))
        # Full batches from an endless stream: an epoch is `steps` batches (one pass, rounded down).
        steps = config.steps_per_epoch or max(1, train_info.num_examples // config.batch_size)
        distiller.compile(optimizer=make_optimizer(config, steps), metrics=_metrics_for_training(), jit_compile=config.jit_compile)
        initial_epoch, past_history = checkpointing.restore(distiller, directory, log) if resume else (0, {})
        if config.strategy == "mirrored":
            log(f"MirroredStrategy over {strategy.num_replicas_in_sync} device(s): {', '.join(strategy.extended.worker_devices)}.")
        elif config.strategy == "multi_worker":
            task, index = distribute.cluster_task()
            log(f"MultiWorkerMirroredStrategy: {strategy.num_replicas_in_sync} replica(s) in sync; this is {task} {index}.")
        if initial_epoch >= config.epochs:
            raise RunError(f"The run in {directory} already completed its {config.epochs} epochs.")
        train_data, _ = data_lib.load(
            config.dataset, "train", config.batch_size, subset=config.train_subset, seed=config.seed,
            stream=True, start_step=initial_epoch * steps, **data_options,
        )
        log(
            f"Training {role} {model.name} ({model.count_params():,} parameters) with method {method!r} on "
            f"{train_info.name} ({train_info.num_examples} training images) for {config.epochs} epoch(s) of {steps} steps"
            + (f", resuming at epoch {initial_epoch + 1}." if initial_epoch else ".")
        )
        guard = checkpointing.StopOnNonFinite()
        started = time.perf_counter()
        distiller.fit(
            train_data,
            validation_data=val_data,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            shuffle=False,  # The tf.data pipeline shuffles.
            callbacks=[
                guard,
                checkpointing.LearningRateLogger(),
                keras.callbacks.CSVLogger(str(directory / "history.csv"), append=initial_epoch > 0),
                keras.callbacks.TensorBoard(str(directory / "tensorboard"), write_graph=False),
                checkpointing.RunCheckpoint(directory, past_history),
            ],
            verbose=verbose,
        )
        train_seconds = time.perf_counter() - started
        if guard.failure:
            state = checkpointing.read_state(directory)
            kept = f"the last good checkpoint (epoch {state['epoch']}) is kept" if state else "no epoch completed"
            raise RunError(f"Training diverged: {guard.failure}; {kept}. Lower --learning-rate and resume or restart.")
        history = checkpointing.read_state(directory)["history"]
        model_path = directory / MODEL_FILES[role]
        atomic_write(model_path, model.save)
    finally:
        exit_stack.close()  # leaves the distribution strategy's scope, also on errors
        keras.mixed_precision.set_global_policy(previous_policy)

    metrics = {
        "role": role,
        "model": model.name,
        "parameters": int(model.count_params()),
        "method": method,
        **_summarise_history(history),
        "teacher": teacher_summary,
        "train_seconds": round(train_seconds, 2),
        "resumed_at_epoch": initial_epoch or None,
        "seed": config.seed,
        "config": config.to_dict(),
        "dataset": {"train": train_info.to_dict(), "validation": val_info.to_dict()},
        "environment": environment(),
    }
    write_json(directory / "metrics.json", metrics)
    write_json(directory / PREPROCESSING_FILE, preprocessing_record(train_info, config.image_size))
    shutil.rmtree(directory / checkpointing.CHECKPOINT_DIR, ignore_errors=True)
    return metrics


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


def _image_size(size: int | None):
    return None if size is None else (size, size)


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


def _evaluate_keras(model: keras.Model, dataset: tf.data.Dataset) -> dict:
    """Top-1, top-5 and CE loss of a logits model on (images, integer labels) batches."""
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy"),
        ],
    )
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    return {"accuracy": float(results["accuracy"]), "top5_accuracy": float(results["top5_accuracy"]), "loss": float(results["loss"])}


def evaluate(
    model_path: str | os.PathLike,
    dataset: str,
    split: str = "test",
    batch_size: int = 256,
    subset: int | None = None,
    data_dir: str | None = None,
    download: bool = True,
) -> dict:
    """Top-1 / top-5 accuracy of a saved model on a dataset split.

    Raises:
        RunError: For a missing or unloadable model, or one that does not fit the dataset.
        DatasetNotFoundError: When the dataset is not available.
    """
    if Path(model_path).suffix in (".tflite", ".onnx"):
        return _evaluate_exported(Path(model_path), dataset, split, batch_size, subset, data_dir, download)
    model = load_model(model_path)
    preprocessing = read_preprocessing(model_path)
    normalization, image_size = None, None
    if preprocessing is not None:
        normalization = (preprocessing["mean"], preprocessing["std"])
        image_size = _image_size(preprocessing.get("image_size"))
    data, info = data_lib.load(
        dataset, split, batch_size, augment=False, shuffle=False, subset=subset, data_dir=data_dir, download=download,
        image_size=image_size or tuple(model.input_shape[1:3]), normalization=normalization,
    )
    check_model_fits_dataset(model, info, "model")
    return {
        "model": str(model_path),
        "dataset": dataset,
        "split": split,
        "num_examples": info.num_examples,
        "normalization": {"mean": list(info.mean), "std": list(info.std), "from": "preprocessing.json" if preprocessing else "dataset"},
        **_evaluate_keras(model, data),
        "environment": environment(),
    }


def _evaluate_exported(path: Path, dataset, split, batch_size, subset, data_dir, download) -> dict:
    """Top-1 / top-5 of a .tflite or .onnx file in its own runtime, with the preprocessing embedded in it."""
    from stkd_keras.export.runtime import read_metadata, runner_for

    if not path.is_file():
        raise RunError(f"Model file {path} does not exist.")
    try:
        runner = runner_for(path)
        metadata = read_metadata(path) or {}
    except Exception as error:
        raise RunError(f"Cannot load {path}: {type(error).__name__}: {error}") from None
    preprocessing = metadata.get("preprocessing") or read_preprocessing(path)
    if not preprocessing:
        raise RunError(f"{path} carries no preprocessing metadata and no preprocessing.json lies beside it; export it with stkd-keras export.")
    input_shape = metadata.get("input_shape") or [None, *preprocessing["input_shape"]]
    data, info = data_lib.load(
        dataset, split, batch_size, augment=False, shuffle=False, subset=subset, data_dir=data_dir, download=download,
        image_size=tuple(input_shape[1:3]), normalization=(preprocessing["mean"], preprocessing["std"]),
    )
    if tuple(info.input_shape) != tuple(input_shape[1:]):
        raise RunError(f"{path} takes inputs {tuple(input_shape[1:])}, but dataset {dataset!r} has inputs {info.input_shape}.")
    logits, labels = [], []
    for images, batch_labels in data:
        logits.append(runner.predict(images.numpy()))
        labels.append(batch_labels.numpy())
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    if logits.shape[-1] != info.num_classes:
        raise RunError(f"{path} predicts {logits.shape[-1]} classes, but dataset {dataset!r} has {info.num_classes}.")
    # Stable, so ties (common in dequantized int8 logits) resolve to the lowest class as argmax does.
    top5 = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
    return {
        "model": str(path),
        "runtime": "ai_edge_litert" if path.suffix == ".tflite" else "onnxruntime",
        "dataset": dataset,
        "split": split,
        "num_examples": int(len(labels)),
        "normalization": {"mean": list(preprocessing["mean"]), "std": list(preprocessing["std"]), "from": "embedded metadata"},
        "accuracy": float(np.mean(top5[:, 0] == labels)),
        "top5_accuracy": float(np.mean(np.any(top5 == labels[:, None], axis=-1))),
        "environment": environment(),
    }
