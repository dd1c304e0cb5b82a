"""Request traces for the serving simulator: arrival times and prompt/output lengths.

A :class:`Trace` is the workload of :mod:`jaxmodel.serving.cluster` (its arrays are the
fields of :class:`~jaxmodel.serving.cluster.Requests`). Sources:

* :func:`azure` -- the Azure LLM inference traces 2023, "code" (coding assistant, long
  prompts and short outputs) and "conv" (chat, decode-heavier), one hour each. They are the
  workloads of SPAD (Sec. 6.3, "coding" and "conversation"), released with Splitwise:
  P. Patel, E. Choukse, C. Zhang, A. Shah, I. Goiri, S. Maleki, R. Bianchini, "Splitwise:
  Efficient generative LLM inference using phase splitting", ISCA 2024; data from the GitHub
  repository Azure/AzurePublicDataset (``AzureLLMInferenceDataset2023.md``), CC-BY 4.0.
* :func:`load_csv` -- a user's own trace (schema in its docstring); :func:`save_csv` writes it.
* :func:`poisson` -- synthetic Poisson arrivals with constant, resampled or generated lengths.

Two ways to run a trace at another request rate (e.g. 70 req/s in SPAD's Table 4):

* :func:`resample` -- what SplitwiseSim (Patel et al.), and so SPAD, feed their simulators:
  Poisson arrivals at the rate, each request's prompt and output lengths drawn with
  replacement from the trace (SplitwiseSim's ``generate_trace.py``, traces ``rr_code_70``
  etc.). The production trace's lengths survive, its burstiness does not.
* :func:`rescale` -- every inter-arrival gap multiplied by one factor, so the production
  bursts survive at any mean rate (a harsher test: the coding trace's bursts, compressed
  28x to 70 req/s, queue hundreds of long prompts at once).

Units are SI: seconds and tokens.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

#: Names of the bundled Azure traces accepted by :func:`azure`.
TRACES = ("code", "conv")
#: Names (case-insensitive) :func:`azure` accepts, with the trace each stands for.
AZURE_NAMES = {"code": "code", "coding": "code", "conv": "conv", "conversation": "conv"}

#: Environment variable naming the shared data folder (the one holding ``azure-llm-trace-2023``).
DATA_ENV = "JAXMODEL_SHARED_DATA"
_AZURE_DIR = "azure-llm-trace-2023"
_AZURE_FILE = "AzureLLMInferenceTrace_{kind}.csv"
# Explicit format: fast vectorized parsing, and %f keeps all 7 fractional digits (100 ns).
_AZURE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

COLUMNS = ("arrival_s", "input_tokens", "output_tokens")


def _default_data_dir() -> Path:
    env = os.environ.get(DATA_ENV)
    # parents[3]: trace.py -> serving -> jaxmodel -> checkout -> its parent, which holds shared/.
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _tokens(values, owner: str, field: str) -> np.ndarray:
    """Whole numbers >= 1 as an int64 array (1-D)."""
    arr = np.asarray(values)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{owner}.{field} must be numeric token counts (got dtype {arr.dtype})")
    if arr.ndim != 1:
        raise ValueError(f"{owner}.{field} must be 1-D (got shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.floor(arr))
        if bad.any():
            i = _first(bad)
            raise ValueError(f"{owner}.{field} must be whole numbers: index {i} is {arr[i]!r}")
    if arr.size and (arr < 1).any():
        i = _first(arr < 1)
        raise ValueError(f"{owner}.{field} must be >= 1 token: index {i} is {arr[i]!r}")
    return arr.astype(np.int64)


def _positive_rate(rate, owner: str, field: str = "rate") -> float:
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, numbers.Real):
        raise ValueError(f"{owner}: {field} must be a number of requests per second (got {rate!r})")
    rate = float(rate)
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"{owner}: {field} must be finite and > 0 requests per second (got {rate!r})")
    return rate


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Trace:
    """Requests in arrival order: ``arrival_s`` (s, float64, non-decreasing, >= 0) and
    ``input_tokens`` / ``output_tokens`` (int64, >= 1). The arrays are read-only copies."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str = "trace"

    def __post_init__(self):
        arrival = np.array(self.arrival_s, dtype=np.float64)  # a copy, so freezing it is safe
        if arrival.ndim != 1 or arrival.size == 0:
            raise ValueError(f"Trace.arrival_s must be a non-empty 1-D array (got shape {arrival.shape})")
        bad = ~np.isfinite(arrival) | (arrival < 0)
        if bad.any():
            i = _first(bad)
            raise ValueError(f"Trace.arrival_s must be finite and >= 0 s: index {i} is {arrival[i]!r}")
        if (np.diff(arrival) < 0).any():
            i = _first(np.diff(arrival) < 0) + 1
            raise ValueError(f"Trace.arrival_s must be non-decreasing: index {i} ({arrival[i]!r}) "
                             f"is before index {i - 1} ({arrival[i - 1]!r})")
        fields = {"arrival_s": arrival}
        for field in ("input_tokens", "output_tokens"):
            tokens = _tokens(getattr(self, field), "Trace", field)
            if tokens.shape != arrival.shape:
                raise ValueError(f"Trace.{field} has {tokens.size} entries but arrival_s has {arrival.size}")
            fields[field] = tokens
        for field, arr in fields.items():
            arr.setflags(write=False)
            object.__setattr__(self, field, arr)
        object.__setattr__(self, "name", str(self.name))

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return self.name == other.name and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in COLUMNS)

    __hash__ = None  # mutable-looking contents (arrays): equal traces need not hash alike

    def __repr__(self) -> str:
        return (f"Trace({self.name!r}: {len(self)} requests over {self.duration_s:.6g} s, "
                f"{self.rate:.6g} req/s)")

    @property
    def duration_s(self) -> float:
        """Last arrival - first arrival (s)."""
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def rate(self) -> float:
        """Mean arrival rate (n - 1) / duration (req/s): n arrivals span n - 1 gaps. NaN for a
        single request, inf when all arrive at once."""
        n = len(self)
        if n < 2:
            return math.nan
        return (n - 1) / self.duration_s if self.duration_s > 0 else math.inf

    def _take(self, index, name: str | None = None, rebase: bool = False) -> Trace:
        arrival = self.arrival_s[index]
        if rebase and arrival.size:
            arrival = arrival - arrival[0]
        return Trace(arrival, self.input_tokens[index], self.output_tokens[index], name or self.name)

    def head(self, n: int) -> Trace:
        """The first ``n`` requests (n >= 1)."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"Trace.head: n must be an integer >= 1 (got {n!r})")
        return self._take(slice(0, int(n)))

    def window(self, start_s: float, end_s: float) -> Trace:
        """Requests arriving in ``[start_s, end_s)``, shifted so the first arrives at 0 (as
        loaded traces do)."""
        if not (math.isfinite(start_s) and math.isfinite(end_s) and end_s > start_s):
            raise ValueError(f"Trace.window: need finite start_s < end_s (got {start_s!r}, {end_s!r})")
        inside = (self.arrival_s >= start_s) & (self.arrival_s < end_s)
        if not inside.any():
            raise ValueError(f"Trace.window: no request of {self.name!r} arrives in [{start_s!r}, {end_s!r}) s")
        return self._take(inside, rebase=True)

    def to_frame(self) -> pd.DataFrame:
        """One row per request; columns ``arrival_s``, ``input_tokens``, ``output_tokens``."""
        return pd.DataFrame({f: getattr(self, f) for f in COLUMNS})

    def summary(self) -> dict:
        """Request count, duration (s), rate (req/s) and mean/p50/p90/p99/max of the token
        counts (keys such as ``input_tokens_p90``; linearly interpolated percentiles)."""
        out = {"requests": len(self), "duration_s": self.duration_s, "rate": self.rate}
        for field in ("input_tokens", "output_tokens"):
            x = getattr(self, field)
            p50, p90, p99 = np.percentile(x, [50, 90, 99])
            out.update({f"{field}_mean": float(x.mean()), f"{field}_p50": float(p50),
                        f"{field}_p90": float(p90), f"{field}_p99": float(p99),
                        f"{field}_max": int(x.max())})
        return out


def rescale(trace: Trace, rate: float) -> Trace:
    """The same requests, every inter-arrival gap multiplied by one factor so the mean rate
    is ``rate`` (req/s); the first arrival stays put. One factor keeps the trace's burstiness,
    unlike resampling arrivals as a Poisson process."""
    rate = _positive_rate(rate, "rescale")
    if not (len(trace) >= 2 and trace.duration_s > 0):
        raise ValueError(f"rescale: trace {trace.name!r} needs >= 2 requests at distinct times "
                         f"to have a rate (has {len(trace)} over {trace.duration_s!r} s)")
    factor = trace.rate / rate
    start = trace.arrival_s[0]
    # Scale offsets from the start (one rounding per element), not a cumsum of scaled gaps,
    # which would accumulate error over tens of thousands of requests.
    arrival = start + (trace.arrival_s - start) * factor
    return Trace(arrival, trace.input_tokens, trace.output_tokens, f"{trace.name}@{rate:g}rps")


def resample(trace: Trace, rate: float, n: int | None = None, seed: int = 0) -> Trace:
    """``n`` requests (default: as many as ``trace``) arriving as a Poisson process of
    ``rate`` req/s, lengths drawn with replacement from ``trace`` (module docstring)."""
    n = len(trace) if n is None else n
    rate = _positive_rate(rate, "resample")
    return poisson(n, rate, trace.input_tokens, trace.output_tokens, seed=seed, name=f"{trace.name}~poisson@{rate:g}rps")


def azure(kind: str, data_dir: str | os.PathLike | None = None) -> Trace:
    """Azure LLM inference trace 2023: ``kind`` "code" or "conv" (aliases "coding",
    "conversation"), arrivals relative to the first request.

    ``data_dir`` is the shared data folder holding ``azure-llm-trace-2023/`` (or the folder
    holding the CSV files themselves); by default ``$JAXMODEL_SHARED_DATA``, else the
    checkout's sibling ``shared/data``.
    """
    key = AZURE_NAMES.get(str(kind).lower()) if isinstance(kind, str) else None
    if key is None:
        raise ValueError(f"azure: kind must be one of {sorted(AZURE_NAMES)} (got {kind!r})")
    root = Path(data_dir) if data_dir is not None else _default_data_dir()
    filename = _AZURE_FILE.format(kind=key)
    candidates = [root / _AZURE_DIR / filename, root / filename]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"Azure LLM trace {key!r} not found: looked for {candidates[0]} and {candidates[1]}. "
            f"Pass data_dir= or set the environment variable {DATA_ENV} to the shared data "
            f"folder (get the CSVs from Azure/AzurePublicDataset, data/{filename})")
    frame = pd.read_csv(path, usecols=["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
    stamps = pd.to_datetime(frame["TIMESTAMP"], format=_AZURE_TIME_FORMAT).to_numpy("datetime64[ns]")
    # Integer nanoseconds before the subtraction: exact, then one rounding to float seconds.
    offset_ns = (stamps - stamps[0]).astype(np.int64)
    return Trace(offset_ns / 1e9, frame["ContextTokens"].to_numpy(), frame["GeneratedTokens"].to_numpy(),
                 f"azure-{key}")


def _column(frame: pd.DataFrame, column: str, problems: list[str]) -> np.ndarray | None:
    """``column`` as float64, recording (not raising) a problem when a cell is not a number.
    Cells are read as text and converted here: exact (strtod) on every pandas version."""
    raw = frame[column].to_numpy(dtype=object)
    missing = pd.isna(raw)
    try:
        return np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    for i, cell in enumerate(raw):
        if missing[i]:
            continue
        try:
            float(cell)
        except (TypeError, ValueError):
            problems.append(f"column {column!r}: non-numeric value {cell!r} at row {i}")
            return None
    return np.array([float(cell) for cell in raw], dtype=np.float64)  # every cell parsed one by one


def load_csv(path: str | os.PathLike) -> Trace:
    """A user's trace from a CSV file with columns

    * ``arrival_s`` -- arrival time (s), >= 0, non-decreasing;
    * ``input_tokens``, ``output_tokens`` -- prompt and output lengths, whole numbers >= 1.

    Other columns are ignored. Any problem raises one ValueError naming the file, and for each
    bad column the problem and its first offending row (0-based data row; the file line is
    row + 2, after the header). The trace is named after the file.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str)
    except pd.errors.EmptyDataError as exc:
        raise ValueError(f"{path}: empty file, expected a header with columns {', '.join(COLUMNS)}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(map(repr, missing))} "
                         f"(found {', '.join(map(repr, frame.columns))}; need {', '.join(COLUMNS)})")
    if len(frame) == 0:
        raise ValueError(f"{path}: no requests (header only)")
    problems: list[str] = []
    values = {}
    for column in COLUMNS:
        x = _column(frame, column, problems)
        if x is None:
            continue
        values[column] = x
        checks = [(np.isnan(x), "missing value (NaN or empty)"),
                  (np.isinf(x), "infinite value")]
        if column == "arrival_s":
            checks.append((x < 0, "negative arrival time"))
            decreasing = np.zeros_like(x, dtype=bool)
            decreasing[1:] = x[1:] < x[:-1]
            checks.append((decreasing, "arrivals decrease (each must be >= the previous row's)"))
        else:
            with np.errstate(invalid="ignore"):
                checks.append((np.isfinite(x) & (x != np.floor(x)), "non-integer token count"))
                checks.append((x < 1, "token count below 1 (zero or negative)"))
        for bad, what in checks:
            if bad.any():
                i = _first(bad)
                problems.append(f"column {column!r}: {what} at row {i} (value {frame[column].iloc[i]!r}"
                                f"{f', {int(bad.sum())} rows in all' if bad.sum() > 1 else ''})")
                break  # one problem per column: the first check that fails is the root cause
    if problems:
        raise ValueError(f"{path}: invalid trace:\n  " + "\n  ".join(problems))
    return Trace(values["arrival_s"], values["input_tokens"], values["output_tokens"], path.stem)


