"""Device-memory technologies as data: what one package gives, costs, burns and occupies.

A chip's bandwidth and capacity follow from ``packages x bus width x pin rate`` (see
:class:`jaxmodel.hardware.MemorySystem`); this table adds what the package costs, how much
power it draws, how much die area its PHY and controller take, and how much die edge
("beachfront") its PHY needs. Every number carries its source; derived ones say how.

Beachfront is kept as PHY edge length per package because the PHY's edge is fixed by its
bump pitch and bit count, not by the pin rate; SPAD Table 2's bandwidth per mm then follows
from the pin rate.
"""

from __future__ import annotations

from typing import NamedTuple

GiB = 2.0**30


class MemoryTechnology(NamedTuple):
    """One memory technology (all SI).

    Exactly one of ``joules_per_bit`` and ``watts_per_package`` is set: how the source
    gives the power.
    """

    name: str
    pin_rate_bps: float  # a typical shipping pin rate (presets may override)
    bits_per_package: float  # data bus width of one package (stack / device / module)
    capacity_per_package_bytes: float
    edge_mm_per_package: float  # die edge taken by the package's PHY
    usd_per_GiB: float  # price per GiB of capacity (DRAM's marketed "GB")
    joules_per_bit: float | None  # access energy, when given per bit
    watts_per_package: float | None  # full-bandwidth power, when given per package
    phy_mm2_per_package: float  # analog PHY area (does not shrink with the logic node)
    controller_transistors_per_package: float  # memory-controller logic (shrinks with the node)
    sources: str


# HBM PHY edge: H100's 5 stacks give 3352 GB/s at SPAD Table 2's 68 GB/s/mm -> 49.3 mm, 9.86 mm
# per stack. GDDR PHY edge: the RTX 5090's 16 GDDR7 devices give 1792 GB/s at 22 GB/s/mm ->
# 81.5 mm, 5.09 mm per device. LPDDR5X: the Apple M4's 128-bit bus gives 120 GB/s at 8 GB/s/mm
# -> 15 mm, 7.5 mm per 64-bit package.
_HBM_EDGE_MM = 3352e9 / 68e9 / 5
_GDDR_EDGE_MM = 1792e9 / 22e9 / 16
_LPDDR_EDGE_MM = 120e9 / 8e9 / 2
# HBM PHY and controller per stack from the annotated GA100 die (LLMCompass die_area.csv:
# memory PHY 58 mm^2 and controller 31.77 mm^2 for 6 HBM2e sites; 7 nm at 65.6 MTr/mm^2).
_HBM_PHY_MM2 = 58.0 / 6
_HBM_CTRL_TR = 31.77 / 6 * 65.6e6
# DDR-class PHY and controller per 32-bit channel (LLMCompass cost_model: DDR5 PHY 1.45 mm^2
# and 90.4 M controller transistors per 32-bit link unit).
_DDR_PHY_MM2_PER_32 = 1.45
_DDR_CTRL_TR_PER_32 = 90_446_400.0

