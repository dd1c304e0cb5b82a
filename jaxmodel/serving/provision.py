"""Provisioning: the cheapest cluster that meets the SLOs on a trace at a rate, and the
highest rate a given cluster sustains (SPAD Sec. 7, Tables 4 and 7).

Every search simulates its candidates as one batch (:mod:`jaxmodel.serving.pool`):

* **Disaggregated**: TTFT depends on the prefill pool alone, so the prefill machine count is
  swept first (prefill pool only) for the fewest machines meeting the P90/P99 TTFT limits;
  then every decode count is simulated with that prefill pool and the next ``extra_prefill``
  sizes (more prefill machines can only shorten the queues ahead of decode), and the
  cheapest configuration meeting all four limits is chosen (hardware cost, or TDP).
* **Co-located**: every machine count at once.
* **Maximum rate**: a grid of rates for one cluster, refined once around the highest rate at
  which it meets the SLOs.

Machine cost and TDP are those of ``devices_per_node`` chips (:func:`jaxmodel.cost.chip_metrics`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .. import cost
from ..architectures import Architecture
from ..efficiency import Efficiency, ideal
from ..hardware import System
from ..results import pareto_mask
from ..workload import Workload
from . import cluster as cl
from .slo import attainment, slo_of
from .trace import Trace, rescale

# Compiled once per model, chips, settings and batch shape: models and chips are traced
# arguments, so studies that change only numbers reuse the program.
_STATIC = ("settings", "fidelity")
_DISAGGREGATED = jax.jit(cl.disaggregated, static_argnames=_STATIC)
_PREFILL = jax.jit(cl.prefill_stage, static_argnames=_STATIC)
_COLOCATED = jax.jit(cl.colocated, static_argnames=_STATIC)
_UNBATCHED = jax.jit(cl.unbatched, static_argnames=("fidelity",))

#: Columns of the provisioning tables: hardware cost and TDP in reference machines.
COST, TDP = "cost (reference machines)", "TDP (reference machines)"


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every simulation of a study shares: model, workload template (TP, dtype), the
    efficiency and fidelity of the iteration times, and the reference machine of the SLOs."""

    arch: Architecture
    wl: Workload
    reference: System
    eff: Efficiency = dataclasses.field(default_factory=ideal)
    fidelity: str = "roofline"

    def __post_init__(self):
        cl.check_workload(self.wl)


def machine_price(system: System) -> tuple[float, float]:
    """(hardware cost in USD, TDP in W) of one machine: ``devices_per_node`` chips."""
    m = cost.chip_metrics(system, system.economics)
    n = float(system.devices_per_node)
    return float(m["total_cost_usd"]) * n, float(m["tdp_w"]) * n


def requests_of(trace: Trace, rates=None) -> cl.Requests:
    """The trace as arrays; with ``rates``, one row of arrival times per rate (the trace
    through :func:`~jaxmodel.serving.trace.rescale` at that rate)."""
    arrival = (np.asarray(trace.arrival_s, float) if rates is None
               else np.stack([rescale(trace, rate).arrival_s for rate in np.asarray(rates, float)]))
    return cl.Requests(jnp.asarray(arrival), jnp.asarray(trace.input_tokens), jnp.asarray(trace.output_tokens))


def baseline(trace: Trace, setup: Setup):
    """Each request alone on the reference machine: (TTFT, TBT) arrays, the SLOs' yardstick."""
    req = requests_of(trace)
    return _UNBATCHED(req, setup.arch, setup.wl, setup.reference, setup.eff, setup.fidelity)


def _counts(kinds_counts):
    """Per configuration, per kind counts -> (kind, present) arrays with one maximum size."""
    counts = np.asarray(kinds_counts, dtype=np.int32)  # [B, K]
    size = max(int(counts.sum(axis=1).max()), 1)
    return jax.vmap(lambda c: cl.pool_of(list(c), size))(jnp.asarray(counts))


def simulate_disaggregated(trace: Trace, setup: Setup, prefill_kinds, decode_kinds, prefill_counts, decode_counts,
                           rates=None, settings: cl.Disaggregated | None = None) -> cl.Latencies:
    """Latencies of a batch of disaggregated clusters: ``prefill_counts`` / ``decode_counts``
    are ``[B, kinds]`` machine counts per configuration; ``rates`` (req/s), one per
    configuration, rescale the trace (default: as given)."""
    settings = cl.Disaggregated() if settings is None else settings
    pk, pp = _counts(prefill_counts)
    dk, dp = _counts(decode_counts)
    req = requests_of(trace, rates)
    return _DISAGGREGATED(req, setup.arch, setup.wl, cl.Pool(tuple(prefill_kinds), pk, pp),
                          cl.Pool(tuple(decode_kinds), dk, dp), setup.eff, settings, setup.fidelity)


def simulate_prefill(trace: Trace, setup: Setup, prefill_kinds, prefill_counts, rates=None,
                     settings: cl.Disaggregated | None = None) -> cl.Latencies:
    """TTFTs of a batch of prefill pools (see :func:`simulate_disaggregated`)."""
    settings = cl.Disaggregated() if settings is None else settings
    pk, pp = _counts(prefill_counts)
    req = requests_of(trace, rates)
    return _PREFILL(req, setup.arch, setup.wl, cl.Pool(tuple(prefill_kinds), pk, pp), setup.eff, settings,
                    setup.fidelity)


