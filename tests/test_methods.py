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
from stkd_keras.methods.dkd import warmup_factor

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


def numpy_standardize(z):
    """Sun et al.'s `normalize`: torch.std is the unbiased (ddof=1) standard deviation."""
    return (z - z.mean(axis=-1, keepdims=True)) / (z.std(axis=-1, ddof=1, keepdims=True) + 1e-7)


def numpy_dkd(teacher, student, labels, temperature):
    """Per-sample (TCKD, NCKD) from the DKD paper's definitions, one sample at a time, T^2 included."""
    tckd, nckd = [], []
    for z_t, z_s, y in zip(teacher.astype("float64"), student.astype("float64"), labels):
        others = np.arange(len(y)) != np.argmax(y)
        p_t, p_s = np.exp(numpy_log_softmax(z_t / temperature)), np.exp(numpy_log_softmax(z_s / temperature))
        b_t, b_s = np.array([p_t[~others].sum(), p_t[others].sum()]), np.array([p_s[~others].sum(), p_s[others].sum()])
        q_t, q_s = p_t[others] / b_t[1], p_s[others] / b_s[1]  # the other classes, renormalised
        tckd.append(np.sum(b_t * np.log(b_t / b_s)))
        nckd.append(np.sum(q_t * np.log(q_t / q_s)))
    return temperature**2 * np.array(tckd), temperature**2 * np.array(nckd)


def test_registry_lists_the_methods_and_the_preset_in_order():
    # Each preset follows its method; stkd+ls has a module of its own, imported after the built-in ones.
    assert methods.list_methods()[:10] == (
        "ce",
        "kd",
        "kd+ls",
        "mixup",
        "kd_mixup_naive",
        "stkd",
        "stkd_clean_kd",
        "dkd",
        "dkd+ls",
        "stkd+ls",
    )
    with pytest.raises(ValueError, match=r"Expected `method` to be one of \('ce', 'kd'.*Received: method='crd'"):
        get_method("crd")


@pytest.mark.parametrize(
    "name, needs_teacher, mixes, teacher_sees",
    [
        ("ce", False, False, None),
        ("kd", True, False, "clean"),
        ("mixup", False, True, None),
        ("kd_mixup_naive", True, True, "clean"),
        ("stkd", True, True, "mixed"),
        ("stkd_clean_kd", True, True, "mixed"),
        ("dkd", True, False, "clean"),
        ("kd+ls", True, False, "clean"),
        ("dkd+ls", True, False, "clean"),
        ("stkd+ls", True, True, "mixed"),
    ],
)
def test_what_each_method_declares(name, needs_teacher, mixes, teacher_sees):
    method = get_method(name)
    assert (method.needs_teacher, method.mixes, method.teacher_sees) == (needs_teacher, mixes, teacher_sees)


def test_defaults_are_the_standard_recipe():
    # The standard CIFAR-100 KD recipe (CRD/RepDistiller: T = 4, 0.1 CE + 0.9 KD) and mixup's Beta(0.2, 0.2).
    assert get_method("ce").defaults() == {}
    assert get_method("kd").defaults() == {
        "temperature": 4.0,
        "logit_standardization": False,
        "ce_weight": 0.1,
        "kd_weight": 0.9,
    }
    assert get_method("mixup").defaults() == {"mixup_alpha": 0.2, "lambda_per_sample": False}
    naive = {
        "temperature": 4.0,
        "logit_standardization": False,
        "ce_weight": 0.1,
        "kd_weight": 0.9,
        "mixup_alpha": 0.2,
        "lambda_per_sample": False,
        "clean_kd_weight": 0.0,
    }
    stkd = {**naive, "mix_fraction": 1.0, "soft_target": "teacher_on_mix"}
    assert get_method("stkd").defaults() == stkd and get_method("kd_mixup_naive").defaults() == naive
    assert get_method("stkd_clean_kd").defaults() == {**stkd, "clean_kd_weight": 0.5}
    assert methods.non_default("stkd", {**stkd, "temperature": 2.0, "unrelated": 1}) == {"temperature": 2.0}


