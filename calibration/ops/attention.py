"""Fused-attention kernels (prefill and decode) -> :class:`jaxmodel.kernels.attention.AttentionModel`.

Each measured row (``batch`` sequences of ``seq_q`` new tokens attending ``seq_kv`` keys,
``heads`` query heads sharing ``kv_heads`` KV heads of ``head_dim``) becomes the inputs the
engine would hand the model for the same operator (:func:`jaxmodel.ops._attention_core`,
flash implementation): ``m`` = new tokens x query heads per KV head, ``matmuls`` = sequences x
KV heads, ``n`` = keys attended, ``k`` = head dim, FLOPs = 2·heads·(causal pairs)·2·head_dim
per sequence, bytes = Q + O + K/V read + K/V cache write. Pair and key counts come from the
engine's own :func:`jaxmodel.ops.attention_pairs` and :func:`jaxmodel.ops.attention_keys`.

Decode and prefill rows are fitted together (one parameter set, separate decode and prefill
parameters plus the shared split-combine and relayout costs).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd

from calibration import fit as _fit
from calibration.ops import roofline as roofline
from jaxmodel.kernels import attention
from jaxmodel.ops import attention_keys, attention_pairs

OPS = ("attention_decode", "attention_prefill")
#: Element bytes of the activation and KV-cache dtypes the fit understands.
DTYPE_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0}
#: FlashAttention generation vLLM runs on each GPU: vllm-flash-attn's FA2 on Ampere (sm80),
#: FA3 on Hopper (sm90; vLLM's default there, and the only one taking an FP8 cache).
FLASH_VERSION = {"a100_sxm": 2, "a100_pcie": 2, "h100_sxm": 3, "h100_pcie": 3, "h200_sxm": 3}
#: Columns naming one measured shape (held-out groups are drawn over these).
SHAPE = ["op", "batch", "seq_kv", "heads", "kv_heads"]
#: Robust refit (as for GEMMs, :data:`calibration.ops.gemm.TRIM_SIGMAS`): training rows beyond
#: this many robust standard deviations of the first fit's log residuals are dropped and the fit
#: repeated, so a few anomalous timings do not bend the shared parameters; scoring uses every row.
TRIM_SIGMAS = 3.0


def kv_dtype(table: pd.DataFrame) -> pd.Series:
    """The KV-cache dtype of each row, from the kernel label's ``kv:<dtype>`` suffix (else the row dtype)."""
    suffix = table["kernel"].astype(str).str.extract(r"kv:(\w+)$", expand=False)
    return suffix.fillna(table["dtype"].astype(str))


def select(table: pd.DataFrame, framework_version: str | None = "0.14.0") -> pd.DataFrame:
    """Attention rows of one consistent kernel: vLLM's FlashAttention with a BF16 KV cache
    (the FP8-cache and FA3/FA4-labelled kernels of other versions time differently)."""
    keep = (table["op"].isin(OPS) & table["kernel"].astype(str).str.startswith("vllm_flash_attn kv:")
            & (kv_dtype(table) == "bf16") & table["dtype"].isin(list(DTYPE_BYTES)))
    if framework_version is not None:
        keep &= table["framework_version"].astype(str) == framework_version
    return table[keep]


def flash_version(gpu: str) -> int:
    if gpu not in FLASH_VERSION:
        raise ValueError(f"attention fit: no known FlashAttention generation for GPU {gpu!r}; "
                         f"known: {', '.join(sorted(FLASH_VERSION))} (pass flash_version=2 or 3)")
    return FLASH_VERSION[gpu]


