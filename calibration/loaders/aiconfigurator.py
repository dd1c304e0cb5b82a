"""NVIDIA AIConfigurator per-operator database -> kernel table.

Reads ``<root>/<system>/<op>/<framework>/<version>/<table>.parquet`` (the layout of
``aiconfigurator_core/systems/data`` upstream and of ``shared/data/aiconfigurator-ops``), five
tables:

* ``gemm_perf`` -> ``gemm`` (``m, n, k``; dtype from ``gemm_dtype``: ``bfloat16`` -> ``bf16``,
  other quantisation modes keep their lower-case name: ``fp8``, ``fp8_block``, ``int8_wo``,
  ``int4_wo``, ``sq``, ``nvfp4``).
* ``context_attention_perf`` -> ``attention_prefill`` (``seq_q = seq_kv = isl``).
* ``generation_attention_perf`` -> ``attention_decode`` (``seq_q = 1``). ``seq_kv`` counts the
  tokens attended, new token included, which the upstream collectors record differently: the
  vLLM collector (``collector/vllm/collect_attn.py``) builds sequences of ``seq_lens = step`` with
  one query token, i.e. ``step - 1`` cached tokens plus the new one, so ``seq_kv = step``; the
  TRT-LLM collector (``collector/trtllm/collect_attn.py``) sets ``num_cached_tokens = step`` and
  appends one generated token, so ``seq_kv = step + 1``.
* ``nccl_perf`` -> ``all_reduce``, ``all_gather``, ``reduce_scatter``, ``all_to_all`` (framework
  ``nccl``, version from the ``version`` column, which disagrees with the folder on H100);
  ``message_bytes = message_size x bytes per element`` because ``message_size`` is an element
  count (nccl-tests buffer bytes / element size).
* ``custom_allreduce_perf`` -> ``all_reduce`` with framework ``<folder framework>_custom_allreduce``
  (e.g. ``vllm_custom_allreduce``), ``message_bytes = message_size x 2`` for BF16, ``kernel`` =
  ``backend`` (vLLM: ``vllm_graph`` / ``vllm_eager``) or ``implementation`` (TRT-LLM).

Attention rows keep both KV-cache dtypes; ``kernel`` is ``"<kernel_source> kv:<dtype>"`` so a BF16
model can select ``kernel.str.endswith("kv:bf16")``. Rows with ``window_size != 0`` (sliding-window
attention: the cost depends on the window, which the kernel table has no column for) or
``beam_width != 1`` (beam search reads a different cache layout) are dropped.

``latency`` is milliseconds; ``measured_s = latency / 1e3``. ``provenance`` is
``<relative parquet path>#row<i>`` with ``i`` the row's position in the file. ``gpu`` is the system folder name,
``framework`` the lower-cased framework folder name. Other tables in the folder tree (MoE, MLA,
...) are ignored.
"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from calibration import schema
from calibration.loaders import SHARED_DATA

SOURCE = "aiconfigurator"
#: The shared measured-data copy, ``<repo>/../shared/data/aiconfigurator-ops``.
SHARED_ROOT = SHARED_DATA / "aiconfigurator-ops"

#: Table file name -> kernel-table ops it yields.
TABLE_OPS = {
    "gemm_perf.parquet": ("gemm",),
    "context_attention_perf.parquet": ("attention_prefill",),
    "generation_attention_perf.parquet": ("attention_decode",),
    "nccl_perf.parquet": ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"),
    "custom_allreduce_perf.parquet": ("all_reduce",),
}
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
_BYTES = {"bfloat16": 2, "bf16": 2, "float16": 2, "half": 2, "fp16": 2, "float32": 4, "float": 4, "fp32": 4,
          "int8": 1, "fp8": 1}
_NCCL_OPS = {"all_reduce": "all_reduce", "all_gather": "all_gather", "reduce_scatter": "reduce_scatter",
             "alltoall": "all_to_all", "all_to_all": "all_to_all"}


def default_root() -> pathlib.Path:
    """The shared data folder if present, else ``systems/data`` of an installed ``aiconfigurator_core``."""
    if SHARED_ROOT.is_dir():
        return SHARED_ROOT
    spec = importlib.util.find_spec("aiconfigurator_core")
    package_root = None
    if spec is not None and spec.submodule_search_locations:
        package_root = pathlib.Path(next(iter(spec.submodule_search_locations))) / "systems" / "data"
        if package_root.is_dir():
            return package_root
    raise FileNotFoundError(
        f"AIConfigurator data not found: neither {SHARED_ROOT} exists nor an installed aiconfigurator_core "
        f"package with systems/data ({package_root or 'aiconfigurator_core not installed'}); pass root=")


def load(root=None, systems=None, frameworks=None, ops=None) -> pd.DataFrame:
    """Kernel table of the AIConfigurator database below ``root``.

    ``systems`` (e.g. ``["h100_sxm"]``) and ``frameworks`` (folder names ``"vllm"``, ``"trtllm"``,
    ``"nccl"``) select folders; ``ops`` (kernel-table op names) selects tables and rows, so only
    the parquet files needed are read.
    """
    root = default_root() if root is None else pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"AIConfigurator data root {root} does not exist")
    if ops is not None:
        ops = {ops} if isinstance(ops, str) else set(ops)
        unknown = sorted(ops - set(schema.KERNEL_OPS))
        if unknown:
            raise ValueError(f"unknown op {unknown}; allowed: {', '.join(schema.KERNEL_OPS)}")
    systems = None if systems is None else {systems} if isinstance(systems, str) else set(systems)
    frameworks = (None if frameworks is None else
                  {f.lower() for f in ([frameworks] if isinstance(frameworks, str) else frameworks)})
    frames = []
    for path in sorted(root.glob("*/*/*/*/*.parquet")):
        system, _, framework, version, table = path.relative_to(root).parts
        if table not in TABLE_OPS or (ops is not None and not ops & set(TABLE_OPS[table])):
            continue
        if (systems is not None and system not in systems) or (frameworks is not None
                                                                and framework.lower() not in frameworks):
            continue
        frame = _READERS[table](path, path.relative_to(root).as_posix(), framework.lower(), version)
        frame["gpu"] = system
        if ops is not None:
            frame = frame[frame["op"].isin(ops)]
        frames.append(frame)
    if not frames:
        return schema.kernels(schema.empty(schema.KERNEL_COLUMNS))
    out = pd.concat(frames, ignore_index=True)
    out["source"] = SOURCE
    return schema.kernels(out)


def _read(path: pathlib.Path, required, optional=()) -> pd.DataFrame:
    """The ``required`` (and present ``optional``) columns of a parquet file; names a missing column."""
    names = set(pq.read_schema(path).names)
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (has {sorted(names)})")
    return pd.read_parquet(path, columns=list(required) + [c for c in optional if c in names])


def _dtype(values: pd.Series) -> np.ndarray:
    text = values.astype(str).str.lower()
    return text.map(lambda d: _DTYPES.get(d, d)).to_numpy(dtype=object)


def _bytes_per_element(values: pd.Series, path, column) -> np.ndarray:
    text = values.astype(str).str.lower()
    unknown = sorted(set(text) - set(_BYTES))
    if unknown:
        raise ValueError(f"{path}: column {column!r} has dtype(s) {unknown} of unknown element size")
    return text.map(_BYTES).to_numpy(dtype=float)


def _base(df: pd.DataFrame, rel: str, framework: str, version) -> dict:
    return {
        "framework": framework,
        "framework_version": version,
        "measured_s": df["latency"].to_numpy(dtype=float) / 1e3,
        "provenance": rel + "#row" + pd.Series(df.index.astype(str), index=df.index),
    }


def _gemm(path, rel, framework, version):
    df = _read(path, ["gemm_dtype", "m", "n", "k", "kernel_source", "latency"])
    return pd.DataFrame({
        **_base(df, rel, framework, version), "op": "gemm", "dtype": _dtype(df["gemm_dtype"]),
        "m": df["m"], "n": df["n"], "k": df["k"], "batch": 1.0, "gpus": 1.0, "kernel": df["kernel_source"],
    }, index=df.index)


def _attention(path, rel, framework, version, decode: bool):
    cols = ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "attn_dtype", "kv_cache_dtype",
            "kernel_source", "latency"] + (["step"] if decode else [])
    df = _read(path, cols, optional=["window_size", "beam_width"])
    keep = np.ones(len(df), bool)
    if "window_size" in df:
        keep &= df["window_size"].to_numpy() == 0
    if "beam_width" in df:
        keep &= df["beam_width"].to_numpy() == 1
    df = df[keep]
    if decode:
        seq_q = 1.0
        seq_kv = df["step"].to_numpy(dtype=float) + (1.0 if framework == "trtllm" else 0.0)
    else:
        seq_q = seq_kv = df["isl"].to_numpy(dtype=float)
    kernel = df["kernel_source"].astype(str) + " kv:" + pd.Series(_dtype(df["kv_cache_dtype"]), index=df.index)
    return pd.DataFrame({
        **_base(df, rel, framework, version), "op": "attention_decode" if decode else "attention_prefill",
        "dtype": _dtype(df["attn_dtype"]), "batch": df["batch_size"], "seq_q": seq_q, "seq_kv": seq_kv,
        "heads": df["num_heads"], "kv_heads": df["num_key_value_heads"], "head_dim": df["head_dim"],
        "gpus": 1.0, "kernel": kernel,
    }, index=df.index)


def _nccl(path, rel, framework, version):
    df = _read(path, ["op_name", "nccl_dtype", "num_gpus", "message_size", "kernel_source", "version", "latency"])
    op = df["op_name"].astype(str).map(_NCCL_OPS)
    if op.isna().any():
        raise ValueError(f"{path}: column 'op_name' has unknown collective(s) "
                         f"{sorted(set(df['op_name'][op.isna()]))}")
    return pd.DataFrame({
        **_base(df, rel, "nccl", df["version"].astype(str)), "op": op, "dtype": _dtype(df["nccl_dtype"]),
        "message_bytes": df["message_size"].to_numpy(dtype=float)
        * _bytes_per_element(df["nccl_dtype"], path, "nccl_dtype"),
        "gpus": df["num_gpus"], "batch": 1.0, "kernel": df["kernel_source"],
    }, index=df.index)


def _custom_allreduce(path, rel, framework, version):
    names = set(pq.read_schema(path).names)
    kernel_col = next((c for c in ("backend", "implementation", "kernel_source") if c in names), "backend")
    df = _read(path, ["allreduce_dtype", "num_gpus", "message_size", kernel_col, "latency"])
    return pd.DataFrame({
        **_base(df, rel, f"{framework}_custom_allreduce", version), "op": "all_reduce",
        "dtype": _dtype(df["allreduce_dtype"]),
        "message_bytes": df["message_size"].to_numpy(dtype=float)
        * _bytes_per_element(df["allreduce_dtype"], path, "allreduce_dtype"),
        "gpus": df["num_gpus"], "batch": 1.0, "kernel": df[kernel_col],
    }, index=df.index)


_READERS = {
    "gemm_perf.parquet": _gemm,
    "context_attention_perf.parquet": lambda *a: _attention(*a, decode=False),
    "generation_attention_perf.parquet": lambda *a: _attention(*a, decode=True),
    "nccl_perf.parquet": _nccl,
    "custom_allreduce_perf.parquet": _custom_allreduce,
}
