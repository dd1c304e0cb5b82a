"""Speculative decoding: the expected-tokens formula, reduction to plain decoding, hand
oracles for time and memory, GenZ's qualitative findings, vectorization and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel import inference, memory
from jaxmodel import speculative as sp
from jaxmodel.architectures import total_parameters


@pytest.fixture(scope="module")
def models():
    return jm.load_model("llama-3-70b"), jm.load_model("llama-3-8b")


@pytest.fixture(scope="module")
def b200():
    return jm.load_hardware("b200")


def genz_accepted(n_drafted, g):
    """GenZ Sec. IV-B's E[T] written out term by term, for n_drafted proposals."""
    return sum(i * g**i * (1 - g) for i in range(1, n_drafted)) + n_drafted * g**n_drafted


@pytest.mark.parametrize("n", [1, 2, 4, 5, 16])
@pytest.mark.parametrize("g", [0.0, 0.3, 0.7, 0.9, 1.0])
def test_tokens_per_pass_is_one_plus_genz_accepted_proposals(n, g):
    expected = 1.0 + genz_accepted(n - 1, g)
    assert float(sp.expected_tokens_per_pass(jnp.float32(n), jnp.float32(g))) == pytest.approx(expected, rel=1e-5)


def test_tokens_per_pass_gradient_is_finite_up_to_full_acceptance():
    grad = jax.grad(lambda g: sp.expected_tokens_per_pass(5.0, g))
    for g in (0.0, 0.5, 0.999999, 1.0):
        assert np.isfinite(float(grad(g))) and float(grad(g)) > 0
    # d/dγ of 1 + γ + γ² + γ³ + γ⁴ at γ = 0.5 by hand: 1 + 1 + 0.75 + 0.5 = 3.25
    assert float(grad(0.5)) == pytest.approx(3.25, rel=1e-5)


@pytest.mark.parametrize("g", [0.0, 0.8])
def test_one_token_per_pass_is_plain_decoding(models, b200, g):
    target, draft = models
    wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=256, tp=2)
    r = sp.evaluate(target, wl, b200, jm.ideal(), sp.SpeculativeDecoding(draft, 1, g))
    plain = jm.evaluate(target, wl, b200, jm.ideal())
    assert float(r["tpot_s"]) == pytest.approx(float(plain["tpot_s"]), rel=1e-6)
    assert float(r["e2e_latency_s"]) == pytest.approx(float(plain["e2e_latency_s"]), rel=1e-6)
    assert float(r["speedup"]) == pytest.approx(1.0, rel=1e-6)
    # Memory still holds the draft model and its cache (it is loaded, just unused at N = 1).
    extra = float(r["memory_bytes"] - plain["memory_bytes"])
    assert extra == pytest.approx(float(r["draft_weight_bytes"] + r["draft_kv_cache_bytes"]), rel=1e-6)


def test_round_time_and_memory_by_hand(models, b200):
    target, draft = models
    wl = jm.Workload(batch=4, input_tokens=2048, output_tokens=512, tp=2)
    n, g = 5.0, 0.8
    r = sp.evaluate(target, wl, b200, jm.ideal(), sp.SpeculativeDecoding(draft, n, g))
    context = 2048 + 256
    draft_step, _ = inference.decode(draft, wl, b200, jm.ideal(), context=context)
    assert float(r["draft_step_s"]) == pytest.approx(float(draft_step), rel=1e-6)
    per_pass = (1 - g**5) / (1 - g)
    assert float(r["tpot_s"]) == pytest.approx((4 * float(draft_step) + float(r["verify_s"])) / per_pass, rel=1e-5)
    # Batch 4 is memory-bound: scoring 5 positions costs about one decode step (weights stream
    # once either way), a little more for the extra activations and attention.
    assert 1.0 <= float(r["verify_s"]) / float(r["plain_tpot_s"]) < 1.05
    # Draft weights per device: its parameter count x 2 bytes / TP 2 (the embedding is split too).
    assert float(r["draft_weight_bytes"]) == pytest.approx(float(memory.weight_bytes_per_device(draft, wl)))
    assert float(r["draft_weight_bytes"]) == pytest.approx(float(total_parameters(draft)) * 2 / 2, rel=0.01)
    # Draft KV: 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes per token, over TP 2, for 4 x 2560 tokens.
    assert float(r["draft_kv_cache_bytes"]) == pytest.approx(32 * 8 * 128 * 2 * 2 / 2 * 4 * 2560, rel=1e-6)


def test_genz_fig11_findings(models, b200):
    """GenZ Fig. 11 (Llama-3.1-70B with an 8B draft, GB200-like NPU, TP 2): more parallel tokens
    cost more draft steps, so at γ = 0.7 N = 16 is slower than N = 4; at fixed N, throughput
    rises with γ; N = 16 at γ = 0.7 loses to plain decoding at a decode batch where the draft
    and verification work no longer hide behind the weight stream."""
    target, draft = models
    wl = jm.Workload(batch=32, input_tokens=1024, output_tokens=1024, tp=2)

    def speedup(n, g):
        return float(sp.evaluate(target, wl, b200, jm.ideal(), sp.SpeculativeDecoding(draft, n, g))["speedup"])

    assert speedup(16, 0.7) < speedup(4, 0.7)
    assert speedup(4, 0.5) < speedup(4, 0.7) < speedup(4, 0.9)
    assert speedup(16, 0.7) < 1.0 < speedup(4, 0.7)


def test_vectorizes_over_tokens_and_acceptance_and_differentiates(models, b200):
    target, draft = models
    wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=256, tp=2)
    ns, gs = jnp.array([1.0, 3.0, 5.0, 9.0]), jnp.array([0.5, 0.6, 0.8, 0.95])

    def tpot(n, g):
        return sp.evaluate(target, wl, b200, jm.ideal(), sp.SpeculativeDecoding(draft, n, g))["tpot_s"]

    batched = jax.jit(jax.vmap(tpot))(ns, gs)
    for i in (1, 3):
        assert float(batched[i]) == pytest.approx(float(tpot(ns[i], gs[i])), rel=1e-5)
    assert float(jax.grad(tpot, argnums=1)(5.0, 0.8)) < 0  # more acceptance, faster tokens


def test_bad_settings_and_a_draft_that_cannot_split(models, b200):
    target, draft = models
    with pytest.raises(ValueError, match="SpeculativeDecoding.acceptance"):
        sp.SpeculativeDecoding(draft, 4, 1.5)
    with pytest.raises(ValueError, match="SpeculativeDecoding.tokens"):
        sp.SpeculativeDecoding(draft, 0, 0.5)
    # A draft with 12 heads cannot be split 8 ways when the target can: flagged, not raised.
    small = jm.Architecture(d_model=1536, n_layers=4, vocab_size=32000, n_heads=12, n_kv_heads=4, d_ff=4096)
    wl = jm.Workload(batch=1, input_tokens=128, output_tokens=16, tp=8)
    r = sp.evaluate(target, wl, b200, jm.ideal(), sp.SpeculativeDecoding(small, 3, 0.7))
    assert int(r["status"]) & jm.status.INVALID_TP
    assert all(np.isfinite(float(r[k])) for k in ("tpot_s", "memory_bytes"))
