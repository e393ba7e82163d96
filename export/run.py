"""Export a finished run's student: everything `stkd-keras export` does, as one library call.

    from stkd_keras.export import ExportOptions, export_run

    report = export_run("runs/stkd", "runs/stkd/export", ExportOptions(quantize="all", qat_epochs=1))

`prepare_export` resolves what an export will do without TensorFlow (the
student file, its preprocessing, the dataset, the teacher and the method of a
QAT/pruning fine-tuning, read from the run's metrics.json), so a mistake is
answered before anything loads; `export_run` then converts, verifies and writes
the files (`stkd_keras.export.core.export_model`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

from stkd_keras.export.plan import DEFAULT_OPSET, ExportError, FineTuning, export_plan

# Epochs of the pruning fine-tuning (its schedule needs at least two).
PRUNE_EPOCHS = 2


class ExportOptionError(ExportError):
    """An export option that cannot work; `option` names it as the command line spells it."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What an export writes and how it verifies (the options of `stkd-keras export`, with the same defaults).

    formats: ("tflite", "onnx"), or one of them.
    quantize: Modes as `export_plan` takes them (None: float32 and int8).
    qat_epochs / prune_sparsity: Also write int8 after quantization-aware training / pruning (tfmot).
    teacher: The teacher of that fine-tuning (default: the run's own, if still there).
    finetune_method / finetune_options: Its method and hyperparameters (default: the run's own).
    finetune_subset: Training images of the fine-tuning (default: the whole training split).
    dataset / data_dir / download: Where the verification and calibration images come from (default: the run's dataset).
    verify_images: Test images each file is verified on (None: the whole test split).
    representative_images: Training images calibrating int8.
    calibrated: Build the temperature `stkd-keras calibrate` stored into every file, as a final division of the
        logits (`stkd_keras.temperature.temperature_scaled`); the files are verified against the scaled model.
    """

    formats: tuple = ("tflite", "onnx")
    quantize: Any = None
    qat_epochs: int | None = None
    prune_sparsity: float | None = None
    teacher: str | os.PathLike | None = None
    finetune_method: str | None = None
    finetune_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    finetune_subset: int | None = None
    dataset: str | None = None
    data_dir: str | None = None
    download: bool = True
    verify_images: int | None = 500
    representative_images: int = 200
    dynamic_batch: bool = False
    opset: int = DEFAULT_OPSET
    overwrite: bool = False
    calibrated: bool = False

    @property
    def fine_tunes(self) -> bool:
        return bool(self.qat_epochs or self.prune_sparsity)


@dataclasses.dataclass(frozen=True)
class ExportJob:
    """An export resolved by `prepare_export`: what `export_run` converts, with what, from where."""

    student_file: Path
    preprocessing: dict
    dataset: str
    source: dict
    run_metrics: dict
    method: Any = None  # the fine-tuning's method (a registered DistillationMethod), or None
    hyperparameters: dict = dataclasses.field(default_factory=dict)
    teacher_file: Path | None = None
    notes: tuple = ()
    # The run's stored temperature as the metadata records it (`value`, `applied_in_graph`, `fit`), or None.
    temperature: dict | None = None


def run_teacher(run_folder: Path, run_metrics: dict) -> Path | None:
    """The teacher a run was distilled from: its teacher/ folder, or the file its metrics.json names, if still there."""
    if (run_folder / "teacher").is_dir():
        return run_folder / "teacher"
    recorded = (run_metrics.get("teacher") or {}).get("path")
    return Path(recorded) if recorded and Path(recorded).exists() else None


def finetune_method(config: dict, name: str, options: Mapping[str, Any]):
    """The fine-tuning's method and hyperparameters: the run's own values (its config), overridden by `options`.

    Raises:
        ValueError: For a name or value the method does not take (one sentence).
    """
    from stkd_keras import methods

    method = methods.get_method(name)
    hyperparameters = {key: value for key, value in config.items() if key in method.hyperparameter_names()}
    hyperparameters.update(options)
    method.make_hyperparameters(**hyperparameters)
    return method, hyperparameters


def prepare_export(model_path: str | os.PathLike, options: ExportOptions = ExportOptions()) -> ExportJob:
    """Resolves an export without TensorFlow: every mistake in `options` is one sentence before anything loads.

    Raises:
        ExportOptionError: For an option that cannot work (its `option` names it).
        ExportError: For a model that cannot be exported (no preprocessing record).
        ValueError: For fine-tuning hyperparameters the method does not take.
        RunError: For a missing or unreadable model or teacher file.
    """
    from stkd_keras import runs
    from stkd_keras.methods import check_teacher

    try:
        export_plan(options.formats, options.quantize)
    except ExportError as error:
        raise ExportOptionError(str(error), "--quantize") from None
    model_path = Path(model_path)
    if model_path.suffix in (".tflite", ".onnx"):
        raise ExportOptionError(
            f"{model_path} is already exported; pass the .keras student (or its run folder).", "--model"
        )
    student_file = runs.model_file(model_path)
    preprocessing = runs.read_preprocessing(model_path)
    if preprocessing is None:
        raise ExportError(
            f"No preprocessing.json beside {model_path}: export needs the normalisation the model was trained with."
        )
    dataset = options.dataset or preprocessing["dataset"]
    runs.check_preprocessing_fits(preprocessing, dataset, student_file)
    run_folder = student_file.parent
    metrics_path = run_folder / runs.METRICS_FILE
    run_metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    source = {"path": str(model_path)}
    if run_metrics:
        source["final_val_accuracy"] = run_metrics.get("final_val_accuracy")
    temperature = _temperature(model_path, preprocessing, options)
    job = ExportJob(student_file, preprocessing, dataset, source, run_metrics, temperature=temperature)
    if not options.fine_tunes:
        return job
    config = run_metrics.get("config") or {}
    teacher = options.teacher or run_teacher(run_folder, run_metrics)
    method, hyperparameters = finetune_method(
        config,
        options.finetune_method or config.get("method") or ("stkd" if teacher else "ce"),
        options.finetune_options,
    )
    notes = []
    if method.needs_teacher:
        try:
            check_teacher(method, teacher, "--teacher (none was found beside the run), or --finetune-method ce")
        except ValueError as error:
            raise ExportOptionError(f"QAT/pruning fine-tuning: {error}", "--teacher") from None
    else:
        if options.teacher is not None:
            notes.append(f"Note: method {method.name!r} uses no teacher; the teacher given is not used.")
        teacher = None
    teacher_file = runs.model_file(teacher, "teacher") if teacher is not None else None
    return dataclasses.replace(
        job, method=method, hyperparameters=hyperparameters, teacher_file=teacher_file, notes=tuple(notes)
    )


def _temperature(model_path: Path, preprocessing: dict, options: ExportOptions) -> dict | None:
    """The run's stored temperature for the metadata, and whether the files apply it; refuses what cannot work.

    Raises:
        ExportOptionError: For `calibrated` without a stored temperature, or beside a QAT/pruning fine-tuning (whose
            files the bridge writes from the unscaled student).
    """
    if options.calibrated and preprocessing.get("temperature") is None:
        raise ExportOptionError(
            f"No temperature is stored for {model_path}; run `stkd-keras calibrate RUN` first.", "--calibrated"
        )
    if options.calibrated and options.fine_tunes:
        raise ExportOptionError(
            "the QAT/pruning files are written from the unscaled student and would not carry the temperature; "
            "export them in a separate export without --calibrated.",
            "--calibrated",
        )
    if preprocessing.get("temperature") is None:
        return None
    from stkd_keras.temperature import stored_temperature

    return {
        "value": stored_temperature(preprocessing["temperature"], f"The preprocessing.json of {model_path}"),
        "applied_in_graph": bool(options.calibrated),
        "fit": preprocessing.get("temperature_fit"),
    }


def fine_tunings(job: ExportJob, options: ExportOptions) -> tuple:
    """The QAT and pruning fine-tunings an export asks for, as the bridge's `FineTuning` contract."""
    common = {
        "model": str(job.student_file),
        "dataset": job.dataset,
        "teacher": str(job.teacher_file) if job.teacher_file else None,
        "data_dir": options.data_dir,
        "train_subset": options.finetune_subset,
        "method": job.method.name if job.method else None,
        "hyperparameters": dict(job.hyperparameters),
        # The fine-tuning continues the finished run: past its warm-up, as the run ended.
        "initial_epoch": (job.run_metrics.get("final_epoch") or {}).get("epoch") or 0,
    }
    planned = []
    if options.qat_epochs:
        planned.append(FineTuning(mode="qat", epochs=options.qat_epochs, **common))
    if options.prune_sparsity:
        planned.append(FineTuning(mode="prune", epochs=PRUNE_EPOCHS, sparsity=options.prune_sparsity, **common))
    return tuple(planned)


def fine_tuning_line(job: ExportJob, options: ExportOptions, option_names: Mapping[str, str] | None = None) -> str:
    """What the QAT/pruning fine-tuning will do, said before it starts: its steps, images and method.

    `option_names` spells an `ExportOptions` field as the caller's user knows it (the command line: its option);
    a field not in it is named as itself.
    """
    subset = (option_names or {}).get("finetune_subset", "finetune_subset")
    steps = [f"{options.qat_epochs} epoch(s) of quantization-aware training"] if options.qat_epochs else []
    steps += (
        [f"{PRUNE_EPOCHS} epochs of pruning to {options.prune_sparsity:.0%} sparsity"] if options.prune_sparsity else []
    )
    images = (
        f"{options.finetune_subset:,} training images ({subset})"
        if options.finetune_subset
        else f"the whole {job.dataset} training split ({subset} N for fewer)"
    )
    return (
        f"QAT/pruning fine-tuning: {' and '.join(steps)} on {images}, method {job.method.name!r}"
        + (f" with {job.hyperparameters}" if job.hyperparameters else "")
        + "; each step prints its progress and an estimate of its time once it has measured a few batches."
    )


def export_run(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    options: ExportOptions = ExportOptions(),
    log=print,
    job: ExportJob | None = None,
    option_names: Mapping[str, str] | None = None,
) -> dict:
    """Exports a student (a run folder or its .keras file) into `output`; returns the report (also export_report.json).

    Runs on the TensorFlow backend (its converters). `job` is `prepare_export`'s
    result, when the caller has already resolved it. `option_names` spells
    `ExportOptions` fields in what is logged (`fine_tuning_line`).
    """
    from stkd_keras.evaluation import load_model
    from stkd_keras.export.core import export_model, load_export_data

    job = job or prepare_export(model_path, options)
    for note in job.notes:
        log(note)
    model = load_model(job.student_file)
    if job.temperature and job.temperature["applied_in_graph"]:
        from stkd_keras.temperature import temperature_scaled

        model = temperature_scaled(model, job.temperature["value"])
        log(f"Dividing the logits by the temperature {job.temperature['value']:.4f} in every file (--calibrated).")
    if options.fine_tunes:
        log(fine_tuning_line(job, options, option_names))
    data = load_export_data(
        job.dataset,
        job.preprocessing,
        options.verify_images,
        options.representative_images,
        options.data_dir,
        options.download,
    )
    return export_model(
        model,
        output,
        data,
        job.preprocessing,
        formats=options.formats,
        quantize=options.quantize,
        dynamic_batch=options.dynamic_batch,
        opset=options.opset,
        overwrite=options.overwrite,
        stem=job.student_file.stem,
        source=job.source,
        log=log,
        fine_tunings=fine_tunings(job, options),
        temperature=job.temperature,
    )
