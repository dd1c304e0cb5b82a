"""Energy of a step on a datasheet-level platform (GenZ eq. 2).

GenZ (Sec. VII-B) prices a platform it cannot cost by its energy, linear in the utilization
of four power components. An operator of ``T`` seconds uses

    E_op = T · (P_static + P_C·U_C + P_mem·U_mem + P_icn·U_icn)

with the peak platform power split ``P_static : P_C : P_mem : P_icn = 3 : 4 : 2 : 1`` (GenZ's
ratio; a parameter here). Utilizations come from the row's roofline terms
(:class:`jaxmodel.perf.roofline.RowTimes`):

    U_C   = min((t_tensor + t_vector) / T, 1)     matrix and vector FLOP time over row time
    U_mem = min(t_memory / T, 1)                  device-memory time over row time
    U_icn = 1 on a collective row (and U_C = U_mem = 0 there), else 0

so a row costs ``P_static·T + P_C·min(t_c, T) + P_mem·min(t_mem, T) + P_icn·T_collective``,
finite for rows with no work (T = 0).

Unlike :mod:`jaxmodel.cost` (microarchitecture chips: power from die area and memory
technology), this needs nothing but a platform power figure, so it applies to any
:class:`~jaxmodel.hardware.Chip`. Power is spread evenly over the platform's devices; a
workload using fewer devices than the platform has is charged for the devices it uses
(the rest could serve replicas), so tokens per kWh do not depend on how many replicas run.

All functions are pure functions of pytrees, vmappable and differentiable. SI units
(W, J, s); :func:`tokens_per_kwh` is the one labelled exception.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _checks, inference, ops
from .architectures import Architecture
from .efficiency import Efficiency
from .hardware import System
from .inference import StepResult
from .workload import Workload

J_PER_KWH = 3.6e6

#: GenZ's split of peak platform power (Sec. VII-B): static : compute : memory : network.
GENZ_POWER_RATIO = (3.0, 4.0, 2.0, 1.0)


class PlatformPower(eqx.Module):
    """Peak power of a platform and how it splits over its components.

    Attributes:
        peak_w: peak power of the whole platform, W.
        devices: accelerators in the platform (the power per device is ``peak_w / devices``).
        static, compute, memory, network: relative shares of the peak (normalized by their
            sum); GenZ's 3 : 4 : 2 : 1 by default.
    """

    peak_w: jax.Array
    devices: jax.Array
    static: jax.Array
    compute: jax.Array
    memory: jax.Array
    network: jax.Array

    def __init__(self, peak_w, devices=1.0, static=GENZ_POWER_RATIO[0], compute=GENZ_POWER_RATIO[1],
                 memory=GENZ_POWER_RATIO[2], network=GENZ_POWER_RATIO[3]):
        o = "PlatformPower"
        self.peak_w = _checks.as_float(peak_w, o, "peak_w")
        self.devices = _checks.as_float(devices, o, "devices")
        _checks.positive(self.peak_w, o, "peak_w")
        _checks.positive(self.devices, o, "devices")
        for name, value in (("static", static), ("compute", compute), ("memory", memory), ("network", network)):
            setattr(self, name, _checks.as_float(value, o, name))
            _checks.non_negative(getattr(self, name), o, name)

    def device_powers_w(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """``(P_static, P_C, P_mem, P_icn)`` of one device, W."""
        per_device = self.peak_w / self.devices
        total = self.static + self.compute + self.memory + self.network
        return tuple(per_device * share / total for share in (self.static, self.compute, self.memory, self.network))


def row_energies_j(result: StepResult, power: PlatformPower) -> tuple[jax.Array, ...]:
    """Eq. 2 for each row: joules of ONE execution of the row on ONE device."""
    p_static, p_compute, p_memory, p_network = power.device_powers_w()
    times = result.row_times
    out = []
    for i, row in enumerate(result.table.rows):
        t = times.time[i]
        if row.kind == ops.COLLECTIVE:
            out.append(t * (p_static + p_network))
        else:
            busy_compute = jnp.minimum(times.tensor[i] + times.vector[i], t)
            busy_memory = jnp.minimum(times.memory[i], t)
            out.append(p_static * t + p_compute * busy_compute + p_memory * busy_memory)
    return tuple(out)


def step_energy_j(result: StepResult, step_s, wl: Workload, power: PlatformPower, micro_batches=None) -> jax.Array:
    """Joules of one whole step on all ``wl.devices`` devices.

    Every device of a pipeline stage (``wl.devices / wl.pp`` of them) runs each row for each
    of ``micro_batches`` micro-batches (the table holds one micro-batch through every
    layer), drawing its dynamic power while busy; every device draws static power for the
    whole step of ``step_s`` seconds (pipeline bubbles and host overhead included). With
    one stage and no host overhead this is eq. 2 summed over the operators exactly.

    ``micro_batches`` defaults to :func:`jaxmodel.inference.micro_batches` (right for
    :func:`~jaxmodel.inference.prefill` and :func:`~jaxmodel.inference.decode`); pass 1 for
    a :func:`~jaxmodel.inference.chunked` step, whose table holds the whole batch.
    """
    m = inference.micro_batches(wl) if micro_batches is None else micro_batches
    p_static = power.device_powers_w()[0]
    dynamic = sum((e - p_static * t) * r for e, t, r in
                  zip(row_energies_j(result, power), result.row_times.time, result.table.repeat))
    return (wl.devices / wl.pp) * m * dynamic + wl.devices * p_static * step_s


def tokens_per_kwh(tokens, joules) -> jax.Array:
    """Tokens per kilowatt-hour: ``tokens · 3.6e6 / joules``."""
    return tokens * J_PER_KWH / joules


#: Steps :func:`step_metrics` knows, and how many tokens each one serves.
STEPS = ("prefill", "decode", "chunked")


def step_tokens(step: str, wl: Workload) -> jax.Array:
    """Tokens a step serves: the prompt tokens of the batch (prefill), one per sequence
    and beam (decode), or the prompt chunk plus the decode batch (chunked)."""
    if step == "prefill":
        return wl.batch * wl.input_tokens
    if step == "decode":
        return inference.decode_sequences(wl)
    if step == "chunked":
        return wl.chunk_tokens + inference.decode_sequences(wl)
    raise ValueError(f"step must be one of {STEPS} (got {step!r})")


def step_metrics(step: str, arch: Architecture, wl: Workload, system: System, eff: Efficiency,
                 power: PlatformPower, sharpness=None, fidelity: str = "roofline") -> dict[str, jax.Array]:
    """Time, energy and throughput of one ``step`` (``"prefill"``, ``"decode"`` or ``"chunked"``).

    Returns ``step_s``, ``energy_j`` (all devices), ``tokens`` (see :func:`step_tokens`),
    ``throughput_tok_s`` (tokens / step_s), ``tokens_per_kwh`` and ``average_power_w``.
    """
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS} (got {step!r})")
    run = {"prefill": inference.prefill, "decode": inference.decode, "chunked": inference.chunked}[step]
    seconds, result = run(arch, wl, system, eff, sharpness, fidelity)
    joules = step_energy_j(result, seconds, wl, power, 1.0 if step == "chunked" else None)
    tokens = step_tokens(step, wl)
    return {
        "step_s": seconds,
        "energy_j": joules,
        "tokens": tokens,
        "throughput_tok_s": tokens / seconds,
        "tokens_per_kwh": tokens_per_kwh(tokens, joules),
        "average_power_w": joules / seconds,
    }
