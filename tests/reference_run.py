"""A seeded short distillation of every method, recorded on TensorFlow before the method registry (issue 11).

The redesign (methods as units, one Distiller for every Keras backend) must
not change results. `record()` runs each case below from fixed initial
weights (tests/data/reference_*.weights.h5) and fixed data (the first images
of the Fashion-MNIST IDX files), and returns, per case, the per-step logs of
the first `STEPS_RECORDED` steps (Keras's running means of `loss` and each loss
term) and the final validation accuracy. `tests/data/reference_run.json` holds
what the code before the change recorded; `tests/test_reference_run.py`
compares the current code with it.

Recorded with `python tests/reference_run.py --write` on the TensorFlow backend at commit 3e29917,
before the redesign; rerunning `--write` now would record the current code instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras

from stkd_keras import idx
from stkd_keras.models import small_cnn

DATA = Path(__file__).parent / "data"
REFERENCE_FILE = DATA / "reference_run.json"
TEACHER_WEIGHTS = DATA / "reference_teacher.weights.h5"
STUDENT_WEIGHTS = DATA / "reference_student.weights.h5"
TRAIN_IMAGES, TEST_IMAGES, BATCH_SIZE, EPOCHS, STEPS_RECORDED = 1024, 500, 64, 4, 8

# name -> (method, hyperparameters): the five methods, and the options that change the step.
CASES = {
    "ce": ("ce", {}),
    "kd": ("kd", {}),
    "mixup": ("mixup", {}),
    "kd_mixup_naive": ("kd_mixup_naive", {}),
    "stkd": ("stkd", {}),
    "stkd_t2_weights_half": ("stkd", {"temperature": 2.0, "ce_weight": 0.5, "kd_weight": 0.5}),
    "stkd_per_sample_clean_kd": ("stkd", {"lambda_per_sample": True, "clean_kd_weight": 0.5, "mixup_alpha": 0.4}),
    "kd_mixup_naive_clean_kd": ("kd_mixup_naive", {"clean_kd_weight": 0.3}),
}


def fashion_arrays():
    """The first TRAIN_IMAGES / TEST_IMAGES images of the IDX files, normalised, with integer labels (numpy only)."""
    directory = idx.find_fashion_mnist_idx()

    def read(split, count):
        images, labels = idx.read_fashion_mnist_idx(directory, split)
        normalised = (images[:count].astype("float32") / 255.0 - idx.FASHION_MNIST_MEAN[0]) / idx.FASHION_MNIST_STD[0]
        return normalised, labels[:count].astype("int32")

    return read("train", TRAIN_IMAGES), read("test", TEST_IMAGES)


def models():
    """The reference teacher (cnn16) and the student (cnn8) at its recorded initial weights."""
    teacher = small_cnn(16, (28, 28, 1), 10, name="reference_teacher")
    student = small_cnn(8, (28, 28, 1), 10, name="reference_student")
    teacher.load_weights(TEACHER_WEIGHTS)
    student.load_weights(STUDENT_WEIGHTS)
    return teacher, student


class _StepLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        if len(self.steps) < STEPS_RECORDED:
            self.steps.append({key: float(value) for key, value in (logs or {}).items()})


def run_case(name: str) -> dict:
    from stkd_keras import Distiller
    from stkd_keras.methods import get_method

    method, hyperparameters = CASES[name]
    keras.utils.set_random_seed(0)
    (x, y), (x_test, y_test) = fashion_arrays()
    teacher, student = models()
    distiller = Distiller(
        student, teacher if get_method(method).needs_teacher else None, method=method, seed=7, **hyperparameters
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(3e-3), metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")]
    )
    logger = _StepLogs()
    history = distiller.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        shuffle=False,
        validation_data=(x_test, y_test),
        callbacks=[logger],
        verbose=0,
    )
    return {"steps": logger.steps, "final_val_accuracy": float(history.history["val_accuracy"][-1])}


def _write_initial_weights() -> None:
    """Trains the teacher briefly and stores it, with a freshly initialised student."""
    keras.utils.set_random_seed(0)
    (x, y), _ = fashion_arrays()
    teacher = small_cnn(16, (28, 28, 1), 10, name="reference_teacher")
    teacher.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    teacher.fit(x, y, batch_size=32, epochs=3, verbose=0)
    student = small_cnn(8, (28, 28, 1), 10, name="reference_student")
    DATA.mkdir(exist_ok=True)
    teacher.save_weights(TEACHER_WEIGHTS)
    student.save_weights(STUDENT_WEIGHTS)


def record() -> dict:
    return {name: run_case(name) for name in CASES}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="Write new initial weights and the reference file.")
    args = parser.parse_args()
    if args.write:
        _write_initial_weights()
    results = {"keras_backend": keras.backend.backend(), "keras": keras.__version__, "cases": record()}
    text = json.dumps(results, indent=1) + "\n"
    if args.write:
        REFERENCE_FILE.write_text(text)
    else:
        print(text)
