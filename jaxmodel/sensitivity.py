"""One-at-a-time sensitivity of a metric at one design point.

Each leaf (a dotted path as in :mod:`jaxmodel.sweep`, e.g. ``"system.chip.mem_bw_Bps"``)
is moved by ``±rel`` of its value while every other leaf stays put, and the metric is
evaluated at all ``2 x paths`` variants in one vectorized call. Beside those finite moves
the table gives the local elasticity ``d log(metric) / d log(leaf)`` from ``jax.grad`` at
the point itself (-1 means "10 % more of this leaf makes the metric 10 % smaller").

Integer-like workload leaves (``workload.batch``, token counts) are perturbed as real
numbers: the engine's formulas are continuous in them, so ``batch = 6.4`` is a valid
interpolation, not a rounding. Parallel degrees (``workload.tp``...) are not in the
default set because a non-divisor degree only sets a status bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import inference
from .architectures import Architecture
from .efficiency import Efficiency, ideal
from .hardware import System, SystolicChip
from .predict import check_parallelism
from .sweep import DesignPoint, _resolve, _set_leaves, evaluate_points, metric_names
from .workload import Workload

_WORKLOAD_PATHS = ("workload.batch", "workload.input_tokens", "workload.output_tokens")
_NETWORK_PATHS = ("system.scale_up.bandwidth_Bps", "system.scale_up.collective_latency_s")


def default_paths(wl: Workload, system: System) -> tuple[str, ...]:
    """A sensible set of leaves for ``system``'s kind of chip: memory bandwidth and
    capacity, tensor peak of the workload's compute dtype, vector peak, scale-up network,
    batch and sequence lengths."""
    if isinstance(system.chip, SystolicChip):
        # Peaks are derived from the microarchitecture, so perturb what they come from.
        chip = ("system.chip.memory.pin_rate_bps", "system.chip.memory.capacity_per_package_bytes",
                "system.chip.cores", "system.chip.tensor_clock_hz", "system.chip.vector_clock_hz",
                "system.chip.l2_bytes")
    else:
        dtype = wl.compute_dtype if wl.compute_dtype in system.chip.tensor_flops else "bf16"
        chip = ("system.chip.mem_bw_Bps", "system.chip.mem_capacity_bytes",
                f"system.chip.tensor_flops.{dtype}", "system.chip.vector_flops")
    return chip + _NETWORK_PATHS + _WORKLOAD_PATHS


@eqx.filter_jit
def _metric_and_gradient(point: DesignPoint, paths: tuple[str, ...], metric: str, fidelity: str):
    def metric_at(values):
        moved = _set_leaves(point, paths, list(values))
        return inference.evaluate(moved.arch, moved.workload, moved.system, moved.efficiency, None, False,
                                  fidelity)[metric]

    return jax.value_and_grad(metric_at)(jnp.stack([_resolve(point, p) for p in paths]))


def one_at_a_time(arch: Architecture, wl: Workload, system: System, efficiency: Efficiency | None = None, *,
                  metric: str = "tpot_s", paths: Sequence[str] | None = None, rel: float = 0.2,
                  fidelity: str = "roofline") -> pd.DataFrame:
    """Change of ``metric`` when each leaf in ``paths`` alone moves by ``±rel`` of its value.

    Returns one row per path with columns ``path``, ``value`` (the leaf at the point, SI),
    ``value_low`` and ``value_high`` (the moved leaf), ``metric`` (at the point),
    ``metric_low`` (leaf at ``value·(1-rel)``), ``metric_high`` (``value·(1+rel)``),
    ``change_low_pct``, ``change_high_pct`` and ``elasticity``
    (``d log metric / d log leaf`` at the point, from ``jax.grad``). The
    low/high variants are evaluated in one vectorized call.
    """
    eff = ideal() if efficiency is None else efficiency
    if not 0.0 < rel < 1.0:
        raise ValueError(f"sensitivity rel must be in (0, 1) (got {rel})")
    available = metric_names(False, isinstance(system.chip, SystolicChip))
    numeric = [m for m in available if m not in ("fits", "status")]  # flags have no gradient
    if metric not in numeric:
        raise ValueError(f"sensitivity metric {metric!r} is not a numeric metric (have {numeric})")
    check_parallelism(arch, wl)
    point = DesignPoint(arch, wl, system, eff)
    paths = tuple(default_paths(wl, system) if paths is None else paths)
    if not paths or len(set(paths)) != len(paths):
        raise ValueError(f"sensitivity paths must be distinct and non-empty (got {list(paths)})")
    for path in paths:
        leaf = _resolve(point, path, check_leaf=True)
        if leaf.ndim:
            raise ValueError(f"sensitivity path {path!r}: the value must be a scalar, not shape {leaf.shape}")
    base = np.array([float(_resolve(point, p)) for p in paths])

    # Variant 2i moves path i down, 2i+1 moves it up; every other leaf keeps its value.
    n = len(paths)
    factors = np.ones((2 * n, n))
    factors[0::2][np.arange(n), np.arange(n)] = 1.0 - rel
    factors[1::2][np.arange(n), np.arange(n)] = 1.0 + rel
    variants = _set_leaves(point, paths, list((factors * base).T))
    moved = evaluate_points(*variants, metrics=[metric], fidelity=fidelity)[metric].to_numpy(float)

    value, gradient = _metric_and_gradient(point, paths, metric, fidelity)
    value = float(value)
    # Elasticity = (dM/dx) * x / M; a leaf at 0 (e.g. a zero latency) gets 0.
    elasticity = np.asarray(gradient, dtype=float) * base / value
    low, high = moved[0::2], moved[1::2]
    return pd.DataFrame({
        "path": list(paths),
        "value": base,
        "value_low": base * (1.0 - rel),
        "value_high": base * (1.0 + rel),
        "metric": value,
        "metric_low": low,
        "metric_high": high,
        "change_low_pct": 100.0 * (low / value - 1.0),
        "change_high_pct": 100.0 * (high / value - 1.0),
        "elasticity": elasticity,
    })
