"""Op-table oracles: hand-computed FLOPs and bytes, attention counting, expert touching."""

import itertools

import jax
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel import ops
from jaxmodel.architectures import Architecture

TINY = dict(d_model=64, n_layers=3, vocab_size=1000, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96)


def _rows(table):
    return {row.name: i for i, row in enumerate(table.rows)}


def _col(table, name, column):
    return float(getattr(table, column)[_rows(table)[name]])


def test_prefill_rows_by_hand():
    arch = Architecture(**TINY)
    wl = jm.Workload(batch=2, input_tokens=8, output_tokens=4, dtype="bf16")
    t = ops.build_op_table(arch, wl, ops.prefill_step(wl, wl.batch))
    tokens = 2 * 8
    # QKV: [16 x 64] @ [64 x (4 + 2*2)*16]
    assert _col(t, "qkv_proj", "flops") == 2 * tokens * 64 * 128
    assert _col(t, "qkv_proj", "weight_bytes") == 64 * 128 * 2
    assert _col(t, "qkv_proj", "act_bytes") == (tokens * 64 + tokens * 128) * 2
    # Causal attention: 8*9/2 query-key pairs per head per sequence, QK and PV matmuls.
    pairs = 2 * 36
    assert _col(t, "attention_prompt", "flops") == 2 * 4 * pairs * (16 + 16)
    # K and V (2 sequences x 8 tokens x 2 KV heads x 16 wide, bf16) read once and written once.
    k_or_v = 2 * 8 * 2 * 16 * 2
    assert _col(t, "attention_prompt", "kv_bytes") == 2 * k_or_v + 2 * k_or_v
    assert _col(t, "ffn_up", "flops") == 2 * tokens * 2 * 96 * 64  # gated: up and gate
    assert _col(t, "ffn_down", "flops") == 2 * tokens * 96 * 64
    # Prefill logits only for each sequence's last token (vLLM).
    assert _col(t, "lm_head", "flops") == 2 * 2 * 1000 * 64
    assert _col(t, "attention_decode", "flops") == 0.0
    assert float(t.repeat[_rows(t)["qkv_proj"]]) == 3


def test_prefill_flops_conserve_parameters():
    """At TP 1, matmul FLOPs = 2 x (parameters touched) x tokens + attention."""
    with jax.enable_x64(True):
        arch = jm.load_model("llama-3-8b")
        wl = jm.Workload(batch=3, input_tokens=100, output_tokens=1, lm_head_tokens="all")
        t = ops.build_op_table(arch, wl, ops.prefill_step(wl, wl.batch))
        total = sum(float(f) * float(r) for f, r in zip(t.flops, t.repeat))
        p = jm.parameter_breakdown(arch)
        linear = 32 * (float(p["attention_per_layer"]) + float(p["dense_ffn_per_layer"])) + float(p["lm_head"])
        attention = 32 * 2 * 32 * 3 * (100 * 101 / 2) * (128 + 128)
        assert total == pytest.approx(2 * linear * 300 + attention, rel=1e-12)


def test_decode_reads_every_weight_once():
    with jax.enable_x64(True):
        arch = jm.load_model("llama-3-8b")
        wl = jm.Workload(batch=1, input_tokens=10, output_tokens=2)
        t = ops.build_op_table(arch, wl, ops.decode_step(wl, 1.0, 10.0))
        weights = sum(float(b) * float(r) for b, r in zip(t.weight_bytes, t.repeat))
        p = jm.parameter_breakdown(arch)
        # Every matrix is streamed once (norm vectors are tiny and ride in the activations);
        # the embedding contributes one row.
        matrices = 32 * (float(p["attention_per_layer"]) + float(p["dense_ffn_per_layer"])) + float(p["lm_head"])
        assert weights == pytest.approx(2 * (matrices + 4096), rel=1e-12)


@pytest.mark.parametrize("new,past,window", list(itertools.product([1, 3, 8], [0, 2, 9], [0, 4, 50])))
def test_attention_pairs_brute_force(new, past, window):
    expected = 0
    for pos in range(past + 1, past + new + 1):
        expected += min(pos, window) if window else pos
    got = float(ops.attention_pairs(float(new), float(past), float(window)))
    assert got == expected
    keys = float(ops.attention_keys(float(new), float(past), float(window)))
    first_key = max(1, past + 1 - window + 1) if window else 1
    assert keys == past + new - first_key + 1


def test_expected_experts_touched():
    assert float(ops.expected_experts_touched(1.0, 8.0, 2.0)) == pytest.approx(2.0)
    # Exact small case: 2 tokens each choosing 2 of 4 experts uniformly.
    rng = np.random.default_rng(0)
    draws = [len(set(rng.choice(4, 2, replace=False)) | set(rng.choice(4, 2, replace=False))) for _ in range(20000)]
    assert float(ops.expected_experts_touched(2.0, 4.0, 2.0)) == pytest.approx(np.mean(draws), rel=0.01)
    assert float(ops.expected_experts_touched(1e4, 256.0, 8.0)) == pytest.approx(256.0)


def test_moe_decode_at_large_batch_streams_most_experts():
    arch = jm.load_model("mixtral-8x7b")

    def expert_bytes(batch):
        wl = jm.Workload(batch=batch, input_tokens=512, output_tokens=2)
        t = ops.build_op_table(arch, wl, ops.decode_step(wl, float(batch), 512.0))
        return _col(t, "experts_up", "weight_bytes") + _col(t, "experts_down", "weight_bytes")

    all_experts = 8 * 3 * 4096 * 14336 * 2
    assert expert_bytes(1) == pytest.approx(all_experts * 2 / 8)  # top-2 of 8
    assert expert_bytes(64) == pytest.approx(all_experts, rel=1e-6)