@pytest.mark.parametrize(
    "method, values, message",
    [
        ("kd", {"temperature": 0}, "Expected `temperature` to be a finite number > 0. Received: temperature=0"),
        ("kd", {"temperature": "hot"}, "Expected `temperature` to be a number > 0. Received: temperature='hot'"),
        ("kd", {"ce_weight": -0.1}, "Expected `ce_weight` to be a finite number >= 0. Received: ce_weight=-0.1"),
        (
            "kd",
            {"logit_standardization": "yes"},
            "Expected `logit_standardization` to be True or False. Received: logit_standardization='yes'",
        ),
        ("dkd", {"warmup_epochs": 0}, "Expected `warmup_epochs` to be an int >= 1. Received: warmup_epochs=0"),
        ("dkd", {"warmup_epochs": 2.5}, "Expected `warmup_epochs` to be an int >= 1. Received: warmup_epochs=2.5"),
        ("dkd", {"warmup_epochs": True}, "Expected `warmup_epochs` to be an int >= 1. Received: warmup_epochs=True"),
        ("dkd", {"nckd_weight": -1}, "Expected `nckd_weight` to be a finite number >= 0. Received: nckd_weight=-1"),
        ("dkd", {"ce_weight": 0, "tckd_weight": 0, "nckd_weight": 0}, "at least one loss weight > 0"),
        (
            "dkd",
            {"kd_weight": 1.0},
            r"Method 'dkd' has no hyperparameter `kd_weight` \(its hyperparameters: temperature, "
            r"logit_standardization, ce_weight",
        ),
        ("stkd", {"ce_weight": 0, "kd_weight": 0}, "at least one loss weight > 0.*clean_kd_weight=0.0"),
        ("mixup", {"mixup_alpha": float("inf")}, "Expected `mixup_alpha` to be a finite number > 0"),
        (
            "mixup",
            {"lambda_per_sample": "yes"},
            "Expected `lambda_per_sample` to be True or False. Received: lambda_per_sample='yes'",
        ),
        (
            "mixup",
            {"temperature": 2.0},
            r"Method 'mixup' has no hyperparameter `temperature` \(its hyperparameters: mixup_alpha, "
            r"lambda_per_sample\)",
        ),
        ("ce", {"kd_weight": 1.0}, r"Method 'ce' has no hyperparameter `kd_weight` \(its hyperparameters: none\)"),
        ("stkd", {"mix_fraction": 0}, r"Expected `mix_fraction` to be a number in \(0, 1\]. Received: mix_fraction=0"),
        (
            "stkd",
            {"mix_fraction": 1.5},
            r"Expected `mix_fraction` to be a number in \(0, 1\]. Received: mix_fraction=1.5",
        ),
        (
            "stkd",
            {"mix_fraction": "half"},
            r"Expected `mix_fraction` to be a number in \(0, 1\]. Received: mix_fraction='half'",
        ),
        (
            "stkd",
            {"soft_target": "bad"},
            r"Expected `soft_target` to be one of \('teacher_on_mix', 'mixed_teacher'\). Received: soft_target='bad'",
        ),
        ("kd_mixup_naive", {"mix_fraction": 0.5}, "Method 'kd_mixup_naive' has no hyperparameter `mix_fraction`"),
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
    logits = {
        name: rng.normal(size=(batch, classes)).astype("float32") * 3
        for name in ("student", "teacher", "clean_student", "clean_teacher")
    }
    return (
        labels,
        logits,
        rng.permutation(batch).astype("int32"),
        np.float32(0.3),
        rng.uniform(0.5, 1.5, batch).astype("float32"),
    )


@pytest.mark.parametrize(
    "name, overrides",
    [
        *((name, {}) for name in ("ce", "kd", "mixup", "kd_mixup_naive", "stkd", "stkd_clean_kd", "kd+ls", "stkd+ls")),
        ("stkd+ls", {"clean_kd_weight": 0.5}),  # logit standardisation in the clean term too
        ("kd_mixup_naive", {"logit_standardization": True, "clean_kd_weight": 0.5}),
    ],
)
def test_loss_terms_equal_numpy(name, overrides):
    """Each method's terms on a context with mixing and sample weights, against the formulas worked out in numpy."""
    method = get_method(name)
    values = method.make_hyperparameters(
        **({"temperature": 2.0} if "temperature" in method.defaults() else {}), **overrides
    )
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
    expected = {
        "ce_loss": (
            np.mean(numpy_ce(mixed_labels, logits["student"]) * mixed_weights),
            getattr(values, "ce_weight", 1.0),
        )
    }
    # With logit standardisation the KD terms see standardised logits, the cross-entropy the raw ones.
    soften = numpy_standardize if getattr(values, "logit_standardization", False) else (lambda z: z)
    if method.needs_teacher:
        kd = numpy_kd(soften(logits["teacher"]), soften(logits["student"]), 2.0)
        expected["kd_loss"] = (np.mean(kd * mixed_weights), values.kd_weight)
    if method.uses_clean_logits(values):
        clean_kd = numpy_kd(soften(logits["clean_teacher"]), soften(logits["clean_student"]), 2.0)
        expected["clean_kd_loss"] = (np.mean(clean_kd), values.clean_kd_weight)
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
    assert (
        float(to_numpy(terms["clean_kd_loss"].value)) == pytest.approx(kd, rel=1e-5)
        and terms["clean_kd_loss"].weight == 0.0
    )


@pytest.mark.parametrize("name", ["dkd", "dkd+ls"])
def test_dkd_terms_equal_numpy(name):
    """DKD's three terms, sample-weighted, at the second epoch of a 4-epoch warm-up, against the paper's in numpy."""
    method = get_method(name)
    values = method.make_hyperparameters(warmup_epochs=4)
    labels, logits, _, _, weights = context_arrays(classes=6)
    outputs = {"logits": logits["student"], "teacher_logits": logits["teacher"]}
    context = batch_context(labels, outputs, weights, epoch=ops.convert_to_tensor(1, "int32"), training=True)
    terms = method.loss_terms(context, values)
    assert tuple(terms) == method.term_names(values) == ("ce_loss", "tckd_loss", "nckd_loss")

    soften = numpy_standardize if values.logit_standardization else (lambda z: z)
    tckd, nckd = numpy_dkd(soften(logits["teacher"]), soften(logits["student"]), labels, values.temperature)
    ramp = 2 / 4  # min(1, (epoch + 1) / warmup_epochs) at epoch 1
    expected = {
        "ce_loss": (
            np.mean(numpy_ce(labels, logits["student"]) * weights),
            values.ce_weight,
        ),  # raw logits, also with LS
        "tckd_loss": (np.mean(tckd * weights), values.tckd_weight * ramp),
        "nckd_loss": (np.mean(nckd * weights), values.nckd_weight * ramp),
    }
    for term, (value, weight) in expected.items():
        assert float(to_numpy(terms[term].value)) == pytest.approx(value, rel=1e-5), term
        assert float(to_numpy(terms[term].weight)) == pytest.approx(weight, rel=1e-6), term
    total = sum(weight * value for value, weight in expected.values())
    assert float(to_numpy(methods.total_loss(terms))) == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize("epoch, factor", [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (30, 1.0)])
def test_dkd_warmup_is_mdistillers(epoch, factor):
    # mdistiller: min(epoch / 20, 1) with its epochs counted from 1; ours count from 0.
    assert float(to_numpy(warmup_factor(ops.convert_to_tensor(epoch, "int32"), 20))) == pytest.approx(factor, rel=1e-6)
    labels, logits, _, _, _ = context_arrays()
    context = batch_context(labels, {"logits": logits["student"], "teacher_logits": logits["teacher"]}, epoch=epoch)
    terms = get_method("dkd").loss_terms(context, get_method("dkd").make_hyperparameters())
    assert float(to_numpy(terms["tckd_loss"].weight)) == pytest.approx(1.0 * factor, rel=1e-6)
    assert float(to_numpy(terms["nckd_loss"].weight)) == pytest.approx(8.0 * factor, rel=1e-6)


def test_dkd_and_logit_standardization_presets_carry_the_published_settings():
    # mdistiller/engine/cfg.py: DKD CE_WEIGHT 1.0, ALPHA 1.0, BETA 8.0, T 4.0, WARMUP 20.
    dkd = {
        "temperature": 4.0,
        "logit_standardization": False,
        "ce_weight": 1.0,
        "tckd_weight": 1.0,
        "nckd_weight": 8.0,
        "warmup_epochs": 20,
    }
    assert get_method("dkd").defaults() == dkd
    # sunshangquan/logit-standardization-KD tools/train.py --logit-stand --base-temp 2 --kd-weight 9: DKD's alpha and
    # beta times 9 and T = 2; KD's T = 2 and KD weight 9, CE weight 0.1 (its mdistiller/engine/cfg.py).
    assert get_method("dkd+ls").defaults() == {
        **dkd,
        "temperature": 2.0,
        "logit_standardization": True,
        "tckd_weight": 9.0,
        "nckd_weight": 72.0,
    }
    kd_ls = {"temperature": 2.0, "logit_standardization": True, "ce_weight": 0.1, "kd_weight": 9.0}
    assert get_method("kd+ls").defaults() == kd_ls
    assert get_method("stkd+ls").defaults() == {**get_method("stkd").defaults(), **kd_ls}
    assert get_method("kd").defaults()["logit_standardization"] is False  # the base methods are unchanged
    assert "sunshangquan/logit-standardization-KD" in get_method("kd+ls").description
    assert "configs/cifar100/dkd/resnet32x4_resnet8x4.yaml" in get_method("dkd+ls").description
    assert "new combination" in get_method("stkd+ls").description


@pytest.mark.parametrize("name", ["dkd", "kd+ls"])
def test_distiller_trains_with_dkd_and_kd_ls(name, fashion_arrays, trained_teacher):
    """A Distiller fits with `dkd` (its terms reported, the warm-up in the loss) and with the preset `kd+ls`."""
    from stkd_keras.models import small_cnn

    (x, y), _ = fashion_arrays
    keras.utils.set_random_seed(1)
    options = {"warmup_epochs": 2} if name == "dkd" else {}
    distiller = Distiller(small_cnn(8, (28, 28, 1), 10), trained_teacher, method=name, **options)
    distiller.compile(optimizer="sgd")
    history = distiller.fit(x[:128], y[:128], batch_size=64, epochs=2, verbose=0).history
    for epoch in range(2):
        if name == "dkd":
            ramp = (0.5, 1.0)[epoch]
            expected = history["ce_loss"][epoch] + ramp * (
                history["tckd_loss"][epoch] + 8.0 * history["nckd_loss"][epoch]
            )
        else:
            expected = 0.1 * history["ce_loss"][epoch] + 9.0 * history["kd_loss"][epoch]
        assert np.isfinite(history["loss"][epoch]) and history["loss"][epoch] == pytest.approx(expected, rel=1e-4)
    restored = Distiller.from_config(distiller.get_config())
    assert restored.method == name and restored.hyperparameters == distiller.hyperparameters


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
        ("dkd", None, 1, 1, "clean"),
        ("mixup", None, 1, 0, None),
        ("kd_mixup_naive", 0.0, 1, 1, "clean"),
        ("kd_mixup_naive", 0.5, 2, 1, "clean"),  # the clean teacher logits are the ones it already has
        ("stkd", 0.0, 1, 1, "mixed"),
        ("stkd", 0.5, 2, 2, "mixed"),
    ],
)
def test_forward_runs_each_network_on_what_the_method_declares(
    name, clean_kd_weight, student_calls, teacher_calls, teacher_first_sees
):
    method = get_method(name)
    values = method.make_hyperparameters(**({} if clean_kd_weight is None else {"clean_kd_weight": clean_kd_weight}))
    images = np.random.default_rng(1).normal(size=(6, 4, 4, 1)).astype("float32")
    student, teacher = _Recorder(1.0), _Recorder(2.0)
    outputs = forward(
        method, values, images, student, teacher if method.needs_teacher else None, keras.random.SeedGenerator(3)
    )
    assert len(student.seen) == student_calls and len(teacher.seen) == teacher_calls
    assert all(training is True for _, training in student.seen) and all(
        training is False for _, training in teacher.seen
    )
    student_sees = images
    if method.mixes:
        lam, permutation = float(to_numpy(outputs["lam"])), to_numpy(outputs["permutation"])
        student_sees = lam * images + (1 - lam) * images[permutation]
    np.testing.assert_allclose(student.seen[0][0], student_sees, atol=1e-6)
    if teacher_first_sees:
        np.testing.assert_allclose(
            teacher.seen[0][0], student_sees if teacher_first_sees == "mixed" else images, atol=1e-6
        )
    if student_calls == 2:
        np.testing.assert_allclose(student.seen[1][0], images)
        np.testing.assert_allclose(
            to_numpy(outputs["clean_teacher_logits"]), 2.0 * images.reshape(6, -1)[:, :5], rtol=1e-6
        )
    assert ("lam" in outputs) == method.mixes