TECHNOLOGIES: dict[str, MemoryTechnology] = {
    t.name: t
    for t in (
        MemoryTechnology(
            "hbm2e", 3.2e9, 1024, 16 * GiB, _HBM_EDGE_MM, 7.0, 3.9e-12, None, _HBM_PHY_MM2, _HBM_CTRL_TR,
            "JEDEC HBM2E 3.2 Gb/s x 1024 bits, 16 GiB 8-high stacks (A100 80GB); $7/GB DRAMeXchange Oct 2023 "
            "(LLMCompass cost_model); 3.9 pJ/bit (O'Connor et al., MICRO 2017, HBM2); PHY edge as HBM3 (same "
            "1024-bit interface); PHY/controller area from the GA100 die photo (LLMCompass die_area.csv)",
        ),
        MemoryTechnology(
            "hbm3", 6.4e9, 1024, 16 * GiB, _HBM_EDGE_MM, 9.0, None, 30.0, _HBM_PHY_MM2, _HBM_CTRL_TR,
            "JEDEC JESD238 HBM3 6.4 Gb/s x 1024 bits, 16 GiB stacks (H100); $9/GB and 30 W per stack "
            "(SPAD Sec. 6.1, Table 9 range $6-$12); 68 GB/s/mm at 3352 GB/s (SPAD Table 2); PHY/controller "
            "area as HBM2e (same interface class)",
        ),
        MemoryTechnology(
            "hbm3e", 9.6e9, 1024, 24 * GiB, _HBM_EDGE_MM, 12.0, None, 30.0, _HBM_PHY_MM2, _HBM_CTRL_TR,
            "HBM3E 9.6 Gb/s x 1024 bits, 24 GiB 8-high stacks (H200/B200 generation); priced at SPAD Table 9's "
            "top HBM3 price $12/GB (newer, scarcer stacks); 30 W per stack as HBM3 (SPAD Sec. 6.1); PHY as HBM3",
        ),
        MemoryTechnology(
            "gddr6", 16e9, 32, 2 * GiB, _GDDR_EDGE_MM, 3.0, 7.5e-12, None, _DDR_PHY_MM2_PER_32, _DDR_CTRL_TR_PER_32,
            "GDDR6 16 Gb/s x32 devices of 16 Gb; $3/GB GDDR6 spot price (SPAD Sec. 6.1); 7.5 pJ/bit (estimate: "
            "GDDR6 is commonly quoted at 7-8 pJ/bit against GDDR7's 4.5); PHY edge as GDDR7 (RTX 5090, SPAD "
            "Table 2); PHY/controller as DDR5 per 32 bits (LLMCompass cost_model)",
        ),
        MemoryTechnology(
            "gddr7", 32e9, 32, 4 * GiB, _GDDR_EDGE_MM, 3.0, 4.5e-12, None, _DDR_PHY_MM2_PER_32, _DDR_CTRL_TR_PER_32,
            "GDDR7 32 Gb/s x32 devices of 4 GB (SPAD Table 3: 16 packages, 512-bit, 64 GB); $3/GB and 4.5 "
            "pJ/bit (SPAD Sec. 6.1, Micron); 22 GB/s/mm on the RTX 5090 at 1792 GB/s (SPAD Table 2); "
            "PHY/controller as DDR5 per 32 bits (LLMCompass cost_model)",
        ),
        MemoryTechnology(
            "lpddr5x", 8.533e9, 64, 16 * GiB, _LPDDR_EDGE_MM, 2.4, 4.0e-12, None, 2 * _DDR_PHY_MM2_PER_32,
            2 * _DDR_CTRL_TR_PER_32,
            "JEDEC LPDDR5X-8533, x64 packages of 16 GiB; 8 GB/s/mm on the Apple M4 at 120 GB/s (SPAD Table 2); "
            "priced as DDR5 $2.4/GB (DRAMeXchange Oct 2023, LLMCompass cost_model; SPAD gives no price); "
            "4 pJ/bit (estimate between HBM2's 3.9 and GDDR7's 4.5); PHY/controller as DDR5 per 32 bits",
        ),
        MemoryTechnology(
            "ddr5", 4.8e9, 64, 32 * GiB, _LPDDR_EDGE_MM, 2.4, 15e-12, None, 2 * _DDR_PHY_MM2_PER_32,
            2 * _DDR_CTRL_TR_PER_32,
            "DDR5-4800 64-bit channels with 32 GiB DIMMs (LLMCompass design space: 4.8 Gb/s x 32-bit link "
            "units); $2.4/GB DRAMeXchange Oct 2023 (LLMCompass cost_model); 15 pJ/bit for off-package DIMMs "
            "(estimate, O'Connor et al. MICRO 2017 report DDR-class interfaces at several times HBM's "
            "energy); PHY edge as LPDDR5X (estimate); PHY/controller from LLMCompass cost_model",
        ),
    )
}

NAMES = tuple(TECHNOLOGIES)


def technology(name: str) -> MemoryTechnology:
    if name not in TECHNOLOGIES:
        raise ValueError(f"memory technology must be one of {', '.join(NAMES)} (got {name!r})")
    return TECHNOLOGIES[name]
