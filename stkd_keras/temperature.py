"""Temperature scaling of a finished run: one temperature fitted on training images the run never trained on.

`calibrate_run` is the fair post-hoc baseline a claim of better calibration is judged against (Guo et al., ICML
2017): it divides a trained model's logits by the one temperature T that minimises the NLL
(`stkd_keras.calibration.fit_temperature`) of held-out training images, never of the test split, so the test split
still judges it. Top-1 does not change.

Which images: `data.load(..., holdout=N)` sets the last N images of the training split's fixed order apart
(IDX files and image folders: `np.random.default_rng(0).permutation(n)`, the same for every seed; TFDS: its own
order), and a run trains on the first `dataset.train.num_examples` of the same order (its `train_subset` of the
images left by its `validation_holdout`). The last N are images the run never saw exactly when those two do not
meet; `calibrate_run` refuses any N for which they could.

The temperature is stored in the run's preprocessing.json (`temperature`, `temperature_fit`), where `evaluate
--calibrated` reads it and `export --calibrated` builds it into the exported files as a final scaling op
(`temperature_scaled`); the fit and the figures before and after scaling go to the run's calibration.json.
"""

from __future__ import annotations


import os
from pathlib import Path

import numpy as np

from stkd_keras import calibration
from stkd_keras.files import restored_on_failure
from stkd_keras.runs import (
    METRICS_FILE,
    PREPROCESSING_FILE,
    RunError,
    describe_unfinished,
    output_lock,
    output_path,
    read_preprocessing,
    staging_folders,
    write_json,
)

CALIBRATION_FILE = "calibration.json"
SPLITS = ("test", None)
APPLIED_BY_EVALUATE = "by evaluate"
APPLIED_IN_GRAPH = "in the file's graph"


def calibrate_run(
    run_dir: str | os.PathLike,
    holdout: int | None = None,
    split: str | None = "test",
    batch_size: int = 256,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    log=None,
) -> dict:
    """Fits a finished run's temperature on held-out training images; stores it and writes calibration.json.

    Args:
        run_dir: A finished run folder (or its .keras model file).
        holdout: The N held-out training images to fit on (default: the run's own `validation_holdout`).
        split: "test": also measure the split before and after scaling (it reports; it chooses nothing); None: don't.
        batch_size: Batch size of the passes.
        data_dir, download: Where the dataset is (default: the run's own `data_dir`), as for `data.load`.
        log: e.g. `print`, for progress and notes; None keeps it silent.

    Returns:
        calibration.json's content: `temperature`, `fit`, `held_out` and `split` figures `before` and `after`
        scaling (top-1 and `calibration.summary`), `notes` and `environment`.

    Raises:
        RunError: For an exported file, a run that is not finished, or held-out images that could overlap the
            images the run trained on.
        ValueError: For a `holdout` that is not an int >= 1, or a `split` not in `SPLITS`.
    """
    folder, metrics = finished_run(run_dir)
    if split not in SPLITS:
        raise ValueError(f"Expected `split` in {SPLITS}. Received: split={split!r}")
    config = metrics.get("config") or {}
    data_dir = data_dir if data_dir is not None else config.get("data_dir")
    holdout = checked_holdout(folder, metrics, holdout, data_dir, download)
    with output_lock(folder):  # no distill --overwrite, nor a second calibrate, replaces the folder meanwhile
        preprocessing = read_preprocessing(folder)
        if preprocessing is None:
            raise RunError(f"No {PREPROCESSING_FILE} in {folder}: the run's normalisation is unknown.")
        passes = _logits(folder, preprocessing, config["dataset"], holdout, split, batch_size, data_dir, download, log)
        fit = calibration.fit_temperature(*passes["held_out"])
        result = _result(folder, metrics, holdout, fit, passes)
        _store(folder, preprocessing, fit, holdout, result)
    if log is not None:
        for note in result["notes"]:
            log(note)
    return result


def finished_run(run_dir: str | os.PathLike) -> tuple[Path, dict]:
    """The folder of a finished run and its metrics.json; refuses an exported file and an unfinished run.

    Raises:
        RunError: In one sentence naming what to do instead.
    """
    import json

    path = Path(run_dir)
    if path.suffix in (".tflite", ".onnx"):
        raise RunError(
            f"{path} is an exported file; calibrate the run folder it was exported from, then export it again with "
            "--calibrated."
        )
    folder = path.parent if path.suffix == ".keras" else path
    if not folder.is_dir():
        unfinished = staging_folders(output_path(folder))
        if unfinished:
            raise RunError(
                f"The run {folder} is not finished ({describe_unfinished(unfinished[-1])}); continue it with "
                f"--resume {folder} and calibrate it when it has finished."
            )
        raise RunError(f"Run folder {folder} does not exist.")
    if not (folder / METRICS_FILE).is_file():
        raise RunError(
            f"{folder} holds no {METRICS_FILE}: it is not a finished stkd-keras run (a run writes it when it finishes)."
        )
    try:
        return folder, json.loads((folder / METRICS_FILE).read_text())
    except (OSError, ValueError) as error:
        raise RunError(f"Cannot read {folder / METRICS_FILE}: {error}") from None


