"""Fit the collective model to measured NCCL and vLLM all-reduce times and score it on held-out sizes.

Data: NVIDIA AIConfigurator's collective tables (``../shared/data/aiconfigurator-ops``) on
A100-SXM4-80GB and H100-SXM, 2/4/8 GPUs of one NVSwitch node: ``nccl-tests`` all-reduce,
all-gather, reduce-scatter and all-to-all, 512 B to 512 MiB (NCCL 2.27.3 on A100, 2.29.2 on H100;
FP16 rows, the 2-byte activations tensor parallelism moves), and vLLM 0.14.0's custom all-reduce
under CUDA graphs, 256 B to 1 GiB (NCCL beyond vLLM's 8 MiB limit). Datasheet inputs come from
the ``a100-sxm-80gb`` and ``h100-sxm`` presets: NVLink per-direction bandwidth (300 / 450 GB/s),
per-step link latency and collective start-up latency.

Model (:mod:`jaxmodel.kernels.collectives`): NCCL as a soft minimum of its low-latency protocol
(LL/LL128: ring-step latencies, each byte ``1 + ll_slowdown`` times dearer) and Simple (extra
start-up, full bus efficiency ``eta``), with a local step per ring phase and per-collective
efficiency factors; all-to-all as point-to-point; vLLM's one-shot / two-shot custom kernel below
8 MiB. Seventeen positive parameters, most of them multipliers of the datasheet figures.

Protocol: for each series (framework x collective) a random quarter of the distinct message
sizes is held out at every GPU count (``held_out_groups`` on ``message_bytes``, ``--seed``); the
fit sees the rest. Held-out errors are printed next to the uncalibrated engine
(:func:`jaxmodel.perf.comm.collective_time`: ring alpha-beta with the preset's latencies, η = 1),
with the fitted parameters ± standard error, an unseen GPU count (fit on 2 and 8 GPUs, predict
4), the cross-GPU case (parameters fitted on one GPU predict the other from its datasheet), and
the held-out geomean for seeds 0, 1, 2.

    python benchmarks/calibrate_collectives.py [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import jaxmodel as jm
from calibration import metrics
from calibration.loaders import aiconfigurator
from calibration.ops import collectives as C

GPUS = {"a100_sxm": "a100-sxm-80gb", "h100_sxm": "h100-sxm"}
WIDTH = 44
UNITS = {"custom_launch_s": 1e6, "custom_stage_s": 1e6}  # printed in microseconds


def score(label, predicted, measured) -> str:
    return metrics.format_row(label, metrics.errors(predicted, measured), width=WIDTH)


def calibrated(result, table, system) -> np.ndarray:
    return np.asarray(C.predict(C.full_params(result), C.rows(table, system)), dtype=np.float64)


def parameters(result) -> str:
    parts = []
    for name, value in result.params.items():
        scale = UNITS.get(name, 1.0)
        unit = " us" if name in UNITS else ""
        parts.append(f"{name}={value * scale:.3g}±{result.stderr[name] * scale:.2g}{unit}")
    lines, line = [], "  "
    for part in parts:
        if len(line) + len(part) > 110:
            lines.append(line)
            line = "  "
        line += part + "  "
    return "\n".join(lines + [line])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="which message sizes are held out")
    args = parser.parse_args()
    loaded = aiconfigurator.load(systems=tuple(GPUS), ops=C.KINDS)
    everything = C.select(loaded, vllm_version=None)
    table = C.select(loaded)
    systems = {gpu: jm.load_hardware(preset) for gpu, preset in GPUS.items()}
    fits, splits = {}, {}
    for gpu, system in systems.items():
        df = table[table["gpu"] == gpu].reset_index(drop=True)
        level = system.scale_up
        print(f"== {gpu} ({GPUS[gpu]}: {float(level.bandwidth_Bps) / 1e9:.0f} GB/s per direction, "
              f"link latency {float(level.link_latency_s) * 1e6:.2f} us, start-up "
              f"{float(level.collective_latency_s) * 1e6:.2f} us)")
        print(metrics.header(WIDTH))
        test = C.held_out(df, args.seed)
        train, held = df[~test], df[test]
        start = time.perf_counter()
        result = C.fit(train, system)
        fit_s = time.perf_counter() - start
        fits[gpu], splits[gpu] = result, held
        measured = held["measured_s"].to_numpy()
        predicted, baseline = calibrated(result, held, system), C.alpha_beta(held, system)
        print(score("held-out sizes, calibrated", predicted, measured))
        print(score("held-out sizes, alpha-beta (eta = 1)", baseline, measured))
        labels = C.series(held).to_numpy()
        for label in sorted(set(labels)):
            m = labels == label
            name = label.replace("vllm_custom_allreduce", "vllm custom").replace("all_reduce", "AR") \
                .replace("all_gather", "AG").replace("reduce_scatter", "RS").replace("all_to_all", "A2A")
            print(score(f"  {name}: calibrated", predicted[m], measured[m]))
            print(score(f"  {name}: alpha-beta", baseline[m], measured[m]))
        # Unseen GPU count: fit on 2 and 8 GPUs, predict every 4-GPU row.
        four = df["gpus"].to_numpy() == 4
        result4 = C.fit(df[~four], system)
        print(score("4 GPUs unseen (fit on 2, 8), calibrated", calibrated(result4, df[four], system),
                    df["measured_s"][four]))
        print(score("4 GPUs unseen, alpha-beta", C.alpha_beta(df[four], system), df["measured_s"][four]))
        other = everything[(everything["gpu"] == gpu) & (everything["framework"] == C.VLLM)
                           & (everything["framework_version"].astype(str) != C.VLLM_VERSION)]
        for version, rows in other.groupby("framework_version"):
            print(score(f"vLLM {version} rows (not fitted), calibrated", calibrated(result, rows, system),
                        rows["measured_s"]))
        print(f"fit: {len(train)} rows in {fit_s:.1f} s, {result.iterations} iterations, "
              f"converged={result.converged}, rms log residual {result.rms_log_residual:.3f}")
        print(parameters(result))
        print()
    print("== cross-GPU: parameters fitted on one GPU, datasheet of the other, its held-out sizes")
    print(metrics.header(WIDTH))
    for source, target in (("a100_sxm", "h100_sxm"), ("h100_sxm", "a100_sxm")):
        held, system = splits[target], systems[target]
        measured = held["measured_s"].to_numpy()
        print(score(f"{target}: fit on {source[:4]}, calibrated", calibrated(fits[source], held, system), measured))
        print(score(f"{target}: alpha-beta", C.alpha_beta(held, system), measured))
    print()
    summary = []
    for gpu, system in systems.items():
        df = table[table["gpu"] == gpu].reset_index(drop=True)
        geomeans = []
        for seed in (0, 1, 2):
            test = C.held_out(df, seed)
            result = fits[gpu] if seed == args.seed else C.fit(df[~test], system)
            geomeans.append(metrics.errors(calibrated(result, df[test], system),
                                           df["measured_s"][test])["geomean_pct"])
        summary.append(f"{gpu} " + " / ".join(f"{g:.1f}" for g in geomeans) + f" (mean {np.mean(geomeans):.1f})")
    print("held-out geomean % for seeds 0 / 1 / 2: " + "; ".join(summary))


if __name__ == "__main__":
    main()
