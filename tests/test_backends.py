"""One core for every Keras backend: the core tests on JAX and PyTorch, training without TensorFlow, export from any.

The Keras backend is fixed when Keras is imported, once per process, so each
other backend runs in a subprocess of its own.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import learning

ROOT = Path(__file__).resolve().parents[1]
# The tests of the backend-neutral core: each runs as is on TensorFlow, JAX and PyTorch.
CORE_TESTS = (
    "tests/test_losses.py",
    "tests/test_mixup.py",
    "tests/test_methods.py",
    "tests/test_distiller.py",
    "tests/test_reference_run.py",
    "tests/test_progress.py",
)
BACKENDS = ("tensorflow", "jax", "torch")
OTHER_BACKENDS = [backend for backend in BACKENDS if backend != keras.backend.backend()]


def _require(backend: str) -> None:
    """A backend the project installs (requirements.txt) must be here: its absence fails, it is not skipped."""
    if importlib.util.find_spec(backend) is None:
        pytest.fail(f"The {backend} package is not installed; `pip install -r requirements.txt` installs it.")


def _run(arguments, backend: str, timeout: int, **kwargs):
    environment = {**os.environ, "KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        arguments, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout, **kwargs
    )


def _core_suite(backend: str, selection: list[str], files) -> None:
    """The tests of `files` that pytest's `selection` options (-m, -k) select, in one subprocess on `backend`."""
    _require(backend)
    result = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", *selection, *files],
        backend,
        timeout=1200,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"{backend}: {summary}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in summary and "failed" not in summary


# The default run checks the losses, mixup, every method (`stkd_keras.testing.check_method`: its terms and one
# compiled `fit` step) and progress on the two other backends, none of which trains a teacher first. The whole core
# there, the Distiller's tests and what training learns (about 7 minutes of the two subprocesses), is the twin below:
# in `pytest -m slow`, and in .ci/run's second arithmetic (`pytest -m learning`).
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_core_tests_pass_on(backend):
    files = [name for name in CORE_TESTS if "distiller" not in name]
    _core_suite(backend, ["-m", "not slow and not learning", "-k", "not (distiller_trains or readme)"], files)


# Issue 23: a keras.applications student (MobileNetV3Small, hard-swish and squeeze-excite) and a teacher read
# through the input adapter train one short epoch on the two other backends: PyTorch in the default run (40 s), JAX
# (2 minutes: XLA compiles MobileNetV3) in `pytest -m slow`.
@pytest.mark.parametrize(
    "backend", [pytest.param(b, marks=pytest.mark.slow) if b == "jax" else b for b in OTHER_BACKENDS]
)
def test_an_application_student_trains_on(backend):
    _core_suite(backend, ["-k", "mobilenetv3_student"], ["tests/test_architectures.py"])


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_whole_core_passes_on(backend):
    _core_suite(backend, ["-m", "not slow"], CORE_TESTS)