def simulate_colocated(trace: Trace, setup: Setup, kinds, counts, rates=None,
                       settings: cl.Colocated | None = None) -> cl.Latencies:
    """Latencies of a batch of co-located clusters (``counts``: ``[B, kinds]``)."""
    settings = cl.Colocated() if settings is None else settings
    k, p = _counts(counts)
    req = requests_of(trace, rates)
    return _COLOCATED(req, setup.arch, setup.wl, cl.Pool(tuple(kinds), k, p), setup.eff, settings, setup.fidelity)


def _table(att, columns: dict) -> pd.DataFrame:
    out = pd.DataFrame(columns)
    for name in ("p90_ttft", "p99_ttft", "p90_tbt", "p99_tbt"):
        out[f"{name} (x)"] = np.asarray(getattr(att, name))
    out["served"] = np.asarray(att.served_fraction)
    out["meets"] = np.asarray(att.meets)
    return out


def provision_disaggregated(trace: Trace, setup: Setup, prefill_system: System, decode_system: System, slo="normal",
                            max_prefill: int = 40, max_decode: int = 40, extra_prefill: int = 2,
                            objective: str = "cost", settings: cl.Disaggregated | None = None):
    """Cheapest (``objective`` "cost" or "tdp") prefill + decode machine counts meeting
    ``slo`` on ``trace`` (module docstring). Returns (best row or None, every simulated
    configuration as a DataFrame)."""
    settings = cl.Disaggregated() if settings is None else settings
    base = baseline(trace, setup)
    limits = slo_of(slo)
    p_counts = np.arange(1, max_prefill + 1)[:, None]
    ttft = attainment(simulate_prefill(trace, setup, [prefill_system], p_counts, settings=settings), base, limits)
    ok = np.asarray((ttft.p90_ttft <= limits.p90_ttft) & (ttft.p99_ttft <= limits.p99_ttft)
                    & (ttft.served_fraction == 1.0))
    if not ok.any():
        return None, _table(ttft, {"prefill": p_counts[:, 0], "decode": 0})
    first = int(p_counts[np.argmax(ok), 0])
    prefills = np.arange(first, min(first + extra_prefill, max_prefill) + 1)
    pairs = np.asarray([(p, d) for p in prefills for d in range(1, max_decode + 1)])
    lat = simulate_disaggregated(trace, setup, [prefill_system], [decode_system], pairs[:, :1], pairs[:, 1:],
                                 settings=settings)
    table = _table(attainment(lat, base, limits), {"prefill": pairs[:, 0], "decode": pairs[:, 1]})
    return _choose(table, {"prefill": machine_price(prefill_system), "decode": machine_price(decode_system)},
                   objective, setup.reference)


def provision_colocated(trace: Trace, setup: Setup, system: System, slo="normal", max_machines: int = 60,
                        settings: cl.Colocated | None = None):
    """Fewest co-located machines meeting ``slo`` (returns (best row or None, table))."""
    settings = cl.Colocated() if settings is None else settings
    base = baseline(trace, setup)
    counts = np.arange(1, max_machines + 1)[:, None]
    table = _table(attainment(simulate_colocated(trace, setup, [system], counts, settings=settings), base, slo),
                   {"machines": counts[:, 0]})
    return _choose(table, {"machines": machine_price(system)}, "cost", setup.reference)


def _choose(table: pd.DataFrame, prices: dict, objective: str, reference: System):
    if objective not in ("cost", "tdp"):
        raise ValueError(f"objective must be 'cost' or 'tdp' (got {objective!r})")
    ref_cost, ref_tdp = machine_price(reference)
    table[COST] = sum(table[c] * p[0] for c, p in prices.items()) / ref_cost
    table[TDP] = sum(table[c] * p[1] for c, p in prices.items()) / ref_tdp
    feasible = table[table["meets"]]
    if feasible.empty:
        return None, table
    order = [COST, TDP] if objective == "cost" else [TDP, COST]
    return feasible.sort_values(order).iloc[0], table


def pareto(table: pd.DataFrame, objectives=(COST, TDP)) -> pd.DataFrame:
    """The configurations of a provisioning table that meet the SLOs and that no other
    meeting configuration beats on every objective (lower is better; ties kept once),
    sorted by the first objective."""
    feasible = table[table["meets"]].drop_duplicates(subset=list(objectives))
    front = pareto_mask(feasible[list(objectives)].to_numpy(float), [False] * len(objectives))
    return feasible[front].sort_values(list(objectives), ignore_index=True)


def max_rate(trace: Trace, setup: Setup, simulate, rates, slo="normal", refine: int = 8) -> tuple[float, pd.DataFrame]:
    """Highest rate in ``rates`` (req/s, ascending) up to which ``simulate(rates)`` (a batch
    of latencies, one configuration per rate) meets ``slo`` at every rate, refined once with
    ``refine`` rates up to the next one. Returns (rate or 0, table of every rate tried)."""
    base = baseline(trace, setup)

    def run(rs):
        att = attainment(simulate(np.asarray(rs, float)), base, slo)
        return _table(att, {"rate (req/s)": np.asarray(rs, float)})

    def leading_ok(t):  # how many of the rates, from the lowest, all meet the SLOs
        ok = t["meets"].to_numpy()
        return len(ok) if ok.all() else int(np.argmin(ok))

    table = run(rates)
    n_ok = leading_ok(table)
    if n_ok == 0:
        return 0.0, table
    best = float(rates[n_ok - 1])
    if n_ok < len(rates) and refine > 0:
        finer = np.linspace(best, float(rates[n_ok]), refine + 2)[1:-1]
        more = run(finer)
        table = pd.concat([table, more], ignore_index=True)
        k = leading_ok(more)
        if k:
            best = float(finer[k - 1])
    return best, table.sort_values("rate (req/s)", ignore_index=True)
