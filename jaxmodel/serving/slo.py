"""Latency SLOs as SPAD defines them (Table 5): percentiles of each request's slowdown over
running it alone on a reference machine (SPAD: a modeled 8-H100 machine without batching).

A configuration meets an SLO set when its P90 and P99 TTFT and TBT slowdowns are all within
the limits. Rejected requests count as infinitely slow; requests with one output token have no
TBT and are left out of the TBT percentiles. Percentiles interpolate linearly between order
statistics (NumPy's default).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .cluster import Latencies


class SLO(NamedTuple):
    """Slowdown limits (x the unbatched reference)."""

    p90_tbt: float
    p90_ttft: float
    p99_tbt: float
    p99_ttft: float


#: SPAD Table 5 (Loose / Normal / Tight); Normal is the default of every SPAD experiment.
SLOS = {
    "loose": SLO(p90_tbt=2.5, p90_ttft=4.0, p99_tbt=6.0, p99_ttft=8.0),
    "normal": SLO(p90_tbt=2.0, p90_ttft=3.0, p99_tbt=5.0, p99_ttft=6.0),
    "tight": SLO(p90_tbt=1.5, p90_ttft=2.0, p99_tbt=3.0, p99_ttft=4.0),
}


def slo_of(name_or_slo) -> SLO:
    if isinstance(name_or_slo, SLO):
        return name_or_slo
    if name_or_slo not in SLOS:
        raise ValueError(f"SLO set must be one of {sorted(SLOS)} or an SLO (got {name_or_slo!r})")
    return SLOS[name_or_slo]


class Attainment(NamedTuple):
    """Slowdown percentiles per configuration and whether each SLO set's limits hold."""

    p90_tbt: jax.Array
    p90_ttft: jax.Array
    p99_tbt: jax.Array
    p99_ttft: jax.Array
    meets: jax.Array
    served_fraction: jax.Array


def attainment(lat: Latencies, baseline: tuple[jax.Array, jax.Array], slo="normal") -> Attainment:
    """Percentiles of the TTFT and TBT slowdowns over the requests (last axis) against
    ``baseline`` = (TTFT, TBT) of each request alone (:func:`jaxmodel.serving.cluster.unbatched`)."""
    limits = slo_of(slo)

    def slowdown(x, alone):  # alone: one value per request, shared by every configuration
        alone = jnp.asarray(alone)
        return x / alone.reshape((1,) * (jnp.ndim(x) - jnp.ndim(alone)) + jnp.shape(alone))

    ttft = slowdown(lat.ttft_s, baseline[0])
    tbt = slowdown(lat.tbt_s, baseline[1])
    p90_ttft, p99_ttft = jnp.nanpercentile(ttft, jnp.asarray([90.0, 99.0]), axis=-1)
    p90_tbt, p99_tbt = jnp.nanpercentile(tbt, jnp.asarray([90.0, 99.0]), axis=-1)
    meets = ((p90_tbt <= limits.p90_tbt) & (p90_ttft <= limits.p90_ttft) & (p99_tbt <= limits.p99_tbt)
             & (p99_ttft <= limits.p99_ttft))
    return Attainment(p90_tbt, p90_ttft, p99_tbt, p99_ttft, meets, jnp.mean(lat.status == 0, axis=-1))
