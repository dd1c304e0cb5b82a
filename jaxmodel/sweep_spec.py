"""Sweep specifications: which design points to evaluate, written as YAML or JSON.

A spec names a base design point (a model, a hardware preset, a workload, a calibration) and
the parameters to vary, each by its dotted leaf path (see :mod:`jaxmodel.sweep`)::

    model: llama-3-70b
    hardware: h100-sxm             # roofline sweeps use its datasheet peaks as leaves
    workload: {batch: 8, input_tokens: 2048, output_tokens: 256, tp: 8}
    grid:                          # Cartesian product, first path slowest
      system.chip.mem_bw_Bps: {linspace: [1.0e12, 8.0e12, 50]}
      workload.batch: [1, 8, 64]
    sample:                        # optional: random or Latin-hypercube samples,
      method: lhs                  #   each combined with every grid combination
      points: 100000
      seed: 0
      parameters:
        system.chip.tensor_flops.bf16: {loguniform: [2.0e14, 2.5e15]}
        workload.tp: {choice: [1, 2, 4, 8]}
    constraints: ["status == 0", "ttft_s <= 2.0", "tpot_s <= 0.04"]
    keep: all                      # or "satisfied": write only points meeting the constraints
    metrics: [ttft_s, tpot_s, throughput_per_device_tok_s, memory_bytes]
    chunk_size: 262144

Every point has a flat index ``point = sample * grid_size + grid_index``; its parameter values
are a pure function of that index (samples use counter-based random numbers, and the Latin
hypercube a keyed pseudo-random permutation of its strata), so any chunk can be evaluated alone,
on any device, in any order — which is what makes sweeps resumable and shardable.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import operator
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import presets
from .sweep import DesignPoint, _default_metrics, _resolve
from .workload import Workload

MAX_POINTS = 2**31 - 1  # point indices are int32 on the device (JAX's default integer width)
SPEC_KEYS = {"name", "model", "hardware", "datasheet", "calibration", "fidelity", "workload", "grid", "sample",
             "constraints", "keep", "metrics", "chunk_size"}
GRID_FORMS = ("values", "linspace", "geomspace", "range")
SAMPLE_FORMS = ("uniform", "loguniform", "integers", "choice")
SAMPLE_METHODS = ("random", "lhs")
_COMPARISONS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq,
                "!=": operator.ne}
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|==|!=|<|>)\s*([-+0-9.eE]+)\s*$")


@dataclasses.dataclass(frozen=True)
class Constraint:
    """``name op value``: a metric (or parameter path, or ``status``) compared with a number."""

    name: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.value:g}"

    def holds(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        return _COMPARISONS[self.op](np.asarray(columns[self.name]), self.value)


@dataclasses.dataclass(frozen=True)
class Distribution:
    """How one sampled parameter maps a uniform number u in [0, 1) to a value."""

    path: str
    form: str  # one of SAMPLE_FORMS
    args: tuple[float, ...]

    def value(self, u):
        if self.form == "uniform":
            lo, hi = self.args
            return lo + (hi - lo) * u
        if self.form == "loguniform":
            lo, hi = self.args
            return jnp.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
        if self.form == "integers":
            lo, hi = self.args
            return jnp.minimum(jnp.floor(lo + (hi - lo + 1.0) * u), hi)
        choices = jnp.asarray(self.args)
        return choices[jnp.minimum((u * len(self.args)).astype(jnp.int32), len(self.args) - 1)]


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A validated sweep specification (see the module docstring for the file format)."""

    raw: dict  # the normalized spec, as written to the sweep's manifest
    base: DesignPoint
    grid_paths: tuple[str, ...]
    grid_values: tuple[np.ndarray, ...]
    sample_method: str | None
    sample_points: int
    seed: int
    distributions: tuple[Distribution, ...]
    constraints: tuple[Constraint, ...]
    keep: str
    metrics: tuple[str, ...]
    fidelity: str
    chunk_size: int

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.grid_values)

    @property
    def grid_size(self) -> int:
        return math.prod(self.grid_shape)

    @property
    def total(self) -> int:
        return self.grid_size * self.sample_points

    @property
    def paths(self) -> tuple[str, ...]:
        return self.grid_paths + tuple(d.path for d in self.distributions)

    @property
    def evaluated_metrics(self) -> tuple[str, ...]:
        """Metrics to compute: the kept ones plus those the constraints read."""
        extra = [c.name for c in self.constraints if c.name not in self.metrics and c.name not in self.paths]
        return self.metrics + tuple(dict.fromkeys(extra))

    @property
    def fingerprint(self) -> str:
        """Hash of everything that decides the rows, to refuse resuming a different sweep."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()[:16]

    def parameter_values(self, index):
        """Parameter values (one array per path in :attr:`paths`) of the points ``index``
        (an int32 array); traceable, so it runs inside the sweep's compiled program."""
        grid_index = index % self.grid_size
        sample = index // self.grid_size
        coords = jnp.unravel_index(grid_index, self.grid_shape) if self.grid_paths else ()
        values = [jnp.asarray(axis)[c] for axis, c in zip(self.grid_values, coords)]
        if self.distributions:
            u = _uniforms(sample, len(self.distributions), self.sample_points, self.seed, self.sample_method)
            values += [d.value(u[..., i]) for i, d in enumerate(self.distributions)]
        return values

    @functools.cached_property
    def _parameter_program(self):
        """:meth:`parameter_values` compiled once per spec (per input length), not per call."""
        return jax.jit(self.parameter_values)

    def parameters_at(self, points) -> dict[str, np.ndarray]:
        """Parameter columns of the given point indices, computed as the sweep computes them."""
        points = np.asarray(points, dtype=np.int64)
        if points.size and (points.min() < 0 or points.max() >= self.total):
            raise ValueError(f"point indices must lie in [0, {self.total})")
        dtypes = [_resolve(self.base, p).dtype for p in self.paths]
        values = self._parameter_program(jnp.asarray(points, dtype=jnp.int32))
        return {p: np.asarray(v.astype(dt)) for p, v, dt in zip(self.paths, values, dtypes)}


