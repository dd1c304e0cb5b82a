"""LLMCompass measured A100 / MI210 operator timings -> kernel table.

Reads the header-less CSVs of ``llmcompass/real_hardware/`` (LLMCompass, ISCA 2024, Figure 5):

* ``matmul_<GPU>.csv`` (``M, N, K, latency, throughput``): ``latency`` is text such as
  ``"0.1900ms"``; ``measured_s = ms / 1e3``. op ``gemm``, ``m, n, k = M, N, K``.
* ``softmax_<GPU>.csv``, ``layernorm_<GPU>.csv`` (``M, N, throughput``): throughput in G elements/s
  defined as ``M*N / latency / 1e9``, so ``measured_s = M*N / (throughput*1e9)``; ``m, n = M, N``.
* ``gelu_<GPU>.csv`` (``M, throughput``): ``measured_s = M / (throughput*1e9)``; elementwise, so
  ``m = 1, n = M``.
* ``transformer_A100.csv`` / ``transformerAR_A100.csv``: per-operator seconds of one GPT-3 175B
  layer on one of 4 tensor-parallel A100s (d_model 12288, 96 heads -> 24 per GPU, head_dim 128,
  batch 8; prefill seq 2048, decode 1 token over a 2048+1024 KV cache). Kept are the rows that are
  one plain operator timing: ``Q_K_V`` (upstream ``run_on_gpu`` times one ``[tokens x 12288] @
  [12288 x 3072]`` projection and multiplies it by 3, so the row is divided by 3), ``Wo_proj``,
  ``W1_proj``, ``W2_proj``, ``Softmax`` (over ``[8, 24, seq_q, seq_kv]`` scores: rows = 8*24*seq_q)
  and ``GeLU`` (``8 * seq_q * 12288`` elements). Left out: ``Q_mul_K`` / ``A_mul_V`` (batched
  matmuls, no kernel-table op), ``LayerNorm_*`` (upstream subtracts an estimated kernel-launch
  overhead from these, unlike every other row) and ``AllReduce_*`` (hand-entered round values,
  per the dataset README).

All timings are PyTorch wall clock (median of 50 runs), so kernel-launch overhead is included.
dtype is ``fp16`` except matmul on A100, which the README says ran with bf16 tensors.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from calibration import schema
from calibration.loaders import SHARED_DATA

SOURCE = "llmcompass"
#: The shared measured-data copy, ``<repo>/../shared/data/llmcompass``.
SHARED_ROOT = SHARED_DATA / "llmcompass"
GPU_NAMES = {"a100": "a100_sxm", "mi210": "mi210"}
_FILE_GPU = {"a100": "A100", "mi210": "MI210"}

# GPT-3 175B layer of transformer*_A100.csv, per GPU at TP=4.
_D, _HEADS_PER_GPU, _BATCH, _TP = 12288, 96 // 4, 8, 4
_PREFILL_SEQ, _DECODE_KV = 2048, 2048 + 1024
#: Row order of transformer*_A100.csv (README).
TRANSFORMER_ROWS = ("Q_K_V", "Q_mul_K", "A_mul_V", "Wo_proj", "W1_proj", "W2_proj", "Softmax", "LayerNorm_MHA",
                    "LayerNorm_FFN", "GeLU", "AllReduce_MHA", "AllReduce_FFN")


def default_root() -> pathlib.Path:
    """The shared ``llmcompass`` data folder; raises naming it when it is absent."""
    if not SHARED_ROOT.is_dir():
        raise FileNotFoundError(f"LLMCompass data folder {SHARED_ROOT} does not exist; pass root=")
    return SHARED_ROOT


def load(root=None, gpus=("a100", "mi210")) -> pd.DataFrame:
    """Kernel table of the LLMCompass ``real_hardware`` measurements for ``gpus`` (``"a100"``, ``"mi210"``).

    ``root`` is the ``llmcompass`` folder (holding ``real_hardware/``) or ``real_hardware/`` itself;
    provenance paths are relative to it.
    """
    root = default_root() if root is None else pathlib.Path(root)
    data = root / "real_hardware"
    if not data.is_dir():
        data = root
    if not (data / "matmul_A100.csv").is_file() and not (data / "matmul_MI210.csv").is_file():
        raise FileNotFoundError(f"LLMCompass real_hardware CSVs (matmul_A100.csv, ...) not found in {root} "
                                f"or {root / 'real_hardware'}")
    gpus = [gpus] if isinstance(gpus, str) else list(gpus)
    unknown = [g for g in gpus if g.lower() not in GPU_NAMES]
    if unknown:
        raise ValueError(f"unknown gpu {unknown}; LLMCompass has {list(GPU_NAMES)}")
    frames = []
    for gpu in (g.lower() for g in gpus):
        tag = _FILE_GPU[gpu]
        frames += [_matmul(root, data / f"matmul_{tag}.csv", gpu),
                   _vector(root, data / f"softmax_{tag}.csv", gpu, "softmax"),
                   _vector(root, data / f"layernorm_{tag}.csv", gpu, "layernorm"),
                   _gelu(root, data / f"gelu_{tag}.csv", gpu)]
        if gpu == "a100":
            frames += [_transformer(root, data / "transformer_A100.csv", decode=False),
                       _transformer(root, data / "transformerAR_A100.csv", decode=True)]
    if not frames:
        return schema.kernels(schema.empty(schema.KERNEL_COLUMNS))
    out = pd.concat(frames, ignore_index=True)
    out["source"] = SOURCE
    out["framework"] = "pytorch"
    return schema.kernels(out)


def _csv(path: pathlib.Path, names) -> pd.DataFrame:
    """A header-less CSV with ``names`` columns (values stripped of the space after each comma)."""
    if not path.is_file():
        raise FileNotFoundError(f"LLMCompass file {path} does not exist")
    df = pd.read_csv(path, header=None, names=list(names), skipinitialspace=True, dtype=str)
    if df.isna().any().any():
        raise ValueError(f"{path}: expected {len(names)} columns {list(names)} in every row")
    return df


def _number(df: pd.DataFrame, column: str, path, suffix: str = "") -> np.ndarray:
    text = df[column].str.strip()
    if suffix:
        bad = ~text.str.endswith(suffix)
        if bad.any():
            raise ValueError(f"{path}: column {column!r} should end in {suffix!r} (rows {np.flatnonzero(bad)[:5]})")
        text = text.str.slice(0, -len(suffix))
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: column {column!r} has non-numeric values (rows "
                         f"{np.flatnonzero(~np.isfinite(values))[:5].tolist()})")
    return values


def _common(root, path, df, gpu, op, dtype="fp16") -> dict:
    rel = path.relative_to(root).as_posix()
    return {"gpu": GPU_NAMES[gpu], "op": op, "dtype": dtype, "batch": 1.0, "gpus": 1.0, "kernel": "",
            "provenance": [f"{rel}#row{i}" for i in range(len(df))]}


def _matmul(root, path, gpu):
    df = _csv(path, ["M", "N", "K", "latency", "throughput"])
    return pd.DataFrame({**_common(root, path, df, gpu, "gemm", "bf16" if gpu == "a100" else "fp16"),
                         "m": _number(df, "M", path), "n": _number(df, "N", path), "k": _number(df, "K", path),
                         "measured_s": _number(df, "latency", path, suffix="ms") / 1e3})


def _vector(root, path, gpu, op):
    df = _csv(path, ["M", "N", "throughput"])
    m, n = _number(df, "M", path), _number(df, "N", path)
    return pd.DataFrame({**_common(root, path, df, gpu, op), "m": m, "n": n,
                         "measured_s": m * n / (_number(df, "throughput", path) * 1e9)})


def _gelu(root, path, gpu):
    df = _csv(path, ["M", "throughput"])
    elements = _number(df, "M", path)
    return pd.DataFrame({**_common(root, path, df, gpu, "gelu"), "m": 1.0, "n": elements,
                         "measured_s": elements / (_number(df, "throughput", path) * 1e9)})


def _transformer(root, path, decode: bool):
    df = _csv(path, ["seconds"])
    if len(df) != len(TRANSFORMER_ROWS):
        raise ValueError(f"{path}: expected {len(TRANSFORMER_ROWS)} rows ({', '.join(TRANSFORMER_ROWS)}), "
                         f"found {len(df)}")
    seconds = _number(df, "seconds", path)
    seq_q = 1 if decode else _PREFILL_SEQ
    seq_kv = _DECODE_KV + 1 if decode else _PREFILL_SEQ  # upstream concatenates the new token to the cache
    tokens = _BATCH * seq_q
    ffn = 4 * _D // _TP
    shapes = {  # row -> (op, extra columns, divisor of the recorded time)
        "Q_K_V": ("gemm", {"m": tokens, "n": _D // _TP, "k": _D}, 3.0),
        "Wo_proj": ("gemm", {"m": tokens, "n": _D, "k": _D // _TP}, 1.0),
        "W1_proj": ("gemm", {"m": tokens, "n": ffn, "k": _D}, 1.0),
        "W2_proj": ("gemm", {"m": tokens, "n": _D, "k": ffn}, 1.0),
        "Softmax": ("softmax", {"m": _BATCH * _HEADS_PER_GPU * seq_q, "n": seq_kv}, 1.0),
        "GeLU": ("gelu", {"m": 1, "n": tokens * ffn}, 1.0),
    }
    rel = path.relative_to(root).as_posix()
    phase = "decode" if decode else "prefill"
    rows = []
    for i, name in enumerate(TRANSFORMER_ROWS):
        if name not in shapes:
            continue
        op, dims, divisor = shapes[name]
        rows.append({"gpu": "a100_sxm", "op": op, "dtype": "bf16" if op == "gemm" else "fp16", "batch": 1.0,
                     "gpus": 1.0, **dims, "kernel": f"gpt3_{phase}:{name}", "measured_s": seconds[i] / divisor,
                     "provenance": f"{rel}#row{i}"})
    return pd.DataFrame(rows)
