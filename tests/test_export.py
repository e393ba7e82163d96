import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from click.testing import CliRunner

import learning

from stkd_keras import data as data_lib
from stkd_keras import export as export_lib
from stkd_keras.cli.main import cli
from stkd_keras.models import get_model
from stkd_keras.run_steps import preprocessing_record
from stkd_keras.runs import write_json


@pytest.fixture(scope="module")
def trained_and_untrained(tmp_path_factory):
    """A resnet8 briefly trained on 2000 Fashion-MNIST images, saved as in a run folder; the same resnet8 untrained."""
    folder, untrained = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("untrained") / "student.keras"
    keras.utils.set_random_seed(0)
    train, info = data_lib.load("fashion_mnist", "train", 32, subset=2000)
    model = get_model("resnet8", 10, (28, 28, 1))
    model.save(untrained)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(train, epochs=2, verbose=0, shuffle=False)  # the pipeline shuffles
    model.save(folder / "student.keras")
    write_json(folder / "preprocessing.json", preprocessing_record(info))
    return folder, untrained


@pytest.fixture(scope="module")
def student_run(trained_and_untrained):
    return trained_and_untrained[0]


@pytest.fixture(scope="module")
def export_data(student_run):
    preprocessing = json.loads((student_run / "preprocessing.json").read_text())
    return export_lib.load_export_data(
        "fashion_mnist", preprocessing, verify_images=300, representative_images=100
    ), preprocessing


@pytest.fixture(scope="module")
def exported(student_run, export_data, tmp_path_factory):
    """Every format and quantization of the student, in one call (--quantize all), with their reports."""
    data, preprocessing = export_data
    model = keras.saving.load_model(student_run / "student.keras")
    output = tmp_path_factory.mktemp("exported")
    report = export_lib.export_model(
        model, output, data, preprocessing, formats=("all",), quantize="all", log=lambda *_: None
    )
    return output, {**{row["file"]: row for row in report["files"]}, "keras": report["keras_top1_accuracy"]}


def test_export_plan_modes_per_format():
    tflite = [("tflite", mode) for mode in ("float32", "float16", "dynamic", "int8")]
    assert export_lib.export_plan(("all",), None) == [
        ("tflite", "float32"),
        ("tflite", "int8"),
        ("onnx", "float32"),
        ("onnx", "int8"),
    ]
    assert export_lib.export_plan(("tflite", "onnx"), "all") == tflite + [("onnx", "float32"), ("onnx", "int8")]
    assert export_lib.export_plan(("tflite",), ["int8", "none"]) == [("tflite", "float32"), ("tflite", "int8")]
    assert export_lib.export_plan(("all",), "float16,int8") == [
        ("tflite", "float16"),
        ("tflite", "int8"),
        ("onnx", "int8"),
    ]
    with pytest.raises(
        export_lib.ExportError, match="ONNX export has no float16 mode; --quantize takes float32, int8 here"
    ):
        export_lib.export_plan(("onnx",), "float16")
    with pytest.raises(export_lib.ExportError, match="Received: 'int4'"):
        export_lib.export_plan(("tflite",), "float32,int4")


@pytest.mark.learning
def test_float_files_match_keras(exported, export_data, trained_and_untrained):
    _, rows = exported
    # The student learned (the comparisons below are meaningful): 0.173 above itself untrained on the 300 images
    # (tests/learning.py). Seen on AMD EPYC (AVX2): 0.077 -> 0.687 with oneDNN, 0.657 without: margin left 0.41.
    data, _ = export_data
    untrained = learning.accuracy(keras.saving.load_model(trained_and_untrained[1]), data.images, data.labels)
    learning.assert_learned("exported resnet8", untrained, rows["keras"], len(data.labels))
    assert rows["student_float32.tflite"]["max_abs_logit_diff"] <= 1e-4
    assert rows["student_float32.onnx"]["max_abs_logit_diff"] <= 1e-4
    # float16 weights carry ~1e-3 relative precision (11-bit mantissa): the error scales with the logits,
    # and the report flags whether it stayed within the bound, 2e-2 of the logits' scale.
    float16 = rows["student_float16.tflite"]
    assert float16["max_abs_logit_diff"] <= 2e-3 * float16["max_abs_logit"]
    assert float16["within_bound"] == (float16["max_abs_logit_diff"] <= 2e-2 * max(1.0, float16["max_abs_logit"]))
    for name in ("student_float32.tflite", "student_float32.onnx", "student_float16.tflite"):
        assert rows[name]["top1_agreement"] == 1.0 and rows[name]["top1_accuracy"] == pytest.approx(rows["keras"])


