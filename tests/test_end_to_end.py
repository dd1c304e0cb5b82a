"""End-to-end offline-batch prediction (calibration.end_to_end): a hand-checkable case, the
scheduler's prefill steps, invariants, memory fit, and the loader -> prediction path."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmodel as jm
from calibration import end_to_end as e2e
from calibration.loaders import inference_bench

BENCH = inference_bench.DEFAULT_ROOT
needs_bench = pytest.mark.skipif(not (BENCH / "throughput_calibration.csv").is_file(),
                                 reason=f"LLM-Inference-Bench data not found at {BENCH}")


def tiny_point():
    arch = jm.Architecture(d_model=64, n_layers=2, vocab_size=128, n_heads=4, n_kv_heads=2, d_ff=128)
    chip = jm.Chip({"fp16": 2e12}, 1e11, 1e9, 1e12)
    system = jm.System(chip, 8, jm.Interconnect(1e10, 1e-6), jm.Interconnect(1e9, 1e-5))
    return arch, system, jm.load_calibration("ideal")


_parts = eqx.filter_jit(e2e.batch_latency_parts)
TINY_STEPS = 8  # context-vector length of every tiny-model call (one compilation)


def tiny_parts(**row):
    arch, system, eff = tiny_point()
    # Array values: a Python float would be a static argument of filter_jit (a recompilation each).
    return _parts(arch, {k: jnp.asarray(v) for k, v in row.items()}, system, eff, decode_steps=TINY_STEPS)


def test_prefill_schedule_by_hand():
    # vLLM Llama-2-7B, 64 prompts of 1024 tokens, budget 4096: 4 prompts per step, 16 steps.
    assert e2e.prefill_schedule(64.0, 1024.0, 4096.0) == (4.0, 16.0, 4.0)
    assert e2e.prefill_schedule(3.0, 8.0, 16.0) == (2.0, 2.0, 1.0)  # 2 + 1 prompts
    assert e2e.prefill_schedule(5.0, 100.0, np.inf) == (5.0, 1.0, 5.0)  # unlimited: one step
    assert e2e.prefill_schedule(2.0, 5000.0, 4096.0) == (1.0, 2.0, 1.0)  # a prompt over budget runs alone


def test_batch_latency_equals_prefill_steps_plus_every_decode_step():
    """3 prompts of 8 tokens, 5 output tokens, 16-token budget: prefill steps of 2 and 1 prompts,
    then 4 decode steps with 8, 9, 10, 11 cached tokens; each piece from jm.predict separately.
    The context vector has 8 entries, so the last 4 must be masked out."""
    arch, system, eff = tiny_point()
    got = tiny_parts(batch=3.0, input_tokens=8.0, output_tokens=5.0, tp=1.0, max_batched_tokens=16.0)

    def predict(**wl):
        return jm.predict(arch, jm.Workload(dtype="fp16", **wl), system, eff)

    prefill = predict(batch=2, input_tokens=8, output_tokens=2)["prefill_s"] + predict(
        batch=1, input_tokens=8, output_tokens=2)["prefill_s"]
    # jaxmodel's decode step sits at input + output / 2 cached tokens: input c - 1, output 2 -> c.
    decode = sum(predict(batch=3, input_tokens=c - 1, output_tokens=2)["decode_step_s"] for c in (8, 9, 10, 11))
    assert float(got["prefill_steps"]) == 2.0 and float(got["prompts_per_step"]) == 2.0
    assert float(got["prefill_s"]) == pytest.approx(prefill, rel=1e-5)
    assert float(got["decode_s"]) == pytest.approx(decode, rel=1e-5)
    assert float(got["latency_s"]) == pytest.approx(prefill + decode, rel=1e-5)


def test_host_overhead_is_paid_per_step_and_per_sequence():
    """The engine's host overhead (Efficiency.step_overhead_s + sequence_overhead_s per sequence)
    adds exactly steps * o + batch * output_tokens * s to a batch: the closed form that
    fit_host_overhead fits. 3 prompts, 16-token budget: 2 prefill steps + 4 decode steps."""
    arch, system, eff = tiny_point()
    row = {k: jnp.asarray(v) for k, v in dict(batch=3.0, input_tokens=8.0, output_tokens=5.0, tp=1.0,
                                               max_batched_tokens=16.0).items()}
    base = _parts(arch, row, system, eff, decode_steps=TINY_STEPS)
    host = e2e.with_host_overhead(eff, {"step_overhead_s": 2e-3, "sequence_overhead_s": 1e-4})
    got = _parts(arch, row, system, host, decode_steps=TINY_STEPS)
    frame = pd.DataFrame({"prefill_steps": [2.0], "output_tokens": [5.0], "batch": [3.0]})
    steps, sequence_steps = e2e.host_counts(frame)
    assert (steps[0], sequence_steps[0]) == (6.0, 15.0)
    assert float(got["latency_s"]) == pytest.approx(float(base["latency_s"]) + 6 * 2e-3 + 15 * 1e-4, rel=1e-5)


def test_host_overhead_fit_recovers_known_seconds():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"prefill_steps": rng.integers(1, 4, 60).astype(float),
                          "output_tokens": rng.choice([128.0, 512.0], 60), "batch": rng.choice([1.0, 16.0, 64.0], 60)})
    gpu = rng.uniform(0.5, 20.0, 60)
    steps, sequence_steps = e2e.host_counts(frame)
    frame["latency_s"] = gpu + steps * 3e-3 + sequence_steps * 7e-5
    result = e2e.fit_host_overhead(frame, gpu)
    assert result.params["step_overhead_s"] == pytest.approx(3e-3, rel=1e-4)
    assert result.params["sequence_overhead_s"] == pytest.approx(7e-5, rel=1e-4)


def test_single_output_token_has_no_decode_step():
    got = tiny_parts(batch=2.0, input_tokens=8.0, output_tokens=1.0, tp=1.0, max_batched_tokens=np.inf)
    assert float(got["decode_s"]) == 0.0
    assert float(got["latency_s"]) == pytest.approx(float(got["prefill_s"]))


def test_batch_latency_s_is_the_sum_of_the_parts():
    # The public one-number entry point, eager (un-jitted), on one prefill step and one decode step.
    arch, system, eff = tiny_point()
    row = dict(batch=2.0, input_tokens=8.0, output_tokens=2.0, tp=1.0)
    assert float(e2e.batch_latency_s(arch, row, system, eff)) == pytest.approx(
        float(tiny_parts(**row, max_batched_tokens=np.inf)["latency_s"]), rel=1e-6)


def synthetic_table(**overrides) -> pd.DataFrame:
    base = dict(gpu="h100_sxm", framework="vllm", model="meta-llama/Meta-Llama-3-8B", tp=1.0, pp=1.0, batch=16.0,
                input_tokens=128.0, output_tokens=128.0, dtype="fp16", kv_dtype="fp16", latency_s=1.0)
    rows = []
    keys = list(overrides)
    for values in zip(*overrides.values()):
        rows.append({**base, **dict(zip(keys, values))})
    return pd.DataFrame(rows)


#: One context-vector length for every table below, so they share compilations.
DECODE_STEPS = 511
A100_ROWS = 6  # the synthetic table's last rows: Llama-2-7B on A100-40GB, batch 64 and 16


@pytest.fixture(scope="module")
def synthetic():
    h100 = synthetic_table(batch=[1.0, 16.0, 64.0, 16.0, 16.0, 16.0],
                           output_tokens=[128.0, 128.0, 128.0, 32.0, 256.0, 128.0],
                           framework=["vllm"] * 5 + ["trtllm"])
    a100 = synthetic_table(gpu=["a100_sxm"] * 2, model=["meta-llama/Llama-2-7b-hf"] * 2, batch=[64.0, 16.0],
                           input_tokens=[512.0, 512.0], output_tokens=[512.0, 512.0])
    table = pd.concat([h100, a100], ignore_index=True)
    return table.join(e2e.predict_table(table, jm.load_calibration("ideal"), decode_steps=DECODE_STEPS))


@pytest.fixture(scope="module")
def invariants(synthetic):
    return synthetic.iloc[:A100_ROWS]


def test_latency_grows_with_batch_and_output_tokens(invariants):
    t = invariants["predicted_s"].to_numpy()
    assert (invariants["status"] == "").all() and invariants["fits"].all()
    assert t[0] < t[1] < t[2]  # batch 1 < 16 < 64
    assert t[3] < t[1] < t[4]  # 32 < 128 < 256 output tokens


def test_decode_steps_linear_in_context_so_mean_context_is_exact(invariants):
    # With a roofline step time linear in the context, the exact sum equals (steps) x (mean step).
    ratio = invariants["decode_mean_context_s"] / invariants["decode_s"]
    np.testing.assert_allclose(ratio, 1.0, rtol=1e-4)


def test_framework_budgets(invariants):
    assert invariants["max_batched_tokens"].tolist() == [8192.0] * 6  # vLLM: max(8192, 2048); TRT-LLM 8192
    assert e2e.prefill_token_budget("vllm", "meta-llama/Llama-2-7b-hf") == 4096.0
    assert e2e.prefill_token_budget("vllm", "huggyllama/llama-7b") == 2048.0
    assert e2e.prefill_token_budget("trtllm", "Qwen/Qwen2-7B") == 8192.0
    with pytest.raises(ValueError, match="framework"):
        e2e.prefill_token_budget("deepspeed-mii", "Qwen/Qwen2-7B")


def test_unsupported_model_and_framework_are_skipped_with_reason():
    table = synthetic_table(model=["Deci/DeciLM-7B", "meta-llama/Meta-Llama-3-8B"],
                            framework=["vllm", "deepspeed-mii"])
    out = e2e.predict_table(table, jm.load_calibration("ideal"))
    assert "variable GQA" in out["status"].iloc[0] and "not modelled" in out["status"].iloc[1]
    assert out["predicted_s"].isna().all()
    with pytest.raises(ValueError, match="Deci/DeciLM-7B"):
        e2e.architecture("Deci/DeciLM-7B")


def test_every_mapped_model_builds_and_matches_its_parameter_count():
    # Published sizes (billions of parameters) of the models the mapping writes out by hand.
    published = {"mistralai/Mistral-7B-v0.1": 7.24, "Qwen/Qwen2-7B": 7.62, "Qwen/Qwen1.5-7B": 7.72,
                 "EleutherAI/gpt-j-6b": 6.05, "facebook/opt-6.7b": 6.66, "bigscience/bloom-7b1": 7.07,
                 "BAAI/Aquila-7B": 7.26, "huggyllama/llama-7b": 6.74}
    for model, billions in published.items():
        assert float(jm.total_parameters(e2e.architecture(model))) / 1e9 == pytest.approx(billions, rel=0.02), model


def test_a100_40gb_preset_differs_from_80gb_only_in_memory():
    a40, a80 = jm.load_hardware("a100-sxm-40gb"), jm.load_hardware("a100-sxm-80gb")
    assert float(a40.chip.mem_bw_Bps) == pytest.approx(1555e9, rel=1e-6)
    assert float(a40.chip.mem_capacity_bytes) == 40 * 2**30
    assert float(a40.chip.tensor_peak("fp16")) == float(a80.chip.tensor_peak("fp16"))
    assert float(a40.scale_up.bandwidth_Bps) == float(a80.scale_up.bandwidth_Bps)
    assert "a100-sxm-40gb" in jm.list_hardware()


def test_llama2_7b_batch_64_does_not_fit_a100_40gb(synthetic):
    out = synthetic.iloc[A100_ROWS:]
    # 64 x 1024 tokens x 0.5 MiB of KV cache = 32 GiB + 12.6 GiB of weights > 36 GiB usable;
    # 16 sequences (8 GiB) fit.
    assert out["fits"].tolist() == [False, True]
    assert out["waves_s"].iloc[0] > out["predicted_s"].iloc[0]
    assert np.isnan(out["waves_s"].iloc[1])


@pytest.fixture(scope="module")
def bench_rows():
    table = inference_bench.load()
    table = table[table["framework"].isin(e2e.FRAMEWORKS)]
    pick = table[(table["model"] == "meta-llama/Meta-Llama-3-8B") & (table["tp"] == 1.0)
                 & (table["input_tokens"].isin([128.0, 512.0])) & (table["batch"].isin([1.0, 32.0]))]
    return pick.join(e2e.predict_table(pick, jm.load_calibration("ideal"), decode_steps=DECODE_STEPS))


@needs_bench
def test_loader_to_prediction_on_real_rows(bench_rows):
    rows = bench_rows
    assert len(rows) >= 8 and set(rows["gpu"]) == {"a100_sxm", "h100_sxm"}
    assert (rows["status"] == "").all() and rows["fits"].all()
    ratio = rows["predicted_s"] / rows["latency_s"]
    # The datasheet roofline is a lower bound that real runs reach within a factor of about 2-3.
    assert ((ratio > 0.25) & (ratio < 1.0)).all(), ratio.tolist()
    # Prefill steps of at most 8192 prompt tokens (both frameworks here); decode dominates
    # these rows (L_out = L_in).
    np.testing.assert_array_equal(rows["prefill_steps"], np.ceil(rows["batch"] * rows["input_tokens"] / 8192.0))
    assert (rows["decode_s"] > rows["prefill_s"]).all()


def test_too_short_context_vector_is_an_error():
    arch, system, eff = tiny_point()
    row = dict(batch=1.0, input_tokens=8.0, output_tokens=10.0, tp=1.0)
    with pytest.raises(ValueError, match="decode_steps"):
        e2e.batch_latency_parts(arch, row, system, eff, decode_steps=4)
    with pytest.raises(ValueError, match="decode_steps"):
        e2e.predict_table(synthetic_table(output_tokens=[128.0]), jm.load_calibration("ideal"), decode_steps=8)
