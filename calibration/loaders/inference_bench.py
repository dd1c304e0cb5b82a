"""LLM-Inference-Bench (argonne-lcf) CSVs -> end-to-end table.

Offline batched generation: ``batch`` requests submitted at once, each with ``input_tokens``
prompt tokens and exactly ``output_tokens`` generated (``ignore_eos``); ``latency_s`` is the wall
time of the whole batch (mean over the benchmark's iterations) and ``throughput_tok_s`` is the
source's **input + output** tokens per second, ``batch * (input_tokens + output_tokens) / latency_s``
(checked on load). TTFT and TPOT are not measured (NaN). See ``llm-inference-bench/README.md``.

Supported files (name -> what is read):

* ``throughput_calibration.csv`` - main sweep; ``Input Output Length`` = L is both input and output.
* ``kv_cache_block_size.csv`` - as main; the paged-KV block size goes into ``provenance``.
* ``kv_cache_dtype.csv``, ``quant_a100_h100.csv`` - as main; ``"Weight = w, KV Cache = c"`` gives
  ``dtype`` = w and ``kv_dtype`` = c (``full_prec`` -> ``fp16``).
* ``parallelism_tp_pp_ep.csv`` - TP / PP / hybrid TP2xPP2 rows (tp, pp from the label); the
  expert-parallel rows (``EP``, ``Hybrid TP = 2 and EP = 2``) are dropped: the table has no EP column.
* ``trtllm_a100_llama3_8b_input_vs_output.csv`` - TRT-LLM, A100, distinct input and output lengths.

``speculative_decoding.csv`` is not supported (a draft model changes the work per token).
Quality notes honoured: llama.cpp rows (not batched serving) are dropped; duplicated
configurations (re-runs) and memory-capacity cliffs are kept as measured.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from calibration import schema
from calibration.loaders import SHARED_DATA

DEFAULT_ROOT = SHARED_DATA / "llm-inference-bench"

#: README: A100 = ALCF Polaris A100 SXM4 (most likely 40 GB), H100 = H100 80GB HBM3 (SXM5).
GPUS = {"Nvidia A100 GPU": "a100_sxm", "Nvidia H100 GPU": "h100_sxm"}
FRAMEWORKS = {"vllm": "vllm", "tensorrt-llm": "trtllm", "deepspeed-mii": "deepspeed-mii", "deepspeed": "deepspeed",
              "llama.cpp": "llama.cpp", "sambaflow": "sambaflow"}
DTYPES = {"fp16": "fp16", "float16": "fp16", "full_prec": "fp16", "bf16": "bf16", "bfloat16": "bf16"}
SWEEP_COLUMNS = ("Hardware", "Num of Hardware", "Framework", "Model", "Input Output Length", "Batch Size",
                 "Latency", "Throughput")
HEATMAP_COLUMNS = ("model_name", "tp_size", "precision", "max_input_length", "max_output_len", "batch_size",
                   "int8_kv_cache", "latency", "throughput")
#: file -> extra column beyond SWEEP_COLUMNS (None: the heatmap layout)
FILES = {
    "throughput_calibration.csv": "",
    "kv_cache_block_size.csv": "KV Cache Block_size",
    "kv_cache_dtype.csv": "KV Cache Dtype",
    "quant_a100_h100.csv": "kv_cache_dtype",
    "parallelism_tp_pp_ep.csv": "Parallelism Type",
    "trtllm_a100_llama3_8b_input_vs_output.csv": None,
}
_PARALLELISM = {  # label -> (tp, pp) as a function of the device count; None: expert parallel, dropped
    "tensor parallelism": lambda n: (n, 1), "tp": lambda n: (n, 1),
    "pipeline parallelism": lambda n: (1, n), "pp": lambda n: (1, n),
    "hybird tensor (2) and pipeline (2) parallelism": lambda n: (2, 2), "hybrid tp = 2 and pp = 2": lambda n: (2, 2),
    "ep": None, "hybrid tp = 2 and ep = 2": None,
}


def _gpu(name: str) -> str:
    if name in GPUS:
        return GPUS[name]
    words = [w for w in name.lower().split() if w not in ("nvidia", "amd", "intel", "habana", "gpu")]
    return "_".join(words)


def _dtype(name: str, where: str) -> str:
    key = str(name).strip().lower()
    if not key or key == "nan":
        raise ValueError(f"{where}: empty dtype")
    return DTYPES.get(key, key)


def _require(df: pd.DataFrame, columns, rel: str) -> None:
    missing = [c for c in columns if c not in df]
    if missing:
        raise ValueError(f"{rel}: missing columns {missing} (has {list(df.columns)})")


def _sweep(df: pd.DataFrame, rel: str, extra: str) -> pd.DataFrame:
    if extra == "kv_cache_dtype":  # quant_a100_h100.csv spells the last two columns in lower case
        df = df.rename(columns={"latency": "Latency", "throughput": "Throughput"})
    _require(df, SWEEP_COLUMNS + ((extra,) if extra else ()), rel)
    frameworks = df["Framework"].str.lower()
    unknown = sorted(set(frameworks) - set(FRAMEWORKS))
    if unknown:
        raise ValueError(f"{rel}: column Framework has unknown values {unknown}; known: {sorted(FRAMEWORKS)}")
    length = df["Input Output Length"].astype(float)
    n_dev = df["Num of Hardware"].astype(float)
    out = pd.DataFrame({
        "gpu": df["Hardware"].map(_gpu), "framework": frameworks.map(FRAMEWORKS), "model": df["Model"],
        "tp": n_dev, "pp": 1.0, "batch": df["Batch Size"].astype(float), "input_tokens": length,
        "output_tokens": length, "dtype": "fp16", "kv_dtype": "fp16", "latency_s": df["Latency"].astype(float),
        "throughput_tok_s": df["Throughput"].astype(float),
        "provenance": [f"{rel}:{i}" for i in range(len(df))],
    })
    if extra == "KV Cache Block_size":
        out["provenance"] += [f" (KV cache block size {b})" for b in df[extra]]
    elif extra in ("KV Cache Dtype", "kv_cache_dtype"):
        pattern = re.compile(r"^\s*Weight\s*=\s*([^,]+?)\s*,\s*KV Cache\s*=\s*(.+?)\s*$")
        parsed = [pattern.match(str(v)) for v in df[extra]]
        bad = [str(v) for v, p in zip(df[extra], parsed) if p is None]
        if bad:
            raise ValueError(f"{rel}: column {extra!r} values {bad[:3]} are not 'Weight = <w>, KV Cache = <c>'")
        out["dtype"] = [_dtype(p.group(1), rel) for p in parsed]
        out["kv_dtype"] = [_dtype(p.group(2), rel) for p in parsed]
    elif extra == "Parallelism Type":
        labels = df[extra].str.strip().str.lower()
        unknown = sorted(set(labels) - set(_PARALLELISM))
        if unknown:
            raise ValueError(f"{rel}: column {extra!r} has unknown labels {unknown}")
        keep = np.array([_PARALLELISM[lab] is not None for lab in labels])
        tp_pp = [_PARALLELISM[lab](int(n)) if _PARALLELISM[lab] else (np.nan, np.nan) for lab, n in zip(labels, n_dev)]
        out["tp"], out["pp"] = [t for t, _ in tp_pp], [p for _, p in tp_pp]
        out = out[keep]
    return out[out["framework"] != "llama.cpp"]


def _heatmap(df: pd.DataFrame, rel: str) -> pd.DataFrame:
    _require(df, HEATMAP_COLUMNS, rel)
    int8_kv = df["int8_kv_cache"].astype(str).str.lower() == "true"
    return pd.DataFrame({
        "gpu": GPUS["Nvidia A100 GPU"], "framework": "trtllm", "model": df["model_name"],
        "tp": df["tp_size"].astype(float), "pp": 1.0, "batch": df["batch_size"].astype(float),
        "input_tokens": df["max_input_length"].astype(float), "output_tokens": df["max_output_len"].astype(float),
        "dtype": [_dtype(p, rel) for p in df["precision"]], "kv_dtype": np.where(int8_kv, "int8", "fp16"),
        "latency_s": df["latency"].astype(float), "throughput_tok_s": df["throughput"].astype(float),
        "provenance": [f"{rel}:{i}" for i in range(len(df))],
    })


def load(root=None, files=("throughput_calibration.csv",)) -> pd.DataFrame:
    """End-to-end table of the named ``files`` (see the module docstring for the supported ones).

    ``provenance`` is ``<file>:<row>`` with the row counted over non-blank data lines from 0.
    Raises ``ValueError`` for an unsupported file name or a row whose throughput is not
    ``batch * (input + output) / latency`` (a sign the columns were misread).
    """
    root = Path(root) if root is not None else DEFAULT_ROOT
    if isinstance(files, str):
        files = (files,)
    frames = []
    for name in files:
        if name not in FILES:
            raise ValueError(f"unsupported LLM-Inference-Bench file {name!r}; supported: {', '.join(FILES)}")
        df = pd.read_csv(root / name, skip_blank_lines=True)
        extra = FILES[name]
        table = _heatmap(df, name) if extra is None else _sweep(df, name, extra)
        expected = table["batch"] * (table["input_tokens"] + table["output_tokens"]) / table["latency_s"]
        off = (expected / table["throughput_tok_s"] - 1).abs() > 1e-6
        if off.any():
            raise ValueError(f"{name}: throughput is not batch*(input+output)/latency in rows "
                             f"{table['provenance'][off].tolist()[:5]}")
        frames.append(table)
    if not frames:
        return schema.empty(schema.E2E_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    out["source"] = "llm-inference-bench"
    return schema.end_to_end(out)
