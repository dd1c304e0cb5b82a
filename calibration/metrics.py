"""Accuracy figures reported by every calibration script, and group-wise held-out splits."""

from __future__ import annotations

import numpy as np
import pandas as pd


def errors(predicted, measured) -> dict:
    """Relative errors of ``predicted`` against ``measured`` (both positive seconds).

    ``geomean_pct``: exp(mean |log(predicted / measured)|) - 1, symmetric in over- and
    under-prediction (GenZ's "geomean error"); ``mape_pct``: mean |predicted / measured - 1|;
    ``p90_pct``: 90th percentile of |predicted / measured - 1|; all in percent.
    """
    ratio = np.asarray(predicted, dtype=np.float64) / np.asarray(measured, dtype=np.float64)
    if ratio.size == 0:
        raise ValueError("errors: no rows to score")
    absolute = np.abs(ratio - 1.0)
    return {"geomean_pct": float(100 * (np.exp(np.mean(np.abs(np.log(ratio)))) - 1)),
            "mape_pct": float(100 * absolute.mean()), "p90_pct": float(100 * np.quantile(absolute, 0.9)),
            "rows": int(ratio.size)}


def held_out_groups(table: pd.DataFrame, columns: list[str], fraction: float = 0.25, seed: int = 0) -> np.ndarray:
    """Boolean mask of the rows whose ``columns`` values form one of a random ``fraction`` of
    the distinct groups: whole groups (e.g. weight shapes, head configurations) are held out,
    never single rows of a group the fit has seen."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held_out_groups: fraction must lie in (0, 1) (got {fraction})")
    keys = pd.MultiIndex.from_frame(table[columns])
    distinct = keys.unique()
    rng = np.random.default_rng(seed)
    chosen = distinct[rng.permutation(len(distinct))[: max(1, int(round(fraction * len(distinct))))]]
    return np.asarray(keys.isin(chosen))


def format_row(label: str, e: dict, width: int = 36) -> str:
    """One aligned line: label, rows, geomean, MAPE and P90 (percent)."""
    return f"{label:<{width}}{e['rows']:>7}{e['geomean_pct']:>10.1f}{e['mape_pct']:>8.1f}{e['p90_pct']:>8.1f}"


def header(width: int = 36) -> str:
    return f"{'':<{width}}{'rows':>7}{'geomean':>10}{'MAPE':>8}{'P90':>8}   (errors in %)"
