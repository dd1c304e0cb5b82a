"""Chip sizing by gradient descent: free some chip leaves, pick an objective and constraints,
optimize continuously, then round honestly to hardware-legal values.

A :class:`SizingProblem` names

* the **knobs**: chip leaves that may move (:class:`Knob`: a path such as ``"chip.cores"`` and
  its legal values: whole numbers, powers of two, multiples of a step, or any list), and the
  **memory options** (:class:`MemoryOption`: a technology with its package count range; with
  several, each keeps its own relaxed design and a softmax choice follows the best);
* the **cases**: workloads the chip runs (:class:`Case`: a :class:`~jaxmodel.Workload` and a
  phase, prefill or decode), each giving ``"<case>.time_s"``, ``"<case>.tokens_per_s"`` and
  ``"<case>.memory_ratio"`` (memory needed over usable capacity);
* the **objective**: a metric to minimize (``"total_cost_usd"``, ``"tdp_w"``,
  ``"die_area_mm2"``, a case time, ``"cost_per_throughput"`` = cost x the geometric mean of
  the case times relative to the reference chip, ``"usd_per_mtok"`` = amortized hardware and
  electricity at TDP per million tokens averaged over the timed cases (the workload mix), or
  any callable of the metric dict);
* the **constraints** (:class:`Constraint`): a metric at most a bound, or at most a ratio of
  the reference chip's value (e.g. TTFT no worse than the H100's). Die area within the
  reticle and memory PHYs within the die's beachfront are always imposed, and every case must
  fit in device memory unless built with ``must_fit=False``.

:func:`solve` runs an augmented Lagrangian method in smooth mode (soft maxima/minima, see
:mod:`jaxmodel.smooth`) on the logarithms of the objective and of each constraint ratio, from
many random starts at once (one ``vmap``), each knob mapped from an unconstrained variable by
a sigmoid onto its range (log-spaced when its values are). Every memory option keeps its own
relaxed design and its own multipliers; a softmax choice over the options follows the lowest
Lagrangian. It then evaluates, exactly, every design whose knobs are the legal values just
below and just above each start's continuous optimum (``2^(knobs+1)`` per start and memory
option), polishes the best few by an exact discrete local search (single and paired moves of up to
eight legal values), and keeps the best feasible design. A problem with no feasible
design found is reported as such (``SizingResult.feasible`` False), never as a feasible one. :func:`grid_search` evaluates the whole discrete space exactly, in chunks, as
the reference. :func:`sensitivity` gives the gradients and elasticities of the objective and of
every constraint at a design, and the objective's change one legal step either side of it
(the tornado).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import area, cost, inference, memory_tech, ops
from .architectures import Architecture
from .efficiency import Efficiency, ideal
from .hardware import MemorySystem, System, SystolicChip
from .workload import Workload

PHASES = ("prefill", "decode")
#: Chip metrics every design has (the case metrics are named ``"<case>.<metric>"``).
CHIP_METRICS = ("total_cost_usd", "die_cost_usd", "memory_cost_usd", "tdp_w", "die_area_mm2", "mem_bw_Bps",
                "mem_capacity_bytes", "tensor_flops", "vector_flops")
CASE_METRICS = ("time_s", "tokens_per_s", "memory_ratio")
PACKAGES = "chip.memory.packages"

_COMPILED: dict = {}


def _call(fn, *args):
    """``fn(*args)`` compiled ahead of time once per program structure (the non-array parts
    of ``args`` and the shapes of the arrays); returns ``(result, seconds spent compiling)``."""
    # Constraint bounds enter compiled programs only through _Scales (traced), so problems that
    # differ only in their bounds share one program.
    args = tuple(_canonical(a) if isinstance(a, SizingProblem) else a for a in args)
    dynamic, static = eqx.partition(args, eqx.is_array)
    leaves, treedef = jax.tree_util.tree_flatten(args)
    # The tree structure carries the static fields; hashing it is far cheaper than printing it.
    key = (fn.__module__, fn.__qualname__, treedef,
           tuple((x.shape, str(x.dtype)) if eqx.is_array(x) else x for x in leaves))
    try:
        hash(key)
    except TypeError:  # an unhashable static value: fall back to its printout
        key = (fn.__module__, fn.__qualname__, repr(static), repr([(x.shape, str(x.dtype)) for x in
                                                                   jax.tree_util.tree_leaves(dynamic)]))
    compile_s = 0.0
    if key not in _COMPILED:
        t = time.perf_counter()
        _COMPILED[key] = jax.jit(lambda d: fn(*eqx.combine(d, static))).lower(dynamic).compile()
        compile_s = time.perf_counter() - t
    return _COMPILED[key](dynamic), compile_s


# ---- problem description ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Knob:
    """A chip leaf that may move, and its legal values (sorted, positive)."""

    path: str
    values: tuple[float, ...]
    log: bool = True  # relax in log space (geometric ranges, powers of two)

    def __post_init__(self):
        values = tuple(sorted({float(v) for v in self.values}))
        if not values or values[0] <= 0 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"Knob {self.path!r}: values must be finite and positive (got {self.values!r})")
        object.__setattr__(self, "values", values)

    @property
    def low(self) -> float:
        return self.values[0]

    @property
    def high(self) -> float:
        return self.values[-1]


def integer(path: str, low: float, high: float, step: float = 1.0, log: bool = False) -> Knob:
    """Multiples of ``step`` from ``low`` to ``high`` (e.g. cores, L1 in 32 KiB steps)."""
    if not 0 < low <= high or step <= 0:
        raise ValueError(f"Knob {path!r}: need 0 < low <= high and step > 0 (got {low}, {high}, {step})")
    return Knob(path, tuple(np.arange(math.ceil(low / step), math.floor(high / step) + 1) * step), log)


def powers_of_two(path: str, low: float, high: float) -> Knob:
    """Powers of two from ``low`` to ``high`` (e.g. systolic-array rows, vector width)."""
    if not 0 < low <= high:
        raise ValueError(f"Knob {path!r}: need 0 < low <= high (got {low}, {high})")
    exponents = np.arange(math.ceil(math.log2(low)), math.floor(math.log2(high)) + 1)
    if exponents.size == 0:
        raise ValueError(f"Knob {path!r}: no power of two in [{low}, {high}]")
    return Knob(path, tuple(2.0 ** exponents), True)


class MemoryOption(eqx.Module):
    """A memory technology the chip may use: package type (pin rate, capacity per package,
    bits per package from :mod:`jaxmodel.memory_tech`) and the package counts allowed."""

    memory: MemorySystem
    packages: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, memory: MemorySystem, packages: Sequence[float]):
        if not isinstance(memory, MemorySystem):
            raise ValueError("MemoryOption.memory must be a MemorySystem")
        packages = tuple(sorted({float(p) for p in packages}))
        if not packages or packages[0] < 1 or any(p != round(p) for p in packages):
            raise ValueError(f"MemoryOption.packages must be whole numbers >= 1 (got {packages!r})")
        self.memory, self.packages = memory, packages

    @property
    def technology(self) -> str:
        return self.memory.technology

    def knob(self) -> Knob:
        return Knob(PACKAGES, self.packages, False)


class Case(eqx.Module):
    """A workload the chip must handle: ``phase`` "prefill" (the whole batch's prompts) or
    "decode" (one step of the batch at the mean context). ``timed`` False: only its memory
    matters (e.g. "still able to run the other phase"), which keeps the compiled program small.
    ``must_fit``: its weights, KV cache and activations must fit in device memory."""

    name: str = eqx.field(static=True)
    workload: Workload
    phase: str = eqx.field(static=True)
    timed: bool = eqx.field(static=True)
    must_fit: bool = eqx.field(static=True)

    def __init__(self, name: str, workload: Workload, phase: str, timed: bool = True, must_fit: bool = True):
        if phase not in PHASES:
            raise ValueError(f"Case {name!r}: phase must be one of {PHASES} (got {phase!r})")
        if not name or "." in name:
            raise ValueError(f"Case name must be non-empty and contain no '.' (got {name!r})")
        if not isinstance(workload, Workload):
            raise ValueError(f"Case {name!r}: workload must be a Workload")
        self.name, self.workload, self.phase = name, workload, phase
        self.timed, self.must_fit = bool(timed), bool(must_fit)

    @property
    def metrics(self) -> tuple[str, ...]:
        return CASE_METRICS if self.timed else ("memory_ratio",)


@dataclasses.dataclass(frozen=True)
class Constraint:
    """``metric <= upper``, or ``metric <= ratio x`` the reference chip's value."""

    metric: str
    upper: float | None = None
    ratio: float | None = None

    def __post_init__(self):
        if (self.upper is None) == (self.ratio is None):
            raise ValueError(f"Constraint {self.metric!r}: give exactly one of upper and ratio")
        bound = self.upper if self.upper is not None else self.ratio
        if not (bound > 0 and math.isfinite(bound)):
            raise ValueError(f"Constraint {self.metric!r}: the bound must be positive and finite (got {bound})")

    @property
    def label(self) -> str:
        return f"{self.metric} <= " + (f"{self.upper:g}" if self.upper is not None else f"{self.ratio:g} x reference")


class SizingProblem(eqx.Module):
    """What to size (see the module docstring). ``reference`` is the chip whose metrics the
    ``ratio`` constraints and the objective's scale refer to (default: ``base``). Array leaves
    (workloads, the base and reference chips) are traced: a new instance that changes only
    them reuses the compiled solver."""

    arch: Architecture
    base: System
    cases: tuple
    memories: tuple
    reference: System | None
    efficiency: Efficiency
    knobs: tuple = eqx.field(static=True)
    objective: Any = eqx.field(static=True)
    constraints: tuple = eqx.field(static=True)
    fidelity: str = eqx.field(static=True)

    def __init__(self, arch: Architecture, base: System, knobs: Sequence[Knob], cases: Sequence[Case],
                 objective: str | Callable[[dict], Any] = "total_cost_usd", constraints: Sequence[Constraint] = (),
                 memories: Sequence[MemoryOption] = (), reference: System | None = None,
                 efficiency: Efficiency | None = None, fidelity: str = "systolic"):
        if not isinstance(base.chip, SystolicChip):
            raise ValueError("SizingProblem.base must have a microarchitecture-level chip (SystolicChip): sizing "
                             "moves cores, arrays and memories, and prices the result")
        self.arch, self.base, self.reference = arch, base, reference
        self.efficiency = efficiency if efficiency is not None else ideal()
        self.knobs, self.cases, self.constraints = tuple(knobs), tuple(cases), tuple(constraints)
        self.memories, self.objective, self.fidelity = tuple(memories), objective, fidelity
        if not self.cases:
            raise ValueError("SizingProblem.cases: give at least one Case")
        if not all(isinstance(c, Case) for c in self.cases):
            raise ValueError("SizingProblem.cases must be Case objects")
        if not all(isinstance(k, Knob) for k in self.knobs):
            raise ValueError("SizingProblem.knobs must be Knob objects (see integer, powers_of_two)")
        if not all(isinstance(m, MemoryOption) for m in self.memories):
            raise ValueError("SizingProblem.memories must be MemoryOption objects")
        paths = [k.path for k in self.knobs]
        if len(set(paths)) != len(paths):
            raise ValueError(f"SizingProblem.knobs: a path appears twice ({paths})")
        if PACKAGES in paths or "chip.memory.bus_width_bits" in paths:
            raise ValueError("SizingProblem.knobs: size the package count with memories=[MemoryOption(...)], "
                             "not a knob (bus width and packages move together)")
        for knob in self.knobs:
            _leaf(self.base, knob.path)  # fails with the path's name
        names = [c.name for c in self.cases]
        if len(set(names)) != len(names):
            raise ValueError(f"SizingProblem.cases: names must be unique ({names})")
        known = set(self.metric_names)
        for c in self.constraints:
            if not isinstance(c, Constraint):
                raise ValueError("SizingProblem.constraints must be Constraint objects")
            if c.metric not in known:
                raise ValueError(f"Constraint metric {c.metric!r} unknown; known: {sorted(known)}")
        derived = {"cost_per_throughput", "usd_per_mtok"}
        if self.objective in derived and not any(c.timed for c in self.cases):
            raise ValueError(f"SizingProblem.objective {self.objective!r} needs at least one timed Case")
        if isinstance(self.objective, str) and self.objective not in known | derived:
            raise ValueError(f"SizingProblem.objective {self.objective!r} unknown; known: "
                             f"{sorted(known | derived)} or a callable of the metric dict")
        if self.fidelity not in inference.FIDELITIES:
            raise ValueError(f"SizingProblem.fidelity must be one of {sorted(inference.FIDELITIES)}")

    @property
    def metric_names(self) -> tuple[str, ...]:
        relative = tuple(f"{p}_relative_time" for p in PHASES if any(c.phase == p and c.timed for c in self.cases))
        return CHIP_METRICS + tuple(f"{c.name}.{m}" for c in self.cases for m in c.metrics) + relative

    @property
    def memory_options(self) -> tuple[MemoryOption, ...]:
        """The memory options, or the base chip's memory at its own package count."""
        if self.memories:
            return self.memories
        mem = self.base.chip.memory
        return (MemoryOption(mem, (float(mem.packages),)),)

    @property
    def space_size(self) -> int:
        """Discrete designs: the knob grid times the package counts summed over the options."""
        return math.prod(len(k.values) for k in self.knobs) * sum(len(m.packages) for m in self.memory_options)


def _canonical(problem: SizingProblem) -> SizingProblem:
    """``problem`` with every constraint bound set to 1 (see :func:`_call`)."""
    out = copy.copy(problem)
    object.__setattr__(out, "constraints", tuple(Constraint(c.metric, upper=1.0) for c in problem.constraints))
    return out


# ---- evaluation ---------------------------------------------------------------------------------
def _leaf(system: System, path: str):
    obj = system
    for part in path.split("."):
        if not (isinstance(obj, eqx.Module) and part in {f.name for f in dataclasses.fields(obj)}):
            raise ValueError(f"Knob path {path!r}: {type(obj).__name__} has no field {part!r} "
                             f"(paths are relative to the System, e.g. 'chip.cores')")
        obj = getattr(obj, part)
    if not isinstance(obj, jax.Array):
        raise ValueError(f"Knob path {path!r} names a static field or a sub-tree, not a numeric leaf")
    return obj


def _getter(path: str):
    def get(system):
        obj = system
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj
    return get


def build_system(problem: SizingProblem, values, option: int = 0, packages=None) -> System:
    """The base system with each knob set to ``values[i]`` and the memory of option
    ``option`` with ``packages`` packages (bus width following: packages x bits per package)."""
    mem_option = problem.memory_options[option]
    system = problem.base
    if problem.memories:
        system = eqx.tree_at(lambda s: s.chip.memory, system, mem_option.memory)
    if packages is not None:
        bits = memory_tech.technology(mem_option.technology).bits_per_package
        dtype = system.chip.memory.packages.dtype
        system = eqx.tree_at(lambda s: (s.chip.memory.packages, s.chip.memory.bus_width_bits), system,
                             (jnp.asarray(packages, dtype), jnp.asarray(packages * bits, dtype)))
    if problem.knobs:
        getters = [_getter(k.path) for k in problem.knobs]
        system = eqx.tree_at(lambda s: [g(s) for g in getters], system,
                             [jnp.asarray(v, g(system).dtype) for g, v in zip(getters, values)])
    return system


def design_metrics(problem: SizingProblem, system: System, sharpness=None) -> dict:
    """Chip and per-case metrics of one system (see :attr:`SizingProblem.metric_names`)."""
    return {**_chip_metrics(system), **_case_metrics(problem, system, sharpness)}


def _chip_metrics(system: System) -> dict:
    chip = cost.chip_metrics(system, system.economics)
    out = {k: chip[k] for k in CHIP_METRICS}
    out["reticle_ratio"] = chip["die_area_mm2"] / area.RETICLE_MM2
    out["beachfront_ratio"] = chip["memory_edge_mm"] / chip["memory_edge_available_mm"]
    return out


def _case_metrics(problem: SizingProblem, system: System, sharpness) -> dict:
    eff, out = problem.efficiency, {}
    for case in problem.cases:
        wl = case.workload
        if case.timed and case.phase == "prefill":
            t, pre = inference.prefill(problem.arch, wl, system, eff, sharpness, problem.fidelity)
            out[f"{case.name}.time_s"] = t
            out[f"{case.name}.tokens_per_s"] = wl.batch * wl.input_tokens / t
            table = pre.table
        else:
            # Memory needs only the prefill's op table (its largest activations), not its timing.
            m = inference.micro_batches(wl)
            table = ops.build_op_table(problem.arch, wl, ops.prefill_step(wl, wl.batch / m), system.level_sizes,
                                       ("prompt",))
        if case.timed and case.phase == "decode":
            t, _ = inference.decode(problem.arch, wl, system, eff, sharpness, problem.fidelity)
            out[f"{case.name}.time_s"] = t
            out[f"{case.name}.tokens_per_s"] = wl.batch / t
        mem = inference.memory_metrics(problem.arch, wl, system, inference.StepResult(table, None, 0.0, 0.0, 0.0, 0.0))
        out[f"{case.name}.memory_ratio"] = mem["memory_bytes"] / mem["usable_memory_bytes"]
    return out


def _metrics_at(problem: SizingProblem, values, option, packages, sharpness) -> dict:
    """Metrics of a design whose memory option may be a traced index. The cases see the memory
    only through its array leaves (pin rate, capacity and width), so they are evaluated once,
    on option 0's technology with the chosen option's leaves; die area, cost and power depend
    on the technology's name (static), so the chip metrics are evaluated for every option and
    the chosen one's kept. One compiled program thus serves every memory option."""
    opts = problem.memory_options
    option = jnp.asarray(option)
    timing = build_system(problem, values, 0, packages)
    if len(opts) > 1:
        def pick(column):
            return jnp.asarray([column(o) for o in opts], timing.chip.memory.pin_rate_bps.dtype)[option]

        bits = pick(lambda o: memory_tech.technology(o.technology).bits_per_package)
        timing = eqx.tree_at(
            lambda s: (s.chip.memory.pin_rate_bps, s.chip.memory.capacity_per_package_bytes,
                       s.chip.memory.bus_width_bits), timing,
            (pick(lambda o: o.memory.pin_rate_bps), pick(lambda o: o.memory.capacity_per_package_bytes),
             jnp.asarray(packages, bits.dtype) * bits))
    out = _case_metrics(problem, timing, sharpness)
    chips = [_chip_metrics(build_system(problem, values, j, packages)) for j in range(len(opts))]
    for key in chips[0]:
        out[key] = jnp.stack([c[key] for c in chips])[option]
    return out


def with_relative_times(problem: SizingProblem, metrics: dict, reference: dict) -> dict:
    """``metrics`` plus ``"<phase>_relative_time"``: the geometric mean over the cases of that
    phase of time / the reference chip's time (SPAD's "normalized performance" is its inverse)."""
    out = dict(metrics)
    for phase in PHASES:
        cases = [c for c in problem.cases if c.phase == phase and c.timed]
        if cases:
            out[f"{phase}_relative_time"] = _relative_time(metrics, reference, cases)
    return out


def _relative_time(metrics: dict, reference: dict, cases) -> jax.Array:
    """Geometric mean over ``cases`` of time / the reference chip's time."""
    logs = [jnp.log(metrics[f"{c.name}.time_s"] / reference[f"{c.name}.time_s"]) for c in cases]
    return jnp.exp(sum(logs) / len(logs))


def _constraint_logs(problem: SizingProblem, metrics: dict, bounds) -> jax.Array:
    """log(value / bound) of every constraint, the always-on ones last (<= 0 is feasible)."""
    logs = [jnp.log(metrics[c.metric] / b) for c, b in zip(problem.constraints, bounds)]
    logs += [jnp.log(metrics["reticle_ratio"]), jnp.log(metrics["beachfront_ratio"])]
    logs += [jnp.log(metrics[f"{c.name}.memory_ratio"]) for c in problem.cases if c.must_fit]
    return jnp.stack(logs)


def constraint_labels(problem: SizingProblem) -> list[str]:
    labels = [c.label for c in problem.constraints]
    labels += [f"die_area_mm2 <= reticle ({area.RETICLE_MM2:g})", "memory PHYs <= beachfront"]
    labels += [f"{c.name}: memory <= usable capacity" for c in problem.cases if c.must_fit]
    return labels


def _objective_value(problem: SizingProblem, metrics: dict, reference: dict):
    if callable(problem.objective):
        return problem.objective(metrics)
    if problem.objective == "usd_per_mtok":
        # Amortized hardware plus electricity at TDP (an upper bound on the energy) of all the
        # case's devices, per million tokens, averaged over the timed cases.
        econ = problem.base.economics
        usd_per_s = (cost.hardware_usd_per_s(econ, metrics["total_cost_usd"])
                     + metrics["tdp_w"] * econ.pue * econ.electricity_usd_per_J)
        per = [usd_per_s * c.workload.devices / metrics[f"{c.name}.tokens_per_s"] for c in problem.cases if c.timed]
        return 1e6 * sum(per) / len(per)
    if problem.objective == "cost_per_throughput":
        return metrics["total_cost_usd"] * _relative_time(metrics, reference, [c for c in problem.cases if c.timed])
    return metrics[problem.objective]


class _Scales(eqx.Module):
    """Reference values the relaxed problem is normalized by (traced, so one compiled solver
    serves every bound and reference)."""

    objective: jax.Array
    bounds: jax.Array
    reference: dict


def _scales(problem: SizingProblem) -> tuple[_Scales, float]:
    """The problem's scales and the seconds spent compiling them."""
    ref_system = problem.reference if problem.reference is not None else problem.base
    reference, compile_s = _call(_exact_metrics, problem, ref_system)
    reference = jax.device_get(reference)
    reference = with_relative_times(problem, reference, reference)
    bounds = [c.upper if c.upper is not None else c.ratio * float(reference[c.metric]) for c in problem.constraints]
    objective = float(_objective_value(problem, reference, reference))
    return _Scales(jnp.asarray(abs(objective) or 1.0), jnp.asarray(bounds, dtype=float).reshape(-1),
                   {k: jnp.asarray(v) for k, v in reference.items()}), compile_s


def _exact_metrics(problem, system):
    return design_metrics(problem, system, None)


def compile_shared(problem: SizingProblem) -> float:
    """Compile the programs :func:`solve`, :func:`grid_search` and :func:`sensitivity` all use
    (scoring the reference chip; evaluating chosen designs exactly) and return the seconds it
    took: whichever search runs first otherwise pays for both (benchmarks charge it to both)."""
    t = time.perf_counter()
    scales, _ = _scales(problem)
    lows = [[k.low for k in problem.knobs] + [m.packages[0]] for m in problem.memory_options]
    _evaluate(problem, scales, np.arange(len(lows)), np.asarray(lows))
    return time.perf_counter() - t


# ---- relaxed problem ----------------------------------------------------------------------------
def _unit_to_value(knob_bounds, u):
    """Knob values from unit-interval coordinates (log-spaced where the knob is)."""
    low, high, log = knob_bounds
    return jnp.where(log, low * (high / low) ** u, low + (high - low) * u)


def _bounds(problem: SizingProblem, option: int):
    knobs = problem.knobs + (problem.memory_options[option].knob(),)
    return (jnp.asarray([k.low for k in knobs]), jnp.asarray([k.high for k in knobs]),
            jnp.asarray([k.log for k in knobs]))


def _layout(problem):
    """Sizes of the relaxed variable ``z``: per memory option its knob logits and package
    logit (``n_knobs + 1`` each), then one choice logit per option."""
    return len(problem.knobs) + 1, len(problem.memory_options)


def _option_values(problem, z, j):
    """Knob values and package count of option ``j``'s relaxed design."""
    width, _ = _layout(problem)
    return _unit_to_value(_bounds(problem, j), jax.nn.sigmoid(z[j * width:(j + 1) * width]))


def _score(problem, values, option, packages, scales, sharpness):
    """(objective, log(objective / its scale), constraint logs, metrics) of one design: knob
    ``values`` and ``packages`` of memory option ``option`` (an index, possibly traced)."""
    m = with_relative_times(problem, _metrics_at(problem, values, option, packages, sharpness), scales.reference)
    objective = _objective_value(problem, m, scales.reference)
    return objective, jnp.log(objective / scales.objective), _constraint_logs(problem, m, scales.bounds), m


def _option_lagrangian(problem, x, j, lam, mu, scales, sharpness):
    _, f, g, _ = _score(problem, x[:-1], j, x[-1], scales, sharpness)
    # Augmented Lagrangian for inequalities (Rockafellar): (mu/2)·max(0, g + lam/mu)² - lam²/(2mu).
    shifted = jnp.maximum(g + lam / mu, 0.0)
    return f + jnp.sum(0.5 * mu * shifted**2 - lam**2 / (2.0 * mu)), g


def _lagrangian(problem, z, lam, mu, scales, sharpness):
    """Sum of every memory option's own augmented Lagrangian (each option keeps its own relaxed
    design and must meet every constraint itself: a blend of two options' metrics can pass
    constraints neither passes, which an earlier metric-mixing relaxation did), plus the
    softmax choice over options trained toward the lowest one: ``lam`` is [options, constraints]."""
    width, n_opt = _layout(problem)
    # The options' designs go through one vmapped copy of the model (see _metrics_at).
    x = jnp.stack([_option_values(problem, z, j) for j in range(n_opt)])
    parts, gs = jax.vmap(lambda xj, j, lam_j: _option_lagrangian(problem, xj, j, lam_j, mu, scales, sharpness))(
        x, jnp.arange(n_opt), lam)
    choice = jnp.sum(jax.nn.softmax(z[width * n_opt:]) * jax.lax.stop_gradient(parts))
    return jnp.sum(parts) + choice, gs


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """Augmented-Lagrangian schedule: ``outer`` multiplier updates, each after ``inner`` Adam
    steps of ``learning_rate`` on the knob logits; the penalty grows by ``growth`` per update.
    ``sharpness``: the relaxation of maxima and minima (:mod:`jaxmodel.smooth`; ``inf``: exact
    values with straight-through gradients through whole-number roundings, the default because
    it compiles about four times faster than a finite p through reverse mode).
    After rounding, the ``polish_seeds`` best designs per memory option start an exact discrete
    local search (:func:`_local_search`) of at most ``polish_rounds`` rounds (0: none).
    The default 6 x 30 steps matched 8 x 60 on 13 instances held out from the choice (SPAD's
    decode chip and 12 random prefill chips; ``benchmarks/chip_sizing.py`` draws others) in
    half the time."""

    starts: int = 32
    outer: int = 6
    inner: int = 30
    learning_rate: float = 0.08
    mu0: float = 10.0
    growth: float = 2.0
    sharpness: float = math.inf
    polish_seeds: int = 4
    polish_rounds: int = 8

    def __post_init__(self):
        for name in ("starts", "outer", "inner", "polish_seeds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SolverSettings.{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("learning_rate", "mu0", "growth", "sharpness"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SolverSettings.{name} must be > 0 (got {getattr(self, name)})")


def _solve_relaxed(problem, settings, scales, z0):
    n_con = len(constraint_labels(problem))
    _, n_opt = _layout(problem)
    b1, b2, eps = 0.9, 0.999, 1e-8  # Adam (Kingma & Ba 2015) with its usual constants

    def one(z):
        def inner(carry, step):
            z, m, v, lam, mu, _ = carry
            (_, g), grad = jax.value_and_grad(_lagrangian, argnums=1, has_aux=True)(
                problem, z, lam, mu, scales, settings.sharpness)
            m = b1 * m + (1.0 - b1) * grad
            v = b2 * v + (1.0 - b2) * grad**2
            t = step + 1.0
            z = z - settings.learning_rate * (m / (1.0 - b1**t)) / (jnp.sqrt(v / (1.0 - b2**t)) + eps)
            return (z, m, v, lam, mu, g), None

        def outer(carry, _):
            z, lam, mu = carry
            zeros = jnp.zeros_like(z)
            # The multipliers follow the constraints at the last inner step (one step behind z,
            # which saves a second copy of the model in the compiled program).
            (z, _, _, lam, mu, g), _ = jax.lax.scan(inner, (z, zeros, zeros, lam, mu, jnp.zeros_like(lam)),
                                                    jnp.arange(settings.inner, dtype=z.dtype))
            lam = jnp.maximum(lam + mu * g, 0.0)
            return (z, lam, mu * settings.growth), g

        lam0 = jnp.zeros((n_opt, n_con), dtype=z.dtype)
        (z, lam, _), history = jax.lax.scan(outer, (z, lam0, jnp.asarray(settings.mu0, z.dtype)), None,
                                            length=settings.outer)
        return z, lam, history

    return jax.vmap(one)(z0)


# ---- exact evaluation of discrete designs ------------------------------------------------------
def _exact_batch(problem, options, values, packages, scales):
    """Objective (scaled, log), constraint logs and metrics of a batch of discrete designs, exactly."""
    return jax.vmap(lambda o, v, p: _score(problem, v, o, p, scales, None)[1:])(options, values, packages)


#: Designs per call of the exact program: every exact evaluation pads to it, so one compiled
#: program serves rounding, local search, the result's metrics and the sensitivity's steps.
EXACT_CHUNK = 2048


def _evaluate(problem, scales, options: np.ndarray, designs: np.ndarray):
    """Exact (log objective ratio, constraint logs, metrics) of discrete designs (rows of knob
    values then package count; ``options``: each row's memory option), as NumPy arrays, and the
    seconds spent compiling."""
    n = len(designs)
    pad = -n % EXACT_CHUNK
    options = np.concatenate([options, np.repeat(options[-1:], pad)]).astype(np.int32)
    designs = np.concatenate([designs, np.repeat(designs[-1:], pad, axis=0)])
    parts, compile_s = [], 0.0
    for start in range(0, len(designs), EXACT_CHUNK):
        chunk = designs[start:start + EXACT_CHUNK]
        out, seconds = _call(_exact_batch, problem, jnp.asarray(options[start:start + EXACT_CHUNK]),
                             jnp.asarray(chunk[:, :-1]), jnp.asarray(chunk[:, -1]), scales)
        parts.append(jax.device_get(out))
        compile_s += seconds
    f, g, metrics = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs)[:n], *parts)
    return f, g, metrics, compile_s


