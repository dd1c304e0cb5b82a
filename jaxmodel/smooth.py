"""Differentiable relaxations of non-smooth pieces, each with an exact mode.

Report numbers in exact mode (``sharpness=None``); optimize in smooth mode. The relaxed
maximum is a p-norm, so it is scale-free and bounded:

    max(x) <= soft_max(x, p) <= n**(1/p) * max(x)   for n non-negative terms,

e.g. within 4.4% of the exact value for two equal terms at p = 16, and much closer when one
term dominates, as it does for most operators.

``sharpness=inf`` is the limit p -> inf: the exact model's values, with straight-through
gradients through its whole-number roundings (:func:`rounds_straight_through`), so maxima and
minima pass the gradient of the term that wins. It compiles about as fast as exact mode (a
finite p costs about four times as long to compile through reverse mode) and is what the
chip-sizing solver uses by default.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def soft_max(values: Sequence, sharpness: float | None = None):
    """Elementwise maximum of non-negative arrays; their p-norm with p = ``sharpness`` if given."""
    exact = functools.reduce(jnp.maximum, values)
    if is_exact(sharpness):
        return exact
    # Scale by the exact maximum so large p neither overflows nor underflows, and guard the
    # all-zero case (whose relaxed value is 0 with a zero gradient).
    positive = exact > 0
    scale = jnp.where(positive, exact, 1.0)
    total = sum((v / scale) ** sharpness for v in values)
    # The root is taken of a safe value too, or its infinite slope at 0 leaks NaN into the
    # gradient of the discarded branch.
    norm = jnp.where(positive, total, 1.0) ** (1.0 / sharpness)
    return jnp.where(positive, scale * norm, 0.0)


def is_exact(sharpness) -> bool:
    """Whether maxima and minima are exact: exact mode (None) or its straight-through limit (inf)."""
    return sharpness is None or math.isinf(sharpness)


def rounds_straight_through(sharpness) -> bool:
    """Whether whole-number roundings pass an identity slope (every mode but exact)."""
    return sharpness is not None


def soft_max_bound(n_terms: int, sharpness: float) -> float:
    """Largest relative excess of :func:`soft_max` over the exact maximum."""
    return n_terms ** (1.0 / sharpness) - 1.0


def ceil_straight_through(x):
    """``ceil(x)`` in the forward pass, identity slope in the backward pass.

    Counts such as layers per pipeline stage are whole numbers, but their gradient with
    respect to the continuous quantity they round should not vanish.
    """
    return x + jax.lax.stop_gradient(jnp.ceil(x) - x)
