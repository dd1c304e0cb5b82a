"""The offload tier (System.offload) and weight / KV placement (Workload.offload_*): hand oracles
and invariants."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel import inference, memory, presets, speculative, status
from jaxmodel.predict import evaluate_jit


PCIE5 = 63.0e9  # B/s per direction, the pcie5-host tier


def with_tier(system, bandwidth=PCIE5, capacity=256e9, efficiency=1.0):
    return eqx.tree_at(lambda s: s.offload, system, jm.OffloadMemory(bandwidth, capacity, efficiency))


def evaluate(arch, wl, system, eff=None, sharpness=None, fidelity="roofline"):
    out = evaluate_jit(arch, wl, system, jm.ideal() if eff is None else eff, sharpness, False, fidelity)
    return {k: np.asarray(v) for k, v in out.items()}


@eqx.filter_jit
def decode_rows(arch, wl, system, eff, fidelity="roofline"):
    return inference.decode(arch, wl, system, eff, None, fidelity)


@eqx.filter_jit
def prefill_rows(arch, wl, system, eff, fidelity="roofline"):
    return inference.prefill(arch, wl, system, eff, None, fidelity)


def row(result, name):
    i = [r.name for r in result.table.rows].index(name)
    t, times = result.table, result.row_times
    return {k: float(getattr(t, k)[i]) for k in ("flops", "weight_bytes", "act_bytes", "kv_bytes", "offload_bytes",
                                                 "repeat")} | {
        k: float(getattr(times, k)[i]) for k in ("time", "tensor", "memory", "offload")}


# ---- no tier, no offload: nothing changes ----------------------------------------------------
POINTS = {  # (model, hardware, datasheet leaves, workload, fidelity, sharpness, calibration)
    "smooth-systolic-8b": ("llama-3-8b", "a100-sxm-80gb", False, dict(
        batch=16, input_tokens=256, output_tokens=64, attention_impl="unfused"), "systolic", 16.0, "ideal"),
    "smooth-roofline-mixtral": ("mixtral-8x7b", "h100-sxm", True, dict(batch=32, tp=2, ep=2), "roofline", 16.0,
                                "ideal"),
    "kernel-models-70b": ("llama-3-70b", "h100-sxm", True, dict(batch=16, tp=4), "roofline", None, "h100-vllm"),
}


@pytest.mark.parametrize("name", sorted(POINTS))
def test_an_empty_tier_changes_no_metric(name):
    """A tier that holds nothing is bitwise invisible: every metric equals the tier-less system's."""
    model, hw, datasheet, wl, fid, sharp, cal = POINTS[name]
    system = jm.load_hardware(hw)
    system = system.datasheet() if datasheet else system
    args = (jm.load_model(model), jm.Workload(**wl))
    rest = (jm.load_calibration(cal), sharp, True, fid)
    assert float(system.offload.bandwidth_Bps) == 0.0  # presets carry no tier
    ref = jax.device_get(evaluate_jit(*args, system, *rest))
    out = jax.device_get(evaluate_jit(*args, with_tier(system), *rest))
    assert set(out) == set(ref)
    assert float(ref["offload_capacity_bytes"]) == 0.0 and float(out["offload_capacity_bytes"]) == 256e9
    for key in set(ref) - {"offload_capacity_bytes"}:  # the tier's size is reported, nothing else may move
        np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(ref[key]), err_msg=key)
    assert float(out["offload_bytes"]) == 0.0 and np.isfinite(float(out["ttft_s"]))


# ---- one row by hand ---------------------------------------------------------------------------
def test_decode_matmul_row_by_hand():
    arch, system = jm.load_model("llama-3-8b"), with_tier(jm.load_hardware("h100-sxm").datasheet(), 64e9)
    wl = jm.Workload(batch=4, input_tokens=512, output_tokens=64, offload_weights=0.5)
    _, r = decode_rows(arch, wl, system, jm.ideal())
    x = row(r, "ffn_up")
    d, ff = 4096.0, 14336.0
    weights = 2.0 * d * ff * 2.0  # gate and up matrices, bf16
    acts = 4.0 * (d + 2.0 * ff) * 2.0  # 4 tokens in, 2·ff out
    assert x["weight_bytes"] == weights and x["act_bytes"] == pytest.approx(acts)
    fast, slow = acts + 0.5 * weights, 0.5 * weights
    bw = float(system.chip.mem_bw_Bps)
    expected = max(2 * 4 * d * 2 * ff / float(system.chip.tensor_peak("bf16")), fast / bw, slow / 64e9)
    assert x["offload_bytes"] == slow
    assert x["time"] == pytest.approx(expected, rel=1e-6) and x["time"] == pytest.approx(slow / 64e9, rel=1e-6)
    assert x["memory"] == pytest.approx(fast / bw, rel=1e-6)


