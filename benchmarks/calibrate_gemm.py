"""Fit the tiled GEMM model to measured vLLM GEMMs and score it on held-out weight shapes.

Data: NVIDIA AIConfigurator's BF16 GEMM tables measured inside vLLM 0.14.0 on A100-SXM4-80GB
and H100-SXM (``../shared/data/aiconfigurator-ops``; 9,240 shapes each: m in 1..8192, n and k
in 32..65536). Datasheet inputs come from the ``a100-sxm-80gb`` and ``h100-sxm`` presets (dense
BF16 tensor peak, HBM bandwidth, SM count, L2 capacity).

Model (:class:`jaxmodel.kernels.gemm.GemmModel`, 7 positive parameters fitted as logarithms):
the library's choice among 6 CTA tiles (64x64 ... 128x256) x 10 split-K factors, taken as the
fastest candidate, each with wave quantization over the SMs, a per-unit-K tile time set by the
soft maximum of tensor work and operand feed, an exposed epilogue (output-tile write) per wave,
split-K partial-sum traffic and a reduction pass, DRAM traffic overlapping tensor work through
the same soft maximum, and a fixed launch time. DRAM bytes are the benchmark's (the input ``x``
is L2-resident across its back-to-back layers when it fits: :mod:`calibration.ops.gemm`).

Protocol: per GPU, a random quarter of the distinct weight shapes ``(n, k)`` and every GEMM
using them is held out (:func:`calibration.metrics.held_out_groups`, seeds given by
``--seed``); the fit (Levenberg-Marquardt on log time, then one refit without rows beyond 3
robust standard deviations) sees the rest. Held-out errors are printed next to the
uncalibrated roofline's (``max(flops / peak, bytes / bandwidth)`` on the same inputs: every
efficiency 1, no overheads, exact maximum), with the fitted parameters and standard errors,
the cross-GPU case (parameters fitted on one GPU predicting the other's held-out rows from its
datasheet, first seed) and the float32-vs-float64 agreement of the fitted model.

    python benchmarks/calibrate_gemm.py [--seed 0 1 2] [--no-robust]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxmodel as jm
from calibration import metrics
from calibration.loaders import aiconfigurator
from calibration.ops import gemm
from jaxmodel.kernels.gemm import GemmModel

GPUS = {"a100_sxm": "a100-sxm-80gb", "h100_sxm": "h100-sxm"}
WIDTH = 38


def evaluate(params: dict, r: dict) -> np.ndarray:
    with jax.enable_x64(True):
        return np.asarray(gemm.predict(params, r), dtype=np.float64)


def float32_gap(params: dict, r: dict) -> float:
    """Largest relative difference between float32 and float64 evaluations of the model."""
    reference = evaluate(params, r)
    model = GemmModel(**{k: np.float32(v) for k, v in params.items()})
    args = [jnp.asarray(r[c], jnp.float32) for c in ("m", "n", "k", "matmuls", "flops", "bytes_moved",
                                                     "peak_flops", "bandwidth_Bps", "cores")]
    single = np.asarray(jax.jit(lambda *a: model.time_s(*a))(*args), dtype=np.float64)
    return float(np.max(np.abs(single / reference - 1.0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, nargs="+", default=[0, 1, 2],
                        help="held-out split seeds (the first also drives the cross-GPU case)")
    parser.add_argument("--no-robust", action="store_true", help="plain least squares, no outlier-trimmed refit")
    args = parser.parse_args()
    table = gemm.select(aiconfigurator.load(ops=("gemm",), frameworks=("vllm",)))
    systems = {gpu: jm.load_hardware(preset) for gpu, preset in GPUS.items()}
    first = {}
    print(metrics.header(WIDTH))
    for gpu, system in systems.items():
        df = table[table["gpu"] == gpu]
        for seed in args.seed:
            mask = gemm.held_out(df, seed=seed)
            train, test = df[~mask], df[mask]
            start = time.perf_counter()
            result = gemm.fit(train, system, robust=not args.no_robust)
            fit_s = time.perf_counter() - start
            r = gemm.rows(test, system)
            measured = test["measured_s"].to_numpy()
            print(metrics.format_row(f"{gpu} seed {seed} held-out, calibrated",
                                     metrics.errors(evaluate(result.params, r), measured), WIDTH))
            print(metrics.format_row(f"{gpu} seed {seed} held-out, roofline",
                                     metrics.errors(gemm.roofline(r), measured), WIDTH))
            params = ", ".join(f"{k}={v:.4g}±{result.stderr[k]:.2g}" for k, v in result.params.items())
            print(f"    fit: {len(train)} rows in {fit_s:.1f} s, {result.iterations} iterations; {params}")
            if seed == args.seed[0]:
                first[gpu] = (result, test)
    for source, target in (("a100_sxm", "h100_sxm"), ("h100_sxm", "a100_sxm")):
        _, test = first[target]
        r = gemm.rows(test, systems[target])
        e = metrics.errors(evaluate(first[source][0].params, r), test["measured_s"].to_numpy())
        print(metrics.format_row(f"{target} seed {args.seed[0]} held-out, fit on {source[:4]}", e, WIDTH))
    for gpu, (result, _) in first.items():
        gap = float32_gap(result.params, gemm.rows(table[table["gpu"] == gpu], systems[gpu]))
        print(f"{gpu}: float32 vs float64 model times, largest relative difference over all rows: {gap:.1e}")


if __name__ == "__main__":
    main()