def _neighbours(knob_values: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Every combination of the legal values just below and just above ``x`` per knob
    (``[starts, 2^knobs, knobs]``; a value on a legal point, or outside the range, has one)."""
    options = []
    for values, xi in zip(knob_values, x.T):
        hi = np.clip(np.searchsorted(values, xi, side="left"), 0, len(values) - 1)
        lo = np.clip(hi - (values[hi] > xi), 0, len(values) - 1)
        options.append(np.stack([values[lo], values[hi]], axis=-1))
    grids = np.meshgrid(*[np.arange(2)] * len(options), indexing="ij")
    picks = [g.reshape(-1) for g in grids]
    return np.stack([opt[:, p] for opt, p in zip(options, picks)], axis=-1)


@dataclasses.dataclass
class SizingResult:
    """The chosen design and how it was found.

    ``values``: knob path -> value (and ``"chip.memory.technology"``, ``"chip.memory.packages"``);
    ``objective``: its objective in SI units; ``metrics``: every metric of it (exact);
    ``constraints``: label -> value / bound (feasible when all <= 1); ``feasible``: whether a
    feasible design was found (else ``values`` is the least infeasible one examined);
    ``evaluated``: exact design evaluations made; ``seconds``: wall time, and ``compile_s`` the
    part spent compiling; ``relaxed``: the continuous optimum of each start (a DataFrame).
    """

    values: dict
    objective: float
    metrics: dict
    constraints: dict
    feasible: bool
    evaluated: int
    seconds: float
    compile_s: float
    relaxed: pd.DataFrame | None = None

    def system(self, problem: SizingProblem) -> System:
        return system_of(problem, self.values)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"value": pd.Series(self.values, dtype=object)})


def system_of(problem: SizingProblem, values: dict) -> System:
    """The system of a design given as :attr:`SizingResult.values`."""
    techs = [m.technology for m in problem.memory_options]
    option = techs.index(values.get("chip.memory.technology", techs[0]))
    packages = values.get(PACKAGES, problem.memory_options[option].packages[0])
    return build_system(problem, [values[k.path] for k in problem.knobs], option, packages)


def _pick_best(options: np.ndarray, designs: np.ndarray, f: np.ndarray, g: np.ndarray):
    """(feasible, option, design) of the best feasible design, else of the least infeasible."""
    worst = np.max(g, axis=1)
    feasible = worst <= 0.0
    i = int(np.argmin(np.where(feasible, f, np.inf))) if feasible.any() else int(np.argmin(worst))
    return bool(feasible.any()), int(options[i]), designs[i]


def _result(problem, scales, best, evaluated, seconds, compile_s, relaxed=None) -> SizingResult:
    feasible, option, row = best
    _, g, metrics, metrics_compile_s = _evaluate(problem, scales, np.asarray([option]), row[None, :])
    compile_s += metrics_compile_s
    seconds += metrics_compile_s  # the caller's clock stopped before this compilation
    design = {k.path: float(v) for k, v in zip(problem.knobs, row)}
    design["chip.memory.technology"] = problem.memory_options[option].technology
    design[PACKAGES] = float(row[-1])
    metrics = {k: float(v[0]) for k, v in metrics.items()}
    objective = float(_objective_value(problem, metrics, jax.device_get(scales.reference)))
    constraints = dict(zip(constraint_labels(problem), np.exp(np.asarray(g[0], dtype=float)).tolist()))
    return SizingResult(design, objective, metrics, constraints, feasible, evaluated, seconds, compile_s, relaxed)


def _best_rows(rows: np.ndarray, f: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best distinct rows: feasible ones by objective, then the least infeasible."""
    worst = np.max(g, axis=1)
    order = np.lexsort((np.where(worst <= 0, f, worst), worst > 0))
    _, first = np.unique(rows[order], axis=0, return_index=True)
    return rows[order][np.sort(first)][:k]


def _moves(n: int) -> np.ndarray:
    """Index steps of a local-search round over ``n`` knobs: every knob 1, 2, 4 or 8 legal
    values down or up, alone or together with one other knob moving one value either way (a
    trade such as many fewer cores for larger arrays needs two knobs to move at once, one of
    them far)."""
    steps = (-8, -4, -2, -1, 1, 2, 4, 8)
    moves = []
    for i in range(n):
        for a in steps:
            m = np.zeros(n, dtype=int)
            m[i] = a
            moves.append(m)
            for k in range(n):
                if k == i:
                    continue
                for b in (-1, 1):
                    m = np.zeros(n, dtype=int)
                    m[i], m[k] = a, b
                    moves.append(m)
    return np.unique(np.asarray(moves), axis=0)


def _local_search(problem, scales, options: np.ndarray, seeds: np.ndarray, rounds: int):
    """Exact discrete polish of rounded designs (``seeds``, of memory ``options``): from each,
    repeatedly move to the best design among its :func:`_moves` neighbours (feasible first,
    then cheaper; ties keep the current design) until none improves or ``rounds`` are done.
    Returns the final designs with their objective and constraint logs, the evaluations made
    and the seconds compiling."""
    knob_values = [np.asarray(k.values) for k in problem.knobs]
    packages = [np.asarray(m.packages) for m in problem.memory_options]

    def values_of(index, opts):
        cols = [v[index[:, i]] for i, v in enumerate(knob_values)]
        return np.stack(cols + [np.asarray([packages[o][i] for o, i in zip(opts, index[:, -1])])], axis=1)

    index = np.stack([np.searchsorted(v, seeds[:, i]) for i, v in enumerate(knob_values)]
                     + [np.asarray([np.searchsorted(packages[o], p) for o, p in zip(options, seeds[:, -1])])], axis=1)
    top = np.asarray([[len(v) - 1 for v in knob_values] + [len(packages[o]) - 1] for o in options])
    # Row 0 of each seed's block is the design itself, so its values are always known.
    steps = np.concatenate([np.zeros((1, index.shape[1]), int), _moves(index.shape[1])])
    flat_options = np.repeat(options, len(steps))
    evaluated, compile_s = 0, 0.0
    rows = np.arange(len(index))
    for _ in range(max(rounds, 0) + 1):
        cand = np.clip(index[:, None, :] + steps[None], 0, top[:, None, :])
        designs = values_of(cand.reshape(-1, index.shape[1]), flat_options)
        f, g, _, seconds = _evaluate(problem, scales, flat_options, designs)
        compile_s += seconds
        evaluated += len(designs)
        f, g = f.reshape(len(index), len(steps)), g.reshape(len(index), len(steps), -1)
        worst = g.max(axis=2)
        score = np.where(worst <= 0, f, np.inf)
        pick = np.where(np.isfinite(score).any(axis=1), np.argmin(score, axis=1), np.argmin(worst, axis=1))
        current = (designs.reshape(len(index), len(steps), -1)[rows, pick], f[rows, pick], g[rows, pick])
        if (pick == 0).all() or rounds <= 0:
            break
        index = cand[rows, pick]
    return current, evaluated, compile_s


# ---- the two searches ---------------------------------------------------------------------------
def solve(problem: SizingProblem, settings: SolverSettings | None = None, seed: int = 0) -> SizingResult:
    """Gradient-based sizing (see the module docstring): relaxed optimum from
    ``settings.starts`` random starts (drawn with ``seed``), then exact evaluation of the
    neighbouring legal designs."""
    settings = settings or SolverSettings()
    t0 = time.perf_counter()
    scales, setup_s = _scales(problem)
    n_knobs = len(problem.knobs)
    width, n_opt = _layout(problem)
    # Starts spread over (almost) each knob's whole range: uniform in the unit coordinate.
    unit0 = jax.random.uniform(jax.random.PRNGKey(seed), (settings.starts, width * n_opt + n_opt),
                               minval=0.02, maxval=0.98)
    z0 = jnp.log(unit0 / (1.0 - unit0))
    (z, _, _), compile_s = _call(_solve_relaxed, problem, settings, scales, z0)
    compile_s += setup_s
    z = np.asarray(jax.device_get(z), dtype=float)
    logits = z[:, width * n_opt:]
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    near, near_options, relaxed_rows = [], [], []
    for j, option in enumerate(problem.memory_options):
        unit = 1.0 / (1.0 + np.exp(-z[:, j * width:(j + 1) * width]))
        bounds = tuple(b[None, :] for b in _bounds(problem, j))  # one row per start
        x = np.asarray(_unit_to_value(bounds, unit), dtype=float)
        knob_values = [np.asarray(k.values) for k in problem.knobs] + [np.asarray(option.packages)]
        near.append(_neighbours(knob_values, x).reshape(-1, n_knobs + 1))
        near_options.append(np.full(len(near[-1]), j))
        for s in range(len(z)):
            relaxed_rows.append({"start": s, "memory": option.technology, "weight": float(weights[s, j]),
                                 **{k.path: x[s, i] for i, k in enumerate(problem.knobs)}, PACKAGES: x[s, -1]})
    near, near_options = np.concatenate(near), np.concatenate(near_options)
    f, g, _, seconds = _evaluate(problem, scales, near_options, near)
    compile_s += seconds
    # The best few rounded designs of every memory option start the local search.
    seeds = [_best_rows(near[near_options == j], f[near_options == j], g[near_options == j], settings.polish_seeds)
             for j in range(n_opt)]
    seed_options = np.concatenate([np.full(len(r), j) for j, r in enumerate(seeds)])
    (polished, pf, pg), count, seconds = _local_search(problem, scales, seed_options, np.concatenate(seeds),
                                                       settings.polish_rounds)
    compile_s += seconds
    best = _pick_best(np.concatenate([near_options, seed_options]), np.concatenate([near, polished]),
                      np.concatenate([f, pf]), np.concatenate([g, pg]))
    return _result(problem, scales, best, len(near) + count, time.perf_counter() - t0, compile_s,
                   pd.DataFrame(relaxed_rows))


def grid_search(problem: SizingProblem, chunk_size: int = 1 << 14, progress: Callable | None = None) -> SizingResult:
    """Exhaustive exact evaluation of every discrete design (the reference for :func:`solve`).
    Coordinates are computed on the device from a flat index and only each chunk's best
    feasible (and least infeasible) design comes back, so memory stays bounded."""
    t0 = time.perf_counter()
    scales, compile_s = _scales(problem)
    found, evaluated = [], 0
    for j, option in enumerate(problem.memory_options):
        axes = tuple(jnp.asarray(k.values) for k in problem.knobs) + (jnp.asarray(option.packages),)
        shape = tuple(len(a) for a in axes)
        total = math.prod(shape)
        chunk = int(min(chunk_size, total))
        for start in range(0, total, chunk):
            # The option is traced: options with equally many package counts share one program.
            out, seconds = _call(_grid_chunk, problem, jnp.int32(j), axes, jnp.int32(start), scales, shape, chunk)
            compile_s += seconds
            idx_f, f_f, g_f, idx_g, f_g, g_g = jax.device_get(out)
            evaluated += min(chunk, total - start)
            if progress is not None:
                progress(evaluated, problem.space_size)
            for idx, f, g in ((idx_f, f_f, g_f), (idx_g, f_g, g_g)):
                design = [float(a[c]) for a, c in zip(axes, np.unravel_index(int(idx), shape))]
                found.append((j, design, float(f), np.asarray(g)))
    best = _pick_best(np.asarray([r[0] for r in found]), np.asarray([r[1] for r in found]),
                      np.asarray([r[2] for r in found]), np.stack([r[3] for r in found]))
    return _result(problem, scales, best, evaluated, time.perf_counter() - t0, compile_s)


def _grid_chunk(problem, option, axes, start, scales, shape, chunk):
    total = math.prod(shape)
    index = jnp.minimum(start + jnp.arange(chunk, dtype=jnp.int32), total - 1)
    coords = jnp.unravel_index(index, shape)
    values = jnp.stack([a[c] for a, c in zip(axes[:-1], coords[:-1])], axis=-1) if len(axes) > 1 else \
        jnp.zeros((chunk, 0))
    packages = axes[-1][coords[-1]]
    f, g, _ = _exact_batch(problem, jnp.full(chunk, option), values, packages, scales)
    worst = jnp.max(g, axis=1)
    feasible = worst <= 0.0
    i_f = jnp.argmin(jnp.where(feasible, f, jnp.inf))
    i_g = jnp.argmin(worst)
    return index[i_f], f[i_f], g[i_f], index[i_g], f[i_g], g[i_g]


# ---- sensitivity --------------------------------------------------------------------------------
def sensitivity(problem: SizingProblem, result: SizingResult, sharpness: float | None = math.inf) -> pd.DataFrame:
    """Per knob at the design ``result``: the gradient of the objective and of every
    constraint (at ``sharpness``, default the solver's straight-through limit; a finite p: smooth
    mode; ``None``: exact mode, whose roundings have zero slope), the
    elasticities ``d ln f / d ln x``, and the exact objective one legal value below and above
    (``objective_down`` / ``objective_up``, NaN at the end of a range) with their feasibility."""
    scales, _ = _scales(problem)
    techs = [m.technology for m in problem.memory_options]
    option = techs.index(result.values["chip.memory.technology"])
    x = jnp.asarray([result.values[k.path] for k in problem.knobs] + [result.values[PACKAGES]])
    labels = constraint_labels(problem)

    values = np.asarray(_call(_sensitivity_parts, problem, option, x, scales, sharpness)[0])
    jac = np.asarray(_call(_sensitivity_jacobian, problem, option, x, scales, sharpness)[0])
    knobs = problem.knobs + (problem.memory_options[option].knob(),)
    rows, moved = [], []
    for i, knob in enumerate(knobs):
        row = {"knob": knob.path, "value": float(x[i]), "d_objective": jac[0, i],
               "elasticity_objective": jac[0, i] * float(x[i]) / values[0]}
        for c, label in enumerate(labels):
            row[f"elasticity[{label}]"] = jac[1 + c, i] * float(x[i]) / values[1 + c]
        legal = np.asarray(knob.values)
        pos = int(np.argmin(np.abs(legal - float(x[i]))))
        for side, step in (("down", -1), ("up", 1)):
            row[f"objective_{side}"], row[f"feasible_{side}"], row[f"value_{side}"] = np.nan, False, np.nan
            if 0 <= pos + step < len(legal):
                moved.append((len(rows), side, i, float(legal[pos + step])))
        rows.append(row)
    # Every one-step design exactly, in one batch.
    if moved:
        designs = np.repeat(np.asarray(x, dtype=float)[None, :], len(moved), axis=0)
        for r, (_, _, i, value) in enumerate(moved):
            designs[r, i] = value
        _, g, metrics, _ = _evaluate(problem, scales, np.full(len(moved), option), designs)
        reference = jax.device_get(scales.reference)
        for r, (k, side, _, value) in enumerate(moved):
            m = {name: v[r] for name, v in metrics.items()}
            rows[k][f"objective_{side}"] = float(_objective_value(problem, m, reference))
            rows[k][f"feasible_{side}"] = bool(np.all(g[r] <= 0))
            rows[k][f"value_{side}"] = value
    return pd.DataFrame(rows)


def _sensitivity_parts(problem, option, x, scales, sharpness):
    """Objective and constraint ratios (value / bound) of the design ``x`` (knobs, packages)."""
    objective, _, g, _ = _score(problem, x[:-1], option, x[-1], scales, sharpness)
    return jnp.concatenate([jnp.reshape(objective, (1,)), jnp.exp(g)])


def _sensitivity_jacobian(problem, option, x, scales, sharpness):
    return jax.jacfwd(lambda x: _sensitivity_parts(problem, option, x, scales, sharpness))(x)


def tornado_plot(table: pd.DataFrame, objective: float, ax=None, label: str = "objective"):
    """Tornado chart of :func:`sensitivity`: the objective's change, in %, one legal value
    below and above each knob (hatched bars: that move breaks a constraint)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(table)))
    down = 100.0 * (table["objective_down"].to_numpy(float) / objective - 1.0)
    up = 100.0 * (table["objective_up"].to_numpy(float) / objective - 1.0)
    order = np.argsort(np.nan_to_num(np.abs(up) + np.abs(down)))
    y = np.arange(len(order))
    for bars, feasible, color in ((down, "feasible_down", "tab:blue"), (up, "feasible_up", "tab:orange")):
        for yi, i in zip(y, order):
            if np.isfinite(bars[i]):
                ax.barh(yi, bars[i], color=color, hatch=None if table[feasible].iloc[i] else "//",
                        alpha=1.0 if table[feasible].iloc[i] else 0.5)
    ax.set_yticks(y, [f"{table['knob'].iloc[i]} = {table['value'].iloc[i]:.4g}" for i in order])
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel(f"{label} change (%) one legal step down (blue) / up (orange); hatched: infeasible")
    return ax
