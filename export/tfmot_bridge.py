"""Quantization-aware training and pruning of a Keras 3 student through tensorflow-model-optimization.

Contract: this module runs only as its own process, given one
`stkd_keras.export.plan.FineTuning` as JSON (what `stkd-keras export` does),
or the same fields as options:

    python -m stkd_keras.export.tfmot_bridge --spec FINE_TUNING.json
    python -m stkd_keras.export.tfmot_bridge --model student.keras --dataset NAME \\
        --mode qat|prune --output OUT.tflite --report OUT.json [options]

and nothing else in stkd-keras imports it (of the modules it runs, `tf_keras_rebuild`, `tfmot_transforms`,
`tfmot_fine_tune` and `tf_keras_tflite`, only the method test kit `stkd_keras.testing` uses two, without tfmot).
tensorflow-model-optimization (tfmot 0.8.1) works only with legacy Keras (`tf_keras`, Keras 2): importing it
sets `TF_USE_LEGACY_KERAS=1` for the whole process, and `quantize_model`
rejects Keras 3 models. Keeping it in a subprocess leaves every other process
on Keras 3 and lets a tfmot failure end with one line on stderr, which the
caller (`stkd_keras.export.core.run_tfmot_bridge`) shows to the user.

What a run does:
1. Loads the Keras 3 student (and teacher) and rebuilds each as a `tf_keras`
   functional model, layer by layer from the Keras 3 functional graph, with
   the same hyperparameters and weights (`stkd_keras.export.tf_keras_rebuild`,
   which lists the layers it translates); the rebuilt model must reproduce the
   Keras 3 logits on real evaluation images to 1e-5 (max abs difference),
   otherwise the run stops.
2. `--mode qat`: `tfmot.quantization.keras.quantize_model`. The weightless
   channel layers of the ShuffleNets (ChannelShuffle, ChannelSplit) only move
   values, so they get a no-op quantize config: their outputs keep the
   quantization of their inputs.
   `--mode prune`: `prune_low_magnitude` on every Conv2D, DepthwiseConv2D and
   Dense layer, PolynomialDecay (power 3) from 0 to `--sparsity`, reaching the
   target at 80% of the fine-tuning steps so that the last 20% recover with the
   final mask; then `strip_pruning` (`stkd_keras.export.tfmot_transforms`).
3. Fine-tunes with the distillation method the student was trained with
   (`--method` and `--hyperparameters`, any registered method; the export
   command passes the run's own), with the Distiller's own step loss
   (`stkd_keras.methods.step_loss`), its epochs counted on from
   `--initial-epoch` (the run's epochs, so a warm-up such as DKD's is over). For STKD
   (Zhao et al. 2021, arXiv 2103.10047) each batch is mixed, the teacher sees
   the same mixed images, and the student learns the STKD loss. A method
   with a teacher needs `--teacher`; `ce` fine-tunes on plain cross-entropy
   (`stkd_keras.export.tfmot_fine_tune`).
4. Converts to full-integer int8 TFLite (int8 input and output) with a
   representative set of training images, writes it atomically, runs it in
   `ai_edge_litert` (`stkd_keras.export.tf_keras_tflite`) and writes a JSON report (also atomically): mode, epochs,
   steps, teacher (path or null), method, loss and hyperparameters, parity_max_abs_diff (student,
   teacher), keras3_top1_accuracy_before, loss_per_epoch,
   float_top1_accuracy (the fine-tuned tf_keras model), pruning (schedule,
   per_layer_sparsity, overall_sparsity, prunable_weights; null for QAT),
   int8_top1_accuracy, int8_float_top1_agreement, int8_size_bytes,
   int8_input_dtype, int8_output_dtype, int8_input_quantization, timings.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import click
import numpy as np

from stkd_keras.export.plan import BridgeError
from stkd_keras.export.tf_keras_rebuild import (
    PARITY_TOLERANCE,
    check_parity,
    custom_layer_classes,
    predict,
    to_tf_keras,
)
from stkd_keras.export.tf_keras_tflite import evaluate_tflite, int8_flatbuffer
from stkd_keras.export.tfmot_fine_tune import fine_tune
from stkd_keras.export.tfmot_transforms import measure_sparsity, prune, pruning_schedule, quantize
from stkd_keras.files import atomic_write


def write_atomically(path: Path, content: bytes) -> None:
    """Writes `content` under a temporary name in the same folder, then renames it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: temporary.write_bytes(content))


