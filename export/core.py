"""Export a trained student to TFLite/LiteRT and ONNX, verified against Keras before it is written.

Every file is converted into a staging folder, loaded back in its own runtime
(`ai_edge_litert`, `onnxruntime`), run on real evaluation images with the
model's own preprocessing, and compared with the Keras student; only when
every file is within its bound are they all moved into the output folder
(`os.replace`, atomic per file, the set named first in a journal:
`stkd_keras.export.commit`). A failed export leaves nothing under the final
names; one killed while moving its files is cleaned up by the next export into
the folder, as are the staging folders of killed exports. Existing files are
replaced only with `overwrite=True`. The steps: plan (`ExportPlan`, without
TensorFlow), convert, verify, commit.

Every file is converted from one trace of the model (`stkd_keras.export.converters`).

Bounds, as a fraction of the logits' scale, max(1, largest |Keras logit|): max
|logit difference| <= 1e-4 of it for float32 (a miss aborts the export: the
conversion is broken; float32 arithmetic alone moves the logits by a few 1e-6
of it) and <= 2e-2 for float16 (a miss is reported and warned about: float16
weights round to 2^-11 of their value); the dynamic-range and int8 files report
top-1 agreement with Keras and top-1 accuracy (their cost is reported, not bounded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from stkd_keras.native_stderr import filtered_stderr
from stkd_keras.export.commit import commit, prepare_folder, staging_folder
from stkd_keras.export.converters import convert_onnx, convert_tflite, quantize_onnx_int8, write_saved_model
from stkd_keras.export.plan import (
    DEFAULT_OPSET,
    FLOAT_BOUNDS,
    ExportError,
    ExportPlan,
    OnnxInt8Config,
    export_plan,
    file_name,
    float_bound,
)
from stkd_keras.export.runtime import embed_metadata, quantization_parameters, runner_for
from stkd_keras.files import file_sha256
from stkd_keras.runs import output_lock, output_path


@dataclasses.dataclass
class ExportData:
    """Evaluation images and labels, and a representative sample of training images (same preprocessing)."""

    images: np.ndarray
    labels: np.ndarray
    representative: np.ndarray
    split: str = "test"
    whole_split: bool = False  # True when `images` are the whole split, not its first N


def _verify(path: Path, quantization: str, data: ExportData, reference: np.ndarray) -> dict:
    runner = runner_for(path)
    started = time.perf_counter()
    logits = runner.predict(data.images)
    seconds = time.perf_counter() - started
    predicted = logits.argmax(axis=-1)
    row = {
        "file": path.name,
        "format": path.suffix[1:],
        "quantization": quantization,
        "size_bytes": path.stat().st_size,
        "input_dtype": runner.input_dtype,
        "output_dtype": runner.output_dtype,
        "images": int(len(data.images)),
        "max_abs_logit_diff": float(np.max(np.abs(logits - reference))),
        "max_abs_logit": float(np.max(np.abs(reference))),
        "top1_agreement": float(np.mean(predicted == reference.argmax(axis=-1))),
        "top1_accuracy": float(np.mean(predicted == data.labels)),
        "ms_per_image": round(1e3 * seconds / max(1, len(data.images)), 3),
    }
    bound = float_bound(quantization, row["max_abs_logit"])
    if bound is not None:
        row["bound"] = bound
        row["within_bound"] = row["max_abs_logit_diff"] <= bound
    return row


def export_model(
    model,
    output_dir: str | os.PathLike,
    data: ExportData,
    preprocessing: dict,
    formats=("tflite", "onnx"),
    quantize=None,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    stem: str = "student",
    source: dict | None = None,
    fine_tunings=(),
    log=print,
    temperature: dict | None = None,
) -> dict:
    """Converts, verifies and writes the student's files; returns the report (also written as export_report.json).

    Every (format, quantization) pair of `export_plan(formats, quantize)` is
    one file with its own entry in export_report.json and metadata.json (input
    and output dtype, quantization parameters). With `overwrite=True` the new
    export replaces the previous one in the folder as a whole: files the
    previous metadata.json listed and this export does not write are removed,
    so both JSON files always describe exactly the exported files present.

    Args:
        model: The Keras student (logits output).
        output_dir: Folder for the files.
        data: Evaluation images/labels and representative training images.
        preprocessing: The model's `preprocessing.json` record (mean, std, class names, input shape).
        formats: A subset of ("tflite", "onnx"), or ("all",).
        quantize: Modes among "float32" (alias "none"), "float16", "dynamic" and "int8" (ONNX:
            float32 and int8), as a sequence, a comma-separated string or "all" (every mode of
            every format); None gives float32 and int8.
        dynamic_batch, opset: Keep the batch dimension free (default: fixed to 1 for edge delegates); the ONNX opset.
        overwrite: Replace an earlier export in the folder.
        stem: File name stem.
        source: Where the model came from (path, accuracy), recorded in the metadata.
        fine_tunings: `FineTuning`s (`stkd_keras.export.plan`), one per extra int8 file: after
            quantization-aware training (mode "qat") or pruning ("prune") through
            `stkd_keras.export.tfmot_bridge` (a subprocess); their images, output and report are filled in here.
        temperature: The run's temperature for the metadata (`value`, `fit`, `applied_in_graph`: in `model`), or None.

    Returns:
        The report: Keras's top-1 on the verification images, and one row per file.

    Raises:
        ExportError: For an impossible request, a failed conversion, or a float32 file outside its bound.
        OutputInUse: When another process is exporting into `output_dir`.
    """
    with _export_guard(output_dir):
        plan = ExportPlan(
            tuple(export_plan(formats, quantize)),
            stem=stem,
            fine_tunings=tuple(fine_tunings),
            dynamic_batch=dynamic_batch,
            opset=opset,
        )
        output_dir = output_path(output_dir)
        return _export(model, output_dir, data, preprocessing, plan, overwrite, source, log, temperature)


@contextlib.contextmanager
def _export_guard(output_dir) -> Iterator[None]:
    """The output folder locked, the converters' noise kept out of stderr."""
    # One export into a folder at a time: a second is refused at once, naming the holder (runs.output_lock).
    # The converters' and runtimes' own C++ prints are left out of stderr; real errors are written back.
    with output_lock(output_dir), filtered_stderr():
        yield


