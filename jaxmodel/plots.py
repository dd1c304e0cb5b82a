"""Matplotlib figures of one design point and of sweep results.

One design point (each evaluated once, by :func:`jaxmodel.predict.breakdown` or one
vectorized call):

* :func:`roofline` — every operator on the device's roofline (tensor, vector and memory roofs);
* :func:`latency_breakdown` — time per operator in prefill and in a decode step;
* :func:`memory_breakdown` — weights, KV cache and activations per device over batch sizes;
* :func:`tornado` — a :func:`jaxmodel.sensitivity.one_at_a_time` table.

Sweep results (DataFrames with SI columns, e.g. from :func:`jaxmodel.sweep.grid_sweep`):

* :func:`pareto_front` — all candidates and the Pareto front of two columns;
* :func:`throughput_frontier` — tokens/s per device against tokens/s per user.

Values stay SI until drawn; axis labels carry the display units of
:func:`jaxmodel.results.unit_of`. Every function draws into ``ax`` if given, otherwise into
a new figure, and returns the Axes (:func:`latency_breakdown`: the Figure, as it may hold two
panels).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from . import ops, results
from .architectures import Architecture
from .efficiency import Efficiency
from .hardware import System
from .predict import breakdown, check_parallelism
from .sweep import evaluate_points
from .workload import Workload

BOUND_COLORS = {"tensor": "tab:red", "vector": "tab:purple", "memory": "tab:blue", "network": "tab:green",
                "offload": "tab:orange"}
PHASE_MARKERS = {"prefill": "o", "decode": "^"}
PHASES = ("prefill", "decode")
_CLOUD_LIMIT = 200_000  # above this, the candidate cloud is a random subsample


def _phases(phase: str) -> tuple[str, ...]:
    if phase == "both":
        return PHASES
    if phase not in PHASES:
        raise ValueError(f"phase must be 'both', 'prefill' or 'decode' (got {phase!r})")
    return (phase,)


def _label(column: str) -> tuple[str, float]:
    """Axis label with display unit, and the factor from SI to that unit."""
    unit = results.unit_of(column)
    if unit is None:
        return column, 1.0
    name, label, factor = unit
    return f"{name} ({label})", factor


def _display_value(column: str, value: float) -> str:
    """``value`` (SI) of ``column`` in its display unit, e.g. ``3.35 TB/s``."""
    unit = results.unit_of(column)
    return f"{value:.4g}" if unit is None else f"{value * unit[2]:.4g} {unit[1]}"


def _bound_legend(bounds) -> list:
    return [Patch(color=BOUND_COLORS[b], label=f"{b}-bound") for b in BOUND_COLORS if b in set(bounds)]


def roofline_points(table: pd.DataFrame, phase: str = "both") -> pd.DataFrame:
    """The operators of a :func:`~jaxmodel.predict.breakdown` table that a roofline can place.

    Kept: non-collective rows that run (``repeat > 0``) with FLOPs and bytes. Work is the
    tensor FLOPs of an operator that has any (matmuls, fused attention), else its vector
    FLOPs; bytes are its weight, activation and KV bytes, all of one execution. Columns:
    ``phase``, ``op``, ``bound``, ``unit`` (``tensor`` or ``vector``: which roof applies),
    ``flops``, ``bytes``, ``intensity`` (FLOP/byte) and ``attained_flops`` (FLOP/s).
    """
    rows = table[table["phase"].isin(_phases(phase))]
    on_tensor = rows["flops"] > 0
    work = np.where(on_tensor, rows["flops"], rows["vector_flops"])
    moved = (rows["weight_bytes"] + rows["act_bytes"] + rows["kv_bytes"]).to_numpy(float)
    keep = ((rows["kind"] != ops.COLLECTIVE) & (rows["repeat"] > 0) & (work > 0) & (moved > 0)
            & (rows["time_s"] > 0)).to_numpy()
    out = pd.DataFrame({
        "phase": rows["phase"].to_numpy()[keep],
        "op": rows["op"].to_numpy()[keep],
        "bound": rows["bound"].to_numpy()[keep],
        "unit": np.where(on_tensor, "tensor", "vector")[keep],
        "flops": work[keep],
        "bytes": moved[keep],
    })
    out["intensity"] = out["flops"] / out["bytes"]
    out["attained_flops"] = out["flops"] / rows["time_s"].to_numpy(float)[keep]
    return out


def roofline(arch: Architecture, wl: Workload, system: System, efficiency: Efficiency | None = None, *,
             phase: str = "both", fidelity: str = "roofline", ax=None):
    """Log-log roofline of one device with every operator of the point as a marker.

    x: arithmetic intensity (FLOP per byte of weights, activations and KV cache moved by one
    execution); y: attained FLOP/s (FLOPs / time of one execution). Roofs: the tensor peak of
    the workload's compute dtype, the vector peak and the memory bandwidth. Markers: shape by
    phase, colour by the bound resource. Collectives (no FLOPs) and pure data movement
    (embedding gather) are not placed. With ``fidelity="roofline"`` every marker lies on or
    under its roofs; the systolic model's own DRAM traffic can differ from these bytes.
    Returns the Axes.
    """
    phases = _phases(phase)
    table = breakdown(arch, wl, system, efficiency, fidelity=fidelity)
    points = roofline_points(table, phase)
    chip = system.chip
    tensor_peak, vector_peak = float(chip.tensor_peak(wl.compute_dtype)), float(chip.vector_flops)
    bandwidth = float(chip.mem_bw_Bps)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 6))
    tflops = 1e-12  # display unit of the y axis

    ridges = {"tensor": tensor_peak / bandwidth, "vector": vector_peak / bandwidth}
    spread = np.concatenate([points["intensity"].to_numpy(), list(ridges.values())])
    x_lo, x_hi = spread.min() / 4.0, spread.max() * 4.0
    x = np.geomspace(x_lo, x_hi, 256)
    ax.plot(x, np.minimum(bandwidth * x, tensor_peak) * tflops, color="black", lw=1.5,
            label=f"{wl.compute_dtype} tensor peak {tensor_peak * tflops:,.0f} TFLOP/s, "
                  f"memory {bandwidth * 1e-12:.2f} TB/s")
    ax.plot(x, np.minimum(bandwidth * x, vector_peak) * tflops, color="black", lw=1.0, ls="--",
            label=f"vector peak {vector_peak * tflops:,.1f} TFLOP/s")

    for (ph, bound), group in points.groupby(["phase", "bound"], sort=False):
        ax.scatter(group["intensity"], group["attained_flops"] * tflops, marker=PHASE_MARKERS[ph],
                   color=BOUND_COLORS[bound], edgecolors="black", linewidths=0.5, s=40, zorder=3)
    # Neighbouring operators (e.g. the projections on the tensor roof) would print their
    # names on top of each other: stagger the labels in order of intensity.
    offsets = ((4, 3), (4, -10), (-4, 8), (-4, -14))
    for rank, row in enumerate(points.sort_values("intensity").itertuples()):
        dx, dy = offsets[rank % len(offsets)]
        ax.annotate(row.op, (row.intensity, row.attained_flops * tflops), xytext=(dx, dy),
                    textcoords="offset points", fontsize=7, ha="left" if dx > 0 else "right")

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attained (TFLOP/s)")
    skipped = table[table["phase"].isin(phases) & (table["repeat"] > 0)]
    collectives = int((skipped["kind"] == ops.COLLECTIVE).sum())
    ax.set_title(f"roofline of one device ({' + '.join(phases)}); not shown: {collectives} collectives "
                 f"and {len(skipped) - collectives - len(points)} operators without FLOPs", fontsize=9)
    handles = ax.get_legend_handles_labels()[0]
    handles += [Line2D([], [], ls="", marker=PHASE_MARKERS[p], color="grey", label=p) for p in phases]
    handles += _bound_legend(points["bound"])
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    return ax


def latency_breakdown(arch: Architecture, wl: Workload, system: System, efficiency: Efficiency | None = None, *,
                      fidelity: str = "roofline", ax=None):
    """Horizontal bars of each operator's time in one prefill and one decode step (ms),
    coloured by the bound resource; operators that do not run are left out.

    Without ``ax``: two panels (prefill, decode), each on its own time scale. With ``ax``:
    both phases as two groups on it. The bars of a phase add up to its step (for ``pp = 1``;
    with pipelining they are one micro-batch's pass). Returns the Figure.
    """
    table = breakdown(arch, wl, system, efficiency, fidelity=fidelity)
    table = table[table["total_s"] > 0]
    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 + 0.28 * table["phase"].value_counts().max()))
        panels = list(zip(PHASES, axes))
    else:
        fig, panels = ax.figure, [(PHASES, ax)]
    pipelined = float(wl.pp) > 1
    for phases, panel in panels:
        rows = table[table["phase"].isin([phases] if isinstance(phases, str) else phases)]
        y = np.arange(len(rows), dtype=float)
        if not isinstance(phases, str):  # one Axes: a gap between the phase groups
            y += np.where(rows["phase"] == "decode", 1.0, 0.0)
        panel.barh(y, rows["total_s"] * 1e3, color=[BOUND_COLORS[b] for b in rows["bound"]])
        names = rows["op"] if isinstance(phases, str) else rows["phase"] + ": " + rows["op"]
        panel.set_yticks(y, names, fontsize=8)
        panel.invert_yaxis()  # model order, top to bottom
        panel.set_xlabel("time (ms)")
        totals = rows.groupby("phase", sort=False)["total_s"].sum() * 1e3
        step = "micro-batch pass" if pipelined else "step"
        panel.set_title("; ".join(f"{ph} {step}: {t:.4g} ms" for ph, t in totals.items()), fontsize=9)
        panel.legend(handles=_bound_legend(rows["bound"]), fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def memory_breakdown(arch: Architecture, wl: Workload, system: System, batches: Sequence[int] = (1, 8, 32, 128), *,
                     ax=None):
    """Stacked bars of weights, KV cache and activations per device (GB) at each batch size,
    with the usable capacity (``memory_utilization`` of the device) as a line; bars over
    it are marked. The batch sizes are evaluated in one vectorized call. Returns the Axes."""
    check_parallelism(arch, wl)
    batches = np.asarray(batches, dtype=float)
    if batches.ndim != 1 or batches.size == 0 or not (batches >= 1).all():
        raise ValueError(f"memory_breakdown: batches must be a non-empty list of sizes >= 1 (got {batches})")
    swept = eqx.tree_at(lambda w: w.batch, wl, jnp.asarray(batches, dtype=wl.batch.dtype))
    parts = {"weights": "weight_bytes", "KV cache": "kv_cache_bytes", "activations": "activation_bytes"}
    table = evaluate_points(arch, swept, system,
                            metrics=[*parts.values(), "memory_bytes", "usable_memory_bytes", "fits"])
    if ax is None:
        _, ax = plt.subplots(figsize=(1.5 + 1.1 * len(batches), 5))
    x = np.arange(len(batches))
    bottom = np.zeros(len(batches))
    for (label, column), color in zip(parts.items(), ("tab:gray", "tab:orange", "tab:cyan")):
        gb = table[column].to_numpy(float) * 1e-9
        ax.bar(x, gb, bottom=bottom, color=color, label=label, width=0.6)
        bottom += gb
    usable = float(table["usable_memory_bytes"].iloc[0]) * 1e-9
    ax.axhline(usable, color="black", ls="--", lw=1.0, label=f"usable capacity {usable:.1f} GB")
    for xi, total, fits in zip(x, bottom, table["fits"]):
        if not fits:
            ax.annotate("does not fit", (xi, total), xytext=(0, 3), textcoords="offset points", ha="center",
                        fontsize=8, color="tab:red")
    ax.set_xticks(x, [f"{b:g}" for b in batches])
    ax.set_xlabel("batch (sequences)")
    ax.set_ylabel("memory per device (GB)")
    ax.set_title(f"{float(wl.input_tokens):g} + {float(wl.output_tokens):g} tokens per sequence, "
                 f"{float(wl.devices):g} device(s)", fontsize=9)
    ax.legend(fontsize=8)
    return ax


def pareto_front(df: pd.DataFrame, x: str, y: str, *, maximize: tuple[bool, bool] = (False, False),
                 where: pd.Series | None = None, ax=None, label_points: str | Sequence[str] | None = None,
                 log: tuple[bool, bool] = (False, False), xlabel: str | None = None, ylabel: str | None = None):
    """All candidate rows of ``df`` as a light cloud and their Pareto front of columns
    ``x`` and ``y`` (:func:`jaxmodel.results.pareto`) as a highlighted staircase.

    ``maximize``: direction of each objective; ``where``: boolean Series choosing the
    candidates (e.g. ``df.status == 0``); ``label_points``: column(s) whose values annotate
    each front point. Above 200,000 candidates the cloud is a fixed random subsample (the
    front is always computed on all of them). The front's markers carry ``gid="pareto_front"``,
    the cloud ``gid="candidates"``. Returns the Axes.
    """
    for name, column in (("x", x), ("y", y)):
        if column not in df.columns:
            raise ValueError(f"pareto_front {name} column {column!r} is not a column (have {list(df.columns)})")
    if x == y:
        raise ValueError(f"pareto_front needs two different columns (got x = y = {x!r})")
    labels = [label_points] if isinstance(label_points, str) else list(label_points or [])
    for column in labels:
        if column not in df.columns:
            raise ValueError(f"pareto_front label column {column!r} is not a column")
    sense = {x: "max" if maximize[0] else "min", y: "max" if maximize[1] else "min"}
    front = results.pareto(df, sense, where).sort_values(x, kind="stable")
    candidates = df if where is None else df[where]
    (x_label, fx), (y_label, fy) = _label(x), _label(y)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 5))

    cloud = candidates
    shown = f"{len(candidates):,} candidates"
    if len(candidates) > _CLOUD_LIMIT:
        pick = np.random.default_rng(0).choice(len(candidates), _CLOUD_LIMIT, replace=False)
        cloud = candidates.iloc[np.sort(pick)]
        shown = f"{len(candidates):,} candidates ({_CLOUD_LIMIT:,} shown)"
    ax.scatter(cloud[x] * fx, cloud[y] * fy, s=5, color="lightgray", alpha=0.6, linewidths=0, rasterized=True,
               label=shown, gid="candidates")
    # The staircase bounds what is attainable: moving along x away from a front point
    # keeps that point's y until the next front point.
    ax.step(front[x] * fx, front[y] * fy, where="pre" if maximize[0] else "post", color="tab:red", lw=1.5)
    ax.scatter(front[x] * fx, front[y] * fy, s=25, color="tab:red", edgecolors="black", linewidths=0.5, zorder=3,
               label=f"Pareto front ({len(front)} points)", gid="pareto_front")
    for _, row in front.iterrows():
        if labels:
            text = ", ".join(f"{c}={row[c]:.4g}" if isinstance(row[c], (int, float, np.number)) else f"{c}={row[c]}"
                             for c in labels)
            ax.annotate(text, (row[x] * fx, row[y] * fy), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set_xscale("log" if log[0] else "linear")
    ax.set_yscale("log" if log[1] else "linear")
    arrows = {False: "lower is better", True: "higher is better"}
    ax.set_xlabel(xlabel or f"{x_label}, {arrows[maximize[0]]}")
    ax.set_ylabel(ylabel or f"{y_label}, {arrows[maximize[1]]}")
    ax.legend(fontsize=8)
    return ax


def throughput_frontier(df: pd.DataFrame, *, where: pd.Series | None = None, ax=None,
                        label_points: str | Sequence[str] | None = None):
    """The classic serving frontier: throughput per device (``throughput_per_device_tok_s``)
    against tokens/s seen by each user (``1 / tpot_s``), both maximized. Returns the Axes."""
    missing = [c for c in ("tpot_s", "throughput_per_device_tok_s") if c not in df.columns]
    if missing:
        raise ValueError(f"throughput_frontier needs columns {missing} (have {list(df.columns)})")
    data = df.assign(per_user_tok_s=1.0 / df["tpot_s"])
    return pareto_front(data, "per_user_tok_s", "throughput_per_device_tok_s", maximize=(True, True), where=where,
                        ax=ax, label_points=label_points, xlabel="tokens/s per user = 1 / TPOT (tok/s)",
                        ylabel="throughput per device (tok/s)")


def tornado(table: pd.DataFrame, metric: str = "tpot_s", ax=None):
    """Tornado chart of :func:`jaxmodel.sensitivity.one_at_a_time`: the metric's change (%)
    with each leaf moved down and up, largest swing on top, each leaf labelled with its value and
    elasticity. Returns the Axes."""
    needed = {"path", "value", "value_low", "value_high", "metric", "change_low_pct", "change_high_pct",
              "elasticity"}
    if not needed <= set(table.columns):
        raise ValueError(f"tornado needs a one_at_a_time table (missing columns {sorted(needed - set(table.columns))})")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.8 + 0.45 * len(table)))
    swing = np.abs(table["change_low_pct"].to_numpy(float)) + np.abs(table["change_high_pct"].to_numpy(float))
    rows = table.iloc[np.argsort(swing, kind="stable")]  # barh draws bottom-up: largest last, on top
    y = np.arange(len(rows))
    ratio = rows["value_low"] / rows["value"].where(rows["value"] != 0)
    rel = float(1.0 - np.nanmedian(ratio)) if ratio.notna().any() else float("nan")
    ax.barh(y, rows["change_low_pct"], color="tab:blue", label=f"leaf x {1 - rel:g}")
    ax.barh(y, rows["change_high_pct"], color="tab:orange", label=f"leaf x {1 + rel:g}")
    names = [f"{row.path} = {_display_value(row.path, row.value)}\n(elasticity {row.elasticity:+.3g})"
             for row in rows.itertuples()]
    ax.set_yticks(y, names, fontsize=8)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel(f"change in {metric} (%)")
    ax.set_title(f"{metric} = {_display_value(metric, float(table['metric'].iloc[0]))} at the design point",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    return ax
