"""SPAD's design method as two sizing problems: a prefill chip and a decode chip derived from
the H100 by minimizing hardware cost (Zhang et al., "SPAD: Specialized Prefill and Decode
Hardware for Disaggregated LLM Inference", Sec. 5 and Table 3).

Both start from the ``h100-sxm`` preset with its fused-off spares removed (the new chips are
hypothetical, like SPAD's, whose 10% die overhead covers spares) and free the leaves SPAD's
design-space exploration moved (Figs. 5 and 6): cores, systolic-array rows and columns, vector
width, L1 per core and L2, and the memory: HBM3 stacks as on the H100 or GDDR7 devices as on
SPAD's prefill chip (a relaxed choice between the two, then package counts). Clocks, lanes,
on-chip bandwidths, process and network stay the H100's. Workloads are SPAD's: BLOOM-176B,
FP16, TP 8 on an 8-chip machine, attention unfused as LLMCompass runs it.

* **Prefill chip**: prefill of batch 2 x 1024 tokens no slower than the H100, and still able to
  run decode: a decode batch of 8 at 1024 + 256 tokens fits in memory.
* **Decode chip**: one decode step of batch 64 at the mean context (1024 + 128) no slower than
  the H100, device memory at least the H100's (SPAD keeps 80 GB; at batch 64 BLOOM's KV cache
  exceeds even the H100's capacity, which LLMCompass does not check), and still able to run
  prefill: batch 2 x 1024 fits.

SPAD averages performance over its Fig. 7 batch x sequence grid, whose axes are not published;
:data:`FIG7_PREFILL` and :data:`FIG7_DECODE` are the grids used here to report it.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import cost, inference
from . import optimize as opt
from .efficiency import ideal
from .presets import load_hardware, load_model
from .workload import Workload

KiB, MiB = 2.0**10, 2.0**20
MODEL = "bloom-176b"
#: SPAD Table 3 (prefill chip, decode chip, H100 as SPAD models it).
TABLE3 = {
    "spad-prefill": {"cores": 128, "array": "32x32", "vector_width": 16, "l1_KiB": 320, "l2_MiB": 32,
                     "memory": "GDDR7 x16, 64 GB, 2048 GB/s", "die_mm2": 784, "cost_usd": 493, "tdp_w": 596,
                     "prefill_perf": 1.08, "decode_perf": 0.80},
    "spad-decode": {"cores": 144, "array": "16x16", "vector_width": 8, "l1_KiB": 128, "l2_MiB": 30,
                    "memory": "HBM3 x5, 80 GB, 3352 GB/s", "die_mm2": 520, "cost_usd": 907, "tdp_w": 507,
                    "prefill_perf": 0.69, "decode_perf": 0.97},
    "h100-sxm": {"cores": 132, "array": "16x32", "vector_width": 32, "l1_KiB": 256, "l2_MiB": 50,
                 "memory": "HBM3 x5, 80 GB, 3352 GB/s", "die_mm2": 814, "cost_usd": 1035, "tdp_w": 700,
                 "prefill_perf": 1.0, "decode_perf": 1.0},
}
#: Batch x prompt length grids the finished chips are scored on (Fig. 7's range).
FIG7_PREFILL = [(b, s) for b in (1.0, 2.0, 4.0, 8.0) for s in (256.0, 1024.0, 4096.0)]
FIG7_DECODE = [(b, s) for b in (8.0, 16.0, 32.0, 64.0, 128.0) for s in (512.0, 1024.0, 2048.0)]


def workload(batch: float, input_tokens: float, output_tokens: float = 256.0) -> Workload:
    return Workload(batch=batch, input_tokens=input_tokens, output_tokens=output_tokens, tp=8, dtype="fp16",
                    attention_impl="unfused")


def base_system(name: str = "h100-sxm"):
    """A preset with its fused-off spare cores, L2 and memory sites removed."""
    system = load_hardware(name)
    for leaf in ("spare_cores", "spare_l2_bytes", "spare_memory_packages"):
        system = eqx.tree_at(lambda s, leaf=leaf: getattr(s.chip.die, leaf), system, jnp.asarray(0.0))
    return system


def knobs(scale: str = "full") -> list[opt.Knob]:
    """The freed chip leaves. ``"full"``: cores in steps of 4 from 64 to 192, arrays and vector
    width 8..64 (powers of two), L1 128..512 KiB by 64 KiB, L2 16..64 MiB by 8 MiB;
    ``"smoke"``: coarser steps (for tests and notebooks in CI)."""
    if scale not in ("full", "smoke"):
        raise ValueError(f"scale must be 'full' or 'smoke' (got {scale!r})")
    coarse = scale == "smoke"
    return [
        opt.integer("chip.cores", 64, 192, 32 if coarse else 4),
        opt.powers_of_two("chip.array_rows", 8, 64),
        opt.powers_of_two("chip.array_cols", 8, 64),
        opt.powers_of_two("chip.vector_width", 8, 64),
        opt.integer("chip.l1_bytes", 128 * KiB, 512 * KiB, (128 if coarse else 64) * KiB, log=True),
        opt.integer("chip.l2_bytes", 16 * MiB, 64 * MiB, (16 if coarse else 8) * MiB, log=True),
    ]


def memories() -> list[opt.MemoryOption]:
    """HBM3 stacks as on the H100 (2..8) and GDDR7 devices as on SPAD's prefill chip (8..20)."""
    return [opt.MemoryOption(load_hardware("h100-sxm").chip.memory, range(2, 9)),
            opt.MemoryOption(load_hardware("spad-prefill").chip.memory, range(8, 21, 2))]


