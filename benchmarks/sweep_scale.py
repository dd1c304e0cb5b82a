"""A 100-million-point sweep to parquet: throughput, peak memory, and kill-then-resume exactness.

llama-3-70b on H100-class variants (memory bandwidth x bf16 peak x capacity) and deployments
(batch x TP x prompt x output length): 100 x 50 x 10 x 20 x 4 x 5 x 5 = 100,000,000 points,
all rows kept (TTFT, TPOT, tokens/s per device, memory, status and a constraints flag), each
run by the real command line, ``jaxmodel sweep``, in a child process:

1. an uninterrupted run, timed, with the child's peak resident memory (``wait4`` rusage);
2. a second run killed with SIGKILL once about 40% of its chunks are on disk, then the same
   command again, which resumes;
3. the two directories compared chunk by chunk (each part read alone, so the check itself stays
   small): every part must be equal row for row, and the points must be exactly 0 .. N-1.

    python benchmarks/sweep_scale.py                 # 100M points (needs ~10 GB of disk)
    python benchmarks/sweep_scale.py --scale 0.01    # 1M points, for a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from jaxmodel import sweep_run

AXES = {  # values per axis at scale 1
    "system.chip.mem_bw_Bps": ("linspace", 1.0e12, 8.0e12, 100),
    "system.chip.tensor_flops.bf16": ("linspace", 2.0e14, 2.5e15, 50),
    "system.chip.mem_capacity_bytes": ("linspace", 4.0e10, 1.92e11, 10),
    "workload.batch": ("geomspace", 1, 512, 20),
    "workload.tp": ("values", [1, 2, 4, 8]),
    "workload.input_tokens": ("values", [256, 512, 1024, 2048, 4096]),
    "workload.output_tokens": ("values", [64, 128, 256, 512, 1024]),
}


def build_spec(scale: float, chunk_size: int) -> dict:
    grid = {}
    for path, (form, *args) in AXES.items():
        if form == "values":
            grid[path] = args[0]
        else:
            lo, hi, n = args
            # Shrink the chip axes for quick runs; the deployment axes stay whole.
            n = max(2, round(n * scale ** (1 / 3))) if path.startswith("system") else n
            grid[path] = {form: [lo, hi, n]}
    return {"model": "llama-3-70b", "hardware": "h100-sxm",
            "workload": {"batch": 8, "input_tokens": 2048, "output_tokens": 256, "tp": 8},
            "grid": grid, "constraints": ["status == 0", "ttft_s <= 2.0", "tpot_s <= 0.05"],
            "metrics": ["ttft_s", "tpot_s", "throughput_per_device_tok_s", "memory_bytes"],
            "chunk_size": chunk_size}


def sweep_command(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "jaxmodel.cli", "sweep", str(spec), "--out", str(out), "--no-progress", "--json"]


def run_child(cmd, kill_at_chunks: int | None = None, out: Path | None = None) -> dict:
    """Run ``cmd``; with ``kill_at_chunks``, SIGKILL it once that many parts exist in ``out``.
    Returns wall seconds, peak RSS (bytes), exit status and, if it finished, its JSON summary."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = False
    if kill_at_chunks is not None:
        while proc.poll() is None and len(sweep_run.completed_chunks(out)) < kill_at_chunks:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed = True
    stdout = proc.stdout.read()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    result = {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "killed": killed,
              "exit": os.waitstatus_to_exitcode(status)}
    if not killed:
        if result["exit"] != 0:
            raise RuntimeError(f"sweep failed: {stderr.strip()}")
        result["summary"] = json.loads(stdout)
    return result


def compare(a: Path, b: Path, total: int, chunk_size: int) -> dict:
    """Part-by-part equality of two sweep directories, and exact coverage of the points."""
    chunks_a, chunks_b = sweep_run.completed_chunks(a), sweep_run.completed_chunks(b)
    rows, mismatched = 0, []
    for c in sorted(chunks_a | chunks_b):
        ta = pq.read_table(sweep_run.part_path(a, c))
        tb = pq.read_table(sweep_run.part_path(b, c))
        if not ta.equals(tb):
            mismatched.append(c)
        points = tb.column("point").to_numpy()
        start = c * chunk_size
        if not (len(points) == min(chunk_size, total - start) and points[0] == start
                and (points[1:] - points[:-1] == 1).all()):
            mismatched.append(c)
        rows += tb.num_rows
    n_chunks = -(-total // chunk_size)
    return {"chunks": len(chunks_b), "expected_chunks": n_chunks, "rows": rows,
            "identical": not mismatched and chunks_a == chunks_b == set(range(n_chunks)) and rows == total,
            "mismatched_chunks": mismatched[:10]}


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 100M points (chip axes shrink)")
    parser.add_argument("--chunk-size", type=int, default=1 << 18, help="points per chunk and per parquet part")
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of chunks written before the kill")
    parser.add_argument("--dir", help="working directory (default: a temporary one, removed afterwards)")
    args = parser.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="jaxmodel-sweep-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(build_spec(args.scale, args.chunk_size), indent=1))
        from jaxmodel.sweep_spec import load_spec

        spec = load_spec(spec_path)
        n_chunks = -(-spec.total // spec.chunk_size)
        print(f"{spec.total:,} points of llama-3-70b on H100-class variants, {n_chunks} chunks of "
              f"{spec.chunk_size:,}; {os.cpu_count()} CPU cores")

        whole = run_child(sweep_command(spec_path, work / "whole"))
        s = whole["summary"]
        print(f"uninterrupted: {whole['wall_s']:.1f} s wall ({s['compile_s']:.1f} s compile, {s['run_s']:.1f} s "
              f"evaluating and writing: {s['points_per_s']:,.0f} points/s), peak memory "
              f"{whole['peak_rss_bytes'] / 2**30:.2f} GiB, {disk_bytes(work / 'whole') / 1e9:.2f} GB of parquet")

        kill_at = max(1, int(args.kill_at * n_chunks))
        cut = run_child(sweep_command(spec_path, work / "cut"), kill_at_chunks=kill_at, out=work / "cut")
        done = len(sweep_run.completed_chunks(work / "cut"))
        print(f"interrupted run: SIGKILL after {cut['wall_s']:.1f} s with {done} of {n_chunks} chunks on disk "
              f"(killed: {cut['killed']}); peak memory {cut['peak_rss_bytes'] / 2**30:.2f} GiB")
        resumed = run_child(sweep_command(spec_path, work / "cut"))
        r = resumed["summary"]
        print(f"resumed: {resumed['wall_s']:.1f} s wall, skipped {r['skipped']:,} points, evaluated "
              f"{r['evaluated']:,}; peak memory {resumed['peak_rss_bytes'] / 2**30:.2f} GiB")

        check = compare(work / "whole", work / "cut", spec.total, spec.chunk_size)
        print(f"comparison: {check['rows']:,} rows in {check['chunks']} parts; interrupted + resumed "
              f"{'IDENTICAL to' if check['identical'] else 'DIFFERS from'} uninterrupted"
              + (f" (chunks {check['mismatched_chunks']})" if check["mismatched_chunks"] else ""))
        peak = max(whole["peak_rss_bytes"], cut["peak_rss_bytes"], resumed["peak_rss_bytes"])
        print(f"peak memory of any run: {peak / 2**30:.2f} GiB (target < 2 GB = 1.86 GiB: "
              f"{'met' if peak < 2e9 else 'MISSED'})")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
