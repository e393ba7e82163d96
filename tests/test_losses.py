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
    assert float(losses.kd_loss(teacher, student_t2, temperature=2.0)) == pytest.approx(
        4 * 0.5 * math.log(4 / 3), rel=1e-5
    )


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


def numpy_dkd(teacher, student, labels, temperature):
    """Per-sample (TCKD, NCKD) from the DKD paper's definitions, one sample and one class at a time, T^2 included.

    b = [p_t, sum of the other classes' p] is the binary distribution; the
    non-target distribution is the other classes' p divided by their sum.
    """
    tckd, nckd = [], []
    for z_t, z_s, y in zip(teacher.astype("float64"), student.astype("float64"), labels):
        target = int(np.argmax(y))
        p_t, p_s = np.exp(numpy_log_softmax(z_t / temperature)), np.exp(numpy_log_softmax(z_s / temperature))
        others = [c for c in range(len(y)) if c != target]
        b_t = [p_t[target], sum(p_t[c] for c in others)]
        b_s = [p_s[target], sum(p_s[c] for c in others)]
        tckd.append(sum(b_t[i] * math.log(b_t[i] / b_s[i]) for i in range(2)))
        nckd.append(sum(p_t[c] / b_t[1] * math.log((p_t[c] / b_t[1]) / (p_s[c] / b_s[1])) for c in others))
    return temperature**2 * np.array(tckd), temperature**2 * np.array(nckd)


def dkd_arrays(seed, batch=12, classes=7, mixed=False):
    rng = np.random.default_rng(seed)
    teacher = rng.normal(0, 3, (batch, classes)).astype("float32")
    student = rng.normal(0, 3, (batch, classes)).astype("float32")
    one_hot = np.eye(classes, dtype="float32")[rng.integers(0, classes, batch)]
    if not mixed:
        return teacher, student, one_hot, one_hot
    permutation = rng.permutation(batch)
    labels = 0.3 * one_hot + 0.7 * one_hot[permutation]
    return teacher, student, labels, one_hot[permutation]  # the target is the class of the larger share, 0.7


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 4.0, 8.0])
def test_dkd_matches_the_paper_in_numpy(temperature, mixed):
    teacher, student, labels, target = dkd_arrays(int(temperature) + 10 * mixed, mixed=mixed)
    tckd, nckd = numpy_dkd(teacher, student, target, temperature)
    got_tckd, got_nckd = losses.dkd_divergences(teacher, student, labels, temperature)
    # float32 log-probabilities carry ~1e-7 absolute error, which T^2 scales up.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got_tckd), tckd, rtol=1e-4, atol=1e-6 * temperature**2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got_nckd), nckd, rtol=1e-4, atol=1e-6 * temperature**2)
    expected = (1.0 * tckd + 8.0 * nckd).mean()
    assert float(losses.dkd_loss(teacher, student, labels, temperature=temperature)) == pytest.approx(
        expected, rel=1e-4
    )
    expected = (2.0 * tckd + 0.5 * nckd).mean()
    assert float(
        losses.dkd_loss(teacher, student, labels, alpha=2.0, beta=0.5, temperature=temperature)
    ) == pytest.approx(expected, rel=1e-4)


def test_dkd_reformulates_kd():
    """The DKD paper's identity, per sample: KD = TCKD + (1 - p^T_t) * NCKD.

    p^T_t is the teacher's softened target probability.
    """
    teacher, student, labels, _ = dkd_arrays(5, batch=16, classes=10)
    for temperature in (1.0, 4.0):
        tckd, nckd = (
            keras.ops.convert_to_numpy(v) for v in losses.dkd_divergences(teacher, student, labels, temperature)
        )
        p_target = np.exp(numpy_log_softmax(teacher.astype("float64") / temperature))[np.arange(16), labels.argmax(-1)]
        kd = keras.ops.convert_to_numpy(losses.kd_divergence(teacher, student, temperature))
        np.testing.assert_allclose(tckd + (1 - p_target) * nckd, kd, rtol=1e-4, atol=1e-6)


def test_dkd_of_two_classes_is_kd():
    # With one other class its renormalised distribution is (1,), so NCKD = 0 and TCKD is the whole KD term:
    # the two-class example above, T = 1, teacher (1/2, 1/2), student (3/4, 1/4): 1/2 ln(4/3).
    teacher = np.array([[0.0, 0.0]], "float32")
    student = np.array([[math.log(3.0), 0.0]], "float32")
    tckd, nckd = losses.dkd_divergences(teacher, student, np.array([[0.0, 1.0]], "float32"), temperature=1.0)
    assert float(tckd[0]) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-5) and float(nckd[0]) == pytest.approx(
        0.0, abs=1e-7
    )


