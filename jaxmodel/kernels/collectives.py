"""Measured collectives inside one NVLink domain: NCCL's protocols and vLLM's custom all-reduce.

Payload conventions are the engine's (:mod:`jaxmodel.perf.comm`): all-reduce ``S`` = the reduced
buffer, all-gather ``S`` = the gathered buffer, reduce-scatter ``S`` = the input buffer,
all-to-all ``S`` = the bytes one device sends (its own chunk included), send/recv ``S`` = the
bytes sent. ``n`` devices, per-direction per-device bandwidth ``B``, the level's per-step link
latency ``α`` and fixed start-up ``t0`` come from the hardware preset; every parameter below
scales one of them, so a set fitted on one GPU predicts another from its datasheet.

**NCCL.** A ring collective runs ``phases`` (2 for all-reduce, else 1) of ``n`` steps on
chunks of ``S/n``: ``n - 1`` steps cross a link and one handles the device's own chunk locally
(copy or reduce, costing ``local_step`` link steps), so each device's link time is

    c = phases · ((n - 1) + local_step) / n · S / (eta · eta_kind · B)
    L = startup · t0 + phases · (n - 1) · step · α                  (ring steps)

NCCL picks, per call, the protocol its cost model says is fastest. Small and medium messages
go by LL/LL128 (flag-carrying stores: short latency, each byte costs ``1 + ll_slowdown`` times
Simple's); large ones by Simple (full bandwidth after an extra start-up
``simple_startup · t0``, the pipeline fill of its large chunks). The time is a smooth minimum
of the two candidates:

    t = softmin_q(L + c · (1 + ll_slowdown),  L + simple_startup · t0 + c)
    softmin_q(a, b) = (a^-q + b^-q)^(-1/q),  q = SOFTMIN_POWER

so the achieved bandwidth S / (t - L) rises along a saturating curve in bytes and no jump is
needed. All-to-all is NCCL's grouped point-to-point (no LL128, peers served concurrently), so it
has its own latency steps (``p2p_step``), LL slowdown and Simple start-up; send/recv uses the
same point-to-point parameters with one peer and ``S`` on the link.

**vLLM custom all-reduce** (``csrc/custom_all_reduce.cuh``, used by vLLM's tensor parallelism
when the group has 2, 4, 6 or 8 GPUs inside one NVLink domain and ``S`` is below
``custom_max_bytes``, 8 MiB by default; larger messages go to NCCL). The one-shot kernel has
every GPU read the whole buffer from each of its ``n - 1`` peers; the two-shot kernel
reduce-scatters then all-gathers (``2(n - 1)/n · S`` per device) behind a second barrier.
vLLM takes one-shot when ``n == 2``, or ``n <= 4`` and ``S < 512 KiB``, or ``S < 256 KiB``:

    one-shot  t = custom_launch_s + (n - 1) · custom_peer · α + (n - 1) · S / (custom_eta_one_shot · B)
    two-shot  t = custom_launch_s + (n - 1) · custom_peer · α + custom_stage_s
                  + 2 (n - 1) / n · S / (custom_eta_two_shot · B)

A group of one device costs nothing.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")

#: Sharpness of the soft minimum over NCCL's protocols. NCCL switches protocol, channel count and
#: chunk size in several steps across a factor 4-8 of message size, so the measured envelope is
#: soft; with q = 4 two equal candidates blend to 2^(-1/4) = 0.84 of either. Fitting q as well
#: leaves it unidentified (it trades against the start-up latencies), so it is fixed
#: (:func:`_softmin` takes the 1/4 power as two square roots).
SOFTMIN_POWER = 4

#: vLLM's CustomAllreduce limits (``vllm/distributed/device_communicators/custom_all_reduce.py``:
#: ``max_size = 8192 * 1024``, supported world sizes 2, 4, 6, 8; one-/two-shot switch in
#: ``csrc/custom_all_reduce.cuh``).
VLLM_CUSTOM_MAX_BYTES = 8.0 * 1024 * 1024
VLLM_ONE_SHOT_BYTES_4 = 512.0 * 1024  # one-shot below this for n <= 4
VLLM_ONE_SHOT_BYTES_8 = 256.0 * 1024  # one-shot below this for n <= 8

#: Fit starting values, near the A100/H100 fits (benchmarks/calibrate_collectives.py).
START: dict[str, float] = {
    "startup": 1.2, "step": 0.95, "eta": 0.85, "local_step": 0.35, "ll_slowdown": 1.8, "simple_startup": 3.8,
    "eta_all_gather": 0.85, "eta_reduce_scatter": 0.9, "eta_all_to_all": 0.85,
    "p2p_step": 0.6, "p2p_ll_slowdown": 5.0, "p2p_simple_startup": 2.0,
    "custom_launch_s": 4.5e-6, "custom_peer": 0.15, "custom_stage_s": 7e-6,
    "custom_eta_one_shot": 0.6, "custom_eta_two_shot": 0.75,
}

_NAME = "CollectiveModel"


def _softmin(a, b):
    """(a^-4 + b^-4)^(-1/4) for a, b >= 0, scaled by the smaller so nothing overflows in float32;
    0 where both are 0, with finite gradients there (double where). Integer powers and square
    roots rather than a general ``pow``, whose gradient compiles several times slower."""
    m = jnp.minimum(a, b)
    ok = m > 0
    m_safe = jnp.where(ok, m, 1.0)
    ra = jnp.where(ok, a, 1.0) / m_safe
    rb = jnp.where(ok, b, 1.0) / m_safe
    return jnp.where(ok, m_safe * jax.lax.rsqrt(jnp.sqrt(ra ** -SOFTMIN_POWER + rb ** -SOFTMIN_POWER)), 0.0)


class CollectiveModel(eqx.Module):
    """Time of a collective over ``n`` devices of one network level (see the module docstring).

    NCCL (dimensionless unless stated):
        startup: fixed start-up (launch and group synchronization), in units of the level's
            ``startup_s``.
        step: latency of one ring step, in units of the level's ``link_latency_s``.
        eta: all-reduce bus efficiency of the Simple protocol, fraction of the per-direction
            bandwidth ``B``.
        local_step: cost of each phase's local step (the device's own chunk copied or
            reduced in memory), in link steps.
        ll_slowdown: extra per-byte cost of the low-latency protocols (LL/LL128) over Simple.
        simple_startup: Simple protocol's extra start-up (pipeline fill), units of ``startup_s``.
        eta_all_gather, eta_reduce_scatter, eta_all_to_all: bus efficiency of that collective
            relative to all-reduce's ``eta`` (all-to-all and send/recv share the last).
        p2p_step: all-to-all latency per peer relative to a ring step (peers run concurrently).
        p2p_ll_slowdown: extra per-byte cost of point-to-point LL over Simple.
        p2p_simple_startup: point-to-point Simple extra start-up, units of ``startup_s``.
    vLLM custom all-reduce:
        custom_launch_s: kernel launch inside a CUDA graph plus one cross-GPU flag barrier (s).
        custom_peer: extra latency per peer, units of ``link_latency_s``.
        custom_stage_s: two-shot's second stage and barrier (s).
        custom_eta_one_shot, custom_eta_two_shot: fraction of ``B`` each kernel reads peers at.
    Static:
        custom_allreduce: time all-reduce as vLLM does (custom kernel where it applies, NCCL
            elsewhere); False for plain NCCL (e.g. another framework, or vLLM with
            ``disable_custom_all_reduce``).
        custom_max_bytes: vLLM's custom all-reduce size limit (bytes).
    """

    startup: jax.Array
    step: jax.Array
    eta: jax.Array
    local_step: jax.Array
    ll_slowdown: jax.Array
    simple_startup: jax.Array
    eta_all_gather: jax.Array
    eta_reduce_scatter: jax.Array
    eta_all_to_all: jax.Array
    p2p_step: jax.Array
    p2p_ll_slowdown: jax.Array
    p2p_simple_startup: jax.Array
    custom_launch_s: jax.Array
    custom_peer: jax.Array
    custom_stage_s: jax.Array
    custom_eta_one_shot: jax.Array
    custom_eta_two_shot: jax.Array
    custom_allreduce: bool = eqx.field(static=True)
    custom_max_bytes: float = eqx.field(static=True)

    def __init__(self, startup, step, eta, local_step, ll_slowdown, simple_startup, eta_all_gather,
                 eta_reduce_scatter, eta_all_to_all, p2p_step, p2p_ll_slowdown, p2p_simple_startup,
                 custom_launch_s, custom_peer, custom_stage_s, custom_eta_one_shot, custom_eta_two_shot,
                 custom_allreduce: bool = True, custom_max_bytes: float = VLLM_CUSTOM_MAX_BYTES):
        values = dict(startup=startup, step=step, eta=eta, local_step=local_step, ll_slowdown=ll_slowdown,
                      simple_startup=simple_startup, eta_all_gather=eta_all_gather,
                      eta_reduce_scatter=eta_reduce_scatter, eta_all_to_all=eta_all_to_all, p2p_step=p2p_step,
                      p2p_ll_slowdown=p2p_ll_slowdown, p2p_simple_startup=p2p_simple_startup,
                      custom_launch_s=custom_launch_s, custom_peer=custom_peer, custom_stage_s=custom_stage_s,
                      custom_eta_one_shot=custom_eta_one_shot, custom_eta_two_shot=custom_eta_two_shot)
        for name, value in values.items():
            value = _checks.as_float(value, _NAME, name)
            _checks.positive(value, _NAME, name)
            setattr(self, name, value)
        if not isinstance(custom_allreduce, bool):
            raise ValueError(f"{_NAME}.custom_allreduce must be True or False (got {custom_allreduce!r})")
        self.custom_allreduce = custom_allreduce
        try:
            custom_max_bytes = float(custom_max_bytes)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{_NAME}.custom_max_bytes must be a number of bytes >= 0 "
                             f"(got {custom_max_bytes!r})") from exc
        if not custom_max_bytes >= 0.0:
            raise ValueError(f"{_NAME}.custom_max_bytes must be >= 0 (got {custom_max_bytes!r})")
        self.custom_max_bytes = custom_max_bytes

    # ------------------------------------------------------------------ NCCL

    def nccl_time_s(self, kind: str, payload_bytes, size, bandwidth_Bps, link_latency_s, startup_s):
        """NCCL's time for ``kind`` (groups of one device included: the caller masks them)."""
        n, s = size, payload_bytes
        if kind == "send_recv":
            # One peer, S on the link, no local chunk.
            steps = self.p2p_step
            link = s / (self.eta * self.eta_all_to_all * bandwidth_Bps)
        else:
            phases, kind_eta = {"all_reduce": (2.0, 1.0), "all_gather": (1.0, self.eta_all_gather),
                                "reduce_scatter": (1.0, self.eta_reduce_scatter),
                                "all_to_all": (1.0, self.eta_all_to_all)}[kind]
            steps = phases * (n - 1.0) * (self.p2p_step if kind == "all_to_all" else 1.0)
            link = phases * (n - 1.0 + self.local_step) / n * s / (self.eta * kind_eta * bandwidth_Bps)
        p2p = kind in ("all_to_all", "send_recv")
        slowdown = self.p2p_ll_slowdown if p2p else self.ll_slowdown
        extra = self.p2p_simple_startup if p2p else self.simple_startup
        latency = self.startup * startup_s + steps * self.step * link_latency_s
        low_latency = latency + link * (1.0 + slowdown)
        simple = latency + extra * startup_s + link
        return _softmin(low_latency, simple)

    # ------------------------------------------------------------------ vLLM custom all-reduce

    def custom_time_s(self, payload_bytes, size, bandwidth_Bps, link_latency_s):
        """vLLM's custom all-reduce kernel time (one-shot or two-shot by vLLM's rule)."""
        n, s = size, payload_bytes
        one_shot = (n <= 2.0) | ((n <= 4.0) & (s < VLLM_ONE_SHOT_BYTES_4)) | (s < VLLM_ONE_SHOT_BYTES_8)
        latency = self.custom_launch_s + (n - 1.0) * self.custom_peer * link_latency_s
        t_one = latency + (n - 1.0) * s / (self.custom_eta_one_shot * bandwidth_Bps)
        t_two = latency + self.custom_stage_s + 2.0 * (n - 1.0) / n * s / (self.custom_eta_two_shot * bandwidth_Bps)
        return jnp.where(one_shot, t_one, t_two)

    def custom_applies(self, payload_bytes, size, custom_allowed=True):
        """Where vLLM would run its custom kernel: 2, 4, 6 or 8 GPUs, below the size limit."""
        if not self.custom_allreduce:
            return jnp.zeros(jnp.broadcast_shapes(jnp.shape(payload_bytes), jnp.shape(size)), bool)
        n = size
        supported = (n == 2.0) | (n == 4.0) | (n == 6.0) | (n == 8.0)
        return supported & (payload_bytes < self.custom_max_bytes) & jnp.asarray(custom_allowed, bool)

    # ------------------------------------------------------------------ engine entry point

    def time_s(self, kind: str, payload_bytes, size, bandwidth_Bps, link_latency_s, startup_s,
               custom_allowed=True):
        """Seconds for one collective of static ``kind`` over ``size`` devices of one level.

        ``custom_allowed`` (bool or array) is False where the framework's custom all-reduce cannot
        run, e.g. a group spanning nodes; it only matters for all-reduce with ``custom_allreduce``.
        """
        _checks.one_of(kind, KINDS, _NAME, "time_s kind")
        _checks.non_negative(payload_bytes, _NAME, "time_s payload_bytes")
        _checks.check_range(size, _NAME, "time_s size", low=1.0)
        _checks.positive(bandwidth_Bps, _NAME, "time_s bandwidth_Bps")
        _checks.non_negative(link_latency_s, _NAME, "time_s link_latency_s")
        _checks.non_negative(startup_s, _NAME, "time_s startup_s")
        payload_bytes, size, bandwidth_Bps, link_latency_s, startup_s = (
            jnp.asarray(x, dtype=jnp.result_type(float)) if not isinstance(x, jax.Array) else x
            for x in (payload_bytes, size, bandwidth_Bps, link_latency_s, startup_s))
        t = self.nccl_time_s(kind, payload_bytes, size, bandwidth_Bps, link_latency_s, startup_s)
        if kind == "all_reduce" and self.custom_allreduce:
            custom = self.custom_time_s(payload_bytes, size, bandwidth_Bps, link_latency_s)
            t = jnp.where(self.custom_applies(payload_bytes, size, custom_allowed), custom, t)
        return jnp.where(size > 1.0, t, 0.0)