# ---- compute-bound prefill hides offloaded weights; memory-bound decode pays ---------------------
@pytest.mark.parametrize("fidelity", ["roofline", "systolic"])
def test_prefill_hides_offloaded_weights_decode_pays(fidelity):
    arch, eff = jm.load_model("llama-3-8b"), jm.ideal()
    system = with_tier(jm.load_hardware("h100-sxm"))
    system = system if fidelity == "systolic" else system.datasheet()
    wl = jm.Workload(batch=8, input_tokens=2048, output_tokens=128)
    _, p0 = prefill_rows(arch, wl, system, eff, fidelity)
    _, p1 = prefill_rows(arch, wl.replace(offload_weights=1.0), system, eff, fidelity)
    for name in ("ffn_up", "ffn_down", "qkv_proj", "o_proj"):
        a, b = row(p0, name), row(p1, name)
        assert b["offload"] > 0 and b["offload"] < b["time"]  # the link is busy but hidden behind the arrays
        # (systolic: up to one exposed pipeline stage of the memory side, min(work, memory)/stages)
        assert b["time"] == pytest.approx(a["time"], rel=1e-6 if fidelity == "roofline" else 1e-4), name

    # Decode at batch 8: every weight row becomes link-bound; its extra time is the offloaded bytes
    # over the link, so the step grows linearly in the offloaded share.
    base, r0 = decode_rows(arch, wl, system, eff, fidelity)
    steps = {}
    for f in (0.25, 0.5):
        steps[f], r = decode_rows(arch, wl.replace(offload_weights=f), system, eff, fidelity)
        link = sum(x * n for x, n in zip(r.row_times.offload, r.table.repeat))
        streamed = sum(w * n for w, n in zip(r.table.weight_bytes, r.table.repeat))
        assert float(link) == pytest.approx(f * float(streamed) / PCIE5, rel=1e-5)
        weight_rows = [i for i, w in enumerate(r.table.weight_bytes) if float(w) > 0]
        # the step = untouched rows + the link time of every weight row
        untouched = float(base) - sum(float(r0.row_times.time[i] * r0.table.repeat[i]) for i in weight_rows)
        assert float(steps[f]) == pytest.approx(untouched + float(link), rel=1e-4)
    # twice the offloaded bytes, twice the weight rows' time
    assert (float(steps[0.5]) - untouched) / (float(steps[0.25]) - untouched) == pytest.approx(2.0, rel=1e-4)


# ---- GenZ's effective bandwidth is the uniform, all-memory-bound special case -----------------
@pytest.mark.parametrize("share", [0.01, 0.5])
def test_uniform_placement_matches_genz_effective_bandwidth(share):
    """If each row's bytes are weights/KV only and memory bound, and a share f of all of them is
    offloaded, row i takes max((1-f)·B_i/BW, f·B_i/BW_off) = B_i·max((1-f)/BW, f/BW_off), so the
    step takes R·max((1-f)/BW, f/BW_off) = max(min(R, H)/BW, (R - H)/BW_off) with H = (1-f)·R:
    GenZ's get_offload_system. Activations are made negligible (0.001 bytes per element)."""
    arch = jm.load_model("llama-3-8b")
    system = with_tier(jm.load_hardware("h100-sxm").datasheet())
    wl = jm.Workload(batch=1, input_tokens=1024, output_tokens=2, act_bytes=1e-3, offload_weights=share,
                     offload_kv=share)
    t, r = decode_rows(arch, wl, system, jm.ideal())
    required = sum(float((w + kv) * n) for w, kv, n in zip(r.table.weight_bytes, r.table.kv_bytes, r.table.repeat))
    hbm = (1.0 - share) * required
    bw = float(system.chip.mem_bw_Bps)
    genz = max(min(required, hbm) / bw, (required - hbm) / PCIE5)
    effective_bw = required / genz  # GenZ's new off-chip bandwidth
    assert float(t) == pytest.approx(required / effective_bw, rel=2e-4)
    assert (share == 0.5) == (genz == (required - hbm) / PCIE5)  # one case of each bound


