"""Score jaxmodel's end-to-end predictions on measured LLM-Inference-Bench rows, beside GenZ.

Data: LLM-Inference-Bench (Argonne; ``../shared/data/llm-inference-bench``, BSD-3), offline
batched generation with vLLM (~0.5/0.6) and TensorRT-LLM (0.11) on A100 (ALCF Polaris, SXM4
40 GB) and H100 (SXM5 80 GB), TP 1/2/4, fp16: ``batch`` prompts of L tokens each generate
exactly L tokens (``ignore_eos``); the measured latency is the wall time of the whole batch
(A100 vLLM: one timed ``LLM.generate`` after 3 warm-ups; H100 vLLM: vLLM's
benchmark_latency.py; TensorRT-LLM: examples/run.py --run_profiling). Loaded by
:func:`calibration.loaders.inference_bench.load`; DeepSpeed-MII rows are not scored, and
DeciLM-7B (a different KV-head count per layer) cannot be described.

Model: :func:`calibration.end_to_end.batch_latency_parts` -- the scheduler's prefill steps
(vLLM: ``max(max_model_len, 2048)`` prompt tokens per step; TensorRT-LLM: 8192) followed by
every decode step summed exactly over the growing context, on the hardware presets
``a100-sxm-40gb`` and ``h100-sxm``, with each efficiency set named by ``--calibration``
(``ideal`` = datasheet roofline; a set per GPU as ``a100_sxm=a100-vllm,h100_sxm=h100-vllm``).
Nothing is fitted to these rows, so every figure is out of sample, except the lines marked
in-sample, which fit one efficiency per GPU and framework as the GenZ paper does, and the host
overhead lines: the framework's host time per step and per sequence, which kernel measurements
cannot see, fitted on half the models and scored on the other half.

GenZ 0.0.16 (``genz_llm``) gets the same model dimensions, the same datasheet numbers
(:func:`genz_comparison.genz_system`), efficiency 1, and the same workload: the same prefill
steps, then ``output_tokens - 1`` decode steps at the mean context. The mean-context shortcut
is exact for a step time linear in the context; the script prints how far it is from
jaxmodel's exact sum. GenZ runs in 2 processes, about 0.25 s per configuration.

Rows whose weights + KV cache + activations exceed 90% of device memory (jaxmodel's check)
are reported separately: the measured run then queues or recomputes requests.

    python benchmarks/calibrate_end_to_end.py [--calibration ideal] [--calibration NAME ...] [--no-genz]

Runtime: about 3 minutes on 2 cores with GenZ (30 s without; about 10 s more per extra set).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import jaxmodel as jm
from calibration import end_to_end as e2e
from calibration import metrics
from calibration.loaders import inference_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genz_comparison  # noqa: E402 - sibling script: GenZ driven with jaxmodel's hardware numbers

WIDTH = 44
GENZ_LABEL = "GenZ 0.0.16 (eff 1)"


# ---- calibrations ------------------------------------------------------------------------------
def efficiency_of(spec: str):
    """``NAME`` (one set for every GPU) or ``gpu=NAME,gpu=NAME`` (a set per GPU)."""
    if "=" not in spec:
        return jm.load_calibration(spec)
    out = {}
    for part in spec.split(","):
        gpu, _, name = part.partition("=")
        if gpu.strip() not in e2e.HARDWARE:
            raise ValueError(f"--calibration {spec!r}: unknown gpu {gpu!r}; known: {', '.join(e2e.HARDWARE)}")
        out[gpu.strip()] = jm.load_calibration(name.strip())
    missing = set(e2e.HARDWARE) - set(out)
    if missing:
        raise ValueError(f"--calibration {spec!r}: no set for {', '.join(sorted(missing))}")
    return out


# ---- GenZ ---------------------------------------------------------------------------------------
def genz_model(model: str) -> dict:
    """GenZ ``ModelConfig`` arguments with the same dimensions as jaxmodel's architecture."""
    a = e2e.architecture(model)
    value = {k: round(float(getattr(a, k))) for k in ("d_model", "n_layers", "n_heads", "n_kv_heads",
                                                            "head_dim", "d_ff", "vocab_size", "sliding_window")}
    config = dict(model=f"e2e/{model}", hidden_size=value["d_model"], num_decoder_layers=value["n_layers"],
                  num_attention_heads=value["n_heads"], num_key_value_heads=value["n_kv_heads"],
                  head_dim=value["head_dim"], intermediate_size=value["d_ff"], vocab_size=value["vocab_size"],
                  num_ffi=2 if a.ffn == "gated" else 1, hidden_act=a.activation,
                  sliding_window=value["sliding_window"] or None,
                  max_model_len=e2e.MODELS[model].max_position_embeddings)
    if a.moe:
        config.update(num_experts=round(float(a.n_experts)), expert_top_k=round(float(a.top_k)),
                      moe_intermediate_size=round(float(a.moe_d_ff)))
    return config


