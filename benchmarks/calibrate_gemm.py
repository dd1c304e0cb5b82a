"""Fit a five-parameter GEMM model to measured vLLM GEMMs and score it on held-out shapes.

Data: NVIDIA AIConfigurator's BF16 GEMM tables measured inside vLLM 0.14.0 on A100-SXM4-80GB
and H100-SXM (``../shared/data/aiconfigurator-ops``; 9,240 shapes each). Datasheet inputs
come from the ``a100-sxm-80gb`` and ``h100-sxm`` presets (dense BF16 peak, HBM bandwidth, SMs).

Model of ``Y[m x n] = X[m x k] W[k x n]`` (all parameters positive, fitted as logarithms):

    tile_m  = clip(2^ceil(log2 m), 16, 128)             skinny GEMMs get short tiles
    tiles   = ceil(m / tile_m) · ceil(n / 128)
    splits  = clip(floor(SMs / tiles), 1, max(floor(k / 256), 1))   split-K over idle SMs
    waves   = ceil(tiles · splits / SMs)
    fill    = m · n · splits / (waves · SMs · tile_m · 128)   share of the tile slots doing work
    compute = 2mnk / (peak · η_c · fill) · (1 + k_half / (k / splits))   K-loop prologue/epilogue
    memory  = 2(mk + kn + mn) / (bandwidth · η_m)
    t       = t0 + (compute^p + memory^p)^(1/p),  p = 1 + q

The weight shapes ``(n, k)`` are split into groups; a quarter of them (and every GEMM using
them) is held out from the fit. Errors on the held-out rows are printed next to the
uncalibrated roofline's (η = 1, no overhead, exact maximum), together with the cross-GPU case:
parameters fitted on one GPU, predicting the other from its datasheet.

    python benchmarks/calibrate_gemm.py [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp
import numpy as np

import jaxmodel as jm
from calibration import fit
from calibration.loaders import aiconfigurator

TILE = 128.0
GPUS = {"a100_sxm": "a100-sxm-80gb", "h100_sxm": "h100-sxm"}
START = {"eta_c": 0.8, "eta_m": 0.8, "t0": 3e-6, "k_half": 64.0, "q": 2.0}


def datasheet(preset: str) -> dict:
    chip = jm.load_hardware(preset).chip
    return {"peak": float(chip.tensor_peak("bf16")), "bandwidth": float(chip.mem_bw_Bps), "sms": float(chip.cores)}


def gemm_time(params, rows):
    m, n, k = rows["m"], rows["n"], rows["k"]
    sms = rows["sms"]
    # Libraries pick a tile height near m for skinny GEMMs (16..128 rows) and split K over idle
    # SMs when there are fewer tiles than SMs (keeping at least 256 of K per split).
    tile_m = jnp.clip(2.0 ** jnp.ceil(jnp.log2(m)), 16.0, TILE)
    tiles = jnp.ceil(m / tile_m) * jnp.ceil(n / TILE)
    splits = jnp.clip(jnp.floor(sms / tiles), 1.0, jnp.maximum(jnp.floor(k / 256.0), 1.0))
    waves = jnp.ceil(tiles * splits / sms)
    fill = m * n * splits / (waves * sms * tile_m * TILE)
    compute = 2 * m * n * k / (rows["peak"] * params["eta_c"] * fill) * (1 + params["k_half"] / (k / splits))
    memory = 2 * (m * k + k * n + m * n) / (rows["bandwidth"] * params["eta_m"])
    p = 1.0 + params["q"]
    return params["t0"] + (compute**p + memory**p) ** (1.0 / p)


def roofline_time(rows):
    m, n, k = rows["m"], rows["n"], rows["k"]
    return np.maximum(2 * m * n * k / rows["peak"], 2 * (m * k + k * n + m * n) / rows["bandwidth"])


def errors(predicted, measured) -> dict:
    ratio = np.asarray(predicted) / measured
    absolute = np.abs(ratio - 1.0)
    return {"geomean_pct": 100 * (np.exp(np.mean(np.abs(np.log(ratio)))) - 1), "mape_pct": 100 * absolute.mean(),
            "p90_pct": 100 * np.quantile(absolute, 0.9), "rows": len(ratio)}


def rows_of(df, sheet) -> dict:
    rows = {c: df[c].to_numpy(np.float64) for c in ("m", "n", "k")}
    rows.update({key: np.full(len(df), value) for key, value in sheet.items()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="which weight shapes are held out")
    args = parser.parse_args()
    table = aiconfigurator.load(ops=("gemm",), frameworks=("vllm",))
    table = table[(table["dtype"] == "bf16") & (table["framework_version"] == "0.14.0")]
    rng = np.random.default_rng(args.seed)
    fits, splits = {}, {}
    print(f"{'GPU':<10}{'set':<28}{'rows':>7}{'geomean':>10}{'MAPE':>8}{'P90':>8}   (errors in %)")
    for gpu, preset in GPUS.items():
        df = table[table["gpu"] == gpu]
        sheet = datasheet(preset)
        shapes = df[["n", "k"]].drop_duplicates().to_numpy()
        held = {tuple(s) for s in shapes[rng.permutation(len(shapes))[: len(shapes) // 4]]}
        test_mask = np.array([(n, k) in held for n, k in df[["n", "k"]].to_numpy()])
        train, test = df[~test_mask], df[test_mask]
        t0 = time.perf_counter()
        result = fit.least_squares(gemm_time, START, rows_of(train, sheet), train["measured_s"].to_numpy())
        fit_s = time.perf_counter() - t0
        fits[gpu], splits[gpu] = result, (train, test, sheet)
        measured = test["measured_s"].to_numpy()
        calibrated = gemm_time({k: np.float64(v) for k, v in result.params.items()}, rows_of(test, sheet))
        for name, predicted in (("held-out shapes, calibrated", calibrated),
                                ("held-out shapes, roofline", roofline_time(rows_of(test, sheet)))):
            e = errors(predicted, measured)
            print(f"{gpu:<10}{name:<28}{e['rows']:>7}{e['geomean_pct']:>10.1f}{e['mape_pct']:>8.1f}{e['p90_pct']:>8.1f}")
        params = ", ".join(f"{k}={v:.4g}±{result.stderr[k]:.2g}" for k, v in result.params.items())
        print(f"{'':<10}fit: {len(train)} rows in {fit_s:.1f} s, {result.iterations} iterations; {params}")
    for source, target in (("a100_sxm", "h100_sxm"), ("h100_sxm", "a100_sxm")):
        _, test, sheet = splits[target]
        predicted = gemm_time({k: np.float64(v) for k, v in fits[source].params.items()}, rows_of(test, sheet))
        e = errors(predicted, test["measured_s"].to_numpy())
        label = f"fit on {source[:4]}, predict"
        print(f"{target:<10}{label:<28}{e['rows']:>7}{e['geomean_pct']:>10.1f}{e['mape_pct']:>8.1f}{e['p90_pct']:>8.1f}")


if __name__ == "__main__":
    main()
