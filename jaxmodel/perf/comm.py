"""Collectives on a multi-level network, alpha-beta model, timed level by level.

**Levels.** Level 0 is the scale-up domain (``devices_per_node`` devices), each middle level
joins ``size`` blocks of the level inside it, and the outermost level (scale-out) is
unbounded. ``P_i`` = devices in one block of level ``i`` (``P_0 = devices_per_node``,
``P_i = P_{i-1} · size_i``). Blocks are contiguous ranges of device numbers.

**Placement.** A group of ``n`` members spaced ``s`` apart (TP: s = 1; EP: s = tp; a pipeline
send to the next stage: s = tp·ep) has, counting from the block holding its first member,

    c_i = clip(floor((P_i - 1/2) / s) + 1, 1, n)   members inside one block of level i
                                          (= ceil(P_i / s) for whole numbers)
    c_{-1} = 1,  c_outermost = n
    g_i = c_i / c_{i-1}                   the group's fan-out on level i: level-(i-1) blocks
                                          it occupies inside one level-i block; prod_i g_i = n

Groups that do not fill their blocks evenly (e.g. 12 ranks over 8-device nodes) get a
fractional g_i (8 then 1.5): the time interpolates between the neighbouring whole cases.

**Hierarchical algorithms** (as NCCL's and ASTRA-sim's multi-dimensional collectives), with
α_i, BW_i the level's per-step latency and per-device bandwidth, eff_i = the link's own
``efficiency`` times ``Efficiency.scale_up`` (level 0) or ``Efficiency.scale_out`` (outer
levels), and S_i = S / prod_{j<i} g_j the share of the payload left when level i is reached:

    all-reduce      Σ_i [ 2(g_i-1)·α_i + 2(g_i-1)/g_i · S_i / (BW_i·eff_i) ]    S = reduced buffer
                    (reduce-scatter up the levels, all-gather back down)
    all-gather      Σ_i [  (g_i-1)·α_i +  (g_i-1)/g_i · S_i / (BW_i·eff_i) ]    S = gathered buffer
                    (outermost level first, so the inner, faster levels carry the larger pieces)
    reduce-scatter  the same                                                    S = input buffer
    all-to-all      Σ_i [  (g_i-1)·α_i + (c_i-c_{i-1})/n · S / (BW_i·eff_i) ]   S = bytes one device
                    sends; (c_i - c_{i-1})/n of them leave a level-(i-1) block but stay in level i
    send/recv       α_i + S / (BW_i·eff_i) on the lowest level holding both ends

plus one start-up latency t0 per collective: that of the outermost level the group spans
(the synchronization has to reach across that level; inner levels' start-ups overlap it).
A group of one device costs nothing. With the classic two levels and a group inside one
node this is exactly the flat ring ``t0 + a(n-1)·α + c(n-1)/n · S/(BW·eff)``; a group spanning
nodes now runs its intra-node share on the scale-up links instead of a flat ring at the
scale-out bandwidth.

An efficiency carrying a fitted collective model (:mod:`jaxmodel.kernels.collectives`,
measured on NVLink) times the groups lying entirely inside one scale-up domain with that
model, from the scale-up level's bandwidth and latencies.
"""

from __future__ import annotations

import jax.numpy as jnp

from .. import ops
from ..efficiency import Efficiency
from ..hardware import System


def placement(size, stride, level_sizes) -> tuple[tuple, tuple]:
    """``(c, g)`` of a group of ``size`` members ``stride`` apart on levels of ``level_sizes``
    (the bounded levels, innermost first): members inside one block of each level (the
    outermost holds all ``size``) and the fan-out on each level. Both have
    ``len(level_sizes) + 1`` entries; the product of ``g`` is ``size``."""
    counts, fanouts = [], []
    block, inside = 1.0, 1.0
    for level_size in level_sizes:
        block = block * level_size
        # Members 0, s, 2s, ... at device positions <= P - 1: floor((P - 1/2)/s) + 1 of them (the
        # half-device margin keeps whole-number sizes and strides off the step, for float noise
        # and finite differences alike).
        c = jnp.clip(jnp.floor((block - 0.5) / stride) + 1.0, 1.0, size)
        counts.append(c)
        fanouts.append(c / inside)
        inside = c
    counts.append(size * jnp.ones_like(inside))
    fanouts.append(size / inside)
    return tuple(counts), tuple(fanouts)


def collective_time(kind: str, payload, size, stride, system: System, eff: Efficiency):
    """Seconds for one collective of static ``kind`` over ``size`` devices spaced ``stride`` apart."""
    if kind not in ops.COLLECTIVES:
        raise ValueError(f"collective kind must be one of {ops.COLLECTIVES} (got {kind!r})")
    links = system.links
    counts, fanouts = placement(size, stride, system.level_sizes)
    factors = (eff.scale_up,) + (eff.scale_out,) * (len(links) - 1)
    latency, transfer = 0.0, 0.0
    startup = jnp.zeros_like(payload)
    reached = 1.0  # members inside one block of the previous level
    shrink = 1.0  # prod_{j<i} g_j
    pairs = jnp.where(size > 1.0, size - 1.0, 1.0)
    for link, factor, c, g in zip(links, factors, counts, fanouts):
        bandwidth = link.bandwidth_Bps * link.efficiency * factor
        if kind == ops.ALL_REDUCE:
            steps, share = 2.0 * (g - 1.0), 2.0 * (g - 1.0) / g * (payload / shrink)
        elif kind in (ops.ALL_GATHER, ops.REDUCE_SCATTER):
            steps, share = g - 1.0, (g - 1.0) / g * (payload / shrink)
        elif kind == ops.ALL_TO_ALL:
            steps, share = g - 1.0, (c - reached) / size * payload
        else:  # send/recv: the pair's members separate on exactly one level
            weight = (c - reached) / pairs
            steps, share = weight, weight * payload
        latency = latency + steps * link.link_latency_s
        transfer = transfer + share / bandwidth
        startup = jnp.where(g > 1.0, link.collective_latency_s, startup)
        reached, shrink = c, shrink * g
    time = startup + latency + transfer
    if eff.collectives is not None:
        # The fitted model was measured inside one NVLink domain; a group leaving the scale-up
        # domain keeps the hierarchical alpha-beta time above.
        up = system.scale_up
        measured = eff.collectives.time_s(kind, payload, size, up.bandwidth_Bps, up.link_latency_s,
                                          up.collective_latency_s)
        time = jnp.where(counts[0] >= size, measured, time)
    return jnp.where(size > 1.0, time, 0.0)
