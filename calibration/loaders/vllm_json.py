"""vLLM benchmark JSON outputs -> end-to-end table (one row per file).

Two layouts are recognised by their keys. Field names follow vLLM's ``benchmarks/benchmark_latency.py``
and ``benchmarks/benchmark_serving.py`` of the v0.5-v0.6 releases, whose keys the later ``vllm bench
latency`` / ``vllm bench serve`` results keep (newer versions add keys such as ``failed``, ``mean_e2el_ms``):

* ``benchmark_latency.py --output-json`` (``vllm bench latency``): ``avg_latency`` (s, one batch of
  ``--batch-size`` prompts of ``--input-len`` tokens generating ``--output-len`` tokens each, averaged
  over ``--num-iters``), ``latencies`` (s), ``percentiles`` (``{"10": s, ...}``). Gives ``latency_s`` =
  ``avg_latency``; TTFT, TPOT and throughput are not measured (NaN). The JSON holds neither the
  model nor the shape, so ``batch``, ``input_tokens`` and ``output_tokens`` must be passed.
* ``benchmark_serving.py --save-result`` (``vllm bench serve``): ``duration`` (s), ``completed``,
  ``total_input_tokens``, ``total_output_tokens``, ``total_token_throughput`` (tok/s),
  ``mean_ttft_ms``, ``mean_tpot_ms`` (ms), ``model_id``. Gives ``latency_s`` = ``duration`` (wall
  time for all requests; the batch latency when every prompt is sent at once, ``--request-rate
  inf``), ``ttft_s`` / ``tpot_s`` = mean TTFT / TPOT in s, ``throughput_tok_s`` = input + output
  tokens per second; ``batch`` defaults to ``completed`` and the token counts to the per-request
  means (``total_*_tokens / completed``).

Neither JSON records the GPU or the parallelism, so ``gpu`` and ``tp`` are always arguments.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from calibration import schema

SERVING_KEYS = ("duration", "completed", "total_input_tokens", "total_output_tokens", "mean_ttft_ms", "mean_tpot_ms")


def _number(data: dict, key: str, path: Path) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{path}: field {key!r} must be a finite number, got {value!r}")
    return float(value)


def _kind(data: dict, path: Path) -> str:
    if "avg_latency" in data:
        return "latency"
    if "mean_ttft_ms" in data or "total_token_throughput" in data:
        missing = [k for k in SERVING_KEYS if k not in data]
        if missing:
            raise ValueError(f"{path}: benchmark_serving result lacks fields {missing}")
        return "serving"
    raise ValueError(f"{path}: neither a benchmark_latency JSON (needs 'avg_latency') nor a benchmark_serving "
                     f"result (needs {list(SERVING_KEYS)})")


def load(path, *, gpu, model=None, tp, batch=None, input_tokens=None, output_tokens=None, framework_version="",
         dtype="", kv_dtype="", pp=1) -> pd.DataFrame:
    """End-to-end table with one row for the vLLM benchmark JSON at ``path``.

    Arguments fill what the JSON lacks and override what it has; ``model`` defaults to the serving
    result's ``model_id``. Raises ``ValueError`` naming the file and field when a required value is
    missing from both.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    kind = _kind(data, path)
    row = {"ttft_s": math.nan, "tpot_s": math.nan, "throughput_tok_s": math.nan}
    if kind == "latency":
        missing = [name for name, v in (("batch", batch), ("input_tokens", input_tokens),
                                        ("output_tokens", output_tokens), ("model", model)) if v is None]
        if missing:
            raise ValueError(f"{path}: benchmark_latency JSON does not record {missing}; pass them as arguments")
        row["latency_s"] = _number(data, "avg_latency", path)
    else:
        completed = _number(data, "completed", path)
        if completed <= 0:
            raise ValueError(f"{path}: field 'completed' is {completed:g}; no request finished")
        batch = completed if batch is None else batch
        if input_tokens is None:
            input_tokens = _number(data, "total_input_tokens", path) / completed
        if output_tokens is None:
            output_tokens = _number(data, "total_output_tokens", path) / completed
        model = data.get("model_id") if model is None else model
        if not model:
            raise ValueError(f"{path}: no 'model_id' field; pass model")
        duration = _number(data, "duration", path)
        row.update(latency_s=duration, ttft_s=_number(data, "mean_ttft_ms", path) * 1e-3,
                   tpot_s=_number(data, "mean_tpot_ms", path) * 1e-3)
        if "total_token_throughput" in data:
            row["throughput_tok_s"] = _number(data, "total_token_throughput", path)
        else:
            total = _number(data, "total_input_tokens", path) + _number(data, "total_output_tokens", path)
            row["throughput_tok_s"] = total / duration
    row.update(source="vllm_benchmark", gpu=gpu, framework="vllm", framework_version=framework_version, model=model,
               tp=tp, pp=pp, batch=batch, input_tokens=input_tokens, output_tokens=output_tokens, dtype=dtype,
               kv_dtype=kv_dtype, provenance=f"{path.name}:benchmark_{kind}")
    return schema.end_to_end(pd.DataFrame([row]))