def test_dkd_stays_finite_when_the_target_probability_rounds_to_one():
    # At T = 1 a gap of 120 leaves the other classes e^-120 ~ 8e-53, below float32's smallest number: 1 - p_t rounds
    # to 0 (mdistiller takes torch.log of it). The log-space form still gives the float64 value.
    teacher = np.array([[120.0, 0.0, 1.0], [3.0, 0.5, -1.0]], "float32")
    student = np.array([[130.0, 2.0, 0.0], [1.0, 0.0, 2.0]], "float32")
    labels = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], "float32")
    tckd, nckd = numpy_dkd(teacher, student, labels, 1.0)
    got = [keras.ops.convert_to_numpy(v) for v in losses.dkd_divergences(teacher, student, labels, 1.0)]
    assert all(np.isfinite(v).all() for v in got)
    np.testing.assert_allclose(got[0], tckd, rtol=1e-4, atol=1e-30)
    np.testing.assert_allclose(got[1], nckd, rtol=1e-4, atol=1e-6)


def test_dkd_sample_weight_and_float16_logits():
    teacher, student, labels, target = dkd_arrays(7)
    weights = np.linspace(0.5, 1.5, 12).astype("float32")
    value = losses.dkd_loss(teacher.astype("float16"), student.astype("float16"), labels, sample_weight=weights)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    teacher16, student16 = teacher.astype("float16").astype("float64"), student.astype("float16").astype("float64")
    tckd, nckd = numpy_dkd(teacher16, student16, target, 4.0)
    assert float(value) == pytest.approx(((tckd + 8.0 * nckd) * weights).mean(), rel=1e-4)


def test_standardize_logits_matches_numpy_with_the_unbiased_std():
    rng = np.random.default_rng(4)
    logits = (rng.normal(0, 5, (6, 10)) + rng.normal(0, 20, (6, 1))).astype("float32")
    expected = (logits - logits.mean(-1, keepdims=True)) / (
        logits.astype("float64").std(-1, ddof=1, keepdims=True) + 1e-7
    )
    got = keras.ops.convert_to_numpy(losses.standardize_logits(logits))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.std(-1, ddof=1), 1.0, rtol=1e-5)
    # By hand: (1, 2, 3) has mean 2 and unbiased std 1, so it becomes (-1, 0, 1).
    by_hand = keras.ops.convert_to_numpy(losses.standardize_logits(np.array([[1.0, 2.0, 3.0]], "float16")))
    assert by_hand.dtype == np.float32
    np.testing.assert_allclose(by_hand, [[-1.0, 0.0, 1.0]], atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_from_probabilities_is_kd_on_the_teachers_softmax(temperature):
    rng = np.random.default_rng(4)
    teacher = rng.normal(0, 3, (16, 10)).astype("float32")
    student = rng.normal(0, 3, (16, 10)).astype("float32")
    weights = rng.uniform(0.5, 1.5, 16).astype("float32")
    probabilities = np.exp(numpy_log_softmax(teacher.astype("float64") / temperature)).astype("float32")
    value = float(losses.kd_loss_from_probabilities(probabilities, student, temperature, weights))
    assert value == pytest.approx(float(losses.kd_loss(teacher, student, temperature, weights)), rel=1e-5)
    expected = numpy_kd(teacher.astype("float64"), student.astype("float64"), temperature) * weights
    assert value == pytest.approx(expected.mean(), rel=1e-4)


def test_kd_from_probabilities_by_hand_with_a_zero_probability():
    # p = (1, 0), student (ln 3, 0) at T = 1 -> q = (3/4, 1/4): KL = 1 * ln(1 / (3/4)) = ln(4/3); the class of
    # p = 0 adds 0.
    value = losses.kd_divergence_from_probabilities(
        np.array([[1.0, 0.0]], "float32"), np.array([[math.log(3.0), 0.0]], "float32"), 1.0
    )
    assert float(value[0]) == pytest.approx(math.log(4 / 3), rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        losses.kd_loss_from_probabilities(np.array([[1.0, 0.0]], "float32"), np.array([[0.0, 0.0]], "float32"), 0.0)


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
    assert float(loss_object({"labels": labels, "teacher_logits": teacher}, student)) == pytest.approx(
        expected, rel=1e-4
    )


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


@pytest.mark.parametrize(
    "build, name, method",
    [
        (lambda t, s, y: losses.stkd_loss(y, t, s), "stkd_loss", "stkd"),
        (lambda t, s, y: losses.dkd_loss(t, s, y), "dkd_loss", "dkd"),
        (lambda t, s, y: losses.KDLoss()(t, s), "KDLoss", "kd"),
        (lambda t, s, y: losses.STKDLoss()({"labels": y, "teacher_logits": t}, s), "STKDLoss", "stkd"),
    ],
)
def test_the_composed_losses_are_deprecated_for_the_methods_own(build, name, method):
    """Issue 22: the objectives are defined once, by the methods; the composed losses point to them, still working."""
    rng = np.random.default_rng(0)
    teacher, student = rng.standard_normal((4, 5)).astype("float32"), rng.standard_normal((4, 5)).astype("float32")
    labels = np.eye(5, dtype="float32")[[0, 1, 2, 3]]
    with pytest.warns(DeprecationWarning, match=rf"stkd_keras.losses.{name} is deprecated .*method='{method}'") as seen:
        value = build(teacher, student, labels)
    assert np.isfinite(float(value))
    assert seen[0].filename == __file__  # the warning points at the caller's line, not at the library
