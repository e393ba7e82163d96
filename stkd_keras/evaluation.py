"""Evaluation: load a saved model and measure its top-1 / top-5 accuracy on a dataset split.

`evaluate` reads a `.keras` file (trained on any Keras backend: the file is
backend-neutral) or an exported `.tflite` / `.onnx` file, which runs in its
own runtime with the preprocessing embedded in it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import keras
import numpy as np

from stkd_keras import backend_ops
from stkd_keras import data as data_lib
from stkd_keras.divergence import non_finite_variable
from stkd_keras.runs import RunError, check_preprocessing_fits, model_file, read_preprocessing


def environment() -> dict:
    """Versions and hardware a result was measured with: Python, Keras, the backend and its devices."""
    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        **backend_ops.describe(),
    }


def image_size_pair(size: int | None) -> tuple[int, int] | None:
    """A run's `image_size` (a square's side, or None for the dataset's own) as the (height, width) loaders take."""
    return None if size is None else (size, size)


def load_model(path: str | os.PathLike, role: str = "student") -> keras.Model:
    """Loads a `.keras` model, or a run folder's model; one clear error when it cannot."""
    # The zoo's own layers (ShuffleNet's ChannelShuffle, ChannelSplit) register with Keras when their module is
    # imported; a process that only evaluates would not otherwise have imported it.
    import stkd_keras.models.layers  # noqa: F401

    path = model_file(path, role)
    _import_factory_module(path)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a corrupt archive.
        raise RunError(f"Cannot load Keras model {path}: {type(error).__name__}: {error}") from None
    broken = non_finite_variable(model)
    if broken is not None:
        raise RunError(
            f"Model {path} holds non-finite values (in {broken}), as a diverged run leaves them; it cannot be "
            "evaluated, "
            "exported or distilled from: train it again."
        )
    return model


def _import_factory_module(path: Path) -> None:
    """Imports the module of the factory (`module:function`) that built the model of a run folder, if one did.

    A factory's own layers register with Keras (`keras.saving.register_keras_serializable`) when its module is
    imported; the run's metrics.json names the factory. A module that is gone is left to the load's own error.
    """
    import json

    from stkd_keras import architectures

    metrics = path.parent / "metrics.json"
    try:
        spec = json.loads(metrics.read_text())["config"]["model"]
        if architectures.kind_of(spec) == "factory":
            architectures.import_factory(spec)
    except (OSError, ValueError, KeyError, TypeError):
        pass


def check_model_fits_dataset(model: keras.Model, info: data_lib.DatasetInfo, what: str) -> None:
    """Refuses a model whose input shape or class count disagrees with the dataset."""
    input_shape = tuple(model.input_shape[1:])
    classes = model.output_shape[-1]
    if input_shape != tuple(info.input_shape) or classes != info.num_classes:
        raise RunError(
            f"The {what} {model.name!r} takes inputs {input_shape} and predicts {classes} classes, but dataset "
            f"{info.name!r} has inputs {tuple(info.input_shape)} and {info.num_classes} classes."
        )


def evaluate_model(model: keras.Model, dataset, progress=None, temperature: float = 1.0) -> dict:
    """Top-1, top-5, CE loss and calibration of a logits model on (images, integer labels) batches.

    `progress` (a `stkd_keras.progress.PassProgress`) follows the pass; `temperature` divides the logits first
    (temperature scaling: top-1 and top-5 do not change, the loss and calibration do).
    """
    predict = model.predict_on_batch
    if _multi_worker(model):
        # Every worker feeds its own copy of the batch, and Keras's predict would return all of their rows
        # together: each worker measures alone.
        def predict(images):
            return keras.ops.convert_to_numpy(model(images, training=False))

    logits, labels = batch_logits(predict, dataset, progress)
    return logit_metrics(logits, labels, temperature)


