"""Multi-level network examples: GenZ's high-bandwidth-domain case study (Sec. VII-C).

GenZ (Bambhaniya et al., "Demystifying AI Platform Design for Distributed Inference of
Next-Generation LLM models", Sec. VII-C) compares five ways of wiring 256 NPUs of 9 PFLOP/s,
256 GB of HBM at 13.5 TB/s, as three network dimensions of 8, 8 (or 16) and 4 (or 2) NPUs:

Table VIII, link types (per-NPU bandwidth, link latency):
    SL (scale-up, NVLink/UALink-like)   1800 GB/s   500 ns
    IB (InfiniBand)                      256 GB/s    10 us
    Optical                              900 GB/s   200 ns

Table IX, configurations (dimension sizes innermost first; link type of each dimension):
    A  8, 8, 4   SL, IB, IB          HBD 8
    B  8, 8, 4   SL, SL, IB          HBD 64
    C  8, 16, 2  SL, SL, IB          HBD 128
    D  8, 8, 4   SL, SL, SL          HBD 256
    E  8, 8, 4   SL, SL, Optical     HBD 64

Each maps onto a :class:`~jaxmodel.hardware.System` as scale-up = first
dimension, one middle level = second dimension, scale-out = third (its size is implied by
the 256 devices a TP 64 x PP 4 workload uses). The paper gives no start-up latency per
collective, so it is 0; GB is read as 10^9 bytes. GenZ runs its third dimension as a ring
and the first two as switches; the alpha-beta model here charges every level the same way
(per-device bandwidth, one α per algorithm step).
"""

from __future__ import annotations

from .hardware import Chip, Interconnect, NetworkLevel, System

#: Table VIII: (bandwidth in bytes/s per NPU, link latency in s).
GENZ_LINKS = {
    "SL": (1800e9, 500e-9),
    "IB": (256e9, 10e-6),
    "Optical": (900e9, 200e-9),
}

#: Table IX: (dimension sizes innermost first, link type of each dimension).
GENZ_HBD_CONFIGS = {
    "A": ((8, 8, 4), ("SL", "IB", "IB")),
    "B": ((8, 8, 4), ("SL", "SL", "IB")),
    "C": ((8, 16, 2), ("SL", "SL", "IB")),
    "D": ((8, 8, 4), ("SL", "SL", "SL")),
    "E": ((8, 8, 4), ("SL", "SL", "Optical")),
}


def genz_link(kind: str) -> Interconnect:
    """One link type of GenZ Table VIII (no collective start-up latency, efficiency 1)."""
    if kind not in GENZ_LINKS:
        raise ValueError(f"GenZ link type must be one of {sorted(GENZ_LINKS)} (got {kind!r})")
    bandwidth, latency = GENZ_LINKS[kind]
    return Interconnect(bandwidth, latency, 0.0)


def genz_hbd_npu() -> Chip:
    """The NPU of GenZ Sec. VII-C: 9 PFLOP/s, 256 GB of HBM at 13.5 TB/s.

    The paper gives one compute figure without a precision; it is declared as the 16-bit
    tensor peak (narrower dtypes fall back to it) and, since GenZ runs every operator on that
    one engine, as the vector peak too.
    """
    return Chip(tensor_flops={"bf16": 9e15}, vector_flops=9e15, mem_bw_Bps=13.5e12, mem_capacity_bytes=256e9)


def genz_hbd_system(config: str, chip: Chip | None = None) -> System:
    """The 256-NPU system of GenZ Table IX configuration ``"A"`` to ``"E"``."""
    if config not in GENZ_HBD_CONFIGS:
        raise ValueError(f"GenZ HBD config must be one of {sorted(GENZ_HBD_CONFIGS)} (got {config!r})")
    sizes, kinds = GENZ_HBD_CONFIGS[config]
    return System(
        genz_hbd_npu() if chip is None else chip,
        devices_per_node=sizes[0],
        scale_up=genz_link(kinds[0]),
        scale_out=genz_link(kinds[-1]),
        middle_levels=tuple(NetworkLevel(size, genz_link(kind)) for size, kind in zip(sizes[1:-1], kinds[1:-1])),
    )
