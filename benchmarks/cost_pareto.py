"""Cost-vs-latency Pareto fronts of >= 1M H100-derived chips at the systolic fidelity, with SPAD's chips placed.

Workloads follow SPAD (Zhang et al., "SPAD: Specialized Prefill and Decode Hardware for
Disaggregated LLM Inference"): BLOOM-176B, FP16, TP 8 on an 8-chip machine, input 1024
tokens, output 256 tokens (flash attention unless ``--attention unfused``).

* prefill latency: batch 2, metric ``prefill_s`` (whole-batch prefill);
* decode latency: batch 64, metric ``decode_step_s`` (one step at the mean context 1024 + 128).

Chip cost is ``total_cost_usd`` of one chip (die + memory, :mod:`jaxmodel.cost`).

Chip grid (every combination is evaluated on both workloads). Base: the ``h100-sxm`` preset.

* swept leaves (``grid_sweep`` axes): ``system.chip.cores`` (44..192), ``system.chip.array_rows``
  and ``system.chip.array_cols`` (8, 16, 32, 64), ``system.chip.vector_width`` (8, 16, 32, 64),
  ``system.chip.l1_bytes`` (128..512 KiB), ``system.chip.l2_bytes`` (16..64 MiB). The cores,
  L1 and L2 axes are evenly spaced (rounded to whole cores, KiB and MiB) with as many values as
  ``--points`` needs, plus the values of the three presets, so that every preset's chip is
  itself a grid point (its "grid twin").
* memory: packages and bus width are coupled (bus = packages x the technology's bits per
  package), which one Cartesian grid cannot express, so the script runs one ``grid_sweep`` per
  package count with the base system's ``memory.packages`` and ``memory.bus_width_bits`` set
  together (bandwidth, capacity, memory cost and power, PHY area and beachfront all follow).
  HBM3: 2..8 stacks x 1024 bits, 16 GiB and 5.2375 Gb/s per pin as on the H100.
  GDDR7 (memory of the ``spad-prefill`` preset): 8..20 devices x 32 bits, 4 GiB and 32 Gb/s.
  Pin rate and capacity per package are not swept.
* not swept (kept from the H100): 4 lanes per core, clocks, L2 and core-port bandwidth,
  scale-up/out network, 4 nm. The H100's fused-off spares (12 SMs, 10 MiB L2, one HBM site)
  are removed from the swept chips, which are hypothetical chips like SPAD's (whose 10% die
  overhead covers spares); ``--keep-h100-spares`` keeps them.

``--points`` is the number of chip variants over all memory technologies (default 1,000,000;
the grid is rounded up). Points with a non-zero ``status`` (does not fit device memory, memory
PHYs over the die's beachfront, die over the reticle) are excluded from the fronts. At decode
batch 64 weights, KV cache and prefill activations take ~95 GiB per chip, more than 90% of five
HBM3 stacks or of any GDDR7 configuration that fits the beachfront, so the three presets are
infeasible there; each preset failing only the memory-capacity check is therefore also placed
against the front of all variants that fail at most that check ("capacity ignored").
``--decode-batch 32`` makes the HBM3 presets fit.

    python benchmarks/cost_pareto.py [--points N] [--memory hbm3,gddr7] [--plot fronts.png]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd

import jaxmodel as jm
from jaxmodel import memory_tech, status
from jaxmodel.sweep import grid_sweep

MODEL = "bloom-176b"
PRESETS = ("spad-prefill", "spad-decode", "h100-sxm")
KiB, MiB = 2.0**10, 2.0**20

CORES = "system.chip.cores"
ROWS = "system.chip.array_rows"
COLS = "system.chip.array_cols"
VW = "system.chip.vector_width"
L1 = "system.chip.l1_bytes"
L2 = "system.chip.l2_bytes"
CHIP_PATHS = (CORES, ROWS, COLS, VW, L1, L2)
ARRAY_SIZES = (8.0, 16.0, 32.0, 64.0)
VECTOR_WIDTHS = (8.0, 16.0, 32.0, 64.0)
#: Package counts swept per memory technology, and which preset's memory the sweep starts from.
MEMORIES = {
    "hbm3": ("h100-sxm", tuple(range(2, 9))),
    "gddr7": ("spad-prefill", tuple(range(8, 21, 2))),
}
STATUS_BITS = (status.DOES_NOT_FIT, status.OVER_BEACHFRONT, status.OVER_RETICLE,
               status.INVALID_TP, status.INVALID_EP, status.INVALID_PP)
#: Every sweep keeps both latencies so that all of them (and the presets) share compiled programs.
METRICS = ("prefill_s", "decode_step_s", "total_cost_usd", "die_area_mm2", "tdp_w", "status")


# ---- design space -------------------------------------------------------------------------------
def chip_grid(n: int, presets: dict) -> dict:
    """Cores, arrays, vector width, L1 and L2 axes with ``n`` even steps on the continuous ones,
    plus each preset's own values."""
    def axis(lo, hi, unit, leaf):
        even = np.round(np.linspace(lo, hi, n)) * unit
        own = [float(getattr(p.chip, leaf)) for p in presets.values()]
        return np.unique(np.concatenate([even, own]))

    return {
        CORES: axis(44, 192, 1.0, "cores"),
        ROWS: np.array(ARRAY_SIZES),
        COLS: np.array(ARRAY_SIZES),
        VW: np.array(VECTOR_WIDTHS),
        L1: axis(128, 512, KiB, "l1_bytes"),
        L2: axis(16, 64, MiB, "l2_bytes"),
    }


