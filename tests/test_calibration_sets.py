"""Fitted calibration sets: they load by name, the engine times each row with the set's
kernel models exactly as calibration predicts the measured kernel, and they stay
differentiable and vectorizable."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmodel as jm
from calibration.ops import attention as attention_ops
from jaxmodel import ops
from jaxmodel.perf import roofline

from .conftest import run_cli

SETS = {"h100-vllm": "h100-sxm", "a100-vllm": "a100-sxm-80gb"}
GPU = {"h100-vllm": "h100_sxm", "a100-vllm": "a100_sxm"}


def test_committed_sets_are_listed_and_carry_every_kernel_model():
    assert set(SETS) <= set(jm.presets.list_calibrations())
    for name in SETS:
        eff = jm.load_calibration(name)
        assert eff.gemm is not None and eff.attention is not None and eff.collectives is not None
        assert float(eff.cores) in (108.0, 132.0)
        spec = jm.presets.calibration_spec(name)
        for family in ("gemm", "attention", "collectives"):
            assert set(spec[family]["stderr"]) <= set(spec[family]["params"])
            assert spec[family]["rows"] > 100


def _table_and_times(arch, wl, system, eff, decode=True):
    step = ops.decode_step(wl, wl.batch, 1000.0) if decode else ops.prefill_step(wl, wl.batch)
    table = ops.build_op_table(arch, wl, step, groups=("decode",) if decode else ("prompt",))
    return table, roofline.row_times(table, system, eff, "bf16")


@pytest.mark.parametrize("name", list(SETS))
def test_engine_times_a_gemm_row_with_the_fitted_gemm_model(name):
    arch, wl = jm.load_model("llama-3-8b"), jm.Workload(batch=8, input_tokens=512, output_tokens=64, tp=1)
    system, eff = jm.load_hardware(SETS[name]), jm.load_calibration(name)
    table, times = _table_and_times(arch, wl, system, eff, decode=False)
    i = [r.name for r in table.rows].index("qkv_proj")
    direct = eff.gemm.time_s(table.m[i], table.n[i], table.k[i], table.matmuls[i], table.flops[i],
                             table.total_bytes(i), system.chip.tensor_peak("bf16"), system.chip.mem_bw_Bps,
                             system.chip.cores)
    assert float(times.time[i]) == pytest.approx(float(direct), rel=1e-6)


@pytest.mark.parametrize("name", list(SETS))
def test_engine_decode_attention_equals_the_calibration_prediction_of_the_same_kernel(name):
    """The engine's decode-attention row and the adapter's view of a measured kernel of the
    same shape (batch 8, 1001 keys, 32 query / 8 KV heads of 128) must agree: the fit is only
    meaningful if both count the work the same way."""
    arch, wl = jm.load_model("llama-3-8b"), jm.Workload(batch=8, input_tokens=512, output_tokens=64, tp=1)
    system, eff = jm.load_hardware(SETS[name]), jm.load_calibration(name)
    table, times = _table_and_times(arch, wl, system, eff, decode=True)
    i = [r.name for r in table.rows].index("attention_decode")
    measured_like = pd.DataFrame({"op": ["attention_decode"], "batch": [8.0], "seq_q": [1.0], "seq_kv": [1001.0],
                                  "heads": [32.0], "kv_heads": [8.0], "head_dim": [128.0], "dtype": ["bf16"],
                                  "kernel": ["vllm_flash_attn kv:bf16"], "gpu": [GPU[name]]})
    spec = jm.presets.calibration_spec(name)
    predicted = attention_ops.predict(spec["attention"]["params"], attention_ops.rows(measured_like, system))
    assert float(times.time[i]) == pytest.approx(float(predicted[0]), rel=1e-5)


@pytest.mark.parametrize("name", list(SETS))
def test_calibrated_engine_is_slower_than_the_roofline_and_differentiable(name):
    arch = jm.load_model("llama-3-70b")
    wl = jm.Workload(batch=16, input_tokens=1024, output_tokens=128, tp=4)
    system, eff = jm.load_hardware(SETS[name]).datasheet(), jm.load_calibration(name)
    ideal = jm.evaluate(arch, wl, system, jm.ideal())
    calibrated = jm.evaluate(arch, wl, system, eff)
    for key in ("prefill_s", "decode_step_s"):
        assert float(calibrated[key]) > float(ideal[key])
        assert float(calibrated[key]) < 3.0 * float(ideal[key])  # real kernels reach a good share of peak

    grads = jax.grad(lambda s: jm.evaluate(arch, wl, s, eff)["decode_step_s"])(system)
    assert np.isfinite(float(grads.chip.mem_bw_Bps)) and float(grads.chip.mem_bw_Bps) < 0
    assert np.isfinite(float(grads.scale_up.bandwidth_Bps))


def test_calibrated_sweep_vectorizes_over_bandwidth():
    arch, wl = jm.load_model("llama-3-8b"), jm.Workload(batch=8, input_tokens=512, output_tokens=64)
    system, eff = jm.load_hardware("h100-sxm").datasheet(), jm.load_calibration("h100-vllm")
    bandwidths = jnp.array([1e12, 2e12, 4e12])

    def decode(bw):
        chip = jm.Chip(system.chip.tensor_flops, system.chip.vector_flops, bw, system.chip.mem_capacity_bytes)
        s = jm.System(chip, system.devices_per_node, system.scale_up, system.scale_out, system.economics)
        return jm.evaluate(arch, wl, s, eff)["decode_step_s"]

    times = jax.jit(jax.vmap(decode))(bandwidths)
    assert np.all(np.diff(np.asarray(times)) < 0)
    assert float(times[1]) == pytest.approx(float(decode(bandwidths[1])), rel=1e-5)


def test_datasheet_chip_with_kernel_models_needs_a_core_count():
    arch, wl = jm.load_model("llama-3-8b"), jm.Workload(batch=1, input_tokens=128, output_tokens=8)
    spec = dict(jm.presets.calibration_spec("h100-vllm"), cores=None)
    eff = jm.presets.efficiency_from_dict(spec)
    with pytest.raises(ValueError, match="Efficiency.cores"):
        jm.evaluate(arch, wl, jm.load_hardware("h100-sxm").datasheet(), eff)


def test_unknown_calibration_names_the_choices():
    with pytest.raises(ValueError, match="h100-vllm"):
        jm.load_calibration("h100-vlm")


def test_cli_predict_with_a_fitted_set_and_a_bad_one():
    args = ["predict", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--batch", "4", "--input-tokens", "256",
            "--output-tokens", "16", "--json"]
    ideal = json.loads(run_cli(*args).stdout)
    fitted = run_cli(*args, "--calibration", "h100-vllm")
    assert fitted.returncode == 0, fitted.stderr
    fitted = json.loads(fitted.stdout)
    assert fitted["calibration"] == "h100-vllm" and fitted["decode_step_s"] > ideal["decode_step_s"]
    bad = run_cli(*args, "--calibration", "nope")
    assert bad.returncode == 2 and "unknown calibration 'nope'" in bad.stderr


def test_cli_calibrate_fits_a_users_kernels_and_predict_loads_the_result(tmp_path):
    """A user's own GEMM and collective measurements (generated from known parameters of the
    committed H100 set) fit into a set that `predict --calibration FILE` then uses."""
    rng = np.random.default_rng(0)
    m = 2.0 ** rng.integers(0, 13, 300)
    n, k = 2.0 ** rng.integers(9, 15, 300), 2.0 ** rng.integers(9, 15, 300)
    eff, system = jm.load_calibration("h100-vllm"), jm.load_hardware("h100-sxm")
    t = eff.gemm.time_s(m, n, k, 1.0, 2 * m * n * k, 2 * (m * k + k * n + m * n), system.chip.tensor_peak("bf16"),
                        system.chip.mem_bw_Bps, 132.0)
    gemms = pd.DataFrame({"gpu": "my_gpu", "op": "gemm", "dtype": "bf16", "m": m, "n": n, "k": k,
                          "measured_us": np.asarray(t) * 1e6 * np.exp(rng.normal(0, 0.02, 300))})
    path = tmp_path / "kernels.csv"
    gemms.to_csv(path, index=False)
    out = tmp_path / "mine.json"
    done = run_cli("calibrate", "--hardware", "h100-sxm", "--kernels", str(path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    spec = json.loads(out.read_text())
    assert spec["gemm"]["rows"] == 300 and spec["gemm"]["in_sample"]["geomean_pct"] < 5
    assert "attention" not in spec  # no attention rows were given
    predicted = run_cli("predict", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--batch", "4", "--input-tokens",
                     "256", "--output-tokens", "16", "--calibration", str(out), "--json")
    assert predicted.returncode == 0, predicted.stderr
    bad = run_cli("calibrate", "--hardware", "h100-sxm", "--out", str(tmp_path / "x.json"))
    assert bad.returncode == 2 and "--kernels" in bad.stderr