@dataclasses.dataclass(frozen=True)
class _Conversion:
    """One export under way: what its convert and verify steps share."""

    model: object
    plan: ExportPlan
    data: ExportData
    staging: Path
    reference: np.ndarray  # the Keras model's logits on `data.images`
    shared: dict  # the metadata every file carries
    log: Callable


def _export(
    model, output_dir: Path, data, preprocessing, plan: ExportPlan, overwrite, source, log, temperature
) -> dict:
    """`export_model` with its output folder locked: ready the folder, convert and verify every file, commit them."""
    previous = prepare_folder(output_dir, plan.files, overwrite, log)
    with staging_folder(output_dir) as staging:
        reference = model.predict(data.images, batch_size=64, verbose=0).astype(np.float32)
        keras_accuracy = float(np.mean(reference.argmax(axis=-1) == data.labels))
        # What every file shares; what differs between files (dtypes, quantization) is in each file's own entry.
        shared = {
            "input_shape": [1 if not plan.dynamic_batch else None, *model.input_shape[1:]],
            "input_name": "images",
            "output_name": "logits",
            "preprocessing": {k: preprocessing[k] for k in ("mean", "std", "pixel_scale") if k in preprocessing},
            "class_names": preprocessing.get("class_names"),
            "dataset": preprocessing.get("dataset"),
            "source": {**(source or {}), "keras_top1_on_verification_images": keras_accuracy},
            **({"temperature": temperature} if temperature else {}),
        }
        job = _Conversion(model, plan, data, staging, reference, shared, log)
        rows = []
        for export_format, quantization in plan.pairs:
            path = _convert(job, export_format, quantization)
            rows.append(_verify_file(job, path, export_format, quantization))
        for fine_tuning in plan.fine_tunings:
            path = staging / file_name(plan.stem, "tflite", f"{fine_tuning.mode}+int8")
            bridge_report = run_tfmot_bridge(fine_tuning, path, data, preprocessing, log)
            rows.append(_verify_file(job, path, "tflite", f"{fine_tuning.mode}+int8", {"tfmot": bridge_report}))
        _check_bounds(rows, log)
        report = _write_report(job, rows, keras_accuracy)
        written = [row["file"] for row in rows] + ["metadata.json", "export_report.json"]
        commit(staging, output_dir, written, previous, log)
        return report


