"""Throughput of jaxmodel beside three peer tools, on the same design points, in one run.

Design points (identical for every tool): Llama-3 70B, bf16 weights/activations/KV cache,
H100 SXM, batch {1, 8, 32} x input tokens {512, 2048} x TP {4, 8}, 256 output tokens.
Each tool predicts prefill latency and time per output token (TPOT) of every point:

  * GenZ (``genz-llm``): ``prefill_moddeling`` + ``decode_moddeling`` (Llama-3.1-70B,
    its ``H100_GPU`` system, efficiency 1). The decode step is asked at output/2 cached
    output tokens, the mean context of jaxmodel's decode step.
  * llm-analysis: ``llm_analysis.analysis.infer`` (its bundled Llama-2-70B config, the only
    70B Llama it ships; ``h100-sxm-80gb``; ``w16a16e16``; default efficiencies, both 1).
  * NVIDIA aiconfigurator-core: a compiled ``EngineHandle`` per TP (Meta-Llama-3.1-70B,
    ``h100_sxm`` silicon database, TensorRT-LLM backend, bf16), then ``run_static`` per
    point; TPOT = generation time / (output - 1), as aiconfigurator reports it. Building the
    engine (once per TP) is reported apart, like jaxmodel's compilation.

Timing: for every point one warm-up call, then ``--repeats`` timed calls; the point's time
is their median, and "s/point" is the mean of those medians over the points (the wall time
of predicting the whole set once, divided by its size). jaxmodel is timed twice: (a) the
same points through ``grid_sweep`` (compilation reported apart; median run time of the
repeats), (b) its bulk throughput, ``jaxmodel.bench.run`` on a large grid (``--points``).
"jaxmodel speedup" is (b)'s points/s over the row's points/s.

The ratio columns are sanity checks, not accuracy claims: each is the median over the
points of peer / jaxmodel (calibration "ideal", pure roofline). The peers assume their own
efficiencies and models (aiconfigurator interpolates measured kernels), so ratios away
from 1 are expected; nothing is tuned to move them.

Peers are optional and imported only here, never by jaxmodel:
    pip install genz-llm==0.0.16 llm-analysis==0.2.2 aiconfigurator-core==0.12.0

Run:  python benchmarks/peer_throughput.py [--points 4194304] [--repeats 3] [--json [PATH]]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import io
import itertools
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np

BATCHES = (1, 8, 32)
INPUT_TOKENS = (512, 2048)
TPS = (4, 8)
OUTPUT_TOKENS = 256


@dataclasses.dataclass(frozen=True)
class Point:
    tp: int
    batch: int
    input_tokens: int
    output_tokens: int = OUTPUT_TOKENS


def design_points(tps=TPS, batches=BATCHES, input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS) -> list[Point]:
    """The shared points, TP slowest, in the row order of ``grid_sweep`` over (tp, batch, input)."""
    return [Point(tp, b, isl, output_tokens) for tp, b, isl in itertools.product(tps, batches, input_tokens)]


@dataclasses.dataclass
class Row:
    tool: str
    version: str = ""
    points: int = 0
    s_per_point: float = math.nan
    prefill_s: list = dataclasses.field(default_factory=list)  # per point; NaN where the tool refuses
    tpot_s: list = dataclasses.field(default_factory=list)
    notes: str = ""

    @property
    def points_per_s(self) -> float:
        return 1.0 / self.s_per_point if self.s_per_point > 0 else math.nan


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "—"


@contextlib.contextmanager
def quiet():
    """Silence a peer: Python warnings, sys.stdout/stderr and the raw file descriptors 1 and 2
    (aiconfigurator's native code and logging handlers bound at import write there)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def time_points(predict: Callable[[Point], tuple[float, float]], points: list[Point], repeats: int):
    """Per point: one warm-up call, then ``repeats`` timed calls. Returns (mean over points of the
    median call time, warm-up call times, prefill_s list, tpot_s list)."""
    medians, warmups, prefill, tpot = [], [], [], []
    for p in points:
        t0 = time.perf_counter()
        pre, dec = predict(p)
        warmups.append(time.perf_counter() - t0)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            predict(p)
            runs.append(time.perf_counter() - t0)
        medians.append(float(np.median(runs)))
        prefill.append(pre)
        tpot.append(dec)
    return float(np.mean(medians)), warmups, prefill, tpot


def warmup_note(warmups: list) -> str:
    return f"warm-up calls: first {warmups[0]:.3g} s, median {np.median(warmups):.3g} s"


# ----------------------------------------------------------------------------- peers


def run_genz(points: list[Point], repeats: int) -> Row:
    row = Row("GenZ", _version("genz-llm"))
    try:
        with quiet():
            from GenZ import decode_moddeling, prefill_moddeling
    except ImportError:
        row.notes = "not installed (pip install genz-llm==0.0.16)"
        return row

    def predict(p: Point):
        kwargs = dict(model="meta-llama/Llama-3.1-70B", batch_size=p.batch, input_tokens=p.input_tokens,
                      system_name="H100_GPU", bits="bf16", tensor_parallel=p.tp, system_eff=1)
        try:
            pre = prefill_moddeling(**kwargs)["Latency"] / 1e3  # GenZ reports ms
            dec = decode_moddeling(output_tokens=p.output_tokens // 2, Bb=1, **kwargs)["Latency"] / 1e3
        except ValueError:  # GenZ raises when weights + KV cache exceed memory
            return math.nan, math.nan
        return pre, dec

    with quiet():
        row.s_per_point, warm, row.prefill_s, row.tpot_s = time_points(predict, points, repeats)
    row.points = len(points)
    row.notes = (f"model meta-llama/Llama-3.1-70B, system H100_GPU, efficiency 1; "
                 f"prefill_moddeling + decode_moddeling; {warmup_note(warm)}")
    return row


def run_llm_analysis(points: list[Point], repeats: int) -> Row:
    row = Row("llm-analysis", _version("llm-analysis"))
    try:
        with quiet():
            from llm_analysis.analysis import infer
    except ImportError:
        row.notes = "not installed (pip install llm-analysis)"
        return row
    model = "upstage_Llama-2-70b-instruct-v2"  # the only 70B Llama config bundled with llm-analysis

    def predict(p: Point):
        try:
            s = infer(model_name=model, gpu_name="h100-sxm-80gb", dtype_name="w16a16e16", log_level="ERROR",
                      batch_size_per_gpu=p.batch, tp_size=p.tp, seq_len=p.input_tokens,
                      num_tokens_to_generate=p.output_tokens)
        except AssertionError:  # llm-analysis asserts when weights + activations + KV exceed memory
            return math.nan, math.nan
        return s["prefill_latency"], s["decode_latency"]  # seconds

    with quiet():
        row.s_per_point, warm, row.prefill_s, row.tpot_s = time_points(predict, points, repeats)
    row.points = len(points)
    row.notes = (f"model {model} (Llama-2-70B: vocab 32k, 2-matrix MLP of 32768), gpu h100-sxm-80gb, "
                 f"w16a16e16, efficiencies 1; analysis.infer; decode step at context input + output; "
                 f"{warmup_note(warm)}")
    return row


def run_aiconfigurator(points: list[Point], repeats: int) -> Row:
    row = Row("aiconfigurator-core", _version("aiconfigurator-core"))
    try:
        with quiet():
            from aiconfigurator_core.sdk.engine import EngineHandle
    except ImportError:
        row.notes = "not installed (pip install aiconfigurator-core)"
        return row
    model, system, backend = "meta-llama/Meta-Llama-3.1-70B", "h100_sxm", "trtllm"
    engines, build_s = {}, []
    try:
        with quiet():
            for tp in sorted({p.tp for p in points}):
                t0 = time.perf_counter()
                engines[tp] = EngineHandle.compile(model, system, backend, tp_size=tp, gemm_quant_mode="bfloat16",
                                                   kvcache_quant_mode="bfloat16", fmha_quant_mode="bfloat16")
                build_s.append(time.perf_counter() - t0)
    except Exception as e:  # report why it cannot run here instead of a number
        row.notes = f"engine build failed: {type(e).__name__}: {e}"
        return row

    def predict(p: Point):
        context_ms, generation_ms, _ = engines[p.tp].run_static(batch_size=p.batch, isl=p.input_tokens,
                                                                osl=p.output_tokens)
        return context_ms / 1e3, generation_ms / 1e3 / (p.output_tokens - 1)

    try:
        with quiet():
            row.s_per_point, warm, row.prefill_s, row.tpot_s = time_points(predict, points, repeats)
    except Exception as e:
        row.notes = f"run_static failed: {type(e).__name__}: {e}"
        return row
    row.points = len(points)
    row.notes = (f"model {model}, system {system} database, backend {backend}, bf16; EngineHandle.run_static; "
                 f"engine build {np.mean(build_s):.2f} s per TP (excluded); "
                 f"{warmup_note(warm)} (the first loads the database)")
    return row


# ----------------------------------------------------------------------------- jaxmodel


def run_jaxmodel_points(points: list[Point], repeats: int) -> Row:
    """The shared points through one ``grid_sweep`` over (tp, batch, input tokens)."""
    import jaxmodel as jm
    from jaxmodel.sweep import grid_sweep

    arch = jm.load_model("llama-3-70b")
    system = jm.load_hardware("h100-sxm")
    wl = jm.Workload(batch=1, input_tokens=512, output_tokens=points[0].output_tokens, tp=4)
    grid = {"workload.tp": sorted({p.tp for p in points}), "workload.batch": sorted({p.batch for p in points}),
            "workload.input_tokens": sorted({p.input_tokens for p in points})}
    keep = ("prefill_s", "tpot_s")
    runs, compile_s = [], []
    for _ in range(repeats + 1):  # the first call is the warm-up
        df, stats = grid_sweep(arch, wl, system, grid=grid, metrics=keep, return_stats=True)
        runs.append(stats.run_s)
        compile_s.append(stats.compile_s)
    got = list(zip(df["workload.tp"], df["workload.batch"], df["workload.input_tokens"]))
    if got != [(p.tp, p.batch, p.input_tokens) for p in points]:
        raise RuntimeError("grid_sweep row order differs from design_points()")
    row = Row("jaxmodel (same points)", _version("jaxmodel"), len(points), float(np.median(runs[1:])) / len(points),
              df["prefill_s"].tolist(), df["tpot_s"].tolist())
    row.notes = (f"llama-3-70b, h100-sxm, calibration ideal; grid_sweep, one chunk of {len(points)}; "
                 f"compile {compile_s[0]:.2f} s (excluded)")
    return row


def run_jaxmodel_bulk(points: int) -> Row:
    from jaxmodel import bench

    r = bench.run(points=points, with_genz=False)
    axes = " x ".join(f"{k.split('.')[-1]} {n}" for k, n in r["grid_axes"].items())
    return Row("jaxmodel (bulk)", _version("jaxmodel"), r["points"], 1.0 / r["points_per_s"],
               notes=f"bench.run: {r['metrics_per_point']}; grid {axes}; chunk {r['chunk_size']}; "
                     f"compile {r['compile_s']:.2f} s (excluded); {r['backend']}, {r['cpu_count']} cores")


# ----------------------------------------------------------------------------- report


def median_ratio(peer: list, ref: list) -> float:
    r = np.asarray(peer, dtype=float) / np.asarray(ref, dtype=float)
    r = r[np.isfinite(r)]
    return float(np.median(r)) if r.size else math.nan


def _fmt(x: float, spec: str) -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def results_table(rows: list[Row], ref: Row, bulk: Row) -> str:
    head = ("tool", "version", "points timed", "s/point", "points/s", "jaxmodel speedup (x)",
            "median prefill ratio peer/jaxmodel", "median TPOT ratio peer/jaxmodel", "notes")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        timed = r.points > 0
        peer = timed and r is not ref and r is not bulk
        cells = (r.tool, r.version, f"{r.points:,}" if timed else "0",
                 _fmt(r.s_per_point, ".3g") if timed else "—", _fmt(r.points_per_s, ",.4g") if timed else "—",
                 _fmt(bulk.points_per_s / r.points_per_s, ",.4g") if timed else "—",
                 _fmt(median_ratio(r.prefill_s, ref.prefill_s), ".3f") if peer else "—",
                 _fmt(median_ratio(r.tpot_s, ref.tpot_s), ".3f") if peer else "—", r.notes)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latency_table(points: list[Point], rows: list[Row]) -> str:
    """Per-point prefill and TPOT in ms, each tool beside jaxmodel."""
    rows = [r for r in rows if r.prefill_s]
    head = ["TP", "batch", "input tokens"] + [f"{r.tool} {m}" for r in rows for m in ("prefill (ms)", "TPOT (ms)")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, p in enumerate(points):
        cells = [str(p.tp), str(p.batch), str(p.input_tokens)]
        for r in rows:
            cells += [_fmt(1e3 * r.prefill_s[i], ".2f"), _fmt(1e3 * r.tpot_s[i], ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_safe(x):
    """NaN (a point a peer refused) and inf are not JSON: write null."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1 << 22, help="design points of jaxmodel's bulk grid")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per point after the warm-up")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="also write the results as JSON (to stdout without PATH)")
    args = parser.parse_args()

    points = design_points()
    print(f"{len(points)} design points: llama-3 70B, bf16, H100 SXM, TP {TPS} x batch {BATCHES} x input "
          f"{INPUT_TOKENS} tokens, output {OUTPUT_TOKENS} tokens; {args.repeats} timed calls per point", flush=True)
    bulk = run_jaxmodel_bulk(args.points)
    print(f"jaxmodel bulk: {bulk.points:,} points at {bulk.points_per_s:,.0f} points/s", flush=True)
    ref = run_jaxmodel_points(points, args.repeats)
    rows = [bulk, ref]
    for run in (run_genz, run_llm_analysis, run_aiconfigurator):
        t0 = time.perf_counter()
        rows.append(run(points, args.repeats))
        print(f"{rows[-1].tool}: done in {time.perf_counter() - t0:.1f} s", flush=True)

    print("\n## Throughput (design points per second; one point = prefill + decode prediction)\n")
    print(results_table(rows, ref, bulk))
    print("\n## Predicted latency per point (jaxmodel: calibration ideal)\n")
    print(latency_table(points, rows[1:]))

    if args.json:
        out = {"points": [dataclasses.asdict(p) for p in points], "rows": []}
        for r in rows:
            d = dataclasses.asdict(r)
            d["points_per_s"] = r.points_per_s
            d["jaxmodel_speedup"] = bulk.points_per_s / r.points_per_s if r.points else None
            if r is not ref and r is not bulk and r.points:
                d["median_prefill_ratio"] = median_ratio(r.prefill_s, ref.prefill_s)
                d["median_tpot_ratio"] = median_ratio(r.tpot_s, ref.tpot_s)
            out["rows"].append(d)
        text = json.dumps(_json_safe(out), indent=2)
        if args.json == "-":
            print("\n" + text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
