"""Throughput of the systolic fidelity level: full BLOOM-176B design points per second.

Each point is a complete ``evaluate`` (prefill + decode at microarchitecture level, memory,
and, since the chip is described at that level, die area, cost, TDP and energy) with its
status of BLOOM-176B FP16 at TP 8 on an H100-derived chip; the grid varies cores, array
rows and columns, L1, memory pin rate, batch and prompt length. Figures are measured in one
run on this machine; compile time is reported separately.

    python benchmarks/systolic_throughput.py [--points N]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import jaxmodel as jm
from jaxmodel.sweep import grid_sweep


def grid(points: int) -> dict:
    axis = max(2, round((points / (4 * 4 * 3 * 8)) ** (1 / 3)))
    return {
        "system.chip.cores": np.linspace(44, 160, axis),
        "system.chip.array_rows": [8.0, 16.0, 32.0, 64.0],
        "system.chip.array_cols": [8.0, 16.0, 32.0, 64.0],
        "system.chip.l1_bytes": np.linspace(128, 512, axis) * 1024,
        "system.chip.memory.pin_rate_bps": np.linspace(2e9, 8e9, axis),
        "workload.batch": [1.0, 8.0, 64.0],
        "workload.input_tokens": 2.0 ** np.arange(7, 15),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1 << 21)
    parser.add_argument("--chunk-size", type=int, default=1 << 11)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    arch = jm.load_model("bloom-176b")
    system = jm.load_hardware("h100-sxm")
    wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=256, tp=8, dtype="fp16", attention_impl="unfused")
    g = grid(args.points)
    df, stats = grid_sweep(arch, wl, system, grid=g, fidelity="systolic", chunk_size=args.chunk_size,
                           return_stats=True)
    finite = bool(np.isfinite(df[["prefill_s", "decode_step_s"]].to_numpy()).all())
    result = {"points": stats.points, "points_per_s": stats.points_per_s, "compile_s": stats.compile_s,
              "run_s": stats.run_s, "model": "bloom-176b", "fidelity": "systolic", "all_finite": finite}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{stats.points:,} BLOOM-176B design points (prefill + decode, systolic fidelity)")
        print(f"  compile {stats.compile_s:.1f} s, run {stats.run_s:.1f} s -> {stats.points_per_s:,.0f} points/s;"
              f" all metrics finite: {finite}")


if __name__ == "__main__":
    main()