def join_parameters(df, spec: SweepSpec):
    """``df`` (rows with a ``point`` column, e.g. results saved without their parameters, or a
    table joined from elsewhere) with every swept parameter's column added from the spec."""
    if "point" not in df.columns:
        raise ValueError("join_parameters needs a 'point' column (the sweep's point index)")
    columns = spec.parameters_at(df["point"].to_numpy())
    return df.assign(**{path: values for path, values in columns.items() if path not in df.columns})


# --- counter-based sampling -------------------------------------------------------------------

def _uniforms(sample, dims: int, n: int, seed: int, method: str):
    """(…, dims) uniforms in [0, 1) for sample indices ``sample``; a pure function of the index."""
    key = jax.random.key(seed)
    jitter = jax.vmap(lambda s: jax.random.uniform(jax.random.fold_in(key, s), (dims,)))(sample.reshape(-1))
    jitter = jitter.reshape(sample.shape + (dims,))
    if method == "random":
        return jitter
    # Latin hypercube: in every dimension the n samples fall in n distinct strata of width 1/n,
    # stratum = a keyed permutation of the sample index (one permutation per dimension).
    strata = jnp.stack([_permute(sample, n, seed * 7919 + d + 1) for d in range(dims)], axis=-1)
    return (strata.astype(jnp.float32) + jitter) / n


def _mix(x, key: int):
    """A 32-bit integer hash (murmur3's finalizer) of ``x`` xor a round key."""
    x = x ^ jnp.uint32(key & 0xFFFFFFFF)
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _permute(index, n: int, key: int):
    """A pseudo-random permutation of ``range(n)`` evaluated at ``index``, without building it:
    a 4-round Feistel network on the smallest even number of bits covering n, walked until the
    value falls below n (a bijection on [0, 2^bits) restricted by cycle walking stays one)."""
    bits = max(2, (n - 1).bit_length())
    bits += bits % 2
    half = bits // 2
    mask = jnp.uint32((1 << half) - 1)
    round_keys = [(key * 0x9E3779B1 + r * 0x7F4A7C15) & 0xFFFFFFFF for r in range(4)]

    def feistel(x):
        left, right = x >> half, x & mask
        for k in round_keys:
            left, right = right, left ^ (_mix(right, k) & mask)
        return (left << half) | right

    def walk(x):
        return jax.lax.while_loop(lambda y: y >= n, feistel, feistel(x))

    flat = index.reshape(-1).astype(jnp.uint32)
    return jax.vmap(walk)(flat).astype(jnp.int32).reshape(index.shape)


# --- parsing ----------------------------------------------------------------------------------

