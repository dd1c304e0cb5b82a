"""Measured collectives -> inputs of :class:`jaxmodel.kernels.collectives.CollectiveModel`.

Rows come from the tidy kernel table (AIConfigurator loader): NCCL ``nccl-tests`` runs
(``framework == "nccl"``) and vLLM's custom all-reduce (``framework == "vllm_custom_allreduce"``).

Payload convention. The loader sets ``message_bytes = message_size x element size``, i.e. the
``nccl-tests`` ``-b`` size in bytes (aiconfigurator's ``collect_nccl.py`` divides it by the
element size, the loader multiplies back). nccl-tests sizes its buffers from that count
(``*GetCollByteCount`` in nccl-tests): all-reduce reduces a buffer of that size, all-gather's
*receive* (gathered) buffer has that size, reduce-scatter's *send* (input) buffer has that size,
and all-to-all's per-rank send buffer (own chunk included) has that size. These are exactly
the engine's conventions (:mod:`jaxmodel.perf.comm`: reduced / gathered / input buffer / bytes
one device sends), so ``payload_bytes = message_bytes`` for every collective; sizes are powers
of two, so nccl-tests' rounding of the per-rank chunk to 16 bytes never bites. vLLM's custom
all-reduce rows time a reduced BF16 tensor of ``message_size`` elements: ``payload_bytes =
message_bytes`` too.

Selection (:func:`select`): 2-byte element types only (the FP16/BF16 activations tensor
parallelism moves; NCCL's int8 reductions run slower, and on H100 NCCL's NVLink SHARP all-reduce
does not take 8-bit types), and of vLLM only the CUDA-graph rows (``kernel == "vllm_graph"``):
the eager rows add 20-44 us of host launch overhead that serving under CUDA graphs does not
pay. vLLM rows at or above 8 MiB ran NCCL (vLLM's fallback) and are predicted by the NCCL part.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import jaxmodel as jm
from calibration import fit as _fit
from calibration import metrics
from jaxmodel.kernels.collectives import START, VLLM_CUSTOM_MAX_BYTES, CollectiveModel
from jaxmodel.perf import comm

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
NCCL = "nccl"
VLLM = "vllm_custom_allreduce"
#: vLLM version measured on both GPUs (A100 has only this one).
VLLM_VERSION = "0.14.0"
TWO_BYTE = ("fp16", "bf16")


def select(table: pd.DataFrame, vllm_version: str | None = VLLM_VERSION, two_byte: bool = True) -> pd.DataFrame:
    """NCCL collectives and vLLM CUDA-graph custom all-reduce rows (of ``vllm_version``; None =
    every version), 2-byte element types unless ``two_byte`` is False."""
    nccl = table["framework"] == NCCL
    vllm = (table["framework"] == VLLM) & (table["kernel"] == "vllm_graph") & (table["op"] == "all_reduce")
    if vllm_version is not None:
        vllm &= table["framework_version"].astype(str) == vllm_version
    keep = (nccl | vllm) & table["op"].isin(KINDS)
    if two_byte:
        keep &= table["dtype"].isin(TWO_BYTE)
    return table[keep]


def series(table: pd.DataFrame) -> pd.Series:
    """Curve label of each row: ``"<framework> <op>"`` (one curve per GPU count)."""
    return table["framework"].astype(str) + " " + table["op"].astype(str)


def held_out(table: pd.DataFrame, seed: int = 0, fraction: float = 0.25) -> np.ndarray:
    """Mask holding out a random ``fraction`` of the distinct message sizes of every series
    (framework and collective), at every GPU count."""
    mask = np.zeros(len(table), bool)
    labels = series(table).to_numpy()
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        mask[where] = metrics.held_out_groups(table.iloc[where], ["message_bytes"], fraction=fraction, seed=seed)
    return mask


def rows(table: pd.DataFrame, system) -> dict[str, np.ndarray]:
    """Model inputs per row: payload, group size, the scale-up level's datasheet figures, the
    collective (one-hot) and whether vLLM's custom all-reduce may run."""
    n = len(table)
    level = system.scale_up
    if (table["gpus"].to_numpy(float) > float(system.devices_per_node)).any():
        raise ValueError("collectives rows: a group larger than one node; these rows model the scale-up level only")
    out = {
        "payload_bytes": table["message_bytes"].to_numpy(np.float64),
        "size": table["gpus"].to_numpy(np.float64),
        "bandwidth_Bps": np.full(n, float(level.bandwidth_Bps)),
        "link_latency_s": np.full(n, float(level.link_latency_s)),
        "startup_s": np.full(n, float(level.collective_latency_s)),
        "custom": (table["framework"] == VLLM).to_numpy(np.float64),
    }
    for kind in KINDS:
        out["is_" + kind] = (table["op"] == kind).to_numpy(np.float64)
    return out