def _first_draw(seed, lambda_per_sample, batch=6, alpha=0.2):
    """The draw `forward` makes first, from a fresh generator of this seed."""
    from stkd_keras import mixup as mixup_lib

    lam, permutation = mixup_lib.draw(batch, alpha, lambda_per_sample, keras.random.SeedGenerator(seed))
    return to_numpy(lam), to_numpy(permutation)


def _images_and_labels(batch=6):
    rng = np.random.default_rng(1)
    return rng.normal(size=(batch, 4, 4, 1)).astype("float32"), np.eye(5, dtype="float32")[[0, 1, 2, 3, 4, 0][:batch]]


@pytest.mark.parametrize("lambda_per_sample", [False, True])
def test_mix_fraction_mixes_only_the_first_samples(lambda_per_sample):
    method = get_method("stkd")
    values = method.make_hyperparameters(mix_fraction=0.5, lambda_per_sample=lambda_per_sample)
    images, labels = _images_and_labels()
    student, teacher = _Recorder(1.0), _Recorder(2.0)
    outputs = forward(method, values, images, student, teacher, keras.random.SeedGenerator(3))
    lam, permutation = _first_draw(3, lambda_per_sample)
    # round(0.5 * 6) = 3: the first three samples keep the drawn lambda, the other three lambda = 1 (clean).
    lam = np.where(np.arange(6) < 3, lam, 1.0).astype("float32")
    np.testing.assert_array_equal(to_numpy(outputs["lam"]), lam)
    np.testing.assert_array_equal(to_numpy(outputs["permutation"]), permutation)
    mixed = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[permutation]
    np.testing.assert_allclose(student.seen[0][0], mixed, atol=1e-6)
    np.testing.assert_array_equal(student.seen[0][0][3:], images[3:])
    np.testing.assert_array_equal(teacher.seen[0][0], student.seen[0][0])  # teacher_on_mix: the same virtual samples
    context = batch_context(labels, outputs)
    np.testing.assert_allclose(
        to_numpy(context.labels), lam[:, None] * labels + (1 - lam[:, None]) * labels[permutation], atol=1e-6
    )
    np.testing.assert_array_equal(to_numpy(context.labels)[3:], labels[3:])


