"""How far a classifier's confidence can be trusted: calibration metrics and temperature scaling, in numpy.

Every metric reads logits and integer labels, the probabilities being `softmax(logits / temperature)`:

- `ece`: expected calibration error over 15 equal-width bins of the top-label confidence, as Guo et al. (ICML
  2017, "On calibration of modern neural networks") define it: bin k holds the examples whose confidence lies in
  (k/15, (k+1)/15], and ECE = sum_k (n_k / n) |accuracy_k - mean confidence_k|. An empty bin adds nothing.
- `nll`: the mean negative log-likelihood of the true class (the cross-entropy loss), in nats.
- `brier`: the multi-class Brier score, the mean over examples of sum_c (p_c - [c == label])^2, in [0, 2].
- `confidence`: the mean top-label confidence; beside top-1 it shows over- (confidence > accuracy) or
  under-confidence at a glance.

`fit_temperature` finds the one temperature T > 0 that minimises the NLL of held-out logits (temperature scaling,
Guo et al.): it never changes which class is predicted, so top-1 is unchanged.
"""

from __future__ import annotations

import math

import numpy as np

BINS = 15
# The temperatures `fit_temperature` searches: far beyond any a trained classifier needs.
TEMPERATURE_RANGE = (1e-2, 1e2)
CALIBRATION_FIELDS = ("ece", "nll", "brier", "confidence")


def _checked(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"Expected logits of shape (examples, classes), both > 0. Received: shape {logits.shape}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"Expected one label per row of logits, {logits.shape[0]}. Received: shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"Expected integer labels in [0, {logits.shape[1]}). Received: {labels.dtype} labels.")
    if not np.all(np.isfinite(logits)):
        raise ValueError("Expected finite logits; some are NaN or infinite (a diverged model?).")
    return logits, labels.astype(np.int64)


def check_temperature(temperature) -> float:
    """`temperature` as a float when it is a finite number > 0 (a bool is not a number here); ValueError otherwise."""
    valid = isinstance(temperature, (int, float, np.floating)) and not isinstance(temperature, bool)
    if not (valid and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"Expected a finite temperature > 0. Received: temperature={temperature!r}")
    return float(temperature)


def log_softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / temperature) over the last axis, stable for large logits."""
    scaled = np.asarray(logits, dtype=np.float64) / check_temperature(temperature)
    shifted = scaled - scaled.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> list[dict]:
    """The `bins` equal-width confidence bins (lower, upper]: each one's count, mean confidence and accuracy.

    An empty bin has count 0 and None for its confidence and accuracy.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    # (lower, upper]: a confidence of exactly k/bins belongs to bin k - 1; 0 (impossible for a softmax) to bin 0.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for k in range(bins):
        members = index == k
        count = int(members.sum())
        rows.append(
            {
                "lower": float(edges[k]),
                "upper": float(edges[k + 1]),
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return rows


def calibration_metrics(logits, labels, temperature: float = 1.0, bins: int = BINS) -> dict:
    """Top-1, ECE, NLL, Brier score and mean confidence of `logits` against integer `labels` (see the module).

    Also `bins`: the reliability diagram's bins (`reliability_bins`), and the `temperature` applied.

    Raises:
        ValueError: For logits that are not (examples, classes), labels that do not match them, non-finite logits
            or a temperature that is not a finite number > 0.
    """
    logits, labels = _checked(logits, labels)
    log_probabilities = log_softmax(logits, temperature)
    probabilities = np.exp(log_probabilities)
    rows = np.arange(len(labels))
    predictions = np.argmax(logits, axis=-1)  # the temperature never changes the argmax
    confidence = probabilities[rows, predictions]
    correct = (predictions == labels).astype(np.float64)
    table = reliability_bins(confidence, correct, bins)
    ece = sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"]) / len(labels)
    one_hot = np.zeros_like(probabilities)
    one_hot[rows, labels] = 1.0
    return {
        "accuracy": float(correct.mean()),
        "ece": float(ece),
        "nll": float(-log_probabilities[rows, labels].mean()),
        "brier": float(((probabilities - one_hot) ** 2).sum(axis=-1).mean()),
        "confidence": float(confidence.mean()),
        "temperature": float(temperature),
        "ece_bins": bins,
        "bins": table,
    }


def summary(metrics: dict) -> dict:
    """The scalar calibration figures of `calibration_metrics`'s result (no bins): for tables and metrics.json."""
    return {name: metrics[name] for name in (*CALIBRATION_FIELDS, "temperature")}


def fit_temperature(logits, labels) -> dict:
    """The temperature T in `TEMPERATURE_RANGE` minimising the mean NLL of softmax(logits / T) on `labels`.

    The NLL is convex in 1/T (a log-sum-exp of functions linear in 1/T, less one linear term), so its derivative
    in 1/T, E_p[z] - z_label averaged over examples, rises monotonically: bisection on its sign finds the minimum
    to float precision without an optimiser library (SciPy is not a dependency of the core package). A minimum
    beyond the range (logits that separate every example, whose NLL falls forever as T shrinks) is reported at
    the bound, with `at_bound` true.

    Returns:
        {"temperature", "nll_before", "nll_after", "at_bound", "examples"}.
    """
    logits, labels = _checked(logits, labels)
    true_logits = logits[np.arange(len(labels)), labels]

    def slope(log_beta: float) -> float:
        probabilities = np.exp(log_softmax(logits * math.exp(log_beta)))
        return float(((probabilities * logits).sum(axis=-1) - true_logits).mean())

    low, high = -math.log(TEMPERATURE_RANGE[0]), -math.log(TEMPERATURE_RANGE[1])  # log(1/T) at each end
    low, high = min(low, high), max(low, high)
    if slope(low) == 0 and slope(high) == 0:
        log_beta, at_bound = 0.0, False  # one class, or equal logits: every temperature gives the same NLL
    elif slope(low) >= 0:
        log_beta, at_bound = low, True
    elif slope(high) <= 0:
        log_beta, at_bound = high, True
    else:
        at_bound = False
        for _ in range(100):  # the bracket of width ~9.2 shrinks below 1e-29: float precision
            middle = (low + high) / 2
            low, high = (middle, high) if slope(middle) < 0 else (low, middle)
        log_beta = (low + high) / 2
    temperature = math.exp(-log_beta)
    rows = np.arange(len(labels))
    return {
        "temperature": temperature,
        "nll_before": float(-log_softmax(logits)[rows, labels].mean()),
        "nll_after": float(-log_softmax(logits, temperature)[rows, labels].mean()),
        "at_bound": at_bound,
        "examples": int(len(labels)),
    }
