"""Measured GEMMs -> inputs of :class:`jaxmodel.kernels.gemm.GemmModel`.

Rows come from the tidy kernel table (AIConfigurator loader, ``op == "gemm"``): one GEMM
``Y[m x n] = X[m x k] · W[k x n]`` per row (``batch`` = 1 independent matmul).

DRAM bytes of the benchmark (:func:`rows`). AIConfigurator's vLLM collector
(``collector/vllm/collect_gemm.py``) builds 6 linear layers with separate weights and runs them
back to back on the *same* input ``x`` inside a CUDA graph, reporting the mean time per layer.
The weights (6 copies) and the outputs stream through DRAM, but ``x`` is read again by every
layer and stays in L2 when it fits: then its bytes are not DRAM traffic. It is counted as
resident when ``2 m k`` bytes fit in half the L2 (:data:`L2_SHARED_FRACTION`): A100 and H100
split L2 into two partitions, and data that SMs of both halves read (as every CTA column
reads ``x``) is held in both, so shared data sees half the capacity. (The other half of the
rule, weights resident when all 6 copies fit, made held-out errors worse, so weights are
always DRAM bytes.) In a serving engine ``x`` is usually the previous kernel's output and
L2-resident too; the engine passes its own ``bytes_moved``.

Selection (:func:`select`): BF16 GEMMs of one framework and version (vLLM 0.14.0 by default,
measured on both A100 and H100), the case the model's 2-byte output and BF16 tensor peak
describe.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from calibration import fit as _fit
from calibration import metrics
from calibration.ops import roofline as roofline
from jaxmodel.kernels.gemm import START, GemmModel

FRAMEWORK = "vllm"
VLLM_VERSION = "0.14.0"
#: Bytes per element of the dtypes the model covers (2-byte inputs and outputs).
ELEMENT_BYTES = {"bf16": 2.0, "fp16": 2.0}
#: Share of L2 capacity data read by every SM can occupy (two partitions, each caching it).
L2_SHARED_FRACTION = 0.5
#: Robust refit: training rows whose log residual lies beyond this many robust standard
#: deviations (1.4826 x median absolute deviation) of the first fit are dropped and the fit is
#: repeated from its optimum. The H100 table has a few dozen shapes measured 4-5x slower than
#: their neighbours (e.g. m=2048, n=5120, k=6144-8192 at ~170 TFLOP/s); least squares on logs
#: would otherwise bend every parameter towards them.
TRIM_SIGMAS = 3.0


def select(table: pd.DataFrame, dtype: str = "bf16", framework: str | None = FRAMEWORK,
           framework_version: str | None = VLLM_VERSION) -> pd.DataFrame:
    """GEMM rows of one dtype (and framework / version; None = any)."""
    if dtype not in ELEMENT_BYTES:
        raise ValueError(f"gemm select: dtype must be one of {sorted(ELEMENT_BYTES)} (got {dtype!r})")
    keep = (table["op"] == "gemm") & (table["dtype"] == dtype)
    if framework is not None:
        keep &= table["framework"] == framework
    if framework_version is not None:
        keep &= table["framework_version"].astype(str) == framework_version
    return table[keep]


def held_out(table: pd.DataFrame, seed: int = 0, fraction: float = 0.25) -> np.ndarray:
    """Mask holding out a random ``fraction`` of the distinct weight shapes ``(n, k)``, with
    every GEMM (every ``m``) that uses them."""
    return metrics.held_out_groups(table, ["n", "k"], fraction=fraction, seed=seed)


def rows(table: pd.DataFrame, system) -> dict[str, np.ndarray]:
    """Model inputs per row: shape, work, the benchmark's DRAM bytes and the datasheet figures."""
    if table.empty:
        raise ValueError("gemm rows: no rows")
    dtypes = sorted(set(table["dtype"]))
    if len(dtypes) != 1 or dtypes[0] not in ELEMENT_BYTES:
        raise ValueError(f"gemm rows: need one dtype among {sorted(ELEMENT_BYTES)} (got {dtypes})")
    if (table["op"] != "gemm").any():
        raise ValueError("gemm rows: every row must have op == 'gemm'")
    element = ELEMENT_BYTES[dtypes[0]]
    m, n, k = (table[c].to_numpy(np.float64) for c in ("m", "n", "k"))
    matmuls = table["batch"].to_numpy(np.float64)
    chip = system.chip
    x_bytes = element * m * k
    x_resident = x_bytes <= L2_SHARED_FRACTION * float(chip.l2_bytes)
    count = len(table)
    return {
        "m": m, "n": n, "k": k, "matmuls": matmuls,
        "flops": 2.0 * m * n * k * matmuls,
        "bytes_moved": matmuls * (element * (k * n + m * n) + np.where(x_resident, 0.0, x_bytes)),
        "peak_flops": np.full(count, float(chip.tensor_peak(dtypes[0]))),
        "bandwidth_Bps": np.full(count, float(chip.mem_bw_Bps)),
        "cores": np.full(count, float(chip.cores)),
    }


def predict(params, r):
    """Seconds per row from a parameter dict (the fit's positive values)."""
    return GemmModel(**params).time_s(r["m"], r["n"], r["k"], r["matmuls"], r["flops"], r["bytes_moved"],
                                      r["peak_flops"], r["bandwidth_Bps"], r["cores"])


def fit(table: pd.DataFrame, system, params0=None, robust: bool = True, **kw) -> _fit.FitResult:
    """Fit every parameter to the GEMM rows of one GPU (``table`` as given: call :func:`select`
    first). With ``robust``, rows beyond :data:`TRIM_SIGMAS` robust standard deviations of the
    first fit's log residuals are dropped and the fit repeated (see :data:`TRIM_SIGMAS`)."""
    if table.empty:
        raise ValueError("gemm fit: no rows")
    if "gpu" in table and table["gpu"].nunique() > 1:
        raise ValueError(f"gemm fit: rows of several GPUs {sorted(table['gpu'].unique())}; fit one at a time")
    return _fit.least_squares(predict, dict(START if params0 is None else params0), rows(table, system),
                              table["measured_s"].to_numpy(np.float64), trim_sigmas=TRIM_SIGMAS if robust else None,
                              **kw)
