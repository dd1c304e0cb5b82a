"""The ``jaxmodel`` command.

    jaxmodel explore                  the main job: a million-point chip sweep (defaults built in)
    jaxmodel predict --model llama-3-70b --hardware h100-sxm --batch 8 --input-tokens 1024 \\
                     --output-tokens 256 --tp 4 --json
    jaxmodel chip --hardware spad-prefill --json
                                      die area, cost, memory cost and TDP of one chip
    jaxmodel bench --json             pipeline throughput (points/s) and compile time
    jaxmodel calibrate --hardware h100-sxm --kernels my_kernels.csv --out my-h100.json
                                      fit kernel models to measured kernels; use the set with
                                      `jaxmodel predict --calibration my-h100.json`
    jaxmodel size-chip --phase prefill
                                      re-derive SPAD's prefill (or decode) chip from the H100 by
                                      gradient descent: cheapest chip no slower than the H100
    jaxmodel provision --trace conv --rate 70 --prefill-chip spad-prefill --decode-chip spad-decode
                                      cheapest prefill + decode cluster meeting SPAD's latency SLOs
                                      on a trace (or --mode colocated for chunked prefill)
    jaxmodel sweep my_sweep.yaml --out sweep_out
                                      evaluate a YAML/JSON sweep spec to parquet in chunks, sharded
                                      over all devices; rerun to resume after an interruption
    jaxmodel plot roofline --model llama-3-8b --hardware h100-sxm --batch 8 --input-tokens 1024 \\
                  --output-tokens 256 --out roofline.png
                                      figures: roofline, breakdown, memory, tornado (one design
                                      point) and pareto (--results of a sweep)
    jaxmodel list                     available models, hardware and calibrations

Errors are reported as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import equinox as eqx

from . import area, bench, cost, explore, presets, status
from .predict import breakdown, predict
from .workload import ACTIVATION_DTYPES, ATTENTION_IMPLS, DTYPE_BYTES, LM_HEAD_TOKENS, OFFLOAD_POLICIES, Workload

PREDICT_EXAMPLE = """example:
  jaxmodel predict --model llama-3-70b --hardware h100-sxm --batch 8 \\
      --input-tokens 1024 --output-tokens 256 --tp 4 --calibration ideal --json
  jaxmodel predict --model path/to/config.json --hardware a100-sxm-80gb --batch 1 \\
      --input-tokens 512 --output-tokens 128 --breakdown
  # llama-3-70b on ONE H100, half its weights in host DRAM over PCIe 5.0 (or --offload auto_kv)
  jaxmodel predict --model llama-3-70b --hardware h100-sxm --batch 8 --input-tokens 1024 \\
      --output-tokens 256 --offload-tier pcie5-host --offload-weights 0.5 --json
  # a custom tier: 32 GB/s, 512 GB per device; let the model pick the least offload that fits
  jaxmodel predict --model llama-3-70b --hardware h100-sxm --batch 8 --input-tokens 1024 \\
      --output-tokens 256 --offload-bw-gbps 32 --offload-capacity-gb 512 --offload auto_weights
