"""What a chip costs to build, how much power it is provisioned for, and what a token costs.

All from the same chip parameters as its performance, so sweeps and gradients trade speed
against dollars and watts:

* **Die cost** (SPAD Sec. 6.1): dies per wafer ``π(d/2)²/A − πd/√(2A)`` (not floored), wafer
  price by process node, and optionally a negative-binomial yield ``(1 + D·A/α)^−α`` (off by
  default, as in SPAD). **Memory cost**: capacity x price per GiB (DRAM's marketed "GB").
  **Hardware cost** = die + memory (SPAD excludes packaging, masks and design).
* **TDP** (SPAD Sec. 6.1): ``(ρ·A + P_mem) / 0.9`` with the die power density ρ of the
  process node (at 4 nm the H100's, ``(700·0.9 − 5·30) W / 814 mm²``; see
  :data:`jaxmodel.area.PROCESS_NODES`) and memory power from :mod:`jaxmodel.memory_tech`.
* **Energy** (GenZ eq. 2): an operator of ``T`` seconds uses
  ``T·P_static + P_compute·busy_compute + P_memory·busy_memory + P_network·busy_network``, the
  busy times coming from the operator model; divided by the VRM efficiency for wall energy.
* **Cost per token**: the hardware's cost amortized over its lifetime at a utilization, plus
  energy at a facility PUE and electricity price.

Die geometry is in mm and mm² (named so); everything else is SI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _checks, area, memory_tech, ops, status

if TYPE_CHECKING:
    from .hardware import System
    from .inference import StepResult
    from .workload import Workload

GiB = 2.0**30
_YEAR_S = 365.25 * 24 * 3600.0


class Economics(eqx.Module):
    """Prices and power assumptions that turn a chip into dollars, watts and joules.

    Attributes:
        wafer_price_usd: price of one wafer; 0 means the process node's price
            (:data:`jaxmodel.area.PROCESS_NODES`).
        wafer_diameter_mm: 300 mm.
        use_yield: apply the negative-binomial die yield (static; SPAD does not).
        defect_density_per_mm2: killer defects per mm² (0.001 = 0.1 per cm², a mature node).
        defect_clustering: α of the negative binomial (3 is customary).
        memory_usd_per_GiB: price per GiB by technology (defaults in :mod:`memory_tech`).
        die_watts_per_mm2: TDP power density of the die; 0 means the process node's (at 4 nm
            the H100's, as in SPAD).
        vrm_efficiency: share of wall power reaching die and memory (SPAD: 90%).
        static_power_fraction: share of die power drawn whatever the load (leakage, clocks).
        link_joules_per_bit: scale-up link energy per bit sent.
        lifetime_s: amortization period of the hardware.
        utilization: share of its lifetime the hardware serves work that pays for it.
        electricity_usd_per_J: energy price; pue: facility power usage effectiveness.
    """

    wafer_price_usd: jax.Array
    wafer_diameter_mm: jax.Array
    use_yield: bool = eqx.field(static=True)
    defect_density_per_mm2: jax.Array
    defect_clustering: jax.Array
    memory_usd_per_GiB: dict[str, jax.Array]
    die_watts_per_mm2: jax.Array
    vrm_efficiency: jax.Array
    static_power_fraction: jax.Array
    link_joules_per_bit: jax.Array
    lifetime_s: jax.Array
    utilization: jax.Array
    electricity_usd_per_J: jax.Array
    pue: jax.Array

    def __init__(self, wafer_price_usd=0.0, wafer_diameter_mm=300.0, use_yield=False, defect_density_per_mm2=0.001,
                 defect_clustering=3.0, memory_usd_per_GiB=None, die_watts_per_mm2=0.0,
                 vrm_efficiency=0.9, static_power_fraction=0.3, link_joules_per_bit=5e-12,
                 lifetime_s=5 * _YEAR_S, utilization=1.0, electricity_usd_per_J=0.08 / 3.6e6, pue=1.2):
        owner = "Economics"
        self.use_yield = bool(use_yield)
        prices = {name: t.usd_per_GiB for name, t in memory_tech.TECHNOLOGIES.items()}
        for name, value in (memory_usd_per_GiB or {}).items():
            _checks.one_of(name, memory_tech.NAMES, owner, "memory_usd_per_GiB key")
            prices[name] = value
        self.memory_usd_per_GiB = {}
        for name, value in prices.items():
            self.memory_usd_per_GiB[name] = _checks.as_float(value, owner, f"memory_usd_per_GiB[{name!r}]")
            _checks.non_negative(self.memory_usd_per_GiB[name], owner, f"memory_usd_per_GiB[{name!r}]")
        for name, value, check in (
            ("wafer_price_usd", wafer_price_usd, _checks.non_negative),
            ("wafer_diameter_mm", wafer_diameter_mm, _checks.positive),
            ("defect_density_per_mm2", defect_density_per_mm2, _checks.non_negative),
            ("defect_clustering", defect_clustering, _checks.positive),
            ("die_watts_per_mm2", die_watts_per_mm2, _checks.non_negative),
            ("vrm_efficiency", vrm_efficiency, _unit_interval),
            ("static_power_fraction", static_power_fraction, _checks.fraction),
            ("link_joules_per_bit", link_joules_per_bit, _checks.non_negative),
            ("lifetime_s", lifetime_s, _checks.positive),
            ("utilization", utilization, _unit_interval),
            ("electricity_usd_per_J", electricity_usd_per_J, _checks.non_negative),
            ("pue", pue, _checks.positive),
        ):
            setattr(self, name, _checks.as_float(value, owner, name))
            check(getattr(self, name), owner, name)
        _checks.check_range(self.pue, owner, "pue", low=1.0)


def _unit_interval(value, owner, field):
    _checks.check_range(value, owner, field, low=0.0, low_inclusive=False, high=1.0)


# ---- die and memory cost ------------------------------------------------------------------
def dies_per_wafer(die_area_mm2, wafer_diameter_mm=300.0):
    """Gross dies per wafer, not floored (SPAD's choice, which keeps it differentiable)."""
    d = wafer_diameter_mm
    return jnp.pi * (d / 2.0) ** 2 / die_area_mm2 - jnp.pi * d / jnp.sqrt(2.0 * die_area_mm2)


def die_yield(die_area_mm2, econ: Economics):
    """Negative-binomial yield, or 1 when ``econ.use_yield`` is off."""
    if not econ.use_yield:
        return jnp.ones_like(jnp.asarray(die_area_mm2, dtype=float))
    return (1.0 + econ.defect_density_per_mm2 * die_area_mm2 / econ.defect_clustering) ** (-econ.defect_clustering)


def wafer_price_usd(process_node: str, econ: Economics):
    node_price = area.PROCESS_NODES[process_node].wafer_price_usd
    return jnp.where(econ.wafer_price_usd > 0, econ.wafer_price_usd, node_price)


def die_cost_usd(die_area_mm2, econ: Economics, process_node: str = "4nm"):
    good_dies = dies_per_wafer(die_area_mm2, econ.wafer_diameter_mm) * die_yield(die_area_mm2, econ)
    return wafer_price_usd(process_node, econ) / good_dies


def memory_cost_usd(system: System, econ: Economics):
    memory = system.chip.memory
    return memory.capacity_bytes / GiB * econ.memory_usd_per_GiB[memory.technology]


# ---- power ----------------------------------------------------------------------------------
def memory_power_w(system: System):
    """Device-memory power at full bandwidth."""
    memory = system.chip.memory
    tech = memory_tech.technology(memory.technology)
    if tech.watts_per_package is not None:
        return memory.packages * tech.watts_per_package
    return memory.bandwidth_Bps * 8.0 * tech.joules_per_bit


def link_power_w(system: System, econ: Economics):
    """Scale-up links at full bandwidth, both directions."""
    return 2.0 * system.scale_up.bandwidth_Bps * 8.0 * econ.link_joules_per_bit


def die_power_w(die_area_mm2, system: System, econ: Economics):
    """Die share of the TDP (before VRM losses)."""
    node_density = area.PROCESS_NODES[system.chip.die.process_node].die_watts_per_mm2
    density = jnp.where(econ.die_watts_per_mm2 > 0, econ.die_watts_per_mm2, node_density)
    return density * die_area_mm2


def tdp_w(die_area_mm2, system: System, econ: Economics):
    return (die_power_w(die_area_mm2, system, econ) + memory_power_w(system)) / econ.vrm_efficiency


def chip_metrics(system: System, econ: Economics | None = None) -> dict[str, jax.Array]:
    """Peaks, die area, cost and TDP of one chip (``jaxmodel chip``), plus status bits."""
    econ = Economics() if econ is None else econ
    chip = system.chip
    die_area = area.die_area_mm2(system)
    die = die_cost_usd(die_area, econ, chip.die.process_node)
    memory = memory_cost_usd(system, econ)
    edge_needed = area.memory_edge_mm(system)
    edge_available = area.memory_edge_available_mm(die_area)
    code = (jnp.where(edge_needed > edge_available, status.OVER_BEACHFRONT, 0)
            | jnp.where(die_area > area.RETICLE_MM2, status.OVER_RETICLE, 0)).astype(jnp.int32)
    return {
        "tensor_flops": chip.tensor_peak("fp16"),
        "vector_flops": chip.vector_flops,
        "mem_bw_Bps": chip.mem_bw_Bps,
        "mem_capacity_bytes": chip.mem_capacity_bytes,
        "die_area_mm2": die_area,
        "dies_per_wafer": dies_per_wafer(die_area, econ.wafer_diameter_mm),
        "die_cost_usd": die,
        "memory_cost_usd": memory,
        "total_cost_usd": die + memory,
        "machine_cost_usd": (die + memory) * system.devices_per_node,
        "tdp_w": tdp_w(die_area, system, econ),
        "memory_edge_mm": edge_needed,
        "memory_edge_available_mm": edge_available,
        "chip_status": code,
    }


# ---- energy and cost per token -----------------------------------------------------------------
def _component_powers(system: System, econ: Economics, die_area_mm2):
    """(static, compute, memory, network) power in W at the chip (before VRM losses)."""
    die_power = die_power_w(die_area_mm2, system, econ)
    static = die_power * econ.static_power_fraction
    network = link_power_w(system, econ)
    compute = jnp.maximum(die_power - static - network, 0.0)
    return static, compute, memory_power_w(system), network


def _row_dynamic_j(result: StepResult, powers) -> list:
    """Load-dependent energy at the chip of one execution of each row on one device, given
    the :func:`_component_powers`."""
    _, compute, memory_power, network = powers
    times, energies = result.row_times, []
    for i, row in enumerate(result.table.rows):
        t = times.time[i]
        if row.kind == ops.COLLECTIVE:
            energies.append(network * t)
        else:
            busy_compute = jnp.minimum(times.tensor[i] + times.vector[i], t)
            energies.append(compute * busy_compute + memory_power * jnp.minimum(times.memory[i], t))
    return energies


def row_energies_j(result: StepResult, system: System, econ: Economics, die_area_mm2) -> list:
    """GenZ eq. 2 per operator: wall energy of one execution of each row on one device."""
    powers = _component_powers(system, econ, die_area_mm2)
    static = powers[0]
    dynamic = _row_dynamic_j(result, powers)
    return [(static * t + e) / econ.vrm_efficiency for t, e in zip(result.row_times.time, dynamic)]


def step_energy_j(result: StepResult, step_s, micro_batches, wl: Workload, system: System, econ: Economics,
                  die_area_mm2):
    """Wall energy of a whole step on all devices: every micro-batch's dynamic energy on the
    devices of each stage (the table holds one micro-batch through every layer), and static
    power on every device for the step's duration."""
    powers = _component_powers(system, econ, die_area_mm2)
    static = powers[0]
    dynamic = sum(e * r for e, r in zip(_row_dynamic_j(result, powers), result.table.repeat))
    devices_per_stage = wl.devices / wl.pp
    return (devices_per_stage * micro_batches * dynamic + wl.devices * static * step_s) / econ.vrm_efficiency


def hardware_usd_per_s(econ: Economics, total_cost_usd):
    """Amortized hardware cost of one device per second of work."""
    return total_cost_usd / (econ.lifetime_s * econ.utilization)


def work_cost_usd(seconds, energy_j, devices, econ: Economics, total_cost_usd):
    """Hardware time of ``devices`` for ``seconds`` plus ``energy_j`` at the facility."""
    return (devices * seconds * hardware_usd_per_s(econ, total_cost_usd)
            + energy_j * econ.pue * econ.electricity_usd_per_J)
