"""A test kit for distillation methods: `check_method(name)` checks one registered method end to end.

In the spirit of keras-hub's shared `run_task_test`: a method written as one
unit (`stkd_keras.methods.register_method`) is tested by calling one
function, and this project's own tests call it for every name in
`methods.list_methods()`, so a new built-in method is tested by adding
nothing. What it checks, on tiny models and random data, on the Keras backend
of the process:

1. The declaration: the method is registered, its defaults make valid
   hyperparameters, and a teacher is required exactly when it distils.
2. The loss terms of a training step (`methods.step_loss`) and of an
   evaluation pass carry the names `term_names` declares; each is a finite
   scalar, and the total is their weighted sum.
3. One step of `Distiller.fit`, compiled as Keras compiles by default on the
   backend (`jit_compile="auto"`: XLA on TensorFlow and JAX), reports the
   loss, every declared term and, for a method that mixes, `mixup_lambda`; and
   `stkd_keras.reporting.loss_terms` (what `report` draws) finds every term in
   the logs.
4. The Distiller's config round trip: `get_config` is JSON and `from_config`
   gives back the method and its hyperparameters.
5. One step of the QAT/pruning fine-tuning (`stkd_keras.export.tfmot_fine_tune`,
   tf_keras models): its loss equals the Distiller's on the same weights,
   batch, mixup draw and epoch (`bridge_step_losses`). This needs TensorFlow as
   the Keras backend and tf_keras; `bridge=None` runs it where they are there.

A failed check raises `AssertionError` naming the method and what differs.

Example:
>>> from stkd_keras.testing import check_method
>>> report = check_method("stkd")
>>> report.training_terms
('ce_loss', 'kd_loss')
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 5
BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True)
class MethodReport:
    """What `check_method` checked for one method, with the values it saw."""

    name: str
    training_terms: tuple[str, ...]
    evaluation_terms: tuple[str, ...]
    training_loss: float
    fit_logs: dict
    bridge: str  # "checked: ..." or why the bridge step was not run


@contextlib.contextmanager
def registered(method_class):
    """Registers a `DistillationMethod` class for the block, and removes it after (a test's own method)."""
    from stkd_keras import methods

    methods.register_method(method_class)
    try:
        yield methods.get_method(method_class.name)
    finally:
        methods.unregister_method(method_class.name)


def _fail(name: str, message: str) -> None:
    raise AssertionError(f"Method {name!r}: {message}")


def tiny_model(name: str, width: int = 4, seed: int = 0):
    """A small functional logits model on `IMAGE_SHAPE` images, `NUM_CLASSES` classes, with BatchNormalization."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Conv2D(width, 3, padding="same", name=f"{name}_conv")(inputs)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(keras.layers.ReLU(name=f"{name}_relu")(x))
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name=f"{name}_logits")(x), name=name)


def tiny_batch(seed: int = 0):
    """`BATCH_SIZE` random images and integer labels (numpy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((BATCH_SIZE, *IMAGE_SHAPE)).astype("float32")
    return images, rng.integers(0, NUM_CLASSES, BATCH_SIZE)


def _check_declaration(name: str):
    from stkd_keras import methods

    if name not in methods.list_methods():
        _fail(name, f"not registered (registered: {', '.join(methods.list_methods())})")
    method = methods.get_method(name)
    hyperparameters = method.make_hyperparameters()
    if method.make_hyperparameters(**hyperparameters.to_dict()) != hyperparameters:
        _fail(name, "its defaults do not survive to_dict() and make_hyperparameters(**values)")
    names = method.term_names(hyperparameters)
    if not names or len(set(names)) != len(names) or not all(term.endswith("_loss") for term in names):
        _fail(name, f"term_names() must be distinct names ending in _loss (report draws those). Received: {names}")
    teacher = tiny_model("probe_teacher")
    given, refused = (teacher, None) if method.needs_teacher else (None, teacher)
    methods.check_teacher(method, given)
    try:
        methods.check_teacher(method, refused)
    except ValueError:
        pass
    else:
        _fail(name, f"check_teacher accepted teacher={refused!r}, which needs_teacher={method.needs_teacher} refuses")
    return method, hyperparameters


def _check_terms(method, hyperparameters, student, teacher, images, labels) -> tuple[float, tuple, tuple]:
    """The training and evaluation terms against the declaration, and the total against their weighted sum."""
    import keras
    from keras import ops

    from stkd_keras import methods

    declared = tuple(method.term_names(hyperparameters))
    seed = keras.random.SeedGenerator(3)
    outputs = {"logits": student(images, training=False)}
    if teacher is not None:
        outputs["teacher_logits"] = methods.teacher_logits(teacher, images)
    try:  # outputs_loss refuses terms other than the declared ones
        training = methods.step_loss(method, hyperparameters, images, labels, student, teacher, seed, epoch=1, step=4)
        evaluation = methods.outputs_loss(method, hyperparameters, labels, outputs, training=False)
    except ValueError as error:
        _fail(method.name, str(error))
    for stage, step in (("training", training), ("evaluation", evaluation)):
        if set(step.terms) != set(declared):
            _fail(method.name, f"{stage} terms {sorted(step.terms)} are not the declared {sorted(declared)}")
        for term_name, term in step.terms.items():
            value = keras.ops.convert_to_numpy(term.value)
            if value.shape != ():
                _fail(method.name, f"{stage} term {term_name} has shape {value.shape}; a term is one scalar per batch")
            if not math.isfinite(float(value)):
                _fail(method.name, f"{stage} term {term_name} is {float(value)}, not a finite number")
    weighted = sum(float(ops.convert_to_numpy(term.weight * term.value)) for term in training.terms.values())
    regularization = sum(float(ops.convert_to_numpy(loss)) for loss in student.losses)
    total = float(ops.convert_to_numpy(training.total))
    if not math.isclose(total, weighted + regularization, rel_tol=1e-5, abs_tol=1e-6):
        _fail(method.name, f"the step's total {total} is not its terms' weighted sum {weighted + regularization}")
    return total, tuple(training.terms), tuple(evaluation.terms)


def _check_fit_and_config(method, student, teacher, images, labels) -> dict:
    """One compiled `fit` step: its logs against the declaration and `report`'s columns; the config round trip."""
    from stkd_keras import Distiller, reporting

    distiller = Distiller(student, teacher, method=method.name, seed=5)
    distiller.compile(optimizer="sgd", jit_compile="auto")
    history = distiller.fit(images, labels, batch_size=BATCH_SIZE, epochs=1, verbose=0).history
    logs = {key: values[-1] for key, values in history.items()}
    expected = {"loss", *method.term_names(distiller.hyperparameters)} | ({"mixup_lambda"} if method.mixes else set())
    if not expected <= set(logs) or not all(math.isfinite(logs[key]) for key in expected):
        _fail(method.name, f"fit logged {logs}; expected finite values for {sorted(expected)}")
    drawn = set(reporting.loss_terms(history))
    if not set(method.term_names(distiller.hyperparameters)) <= drawn:
        _fail(method.name, f"report draws {sorted(drawn)}, missing some of its terms")
    config = json.loads(json.dumps(distiller.get_config()))
    restored = Distiller.from_config(config)
    if restored.method != method.name or restored.hyperparameters != distiller.hyperparameters:
        _fail(method.name, f"from_config gave {restored.method!r} {restored.hyperparameters}")
    return logs


def bridge_available() -> str | None:
    """None when the QAT/pruning bridge can run a step here, else why not."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return f"the bridge trains tf_keras models, on TensorFlow; this process runs Keras on {keras.backend.backend()}"
    if importlib.util.find_spec("tf_keras") is None:
        return "tf_keras is not installed (pip install stkd-keras[export])"
    return None


def bridge_step_losses(name: str, epochs=(0, 25), seed: int = 7) -> dict[int, tuple[float, float]]:
    """{epoch: (Distiller's loss, fine-tuning's loss)} of one batch, the same weights, draw and epoch for both."""
    import keras
    import tf_keras

    from stkd_keras import Distiller, methods
    from stkd_keras.export.tf_keras_rebuild import custom_layer_classes, to_tf_keras
    from stkd_keras.export.tfmot_fine_tune import batch_loss

    method = methods.get_method(name)
    student = tiny_model("bridge_student")
    teacher = tiny_model("bridge_teacher", width=6, seed=1) if method.needs_teacher else None
    images, labels = tiny_batch()
    custom = custom_layer_classes(tf_keras)
    legacy_student = to_tf_keras(student, tf_keras, custom)
    legacy_teacher = None if teacher is None else to_tf_keras(teacher, tf_keras, custom)
    losses = {}
    for epoch in epochs:
        distiller = Distiller(student, teacher, method=name, seed=seed)
        distiller.epoch.assign(epoch)
        expected = float(distiller.compute_loss(images, labels, training=True))
        got = batch_loss(
            method,
            method.make_hyperparameters(),
            images,
            labels,
            legacy_student,
            legacy_teacher,
            keras.random.SeedGenerator(seed),
            epoch,
            0,
        )
        losses[epoch] = (expected, float(got))
    return losses


def _check_bridge(name: str, bridge: bool | None) -> str:
    why_not = bridge_available()
    if why_not is not None:
        if bridge:
            _fail(name, f"the bridge step was asked for, but {why_not}")
        return f"not run: {why_not}"
    if bridge is False:
        return "not run: bridge=False"
    for epoch, (expected, got) in bridge_step_losses(name).items():
        if not math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-5):
            _fail(name, f"the fine-tuning's loss {got} is not the Distiller's {expected} at epoch {epoch}")
    return "checked: the fine-tuning's loss equals the Distiller's at epochs 0 and 25"


def check_method(name: str, bridge: bool | None = None) -> MethodReport:
    """Checks a registered method: declaration, loss terms, one compiled `fit` step, config, one bridge step.

    Args:
        name: A name in `stkd_keras.methods.list_methods()`.
        bridge: True requires the QAT/pruning bridge step (TensorFlow and
            tf_keras), False leaves it out, None runs it where it can run.

    Returns:
        A `MethodReport` of what was checked and the values seen.

    Raises:
        AssertionError: Naming the method and the check it failed.
    """
    method, hyperparameters = _check_declaration(name)
    student = tiny_model("check_student")
    teacher = tiny_model("check_teacher", width=6, seed=1) if method.needs_teacher else None
    images, labels = tiny_batch()
    total, training_terms, evaluation_terms = _check_terms(method, hyperparameters, student, teacher, images, labels)
    logs = _check_fit_and_config(method, student, teacher, images, labels)
    return MethodReport(name, training_terms, evaluation_terms, total, logs, _check_bridge(name, bridge))
