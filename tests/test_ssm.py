"""Selective state-space (Mamba-1, Mamba-2) and hybrid (Jamba) models, and cross-layer KV sharing:
hand-computed op-table oracles, context independence of decode, state memory, published parameter
counts, HF import, input errors, status bits, jit/vmap/grad."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel import inference, memory, ops, status
from jaxmodel.architectures import Architecture
from jaxmodel.hf_config import architecture_spec_from_hf

IDEAL = jm.load_calibration("ideal")


@pytest.fixture(scope="module")
def h100():
    return jm.load_hardware("h100-sxm").datasheet()


def _rows(table):
    """{row name: {column: float}} of an op table."""
    cols = ("repeat", "flops", "vector_flops", "weight_bytes", "act_bytes", "kv_bytes", "comm_bytes")
    return {r.name: {c: float(getattr(table, c)[i]) for c in cols} for i, r in enumerate(table.rows)}


def _leaves_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.allclose(x, y) for x, y in zip(la, lb))


# ---- tiny layers, counted by hand ---------------------------------------------------------
D, E, N, K, R = 8, 16, 4, 3, 2  # d_model, d_inner (expand 2), state, conv width, dt rank
TINY1 = Architecture(ssm="mamba1", d_model=D, n_layers=1, n_ssm_layers=1, vocab_size=16, n_heads=0,
                     n_kv_heads=0, head_dim=0, d_ff=0, norms_per_layer=1, ssm_d_state=N, ssm_d_conv=K,
                     ssm_expand=2, ssm_dt_rank=R)


def test_tiny_mamba1_prefill_rows():
    wl = jm.Workload(batch=2, input_tokens=5, output_tokens=3)  # bf16: 2 bytes everywhere
    t = _rows(ops.build_op_table(TINY1, wl, ops.prefill_step(wl, 2.0), groups=("prompt",)))
    T, b = 10.0, 2.0
    assert t["ssm_in_proj"]["flops"] == 2 * T * D * 2 * E
    assert t["ssm_in_proj"]["weight_bytes"] == D * 2 * E * b
    # Conv: K multiply-adds, bias and SiLU per output; reads/writes x; writes (K-1)·E state per sequence.
    assert t["ssm_conv"]["vector_flops"] == (2 * K + 5) * T * E
    assert t["ssm_conv"]["act_bytes"] == 2 * T * E * b
    assert t["ssm_conv"]["weight_bytes"] == E * (K + 1) * b
    assert t["ssm_conv"]["kv_bytes"] == 2 * (K - 1) * E * b
    assert t["ssm_x_proj"]["flops"] == 2 * T * E * (R + 2 * N)
    assert t["ssm_dt_proj"]["flops"] == 2 * T * R * E
    # Scan: 7 FLOPs per (token, channel, state) + 11 per (token, channel); u, Δ, z, y per
    # channel and B, C per token; state E·N written once per sequence.
    assert t["ssm_scan_prompt"]["vector_flops"] == T * E * (7 * N + 11)
    assert t["ssm_scan_prompt"]["act_bytes"] == T * (4 * E + 2 * N) * b
    assert t["ssm_scan_prompt"]["kv_bytes"] == 2 * E * N * b
    assert "ssm_scan_decode" not in t  # a prefill drops decode rows
    assert t["ssm_out_proj"]["flops"] == 2 * T * E * D
    # No attention and no FFN cost in a pure Mamba block.
    for name in ("qkv_proj", "o_proj", "attention_prompt", "ffn_up", "ffn_down"):
        assert t[name]["repeat"] == 0
    # One norm and one residual add per block.
    assert t["norm_residual"]["act_bytes"] == 2 * 2 * T * D * b


def test_tiny_mamba1_decode_rows_do_not_depend_on_context():
    wl = jm.Workload(batch=3, input_tokens=5, output_tokens=3)
    short = _rows(ops.build_op_table(TINY1, wl, ops.decode_step(wl, 3.0, 10.0), groups=("decode",)))
    long = _rows(ops.build_op_table(TINY1, wl, ops.decode_step(wl, 3.0, 10_000.0), groups=("decode",)))
    assert short == long
    scan = short["ssm_scan_decode"]
    # One step per sequence reads and writes the whole state.
    assert scan["vector_flops"] == 3 * E * (7 * N + 11)
    assert scan["kv_bytes"] == 3 * 2 * E * N * 2
    assert short["ssm_conv"]["kv_bytes"] == 3 * 2 * (K - 1) * E * 2


def test_tiny_mamba1_tp_shards_channels():
    wl = jm.Workload(batch=2, input_tokens=5, output_tokens=3, tp=2)
    t = _rows(ops.build_op_table(TINY1, wl, ops.prefill_step(wl, 2.0), groups=("prompt",)))
    assert t["ssm_in_proj"]["flops"] == 2 * 10 * D * E  # 2E/2 outputs per rank
    assert t["ssm_scan_prompt"]["vector_flops"] == 10 * (E / 2) * (7 * N + 11)
    assert t["ssm_all_reduce"]["comm_bytes"] == 10 * D * 2
    assert t["ssm_x_proj_all_reduce"]["comm_bytes"] == 10 * (R + 2 * N) * 2


P2, G2, N2, K2, Q2 = 4, 2, 4, 4, 4  # head dim, groups, state, conv width, chunk
H2 = E // P2  # 4 heads
TINY2 = Architecture(ssm="mamba2", d_model=D, n_layers=1, n_ssm_layers=1, vocab_size=16, n_heads=0,
                     n_kv_heads=0, head_dim=0, d_ff=0, norms_per_layer=1, ssm_d_state=N2, ssm_d_conv=K2,
                     ssm_expand=2, ssm_head_dim=P2, ssm_n_groups=G2, ssm_chunk=Q2)


def test_tiny_mamba2_prefill_rows():
    seqs, L = 2, 8
    wl = jm.Workload(batch=seqs, input_tokens=L, output_tokens=3)
    t = _rows(ops.build_op_table(TINY2, wl, ops.prefill_step(wl, float(seqs)), groups=("prompt",)))
    T, b = seqs * L, 2.0
    conv = E + 2 * G2 * N2
    assert t["ssm_in_proj"]["flops"] == 2 * T * D * (2 * E + 2 * G2 * N2 + H2)
    assert t["ssm_conv"]["vector_flops"] == (2 * K2 + 5) * T * conv
    # SSD (Dao & Gu 2024, Sec. 6) with chunk Q: per token, C·Bᵀ costs 2·Q·N per group and the
    # masked product 2·Q·P per head; chunk states and state-to-output 2·N·P each per head.
    ssd = 2 * T * (Q2 * (G2 * N2 + H2 * P2) + 2 * H2 * N2 * P2)
    got = sum(t[f"ssm_ssd_{x}_prompt"]["flops"] for x in ("cb", "states", "intra", "inter"))
    assert got == ssd
    # State h·P·N per sequence written once (E·N elements).
    assert t["ssm_scan_prompt"]["kv_bytes"] == seqs * E * N2 * b
    chunks = seqs * L / Q2
    assert t["ssm_scan_prompt"]["vector_flops"] == (T * H2 * Q2 * 2 + 2 * chunks * H2 * N2 * P2
                                                    + T * H2 * 5 + T * E * 2)
    assert t["ssm_gated_norm"]["vector_flops"] == 9 * T * E
    assert t["ssm_out_proj"]["flops"] == 2 * T * E * D


def test_tiny_mamba2_decode_rows():
    wl = jm.Workload(batch=3, input_tokens=8, output_tokens=3)
    t = _rows(ops.build_op_table(TINY2, wl, ops.decode_step(wl, 3.0, 50.0), groups=("decode",)))
    scan = t["ssm_scan_decode"]
    assert scan["vector_flops"] == 3 * (5 * E * N2 + 5 * H2 + 2 * E)
    assert scan["kv_bytes"] == 3 * 2 * E * N2 * 2
    assert scan["act_bytes"] == 3 * ((E + 2 * G2 * N2) + H2 + E) * 2
    assert not any(name.startswith("ssm_ssd") for name in t)


def test_tiny_weights_match_parameters():
    """The matmul/vector weight bytes of one SSM layer stream exactly its parameters."""
    for arch in (TINY1, TINY2):
        wl = jm.Workload(batch=1, input_tokens=8, output_tokens=3, dtype="bf16")
        table = ops.build_op_table(arch, wl, ops.decode_step(wl, 1.0, 8.0), groups=("decode",))
        streamed = sum(float(w) for r, w in zip(table.rows, table.weight_bytes) if r.block == "ssm")
        p = float(jm.parameter_breakdown(arch)["ssm_per_layer"])
        assert streamed == pytest.approx(2 * p, rel=1e-6)


# ---- phase behaviour ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mamba-2.8b", "mamba2-2.7b"])
def test_pure_mamba_decode_independent_of_context(name, h100):
    arch = jm.load_model(name)
    wl = jm.Workload(batch=16, input_tokens=1024, output_tokens=128)
    times = [float(inference.decode(arch, wl, h100, IDEAL, context=c)[0]) for c in (128.0, 4096.0, 131072.0)]
    assert times[0] == times[1] == times[2]


def test_hybrid_decode_grows_with_context(h100):
    arch = jm.load_model("jamba-v0.1")
    wl = jm.Workload(batch=64, input_tokens=1024, output_tokens=128, tp=2)
    times = [float(inference.decode(arch, wl, h100, IDEAL, context=c)[0]) for c in (1024.0, 32768.0, 131072.0)]
    assert times[0] < times[1] < times[2]


@pytest.mark.parametrize("name", ["mamba-2.8b", "falcon-mamba-7b", "mamba2-2.7b"])
def test_pure_mamba_prefill_linear_in_prompt(name, h100):
    arch = jm.load_model(name)

    def prefill(length):
        wl = jm.Workload(batch=8, input_tokens=length, output_tokens=8)
        return float(inference.prefill(arch, wl, h100, IDEAL)[0])

    t1, t2, t3 = (prefill(x) for x in (4096, 8192, 12288))
    assert t2 > t1
    assert abs(t3 - 2 * t2 + t1) < 1e-4 * t3  # second difference ~ 0: linear
    # An attention model over the same lengths bends upwards (quadratic attention).
    llama = jm.load_model("llama-3-8b")

    def attn(length):
        wl = jm.Workload(batch=8, input_tokens=length, output_tokens=8)
        return float(inference.prefill(llama, wl, h100, IDEAL)[0])

    a1, a2, a3 = (attn(x) for x in (4096, 8192, 12288))
    assert a3 - 2 * a2 + a1 > 1e-3 * a3


# ---- memory ---------------------------------------------------------------------------------
def test_hybrid_memory_by_hand(h100):
    arch = jm.load_model("jamba-v0.1")
    batch, prompt, out = 4, 1000, 200
    wl = jm.Workload(batch=batch, input_tokens=prompt, output_tokens=out, tp=1)
    got = jm.predict(arch, wl, h100, IDEAL)
    with jax.enable_x64(True):
        params = int(jm.total_parameters(jm.load_model("jamba-v0.1")))
    assert got["weight_bytes"] == pytest.approx(params * 2, rel=1e-6)
    # 28 Mamba layers: conv state 3·8192 and scan state 8192·16 per sequence; 4 attention
    # layers: K and V of 8 heads x 128 for each of the 1200 cached tokens; all at 2 bytes.
    state = batch * 28 * (3 * 8192 + 8192 * 16) * 2
    kv = batch * 4 * (prompt + out) * 2 * 8 * 128 * 2
    assert got["kv_cache_bytes"] == pytest.approx(state + kv, rel=1e-6)
    assert float(memory.ssm_state_bytes_per_device(arch, wl, batch)) == pytest.approx(state, rel=1e-6)


def test_state_memory_independent_of_context():
    arch = jm.load_model("mamba2-2.7b")
    wl = jm.Workload(batch=4, tp=2)
    sizes = [float(memory.kv_cache_bytes_per_device(arch, wl, 4.0, c)) for c in (10.0, 1e4, 1e6)]
    assert sizes[0] == sizes[1] == sizes[2]
    # Mamba-2 per sequence per layer: conv (K-1)·(E + 2GN) + heads·P·N, halved by TP (the one
    # B/C group is replicated on both ranks).
    per_layer = 3 * (5120 / 2 + 2 * 128) + (80 / 2) * 64 * 128
    assert sizes[0] == pytest.approx(4 * 64 * per_layer * 2, rel=1e-6)


def test_weight_bytes_consistent_with_parameters_under_tp():
    for name in ("mamba-2.8b", "mamba2-2.7b", "falcon-mamba-7b"):
        arch = jm.load_model(name)
        one = float(memory.weight_bytes_per_device(arch, jm.Workload(tp=1)))
        assert one == pytest.approx(2 * float(jm.total_parameters(arch)), rel=1e-6)
        two = float(memory.weight_bytes_per_device(arch, jm.Workload(tp=2)))
        # TP halves all but the per-block norms, Mamba-2's replicated B/C channels and the biases.
        assert 0.5 * one < two < 0.51 * one


# ---- parameter counts -----------------------------------------------------------------------
def test_mamba1_count_by_hand():
    # HF MambaMixer shapes for state-spaces/mamba-2.8b-hf (d 2560, E 5120, N 16, K 4, R 160):
    # in_proj, conv weight + bias, x_proj, dt_proj + bias, A_log, D, out_proj, block norm.
    d, e, n, k, r = 2560, 5120, 16, 4, 160
    layer = d * 2 * e + e * k + e + e * (r + 2 * n) + r * e + e + e * n + e + e * d + d
    total = 64 * layer + 50280 * d + d  # tied embedding, final norm
    with jax.enable_x64(True):
        assert int(jm.total_parameters(jm.load_model("mamba-2.8b"))) == total == 2_768_345_600


def test_mamba2_count_by_hand():
    # HF Mamba2Mixer shapes for mamba2-2.7b: in_proj to z, x, B, C, dt; conv over x, B, C;
    # dt_bias, A_log, D per head; gated-norm weight; out_proj; block norm.
    d, e, h, g, n, k = 2560, 5120, 80, 1, 128, 4
    conv = e + 2 * g * n
    layer = d * (e + conv + h) + conv * (k + 1) + 3 * h + e + e * d + d
    total = 64 * layer + 50288 * d + d
    with jax.enable_x64(True):
        assert int(jm.total_parameters(jm.load_model("mamba2-2.7b"))) == total


def test_jamba_layer_split():
    # Jamba-v0.1 (arXiv 2403.19887, Sec. 3): 32 layers, attention:Mamba 1:7, MoE every other
    # layer with 16 experts, top-2; published 51.6B total, 12B active (also in test_architectures).
    arch = jm.load_model("jamba-v0.1")
    assert float(arch.n_attention_layers) == 4 and float(arch.n_ssm_layers) == 28
    assert float(arch.n_moe_layers) == 16 and float(arch.n_dense_layers) == 16
    p = jm.parameter_breakdown(arch)
    total, active = float(jm.total_parameters(arch)), float(jm.active_parameters(arch))
    assert total - active == pytest.approx(16 * 14 * float(p["expert"]), rel=1e-6)


# ---- HuggingFace import ---------------------------------------------------------------------
# Values of the published config.json files (HF transformers key names).
HF = {
    "mamba-2.8b": {  # state-spaces/mamba-2.8b-hf
        "model_type": "mamba", "hidden_size": 2560, "intermediate_size": 5120, "expand": 2,
        "num_hidden_layers": 64, "state_size": 16, "conv_kernel": 4, "time_step_rank": 160,
        "vocab_size": 50280, "tie_word_embeddings": True, "use_bias": False, "use_conv_bias": True,
    },
    "falcon-mamba-7b": {  # tiiuae/falcon-mamba-7b (its "expand" does not match intermediate_size)
        "model_type": "falcon_mamba", "hidden_size": 4096, "intermediate_size": 8192, "expand": 16,
        "num_hidden_layers": 64, "state_size": 16, "conv_kernel": 4, "time_step_rank": 256,
        "vocab_size": 65024, "tie_word_embeddings": False, "use_bias": False, "use_conv_bias": True,
    },
    "mamba2-2.7b": {  # state-spaces/mamba2-2.7b in transformers' Mamba2Config keys
        "model_type": "mamba2", "hidden_size": 2560, "num_hidden_layers": 64, "num_heads": 80,
        "head_dim": 64, "n_groups": 1, "state_size": 128, "expand": 2, "conv_kernel": 4,
        "chunk_size": 256, "vocab_size": 50288, "tie_word_embeddings": True, "use_bias": False,
    },
    "jamba-v0.1": {  # ai21labs/Jamba-v0.1
        "model_type": "jamba", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 65536, "hidden_act": "silu",
        "attn_layer_period": 8, "attn_layer_offset": 4, "expert_layer_period": 2, "expert_layer_offset": 1,
        "num_experts": 16, "num_experts_per_tok": 2, "mamba_d_state": 16, "mamba_d_conv": 4,
        "mamba_expand": 2, "mamba_dt_rank": 256, "mamba_conv_bias": True, "mamba_proj_bias": False,
        "tie_word_embeddings": False,
    },
}


@pytest.mark.parametrize("preset", sorted(HF))
def test_hf_import_equals_preset(preset):
    arch = Architecture(**architecture_spec_from_hf(HF[preset]))
    assert _leaves_equal(arch, jm.load_model(preset))


def test_hf_auto_dt_rank_and_missing_fields():
    cfg = dict(HF["mamba-2.8b"], time_step_rank="auto")
    assert architecture_spec_from_hf(cfg)["ssm_dt_rank"] == math.ceil(2560 / 16) == 160
    bad = dict(HF["jamba-v0.1"])
    del bad["mamba_d_state"]
    with pytest.raises(ValueError, match="missing required field 'mamba_d_state'"):
        architecture_spec_from_hf(bad)
    with pytest.raises(ValueError, match="num_heads x head_dim"):
        architecture_spec_from_hf(dict(HF["mamba2-2.7b"], num_heads=64))
    with pytest.raises(ValueError, match="attn_layer_period"):
        architecture_spec_from_hf(dict(HF["jamba-v0.1"], attn_layer_offset=8))


@pytest.mark.parametrize("changes,field", [
    (dict(ssm="mamba3"), "Architecture.ssm"),
    (dict(n_ssm_layers=65), "n_ssm_layers must be <= n_layers"),
    (dict(ssm_d_state=0), "Architecture.ssm_d_state"),
    (dict(ssm_dt_rank=-1), "Architecture.ssm_dt_rank"),
    (dict(n_ssm_layers=60), "Architecture.n_heads"),  # 4 attention layers need heads
    (dict(ssm=None), "n_ssm_layers must be 0 when ssm is None"),
    (dict(d_ff=-5), "Architecture.d_ff"),
])
def test_bad_ssm_input_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        jm.load_model("mamba-2.8b").replace(**changes)


def test_bad_mamba2_input_names_the_field():
    base = jm.load_model("mamba2-2.7b")
    with pytest.raises(ValueError, match="Architecture.ssm_head_dim"):
        base.replace(ssm_head_dim=0)
    with pytest.raises(ValueError, match="ssm_head_dim must divide d_inner"):
        base.replace(ssm_head_dim=48)
    with pytest.raises(ValueError, match="ssm_n_groups must divide"):
        base.replace(ssm_n_groups=3)


# ---- status ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,tp,ok", [
    ("mamba-2.8b", 2, True), ("mamba-2.8b", 8, True), ("mamba-2.8b", 3, False),
    ("mamba2-2.7b", 4, True), ("mamba2-2.7b", 16, True), ("mamba2-2.7b", 3, False), ("mamba2-2.7b", 32, False),
    ("jamba-v0.1", 8, True), ("jamba-v0.1", 3, False),
])
def test_tp_must_divide_ssm_channels_or_heads(name, tp, ok):
    arch = jm.load_model(name)
    code = jax.jit(lambda a, w: inference.status_code(a, w, True))(arch, jm.Workload(tp=tp))
    assert bool(int(code) & status.INVALID_TP) is (not ok)


def test_predict_names_ssm_heads_for_bad_tp(h100):
    with pytest.raises(ValueError, match="SSM heads"):
        jm.predict(jm.load_model("mamba2-2.7b"), jm.Workload(tp=3), h100)


# ---- cross-layer KV sharing -----------------------------------------------------------------
def test_kv_sharing_divides_cache_and_kv_projections():
    base = jm.load_model("llama-3-8b")
    shared = base.replace(kv_share_group=2)
    wl = jm.Workload(batch=4, input_tokens=1000, output_tokens=100)
    kv_base = float(memory.kv_cache_bytes_per_device(base, wl, 4.0, 1100.0))
    assert float(memory.kv_cache_bytes_per_device(shared, wl, 4.0, 1100.0)) == pytest.approx(kv_base / 2, rel=1e-6)
    # Half the layers own no K/V projection: 32 layers x (d x 2·kv_heads·head_dim) / 2.
    saved = float(jm.total_parameters(base)) - float(jm.total_parameters(shared))
    assert saved == pytest.approx(32 * 4096 * 2 * 8 * 128 / 2, rel=1e-6)
    # Op table: K/V projection width and the cache write halve; the cache read does not.
    step = ops.decode_step(wl, 4.0, 1000.0)
    tb = _rows(ops.build_op_table(base, wl, step, groups=("decode",)))
    ts = _rows(ops.build_op_table(shared, wl, step, groups=("decode",)))
    assert ts["qkv_proj"]["flops"] == pytest.approx(2 * 4 * 4096 * (32 + 8) * 128, rel=1e-6)
    assert tb["qkv_proj"]["flops"] == pytest.approx(2 * 4 * 4096 * (32 + 16) * 128, rel=1e-6)
    write = 4 * 2 * 8 * 128 * 2  # one new token per sequence, K and V, 2 bytes
    assert tb["attention_decode"]["kv_bytes"] - ts["attention_decode"]["kv_bytes"] == pytest.approx(write / 2)


def test_kv_sharing_of_one_is_the_unshared_model(h100):
    base = jm.load_model("llama-3-8b")
    wl = jm.Workload(batch=8, input_tokens=512, output_tokens=64)
    a = jm.predict(base, wl, h100, IDEAL)
    b = jm.predict(base.replace(kv_share_group=1), wl, h100, IDEAL)
    c = jm.predict(base.replace(kv_share_group=4), wl, h100, IDEAL)
    assert a == b
    assert c["kv_cache_bytes"] == pytest.approx(a["kv_cache_bytes"] / 4, rel=1e-6)
    assert c["decode_step_s"] < a["decode_step_s"]


def test_kv_sharing_rejected_for_mla():
    with pytest.raises(ValueError, match="kv_share_group"):
        jm.load_model("deepseek-v2").replace(kv_share_group=2)


# ---- transformations --------------------------------------------------------------------------
def test_vmap_over_state_size_and_gradient(h100):
    arch = jm.load_model("falcon-mamba-7b")
    wl = jm.Workload(batch=8, input_tokens=2048, output_tokens=128)
    states = jnp.array([8.0, 16.0, 32.0])

    @jax.jit
    @jax.vmap
    def metrics(n):
        out = inference.evaluate(eqx.tree_at(lambda a: a.ssm_d_state, arch, n), wl, h100, IDEAL)
        return out["kv_cache_bytes"], out["prefill_s"], out["decode_step_s"]

    kv, pre, dec = metrics(states)
    for i, n in enumerate([8.0, 16.0, 32.0]):
        one = inference.evaluate(arch.replace(ssm_d_state=n), wl, h100, IDEAL)
        assert float(kv[i]) == pytest.approx(float(one["kv_cache_bytes"]), rel=1e-6)
        assert float(dec[i]) == pytest.approx(float(one["decode_step_s"]), rel=1e-5)
    # The scan state grows linearly in N: 8 sequences x 64 layers x 8192 channels x 16 more
    # states x 2 bytes from N = 16 to 32.
    assert float(kv[2] - kv[1]) == pytest.approx(8 * 64 * 8192 * 16 * 2, rel=1e-5)
    assert bool(jnp.all(jnp.diff(pre) > 0))

    def prefill_s(n):
        return inference.prefill(eqx.tree_at(lambda a: a.ssm_d_state, arch, n), wl, h100, IDEAL)[0]

    g = jax.grad(prefill_s)(jnp.asarray(16.0))
    assert jnp.isfinite(g) and g > 0
    fd = (prefill_s(jnp.asarray(17.0)) - prefill_s(jnp.asarray(15.0))) / 2.0
    assert float(g) == pytest.approx(float(fd), rel=0.05)


def test_hybrid_evaluates_in_systolic_fidelity():
    """Jamba (attention, Mamba and MoE layers) on the systolic model: finite and no faster than the roofline of the
    same chip, in every phase."""
    system = jm.load_hardware("h100-sxm")
    wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=64, tp=2)
    arch = jm.load_model("jamba-v0.1")
    out = jm.predict(arch, wl, system, IDEAL, fidelity="systolic", chunked_step=True)
    bound = jm.predict(arch, wl, system, IDEAL, fidelity="roofline", chunked_step=True)
    for key in ("prefill_s", "decode_step_s", "chunked_step_s"):
        assert math.isfinite(out[key]) and out[key] >= bound[key] * (1 - 1e-6) > 0, key
