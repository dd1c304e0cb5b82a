"""Phase metrics: published anchors, definitions, invariants, parallelism, status, compilation."""

import jax
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel import inference, ops
from jaxmodel.predict import TRACE_COUNTS
from jaxmodel.sweep import grid_sweep

GiB = 2.0**30


def genz_h100():
    """GenZ 0.0.16's H100_GPU system: 989 TFLOP/s, 3400 GiB/s, 450 GiB/s links with 1 us per
    step and GenZ's fixed 5 us collective start-up."""
    return jm.System(jm.Chip({"bf16": 989e12}, 66.9e12, 3400 * GiB, 80 * GiB), 8,
                     jm.Interconnect(450 * GiB, 1e-6, 5e-6), jm.Interconnect(50e9, 10e-6, 5e-6))


def test_genz_published_point(llama70b):
    # REFERENCE.md: GenZ 0.0.16 (efficiency 1), Llama-3.1-70B, H100, TP 4, batch 8, 1024 -> 256:
    # prefill 369.9 ms, decode step 11.59 ms (decode at 1024 + 256 cached tokens). jaxmodel's
    # decode step sits at input + output/2, so output 512 puts it at the same context.
    wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=512, tp=4)
    r = jm.predict(llama70b, wl, genz_h100())
    assert r["prefill_s"] == pytest.approx(369.9e-3, rel=0.10)
    assert r["decode_step_s"] == pytest.approx(11.59e-3, rel=0.05)


def test_metric_definitions(llama70b, h100):
    wl = jm.Workload(batch=16, input_tokens=700, output_tokens=90, tp=8)
    r = jm.predict(llama70b, wl, h100)
    assert r["ttft_s"] == r["prefill_s"] and r["tpot_s"] == r["decode_step_s"]
    assert r["e2e_latency_s"] == pytest.approx(r["prefill_s"] + 89 * r["tpot_s"], rel=1e-6)
    assert r["throughput_tok_s"] == pytest.approx(16 * 90 / r["e2e_latency_s"], rel=1e-6)
    assert r["decode_throughput_tok_s"] == pytest.approx(16 / r["tpot_s"], rel=1e-6)
    assert r["devices"] == 8 and r["status_text"] == "ok"


def test_decode_memory_bound_by_hand(h100):
    """One decode step at batch 1, TP 1, ideal: every byte streamed once at peak bandwidth."""
    arch = jm.load_model("llama-3-8b")
    wl = jm.Workload(batch=1, input_tokens=1000, output_tokens=2)
    r = jm.predict(arch, wl, h100)
    # Every matrix once, except the embedding table, of which one row is gathered.
    weights = 2 * (float(jm.total_parameters(arch)) - 128256 * 4096)
    kv = 2 * 32 * 8 * 128 * 2 * 1001  # K and V, 32 layers, 8 heads of 128, bf16, 1001 tokens
    assert r["decode_step_s"] == pytest.approx((weights + kv) / 3.35e12, rel=0.01)


def test_latency_monotone_in_hardware(llama70b, h100):
    wl = jm.Workload(batch=32, input_tokens=1024, output_tokens=256, tp=8)
    bases = {"system.chip.mem_bw_Bps": 3.35e12, "system.chip.tensor_flops.bf16": 989e12,
             "system.scale_up.bandwidth_Bps": 450e9}
    for path, base in bases.items():
        df = grid_sweep(llama70b, wl, h100, grid={path: np.geomspace(0.2, 5.0, 25) * base},
                        metrics=("prefill_s", "tpot_s"))
        for metric in ("prefill_s", "tpot_s"):
            steps = np.diff(df[metric].to_numpy())
            assert (steps <= 1e-9 * df[metric].max()).all(), (path, metric)
    df = grid_sweep(llama70b, wl, h100, grid={"system.scale_up.link_latency_s": np.linspace(0, 5e-6, 11)},
                    metrics=("tpot_s",))
    assert (np.diff(df["tpot_s"].to_numpy()) > 0).all()