def read_spec_file(path: str | Path) -> dict:
    """The raw dictionary of a ``.yaml``/``.yml`` or ``.json`` spec file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"sweep spec {path}: not valid YAML ({exc})") from None
    elif path.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"sweep spec {path}: not valid JSON ({exc})") from None
    else:
        raise ValueError(f"sweep spec {path}: the file must end in .yaml, .yml or .json")
    if not isinstance(raw, dict):
        raise ValueError(f"sweep spec {path}: the top level must be a mapping of spec keys")
    return raw


def load_spec(spec: str | Path | Mapping | SweepSpec) -> SweepSpec:
    """Parse and validate a spec (a file path or a dictionary); errors name the field."""
    if isinstance(spec, SweepSpec):
        return spec
    raw = read_spec_file(spec) if isinstance(spec, (str, Path)) else dict(spec)
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise ValueError(f"sweep spec: unknown key(s) {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    fidelity = raw.get("fidelity", "roofline")
    if fidelity not in ("roofline", "systolic"):
        raise ValueError(f"sweep spec 'fidelity' must be 'roofline' or 'systolic' (got {fidelity!r})")
    model = raw.get("model", "llama-3-70b")
    hardware = raw.get("hardware", "h100-sxm")
    datasheet = raw.get("datasheet", fidelity == "roofline")
    calibration = raw.get("calibration", "ideal")
    workload_args = raw.get("workload", {}) or {}
    if not isinstance(workload_args, dict):
        raise ValueError("sweep spec 'workload' must be a mapping of Workload arguments (batch, input_tokens, ...)")
    try:
        workload = Workload(**workload_args)
    except TypeError as exc:
        raise ValueError(f"sweep spec 'workload': {exc}") from None
    system = presets.load_hardware(hardware)
    if datasheet:
        system = system.datasheet()
    base = DesignPoint(presets.load_model(model), workload, system, presets.load_calibration(calibration))

    grid = raw.get("grid", {}) or {}
    if not isinstance(grid, dict):
        raise ValueError("sweep spec 'grid' must map leaf paths to values")
    grid_paths = tuple(grid)
    grid_values = tuple(_grid_axis(path, grid[path]) for path in grid_paths)

    sample = raw.get("sample")
    method, n_samples, seed, distributions = None, 1, 0, ()
    if sample is not None:
        method, n_samples, seed, distributions = _parse_sample(sample)
    paths = grid_paths + tuple(d.path for d in distributions)
    duplicated = {p for p in paths if paths.count(p) > 1}
    if duplicated:
        raise ValueError(f"sweep spec: {sorted(duplicated)} appear both in 'grid' and 'sample'")
    for path in paths:
        leaf = _resolve(base, path, check_leaf=True)
        if leaf.ndim:
            raise ValueError(f"sweep path {path!r}: the base value must be a scalar, not shape {leaf.shape}")

    known = set(_default_metrics(system, False))
    metrics = tuple(raw.get("metrics") or _default_metrics(system, False))
    for m in metrics:
        if m not in known:
            raise ValueError(f"sweep spec 'metrics': unknown metric {m!r}; choose from {sorted(known)}")
    if "status" not in metrics:
        metrics += ("status",)
    constraints = tuple(_parse_constraint(c, known | set(paths)) for c in raw.get("constraints", []) or [])
    keep = raw.get("keep", "all")
    if keep not in ("all", "satisfied"):
        raise ValueError(f"sweep spec 'keep' must be 'all' or 'satisfied' (got {keep!r})")
    chunk_size = raw.get("chunk_size", 1 << 18)
    if not isinstance(chunk_size, int) or not 1 <= chunk_size <= 1 << 24:
        raise ValueError(f"sweep spec 'chunk_size' must be a whole number in [1, {1 << 24}] (got {chunk_size!r})")

    normalized = {"model": model, "hardware": hardware, "datasheet": bool(datasheet), "calibration": calibration,
                  "fidelity": fidelity, "workload": workload_args,
                  "grid": {p: v.tolist() for p, v in zip(grid_paths, grid_values)},
                  "sample": None if sample is None else {"method": method, "points": n_samples, "seed": seed,
                                                         "parameters": {d.path: {d.form: list(d.args)}
                                                                        for d in distributions}},
                  "constraints": [str(c) for c in constraints], "keep": keep, "metrics": list(metrics),
                  "chunk_size": chunk_size}
    spec = SweepSpec(normalized, base, grid_paths, grid_values, method, n_samples, seed, distributions,
                     constraints, keep, metrics, fidelity, chunk_size)
    if spec.total > MAX_POINTS:
        raise ValueError(f"sweep spec: {spec.total:,} points exceed the {MAX_POINTS:,} one sweep can index; "
                         "split it into several specs")
    return spec


def _numbers(path: str, what: str, values, count: int | None = None) -> list[float]:
    if not isinstance(values, (list, tuple)) or (count is not None and len(values) != count):
        need = f"a list of {count} numbers" if count else "a list of numbers"
        raise ValueError(f"sweep spec {path!r}: {what} must be {need} (got {values!r})")
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"sweep spec {path!r}: {what} must hold numbers (got {values!r})") from None
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"sweep spec {path!r}: {what} must be finite (got {values!r})")
    return out


def _grid_axis(path: str, value) -> np.ndarray:
    if isinstance(value, (list, tuple)):
        axis = np.asarray(_numbers(path, "grid values", value))
    elif isinstance(value, dict) and len(value) == 1 and next(iter(value)) in GRID_FORMS:
        form, args = next(iter(value.items()))
        if form == "values":
            axis = np.asarray(_numbers(path, "values", args))
        elif form == "range":
            start, stop, step = _numbers(path, "range [start, stop, step]", args, 3)
            if step <= 0 or stop <= start:
                raise ValueError(f"sweep spec {path!r}: range needs start < stop and step > 0 (got {args})")
            axis = np.arange(start, stop, step)
        else:
            lo, hi, n = _numbers(path, f"{form} [low, high, count]", args, 3)
            if n < 1 or n != int(n):
                raise ValueError(f"sweep spec {path!r}: {form} count must be a whole number >= 1 (got {n})")
            if form == "geomspace" and (lo <= 0 or hi <= 0):
                raise ValueError(f"sweep spec {path!r}: geomspace bounds must be > 0 (got {lo}, {hi})")
            axis = (np.linspace if form == "linspace" else np.geomspace)(lo, hi, int(n))
    else:
        raise ValueError(f"sweep spec grid {path!r}: give a list of values or one of "
                         f"{{{', '.join(f'{f}: ...' for f in GRID_FORMS)}}} (got {value!r})")
    if axis.size == 0:
        raise ValueError(f"sweep spec grid {path!r}: no values")
    return axis


def _parse_sample(sample) -> tuple[str, int, int, tuple[Distribution, ...]]:
    if not isinstance(sample, dict):
        raise ValueError("sweep spec 'sample' must be a mapping with method, points, seed and parameters")
    unknown = set(sample) - {"method", "points", "seed", "parameters"}
    if unknown:
        raise ValueError(f"sweep spec 'sample': unknown key(s) {sorted(unknown)}; "
                         "allowed: method, points, seed, parameters")
    method = sample.get("method", "random")
    if method not in SAMPLE_METHODS:
        raise ValueError(f"sweep spec 'sample.method' must be one of {SAMPLE_METHODS} (got {method!r})")
    points = sample.get("points")
    if not isinstance(points, int) or not 1 <= points <= MAX_POINTS:
        raise ValueError(f"sweep spec 'sample.points' must be a whole number in [1, {MAX_POINTS}] (got {points!r})")
    seed = sample.get("seed", 0)
    if not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ValueError(f"sweep spec 'sample.seed' must be a whole number in [0, 2^31) (got {seed!r})")
    params = sample.get("parameters") or {}
    if not isinstance(params, dict) or not params:
        raise ValueError("sweep spec 'sample.parameters' must map at least one leaf path to a distribution")
    distributions = []
    for path, dist in params.items():
        if not (isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in SAMPLE_FORMS):
            raise ValueError(f"sweep spec sample {path!r}: give one of "
                             f"{{{', '.join(f'{f}: ...' for f in SAMPLE_FORMS)}}} (got {dist!r})")
        form, args = next(iter(dist.items()))
        if form == "choice":
            values = _numbers(path, "choice", args)
            if not values:
                raise ValueError(f"sweep spec sample {path!r}: choice needs at least one value")
            distributions.append(Distribution(path, form, tuple(values)))
            continue
        lo, hi = _numbers(path, f"{form} [low, high]", args, 2)
        if not lo <= hi or (form == "loguniform" and lo <= 0):
            raise ValueError(f"sweep spec sample {path!r}: {form} needs "
                             f"{'0 < ' if form == 'loguniform' else ''}low <= high (got {lo}, {hi})")
        if form == "integers" and (lo != int(lo) or hi != int(hi)):
            raise ValueError(f"sweep spec sample {path!r}: integers bounds must be whole numbers (got {lo}, {hi})")
        distributions.append(Distribution(path, form, (lo, hi)))
    return method, points, seed, tuple(distributions)


def _parse_constraint(text, names: set[str]) -> Constraint:
    match = _CONSTRAINT.match(str(text))
    if not match:
        raise ValueError(f"sweep spec constraint {text!r}: write 'name op number' with op one of "
                         f"{', '.join(_COMPARISONS)}, e.g. 'tpot_s <= 0.04'")
    name, op, value = match.groups()
    if name not in names:
        raise ValueError(f"sweep spec constraint {text!r}: {name!r} is neither a metric nor a swept path")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"sweep spec constraint {text!r}: {value!r} is not a number") from None
    return Constraint(name, op, number)
