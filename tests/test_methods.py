"""Distillation methods as units: the registry, what each method declares, and its loss terms against numpy.

Runs on whichever Keras backend runs the tests (tests/test_backends.py runs it on JAX and PyTorch too).
"""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from stkd_keras import Distiller, methods
from stkd_keras.methods import DistillationMethod, Hyperparameters, batch_context, forward, get_method

README = Path(__file__).resolve().parents[1] / "README.md"


def to_numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def numpy_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_ce(labels, logits):
    return -(labels * numpy_log_softmax(logits)).sum(-1)


def numpy_kd(teacher, student, temperature):
    log_p_t, log_p_s = numpy_log_softmax(teacher / temperature), numpy_log_softmax(student / temperature)
    return temperature**2 * (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(axis=-1)


def test_registry_lists_the_methods_and_the_preset_in_order():
    assert methods.list_methods()[:6] == ("ce", "kd", "mixup", "kd_mixup_naive", "stkd", "stkd_clean_kd")
    with pytest.raises(ValueError, match=r"Expected `method` to be one of \('ce', 'kd'.*Received: method='dkd'"):
        get_method("dkd")


@pytest.mark.parametrize(
    "name, needs_teacher, mixes, teacher_sees",
    [
        ("ce", False, False, None),
        ("kd", True, False, "clean"),
        ("mixup", False, True, None),
        ("kd_mixup_naive", True, True, "clean"),
        ("stkd", True, True, "mixed"),
        ("stkd_clean_kd", True, True, "mixed"),
    ],
)
def test_what_each_method_declares(name, needs_teacher, mixes, teacher_sees):
    method = get_method(name)
    assert (method.needs_teacher, method.mixes, method.teacher_sees) == (needs_teacher, mixes, teacher_sees)


def test_defaults_are_the_standard_recipe():
    # The standard CIFAR-100 KD recipe (CRD/RepDistiller: T = 4, 0.1 CE + 0.9 KD) and mixup's Beta(0.2, 0.2).
    assert get_method("ce").defaults() == {}
    assert get_method("kd").defaults() == {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}
    assert get_method("mixup").defaults() == {"mixup_alpha": 0.2, "lambda_per_sample": False}
    stkd = {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9, "mixup_alpha": 0.2, "lambda_per_sample": False, "clean_kd_weight": 0.0}
    assert get_method("stkd").defaults() == stkd and get_method("kd_mixup_naive").defaults() == stkd
    assert get_method("stkd_clean_kd").defaults() == {**stkd, "clean_kd_weight": 0.5}
    assert methods.non_default("stkd", {**stkd, "temperature": 2.0, "unrelated": 1}) == {"temperature": 2.0}


@pytest.mark.parametrize(
    "method, values, message",
    [
        ("kd", {"temperature": 0}, "Expected `temperature` to be a finite number > 0. Received: temperature=0"),
        ("kd", {"temperature": "hot"}, "Expected `temperature` to be a number > 0. Received: temperature='hot'"),
        ("kd", {"ce_weight": -0.1}, "Expected `ce_weight` to be a finite number >= 0. Received: ce_weight=-0.1"),
        ("stkd", {"ce_weight": 0, "kd_weight": 0}, "at least one loss weight > 0.*clean_kd_weight=0.0"),
        ("mixup", {"mixup_alpha": float("inf")}, "Expected `mixup_alpha` to be a finite number > 0"),
        ("mixup", {"lambda_per_sample": "yes"}, "Expected `lambda_per_sample` to be True or False. Received: lambda_per_sample='yes'"),
        ("mixup", {"temperature": 2.0}, r"Method 'mixup' has no hyperparameter `temperature` \(its hyperparameters: mixup_alpha, lambda_per_sample\)"),
        ("ce", {"kd_weight": 1.0}, r"Method 'ce' has no hyperparameter `kd_weight` \(its hyperparameters: none\)"),
    ],
)
def test_invalid_hyperparameters(method, values, message):
    with pytest.raises(ValueError, match=message):
        get_method(method).make_hyperparameters(**values)


def test_clean_kd_needs_only_weights_that_are_not_all_zero():
    values = get_method("stkd").make_hyperparameters(ce_weight=0, kd_weight=0, clean_kd_weight=1)
    assert (values.ce_weight, values.kd_weight, values.clean_kd_weight) == (0.0, 0.0, 1.0)


def context_arrays(batch=8, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.eye(classes, dtype="float32")[rng.integers(0, classes, batch)]
    logits = {name: rng.normal(size=(batch, classes)).astype("float32") * 3 for name in ("student", "teacher", "clean_student", "clean_teacher")}
    return labels, logits, rng.permutation(batch).astype("int32"), np.float32(0.3), rng.uniform(0.5, 1.5, batch).astype("float32")


@pytest.mark.parametrize("name", ["ce", "kd", "mixup", "kd_mixup_naive", "stkd", "stkd_clean_kd"])
def test_loss_terms_equal_numpy(name):
    """Each method's terms on a context with mixing and sample weights, against the formulas worked out in numpy."""
    method = get_method(name)
    values = method.make_hyperparameters(**({"temperature": 2.0} if "temperature" in method.defaults() else {}))
    labels, logits, permutation, lam, weights = context_arrays()
    outputs = {"logits": logits["student"]}
    if method.needs_teacher:
        outputs["teacher_logits"] = logits["teacher"]
    if method.mixes:
        outputs.update(lam=lam, permutation=permutation)
    if method.uses_clean_logits(values):
        outputs.update(clean_logits=logits["clean_student"], clean_teacher_logits=logits["clean_teacher"])
    context = batch_context(labels, outputs, weights, training=True)
    terms = method.loss_terms(context, values)
    assert tuple(terms) == method.term_names(values)

    mixed_labels, mixed_weights = labels, weights
    if method.mixes:
        mixed_labels = lam * labels + (1 - lam) * labels[permutation]
        mixed_weights = lam * weights + (1 - lam) * weights[permutation]
    np.testing.assert_allclose(to_numpy(context.labels), mixed_labels, rtol=1e-6)
    expected = {"ce_loss": (np.mean(numpy_ce(mixed_labels, logits["student"]) * mixed_weights), getattr(values, "ce_weight", 1.0))}
    if method.needs_teacher:
        expected["kd_loss"] = (np.mean(numpy_kd(logits["teacher"], logits["student"], 2.0) * mixed_weights), values.kd_weight)
    if method.uses_clean_logits(values):
        expected["clean_kd_loss"] = (np.mean(numpy_kd(logits["clean_teacher"], logits["clean_student"], 2.0)), values.clean_kd_weight)
    assert set(terms) == set(expected)
    for term, (value, weight) in expected.items():
        assert float(to_numpy(terms[term].value)) == pytest.approx(value, rel=1e-5), term
        assert float(terms[term].weight) == weight
    total = sum(weight * value for value, weight in expected.values())
    assert float(to_numpy(methods.total_loss(terms))) == pytest.approx(total, rel=1e-5)


def test_evaluation_context_reports_the_clean_term_without_adding_it():
    labels, logits, _, _, _ = context_arrays()
    method = get_method("stkd_clean_kd")
    values = method.make_hyperparameters()
    context = batch_context(labels, {"logits": logits["student"], "teacher_logits": logits["teacher"]}, training=False)
    terms = method.loss_terms(context, values)
    kd = np.mean(numpy_kd(logits["teacher"], logits["student"], 4.0))
    assert float(to_numpy(terms["clean_kd_loss"].value)) == pytest.approx(kd, rel=1e-5) and terms["clean_kd_loss"].weight == 0.0


class _Recorder:
    """A stand-in network: records what it is called on and returns a fixed linear map of it."""

    def __init__(self, scale):
        self.seen, self.scale = [], scale

    def __call__(self, images, training=None):
        self.seen.append((to_numpy(images), training))
        return ops.reshape(images, (ops.shape(images)[0], -1))[:, :5] * self.scale


@pytest.mark.parametrize(
    "name, clean_kd_weight, student_calls, teacher_calls, teacher_first_sees",
    [
        ("ce", None, 1, 0, None),
        ("kd", None, 1, 1, "clean"),
        ("mixup", None, 1, 0, None),
        ("kd_mixup_naive", 0.0, 1, 1, "clean"),
        ("kd_mixup_naive", 0.5, 2, 1, "clean"),  # the clean teacher logits are the ones it already has
        ("stkd", 0.0, 1, 1, "mixed"),
        ("stkd", 0.5, 2, 2, "mixed"),
    ],
)
def test_forward_runs_each_network_on_what_the_method_declares(name, clean_kd_weight, student_calls, teacher_calls, teacher_first_sees):
    method = get_method(name)
    values = method.make_hyperparameters(**({} if clean_kd_weight is None else {"clean_kd_weight": clean_kd_weight}))
    images = np.random.default_rng(1).normal(size=(6, 4, 4, 1)).astype("float32")
    student, teacher = _Recorder(1.0), _Recorder(2.0)
    outputs = forward(method, values, images, student, teacher if method.needs_teacher else None, keras.random.SeedGenerator(3))
    assert len(student.seen) == student_calls and len(teacher.seen) == teacher_calls
    assert all(training is True for _, training in student.seen) and all(training is False for _, training in teacher.seen)
    student_sees = images
    if method.mixes:
        lam, permutation = float(to_numpy(outputs["lam"])), to_numpy(outputs["permutation"])
        student_sees = lam * images + (1 - lam) * images[permutation]
    np.testing.assert_allclose(student.seen[0][0], student_sees, atol=1e-6)
    if teacher_first_sees:
        np.testing.assert_allclose(teacher.seen[0][0], student_sees if teacher_first_sees == "mixed" else images, atol=1e-6)
    if student_calls == 2:
        np.testing.assert_allclose(student.seen[1][0], images)
        np.testing.assert_allclose(to_numpy(outputs["clean_teacher_logits"]), 2.0 * images.reshape(6, -1)[:, :5], rtol=1e-6)
    assert ("lam" in outputs) == method.mixes


def test_registering_checks_the_declaration():
    with pytest.raises(ValueError, match="A method named 'stkd' is already registered"):
        methods.register_method(type("Again", (DistillationMethod,), {"name": "stkd", "term_names": lambda self, h: ("ce_loss",)}))
    with pytest.raises(ValueError, match=r"teacher_sees in \('clean', 'mixed'\). Received: teacher_sees='both'"):
        methods.register_method(type("Both", (DistillationMethod,), {"name": "_both", "needs_teacher": True, "teacher_sees": "both"}))
    with pytest.raises(ValueError, match="hyperparameters to be a Hyperparameters dataclass"):
        methods.register_method(type("Loose", (DistillationMethod,), {"name": "_loose", "hyperparameters": dict}))
    with pytest.raises(ValueError, match=r"Silent must define loss_terms\(\), term_names\(\)\."):
        methods.register_method(type("Silent", (DistillationMethod,), {"name": "_silent"}))
    terms = {"term_names": lambda self, h: ("ce_loss",), "loss_terms": lambda self, c, h: {}}
    with pytest.raises(ValueError, match=r"Mixer mixes, so its hyperparameters need .*Missing: \['lambda_per_sample', 'mixup_alpha'\]"):
        methods.register_method(type("Mixer", (DistillationMethod,), {"name": "_mixer", "mixes": True, **terms}))
    with pytest.raises(ValueError, match="Method 'stkd' has no hyperparameter `warmup`"):
        methods.register_preset("_stkd_warm", "stkd", "bad preset", warmup=3)
    assert "_stkd_warm" not in methods.list_methods()


def test_preset_is_its_method_with_other_defaults():
    preset = get_method("stkd_clean_kd")
    assert type(preset) is type(get_method("stkd")) and preset.name == "stkd_clean_kd"
    assert preset.make_hyperparameters(clean_kd_weight=0.25).clean_kd_weight == 0.25
    assert get_method("stkd").defaults()["clean_kd_weight"] == 0.0  # the base method is unchanged
    assert preset.term_names(preset.make_hyperparameters()) == ("ce_loss", "kd_loss", "clean_kd_loss")


def test_registry_and_command_line_import_no_keras():
    """The command line lists methods and builds its options before a Keras backend is chosen."""
    code = (
        "import sys; import stkd_keras.methods, stkd_keras.cli.main; "
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if 'keras' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _readme_method_example() -> str:
    section = README.read_text().split("## Adding a method", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_adding_a_method_example_runs(fashion_arrays, trained_teacher):
    """The README's example method registers, validates its hyperparameter, and its KD weight ramps with the epoch."""
    namespace = {}
    exec(compile(_readme_method_example(), "README.md#adding-a-method", "exec"), namespace)
    method = get_method("warm_kd")
    assert method.defaults() == {"temperature": 4.0, "warmup_epochs": 5}
    with pytest.raises(ValueError, match="Expected `warmup_epochs` to be an int >= 1. Received: warmup_epochs=0"):
        method.make_hyperparameters(warmup_epochs=0)
    (x, y), _ = fashion_arrays
    keras.utils.set_random_seed(1)
    from stkd_keras.models import small_cnn

    distiller = Distiller(small_cnn(8, (28, 28, 1), 10), trained_teacher, method="warm_kd", warmup_epochs=2)
    distiller.compile(optimizer="sgd")
    history = distiller.fit(x[:256], y[:256], batch_size=64, epochs=3, verbose=0).history
    for epoch, ramp in enumerate((0.5, 1.0, 1.0)):  # min(1, (epoch + 1) / 2)
        assert history["loss"][epoch] == pytest.approx(history["ce_loss"][epoch] + ramp * history["kd_loss"][epoch], rel=1e-4)


def test_hyperparameter_dataclasses_write_each_default_once():
    """The built-in methods' shared fields are inherited, not repeated: each default appears in exactly one class body."""
    owners = {}
    for name in ("ce", "kd", "mixup", "kd_mixup_naive", "stkd", "stkd_clean_kd"):
        for klass in type(get_method(name)).hyperparameters.__mro__:
            if dataclasses.is_dataclass(klass) and issubclass(klass, Hyperparameters):
                for field_name in vars(klass).get("__annotations__", {}):
                    owners.setdefault(field_name, set()).add(klass.__qualname__)
    assert all(len(classes) == 1 for classes in owners.values()), owners
    assert set(owners) == {"temperature", "ce_weight", "kd_weight", "mixup_alpha", "lambda_per_sample", "clean_kd_weight"}