def _convert(job: _Conversion, export_format: str, quantization: str) -> Path:
    """Converts the model to one planned file in the staging folder; returns its path."""
    model, plan, staging, log = job.model, job.plan, job.staging, job.log
    path = staging / file_name(plan.stem, export_format, quantization)
    onnx_float = staging / ".float32.onnx"  # converted once, for both ONNX files
    saved_model = staging / ".saved_model"  # the model traced once, for every file
    if not saved_model.exists():
        log(f"Tracing {model.name}...")
        write_saved_model(model, saved_model, plan.dynamic_batch)
    if export_format == "tflite":
        log(f"Converting {model.name} to TFLite ({quantization})...")
        convert_tflite(model, path, quantization, job.data.representative, plan.dynamic_batch, saved_model)
    elif not onnx_float.exists():
        log(f"Converting {model.name} to ONNX (opset {plan.opset})...")
        convert_onnx(model, onnx_float, plan.opset, plan.dynamic_batch, saved_model)
    if export_format == "onnx" and quantization == "float32":
        shutil.copyfile(onnx_float, path)
    elif export_format == "onnx":
        log(f"Quantizing the ONNX model to int8 ({OnnxInt8Config().name})...")
        quantize_onnx_int8(onnx_float, path, job.data.representative)
    return path


def _verify_file(job: _Conversion, path: Path, export_format: str, quantization: str, extra: dict | None = None):
    """Embeds the metadata in one converted file and verifies it against Keras; returns its report row."""
    runner = runner_for(path)
    own = {
        "format": export_format,
        "quantization": quantization,
        "input_dtype": runner.input_dtype,
        "output_dtype": runner.output_dtype,
    }
    if (export_format, quantization) == ("onnx", "int8"):
        own["onnx_int8"] = dataclasses.asdict(OnnxInt8Config())  # how onnxruntime quantized it
    embed_metadata(path, {**job.shared, **own})
    row = _verify(path, quantization, job.data, job.reference)
    row.update({key: own[key] for key in ("onnx_int8",) if key in own}, **(extra or {}))
    return row


def _check_bounds(rows: list[dict], log) -> None:
    """Refuses a float32 file outside its bound; warns about a float16 one.

    Raises:
        ExportError: For a float32 file outside its bound.
    """
    for row in rows:
        if row.get("within_bound") is not False:
            continue
        message = (
            f"{row['file']} differs from the Keras model by {row['max_abs_logit_diff']:.2e} in its logits, "
            f"beyond the {row['bound']:.2e} bound for {row['quantization']} ({FLOAT_BOUNDS[row['quantization']]:.0e} "
            "of the logits' scale)"
        )
        if row["quantization"] == "float32":
            # float32 must reproduce Keras: a miss means a broken conversion.
            raise ExportError(message + "; nothing was written.")
        # float16 weights round to ~5e-4 relative: a file beyond its bound is reported, not refused.
        log(f"Warning: {message} (largest |logit| {row['max_abs_logit']:.1f}); see export_report.json.")