@pytest.mark.learning
def test_quantized_files_keep_the_predictions(exported):
    output, rows = exported
    for name in ("student_dynamic.tflite", "student_int8.tflite", "student_int8.onnx"):
        # Seen on AMD EPYC (AVX2), oneDNN on and off: agreement 0.977-0.997, accuracy within 0.010 of Keras.
        assert rows[name]["top1_agreement"] >= 0.9
        assert rows[name]["top1_accuracy"] >= rows["keras"] - 0.05
    int8 = export_lib.TFLiteRunner(output / "student_int8.tflite")
    assert int8.input_dtype == "int8" and int8.output_dtype == "int8"
    assert rows["student_int8.tflite"]["quantization_parameters"]["input"]["dtype"] == "int8"
    float32_size = (output / "student_float32.tflite").stat().st_size
    assert float32_size >= 3 * (output / "student_int8.tflite").stat().st_size


def test_metadata_travels_with_the_files(exported, export_data):
    output, _ = exported
    _, preprocessing = export_data
    for name in ("student_float32.tflite", "student_int8.tflite", "student_float32.onnx", "student_int8.onnx"):
        metadata = export_lib.read_metadata(output / name)
        assert (
            metadata["preprocessing"]["mean"] == preprocessing["mean"]
            and metadata["preprocessing"]["std"] == preprocessing["std"]
        )
        assert metadata["class_names"][0] == "T-shirt/top" and metadata["input_shape"] == [1, 28, 28, 1]
    # Each file carries its own input type: the int8 TFLite file takes int8, the int8 ONNX file (QDQ) float32.
    expected_input = {
        "student_float32.tflite": "float32",
        "student_float16.tflite": "float32",
        "student_dynamic.tflite": "float32",
        "student_int8.tflite": "int8",
        "student_float32.onnx": "float32",
        "student_int8.onnx": "float32",
    }
    for name, dtype in expected_input.items():
        assert export_lib.read_metadata(output / name)["input_dtype"] == dtype
    # export_report.json and metadata.json describe exactly the files in the folder, each with its own entry.
    report = json.loads((output / "export_report.json").read_text())
    metadata = json.loads((output / "metadata.json").read_text())
    on_disk = {path.name for path in output.iterdir()} - {"export_report.json", "metadata.json"}
    assert {row["file"] for row in report["files"]} == set(metadata["files"]) == on_disk == set(expected_input)
    assert "input_dtype" not in metadata
    assert {name: entry["input_dtype"] for name, entry in metadata["files"].items()} == expected_input
    assert metadata["files"]["student_int8.tflite"]["quantization_parameters"]["input"]["dtype"] == "int8"
    # The int8 ONNX file is written as benchmarks/export.py found fastest on x86 with top-1 held: QDQ, uint8
    # activations, int8 per-channel weights in 7 bits (reduce_range), and says so.
    config = {"quant_format": "QDQ", "activations": "uint8", "per_channel": True, "reduce_range": True}
    assert (
        metadata["files"]["student_int8.onnx"]["onnx_int8"]
        == config
        == export_lib.read_metadata(output / "student_int8.onnx")["onnx_int8"]
    )
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(output / "student_int8.onnx")).graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    quantize = [node for node in graph.node if node.op_type == "QuantizeLinear"]
    assert quantize and {
        initializers[node.input[2]].data_type for node in quantize if node.input[2] in initializers
    } == {onnx.TensorProto.UINT8}
    weights = [
        numpy_helper.to_array(tensor)
        for tensor in graph.initializer
        if tensor.data_type == onnx.TensorProto.INT8 and len(tensor.dims) == 4
    ]
    assert weights and all(np.abs(weight).max() <= 64 for weight in weights)  # 7-bit: [-64, 64], not [-127, 127]
    per_channel = [
        node
        for node in graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in initializers
        and len(initializers[node.input[0]].dims) == 4
    ]
    assert per_channel and all(
        len(initializers[node.input[1]].dims) == 1 and initializers[node.input[1]].dims[0] > 1 for node in per_channel
    )