def rows(table: pd.DataFrame, system) -> dict[str, np.ndarray]:
    """Model inputs per measured row, counted as the engine counts them."""
    f = {c: table[c].to_numpy(np.float64) for c in ("batch", "seq_q", "seq_kv", "heads", "kv_heads", "head_dim")}
    decode = (table["op"] == "attention_decode").to_numpy()
    a = table["dtype"].map(DTYPE_BYTES).to_numpy(np.float64)
    e = kv_dtype(table).map(DTYPE_BYTES).to_numpy(np.float64)
    if np.isnan(a).any() or np.isnan(e).any():
        raise ValueError(f"attention rows: dtypes must be among {sorted(DTYPE_BYTES)}")
    # seq_kv counts the keys attended, the new token(s) included (see the loader).
    new = np.where(decode, 1.0, f["seq_q"])
    past = f["seq_kv"] - new
    no_window = np.zeros_like(new)
    keys = np.asarray(attention_keys(new, past, no_window), dtype=np.float64)
    pairs = np.asarray(attention_pairs(new, past, no_window), dtype=np.float64)
    seqs, heads, kv, hd = f["batch"], f["heads"], f["kv_heads"], f["head_dim"]
    q_bytes = seqs * new * heads * hd * a
    o_bytes = seqs * new * heads * hd * a
    kv_read = 2.0 * seqs * keys * kv * hd * e
    kv_write = seqs * new * 2.0 * kv * hd * e
    chip = system.chip
    n_rows = len(table)
    return {
        "decode": decode.astype(np.float64), "m": new * heads / kv, "n": keys, "k": hd, "matmuls": seqs * kv,
        "flops": 2.0 * heads * seqs * pairs * 2.0 * hd, "bytes_moved": q_bytes + o_bytes + kv_read + kv_write,
        "seqs": seqs, "peak_flops": np.full(n_rows, float(chip.tensor_peak("bf16"))),
        "bandwidth_Bps": np.full(n_rows, float(chip.mem_bw_Bps)), "cores": np.full(n_rows, float(chip.cores)),
    }


def model(params: dict, version: int | None = None) -> attention.AttentionModel:
    """The model of fitted ``params`` (``flash_version`` from them unless given)."""
    values = dict(params)
    stored = values.pop("flash_version", None)
    version = version if version is not None else (3 if stored is None else int(stored))
    return attention.AttentionModel(flash_version=version, **values)


def predict(params: dict, r: dict, *, use_seqs: bool = True, version: int | None = None):
    """Seconds per row: the decode or prefill path by ``r["decode"]``. ``use_seqs`` hands the
    model the sequence count, as the engine does (its op table records each attention row's
    sequences)."""
    mdl = model(params, version)
    args = tuple(r[c] for c in ("m", "n", "k", "matmuls", "flops", "bytes_moved", "peak_flops", "bandwidth_Bps",
                                "cores"))
    seqs = r["seqs"] if use_seqs else None
    return jnp.where(jnp.asarray(r["decode"]) > 0, mdl.time_s(True, *args, seqs=seqs),
                     mdl.time_s(False, *args, seqs=seqs))


def fit_table(table: pd.DataFrame, system, *, gpu: str | None = None, version: int | None = None,
              use_seqs: bool = True, **kw) -> _fit.FitResult:
    """Fit the model to the measured rows of one GPU; the result's params carry
    ``flash_version`` (fixed, stderr 0) and the values of parameters the structure does not use."""
    table = select(table, framework_version=None) if not table["op"].isin(OPS).all() else table
    if table.empty:
        raise ValueError("attention fit: no vLLM FlashAttention rows with a BF16 KV cache")
    if version is None:
        gpus = sorted(set(table["gpu"])) if gpu is None else [gpu]
        if len(gpus) != 1:
            raise ValueError(f"attention fit: rows of one GPU expected (got {gpus})")
        version = flash_version(gpus[0])
    unused = attention.UNUSED[version]
    start = {k: v for k, v in attention.START.items() if k not in unused}
    fixed = {k: attention.START[k] for k in unused}

    def predict_fitted(params, r):
        return predict({**params, **fixed}, r, use_seqs=use_seqs, version=version)

    kw.setdefault("trim_sigmas", TRIM_SIGMAS)
    result = _fit.least_squares(predict_fitted, start, rows(table, system), table["measured_s"].to_numpy(), **kw)
    extra = {**fixed, "flash_version": float(version)}
    return result._replace(params={**result.params, **extra}, stderr={**result.stderr, **{k: 0.0 for k in extra}})


#: The name every :mod:`calibration.ops` adapter fits by (see :mod:`calibration.sets`).
fit = fit_table
