"""Operator times at microarchitecture level: systolic arrays, vector units, L1/L2, DRAM.

The level of detail of LLMCompass (Zhang et al., ISCA 2024), which SPAD used, in closed
form: instead of simulating a searched tiling, every candidate tiling of a fixed set is
evaluated at once and the fastest is kept (a soft minimum in smooth mode), so the model is
vectorizable and differentiable.

**Matmul** ``[M x K] @ [K x N]``, ``B`` times (:func:`matmul_time`). A candidate is a core
tile ``tm x tn`` (``tm`` a multiple of the array rows, ``tn`` of lanes x array columns) and a
K split ``s`` that spreads a short output over idle cores. With ``T = B·⌈M/tm⌉·⌈N/tn⌉·s``
tiles on ``C`` cores in ``W = ⌈T/C⌉`` waves:

* each lane's array holds an output-stationary block of ``R x S``; a tile takes
  ``⌈min(tm,M)/R⌉·⌈min(tn,N)/(L·S)⌉`` folds of ``K/s/μ + R + S`` cycles (the K stream plus
  fill and drain), so shapes smaller than the array waste its edge;
* the tile's operands, ``K/s·(tm·e_A + tn·e_B)`` bytes, enter the core through its L2 port;
  compute and port overlap (double-buffered in L1); a tile whose double-buffered operand
  stages and output do not fit L1 is penalized by the square of its overflow;
* the cores of a wave cover a block of about ``√A x √A`` tiles that share operands in L2,
  and the L2 keeps panels ``(Bm·e_A + Bn·e_B)·K ≤ L2`` across waves, so DRAM traffic is
  ``A_bytes·⌈N/Bn⌉ + B_bytes·⌈M/Bm⌉ + C_bytes`` for the larger of the two blocks;
* L2 reads are bounded by the aggregate L2 bandwidth, DRAM traffic by memory bandwidth;
  core work and memory overlap in a software pipeline over the ``T·K/s/64`` tile stages,
  exposing one stage of the shorter side: ``t = max(core, mem) + min(core, mem)/stages``;
* a K split adds a reduction of the fp32 partial sums on the vector units.

**Vector operators** run on ``lanes x vector_width`` lanes per core at the vector clock;
they are bound by the vector units, DRAM, or the L2 ports of the cores that have work (one
row per core for reductions). A reduction row that does not fit in half the L1 (fp32) is
read twice (statistics, then normalization).

**Fused attention** runs both matmuls of every (sequence, KV head) on the arrays with the
softmax on the vector units, overlapping all three with the DRAM stream of Q, K, V and O.

**Offload tier.** A row's weight and KV bytes placed in the system's offload tier
(``OpTable.offload_bytes``) stream over the offload link instead of device memory, at the
same time as the device-memory stream (separate links), so each row's memory side is the
slower of the two streams. In a matmul, the offloaded share applies to the weight or KV
operand (``rhs``) and the cache writes (``extra``), which cross the link once per execution;
further passes of the tiling over the operand read a copy staged in device memory.

Exact mode (``sharpness=None``) takes exact maxima and minima; smooth mode replaces them
by p-norms (see :mod:`jaxmodel.smooth`), which bounds the difference: the soft maximum of
two terms is at most 2^(1/p) above, and the soft minimum over the ``n`` candidates at most
n^(1/p) below, the exact value.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import ops
from ..efficiency import Efficiency
from ..hardware import SystolicChip, System
from ..smooth import ceil_straight_through, is_exact, rounds_straight_through, soft_max
from .comm import collective_time
from .roofline import RowTimes

#: Core-tile candidates: tm = array_rows x TILE_M, tn = lanes x array_cols x TILE_N (pairs).
TILE_M = (1.0, 2.0, 4.0, 8.0, 1.0, 2.0, 4.0, 8.0)
TILE_N = (1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0)
#: K elements staged per L1 buffer (two buffers per operand: double buffering).
K_STAGE = 64.0
#: A K split leaves at least this many K elements per core.
MIN_SPLIT_K = 256.0
#: Bytes per fp32 partial sum.
ACC_BYTES = 4.0


def _safe(x):
    """``x`` where positive, else 1: keeps divisions finite for rows that do no work."""
    return jnp.where(x > 0, x, 1.0)


def _ceil(x, sharpness):
    # Whole counts in exact mode; straight-through (exact forward value, slope 1) in smooth
    # mode so that gradients see wave and fold quantization as a continuous cost.
    return ceil_straight_through(x) if rounds_straight_through(sharpness) else jnp.ceil(x)


def _pick(times, sharpness):
    """Minimum over the candidate axis (last), and weights selecting it (one-hot when exact)."""
    best = jnp.min(times, axis=-1)
    if is_exact(sharpness):
        hits = (times == best[..., None]).astype(times.dtype)
    else:
        ratio = best[..., None] / times
        best = best * jnp.sum(ratio ** sharpness, axis=-1) ** (-1.0 / sharpness)
        hits = ratio ** sharpness
    return best, hits / jnp.sum(hits, axis=-1, keepdims=True)


class MatmulTime(NamedTuple):
    """Seconds for one execution of a matmul row and the parts behind it."""

    time: jax.Array
    tensor: jax.Array  # systolic-array busy time of the chosen tiling (all waves)
    memory: jax.Array  # DRAM transfer time of the chosen tiling
    offload: jax.Array = 0.0  # offload-link transfer time of the chosen tiling


def matmul_time(chip: SystolicChip, eff: Efficiency, dtype: str, *, m, n, k, count, lhs_bytes, rhs_bytes,
                out_bytes, extra_bytes=0.0, offload_share=0.0, offload_s_per_byte=0.0,
                sharpness=None) -> MatmulTime:
    """Time of ``count`` matmuls ``[m x k] @ [k x n]`` (see the module docstring).

    ``lhs_bytes``, ``rhs_bytes`` and ``out_bytes`` are the operand and result bytes of all
    ``count`` matmuls, each counted once; ``extra_bytes`` is other DRAM traffic of the row.
    ``offload_share`` of the ``rhs`` and ``extra`` traffic crosses the offload link at
    ``offload_s_per_byte`` seconds per byte instead of device memory.
    The candidate tilings are a trailing array axis, so the whole choice is a few fused
    elementwise kernels.
    """
    C, L, R, S = chip.cores, chip.lanes, chip.array_rows, chip.array_cols
    mu = chip.macs_per_cycle_for(dtype)
    tensor_hz = chip.tensor_clock_hz * eff.tensor
    port_Bps = chip.core_port_bytes_per_cycle * chip.vector_clock_hz
    l2_Bps = chip.l2_bytes_per_cycle * chip.vector_clock_hz
    mem_Bps = chip.mem_bw_Bps * eff.memory
    vector_flops = chip.vector_flops * eff.vector

    busy = (m > 0) & (n > 0) & (k > 0) & (count > 0)
    M, N, K, B = _safe(m), _safe(n), _safe(k), _safe(count)
    e_a = lhs_bytes / (B * M * K)
    e_b = rhs_bytes / (B * K * N)
    e_c = out_bytes / (B * M * N)
    out_all = B * M * N

    def cand(x):
        return jnp.expand_dims(x, -1)

    M_, N_, K_, C_ = cand(M), cand(N), cand(K), cand(C)
    # The candidates are the trailing axis; leading ones (design points, stacked rows) broadcast.
    lead = (1,) * (cand(R).ndim - 1)
    tm = cand(R) * jnp.asarray(TILE_M, dtype=M.dtype).reshape(lead + (-1,))
    tn = cand(L * S) * jnp.asarray(TILE_N, dtype=M.dtype).reshape(lead + (-1,))
    tm_e, tn_e = jnp.minimum(tm, M_), jnp.minimum(tn, N_)
    blocks_m, blocks_n = _ceil(M_ / tm, sharpness), _ceil(N_ / tn, sharpness)
    tiles = cand(B) * blocks_m * blocks_n
    split = jnp.clip(jnp.floor(C_ / tiles), 1.0, jnp.maximum(jnp.floor(K_ / MIN_SPLIT_K), 1.0))
    tiles = tiles * split
    waves = _ceil(tiles / C_, sharpness)
    k_tile = K_ / split
    folds = _ceil(tm_e / cand(R), sharpness) * _ceil(tn_e / cand(L * S), sharpness)
    tensor_s = waves * folds * (k_tile / cand(mu) + cand(R + S)) / cand(tensor_hz)
    acc = jnp.where(split > 1, ACC_BYTES, cand(e_c))
    port_s = waves * (k_tile * (tm_e * cand(e_a) + tn_e * cand(e_b)) + tm_e * tn_e * acc) / cand(port_Bps)
    l1_need = 2.0 * K_STAGE * (tm * cand(e_a) + tn * cand(e_b)) + tm * tn * cand(e_c)
    overflow = jnp.maximum(l1_need / cand(chip.l1_bytes), 1.0) ** 2
    core_s = soft_max((tensor_s, port_s), sharpness) * overflow

    # Operand sharing: a wave's tiles form a block of about sqrt(active) tiles a side; the
    # L2 also keeps operand panels across waves when they fit.
    active = jnp.minimum(C_, tiles)
    wave_n = jnp.clip(jnp.sqrt(active), 1.0, blocks_n)
    wave_m = jnp.clip(active / wave_n, 1.0, blocks_m)
    aspect = tn / tm
    # Operands with no DRAM bytes (tiles kept on chip) need no panel; the guarded division
    # keeps the gradient of the unused branch finite.
    panel_bytes = cand(e_a) + aspect * cand(e_b)
    panel_m = jnp.where(panel_bytes > 0, cand(chip.l2_bytes / K) / _safe(panel_bytes), M_)
    block_m = jnp.minimum(jnp.maximum(wave_m * tm, panel_m), M_)
    block_n = jnp.minimum(jnp.maximum(wave_n * tn, panel_m * aspect), N_)
    partials = (split - 1.0) * cand(out_all) * ACC_BYTES
    lhs, rhs = cand(lhs_bytes), cand(rhs_bytes)
    l2_s = (lhs * blocks_n / wave_n + rhs * blocks_m / wave_m + cand(out_bytes) + 2.0 * partials) / cand(l2_Bps)
    reduce_s = (split - 1.0) * cand(out_all / vector_flops)
    # The offloaded share of the weight / KV operand (rhs) and of the cache writes (extra)
    # crosses the offload link once; the tiling's further passes over the rhs panel read the
    # copy staged on the device, as offloading runtimes stage each layer's weights.
    share = jnp.broadcast_to(offload_share, jnp.shape(M))
    keep = 1.0 - share
    dram = (lhs * _ceil(N_ / block_n, sharpness) + (rhs * _ceil(M_ / block_m, sharpness) - rhs * cand(share))
            + cand(out_bytes + extra_bytes * keep))
    mem_s = dram / cand(mem_Bps)
    link_s = cand((rhs_bytes + extra_bytes) * share * offload_s_per_byte)
    work_s = soft_max((core_s, l2_s), sharpness) + reduce_s
    stages = tiles * jnp.maximum(k_tile / K_STAGE, 1.0)
    times = soft_max((work_s, mem_s, link_s), sharpness) + jnp.minimum(work_s, jnp.maximum(mem_s, link_s)) / stages
    best, weights = _pick(times, sharpness)

    def chosen(values):
        return jnp.where(busy, jnp.sum(weights * values, axis=-1), 0.0)

    return MatmulTime(jnp.where(busy, best, 0.0), chosen(tensor_s), chosen(mem_s), chosen(link_s))


def vector_time(chip: SystolicChip, eff: Efficiency, *, flops, bytes_moved, rows, row_length, sharpness=None):
    """(time, vector-unit time, DRAM time) of a vector operator (see the module docstring)."""
    busy = (flops > 0) | (bytes_moved > 0)
    single_pass = row_length * ACC_BYTES <= chip.l1_bytes / 2.0
    # A two-pass reduction reads its input (half the row's traffic) once more.
    dram = bytes_moved * jnp.where(single_pass, 1.0, 1.5)
    # Rows are spread over the cores (a reduction needs its whole row on one core).
    active = jnp.clip(rows, 1.0, chip.cores)
    lane_flops = chip.lanes * chip.vector_width * chip.vector_flops_per_lane_cycle * chip.vector_clock_hz
    vector_s = flops / (active * lane_flops * eff.vector)
    mem_s = dram / (chip.mem_bw_Bps * eff.memory)
    port_s = dram / (active * chip.core_port_bytes_per_cycle * chip.vector_clock_hz)
    time = soft_max((vector_s, mem_s, port_s), sharpness)
    return jnp.where(busy, time, 0.0), vector_s, mem_s


def row_times(table: ops.OpTable, system: System, eff: Efficiency, compute_dtype: str,
              sharpness: float | None = None) -> RowTimes:
    """Per-row times at the systolic level; collectives as at the roofline level."""
    chip = system.chip
    if not isinstance(chip, SystolicChip):
        raise ValueError(
            "fidelity 'systolic' needs a chip described at microarchitecture level (SystolicChip: cores, "
            "lanes, systolic arrays, SRAM); this system's chip is datasheet-only. Presets with one: "
            "h100-sxm, a100-sxm-80gb, spad-prefill, spad-decode"
        )
    time, tensor, vector, memory, offload = [], [], [], [], []
    zero = jnp.zeros_like(chip.cores)
    mem_Bps = chip.mem_bw_Bps * eff.memory
    per_offload_byte = system.offload.seconds_per_byte
    matmuls = _matmul_rows(table, chip, eff, compute_dtype, per_offload_byte, sharpness)
    vectors = _vector_rows(table, chip, eff, sharpness)
    for i, row in enumerate(table.rows):
        overhead = jnp.where(table.flops[i] + table.vector_flops[i] + table.total_bytes(i) > 0,
                             eff.kernel_overhead_s, 0.0)
        if row.kind == ops.COLLECTIVE:
            time.append(collective_time(row.collective, table.comm_bytes[i], table.group_size[i],
                                        table.group_stride[i], system, eff))
            tensor.append(zero), vector.append(zero), memory.append(zero), offload.append(zero)
        elif row.kind == ops.GATHER:
            t = table.device_bytes(i) / mem_Bps
            link = table.offload_bytes[i] * per_offload_byte
            time.append(jnp.maximum(t, link) + overhead), tensor.append(zero), vector.append(zero)
            memory.append(t), offload.append(link)
        elif row.kind == ops.VECTOR:  # activations only: never offloaded
            t, v, mem = vectors[i]
            time.append(t + overhead), tensor.append(zero), vector.append(v), memory.append(mem), offload.append(zero)
        elif row.kind == ops.MATMUL:
            r = matmuls[i]
            time.append(r.time + overhead), tensor.append(r.tensor), vector.append(zero), memory.append(r.memory)
            offload.append(r.offload)
        else:  # fused attention
            t, te, v, mem, link = _fused_attention(chip, eff, compute_dtype, table, i, per_offload_byte, sharpness)
            time.append(t + overhead), tensor.append(te), vector.append(v), memory.append(mem), offload.append(link)
    return RowTimes(tuple(time), tuple(tensor), tuple(vector), tuple(memory), tuple(offload))


# Rows of one kind are timed in one call, stacked on a new trailing axis: one copy of the model
# in the compiled program instead of one per row, which compiles the gradient about twice as
# fast (the candidate-tiling matmul model is the bulk of the program) and runs no slower.
def _stack(values):
    return jnp.stack(jnp.broadcast_arrays(*values), axis=-1)


def _per_row(chip, eff):
    """The chip's and efficiency's values with a trailing axis that broadcasts over stacked rows."""
    return jax.tree_util.tree_map(lambda x: jnp.expand_dims(jnp.asarray(x), -1), (chip, eff))


def _unstack(rows, parts):
    return {i: tuple(part[..., j] for part in parts) for j, i in enumerate(rows)}


def _matmul_rows(table: ops.OpTable, chip: SystolicChip, eff: Efficiency, compute_dtype: str, per_offload_byte,
                 sharpness):
    """:func:`matmul_time` of every matmul row (``{row index: MatmulTime}``)."""
    rows = [i for i, row in enumerate(table.rows) if row.kind == ops.MATMUL]
    if not rows:
        return {}

    def stack(column):
        return _stack([column[i] for i in rows])

    extra = _stack([table.total_bytes(i) - table.lhs_bytes[i] - table.rhs_bytes[i] - table.out_bytes[i]
                    for i in rows])
    r = matmul_time(*_per_row(chip, eff), compute_dtype, m=stack(table.m), n=stack(table.n), k=stack(table.k),
                    count=stack(table.matmuls), lhs_bytes=stack(table.lhs_bytes), rhs_bytes=stack(table.rhs_bytes),
                    out_bytes=stack(table.out_bytes), extra_bytes=jnp.maximum(extra, 0.0),
                    offload_share=_stack([table.offload_share(i) for i in rows]),
                    offload_s_per_byte=jnp.expand_dims(per_offload_byte, -1), sharpness=sharpness)
    return {i: MatmulTime(*parts) for i, parts in _unstack(rows, r).items()}


def _vector_rows(table: ops.OpTable, chip: SystolicChip, eff: Efficiency, sharpness):
    """:func:`vector_time` of every vector row (``{row index: (time, vector, memory)}``)."""
    rows = [i for i, row in enumerate(table.rows) if row.kind == ops.VECTOR]
    if not rows:
        return {}
    r = vector_time(*_per_row(chip, eff), flops=_stack([table.vector_flops[i] for i in rows]),
                    bytes_moved=_stack([table.total_bytes(i) for i in rows]), rows=_stack([table.m[i] for i in rows]),
                    row_length=_stack([table.n[i] for i in rows]), sharpness=sharpness)
    return _unstack(rows, r)


def _fused_attention(chip, eff, dtype, table, i, per_offload_byte, sharpness):
    """Flash-style attention: scores [q x keys] and context [q x v_dim] on the arrays, the
    softmax on the vector units, Q/K/V/O streamed from DRAM once, all overlapped."""
    m, keys, qk, count = table.m[i], table.n[i], table.k[i], table.matmuls[i]
    flops = table.flops[i]
    busy = flops > 0
    # The row holds FLOPs, not the value width or the causal share; both follow from its two
    # FLOP columns: scores computed = softmax FLOPs / SOFTMAX_FLOPS, matmul FLOPs =
    # 2·scores·(qk + v), and the share of the (queries x keys) rectangle actually computed.
    scores = _safe(table.vector_flops[i] / ops.SOFTMAX_FLOPS)
    v_dim = jnp.maximum(flops / (2.0 * scores) - qk, 0.0)
    causal_fraction = jnp.where(busy, scores / _safe(count * m * keys), 0.0)
    # Tiles stay on chip, so only the core-side time of each matmul matters here.
    free = dict(lhs_bytes=0.0 * m, rhs_bytes=0.0 * m, out_bytes=0.0 * m, sharpness=sharpness)
    qk_matmul = matmul_time(chip, eff, dtype, m=m, n=keys, k=qk, count=count, **free)
    pv_matmul = matmul_time(chip, eff, dtype, m=m, n=v_dim, k=keys, count=count, **free)
    tensor_s = (qk_matmul.tensor + pv_matmul.tensor) * causal_fraction
    softmax_rows = count * m
    _, vector_s, _ = vector_time(chip, eff, flops=table.vector_flops[i], bytes_moved=0.0 * m, rows=softmax_rows,
                                 row_length=0.0 * m, sharpness=sharpness)
    mem_s = table.device_bytes(i) / (chip.mem_bw_Bps * eff.memory)
    link_s = table.offload_bytes[i] * per_offload_byte
    t = soft_max((tensor_s, vector_s, mem_s, link_s), sharpness)
    return jnp.where(busy, t, 0.0), tensor_s, vector_s, mem_s, link_s
