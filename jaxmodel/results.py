"""Working with sweep results: Pareto fronts, top-k, unit-labelled tables.

Results are pandas DataFrames with SI columns (``ttft_s``, ``memory_bytes``,
``system.chip.mem_bw_Bps``...). :func:`with_units` converts them for people (``ttft (ms)``,
``memory (GB)``, ``system.chip.mem_bw (TB/s)``); everything else here works on SI columns.
:func:`jaxmodel.sweep_spec.load_results` reads a sweep directory back and
:func:`jaxmodel.sweep_spec.join_spec` recovers every point's parameters from its index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

# Suffix of an SI column -> (display unit, factor from SI). Longer suffixes are tried first.
UNITS = {
    "_tok_s": ("tok/s", 1.0),
    "_usd_per_mtok": ("USD/Mtok", 1.0),
    "_usd_per_tok_s": ("USD per tok/s", 1.0),
    "_Bps": ("TB/s", 1e-12),
    "_bytes": ("GB", 1e-9),
    "_mm2": ("mm²", 1.0),
    "_usd": ("USD", 1.0),
    "_j": ("J", 1.0),
    "_w": ("W", 1.0),
    "_s": ("ms", 1e3),
}
_FLOPS_PREFIXES = ("tensor_flops", "vector_flops", "flops")

_CHUNK = 2048


_LONGEST_FIRST = sorted(UNITS.items(), key=lambda kv: -len(kv[0]))


def unit_of(column: str) -> tuple[str, str, float] | None:
    """``(display name, unit, factor from SI)`` for an SI column, or None if it has no unit.
    A column that is a suffix by itself (``usd_per_mtok``) keeps its whole name."""
    for suffix, (unit, factor) in _LONGEST_FIRST:
        if column == suffix[1:]:
            return column, unit, factor
        if column.endswith(suffix):
            return column[: -len(suffix)], unit, factor
    parts = column.split(".")
    if any(p.startswith(_FLOPS_PREFIXES) for p in parts[-2:]):
        return column, "TFLOP/s", 1e-12
    return None


def with_units(df: pd.DataFrame) -> pd.DataFrame:
    """The same table with SI columns converted to display units named in the header,
    e.g. ``ttft_s`` -> ``ttft (ms)``, ``memory_bytes`` -> ``memory (GB)``."""
    out = {}
    for column in df.columns:
        unit = unit_of(str(column))
        if unit is None or not pd.api.types.is_numeric_dtype(df[column]) or pd.api.types.is_bool_dtype(df[column]):
            out[column] = df[column]
        else:
            name, label, factor = unit
            out[f"{name} ({label})"] = df[column] * factor
    return pd.DataFrame(out, index=df.index)


def _orient(objectives) -> dict[str, str]:
    if isinstance(objectives, Mapping):
        pairs = dict(objectives)
    else:  # a list of columns, each minimized unless written "-column" / "max:column"
        pairs = {}
        for name in objectives:
            if name.startswith("-"):
                pairs[name[1:]] = "max"
            elif name.startswith("max:"):
                pairs[name[4:]] = "max"
            else:
                pairs[name.removeprefix("min:")] = "min"
    for name, sense in pairs.items():
        if sense not in ("min", "max"):
            raise ValueError(f"pareto objective {name!r}: direction must be 'min' or 'max' (got {sense!r})")
    if not 2 <= len(pairs) <= 3:
        raise ValueError(f"pareto needs two or three objectives (got {len(pairs)}: {list(pairs)})")
    return pairs


def pareto_mask(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the rows of ``values`` (n x m) that no other row dominates.

    A row dominates another when it is no worse in every objective and better in one;
    equal rows do not dominate each other, so duplicates on the front are all kept. Rows
    with a NaN objective are never on the front. Sorting lexicographically first means a row
    can only be dominated by rows before it, so the front is built in one pass over chunks:
    O(n log n + n · front size).
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(maximize):
        raise ValueError(f"pareto_mask: values must be (n, {len(maximize)}), got shape {values.shape}")
    cost = np.where(np.asarray(maximize, dtype=bool), -values, values)
    finite = ~np.isnan(cost).any(axis=1)
    keep = np.zeros(len(cost), dtype=bool)
    idx = np.flatnonzero(finite)
    if idx.size == 0:
        return keep
    order = idx[np.lexsort(cost[idx].T[::-1])]
    if cost.shape[1] == 2:
        # Sorted by the first objective (then the second), a row is on the front when its
        # second objective beats every earlier row's, or ties the best one with an equal first.
        c = cost[order]
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(c[:-1, 1])])
        on = c[:, 1] < best_before
        # Equal rows share the verdict of the first of their run.
        new_run = np.ones(len(c), dtype=bool)
        new_run[1:] = (c[1:] != c[:-1]).any(axis=1)
        on = on[np.flatnonzero(new_run)[np.cumsum(new_run) - 1]]
        keep[order[on]] = True
        return keep
    front = np.empty((0, cost.shape[1]))
    for start in range(0, len(order), _CHUNK):
        block_idx = order[start:start + _CHUNK]
        block = cost[block_idx]
        block_idx = block_idx[~_dominated_by(block, front)]
        block = cost[block_idx]
        # Then within the survivors, usually few (dominance is transitive, so any may vote).
        alive = ~_dominated_by(block, block)
        keep[block_idx[alive]] = True
        front = np.concatenate([front, block[alive]])
    return keep


def _dominates_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[i, j]``: row i of ``a`` dominates row j of ``b`` (minimization)."""
    le = (a[:, None, :] <= b[None, :, :]).all(axis=2)
    lt = (a[:, None, :] < b[None, :, :]).any(axis=2)
    return le & lt


def _dominated_by(block: np.ndarray, front: np.ndarray) -> np.ndarray:
    out = np.zeros(len(block), dtype=bool)
    for start in range(0, len(front), _CHUNK):
        out |= _dominates_matrix(front[start:start + _CHUNK], block).any(axis=0)
    return out


def pareto(df: pd.DataFrame, objectives, where: pd.Series | None = None) -> pd.DataFrame:
    """Rows of ``df`` on the Pareto front of two or three metrics, sorted by the first.

    ``objectives``: ``{"total_cost_usd": "min", "throughput_tok_s": "max"}``, or a list of
    column names, minimized unless written ``"-name"`` (or ``"max:name"``). ``where``: a boolean
    Series choosing the candidate rows (e.g. the feasible ones).
    """
    pairs = _orient(objectives)
    for name in pairs:
        if name not in df.columns:
            raise ValueError(f"pareto objective {name!r} is not a column (have {list(df.columns)})")
    candidates = df if where is None else df[where]
    mask = pareto_mask(candidates[list(pairs)].to_numpy(float), [s == "max" for s in pairs.values()])
    first, sense = next(iter(pairs.items()))
    return candidates[mask].sort_values(first, ascending=sense == "min", kind="stable")


def top_k(df: pd.DataFrame, metric: str, k: int = 10, *, largest: bool = True,
          where: pd.Series | None = None) -> pd.DataFrame:
    """The ``k`` rows with the largest (or smallest) ``metric``, among ``where`` if given."""
    if metric not in df.columns:
        raise ValueError(f"top_k metric {metric!r} is not a column (have {list(df.columns)})")
    if k < 1:
        raise ValueError(f"top_k: k must be >= 1 (got {k})")
    candidates = df if where is None else df[where]
    return candidates.nlargest(k, metric) if largest else candidates.nsmallest(k, metric)
