"""Efficiency factors: the fraction of each datasheet peak that real kernels reach.

They are ordinary array leaves, so calibration fits them by gradient descent and sweeps can
vary them. ``ideal()`` sets every factor to 1 and every overhead to 0, which turns the model
into a pure roofline with alpha-beta collectives.
"""

from __future__ import annotations

import equinox as eqx
import jax

from . import _checks

_FACTORS = ("tensor", "vector", "memory", "scale_up", "scale_out")


class Efficiency(eqx.Module):
    """Achieved fraction of each peak, and a fixed cost per kernel.

    Attributes:
        tensor: of the matrix-unit peak (GenZ's Eff_C).
        vector: of the vector-unit peak.
        memory: of device-memory bandwidth (GenZ's Eff_mem).
        scale_up, scale_out: of each network level's bandwidth (GenZ's Eff_link).
        kernel_overhead_s: seconds added to every compute or memory kernel that does work
            (launch and tail effects).
    """

    tensor: jax.Array
    vector: jax.Array
    memory: jax.Array
    scale_up: jax.Array
    scale_out: jax.Array
    kernel_overhead_s: jax.Array

    def __init__(self, tensor=1.0, vector=1.0, memory=1.0, scale_up=1.0, scale_out=1.0, kernel_overhead_s=0.0):
        values = dict(tensor=tensor, vector=vector, memory=memory, scale_up=scale_up, scale_out=scale_out)
        for name, value in values.items():
            setattr(self, name, _checks.as_float(value, "Efficiency", name))
            _checks.fraction(getattr(self, name), "Efficiency", name)
        self.kernel_overhead_s = _checks.as_float(kernel_overhead_s, "Efficiency", "kernel_overhead_s")
        _checks.non_negative(self.kernel_overhead_s, "Efficiency", "kernel_overhead_s")


def ideal() -> Efficiency:
    """Every efficiency 1, no per-kernel overhead: a pure roofline."""
    return Efficiency()
