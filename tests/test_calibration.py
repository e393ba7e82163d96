"""Calibration metrics and temperature scaling against values worked out by hand and a loop-by-loop numpy reference."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stkd_keras import calibration


def logits_for(probabilities):
    """Logits whose softmax is exactly `probabilities` (their logs)."""
    return np.log(np.asarray(probabilities, dtype=np.float64))


def reference(logits, labels, bins=15):
    """ECE / NLL / Brier / confidence one example at a time, as Guo et al. (2017) write them."""
    n = len(labels)
    totals = [[0, 0.0, 0.0] for _ in range(bins)]  # count, confidence sum, correct sum
    nll = brier = confidence_sum = 0.0
    for row, label in zip(logits, labels):
        exps = [math.exp(value - max(row)) for value in row]
        probabilities = [value / sum(exps) for value in exps]
        predicted = max(range(len(row)), key=lambda c: (row[c], -c))  # first of the largest
        confidence = probabilities[predicted]
        k = max(0, math.ceil(confidence * bins) - 1)
        totals[k][0] += 1
        totals[k][1] += confidence
        totals[k][2] += predicted == label
        nll -= math.log(probabilities[label])
        brier += sum((p - (c == label)) ** 2 for c, p in enumerate(probabilities))
        confidence_sum += confidence
    ece = sum(abs(correct / count - conf / count) * count / n for count, conf, correct in totals if count)
    return {"ece": ece, "nll": nll / n, "brier": brier / n, "confidence": confidence_sum / n}


def test_metrics_of_four_examples_worked_out_by_hand():
    # Confidence 0.9 twice (one right, one wrong: bin (0.867, 0.933], accuracy 0.5) and 0.62 twice, both right
    # (bin (0.6, 0.667], accuracy 1): ECE = 0.5 * |0.5 - 0.9| + 0.5 * |1 - 0.62| = 0.39.
    logits = logits_for([[0.9, 0.1], [0.9, 0.1], [0.38, 0.62], [0.62, 0.38]])
    labels = np.array([0, 1, 1, 0])
    metrics = calibration.calibration_metrics(logits, labels)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["ece"] == pytest.approx(0.39)
    assert metrics["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1) + 2 * math.log(0.62)) / 4)
    # Brier: 2 * 0.1^2 (right at 0.9), 2 * 0.9^2 (wrong at 0.9), 2 * 0.38^2 twice.
    assert metrics["brier"] == pytest.approx((0.02 + 1.62 + 2 * 0.2888) / 4)
    assert metrics["confidence"] == pytest.approx((0.9 + 0.9 + 0.62 + 0.62) / 4)
    counts = [row["count"] for row in metrics["bins"]]
    assert counts[13] == 2 and counts[9] == 2 and sum(counts) == 4
    assert metrics["bins"][0]["confidence"] is None and metrics["bins"][0]["accuracy"] is None  # empty bins
    assert len(metrics["bins"]) == 15 and metrics["ece_bins"] == 15


def test_a_confidence_on_a_bin_edge_falls_in_the_lower_bin():
    # (lower, upper]: a confidence of exactly 0.8 = 12/15 belongs to the bin (11/15, 12/15], index 11.
    metrics = calibration.calibration_metrics(logits_for([[0.8, 0.2]]), np.array([0]))
    assert metrics["bins"][11]["count"] == 1
    assert metrics["ece"] == pytest.approx(0.2)


def test_all_correct_and_certain_is_perfectly_calibrated():
    logits = np.array([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0], [0.0, 0.0, 50.0]])
    metrics = calibration.calibration_metrics(logits, np.array([0, 1, 2]))
    assert metrics["accuracy"] == 1.0
    assert metrics["ece"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["nll"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["brier"] == pytest.approx(0.0, abs=1e-12)
    assert [row["count"] for row in metrics["bins"]] == [0] * 14 + [3]


def test_a_single_class_is_certain_and_right():
    metrics = calibration.calibration_metrics(np.array([[3.0], [-7.0]]), np.array([0, 0]))
    assert (metrics["accuracy"], metrics["ece"], metrics["nll"], metrics["brier"], metrics["confidence"]) == (
        1.0,
        0.0,
        0.0,
        0.0,
        1.0,
    )
    assert calibration.fit_temperature(np.array([[3.0], [-7.0]]), np.array([0, 0]))["temperature"] == 1.0


def test_uniform_logits_are_a_uniform_guess():
    metrics = calibration.calibration_metrics(np.zeros((4, 4)), np.array([0, 1, 2, 3]))
    assert metrics["confidence"] == pytest.approx(0.25)
    assert metrics["nll"] == pytest.approx(math.log(4))
    assert metrics["brier"] == pytest.approx(0.75)  # 3/16 + 9/16
    assert metrics["accuracy"] == 0.25  # the argmax of equal logits is class 0
    assert metrics["ece"] == pytest.approx(0.0)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 6),
    st.integers(0, 2**32 - 1),
    st.floats(0.05, 20.0),
)
def test_metrics_equal_the_loop_reference(examples, classes, seed, temperature):
    generator = np.random.default_rng(seed)
    logits = generator.normal(scale=4.0, size=(examples, classes))
    labels = generator.integers(0, classes, size=examples)
    metrics = calibration.calibration_metrics(logits, labels, temperature=temperature)
    expected = reference(logits / temperature, labels)
    for name in ("ece", "nll", "brier", "confidence"):
        assert metrics[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name


def test_temperature_scaling_cures_an_overconfident_model_and_keeps_top1():
    # Labels drawn from softmax(z): the calibrated model is z itself, and 4 * z is overconfident.
    generator = np.random.default_rng(0)
    true_logits = generator.normal(scale=1.5, size=(20000, 10))
    probabilities = np.exp(calibration.log_softmax(true_logits))
    labels = (probabilities.cumsum(axis=1) > generator.random((20000, 1))).argmax(axis=1)
    overconfident = 4.0 * true_logits
    fit = calibration.fit_temperature(overconfident, labels)
    assert fit["temperature"] == pytest.approx(4.0, rel=0.05)
    assert fit["nll_after"] < fit["nll_before"] - 0.5
    assert not fit["at_bound"]
    before = calibration.calibration_metrics(overconfident, labels)
    after = calibration.calibration_metrics(overconfident, labels, temperature=fit["temperature"])
    assert after["accuracy"] == before["accuracy"]
    assert after["nll"] == pytest.approx(fit["nll_after"])
    assert after["ece"] < before["ece"] / 4


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 60), st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_the_fitted_temperature_is_the_minimum_of_a_fine_grid(examples, classes, seed):
    generator = np.random.default_rng(seed)
    logits = generator.normal(scale=3.0, size=(examples, classes))
    labels = generator.integers(0, classes, size=examples)
    fit = calibration.fit_temperature(logits, labels)
    grid = np.geomspace(*calibration.TEMPERATURE_RANGE, 801)
    nll = [calibration.calibration_metrics(logits, labels, temperature=t)["nll"] for t in grid]
    assert fit["nll_after"] <= min(nll) + 1e-9
    assert fit["nll_after"] <= fit["nll_before"] + 1e-12


def test_separable_logits_reach_the_smallest_temperature():
    fit = calibration.fit_temperature(np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 1]))
    assert fit["at_bound"] and fit["temperature"] == pytest.approx(calibration.TEMPERATURE_RANGE[0])


@pytest.mark.parametrize(
    "logits, labels, message",
    [
        (np.zeros((3,)), np.zeros(3, int), "shape"),
        (np.zeros((0, 2)), np.zeros(0, int), "shape"),
        (np.zeros((3, 2)), np.zeros(2, int), "one label per row"),
        (np.zeros((3, 2)), np.array([0, 1, 2]), r"labels in \[0, 2\)"),
        (np.zeros((3, 2)), np.array([0.0, 1.0, 1.0]), "integer labels"),
        (np.array([[0.0, np.nan]]), np.array([0]), "finite logits"),
    ],
)
def test_bad_inputs_get_one_sentence(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        calibration.calibration_metrics(logits, labels)


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), "2", True])
def test_a_temperature_must_be_a_positive_number(temperature):
    with pytest.raises(ValueError, match="temperature > 0"):
        calibration.calibration_metrics(np.zeros((1, 2)), np.array([0]), temperature=temperature)