# --- Data ----------------------------------------------------------------------------------------------


def _as_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _parse_floats(value: str | None, option: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"Expected comma-separated numbers. Received: {value!r}", param_hint=option) from None


# --- The run ---------------------------------------------------------------------------------------------


class _Models(NamedTuple):
    """The Keras 3 student and teacher as loaded, and their tf_keras rebuilds (the teacher's two None without one)."""

    student_keras3: Any
    student: Any
    teacher_keras3: Any
    teacher: Any


class _Images(NamedTuple):
    """The fine-tuning's training pipeline, its dataset info, the evaluation images and the calibration images."""

    train: Any
    train_info: Any
    eval_images: np.ndarray
    eval_labels: np.ndarray
    representative: np.ndarray


def _method(spec):
    """The registered method of the fine-tuning and its hyperparameters, refused in one sentence before any work."""
    from stkd_keras import methods

    unit = methods.get_method(spec.method or ("stkd" if spec.teacher else "ce"))
    hyperparameters = unit.make_hyperparameters(**spec.hyperparameters).to_dict()  # refuses bad ones before any work
    methods.check_teacher(unit, spec.teacher or None, "--teacher")  # a ValueError: one line from main()
    return unit, hyperparameters


def _load_models(spec, keras, tf_keras, custom_layers: tuple) -> _Models:
    """Loads the Keras 3 student (and teacher) and rebuilds each in tf_keras."""

    def load(path, role):
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as error:
            raise BridgeError(
                f"Cannot load the {role} {path}: "
                f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
            ) from None
        return model, to_tf_keras(model, tf_keras, custom_layers)

    student_keras3, student = load(spec.model, "student")
    teacher_keras3, teacher = load(spec.teacher, "teacher") if spec.teacher else (None, None)
    return _Models(student_keras3, student, teacher_keras3, teacher)


def _load_images(spec, input_shape: tuple) -> _Images:
    """The training pipeline (augmented, shuffled), the evaluation images and the calibration images, preprocessed."""
    from stkd_keras import data as data_lib

    normalization = (spec.mean, spec.std) if spec.mean is not None else None
    common = {
        "data_dir": spec.data_dir,
        "normalization": normalization,
        "image_size": input_shape[:2],
        "channels": input_shape[2],
        "seed": spec.seed,
    }
    train_dataset, train_info = data_lib.load(
        spec.dataset, "train", spec.batch_size, augment=True, shuffle=True, subset=spec.train_subset, **common
    )
    eval_dataset, _ = data_lib.load(
        spec.dataset, "test", 256, augment=False, shuffle=False, subset=spec.eval_subset, **common
    )
    representative_dataset, _ = data_lib.load(
        spec.dataset, "train", 256, augment=False, shuffle=False, subset=spec.representative, **common
    )
    eval_images, eval_labels = _as_arrays(eval_dataset)
    representative, _ = _as_arrays(representative_dataset)
    return _Images(train_dataset, train_info, eval_images, eval_labels, representative)


def _check_fits(spec, models: _Models, images: _Images, input_shape: tuple) -> None:
    """Refuses images, classes or a teacher that do not fit the student, in one sentence."""
    if tuple(images.eval_images.shape[1:]) != input_shape:
        raise BridgeError(
            f"The {spec.dataset} images have shape {images.eval_images.shape[1:]}, the student expects {input_shape}."
        )
    num_classes = int(models.student.output_shape[-1])
    if num_classes != images.train_info.num_classes:
        raise BridgeError(
            f"The student has {num_classes} outputs, {spec.dataset} has {images.train_info.num_classes} classes."
        )
    teacher = models.teacher
    if teacher is not None and tuple(teacher.input_shape[1:]) + tuple(teacher.output_shape[1:]) != input_shape + (
        num_classes,
    ):
        raise BridgeError(
            f"The teacher maps {tuple(teacher.input_shape[1:])} to {teacher.output_shape[-1]} classes, "
            f"the student {input_shape} to {num_classes}; distillation needs the same images and classes."
        )