@pytest.mark.parametrize("lambda_per_sample", [False, True])
def test_mix_fraction_one_is_the_step_of_before(lambda_per_sample):
    """At 1 (the default) the step draws and mixes as a method without the field: the same draw, lambda untouched."""
    images, _ = _images_and_labels()
    lam, permutation = _first_draw(3, lambda_per_sample)
    seen = []
    for name, options in (("kd_mixup_naive", {}), ("stkd", {}), ("stkd", {"mix_fraction": 1.0})):
        method, student = get_method(name), _Recorder(1.0)
        values = method.make_hyperparameters(lambda_per_sample=lambda_per_sample, **options)
        outputs = forward(method, values, images, student, _Recorder(2.0), keras.random.SeedGenerator(3))
        assert to_numpy(outputs["lam"]).shape == lam.shape
        np.testing.assert_array_equal(to_numpy(outputs["lam"]), lam)
        np.testing.assert_array_equal(to_numpy(outputs["permutation"]), permutation)
        seen.append(student.seen[0][0])
    np.testing.assert_array_equal(seen[1], seen[0])
    np.testing.assert_array_equal(seen[2], seen[0])


def numpy_softmax(z):
    return np.exp(numpy_log_softmax(z))


class _OtherFeatures(_Recorder):
    """A teacher that reads other pixels than the student's `_Recorder`, so that standardised logits differ too."""

    def __call__(self, images, training=None):
        self.seen.append((to_numpy(images), training))
        return ops.reshape(images, (ops.shape(images)[0], -1))[:, 5:10] * self.scale


