"""Memory per device: weights, KV cache, the fits flag and the largest batch."""

import jax
import pytest

import jaxmodel as jm
from jaxmodel import memory


def test_weights_at_tp1_are_all_parameters(llama70b):
    with jax.enable_x64(True):
        wl = jm.Workload()
        assert float(memory.weight_bytes_per_device(llama70b, wl)) == 2 * float(jm.total_parameters(llama70b))


def test_weights_shard_over_tp_pp_and_ep():
    arch = jm.load_model("llama-3-70b")
    full = float(memory.weight_bytes_per_device(arch, jm.Workload()))
    tp8 = float(memory.weight_bytes_per_device(arch, jm.Workload(tp=8)))
    pp2 = float(memory.weight_bytes_per_device(arch, jm.Workload(pp=2)))
    assert tp8 == pytest.approx(full / 8, rel=1e-3)  # only the norm vectors are replicated
    assert full / 2 < pp2 < full / 2 * 1.02  # half the layers plus the larger of embedding / head
    mix = jm.load_model("mixtral-8x7b")
    ep8 = float(memory.weight_bytes_per_device(mix, jm.Workload(ep=8)))
    experts = 32 * 8 * 3 * 4096 * 14336 * 2
    rest = 2 * float(jm.total_parameters(mix)) - experts
    assert ep8 == pytest.approx(rest + experts / 8, rel=1e-6)


def test_kv_cache_by_hand(llama70b):
    per_token = 2 * 80 * 8 * 128 * 2  # K and V, 80 layers, 8 KV heads of 128, bf16 = 327,680 B
    kv = memory.kv_cache_bytes_per_device(llama70b, jm.Workload(), 4.0, 1000.0)
    assert float(kv) == pytest.approx(4 * 1000 * per_token)
    # 8 KV heads over TP 8: one head each; over TP 16 the head is replicated, not split.
    for tp, share in ((8, 8), (16, 8)):
        got = memory.kv_cache_bytes_per_device(llama70b, jm.Workload(tp=tp), 4.0, 1000.0)
        assert float(got) == pytest.approx(4 * 1000 * per_token / share)
    mla = jm.load_model("deepseek-v3")
    # MLA caches one 512 + 64 latent per token per layer, replicated on every TP rank.
    for tp in (1, 8):
        got = memory.kv_cache_bytes_per_device(mla, jm.Workload(tp=tp), 1.0, 1000.0)
        assert float(got) == pytest.approx(1000 * 61 * 576 * 2)


def test_spad_kv_capacity_of_eight_h100s_for_bloom():
    """SPAD (G10 in REFERENCE.md): with 90% of memory for weights and KV cache, 8 H100s hold
    about 66K tokens of BLOOM-176B context (capacities in GiB, KV 2 x 70 x 14336 x 2 B/token)."""
    bloom, h100 = jm.load_model("bloom-176b"), jm.load_hardware("h100-sxm")
    wl = jm.Workload(tp=8)
    usable = 0.9 * float(h100.chip.mem_capacity_bytes)
    per_token = float(memory.kv_cache_bytes_per_device(bloom, wl, 1.0, 1.0))
    tokens = (usable - float(memory.weight_bytes_per_device(bloom, wl))) / per_token
    assert tokens == pytest.approx(66e3, rel=0.02)


def test_max_batch_is_the_fitting_boundary(llama70b, h100):
    wl = jm.Workload(batch=8, input_tokens=4096, output_tokens=512, tp=4)
    r = jm.predict(llama70b, wl, h100)
    top = int(r["max_batch"])
    assert jm.predict(llama70b, wl.replace(batch=top), h100)["fits"]
    assert not jm.predict(llama70b, wl.replace(batch=top + 1), h100)["fits"]


def test_memory_parts_add_up(llama70b, h100):
    r = jm.predict(llama70b, jm.Workload(batch=32, input_tokens=2048, output_tokens=256, tp=8), h100)
    assert r["memory_bytes"] == pytest.approx(r["weight_bytes"] + r["kv_cache_bytes"] + r["activation_bytes"])
    assert r["memory_headroom_bytes"] == pytest.approx(r["usable_memory_bytes"] - r["memory_bytes"], rel=1e-6)
    assert r["usable_memory_bytes"] == pytest.approx(0.9 * 80 * 2**30)


def test_sequence_parallel_shards_the_residual_stream(llama70b, h100):
    from jaxmodel import inference, ops

    wl = jm.Workload(batch=4, input_tokens=1024, output_tokens=64, tp=8)
    sp = wl.replace(sequence_parallel=True)
    tokens = 4 * 1024
    for w, share in ((wl, 1), (sp, 8)):
        _, r = inference.prefill(llama70b, w, h100, jm.ideal())
        largest = max(float(b) for row, b in zip(r.table.rows, r.table.act_bytes) if row.kind != ops.COLLECTIVE)
        got = float(memory.activation_bytes(r.table, llama70b, w, tokens))
        assert got == pytest.approx(largest + tokens / share * 8192 * 2)
