"""Serving clusters on a request trace: disaggregated (Splitwise-style) and co-located
(Sarathi-style) schedulers built from machine pools (:mod:`jaxmodel.serving.pool`), with
iteration times from the engine and per-request latencies.

A *machine* is one model replica: ``devices_per_node`` chips of one system (8 in SPAD) at the
workload's tensor parallelism. A pool may hold machines of several *kinds* (systems), e.g. a
SPAD decode pool with prefill machines reallocated to it.

**Disaggregated** (SPAD Sec. 4; Splitwise, Patel et al. ISCA 2024): requests are routed to a
prefill machine and batched there whole (first come, first served, up to
``prefill_budget`` prompt tokens per iteration; a longer prompt runs alone, as in
SplitwiseSim's 2048-token batches); the last prefill token emits the first token. The KV cache
then moves to a decode machine over the scale-out network: each device sends its shard of the
prompt's cache over its own link, ``kv_bytes_per_device / scale_out.bandwidth_Bps`` seconds
after the prefill (no contention between transfers, as SplitwiseSim's links; the prefill
machine's memory is released at the end of the prefill). Decode machines batch continuously.
**Co-located** (Sarathi-Serve, Agrawal et al. OSDI 2024): each machine mixes decodes with
prompt chunks under a ``chunk`` token budget per iteration (512 by default, Vidur's default).

Every request reserves device memory for its KV cache at its largest (prompt + output tokens
on decode and co-located machines, the prompt on prefill machines) from routing to leaving,
so no request is ever preempted; a machine's capacity for KV caches is its usable memory
(``memory_utilization``) less the weights. Requests that fit no machine are rejected.

**Latencies** (SPAD Sec. 6.3, as SplitwiseSim and Vidur define them): TTFT = first token -
arrival (it excludes the KV transfer); TBT = (completion - first token) / (output tokens - 1),
the mean time between a request's tokens, undefined for one-token outputs.

**Iteration times** come from the engine (:func:`jaxmodel.inference.run_step`) at the chosen
fidelity and efficiency: an iteration's prefill chunks become one group of
``T^2 / sum x^2`` sequences of ``sum x^2 / T`` tokens (``T`` = its prefill tokens, ``x`` the
chunk lengths), which keeps both the token count (weights, projections) and the causal
attention work (``sum x^2 / 2``) of the real chunks, with ``sum x·past / T`` tokens cached before
each; its decodes become one group at their mean context (exact for the KV bytes read). The
host's time per step and per sequence is added (:meth:`Efficiency.host_overhead_s`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import inference, memory, ops
from ..architectures import Architecture
from ..efficiency import Efficiency, ideal
from ..hardware import System
from ..workload import Workload
from .pool import IterationStats, PoolMachines, PoolRequests, simulate_pool


@dataclasses.dataclass(frozen=True)
class Disaggregated:
    """Splitwise-style scheduler settings (static: they shape the compiled program)."""

    prefill_budget: int = 2048  # prompt tokens per prefill iteration (SplitwiseSim's max_batch_tokens)
    # Slots bound a machine's requests, queued or running (the loop's cost grows with them):
    # prefill machines need few (later requests wait in the pool's queue, first come first
    # served); a decode machine's batch is usually bound by memory first (BLOOM-176B on
    # 8 H100s: about 40 requests of the conversation trace).
    prefill_slots: int = 16
    decode_slots: int = 128

    def __post_init__(self):
        for name in ("prefill_budget", "prefill_slots", "decode_slots"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Disaggregated.{name} must be >= 1 (got {getattr(self, name)})")


@dataclasses.dataclass(frozen=True)
class Colocated:
    """Sarathi-style scheduler settings (static)."""

    chunk: int = 512  # tokens per iteration, decodes included (Vidur's default chunk size)
    slots: int = 128  # requests a machine holds, queued or running

    def __post_init__(self):
        for name in ("chunk", "slots"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Colocated.{name} must be >= 1 (got {getattr(self, name)})")


class Pool(NamedTuple):
    """Machines of one pool: ``kinds`` (systems, static count) and per machine its kind index
    and whether it is present (a vmapped sweep gives every configuration the same maximum)."""

    kinds: tuple
    kind: jax.Array
    present: jax.Array


def pool_of(counts: Sequence, max_machines: int | None = None) -> tuple[jax.Array, jax.Array]:
    """``(kind, present)`` arrays of a pool with ``counts[k]`` machines of kind ``k`` (traced
    counts allowed), laid out kind after kind in ``max_machines`` places."""
    counts = [jnp.asarray(c) for c in counts]
    if max_machines is None:
        max_machines = int(sum(int(c) for c in counts))
    index = jnp.arange(max_machines)
    edges = jnp.cumsum(jnp.stack(counts))
    kind = jnp.sum(index[:, None] >= edges[None, :], axis=1)
    present = index < edges[-1]
    return jnp.minimum(kind, len(counts) - 1).astype(jnp.int32), present


class Requests(NamedTuple):
    """A trace as arrays (see :mod:`jaxmodel.serving.trace`)."""

    arrival_s: jax.Array
    input_tokens: jax.Array
    output_tokens: jax.Array


class Latencies(NamedTuple):
    """Per-request results (trace order): TTFT, TBT (NaN for one-token outputs), end-to-end
    latency, status (:data:`~jaxmodel.serving.pool.SERVED` or ``REJECTED``)."""

    ttft_s: jax.Array
    tbt_s: jax.Array
    e2e_s: jax.Array
    status: jax.Array
    events: jax.Array


def check_workload(wl: Workload):
    try:
        pp = float(wl.pp)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return
    if pp != 1.0:
        raise ValueError(f"Workload.pp must be 1 for serving simulation (a machine holds the whole model; got {pp:g})")


def iteration_time(arch: Architecture, wl: Workload, system: System, eff: Efficiency, stats: IterationStats,
                   fidelity: str = "roofline") -> jax.Array:
    """Seconds of one iteration (see the module docstring) on a machine of ``system``."""
    t = stats.prefill_tokens
    has_prefill = t > 0
    safe_t = jnp.where(has_prefill, t, 1.0)
    length = jnp.where(has_prefill, stats.prefill_sq_tokens / safe_t, 0.0)
    seqs = jnp.where(has_prefill, t / jnp.where(has_prefill, length, 1.0), 0.0)
    past = jnp.where(has_prefill, stats.prefill_past_tokens / safe_t, 0.0)
    n_d = stats.decode_seqs
    context = jnp.where(n_d > 0, stats.decode_context / jnp.where(n_d > 0, n_d, 1.0), 0.0)
    step = ops.Step(seqs, length, past, n_d, context, stats.prefill_finishing + n_d)
    r = inference.run_step(arch, wl, system, eff, step, None, fidelity)
    return inference.single_pass_s(r) + eff.host_overhead_s(stats.prefill_seqs + n_d)


def _pool_time(arch, wl, kinds, eff, fidelity):
    def time(kind, stats):
        times = jnp.stack([iteration_time(arch, wl, system, eff, stats, fidelity) for system in kinds])
        return times[kind]
    return time


def kv_bytes(arch: Architecture, wl: Workload, tokens) -> jax.Array:
    """KV cache of one sequence of ``tokens`` tokens on each device of a machine."""
    return memory.kv_cache_bytes_per_device(arch, wl, 1.0, tokens)


def kv_capacity_bytes(arch: Architecture, wl: Workload, system: System) -> jax.Array:
    """Device bytes left for KV caches: usable memory less the weights."""
    return system.chip.mem_capacity_bytes * wl.memory_utilization - memory.weight_bytes_per_device(arch, wl)


def _batched(requests: Requests, *pools: Pool):
    """Everything with a leading configuration axis ``B`` (1 when nothing is batched), and
    whether to drop it from the results."""
    ranks = [jnp.ndim(requests.arrival_s) == 2] + [jnp.ndim(p.present) == 2 for p in pools]
    sizes = [jnp.shape(requests.arrival_s)[0]] if ranks[0] else []
    sizes += [jnp.shape(p.present)[0] for p, r in zip(pools, ranks[1:]) if r]
    if len(set(sizes)) > 1:
        raise ValueError(f"configuration axes differ between the requests and the pools: {sizes}")
    b = sizes[0] if sizes else 1

    def lead(x, rank):
        x = jnp.asarray(x)
        return x if jnp.ndim(x) == rank else jnp.broadcast_to(x, (b,) + jnp.shape(x))

    req = Requests(*(lead(x, 2) for x in requests))
    pools = [p._replace(kind=lead(p.kind, 2), present=lead(p.present, 2)) for p in pools]
    return req, pools, not any(ranks)


def _machines(arch, wl, pool: Pool, dtype) -> PoolMachines:
    capacity = jnp.stack([kv_capacity_bytes(arch, wl, s) for s in pool.kinds]).astype(dtype)[pool.kind]
    return PoolMachines(pool.present, capacity, pool.kind)


def _unbatch(lat: Latencies, squeeze: bool) -> Latencies:
    return jax.tree_util.tree_map(lambda x: x[0], lat) if squeeze else lat


def prefill_stage(requests: Requests, arch: Architecture, wl: Workload, prefill: Pool,
                  eff: Efficiency | None = None, settings: Disaggregated = Disaggregated(),
                  fidelity: str = "roofline") -> Latencies:
    """The prefill pool alone (TTFT depends on nothing else): latencies with TBT and the
    end-to-end latency left as NaN. Batches like :func:`disaggregated`."""
    eff = ideal() if eff is None else eff
    req, (prefill_p,), squeeze = _batched(requests, prefill)
    pre = _prefill(req, arch, wl, prefill, prefill_p, eff, settings, fidelity)
    nan = jnp.full_like(pre.first_token_s, jnp.nan)
    lat = _latencies(req.arrival_s, pre.first_token_s, nan, nan, pre.status, pre.events)
    return _unbatch(lat._replace(tbt_s=nan, e2e_s=nan), squeeze)


def _prefill(req, arch, wl, prefill, prefill_p, eff, settings, fidelity):
    check_workload(wl)
    prompt = req.input_tokens.astype(req.arrival_s.dtype)
    zeros = jnp.zeros_like(prompt)
    return simulate_pool(PoolRequests(req.arrival_s, prompt, zeros, zeros, kv_bytes(arch, wl, prompt)),
                         _machines(arch, wl, prefill_p, req.arrival_s.dtype),
                         _pool_time(arch, wl, prefill.kinds, eff, fidelity),
                         slots=settings.prefill_slots, budget=settings.prefill_budget, chunked=False)


def disaggregated(requests: Requests, arch: Architecture, wl: Workload, prefill: Pool, decode: Pool,
                  eff: Efficiency | None = None, settings: Disaggregated = Disaggregated(),
                  fidelity: str = "roofline") -> Latencies:
    """Per-request latencies of a disaggregated cluster (module docstring). Configurations
    are batched along a leading axis of the arrival times (e.g. rates) and of the pools'
    ``kind`` / ``present`` arrays (e.g. pool sizes), all simulated in one loop."""
    eff = ideal() if eff is None else eff
    req, (prefill_p, decode_p), squeeze = _batched(requests, prefill, decode)
    ftype = req.arrival_s.dtype
    prompt, output = req.input_tokens.astype(ftype), req.output_tokens.astype(ftype)
    zeros = jnp.zeros_like(prompt)
    pre = _prefill(req, arch, wl, prefill, prefill_p, eff, settings, fidelity)
    # The KV cache leaves over the prefill machine's scale-out links (every device its shard).
    links = jnp.stack([s.scale_out.bandwidth_Bps for s in prefill.kinds]).astype(ftype)
    link = links[jnp.take_along_axis(prefill_p.kind, jnp.maximum(pre.machine, 0), axis=1)]
    served = pre.status == 0
    ready = pre.first_token_s + kv_bytes(arch, wl, prompt) / link
    # Rejected requests go last and are rejected again (their reservation fits nowhere).
    ready = jnp.where(served, ready, jnp.max(jnp.where(served, ready, -jnp.inf), axis=1, keepdims=True))
    order = jnp.argsort(ready, axis=1)

    def by_ready(x):
        return jnp.take_along_axis(x, order, axis=1)

    reserve = jnp.where(served, kv_bytes(arch, wl, prompt + output), jnp.inf)
    dec = simulate_pool(PoolRequests(by_ready(ready), zeros, by_ready(prompt), by_ready(jnp.maximum(output - 1.0, 0.0)),
                                     by_ready(reserve)),
                        _machines(arch, wl, decode_p, ftype), _pool_time(arch, wl, decode.kinds, eff, fidelity),
                        slots=settings.decode_slots, budget=1, chunked=False)

    def back(x):  # ready order -> trace order
        return jnp.zeros_like(x).at[jnp.arange(x.shape[0])[:, None], order].set(x)

    status = jnp.maximum(pre.status, back(dec.status))
    lat = _latencies(req.arrival_s, pre.first_token_s, back(dec.done_s), output, status, pre.events + dec.events)
    return _unbatch(lat, squeeze)


def colocated(requests: Requests, arch: Architecture, wl: Workload, machines: Pool, eff: Efficiency | None = None,
              settings: Colocated = Colocated(), fidelity: str = "roofline") -> Latencies:
    """Per-request latencies of a co-located (chunked-prefill) cluster (module docstring);
    configurations batch as in :func:`disaggregated`."""
    check_workload(wl)
    eff = ideal() if eff is None else eff
    req, (pool,), squeeze = _batched(requests, machines)
    ftype = req.arrival_s.dtype
    prompt, output = req.input_tokens.astype(ftype), req.output_tokens.astype(ftype)
    res = simulate_pool(PoolRequests(req.arrival_s, prompt, jnp.zeros_like(prompt), jnp.maximum(output - 1.0, 0.0),
                                     kv_bytes(arch, wl, prompt + output)),
                        _machines(arch, wl, pool, ftype), _pool_time(arch, wl, machines.kinds, eff, fidelity),
                        slots=settings.slots, budget=settings.chunk, chunked=True)
    lat = _latencies(req.arrival_s, res.first_token_s, res.done_s, output, res.status, res.events)
    return _unbatch(lat, squeeze)


def _latencies(arrival, first, done, output, status, events) -> Latencies:
    served = status == 0
    ttft = jnp.where(served, first - arrival, jnp.inf)
    tbt = jnp.where(output >= 2.0, (done - first) / jnp.maximum(output - 1.0, 1.0), jnp.nan)
    tbt = jnp.where(served, tbt, jnp.inf)
    return Latencies(ttft, tbt, jnp.where(served, done - arrival, jnp.inf), status, events)


def unbatched(requests: Requests, arch: Architecture, wl: Workload, system: System, eff: Efficiency | None = None,
              fidelity: str = "roofline") -> tuple[jax.Array, jax.Array]:
    """Each request alone on one machine of ``system``: (TTFT, TBT) per request, the
    baselines of SPAD's SLOs. TBT is the decode step at the request's mean context (exact for
    step times linear in context)."""
    eff = ideal() if eff is None else eff
    prompt = jnp.asarray(requests.input_tokens).astype(jnp.asarray(requests.arrival_s).dtype)
    output = jnp.asarray(requests.output_tokens).astype(prompt.dtype)
    one, zero = jnp.ones_like(prompt), jnp.zeros_like(prompt)

    def alone(p, o, u, z):
        ttft = iteration_time(arch, wl, system, eff, IterationStats(u, p, p * p, z, u, z, z), fidelity)
        context = p + jnp.maximum(o - 2.0, 0.0) / 2.0
        tbt = iteration_time(arch, wl, system, eff, IterationStats(z, z, z, z, z, u, context), fidelity)
        return ttft, tbt

    return jax.vmap(alone)(prompt, output, one, zero)
