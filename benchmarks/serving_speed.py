"""Speed of the serving simulator: the one-hour Azure conversation trace (19,366 requests at
its own arrival times) for 100 cluster configurations in one batched call.

BLOOM-176B FP16 TP 8 on 8-H100 machines, iteration times from the engine (``--fidelity``,
default roofline). Disaggregated: prefill pools of 1-10 machines x decode pools of 1-10;
co-located: 1-100 machines. Compile time is reported apart from the simulation; the second
call reuses the compiled program (as a provisioning search does).

    python benchmarks/serving_speed.py [--fidelity roofline|systolic] [--configs 100]

Target (issue 7): <= 60 s for the 100 configurations on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import jaxmodel as jm
from jaxmodel.serving import provision as pv
from jaxmodel.serving import trace as tr


def timed(fn):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fidelity", default="roofline", choices=("roofline", "systolic"))
    parser.add_argument("--configs", type=int, default=100, help="a square number for the disaggregated grid")
    args = parser.parse_args()
    side = int(round(args.configs ** 0.5))

    arch = jm.load_model("bloom-176b")
    wl = jm.Workload(batch=1.0, input_tokens=1.0, output_tokens=1.0, tp=8, dtype="fp16")
    h100 = jm.load_hardware("h100-sxm")
    setup = pv.Setup(arch, wl, h100, fidelity=args.fidelity)
    trace = tr.azure("conv")
    print(f"{trace.name}: {len(trace):,} requests over {trace.duration_s / 3600:.2f} h ({trace.rate:.2f} req/s); "
          f"BLOOM-176B TP 8 on 8-H100 machines, {args.fidelity} iteration times; {jax.device_count()} CPU device(s)")

    grid = np.asarray([(p, d) for p in range(1, side + 1) for d in range(1, side + 1)])
    runs = {
        f"disaggregated, {side}x{side} pool sizes": lambda: pv.simulate_disaggregated(
            trace, setup, [h100], [h100], grid[:, :1], grid[:, 1:]),
        f"co-located, 1-{side * side} machines": lambda: pv.simulate_colocated(
            trace, setup, [h100], np.arange(1, side * side + 1)[:, None]),
    }
    print(f"{'cluster family':34s} {'configs':>7s} {'first call (s)':>15s} {'simulate (s)':>13s} "
          f"{'events':>12s} {'events/s':>10s} {'served':>7s}")
    for label, run in runs.items():
        _, first = timed(run)
        lat, again = timed(run)
        events = int(np.asarray(lat.events).sum())
        served = float(np.mean(np.asarray(lat.status) == 0))
        print(f"{label:34s} {len(grid):7d} {first:15.1f} {again:13.1f} {events:12,d} {events / again:10,.0f} "
              f"{served:7.1%}", flush=True)
    print("first call = compile + simulate; target: simulate <= 60 s for 100 configurations")


if __name__ == "__main__":
    main()
