"""End-to-end latency of an offline batch (LLM-Inference-Bench rows) predicted by jaxmodel.

A row of the end-to-end table (:func:`calibration.loaders.inference_bench.load`) is one offline
batch: ``batch`` prompts of ``input_tokens`` tokens submitted at once, each generating exactly
``output_tokens`` tokens (``ignore_eos``); ``latency_s`` is the wall time of the whole batch.
The prediction replays what the serving stack's scheduler runs:

1. **Prefill steps.** The scheduler admits whole prompts into a forward pass until the next one
   would exceed its token budget ``max_batched_tokens``; with equal prompts every step holds
   ``n = clip(floor(budget / input_tokens), 1, batch)`` prompts, so the batch takes
   ``ceil(batch / n)`` steps, the last holding the remainder. Budgets
   (:func:`prefill_token_budget`):

   * vLLM 0.5/0.6 without chunked prefill (the default then, and LLM-Inference-Bench's setting):
     ``max_num_batched_tokens = max(max_model_len, 2048)`` (``SchedulerConfig.__init__`` in
     vllm/config.py of those releases), with ``max_model_len`` derived from the model's
     ``max_position_embeddings`` since the benchmark scripts leave ``--max-model-len`` unset.
     The V0 scheduler runs waiting prefills before any decode, so all prefill steps come first.
   * TensorRT-LLM: the engine's ``max_num_tokens``, 8192 (``BuildConfig`` default; the
     benchmark's ``trtllm-build`` calls do not set it). An assumption: in roofline terms the
     budget changes only how often the weights are re-read during prefill.

2. **Decode steps.** The first output token comes out of the prefill; then all ``batch``
   sequences decode together for ``output_tokens - 1`` steps, step ``i`` (1-based) holding
   ``input_tokens + i - 1`` cached tokens per sequence. The steps are summed exactly: the step
   time is evaluated at every context (a vmapped vector of contexts, masked past the row's
   length), not at the mean context.

Memory: the row fits when weights + the KV cache of ``batch`` sequences at ``input_tokens +
output_tokens`` tokens + the largest prefill step's activations stay within
``memory_utilization`` (0.9, vLLM's ``gpu_memory_utilization`` default) of device memory.
Rows that do not fit are not what the model describes (vLLM preempts and recomputes,
TensorRT-LLM's no-eviction scheduler queues requests); :func:`predict_table` reports them
separately and adds a ``waves_s`` estimate: the batch run as consecutive full waves of the
largest batch that fits (an optimistic bound: vLLM's recompute preemption does more work).

Everything in :func:`batch_latency_parts` is a pure JAX function of one row, vmapped over rows
of one model family by :func:`predict_table` (one compilation per GPU and architecture
structure).
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import jaxmodel as jm
from calibration import fit
from jaxmodel import inference, memory
from jaxmodel.architectures import Architecture
from jaxmodel.hf_config import architecture_spec_from_hf
from jaxmodel.predict import check_parallelism
from jaxmodel.workload import ACTIVATION_DTYPES, DTYPE_BYTES

#: LLM-Inference-Bench GPU name -> jaxmodel hardware preset. The A100 rows come from ALCF
#: Polaris, whose A100s are the SXM4 40 GB part (see the data set's README).
HARDWARE = {"a100_sxm": "a100-sxm-40gb", "h100_sxm": "h100-sxm"}

FRAMEWORKS = ("vllm", "trtllm")

#: vLLM (0.5/0.6, chunked prefill off): max_num_batched_tokens = max(max_model_len, 2048).
VLLM_MIN_BATCHED_TOKENS = 2048.0
#: TensorRT-LLM BuildConfig.max_num_tokens default (not set by the benchmark's build commands).
TRTLLM_MAX_NUM_TOKENS = 8192.0


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """How to build one Hugging Face model: exactly one of ``preset`` (a jaxmodel preset),
    ``hf_config`` (published config.json values, parsed by :mod:`jaxmodel.hf_config`) and
    ``spec`` (:class:`~jaxmodel.Architecture` arguments, for families the importer lacks).
    ``max_position_embeddings`` is what vLLM derives ``max_model_len`` from."""

    max_position_embeddings: int
    source: str
    preset: str | None = None
    hf_config: dict | None = None
    spec: dict | None = None

    def architecture(self) -> Architecture:
        if self.preset is not None:
            return jm.load_model(self.preset)
        if self.hf_config is not None:
            return Architecture(**architecture_spec_from_hf(self.hf_config, self.source))
        return Architecture(**self.spec)


def _hf(url: str) -> str:
    return f"https://huggingface.co/{url}/blob/main/config.json"


MODELS: dict[str, ModelEntry] = {
    "meta-llama/Llama-2-7b-hf": ModelEntry(4096, _hf("meta-llama/Llama-2-7b-hf"), preset="llama-2-7b"),
    "meta-llama/Meta-Llama-3-8B": ModelEntry(8192, _hf("meta-llama/Meta-Llama-3-8B"), preset="llama-3-8b"),
    "meta-llama/Llama-2-70b-hf": ModelEntry(4096, _hf("meta-llama/Llama-2-70b-hf"), preset="llama-2-70b"),
    "meta-llama/Meta-Llama-3-70B": ModelEntry(8192, _hf("meta-llama/Meta-Llama-3-70B"), preset="llama-3-70b"),
    "mistralai/Mixtral-8x7B-v0.1": ModelEntry(32768, _hf("mistralai/Mixtral-8x7B-v0.1"), preset="mixtral-8x7b"),
    "Qwen/Qwen2-72B": ModelEntry(131072, _hf("Qwen/Qwen2-72B"), preset="qwen2-72b"),
    "mistralai/Mistral-7B-v0.1": ModelEntry(32768, _hf("mistralai/Mistral-7B-v0.1"), hf_config=dict(
        model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, sliding_window=4096,
        tie_word_embeddings=False)),
    "Qwen/Qwen2-7B": ModelEntry(131072, _hf("Qwen/Qwen2-7B"), hf_config=dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, use_sliding_window=False,
        tie_word_embeddings=False)),
    "Qwen/Qwen1.5-7B": ModelEntry(32768, _hf("Qwen/Qwen1.5-7B"), hf_config=dict(
        model_type="qwen2", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=151936, use_sliding_window=False,
        tie_word_embeddings=False)),
    "huggyllama/llama-7b": ModelEntry(2048, _hf("huggyllama/llama-7b"), hf_config=dict(
        model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, vocab_size=32000, tie_word_embeddings=False)),
    "BAAI/Aquila-7B": ModelEntry(2048, _hf("BAAI/Aquila-7B"), hf_config=dict(
        model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, vocab_size=100008, tie_word_embeddings=False)),
    # No max_position_embeddings in BLOOM's config (ALiBi): vLLM falls back to 2048.
    "bigscience/bloom-7b1": ModelEntry(2048, _hf("bigscience/bloom-7b1"), hf_config=dict(
        model_type="bloom", hidden_size=4096, n_layer=30, n_head=32, vocab_size=250880)),
    # GPT-J: parallel attention and MLP behind one LayerNorm; rotary on 64 of 256 head dims;
    # biases on the MLP (and LM head) but not on q/k/v/out, counted as linear_bias = 1.
    "EleutherAI/gpt-j-6b": ModelEntry(2048, _hf("EleutherAI/gpt-j-6b"), spec=dict(
        d_model=4096, n_layers=28, n_heads=16, n_kv_heads=16, head_dim=256, d_ff=16384, vocab_size=50400,
        ffn="plain", activation="gelu_tanh", norm="layernorm", norms_per_layer=1, rotary_fraction=0.25,
        linear_bias=1)),
    # OPT: learned positions (2048 + OPT's offset of 2 rows), ReLU MLP, biases, tied head.
    "facebook/opt-6.7b": ModelEntry(2048, _hf("facebook/opt-6.7b"), spec=dict(
        d_model=4096, n_layers=32, n_heads=32, head_dim=128, d_ff=16384, vocab_size=50272, ffn="plain",
        activation="relu", norm="layernorm", tied_embeddings=1, qkv_bias=1, linear_bias=1, rotary_fraction=0.0,
        n_learned_positions=2050)),
}

#: Models present in the data that jaxmodel cannot describe, with the reason.
UNSUPPORTED_MODELS = {
    "Deci/DeciLM-7B": "variable GQA: num_key_value_heads_per_layer differs by layer (4/2/1 KV heads), which one "
                      "Architecture.n_kv_heads cannot express",
}


def architecture(model: str) -> Architecture:
    """The :class:`~jaxmodel.Architecture` of a Hugging Face model id in :data:`MODELS`."""
    if model not in MODELS:
        why = UNSUPPORTED_MODELS.get(model, "not in calibration.end_to_end.MODELS")
        raise ValueError(f"model {model!r}: {why}")
    return MODELS[model].architecture()


def prefill_token_budget(framework: str, model: str) -> float:
    """Prompt tokens the scheduler admits into one prefill step (see the module docstring)."""
    if framework == "vllm":
        if model not in MODELS:
            raise ValueError(f"model {model!r} is not in calibration.end_to_end.MODELS")
        return max(float(MODELS[model].max_position_embeddings), VLLM_MIN_BATCHED_TOKENS)
    if framework == "trtllm":
        return TRTLLM_MAX_NUM_TOKENS
    raise ValueError(f"framework must be one of {FRAMEWORKS} (got {framework!r})")


# ---- one row ---------------------------------------------------------------------------------
def prefill_schedule(batch, input_tokens, budget):
    """``(per_step, steps, last)``: prompts per full prefill step, number of steps, prompts in the
    last one. Works on numbers or arrays (NumPy or JAX)."""
    xp = jnp if any(isinstance(x, jax.Array) for x in (batch, input_tokens, budget)) else np
    per_step = xp.clip(xp.floor(budget / input_tokens), 1.0, batch)
    steps = xp.ceil(batch / per_step)
    return per_step, steps, batch - (steps - 1.0) * per_step


def decode_step_s(arch, wl, system, eff, past, sharpness=None, fidelity="roofline"):
    """One decode step of all ``wl.batch`` sequences, each holding ``past`` cached tokens
    (:func:`jaxmodel.inference.decode` at a given context instead of the mean one)."""
    return inference.decode(arch, wl, system, eff, sharpness, fidelity, context=past)[0]


def _workload(row, dtype, kv_dtype) -> jm.Workload:
    return jm.Workload(batch=row["batch"], input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
                       tp=row["tp"], pp=row.get("pp", 1.0), dtype=dtype, kv_dtype=kv_dtype)


def batch_latency_parts(arch, row, system, efficiency, fidelity="roofline", *, decode_steps: int | None = None,
                        dtype: str = "fp16", kv_dtype: str | None = None, sharpness=None) -> dict:
    """Prediction of one offline batch, in parts (seconds unless named otherwise).

    ``row`` maps ``batch``, ``input_tokens``, ``output_tokens``, ``tp`` (and optionally ``pp``,
    default 1, and ``max_batched_tokens``, the prefill token budget, default unlimited) to
    numbers or traced scalars. ``decode_steps`` (static) is the length of the context vector
    the decode steps are evaluated over; it must be >= ``output_tokens - 1`` (default: exactly
    that, which needs a concrete ``output_tokens``).

    Keys: ``latency_s`` (= ``prefill_s + decode_s``), ``prefill_s``, ``prefill_steps``,
    ``prompts_per_step``, ``decode_s`` (exact sum over steps), ``decode_mean_context_s``
    (``output_tokens - 1`` times the step at the mean context, for comparison), ``fits``,
    ``memory_bytes``, ``usable_memory_bytes`` and ``max_concurrent`` (sequences whose KV cache
    fits beside the weights and prefill activations).
    """
    out_tokens = row["output_tokens"]
    if decode_steps is None:
        decode_steps = int(round(float(out_tokens))) - 1
    elif not isinstance(out_tokens, jax.core.Tracer) and float(np.max(out_tokens)) - 1.0 > decode_steps:
        raise ValueError(f"batch_latency_parts: decode_steps = {decode_steps} must be >= output_tokens - 1 = "
                         f"{float(np.max(out_tokens)) - 1.0:g}")
    decode_steps = max(int(decode_steps), 1)  # a masked dummy step keeps the vmap non-empty
    wl = _workload(row, dtype, kv_dtype)
    budget = row.get("max_batched_tokens", math.inf)
    per_step, steps, last = prefill_schedule(wl.batch, wl.input_tokens, jnp.asarray(budget, wl.batch.dtype))
    full_s, full = inference.prefill(arch, wl.replace(batch=per_step), system, efficiency, sharpness, fidelity)
    last_s, _ = inference.prefill(arch, wl.replace(batch=last), system, efficiency, sharpness, fidelity)
    prefill_s = (steps - 1.0) * full_s + last_s

    index = jnp.arange(decode_steps, dtype=wl.batch.dtype)
    times = jax.vmap(lambda past: decode_step_s(arch, wl, system, efficiency, past, sharpness, fidelity))(
        wl.input_tokens + index)
    n_steps = wl.output_tokens - 1.0
    decode_s = jnp.sum(jnp.where(index < n_steps, times, 0.0))
    mean_past = wl.input_tokens + (wl.output_tokens - 2.0) / 2.0
    decode_mean_s = n_steps * decode_step_s(arch, wl, system, efficiency, mean_past, sharpness, fidelity)

    step_wl = wl.replace(batch=per_step)
    weights = memory.weight_bytes_per_device(arch, wl)
    kv = memory.kv_cache_bytes_per_device(arch, wl, wl.batch, wl.input_tokens + wl.output_tokens)
    acts = memory.activation_bytes(full.table, arch, step_wl, per_step / inference.micro_batches(step_wl)
                                   * wl.input_tokens)
    usable = system.chip.mem_capacity_bytes * wl.memory_utilization
    total = weights + kv + acts
    return {
        "latency_s": prefill_s + decode_s,
        "prefill_s": prefill_s,
        "prefill_steps": steps,
        "prompts_per_step": per_step,
        "decode_s": decode_s,
        "decode_mean_context_s": decode_mean_s,
        "fits": total <= usable,
        "memory_bytes": total,
        "usable_memory_bytes": usable,
        "max_concurrent": jnp.maximum(jnp.floor((usable - weights - acts) / (kv / wl.batch)), 0.0),
    }


def batch_latency_s(arch, row, system, efficiency, fidelity="roofline", **kwargs):
    """Seconds to run one offline batch: its prefill steps plus every decode step (see
    :func:`batch_latency_parts` for ``row`` and the keyword arguments)."""
    return batch_latency_parts(arch, row, system, efficiency, fidelity, **kwargs)["latency_s"]


# ---- a whole table ---------------------------------------------------------------------------
_ROW_KEYS = ("batch", "input_tokens", "output_tokens", "tp", "pp", "max_batched_tokens")


def _rows_parts(archs, rows, system, efficiency, fidelity, decode_steps, dtype, kv_dtype):
    def one(arch, row):
        return batch_latency_parts(arch, row, system, efficiency, fidelity, decode_steps=decode_steps,
                                   dtype=dtype, kv_dtype=kv_dtype)

    return jax.vmap(one)(archs, rows)


_rows_parts_jit = eqx.filter_jit(_rows_parts)


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _evaluate(archs: list, rows: dict, system, efficiency, fidelity, decode_steps, dtype, kv_dtype,
              chunk: int) -> dict:
    """Parts of every row (``archs`` share one tree structure), in padded chunks of ``chunk``."""
    n = len(archs)
    out: dict[str, list] = {}
    for start in range(0, n, chunk):
        # Pad the last chunk by repeating its final row so every call has the compiled shape.
        idx = np.minimum(np.arange(start, start + chunk), n - 1)
        piece_arch = _stack([archs[i] for i in idx])
        piece_rows = {k: jnp.asarray(v[idx]) for k, v in rows.items()}
        parts = jax.device_get(_rows_parts_jit(piece_arch, piece_rows, system, efficiency, fidelity, decode_steps,
                                               dtype, kv_dtype))
        for key, value in parts.items():
            out.setdefault(key, []).append(np.asarray(value)[: min(chunk, n - start)])
    return {k: np.concatenate(v) for k, v in out.items()}


def _status(row) -> str:
    """Why a row cannot be predicted ("" when it can)."""
    if row["framework"] not in FRAMEWORKS:
        return f"framework {row['framework']!r} not modelled"
    if row["model"] not in MODELS:
        return f"model {row['model']}: " + UNSUPPORTED_MODELS.get(row["model"], "no architecture mapping")
    if row["gpu"] not in HARDWARE:
        return f"gpu {row['gpu']!r} has no hardware preset"
    if row["dtype"] not in ACTIVATION_DTYPES or row["kv_dtype"] not in DTYPE_BYTES:
        return f"dtype {row['dtype']!r} / KV cache {row['kv_dtype']!r} not modelled"
    return ""


def predict_table(table: pd.DataFrame, efficiency, *, hardware: dict | None = None, fidelity: str = "roofline",
                  chunk: int = 16, waves: bool = True, decode_steps: int | None = None) -> pd.DataFrame:
    """Predict every row of an end-to-end table; returns a frame on ``table``'s index.

    ``efficiency``: an :class:`~jaxmodel.Efficiency`, or ``{gpu: Efficiency}``. ``hardware``:
    ``{gpu: preset}`` (default :data:`HARDWARE`). Columns: ``status`` ("" when predicted, else
    the reason the row is skipped), ``max_batched_tokens``, ``predicted_s`` (the batch's latency)
    and the other keys of :func:`batch_latency_parts` (NaN for skipped rows), plus ``waves_s``
    for rows that do not fit (``waves``: see the module docstring). Rows are evaluated in
    chunks of ``chunk`` over a context vector of ``decode_steps`` (default: the table's largest
    ``output_tokens - 1``); calls with equal shapes reuse one compilation.
    """
    hardware = {**HARDWARE, **(hardware or {})}
    status = table.apply(_status, axis=1) if len(table) else pd.Series(dtype=str)
    keys = ("predicted_s", "prefill_s", "prefill_steps", "prompts_per_step", "decode_s", "decode_mean_context_s",
            "fits", "memory_bytes", "usable_memory_bytes", "max_concurrent")
    result = pd.DataFrame({"status": status}, index=table.index)
    for key in keys:
        result[key] = np.nan
    result["max_batched_tokens"] = np.nan
    result["waves_s"] = np.nan
    ok = table[status == ""]
    if ok.empty:
        return result
    budgets = np.array([prefill_token_budget(f, m) for f, m in zip(ok["framework"], ok["model"])])
    result.loc[ok.index, "max_batched_tokens"] = budgets
    archs = {m: architecture(m) for m in ok["model"].unique()}
    for model in archs:  # fail loudly on an impossible layout rather than predict garbage
        for tp in ok.loc[ok["model"] == model, "tp"].unique():
            try:
                check_parallelism(archs[model], jm.Workload(tp=tp))
            except ValueError as exc:
                bad = ok.index[(ok["model"] == model) & (ok["tp"] == tp)]
                result.loc[bad, "status"] = f"invalid parallelism: {exc}"
    ok = table.loc[result.index[result["status"] == ""]]
    budgets = result.loc[ok.index, "max_batched_tokens"].to_numpy(float)
    longest = int(ok["output_tokens"].max()) - 1
    if decode_steps is None:
        decode_steps = longest
    elif decode_steps < longest:
        raise ValueError(f"predict_table: decode_steps = {decode_steps} must be >= the longest row's "
                         f"output_tokens - 1 = {longest}")
    systems = {gpu: jm.load_hardware(hardware[gpu]) for gpu in ok["gpu"].unique()}
    structure = {m: str(jax.tree_util.tree_structure(a)) for m, a in archs.items()}
    groups = ok.assign(_structure=ok["model"].map(structure), _budget=budgets)
    for (gpu, _, dtype, kv_dtype), g in groups.groupby(["gpu", "_structure", "dtype", "kv_dtype"], sort=False):
        eff = efficiency[gpu] if isinstance(efficiency, dict) else efficiency
        rows = {k: g[k].to_numpy(float) for k in _ROW_KEYS[:-1]}
        rows["max_batched_tokens"] = g["_budget"].to_numpy(float)
        parts = _evaluate([archs[m] for m in g["model"]], rows, systems[gpu], eff, fidelity, decode_steps, dtype,
                          kv_dtype, chunk)
        parts["predicted_s"] = parts.pop("latency_s")
        for key in keys:
            result.loc[g.index, key] = np.asarray(parts[key], dtype=float)
        if not waves:
            continue
        # Rows that do not fit: the batch run as consecutive waves of the largest batch that does.
        over = (~parts["fits"].astype(bool)) & (parts["max_concurrent"] >= 1)
        if over.any():
            sub = {k: v[over] for k, v in rows.items()}
            wave = np.minimum(parts["max_concurrent"][over], sub["batch"])
            full_waves = np.floor(sub["batch"] / wave)
            rest = sub["batch"] - full_waves * wave
            sub_archs = [archs[m] for m in g["model"].to_numpy()[over]]
            t_wave = _evaluate(sub_archs, {**sub, "batch": wave}, systems[gpu], eff, fidelity, decode_steps, dtype,
                               kv_dtype, chunk)["latency_s"]
            t_rest = _evaluate(sub_archs, {**sub, "batch": np.maximum(rest, 1.0)}, systems[gpu], eff, fidelity,
                               decode_steps, dtype, kv_dtype, chunk)["latency_s"]
            result.loc[g.index[over], "waves_s"] = full_waves * t_wave + np.where(rest > 0, t_rest, 0.0)
    result["fits"] = pd.array([None if np.isnan(v) else bool(v) for v in result["fits"]], dtype="boolean")
    return result


# ---- host overhead ------------------------------------------------------------------------------
#: starting point of :func:`fit_host_overhead` (seconds)
HOST_START = {"step_overhead_s": 1e-3, "sequence_overhead_s": 3e-5}


def host_counts(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, sequence_steps)`` of each offline batch: forward steps (the prefill steps and
    ``output_tokens - 1`` decode steps) and the sequences summed over them (each prompt once in
    prefill, then ``batch`` per decode step: ``batch * output_tokens``). ``rows`` needs the
    table's ``batch`` and ``output_tokens`` and the predicted ``prefill_steps``."""
    steps = (rows["prefill_steps"] + rows["output_tokens"] - 1.0).to_numpy(float)
    return steps, (rows["batch"] * rows["output_tokens"]).to_numpy(float)


def fit_host_overhead(rows: pd.DataFrame, predicted_s, start: dict | None = None) -> fit.FitResult:
    """Fit :attr:`jaxmodel.Efficiency.step_overhead_s` and ``sequence_overhead_s`` to measured
    batches whose GPU time ``predicted_s`` was computed without host overhead.

    Host time adds to every step, so the batch latency is exactly ``predicted_s + steps *
    step_overhead_s + sequence_steps * sequence_overhead_s`` (:func:`host_counts`); the two
    seconds are fitted on log-latency like every other calibration, with error bars."""
    steps, sequence_steps = host_counts(rows)
    data = {"base": np.asarray(predicted_s, float), "steps": steps, "sequence_steps": sequence_steps}
    return fit.least_squares(
        lambda p, r: r["base"] + r["steps"] * p["step_overhead_s"] + r["sequence_steps"] * p["sequence_overhead_s"],
        start or HOST_START, data, rows["latency_s"].to_numpy(float))


def with_host_overhead(efficiency: jm.Efficiency, params: dict) -> jm.Efficiency:
    """``efficiency`` with the fitted host overheads of :func:`fit_host_overhead`."""
    return eqx.tree_at(lambda e: (e.step_overhead_s, e.sequence_overhead_s), efficiency,
                       (jnp.asarray(params["step_overhead_s"], efficiency.step_overhead_s.dtype),
                        jnp.asarray(params["sequence_overhead_s"], efficiency.sequence_overhead_s.dtype)))
