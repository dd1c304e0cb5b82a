"""The main job: explore H100-like chip variants for serving a model under latency targets.

About a million design points: memory bandwidth x bf16 tensor peak x memory capacity (the
chip) x batch x tensor parallelism (the deployment). For every chip the best deployment is
the one with the most output tokens per second per device that fits in memory and meets
the TTFT and TPOT targets. The job prints the best chips, then the *lean* ones: chips that
match the reference chip's best throughput while needing no more bandwidth, compute or
capacity than any other such chip (Pareto-minimal), which is the question SPAD asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import status
from .presets import load_hardware, load_model
from .results import pareto_mask
from .sweep import grid_sweep
from .workload import Workload

BW, FLOPS, CAP = "system.chip.mem_bw_Bps", "system.chip.tensor_flops.bf16", "system.chip.mem_capacity_bytes"
BATCH, TP = "workload.batch", "workload.tp"


@dataclass(frozen=True)
class ExploreConfig:
    model: str = "llama-3-70b"
    hardware: str = "h100-sxm"
    input_tokens: int = 2048
    output_tokens: int = 256
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.040
    resolution: int = 40  # values per chip axis (bandwidth, compute)
    out_dir: str = "explore_out"


def chip_grid(cfg: ExploreConfig) -> dict:
    n = cfg.resolution
    return {
        BW: np.linspace(1.0e12, 8.0e12, n),
        FLOPS: np.linspace(200e12, 2400e12, n),
        CAP: np.array([40, 48, 64, 80, 96, 120, 141, 160, 180, 192], dtype=float) * 1e9,
        BATCH: np.array([1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512], dtype=float),
        TP: np.array([1.0, 2.0, 4.0, 8.0]),
    }


def best_per_chip(df: pd.DataFrame, cfg: ExploreConfig) -> pd.DataFrame:
    """For each chip, the feasible deployment with the highest throughput per device."""
    ok = (df["status"] == status.OK) & (df["ttft_s"] <= cfg.ttft_slo_s) & (df["tpot_s"] <= cfg.tpot_slo_s)
    feasible = df[ok]
    idx = feasible.groupby([BW, FLOPS, CAP])["throughput_per_device_tok_s"].idxmax()
    return feasible.loc[idx].reset_index(drop=True)


def pareto_minimal(chips: pd.DataFrame) -> pd.DataFrame:
    """Chips not dominated in (bandwidth, compute, capacity): none other needs less of all three."""
    return chips[pareto_mask(chips[[BW, FLOPS, CAP]].to_numpy(float), [False, False, False])]


def _display(df: pd.DataFrame) -> pd.DataFrame:
    df = df.astype({c: float for c in (BW, FLOPS, CAP, "throughput_per_device_tok_s", "ttft_s", "tpot_s")})
    return pd.DataFrame({
        "mem BW (TB/s)": (df[BW] / 1e12).round(2),
        "bf16 (TFLOP/s)": (df[FLOPS] / 1e12).round(0),
        "capacity (GB)": (df[CAP] / 1e9).round(1),
        "TP": df[TP].astype(int),
        "batch": df[BATCH].astype(int),
        "tok/s/device": df["throughput_per_device_tok_s"].round(1),
        "TTFT (s)": df["ttft_s"].round(3),
        "TPOT (ms)": (df["tpot_s"] * 1e3).round(2),
    }).reset_index(drop=True)


def plot(chips: pd.DataFrame, reference: pd.Series | None, cfg: ExploreConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cap = 80e9
    at_cap = chips[np.isclose(chips[CAP], cap)]
    bws, flops = np.unique(chips[BW]), np.unique(chips[FLOPS])
    heat = np.full((len(flops), len(bws)), np.nan)
    for _, row in at_cap.iterrows():
        heat[np.searchsorted(flops, row[FLOPS]), np.searchsorted(bws, row[BW])] = row["throughput_per_device_tok_s"]
    fig, ax = plt.subplots(figsize=(7, 5.5))
    mesh = ax.pcolormesh(bws / 1e12, flops / 1e12, heat, shading="nearest", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="best output tokens/s per device")
    if reference is not None:
        ax.contour(bws / 1e12, flops / 1e12, heat, levels=[reference["throughput_per_device_tok_s"]],
                   colors="white", linewidths=1.5)
        ax.plot(reference[BW] / 1e12, reference[FLOPS] / 1e12, "r*", ms=14, label=f"{cfg.hardware} (reference)")
        ax.legend(loc="lower right")
    ax.set_xlabel("memory bandwidth (TB/s)")
    ax.set_ylabel("bf16 tensor peak (TFLOP/s)")
    ax.set_title(f"{cfg.model}: best deployment per chip with {cap / 1e9:.0f} GB\n"
                 f"TTFT <= {cfg.ttft_slo_s:g} s, TPOT <= {cfg.tpot_slo_s * 1e3:g} ms, "
                 f"{cfg.input_tokens} in / {cfg.output_tokens} out; white line: reference throughput",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: ExploreConfig = ExploreConfig(), echo=print) -> dict:
    arch = load_model(cfg.model)
    system = load_hardware(cfg.hardware).datasheet()
    wl = Workload(batch=1, input_tokens=cfg.input_tokens, output_tokens=cfg.output_tokens)
    grid = chip_grid(cfg)
    df, stats = grid_sweep(arch, wl, system, grid=grid, return_stats=True,
                           metrics=("ttft_s", "tpot_s", "throughput_per_device_tok_s", "memory_bytes", "status"))
    echo(f"swept {stats.points:,} design points of {cfg.model} in {stats.run_s:.2f} s "
         f"({stats.points_per_s:,.0f} points/s after {stats.compile_s:.1f} s compilation)")
    chips = best_per_chip(df, cfg)
    echo(f"{len(chips):,} of {df[[BW, FLOPS, CAP]].drop_duplicates().shape[0]:,} chip variants can meet "
         f"TTFT <= {cfg.ttft_slo_s:g} s and TPOT <= {cfg.tpot_slo_s * 1e3:g} ms "
         f"({cfg.input_tokens} prompt / {cfg.output_tokens} output tokens)")

    # The reference chip, evaluated on the same deployment grid.
    chip = system.chip
    ref_grid = {k: v for k, v in grid.items() if k in (BATCH, TP)}
    ref_df = grid_sweep(arch, wl, system, grid=ref_grid,
                        metrics=("ttft_s", "tpot_s", "throughput_per_device_tok_s", "memory_bytes", "status"))
    for key, value in ((BW, chip.mem_bw_Bps), (FLOPS, chip.tensor_flops["bf16"]), (CAP, chip.mem_capacity_bytes)):
        ref_df[key] = float(value)
    ref_best = best_per_chip(ref_df, cfg)
    reference = ref_best.iloc[0] if len(ref_best) else None

    # Capacity beyond what the best deployment needs changes nothing: show each
    # (bandwidth, compute) pair once, with the least capacity that reaches its throughput.
    top = (chips.sort_values(["throughput_per_device_tok_s", CAP], ascending=[False, True])
           .drop_duplicates([BW, FLOPS]).head(10))
    echo("\nbest chips (highest tokens/s per device):")
    echo(_display(top).to_string())
    lean = pd.DataFrame()
    if reference is not None:
        echo(f"\nreference {cfg.hardware}:")
        echo(_display(ref_best).to_string())
        target = reference["throughput_per_device_tok_s"]
        lean = pareto_minimal(chips[chips["throughput_per_device_tok_s"] >= target])
        lean = lean.sort_values([FLOPS, BW, CAP])
        echo(f"\nlean chips matching the reference's {target:,.0f} tok/s/device with the least "
             f"bandwidth, compute and capacity (Pareto-minimal, {len(lean)} chips):")
        echo(_display(lean.head(15)).to_string())
    else:
        echo(f"\nthe reference {cfg.hardware} meets no target on this grid")

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chips.to_csv(out / "best_per_chip.csv", index=False)
    plot(chips, reference, cfg, out / "explore.png")
    echo(f"\nwrote {out / 'best_per_chip.csv'} and {out / 'explore.png'}")
    return {"points": stats.points, "points_per_s": stats.points_per_s, "chips": chips,
            "reference": reference, "lean": lean}