def test_overwrite_replaces_the_earlier_export_as_a_whole(student_run, export_data, tmp_path):
    """A second export with --overwrite leaves exactly its own files, all listed: none of the first call's linger."""
    data, preprocessing = export_data
    model = keras.saving.load_model(student_run / "student.keras")
    export_lib.export_model(
        model, tmp_path, data, preprocessing, formats=("tflite",), quantize="float32,dynamic", log=lambda *_: None
    )
    assert {p.name for p in tmp_path.iterdir()} == {
        "student_float32.tflite",
        "student_dynamic.tflite",
        "metadata.json",
        "export_report.json",
    }
    (tmp_path / "notes.txt").write_text("mine")  # a file no export listed is left alone
    with pytest.raises(export_lib.ExportError, match="metadata.json already exists; pass --overwrite"):
        export_lib.export_model(
            model, tmp_path, data, preprocessing, formats=("tflite",), quantize="float16", log=lambda *_: None
        )
    export_lib.export_model(
        model,
        tmp_path,
        data,
        preprocessing,
        formats=("tflite",),
        quantize="float16",
        overwrite=True,
        log=lambda *_: None,
    )
    assert {p.name for p in tmp_path.iterdir()} == {
        "student_float16.tflite",
        "metadata.json",
        "export_report.json",
        "notes.txt",
    }
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert list(metadata["files"]) == [row["file"] for row in report["files"]] == ["student_float16.tflite"]


def test_batch_dimension(exported, student_run, export_data, tmp_path):
    output, _ = exported
    assert export_lib.TFLiteRunner(output / "student_float32.tflite").fixed_batch == 1
    data, preprocessing = export_data
    model = keras.saving.load_model(student_run / "student.keras")
    export_lib.export_model(
        model,
        tmp_path,
        data,
        preprocessing,
        formats=("tflite", "onnx"),
        quantize="float32",
        dynamic_batch=True,
        log=lambda *_: None,
    )
    assert export_lib.TFLiteRunner(tmp_path / "student_float32.tflite").fixed_batch is None
    assert export_lib.ONNXRunner(tmp_path / "student_float32.onnx").fixed_batch is None


def test_latency_times_the_runtime_call_apart_from_the_runner(exported, export_data, monkeypatch):
    """`runtime_ms` times the runtime's call on the input in place; `end_to_end_ms` adds the runner's (de)quantising."""
    import time

    from stkd_keras.export import runtime

    output, _ = exported
    data, _ = export_data
    image = data.images[:1]
    for name in ("student_int8.tflite", "student_float32.tflite", "student_int8.onnx"):
        runner = export_lib.runner_for(output / name)
        expected = runner.predict(image)
        call = runner.invoke_call(image)
        call()  # the timed call runs the model on that image: its output is the runner's
        if name.endswith(".tflite"):
            raw = runner.interpreter.get_tensor(runner.output_detail["index"])
            np.testing.assert_allclose(runtime._dequantize(raw, runner.output_detail), expected)
        else:
            np.testing.assert_allclose(call()[0], expected)
    # A runner whose input handling costs 5 ms: the runtime figure leaves it out, the end-to-end one holds it.
    real_quantize = runtime._quantize

    def slow_quantize(images, detail):
        time.sleep(0.005)
        return real_quantize(images, detail)

    monkeypatch.setattr(runtime, "_quantize", slow_quantize)
    measured = export_lib.measure_latency(
        export_lib.runner_for(output / "student_int8.tflite"), image, repeats=5, warmup=1
    )
    assert measured["runtime_ms"] < 4 < 5 <= measured["end_to_end_ms"]