def save_csv(trace: Trace, path: str | os.PathLike) -> Path:
    """Write ``trace`` in :func:`load_csv`'s schema; floats are written in their shortest
    round-trip form, so loading gives back identical arrays."""
    path = Path(path)
    trace.to_frame().to_csv(path, index=False)
    return path


Lengths = int | np.ndarray | Callable[[np.random.Generator, int], np.ndarray]


def _lengths(spec, rng: np.random.Generator, n: int, field: str) -> np.ndarray:
    if callable(spec):
        out = np.asarray(spec(rng, n))
        if out.shape != (n,):
            raise ValueError(f"poisson: {field} callable must return shape ({n},) (got {out.shape})")
        return _tokens(out, "poisson", field)
    if np.ndim(spec) == 0:
        if isinstance(spec, (bool, np.bool_)) or not isinstance(spec, numbers.Real):
            raise ValueError(f"poisson: {field} must be an int, an array of lengths or a callable (got {spec!r})")
        return np.full(n, _tokens(np.asarray([spec]), "poisson", field)[0], dtype=np.int64)
    pool = _tokens(np.asarray(spec), "poisson", field)
    if pool.size == 0:
        raise ValueError(f"poisson: {field} array to sample from is empty")
    return rng.choice(pool, size=n, replace=True)


def poisson(n: int, rate: float, input_tokens: Lengths, output_tokens: Lengths, seed: int = 0,
            name: str | None = None) -> Trace:
    """``n`` requests, the first at 0, then exponential gaps of mean ``1 / rate`` (s).

    ``input_tokens`` / ``output_tokens``: an int (every request), a 1-D array of lengths to
    draw from with replacement (e.g. a real trace's column, keeping its length distribution
    but not its burstiness), or a callable ``(rng, n) -> array`` of ``n`` lengths.
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"poisson: n must be an integer >= 1 (got {n!r})")
    n = int(n)
    rate = _positive_rate(rate, "poisson")
    rng = np.random.default_rng(seed)
    arrival = np.concatenate([[0.0], np.cumsum(rng.exponential(1.0 / rate, size=n - 1))])
    inputs = _lengths(input_tokens, rng, n, "input_tokens")
    outputs = _lengths(output_tokens, rng, n, "output_tokens")
    return Trace(arrival, inputs, outputs, name if name is not None else f"poisson@{rate:g}rps")