@pytest.mark.parametrize(
    "mix_fraction, lambda_per_sample, clean_kd_weight, logit_standardization",
    [(1.0, False, 0.0, False), (0.5, True, 0.5, False), (0.5, False, 0.0, True)],
)
def test_mixed_teacher_target_equals_numpy(mix_fraction, lambda_per_sample, clean_kd_weight, logit_standardization):
    """soft_target="mixed_teacher": the teacher runs once, on the clean images; its softmaxes mix like the labels."""
    method = get_method("stkd")
    values = method.make_hyperparameters(
        soft_target="mixed_teacher",
        mix_fraction=mix_fraction,
        lambda_per_sample=lambda_per_sample,
        clean_kd_weight=clean_kd_weight,
        temperature=2.0,
        logit_standardization=logit_standardization,
    )
    assert method.teacher_input(values) == "clean" and method.teacher_input(method.make_hyperparameters()) == "mixed"
    images, labels = _images_and_labels()
    weights = np.array([0.5, 1.0, 1.5, 1.0, 2.0, 1.0], "float32")
    student, teacher = _Recorder(1.0), _OtherFeatures(2.0)
    outputs = forward(method, values, images, student, teacher, keras.random.SeedGenerator(3))
    assert len(teacher.seen) == 1 and len(student.seen) == (2 if clean_kd_weight else 1)
    np.testing.assert_array_equal(teacher.seen[0][0], images)

    lam, permutation = _first_draw(3, lambda_per_sample)
    lam = np.where(np.arange(6) < round(mix_fraction * 6), lam, 1.0)
    mixed_images = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[permutation]
    student_logits = mixed_images.reshape(6, -1)[:, :5].astype("float64")
    teacher_logits = 2.0 * images.reshape(6, -1)[:, 5:10].astype("float64")
    softened = numpy_standardize if logit_standardization else (lambda z: z)
    teacher_probabilities = numpy_softmax(softened(teacher_logits) / 2.0)
    target = lam[:, None] * teacher_probabilities + (1 - lam[:, None]) * teacher_probabilities[permutation]
    kd = 2.0**2 * (target * (np.log(target) - numpy_log_softmax(softened(student_logits) / 2.0))).sum(-1)
    mixed_labels, mixed_weights = (
        lam[:, None] * labels + (1 - lam[:, None]) * labels[permutation],
        lam * weights + (1 - lam) * weights[permutation],
    )

    terms = method.loss_terms(batch_context(labels, outputs, weights), values)
    assert tuple(terms) == method.term_names(values)
    assert (
        float(to_numpy(terms["kd_loss"].value)) == pytest.approx(np.mean(kd * mixed_weights), rel=1e-5)
        and terms["kd_loss"].weight == 0.9
    )
    assert float(to_numpy(terms["ce_loss"].value)) == pytest.approx(
        np.mean(numpy_ce(mixed_labels, student_logits) * mixed_weights), rel=1e-5
    )
    if clean_kd_weight:
        clean_kd = numpy_kd(teacher_logits, images.reshape(6, -1)[:, :5].astype("float64"), 2.0)
        assert float(to_numpy(terms["clean_kd_loss"].value)) == pytest.approx(np.mean(clean_kd), rel=1e-5)

    # In evaluation (the clean batch, no draw) the target is the teacher's own softmax: plain KD.
    clean_labels, logits, _, _, _ = context_arrays()
    evaluation = batch_context(
        clean_labels, {"logits": logits["student"], "teacher_logits": logits["teacher"]}, training=False
    )
    value = method.loss_terms(evaluation, values)["kd_loss"].value
    expected = np.mean(
        numpy_kd(softened(logits["teacher"].astype("float64")), softened(logits["student"].astype("float64")), 2.0)
    )
    assert float(to_numpy(value)) == pytest.approx(expected, rel=1e-5)


