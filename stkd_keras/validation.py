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
