"""Single-design-point predictions, with readable errors and an optional per-operator table."""

from __future__ import annotations

import collections

import equinox as eqx
import jax
import numpy as np
import pandas as pd

from . import area, cost, inference, ops, status
from .architectures import Architecture
from .efficiency import Efficiency, ideal
from .hardware import System, SystolicChip
from .workload import Workload

#: Times each jitted entry point has been traced (a retrace means a recompilation).
TRACE_COUNTS: collections.Counter = collections.Counter()


def _evaluate(arch, wl, system, eff, sharpness, chunked_step, fidelity):
    TRACE_COUNTS["evaluate"] += 1
    return inference.evaluate(arch, wl, system, eff, sharpness, chunked_step, fidelity)


evaluate_jit = eqx.filter_jit(_evaluate)


def check_parallelism(arch: Architecture, wl: Workload) -> None:
    """Raise ``ValueError`` naming the fields if the TP/EP/PP layout is impossible for ``arch``.

    The rules are those of :func:`jaxmodel.inference.status_code`; this adds the words.
    """
    code = int(inference.status_code(arch, wl, fits=True))
    tp, ep, pp = float(wl.tp), float(wl.ep), float(wl.pp)
    if code & status.INVALID_TP:
        kv = f", and divide or be a multiple of Architecture.n_kv_heads = {float(arch.n_kv_heads):g}"
        ssm = ""
        if arch.ssm == "mamba1":
            ssm = f", and divide the SSM channels d_inner = {float(arch.ssm_d_inner):g}"
        elif arch.ssm == "mamba2":
            ssm = (f", and divide the SSM heads = {float(arch.ssm_n_heads):g} (and divide or be a multiple of "
                   f"Architecture.ssm_n_groups = {float(arch.ssm_n_groups):g})")
        raise ValueError(f"Workload.tp = {tp:g} must divide Architecture.n_heads = {float(arch.n_heads):g}"
                         + (kv if arch.attention == "gqa" else "") + ssm)
    if code & status.INVALID_EP:
        if not arch.moe:
            raise ValueError(f"Workload.ep = {ep:g} needs a MoE architecture (this model is dense); use ep = 1")
        raise ValueError(f"Workload.ep = {ep:g} must divide Architecture.n_experts = {float(arch.n_experts):g}")
    if code & status.INVALID_PP:
        raise ValueError(f"Workload.pp = {pp:g} must be <= Architecture.n_layers = {float(arch.n_layers):g}")


def _require_single_point(*trees) -> None:
    shapes = {tuple(x.shape) for x in jax.tree_util.tree_leaves(trees)}
    if shapes != {()}:
        raise ValueError(
            "predict and breakdown take one design point (scalar leaves); for batched leaves use "
            "jaxmodel.sweep.evaluate_points or grid_sweep"
        )


def predict(arch: Architecture, wl: Workload, system: System, efficiency: Efficiency | None = None, *,
            chunked_step: bool = False, sharpness: float | None = None, fidelity: str = "roofline") -> dict:
    """Metrics of one design point as plain Python values (SI units).

    Keys are those of :func:`jaxmodel.inference.evaluate` plus ``status_text``. Raises
    ``ValueError`` for an impossible parallel layout; a design that does not fit in memory
    is reported (``fits`` False), not raised.
    """
    eff = ideal() if efficiency is None else efficiency
    _require_single_point(arch, wl, system, eff)
    check_parallelism(arch, wl)
    out = evaluate_jit(arch, wl, system, eff, sharpness, chunked_step, fidelity)
    result = {}
    for key, value in jax.device_get(out).items():
        value = np.asarray(value)
        result[key] = bool(value) if value.dtype == bool else (int(value) if key == "status" else float(value))
    result["status_text"] = status.describe(result["status"])
    return result


def _breakdown(arch, wl, system, eff, sharpness, fidelity):
    TRACE_COUNTS["breakdown"] += 1
    _, pre = inference.prefill(arch, wl, system, eff, sharpness, fidelity)
    _, dec = inference.decode(arch, wl, system, eff, sharpness, fidelity)
    if not isinstance(system.chip, SystolicChip):
        return (pre, None), (dec, None)
    die_area = area.die_area_mm2(system)
    return tuple((r, cost.row_energies_j(r, system, system.economics, die_area)) for r in (pre, dec))


_breakdown_jit = eqx.filter_jit(_breakdown)


def breakdown(arch: Architecture, wl: Workload, system: System, efficiency: Efficiency | None = None, *,
              sharpness: float | None = None, fidelity: str = "roofline") -> pd.DataFrame:
    """Per-operator table of one prefill micro-batch and one decode step.

    Columns: ``phase``, ``op``, ``kind``, ``block``, ``collective``, ``repeat``, ``m``, ``n``,
    ``k``, ``matmuls``, ``flops``, ``vector_flops``, ``weight_bytes``, ``act_bytes``,
    ``kv_bytes``, ``comm_bytes``, ``group_size``, ``offload_bytes`` (of the bytes, those on
    the offload link), ``time_s`` (one execution), ``total_s`` (times ``repeat``), the parts
    of one execution ``tensor_s``, ``vector_s``, ``memory_s`` (device memory), ``offload_s``
    (offload link) and ``comm_s`` (they overlap, so ``time_s`` is not their sum), and
    ``bound`` (``tensor``, ``vector``, ``memory``, ``offload`` or ``network``). With a microarchitecture-level
    chip also ``energy_j`` (one execution on one device, GenZ eq. 2, wall energy) and
    ``total_energy_j`` (times ``repeat``).
    """
    eff = ideal() if efficiency is None else efficiency
    _require_single_point(arch, wl, system, eff)
    check_parallelism(arch, wl)
    results = jax.device_get(_breakdown_jit(arch, wl, system, eff, sharpness, fidelity))
    frames = []
    for phase, (r, energies) in zip(("prefill", "decode"), results):
        t = r.table
        cols = {
            "phase": phase,
            "op": [row.name for row in t.rows],
            "kind": [row.kind for row in t.rows],
            "block": [row.block for row in t.rows],
            "collective": [row.collective for row in t.rows],
        }
        for field in ("repeat", "m", "n", "k", "matmuls", "flops", "vector_flops", "weight_bytes",
                      "act_bytes", "kv_bytes", "comm_bytes", "group_size"):
            cols[field] = np.asarray(getattr(t, field), dtype=float)
        times = r.row_times
        cols["time_s"] = np.asarray(times.time, dtype=float)
        cols["total_s"] = cols["time_s"] * cols["repeat"]
        terms = np.stack([np.asarray(times.tensor), np.asarray(times.vector), np.asarray(times.memory),
                          np.asarray(times.offload)])
        collective = np.array(cols["kind"]) == ops.COLLECTIVE
        cols["offload_bytes"] = np.asarray(t.offload_bytes, dtype=float)
        cols["tensor_s"], cols["vector_s"], cols["memory_s"], cols["offload_s"] = (np.asarray(x, dtype=float)
                                                                                   for x in terms)
        cols["comm_s"] = np.where(collective, cols["time_s"], 0.0)
        bound = np.array(["tensor", "vector", "memory", "offload"], dtype=object)[np.argmax(terms, axis=0)]
        cols["bound"] = np.where(collective, "network", bound)
        if energies is not None:
            cols["energy_j"] = np.asarray(energies, dtype=float)
            cols["total_energy_j"] = cols["energy_j"] * cols["repeat"]
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)