def test_distiller_trains_stkd_with_the_mixed_teacher_on_half_of_each_batch(fashion_arrays):
    from stkd_keras.models import small_cnn

    (x, y), _ = fashion_arrays
    keras.utils.set_random_seed(2)
    teacher, student = small_cnn(4, (28, 28, 1), 10, name="teacher"), small_cnn(4, (28, 28, 1), 10, name="student")
    distiller = Distiller(student, teacher, method="stkd", soft_target="mixed_teacher", mix_fraction=0.5, seed=0)
    distiller.compile(optimizer="sgd")
    history = distiller.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0).history
    assert {"ce_loss", "kd_loss", "mixup_lambda"} <= set(history)
    assert history["loss"][0] == pytest.approx(0.1 * history["ce_loss"][0] + 0.9 * history["kd_loss"][0], rel=1e-4)
    # Half of each batch has lambda 1, the other half one lambda in [0, 1]: their mean lies in [0.5, 1].
    assert 0.5 <= history["mixup_lambda"][0] <= 1


def test_registering_checks_the_declaration():
    with pytest.raises(ValueError, match="A method named 'stkd' is already registered"):
        methods.register_method(
            type("Again", (DistillationMethod,), {"name": "stkd", "term_names": lambda self, h: ("ce_loss",)})
        )
    with pytest.raises(ValueError, match=r"teacher_sees in \('clean', 'mixed'\). Received: teacher_sees='both'"):
        methods.register_method(
            type("Both", (DistillationMethod,), {"name": "_both", "needs_teacher": True, "teacher_sees": "both"})
        )
    with pytest.raises(ValueError, match="hyperparameters to be a Hyperparameters dataclass"):
        methods.register_method(type("Loose", (DistillationMethod,), {"name": "_loose", "hyperparameters": dict}))
    with pytest.raises(ValueError, match=r"Silent must define loss_terms\(\), term_names\(\)\."):
        methods.register_method(type("Silent", (DistillationMethod,), {"name": "_silent"}))
    terms = {"term_names": lambda self, h: ("ce_loss",), "loss_terms": lambda self, c, h: {}}
    with pytest.raises(
        ValueError, match=r"Mixer mixes, so its hyperparameters need .*Missing: \['lambda_per_sample', 'mixup_alpha'\]"
    ):
        methods.register_method(type("Mixer", (DistillationMethod,), {"name": "_mixer", "mixes": True, **terms}))
    with pytest.raises(ValueError, match="Method 'stkd' has no hyperparameter `warmup`"):
        methods.register_preset("_stkd_warm", "stkd", "bad preset", warmup=3)
    assert "_stkd_warm" not in methods.list_methods()
    # A hyperparameter named like a run's own setting would replace it silently in the run's flat config: refused.
    Clash = dataclasses.make_dataclass(
        "Clash",
        [("epochs", int, dataclasses.field(default=3)), ("seed", int, dataclasses.field(default=0))],
        bases=(Hyperparameters,),
    )
    with pytest.raises(
        ValueError, match=r"Clashing's hyperparameters \['epochs', 'seed'\] share their names with a run's own settings"
    ):
        methods.register_method(
            type("Clashing", (DistillationMethod,), {"name": "_clash", "hyperparameters": Clash, **terms})
        )
    assert "_clash" not in methods.list_methods()


