"""Means, spreads and 95% intervals over seeds, and how tables write them (`stkd-keras compare`)."""

from __future__ import annotations

import math
import statistics

# Two-sided 95% quantiles of Student's t (t_{0.975, df}), df = 1..30; beyond, the normal 1.96 is within 1.5%.
_T_975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_quantile_975(df: float) -> float:
    """t_{0.975} for `df` degrees of freedom (linear between integer rows; 1.96 in the limit)."""
    if df < 1:
        return math.inf
    if df >= 30:
        return 2.042 + (1.96 - 2.042) * min(1.0, (df - 30) / 90)
    low = int(df)
    high = min(low + 1, 30)
    return _T_975[low - 1] + (_T_975[high - 1] - _T_975[low - 1]) * (df - low)


def describe(values: list[float]) -> dict:
    """n, mean, sample standard deviation (NaN for one value), min and max of `values`."""
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else float("nan"),
        "min": min(values),
        "max": max(values),
    }


def difference_ci(method: list[tuple[int, float]], baseline: list[tuple[int, float]]) -> dict:
    """Mean difference method - baseline with a 95% CI; paired by seed when at least two seeds match.

    Args:
        method, baseline: (seed, value) pairs.
    """
    base = dict(baseline)
    paired = [(value, base[seed]) for seed, value in method if seed in base]
    if len(paired) >= 2:
        differences = [a - b for a, b in paired]
        mean = statistics.fmean(differences)
        half = t_quantile_975(len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
        return {
            "difference": mean,
            "low": mean - half,
            "high": mean + half,
            "kind": f"paired over {len(differences)} seeds",
        }
    a = [value for _, value in method]
    b = [value for _, value in baseline]
    mean = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return {"difference": mean, "low": float("nan"), "high": float("nan"), "kind": "too few runs for an interval"}
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return {"difference": mean, "low": mean, "high": mean, "kind": "Welch (no spread)"}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile_975(df) * math.sqrt(va + vb)
    return {"difference": mean, "low": mean - half, "high": mean + half, "kind": f"Welch, df {df:.1f}"}


def mean_std_text(values: dict, scale: float = 100, digits: int = 2) -> str:
    """`mean ± std` of `describe`'s result times `scale`; one run has no spread to show, and says so."""
    if values["n"] < 2:
        return f"{scale * values['mean']:.{digits}f} ± - (one run)"
    return f"{scale * values['mean']:.{digits}f} ± {scale * values['std']:.{digits}f}"


def interval_text(versus: dict, scale: float = 100, digits: int = 2) -> str:
    """`difference [low, high] (kind)` of `difference_ci`'s result times `scale`; without an interval, just why."""
    difference = f"{scale * versus['difference']:+.{digits}f}"
    if math.isnan(versus["low"]):
        return f"{difference} ({versus['kind']})"
    return (
        f"{difference} [{scale * versus['low']:+.{digits}f}, {scale * versus['high']:+.{digits}f}] ({versus['kind']})"
    )