# ---- automatic placement -------------------------------------------------------------------------
def test_auto_plan_fills_device_memory_exactly():
    with jax.enable_x64(True):
        arch = jm.load_model("llama-3-70b")
        system = with_tier(jm.load_hardware("h100-sxm").datasheet())
        for policy, prefer in (("auto_kv", "kv"), ("auto_weights", "weights")):
            wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=256, offload_policy=policy)
            out = evaluate(arch, wl, system)
            assert out["fits"] and int(out["status"]) == 0
            assert float(out["memory_bytes"]) == pytest.approx(float(out["usable_memory_bytes"]), rel=1e-6)
            f_w, f_kv = memory.offload_plan(arch, wl, system, prefer)
            assert float(out["offload_weights"]) == pytest.approx(float(f_w)) and float(out["offload_kv"]) == \
                pytest.approx(float(f_kv))
            # the same fractions given by hand give the same point
            manual = evaluate(arch, wl.replace(offload_policy="manual", offload_weights=f_w, offload_kv=f_kv), system)
            for key in ("tpot_s", "ttft_s", "memory_bytes", "offload_bytes"):
                assert float(manual[key]) == pytest.approx(float(out[key]), rel=1e-9)
        # KV first: the whole (small) cache moves, then just enough weights; weights first: no KV
        kv_first = evaluate(arch, wl.replace(offload_policy="auto_kv"), system)
        assert float(kv_first["offload_kv"]) == 1.0 and 0 < float(kv_first["offload_weights"]) < 1
        assert float(out["offload_kv"]) == 0.0 and 0 < float(out["offload_weights"]) < 1


def test_auto_plan_zero_when_it_fits_and_flags_a_small_tier():
    arch, system = jm.load_model("llama-3-8b"), with_tier(jm.load_hardware("h100-sxm").datasheet())
    wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=256, offload_policy="auto_kv")
    out, ref = evaluate(arch, wl, system), evaluate(arch, wl.replace(offload_policy="manual"), system)
    assert float(out["offload_weights"]) == 0.0 and float(out["offload_kv"]) == 0.0
    assert float(out["tpot_s"]) == float(ref["tpot_s"]) and out["fits"]

    arch70 = jm.load_model("llama-3-70b")
    small = with_tier(jm.load_hardware("h100-sxm").datasheet(), capacity=10e9)
    out = evaluate(arch70, wl, small)
    assert not out["fits"] and float(out["offload_bytes"]) > 10e9
    assert int(out["status"]) & status.OFFLOAD_FULL and int(out["status"]) & status.DOES_NOT_FIT
    assert np.isfinite(float(out["tpot_s"]))
    # served with speculative decoding, the same overflowing tier sets the same bits
    spec = speculative.evaluate(arch70, wl, small, jm.ideal(), speculative.SpeculativeDecoding(arch, 4, 0.7))
    assert not spec["fits"] and int(spec["status"]) & status.OFFLOAD_FULL and int(spec["status"]) & status.DOES_NOT_FIT
    # no tier at all: the plan still says how much would have to go, and the point does not fit
    out = evaluate(arch70, wl, jm.load_hardware("h100-sxm").datasheet())
    assert not out["fits"] and np.isfinite(float(out["tpot_s"]))


def test_auto_plan_is_monotone_in_batch_and_vmaps():
    arch, system = jm.load_model("llama-3-70b"), with_tier(jm.load_hardware("h100-sxm").datasheet(), capacity=2e12)
    batches = jnp.array([1.0, 4.0, 16.0, 64.0, 256.0, 1024.0])
    base = jm.Workload(batch=1, input_tokens=1024, output_tokens=256, offload_policy="auto_kv")

    def one(b):
        wl = eqx.tree_at(lambda w: w.batch, base, b)
        return memory.offload_plan(arch, wl, system, "kv"), inference.evaluate(arch, wl, system, jm.ideal())

    (f_w, f_kv), out = jax.jit(jax.vmap(one))(batches)
    assert np.all(np.diff(np.asarray(f_kv)) >= 0) and np.all(np.diff(np.asarray(f_w)) >= 0)
    assert np.all(np.diff(np.asarray(out["offload_bytes"])) > 0)
    assert np.all(np.asarray(out["fits"])[:-1])
    usable = np.asarray(out["usable_memory_bytes"])
    np.testing.assert_allclose(np.asarray(out["memory_bytes"])[:-1], usable[:-1], rtol=1e-6)


@pytest.mark.parametrize("policy,f_w", [("manual", 0.5), ("auto_kv", 0.0), ("auto_weights", 0.0)])
def test_max_batch_fits_and_one_more_does_not(policy, f_w):
    arch, system = jm.load_model("llama-3-70b"), with_tier(jm.load_hardware("h100-sxm").datasheet(), capacity=200e9)
    wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=256, offload_weights=f_w, offload_policy=policy)
    biggest = float(evaluate(arch, wl, system)["max_batch"])
    assert biggest >= 1
    assert evaluate(arch, wl.replace(batch=biggest), system)["fits"]
    assert not evaluate(arch, wl.replace(batch=biggest + 1), system)["fits"]


