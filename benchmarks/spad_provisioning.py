"""SPAD Table 4 (provisioning) and Table 7 (reallocation), side by side with the paper.

BLOOM-176B, FP16, TP 8 on 8-chip machines; the Azure 2023 coding and conversation traces at
70 req/s as SplitwiseSim (SPAD's simulator) builds them: Poisson arrivals, lengths drawn from
the trace, as many requests as the trace holds (``--arrivals scaled`` instead compresses the
production trace's own gaps, bursts and all); Normal SLOs (SPAD Table 5:
P90/P99 TTFT 3x/6x and TBT 2x/5x the request alone on an 8-H100 machine). Iteration times
from the engine at ``--fidelity`` (default systolic, the level of LLMCompass that SPAD used)
with ideal efficiency; scheduler settings: :class:`jaxmodel.serving.cluster.Disaggregated`
and :class:`~jaxmodel.serving.cluster.Colocated` defaults.

Table 4 rows: Sarathi (co-located H100, chunked prefill), Splitwise-homo (H100 prefill and
decode pools), SPAD (SPAD's prefill-chip and decode-chip presets). Cost and TDP are
normalized to an 8-H100 machine priced by jaxmodel's cost model. Table 7: SPAD's provisioned
clusters (the paper's 18P+7D and 8P+17D) after reallocating 8 prefill machines to decode
(coding cluster running conversation) or 14 decode machines to prefill (conversation
cluster running coding): the highest rate meeting the SLOs, and the fewest Splitwise-homo
H100 machines for that rate.

    python benchmarks/spad_provisioning.py [--fidelity systolic|roofline] [--traces code conv]
        [--arrivals poisson|scaled] [--seed 0] [--calibration ideal|h100-vllm|FILE] [--no-realloc]

Runtime on 2 CPU cores: about 10-20 minutes (each provisioning simulates 60-120 whole-trace
cluster configurations in a few batches).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import jaxmodel as jm
from jaxmodel.serving import provision as pv
from jaxmodel.serving import trace as tr

RATE = 70.0
#: SPAD Table 4: machines (prefill + decode where split), normalized cost and TDP.
TABLE4 = {
    "code": {"Sarathi (H100)": (36, 36.0, 36.0), "Splitwise-homo (H100)": (25, 25.0, 25.0),
             "SPAD (P+D)": ((18, 7), 14.7, 20.4)},
    "conv": {"Sarathi (H100)": (34, 34.0, 34.0), "Splitwise-homo (H100)": (23, 23.0, 23.0),
             "SPAD (P+D)": ((8, 17), 18.7, 19.1)},
}
#: SPAD Table 7: provisioned cluster, new workload, reallocation, paper's throughput and H100s.
TABLE7 = [("code", (18, 7), "conv", "8 prefill -> decode", 55.0, 19),
          ("conv", (8, 17), "code", "14 decode -> prefill", 60.0, 21)]


def at_rate(kind: str, rate: float, args) -> tr.Trace:
    trace = tr.azure(kind)
    return tr.resample(trace, rate, seed=args.seed) if args.arrivals == "poisson" else tr.rescale(trace, rate)


def fmt_machines(row, split: bool) -> str:
    if row is None:
        return "none found"
    if split:
        return f"{int(row['prefill'])}P + {int(row['decode'])}D"
    return f"{int(row['machines'])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fidelity", default="systolic", choices=("systolic", "roofline"))
    parser.add_argument("--traces", nargs="+", default=["code", "conv"], choices=("code", "conv"))
    parser.add_argument("--max-machines", type=int, default=40)
    parser.add_argument("--arrivals", default="poisson", choices=("poisson", "scaled"))
    parser.add_argument("--calibration", default="ideal", help="efficiency set of the iteration times (e.g. h100-vllm)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals and length draws")
    parser.add_argument("--no-realloc", action="store_true", help="skip Table 7")
    args = parser.parse_args()

    arch = jm.load_model("bloom-176b")
    wl = jm.Workload(batch=1.0, input_tokens=1.0, output_tokens=1.0, tp=8, dtype="fp16")
    h100, pre_chip, dec_chip = (jm.load_hardware(n) for n in ("h100-sxm", "spad-prefill", "spad-decode"))
    setup = pv.Setup(arch, wl, h100, jm.load_calibration(args.calibration), args.fidelity)
    ref_cost, ref_tdp = pv.machine_price(h100)
    print(f"BLOOM-176B fp16 TP8, 8-chip machines, {RATE:g} req/s ({args.arrivals} arrivals), Normal SLOs, "
          f"fidelity {args.fidelity}, calibration {args.calibration}")
    for name, system in (("H100", h100), ("SPAD prefill", pre_chip), ("SPAD decode", dec_chip)):
        c, p = pv.machine_price(system)
        print(f"  {name:13s} machine: ${c:,.0f} ({c / ref_cost:.2f} H100), {p / 1e3:.2f} kW ({p / ref_tdp:.2f} H100)")
    t_all = time.perf_counter()
    for kind in args.traces:
        trace = at_rate(kind, RATE, args)
        print(f"\n=== Table 4, {kind} trace ({len(trace):,} requests over {trace.duration_s:.0f} s) ===")
        print(f"{'system':24s} {'machines':>12s} {'paper':>10s} {'diff':>6s} {'cost':>6s} {'paper':>6s} "
              f"{'TDP':>6s} {'paper':>6s}  P99 TTFT / P99 TBT (x)  seconds")
        for label in TABLE4[kind]:
            t = time.perf_counter()
            if label.startswith("Sarathi"):
                best, _ = pv.provision_colocated(trace, setup, h100, max_machines=args.max_machines + 60)
                split, total = False, (None if best is None else int(best["machines"]))
            else:
                chips = (h100, h100) if "H100" in label else (pre_chip, dec_chip)
                best, _ = pv.provision_disaggregated(trace, setup, *chips, max_prefill=args.max_machines,
                                                     max_decode=args.max_machines)
                split = True
                total = None if best is None else int(best["prefill"] + best["decode"])
            paper_machines, paper_cost, paper_tdp = TABLE4[kind][label]
            paper_total = sum(paper_machines) if isinstance(paper_machines, tuple) else paper_machines
            paper_text = (f"{paper_machines[0]}P + {paper_machines[1]}D" if isinstance(paper_machines, tuple)
                          else str(paper_machines))
            diff = f"{100 * (total / paper_total - 1):+.0f}%" if total else "-"
            cost_v = "-" if best is None else f"{best['cost (reference machines)']:.1f}"
            tdp_v = "-" if best is None else f"{best['TDP (reference machines)']:.1f}"
            lat = "-" if best is None else f"{best['p99_ttft (x)']:.2f} / {best['p99_tbt (x)']:.2f}"
            print(f"{label:24s} {fmt_machines(best, split):>12s} {paper_text:>10s} {diff:>6s} {cost_v:>6s} "
                  f"{paper_cost:6.1f} {tdp_v:>6s} {paper_tdp:6.1f}  {lat:22s} {time.perf_counter() - t:6.0f}",
                  flush=True)

    if not args.no_realloc:
        print("\n=== Table 7: SPAD clusters after reallocation ===")
        for provisioned_for, (p, d), new, move, paper_rate, paper_h100 in TABLE7:
            trace = at_rate(new, RATE, args)  # max_rate rescales it to each rate tried
            if provisioned_for == "code":  # prefill machines move to the decode pool
                prefill_counts, decode_counts = [[p - 8, 0]], [[d, 8]]
            else:  # decode machines move to the prefill pool
                prefill_counts, decode_counts = [[p, 14]], [[d - 14, 0]]
            kinds_p, kinds_d = (pre_chip, dec_chip), (dec_chip, pre_chip)

            def simulate(rates, pc=prefill_counts, dc=decode_counts, trace=trace, kinds_p=kinds_p, kinds_d=kinds_d):
                n = len(rates)
                return pv.simulate_disaggregated(trace, setup, kinds_p, kinds_d, np.repeat(pc, n, axis=0),
                                                 np.repeat(dc, n, axis=0), rates=rates)

            t = time.perf_counter()
            rate, _ = pv.max_rate(trace, setup, simulate, np.arange(20.0, 161.0, 10.0))
            h100_n = None
            if rate > 0:
                h100_best, _ = pv.provision_disaggregated(tr.rescale(trace, rate), setup, h100, h100,
                                                          max_prefill=args.max_machines, max_decode=args.max_machines)
                h100_n = None if h100_best is None else int(h100_best["prefill"] + h100_best["decode"])
            print(f"{p}P+{d}D (for {provisioned_for}) running {new}, {move}: {rate:.1f} req/s (paper {paper_rate:g}); "
                  f"Splitwise-homo H100 at that rate: {h100_n} machines (paper {paper_h100}); "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
    print(f"\nwall time: {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
