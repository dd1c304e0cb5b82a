"""Sweep specs: point generation (grids, random and Latin-hypercube samples), validation, and
runs to parquet that resume after an interruption and do not depend on the device count."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import jaxmodel as jm
from jaxmodel import sweep_run
from jaxmodel.sweep import grid_sweep
from jaxmodel.sweep_spec import _permute, join_parameters, load_spec

BW, FLOPS, BATCH, TP = ("system.chip.mem_bw_Bps", "system.chip.tensor_flops.bf16", "workload.batch", "workload.tp")


def small_spec(**changes):
    spec = {
        "model": "llama-3-8b", "hardware": "h100-sxm",
        "workload": {"batch": 8, "input_tokens": 1024, "output_tokens": 128, "tp": 1},
        "grid": {BW: {"linspace": [1.0e12, 4.0e12, 4]}, BATCH: [1, 16, 256]},
        "sample": {"method": "lhs", "points": 50, "seed": 3,
                   "parameters": {FLOPS: {"loguniform": [2.0e14, 2.0e15]}, TP: {"choice": [1, 2, 4]}}},
        "constraints": ["status == 0", "tpot_s <= 0.02"],
        "metrics": ["ttft_s", "tpot_s", "memory_bytes"],
        "chunk_size": 64,
    }
    spec.update(changes)
    return spec


def test_grid_forms_and_point_order():
    spec = load_spec(small_spec(sample=None, grid={
        BW: {"geomspace": [1e12, 4e12, 3]}, BATCH: {"range": [1, 10, 4]}, TP: {"values": [1, 2]},
        "workload.input_tokens": [128, 256]}))
    assert spec.total == 3 * 3 * 2 * 2
    np.testing.assert_allclose(spec.grid_values[0], [1e12, 2e12, 4e12])
    np.testing.assert_array_equal(spec.grid_values[1], [1, 5, 9])
    cols = spec.parameters_at(np.arange(spec.total))
    # First path slowest: point 15 = 12 + 2 + 1 is (1, 0, 1, 1) in shape (3, 3, 2, 2).
    assert (cols[BW][15], cols[BATCH][15], cols[TP][15], cols["workload.input_tokens"][15]) == (
        np.float32(2e12), 1, 2, 256)


def test_random_samples_are_in_bounds_and_a_function_of_the_index():
    spec = load_spec(small_spec(grid={}, sample={"method": "random", "points": 2000, "seed": 1, "parameters": {
        FLOPS: {"uniform": [1e14, 3e14]}, BATCH: {"integers": [1, 4]}}}))
    cols = spec.parameters_at(np.arange(2000))
    assert cols[FLOPS].min() >= 1e14 and cols[FLOPS].max() <= 3e14
    assert set(np.unique(cols[BATCH])) == {1, 2, 3, 4}  # inclusive bounds, all reached
    subset = np.array([1999, 7, 512])
    again = spec.parameters_at(subset)
    np.testing.assert_array_equal(again[FLOPS], cols[FLOPS][subset])
    other = load_spec(small_spec(grid={}, sample={"method": "random", "points": 2000, "seed": 2, "parameters": {
        FLOPS: {"uniform": [1e14, 3e14]}}}))
    assert not np.array_equal(other.parameters_at(np.arange(10))[FLOPS], cols[FLOPS][:10])


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_feistel_permutation_is_a_bijection(n):
    import jax.numpy as jnp

    values = np.asarray(_permute(jnp.arange(n, dtype=jnp.int32), n, key=11))
    np.testing.assert_array_equal(np.sort(values), np.arange(n))
    if n >= 64:
        assert (values != np.arange(n)).mean() > 0.9  # shuffled, not the identity


def test_latin_hypercube_puts_one_sample_in_every_stratum():
    n = 500
    spec = load_spec(small_spec(grid={}, sample={"method": "lhs", "points": n, "seed": 0, "parameters": {
        FLOPS: {"uniform": [0.0, 1.0]}, "workload.input_tokens": {"uniform": [0.0, 1000.0]},
        TP: {"choice": [1, 2, 4, 8, 16]}}}))
    cols = spec.parameters_at(np.arange(n))
    for path, scale in ((FLOPS, 1.0), ("workload.input_tokens", 1000.0)):
        strata = np.floor(cols[path] / scale * n).astype(int)
        np.testing.assert_array_equal(np.sort(strata), np.arange(n))
    # Strata map evenly onto choices: each of 5 values exactly n / 5 times.
    assert set(np.unique(cols[TP], return_counts=True)[1]) == {n // 5}


@pytest.mark.parametrize("change,message", [
    ({"colour": 1}, "unknown key"),
    ({"grid": {"system.chip.warp_drive": [1, 2]}}, "warp_drive"),
    ({"grid": {BW: []}}, "no values"),
    ({"grid": {BW: {"linspace": [1, 2]}}}, "linspace"),
    ({"grid": {BW: {"geomspace": [0, 2, 3]}}}, "geomspace bounds must be > 0"),
    ({"grid": {FLOPS: [1e14]}}, "appear both"),
    ({"metrics": ["tpot_s", "happiness"]}, "unknown metric 'happiness'"),
    ({"constraints": ["tpot_s ~ 3"]}, "write 'name op number'"),
    ({"constraints": ["speed <= 3"]}, "neither a metric nor a swept path"),
    ({"keep": "some"}, "'keep' must be"),
    ({"chunk_size": 0}, "'chunk_size'"),
    ({"fidelity": "quantum"}, "'fidelity'"),
    ({"workload": {"batch": 1, "tempo": 3}}, "'workload'"),
    ({"sample": {"method": "sobol", "points": 3, "parameters": {FLOPS: {"uniform": [1, 2]}}}}, "sample.method"),
    ({"sample": {"points": 0, "parameters": {FLOPS: {"uniform": [1, 2]}}}}, "sample.points"),
    ({"sample": {"points": 5, "parameters": {FLOPS: {"loguniform": [0, 2]}}}}, "loguniform needs 0 <"),
    ({"sample": {"points": 5, "parameters": {FLOPS: {"normal": [0, 2]}}}}, "give one of"),
    ({"sample": {"points": 2**30, "parameters": {FLOPS: {"uniform": [1, 2]}}}}, "exceed"),
])
def test_bad_specs_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        load_spec(small_spec(**change))


def test_spec_files_yaml_and_json(tmp_path):
    spec = small_spec()
    (tmp_path / "s.json").write_text(json.dumps(spec))
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert load_spec(tmp_path / "s.json").fingerprint == load_spec(tmp_path / "s.yaml").fingerprint
    (tmp_path / "s.txt").write_text("x")
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.json"):
        load_spec(tmp_path / "s.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_run_matches_grid_sweep_and_evaluates_constraints(tmp_path):
    spec = load_spec(small_spec(sample=None))
    summary = sweep_run.run(spec, tmp_path / "out", progress=False)
    assert (summary.total, summary.evaluated, summary.rows_written) == (12, 12, 12)
    df = sweep_run.load_results(tmp_path / "out")
    ref = grid_sweep(jm.load_model("llama-3-8b"), jm.Workload(batch=8, input_tokens=1024, output_tokens=128),
                     jm.load_hardware("h100-sxm").datasheet(), grid=spec.raw["grid"],
                     metrics=("ttft_s", "tpot_s", "memory_bytes", "status"))
    np.testing.assert_array_equal(df["point"], np.arange(12))
    for col in (BW, BATCH, "ttft_s", "tpot_s", "memory_bytes", "status"):
        np.testing.assert_array_equal(df[col].to_numpy(), ref[col].to_numpy())
    expected = (ref["status"] == 0) & (ref["tpot_s"] <= 0.02)
    np.testing.assert_array_equal(df["meets_constraints"], expected)
    assert 0 < expected.sum() < 12  # the constraints bite on this grid

    # Rows read without their parameters get them back from the spec, by point index.
    bare = sweep_run.load_results(tmp_path / "out", columns=["point", "tpot_s"]).iloc[::-1]
    joined = join_parameters(bare, spec)
    np.testing.assert_array_equal(joined[BW], df[BW].to_numpy()[::-1])
    np.testing.assert_array_equal(joined[BATCH], df[BATCH].to_numpy()[::-1])

    kept = sweep_run.load_results(_run(tmp_path / "kept", small_spec(sample=None, keep="satisfied")))
    pd.testing.assert_frame_equal(kept, df[expected].reset_index(drop=True))


def _run(out, spec, **kwargs):
    sweep_run.run(load_spec(spec), out, progress=False, **kwargs)
    return out


def test_interrupted_run_resumes_without_lost_or_duplicated_rows(tmp_path):
    spec = load_spec(small_spec())  # 600 points in 10 chunks of 64 (the last holds 24)
    whole = sweep_run.load_results(_run(tmp_path / "whole", spec))
    assert len(whole) == 600 and whole["point"].is_unique

    written = []

    def stop_after_three(n):
        written.append(n)
        if len(written) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep_run.run(spec, tmp_path / "cut", progress=stop_after_three)
    # Parts already handed to the writer thread still land (whole) after the interruption.
    done = len(sweep_run.completed_chunks(tmp_path / "cut"))
    assert 3 <= done <= 5
    summary = sweep_run.run(spec, tmp_path / "cut", progress=False)
    assert (summary.skipped, summary.evaluated) == (done * 64, 600 - done * 64)
    assert sweep_run.is_complete(tmp_path / "cut")
    pd.testing.assert_frame_equal(sweep_run.load_results(tmp_path / "cut"), whole)
    # A finished sweep reruns as a no-op.
    assert sweep_run.run(spec, tmp_path / "cut", progress=False).evaluated == 0


def test_a_different_sweep_is_not_resumed_into_the_same_directory(tmp_path):
    _run(tmp_path / "out", small_spec(sample=None))
    with pytest.raises(ValueError, match="holds a different sweep"):
        _run(tmp_path / "out", small_spec(sample=None, metrics=["tpot_s"]))
    _run(tmp_path / "out", small_spec(sample=None, metrics=["tpot_s"]), overwrite=True)
    assert list(sweep_run.load_results(tmp_path / "out").columns) == ["point", BW, BATCH, "tpot_s", "status",
                                                                      "meets_constraints"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        _run(tmp_path / "other", small_spec(sample=None))


def _cli(*args):
    return [sys.executable, "-m", "jaxmodel.cli", "sweep", *map(str, args)]


def test_killed_sweep_resumes_to_the_uninterrupted_rows(tmp_path):
    # Many small chunks, so the process is killed while it is writing them.
    spec = small_spec(chunk_size=500, grid={BW: {"linspace": [1e12, 4e12, 20]}, BATCH: [1, 16, 256]},
                      sample={"method": "random", "points": 2000, "seed": 0,
                              "parameters": {FLOPS: {"loguniform": [2e14, 2e15]}}})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    total_chunks = 20 * 3 * 2000 // 500
    proc = subprocess.Popen(_cli(path, "--out", tmp_path / "cut", "--no-progress"), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(sweep_run.completed_chunks(tmp_path / "cut")) < 5 and time.time() < deadline:
        time.sleep(0.01)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(sweep_run.completed_chunks(tmp_path / "cut"))
    assert running and 5 <= done < total_chunks, "the sweep must be killed mid-run"

    resumed = subprocess.run(_cli(path, "--out", tmp_path / "cut", "--json"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["skipped"] == done * 500 and summary["evaluated"] == (total_chunks - done) * 500
    whole = subprocess.run(_cli(path, "--out", tmp_path / "whole", "--no-progress"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    pd.testing.assert_frame_equal(sweep_run.load_results(tmp_path / "cut"), sweep_run.load_results(tmp_path / "whole"))


def test_sharded_over_four_devices_gives_identical_rows(tmp_path):
    """Both runs are child processes with the same XLA flags but the device count, so the
    only difference is the sharding of the point axis. Integer columns (points, status,
    flags) must match exactly; float32 metrics to within 2 ulp, because XLA compiles a
    different loop shape per shard (23 points instead of 90), and its vectorized body and
    scalar remainder may contract multiply-adds differently (1 ulp seen in ttft_s)."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(small_spec(chunk_size=90)))  # not a multiple of 4: padded per chunk
    for devices in (1, 4):
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
        env = {**os.environ, "XLA_FLAGS": flags}
        run = subprocess.run(_cli(path, "--out", tmp_path / str(devices), "--json"), capture_output=True, text=True,
                             env=env)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["devices"] == devices
    pd.testing.assert_frame_equal(sweep_run.load_results(tmp_path / "4"), sweep_run.load_results(tmp_path / "1"),
                                  check_exact=False, rtol=2.5e-7, atol=0.0)


def test_sweep_cli_bad_input_is_one_line(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(small_spec(metrics=["tpot_s", "happiness"])))
    run = subprocess.run(_cli(path, "--out", tmp_path / "out"), capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "unknown metric 'happiness'" in run.stderr