def test_failed_export_leaves_nothing_and_never_overwrites(student_run, export_data, tmp_path, monkeypatch):
    data, preprocessing = export_data
    model = keras.saving.load_model(student_run / "student.keras")
    real_verify = export_lib.core._verify
    calls = []

    def verify_then_fail(path, *args):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted mid-export")
        return real_verify(path, *args)

    monkeypatch.setattr(export_lib.core, "_verify", verify_then_fail)
    with pytest.raises(KeyboardInterrupt):
        export_lib.export_model(
            model, tmp_path, data, preprocessing, formats=("tflite", "onnx"), quantize="float32", log=lambda *_: None
        )
    assert calls == ["student_float32.tflite", "student_float32.onnx"]
    assert list(tmp_path.iterdir()) == []  # no partial file, no staging folder
    monkeypatch.undo()

    export_lib.export_model(
        model, tmp_path, data, preprocessing, formats=("tflite",), quantize="float32", log=lambda *_: None
    )
    before = (tmp_path / "student_float32.tflite").read_bytes()
    with pytest.raises(export_lib.ExportError, match="student_float32.tflite already exists; pass --overwrite"):
        export_lib.export_model(
            model, tmp_path, data, preprocessing, formats=("tflite",), quantize="float32", log=lambda *_: None
        )
    assert (tmp_path / "student_float32.tflite").read_bytes() == before