# Trains a teacher and an STKD student from numpy arrays with `tensorflow` blocked from import, then saves the
# student with what the export stage needs (preprocessing.json) and its logits on a few test images.
TRAIN_WITHOUT_TENSORFLOW = r"""
import sys
sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError, wherever it happens
import json
from pathlib import Path

import keras
import numpy as np

from stkd_keras import Distiller, idx
from stkd_keras.models import small_cnn

output = Path(sys.argv[1])
keras.utils.set_random_seed(0)
directory = idx.find_fashion_mnist_idx()
(x, y), (x_test, y_test) = [idx.read_fashion_mnist_idx(directory, split) for split in ("train", "test")]
normalise = lambda images: (images.astype("float32") / 255.0 - idx.FASHION_MNIST_MEAN[0]) / idx.FASHION_MNIST_STD[0]
x, y, x_test, y_test = normalise(x[:3000]), y[:3000], normalise(x_test[:500]), y_test[:500]

teacher = small_cnn(16, (28, 28, 1), 10, name="teacher")
trainer = Distiller(teacher, method="ce")
trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
trainer.fit(x, y, batch_size=64, epochs=2, verbose=0)

student = small_cnn(8, (28, 28, 1), 10, name="student")
untrained = float(np.mean(keras.ops.convert_to_numpy(student(x_test, training=False)).argmax(-1) == y_test))
distiller = Distiller(student, teacher, method="stkd", seed=0)
distiller.compile(
    optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"], jit_compile=keras.backend.backend() == "jax"
)
history = distiller.fit(x, y, batch_size=64, epochs=3, validation_data=(x_test, y_test), verbose=0).history
student.save(output / "student.keras")
np.save(output / "logits.npy", keras.ops.convert_to_numpy(student(x_test[:16], training=False)))
(output / "preprocessing.json").write_text(json.dumps({
    "dataset": "fashion_mnist", "input_shape": [28, 28, 1], "image_size": None, "mean": list(idx.FASHION_MNIST_MEAN),
    "std": list(idx.FASHION_MNIST_STD), "class_names": list(idx.FASHION_MNIST_CLASSES),
}))
tensorflow_loaded = [
    name for name, module in sys.modules.items() if name.split(".")[0] == "tensorflow" and module is not None
]
print(json.dumps({
    "backend": keras.backend.backend(), "untrained_accuracy": untrained, "val_accuracy": history["val_accuracy"][-1],
    "validation_images": len(y_test), "tensorflow_loaded": tensorflow_loaded,
}))
"""


@pytest.mark.learning
# PyTorch in the default run, JAX in `pytest -m slow` (tests/test_backend_runs.py runs the command line on JAX).
@pytest.mark.parametrize("backend", [pytest.param("jax", marks=pytest.mark.slow), "torch"])
def test_trains_without_tensorflow_and_the_student_exports_under_tensorflow(backend, tmp_path, fashion_arrays):
    _require(backend)
    result = _run([sys.executable, "-c", TRAIN_WITHOUT_TENSORFLOW, str(tmp_path)], backend, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend and report["tensorflow_loaded"] == []
    # The student distilled for real: 0.134 above itself untrained (tests/learning.py). Seen on AMD EPYC (AVX2):
    # JAX 0.130 -> 0.632; PyTorch 0.150 -> 0.532 (avx2 kernels) and 0.482-0.506 (portable kernels): least margin
    # left 0.198.
    learning.assert_learned(
        f"stkd on {backend} without TensorFlow",
        report["untrained_accuracy"],
        report["val_accuracy"],
        report["validation_images"],
    )

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the export half runs the TensorFlow converters: run the tests on the TensorFlow backend")
    from stkd_keras import export as export_lib
    from stkd_keras import idx

    # The .keras file loads here, on TensorFlow, with the same logits.
    model = keras.saving.load_model(tmp_path / "student.keras")
    directory = idx.find_fashion_mnist_idx()
    images, _ = idx.read_fashion_mnist_idx(directory, "test")
    x_test = (images[:16].astype("float32") / 255.0 - idx.FASHION_MNIST_MEAN[0]) / idx.FASHION_MNIST_STD[0]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x_test, training=False)), np.load(tmp_path / "logits.npy"), atol=1e-4
    )
    # And goes through the export stage with its verification in each runtime.
    preprocessing = json.loads((tmp_path / "preprocessing.json").read_text())
    data = export_lib.load_export_data("fashion_mnist", preprocessing, verify_images=200, representative_images=50)
    report = export_lib.export_model(
        model,
        tmp_path / "export",
        data,
        preprocessing,
        formats=("tflite", "onnx"),
        quantize="float32",
        log=lambda *_: None,
    )
    rows = {row["file"]: row for row in report["files"]}
    assert set(rows) == {"student_float32.tflite", "student_float32.onnx"}
    for row in rows.values():
        assert row["max_abs_logit_diff"] <= 1e-4 and row["top1_agreement"] == 1.0
    # The report scores the student it exported: its accuracy on the verification images, computed here.
    logits = keras.ops.convert_to_numpy(model.predict(data.images, verbose=0))
    assert report["keras_top1_accuracy"] == pytest.approx(float(np.mean(logits.argmax(-1) == data.labels)), abs=1e-6)
