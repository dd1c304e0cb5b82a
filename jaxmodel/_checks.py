"""Input validation shared by the data-model classes.

Checks run on concrete values only (at construction, outside ``jit``); traced values pass
through untouched, because inside a transformation the values are data, not user input.
Every message names the owning class, the field and the allowed range.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def as_float(value, owner: str, field: str) -> jax.Array:
    """Convert a number or array to an array of JAX's default float dtype."""
    if isinstance(value, jax.core.Tracer):
        return value
    if isinstance(value, (str, bytes)) or value is None:
        raise ValueError(f"{owner}.{field} must be a number (got {value!r})")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{owner}.{field} must be a number (got {value!r})") from exc
    return jnp.asarray(arr, dtype=jnp.result_type(float))


def _concrete(value):
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value, dtype=float)


def _describe(arr: np.ndarray, bad: np.ndarray) -> str:
    first = float(arr[bad].ravel()[0]) if arr.ndim else float(arr)
    where = "" if arr.ndim == 0 else f" at {int(np.count_nonzero(bad))} point(s), e.g."
    return f"{where} {first!r}"


def check_range(
    value,
    owner: str,
    field: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_inclusive: bool = True,
    integer: bool = False,
) -> None:
    """Raise ``ValueError`` unless every element is finite, in range and (optionally) whole."""
    arr = _concrete(value)
    if arr is None:
        return
    nan = ~np.isfinite(arr)
    if nan.any():
        raise ValueError(f"{owner}.{field} must be finite (got{_describe(arr, nan)})")
    too_low = arr < low if low_inclusive else arr <= low
    too_high = arr > high
    if too_low.any() or too_high.any():
        lo = f"{'>=' if low_inclusive else '>'} {low:g}" if low > -math.inf else ""
        hi = f"<= {high:g}" if high < math.inf else ""
        rng = " and ".join(s for s in (lo, hi) if s)
        bad = too_low | too_high
        raise ValueError(f"{owner}.{field} must be {rng} (got{_describe(arr, bad)})")
    if integer:
        frac = arr != np.round(arr)
        if frac.any():
            raise ValueError(f"{owner}.{field} must be a whole number (got{_describe(arr, frac)})")


def positive(value, owner: str, field: str, *, integer: bool = False) -> None:
    check_range(value, owner, field, low=0.0, low_inclusive=False, integer=integer)


def non_negative(value, owner: str, field: str, *, integer: bool = False) -> None:
    check_range(value, owner, field, low=0.0, integer=integer)


def fraction(value, owner: str, field: str) -> None:
    check_range(value, owner, field, low=0.0, high=1.0, low_inclusive=False)


def one_of(value: str, allowed, owner: str, field: str) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}.{field} must be one of {sorted(allowed)} (got {value!r})")
