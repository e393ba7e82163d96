import math

import keras
import numpy as np
import pytest

from stkd_keras import losses


def numpy_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_kd(teacher, student, temperature):
    log_p_t = numpy_log_softmax(teacher / temperature)
    log_p_s = numpy_log_softmax(student / temperature)
    return temperature**2 * (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(axis=-1)


def test_two_class_kd_by_hand():
    # Teacher (0, 0) -> (1/2, 1/2); student (ln 3, 0) at T=1 -> (3/4, 1/4).
    # KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    teacher = np.array([[0.0, 0.0]], "float32")
    student = np.array([[math.log(3.0), 0.0]], "float32")
    assert float(losses.kd_loss(teacher, student, temperature=1.0)) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-5)
    # At T=2 the student logits (2 ln 3, 0) soften to the same (3/4, 1/4); the T^2 factor gives 4x.
    student_t2 = np.array([[2 * math.log(3.0), 0.0]], "float32")
    assert float(losses.kd_loss(teacher, student_t2, temperature=2.0)) == pytest.approx(4 * 0.5 * math.log(4 / 3), rel=1e-5)


def test_soft_cross_entropy_by_hand():
    # logits (0, ln 3) -> p = (1/4, 3/4); y = (0.3, 0.7): CE = -(0.3 ln 1/4 + 0.7 ln 3/4).
    labels = np.array([[0.3, 0.7]], "float32")
    logits = np.array([[0.0, math.log(3.0)]], "float32")
    expected = -(0.3 * math.log(0.25) + 0.7 * math.log(0.75))
    assert float(losses.soft_cross_entropy(labels, logits)[0]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 8.0])
def test_kd_matches_numpy(temperature):
    rng = np.random.default_rng(1)
    teacher = rng.normal(0, 3, (16, 10)).astype("float32")
    student = rng.normal(0, 3, (16, 10)).astype("float32")
    expected = numpy_kd(teacher.astype("float64"), student.astype("float64"), temperature)
    np.testing.assert_allclose(losses.kd_divergence(teacher, student, temperature), expected, rtol=1e-4, atol=1e-6)
    assert float(losses.kd_loss(teacher, student, temperature)) == pytest.approx(expected.mean(), rel=1e-4)
    assert float(losses.KDLoss(temperature)(teacher, student)) == pytest.approx(expected.mean(), rel=1e-4)


def test_stkd_matches_numpy_with_mixed_labels():
    rng = np.random.default_rng(2)
    teacher = rng.normal(0, 2, (8, 5)).astype("float32")
    student = rng.normal(0, 2, (8, 5)).astype("float32")
    one_hot = np.eye(5, dtype="float32")[rng.integers(0, 5, 8)]
    lam = 0.3
    labels = lam * one_hot + (1 - lam) * one_hot[::-1]
    ce = -(labels * numpy_log_softmax(student.astype("float64"))).sum(axis=-1)
    expected = (0.1 * ce + 0.9 * numpy_kd(teacher.astype("float64"), student.astype("float64"), 4.0)).mean()
    assert float(losses.stkd_loss(labels, teacher, student, 4.0, 0.1, 0.9)) == pytest.approx(expected, rel=1e-4)
    loss_object = losses.STKDLoss(temperature=4.0, ce_weight=0.1, kd_weight=0.9)
    assert float(loss_object({"labels": labels, "teacher_logits": teacher}, student)) == pytest.approx(expected, rel=1e-4)


def test_sample_weight_weights_each_sample():
    teacher = np.array([[0.0, 0.0], [0.0, 0.0]], "float32")
    student = np.array([[math.log(3.0), 0.0], [0.0, 0.0]], "float32")
    # The second sample has KD 0; weight 2 on the first gives (2 * 1/2 ln 4/3 + 0) / 2.
    value = losses.kd_loss(teacher, student, 1.0, sample_weight=np.array([2.0, 1.0], "float32"))
    assert float(value) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-5)


def test_float16_logits_are_computed_in_float32():
    rng = np.random.default_rng(3)
    teacher = rng.normal(0, 4, (32, 100)).astype("float16")
    student = rng.normal(0, 4, (32, 100)).astype("float16")
    value = losses.kd_loss(teacher, student, 4.0)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    expected = numpy_kd(teacher.astype("float64"), student.astype("float64"), 4.0).mean()
    assert float(value) == pytest.approx(expected, rel=1e-4)


def test_loss_objects_stay_float32_under_mixed_policy():
    keras.mixed_precision.set_global_policy("mixed_float16")
    assert losses.KDLoss().dtype == "float32"
    assert losses.STKDLoss().dtype == "float32"


def test_loss_config_round_trip():
    loss = losses.STKDLoss(temperature=2.0, ce_weight=0.5, kd_weight=0.25)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, losses.STKDLoss)
    assert (restored.temperature, restored.ce_weight, restored.kd_weight) == (2.0, 0.5, 0.25)
    assert losses.KDLoss.from_config(losses.KDLoss(temperature=3.0).get_config()).temperature == 3.0


@pytest.mark.parametrize("temperature", [-1.0, 0.0, float("nan"), "hot"])
def test_invalid_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        losses.KDLoss(temperature=temperature)


def test_invalid_weights():
    with pytest.raises(ValueError, match="at least one loss weight"):
        losses.STKDLoss(ce_weight=0.0, kd_weight=0.0)
    with pytest.raises(ValueError, match="kd_weight"):
        losses.STKDLoss(kd_weight=-0.5)