def _check_rebuilds(models: _Models, images: _Images) -> tuple[dict, float]:
    """Each rebuild's parity with its Keras 3 model, and the Keras 3 student's top-1 before the fine-tuning."""
    parity = {"student": check_parity(models.student_keras3, models.student, images.eval_images, "student")}
    keras3_accuracy = float(
        np.mean(predict(models.student_keras3, images.eval_images).argmax(-1) == images.eval_labels)
    )
    if models.teacher is not None:
        parity["teacher"] = check_parity(models.teacher_keras3, models.teacher, images.eval_images, "teacher")
        models.teacher.trainable = False
    return parity, keras3_accuracy


def _wrapped(spec, student, tfmot, tf_keras, custom_layers: tuple, total_steps: int):
    """The student wrapped for QAT or pruning, the callback stepping its pruning, and its pruning record (QAT: None)."""
    if spec.mode == "qat":
        return quantize(student, tf_keras, tfmot, custom_layers), None, None
    schedule = pruning_schedule(total_steps, spec.sparsity)
    model = prune(student, tf_keras, tfmot, custom_layers, schedule)
    callback = tfmot.sparsity.keras.UpdatePruningStep()
    callback.set_model(model)
    callback.on_train_begin()
    return model, callback, {"schedule": {"class": "PolynomialDecay", **schedule}}


def _fine_tune(spec, unit, hyperparameters: dict, model, teacher, images: _Images, callback, steps_per_epoch, log):
    """Says what the fine-tuning does, then runs it (`tfmot_fine_tune.fine_tune`); returns the mean loss per epoch."""
    what = "Quantization-aware training" if spec.mode == "qat" else f"Pruning to {spec.sparsity:.0%} sparsity"
    if log is not None:
        log(
            f"{what}: {spec.epochs} epoch(s) on {images.train_info.num_examples:,} {spec.dataset} training images "
            f"({steps_per_epoch:,} steps of {spec.batch_size}), method {unit.name!r}."
        )
    return fine_tune(
        model,
        teacher,
        images.train,
        spec.epochs,
        spec.learning_rate,
        unit.name,
        hyperparameters,
        spec.seed,
        on_epoch_end=(lambda: callback.on_epoch_end(-1)) if callback else None,
        steps_per_epoch=steps_per_epoch,
        log=log,
        initial_epoch=spec.initial_epoch,
    )


def _settings(spec, unit, hyperparameters: dict, images: _Images, total_steps: int) -> dict:
    """The report's record of what the run was asked to do and on which images."""
    return {
        "mode": spec.mode,
        "model": str(spec.model),
        "teacher": str(spec.teacher) if spec.teacher else None,
        "method": unit.name,
        "loss": unit.description,
        "epochs": spec.epochs,
        "initial_epoch": spec.initial_epoch,
        "steps": total_steps,
        "optimizer": {"name": "adam", "learning_rate": spec.learning_rate, "batch_size": spec.batch_size},
        "hyperparameters": hyperparameters,
        "seed": spec.seed,
        "dataset": spec.dataset,
        "normalization": {"mean": list(images.train_info.mean), "std": list(images.train_info.std)},
        "train_examples": images.train_info.num_examples,
        "eval_examples": int(len(images.eval_labels)),
        "representative_examples": int(len(images.representative)),
    }


def _int8_results(output: Path, int8: dict, float_predictions: np.ndarray) -> dict:
    """The report's record of the int8 file: path, size, top-1, agreement with float, input and output types."""
    return {
        "int8_file": str(output),
        "int8_size_bytes": output.stat().st_size,
        "int8_top1_accuracy": int8["top1_accuracy"],
        "int8_float_top1_agreement": float(np.mean(int8["predictions"] == float_predictions)),
        "int8_input_dtype": int8["input_dtype"],
        "int8_output_dtype": int8["output_dtype"],
        "int8_input_quantization": int8["input_quantization"],
    }