def test_reserved_names_are_the_run_settings_and_distiller_arguments():
    import inspect

    from stkd_keras.config import RunConfig
    from stkd_keras.distiller import _MODEL_KWARGS
    from stkd_keras.recipes import EXTRA_FIELDS

    distiller = set(inspect.signature(Distiller.__init__).parameters) - {"self", "kwargs"}
    assert methods.RESERVED_NAMES == {field.name for field in dataclasses.fields(RunConfig)} | set(
        EXTRA_FIELDS
    ) | distiller | set(_MODEL_KWARGS)
    taken = {
        field for method in methods.list_methods() for field in get_method(method).hyperparameters.__dataclass_fields__
    }
    assert not taken & methods.RESERVED_NAMES  # the built-in methods keep clear of them


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
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if "
        "'keras' in m)"
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
        assert history["loss"][epoch] == pytest.approx(
            history["ce_loss"][epoch] + ramp * history["kd_loss"][epoch], rel=1e-4
        )
    from stkd_keras.testing import check_method

    assert check_method("warm_kd").training_terms == ("ce_loss", "kd_loss")  # as the README tells its reader to


def test_hyperparameter_dataclasses_write_each_default_once():
    """The built-in methods' shared fields are inherited, not repeated: each default is in exactly one class body."""
    owners = {}
    for name in ("ce", "kd", "mixup", "kd_mixup_naive", "stkd", "stkd_clean_kd"):
        for klass in type(get_method(name)).hyperparameters.__mro__:
            if dataclasses.is_dataclass(klass) and issubclass(klass, Hyperparameters):
                for field_name in vars(klass).get("__annotations__", {}):
                    owners.setdefault(field_name, set()).add(klass.__qualname__)
    assert all(len(classes) == 1 for classes in owners.values()), owners
    assert set(owners) == {
        "temperature",
        "logit_standardization",
        "ce_weight",
        "kd_weight",
        "mixup_alpha",
        "lambda_per_sample",
        "clean_kd_weight",
        "mix_fraction",
        "soft_target",
    }


