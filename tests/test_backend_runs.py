"""Runs on every backend: `--backend`, runs without TensorFlow, evaluation and export across backends, errors.

Keras fixes its backend once per process, so a command asked for another
backend than this test process runs starts a child process (the CLI does that
itself, `cli.backends.use_backend`); the runs with TensorFlow blocked from import
run in a subprocess of their own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from stkd_keras import backend_selection
from stkd_keras.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--train-subset", "256", "--val-subset", "128", "--batch-size", "64", "--quiet"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def read_scalars(folder: Path) -> dict:
    """{(split, tag): [values by step]} of the TensorBoard event files under `folder`, read by TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for split in ("train", "validation"):
        accumulator = EventAccumulator(str(folder / split))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars[(split, tag)] = [event.value for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags().get("tensors", []):  # tf.summary writes scalars as tensors
            scalars[(split, tag)] = [float(_tensor(event.tensor_proto)) for event in accumulator.Tensors(tag)]
    return scalars


def _tensor(proto):
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(proto)


# `stkd-keras distill --backend jax` on Fashion-MNIST with `tensorflow` blocked from import: the numpy pipeline feeds
# the run, TensorBoard logs come from the tensorboard package. Then --overwrite is refused, and the student evaluates.
WITHOUT_TENSORFLOW = r"""
import sys
sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError, wherever it happens
import json
from stkd_keras.cli.main import cli

output, backend = sys.argv[1], sys.argv[2]
common = ["--backend", backend, "--dataset", "fashion_mnist", "--student", "cnn8", "--teacher-model", "cnn8",
          "--epochs", "2", "--teacher-epochs", "1", "--train-subset", "512", "--val-subset", "256",
          "--batch-size", "64", "--seed", "1", "--quiet"]
codes = {}
for name, args in (
    ("distill", ["distill", *common, "--output", output]),
    ("again", ["distill", *common, "--output", output]),
    ("evaluate", ["evaluate", "--backend", backend, "--model", output, "--subset", "256"]),
    ("cifar10", ["distill", *common, "--dataset", "cifar10", "--no-download", "--output", output + "-cifar"]),
):
    try:
        cli.main(args, standalone_mode=False)
        codes[name] = 0
    except Exception as error:
        codes[name] = f"{type(error).__name__}: {error}"
loaded = [name for name, module in sys.modules.items() if name.split(".")[0] == "tensorflow" and module is not None]
print("RESULT" + json.dumps({"codes": codes, "tensorflow_loaded": loaded}))
"""


# Slow (80 s): its default-run twin is tests/test_backends.py's training with TensorFlow absent, on PyTorch.
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax"])
def test_distill_runs_end_to_end_without_tensorflow(backend, tmp_path):
    output = tmp_path / "run"
    environment = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, str(output), backend],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert "RESULT" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.split("RESULT", 1)[1])
    codes = report["codes"]
    assert codes["distill"] == 0 and codes["evaluate"] == 0, codes
    assert "already holds a run" in codes["again"]
    assert "needs TensorFlow" in codes["cifar10"] and "\n" not in codes["cifar10"]
    assert report["tensorflow_loaded"] == []

    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["backend"], metrics["replicas"]) == (backend, 1)
    assert metrics["environment"]["backend"] == backend and "tensorflow" not in metrics["environment"]
    assert metrics["dataset"]["train"]["num_examples"] == 512 and metrics["teacher"]["path"] == str(
        output.absolute() / "teacher"
    )
    assert json.loads((output / "teacher" / "metrics.json").read_text())["backend"] == backend
    rows = (output / "history.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 1 + 2 and {"loss", "ce_loss", "kd_loss", "val_accuracy", "learning_rate"} <= set(header)
    # The event files hold the same figures as history.csv, under Keras's TensorBoard names.
    scalars = read_scalars(output / "tensorboard")
    history = {
        key: [float(row.split(",")[header.index(key)]) for row in rows[1:]]
        for key in ("loss", "val_accuracy", "learning_rate")
    }
    np.testing.assert_allclose(scalars[("train", "epoch_loss")], history["loss"], rtol=1e-6)
    np.testing.assert_allclose(scalars[("validation", "epoch_accuracy")], history["val_accuracy"], rtol=1e-6)
    np.testing.assert_allclose(scalars[("train", "epoch_learning_rate")], history["learning_rate"], rtol=1e-6)
    preprocessing = json.loads((output / "preprocessing.json").read_text())
    assert preprocessing["mean"] == [0.286] and preprocessing["input_shape"] == [28, 28, 1]
    evaluation = json.loads((output / "evaluation_fashion_mnist_test.json").read_text())
    assert evaluation["environment"]["backend"] == backend and evaluation["num_examples"] == 256
    # The student loads here (another backend, another pipeline) and scores what the JAX process measured.
    model = keras.saving.load_model(output / "student.keras")
    from stkd_keras.evaluation import evaluate

    here = evaluate(output, "fashion_mnist", subset=256)
    # One image of slack for another backend's arithmetic. Seen on AMD EPYC (AVX2), oneDNN on and off: the same
    # 9 of 256 images right in both processes, the loss equal to 7 digits.
    assert here["accuracy"] == pytest.approx(evaluation["accuracy"], abs=1 / 256 + 1e-9)
    assert model.count_params() == metrics["parameters"]


def test_a_command_on_another_backend_runs_in_a_child_process_and_export_takes_any_student(tmp_path):
    """`--backend` of another backend trains in a child process; the student exports and evaluates in this one."""
    other = "torch" if keras.backend.backend() != "torch" else "jax"
    output = tmp_path / "run"
    result = run("train-teacher", "--backend", other, "--model", "cnn8", "--epochs", 1, *TINY, "--output", output)
    assert result.exit_code == 0, result.output
    assert f"on the {other} backend" in result.output
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["backend"] == other and metrics["environment"][other]
    mine = run("evaluate", "--model", output, "--subset", 128, "--json", tmp_path / "here.json")
    theirs = run("evaluate", "--backend", other, "--model", output, "--subset", 128, "--json", tmp_path / "there.json")
    assert mine.exit_code == 0 and theirs.exit_code == 0, mine.output + theirs.output
    here, there = (json.loads((tmp_path / name).read_text()) for name in ("here.json", "there.json"))
    assert (here["environment"]["backend"], there["environment"]["backend"]) == (keras.backend.backend(), other)
    # Seen on AMD EPYC (AVX2), oneDNN on and off, PyTorch's avx2 and portable kernels: 16 of 128 in both, losses
    # 1e-7 apart.
    assert here["accuracy"] == pytest.approx(there["accuracy"], abs=1 / 128 + 1e-9)
    assert here["loss"] == pytest.approx(there["loss"], rel=1e-4)


# A process whose Keras runs on JAX calls `stkd-keras export`: the export (TensorFlow converters) runs in a child
# process.
EXPORT_FROM_JAX = r"""
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
import keras
assert keras.backend.backend() == "jax"
from stkd_keras.cli.main import cli
cli.main(
    ["export", "--model", sys.argv[1], "--format", "onnx", "--quantize", "float32", "--verify-images", "64",
     "--output", sys.argv[2]],
    standalone_mode=True,
)
"""


# Slow (a minute, with its JAX teacher): the default run exports another backend's student in
# test_a_command_on_another_backend_runs_in_a_child_process_and_export_takes_any_student.
@pytest.mark.slow
def test_export_from_a_process_on_another_backend(tmp_path, teacher_on_jax):
    result = subprocess.run(
        [sys.executable, "-c", EXPORT_FROM_JAX, str(teacher_on_jax), str(tmp_path / "export")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    (row,) = report["files"]
    assert row["file"] == "teacher_float32.onnx" and row["max_abs_logit_diff"] <= 1e-4 and row["top1_agreement"] == 1.0


@pytest.fixture(scope="module")
def teacher_on_jax(tmp_path_factory):
    output = tmp_path_factory.mktemp("jax") / "teacher"
    result = run("train-teacher", "--backend", "jax", "--model", "cnn8", "--epochs", 1, *TINY, "--output", output)
    assert result.exit_code == 0, result.output
    return output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "theano"], "'theano' is not one of 'tensorflow', 'jax', 'torch'"),
        (
            ["--backend", "tensorflow", "--strategy", "data_parallel"],
            "--strategy data_parallel runs on the JAX backend",
        ),
        (["--backend", "torch", "--strategy", "data_parallel"], "has no torch support"),
        (
            ["--backend", "jax", "--strategy", "mirrored"],
            "--strategy mirrored is a TensorFlow strategy (tf.distribute) and cannot run on the jax backend",
        ),
        (["--backend", "torch", "--strategy", "multi_worker"], "cannot run on the torch backend"),
    ],
)
def test_backend_and_strategy_errors(tmp_path, args, message):
    result = CliRunner().invoke(
        cli, ["train-teacher", "--model", "cnn8", *args, *TINY, "--output", str(tmp_path / "run")]
    )
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_a_backend_whose_package_is_missing_names_the_package(monkeypatch):
    real = backend_selection.importlib.util.find_spec
    monkeypatch.setattr(
        backend_selection.importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a)
    )
    with pytest.raises(
        ValueError,
        match=r"^The jax backend needs the jax package, which is not installed: pip install 'stkd-keras\[jax\]'\.$",
    ):
        backend_selection.check_backend("jax")
    result = CliRunner().invoke(cli, ["evaluate", "--backend", "jax", "--model", "nowhere.keras"])
    assert result.exit_code == 1 and "needs the jax package" in result.output


