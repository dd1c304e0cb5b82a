"""Platform requirements (jaxmodel.requirements): the inverse of evaluate, checked by plugging back.

Every requirements() call below uses 100 use cases and the default options, so the solver
compiles once (the architecture's leaves are traced, so switching models reuses it), plus
one compile for single use cases.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmodel as jm
from jaxmodel import requirements as rq

N = 100


def _random_cases(seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(dict(
        input_tokens=rng.integers(64, 4096, N),
        output_tokens=rng.integers(16, 1024, N),
        batch=rng.integers(1, 9, N),
        ttft_s=np.exp(rng.uniform(np.log(0.1), np.log(5.0), N)),
        tpot_s=np.exp(rng.uniform(np.log(5e-3), np.log(50e-3), N)),
        tp=rng.choice([1, 2, 4, 8], N),
        pp=rng.choice([1, 2], N),
    ))


def _unreachable(cases):
    cases = cases.copy()
    cases.loc[0, ["tp", "tpot_s"]] = [8, 1e-6]  # below the TP all-reduce latency floor
    cases.loc[1, "ttft_s"] = 1e-9  # below every latency floor
    return cases


@pytest.fixture(scope="module")
def cases():
    return _unreachable(_random_cases())


@pytest.fixture(scope="module")
def solved(llama70b, cases):
    return rq.requirements(llama70b, cases)


def _plug_back(arch, system, rows, scale=1.0):
    """evaluate() at each row's per-device answer (times ``scale``), independently of the solver."""
    n = len(rows)

    def leaf(col):
        return jnp.asarray(rows[col].to_numpy(dtype=float))

    beams = {"beam_width": leaf("beam_width")} if "beam_width" in rows else {}
    wl = jm.Workload(batch=leaf("batch"), input_tokens=leaf("input_tokens"), output_tokens=leaf("output_tokens"),
                     tp=leaf("tp"), pp=leaf("pp"), **beams)
    wl = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,)), wl)

    def one(w, c, b, cap):
        s = eqx.tree_at(lambda s: [s.chip.tensor_flops["bf16"], s.chip.mem_bw_Bps, s.chip.mem_capacity_bytes],
                        system, [c, b, cap])
        out = jm.evaluate(arch, w, s, jm.ideal())
        return {k: out[k] for k in ("ttft_s", "tpot_s", "memory_bytes", "status")}

    return jax.device_get(jax.jit(jax.vmap(one))(
        wl, scale * leaf("compute_flops_per_device"), scale * leaf("mem_bw_Bps_per_device"),
        leaf("mem_capacity_bytes_per_device")))


def test_plug_back_meets_targets_minimally(llama70b, h100, solved):
    ok = solved[solved.status == 0]
    assert len(ok) >= 60, solved.status_name.value_counts()
    assert set(ok.devices) >= {1, 2, 4, 8, 16}
    out = _plug_back(llama70b, h100, ok)
    ttft_ratio = out["ttft_s"] / ok.ttft_target_s.to_numpy()
    tpot_ratio = out["tpot_s"] / ok.tpot_target_s.to_numpy()
    assert np.all(ttft_ratio <= 1.01) and np.all(tpot_ratio <= 1.01)
    # Minimal: one target is met with equality ...
    assert np.all(np.maximum(ttft_ratio, tpot_ratio) >= 0.99)
    # ... so 2% less compute and bandwidth breaks a target.
    down = _plug_back(llama70b, h100, ok, scale=0.98)
    broken = (down["ttft_s"] > ok.ttft_target_s.to_numpy()) | (down["tpot_s"] > ok.tpot_target_s.to_numpy())
    assert np.all(broken)
    # The reported achieved latencies are the forward model's.
    np.testing.assert_allclose(ok.ttft_s, out["ttft_s"], rtol=1e-5)
    np.testing.assert_allclose(ok.tpot_s, out["tpot_s"], rtol=1e-5)


def test_capacity_is_memory_over_utilization(llama70b, h100, solved):
    out = _plug_back(llama70b, h100, solved)
    np.testing.assert_allclose(solved.mem_capacity_bytes_per_device, out["memory_bytes"] / 0.9, rtol=1e-6)
    np.testing.assert_allclose(solved.mem_capacity_bytes, solved.mem_capacity_bytes_per_device * solved.devices)
    np.testing.assert_allclose(solved.compute_flops, solved.compute_flops_per_device * solved.devices)
    np.testing.assert_allclose(solved.mem_bw_Bps, solved.mem_bw_Bps_per_device * solved.devices)
    # Capacity does not depend on the chip's speed, and the answer fits exactly.
    assert np.all((out["status"] & jm.status.DOES_NOT_FIT) == 0)


def test_tighter_tpot_needs_more_bandwidth(llama70b, cases, solved):
    tight = rq.requirements(llama70b, cases.assign(tpot_s=0.7 * cases.tpot_s))
    both = (solved.status == 0) & (tight.status == 0)
    assert both.sum() >= 50
    assert np.all(tight.mem_bw_Bps[both] >= solved.mem_bw_Bps[both] * (1 - 1e-5))
    assert np.median(tight.mem_bw_Bps[both] / solved.mem_bw_Bps[both]) > 1.2


def _decode_step_bytes(arch, context):
    """Bytes one batch-1 decode step reads, by hand from the Llama-3 shapes (bf16): every
    weight (the embedding table is gathered, not read; the LM head is untied) plus the KV
    cache of ``context`` tokens."""
    d, hd, layers = float(arch.d_model), float(arch.head_dim), float(arch.n_layers)
    attention = d * hd * (2 * float(arch.n_heads) + 2 * float(arch.n_kv_heads))
    ffn = 3 * d * float(arch.d_ff)
    kv = 2 * layers * float(arch.n_kv_heads) * hd * context
    return 2.0 * (layers * (attention + ffn) + float(arch.vocab_size) * d + kv)


