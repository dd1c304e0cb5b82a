"""Platform requirements: the smallest compute, bandwidth and capacity that meet a use case's SLOs.

This is the inverse of :func:`jaxmodel.inference.evaluate`, after GenZ Sec. VI "Platform
Requirements Estimation" (Bambhaniya et al., "Demystifying AI Platform Design for
Distributed Inference of Next-Generation LLM models"; Figs. 14 and 15, use cases of
Table III). Given a model, a use case (prompt and output tokens, batch, a TTFT target and
a TPOT target) and a platform size (``devices = tp · pp``), find

    mem_capacity_bytes   the device memory the model, KV cache and activations need,
                         ``memory_bytes / memory_utilization`` per device (GenZ Fig. 14);
    compute_flops        the tensor-unit peak (FLOP/s of the workload's compute dtype) and
    mem_bw_Bps           the memory bandwidth (bytes/s) at which TTFT <= ttft target and
                         TPOT <= tpot target (GenZ Fig. 15a and 15b).

All three are platform totals (per-device value times devices); ``*_per_device`` columns
give the per-device figures. SI units throughout.

Method.
    Capacity does not depend on the chip's speed, so it comes from one evaluation.

    Compute and bandwidth are solved jointly on a *base chip* whose tensor peak and memory
    bandwidth are replaced by the unknowns (default: the H100 SXM datasheet). Everything
    else about the base — the vector (non-matrix) peak, the interconnects and their
    latencies — stays as it is, so the answer is "an H100-like platform with this much
    compute and bandwidth" (``scale_vector=True`` scales the vector peak with the tensor
    peak instead). TTFT and TPOT both fall monotonically in each unknown, so the feasible
    set is an up-set whose Pareto frontier is a curve; GenZ's reading picks the point where
    each phase sets "its" resource: prefill the compute, decode the bandwidth. We find it by
    alternating bisections in log space:

        C <- min C with TTFT(C, B) <= ttft target      (at the current B)
        B <- min B with TPOT(C, B) <= tpot target      (at the current C)

    starting from B = the top of the search interval. C then never decreases and B never
    increases, so the iteration converges (to relative change < 1e-4, typically in a few
    rounds) to the point where both targets are met with equality.

    That point may not exist or may be pushed to an asymptote: prefill alone may need more
    bandwidth than decode (a short TTFT on a long prompt) or decode alone more compute than
    prefill (large-batch decode). So each resource is kept at least ``FLOOR_HEADROOM`` (2)
    times the floor the *other* phase puts on it with the other resource unlimited
    (``C >= 2 · min{C : TPOT(C, inf) <= target}``, ``B >= 2 · min{B : TTFT(inf, B) <=
    target}``). Then one target is met with equality and the answer is still Pareto-minimal
    (lowering either resource alone breaks a target), only a different point of the frontier.

    Each bisection is a fixed-length ``jax.lax.fori_loop`` (``BISECTION_STEPS`` halvings of
    the log interval [``LOW``, ``HIGH``] per device) and the alternation a ``while_loop``,
    so the whole solver is jitted and vmapped over all use cases in one call.

Status (per use case, never NaN and never an exception): engine bits of
:mod:`jaxmodel.status` (e.g. an invalid TP degree; ``DOES_NOT_FIT`` is dropped, since the
capacity is the answer) plus ``TTFT_UNREACHABLE`` / ``TPOT_UNREACHABLE`` when a target is
not met even at ``HIGH`` FLOP/s and bytes/s per device (e.g. TPOT below the collective
latency floor, or a big prefill whose TP all-reduces saturate the base's fixed interconnect
bandwidth), and ``NOT_CONVERGED`` if the alternation ran out of rounds. Unreachable
rows report the values at the top of the interval and their achieved latencies.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import inference, status
from .architectures import Architecture
from .efficiency import Efficiency, ideal
from .hardware import System, tensor_peak
from .workload import Workload

#: Search interval of per-device FLOP/s and bytes/s (1 GFLOP/s … 1 ZFLOP/s).
LOW = 1e9
HIGH = 1e21
BISECTION_STEPS = 60
MAX_ROUNDS = 40
RTOL = 1e-4
#: Each resource is kept at least this multiple of the floor the other phase puts on it.
FLOOR_HEADROOM = 2.0

# Own status bits, well above the engine's (jaxmodel.status uses 1..32).
TTFT_UNREACHABLE = 1 << 10
TPOT_UNREACHABLE = 1 << 11
NOT_CONVERGED = 1 << 12
_NAMES = {TTFT_UNREACHABLE: "ttft_unreachable", TPOT_UNREACHABLE: "tpot_unreachable",
          NOT_CONVERGED: "not_converged"}

_USE_CASE_FIELDS = ("input_tokens", "output_tokens", "batch", "ttft_s", "tpot_s")

#: GenZ Table III ("Representative Use Cases of LLM models"): prompt/output tokens, beam
#: width and TTFT (s) / TPOT (ms, converted to s here). The table gives no batch size; we
#: use 1. requirements() decodes every beam (``batch · beam_width`` sequences per step, each
#: beam keeping its own generated tokens' KV) unless called with ``beam_search=False``.
GENZ_USE_CASES = pd.DataFrame({
    "name": ["Question Answering", "Chat Services", "QA + RAG", "Text Summarization", "Code Generation"],
    "input_tokens": [1000, 3000, 10000, 15000, 20000],
    "output_tokens": [200, 1000, 200, 1000, 50],
    "beam_width": [4, 2, 4, 4, 4],
    "batch": [1, 1, 1, 1, 1],
    "ttft_s": [0.2, 0.2, 0.4, 2.0, 0.5],
    "tpot_s": [10e-3, 10e-3, 10e-3, 20e-3, 20e-3],
})


def describe_status(code) -> str:
    """Comma-separated names of the bits in ``code`` (engine bits and this module's)."""
    code = int(code)
    own = [name for bit, name in _NAMES.items() if code & bit]
    engine = status.describe(code & ~sum(_NAMES))
    names = ([] if engine == "ok" else [engine]) + own
    return ",".join(names) if names else "ok"


def _bisect_min(pred, lo, hi):
    """Smallest x in [lo, hi] (log-space bisection) with ``pred(x)`` true, for ``pred``
    monotone (false below, true above); returns ``hi`` when ``pred(hi)`` is false."""

    def body(_, bounds):
        a, b = bounds
        mid = jnp.exp(0.5 * (jnp.log(a) + jnp.log(b)))
        ok = pred(mid)
        return jnp.where(ok, a, mid), jnp.where(ok, mid, b)

    _, b = jax.lax.fori_loop(0, BISECTION_STEPS, body, (lo, hi))
    return b


def _with_chip(system: System, compute_key: str, scale_vector: bool, flops, bw):
    chip = system.chip
    leaves = [lambda s: s.chip.tensor_flops[compute_key], lambda s: s.chip.mem_bw_Bps]
    values = [flops, bw]
    if scale_vector:
        # Keep the base chip's vector-to-tensor ratio.
        leaves.append(lambda s: s.chip.vector_flops)
        values.append(flops * chip.vector_flops / chip.tensor_flops[compute_key])
    return eqx.tree_at(lambda s: [f(s) for f in leaves], system, [jnp.asarray(v, jnp.result_type(float))
                                                                   for v in values])


def _solve_one(arch, wl, system, eff, ttft_target, tpot_target, *, compute_key, scale_vector):
    dtype = jnp.result_type(float)
    lo, hi = jnp.asarray(LOW, dtype), jnp.asarray(HIGH, dtype)

    def evaluate(c, b):
        return inference.evaluate(arch, wl, _with_chip(system, compute_key, scale_vector, c, b), eff)

    # Every bisection runs through ONE traced copy of the model (compile time grows with
    # the copies): task 0 finds the compute floor decode puts on C (TPOT at B = HIGH),
    # task 1 the bandwidth floor prefill puts on B (TTFT at C = HIGH); then even tasks
    # solve C from TTFT at the current B and odd ones B from TPOT at the current C.
    def task(state):
        k, c, b, c_min, b_min, change = state
        solve_c = (k == 0) | ((k >= 2) & (k % 2 == 0))
        use_ttft = (k == 1) | ((k >= 2) & (k % 2 == 0))
        fixed = jnp.where(k < 2, hi, jnp.where(solve_c, b, c))

        def ok(x):
            out = evaluate(jnp.where(solve_c, x, fixed), jnp.where(solve_c, fixed, x))
            return jnp.where(use_ttft, out["ttft_s"] <= ttft_target, out["tpot_s"] <= tpot_target)

        x = _bisect_min(ok, lo, hi)
        c_min = jnp.where(k == 0, x, c_min)
        b_min = jnp.where(k == 1, x, b_min)
        c_new = jnp.where(k >= 2, jnp.where(solve_c, jnp.maximum(x, FLOOR_HEADROOM * c_min), c), c)
        b_new = jnp.where(k >= 2, jnp.where(solve_c, b, jnp.maximum(x, FLOOR_HEADROOM * b_min)), b)
        step = jnp.maximum(jnp.abs(c_new / c - 1.0), jnp.abs(b_new / b - 1.0))
        # The change of a round (a C step then a B step) is the larger of its two steps.
        change = jnp.where(solve_c | (k < 2), step, jnp.maximum(change, step))
        return k + 1, c_new, b_new, c_min, b_min, change

    def keep_going(state):
        k, *_, change = state
        # Stop after a full round (k even, >= 4) that moved neither C nor B by RTOL.
        round_done = (k >= 4) & (k % 2 == 0)
        return (k < 2 + 2 * MAX_ROUNDS) & ~(round_done & (change < RTOL))

    init = (jnp.asarray(0, jnp.int32), hi, hi, hi, hi, jnp.asarray(jnp.inf, dtype))
    _, c, b, c_floor, b_floor, change = jax.lax.while_loop(keep_going, task, init)
    c = jnp.minimum(c, hi)
    b = jnp.minimum(b, hi)

    out = evaluate(c, b)
    # A bisection returns HIGH only if nothing below it met the target.
    code = (out["status"] & ~status.DOES_NOT_FIT
            | jnp.where(b_floor >= hi, TTFT_UNREACHABLE, 0)
            | jnp.where(c_floor >= hi, TPOT_UNREACHABLE, 0)
            | jnp.where(change >= RTOL, NOT_CONVERGED, 0))
    capacity = out["memory_bytes"] / wl.memory_utilization
    return {
        "compute_flops_per_device": c,
        "mem_bw_Bps_per_device": b,
        "mem_capacity_bytes_per_device": capacity,
        "ttft_s": out["ttft_s"],
        "tpot_s": out["tpot_s"],
        "weight_bytes_per_device": out["weight_bytes"],
        "kv_cache_bytes_per_device": out["kv_cache_bytes"],
        "status": code.astype(jnp.int32),
    }


@eqx.filter_jit
def _solve_all(arch, wl_batched, system, eff, ttft, tpot, compute_key, scale_vector):
    def one(wl, t, p):
        return _solve_one(arch, wl, system, eff, t, p, compute_key=compute_key, scale_vector=scale_vector)

    return jax.vmap(one)(wl_batched, ttft, tpot)


def _columns(use_cases) -> dict[str, np.ndarray]:
    if isinstance(use_cases, pd.DataFrame):
        cols = {k: use_cases[k].to_numpy() for k in use_cases.columns}
    elif isinstance(use_cases, Mapping):
        cols = {k: np.atleast_1d(np.asarray(v)) for k, v in use_cases.items()}
    else:
        raise ValueError("requirements: use_cases must be a pandas DataFrame or a dict of arrays, "
                         f"not {type(use_cases).__name__}")
    missing = [f for f in _USE_CASE_FIELDS if f not in cols]
    if missing:
        raise ValueError(f"requirements: use_cases lacks field(s) {missing}; need {list(_USE_CASE_FIELDS)}")
    n = max(len(np.atleast_1d(cols[f])) for f in _USE_CASE_FIELDS)
    for f in _USE_CASE_FIELDS:
        v = np.atleast_1d(cols[f])
        if v.ndim != 1 or len(v) not in (1, n):
            raise ValueError(f"requirements: use_cases[{f!r}] must be a scalar or a 1-D array of length {n}")
        try:
            v = np.broadcast_to(v.astype(float), (n,))
        except (TypeError, ValueError) as err:
            raise ValueError(f"requirements: use_cases[{f!r}] must be numeric") from err
        if not np.all(np.isfinite(v) & (v > 0)):
            raise ValueError(f"requirements: use_cases[{f!r}] must be finite and > 0 (got {v[~(v > 0)][:3]}...)")
        if f in ("input_tokens", "output_tokens", "batch") and not np.all(v == np.round(v)):
            raise ValueError(f"requirements: use_cases[{f!r}] must hold positive integers")
        cols[f] = v
    return cols


def requirements(
    arch: Architecture,
    use_cases,
    *,
    tp: int = 1,
    pp: int = 1,
    base_system: System | None = None,
    efficiency: Efficiency | None = None,
    scale_vector: bool = False,
    beam_search: bool = True,
    **workload_options,
) -> pd.DataFrame:
    """Minimum platform compute, memory bandwidth and capacity for each use case.

    Args:
        arch: the model.
        use_cases: DataFrame or dict of arrays with ``input_tokens``, ``output_tokens``,
            ``batch``, ``ttft_s`` and ``tpot_s`` (targets, seconds); other columns (e.g.
            ``name``) are carried into the result. See :data:`GENZ_USE_CASES`.
        tp, pp: tensor and pipeline parallel degrees; the platform has ``tp · pp`` devices.
            ``tp``/``pp`` columns in ``use_cases`` override them per use case.
        base_system: the chip and networks whose tensor peak and memory bandwidth are
            solved for (default: the H100 SXM datasheet); a microarchitecture-level chip is
            reduced to its datasheet.
        efficiency: achieved fractions of peak (default: ideal roofline).
        scale_vector: scale the vector peak with the tensor peak (default: keep the base's).
        beam_search: use the ``beam_width`` column, when ``use_cases`` has one, as the
            workload's beam width (False: solve every use case with greedy decoding).
        workload_options: further :class:`~jaxmodel.workload.Workload` keywords, e.g.
            ``dtype="fp8"`` (GenZ Fig. 15 assumes FP8 weights and KV cache).

    Returns:
        One row per use case: the use-case columns with the targets renamed
        ``ttft_target_s``/``tpot_target_s``; platform totals ``compute_flops``,
        ``mem_bw_Bps``, ``mem_capacity_bytes``; the same ``*_per_device``; ``devices``;
        the achieved ``ttft_s``/``tpot_s`` at the answer; ``weight_bytes_per_device``,
        ``kv_cache_bytes_per_device``; ``status`` and ``status_name``.
    """
    if "ep" in workload_options:
        raise ValueError("requirements: ep is not supported (the platform is tp · pp devices)")
    cols = _columns(use_cases)
    n = len(cols["ttft_s"])
    # Platform sizes: the keywords, or per-use-case columns (one compiled call for all).
    for name, value in (("tp", tp), ("pp", pp)):
        v = np.broadcast_to(np.asarray(cols.get(name, value)), (n,))
        if not (np.issubdtype(v.dtype, np.number) and np.all(v >= 1) and np.all(v == np.round(v))):
            raise ValueError(f"requirements: {name} must be an integer >= 1, got {np.unique(v)[:5]!r}")
        cols[name] = v.astype(int)
    if base_system is None:
        from .presets import load_hardware

        base_system = load_hardware("h100-sxm")
    system = base_system.datasheet()
    eff = ideal() if efficiency is None else efficiency

    extra = {}
    if beam_search and "beam_width" in cols:
        extra["beam_width"] = np.broadcast_to(np.asarray(cols["beam_width"], float), (n,))
    # Validate on the host with concrete values, then batch the leaves for vmap.
    wl = Workload(batch=cols["batch"], input_tokens=cols["input_tokens"], output_tokens=cols["output_tokens"],
                  tp=cols["tp"].astype(float), pp=cols["pp"].astype(float), **extra, **workload_options)
    # Every leaf of the workload gets the use-case axis (scalars are broadcast).
    wl = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,)), wl)
    compute_key = _resolved_key(system, wl.compute_dtype)

    out = jax.device_get(_solve_all(system=system, arch=arch, wl_batched=wl, eff=eff,
                                    ttft=jnp.asarray(cols["ttft_s"]), tpot=jnp.asarray(cols["tpot_s"]),
                                    compute_key=compute_key, scale_vector=scale_vector))
    devices = (cols["tp"] * cols["pp"]).astype(float)
    result = {k: v for k, v in cols.items() if k not in ("ttft_s", "tpot_s")}
    result["ttft_target_s"] = cols["ttft_s"]
    result["tpot_target_s"] = cols["tpot_s"]
    result["devices"] = (cols["tp"] * cols["pp"]).astype(int)
    for key in ("compute_flops", "mem_bw_Bps", "mem_capacity_bytes"):
        per_device = np.asarray(out[f"{key}_per_device"], dtype=float)
        result[key] = per_device * devices
        result[f"{key}_per_device"] = per_device
    for key in ("ttft_s", "tpot_s", "weight_bytes_per_device", "kv_cache_bytes_per_device"):
        result[key] = np.asarray(out[key], dtype=float)
    result["status"] = np.asarray(out["status"], dtype=int)
    result["status_name"] = [describe_status(c) for c in result["status"]]
    index = use_cases.index if isinstance(use_cases, pd.DataFrame) else None
    return pd.DataFrame(result, index=index)


def _resolved_key(system: System, dtype: str) -> str:
    """The ``tensor_flops`` key the engine uses for ``dtype`` (it may fall back to a wider one)."""
    peak = tensor_peak(system.chip.tensor_flops, dtype)
    return next(k for k, v in system.chip.tensor_flops.items() if v is peak)
