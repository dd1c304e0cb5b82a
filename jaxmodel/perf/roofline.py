"""Roofline time of each operator (GenZ eq. 1, extended to the vector units).

A compute row takes the longest of its three resources, assumed to overlap perfectly:

    t = max(FLOPs_tensor / (P_tensor·eff_tensor),
            FLOPs_vector / (P_vector·eff_vector),
            device_bytes / (BW_mem·eff_memory),
            offload_bytes / (BW_offload·eff_offload))  + kernel overhead

and a collective row takes its alpha-beta time (:mod:`jaxmodel.perf.comm`).

``offload_bytes`` are the row's weight and KV bytes placed in the system's offload tier
(:class:`~jaxmodel.hardware.OffloadMemory`), ``device_bytes`` the rest. The two memories sit
on separate links (HBM behind the memory controllers, host/CXL memory behind PCIe or C2C),
so an operator streams both at once and waits for the slower stream: a max, not a sum.
Without offload the last term is 0 and the formula is GenZ eq. 1 unchanged.

When the efficiency carries fitted kernel models (:mod:`jaxmodel.kernels`), matmul rows are
timed by its GEMM model and fused-attention rows by its attention model, from their shapes
and device-memory bytes, with the offload stream's time as a floor; the roofline terms are
still reported beside them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import ops
from ..efficiency import Efficiency
from ..hardware import System, SystolicChip
from ..smooth import soft_max
from .comm import collective_time


class RowTimes(NamedTuple):
    """Seconds per execution of each row (one scalar per row), and the terms behind it."""

    time: tuple[jax.Array, ...]
    tensor: tuple[jax.Array, ...]
    vector: tuple[jax.Array, ...]
    memory: tuple[jax.Array, ...]  # device-memory stream
    offload: tuple[jax.Array, ...] = ()  # offload-link stream (0 for rows with nothing offloaded)


def row_times(table: ops.OpTable, system: System, eff: Efficiency, compute_dtype: str,
              sharpness: float | None = None) -> RowTimes:
    chip = system.chip
    # Reciprocals once per design point: a multiply per row is cheaper than a divide.
    peak, bandwidth = chip.tensor_peak(compute_dtype), chip.mem_bw_Bps
    per_tensor_flop = 1.0 / (peak * eff.tensor)
    per_vector_flop = 1.0 / (chip.vector_flops * eff.vector)
    per_byte = 1.0 / (bandwidth * eff.memory)
    per_offload_byte = system.offload.seconds_per_byte
    time, tensor, vector, memory, offload = [], [], [], [], []
    zero = jnp.zeros_like(per_byte)
    cores = kernel_model_cores(system, eff)
    for i, row in enumerate(table.rows):
        if row.kind == ops.COLLECTIVE:
            t = collective_time(row.collective, table.comm_bytes[i], table.group_size[i],
                                table.group_stride[i], system, eff)
            time.append(t)
            tensor.append(zero), vector.append(zero), memory.append(zero), offload.append(zero)
            continue
        device_bytes = table.device_bytes(i)
        terms = (table.flops[i] * per_tensor_flop, table.vector_flops[i] * per_vector_flop,
                 device_bytes * per_byte, table.offload_bytes[i] * per_offload_byte)
        model = _kernel_model(row, eff)
        if model is not None:
            # A row with no work (e.g. the prompt group of a decode step) costs nothing; it is
            # given a unit shape so the model (and its gradient) stays finite there.
            busy = table.flops[i] > 0
            shape = [jnp.where(busy, x, 1.0) for x in (table.m[i], table.n[i], table.k[i], table.matmuls[i],
                                                       table.flops[i], device_bytes, table.sequences[i])]
            t = model(*shape[:-1], peak, bandwidth, cores, sequences=shape[-1])
            # The fitted model knows only device memory; the offload stream is a floor.
            t = jnp.maximum(t, terms[3])
            time.append(jnp.where(busy, t, 0.0))
        else:
            busy = (table.flops[i] + table.vector_flops[i] + table.total_bytes(i)) > 0
            time.append(soft_max(terms, sharpness) + jnp.where(busy, eff.kernel_overhead_s, 0.0))
        tensor.append(terms[0]), vector.append(terms[1]), memory.append(terms[2]), offload.append(terms[3])
    return RowTimes(tuple(time), tuple(tensor), tuple(vector), tuple(memory), tuple(offload))


def _kernel_model(row: ops.RowInfo, eff: Efficiency):
    """The fitted kernel model's timing function for this row, or None (roofline terms)."""
    if row.kind == ops.MATMUL and eff.gemm is not None:
        def gemm(*args, sequences):
            return eff.gemm.time_s(*args)

        return gemm
    if row.kind == ops.ATTENTION and eff.attention is not None:
        decode = "decode" in row.name  # rows of sequences bringing one new token each

        def attention(*args, sequences):
            return eff.attention.time_s(decode, *args, seqs=sequences)

        return attention
    return None


def kernel_model_cores(system: System, eff: Efficiency):
    """SMs the kernel models assume: the chip's own, or (datasheet chip) the calibrated GPU's."""
    if isinstance(system.chip, SystolicChip):
        return system.chip.cores
    if eff.has_kernel_models and eff.cores is None:
        raise ValueError("Efficiency.cores: a datasheet-level chip states no core count, so an efficiency with "
                         "kernel models needs `cores` (the SM count they assume, > 0)")
    return eff.cores