"""


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="metrics of one design point",
                       epilog=PREDICT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _design_point_arguments(p)
    p.add_argument("--chunk-tokens", type=int, help="also report a chunked-prefill step with this chunk size")
    p.add_argument("--breakdown", action="store_true", help="print the per-operator table")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _design_point_arguments(p, batch: bool = True) -> None:
    """Model, hardware, workload, calibration and fidelity arguments (predict, plot)."""
    p.add_argument("--model", required=True, help="preset name or path to a HuggingFace config.json")
    p.add_argument("--hardware", required=True, help="hardware preset (see `jaxmodel list`)")
    if batch:
        p.add_argument("--batch", type=int, required=True, help="concurrent sequences")
    p.add_argument("--input-tokens", type=int, required=True, help="prompt tokens per sequence")
    p.add_argument("--output-tokens", type=int, required=True, help="generated tokens per sequence")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel degree")
    p.add_argument("--ep", type=int, default=1, help="expert-parallel degree (MoE only)")
    p.add_argument("--dtype", default="bf16", choices=ACTIVATION_DTYPES, help="weights, activations and KV cache")
    p.add_argument("--weight-dtype", choices=sorted(DTYPE_BYTES), help="override the weight format")
    p.add_argument("--kv-dtype", choices=sorted(DTYPE_BYTES), help="override the KV-cache format")
    p.add_argument("--fidelity", default="roofline", choices=["roofline", "systolic"],
                   help="time model: datasheet roofline, or systolic arrays + SRAM hierarchy (needs a preset with "
                        "a microarchitecture: h100-sxm, a100-sxm-80gb, spad-prefill, spad-decode)")
    p.add_argument("--calibration", default="ideal",
                   help="efficiency set: 'ideal' (pure roofline), a fitted preset (h100-vllm, a100-vllm; see "
                        "`jaxmodel list`) or a JSON file written by `jaxmodel calibrate`")
    p.add_argument("--attention", default="flash", choices=ATTENTION_IMPLS, help="attention kernel")
    p.add_argument("--lm-head-tokens", default="last", choices=LM_HEAD_TOKENS,
                   help="prefill logits for the last prompt token (vLLM) or all of them")
    p.add_argument("--sequence-parallel", action="store_true",
                   help="TP all-reduces become reduce-scatter + all-gather; norms on 1/tp of the tokens")
    p.add_argument("--memory-utilization", type=float, default=0.9, help="usable fraction of device memory")
    g = p.add_argument_group("offload tier", "a slower, larger memory behind each device (host DRAM, CXL); weights "
                             "and KV cache placed there stream over its link, concurrently with device memory")
    g.add_argument("--offload-tier", metavar="TIER",
                   help="named tier: pcie5-host, pcie4-host, nvlink-c2c, cxl2-x16 (replaces the preset's tier)")
    g.add_argument("--offload-bw-gbps", type=float, help="tier link bandwidth per device and direction, GB/s")
    g.add_argument("--offload-capacity-gb", type=float, help="tier capacity per device, GB")
    g.add_argument("--offload-efficiency", type=float, help="achieved fraction of the tier's link bandwidth")
    g.add_argument("--offload", default="manual", choices=OFFLOAD_POLICIES,
                   help="placement: manual (use --offload-weights/--offload-kv), or auto_kv / auto_weights: the "
                        "least offload that fits device memory, KV cache or weights first")
    g.add_argument("--offload-weights", type=float, default=0.0, help="share of weight bytes in the tier (manual)")
    g.add_argument("--offload-kv", type=float, default=0.0, help="share of KV-cache bytes in the tier (manual)")


def _design_point(args):
    """``(arch, workload, system, efficiency)`` from :func:`_design_point_arguments`."""
    arch = presets.load_model(args.model)
    system = _with_offload(presets.load_hardware(args.hardware), args)
    eff = presets.load_calibration(args.calibration)
    wl = Workload(
        batch=args.batch if "batch" in args else 1, input_tokens=args.input_tokens, output_tokens=args.output_tokens,
        tp=args.tp, pp=args.pp, ep=args.ep, dtype=args.dtype, weight_dtype=args.weight_dtype, kv_dtype=args.kv_dtype,
        attention_impl=args.attention, lm_head_tokens=args.lm_head_tokens, sequence_parallel=args.sequence_parallel,
        memory_utilization=args.memory_utilization, chunk_tokens=getattr(args, "chunk_tokens", None) or 512,
        offload_weights=args.offload_weights, offload_kv=args.offload_kv, offload_policy=args.offload,
    )
    return arch, wl, system, eff


def _with_offload(system, args):
    """``system`` with the offload tier the arguments describe (a named tier, then overrides)."""
    spec = {}
    if args.offload_tier:
        spec["tier"] = args.offload_tier
    for flag, key, scale in (("offload_bw_gbps", "bandwidth_Bps", 1e9), ("offload_capacity_gb", "capacity_bytes", 1e9),
                             ("offload_efficiency", "efficiency", 1.0)):
        if getattr(args, flag) is not None:
            spec[key] = getattr(args, flag) * scale
    if not spec:
        return system
    if "tier" not in spec:  # overrides of the preset's own tier
        tier = system.offload
        spec = {"bandwidth_Bps": tier.bandwidth_Bps, "capacity_bytes": tier.capacity_bytes,
                "efficiency": tier.efficiency, **spec}
    return eqx.tree_at(lambda s: s.offload, system, presets.offload_from_dict(spec))


def cmd_predict(args) -> int:
    arch, wl, system, eff = _design_point(args)
    result = predict(arch, wl, system, eff, chunked_step=args.chunk_tokens is not None, fidelity=args.fidelity)
    result.update(model=args.model, hardware=args.hardware, calibration=args.calibration, fidelity=args.fidelity)
    if args.json:
        print(json.dumps(result))
    else:
        _print_summary(result)
    if args.breakdown:
        table = breakdown(arch, wl, system, eff, fidelity=args.fidelity)
        table = table[table["repeat"] > 0]
        cols = ["phase", "op", "repeat", "flops", "weight_bytes", "act_bytes", "kv_bytes", "comm_bytes",
                "tensor_s", "vector_s", "memory_s", "comm_s", "time_s", "total_s", "bound"]
        if (table["offload_bytes"] > 0).any():
            cols[-3:-3] = ["offload_bytes", "offload_s"]
        print(table[cols].to_string(index=False), file=sys.stderr if args.json else sys.stdout)
    return 0


def _print_summary(r: dict) -> None:
    lines = [
        ("prefill (whole batch)", f"{r['prefill_s'] * 1e3:.3f} ms"),
        ("TTFT", f"{r['ttft_s'] * 1e3:.3f} ms"),
        ("decode step / TPOT", f"{r['tpot_s'] * 1e3:.3f} ms"),
        ("end-to-end latency", f"{r['e2e_latency_s']:.3f} s"),
        ("throughput", f"{r['throughput_tok_s']:.1f} tok/s ({r['throughput_per_device_tok_s']:.1f} per device)"),
        ("memory per device", f"{r['memory_bytes'] / 1e9:.2f} GB of {r['usable_memory_bytes'] / 1e9:.2f} GB usable"
                              f" (weights {r['weight_bytes'] / 1e9:.2f}, KV {r['kv_cache_bytes'] / 1e9:.2f},"
                              f" activations {r['activation_bytes'] / 1e9:.2f})"),
        ("largest batch that fits", f"{r['max_batch']:.0f}"),
        ("status", r["status_text"]),
    ]
    if r["offload_capacity_bytes"] > 0 or r["offload_bytes"] > 0:
        lines.insert(-2, ("offload tier", f"{r['offload_bytes'] / 1e9:.2f} GB of {r['offload_capacity_bytes'] / 1e9:.2f}"
                                          f" GB (weights {100 * r['offload_weights']:.1f}%, KV "
                                          f"{100 * r['offload_kv']:.1f}%)"))
    if "chunked_step_s" in r:
        lines.insert(4, ("chunked step", f"{r['chunked_step_s'] * 1e3:.3f} ms"))
    if "usd_per_mtok" in r:  # a microarchitecture-level chip is also priced
        lines[-1:-1] = [
            ("chip", f"{r['die_area_mm2']:.0f} mm² die, ${r['total_cost_usd']:.0f} (die + memory), "
                     f"TDP {r['tdp_w']:.0f} W"),
            ("energy per output token", f"{r['energy_per_token_j']:.3f} J ({r['tokens_per_j']:.2f} tokens/J)"),
            ("cost per M tokens", f"${r['usd_per_mtok']:.4f} per request's output (prefill "
                                  f"${r['prefill_usd_per_mtok']:.4f}/M prompt tokens, decode "
                                  f"${r['decode_usd_per_mtok']:.4f}/M)"),
        ]
    for name, value in lines:
        print(f"{name:>24}: {value}")


def cmd_chip(args) -> int:
    system = presets.load_hardware(args.hardware)
    econ = cost.Economics(use_yield=args.with_yield, memory_usd_per_GiB=dict(args.memory_price or []))
    metrics = {k: float(v) for k, v in cost.chip_metrics(system, econ).items()}
    code = int(metrics.pop("chip_status"))
    result = {"hardware": args.hardware, **metrics, "status": code, "status_text": status.describe(code),
              "area_mm2": {k: float(v) for k, v in area.area_breakdown(system).items() if k != "total"}}
    if args.json:
        print(json.dumps(result))
        return 0
    rows = [
        ("FP16 tensor peak", f"{result['tensor_flops'] / 1e15:.3f} PFLOP/s"),
        ("FP32 vector peak", f"{result['vector_flops'] / 1e12:.1f} TFLOP/s"),
        ("memory", f"{result['mem_capacity_bytes'] / 2**30:.0f} GiB at {result['mem_bw_Bps'] / 1e9:.0f} GB/s"),
        ("die area", f"{result['die_area_mm2']:.0f} mm²"),
        ("dies per 300 mm wafer", f"{result['dies_per_wafer']:.1f}"),
        ("die cost", f"${result['die_cost_usd']:.0f}"),
        ("memory cost", f"${result['memory_cost_usd']:.0f}"),
        ("hardware cost", f"${result['total_cost_usd']:.0f} per chip, ${result['machine_cost_usd']:,.0f} per machine"),
        ("TDP", f"{result['tdp_w']:.0f} W"),
        ("memory PHY edge", f"{result['memory_edge_mm']:.1f} mm of {result['memory_edge_available_mm']:.1f} mm"),
        ("status", result["status_text"]),
    ]
    for name, value in rows:
        print(f"{name:>22}: {value}")
    print("area by component (mm²): " + ", ".join(f"{k} {v:.1f}" for k, v in result["area_mm2"].items()))
    return 0


def _price(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TECHNOLOGY=USD_PER_GIB such as hbm3=9 (got {text!r})") from None


def cmd_bench(args) -> int:
    for name in ("points", "chunk_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    result = bench.run(points=args.points, chunk_size=args.chunk_size, with_genz=not args.no_genz)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['points']:,} design points of {result['model']} ({result['metrics_per_point']})")
        print(f"  compile: {result['compile_s']:.2f} s   run: {result['run_s']:.2f} s   "
              f"throughput: {result['points_per_s']:,.0f} points/s on {result['devices']} {result['backend']} device(s)")
        if result["genz_s_per_point"]:
            print(f"  GenZ: {result['genz_s_per_point'] * 1e3:.1f} ms per point -> "
                  f"jaxmodel is {result['speedup_vs_genz']:,.0f}x faster per point")
    return 0


def cmd_explore(args) -> int:
    if args.resolution < 2:
        raise ValueError(f"--resolution must be >= 2 values per axis (got {args.resolution})")
    for name in ("ttft_ms", "tpot_ms", "input_tokens", "output_tokens"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0 (got {getattr(args, name)})")
    cfg = explore.ExploreConfig(model=args.model, hardware=args.hardware, input_tokens=args.input_tokens,
                                output_tokens=args.output_tokens, ttft_slo_s=args.ttft_ms / 1e3,
                                tpot_slo_s=args.tpot_ms / 1e3, resolution=args.resolution, out_dir=args.out)
    explore.run(cfg)
    return 0


def cmd_calibrate(args) -> int:
    import pandas as pd  # the calibration package is only needed by this command

    from calibration import sets
    from calibration.loaders import aiconfigurator, generic

    frames = [generic.load_kernels(path) for path in args.kernels or []]
    if args.aiconfigurator:
        table = aiconfigurator.load(systems=args.aiconfigurator, frameworks=(args.framework, "nccl"))
        if args.framework_version:
            table = table[(table["framework"] == "nccl") | (table["framework_version"] == args.framework_version)]
        frames.append(table)
    if not frames:
        raise ValueError("calibrate: give measured kernels with --kernels FILE (repeatable) and/or "
                         "--aiconfigurator GPU (a100_sxm, h100_sxm)")
    kernels = pd.concat(frames, ignore_index=True)
    if args.gpu:
        kernels = kernels[kernels["gpu"] == args.gpu]
    gpus = sorted(set(kernels["gpu"]))
    if len(gpus) != 1:
        raise ValueError(f"calibrate: the measured rows must come from one GPU (found {gpus or 'none'}); "
                         "select one with --gpu")
    name = args.name or args.out.rsplit("/", 1)[-1].removesuffix(".json")
    spec = sets.build(kernels, args.hardware, name=name, cores=args.cores, any_version=args.framework_version is None,
                      description=f"fitted by `jaxmodel calibrate` to {len(kernels)} rows measured on {gpus[0]}")
    sets.write(spec, args.out)
    if args.json:
        print(json.dumps(spec))
        return 0
    for family in sets.FAMILIES:
        entry = spec.get(family)
        if entry:
            params = ", ".join(f"{k}={v:.4g}±{entry['stderr'][k]:.2g}" for k, v in entry["params"].items())
            print(f"{family:>12}: {entry['rows']} rows, in-sample geomean error "
                  f"{entry['in_sample']['geomean_pct']:.1f}%; {params}")
    print(f"wrote {args.out}; use it with `jaxmodel predict ... --calibration {args.out}`")
    return 0


def cmd_size_chip(args) -> int:
    import numpy as np

    from . import optimize, spad_sizing

    settings = optimize.SolverSettings(starts=args.starts)
    problem = spad_sizing.PROBLEMS[args.phase](args.scale, args.objective, args.ratio)
    result = optimize.solve(problem, settings, seed=args.seed)
    grid = optimize.grid_search(problem) if args.grid else None
    out = {"phase": args.phase, "space_size": problem.space_size, "objective_name": args.objective,
           **{k: getattr(result, k) for k in ("values", "objective", "feasible", "constraints", "metrics", "seconds",
                                             "compile_s", "evaluated")}}
    if grid is not None:
        out["grid"] = {k: getattr(grid, k) for k in ("values", "objective", "feasible", "seconds", "compile_s",
                                                    "evaluated")}
        out["gap_pct"] = 100.0 * (result.objective / grid.objective - 1.0)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.phase} chip from the H100, BLOOM-176B TP 8: minimize {args.objective} over "
          f"{problem.space_size:,} designs ({args.scale} space)")
    print(f"gradient method: {result.seconds:.1f} s ({result.compile_s:.1f} s compiling), {settings.starts} starts, "
          f"{result.evaluated} exact evaluations; {'feasible' if result.feasible else 'NO FEASIBLE DESIGN FOUND'}")
    if grid is not None:
        print(f"grid search:     {grid.seconds:.1f} s ({grid.compile_s:.1f} s compiling), {grid.evaluated:,} designs; "
              f"objective {grid.objective:.4g}, gradient method {out['gap_pct']:+.2f}% from it")
    system = result.system(problem)
    table = spad_sizing.chips_table({f"re-derived {args.phase}": system, **{
        name: presets.load_hardware(name) for name in (f"spad-{args.phase}", "h100-sxm")}})
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    print("constraints (value / bound, feasible <= 1): "
          + "; ".join(f"{k}: {v:.3f}" for k, v in result.constraints.items()))
    if args.sensitivity:
        sens = optimize.sensitivity(problem, result)
        cols = ["knob", "value", "elasticity_objective", "value_down", "objective_down", "value_up", "objective_up"]
        print(sens[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}" if np.isfinite(v) else "-"))
    return 0


def cmd_provision(args) -> int:
    import numpy as np
    import pandas as pd

    from .serving import provision as pv
    from .serving import trace as tr

    if not (np.isfinite(args.rate) and args.rate > 0):
        raise ValueError(f"--rate must be finite and > 0 requests per second (got {args.rate})")
    for name in ("max_prefill", "max_decode", "max_machines"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    source = tr.azure(args.trace) if args.trace.lower() in tr.AZURE_NAMES else tr.load_csv(args.trace)
    if args.requests is not None:
        source = source.head(args.requests)
    trace = tr.resample(source, args.rate, seed=args.seed) if args.arrivals == "poisson" else tr.rescale(source,
                                                                                                         args.rate)
    arch = presets.load_model(args.model)
    wl = Workload(batch=1.0, input_tokens=1.0, output_tokens=1.0, tp=args.tp, dtype=args.dtype)
    reference = presets.load_hardware(args.reference)
    setup = pv.Setup(arch, wl, reference, presets.load_calibration(args.calibration), args.fidelity)
    if args.mode == "colocated":
        chip = args.chip or args.reference
        best, table = pv.provision_colocated(trace, setup, presets.load_hardware(chip), args.slo, args.max_machines)
        chips = f"co-located {chip}"
    else:
        pre, dec = args.prefill_chip or args.reference, args.decode_chip or args.reference
        best, table = pv.provision_disaggregated(trace, setup, presets.load_hardware(pre), presets.load_hardware(dec),
                                                 args.slo, args.max_prefill, args.max_decode,
                                                 objective=args.objective)
        chips = f"prefill {pre}, decode {dec}"
    front = pv.pareto(table)
    if args.csv:
        table.to_csv(args.csv, index=False)
    machines = [c for c in ("prefill", "decode", "machines") if c in table]
    summary = {"trace": trace.name, "requests": len(trace), "rate_rps": args.rate, "chips": chips, "slo": args.slo,
               "fidelity": args.fidelity, "configurations": len(table),
               "best": None if best is None else {k: (v.item() if hasattr(v, "item") else v) for k, v in best.items()},
               "pareto": front.to_dict(orient="records")}
    if args.json:
        print(json.dumps(summary, default=float))
        return 0
    print(f"{args.model} TP {args.tp} {args.dtype}, {chips}; {trace.name}: {len(trace):,} requests at "
          f"{args.rate:g} req/s; {args.slo} SLOs vs one request alone on {args.reference}; {args.fidelity} times")
    print(f"simulated {len(table)} cluster configurations")
    if best is None:
        print("no configuration within the machine limits meets the SLOs; closest P99 TTFT / TBT slowdowns (x):")
        print(table.nsmallest(3, "p99_ttft (x)")[machines + ["p99_ttft (x)", "p99_tbt (x)"]].to_string(index=False))
        return 1
    counts = " + ".join(f"{int(best[c])} {c}" for c in machines)
    print(f"cheapest by {args.objective}: {counts} machines; cost {best[pv.COST]:.2f} and TDP {best[pv.TDP]:.2f} "
          f"{args.reference} machines; P90/P99 TTFT {best['p90_ttft (x)']:.2f}/{best['p99_ttft (x)']:.2f}x, "
          f"TBT {best['p90_tbt (x)']:.2f}/{best['p99_tbt (x)']:.2f}x")
    print("Pareto options (cost, TDP in reference machines):")
    with pd.option_context("display.width", 160):
        print(front[machines + [pv.COST, pv.TDP, "p99_ttft (x)", "p99_tbt (x)"]].to_string(
            index=False, float_format=lambda v: f"{v:.2f}"))
    if args.csv:
        print(f"wrote every configuration to {args.csv}")
    return 0


SWEEP_EXAMPLE = """examples:
  jaxmodel sweep my_sweep.yaml --out sweep_out          # rerun the same command to resume
  XLA_FLAGS=--xla_force_host_platform_device_count=2 jaxmodel sweep my_sweep.yaml --out sweep_out