def test_float32_matches_float64(llama70b, h100):
    wl = jm.Workload(batch=8, input_tokens=2048, output_tokens=128, tp=4)
    r32 = jm.predict(llama70b, wl, h100)
    with jax.enable_x64(True):
        up = lambda t: jax.tree_util.tree_map(lambda x: jax.numpy.asarray(x, jax.numpy.float64), t)  # noqa: E731
        r64 = jm.predict(up(llama70b), up(wl), up(h100))
    for key in ("prefill_s", "decode_step_s", "memory_bytes", "throughput_tok_s"):
        assert r32[key] == pytest.approx(r64[key], rel=2e-6), key


def test_pipeline_formula(llama70b, h100):
    wl = jm.Workload(batch=8, input_tokens=512, output_tokens=64, tp=4, pp=4)
    eff = jm.ideal()
    prefill_s, r = inference.prefill(llama70b, wl, h100, eff)
    # 16 devices on 8-device nodes: stages 0|1 and 2|3 talk over NVLink, stage 1|2 crosses
    # nodes over the scale-out network. A micro-batch of 2 x 512 tokens sends 8192 bf16 each.
    payload = 2 * 512 * 8192 * 2
    inside = 4.77e-6 + 0.771e-6 + payload / 450e9
    across = 4.77e-6 + 10e-6 + payload / 50e9
    assert float(r.sends_s) == pytest.approx(2 * inside + across, rel=1e-5)
    assert float(r.slowest_send_s) == pytest.approx(across, rel=1e-5)
    # 4 micro-batches of 2: one pass through all stages plus 3 more stage times, where a stage
    # holds 20 of the 80 layers and the LM head, behind the slowest link.
    single = r.layers_s + r.head_s + r.sends_s
    stage = r.layers_s / 4 + r.head_s + r.slowest_send_s
    assert float(prefill_s) == pytest.approx(float(single + 3 * stage), rel=1e-6)
    decode_s, d = inference.decode(llama70b, wl, h100, eff)
    expected = max(float(d.layers_s + d.head_s + d.sends_s), 4 * float(d.layers_s / 4 + d.head_s + d.slowest_send_s))
    assert float(decode_s) == pytest.approx(expected, rel=1e-6)
    # One node only (TP 2 x PP 4): no transfer leaves the node.
    _, r2 = inference.prefill(llama70b, wl.replace(tp=2), h100, eff)
    assert float(r2.slowest_send_s) < float(r.slowest_send_s) / 5


def test_tensor_parallel_speeds_up_and_shrinks_memory(llama70b, h100):
    results = [jm.predict(llama70b, jm.Workload(batch=8, input_tokens=1024, output_tokens=128, tp=tp), h100)
               for tp in (2, 4, 8)]
    for a, b in zip(results, results[1:]):
        assert b["prefill_s"] < a["prefill_s"] and b["tpot_s"] < a["tpot_s"]
        assert b["weight_bytes"] == pytest.approx(a["weight_bytes"] / 2, rel=0.02)


def test_chunked_step_between_decode_and_decode_plus_prefill(llama70b, h100):
    wl = jm.Workload(batch=32, input_tokens=1024, output_tokens=256, tp=4, chunk_tokens=512)
    r = jm.predict(llama70b, wl, h100, chunked_step=True)
    chunk_prefill = jm.predict(llama70b, jm.Workload(batch=1, input_tokens=512, output_tokens=2, tp=4), h100)
    assert r["decode_step_s"] < r["chunked_step_s"] < r["decode_step_s"] + chunk_prefill["prefill_s"]


def test_fp8_speeds_up_compute_bound_prefill(llama70b, h100):
    bf16 = jm.predict(llama70b, jm.Workload(batch=8, input_tokens=4096, output_tokens=8, tp=8), h100)
    fp8 = jm.predict(llama70b, jm.Workload(batch=8, input_tokens=4096, output_tokens=8, tp=8, dtype="fp8"), h100)
    assert 1.6 < bf16["prefill_s"] / fp8["prefill_s"] <= 2.0


def test_mla_and_moe_models_run(h100):
    arch = jm.load_model("deepseek-v2")
    r = jm.predict(arch, jm.Workload(batch=16, input_tokens=1024, output_tokens=128, tp=8), h100, chunked_step=True)
    assert all(np.isfinite(v) for v in r.values() if isinstance(v, float))
    mix = jm.load_model("mixtral-8x7b")
    ep = jm.predict(mix, jm.Workload(batch=64, input_tokens=1024, output_tokens=128, tp=1, ep=8), h100)
    assert ep["status_text"] == "ok" and ep["weight_bytes"] < 0.2 * 2 * float(jm.total_parameters(mix))


