"""Efficiency: how far real kernels fall short of each datasheet peak.

Two layers, both ordinary pytrees so calibration fits them by gradient descent and sweeps can
vary them:

* flat factors (``tensor``, ``vector``, ``memory``, ``scale_up``, ``scale_out``) and a fixed
  per-kernel overhead, GenZ style, for every operator;
* optional shape-dependent kernel models (:mod:`jaxmodel.kernels`) fitted to measured
  kernels: when present, the roofline engine times every matmul row with ``gemm``, every
  fused-attention row with ``attention`` and every collective with ``collectives`` instead
  of the flat factors (the kernel models carry their own efficiencies and latency floors).

``ideal()`` sets every factor to 1, every overhead to 0 and no kernel model: a pure roofline
with alpha-beta collectives. Fitted sets load by name with :func:`jaxmodel.load_calibration`.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

from . import _checks

_FACTORS = ("tensor", "vector", "memory", "scale_up", "scale_out")


class Efficiency(eqx.Module):
    """Achieved fraction of each peak, a fixed cost per kernel, and optional kernel models.

    Attributes:
        tensor: of the matrix-unit peak (GenZ's Eff_C).
        vector: of the vector-unit peak.
        memory: of device-memory bandwidth (GenZ's Eff_mem).
        scale_up, scale_out: of each network level's bandwidth (GenZ's Eff_link).
        kernel_overhead_s: seconds added to every compute or memory kernel that does work
            (launch and tail effects) and that no kernel model times.
        step_overhead_s: seconds the serving framework adds to every forward step on the host
            (scheduling, input preparation, sampling and detokenization not hidden behind GPU
            work). Kernel measurements cannot see it; it is fitted to end-to-end runs.
        sequence_overhead_s: host seconds per sequence in each forward step, on top of
            ``step_overhead_s``: per-request Python work (block tables, sampling metadata,
            output processing) that grows with the batch. vLLM 0.5's was about 70 us
            (LLM-Inference-Bench, ``benchmarks/calibrate_end_to_end.py``).
        gemm: a :class:`jaxmodel.kernels.gemm.GemmModel` for matmul rows, or None.
        attention: a :class:`jaxmodel.kernels.attention.AttentionModel` for fused-attention
            rows, or None.
        collectives: a :class:`jaxmodel.kernels.collectives.CollectiveModel`, or None.
        cores: streaming multiprocessors assumed by the kernel models when the chip is
            described at datasheet level (a microarchitecture chip supplies its own); a fitted
            set records the SM count of the GPU it was measured on.
    """

    tensor: jax.Array
    vector: jax.Array
    memory: jax.Array
    scale_up: jax.Array
    scale_out: jax.Array
    kernel_overhead_s: jax.Array
    step_overhead_s: jax.Array
    sequence_overhead_s: jax.Array
    gemm: Any = None
    attention: Any = None
    collectives: Any = None
    cores: jax.Array | None = None

    def __init__(self, tensor=1.0, vector=1.0, memory=1.0, scale_up=1.0, scale_out=1.0, kernel_overhead_s=0.0,
                 step_overhead_s=0.0, sequence_overhead_s=0.0, gemm=None, attention=None, collectives=None, cores=None):
        values = dict(tensor=tensor, vector=vector, memory=memory, scale_up=scale_up, scale_out=scale_out)
        for name, value in values.items():
            setattr(self, name, _checks.as_float(value, "Efficiency", name))
            _checks.fraction(getattr(self, name), "Efficiency", name)
        self.kernel_overhead_s = _checks.as_float(kernel_overhead_s, "Efficiency", "kernel_overhead_s")
        _checks.non_negative(self.kernel_overhead_s, "Efficiency", "kernel_overhead_s")
        for name, value in (("step_overhead_s", step_overhead_s), ("sequence_overhead_s", sequence_overhead_s)):
            setattr(self, name, _checks.as_float(value, "Efficiency", name))
            _checks.non_negative(getattr(self, name), "Efficiency", name)
        self.gemm, self.attention, self.collectives = gemm, attention, collectives
        if cores is not None:
            cores = _checks.as_float(cores, "Efficiency", "cores")
            _checks.positive(cores, "Efficiency", "cores")
        self.cores = cores

    def host_overhead_s(self, sequences) -> jax.Array:
        """Host seconds of one forward step holding ``sequences`` sequences."""
        return self.step_overhead_s + self.sequence_overhead_s * sequences

    @property
    def has_kernel_models(self) -> bool:
        return self.gemm is not None or self.attention is not None or self.collectives is not None


def ideal() -> Efficiency:
    """Every efficiency 1, no per-kernel overhead, no kernel model: a pure roofline."""
    return Efficiency()