def test_unfused_attention_moves_more_bytes_than_flash():
    arch = jm.load_model("llama-3-8b")
    flash = jm.Workload(batch=4, input_tokens=2048)
    unfused = flash.replace(attention_impl="unfused")
    tf = ops.build_op_table(arch, flash, ops.prefill_step(flash, 4.0))
    tu = ops.build_op_table(arch, unfused, ops.prefill_step(unfused, 4.0))
    fused_bytes = float(sum(tf.act_bytes[i] + tf.kv_bytes[i] for i in range(len(tf.rows)) if "attention" in tf.rows[i].name))
    unfused_bytes = float(sum(tu.act_bytes[i] + tu.kv_bytes[i] for i in range(len(tu.rows)) if "attention" in tu.rows[i].name))
    scores = 4 * 32 * 2048 * 2048 * 2  # batch x heads x S x S x bf16
    assert unfused_bytes > fused_bytes + 3 * scores


def test_sliding_window_caps_decode_kv_reads():
    arch = jm.load_model("llama-3-8b").replace(sliding_window=4096, n_sliding_layers=32)
    wl = jm.Workload(batch=1, input_tokens=100_000)
    t = ops.build_op_table(arch, wl, ops.decode_step(wl, 1.0, 100_000.0))
    kv_read = _col(t, "attention_decode_window", "kv_bytes")
    assert kv_read == pytest.approx((4096 * 2 * 8 * 128 + 2 * 8 * 128) * 2)
    assert float(t.repeat[_rows(t)["attention_decode"]]) == 0


def test_tensor_parallel_splits_heads_and_replicates_kv_when_short():
    arch = jm.load_model("llama-3-70b")  # 64 heads, 8 KV heads
    wl = jm.Workload(batch=1, input_tokens=16, tp=16)
    t = ops.build_op_table(arch, wl, ops.prefill_step(wl, 1.0))
    # 64/16 = 4 query heads, and 8 KV heads over 16 ranks -> one (replicated) KV head each.
    assert _col(t, "qkv_proj", "n") == (4 + 2 * 1) * 128
    assert _col(t, "attn_all_reduce", "group_size") == 16


def test_sequence_parallel_splits_all_reduce_and_norms():
    from jaxmodel.perf.comm import collective_time

    arch = jm.load_model("llama-3-70b")
    wl = jm.Workload(batch=2, input_tokens=1024, tp=8)
    sp = wl.replace(sequence_parallel=True)
    t = ops.build_op_table(arch, wl, ops.prefill_step(wl, 2.0))
    s = ops.build_op_table(arch, sp, ops.prefill_step(sp, 2.0))
    assert "attn_all_reduce" in _rows(t) and "attn_all_reduce" not in _rows(s)
    assert _col(s, "norm_residual", "act_bytes") == pytest.approx(_col(t, "norm_residual", "act_bytes") / 8)
    # Ring reduce-scatter + all-gather move the same bytes as one all-reduce, with one more start-up.
    h100 = jm.load_hardware("h100-sxm")
    payload = 2 * 1024 * 8192 * 2.0
    ar = float(collective_time(ops.ALL_REDUCE, payload, 8.0, 1.0, h100, jm.ideal()))
    rs_ag = sum(float(collective_time(k, payload, 8.0, 1.0, h100, jm.ideal()))
                for k in (ops.REDUCE_SCATTER, ops.ALL_GATHER))
    assert rs_ag == pytest.approx(ar + 4.77e-6, rel=1e-5)


def test_collective_formulas_by_hand():
    from jaxmodel.perf.comm import collective_time

    h100 = jm.load_hardware("h100-sxm")
    eff = jm.ideal()
    t0, alpha, bw = 4.77e-6, 0.771e-6, 450e9
    S = 64e6
    assert float(collective_time(ops.ALL_REDUCE, S, 4.0, 1.0, h100, eff)) == pytest.approx(
        t0 + 6 * alpha + 2 * 3 / 4 * S / bw, rel=1e-5)
    assert float(collective_time(ops.ALL_TO_ALL, S, 8.0, 1.0, h100, eff)) == pytest.approx(
        t0 + 7 * alpha + 7 / 8 * S / bw, rel=1e-5)
    # 16 ranks span two 8-GPU nodes: hierarchical, a ring of 8 on NVLink over the whole buffer,
    # then a ring of 2 on the 50 GB/s scale-out links over the 1/8 each GPU holds after it.
    assert float(collective_time(ops.ALL_REDUCE, S, 16.0, 1.0, h100, eff)) == pytest.approx(
        t0 + 14 * alpha + 2 * 7 / 8 * S / bw + 2 * 10e-6 + 2 * 1 / 2 * (S / 8) / 50e9, rel=1e-5)
    assert float(collective_time(ops.ALL_REDUCE, S, 1.0, 1.0, h100, eff)) == 0.0
    half = jm.Efficiency(scale_up=0.5)
    assert float(collective_time(ops.SEND_RECV, S, 2.0, 1.0, h100, half)) == pytest.approx(
        t0 + alpha + S / (0.5 * bw), rel=1e-5)