def checked_holdout(folder: Path, metrics: dict, holdout, data_dir=None, download: bool = True) -> int:
    """`holdout` (default: the run's `validation_holdout`), refused where its images could be ones the run trained on.

    The run trained on the first `trained` images of the training split's fixed order, the holdout is its last N:
    they are apart when N <= the run's own holdout, or when trained + N <= the split's size (a `train_subset`).

    Raises:
        RunError: When they could meet, or the run trained on the whole training split.
        ValueError: For a `holdout` that is not an int >= 1.
    """
    config = metrics.get("config") or {}
    own, subset = config.get("validation_holdout"), config.get("train_subset")
    trained = int(metrics["dataset"]["train"]["num_examples"])
    if own is None and subset is None:
        raise RunError(
            f"{folder} was trained on the whole training split (no --validation-holdout), so no training image is left "
            "that it never saw, and the test split must not be fitted on; train it with --validation-holdout N to "
            "calibrate it."
        )
    if own is None and holdout is None:
        raise RunError(
            f"{folder} was trained on the first {trained} training images without --validation-holdout, so there is "
            "no count of held-out images to default to; pass --validation-holdout N."
        )
    holdout = own if holdout is None else holdout
    if not isinstance(holdout, (int, np.integer)) or isinstance(holdout, bool) or holdout < 1:
        raise ValueError(f"Expected `holdout` to be an int >= 1. Received: holdout={holdout!r}")
    if own is not None and holdout <= own:
        return int(holdout)
    if subset is None:
        raise RunError(
            f"{folder} trained on every training image but its last {own} held out, so --validation-holdout "
            f"{holdout} would fit on {holdout - own} images it trained on; pass at most {own}."
        )
    total = _training_split_size(config["dataset"], data_dir, download)
    if trained + holdout > total:
        raise RunError(
            f"{folder} trained on the first {trained} of the {total} training images (their fixed order), so at most "
            f"the last {total - trained} are images it never saw; pass --validation-holdout {total - trained} or "
            "fewer."
        )
    return int(holdout)


def _training_split_size(dataset: str, data_dir, download: bool) -> int:
    """How many images the whole training split of `dataset` holds (read at its own size)."""
    from stkd_keras import data as data_lib

    return data_lib.load(dataset, "train", 256, data_dir=data_dir, download=download)[1].num_examples


def _logits(folder, preprocessing, dataset, holdout, split, batch_size, data_dir, download, log) -> dict:
    """The model's logits and labels on the held-out images and, unless `split` is None, on `split`."""
    from stkd_keras import evaluation

    model = evaluation.load_model(folder)
    normalization, input_shape = evaluation.model_inputs(model, preprocessing, dataset, folder)
    passes = {}
    for name, which, images in (("held_out", "validation", holdout), ("split", split, None)):
        if which is None:
            continue
        data, info = evaluation.evaluation_data(
            dataset, which, batch_size, input_shape, normalization, data_dir=data_dir, download=download, holdout=images
        )
        evaluation.check_model_fits_dataset(model, info, "model")
        label = f"held-out training images (--validation-holdout {holdout})" if images else f"{which} images"
        follow = None
        if log is not None:
            from stkd_keras import progress

            follow = progress.PassProgress(
                progress.batches(info.num_examples, batch_size), f"Measuring {info.num_examples:,} {label}", log
            )
        passes[name] = evaluation.batch_logits(model.predict_on_batch, data, follow)
    return passes