def prefill_problem(scale: str = "full", objective="total_cost_usd", ratio: float = 1.0) -> opt.SizingProblem:
    """The prefill chip; ``ratio``: allowed prefill time relative to the H100's."""
    cases = [opt.Case("prefill", workload(2.0, 1024.0), "prefill"),
             opt.Case("decode_fit", workload(8.0, 1024.0), "decode", timed=False)]
    return opt.SizingProblem(load_model(MODEL), base_system(), knobs(scale), cases, objective,
                             [opt.Constraint("prefill.time_s", ratio=ratio)], memories(),
                             reference=load_hardware("h100-sxm"))


def decode_problem(scale: str = "full", objective="total_cost_usd", ratio: float = 1.0) -> opt.SizingProblem:
    """The decode chip; ``ratio``: allowed decode step time relative to the H100's."""
    cases = [opt.Case("decode", workload(64.0, 1024.0), "decode", must_fit=False),
             opt.Case("prefill_fit", workload(2.0, 1024.0), "prefill", timed=False)]
    return opt.SizingProblem(load_model(MODEL), base_system(), knobs(scale), cases, objective,
                             [opt.Constraint("decode.time_s", ratio=ratio),
                              opt.Constraint("decode.memory_ratio", ratio=1.0)], memories(),
                             reference=load_hardware("h100-sxm"))


PROBLEMS = {"prefill": prefill_problem, "decode": decode_problem}


# ---- side by side with SPAD Table 3 -------------------------------------------------------------
def _grid_times(arch, system, grid, phase):
    """Exact seconds of each (batch, prompt length) of ``grid`` in ``phase`` on ``system``."""
    batch = jnp.asarray([b for b, _ in grid])
    seq = jnp.asarray([s for _, s in grid])

    def one(b, s):
        wl = workload(b, s)
        if phase == "prefill":
            return inference.prefill(arch, wl, system, ideal(), None, "systolic")[0]
        return inference.decode(arch, wl, system, ideal(), None, "systolic")[0]

    return jax.vmap(one)(batch, seq)


_grid_times_jit = eqx.filter_jit(_grid_times)


def chips_table(systems: dict) -> pd.DataFrame:
    """One column per chip (``{name: System}``): its knobs, memory, die area, cost and TDP
    (:func:`jaxmodel.cost.chip_metrics`) and its prefill and decode performance relative to
    the H100 (geometric mean over :data:`FIG7_PREFILL` / :data:`FIG7_DECODE` of the H100's
    time over its time, SPAD's "normalized performance"); next to each preset the SPAD
    Table 3 values are in the rows marked "(SPAD)"."""
    arch = load_model(MODEL)
    h100 = load_hardware("h100-sxm")
    ref = {p: np.asarray(_grid_times_jit(arch, h100, g, p)) for p, g in (("prefill", FIG7_PREFILL),
                                                                          ("decode", FIG7_DECODE))}
    columns = {}
    for name, system in systems.items():
        chip = system.chip
        m = {k: float(v) for k, v in cost.chip_metrics(system, system.economics).items()}
        perf = {p: float(np.exp(np.mean(np.log(ref[p] / np.asarray(_grid_times_jit(arch, system, g, p))))))
                for p, g in (("prefill", FIG7_PREFILL), ("decode", FIG7_DECODE))}
        mem = chip.memory
        col = {
            "cores": float(chip.cores), "array": f"{float(chip.array_rows):g}x{float(chip.array_cols):g}",
            "vector_width": float(chip.vector_width), "L1 per core (KiB)": float(chip.l1_bytes) / KiB,
            "L2 (MiB)": float(chip.l2_bytes) / MiB,
            "memory": f"{mem.technology.upper()} x{float(mem.packages):g}",
            "memory (GB)": float(mem.capacity_bytes) / 1e9, "bandwidth (GB/s)": float(mem.bandwidth_Bps) / 1e9,
            "tensor (PFLOP/s)": m["tensor_flops"] / 1e15, "die (mm²)": m["die_area_mm2"],
            "cost (USD)": m["total_cost_usd"], "TDP (W)": m["tdp_w"],
            "prefill perf vs H100": perf["prefill"], "decode perf vs H100": perf["decode"],
        }
        paper = TABLE3.get(name)
        if paper is not None:
            col.update({"die (mm²) (SPAD)": paper["die_mm2"], "cost (USD) (SPAD)": paper["cost_usd"],
                        "TDP (W) (SPAD)": paper["tdp_w"], "prefill perf vs H100 (SPAD)": paper["prefill_perf"],
                        "decode perf vs H100 (SPAD)": paper["decode_perf"]})
        columns[name] = col
    return pd.DataFrame(columns)
