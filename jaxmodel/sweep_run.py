"""Running a sweep spec to parquet: chunked, sharded over devices, streamed, resumable.

``run(spec, out_dir)`` evaluates the spec's points chunk by chunk. Chunk ``c`` holds the points
``[c · chunk_size, (c + 1) · chunk_size)`` and is written, as soon as it is computed, to
``out_dir/parts/part-<c>.parquet`` (first to a temporary name, then renamed, so a part on disk
is always whole). Rerunning the same command after an interruption — Ctrl-C, a kill, a crash —
skips the chunks already on disk, so nothing is lost and nothing is written twice;
``out_dir/sweep.json`` records the spec so a different sweep cannot be resumed into the same
directory by mistake.

Every chunk's points are sharded over all local devices (``jax.sharding``, one mesh axis
``points``); a point's values depend only on its index, so results do not depend on the
device count. On several hosts, start every process with ``jax.distributed`` (``--distributed``
on the command line): process ``p`` of ``P`` takes chunks ``c`` with ``c % P == p`` and writes
its own parts into the shared directory.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .sweep import _evaluate, _resolve, _set_leaves
from .sweep_spec import SweepSpec, load_spec

MANIFEST = "sweep.json"
PARTS = "parts"
MEETS = "meets_constraints"


class RunSummary(NamedTuple):
    total: int  # points in the sweep
    evaluated: int  # points evaluated by this call
    skipped: int  # points whose chunks were already on disk
    rows_written: int
    compile_s: float
    run_s: float
    devices: int

    @property
    def points_per_s(self) -> float:
        return self.evaluated / self.run_s if self.run_s > 0 else float("inf")


def part_path(out_dir: Path, chunk: int) -> Path:
    return out_dir / PARTS / f"part-{chunk:08d}.parquet"


def completed_chunks(out_dir: str | Path) -> set[int]:
    """Chunks whose parts are on disk (whole: parts appear only by an atomic rename)."""
    parts = Path(out_dir) / PARTS
    if not parts.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in parts.glob("part-*.parquet")}


def _prepare_directory(spec: SweepSpec, out: Path, overwrite: bool) -> None:
    manifest = out / MANIFEST
    record = {"fingerprint": spec.fingerprint, "total_points": spec.total, "chunk_size": spec.chunk_size,
              "spec": spec.raw}
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if overwrite:
            for part in (out / PARTS).glob("*"):
                part.unlink()
        elif old.get("fingerprint") != spec.fingerprint:
            raise ValueError(f"--out {out} holds a different sweep (fingerprint {old.get('fingerprint')}, this spec "
                             f"{spec.fingerprint}); choose another directory or overwrite it")
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists, is not empty and holds no {MANIFEST}; choose a new directory")
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    for stray in (out / PARTS).glob(".*.tmp"):  # a part being written when the last run stopped
        stray.unlink()
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, manifest)


def _chunk_program(spec: SweepSpec, batch: int, mesh: Mesh):
    """The compiled evaluation of one chunk: ``(base, offsets, start) -> columns``, the
    ``offsets`` (0..batch-1) sharded over the mesh so every device takes a slice of points."""
    metrics = spec.evaluated_metrics
    total = spec.total
    dtypes = [_resolve(spec.base, p).dtype for p in spec.paths]

    def chunk(base, offsets, start):
        index = jnp.minimum(start + offsets, total - 1)  # the padded tail repeats the last point
        values = [v.astype(dt) for v, dt in zip(spec.parameter_values(index), dtypes)]

        def one(*vals):
            return _evaluate(_set_leaves(base, spec.paths, vals), metrics, None, False, spec.fidelity)

        out = jax.vmap(one)(*values)
        out.update(zip(spec.paths, values))
        return out

    sharded = NamedSharding(mesh, PartitionSpec("points"))
    replicated = NamedSharding(mesh, PartitionSpec())
    base = jax.device_put(spec.base, replicated)
    offsets = jax.device_put(np.arange(batch, dtype=np.int32), sharded)
    compiled = jax.jit(chunk).lower(base, offsets, jnp.int32(0)).compile()
    return compiled, base, offsets


def _points_in(spec: SweepSpec, chunk: int) -> int:
    """Points of chunk ``chunk`` (the last one may be short)."""
    return min(spec.chunk_size, spec.total - chunk * spec.chunk_size)


def _table(spec: SweepSpec, out: dict, start: int, n: int) -> pa.Table:
    columns = {"point": np.arange(start, start + n, dtype=np.int64)}
    for name in spec.paths + spec.metrics:
        columns[name] = np.asarray(out[name])[:n]
    if spec.constraints:
        meets = np.ones(n, dtype=bool)
        for c in spec.constraints:
            meets &= c.holds(out)[:n]
        columns[MEETS] = meets
        if spec.keep == "satisfied":
            columns = {k: v[meets] for k, v in columns.items()}
    return pa.table(columns)


def _write_part(out_dir: Path, chunk: int, table: pa.Table) -> None:
    final = part_path(out_dir, chunk)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, final)


class Progress:
    """A one-line progress bar on stderr: points done, points/s, ETA (redrawn in place on a
    terminal, every ~5 s otherwise)."""

    def __init__(self, total: int, done: int, stream=sys.stderr):
        self.total, self.done, self.stream = total, done, stream
        self.start_done, self.t0, self.last = done, time.perf_counter(), 0.0
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.done < self.total and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        width = 30
        filled = int(width * self.done / self.total)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done:,}/{self.total:,} points "
                f"{rate:,.0f} points/s ETA {_clock(eta)}")
        print(("\r" if self.tty else "") + line, end="" if self.tty else "\n", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run(spec: SweepSpec | str | Path | dict, out_dir: str | Path, *, overwrite: bool = False,
        progress: bool | Callable[[int], None] = True, devices=None) -> RunSummary:
    """Evaluate ``spec`` into ``out_dir`` (see the module docstring), resuming if it was
    interrupted. ``progress``: True for the bar on stderr, or a callable taking the number of
    points of each chunk written. ``devices``: the devices to shard over (default: all local)."""
    spec = load_spec(spec)
    out = Path(out_dir)
    _prepare_directory(spec, out, overwrite)
    devices = list(devices or jax.local_devices())
    mesh = Mesh(np.array(devices), ("points",))
    chunk_size = spec.chunk_size
    n_chunks = math.ceil(spec.total / chunk_size)
    done = completed_chunks(out)
    mine = [c for c in range(n_chunks) if c % jax.process_count() == jax.process_index()]
    todo = [c for c in mine if c not in done]
    skipped = sum(_points_in(spec, c) for c in mine if c in done)

    # Pad the compiled batch to a multiple of the device count (extra points are discarded).
    batch = math.ceil(min(chunk_size, spec.total) / len(devices)) * len(devices)
    t0 = time.perf_counter()
    compiled, base, offsets = _chunk_program(spec, batch, mesh)
    compile_s = time.perf_counter() - t0

    bar = Progress(sum(_points_in(spec, c) for c in mine), skipped) if progress is True else None
    report = bar.update if bar else (progress or (lambda n: None))
    rows = 0
    t0 = time.perf_counter()
    pending = None
    # Parquet encoding runs on one writer thread (pyarrow releases the GIL) while the device
    # computes the next chunks; at most two parts wait, which bounds host memory.
    writing: collections.deque = collections.deque()
    writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxmodel-parquet")

    def drain(limit: int) -> None:
        nonlocal rows
        while len(writing) > limit:
            n, future = writing.popleft()
            rows += future.result()
            report(n)

    try:
        for c in todo:
            # Dispatch is asynchronous: queue this chunk before collecting the previous one.
            result = compiled(base, offsets, jnp.int32(c * chunk_size))
            if pending is not None:
                writing.append(_collect(spec, out, *pending, writer))
                drain(2)
            pending = (c, result)
        if pending is not None:
            writing.append(_collect(spec, out, *pending, writer))
        drain(0)
    finally:
        writer.shutdown(wait=True)  # a part being written still lands whole
        if bar:
            bar.close()
    run_s = time.perf_counter() - t0
    evaluated = sum(_points_in(spec, c) for c in todo)
    return RunSummary(spec.total, evaluated, skipped, rows, compile_s, run_s, len(devices))


def _collect(spec: SweepSpec, out: Path, chunk: int, result, writer) -> tuple[int, concurrent.futures.Future]:
    """Copy a chunk's results to the host and hand its part to the writer thread."""
    start, n = chunk * spec.chunk_size, _points_in(spec, chunk)
    host = jax.device_get(result)

    def write() -> int:
        table = _table(spec, host, start, n)
        _write_part(out, chunk, table)
        return table.num_rows

    return n, writer.submit(write)


def load_results(out_dir: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Every row a sweep directory holds, in point order (``columns``: read only these)."""
    out = Path(out_dir)
    if not (out / MANIFEST).is_file():
        raise FileNotFoundError(f"{out} is not a sweep directory (no {MANIFEST})")
    parts = sorted((out / PARTS).glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame(columns=columns)
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in parts]).to_pandas()


def manifest(out_dir: str | Path) -> dict:
    """The sweep directory's record: fingerprint, point count, chunk size and the spec."""
    return json.loads((Path(out_dir) / MANIFEST).read_text())


def is_complete(out_dir: str | Path) -> bool:
    record = manifest(out_dir)
    return len(completed_chunks(out_dir)) == math.ceil(record["total_points"] / record["chunk_size"])
