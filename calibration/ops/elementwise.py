"""Flat memory efficiency and per-kernel overhead from measured elementwise kernels.

The engine times every vector row (norms, residual adds, activations, rotary, sampling) as a
roofline of vector FLOPs and bytes plus :attr:`jaxmodel.Efficiency.kernel_overhead_s`, at
the flat ``memory`` efficiency. These kernels are bandwidth-bound, so their measured times fix
those two factors: ``t = t0 + bytes / (BW · η_memory)``.

Bytes per measured row follow the engine's own counting (:mod:`jaxmodel.ops`), at the row's
element size: a norm reads and writes its ``m x n`` activations, a residual add reads two
tensors and writes one, a gated activation reads gate and up (``2 m n``) and writes ``m n``,
GeLU reads and writes ``m n``, rotary rotates the ``m x n`` query and key slice in place.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from calibration import fit as _fit

#: op -> (elements read, elements written) in units of m·n.
TRAFFIC = {"rmsnorm": (1.0, 1.0), "layernorm": (1.0, 1.0), "add": (2.0, 1.0), "silu_mul": (2.0, 1.0),
           "gelu": (1.0, 1.0), "rope": (1.0, 1.0)}
DTYPE_BYTES = {"fp16": 2.0, "bf16": 2.0, "fp32": 4.0, "fp8": 1.0}
START = {"memory": 0.8, "kernel_overhead_s": 3e-6}


def select(table: pd.DataFrame) -> pd.DataFrame:
    """The elementwise rows this fit understands."""
    return table[table["op"].isin(list(TRAFFIC)) & table["dtype"].isin(list(DTYPE_BYTES))]


def rows(table: pd.DataFrame, system) -> dict[str, np.ndarray]:
    """Model inputs of rows already :func:`select`-ed."""
    read, written = (np.array([TRAFFIC[op][i] for op in table["op"]]) for i in (0, 1))
    size = table["dtype"].map(DTYPE_BYTES).to_numpy(np.float64)
    elements = table["m"].to_numpy(np.float64) * table["n"].to_numpy(np.float64)
    return {"bytes": (read + written) * elements * size,
            "bandwidth": np.full(len(table), float(system.chip.mem_bw_Bps))}


def predict(params, r):
    return params["kernel_overhead_s"] + r["bytes"] / (r["bandwidth"] * params["memory"])


def roofline(r) -> np.ndarray:
    return r["bytes"] / r["bandwidth"]


def fit(table: pd.DataFrame, system, **kw) -> _fit.FitResult:
    table = select(table)
    if table.empty:
        raise ValueError(f"elementwise fit: no rows with op in {sorted(TRAFFIC)} and dtype in {sorted(DTYPE_BYTES)}")
    return _fit.least_squares(predict, START, rows(table, system), table["measured_s"].to_numpy(), **kw)


def efficiency_fields(result: _fit.FitResult) -> dict[str, float]:
    """The fitted values as :class:`jaxmodel.Efficiency` keywords (η capped at 1: a fit
    above the datasheet bandwidth would mean the bytes were over-counted, not a faster chip)."""
    return {"memory": min(result.params["memory"], 1.0), "kernel_overhead_s": result.params["kernel_overhead_s"]}
