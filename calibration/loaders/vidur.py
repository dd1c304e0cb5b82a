"""Vidur profiling CSVs (microsoft/vidur ``data/profiling``) -> kernel table.

``compute/<gpu>/<org>/<model>/mlp.csv`` holds one transformer layer's non-attention operators
timed per (num_tokens, TP degree) on a single GPU; ``network/<setup>/{all_reduce,send_recv}.csv``
holds collectives vs message size. Every timing column is ``time_stats.<op>.{min,max,mean,median,std}``
in **milliseconds** over 20 iterations; we use the **median** (robust to single slow iterations,
which the ``max`` column shows) and convert to seconds. See ``vidur-profiling/README.md`` in the data folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from calibration import schema
from calibration.loaders import SHARED_DATA

DEFAULT_ROOT = SHARED_DATA / "vidur-profiling"

#: Per-layer dimensions (n_embd, n_head, n_kv_head, n_expanded_embd, gated MLP, norm op, activation op),
#: from the model-shape columns documented in the README (cross-checked with each model's Hugging Face
#: config.json); the loader verifies them against the shape columns of every file.
MODELS = {
    "meta-llama/Llama-2-7b-hf": (4096, 32, 32, 11008, True, "rmsnorm", "silu_mul"),
    "meta-llama/Llama-2-70b-hf": (8192, 64, 8, 28672, True, "rmsnorm", "silu_mul"),
    "meta-llama/Meta-Llama-3-8B": (4096, 32, 8, 14336, True, "rmsnorm", "silu_mul"),
    "meta-llama/Meta-Llama-3-70B": (8192, 64, 8, 28672, True, "rmsnorm", "silu_mul"),
    "microsoft/phi-2": (2560, 32, 32, 10240, False, "layernorm", "gelu"),
}
#: Folder name -> gpu name. The README: a100 = A100 80 GB (DGX-A100 or NC96ads_A100_v4, not recorded),
#: h100 = H100 80 GB (variant not recorded; its sanity check matches SXM).
GPUS = {"a100": "a100_sxm", "h100": "h100_sxm"}
DTYPE = "fp16"  # README: "FP16, one transformer layer"
SETUPS = ("dgx", "pairwise_nvlink")
STAT = "median"


def _ms_column(df: pd.DataFrame, op: str, path: str) -> np.ndarray:
    col = f"time_stats.{op}.{STAT}"
    if col not in df:
        raise ValueError(f"{path}: missing column {col!r}")
    return df[col].to_numpy(dtype=float) * 1e-3


def _compute_rows(df: pd.DataFrame, rel: str, model: str, gpu: str) -> pd.DataFrame:
    n_embd, n_head, n_kv, n_exp, gated, norm_op, act_op = MODELS[model]
    for col, want in (("n_embd", n_embd), ("n_head", n_head), ("n_kv_head", n_kv), ("n_expanded_embd", n_exp)):
        got = set(df[col].unique().tolist())
        if got != {want}:
            raise ValueError(f"{rel}: column {col} is {sorted(got)}, expected {want} for {model}")
    head_dim = n_embd // n_head
    tokens = df["num_tokens"].to_numpy(dtype=float)
    tp = df["num_tensor_parallel_workers"].to_numpy(dtype=float)
    rows = [f"{rel}:{i}" for i in df.index]
    ones, nan = np.ones(len(df)), np.full(len(df), np.nan)
    up_n = (2 if gated else 1) * n_exp / tp
    # vidur op -> (kernel-table op, m, n, k); GEMMs are [m x k] @ [k x n] per GPU, sharded by TP as the README says.
    ops = {
        "attn_pre_proj": ("gemm", tokens, (n_head + 2 * n_kv) * head_dim / tp, n_embd * ones),
        "attn_post_proj": ("gemm", tokens, n_embd * ones, n_embd / tp),
        "mlp_up_proj": ("gemm", tokens, up_n, n_embd * ones),
        "mlp_down_proj": ("gemm", tokens, n_embd * ones, n_exp / tp),
        "input_layernorm": (norm_op, tokens, n_embd * ones, nan),
        "post_attention_layernorm": (norm_op, tokens, n_embd * ones, nan),
        "mlp_act": (act_op, tokens, n_exp / tp, nan),
        # RoPE rotates the q and k heads held by this GPU: row length (n_head + n_kv_head) * head_dim / TP.
        "attn_rope": ("rope", tokens, (n_head + n_kv) * head_dim / tp, nan),
        "add": ("add", ones, tokens * n_embd, nan),  # elementwise: m = 1, n = elements
        "emb": ("embedding", tokens, n_embd * ones, nan),
    }
    frames = []
    for name, (op, m, n, k) in ops.items():
        if f"time_stats.{name}.{STAT}" not in df:
            if name == "post_attention_layernorm" and norm_op == "layernorm":
                continue  # phi-2: parallel attention/MLP block with a single LayerNorm
            raise ValueError(f"{rel}: missing column time_stats.{name}.{STAT}")
        extra = {}
        if name == "attn_rope":
            extra = {"heads": n_head / tp, "kv_heads": n_kv / tp, "head_dim": head_dim * ones}
        frames.append(pd.DataFrame({
            "source": "vidur", "gpu": gpu, "framework": "pytorch", "op": op, "dtype": DTYPE,
            "m": m, "n": n, "k": k, "batch": ones, "gpus": ones, "kernel": name,
            "measured_s": _ms_column(df, name, rel), "provenance": rows, **extra,
        }))
    return pd.concat(frames, ignore_index=True)


def load_compute(root=None, gpus=None, models=None) -> pd.DataFrame:
    """Kernel table of every operator in the ``compute/*/*/*/mlp.csv`` files (median time, s).

    ``gpus`` filters by gpu name (``"a100_sxm"``, ``"h100_sxm"``); ``models`` by Hugging Face id
    (``"meta-llama/Meta-Llama-3-8B"``) or its last part (``"Meta-Llama-3-8B"``). The original
    vidur op name is kept in ``kernel``; duplicated (num_tokens, TP) rows are kept as measured.
    """
    root = Path(root) if root is not None else DEFAULT_ROOT
    files = sorted((root / "compute").glob("*/*/*/mlp.csv"))
    if not files:
        raise FileNotFoundError(f"no compute/<gpu>/<org>/<model>/mlp.csv under {root}")
    frames = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        folder_gpu, org, name = path.parts[-4], path.parts[-3], path.parts[-2]
        if folder_gpu not in GPUS:
            raise ValueError(f"{rel}: unknown gpu folder {folder_gpu!r}; known: {sorted(GPUS)}")
        gpu, model = GPUS[folder_gpu], f"{org}/{name}"
        if gpus is not None and gpu not in gpus:
            continue
        if models is not None and model not in models and name not in models:
            continue
        if model not in MODELS:
            raise ValueError(f"{rel}: no dimensions for model {model!r}; known: {sorted(MODELS)}")
        frames.append(_compute_rows(pd.read_csv(path), rel, model, gpu))
    if not frames:
        return schema.empty(schema.KERNEL_COLUMNS)
    return schema.kernels(pd.concat(frames, ignore_index=True))


def load_network(root=None) -> pd.DataFrame:
    """Kernel table of the ``network/<gpu>_<setup>/{all_reduce,send_recv}.csv`` collectives.

    ``message_bytes`` = ``size`` (bytes, FP16 buffer), ``gpus`` = ``num_workers``, ``measured_s`` =
    median ms / 1000. ``kernel`` records the node topology as ``"<setup>:devices_per_node=<d>"``
    (``dgx``: 8 GPUs all-to-all NVLink; ``pairwise_nvlink``: 4-GPU nodes, NVLinked pairs joined
    by PCIe); ``devices_per_node < gpus`` means the collective spans several nodes.
    """
    root = Path(root) if root is not None else DEFAULT_ROOT
    files = sorted((root / "network").glob("*/*.csv"))
    if not files:
        raise FileNotFoundError(f"no network/<setup>/<collective>.csv under {root}")
    frames = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        folder, op = path.parent.name, path.stem
        prefix, _, setup = folder.partition("_")
        if prefix not in GPUS or setup not in SETUPS:
            raise ValueError(f"{rel}: folder {folder!r} is not <gpu>_<setup> with gpu in {sorted(GPUS)} "
                             f"and setup in {SETUPS}")
        if op not in ("all_reduce", "send_recv"):
            raise ValueError(f"{rel}: unknown collective file; expected all_reduce.csv or send_recv.csv")
        df = pd.read_csv(path, index_col=0)
        for col in ("size", "num_workers", "devices_per_node", "collective"):
            if col not in df:
                raise ValueError(f"{rel}: missing column {col!r}")
        if set(df["collective"]) != {op}:
            raise ValueError(f"{rel}: column collective holds {sorted(set(df['collective']))}, expected {op!r}")
        frames.append(pd.DataFrame({
            "source": "vidur", "gpu": GPUS[prefix], "framework": "pytorch", "op": op, "dtype": DTYPE,
            "message_bytes": df["size"].to_numpy(dtype=float), "gpus": df["num_workers"].to_numpy(dtype=float),
            "kernel": [f"{setup}:devices_per_node={d}" for d in df["devices_per_node"]],
            "measured_s": _ms_column(df, op, rel), "provenance": [f"{rel}:{i}" for i in df.index],
        }))
    return schema.kernels(pd.concat(frames, ignore_index=True))
