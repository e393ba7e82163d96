"""Argument checks shared by the library: one `ValueError` naming the argument and what it received."""

from __future__ import annotations

import math


def positive_finite(name: str, value) -> float:
    """Returns `value` as a float, or raises `ValueError` if it is not a finite number > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Expected `{name}` to be a number > 0. Received: {name}={value!r}") from None
    if not number > 0 or math.isinf(number):
        raise ValueError(f"Expected `{name}` to be a finite number > 0. Received: {name}={value!r}")
    return number


def validate_loss_weights(**weights) -> tuple[float, ...]:
    """Checks that every weight is a finite number >= 0 and that not all are zero.

    Returns:
        The weights as floats, in the order given.
    """
    values = []
    for name, weight in weights.items():
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"Expected `{name}` to be a number >= 0. Received: {name}={weight!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"Expected `{name}` to be a finite number >= 0. Received: {name}={weight!r}")
        values.append(value)
    if not any(values):
        received = ", ".join(f"{name}={weight!r}" for name, weight in weights.items())
        raise ValueError(f"Expected at least one loss weight > 0, otherwise nothing is learned. Received: {received}")
    return tuple(values)


def unit_fraction(name: str, value) -> float:
    """Returns `value` as a float, or raises `ValueError` if it is not a number in (0, 1]."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Expected `{name}` to be a number in (0, 1]. Received: {name}={value!r}") from None
    if not 0 < number <= 1:
        raise ValueError(f"Expected `{name}` to be a number in (0, 1]. Received: {name}={value!r}")
    return number