def predict(params, r):
    """Seconds per row: each row timed as its own collective (vLLM rows may use the custom kernel)."""
    model = CollectiveModel(**params)
    args = (r["payload_bytes"], r["size"], r["bandwidth_Bps"], r["link_latency_s"], r["startup_s"])
    total = 0.0
    for kind in KINDS:
        extra = {"custom_allowed": r["custom"] > 0.5} if kind == "all_reduce" else {}
        total = total + r["is_" + kind] * model.time_s(kind, *args, **extra)
    return total


def alpha_beta(table: pd.DataFrame, system) -> np.ndarray:
    """The uncalibrated engine: :func:`jaxmodel.perf.comm.collective_time` with the preset's
    latencies and every efficiency 1 (vLLM rows are timed as NCCL ring all-reduces)."""
    out = np.zeros(len(table))
    eff = jm.Efficiency()
    payload, size = table["message_bytes"].to_numpy(np.float64), table["gpus"].to_numpy(np.float64)
    for kind in KINDS:
        mask = (table["op"] == kind).to_numpy()
        if mask.any():
            out[mask] = np.asarray(comm.collective_time(kind, payload[mask], size[mask], 1.0, system, eff))
    return out


def fit(table: pd.DataFrame, system, params0=None, **kw) -> _fit.FitResult:
    """Fit every parameter to the :func:`select` rows of one GPU. Parameters with no rows to
    inform them (e.g. the custom kernel's when no vLLM row is given) are held at ``params0``."""
    table = select(table)
    if table.empty:
        raise ValueError("collectives fit: no NCCL or vLLM custom all-reduce rows with a 2-byte dtype")
    if table["gpu"].nunique() > 1:
        raise ValueError(f"collectives fit: rows of several GPUs {sorted(table['gpu'].unique())}; fit one at a time")
    params0 = dict(START if params0 is None else params0)
    free = dict(params0)
    has_vllm = (table["framework"] == VLLM).any()
    custom_small = has_vllm and (table["message_bytes"][table["framework"] == VLLM] < VLLM_CUSTOM_MAX_BYTES).any()
    if not custom_small:
        free = {k: v for k, v in free.items() if not k.startswith("custom_")}
    ops = set(table["op"])
    for kind, names in (("all_gather", ("eta_all_gather",)), ("reduce_scatter", ("eta_reduce_scatter",)),
                        ("all_to_all", ("eta_all_to_all", "p2p_step", "p2p_ll_slowdown", "p2p_simple_startup"))):
        if kind not in ops:
            free = {k: v for k, v in free.items() if k not in names}
    fixed = {k: v for k, v in params0.items() if k not in free}

    def model(params, r):
        return predict({**fixed, **params}, r)

    return _fit.least_squares(model, free, rows(table, system), table["measured_s"].to_numpy(), **kw)


def full_params(result: _fit.FitResult, params0=None) -> dict[str, float]:
    """The fitted values completed with the starting values of parameters the fit held fixed."""
    return {**dict(START if params0 is None else params0), **result.params}