A spec (YAML or JSON) names a base point and the leaves to vary; see jaxmodel/sweep_spec.py:
  model: llama-3-70b
  hardware: h100-sxm
  workload: {batch: 8, input_tokens: 2048, output_tokens: 256, tp: 8}
  grid:
    system.chip.mem_bw_Bps: {linspace: [1.0e12, 8.0e12, 50]}   # or values/geomspace/range, or a list
    workload.batch: [1, 8, 64]
  sample: {method: lhs, points: 10000, seed: 0,                 # or random; times every grid point
           parameters: {system.chip.tensor_flops.bf16: {loguniform: [2.0e14, 2.5e15]}}}
  constraints: ["status == 0", "tpot_s <= 0.04"]
  metrics: [ttft_s, tpot_s, throughput_per_device_tok_s, memory_bytes]

Results: out/parts/*.parquet (one per chunk, SI units), read with
jaxmodel.sweep_run.load_results(out); plot with `jaxmodel plot pareto --results out ...`.
The points are sharded over every local device; with --distributed, over every process
started by jax.distributed (each takes its share of chunks)."""


def _sweep_parser(sub) -> None:
    s = sub.add_parser("sweep", help="evaluate a sweep spec to parquet, chunk by chunk, resumable",
                       epilog=SWEEP_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("spec", help="sweep spec, .yaml/.yml or .json")
    s.add_argument("--out", required=True, help="directory of the results (created; resumed if it holds this sweep)")
    s.add_argument("--overwrite", action="store_true", help="discard results of a different sweep in --out")
    s.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host; cluster settings from the environment)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    s.add_argument("--json", action="store_true", help="print a JSON summary")


def cmd_sweep(args) -> int:
    import jax

    from . import sweep_run
    from .sweep_spec import load_spec

    if args.distributed:
        jax.distributed.initialize()
    spec = load_spec(args.spec)
    if not args.json:
        print(f"{spec.total:,} points ({len(spec.paths)} parameters), chunks of {spec.chunk_size:,}, on "
              f"{jax.local_device_count()} {jax.default_backend()} device(s) x {jax.process_count()} process(es)",
              file=sys.stderr)
    try:
        summary = sweep_run.run(spec, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    except KeyboardInterrupt:
        done = len(sweep_run.completed_chunks(args.out))
        print(f"jaxmodel: interrupted with {done} chunk(s) written to {args.out}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    result = {**summary._asdict(), "points_per_s": summary.points_per_s, "out": str(args.out)}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{summary.evaluated:,} points evaluated in {summary.run_s:.2f} s ({summary.points_per_s:,.0f} points/s "
          f"after {summary.compile_s:.1f} s compiling), {summary.skipped:,} already on disk; "
          f"{summary.rows_written:,} rows written to {args.out}/parts")
    return 0


def cmd_list(args) -> int:
    print("models:      ", " ".join(presets.list_models()))
    print("hardware:    ", " ".join(presets.list_hardware()))
    print("calibrations:", " ".join(presets.list_calibrations()))
    return 0


PLOT_FORMATS = (".png", ".svg", ".pdf")
PLOT_EXAMPLE = """examples:
  jaxmodel plot roofline --model llama-3-8b --hardware h100-sxm --batch 8 --input-tokens 1024 \\
      --output-tokens 256 --out roofline.png
  jaxmodel plot breakdown --model llama-3-70b --hardware h100-sxm --batch 8 --input-tokens 1024 \\
      --output-tokens 256 --tp 4 --calibration h100-vllm --out breakdown.svg
  jaxmodel plot memory --model llama-3-70b --hardware h100-sxm --input-tokens 1024 --output-tokens 256 \\
      --tp 4 --batches 1,8,32,128 --out memory.png
  jaxmodel plot tornado --model llama-3-8b --hardware h100-sxm --batch 8 --input-tokens 1024 \\
      --output-tokens 256 --metric tpot_s --rel 0.2 --out tornado.pdf
  jaxmodel plot pareto --results sweep_out --x tpot_s --y throughput_per_device_tok_s --maximize-y \\
      --feasible --out front.svg

The format follows the suffix of --out: .png, .svg or .pdf. --results takes a `jaxmodel sweep`
output directory, a CSV file, a parquet file or a directory of parquet files with SI columns.
"""


def _plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="figures: roofline, latency breakdown, memory, sensitivity tornado, Pareto front",
                       epilog=PLOT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    about = {"roofline": "every operator of one design point on the device's roofline",
             "breakdown": "time per operator of a prefill and a decode step",
             "memory": "weights, KV cache and activations per device over batch sizes",
             "tornado": "one-at-a-time sensitivity of a metric (low/high by --rel, elasticities)",
             "pareto": "Pareto front of two columns of sweep results"}
    for kind, text in about.items():
        k = kinds.add_parser(kind, help=text, description=text, epilog=PLOT_EXAMPLE,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        k.add_argument("--out", required=True, help=f"image file to write ({', '.join(PLOT_FORMATS)})")
        if kind == "pareto":
            k.add_argument("--results", required=True, help="CSV, parquet file, or directory of parquet files")
            k.add_argument("--x", required=True, help="column on the x axis (SI, e.g. tpot_s)")
            k.add_argument("--y", required=True, help="column on the y axis (SI)")
            k.add_argument("--maximize-x", action="store_true", help="larger x is better (default: smaller)")
            k.add_argument("--maximize-y", action="store_true", help="larger y is better (default: smaller)")
            k.add_argument("--feasible", action="store_true", help="only rows whose status column is 0")
            continue
        _design_point_arguments(k, batch=kind != "memory")
        if kind == "roofline":
            k.add_argument("--phase", default="both", choices=["both", "prefill", "decode"])
        if kind == "memory":
            k.add_argument("--batches", default="1,8,32,128", help="comma-separated batch sizes")
        if kind == "tornado":
            k.add_argument("--metric", default="tpot_s", help="metric to perturb (a predict key)")
            k.add_argument("--rel", type=float, default=0.2, help="relative move of each leaf, in (0, 1)")
            k.add_argument("--paths", help="comma-separated leaf paths (default: a set for the chip kind)")


def cmd_plot(args) -> int:
    import pathlib

    import matplotlib

    matplotlib.use("Agg")  # files only, also on machines without a display
    import matplotlib.pyplot as plt
    import pandas as pd

    from . import plots, sensitivity, sweep_run

    out = pathlib.Path(args.out)
    if out.suffix.lower() not in PLOT_FORMATS:
        raise ValueError(f"--out {args.out!r}: the suffix picks the format; use one of {', '.join(PLOT_FORMATS)}")
    if args.kind == "pareto":
        source = pathlib.Path(args.results)
        if source.is_dir() and (source / sweep_run.MANIFEST).is_file():
            df = sweep_run.load_results(source)  # a `jaxmodel sweep` directory
        elif source.is_dir():
            parts = sorted(source.glob("*.parquet"))
            if not parts:
                raise ValueError(f"--results {args.results!r}: the directory holds no .parquet files")
            df = pd.concat([pd.read_parquet(f) for f in parts], ignore_index=True)
        elif not source.is_file():
            raise ValueError(f"--results {args.results!r}: no such file or directory")
        elif source.suffix.lower() == ".csv":
            df = pd.read_csv(source)
        elif source.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(source)
        else:
            raise ValueError(f"--results {args.results!r}: expected a .csv or .parquet file or a directory")
        for flag, column in (("--x", args.x), ("--y", args.y)):
            if column not in df.columns:
                raise ValueError(f"{flag} {column!r} is not a column of {args.results} (have {', '.join(df.columns)})")
        if args.feasible and "status" not in df.columns:
            raise ValueError(f"--feasible needs a status column in {args.results}")
        where = df["status"] == 0 if args.feasible else None
        fig = plots.pareto_front(df, args.x, args.y, maximize=(args.maximize_x, args.maximize_y), where=where).figure
    else:
        arch, wl, system, eff = _design_point(args)
        if args.kind == "roofline":
            fig = plots.roofline(arch, wl, system, eff, phase=args.phase, fidelity=args.fidelity).figure
        elif args.kind == "breakdown":
            fig = plots.latency_breakdown(arch, wl, system, eff, fidelity=args.fidelity)
        elif args.kind == "memory":
            try:
                batches = [int(b) for b in args.batches.split(",")]
            except ValueError:
                raise ValueError(f"--batches must be comma-separated whole numbers (got {args.batches!r})") from None
            fig = plots.memory_breakdown(arch, wl, system, batches).figure
        else:
            paths = args.paths.split(",") if args.paths else None
            table = sensitivity.one_at_a_time(arch, wl, system, eff, metric=args.metric, paths=paths, rel=args.rel,
                                              fidelity=args.fidelity)
            fig = plots.tornado(table, args.metric).figure
    fig.savefig(out, dpi=150, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {out}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the full usage is one --help away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxmodel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _predict_parser(sub)

    b = sub.add_parser("bench", help="throughput of the full pipeline",
                       epilog="example:\n  jaxmodel bench --json", formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--points", type=int, default=1 << 22, help="design points to evaluate (about)")
    b.add_argument("--chunk-size", type=int, default=1 << 17, help="points per compiled call")
    b.add_argument("--no-genz", action="store_true", help="skip timing GenZ even if it is installed")
    b.add_argument("--json", action="store_true", help="print one JSON object")

    d = explore.ExploreConfig()
    e = sub.add_parser("explore", help="main job: sweep a million chip/deployment points (built-in defaults)",
                       epilog="example:\n  jaxmodel explore\n  jaxmodel explore --model llama-3-8b --tpot-ms 20",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--model", default=d.model)
    e.add_argument("--hardware", default=d.hardware, help="reference chip; the sweep varies its memory and compute")
    e.add_argument("--input-tokens", type=int, default=d.input_tokens)
    e.add_argument("--output-tokens", type=int, default=d.output_tokens)
    e.add_argument("--ttft-ms", type=float, default=d.ttft_slo_s * 1e3, help="time-to-first-token target")
    e.add_argument("--tpot-ms", type=float, default=d.tpot_slo_s * 1e3, help="time-per-output-token target")
    e.add_argument("--resolution", type=int, default=d.resolution, help="values per bandwidth/compute axis")
    e.add_argument("--out", default=d.out_dir, help="output directory for the CSV and the plot")

    c = sub.add_parser("chip", help="die area, cost, memory cost and TDP of a chip",
                       epilog="example:\n  jaxmodel chip --hardware spad-prefill --json\n"
                              "  jaxmodel chip --hardware h100-sxm --memory-price hbm3=12",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--hardware", required=True, help="a preset with a microarchitecture (h100-sxm, a100-sxm-80gb, "
                                                     "spad-prefill, spad-decode)")
    c.add_argument("--memory-price", type=_price, action="append", metavar="TECH=USD",
                   help="memory price in USD per GiB, e.g. hbm3=12 (repeatable)")
    c.add_argument("--with-yield", action="store_true", help="apply a negative-binomial die yield (SPAD does not)")
    c.add_argument("--json", action="store_true", help="print one JSON object")

    k = sub.add_parser("calibrate", help="fit kernel models to measured kernel times; write a calibration set",
                       epilog="examples:\n  jaxmodel calibrate --hardware h100-sxm --kernels my_kernels.csv "
                              "--out my-h100.json\n  jaxmodel calibrate --hardware a100-sxm-80gb --aiconfigurator "
                              "a100_sxm --framework-version 0.14.0 --out a100.json\n\nKernel CSV columns: see "
                              "calibration/loaders/generic.py (gpu, op, shape columns, measured_s|_ms|_us).\n"
                              "GEMM rows (bf16) of any framework are fitted; attention rows need the kernel label "
                              "'vllm_flash_attn kv:<dtype>', collectives framework 'nccl' (or vllm's custom "
                              "all-reduce); rmsnorm/add/silu_mul/rope rows fit the memory efficiency.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("--hardware", required=True, help="preset whose datasheet the kernels ran on (see `jaxmodel list`)")
    k.add_argument("--kernels", action="append", metavar="FILE", help="measured kernels, generic CSV (repeatable)")
    k.add_argument("--aiconfigurator", metavar="GPU", help="also read NVIDIA AIConfigurator's database for GPU")
    k.add_argument("--framework", default="vllm", help="AIConfigurator framework folder (vllm, trtllm)")
    k.add_argument("--framework-version", help="AIConfigurator framework version, e.g. 0.14.0")
    k.add_argument("--gpu", help="keep only rows measured on this GPU")
    k.add_argument("--cores", type=float, help="SM count, if the hardware preset states none")
    k.add_argument("--name", help="name recorded in the set (default: the file name)")
    k.add_argument("--out", required=True, help="JSON file to write")
    k.add_argument("--json", action="store_true", help="print the set as one JSON object")

    z = sub.add_parser("size-chip", help="size a chip by gradient descent (SPAD's prefill or decode chip)",
                       epilog="examples:\n  jaxmodel size-chip --phase prefill\n"
                              "  jaxmodel size-chip --phase decode --objective tdp_w --grid --sensitivity\n"
                              "  jaxmodel size-chip --phase prefill --ratio 1.2 --scale smoke --json\n\n"
                              "Problem (jaxmodel/spad_sizing.py): from the H100, free cores, array rows/cols, vector "
                              "width, L1, L2 and the memory (HBM3 stacks or GDDR7 devices); BLOOM-176B FP16 TP 8; "
                              "prefill chip: batch 2 x 1024 prefill no slower than ratio x the H100's and a decode "
                              "batch of 8 fits; decode chip: batch 64 decode step no slower than ratio x the "
                              "H100's, memory >= the H100's, and prefill batch 2 fits.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    z.add_argument("--phase", default="prefill", choices=["prefill", "decode"])
    z.add_argument("--objective", default="total_cost_usd",
                   choices=["total_cost_usd", "tdp_w", "die_area_mm2", "cost_per_throughput", "usd_per_mtok"])
    z.add_argument("--ratio", type=float, default=1.0, help="allowed phase time relative to the H100's (> 0)")
    z.add_argument("--scale", default="full", choices=["full", "smoke"],
                   help="design space: full (~1.45 M designs) or smoke (coarse, ~72 k)")
    z.add_argument("--starts", type=int, default=32, help="random starts of the gradient method")
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--grid", action="store_true", help="also run the exhaustive grid search and compare")
    z.add_argument("--sensitivity", action="store_true", help="print gradients and one-step changes per knob")
    z.add_argument("--json", action="store_true", help="print one JSON object")

    v = sub.add_parser("provision", help="cheapest serving cluster meeting latency SLOs on a request trace",
                       epilog="examples:\n  jaxmodel provision --trace conv --rate 70\n"
                              "  jaxmodel provision --trace code --prefill-chip spad-prefill --decode-chip spad-decode "
                              "--fidelity systolic\n"
                              "  jaxmodel provision --trace my_trace.csv --rate 20 --mode colocated --slo tight --json\n\n"
                              "Traces: code / conv (Azure LLM inference 2023, from ../shared/data or "
                              "$JAXMODEL_SHARED_DATA) or a CSV (arrival_s, input_tokens, output_tokens). "
                              "SLOs (SPAD Table 5): P90/P99 slowdown of TTFT and TBT over the request alone on "
                              "the reference machine. Exit status 1 when no configuration meets them.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--trace", default="conv", help="code, conv, or a CSV trace file")
    v.add_argument("--rate", type=float, default=70.0, help="request rate (req/s, > 0)")
    v.add_argument("--arrivals", default="poisson", choices=["poisson", "scaled"],
                   help="poisson: Poisson arrivals, lengths drawn from the trace (SplitwiseSim, SPAD); "
                        "scaled: the trace's own gaps scaled to the rate")
    v.add_argument("--requests", type=int, help="use the first N requests of the trace")
    v.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    v.add_argument("--model", default="bloom-176b")
    v.add_argument("--tp", type=int, default=8, help="tensor parallelism of a machine")
    v.add_argument("--dtype", default="fp16", choices=sorted(DTYPE_BYTES))
    v.add_argument("--mode", default="disaggregated", choices=["disaggregated", "colocated"])
    v.add_argument("--prefill-chip", help="hardware preset of the prefill pool (default: --reference)")
    v.add_argument("--decode-chip", help="hardware preset of the decode pool (default: --reference)")
    v.add_argument("--chip", help="hardware preset of a co-located cluster (default: --reference)")
    v.add_argument("--reference", default="h100-sxm", help="machine of the SLO baseline and of cost units")
    v.add_argument("--slo", default="normal", choices=["loose", "normal", "tight"])
    v.add_argument("--fidelity", default="roofline", choices=["roofline", "systolic"])
    v.add_argument("--calibration", default="ideal", help="efficiency set of the iteration times")
    v.add_argument("--objective", default="cost", choices=["cost", "tdp"])
    v.add_argument("--max-prefill", type=int, default=40, help="largest prefill pool tried")
    v.add_argument("--max-decode", type=int, default=40, help="largest decode pool tried")
    v.add_argument("--max-machines", type=int, default=60, help="largest co-located cluster tried")
    v.add_argument("--csv", help="write every simulated configuration to this CSV file")
    v.add_argument("--json", action="store_true", help="print one JSON object")

    _sweep_parser(sub)
    _plot_parser(sub)
    sub.add_parser("list", help="available presets", epilog="example:\n  jaxmodel list",
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


COMMANDS = {"predict": cmd_predict, "sweep": cmd_sweep, "chip": cmd_chip, "bench": cmd_bench, "explore": cmd_explore,
            "calibrate": cmd_calibrate, "size-chip": cmd_size_chip,
            "provision": cmd_provision, "plot": cmd_plot, "list": cmd_list}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"jaxmodel: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