def size_grid(points: int, techs, presets: dict) -> dict:
    """The smallest chip grid whose variants over all memory configurations reach ``points``."""
    configs = sum(len(MEMORIES[t][1]) for t in techs)
    for n in range(2, 10_000):
        grid = chip_grid(n, presets)
        if math.prod(len(v) for v in grid.values()) * configs >= points:
            return grid
    raise ValueError(f"--points {points} is too large")


def set_leaf(tree, where, value):
    return eqx.tree_at(where, tree, jnp.asarray(value, dtype=where(tree).dtype))


def memory_base(tech: str, h100, presets: dict, keep_spares: bool):
    """The H100 with the memory of the technology's source preset and, unless kept, no spares."""
    system = h100
    source = MEMORIES[tech][0]
    if source != "h100-sxm":
        system = eqx.tree_at(lambda s: s.chip.memory, system, presets[source].chip.memory)
    if not keep_spares:
        for leaf in ("spare_cores", "spare_l2_bytes", "spare_memory_packages"):
            system = set_leaf(system, lambda s, leaf=leaf: getattr(s.chip.die, leaf), 0.0)
    return system


def with_packages(system, tech: str, packages: int):
    bits = memory_tech.technology(tech).bits_per_package
    system = set_leaf(system, lambda s: s.chip.memory.packages, float(packages))
    return set_leaf(system, lambda s: s.chip.memory.bus_width_bits, float(packages) * bits)


def workloads(args) -> dict:
    def wl(batch):
        return jm.Workload(batch=batch, input_tokens=args.input_tokens, output_tokens=args.output_tokens, tp=8,
                           dtype="fp16", attention_impl=args.attention)

    return {"prefill": (wl(args.prefill_batch), "prefill_s"), "decode": (wl(args.decode_batch), "decode_step_s")}


# ---- sweeps -------------------------------------------------------------------------------------
def sweep(arch, wls: dict, bases: dict, grid: dict, chunk: int):
    """One ``grid_sweep`` per (memory technology, package count, workload)."""
    frames = {name: [] for name in wls}
    timing = []
    for tech, base in bases.items():
        for name, (wl, _metric) in wls.items():
            compile_s = run_s = 0.0
            n = 0
            for packages in MEMORIES[tech][1]:
                df, st = grid_sweep(arch, wl, with_packages(base, tech, packages), grid=grid, fidelity="systolic",
                                    metrics=list(METRICS), chunk_size=chunk, return_stats=True)
                df["memory"] = tech
                df["packages"] = float(packages)
                frames[name].append(df)
                compile_s += st.compile_s
                run_s += st.run_s
                n += st.points
                print(f"  {tech} x{packages:<2d} {name:7s} {st.points:,} points in {st.run_s:.1f} s", file=sys.stderr)
            timing.append((tech, name, n, compile_s, run_s))
    out = {}
    for name, parts in frames.items():
        df = pd.concat(parts, ignore_index=True)
        df["memory"] = df["memory"].astype("category")
        out[name] = df
    return out, timing


def evaluate_presets(arch, wls: dict, presets: dict) -> pd.DataFrame:
    rows = []
    for pname, system in presets.items():
        for name, (wl, metric) in wls.items():
            r = grid_sweep(arch, wl, system, grid={}, fidelity="systolic", metrics=list(METRICS)).iloc[0]
            rows.append({"preset": pname, "workload": name, "latency_s": float(r[metric]),
                         "cost_usd": float(r["total_cost_usd"]), "area_mm2": float(r["die_area_mm2"]),
                         "status": int(r["status"])})
    return pd.DataFrame(rows)


