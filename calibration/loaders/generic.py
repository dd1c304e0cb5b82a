"""A user's own measurements from CSV -> kernel or end-to-end table (``source = "user"``).

**Kernel CSV** (:func:`load_kernels`): columns are a subset of :data:`calibration.schema.KERNEL_COLUMNS`
(same names and meanings). Required: ``gpu``, ``op`` (one of :data:`~calibration.schema.KERNEL_OPS`), the
time, and the shape columns the op needs (:data:`SHAPES`: ``gemm`` -> m, n, k; attention -> batch, seq_q,
seq_kv, heads, kv_heads, head_dim; collectives -> message_bytes, gpus; vector ops -> m, n).

**End-to-end CSV** (:func:`load_end_to_end`): columns a subset of :data:`~calibration.schema.E2E_COLUMNS`;
required ``gpu``, ``model``, ``tp``, ``batch``, ``input_tokens``, ``output_tokens`` and the latency.

Times may be given in seconds (``measured_s``, ``latency_s``, ``ttft_s``, ``tpot_s``) or with the suffix
``_ms`` / ``_us`` instead of ``_s`` (converted to seconds); one unit per quantity. Omitted optional
columns default: ``source`` "user", ``pp``/``batch``/``gpus`` 1 where they do not apply, text "",
numbers NaN, ``provenance`` ``<file name>:<row>``. Values outside the schema's time bounds
(:data:`~calibration.schema.MIN_TIME_S`, :data:`~calibration.schema.MAX_TIME_S`) are rejected as unit errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from calibration import schema

UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
VECTOR_OPS = ("softmax", "layernorm", "rmsnorm", "gelu", "silu_mul", "rope", "add", "embedding")
ATTENTION = ("attention_prefill", "attention_decode")
#: op -> shape columns that must be present and finite for rows of that op.
SHAPES = {"gemm": ("m", "n", "k"),
          **{op: ("batch", "seq_q", "seq_kv", "heads", "kv_heads", "head_dim") for op in ATTENTION},
          **{op: ("message_bytes", "gpus") for op in COLLECTIVES},
          **{op: ("m", "n") for op in VECTOR_OPS}}
E2E_REQUIRED = ("gpu", "model", "tp", "batch", "input_tokens", "output_tokens")


def _numeric(values: pd.Series, col: str, where: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(f"{where}: column {col} is not numeric in rows {rows}: {values[bad].tolist()[:5]}")
    return numbers


def _read(path, columns: dict, times: tuple) -> tuple[pd.DataFrame, str]:
    """CSV at ``path`` with time columns converted to seconds; rejects unknown or doubled columns."""
    path = Path(path)
    df = pd.read_csv(path, dtype={c: str for c, kind in columns.items() if kind is str})
    df.columns = [c.strip() for c in df.columns]
    where = str(path)
    allowed = set(columns) | {f"{t}_{u}" for t in times for u in UNITS}
    unknown = [c for c in df.columns if c not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown columns {unknown}; allowed: {', '.join(columns)} "
                         f"(time columns may end in _s, _ms or _us)")
    for base in times:
        given = [f"{base}_{u}" for u in UNITS if f"{base}_{u}" in df]
        if len(given) > 1:
            raise ValueError(f"{where}: {base} given in several units {given}; keep one column")
        if given and given[0] != f"{base}_s":
            unit = given[0].rsplit("_", 1)[1]
            df[f"{base}_s"] = _numeric(df.pop(given[0]), given[0], where) * UNITS[unit]
    for col, kind in columns.items():
        if col in df and kind is float:
            df[col] = _numeric(df[col], col, where)
        elif col in df:
            df[col] = df[col].fillna("").str.strip()
    if "provenance" not in df:
        df["provenance"] = [f"{path.name}:{i}" for i in range(len(df))]
    df["source"] = df["source"] if "source" in df else "user"
    return df, where


def _required(df: pd.DataFrame, columns, where: str, what: str, mask=None) -> None:
    for col in columns:
        if col not in df:
            raise ValueError(f"{where}: missing column {col!r} (required{what})")
        empty = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if mask is not None:
            empty &= mask
        if empty.any():
            rows = np.flatnonzero(empty)[:5].tolist()
            raise ValueError(f"{where}: column {col!r} is empty in rows {rows} (required{what})")


def _conform(df: pd.DataFrame, where: str, conform) -> pd.DataFrame:
    try:
        return conform(df)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def load_kernels(path) -> pd.DataFrame:
    """Kernel table from a user CSV (see the module docstring for the columns)."""
    df, where = _read(path, schema.KERNEL_COLUMNS, ("measured",))
    _required(df, ("gpu", "op"), where, "")
    if "measured_s" not in df:
        raise ValueError(f"{where}: missing time column; give one of measured_s, measured_ms, measured_us")
    _required(df, ("measured_s",), where, "")
    df["gpu"] = df["gpu"].str.lower()
    unknown = sorted(set(df["op"]) - set(SHAPES))
    if unknown:
        raise ValueError(f"{where}: column 'op' has unknown values {unknown}; allowed: {', '.join(schema.KERNEL_OPS)}")
    for op, shape in SHAPES.items():
        rows = df["op"] == op
        if rows.any():
            _required(df, shape, where, f" for op {op!r}", rows)
    for col, applies in (("batch", ATTENTION), ("gpus", COLLECTIVES)):
        default = pd.Series(np.where(df["op"].isin(applies), np.nan, 1.0), index=df.index)
        df[col] = df[col].fillna(default) if col in df else default
    return _conform(df, where, schema.kernels)


def load_end_to_end(path) -> pd.DataFrame:
    """End-to-end table from a user CSV (see the module docstring for the columns)."""
    df, where = _read(path, schema.E2E_COLUMNS, ("latency", "ttft", "tpot"))
    _required(df, E2E_REQUIRED, where, "")
    if "latency_s" not in df:
        raise ValueError(f"{where}: missing time column; give one of latency_s, latency_ms, latency_us")
    _required(df, ("latency_s",), where, "")
    df["gpu"] = df["gpu"].str.lower()
    df["pp"] = df["pp"].fillna(1.0) if "pp" in df else 1.0
    return _conform(df, where, schema.end_to_end)
