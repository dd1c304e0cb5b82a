"""Phase-level metrics of one design point: prefill, decode, chunked steps, memory, status.

Every function here is a pure function of pytrees for ONE design point; sweeps vectorize
them from outside with ``jax.vmap``.

Definitions (SI units; "batch" is the whole batch of ``wl.batch`` sequences):
    prefill_s       time to prefill the whole batch (produces each sequence's first token)
    ttft_s          time to first token = prefill_s (all requests start together, no queue)
    decode_step_s   one decode step of the whole batch at the mean context length
                    input_tokens + output_tokens / 2
    tpot_s          time per output token (= time between tokens, TBT) = decode_step_s
    e2e_latency_s   ttft_s + (output_tokens - 1) · tpot_s
    throughput_tok_s          generated tokens per second over the whole request,
                              batch · output_tokens / e2e_latency_s
    decode_throughput_tok_s   batch / tpot_s (GenZ's μ_thr)

With beam search (``wl.beam_width`` = S_b > 1) a decode step runs batch · S_b sequences, and
the KV cache holds each prompt once plus every beam's generated tokens; throughput still
counts one output sequence (the best beam) per request.

With a microarchitecture-level chip (:class:`~jaxmodel.hardware.SystolicChip`) the metrics
also price the point (:mod:`jaxmodel.cost`): die_area_mm2, total_cost_usd (one chip),
tdp_w, prefill_energy_j and decode_step_energy_j (all devices, wall energy),
energy_per_token_j and tokens_per_j (per generated token over the whole request), and
prefill_usd_per_mtok (per million prompt tokens), decode_usd_per_mtok and usd_per_mtok
(per million generated tokens: decode alone, and the whole request), and
hardware_usd_per_tok_s (hardware cost of all devices per generated token/s of throughput).

Pipeline parallelism runs ``m = min(pp, batch)`` micro-batches of ``batch / m`` sequences.
A prefill takes one pass through all stages plus ``m - 1`` further stage times; in decode
the pipeline cycles through its micro-batches, so a step of the whole batch takes the
longer of one full pass and ``m`` stage times.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import cost, memory, ops, status
from .architectures import Architecture
from .efficiency import Efficiency
from .hardware import System, SystolicChip
from .perf import roofline, systolic
from .perf.roofline import RowTimes
from .workload import Workload


class StepResult(NamedTuple):
    """One forward step on one device: the op table and the time of each part."""

    table: ops.OpTable
    row_times: RowTimes
    layers_s: jax.Array  # every decoder layer of the model, one after the other
    head_s: jax.Array  # embedding and LM head
    sends_s: jax.Array  # all stage-to-stage transfers of one micro-batch
    slowest_send_s: jax.Array  # the slowest single transfer (0 without pipelining)


#: Fidelity levels: how each operator's time is computed from the op table.
FIDELITIES = {"roofline": roofline.row_times, "systolic": systolic.row_times}


def run_step(arch: Architecture, wl: Workload, system: System, eff: Efficiency, step: ops.Step,
             sharpness: float | None = None, fidelity: str = "roofline",
             groups: tuple[str, ...] = ops.GROUPS) -> StepResult:
    if fidelity not in FIDELITIES:
        raise ValueError(f"fidelity must be one of {sorted(FIDELITIES)} (got {fidelity!r})")
    wl = memory.place(arch, wl, system)  # an automatic offload policy's fractions
    table = ops.build_op_table(arch, wl, step, system.level_sizes, groups)
    times = FIDELITIES[fidelity](table, system, eff, wl.compute_dtype, sharpness)
    sums = {ops.LAYER: 0.0, ops.HEAD: 0.0, ops.PIPELINE: 0.0}
    slowest_send = jnp.zeros_like(arch.d_model)
    for row, t, repeat in zip(table.rows, times.time, table.repeat):
        sums[row.group] = sums[row.group] + t * repeat
        if row.group == ops.PIPELINE:
            slowest_send = jnp.maximum(slowest_send, jnp.where(repeat > 0, t, 0.0))
    return StepResult(table, times, layers_s=sums[ops.LAYER], head_s=sums[ops.HEAD],
                      sends_s=sums[ops.PIPELINE], slowest_send_s=slowest_send)


def single_pass_s(r: StepResult) -> jax.Array:
    """One micro-batch through every stage."""
    return r.layers_s + r.head_s + r.sends_s


def stage_s(r: StepResult, arch: Architecture, wl: Workload) -> jax.Array:
    """Time of the slowest stage: the fullest one, holding the LM head, behind the slowest link."""
    return memory.stage_layer_fraction(arch, wl) * r.layers_s + r.head_s + r.slowest_send_s


def micro_batches(wl: Workload) -> jax.Array:
    return jnp.minimum(wl.pp, wl.batch)


def decode_context(wl: Workload) -> jax.Array:
    """Mean tokens in the cache over the decode steps (exact for step times linear in context)."""
    return wl.input_tokens + wl.output_tokens / 2.0


def prefill(arch, wl, system, eff, sharpness=None, fidelity="roofline") -> tuple[jax.Array, StepResult]:
    m = micro_batches(wl)
    r = run_step(arch, wl, system, eff, ops.prefill_step(wl, wl.batch / m), sharpness, fidelity,
                 groups=("prompt",))
    # The host's work runs once per scheduler step, for every sequence in it.
    return single_pass_s(r) + (m - 1.0) * stage_s(r, arch, wl) + eff.host_overhead_s(wl.batch), r


def decode(arch, wl, system, eff, sharpness=None, fidelity="roofline", context=None) -> tuple[jax.Array, StepResult]:
    """One decode step of every sequence, with ``context`` tokens cached (default: the mean
    over the decode, :func:`decode_context`)."""
    m = micro_batches(wl)
    context = decode_context(wl) if context is None else context
    sequences = decode_sequences(wl)
    # Attention reads only the cached tokens a KV-pruning policy keeps.
    r = run_step(arch, wl, system, eff, ops.decode_step(wl, sequences / m, context * wl.kv_keep), sharpness,
                 fidelity, groups=("decode",))
    return jnp.maximum(single_pass_s(r), m * stage_s(r, arch, wl)) + eff.host_overhead_s(sequences), r


def decode_sequences(wl: Workload) -> jax.Array:
    """Sequences in a decode step: every beam of every request."""
    return wl.batch * wl.beam_width


def chunked(arch, wl, system, eff, sharpness=None, fidelity="roofline") -> tuple[jax.Array, StepResult]:
    """One Sarathi step: a prompt chunk of ``wl.chunk_tokens`` plus a decode batch of
    ``wl.batch`` sequences at the mean decode context (no pipeline micro-batching)."""
    sequences = decode_sequences(wl)
    r = run_step(arch, wl, system, eff, ops.chunked_step(wl, sequences, decode_context(wl) * wl.kv_keep), sharpness, fidelity)
    # The prompt chunk is one more sequence in the step.
    return single_pass_s(r) + eff.host_overhead_s(sequences + 1.0), r


def status_code(arch: Architecture, wl: Workload, fits, offload_fits=True) -> jax.Array:
    """Status bits (see :mod:`jaxmodel.status`) computed from traced values."""
    def not_divisible(a, b):
        return jnp.mod(a, b) != 0

    bad_tp = not_divisible(arch.n_heads, wl.tp)
    if arch.attention == "gqa":
        bad_tp = bad_tp | (not_divisible(arch.n_kv_heads, wl.tp) & not_divisible(wl.tp, arch.n_kv_heads))
    if arch.ssm == "mamba1":
        # TP shards the d_inner channels of the scan.
        bad_tp = bad_tp | not_divisible(arch.ssm_d_inner, wl.tp)
    elif arch.ssm == "mamba2":
        # TP shards whole heads; B/C groups are split or replicated (like KV heads).
        bad_tp = (bad_tp | not_divisible(arch.ssm_n_heads, wl.tp)
                  | (not_divisible(arch.ssm_n_groups, wl.tp) & not_divisible(wl.tp, arch.ssm_n_groups)))
    bad_ep = not_divisible(arch.n_experts, wl.ep) if arch.moe else wl.ep > 1.0
    bad_pp = wl.pp > arch.n_layers
    code = (
        jnp.where(fits, 0, status.DOES_NOT_FIT)
        | jnp.where(offload_fits, 0, status.OFFLOAD_FULL)
        | jnp.where(bad_tp, status.INVALID_TP, 0)
        | jnp.where(bad_ep, status.INVALID_EP, 0)
        | jnp.where(bad_pp, status.INVALID_PP, 0)
    )
    return code.astype(jnp.int32)


def memory_metrics(arch, wl, system, prefill_result: StepResult) -> dict[str, jax.Array]:
    """Memory use per device across device memory and the offload tier (``System.offload``).

    ``weight_bytes``, ``kv_cache_bytes`` and ``activation_bytes`` are what the device's
    share of the model needs wherever it lives; ``memory_bytes`` is the device-memory part
    (activations plus the weights and KV not offloaded), ``offload_bytes`` the part in the
    offload tier, whose per-device capacity is ``offload_capacity_bytes``. ``fits`` needs
    both to fit; a point that fits only thanks to offload is an ordinary (fitting) point.
    ``offload_weights`` / ``offload_kv`` are the fractions used (the plan's, under an
    automatic ``Workload.offload_policy``).

    ``max_batch`` is the largest batch that fits (KV and activations grow in proportion to
    the batch, for batch >= pp): with the ``"manual"`` policy at the given fractions (both
    tiers must hold their share); with an automatic policy, the largest for which some
    placement fits: the two tiers pooled, activations on the device.
    """
    weights, kv, acts = memory.footprint(arch, wl, prefill_result.table, system.devices_per_node)
    if wl.offload_policy == "manual":
        f_w, f_kv = wl.offload_weights, wl.offload_kv
    else:
        f_w, f_kv = memory.offload_plan(arch, wl, system, memory._PREFER[wl.offload_policy],
                                        memory.Footprint(weights, kv, acts))
    slow_w, slow_kv = f_w * weights, f_kv * kv
    device = (weights - slow_w) + (kv - slow_kv) + acts
    offloaded = slow_w + slow_kv
    usable = system.chip.mem_capacity_bytes * wl.memory_utilization
    capacity = system.offload.capacity_bytes
    if wl.offload_policy == "manual":
        per_sequence = ((kv - slow_kv) + acts) / wl.batch
        by_device = jnp.floor((usable - (weights - slow_w)) / per_sequence)
        slow_per_sequence = slow_kv / wl.batch
        has_slow = slow_per_sequence > 0
        by_tier = jnp.where(has_slow, jnp.floor((capacity - slow_w) / jnp.where(has_slow, slow_per_sequence, 1.0)),
                            jnp.inf)
        max_batch = jnp.maximum(jnp.minimum(by_device, by_tier), 0.0)
    else:
        by_both = jnp.floor((usable * (1.0 - memory.plan_slack(usable)) + capacity - weights) / ((kv + acts) / wl.batch))
        by_activations = jnp.floor(usable / (acts / wl.batch))
        max_batch = jnp.maximum(jnp.minimum(by_both, by_activations), 0.0)
    tier_fits = offloaded <= capacity
    return {
        "weight_bytes": weights,
        "kv_cache_bytes": kv,
        "activation_bytes": acts,
        "memory_bytes": device,
        "usable_memory_bytes": usable,
        "memory_headroom_bytes": usable - device,
        "fits": (device <= usable) & tier_fits,
        "max_batch": max_batch,
        "offload_bytes": offloaded,
        "offload_capacity_bytes": capacity,
        "offload_fits": tier_fits,
        "offload_weights": jnp.zeros_like(weights) + f_w,
        "offload_kv": jnp.zeros_like(weights) + f_kv,
    }


def evaluate(arch: Architecture, wl: Workload, system: System, eff: Efficiency,
             sharpness: float | None = None, chunked_step: bool = False,
             fidelity: str = "roofline") -> dict[str, jax.Array]:
    """All metrics of one design point (see the module docstring for definitions).

    ``fidelity`` picks the operator-time model: ``"roofline"`` (datasheet peaks and
    efficiency factors) or ``"systolic"`` (:mod:`jaxmodel.perf.systolic`, which needs a
    :class:`~jaxmodel.hardware.SystolicChip`).
    """
    placed = memory.place(arch, wl, system)  # the offload fractions, decided once
    prefill_s, pre = prefill(arch, placed, system, eff, sharpness, fidelity)
    decode_s, dec = decode(arch, placed, system, eff, sharpness, fidelity)
    e2e = prefill_s + (wl.output_tokens - 1.0) * decode_s
    out = {
        "prefill_s": prefill_s,
        "ttft_s": prefill_s,
        "decode_step_s": decode_s,
        "tpot_s": decode_s,
        "e2e_latency_s": e2e,
        "throughput_tok_s": wl.batch * wl.output_tokens / e2e,
        "decode_throughput_tok_s": wl.batch / decode_s,
        "devices": wl.devices,
    }
    out["throughput_per_device_tok_s"] = out["throughput_tok_s"] / wl.devices
    if chunked_step:
        out["chunked_step_s"], _ = chunked(arch, placed, system, eff, sharpness, fidelity)
    out.update(memory_metrics(arch, wl, system, pre))
    out["status"] = status_code(arch, wl, out["fits"], out.pop("offload_fits"))
    if isinstance(system.chip, SystolicChip):
        priced = economics_metrics(wl, system, pre, dec, prefill_s, decode_s, e2e)
        out["status"] = out["status"] | priced.pop("chip_status")
        out.update(priced)
    return out


def economics_metrics(wl: Workload, system: System, pre: StepResult, dec: StepResult, prefill_s, decode_s,
                      request_s):
    """Area, cost, TDP, energy and cost per token of a point (see the module docstring);
    ``request_s`` is the whole request, prefill plus every decode step."""
    econ = system.economics
    chip = cost.chip_metrics(system, econ)
    die_area = chip["die_area_mm2"]
    m = micro_batches(wl)
    prefill_j = cost.step_energy_j(pre, prefill_s, m, wl, system, econ, die_area)
    decode_j = cost.step_energy_j(dec, decode_s, m, wl, system, econ, die_area)
    generated = wl.batch * wl.output_tokens
    request_j = prefill_j + (wl.output_tokens - 1.0) * decode_j

    def usd(seconds, joules):
        return cost.work_cost_usd(seconds, joules, wl.devices, econ, chip["total_cost_usd"])

    return {
        "die_area_mm2": die_area,
        "total_cost_usd": chip["total_cost_usd"],
        "tdp_w": chip["tdp_w"],
        "prefill_energy_j": prefill_j,
        "decode_step_energy_j": decode_j,
        "energy_per_token_j": request_j / generated,
        "tokens_per_j": generated / request_j,
        "prefill_usd_per_mtok": 1e6 * usd(prefill_s, prefill_j) / (wl.batch * wl.input_tokens),
        "decode_usd_per_mtok": 1e6 * usd(decode_s, decode_j) / wl.batch,
        "usd_per_mtok": 1e6 * usd(request_s, request_j) / generated,
        "hardware_usd_per_tok_s": wl.devices * chip["total_cost_usd"] * request_s / generated,
        "chip_status": chip["chip_status"],
    }
