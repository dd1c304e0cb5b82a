"""Time to fit 100,000 measured rows with calibration.fit.least_squares (issue target: <= 60 s).

1. Synthetic rows from a three-parameter kernel model (launch overhead + soft roofline of
   compute and memory), 5% log-normal noise, fitted from a start 2-3x off; prints the wall
   time, iterations, and the recovered parameters against the true ones with their error bars.
2. Measured rows (when ``../shared/data`` is present): the full GEMM model
   (:mod:`jaxmodel.kernels.gemm`, 60 candidate tilings per row) fitted to every BF16 GEMM that
   AIConfigurator measured on an H100-SXM inside vLLM (0.14.0 and 0.24.0) and TensorRT-LLM.

    python benchmarks/fit_speed.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from calibration import fit

TRUE = {"overhead_s": 4e-6, "seconds_per_flop": 1.0 / 600e12, "seconds_per_byte": 1.0 / 2.5e12}


def kernel_time(params, rows):
    compute = rows["flops"] * params["seconds_per_flop"]
    memory = rows["bytes"] * params["seconds_per_byte"]
    return params["overhead_s"] + (compute**4 + memory**4) ** 0.25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = {"flops": 10 ** rng.uniform(6, 13, args.rows), "bytes": 10 ** rng.uniform(4, 10, args.rows)}
    measured = kernel_time({k: np.float64(v) for k, v in TRUE.items()}, rows) * np.exp(rng.normal(0, 0.05, args.rows))
    start = {k: v * f for (k, v), f in zip(TRUE.items(), (3.0, 0.3, 2.0))}
    t0 = time.perf_counter()
    result = fit.least_squares(kernel_time, start, rows, measured)
    wall = time.perf_counter() - t0
    print(f"{args.rows:,} rows fitted in {wall:.2f} s ({result.iterations} iterations, converged {result.converged}, "
          f"rms log residual {result.rms_log_residual:.4f})")
    for k, v in TRUE.items():
        print(f"  {k:18s} true {v:.4e}  fitted {result.params[k]:.4e} +- {result.stderr[k]:.1e}")

    measured_gemms()


def measured_gemms() -> None:
    import jaxmodel as jm
    from calibration.loaders import SHARED_DATA, aiconfigurator
    from calibration.ops import gemm

    if not SHARED_DATA.is_dir():
        print(f"measured rows: skipped ({SHARED_DATA} absent)")
        return
    table = gemm.select(aiconfigurator.load(systems="h100_sxm", frameworks=("vllm", "trtllm"), ops="gemm"),
                        framework=None, framework_version=None)
    system = jm.load_hardware("h100-sxm")
    t0 = time.perf_counter()
    result = gemm.fit(table, system, robust=False)
    wall = time.perf_counter() - t0
    print(f"{len(table):,} measured H100 BF16 GEMMs (vLLM 0.14/0.24, TRT-LLM) fitted with the 7-parameter GEMM model in {wall:.1f} s "
          f"({result.iterations} iterations, converged {result.converged}, rms log residual "
          f"{result.rms_log_residual:.3f})")


if __name__ == "__main__":
    main()