# Methods other test files register to probe the step (tests/test_distiller.py's `_test_probe`) start with "_".
BUILT_IN = [name for name in methods.list_methods() if not name.startswith("_")]


@pytest.mark.parametrize("name", BUILT_IN)
def test_check_method_passes_for_every_registered_method(name):
    """The test kit on each method: a new method in stkd_keras/methods/ is tested here by adding nothing."""
    from stkd_keras.testing import check_method

    report = check_method(name)
    unit = get_method(name)
    assert report.training_terms == unit.term_names(unit.make_hyperparameters())
    assert set(report.evaluation_terms) == set(report.training_terms)
    assert report.bridge.startswith("checked" if keras.backend.backend() == "tensorflow" else "not run")


def _probe_class(class_name, terms):
    """A method whose `loss_terms` returns `terms(context)` and declares ("ce_loss",)."""
    return type(
        class_name,
        (DistillationMethod,),
        {
            "name": f"_{class_name.lower()}",
            "term_names": lambda self, h: ("ce_loss",),
            "loss_terms": lambda self, context, h: terms(context),
        },
    )


@pytest.mark.parametrize(
    "class_name, terms, message",
    [
        (
            "Undeclared",
            lambda c: {"ce_loss": methods.LossTerm(ops.mean(c.student_logits)), "extra_loss": methods.LossTerm(0.0)},
            r"Method '_undeclared': .*returned loss terms \['ce_loss', 'extra_loss'\]",
        ),
        (
            "NotFinite",
            lambda c: {"ce_loss": methods.LossTerm(ops.log(ops.zeros(())) * 0.0)},
            "Method '_notfinite': training term ce_loss is nan, not a finite number",
        ),
        (
            "PerSample",
            lambda c: {"ce_loss": methods.LossTerm(ops.mean(c.student_logits, axis=-1))},
            r"Method '_persample': training term ce_loss has shape \(8,\); a term is one scalar per batch",
        ),
    ],
)
def test_check_method_names_the_method_and_the_check_it_fails(class_name, terms, message):
    from stkd_keras.testing import check_method, registered

    with registered(_probe_class(class_name, terms)):
        with pytest.raises(AssertionError, match=message):
            check_method(f"_{class_name.lower()}", bridge=False)
    assert f"_{class_name.lower()}" not in methods.list_methods()


def test_check_method_wants_report_to_draw_every_term():
    """`report` draws the columns ending in `_loss`: a term named otherwise would be missing from its curves."""
    from stkd_keras.testing import check_method, registered

    Quiet = type(
        "Quiet",
        (DistillationMethod,),
        {
            "name": "_quiet",
            "term_names": lambda self, h: ("ce",),
            "loss_terms": lambda self, context, h: {"ce": methods.LossTerm(ops.mean(context.student_logits))},
        },
    )
    with registered(Quiet):
        with pytest.raises(AssertionError, match=r"Method '_quiet': term_names\(\) must be distinct names ending"):
            check_method("_quiet")
