"""Throughput of the full pipeline (prefill + decode + memory), optionally beside GenZ.

The design points are H100-like variants serving llama-3-70b: memory bandwidth x bf16
tensor peak x memory capacity x batch x TP x prompt length, every point a full
prediction of all metrics, copied back to the host.
"""

from __future__ import annotations

import os
import time
import warnings

import jax
import numpy as np

from .presets import load_hardware, load_model
from .sweep import grid_sweep
from .workload import Workload


def bench_grid(points: int) -> dict:
    """A grid of about ``points`` H100-like design points (rounded to whole axes)."""
    axis = max(2, round((points / (8 * 4 * 4 * 16)) ** 0.5))
    return {
        "system.chip.mem_bw_Bps": np.linspace(1.0e12, 8.0e12, axis),
        "system.chip.tensor_flops.bf16": np.linspace(250e12, 2500e12, axis),
        "system.chip.mem_capacity_bytes": np.linspace(40e9, 192e9, 8),
        "workload.batch": 2.0 ** np.arange(16),
        "workload.tp": [1.0, 2.0, 4.0, 8.0],
        "workload.input_tokens": [512.0, 1024.0, 2048.0, 4096.0],
    }


def time_genz_point() -> float | None:
    """Seconds GenZ 0.0.16 takes for one prefill + decode prediction (None if not installed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GenZ emits deprecation warnings on import
        try:
            from GenZ import decode_moddeling, prefill_moddeling
        except ImportError:  # GenZ is an optional peer tool, absent from normal installs
            return None
        kwargs = dict(model="meta-llama/Llama-3.1-70B", batch_size=8, input_tokens=1024, system_name="H100_GPU",
                      bits="bf16", tensor_parallel=4, system_eff=1)
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            prefill_moddeling(**kwargs)
            decode_moddeling(output_tokens=256, Bb=1, **kwargs)
            runs.append(time.perf_counter() - t0)
    return float(np.median(runs))


def run(points: int = 1 << 22, chunk_size: int = 1 << 17, with_genz: bool = True) -> dict:
    arch = load_model("llama-3-70b")
    system = load_hardware("h100-sxm").datasheet()
    wl = Workload(batch=8, input_tokens=1024, output_tokens=256, tp=4)
    grid = bench_grid(points)
    _, stats = grid_sweep(arch, wl, system, grid=grid, chunk_size=chunk_size, return_stats=True)
    result = {
        "points": stats.points,
        "points_per_s": stats.points_per_s,
        "compile_s": stats.compile_s,
        "run_s": stats.run_s,
        "chunk_size": chunk_size,
        "model": "llama-3-70b",
        "metrics_per_point": "prefill + decode + memory (all metrics)",
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "grid_axes": {k: len(v) for k, v in grid.items()},
    }
    genz = time_genz_point() if with_genz else None
    result["genz_s_per_point"] = genz
    result["speedup_vs_genz"] = genz * stats.points_per_s if genz else None
    return result