def run(spec, log=None) -> dict:
    """Does one bridge run (`spec`: a `stkd_keras.export.plan.FineTuning`) and returns the report it writes."""
    started = time.perf_counter()
    timings = {}
    unit, hyperparameters = _method(spec)
    import keras
    import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS=1 for this process
    import tf_keras

    import stkd_keras.models  # noqa: F401  (registers ChannelShuffle / ChannelSplit for loading; `import stkd_keras` alone is lazy)

    tf_keras.utils.set_random_seed(spec.seed)
    custom_layers = custom_layer_classes(tf_keras)
    models = _load_models(spec, keras, tf_keras, custom_layers)
    timings["rebuild_s"] = time.perf_counter() - started
    input_shape = tuple(models.student_keras3.input_shape[1:])
    images = _load_images(spec, input_shape)
    _check_fits(spec, models, images, input_shape)
    parity, keras3_accuracy = _check_rebuilds(models, images)
    timings["data_and_parity_s"] = time.perf_counter() - started - timings["rebuild_s"]

    # From the example count: a tfds pipeline's cardinality can be unknown.
    steps_per_epoch = math.ceil(images.train_info.num_examples / spec.batch_size)
    total_steps = steps_per_epoch * spec.epochs
    model, callback, pruning = _wrapped(spec, models.student, tfmot, tf_keras, custom_layers, total_steps)
    fit_started = time.perf_counter()
    loss_history = _fine_tune(
        spec, unit, hyperparameters, model, models.teacher, images, callback, steps_per_epoch, log
    )
    timings["fine_tune_s"] = time.perf_counter() - fit_started
    if spec.mode == "prune":
        model = tfmot.sparsity.keras.strip_pruning(model)
        per_layer, overall, size = measure_sparsity(model)
        pruning.update({"per_layer_sparsity": per_layer, "overall_sparsity": overall, "prunable_weights": size})
    float_predictions = predict(model, images.eval_images).argmax(-1)

    convert_started = time.perf_counter()
    output = Path(spec.output)
    write_atomically(output, int8_flatbuffer(model, images.representative))
    timings["convert_s"] = time.perf_counter() - convert_started
    int8 = evaluate_tflite(output, images.eval_images, images.eval_labels)
    timings["total_s"] = time.perf_counter() - started
    report = {
        **_settings(spec, unit, hyperparameters, images, total_steps),
        "parity_max_abs_diff": parity,
        "parity_tolerance": PARITY_TOLERANCE,
        "keras3_top1_accuracy_before": keras3_accuracy,
        "loss_per_epoch": loss_history,
        "float_top1_accuracy": float(np.mean(float_predictions == images.eval_labels)),
        "pruning": pruning,
        **_int8_results(output, int8, float_predictions),
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    write_atomically(Path(spec.report), (json.dumps(report, indent=2) + "\n").encode())
    return report


# --- The command ------------------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--spec",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="A fine-tuning written as JSON (stkd_keras.export.plan.FineTuning, what `stkd-keras export` passes); "
    "then no other option.",
)
@click.option(
    "--model",
    "model",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="The Keras 3 student (.keras). Required without --spec.",
)
@click.option(
    "--teacher",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="The Keras 3 teacher (.keras); without it the student fine-tunes on plain cross-entropy.",
)
@click.option(
    "--dataset",
    default=None,
    help="Required without --spec. Dataset name for stkd_keras.data.load (e.g. fashion_mnist, cifar100, folder:PATH).",
)
@click.option("--data-dir", default=None, help="Where the dataset lives (see stkd_keras.data.load).")
@click.option("--mean", default=None, help="Per-channel normalisation mean, comma-separated (default: the dataset's).")
@click.option("--std", default=None, help="Per-channel normalisation std, comma-separated (default: the dataset's).")
@click.option(
    "--mode",
    default=None,
    type=click.Choice(["qat", "prune"]),
    help="Quantization-aware training or magnitude pruning. Required without --spec.",
)
@click.option(
    "--sparsity",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Target sparsity of the pruned kernels (--mode prune).",
)
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(min=1), help="Fine-tuning epochs.")
@click.option(
    "--train-subset",
    default=None,
    type=click.IntRange(min=1),
    help="Fine-tune on the first N training examples of the fixed shuffle.",
)
@click.option("--eval-subset", default=None, type=click.IntRange(min=1), help="Evaluate on the first N test examples.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Fine-tuning batch size.")
@click.option(
    "--learning-rate",
    default=1e-3,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Adam learning rate.",
)
@click.option(
    "--method",
    default=None,
    help="The distillation method of the fine-tuning, a name in stkd_keras.methods.list_methods() "
    "(default: stkd with --teacher, ce without).",
)
@click.option(
    "--hyperparameters",
    default="{}",
    show_default=True,
    help="The method's hyperparameters as JSON, e.g. '{\"temperature\": 2.0}' (the others: its defaults).",
)
@click.option(
    "--representative",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Training images calibrating the int8 conversion.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of data order, augmentation and mixup.")
@click.option(
    "--initial-epoch",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Epochs the student has trained (the run's): the fine-tuning's epochs count on from it, "
    "past a method's warm-up.",
)
@click.option(
    "--output",
    default=None,
    type=click.Path(dir_okay=False),
    help="The int8 .tflite file to write. Required without --spec.",
)
@click.option(
    "--report", default=None, type=click.Path(dir_okay=False), help="The JSON report to write. Required without --spec."
)
@click.pass_context
def main(ctx, spec, **options):
    """Quantization-aware training or pruning of a Keras 3 student with tfmot, distilled from its teacher,
    to int8 TFLite.

    Runs as its own process: tfmot needs legacy Keras (tf_keras).
    """
    from stkd_keras.data import DatasetNotFoundError

    try:
        fine_tuning = _fine_tuning(ctx, spec, options)
        report = run(fine_tuning, log=click.echo)  # flushed per line: the exporting process shows it as it comes
    except (BridgeError, DatasetNotFoundError, ValueError) as error:
        raise click.ClickException(" ".join(str(error).split())) from None
    click.echo(
        f"{report['mode']}: parity {report['parity_max_abs_diff']['student']:.1e}, float top-1 "
        f"{report['float_top1_accuracy']:.4f}, "
        f"int8 top-1 {report['int8_top1_accuracy']:.4f}, {report['int8_size_bytes']} bytes -> {report['int8_file']}"
    )


def _fine_tuning(ctx, spec, options: dict):
    """The `FineTuning` of this process: read from --spec, or built from the options."""
    from click.core import ParameterSource

    from stkd_keras.export.plan import FineTuning

    if spec is not None:
        given = [
            f"--{name.replace('_', '-')}"
            for name in options
            if ctx.get_parameter_source(name) != ParameterSource.DEFAULT
        ]
        if given:
            raise click.UsageError(f"--spec holds the whole fine-tuning; drop {', '.join(given)}.")
        return FineTuning.from_json(Path(spec).read_text())
    missing = [f"--{name}" for name in ("model", "dataset", "mode", "output", "report") if options[name] is None]
    if missing:
        raise click.UsageError(f"Missing option(s) {', '.join(missing)} (or give the whole fine-tuning with --spec).")
    options["mean"] = _parse_floats(options["mean"], "--mean")  # FineTuning checks that they come together, and match
    options["std"] = _parse_floats(options["std"], "--std")
    try:
        options["hyperparameters"] = json.loads(options["hyperparameters"])
    except json.JSONDecodeError as error:
        raise click.BadParameter(
            f"Expected a JSON object. Received: {options['hyperparameters']!r} ({error})",
            param_hint="--hyperparameters",
        ) from None
    if not isinstance(options["hyperparameters"], dict):
        raise click.BadParameter(
            f"Expected a JSON object. Received: {options['hyperparameters']!r}", param_hint="--hyperparameters"
        )
    return FineTuning(**options)


if __name__ == "__main__":
    main()