def test_bad_parallelism_names_the_fields(llama70b, h100):
    with pytest.raises(ValueError, match=r"Workload.tp = 3 must divide Architecture.n_heads = 64"):
        jm.predict(llama70b, jm.Workload(tp=3), h100)
    with pytest.raises(ValueError, match=r"Workload.ep = 2 needs a MoE architecture"):
        jm.predict(llama70b, jm.Workload(ep=2), h100)
    with pytest.raises(ValueError, match=r"Workload.ep = 3 must divide Architecture.n_experts = 8"):
        jm.predict(jm.load_model("mixtral-8x7b"), jm.Workload(ep=3), h100)
    with pytest.raises(ValueError, match=r"Workload.pp = 81 must be <= Architecture.n_layers = 80"):
        jm.predict(llama70b, jm.Workload(pp=81), h100)


def test_infeasible_points_are_flagged_not_nan(llama70b, h100):
    wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=128)
    df = grid_sweep(llama70b, wl, h100, grid={"workload.tp": [1, 3, 8], "workload.batch": [1, 4096]})
    assert np.isfinite(df.drop(columns=["fits"]).to_numpy(dtype=float)).all()
    by = df.set_index(["workload.tp", "workload.batch"])["status"]
    assert by[(3.0, 1.0)] & jm.status.INVALID_TP
    assert by[(1.0, 1.0)] == jm.status.DOES_NOT_FIT  # 141 GB of weights on one 80 GB device
    assert by[(8.0, 1.0)] == jm.status.OK and by[(8.0, 4096.0)] == jm.status.DOES_NOT_FIT


def test_one_program_serves_every_dense_model(h100):
    models = ["llama-2-7b", "llama-3-8b", "llama-2-70b", "qwen2-72b", "llama-3.1-405b"]
    first = jm.predict(jm.load_model(models[0]), jm.Workload(tp=8), h100)
    before = TRACE_COUNTS["evaluate"]
    for name, batch in zip(models[1:], (3, 17, 64, 2)):
        r = jm.predict(jm.load_model(name), jm.Workload(batch=batch, input_tokens=333, output_tokens=77, tp=8), h100)
        assert r["prefill_s"] != first["prefill_s"]
    assert TRACE_COUNTS["evaluate"] == before  # new values, no new trace (hence no recompilation)


def test_breakdown_table_sums_to_the_phase_time(llama70b, h100):
    wl = jm.Workload(batch=4, input_tokens=512, output_tokens=64, tp=4)
    table = jm.breakdown(llama70b, wl, h100)
    r = jm.predict(llama70b, wl, h100)
    assert table[table.phase == "prefill"]["total_s"].sum() == pytest.approx(r["prefill_s"], rel=1e-5)
    assert table[table.phase == "decode"]["total_s"].sum() == pytest.approx(r["decode_step_s"], rel=1e-5)
    prefill = table[table.phase == "prefill"].set_index("op")
    assert prefill.loc["ffn_up", "bound"] == "tensor" and prefill.loc["attn_all_reduce", "bound"] == "network"
    assert set(ops.COLLECTIVES) >= set(table["collective"].replace("", ops.ALL_REDUCE))


def test_predict_rejects_batched_points(llama70b, h100):
    with pytest.raises(ValueError, match="one design point"):
        jm.predict(llama70b, jm.Workload(batch=[1, 2]), h100)


def test_kv_head_rule_for_tensor_parallelism(h100):
    # 12 query heads in 4 KV groups of 3: TP 6 divides the heads but splits the KV heads unevenly.
    arch = jm.Architecture(d_model=768, n_layers=2, vocab_size=1000, n_heads=12, n_kv_heads=4, d_ff=2048)
    with pytest.raises(ValueError, match="divide or be a multiple of Architecture.n_kv_heads = 4"):
        jm.predict(arch, jm.Workload(tp=6), h100)
    assert jm.predict(arch, jm.Workload(tp=2), h100)["status_text"] == "ok"
    assert jm.predict(arch, jm.Workload(tp=12), h100)["status_text"] == "ok"  # KV heads replicated