def test_resume_refuses_another_backend_than_the_run_started_on(tmp_path):
    from stkd_keras import runs

    staging = tmp_path / ".run.partial-1"
    staging.mkdir()
    (staging / runs.CHECKPOINT_DIR).mkdir()
    (staging / runs.CHECKPOINT_DIR / runs.STATE_FILE).write_text("{}")
    runs.write_run_file(staging, {"command": "train-teacher", "backend": "jax", "config": None})
    result = CliRunner().invoke(cli, ["train-teacher", "--resume", str(tmp_path / "run"), "--backend", "torch"])
    assert (
        result.exit_code == 2
        and "the run to resume started on the jax backend and continues on it; drop --backend" in result.output
    )


def test_backend_is_chosen_before_keras_is_imported():
    """In a fresh process `--backend` (or the resumed run's) is read before any option imports Keras."""
    script = (
        "import sys\nfrom stkd_keras.cli.main import cli\nassert 'keras' not in sys.modules\n"
        "try:\n    cli.main(['train-teacher', '--model', 'cnn8', '--backend', 'torch', '--epochs', '0'], "
        "standalone_mode=False)\n"
        "except Exception as error:\n    print(type(error).__name__)\n"
        "import keras\nprint(keras.backend.backend())\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["BadParameter", "torch"]


def test_the_runs_are_library_calls(tmp_path):
    """What `stkd-keras distill` does (teacher first, staging, run.json) is `training.distill`, callable from Python."""
    from stkd_keras import runs, training
    from stkd_keras.config import RunConfig, teacher_config_for

    config = RunConfig(
        model="cnn8",
        method="kd",
        epochs=1,
        train_subset=256,
        val_subset=128,
        seed=2,
        method_options={"temperature": 2.0},
    )
    messages = []
    result = training.distill(
        config, tmp_path / "run", teacher_config_for(config, "cnn8"), verbose=0, log=messages.append
    )
    assert result.output == tmp_path / "run" and (result.output / "teacher" / "teacher.keras").is_file()
    assert any(m.startswith("No trained teacher given: training a cnn8 teacher first") for m in messages)
    assert not any(
        "--" in m for m in messages
    )  # a Python caller is not told about command-line options ("No --teacher given")
    assert result.metrics["teacher"]["path"] == str((tmp_path / "run").absolute() / "teacher")
    assert result.metrics["config"]["temperature"] == 2.0 and result.metrics["backend"] == keras.backend.backend()
    recorded = runs.read_run_file(result.output)
    assert recorded["command"] == "distill" and recorded["backend"] == keras.backend.backend()
    assert recorded["teacher_config"].method == "ce" and recorded["teacher_config"].method_options == {}
    with pytest.raises(runs.RunError, match="already holds a run; pass --overwrite"):
        training.distill(config, tmp_path / "run", teacher_config_for(config, "cnn8"), verbose=0, log=messages.append)
    with pytest.raises(
        ValueError, match="Method 'kd' distils from a teacher, but none was given; pass RunConfig.teacher"
    ):
        training.distill(config, tmp_path / "other", verbose=0)
    with pytest.raises(runs.RunError, match="No unfinished run of"):
        training.resume(tmp_path / "run", verbose=0)


def test_resume_of_a_run_of_several_processes_is_refused(tmp_path, monkeypatch):
    import contextlib

    from stkd_keras import distribution, runs, training
    from stkd_keras.config import RunConfig

    staging = tmp_path / ".run.partial-1"
    (staging / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (staging / runs.CHECKPOINT_DIR / runs.STATE_FILE).write_text("{}")
    runs.write_run_file(
        staging, {"command": "train-teacher", "backend": keras.backend.backend(), "config": RunConfig(model="cnn8")}
    )
    two_processes = distribution.Setup(
        "data_parallel", contextlib.nullcontext, replicas=2, chief=True, process_index=0, process_count=2
    )
    monkeypatch.setattr(distribution, "setup", lambda *args, **kwargs: two_processes)
    with pytest.raises(
        runs.RunError,
        match="^--resume is not supported for a run of several processes: only process 0 holds the checkpoint",
    ):
        training.resume(tmp_path / "run")
    assert staging.is_dir() and not (tmp_path / "run").exists()  # nothing lost
