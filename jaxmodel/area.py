"""Die area of a microarchitecture-level chip, and whether its memory PHYs fit the die edge.

The model follows LLMCompass's area model (Zhang et al., ISCA 2024), which SPAD extended:
logic is counted in transistors and converted with the process node's density, SRAM in
bit cells over an array efficiency, and analog PHYs in mm² that do not shrink with the node.

Component                       | count                              | unit size
--------------------------------|------------------------------------|------------------------------------------
systolic PEs                    | cores x lanes x rows x cols        | MAC transistors for the widest mantissa
vector lanes                    | cores x lanes x vector width       | fp32 + int32 ALU and per-lane control
sub-core fixed logic            | cores x lanes                      | register file, schedulers, SFU, LSU
L1 and L2 SRAM                  | bytes                              | bit cell / array efficiency
core crossbar port              | cores                              | transistors per core
memory PHY + controller         | packages                           | per technology (:mod:`memory_tech`)
scale-up links                  | scale-up bandwidth / 25 GB/s       | NVLink PHY + controller
other (PCIe, media, fuses, ...) | 1                                  | fixed transistors

Disabled spare units (``Die.spare_*``) are counted as built; ``Die.overhead`` adds white space
(and, for a hypothetical chip, its spares: SPAD's 10%).

Four scale factors (:data:`FITTED`) on the PE, vector lane, sub-core and SRAM sizes are fitted
by ``benchmarks/area_calibration.py`` to the published die areas of the H100 (814 mm²), A100
(826 mm²) and SPAD's two chips (784 and 520 mm²), with a prior that keeps them near 1; every
other number is taken from a die photo or LLMCompass, as noted beside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _checks, memory_tech

if TYPE_CHECKING:
    from .hardware import SystolicChip, System


class ProcessNode(NamedTuple):
    logic_transistors_per_mm2: float
    sram_bitcell_mm2: float
    wafer_price_usd: float  # 300 mm wafer
    die_watts_per_mm2: float  # TDP power density of a datacenter accelerator die
    source: str


# Power density as SPAD derives it for the H100: TDP x 90% (VRM and peripherals) less memory
# power, over the die area. H100: 700 W, 5 HBM3 stacks x 30 W, 814 mm². A100 SXM: 400 W, 5 HBM2e
# stacks at 3.9 pJ/bit x 2039 GB/s = 63.6 W, 826 mm².
_H100_W_PER_MM2 = (700.0 * 0.9 - 5 * 30.0) / 814.0
_A100_W_PER_MM2 = (400.0 * 0.9 - 3.9e-12 * 8 * 2039e9) / 826.0


PROCESS_NODES: dict[str, ProcessNode] = {
    "7nm": ProcessNode(54.2e9 / 826.0, 0.027e-6, 9346.0, _A100_W_PER_MM2,
                       "GA100: 54.2 B transistors on 826 mm² (NVIDIA A100 whitepaper); TSMC N7 high-density "
                       "bit cell 0.027 um²; wafer $9,346 (CSET, 'AI Chips: What They Are and Why They Matter', "
                       "2020); power density of the 400 W A100 SXM"),
    "5nm": ProcessNode(80e9 / 814.0 / 1.06, 0.021e-6, 16988.0, _H100_W_PER_MM2,
                       "N4 density / 1.06 (TSMC: N4 shrinks N5 dies by 6%); TSMC N5 bit cell 0.021 um² (IEDM "
                       "2019); wafer $16,988 (CSET 2020); power density as N4 (same process family)"),
    "4nm": ProcessNode(80e9 / 814.0, 0.021e-6, 20000.0, _H100_W_PER_MM2,
                       "GH100: 80 B transistors on 814 mm² (NVIDIA H100 whitepaper); N4 keeps N5's bit cell; "
                       "wafer $20,000 (SPAD Sec. 6.1); power density of the 700 W H100 SXM (SPAD Sec. 6.1)"),
}

#: Mantissa bits of each compute dtype's multiplier (the tensor-core fp32 path is TF32).
_MANTISSA_BITS = {"fp32": 10, "bf16": 7, "fp16": 10, "fp8": 3, "int8": 8, "fp4": 1, "int4": 4}
#: LLMCompass's FPU sizes: a 64-bit FPU of 685,300 transistors (Ariane, OpenPiton), scaled by the
#: square of the mantissa width; int32 ALU 177,690; control per vector lane 725,650 (NVIDIA SM).
_FPU64_TRANSISTORS = 685_300.0
_VECTOR_LANE_TRANSISTORS = _FPU64_TRANSISTORS * (23 / 52) ** 2 + 177_690.0 + 725_650.0
#: GA100 die photo (LLMCompass die_area.csv), on 128 physical SMs at 7 nm (65.6 MTr/mm²):
#: an SM is 3.72 mm², of which 0.46 mm² per sub-core is neither arrays, vector lanes nor L1;
#: the on-chip crossbar 76.44 mm² (per SM: 0.597 mm²); "other" 40 mm².
_GA100_DENSITY = 54.2e9 / 826.0
_SUBCORE_TRANSISTORS = 0.461 * _GA100_DENSITY
_CROSSBAR_TRANSISTORS_PER_CORE = 76.44 / 128 * _GA100_DENSITY
_OTHER_TRANSISTORS = 40.0 * _GA100_DENSITY
#: GA100's 48 MiB L2 takes 119.31 mm² against 10.9 mm² of raw N7 bit cells: array efficiency 9.1%
#: (tags, sense amplifiers, banking and the L2's share of wiring).
_SRAM_EFFICIENCY = 48 * 2**23 * 0.027e-6 / 119.31
#: NVLink: 25 GB/s per direction per link (NVLink 3 and 4); PHY 20.95 mm² for GA100's 12 links
#: (die_area.csv); controller 86.6 M transistors per link (LLMCompass cost_model, NVLink 4).
LINK_BANDWIDTH_BPS = 25e9
_LINK_PHY_MM2 = 20.95 / 12
_LINK_CONTROLLER_TRANSISTORS = 86_628_000.0
#: Share of the die perimeter that memory PHYs may take: the RTX 5090's GDDR7 PHYs take 81.5 mm of
#: its 750 mm² die's 109.5 mm perimeter (74%), the most of any shipping part in SPAD Table 2.
MEMORY_EDGE_FRACTION = 0.75
#: Largest die a lithography reticle exposes (26 mm x 33 mm).
RETICLE_MM2 = 858.0


class AreaScales(NamedTuple):
    """Fitted multipliers on the unit sizes (see the module docstring)."""

    pe: float
    vector_lane: float
    subcore: float
    sram: float


#: Output of ``python benchmarks/area_calibration.py`` (prior weight 0.1 on log scales).
FITTED = AreaScales(pe=1.737, vector_lane=0.775, subcore=0.652, sram=0.834)


class Die(eqx.Module):
    """What the area model needs beyond the chip's enabled resources.

    Attributes:
        process_node: ``"7nm"``, ``"5nm"`` or ``"4nm"`` (static).
        overhead: white space (and unmodeled spares) as a fraction of the component area.
        spare_cores, spare_l2_bytes, spare_memory_packages: units built on the die but fused
            off (e.g. the H100 SXM enables 132 of GH100's 144 SMs).
    """

    process_node: str = eqx.field(static=True)
    overhead: jax.Array
    spare_cores: jax.Array
    spare_l2_bytes: jax.Array
    spare_memory_packages: jax.Array

    def __init__(self, process_node="4nm", overhead=0.10, spare_cores=0.0, spare_l2_bytes=0.0,
                 spare_memory_packages=0.0):
        _checks.one_of(process_node, tuple(PROCESS_NODES), "Die", "process_node")
        self.process_node = process_node
        for name, value in (("overhead", overhead), ("spare_cores", spare_cores),
                            ("spare_l2_bytes", spare_l2_bytes), ("spare_memory_packages", spare_memory_packages)):
            setattr(self, name, _checks.as_float(value, "Die", name))
            _checks.non_negative(getattr(self, name), "Die", name)


def pe_transistors(dtypes) -> float:
    """One PE's MAC, sized for the widest multiplier among the dtypes it runs."""
    return _FPU64_TRANSISTORS * (max(_MANTISSA_BITS[d] for d in dtypes) / 52) ** 2


def scale_up_links(system: System) -> jax.Array:
    return system.scale_up.bandwidth_Bps / LINK_BANDWIDTH_BPS


def area_breakdown(system: System, scales: AreaScales = FITTED) -> dict[str, jax.Array]:
    """Die area in mm² per component (built units, before overhead) plus ``"overhead"``
    and ``"total"``. Needs a :class:`~jaxmodel.hardware.SystolicChip`."""
    chip = _systolic(system)
    die = chip.die
    node = PROCESS_NODES[die.process_node]
    per_tr = 1.0 / node.logic_transistors_per_mm2
    sram_mm2_per_byte = 8.0 * node.sram_bitcell_mm2 / _SRAM_EFFICIENCY * scales.sram
    tech = memory_tech.technology(chip.memory.technology)
    cores = chip.cores + die.spare_cores
    subcores = cores * chip.lanes
    packages = chip.memory.packages + die.spare_memory_packages
    links = scale_up_links(system)
    parts = {
        "systolic_arrays": subcores * chip.array_rows * chip.array_cols
        * pe_transistors(chip.macs_per_pe_cycle) * scales.pe * per_tr,
        "vector_units": subcores * chip.vector_width * _VECTOR_LANE_TRANSISTORS * scales.vector_lane * per_tr,
        "subcore_logic": subcores * _SUBCORE_TRANSISTORS * scales.subcore * per_tr,
        "l1": cores * chip.l1_bytes * sram_mm2_per_byte,
        "l2": (chip.l2_bytes + die.spare_l2_bytes) * sram_mm2_per_byte,
        "crossbar": cores * _CROSSBAR_TRANSISTORS_PER_CORE * per_tr,
        "memory_phy": packages * tech.phy_mm2_per_package,
        "memory_controller": packages * tech.controller_transistors_per_package * per_tr,
        "link_phy": links * _LINK_PHY_MM2,
        "link_controller": links * _LINK_CONTROLLER_TRANSISTORS * per_tr,
        "other": jnp.full_like(cores, _OTHER_TRANSISTORS * per_tr),
    }
    built = sum(parts.values())
    parts["overhead"] = built * die.overhead
    parts["total"] = built + parts["overhead"]
    return parts


def die_area_mm2(system: System, scales: AreaScales = FITTED) -> jax.Array:
    return area_breakdown(system, scales)["total"]


def memory_edge_mm(system: System) -> jax.Array:
    """Die edge the memory PHYs need."""
    chip = _systolic(system)
    tech = memory_tech.technology(chip.memory.technology)
    # Fused-off packages keep their PHY sites on the edge; a bus narrower than the
    # technology's package width uses part of a PHY.
    sites = chip.memory.bus_width_bits / tech.bits_per_package + chip.die.spare_memory_packages
    return sites * tech.edge_mm_per_package


def memory_edge_available_mm(area_mm2) -> jax.Array:
    """Edge a square die of this area offers to memory PHYs."""
    return MEMORY_EDGE_FRACTION * 4.0 * jnp.sqrt(area_mm2)


def _systolic(system: System) -> SystolicChip:
    from .hardware import SystolicChip

    if not isinstance(system.chip, SystolicChip):
        raise ValueError("die area, cost and power need a chip described at microarchitecture level "
                         "(SystolicChip); presets with one: h100-sxm, a100-sxm-80gb, spad-prefill, spad-decode")
    return system.chip