# ---- fronts -------------------------------------------------------------------------------------
def pareto(cost: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (lower cost and lower latency), by increasing cost."""
    order = np.lexsort((latency, cost))
    lat = latency[order]
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], lat[:-1]]))
    return order[lat < best_before]


def place(front_cost: np.ndarray, front_lat: np.ndarray, cost: float, latency: float, rtol: float = 1e-4) -> dict:
    """Where a (cost, latency) point lies relative to a front sorted by increasing cost."""
    i = np.searchsorted(front_cost, cost * (1 + rtol), side="right") - 1
    best = front_lat[i] if i >= 0 else np.inf
    reach = np.nonzero(front_lat <= latency * (1 + rtol))[0]
    cheapest = front_cost[reach[0]] if reach.size else np.nan
    if not np.isfinite(best):
        where = "left of the front (cheaper than every feasible swept chip)"
    elif abs(latency / best - 1) <= rtol:
        where = "on the front"
    elif latency < best:
        where = "below the front (faster than every feasible swept chip of its cost or less)"
    else:
        where = "above the front (dominated)"
    return {"where": where, "front_latency_at_cost": best, "latency_ratio": latency / best,
            "front_cost_at_latency": cheapest, "cost_ratio": cost / cheapest}


def thin(n: int, rows: int) -> np.ndarray:
    return np.unique(np.round(np.linspace(0, n - 1, min(n, rows))).astype(int))


def chip_columns(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "mem": df["memory"].astype(str).to_numpy(),
        "pkgs": df["packages"].astype(int).to_numpy(),
        "cores": df[CORES].round().astype(int).to_numpy(),
        "array": [f"{int(r)}x{int(c)}" for r, c in zip(df[ROWS], df[COLS])],
        "vw": df[VW].astype(int).to_numpy(),
        "L1_KiB": (df[L1] / KiB).round().astype(int).to_numpy(),
        "L2_MiB": (df[L2] / MiB).round(1).to_numpy(),
        "area_mm2": df["die_area_mm2"].round(0).astype(int).to_numpy(),
        "tdp_w": df["tdp_w"].round(0).astype(int).to_numpy(),
    }, index=df.index)


def grid_twin(df: pd.DataFrame, preset, tech: str) -> pd.Series | None:
    """The swept row with exactly the preset's chip parameters (None if not in this sweep)."""
    chip = preset.chip
    mem = chip.memory
    if mem.technology != tech or tech not in set(df["memory"].astype(str).unique()):
        return None
    source = jm.load_hardware(MEMORIES[tech][0]).chip.memory
    bits = memory_tech.technology(tech).bits_per_package
    if not (np.isclose(float(mem.pin_rate_bps), float(source.pin_rate_bps))
            and np.isclose(float(mem.capacity_per_package_bytes), float(source.capacity_per_package_bytes))
            and np.isclose(float(mem.bus_width_bits), float(mem.packages) * bits)):
        return None
    mask = (df["memory"] == tech) & np.isclose(df["packages"], float(mem.packages))
    for path in CHIP_PATHS:
        mask &= np.isclose(df[path], float(getattr(chip, path.rsplit(".", 1)[1])), rtol=1e-6)
    hits = df[mask]
    return hits.iloc[0] if len(hits) else None


def placement(front_cost, front_lat, p) -> str:
    pl = place(front_cost, front_lat, p["cost_usd"], p["latency_s"])
    if np.isfinite(pl["front_latency_at_cost"]):
        at_cost = f"{pl['front_latency_at_cost'] * 1e3:,.3f} ms (ratio {pl['latency_ratio']:.3f})"
    else:
        at_cost = "none"
    if np.isfinite(pl["front_cost_at_latency"]):
        at_lat = f"${pl['front_cost_at_latency']:,.0f} (ratio {pl['cost_ratio']:.3f})"
    else:
        at_lat = "none"
    return (f"{pl['where']}; front at <= ${p['cost_usd']:,.0f}: {at_cost}; "
            f"front at <= {p['latency_s'] * 1e3:,.3f} ms: {at_lat}")


def report(name: str, metric: str, df: pd.DataFrame, preset_rows: pd.DataFrame, presets: dict, rows: int,
           keep_spares: bool) -> tuple:
    print(f"\n=== {name}: total_cost_usd vs {metric} ===")
    code = df["status"].to_numpy()
    ok = code == 0
    print(f"{len(df):,} chip variants; feasible {int(ok.sum()):,}; excluded {int((~ok).sum()):,}")
    counts = pd.DataFrame({status.describe(bit): df.groupby("memory", observed=True)["status"]
                           .apply(lambda s, bit=bit: int(((s.to_numpy() & bit) != 0).sum()))
                           for bit in STATUS_BITS})
    counts["excluded"] = df.groupby("memory", observed=True)["status"].apply(lambda s: int((s != 0).sum()))
    counts["variants"] = df.groupby("memory", observed=True).size()
    counts.loc["all"] = counts.sum()
    print("excluded points by reason (a point may have several):")
    print(counts.to_string())

    feas = df[ok]
    cost = feas["total_cost_usd"].to_numpy(np.float64)
    lat = feas[metric].to_numpy(np.float64)
    idx = pareto(cost, lat)
    front = feas.iloc[idx]
    fc, fl = cost[idx], lat[idx]
    shown = thin(len(front), rows)
    table = chip_columns(front.iloc[shown])
    table.insert(0, "latency_ms", (fl[shown] * 1e3).round(3))
    table.insert(0, "cost_usd", fc[shown].round(0).astype(int))
    print(f"Pareto front: {len(front)} points (cost ${fc[0]:,.0f}..${fc[-1]:,.0f}, latency "
          f"{fl[0] * 1e3:,.2f}..{fl[-1] * 1e3:,.2f} ms); {len(shown)} shown")
    print(table.to_string(index=False))

    print("presets (evaluated alone; latency ratio = preset / front's best latency at <= its cost; cost ratio = "
          "preset / front's cheapest cost at <= its latency):")
    relaxed = None
    for _, p in preset_rows[preset_rows["workload"] == name].iterrows():
        flag = "" if p["status"] == 0 else f" [infeasible: {status.describe(p['status'])}]"
        print(f"  {p['preset']:13s} ${p['cost_usd']:,.0f}  {p['latency_s'] * 1e3:,.3f} ms  {p['area_mm2']:.0f} mm2"
              f"{flag}: {placement(fc, fl, p)}")
        if p["status"] == status.DOES_NOT_FIT:
            if relaxed is None:
                # Points whose only problem is memory capacity count too: what the preset's
                # latency would be up against if it (and they) had enough memory.
                loose = df[(code & ~status.DOES_NOT_FIT) == 0]
                lc = loose["total_cost_usd"].to_numpy(np.float64)
                ll = loose[metric].to_numpy(np.float64)
                i = pareto(lc, ll)
                relaxed = (lc[i], ll[i])
                print(f"    (capacity ignored: front of the {len(loose):,} variants that fail at most does_not_fit, "
                      f"{len(i)} points)")
            print(f"    capacity ignored: {placement(*relaxed, p)}")
        twin = grid_twin(df, presets[p["preset"]], presets[p["preset"]].chip.memory.technology)
        if twin is not None:
            note = ""
            if (p["preset"] == "h100-sxm") != keep_spares:
                note = f" ({'with' if keep_spares else 'without'} the H100's spare SMs, L2 and HBM site)"
            print(f"    grid twin{note}: ${twin['total_cost_usd']:,.0f}  {twin[metric] * 1e3:,.3f} ms  "
                  f"status {status.describe(twin['status'])}")
    return feas, fc, fl


def plot(path: str, results: dict, preset_rows: pd.DataFrame) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed; --plot {path} skipped")
        return
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5))
    rng = np.random.default_rng(0)
    for ax, (name, (metric, feas, fc, fl)) in zip(np.atleast_1d(axes), results.items()):
        sample = feas.iloc[rng.permutation(len(feas))[:100_000]]
        for tech, color in (("hbm3", "tab:blue"), ("gddr7", "tab:orange")):
            part = sample[sample["memory"] == tech]
            if len(part):
                ax.scatter(part["total_cost_usd"], part[metric] * 1e3, s=1, alpha=0.15, color=color,
                           label=f"{tech} (feasible, sample)", rasterized=True)
        ax.step(fc, fl * 1e3, where="post", color="k", lw=1.5, label="Pareto front")
        rows = preset_rows[preset_rows["workload"] == name].iterrows()
        for (_, p), marker, color in zip(rows, "o^s", ("tab:red", "tab:green", "tab:purple")):
            ok = p["status"] == 0
            label = p["preset"] + ("" if ok else " (infeasible: " + status.describe(p["status"]) + ")")
            ax.scatter([p["cost_usd"]], [p["latency_s"] * 1e3], marker=marker, s=80, zorder=5, label=label,
                       facecolors=color if ok else "none", edgecolors="k" if ok else color, linewidths=1.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("chip cost, die + memory (USD)")
        ax.set_ylabel(f"{metric} (ms)")
        ax.set_title(f"BLOOM-176B TP8 {name}")
        legend = ax.legend(fontsize=7)
        for handle in legend.legend_handles:
            if hasattr(handle, "set_sizes"):
                handle.set_sizes([30])
            handle.set_alpha(1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="chip variants over all memories (min)")
    parser.add_argument("--memory", default="hbm3,gddr7", help="comma-separated: hbm3, gddr7")
    parser.add_argument("--prefill-batch", type=float, default=2.0)
    parser.add_argument("--decode-batch", type=float, default=64.0)
    parser.add_argument("--input-tokens", type=float, default=1024.0)
    parser.add_argument("--output-tokens", type=float, default=256.0)
    parser.add_argument("--attention", default="flash", choices=("flash", "unfused"))
    parser.add_argument("--keep-h100-spares", action="store_true")
    parser.add_argument("--rows", type=int, default=25, help="front rows printed per workload")
    parser.add_argument("--chunk-size", type=int, default=1 << 15)
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of both fronts (needs matplotlib)")
    args = parser.parse_args()
    techs = [t.strip() for t in args.memory.split(",") if t.strip()]
    for t in techs:
        if t not in MEMORIES:
            parser.error(f"--memory: unknown technology {t!r} (have {', '.join(MEMORIES)})")

    t_wall = time.perf_counter()
    arch = jm.load_model(MODEL)
    presets = {name: jm.load_hardware(name) for name in PRESETS}
    h100 = presets["h100-sxm"]
    wls = workloads(args)
    grid = size_grid(args.points, techs, presets)
    bases = {t: memory_base(t, h100, presets, args.keep_h100_spares) for t in techs}
    per_config = math.prod(len(v) for v in grid.values())
    variants = per_config * sum(len(MEMORIES[t][1]) for t in techs)

    print(f"{MODEL} fp16 TP8, input {args.input_tokens:.0f}, output {args.output_tokens:.0f}, "
          f"{args.attention} attention; prefill batch {args.prefill_batch:g} (prefill_s), "
          f"decode batch {args.decode_batch:g} (decode_step_s); systolic fidelity")
    print(f"chip grid: {variants:,} variants = {per_config:,} per memory configuration x "
          + " + ".join(f"{len(MEMORIES[t][1])} {t} ({MEMORIES[t][1][0]}..{MEMORIES[t][1][-1]} packages)"
                       for t in techs))
    for path, values in grid.items():
        unit = MiB if path == L2 else KiB if path == L1 else 1.0
        print(f"  {path:24s} {len(values):3d}: {', '.join(f'{v / unit:g}' for v in values)}"
              + (" MiB" if path == L2 else " KiB" if path == L1 else ""))
    print(f"  spares: {'kept as on the H100' if args.keep_h100_spares else 'none'}")

    results, timing = sweep(arch, wls, bases, grid, args.chunk_size)
    print("\nsweep timing (compile is paid once per memory technology; later sweeps reuse the program):")
    for tech, name, n, compile_s, run_s in timing:
        print(f"  {tech:6s} {name:7s} {n:>10,} points  compile {compile_s:6.1f} s  run {run_s:7.1f} s  "
              f"{n / run_s:>9,.0f} points/s")
    n_all = sum(t[2] for t in timing)
    c_all = sum(t[3] for t in timing)
    r_all = sum(t[4] for t in timing)
    print(f"  total  {n_all:,} point evaluations: compile {c_all:.1f} s, run {r_all:.1f} s, "
          f"{n_all / r_all:,.0f} points/s")

    t0 = time.perf_counter()
    preset_rows = evaluate_presets(arch, wls, presets)
    print(f"presets evaluated in {time.perf_counter() - t0:.1f} s (incl. compile)")

    fronts = {}
    for name, (_, metric) in wls.items():
        feas, fc, fl = report(name, metric, results[name], preset_rows, presets, args.rows, args.keep_h100_spares)
        fronts[name] = (metric, feas, fc, fl)
    if args.plot:
        plot(args.plot, fronts, preset_rows)
    print(f"\nwall time {time.perf_counter() - t_wall:.1f} s")


if __name__ == "__main__":
    main()
