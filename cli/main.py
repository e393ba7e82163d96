"""`stkd-keras`: distil compact image classifiers with STKD from the shell.

Each command is its options and a call into the library. The options they share are in `stkd_keras.cli.options`,
the backend each runs on is chosen by `stkd_keras.cli.backends`, the library's errors about user input become one
sentence in `stkd_keras.cli.errors`, train-teacher and distill start or resume their run through
`stkd_keras.cli.training_runs`, the listing commands (datasets, methods, models) are in `stkd_keras.cli.listings`,
and report and compare in `stkd_keras.cli.reports`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from stkd_keras import backend_selection
from stkd_keras.cli.backends import BackendCommand, check_backend, use_backend
from stkd_keras.cli.calibration import calibrate, calibration_line, export_temperature_line
from stkd_keras.cli.errors import user_errors
from stkd_keras.cli.listings import list_datasets, list_method_table, list_zoo
from stkd_keras.cli.options import (
    CountOrAll,
    DatasetName,
    ModelName,
    apply_recipe,
    data_options,
    field_values,
    hyperparameter_options,
    method_names,
    method_options,
    model_options,
    run_config,
    training_options,
)
from stkd_keras.cli.reports import compare_runs, report
from stkd_keras.cli.training_runs import report_result, start_or_resume
from stkd_keras.markdown import markdown_row

DEFAULT_TEACHER_MODEL = "resnet14"


@click.group()
@click.version_option(package_name="stkd-keras")
def cli():
    """Similarity Transfer for Knowledge Distillation (STKD) for Keras 3."""


@cli.command("train-teacher", cls=BackendCommand)
@data_options
@model_options("--model", "--weights", "resnet20", "Teacher")
@training_options
@user_errors
@click.pass_context
def train_teacher(ctx, output, overwrite, quiet, resume, backend, **options):
    """Train a teacher with cross-entropy; writes teacher.keras, history.csv and metrics.json to OUTPUT."""

    def prepare():
        renames = {
            "teacher_model": "model",
            "teacher_weights": "weights",
            "teacher_epochs": "epochs",
            "student": None,
            "student_weights": None,
            "model": None,
            "weights": None,
            "teacher": None,
        }
        config = run_config(apply_recipe(ctx, options, renames), method="ce")
        config.validate()
        return lambda training, **run: training.train_teacher(config, output, overwrite, log=click.echo, **run)

    result = start_or_resume(ctx, backend, resume, output, quiet, options, prepare)
    report_result(result.metrics, result.output, "teacher")


@cli.command(cls=BackendCommand)
@data_options
@click.option(
    "--teacher",
    default=None,
    type=click.Path(),
    help="Teacher .keras file or run folder. Without it, one is trained first.",
)
@click.option(
    "--teacher-model",
    default=DEFAULT_TEACHER_MODEL,
    show_default=True,
    type=ModelName(),
    help="Architecture of the teacher trained when --teacher is not given (as --student).",
)
@click.option("--teacher-weights", default=None, help="Starting weights of that teacher (as --student-weights).")
@click.option(
    "--teacher-epochs", default=None, type=click.IntRange(min=1), help="Epochs of that teacher (default: --epochs)."
)
@model_options("--student", "--student-weights", "resnet8", "Student")
@click.option(
    "--method",
    default="stkd",
    show_default=True,
    type=click.Choice(method_names()),
    help="Training method (`stkd-keras methods` describes each).",
)
@hyperparameter_options
@training_options
@user_errors
@click.pass_context
def distill(ctx, output, overwrite, quiet, resume, backend, **options):
    """Distil a student with STKD (or a baseline method) into OUTPUT.

    Writes student.keras, history.csv and metrics.json; a teacher trained on
    the way goes to OUTPUT/teacher/. A run killed at any moment continues
    with --resume OUTPUT from its last completed epoch, on the backend it
    started on.
    """
    from stkd_keras.config import teacher_config_for
    from stkd_keras.methods import check_teacher
    from stkd_keras.runs import model_file

    def prepare():
        merged = apply_recipe(ctx, options, {"model": "student", "weights": "student_weights"})
        hyperparameters = method_options(ctx, merged)
        teacher, teacher_model, teacher_weights, teacher_epochs = (
            merged.pop("teacher"),
            merged.pop("teacher_model"),
            merged.pop("teacher_weights"),
            merged.pop("teacher_epochs"),
        )
        config = run_config(
            merged,
            model=merged.pop("student"),
            weights=merged.pop("student_weights"),
            teacher=teacher,
            method_options=hyperparameters,
        )
        if teacher is not None:
            try:
                check_teacher(config.method, teacher, "--teacher")  # without one, distill trains a teacher first
            except ValueError as error:
                raise click.BadParameter(str(error), param_hint="--teacher") from None
        if teacher is not None:
            model_file(teacher, "teacher")  # a missing or non-Keras teacher file is named before anything loads
            if teacher_weights is not None:
                raise click.BadParameter(
                    "starts the teacher distill trains when --teacher is not given; --teacher brings its own weights.",
                    param_hint="--teacher-weights",
                )
        config.validate()
        teacher_config = teacher_config_for(config, teacher_model, teacher_epochs, teacher_weights)
        if teacher is None:
            teacher_config.validate()
        return lambda training, **run: training.distill(
            config, output, teacher_config, overwrite, log=click.echo, **run
        )

    result = start_or_resume(ctx, backend, resume, output, quiet, options, prepare)
    report_result(result.metrics, result.output, "student")


@cli.command(cls=BackendCommand)
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(),
    help="A .keras model file or run folder, or an exported .tflite / .onnx file.",
)
@data_options
@click.option(
    "--split", default="test", show_default=True, type=click.Choice(["train", "test"]), help="Split to evaluate on."
)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1), help="Batch size.")
@click.option("--subset", default=None, type=click.IntRange(min=1), help="Evaluate on the first N images only.")
@click.option(
    "--json",
    "json_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Where to write the results (default: evaluation_DATASET_SPLIT.json beside the model).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing results file.")
@click.option(
    "--backend",
    default=None,
    type=click.Choice(backend_selection.BACKENDS),
    help="Keras backend to run a .keras model on (it may have been trained on any) "
    "[default: KERAS_BACKEND if set, else tensorflow].",
)
@click.option("--quiet", is_flag=True, help="No progress while evaluating; only the result.")
@click.option(
    "--calibrated",
    is_flag=True,
    help="Divide the logits by the temperature `stkd-keras calibrate` stored (a file exported with --calibrated has "
    "it in its graph already: never applied twice).",
)
@user_errors
@click.pass_context
def evaluate(ctx, model_path, dataset, data_dir, download, split, batch_size, subset, json_path, overwrite, **flags):
    """Print top-1 / top-5 accuracy and calibration (ECE, NLL, Brier) of a saved model and write them to JSON."""
    from stkd_keras import runs, temperature

    # Checked before the backend (and TensorFlow) loads, so a mistake is answered at once.
    check_backend(flags["backend"])
    runs.check_evaluable(model_path, dataset)
    if flags["calibrated"] and Path(model_path).suffix not in (".tflite", ".onnx"):
        temperature.keras_temperature(runs.read_preprocessing(model_path), model_path)
    use_backend(ctx, flags["backend"])
    from stkd_keras.evaluation import evaluate as evaluate_model

    model_path = Path(model_path)
    json_path = Path(json_path) if json_path is not None else runs.evaluation_file(model_path, dataset, split)
    if json_path.exists() and not overwrite:
        raise click.ClickException(
            f"Results file {json_path} already exists; pass --overwrite to replace it or choose --json."
        )
    results = evaluate_model(
        model_path,
        dataset,
        split=split,
        batch_size=batch_size,
        subset=subset,
        data_dir=data_dir,
        download=download,
        log=None if flags["quiet"] else click.echo,
        calibrated=flags["calibrated"],
    )
    runs.write_json(json_path, results)
    click.echo(
        f"{model_path} on {dataset}/{split} ({results['num_examples']} images): "
        f"top-1 {results['accuracy']:.4f}, top-5 {results['top5_accuracy']:.4f}. Wrote {json_path}."
    )
    click.echo(calibration_line(results))
    if flags["calibrated"] and (results["temperature"] or {}).get("applied") == "in the file's graph":
        click.echo("Note: the file divides its logits by the temperature itself; --calibrated applied nothing more.")


@cli.command(cls=BackendCommand, backend="tensorflow")
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(),
    help="The student .keras file (or its run folder), trained on any backend.",
)
@click.option(
    "--format",
    "export_format",
    default="all",
    show_default=True,
    type=click.Choice(["tflite", "onnx", "all"]),
    help="Which runtimes to export for.",
)
@click.option(
    "--quantize",
    "quantize",
    multiple=True,
    metavar="MODES",
    help="Quantization modes, comma-separated or repeated: float32 (or none), float16, dynamic, int8, or all "
    "(every mode the formats have). Each mode is written for every chosen format that has it (ONNX: float32, int8). "
    "[default: float32,int8]",
)
@click.option(
    "--qat",
    "qat_epochs",
    default=None,
    type=click.IntRange(min=1),
    help="Also export int8 after N epochs of quantization-aware training (tfmot, fine-tuned with the run's method).",
)
@click.option(
    "--prune",
    "prune_sparsity",
    default=None,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Also export int8 after pruning to this sparsity (tfmot).",
)
@click.option(
    "--teacher",
    default=None,
    type=click.Path(),
    help="Teacher for QAT/pruning fine-tuning (default: the run's teacher/ folder, or the teacher its metrics.json "
    "names).",
)
@click.option(
    "--finetune-method",
    default=None,
    type=click.Choice(method_names()),
    help="Distillation method of the QAT/pruning fine-tuning (default: the run's own, from its metrics.json; "
    "without one, stkd when there is a teacher, else ce).",
)
@click.option(
    "--finetune-option",
    "finetune_options",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A hyperparameter of that method (repeatable; default: the run's own values, else the method's defaults).",
)
@click.option(
    "--finetune-subset",
    default=None,
    type=click.IntRange(min=1),
    help="Training images for QAT/pruning fine-tuning (default: the whole training split; e.g. 5000 for a quick pass).",
)
@click.option(
    "--dataset",
    default=None,
    type=DatasetName(),
    help="Dataset for verification and calibration (default: the one the model was trained on).",
)
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="As for distill.")
@click.option("--download/--no-download", default=True, show_default=True, help="Let tfds download a missing dataset.")
@click.option(
    "--verify-images",
    default="500",
    show_default=True,
    type=CountOrAll(),
    help="Test images each file is verified on: the first N, or all (the whole test split, comparable with evaluate).",
)
@click.option(
    "--representative-images",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Training images for int8 calibration.",
)
@click.option(
    "--dynamic-batch", is_flag=True, help="Keep the batch dimension free (default: fixed to 1 for edge delegates)."
)
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=13), help="ONNX opset.")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Folder for the exported files.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the earlier export in the folder (its files this export does not write are removed).",
)
@click.option(
    "--calibrated",
    is_flag=True,
    help="End every file with a division of its logits by the temperature `stkd-keras calibrate` stored (recorded "
    "in the metadata; verified against the scaled Keras model).",
)
@user_errors
@click.pass_context
def export(ctx, model_path, export_format, quantize, finetune_options, verify_images, output, **options):
    """Export a student to TFLite/LiteRT and ONNX, verify each file in its runtime, and write export_report.json.

    The converters are TensorFlow's: the export runs on the TensorFlow backend
    (in a child process when this one runs Keras on another), whichever
    backend trained the student.
    """
    if importlib.util.find_spec("tensorflow") is None:
        raise click.ClickException(
            "Export runs the TensorFlow converters, and TensorFlow is not installed: pip install 'stkd-keras[export]'."
        )
    from stkd_keras.export import run as export_run

    export_options = export_run.ExportOptions(
        formats=("tflite", "onnx") if export_format == "all" else (export_format,),
        quantize=quantize or None,
        finetune_options=field_values(finetune_options, "--finetune-option"),
        verify_images=None if verify_images == "all" else verify_images,
        **options,
    )
    # Everything that can be checked without TensorFlow is, so a mistake is answered at once.
    job = export_run.prepare_export(model_path, export_options)
    use_backend(ctx, "tensorflow")
    report = export_run.export_run(
        model_path, output, export_options, log=click.echo, job=job, option_names=_EXPORT_OPTION_NAMES
    )
    _echo_export_table(report, job.dataset)
    if report["metadata"].get("temperature"):
        click.echo(export_temperature_line(report["metadata"]["temperature"]))
    click.echo(f"Wrote {Path(output) / 'export_report.json'}.")


# The library's messages name ExportOptions fields; here they are the options that set them.
_EXPORT_OPTION_NAMES = {"finetune_subset": "--finetune-subset"}


def _echo_export_table(report: dict, dataset: str) -> None:
    """Keras's top-1 on the verification images, then one row per exported file."""
    click.echo(_verification_line(report, dataset))
    click.echo("| file | input | size | max abs logit diff | top-1 agreement | top-1 | ms/image |")
    click.echo("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in report["files"]:
        click.echo(
            markdown_row(
                [
                    row["file"],
                    row["input_dtype"],
                    f"{row['size_bytes'] / 1024:,.0f} KiB",
                    f"{row['max_abs_logit_diff']:.2e}",
                    f"{row['top1_agreement']:.4f}",
                    f"{row['top1_accuracy']:.4f}",
                    f"{row['ms_per_image']:.2f}",
                ]
            )
        )


def _verification_line(report: dict, dataset: str) -> str:
    """Keras's top-1 on the verification images, saying whether they are the whole test split or its first N."""
    count = report["verification_images"]
    top1 = report["keras_top1_accuracy"]
    if report.get("verification_is_whole_split"):
        return (
            f"Keras top-1 on the whole {dataset} test split ({count:,} images): {top1:.4f}; the files' top-1 below is "
            "on the same images."
        )
    return (
        f"Keras top-1 on the first {count:,} {dataset} test images (the verification subset, not the whole split; "
        f"--verify-images all measures all of it, as evaluate does): {top1:.4f}"
    )


for command in (report, compare_runs):
    cli.add_command(command)
for listing in (list_datasets, list_method_table, list_zoo):
    cli.add_command(listing)
cli.add_command(calibrate)


if __name__ == "__main__":
    cli()
