"""Hardware at datasheet level: a chip, the networks joining chips, and the system they form.

Every magnitude is an array leaf, so a batch of systems is the same pytree with a leading
axis, and every metric can be differentiated with respect to every field. Units are SI:
FLOP/s, bytes/s, bytes, seconds.
"""

from __future__ import annotations

import equinox as eqx
import jax

from . import _checks

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
        if not isinstance(tensor_flops, dict) or not tensor_flops:
            raise ValueError("Chip.tensor_flops must be a non-empty dict {dtype: FLOP/s}")
        for dtype in tensor_flops:
            _checks.one_of(dtype, TENSOR_DTYPES, "Chip", "tensor_flops key")
        self.tensor_flops = {
            k: _checks.as_float(v, "Chip", f"tensor_flops[{k!r}]") for k, v in tensor_flops.items()
        }
        self.vector_flops = _checks.as_float(vector_flops, "Chip", "vector_flops")
        self.mem_bw_Bps = _checks.as_float(mem_bw_Bps, "Chip", "mem_bw_Bps")
        self.mem_capacity_bytes = _checks.as_float(mem_capacity_bytes, "Chip", "mem_capacity_bytes")
        for k, v in self.tensor_flops.items():
            _checks.positive(v, "Chip", f"tensor_flops[{k!r}]")
        _checks.positive(self.vector_flops, "Chip", "vector_flops")
        _checks.positive(self.mem_bw_Bps, "Chip", "mem_bw_Bps")
        _checks.positive(self.mem_capacity_bytes, "Chip", "mem_capacity_bytes")

    def tensor_peak(self, dtype: str) -> jax.Array:
        """Matrix-unit peak for a compute dtype.

        A chip without native support for a narrow dtype runs it through the next wider
        path it has (e.g. FP8 weights on an A100 are up-converted and multiplied in BF16),
        which is what serving stacks do; a dtype wider than every declared path is an error.
        """
        _checks.one_of(dtype, TENSOR_DTYPES, "Workload", "compute_dtype")
        if dtype in self.tensor_flops:
            return self.tensor_flops[dtype]
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
            if alt in self.tensor_flops:
                return self.tensor_flops[alt]
        raise ValueError(
            f"Chip declares no tensor peak usable for compute dtype {dtype!r}; "
            f"it has {sorted(self.tensor_flops)}"
        )


class Interconnect(eqx.Module):
    """One network level (alpha-beta model).

    Attributes:
        bandwidth_Bps: per-device, per-direction injection bandwidth in bytes/s.
        link_latency_s: alpha, the latency added per step of a ring/pairwise algorithm.
        collective_latency_s: fixed start-up cost of one collective call (launch and
            synchronization), paid once per collective whatever the group size.
    """

    bandwidth_Bps: jax.Array
    link_latency_s: jax.Array
    collective_latency_s: jax.Array

    def __init__(self, bandwidth_Bps, link_latency_s, collective_latency_s=0.0):
        self.bandwidth_Bps = _checks.as_float(bandwidth_Bps, "Interconnect", "bandwidth_Bps")
        self.link_latency_s = _checks.as_float(link_latency_s, "Interconnect", "link_latency_s")
        self.collective_latency_s = _checks.as_float(
            collective_latency_s, "Interconnect", "collective_latency_s"
        )
        _checks.positive(self.bandwidth_Bps, "Interconnect", "bandwidth_Bps")
        _checks.non_negative(self.link_latency_s, "Interconnect", "link_latency_s")
        _checks.non_negative(self.collective_latency_s, "Interconnect", "collective_latency_s")


class System(eqx.Module):
    """Chips joined by a scale-up domain (e.g. NVLink within a node) and a scale-out network.

    A collective whose group fits inside one scale-up domain uses ``scale_up``; one that
    spans domains is limited by ``scale_out``.

    Attributes:
        chip: the accelerator.
        devices_per_node: size of the scale-up domain.
        scale_up: network inside the domain.
        scale_out: network between domains.
    """

    chip: Chip
    devices_per_node: jax.Array
    scale_up: Interconnect
    scale_out: Interconnect

    def __init__(self, chip: Chip, devices_per_node, scale_up: Interconnect, scale_out: Interconnect):
        self.chip = chip
        self.devices_per_node = _checks.as_float(devices_per_node, "System", "devices_per_node")
        _checks.positive(self.devices_per_node, "System", "devices_per_node", integer=True)
        self.scale_up = scale_up
        self.scale_out = scale_out