def genz_worker_init() -> None:
    """Silence GenZ and skip its per-operator runtime breakdown: prefill_moddeling and
    decode_moddeling build it (a row-by-row pandas loop, ~3/4 of their time) only for the
    ``Runtime_breakdown`` field of their result; ``Latency`` does not depend on it (checked:
    identical latencies with and without it)."""
    warnings.simplefilter("ignore")
    from GenZ.LLM_inference import llm_decode, llm_prefill

    llm_prefill.get_runtime_breakdown = llm_decode.get_runtime_breakdown = lambda df: None


def genz_job(job: tuple):
    """GenZ's latency of one configuration (seconds), or None when GenZ finds it does not fit."""
    model_kwargs, hardware, tp, batch, isl, osl, budget = job
    from GenZ.Models.default_models import ModelConfig

    config = ModelConfig(**model_kwargs)
    per_step, steps, last = e2e.prefill_schedule(float(batch), float(isl), float(budget))
    try:
        full = genz_comparison.genz_prefill_s(config, hardware, tp, int(per_step), isl)
        rest = full if last == per_step else genz_comparison.genz_prefill_s(config, hardware, tp, int(last), isl)
        # Decode step i attends input + i keys (i = 1 .. osl - 1); GenZ's step attends input +
        # cached_output_tokens keys, so osl // 2 is the mean step.
        step = genz_comparison.genz_decode_step_s(config, hardware, tp, batch, isl, osl // 2)
    except ValueError:
        return None
    return float((steps - 1.0) * full + rest + (osl - 1.0) * step)


def genz_predictions(table: pd.DataFrame, budgets: pd.Series, hardware: dict, workers: int,
                     cache_path: str | None) -> pd.Series:
    keys = {}
    table = table[table["pp"] == 1.0]  # GenZ is driven without pipeline parallelism here
    for i, r in table.iterrows():
        keys[i] = (r["model"], hardware[r["gpu"]], int(r["tp"]), int(r["batch"]), int(r["input_tokens"]),
                   int(r["output_tokens"]), float(budgets[i]))
    cache = {}
    if cache_path and os.path.exists(cache_path):
        with open(cache_path) as f:
            cache = {tuple(json.loads(k)): v for k, v in json.load(f).items()}
    todo = sorted(set(keys.values()) - set(cache))
    jobs = [(genz_model(k[0]), *k[1:]) for k in todo]
    if jobs:
        # "spawn": forking a process that has started JAX's threads can deadlock.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                    initializer=genz_worker_init) as pool:
            for key, value in zip(todo, pool.map(genz_job, jobs, chunksize=4)):
                cache[key] = value
    if cache_path:
        with open(cache_path, "w") as f:
            json.dump({json.dumps(list(k)): v for k, v in cache.items()}, f)
    return pd.Series({i: (np.nan if cache[k] is None else cache[k]) for i, k in keys.items()}, index=budgets.index,
                     dtype=float)


# ---- host overhead ------------------------------------------------------------------------------
def host_overhead_cross_validation(g: pd.DataFrame, col: str) -> tuple[pd.Series, list[dict]]:
    """Predictions plus host overhead (:func:`calibration.end_to_end.fit_host_overhead`: seconds
    per forward step and per sequence in a step) fitted on the other fold's models."""
    models = sorted(g["model"].unique())
    folds = [set(models[0::2]), set(models[1::2])]
    scored = pd.Series(np.nan, index=g.index)
    fitted = []
    for test_models in folds:
        test = g["model"].isin(test_models).to_numpy()
        train = ~test & np.isfinite(g[col].to_numpy(float))
        if not test.any() or not train.any():
            continue
        params = e2e.fit_host_overhead(g[train], g.loc[train, col]).params
        fitted.append(params)
        steps, sequence_steps = e2e.host_counts(g[test])
        scored[test] = (g.loc[test, col].to_numpy(float) + steps * params["step_overhead_s"]
                        + sequence_steps * params["sequence_overhead_s"])
    return scored, fitted


# ---- report -------------------------------------------------------------------------------------
def line(label: str, predicted, measured) -> str:
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    keep = np.isfinite(predicted)
    if not keep.any():
        return f"{label:<{WIDTH}}{0:>7}        --"
    e = metrics.errors(predicted[keep], measured[keep])
    bias = np.median(predicted[keep] / measured[keep])
    return f"{metrics.format_row(label, e, WIDTH)}{bias:>10.2f}"


def header() -> str:
    return f"{metrics.header(WIDTH)}   median pred/meas"


def block(title: str, frame: pd.DataFrame, columns: dict) -> list[str]:
    out = [title]
    for label, col in columns.items():
        out.append(line(f"  {label}", frame[col], frame["latency_s"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", action="append",
                        help="efficiency set (repeatable): a name from `jaxmodel list`, a set JSON, or "
                             "gpu=NAME,gpu=NAME for one set per GPU (default: ideal)")
    parser.add_argument("--a100", default=e2e.HARDWARE["a100_sxm"], help="hardware preset of the A100 rows")
    parser.add_argument("--fidelity", default="roofline", choices=["roofline", "systolic"])
    parser.add_argument("--files", nargs="+", default=["throughput_calibration.csv"],
                        help="LLM-Inference-Bench files to score (see calibration/loaders/inference_bench.py)")
    parser.add_argument("--no-genz", action="store_true", help="skip GenZ")
    parser.add_argument("--genz-workers", type=int, default=2, help="GenZ processes (default 2)")
    parser.add_argument("--genz-cache", help="JSON file caching GenZ results between runs")
    parser.add_argument("--worst", type=int, default=5, help="worst rows to list")
    parser.add_argument("--csv", help="also write every row with its predictions (seconds) to this CSV file")
    args = parser.parse_args()
    calibrations = args.calibration or ["ideal"]
    hardware = {**e2e.HARDWARE, "a100_sxm": args.a100}
    warnings.simplefilter("ignore")
    t_start = time.perf_counter()

    table = inference_bench.load(files=tuple(args.files))
    table = table[table["framework"].isin(e2e.FRAMEWORKS)]
    columns = {}
    predictions = {}
    for spec in calibrations:
        pred = e2e.predict_table(table, efficiency_of(spec), hardware=hardware, fidelity=args.fidelity)
        predictions[spec] = pred
        columns[f"jaxmodel {spec}"] = f"jm[{spec}]"
    first = predictions[calibrations[0]]
    df = table.join(first[["status", "fits", "max_batched_tokens", "waves_s", "max_concurrent",
                           "prefill_steps", "prefill_s", "decode_s", "decode_mean_context_s"]])
    for spec in calibrations:
        df[f"jm[{spec}]"] = predictions[spec]["predicted_s"]
        df[f"jm_waves[{spec}]"] = predictions[spec]["waves_s"]
    t_jm = time.perf_counter() - t_start

    predicted = df[df["status"] == ""]
    if not args.no_genz:
        t0 = time.perf_counter()
        df.loc[predicted.index, "genz"] = genz_predictions(predicted, predicted["max_batched_tokens"], hardware,
                                                           args.genz_workers, args.genz_cache)
        columns[GENZ_LABEL] = "genz"
        t_genz = time.perf_counter() - t0
    else:
        t_genz = 0.0

    skipped = df[df["status"] != ""]
    fits = df[(df["status"] == "") & (df["fits"] == True)]  # noqa: E712  (nullable boolean)
    over = df[(df["status"] == "") & (df["fits"] == False)]  # noqa: E712
    systems = {gpu: jm.load_hardware(name) for gpu, name in hardware.items()}
    out = [f"End-to-end batch latency: LLM-Inference-Bench {', '.join(args.files)}; "
           f"{len(df)} vLLM/TensorRT-LLM rows on A100/H100, {args.fidelity} fidelity"]
    for gpu, name in hardware.items():
        chip = systems[gpu].chip
        out.append(f"  {gpu} -> {name}: {float(chip.mem_bw_Bps) / 1e9:.0f} GB/s, "
                   f"{float(chip.mem_capacity_bytes) / 2**30:.0f} GiB, "
                   f"{float(chip.tensor_peak('fp16')) / 1e12:.0f} TFLOP/s fp16")
    for reason, n in skipped["status"].value_counts().items():
        out.append(f"  skipped {n} rows: {reason}")
    out.append(f"  {len(over)} rows do not fit in memory per jaxmodel (separate section); {len(fits)} rows scored")
    shortcut = (fits["prefill_s"] + fits["decode_mean_context_s"]) / fits[f"jm[{calibrations[0]}]"] - 1
    out.append(f"  decode steps summed exactly; (L_out - 1) x step at the mean context differs by at most "
               f"{100 * shortcut.abs().max():.2g}% ({calibrations[0]}), the shortcut GenZ is given")
    out.append("")
    out.append(header())
    for (gpu, fw), g in fits.groupby(["gpu", "framework"]):
        out += block(f"{gpu} {fw}", g, columns)
    out.append(line("all scored rows", fits[f"jm[{calibrations[0]}]"], fits["latency_s"])
               + f"   (jaxmodel {calibrations[0]})")
    vllm = fits[fits["framework"] == "vllm"]
    out += ["", "vLLM by tensor parallelism"]
    for (gpu, tp), g in vllm.groupby(["gpu", "tp"]):
        out += block(f"{gpu} tp={tp:g}", g, columns)
    out += ["", "vLLM by batch"]
    for (gpu, b), g in vllm.groupby(["gpu", "batch"]):
        out += block(f"{gpu} batch={b:g}", g, columns)

    if len(over):
        out += ["", f"Rows that do not fit in memory per jaxmodel ({len(over)}): predicted as if they fit, and as "
                "consecutive waves of the largest batch that fits"]
        cols = dict(columns)
        for spec in calibrations:
            cols[f"jaxmodel {spec}, waves"] = f"jm_waves[{spec}]"
        out += block("  all", over, cols)
        names = sorted({f"{r.model.split('/')[-1]} {r.gpu} {r.framework} tp{r.tp:g} b{r.batch:g} L{r.input_tokens:g}"
                        for r in over.itertuples()})
        out.append("  rows: " + "; ".join(names))

    key = f"jm[{calibrations[0]}]"
    err = np.abs(np.log(fits[key] / fits["latency_s"]))
    worst = fits.loc[err.sort_values(ascending=False).index[: args.worst]]
    out += ["", f"{args.worst} worst scored rows (jaxmodel {calibrations[0]})",
            f"  {'gpu':<9}{'fw':<7}{'model':<22}{'tp':>3}{'batch':>6}{'L':>6}{'measured s':>12}{'jaxmodel s':>12}"
            f"{'GenZ s':>10}{'prefill steps':>15}"]
    for _, r in worst.iterrows():
        genz = f"{r['genz']:>10.2f}" if "genz" in r and np.isfinite(r["genz"]) else f"{'--':>10}"
        out.append(f"  {r['gpu']:<9}{r['framework']:<7}{r['model'].split('/')[-1]:<22}{r['tp']:>3g}{r['batch']:>6g}"
                   f"{r['input_tokens']:>6g}{r['latency_s']:>12.2f}{r[key]:>12.2f}{genz}{r['prefill_steps']:>15g}")

    out += ["", "One efficiency factor per (gpu, framework) fitted in sample, GenZ-paper style: every predicted time "
            "divided by eta (median log ratio)"]
    for (gpu, fw), g in fits.groupby(["gpu", "framework"]):
        parts = []
        for label, col in columns.items():
            ok = g[np.isfinite(g[col])]
            scale = np.exp(np.median(np.log(ok["latency_s"] / ok[col])))
            e = metrics.errors(ok[col] * scale, ok["latency_s"])
            parts.append(f"{label}: eta {1 / scale:.2f} -> geomean {e['geomean_pct']:.1f}%")
        out.append(f"  {gpu} {fw}: " + "; ".join(parts))
    out += ["", "Plus host overhead (Efficiency.step_overhead_s per forward step + sequence_overhead_s per sequence "
            "in it), fitted per (gpu, framework) on half the models and scored on the other half (2-fold by model; "
            "kernel models unchanged)"]
    for label, col in columns.items():
        if col == "genz":
            continue
        for (gpu, fw), g in fits.groupby(["gpu", "framework"]):
            scored, fitted = host_overhead_cross_validation(g, col)
            out.append(line(f"  {gpu} {fw} {label}", scored, g["latency_s"])
                       + "   per step " + " / ".join(f"{p['step_overhead_s'] * 1e3:.2f}" for p in fitted) + " ms"
                       + ", per sequence " + " / ".join(f"{p['sequence_overhead_s'] * 1e6:.0f}" for p in fitted)
                       + " us")
    out += ["", "GenZ's published validation (Bambhaniya et al., 'Demystifying AI Platform Design for Distributed "
            "Inference of Next-Generation LLM models'): 'max geomean error of 5.82%' = its Fig. 7, request "
            "serving time of Llama-3-8B bf16 at batch 16 with varying input/output lengths on SN40L (SambaFlow), "
            "MI300X (vLLM) and Gaudi2 (DeepSpeed), numbers taken from LLM-Inference-Bench, each platform with "
            "its own efficiency factor (0.9, 0.25, 0.6); on NVIDIA (its own vLLM runs, Llama-2-7B/13B and "
            "OPT-175B, 500-2000 input and 200 output tokens, Fig. 5) 2.73% prefill and 1.85% decode geomean "
            "with measured efficiencies (A100 0.4, H100 0.55-0.75). The figures above fit nothing to these "
            "rows except the in-sample eta lines and the host overhead (fitted on the other half of the models)."]
    if args.csv:
        for col in columns.values():
            if col != "genz":
                for _, g in fits.groupby(["gpu", "framework"]):
                    df.loc[g.index, f"{col}+host"] = host_overhead_cross_validation(g, col)[0]
        df.to_csv(args.csv, index=False)
    out.append(f"(runtime: jaxmodel {t_jm:.0f} s for {len(calibrations)} set(s) including compilation, "
               f"GenZ {t_genz:.0f} s)")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
