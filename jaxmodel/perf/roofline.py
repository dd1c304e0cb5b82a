"""Roofline time of each operator (GenZ eq. 1, extended to the vector units).

A compute row takes the longest of its three resources, assumed to overlap perfectly:

    t = max(FLOPs_tensor / (P_tensor·eff_tensor),
            FLOPs_vector / (P_vector·eff_vector),
            bytes / (BW_mem·eff_memory))  + kernel overhead

and a collective row takes its alpha-beta time (:mod:`jaxmodel.perf.comm`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import ops
from ..efficiency import Efficiency
from ..hardware import System
from ..smooth import soft_max
from .comm import collective_time


class RowTimes(NamedTuple):
    """Seconds per execution of each row (one scalar per row), and the terms behind it."""

    time: tuple[jax.Array, ...]
    tensor: tuple[jax.Array, ...]
    vector: tuple[jax.Array, ...]
    memory: tuple[jax.Array, ...]


def row_times(table: ops.OpTable, system: System, eff: Efficiency, compute_dtype: str,
              sharpness: float | None = None) -> RowTimes:
    chip = system.chip
    # Reciprocals once per design point: a multiply per row is cheaper than a divide.
    per_tensor_flop = 1.0 / (chip.tensor_peak(compute_dtype) * eff.tensor)
    per_vector_flop = 1.0 / (chip.vector_flops * eff.vector)
    per_byte = 1.0 / (chip.mem_bw_Bps * eff.memory)
    time, tensor, vector, memory = [], [], [], []
    zero = jnp.zeros_like(per_byte)
    for i, row in enumerate(table.rows):
        if row.kind == ops.COLLECTIVE:
            t = collective_time(row.collective, table.comm_bytes[i], table.group_size[i],
                                table.group_stride[i], system, eff)
            time.append(t)
            tensor.append(zero), vector.append(zero), memory.append(zero)
            continue
        terms = (table.flops[i] * per_tensor_flop, table.vector_flops[i] * per_vector_flop,
                 table.total_bytes(i) * per_byte)
        busy = (table.flops[i] + table.vector_flops[i] + table.total_bytes(i)) > 0
        time.append(soft_max(terms, sharpness) + jnp.where(busy, eff.kernel_overhead_s, 0.0))
        tensor.append(terms[0]), vector.append(terms[1]), memory.append(terms[2])
    return RowTimes(tuple(time), tuple(tensor), tuple(vector), tuple(memory))