def test_an_export_killed_while_moving_its_files_is_cleaned_up_by_the_next(
    student_run, export_data, tmp_path, monkeypatch
):
    """Killed after two of its files were moved: the next export removes them (it was refused: "already exists") and the
    staging folders that killed exports leave behind."""
    data, preprocessing = export_data
    model = keras.saving.load_model(student_run / "student.keras")
    real_replace = export_lib.core.os.replace
    moved = []

    def replace_then_die(source, target):
        real_replace(source, target)
        moved.append(Path(target).name)
        if len(moved) == 3:  # the journal, then two of the four files
            raise KeyboardInterrupt("killed mid-move")

    monkeypatch.setattr(export_lib.core.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        export_lib.export_model(
            model, tmp_path, data, preprocessing, formats=("tflite",), quantize="float32,int8", log=lambda *_: None
        )
    monkeypatch.undo()
    assert moved == [".export-pending.json", "student_float32.tflite", "student_int8.tflite"]
    (tmp_path / ".export-partial-killed").mkdir()  # what a SIGKILL leaves (its `finally` never ran)
    (tmp_path / ".export-partial-killed" / "student_float32.tflite").write_bytes(b"partial")
    messages = []
    export_lib.export_model(
        model, tmp_path, data, preprocessing, formats=("tflite",), quantize="float32,int8", log=messages.append
    )
    assert (
        f"An earlier export into {tmp_path} was stopped while moving its files into place; its files were removed."
        in messages
    )
    listed = json.loads((tmp_path / "metadata.json").read_text())["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*listed, "metadata.json", "export_report.json"])


@keras.saving.register_keras_serializable(package="tests")
class Determinant(keras.layers.Layer):
    """Uses tf.linalg.det, which has no TFLite builtin kernel."""

    def call(self, x):
        return tf.expand_dims(tf.linalg.det(x[..., 0]), -1) * tf.ones((1, 10))


def test_model_needing_flex_ops_is_refused(tmp_path, export_data):
    data, preprocessing = export_data
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, Determinant()(inputs), name="needs_flex")
    with pytest.raises(
        export_lib.ExportError,
        match=r"needs_flex cannot be converted to TFLite with builtin ops only \(ops: .*MatrixDeterminant",
    ):
        export_lib.export_model(
            model, tmp_path, data, preprocessing, formats=("tflite",), quantize="float32", log=lambda *_: None
        )
    assert list(tmp_path.iterdir()) == []


def test_cli_export_and_evaluate_exported_files(student_run, tmp_path):
    runner = CliRunner()
    output = tmp_path / "exported"
    result = runner.invoke(
        cli,
        [
            "export",
            "--model",
            str(student_run / "student.keras"),
            "--verify-images",
            "200",
            "--representative-images",
            "50",
            "--output",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    # The verification images are named for what they are: a subset, not evaluate's whole split.
    assert (
        "Keras top-1 on the first 200 fashion_mnist test images (the verification subset, not the whole split;"
        in result.output
    )
    report = json.loads((output / "export_report.json").read_text())
    rows = {row["file"]: row for row in report["files"]}
    # --format all without --quantize: float32 and int8 of every format.
    assert set(rows) == {"student_float32.tflite", "student_int8.tflite", "student_float32.onnx", "student_int8.onnx"}
    # evaluate measures the shipped file the same way: on the same 200 images it agrees with the report.
    for name in rows:
        result = runner.invoke(
            cli, ["evaluate", "--model", str(output / name), "--dataset", "fashion_mnist", "--subset", "200"]
        )
        assert result.exit_code == 0, result.output
        evaluation = json.loads((output / f"evaluation_{name.replace('.', '_')}_fashion_mnist_test.json").read_text())
        assert evaluation["accuracy"] == pytest.approx(rows[name]["top1_accuracy"])
    # In a real process: LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." no longer reaches the user.
    import subprocess
    import sys

    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "stkd_keras.cli.main",
            "evaluate",
            "--model",
            str(output / "student_int8.tflite"),
            "--subset",
            "64",
            "--json",
            str(tmp_path / "e.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0 and "top-1" in completed.stdout and completed.stderr == "", completed.stderr
    again = runner.invoke(
        cli,
        [
            "export",
            "--model",
            str(student_run / "student.keras"),
            "--format",
            "tflite",
            "--quantize",
            "int8",
            "--output",
            str(output),
        ],
    )
    assert again.exit_code == 1 and "already exists; pass --overwrite" in again.output
    wrong = runner.invoke(
        cli,
        [
            "export",
            "--model",
            str(student_run / "student.keras"),
            "--format",
            "onnx",
            "--quantize",
            "dynamic",
            "--output",
            str(tmp_path / "x"),
        ],
    )
    assert (
        wrong.exit_code == 2 and "ONNX export has no dynamic mode; --quantize takes float32, int8 here." in wrong.output
    )
    assert not (tmp_path / "x").exists()


# Slow (20 s): the default run verifies on a subset in test_cli_export_and_evaluate_exported_files.
@pytest.mark.slow
def test_cli_export_verifies_on_the_whole_split(student_run, tmp_path):
    """--verify-images all: the Keras figure the export prints is evaluate's figure on the whole test split."""
    output = tmp_path / "exported"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "--model",
            str(student_run / "student.keras"),
            "--format",
            "onnx",
            "--quantize",
            "float32",
            "--dynamic-batch",
            "--verify-images",
            "all",
            "--representative-images",
            "50",
            "--output",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((output / "export_report.json").read_text())
    assert report["verification_images"] == 10000 and report["verification_is_whole_split"] is True
    from stkd_keras.evaluation import evaluate

    whole = evaluate(student_run / "student.keras", "fashion_mnist")
    assert report["keras_top1_accuracy"] == pytest.approx(
        whole["accuracy"], abs=1e-6
    )  # Keras keeps its metric in float32
    assert (
        f"Keras top-1 on the whole fashion_mnist test split (10,000 images): {whole['accuracy']:.4f}" in result.output
    )


# About 80 s (a distillation under tfmot in a child process): `pytest -m slow`, which .ci/run also runs. By default
# tests/test_tfmot_bridge.py covers QAT and pruning through the Python API, the same calls this command makes.
@pytest.mark.slow
def test_cli_export_with_qat_and_pruning_distils_from_the_runs_teacher(student_run, tmp_path):
    """export --qat/--prune end to end: the bridge subprocess, the run's teacher/ and method, verification, report."""
    # The run was distilled with KD at T = 2 (its metrics.json says so): the fine-tuning uses the same.
    write_json(
        student_run / "metrics.json",
        {"final_val_accuracy": 0.7, "config": {"method": "kd", "temperature": 2.0, "ce_weight": 0.1, "kd_weight": 0.9}},
    )
    teacher_dir = student_run / "teacher"
    if not (teacher_dir / "teacher.keras").is_file():
        teacher_dir.mkdir(exist_ok=True)
        keras.utils.set_random_seed(1)
        train, _ = data_lib.load("fashion_mnist", "train", 32, subset=1000)
        teacher = get_model("cnn16", 10, (28, 28, 1))
        teacher.compile(
            optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        teacher.fit(train, epochs=1, verbose=0, shuffle=False)  # the pipeline shuffles
        teacher.save(teacher_dir / "teacher.keras")
    output = tmp_path / "exported"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "--model",
            str(student_run / "student.keras"),
            "--format",
            "tflite",
            "--quantize",
            "int8",
            "--qat",
            "1",
            "--prune",
            "0.5",
            "--finetune-subset",
            "512",
            "--verify-images",
            "200",
            "--representative-images",
            "50",
            "--output",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    # Said up front, then shown as it runs: images, epochs, steps, loss and time left.
    assert (
        "1 epoch(s) of quantization-aware training and 2 epochs of pruning to 50% sparsity on 512 training images "
        "(--finetune-subset)" in result.output
    )
    assert (
        "Quantization-aware training: 1 epoch(s) on 512 fashion_mnist training images (8 steps of 64), method 'kd'."
        in result.output
    )
    assert (
        "Pruning to 50% sparsity: 2 epoch(s) on 512 fashion_mnist training images (8 steps of 64), method 'kd'."
        in result.output
    )
    assert (
        "  epoch 1/1, step 8/8: loss " in result.output
        and " left" in result.output
        and "  epoch 2/2 done: mean loss " in result.output
    )
    rows = {row["file"]: row for row in json.loads((output / "export_report.json").read_text())["files"]}
    assert set(rows) == {"student_int8.tflite", "student_qat_int8.tflite", "student_pruned_int8.tflite"}
    for name in ("student_qat_int8.tflite", "student_pruned_int8.tflite"):
        runner = export_lib.TFLiteRunner(output / name)
        assert runner.input_dtype == "int8" and runner.output_dtype == "int8"
        assert rows[name]["tfmot"]["parity_max_abs_diff"]["student"] <= 1e-5
        assert (
            rows[name]["tfmot"]["teacher"] is not None
        )  # fine-tuned with the distillation signal of the run's teacher
        assert rows[name]["tfmot"]["method"] == "kd" and rows[name]["tfmot"]["hyperparameters"]["temperature"] == 2.0
        # The bridge measured its int8 file on the same 200 test images, through its own code path.
        assert rows[name]["top1_accuracy"] == pytest.approx(rows[name]["tfmot"]["int8_top1_accuracy"], abs=1e-9)
    assert rows["student_pruned_int8.tflite"]["tfmot"]["pruning"]["overall_sparsity"] == pytest.approx(0.5, abs=0.02)


def test_qat_fine_tuning_method_is_checked_before_any_work(student_run, tmp_path):
    """An STKD run whose teacher is gone, bad --finetune-option values: one sentence each, nothing written."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    for name in ("student.keras", "preprocessing.json"):
        shutil.copy(student_run / name, run / name)
    write_json(
        run / "metrics.json",
        {"config": {"method": "stkd", "temperature": 4.0}, "teacher": {"path": str(tmp_path / "gone.keras")}},
    )
    output = tmp_path / "exported"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["export", "--model", str(run / "student.keras"), "--qat", "1", "--output", str(output)]
    )
    assert (
        result.exit_code == 2
        and "QAT/pruning fine-tuning: Method 'stkd' distils from a teacher, but none was given; "
        "pass --teacher (none was found beside the run)"
        in result.output
    )
    result = runner.invoke(
        cli,
        [
            "export",
            "--model",
            str(run / "student.keras"),
            "--qat",
            "1",
            "--finetune-method",
            "mixup",
            "--finetune-option",
            "temperature=2",
            "--output",
            str(output),
        ],
    )
    assert result.exit_code == 1 and "Error: Method 'mixup' has no hyperparameter `temperature`" in result.output
    result = runner.invoke(
        cli,
        [
            "export",
            "--model",
            str(run / "student.keras"),
            "--qat",
            "1",
            "--finetune-method",
            "kd",
            "--teacher",
            str(student_run / "student.keras"),
            "--finetune-option",
            "temperature=-1",
            "--output",
            str(output),
        ],
    )
    assert (
        result.exit_code == 1
        and "Expected `temperature` to be a finite number > 0. Received: temperature=-1" in result.output
    )
    assert not output.exists()


def test_overwrite_removes_only_files_an_export_wrote_and_that_are_unchanged(student_run, export_data, tmp_path):
    """`export --overwrite` deleted what metadata.json listed: {"files": ["important.txt", "photo.jpg"]} took both."""
    data, preprocessing = export_data
    model = keras.saving.load_model(student_run / "student.keras")
    quiet = {"formats": ("tflite",), "log": lambda *_: None}
    # A folder whose metadata.json no export wrote is refused, even with --overwrite, and nothing in it changes.
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    for name, text in (
        ("important.txt", "mine"),
        ("photo.jpg", "jpeg"),
        ("metadata.json", '{"files": ["important.txt", "photo.jpg"]}'),
    ):
        (hostile / name).write_text(text)
    with pytest.raises(export_lib.ExportError, match="metadata.json was not written by stkd-keras export"):
        export_lib.export_model(model, hostile, data, preprocessing, quantize="float32", overwrite=True, **quiet)
    assert sorted(p.name for p in hostile.iterdir()) == ["important.txt", "metadata.json", "photo.jpg"]
    assert (hostile / "important.txt").read_text() == "mine"
    # A real export whose file was edited since: --overwrite keeps the edited file and says so.
    folder = tmp_path / "export"
    export_lib.export_model(model, folder, data, preprocessing, quantize="float32,dynamic", **quiet)
    metadata = json.loads((folder / "metadata.json").read_text())
    assert set(metadata["sha256"]) == {"student_float32.tflite", "student_dynamic.tflite"}
    with open(folder / "student_dynamic.tflite", "ab") as edited:
        edited.write(b"edited by hand")
    messages = []
    export_lib.export_model(
        model, folder, data, preprocessing, quantize="float16", overwrite=True, formats=("tflite",), log=messages.append
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "export_report.json",
        "metadata.json",
        "student_dynamic.tflite",
        "student_float16.tflite",
    ]
    assert any(m.startswith("Kept student_dynamic.tflite from the earlier export") for m in messages)


def test_an_interrupted_export_journal_removes_only_the_files_it_recorded(student_run, export_data, tmp_path):
    """The journal of a killed export named files to delete; a hand-written one could name any file of the folder."""
    data, preprocessing = export_data
    model = keras.saving.load_model(student_run / "student.keras")
    (tmp_path / "important.txt").write_text("mine")
    (tmp_path / ".export-pending.json").write_text(
        json.dumps({"write": {"important.txt": "0" * 64}, "remove": ["photo.jpg"]})
    )
    (tmp_path / "photo.jpg").write_text("jpeg")
    messages = []
    export_lib.export_model(
        model, tmp_path, data, preprocessing, formats=("tflite",), quantize="float32", log=messages.append
    )
    assert (tmp_path / "important.txt").read_text() == "mine" and (tmp_path / "photo.jpg").read_text() == "jpeg"
    assert any("except important.txt, changed since it wrote them" in m for m in messages)


def test_export_is_one_library_call_as_the_command_makes_it(student_run, tmp_path):
    """`stkd-keras export` is its options and `export_run`: the same call from Python writes the same files."""
    options = export_lib.ExportOptions(
        formats=("tflite",), quantize="float32,int8", verify_images=100, representative_images=50
    )
    report = export_lib.export_run(student_run, tmp_path / "py", options, log=lambda *_: None)
    assert [row["file"] for row in report["files"]] == ["student_float32.tflite", "student_int8.tflite"]
    assert report["verification_images"] == 100 and (tmp_path / "py" / "student_int8.tflite").is_file()
    # The options are checked before anything loads, each refusal naming its option.
    with pytest.raises(export_lib.ExportOptionError, match="ONNX export has no dynamic mode") as refused:
        export_lib.prepare_export(student_run, export_lib.ExportOptions(formats=("onnx",), quantize="dynamic"))
    assert refused.value.option == "--quantize"
    with pytest.raises(export_lib.ExportOptionError, match="is already exported") as refused:
        export_lib.prepare_export(tmp_path / "py" / "student_int8.tflite")
    assert refused.value.option == "--model"
    # A fine-tuning without a teacher to distil from: refused in one sentence, as on the command line.
    lone = tmp_path / "lone"
    lone.mkdir()
    for name in ("student.keras", "preprocessing.json"):
        (lone / name).write_bytes((student_run / name).read_bytes())
    (lone / "metrics.json").write_text(json.dumps({"config": {"method": "kd"}}))
    with pytest.raises(
        export_lib.ExportOptionError, match="QAT/pruning fine-tuning: Method 'kd' distils from a teacher"
    ) as refused:
        export_lib.prepare_export(lone, export_lib.ExportOptions(qat_epochs=1))
    assert refused.value.option == "--teacher"
    job = export_lib.prepare_export(lone, export_lib.ExportOptions(qat_epochs=1, finetune_method="ce"))
    assert job.method.name == "ce" and job.teacher_file is None and job.dataset == "fashion_mnist"


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from([np.int8, np.uint8]),
    scale=st.floats(1e-4, 2.0),
    zero_point=st.integers(-128, 255),
    seed=st.integers(0, 2**32 - 1),
    spread=st.floats(0.01, 500.0),
)
def test_the_runner_quantises_as_the_tflite_formula(dtype, scale, zero_point, seed, spread):
    """The runner's in-place arithmetic (3x faster than np.clip's) is clip(round(x / scale + zero_point)) exactly."""
    from stkd_keras.export import runtime

    info = np.iinfo(dtype)
    zero_point = int(np.clip(zero_point, info.min, info.max))
    images = (np.random.default_rng(seed).standard_normal((3, 5, 5, 1)) * spread).astype(np.float32)
    detail = {"dtype": dtype, "quantization": (scale, zero_point)}
    expected = np.clip(np.round(images / scale + zero_point), info.min, info.max).astype(dtype)
    np.testing.assert_array_equal(runtime._quantize(images, detail), expected)
    values = np.random.default_rng(seed).integers(info.min, info.max, (3, 10), endpoint=True).astype(dtype)
    np.testing.assert_array_equal(
        runtime._dequantize(values, detail), ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)
    )


def test_the_fine_tuning_line_names_options_in_the_callers_words():
    """The library says what a QAT/pruning fine-tuning will do in its own terms (the `ExportOptions` field); the
    command line passes its option word for it, so each user reads the name they set."""
    from stkd_keras.export.run import ExportJob, fine_tuning_line
    from stkd_keras.methods import get_method

    job = ExportJob(Path("s.keras"), {}, "fashion_mnist", {}, {}, get_method("kd"), {"temperature": 4.0})
    line = fine_tuning_line(job, export_lib.ExportOptions(qat_epochs=1))
    assert line.startswith(
        "QAT/pruning fine-tuning: 1 epoch(s) of quantization-aware training on the whole fashion_mnist training split "
        "(finetune_subset N for fewer), method 'kd' with {'temperature': 4.0};"
    )
    line = fine_tuning_line(
        job,
        export_lib.ExportOptions(prune_sparsity=0.5, finetune_subset=5000),
        option_names={"finetune_subset": "--finetune-subset"},
    )
    assert line.startswith(
        "QAT/pruning fine-tuning: 2 epochs of pruning to 50% sparsity on 5,000 training images (--finetune-subset), "
        "method 'kd'"
    )
