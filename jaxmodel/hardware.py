"""Hardware: a chip (at datasheet or microarchitecture level), the networks joining chips, and
the system they form.

Every magnitude is an array leaf, so a batch of systems is the same pytree with a leading
axis, and every metric can be differentiated with respect to every field. Units are SI:
FLOP/s, bytes/s, bytes, seconds.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _checks, memory_tech
from .area import Die
from .cost import Economics

#: Compute dtypes a chip may declare a tensor peak for. 16-bit floats share one peak.
TENSOR_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "fp4", "int4")


class Chip(eqx.Module):
    """One accelerator: peak compute per dtype, vector compute, and its local memory.

    Attributes:
        tensor_flops: dense (non-sparse) matrix-unit peak in FLOP/s, keyed by compute dtype
            (``"fp32"`` means the matrix unit's fp32/tf32 path). A dtype the chip cannot
            run natively is simply absent; see :meth:`tensor_peak`.
        vector_flops: fp32 peak of the non-matrix (vector/SIMT) units in FLOP/s; norms,
            softmax, activations and other elementwise work run there.
        mem_bw_Bps: peak bandwidth of device memory (HBM/GDDR) in bytes/s.
        mem_capacity_bytes: device memory capacity in bytes.
    """

    tensor_flops: dict[str, jax.Array]
    vector_flops: jax.Array
    mem_bw_Bps: jax.Array
    mem_capacity_bytes: jax.Array

    def __init__(self, tensor_flops, vector_flops, mem_bw_Bps, mem_capacity_bytes):
        self.tensor_flops = _per_dtype(tensor_flops, "Chip", "tensor_flops", "FLOP/s")
        self.vector_flops = _checks.as_float(vector_flops, "Chip", "vector_flops")
        self.mem_bw_Bps = _checks.as_float(mem_bw_Bps, "Chip", "mem_bw_Bps")
        self.mem_capacity_bytes = _checks.as_float(mem_capacity_bytes, "Chip", "mem_capacity_bytes")
        _checks.positive(self.vector_flops, "Chip", "vector_flops")
        _checks.positive(self.mem_bw_Bps, "Chip", "mem_bw_Bps")
        _checks.positive(self.mem_capacity_bytes, "Chip", "mem_capacity_bytes")

    def tensor_peak(self, dtype: str) -> jax.Array:
        """Matrix-unit peak for a compute dtype (see :func:`tensor_peak`)."""
        return tensor_peak(self.tensor_flops, dtype)


def _per_dtype(values, owner: str, field: str, unit: str) -> dict[str, jax.Array]:
    """A validated ``{compute dtype: positive value}`` table (peaks, MAC rates)."""
    if not isinstance(values, dict) or not values:
        raise ValueError(f"{owner}.{field} must be a non-empty dict {{dtype: {unit}}}")
    table = {}
    for dtype, value in values.items():
        _checks.one_of(dtype, TENSOR_DTYPES, owner, f"{field} key")
        table[dtype] = _checks.as_float(value, owner, f"{field}[{dtype!r}]")
        _checks.positive(table[dtype], owner, f"{field}[{dtype!r}]")
    return table


def tensor_peak(tensor_flops: dict, dtype: str) -> jax.Array:
    """The peak in ``tensor_flops`` that runs compute dtype ``dtype``.

    A chip without native support for a narrow dtype runs it through the next wider
    path it has (e.g. FP8 weights on an A100 are up-converted and multiplied in BF16),
    which is what serving stacks do; a dtype wider than every declared path is an error.
    """
    _checks.one_of(dtype, TENSOR_DTYPES, "Workload", "compute_dtype")
    if dtype in tensor_flops:
        return tensor_flops[dtype]
    fallbacks = {
        "fp16": ("bf16",),
        "bf16": ("fp16",),
        "fp8": ("bf16", "fp16"),
        "int8": ("bf16", "fp16"),
        "fp4": ("fp8", "bf16", "fp16"),
        "int4": ("int8", "bf16", "fp16"),
        "fp32": (),
    }[dtype]
    for alt in fallbacks:
        if alt in tensor_flops:
            return tensor_flops[alt]
    raise ValueError(
        f"Chip declares no tensor peak usable for compute dtype {dtype!r}; "
        f"it has {sorted(tensor_flops)}"
    )


#: Device-memory technologies a :class:`MemorySystem` may name.
MEMORY_TECHNOLOGIES = memory_tech.NAMES


class MemorySystem(eqx.Module):
    """Device memory built from packages (HBM stacks, GDDR chips) on a shared bus.

    Attributes:
        technology: memory technology name (static), one of :data:`MEMORY_TECHNOLOGIES`.
        bus_width_bits: total data bus width over all packages, in bits.
        pin_rate_bps: data rate per pin, bits/s.
        packages: number of memory packages.
        capacity_per_package_bytes: bytes per package.
    """

    technology: str = eqx.field(static=True)
    bus_width_bits: jax.Array
    pin_rate_bps: jax.Array
    packages: jax.Array
    capacity_per_package_bytes: jax.Array

    def __init__(self, technology, bus_width_bits, pin_rate_bps, packages, capacity_per_package_bytes):
        _checks.one_of(technology, MEMORY_TECHNOLOGIES, "MemorySystem", "technology")
        self.technology = technology
        for name, value in (("bus_width_bits", bus_width_bits), ("pin_rate_bps", pin_rate_bps),
                            ("packages", packages), ("capacity_per_package_bytes", capacity_per_package_bytes)):
            setattr(self, name, _checks.as_float(value, "MemorySystem", name))
            _checks.positive(getattr(self, name), "MemorySystem", name)

    @property
    def bandwidth_Bps(self) -> jax.Array:
        return self.bus_width_bits * self.pin_rate_bps / 8.0

    @property
    def capacity_bytes(self) -> jax.Array:
        return self.packages * self.capacity_per_package_bytes


class SystolicChip(eqx.Module):
    """An accelerator described at microarchitecture level (LLMCompass's abstraction).

    The chip has ``cores``; each core has ``lanes`` sub-cores, and each lane one systolic
    array of ``array_rows x array_cols`` processing elements and a vector unit of
    ``vector_width`` lanes. Each core owns an L1 scratchpad and reaches the shared L2 through
    a port of ``core_port_bytes_per_cycle``; all data from device memory passes through L2.
    Datasheet peaks are derived, so a sweep over any field here moves them consistently and
    the roofline level can run on the same chip.

    Attributes:
        cores: cores (NVIDIA: SMs).
        lanes: sub-cores per core, each with one systolic array and one vector unit.
        array_rows, array_cols: systolic-array size; rows map the M (token) dimension of a
            matmul, columns the N (output-feature) dimension.
        macs_per_pe_cycle: multiply-accumulates per processing element per cycle, keyed by
            compute dtype (e.g. 1 for fp16, 2 for fp8, 0.5 for the fp32/tf32 path).
        vector_width: vector lanes per sub-core.
        vector_flops_per_lane_cycle: fp32 FLOPs per vector lane per cycle (2 for an FMA).
        l1_bytes: L1 / shared-memory scratchpad per core.
        l2_bytes: shared L2 capacity.
        l2_bytes_per_cycle: aggregate L2 read bandwidth, bytes per vector-clock cycle.
        core_port_bytes_per_cycle: bytes per vector-clock cycle one core can receive from L2.
        tensor_clock_hz: clock of the systolic arrays.
        vector_clock_hz: clock of the vector units, L1 and L2 ports.
        memory: the device memory.
        die: process node, white-space overhead and fused-off spares (area and cost only).
    """

    cores: jax.Array
    lanes: jax.Array
    array_rows: jax.Array
    array_cols: jax.Array
    macs_per_pe_cycle: dict[str, jax.Array]
    vector_width: jax.Array
    vector_flops_per_lane_cycle: jax.Array
    l1_bytes: jax.Array
    l2_bytes: jax.Array
    l2_bytes_per_cycle: jax.Array
    core_port_bytes_per_cycle: jax.Array
    tensor_clock_hz: jax.Array
    vector_clock_hz: jax.Array
    memory: MemorySystem
    die: Die

    def __init__(self, cores, lanes, array_rows, array_cols, macs_per_pe_cycle, vector_width,
                 vector_flops_per_lane_cycle, l1_bytes, l2_bytes, l2_bytes_per_cycle,
                 core_port_bytes_per_cycle, tensor_clock_hz, vector_clock_hz, memory: MemorySystem,
                 die: Die | None = None):
        self.macs_per_pe_cycle = _per_dtype(macs_per_pe_cycle, "SystolicChip", "macs_per_pe_cycle", "MACs per cycle")
        counts = dict(cores=cores, lanes=lanes, array_rows=array_rows, array_cols=array_cols,
                      vector_width=vector_width)
        sizes = dict(vector_flops_per_lane_cycle=vector_flops_per_lane_cycle, l1_bytes=l1_bytes,
                     l2_bytes=l2_bytes, l2_bytes_per_cycle=l2_bytes_per_cycle,
                     core_port_bytes_per_cycle=core_port_bytes_per_cycle, tensor_clock_hz=tensor_clock_hz,
                     vector_clock_hz=vector_clock_hz)
        # Counts are whole numbers in a real chip, but sweeps and gradient sizing treat them as
        # continuous, so only positivity is enforced.
        for name, value in {**counts, **sizes}.items():
            setattr(self, name, _checks.as_float(value, "SystolicChip", name))
            _checks.positive(getattr(self, name), "SystolicChip", name)
        if not isinstance(memory, MemorySystem):
            raise ValueError("SystolicChip.memory must be a MemorySystem")
        self.memory = memory
        if die is not None and not isinstance(die, Die):
            raise ValueError("SystolicChip.die must be a Die")
        self.die = Die() if die is None else die

    # ---- derived datasheet figures -------------------------------------------------------
    @property
    def pe_count(self) -> jax.Array:
        """Processing elements over all systolic arrays."""
        return self.cores * self.lanes * self.array_rows * self.array_cols

    @property
    def tensor_flops(self) -> dict[str, jax.Array]:
        """Matrix-unit peak per dtype: 2 FLOPs per MAC x PEs x MACs/PE/cycle x tensor clock."""
        return {k: 2.0 * self.pe_count * v * self.tensor_clock_hz for k, v in self.macs_per_pe_cycle.items()}

    @property
    def vector_flops(self) -> jax.Array:
        """fp32 peak of the vector units."""
        return (self.cores * self.lanes * self.vector_width * self.vector_flops_per_lane_cycle
                * self.vector_clock_hz)

    @property
    def mem_bw_Bps(self) -> jax.Array:
        return self.memory.bandwidth_Bps

    @property
    def mem_capacity_bytes(self) -> jax.Array:
        return self.memory.capacity_bytes

    @property
    def l1_total_bytes(self) -> jax.Array:
        return self.cores * self.l1_bytes

    def tensor_peak(self, dtype: str) -> jax.Array:
        return tensor_peak(self.tensor_flops, dtype)

    def macs_per_cycle_for(self, dtype: str) -> jax.Array:
        """MACs per PE per cycle for a compute dtype, with the fallbacks of :func:`tensor_peak`."""
        return tensor_peak(self.macs_per_pe_cycle, dtype)

    def datasheet(self) -> Chip:
        """The same chip at datasheet level (derived peaks), e.g. for roofline-only sweeps."""
        return Chip(self.tensor_flops, self.vector_flops, self.mem_bw_Bps, self.mem_capacity_bytes)


class Interconnect(eqx.Module):
    """The links of one network level (alpha-beta model).

    Attributes:
        bandwidth_Bps: per-device, per-direction injection bandwidth in bytes/s.
        link_latency_s: alpha, the latency added per step of a ring/pairwise algorithm.
        collective_latency_s: fixed start-up cost of one collective call (launch and
            synchronization), paid once per collective whatever the group size.
        efficiency: achieved fraction of ``bandwidth_Bps`` on this level's links (GenZ's
            per-dimension Eff_link); it multiplies with ``Efficiency.scale_up`` (level 0) or
            ``Efficiency.scale_out`` (every outer level).
    """

    bandwidth_Bps: jax.Array
    link_latency_s: jax.Array
    collective_latency_s: jax.Array
    efficiency: jax.Array

    def __init__(self, bandwidth_Bps, link_latency_s, collective_latency_s=0.0, efficiency=1.0):
        self.bandwidth_Bps = _checks.as_float(bandwidth_Bps, "Interconnect", "bandwidth_Bps")
        self.link_latency_s = _checks.as_float(link_latency_s, "Interconnect", "link_latency_s")
        self.collective_latency_s = _checks.as_float(
            collective_latency_s, "Interconnect", "collective_latency_s"
        )
        self.efficiency = _checks.as_float(efficiency, "Interconnect", "efficiency")
        _checks.positive(self.bandwidth_Bps, "Interconnect", "bandwidth_Bps")
        _checks.non_negative(self.link_latency_s, "Interconnect", "link_latency_s")
        _checks.non_negative(self.collective_latency_s, "Interconnect", "collective_latency_s")
        _checks.fraction(self.efficiency, "Interconnect", "efficiency")


class NetworkLevel(eqx.Module):
    """A network level between the scale-up domain and the scale-out network: ``size``
    blocks of the level inside it, joined by ``link``.

    Attributes:
        size: blocks of the next inner level in one block of this level (whole number).
        link: the level's links.
    """

    size: jax.Array
    link: Interconnect

    def __init__(self, size, link: Interconnect):
        self.size = _checks.as_float(size, "NetworkLevel", "size")
        _checks.positive(self.size, "NetworkLevel", "size", integer=True)
        if not isinstance(link, Interconnect):
            raise ValueError("NetworkLevel.link must be an Interconnect")
        self.link = link


class OffloadMemory(eqx.Module):
    """A second, slower and larger memory tier behind each device (GenZ Sec. III-B).

    Host DRAM over PCIe, CPU memory over NVLink-C2C, a CXL memory expander: each device has
    its own link to a share of it. Weight and KV-cache bytes placed there (see
    ``Workload.offload_weights`` / ``offload_kv``) stream over the link, concurrently with
    device-memory traffic. Named tiers ship as data (:func:`jaxmodel.presets.load_offload`).

    Every system carries one; the default (:meth:`none`) has zero bandwidth and zero
    capacity, so systems with and without a tier share one pytree structure (they stack
    into one vmapped batch) and a sweep may vary the tier from absent to present.

    Attributes:
        bandwidth_Bps: per-device, per-direction link bandwidth in bytes/s (0: no tier).
        capacity_bytes: slow-tier bytes available to each device (0: no tier).
        efficiency: achieved fraction of the link bandwidth (GenZ's Eff_omem), in (0, 1].
    """

    bandwidth_Bps: jax.Array
    capacity_bytes: jax.Array
    efficiency: jax.Array

    def __init__(self, bandwidth_Bps, capacity_bytes, efficiency=1.0):
        o = "OffloadMemory"
        self.bandwidth_Bps = _checks.as_float(bandwidth_Bps, o, "bandwidth_Bps")
        self.capacity_bytes = _checks.as_float(capacity_bytes, o, "capacity_bytes")
        self.efficiency = _checks.as_float(efficiency, o, "efficiency")
        _checks.non_negative(self.bandwidth_Bps, o, "bandwidth_Bps")
        _checks.non_negative(self.capacity_bytes, o, "capacity_bytes")
        _checks.fraction(self.efficiency, o, "efficiency")

    @classmethod
    def none(cls) -> "OffloadMemory":
        """No second tier: nothing fits in it (zero capacity, zero bandwidth)."""
        return cls(0.0, 0.0, 1.0)

    @property
    def seconds_per_byte(self) -> jax.Array:
        """Link time per byte. An absent link (0 B/s) counts as 1 B/s, so a point that
        offloads without a tier gets finite (absurd) times beside its does-not-fit status."""
        return 1.0 / jnp.maximum(self.bandwidth_Bps * self.efficiency, 1.0)


class System(eqx.Module):
    """Chips joined by a hierarchy of networks (GenZ's multi-dimensional ICN).

    Level 0 is the scale-up domain (``devices_per_node`` devices on ``scale_up``); each of
    ``middle_levels`` joins ``size`` blocks of the level inside it; the outermost level,
    ``scale_out``, joins any number of the largest blocks. Devices are numbered so that a
    block of every level is a contiguous range. A collective is timed level by level, on
    the levels its group spans (see :mod:`jaxmodel.perf.comm`).

    Attributes:
        chip: the accelerator.
        devices_per_node: size of the scale-up domain.
        scale_up: network inside the domain.
        scale_out: the outermost network, between the largest blocks.
        economics: prices and power assumptions for cost, TDP and energy (see
            :class:`jaxmodel.cost.Economics`); used only with a :class:`SystolicChip`.
        offload: the slower, larger memory tier behind each device
            (:meth:`OffloadMemory.none` by default: no tier).
        middle_levels: levels between the two, innermost first (default none: the classic
            two-level node + cluster network).
    """

    chip: Chip | SystolicChip
    devices_per_node: jax.Array
    scale_up: Interconnect
    scale_out: Interconnect
    economics: Economics
    offload: OffloadMemory
    middle_levels: tuple[NetworkLevel, ...]

    def __init__(self, chip: Chip | SystolicChip, devices_per_node, scale_up: Interconnect, scale_out: Interconnect,
                 economics: Economics | None = None, offload: OffloadMemory | None = None, middle_levels=()):
        self.chip = chip
        if offload is not None and not isinstance(offload, OffloadMemory):
            raise ValueError("System.offload must be an OffloadMemory (or None: no second tier)")
        self.offload = OffloadMemory.none() if offload is None else offload
        self.economics = Economics() if economics is None else economics
        self.devices_per_node = _checks.as_float(devices_per_node, "System", "devices_per_node")
        _checks.positive(self.devices_per_node, "System", "devices_per_node", integer=True)
        self.scale_up = scale_up
        self.scale_out = scale_out
        middle_levels = tuple(middle_levels)
        for i, level in enumerate(middle_levels):
            if not isinstance(level, NetworkLevel):
                raise ValueError(f"System.middle_levels[{i}] must be a NetworkLevel (got {type(level).__name__})")
        self.middle_levels = middle_levels

    @property
    def level_sizes(self) -> tuple[jax.Array, ...]:
        """Sizes of the bounded levels, innermost first: ``devices_per_node``, then each middle
        level's ``size`` (the outermost level is unbounded)."""
        return (self.devices_per_node, *(level.size for level in self.middle_levels))

    @property
    def links(self) -> tuple[Interconnect, ...]:
        """Every level's links, innermost first: scale-up, middle levels, scale-out."""
        return (self.scale_up, *(level.link for level in self.middle_levels), self.scale_out)

    def datasheet(self) -> System:
        """This system with its chip at datasheet level (derived peaks as plain leaves), so
        that sweeps can vary bandwidth or peak FLOP/s directly at the roofline level."""
        if isinstance(self.chip, Chip):
            return self
        return System(self.chip.datasheet(), self.devices_per_node, self.scale_up, self.scale_out, self.economics,
                      self.offload, self.middle_levels)