# ---- differentiable and vectorized -------------------------------------------------------------
def test_gradient_wrt_offload_bandwidth_and_vmap_over_fractions():
    arch, system = jm.load_model("llama-3-8b"), with_tier(jm.load_hardware("h100-sxm").datasheet())
    wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=128, offload_weights=0.5)
    g = jax.grad(lambda s: inference.evaluate(arch, wl, s, jm.ideal())["tpot_s"])(system)
    assert np.isfinite(float(g.offload.bandwidth_Bps)) and float(g.offload.bandwidth_Bps) < 0
    assert float(g.offload.efficiency) < 0
    g = jax.grad(lambda w: inference.evaluate(arch, w, system, jm.ideal())["tpot_s"])(wl)
    assert float(g.offload_weights) > 0

    fractions = jnp.array([0.0, 0.25, 0.5, 1.0])

    def tpot(f):
        return inference.evaluate(arch, wl.replace(offload_weights=f), system, jm.ideal())["tpot_s"]

    batched = jax.jit(jax.vmap(tpot))(fractions)
    assert np.all(np.diff(np.asarray(batched)) > 0)
    for f, t in zip(fractions, batched):
        assert float(t) == pytest.approx(float(evaluate(arch, wl.replace(offload_weights=f), system)["tpot_s"]),
                                         rel=1e-6)


def test_systems_with_and_without_a_tier_stack_into_one_batch():
    arch, wl = jm.load_model("llama-3-8b"), jm.Workload(batch=8, offload_kv=0.5)
    plain = jm.load_hardware("h100-sxm").datasheet()
    systems = [plain, with_tier(plain), with_tier(plain, 450e9, 480e9)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *systems)
    out = jax.jit(jax.vmap(lambda s: inference.evaluate(arch, wl, s, jm.ideal())))(stacked)
    for i, s in enumerate(systems):
        assert float(out["tpot_s"][i]) == pytest.approx(float(evaluate(arch, wl, s)["tpot_s"]), rel=1e-6)
    assert not bool(out["fits"][0]) and bool(out["fits"][1])  # no tier: nowhere to put the KV share


# ---- presets and bad input -------------------------------------------------------------------
def test_named_tiers_and_json_hardware_presets():
    assert {"pcie5-host", "pcie4-host", "nvlink-c2c", "cxl2-x16"} <= set(presets.list_offload())
    c2c = jm.load_offload("nvlink-c2c")
    assert float(c2c.bandwidth_Bps) == pytest.approx(450e9) and float(c2c.capacity_bytes) == pytest.approx(480e9)
    spec = presets.hardware_spec("h100-sxm")
    assert float(presets.system_from_dict(spec).offload.capacity_bytes) == 0.0  # no tier by default
    s = presets.system_from_dict({**spec, "offload": {"tier": "pcie5-host", "efficiency": 0.8}})
    assert float(s.offload.bandwidth_Bps) == pytest.approx(PCIE5) and float(s.offload.efficiency) == pytest.approx(0.8)
    s = presets.system_from_dict({**spec, "offload": {"bandwidth_Bps": 1e9, "capacity_bytes": 2e9}})
    assert float(s.offload.capacity_bytes) == pytest.approx(2e9) == float(s.datasheet().offload.capacity_bytes)
    with pytest.raises(ValueError, match="unknown offload tier 'pcie9'"):
        presets.system_from_dict({**spec, "offload": "pcie9"})
    with pytest.raises(ValueError, match="missing"):
        presets.offload_from_dict({"bandwidth_Bps": 1e9})


@pytest.mark.parametrize("make,message", [
    (lambda: jm.Workload(offload_weights=1.5), "Workload.offload_weights must be >= 0 and <= 1"),
    (lambda: jm.Workload(offload_kv=-0.1), "Workload.offload_kv must be >= 0 and <= 1"),
    (lambda: jm.Workload(offload_policy="auto"), "Workload.offload_policy must be one of"),
    (lambda: jm.OffloadMemory(-1.0, 1e9), "OffloadMemory.bandwidth_Bps must be >= 0"),
    (lambda: jm.OffloadMemory(1e9, -1.0), "OffloadMemory.capacity_bytes must be >= 0"),
    (lambda: jm.OffloadMemory(1e9, 1e9, 1.5), "OffloadMemory.efficiency must be > 0 and <= 1"),
    (lambda: memory.offload_plan(jm.load_model("llama-3-8b"), jm.Workload(), jm.load_hardware("b200"), "both"),
     "prefer must be 'kv' or 'weights'"),
])
def test_bad_input_names_the_field(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make()
