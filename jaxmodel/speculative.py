"""Speculative decoding: a small draft model proposes tokens, the target model checks them.

One *round* per sequence: the draft model runs ``N - 1`` decode steps, proposing ``N - 1``
tokens; then the target model scores all ``N`` positions (the last accepted token and the
``N - 1`` proposals) in one pass, keeps the longest accepted prefix and adds a token of its
own. ``N`` is GenZ's "number of parallel decode tokens" (GenZ Fig. 10, ``N = 5``). With each
proposal accepted independently with probability ``γ`` the tokens gained per round are

    E = 1 + Σ_{i=1}^{N-2} i·γ^i·(1-γ) + (N-1)·γ^(N-1) = (1 - γ^N) / (1 - γ)

(Leviathan et al. 2023, eq. 1). The middle terms are GenZ's ``E[T]`` (its Section IV-B) with
``N - 1`` drafted tokens: the expected number of accepted proposals; the leading 1 is the
target's own token, which GenZ's expression leaves out — without it, a round at ``γ = 0``
would produce nothing instead of the one token plain decoding produces.

Time per output token is ``((N - 1)·draft step + verification pass) / E``. The draft runs
on the same devices with the same parallelism as the target; the verification pass is a
forward step of ``batch`` sequences with ``N`` new tokens each after the cached context. At
``N = 1`` there is no draft step and the pass is an ordinary decode step, so the model is
plain decoding exactly (with ideal efficiencies; fitted kernel sets time a multi-token pass
with the prompt-attention kernel model). Memory adds the draft's weights and KV cache and
the target's KV for the ``N - 1`` speculative positions.

All quantities are leaves, so ``N`` and ``γ`` sweep, vectorize and differentiate like any
other parameter (``N`` as a real number interpolates between whole draft lengths).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _checks, inference, memory, ops
from .architectures import Architecture
from .efficiency import Efficiency
from .hardware import System
from .workload import Workload


class SpeculativeDecoding(eqx.Module):
    """Draft model, tokens scored per target pass ``N`` (>= 1) and acceptance rate ``γ``."""

    draft: Architecture
    tokens: jax.Array
    acceptance: jax.Array

    def __init__(self, draft: Architecture, tokens=5, acceptance=0.8):
        o = "SpeculativeDecoding"
        self.draft = draft
        self.tokens = _checks.as_float(tokens, o, "tokens")
        self.acceptance = _checks.as_float(acceptance, o, "acceptance")
        _checks.check_range(self.tokens, o, "tokens", low=1.0)
        _checks.check_range(self.acceptance, o, "acceptance", low=0.0, high=1.0)


def expected_tokens_per_pass(tokens, acceptance):
    """``(1 - γ^N) / (1 - γ)``: tokens a round yields (``N`` at ``γ = 1``)."""
    gap = 1.0 - acceptance
    near_one = gap < 1e-6
    safe_gap = jnp.where(near_one, 1.0, gap)  # keeps the unused branch's gradient finite
    # Near γ = 1 the series is N - N(N-1)/2 · (1 - γ) to first order.
    return jnp.where(near_one, tokens - 0.5 * tokens * (tokens - 1.0) * gap,
                     (1.0 - acceptance ** tokens) / safe_gap)


def verify(arch: Architecture, wl: Workload, system: System, eff: Efficiency, tokens, context,
           sharpness=None, fidelity="roofline") -> tuple[jax.Array, inference.StepResult]:
    """The target's verification pass: every sequence scores ``tokens`` new positions after
    ``context`` cached ones (pipelined over micro-batches as a decode step is)."""
    m = inference.micro_batches(wl)
    per_batch = wl.batch / m
    zero = jnp.zeros_like(context)
    step = ops.Step(per_batch, tokens, context * wl.kv_keep, zero, zero, per_batch * tokens)
    r = inference.run_step(arch, wl, system, eff, step, sharpness, fidelity, groups=("prompt",))
    seconds = jnp.maximum(inference.single_pass_s(r), m * inference.stage_s(r, arch, wl))
    return seconds + eff.host_overhead_s(wl.batch), r


def evaluate(arch: Architecture, wl: Workload, system: System, eff: Efficiency, spec: SpeculativeDecoding,
             sharpness: float | None = None, fidelity: str = "roofline") -> dict[str, jax.Array]:
    """Metrics of one design point served with speculative decoding.

    Returns, beside the plain metrics of :func:`jaxmodel.inference.evaluate` (prefixed
    ``plain_`` for the ones speculation changes): ``tokens_per_pass``, ``draft_step_s``,
    ``verify_s``, ``round_s``, ``tpot_s`` (mean time between output tokens),
    ``decode_throughput_tok_s``, ``speedup`` (plain TPOT / speculative TPOT),
    ``e2e_latency_s``, ``throughput_tok_s``, ``throughput_per_device_tok_s``,
    ``draft_weight_bytes``, ``draft_kv_cache_bytes``, ``memory_bytes`` (target + draft),
    ``fits`` and ``status`` (also flags a TP degree the draft cannot use).
    """
    plain = inference.evaluate(arch, wl, system, eff, sharpness, False, fidelity)
    context = inference.decode_context(wl)
    draft_s, _ = inference.decode(spec.draft, wl, system, eff, sharpness, fidelity, context)
    verify_s, _ = verify(arch, wl, system, eff, spec.tokens, context, sharpness, fidelity)
    per_pass = expected_tokens_per_pass(spec.tokens, spec.acceptance)
    round_s = (spec.tokens - 1.0) * draft_s + verify_s
    tpot = round_s / per_pass

    full_context = wl.input_tokens + wl.output_tokens
    draft_weights = memory.weight_bytes_per_device(spec.draft, wl)
    draft_kv = memory.kv_cache_bytes_per_device(spec.draft, wl, wl.batch, full_context)
    speculative_kv = (memory.kv_cache_bytes_per_device(arch, wl, wl.batch, full_context + spec.tokens - 1.0)
                      - plain["kv_cache_bytes"])
    total = plain["memory_bytes"] + draft_weights + draft_kv + speculative_kv
    offload_fits = plain["offload_bytes"] <= plain["offload_capacity_bytes"]  # as in inference.memory_metrics
    fits = (total <= plain["usable_memory_bytes"]) & offload_fits
    draft_status = inference.status_code(spec.draft, wl, True)
    code = inference.status_code(arch, wl, fits, offload_fits) | draft_status

    e2e = plain["ttft_s"] + (wl.output_tokens - 1.0) * tpot
    out = {f"plain_{k}": plain[k] for k in ("tpot_s", "e2e_latency_s", "throughput_tok_s", "memory_bytes")}
    out.update({
        "ttft_s": plain["ttft_s"],
        "tokens_per_pass": per_pass,
        "draft_step_s": draft_s,
        "verify_s": verify_s,
        "round_s": round_s,
        "tpot_s": tpot,
        "decode_throughput_tok_s": wl.batch / tpot,
        "speedup": plain["tpot_s"] / tpot,
        "e2e_latency_s": e2e,
        "throughput_tok_s": wl.batch * wl.output_tokens / e2e,
        "throughput_per_device_tok_s": wl.batch * wl.output_tokens / e2e / wl.devices,
        "draft_weight_bytes": draft_weights,
        "draft_kv_cache_bytes": draft_kv,
        "memory_bytes": total,
        "usable_memory_bytes": plain["usable_memory_bytes"],
        "fits": fits,
        "status": code,
    })
    return out