def _multi_worker(model: keras.Model) -> bool:
    """Whether `model` was built under `tf.distribute.MultiWorkerMirroredStrategy` (`--strategy multi_worker`)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return isinstance(getattr(model, "distribute_strategy", None), tf.distribute.MultiWorkerMirroredStrategy)


def logit_metrics(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict:
    """Top-1, top-5, loss (the NLL) and `calibration` (`stkd_keras.calibration.calibration_metrics`) of logits."""
    from stkd_keras import calibration

    # Stable, so ties (common in dequantized int8 logits) resolve to the lowest class as argmax does.
    top5 = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
    metrics = calibration.calibration_metrics(logits, labels, temperature)
    return {
        "accuracy": metrics["accuracy"],
        "top5_accuracy": float(np.mean(np.any(top5 == labels[:, None], axis=-1))),
        "loss": metrics["nll"],
        "calibration": {name: value for name, value in metrics.items() if name != "accuracy"},
    }


def evaluate(
    model_path: str | os.PathLike,
    dataset: str,
    split: str = "test",
    batch_size: int = 256,
    subset: int | None = None,
    data_dir: str | None = None,
    download: bool = True,
    log=None,
    calibrated: bool = False,
) -> dict:
    """Top-1 / top-5 accuracy and calibration of a saved model on a dataset split.

    `log` (e.g. `print`) shows the progress of a pass longer than a few
    seconds (`stkd_keras.progress`); None keeps it silent. `calibrated`
    divides the logits by the temperature `stkd-keras calibrate` stored
    (`stkd_keras.temperature`); an exported file that carries it in its graph
    is never scaled twice. The result's `temperature` says which temperature
    was applied and where (None: none).

    Raises:
        RunError: For a missing or unloadable model, one that does not fit the dataset, or `calibrated` without a
            stored temperature.
        DatasetNotFoundError: When the dataset is not available.
    """
    from stkd_keras import temperature as temperature_lib

    if Path(model_path).suffix in (".tflite", ".onnx"):
        return _evaluate_exported(
            Path(model_path), dataset, split, batch_size, subset, data_dir, download, log, calibrated
        )
    preprocessing = read_preprocessing(model_path)
    scaling = temperature_lib.keras_temperature(preprocessing, model_path) if calibrated else None
    model = load_model(model_path)
    normalization, input_shape = model_inputs(model, preprocessing, dataset, model_path)
    data, info = evaluation_data(
        dataset, split, batch_size, input_shape, normalization, subset=subset, data_dir=data_dir, download=download
    )
    check_model_fits_dataset(model, info, "model")
    follow = _progress(info, split, batch_size, log)
    return {
        "model": str(model_path),
        "dataset": dataset,
        "split": split,
        "num_examples": info.num_examples,
        "normalization": {
            "mean": list(info.mean),
            "std": list(info.std),
            "from": "preprocessing.json" if preprocessing else "dataset",
        },
        **evaluate_model(model, data, follow, scaling["value"] if scaling else 1.0),
        "temperature": scaling,
        "environment": environment(),
    }


def model_inputs(model: keras.Model, preprocessing: dict | None, dataset: str, model_path) -> tuple:
    """(normalization, input shape) of the data `model` reads: from its preprocessing.json, as its run trained it.

    Without a record (a model saved outside a run folder): `_unrecorded_inputs`.
    """
    if preprocessing is None:
        return _unrecorded_inputs(model, dataset)
    check_preprocessing_fits(preprocessing, dataset, model_path)
    height_width = image_size_pair(preprocessing.get("image_size")) or model.input_shape[1:3]
    return (preprocessing["mean"], preprocessing["std"]), (*height_width, model.input_shape[-1])


def _unrecorded_inputs(model: keras.Model, dataset: str) -> tuple:
    """The normalisation and input shape of a model saved without preprocessing.json (outside a run folder).

    Raw pixels for a model that rescales its input itself (`architectures.reads_raw_pixels`), else the dataset's
    own statistics; the dataset's own image size and channels (a model of another shape is then refused, not fed
    resized images of a dataset it may never have seen), except for an image folder, which has no size of its own.
    """
    from stkd_keras import architectures

    folder = dataset.startswith(data_lib.FOLDER_PREFIX)
    channels = model.input_shape[-1] if folder else data_lib.get_spec(dataset).input_shape[-1]
    raw = architectures.reads_raw_pixels(model)
    normalization = architectures.raw_pixel_normalization(channels) if raw else None
    return normalization, tuple(model.input_shape[1:]) if folder else (None, None, None)


def evaluation_data(
    dataset: str,
    split: str,
    batch_size: int,
    input_shape: tuple,
    normalization: tuple | None,
    subset: int | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    holdout: int | None = None,
) -> tuple[object, data_lib.DatasetInfo]:
    """The batches a model with inputs `input_shape` (height, width, channels) is evaluated on, and their `DatasetInfo`.

    In order and unaugmented, resized to the model's height and width and given its channels (a 3-channel model
    trained on a 1-channel dataset reads it with the gray channel repeated); a size or channel count the model leaves
    open (None) is the dataset's own. `normalization` is (mean, std), or None for the dataset's own. `holdout`: as
    `data.load`'s (the split "validation" is the last `holdout` training images of its fixed shuffle).
    """
    height, width, channels = input_shape
    return data_lib.load(
        dataset,
        split,
        batch_size,
        augment=False,
        shuffle=False,
        subset=subset,
        data_dir=data_dir,
        download=download,
        image_size=None if height is None or width is None else (int(height), int(width)),
        normalization=normalization,
        channels=None if channels is None else int(channels),
        holdout=holdout,
    )


def _progress(info, split: str, batch_size: int, log):
    """A `PassProgress` over the split, or None when `log` is None."""
    from stkd_keras import progress

    if log is None:
        return None
    return progress.PassProgress(
        progress.batches(info.num_examples, batch_size), f"Evaluating on {info.num_examples:,} {split} images", log
    )


def _load_exported(path: Path):
    """The runtime's runner of a .tflite or .onnx file, its embedded metadata and its preprocessing."""
    from stkd_keras.native_stderr import filtered_stderr
    from stkd_keras.export.runtime import read_metadata, runner_for

    if not path.is_file():
        raise RunError(f"Model file {path} does not exist.")
    try:
        with filtered_stderr():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            runner = runner_for(path)
            metadata = read_metadata(path) or {}
    except Exception as error:
        raise RunError(f"Cannot load {path}: {type(error).__name__}: {error}") from None
    preprocessing = metadata.get("preprocessing") or read_preprocessing(path)
    if not preprocessing:
        raise RunError(
            f"{path} carries no preprocessing metadata and no preprocessing.json lies beside it; export it with "
            "stkd-keras export."
        )
    return runner, metadata, preprocessing