@pytest.mark.parametrize("model", ["llama-3-8b", "llama-3-70b"])
def test_decode_bound_bandwidth_is_weights_over_tpot(model):
    arch = jm.load_model(model)
    rng = np.random.default_rng(1)
    tpot = np.exp(rng.uniform(np.log(5e-3), np.log(100e-3), N))
    tp = rng.choice([1, 2], N)
    # Batch 1 with a 2048-token prompt due in 1 s: prefill needs ~10x the compute per byte
    # that decode does, so decode is bandwidth-bound; and prefill's own bandwidth need
    # (weights once per TTFT) is far below decode's (weights once per TPOT).
    cases = pd.DataFrame(dict(input_tokens=2048, output_tokens=16, batch=1, ttft_s=1.0, tpot_s=tpot, tp=tp, pp=1))
    r = rq.requirements(arch, cases)
    assert np.all(r.status == 0)
    step_bytes = _decode_step_bytes(arch, context=2048 + 16 / 2)
    assert np.all(r.tpot_s >= 0.99 * tpot)  # TPOT is the binding target
    # One device: bandwidth = model bytes / TPOT.
    one = tp == 1
    np.testing.assert_allclose(r.mem_bw_Bps[one], step_bytes / tpot[one], rtol=0.03)
    # Two devices: half the bytes each, but the TP all-reduces eat into the TPOT budget.
    assert np.all(r.mem_bw_Bps_per_device[~one] >= 0.99 * step_bytes / 2 / tpot[~one])


def test_unreachable_targets_are_flagged_not_nan(solved):
    numeric = solved.select_dtypes("number")
    assert np.all(np.isfinite(numeric.to_numpy(dtype=float)))
    assert solved.status[0] & rq.TPOT_UNREACHABLE
    assert solved.status[1] & rq.TTFT_UNREACHABLE
    assert "tpot_unreachable" in solved.status_name[0]
    assert not np.any(solved.status[2:] & rq.NOT_CONVERGED)


def test_vmap_matches_one_by_one(llama70b, cases, solved):
    for i in (0, 3, 7, 42):
        one = rq.requirements(llama70b, cases.iloc[i:i + 1])
        for col in ("compute_flops", "mem_bw_Bps", "mem_capacity_bytes", "ttft_s", "tpot_s", "status"):
            np.testing.assert_allclose(one[col].iloc[0], solved[col].iloc[i], rtol=1e-5, err_msg=col)


def test_beam_search_use_cases_plug_back(llama70b, h100):
    """GenZ Table III with its beam widths: every beam decodes and keeps its own KV, so the
    answer needs at least the greedy answer's bandwidth and capacity, and still meets the targets."""
    cases = rq.GENZ_USE_CASES.assign(tp=8)
    beam = rq.requirements(llama70b, cases)
    greedy = rq.requirements(llama70b, cases, beam_search=False)
    assert np.all(beam.status == 0) and np.all(greedy.status == 0)
    out = _plug_back(llama70b, h100, beam)
    assert np.all(out["ttft_s"] <= 1.01 * beam.ttft_target_s.to_numpy())
    assert np.all(out["tpot_s"] <= 1.01 * beam.tpot_target_s.to_numpy())
    np.testing.assert_allclose(beam.mem_capacity_bytes_per_device, out["memory_bytes"] / 0.9, rtol=1e-6)
    # Extra beams add exactly (S_b - 1) * B * output_tokens cached tokens to the greedy KV.
    extra_tokens = (cases.beam_width - 1) * cases.batch * cases.output_tokens
    greedy_tokens = cases.batch * (cases.input_tokens + cases.output_tokens)
    np.testing.assert_allclose(beam.kv_cache_bytes_per_device / greedy.kv_cache_bytes_per_device,
                               1.0 + extra_tokens / greedy_tokens, rtol=1e-6)
    assert np.all(beam.mem_bw_Bps >= greedy.mem_bw_Bps * (1 - 1e-4))
    assert np.all(beam.mem_capacity_bytes > greedy.mem_capacity_bytes)


def test_genz_use_cases_table():
    t = rq.GENZ_USE_CASES
    assert list(t.name) == ["Question Answering", "Chat Services", "QA + RAG", "Text Summarization",
                            "Code Generation"]
    assert list(t.input_tokens) == [1000, 3000, 10000, 15000, 20000]
    assert list(t.tpot_s) == pytest.approx([0.01, 0.01, 0.01, 0.02, 0.02])


@pytest.mark.parametrize("bad, field", [
    (dict(tpot_s=-1.0), "tpot_s"),
    (dict(batch=1.5), "batch"),
    (dict(ttft_s=np.nan), "ttft_s"),
    (dict(tp=0), "tp"),
])
def test_bad_input_names_the_field(llama70b, bad, field):
    case = dict(input_tokens=100, output_tokens=10, batch=1, ttft_s=1.0, tpot_s=0.01)
    case.update(bad)
    with pytest.raises(ValueError, match=field):
        rq.requirements(llama70b, case)


def test_missing_field(llama70b):
    with pytest.raises(ValueError, match="tpot_s"):
        rq.requirements(llama70b, dict(input_tokens=100, output_tokens=10, batch=1, ttft_s=1.0))
