"""Collectives on a two-level network, alpha-beta model.

For a group of n devices and a payload of S bytes (ring algorithms):

    all-reduce      t = t0 + 2(n-1)·α + 2(n-1)/n · S / (BW·eff)     S = the reduced buffer
    all-gather      t = t0 +  (n-1)·α +  (n-1)/n · S / (BW·eff)     S = the gathered buffer
    reduce-scatter  t = t0 +  (n-1)·α +  (n-1)/n · S / (BW·eff)     S = the input buffer
    all-to-all      t = t0 +  (n-1)·α +  (n-1)/n · S / (BW·eff)     S = bytes one device sends
    send/recv       t = t0 +       α  +           S / (BW·eff)

t0 is the level's fixed start-up latency, α its per-step latency and BW its per-direction
bandwidth per device. A group whose members all sit inside one scale-up domain uses the
scale-up level; otherwise the ring crosses the scale-out network and is limited by it.
A group of one device costs nothing. An efficiency carrying a fitted collective model
(:mod:`jaxmodel.kernels.collectives`, measured on NVLink) times the groups inside one
scale-up domain with that model, from the scale-up level's bandwidth and latencies.
"""

from __future__ import annotations

import jax.numpy as jnp

from .. import ops
from ..efficiency import Efficiency
from ..hardware import System

# steps = a·(n-1) + b;  fraction of S on each device's link = c·(n-1)/n + d.
_COEFFICIENTS = {
    ops.ALL_REDUCE: (2.0, 0.0, 2.0, 0.0),
    ops.ALL_GATHER: (1.0, 0.0, 1.0, 0.0),
    ops.REDUCE_SCATTER: (1.0, 0.0, 1.0, 0.0),
    ops.ALL_TO_ALL: (1.0, 0.0, 1.0, 0.0),
    ops.SEND_RECV: (0.0, 1.0, 0.0, 1.0),
}


def collective_time(kind: str, payload, size, stride, system: System, eff: Efficiency):
    """Seconds for one collective of static ``kind`` over ``size`` devices spaced ``stride`` apart."""
    a, b, c, d = _COEFFICIENTS[kind]
    inside = size * stride <= system.devices_per_node
    up, out = system.scale_up, system.scale_out
    bandwidth = jnp.where(inside, up.bandwidth_Bps * eff.scale_up, out.bandwidth_Bps * eff.scale_out)
    alpha = jnp.where(inside, up.link_latency_s, out.link_latency_s)
    startup = jnp.where(inside, up.collective_latency_s, out.collective_latency_s)
    steps = a * (size - 1.0) + b
    fraction = c * (size - 1.0) / size + d
    time = startup + steps * alpha + fraction * payload / bandwidth
    if eff.collectives is not None:
        # The fitted model was measured inside one NVLink domain; a group crossing the scale-out
        # network keeps the alpha-beta time above (with its flat efficiency).
        measured = eff.collectives.time_s(kind, payload, size, up.bandwidth_Bps, up.link_latency_s,
                                          up.collective_latency_s)
        time = jnp.where(inside, measured, time)
    return jnp.where(size > 1.0, time, 0.0)