def _write_report(job: _Conversion, rows: list[dict], keras_accuracy: float) -> dict:
    """Writes metadata.json and export_report.json into the staging folder; returns the report."""
    for row in rows:
        row["quantization_parameters"] = quantization_parameters(job.staging / row["file"])
    keys = ("format", "quantization", "input_dtype", "output_dtype", "quantization_parameters", "onnx_int8")
    files = {row["file"]: {key: row[key] for key in keys if key in row} for row in rows}
    # The checksums let a later `--overwrite` remove exactly these files, and only while they are unchanged.
    metadata = {**job.shared, "files": files, "sha256": {name: file_sha256(job.staging / name) for name in files}}
    report = {
        "model": job.model.name,
        "keras_top1_accuracy": keras_accuracy,
        "verification_images": int(len(job.data.images)),
        "verification_split": job.data.split,
        "verification_is_whole_split": job.data.whole_split,
        "files": rows,
        "metadata": metadata,
    }
    (job.staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (job.staging / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def run_tfmot_bridge(fine_tuning, output_path: Path, data: ExportData, preprocessing: dict, log=print) -> dict:
    """Runs `stkd_keras.export.tfmot_bridge` in a subprocess (tfmot switches TF to legacy Keras for its process).

    The process is given the whole `FineTuning` as JSON (`--spec`), completed with the export's own
    normalisation, evaluation and calibration image counts, output file and report.
    """
    report_path = output_path.with_suffix(".bridge.json")
    spec_path = output_path.with_suffix(".spec.json")
    fine_tuning = dataclasses.replace(
        fine_tuning,
        output=str(output_path),
        report=str(report_path),
        mean=tuple(preprocessing["mean"]),
        std=tuple(preprocessing["std"]),
        representative=len(data.representative),
        eval_subset=len(data.images),
    )
    spec_path.write_text(fine_tuning.to_json())
    command = [sys.executable, "-m", "stkd_keras.export.tfmot_bridge", "--spec", str(spec_path)]
    mode = fine_tuning.mode
    log(
        f"Running {'quantization-aware training' if mode == 'qat' else 'pruning'} with tensorflow-model-optimization "
        "(subprocess)..."
    )
    # Its progress (steps, loss, time left) is shown line by line; its stderr is kept for the error message.
    with tempfile.TemporaryFile(mode="w+") as errors:
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        try:
            for line in child.stdout:
                log(line.rstrip("\n"))
            child.wait()
        except BaseException:  # interrupted: the fine-tuning stops with the export, and nothing is written
            child.kill()
            child.wait()
            raise
        errors.seek(0)
        lines = [line for line in errors.read().splitlines() if line.strip()]
    if child.returncode != 0:
        raise ExportError(f"The tfmot {mode} step failed: {lines[-1] if lines else 'no message'}")
    report = json.loads(report_path.read_text())
    report_path.unlink()
    spec_path.unlink()
    return report


def load_export_data(
    dataset: str,
    preprocessing: dict,
    verify_images: int | None,
    representative_images: int,
    data_dir=None,
    download=True,
) -> ExportData:
    """The first `verify_images` test images (None: the whole test split) and `representative_images` training images.

    Both with the model's preprocessing: its normalisation, and its input shape (`preprocessing["input_shape"]`:
    height, width and channels; the dataset's own size reads its files unchanged).
    """
    from stkd_keras import data as data_lib

    height, width, channels = preprocessing["input_shape"]
    options = {
        "augment": False,
        "shuffle": False,
        "data_dir": data_dir,
        "download": download,
        "normalization": (preprocessing["mean"], preprocessing["std"]),
        "image_size": (height, width),
        "channels": channels,
    }
    test, _ = data_lib.load(dataset, "test", 256, subset=verify_images, **options)
    images = np.concatenate([np.asarray(x) for x, _ in test])
    labels = np.concatenate([np.asarray(y) for _, y in test])
    # A fixed, shuffled subset of the training split (the same for every export), no augmentation, no mixup.
    train, _ = data_lib.load(dataset, "train", 256, subset=representative_images, **options)
    representative = np.concatenate([np.asarray(x) for x, _ in train])
    return ExportData(
        images=images,
        labels=labels,
        representative=representative,
        split="test",
        whole_split=verify_images is None or len(images) < verify_images,
    )
