"""Sweeps: agreement with single-point predictions, chunking, no recompilation, errors."""

import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel import sweep


def test_grid_rows_equal_single_predictions(llama70b, h100):
    wl = jm.Workload(batch=4, input_tokens=1024, output_tokens=128, tp=8)
    grid = {"system.chip.mem_bw_Bps": [2e12, 3.35e12, 5e12], "workload.batch": [1, 16], "workload.tp": [4, 8]}
    df = sweep.grid_sweep(llama70b, wl, h100, grid=grid, chunk_size=5)  # 12 points in 3 chunks
    assert len(df) == 12 and list(df.columns[:3]) == list(grid)
    for _, row in df.iloc[[0, 5, 11]].iterrows():
        system = jm.System(
            jm.Chip(h100.chip.tensor_flops, h100.chip.vector_flops, row["system.chip.mem_bw_Bps"],
                    h100.chip.mem_capacity_bytes), h100.devices_per_node, h100.scale_up, h100.scale_out)
        r = jm.predict(llama70b, wl.replace(batch=row["workload.batch"], tp=row["workload.tp"]), system)
        for key in ("prefill_s", "tpot_s", "memory_bytes"):
            assert row[key] == pytest.approx(r[key], rel=1e-6)


def test_evaluate_points_equals_grid(llama70b, h100):
    bws = np.array([1e12, 2e12, 4e12])
    wl = jm.Workload(batch=8, input_tokens=512, output_tokens=64, tp=4)
    grid = sweep.grid_sweep(llama70b, wl, h100, grid={"system.chip.mem_bw_Bps": bws})
    chip = jm.Chip(h100.chip.tensor_flops, h100.chip.vector_flops, bws, h100.chip.mem_capacity_bytes)
    points = sweep.evaluate_points(llama70b, wl, jm.System(chip, 8, h100.scale_up, h100.scale_out), chunk_size=2)
    np.testing.assert_allclose(points["tpot_s"], grid["tpot_s"], rtol=1e-6)


def test_second_sweep_with_new_values_does_not_recompile(llama70b, h100):
    wl = jm.Workload(batch=8, input_tokens=512, output_tokens=64, tp=4)
    sweep.grid_sweep(llama70b, wl, h100, grid={"workload.batch": [1, 2, 3]}, metrics=("tpot_s",))
    compiled = sweep._grid_chunk._cache_size()
    other = jm.load_model("llama-3-8b")
    df = sweep.grid_sweep(other, wl.replace(input_tokens=999), h100, grid={"workload.batch": [7, 8, 9]},
                          metrics=("tpot_s",))
    assert sweep._grid_chunk._cache_size() == compiled
    assert (df["tpot_s"] > 0).all()


@pytest.mark.parametrize("path,message", [
    ("chip.mem_bw_Bps", "must start with one of"),
    ("system.chip.mem_bandwidth", "has no field 'mem_bandwidth'"),
    ("system.chip.tensor_flops.fp6", "no key 'fp6'"),
    ("arch.attention", "static field"),
])
def test_bad_grid_paths(llama70b, h100, path, message):
    with pytest.raises(ValueError, match=message):
        sweep.grid_sweep(llama70b, jm.Workload(), h100, grid={path: [1.0]})


def test_default_metrics_cover_the_cli_contract():
    names = set(sweep.metric_names())
    assert names >= {"prefill_s", "decode_step_s", "ttft_s", "tpot_s", "throughput_tok_s", "memory_bytes",
                     "fits", "status", "max_batch"}
