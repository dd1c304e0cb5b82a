"""The two tidy tables every loader produces, and their validation.

**Kernel table** (:data:`KERNEL_COLUMNS`): one measured operator execution per row.

=================  ========================================================================
column             meaning (SI units; NaN where it does not apply to the op)
=================  ========================================================================
source             dataset, e.g. ``"aiconfigurator"``, ``"vidur"``, ``"llmcompass"``, ``"user"``
gpu                ``"a100_sxm"``, ``"h100_sxm"``, ... (lower case, :data:`GPUS` or a user name)
framework          serving stack or library that ran the kernel (``"vllm"``, ``"trtllm"``,
                   ``"pytorch"``, ``"nccl"``, ...), with its version in ``framework_version``
op                 one of :data:`KERNEL_OPS`
dtype              compute dtype of the op (``"bf16"``, ``"fp16"``, ``"fp8"``, ``"int8"``, ...)
m, n, k            matmul ``[m x k] @ [k x n]`` (m = tokens); vector ops: m = rows, n = row
                   length (elementwise ops: m = 1, n = elements)
batch              sequences (attention), else 1
seq_q              new tokens per sequence (attention: prompt length, or 1 in decode)
seq_kv             tokens attended per sequence (prefill: = seq_q; decode: tokens in the cache)
heads, kv_heads    query and key/value heads on this GPU; head_dim per head
message_bytes      collective payload in bytes (nccl-tests convention: the full buffer)
gpus               devices taking part (collectives), else 1
kernel             kernel or backend name when the source records it, else ""
measured_s         measured time of one execution, seconds
provenance         file (relative to the data root) and row or key that the value came from
=================  ========================================================================

**End-to-end table** (:data:`E2E_COLUMNS`): one measured serving run per row: ``source``,
``gpu``, ``framework``, ``framework_version``, ``model`` (Hugging Face id), ``tp``, ``pp``,
``batch``, ``input_tokens``, ``output_tokens``, ``dtype``, ``kv_dtype`` and the measured
``latency_s`` (whole batch, prefill + all decode steps), ``ttft_s`` and ``tpot_s`` (NaN when
not measured), ``throughput_tok_s`` (as the source defines it, see its loader), and
``provenance``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KERNEL_OPS = ("gemm", "attention_prefill", "attention_decode", "all_reduce", "all_gather", "reduce_scatter",
              "all_to_all", "send_recv", "softmax", "layernorm", "rmsnorm", "gelu", "silu_mul", "rope", "add",
              "embedding")
GPUS = ("a100_sxm", "h100_sxm")

KERNEL_COLUMNS = {
    "source": str, "gpu": str, "framework": str, "framework_version": str, "op": str, "dtype": str,
    "m": float, "n": float, "k": float, "batch": float, "seq_q": float, "seq_kv": float, "heads": float,
    "kv_heads": float, "head_dim": float, "message_bytes": float, "gpus": float, "kernel": str,
    "measured_s": float, "provenance": str,
}
E2E_COLUMNS = {
    "source": str, "gpu": str, "framework": str, "framework_version": str, "model": str, "tp": float,
    "pp": float, "batch": float, "input_tokens": float, "output_tokens": float, "dtype": str, "kv_dtype": str,
    "latency_s": float, "ttft_s": float, "tpot_s": float, "throughput_tok_s": float, "provenance": str,
}
#: Any single kernel or serving run outside these bounds is a unit error, not a measurement.
MIN_TIME_S, MAX_TIME_S = 1e-7, 1e4


def empty(columns: dict) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=object if kind is str else "float64") for name, kind in columns.items()})


def conform(df: pd.DataFrame, columns: dict, what: str) -> pd.DataFrame:
    """``df`` with exactly ``columns`` in order (missing float columns NaN, missing text
    columns ""), typed, then validated; raises ``ValueError`` naming the column and rows."""
    out = {}
    for name, kind in columns.items():
        if name in df:
            col = df[name]
        else:
            col = pd.Series("" if kind is str else np.nan, index=df.index)
        out[name] = col.astype(str) if kind is str else pd.to_numeric(col, errors="raise").astype("float64")
    table = pd.DataFrame(out).reset_index(drop=True)
    validate(table, columns, what)
    return table


def validate(table: pd.DataFrame, columns: dict, what: str) -> None:
    missing = [c for c in columns if c not in table]
    if missing:
        raise ValueError(f"{what} table lacks columns {missing}")
    time_cols = [c for c in ("measured_s", "latency_s", "ttft_s", "tpot_s") if c in columns]
    for col in time_cols:
        values = table[col].to_numpy(dtype=float)
        required = col in ("measured_s", "latency_s")
        bad = ~np.isfinite(values) if required else np.zeros(len(values), bool)
        finite = np.isfinite(values)
        bad |= finite & ((values < MIN_TIME_S) | (values > MAX_TIME_S))
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise ValueError(f"{what} table: {col} must be a time in seconds within [{MIN_TIME_S:g}, {MAX_TIME_S:g}] "
                             f"(rows {rows}: {table[col].to_numpy()[rows].tolist()}); check the unit")
    for col, kind in columns.items():
        if kind is float and col not in time_cols:
            values = table[col].to_numpy(dtype=float)
            negative = np.isfinite(values) & (values < 0)
            if negative.any():
                rows = np.flatnonzero(negative)[:5].tolist()
                raise ValueError(f"{what} table: {col} must be >= 0 (rows {rows})")
    if "op" in columns:
        unknown = sorted(set(table["op"]) - set(KERNEL_OPS))
        if unknown:
            raise ValueError(f"{what} table: unknown op {unknown}; allowed: {', '.join(KERNEL_OPS)}")


def kernels(df: pd.DataFrame) -> pd.DataFrame:
    """Conform a loader's frame to the kernel table."""
    return conform(df, KERNEL_COLUMNS, "kernel")


def end_to_end(df: pd.DataFrame) -> pd.DataFrame:
    """Conform a loader's frame to the end-to-end table."""
    return conform(df, E2E_COLUMNS, "end-to-end")
