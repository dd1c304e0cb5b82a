"""Per-design-point status bits. Infeasible points are data: their metrics stay finite."""

from __future__ import annotations

import numpy as np

OK = 0
DOES_NOT_FIT = 1  # device-memory share exceeds usable device memory, or the offload tier overflows
INVALID_TP = 2  # TP degree does not divide the attention heads (or KV heads)
INVALID_EP = 4  # EP degree does not divide the routed experts, or EP > 1 on a dense model
INVALID_PP = 8  # more pipeline stages than layers
OVER_BEACHFRONT = 16  # the memory PHYs need more die edge than the die offers
OVER_RETICLE = 32  # the die is larger than a lithography reticle (858 mm²)
OFFLOAD_FULL = 64  # the offloaded weights and KV cache exceed the offload tier's capacity

_NAMES = {
    DOES_NOT_FIT: "does_not_fit",
    INVALID_TP: "invalid_tp",
    INVALID_EP: "invalid_ep",
    INVALID_PP: "invalid_pp",
    OVER_BEACHFRONT: "over_beachfront",
    OVER_RETICLE: "over_reticle",
    OFFLOAD_FULL: "offload_full",
}
INVALID = INVALID_TP | INVALID_EP | INVALID_PP


def describe(code) -> str:
    """Comma-separated names of the bits set in ``code`` (``"ok"`` if none)."""
    code = int(code)
    names = [name for bit, name in _NAMES.items() if code & bit]
    return ",".join(names) if names else "ok"


def describe_array(codes) -> np.ndarray:
    """Vectorized :func:`describe` over an array of codes."""
    codes = np.asarray(codes).astype(int)
    uniq, inv = np.unique(codes, return_inverse=True)
    return np.array([describe(c) for c in uniq], dtype=object)[inv].reshape(codes.shape)