def batch_logits(predict, data, follow=None) -> tuple[np.ndarray, np.ndarray]:
    """`predict`'s logits and the labels over every batch of `data`, the pass followed by `follow` if given.

    `predict` maps a numpy batch of images to its logits: a Keras model's `predict_on_batch`, or a runtime's.
    """
    from stkd_keras.native_stderr import filtered_stderr

    logits, labels = [], []
    if follow:
        follow.on_test_begin()
    with filtered_stderr():  # the delegate's line may come with the first call: one filter around the pass
        for index, (images, batch_labels) in enumerate(data):  # a tf.data.Dataset or a keras.utils.PyDataset
            logits.append(np.asarray(predict(np.asarray(images)), dtype=np.float32))
            labels.append(np.asarray(batch_labels))
            if follow:
                follow.on_test_batch_end(index)
    if follow:
        follow.on_test_end()
    return np.concatenate(logits), np.concatenate(labels)


def _evaluate_exported(
    path: Path, dataset, split, batch_size, subset, data_dir, download, log=None, calibrated=False
) -> dict:
    """Top-1 / top-5 of a .tflite or .onnx file in its own runtime, with the preprocessing embedded in it."""
    from stkd_keras import temperature as temperature_lib

    runner, metadata, preprocessing = _load_exported(path)
    scaling = temperature_lib.exported_temperature(metadata, preprocessing, path, calibrated)
    check_preprocessing_fits({"dataset": metadata.get("dataset"), **preprocessing}, dataset, path)
    input_shape = metadata.get("input_shape") or [None, *preprocessing["input_shape"]]
    normalization = (preprocessing["mean"], preprocessing["std"])
    data, info = evaluation_data(
        dataset,
        split,
        batch_size,
        tuple(input_shape[1:]),
        normalization,
        subset=subset,
        data_dir=data_dir,
        download=download,
    )
    if tuple(info.input_shape) != tuple(input_shape[1:]):
        raise RunError(
            f"{path} takes inputs {tuple(input_shape[1:])}, but dataset {dataset!r} has inputs {info.input_shape}."
        )
    logits, labels = batch_logits(runner.predict, data, _progress(info, split, batch_size, log))
    if logits.shape[-1] != info.num_classes:
        raise RunError(f"{path} predicts {logits.shape[-1]} classes, but dataset {dataset!r} has {info.num_classes}.")
    # A temperature in the file's graph has scaled the logits already: evaluate divides by it only when it is not.
    divide_by = scaling["value"] if scaling and scaling["applied"] == "by evaluate" else 1.0
    return {
        "model": str(path),
        "runtime": "ai_edge_litert" if path.suffix == ".tflite" else "onnxruntime",
        "dataset": dataset,
        "split": split,
        "num_examples": int(len(labels)),
        "normalization": {
            "mean": list(preprocessing["mean"]),
            "std": list(preprocessing["std"]),
            "from": "embedded metadata",
        },
        **logit_metrics(logits, labels, divide_by),
        "temperature": scaling,
        "environment": environment(),
    }