def _result(folder: Path, metrics: dict, holdout: int, fit: dict, passes: dict) -> dict:
    """calibration.json's content (see `calibrate_run`)."""
    from stkd_keras import evaluation

    config = metrics.get("config") or {}
    temperature = fit["temperature"]

    def before_after(logits, labels) -> dict:
        # Top-1, the calibration figures and the reliability bins (`report` draws them before and after scaling).
        return {
            "num_examples": int(len(labels)),
            "before": calibration.calibration_metrics(logits, labels),
            "after": calibration.calibration_metrics(logits, labels, temperature),
        }

    notes = []
    if fit["at_bound"]:
        notes.append(
            f"Warning: the fitted temperature {temperature:.4g} lies at the edge of the search range "
            f"{calibration.TEMPERATURE_RANGE}: the held-out logits separate every image, so the NLL keeps falling."
        )
    if config.get("weights") not in (None, "imagenet") or str(config.get("model", "")).endswith(".keras"):
        notes.append(
            "Note: the run started from weights trained outside it; the images those learnt from are not known here."
        )
    split = passes.get("split")
    return {
        "run": str(folder),
        "model": metrics.get("model"),
        "method": metrics.get("method"),
        "dataset": config.get("dataset"),
        "temperature": temperature,
        "fit": {**fit, "holdout": holdout},
        "held_out": {
            "images": f"the last {holdout} training images of the fixed order (--validation-holdout {holdout}); "
            f"the run trained on the first {metrics['dataset']['train']['num_examples']}",
            **before_after(*passes["held_out"]),
        },
        "split": None if split is None else {"name": "test", **before_after(*split)},
        "notes": notes,
        "environment": evaluation.environment(),
    }


def _store(folder: Path, preprocessing: dict, fit: dict, holdout: int, result: dict) -> None:
    """Writes calibration.json, then the temperature into preprocessing.json; a failure leaves both as they were."""
    record = {
        **preprocessing,
        "temperature": fit["temperature"],
        "temperature_fit": {
            "holdout": holdout,
            "examples": fit["examples"],
            "nll_before": fit["nll_before"],
            "nll_after": fit["nll_after"],
            "at_bound": fit["at_bound"],
        },
    }
    with restored_on_failure(folder / CALIBRATION_FILE):
        write_json(folder / CALIBRATION_FILE, result)
        write_json(folder / PREPROCESSING_FILE, record)


def stored_temperature(value, where) -> float:
    """A temperature read from a file (`where` names it), checked: a finite number > 0, else one RunError."""
    try:
        return calibration.check_temperature(value)
    except ValueError:
        raise RunError(
            f"{where} records the temperature {value!r}, not a finite number > 0 (an edited file?); run "
            "`stkd-keras calibrate RUN` again."
        ) from None


def keras_temperature(preprocessing: dict | None, model_path) -> dict:
    """The temperature `evaluate --calibrated` divides a Keras model's logits by: its preprocessing.json's.

    Raises:
        RunError: When none is stored.
    """
    value = (preprocessing or {}).get("temperature")
    if value is None:
        raise RunError(f"No temperature is stored for {model_path}; run `stkd-keras calibrate RUN` first.")
    value = stored_temperature(value, f"The {PREPROCESSING_FILE} of {model_path}")
    return {"value": value, "applied": APPLIED_BY_EVALUATE, "from": PREPROCESSING_FILE}


def exported_temperature(metadata: dict, preprocessing: dict, path, calibrated: bool) -> dict | None:
    """Which temperature an exported file's figures carry, and where it is applied (None: none).

    A file exported with --calibrated divides by it in its graph (its metadata says so): reported, never applied
    again. Otherwise `calibrated` applies the temperature its metadata (or a preprocessing.json beside it) records.

    Raises:
        RunError: For `calibrated` on a file without a temperature.
    """
    recorded = metadata.get("temperature") or {}
    if recorded.get("applied_in_graph"):
        value = stored_temperature(recorded.get("value"), f"The metadata of {path}")
        return {"value": value, "applied": APPLIED_IN_GRAPH, "from": "embedded metadata"}
    if not calibrated:
        return None
    if recorded.get("value") is not None:
        value = stored_temperature(recorded["value"], f"The metadata of {path}")
        return {"value": value, "applied": APPLIED_BY_EVALUATE, "from": "embedded metadata"}
    if preprocessing.get("temperature") is not None:
        return {
            "value": stored_temperature(preprocessing["temperature"], f"The {PREPROCESSING_FILE} beside {path}"),
            "applied": APPLIED_BY_EVALUATE,
            "from": PREPROCESSING_FILE,
        }
    raise RunError(
        f"{path} carries no temperature; run `stkd-keras calibrate RUN` first, then export it again (with "
        "--calibrated to put it in the file)."
    )


def temperature_scaled(model, temperature: float):
    """`model` with its logits divided by `temperature`: a functional wrapper ending in a `Rescaling(1 / T)` layer.

    The layer is a multiplication the converters keep in the exported graph, so the file's logits are the
    calibrated ones; the wrapper keeps the model's name and input shape.
    """
    import keras

    inputs = keras.Input(shape=model.input_shape[1:], name="images")
    scaled = keras.layers.Rescaling(1.0 / temperature, name="temperature_scaling")(model(inputs))
    return keras.Model(inputs, scaled, name=model.name)
