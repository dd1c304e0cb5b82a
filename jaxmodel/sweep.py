"""Vectorized sweeps: many design points per call, in memory-bounded chunks, as a DataFrame.

Two ways to describe the points:

* :func:`grid_sweep` — a base design point plus a Cartesian grid over any numeric leaves,
  named by dotted paths such as ``"system.chip.mem_bw_Bps"``,
  ``"system.chip.tensor_flops.bf16"``, ``"workload.batch"`` or ``"arch.d_model"``.
  Grid coordinates are computed on the device from a flat index, so no per-point input is
  ever built on the host.
* :func:`evaluate_points` — pytrees whose leaves carry a leading point axis (scalars are
  shared by all points).

Both compile one program per chunk size and reuse it for every chunk, and return SI metrics
(see :mod:`jaxmodel.inference`) plus a ``status`` column; infeasible points are rows with
status bits set, never NaN and never an exception.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import inference
from .architectures import Architecture
from .efficiency import Efficiency, ideal
from .hardware import Chip, Interconnect, MemorySystem, System, SystolicChip
from .workload import Workload

DEFAULT_CHUNK = 1 << 16
_PREFIXES = {"arch": "arch", "model": "arch", "workload": "workload", "system": "system",
             "hardware": "system", "efficiency": "efficiency"}


class DesignPoint(NamedTuple):
    arch: Architecture
    workload: Workload
    system: System
    efficiency: Efficiency


def _resolve(point: DesignPoint, path: str, check_leaf: bool = False):
    """The leaf of ``point`` named by a dotted path (``check_leaf``: insist it is an array)."""
    head, *rest = path.split(".")
    if head not in _PREFIXES or not rest:
        raise ValueError(f"sweep path {path!r} must start with one of {sorted(_PREFIXES)} and name a leaf")
    obj = getattr(point, _PREFIXES[head])
    for part in rest:
        if isinstance(obj, dict):
            if part not in obj:
                raise ValueError(f"sweep path {path!r}: no key {part!r} (have {sorted(obj)})")
            obj = obj[part]
        elif isinstance(obj, tuple):
            if not (part.isdigit() and int(part) < len(obj)):
                raise ValueError(f"sweep path {path!r}: {part!r} is not an index below {len(obj)}")
            obj = obj[int(part)]
        elif isinstance(obj, eqx.Module) and part in {f.name for f in dataclasses.fields(obj)}:
            obj = getattr(obj, part)
        elif isinstance(obj, eqx.Module) and hasattr(obj, part):
            raise ValueError(f"sweep path {path!r}: {type(obj).__name__}.{part} is derived from other fields; "
                             "sweep those (or use System.datasheet() to make the datasheet figures leaves)")
        else:
            raise ValueError(f"sweep path {path!r}: {type(obj).__name__} has no field {part!r}")
    if check_leaf and not isinstance(obj, jax.Array):
        raise ValueError(f"sweep path {path!r} names a static field, which cannot be swept")
    if check_leaf and path == "arch.n_sliding_layers" and not point.arch.windowed:
        raise ValueError("sweep path 'arch.n_sliding_layers': the base architecture has no sliding-window "
                         "layers; build it with windowed=True to sweep them")
    return obj


def _set_leaves(point: DesignPoint, paths: Sequence[str], values) -> DesignPoint:
    if not paths:
        return point
    return eqx.tree_at(
        lambda p: [_resolve(p, path) for path in paths],
        point,
        [jnp.asarray(v, dtype=_resolve(point, path).dtype) for path, v in zip(paths, values)],
    )


def _evaluate(point: DesignPoint, metrics, sharpness, chunked_step, fidelity="roofline"):
    out = inference.evaluate(point.arch, point.workload, point.system, point.efficiency, sharpness, chunked_step,
                             fidelity)
    return {k: out[k] for k in metrics}


@functools.lru_cache(maxsize=None)
def metric_names(chunked_step: bool = False, priced: bool = False) -> tuple[str, ...]:
    """Metrics a sweep returns by default (``priced``: also area, cost, power and energy,
    which need a microarchitecture-level chip)."""
    base = DesignPoint(
        Architecture(d_model=64, n_layers=1, vocab_size=64, n_heads=1, d_ff=64),
        Workload(), _tiny_system(priced), ideal(),
    )
    shapes = jax.eval_shape(lambda p: inference.evaluate(*p, None, chunked_step), base)
    return tuple(shapes)


def _default_metrics(system: System, chunked_step: bool) -> tuple[str, ...]:
    return metric_names(chunked_step, isinstance(system.chip, SystolicChip))


def _tiny_system(priced: bool = False) -> System:
    chip = Chip({"bf16": 1.0}, 1.0, 1.0, 1.0)
    if priced:
        chip = SystolicChip(1, 1, 1, 1, {"bf16": 1.0}, 1, 1, 1, 1, 1, 1, 1, 1, MemorySystem("hbm3", 1, 1, 1, 1))
    return System(chip, 1, Interconnect(1.0, 0.0), Interconnect(1.0, 0.0))


@functools.partial(jax.jit, static_argnames=("paths", "shape", "chunk", "metrics", "sharpness", "chunked_step",
                                             "fidelity"))
def _grid_chunk(base, axes, start, *, paths, shape, chunk, metrics, sharpness, chunked_step, fidelity):
    total = math.prod(shape)
    index = jnp.minimum(start + jnp.arange(chunk, dtype=jnp.int32), total - 1)
    coords = jnp.unravel_index(index, shape)
    values = [axis[c] for axis, c in zip(axes, coords)]

    def one(*vals):
        return _evaluate(_set_leaves(base, paths, vals), metrics, sharpness, chunked_step, fidelity)

    return jax.vmap(one)(*values)


class SweepStats(NamedTuple):
    points: int
    compile_s: float
    run_s: float

    @property
    def points_per_s(self) -> float:
        return self.points / self.run_s if self.run_s > 0 else float("inf")


def grid_sweep(
    arch: Architecture,
    workload: Workload,
    system: System,
    efficiency: Efficiency | None = None,
    grid: Mapping[str, Sequence[float]] | None = None,
    *,
    metrics: Sequence[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    sharpness: float | None = None,
    chunked_step: bool = False,
    fidelity: str = "roofline",
    progress: Callable[[int, int], None] | None = None,
    return_stats: bool = False,
):
    """Evaluate every combination of ``grid`` values around a base design point.

    Args:
        grid: ``{path: values}``; the Cartesian product is evaluated, first path slowest.
        metrics: metric names to keep (default: all, see :func:`metric_names`).
        chunk_size: points per compiled call; bounds memory.
        fidelity: ``"roofline"`` or ``"systolic"`` (see :func:`jaxmodel.inference.evaluate`).
        progress: called as ``progress(done, total)`` after each chunk.

    Returns:
        A DataFrame with one column per grid path, one per metric and ``status``; with
        ``return_stats`` also a :class:`SweepStats` (compile and run seconds).
    """
    grid = dict(grid or {})
    base = DesignPoint(arch, workload, system, ideal() if efficiency is None else efficiency)
    paths = tuple(grid)
    for path in paths:
        leaf = _resolve(base, path, check_leaf=True)
        if leaf.ndim:
            raise ValueError(f"sweep path {path!r}: the base value must be a scalar, not shape {leaf.shape}")
    axes = tuple(jnp.asarray(np.asarray(grid[p], dtype=float), dtype=_resolve(base, p).dtype) for p in paths)
    for path, axis in zip(paths, axes):
        if axis.ndim != 1 or axis.size == 0:
            raise ValueError(f"sweep grid {path!r} must be a non-empty 1-D sequence of numbers")
    shape = tuple(int(a.size) for a in axes) or (1,)
    if not axes:
        axes = (jnp.zeros(1),)
    total = math.prod(shape)
    metrics = tuple(metrics or _default_metrics(system, chunked_step))
    chunk = int(min(chunk_size, max(total, 1)))
    kwargs = dict(paths=paths, shape=shape, chunk=chunk, metrics=metrics, sharpness=sharpness,
                  chunked_step=chunked_step, fidelity=fidelity)

    t0 = time.perf_counter()
    compiled = _grid_chunk.lower(base, axes, jnp.int32(0), **kwargs).compile()
    compile_s = time.perf_counter() - t0

    columns = {m: [] for m in metrics}

    def collect(start, result):
        out = jax.device_get(result)
        n = min(chunk, total - start)
        for m in metrics:
            columns[m].append(np.asarray(out[m])[:n])
        if progress is not None:
            progress(start + n, total)

    t0 = time.perf_counter()
    pending = None
    for start in range(0, total, chunk):
        # Dispatch is asynchronous: queue this chunk before copying the previous one back,
        # so the device computes while the host collects.
        result = compiled(base, axes, jnp.int32(start))
        if pending is not None:
            collect(*pending)
        pending = (start, result)
    collect(*pending)
    run_s = time.perf_counter() - t0

    frame = {}
    coords = np.unravel_index(np.arange(total), shape)
    for path, axis, c in zip(paths, axes, coords):
        frame[path] = np.asarray(axis)[c]
    for m in metrics:
        frame[m] = np.concatenate(columns[m])
    df = pd.DataFrame(frame)
    if return_stats:
        return df, SweepStats(total, compile_s, run_s)
    return df


@functools.partial(jax.jit, static_argnames=("metrics", "sharpness", "chunked_step", "fidelity"))
def _points_chunk(points, *, metrics, sharpness, chunked_step, fidelity):
    return jax.vmap(lambda p: _evaluate(p, metrics, sharpness, chunked_step, fidelity))(points)


def evaluate_points(
    arch: Architecture,
    workload: Workload,
    system: System,
    efficiency: Efficiency | None = None,
    *,
    metrics: Sequence[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    sharpness: float | None = None,
    chunked_step: bool = False,
    fidelity: str = "roofline",
) -> pd.DataFrame:
    """Evaluate design points given as pytrees with a leading point axis on some leaves.

    Leaves without the axis (scalars) are shared by every point; every batched leaf must
    have the same length N. Returns N rows of metrics (and ``status``).
    """
    point = DesignPoint(arch, workload, system, ideal() if efficiency is None else efficiency)
    leaves = jax.tree_util.tree_leaves(point)
    sizes = {int(x.shape[0]) for x in leaves if x.ndim == 1}
    if any(x.ndim > 1 for x in leaves) or len(sizes) > 1:
        raise ValueError(f"batched leaves must be 1-D and share one length (found lengths {sorted(sizes)})")
    n = sizes.pop() if sizes else 1
    point = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,)), point)
    metrics = tuple(metrics or _default_metrics(system, chunked_step))
    chunk = int(min(chunk_size, n))
    columns = {m: [] for m in metrics}
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        # Pad the last chunk to the compiled size by repeating its final point.
        idx = np.minimum(np.arange(start, start + chunk), stop - 1)
        piece = jax.tree_util.tree_map(lambda x, idx=idx: x[idx], point)
        out = jax.device_get(_points_chunk(piece, metrics=metrics, sharpness=sharpness, chunked_step=chunked_step,
                                                fidelity=fidelity))
        for m in metrics:
            columns[m].append(np.asarray(out[m])[: stop - start])
    return pd.DataFrame({m: np.concatenate(columns[m]) for m in metrics})
