"""Fitted efficiency sets: fit every kernel family present in a measured kernel table and
write the result as a small JSON file that ``jaxmodel predict --calibration`` loads.

A set holds the flat :class:`jaxmodel.Efficiency` factors (memory efficiency and per-kernel
overhead, from elementwise kernels when the table has them), one fitted model per kernel
family (GEMM, attention, collectives: parameters, standard errors, rows and in-sample
errors), the SM count of the GPU it was measured on, and where the data came from.

The committed sets (``jaxmodel/presets/calibrations``) are rebuilt from the shared data with

    python -m calibration.sets
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

import jaxmodel as jm
from calibration import metrics

FAMILIES = ("gemm", "attention", "collectives", "elementwise")
PRESET_FOLDER = Path(jm.presets.__file__).parent / "calibrations"

#: name -> (aiconfigurator/vidur gpu, hardware preset, description)
DEFAULT_SETS = {
    "h100-vllm": ("h100_sxm", "h100-sxm", "H100-SXM kernels measured inside vLLM 0.14.0 (BF16 GEMM, FlashAttention "
                  "prefill/decode with a BF16 KV cache), NCCL 2.27/2.29 and vLLM's custom all-reduce on one 8-GPU "
                  "node, and PyTorch elementwise kernels (Vidur)"),
    "a100-vllm": ("a100_sxm", "a100-sxm-80gb", "A100-SXM4-80GB kernels measured inside vLLM 0.14.0 (BF16 GEMM, "
                  "FlashAttention prefill/decode with a BF16 KV cache), NCCL 2.27 and vLLM's custom all-reduce on "
                  "one 8-GPU node, and PyTorch elementwise kernels (Vidur)"),
}


def adapter(family: str):
    """The :mod:`calibration.ops` module fitting ``family``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}; allowed: {', '.join(FAMILIES)}")
    return importlib.import_module(f"calibration.ops.{family}")


#: Selection that keeps a user's rows of every framework and version (the adapters' defaults
#: pick the consistent AIConfigurator subsets: vLLM 0.14.0, FlashAttention with a BF16 cache).
ANY_VERSION = {"gemm": {"framework": None, "framework_version": None}, "attention": {"framework_version": None},
               "collectives": {"vllm_version": None}, "elementwise": {}}


def select(family: str, table: pd.DataFrame, any_version: bool = False) -> pd.DataFrame:
    """The rows of ``table`` that ``family``'s adapter fits."""
    return adapter(family).select(table, **(ANY_VERSION[family] if any_version else {}))


def all_params(module, result) -> dict[str, float]:
    """Every parameter of the family's model: the fitted ones, completed with any the adapter
    held fixed (no rows informed them)."""
    return module.full_params(result) if hasattr(module, "full_params") else dict(result.params)


def fitted_predict(module, result):
    """``predict(params, rows)`` over the fitted parameters only (the rest held at their values),
    as :func:`calibration.fit.prediction_stderr` needs."""
    fixed = {k: v for k, v in all_params(module, result).items() if k not in result.params}
    return lambda params, rows: module.predict({**fixed, **params}, rows)


def baseline(module, table: pd.DataFrame, system) -> np.ndarray:
    """The uncalibrated model of the same rows: the roofline (η = 1, no overheads, exact max),
    or for collectives the engine's alpha-beta time with the preset's latencies."""
    if hasattr(module, "alpha_beta"):
        return np.asarray(module.alpha_beta(table, system))
    return np.asarray(module.roofline(module.rows(table, system)))


def _cores(system: jm.System) -> float | None:
    cores = getattr(system.chip, "cores", None)
    return None if cores is None else float(cores)


def build(kernels: pd.DataFrame, hardware: str, *, name: str, description: str = "", cores: float | None = None,
          any_version: bool = False) -> dict:
    """Fit every family with rows in ``kernels`` (a tidy kernel table) on ``hardware``'s datasheet.
    ``any_version``: keep rows of every framework version (a user's own measurements)."""
    system = jm.load_hardware(hardware)
    cores = cores if cores is not None else _cores(system)
    if cores is None:
        raise ValueError(f"calibration set {name!r}: hardware {hardware!r} states no SM count; pass cores= (> 0)")
    spec = {"name": name, "description": description, "hardware": hardware, "cores": cores, "efficiency": {}}
    fitted = []
    for family in FAMILIES:
        module = adapter(family)
        table = select(family, kernels, any_version)
        if table.empty:
            continue
        result = module.fit(table, system)
        params = all_params(module, result)
        measured = table["measured_s"].to_numpy()
        predicted = np.asarray(module.predict(params, module.rows(table, system)))
        entry = {"params": params, "stderr": result.stderr, "rows": int(len(table)),
                 "rms_log_residual": result.rms_log_residual, "in_sample": metrics.errors(predicted, measured),
                 "data": sorted({f"{s} {f} {v} {k}".strip() for s, f, v, k in
                                 table[["source", "framework", "framework_version", "kernel"]].drop_duplicates()
                                 .itertuples(index=False)})}
        if family == "elementwise":
            spec["efficiency"] = module.efficiency_fields(result)
            spec["elementwise"] = entry
        else:
            spec[family] = entry
        fitted.append(family)
    if not fitted:
        raise ValueError(f"calibration set {name!r}: no rows of any kernel family ({', '.join(FAMILIES)}) to fit")
    jm.presets.efficiency_from_dict(spec)  # the set must load
    return spec


def write(spec: dict, path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(spec, indent=1, sort_keys=False) + "\n")
    return path


def shared_kernels(gpu: str) -> pd.DataFrame:
    """The measured tables behind the committed sets for one GPU."""
    from calibration.loaders import aiconfigurator, vidur

    frames = [aiconfigurator.load(systems=gpu, frameworks=("vllm", "nccl")),
              vidur.load_compute(gpus=gpu)]
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the committed calibration sets from ../shared/data.")
    parser.add_argument("--out", type=Path, default=PRESET_FOLDER, help="folder to write NAME.json into")
    args = parser.parse_args()
    for name, (gpu, hardware, description) in DEFAULT_SETS.items():
        spec = build(shared_kernels(gpu), hardware, name=name, description=description)
        path = write(spec, args.out / f"{name}.json")
        print(f"{path}: " + ", ".join(f"{f} {spec[f]['rows']} rows, in-sample geomean "
                                      f"{spec[f]['in_sample']['geomean_pct']:.1f}%"
                                      for f in FAMILIES if spec.get(f)))


if __name__ == "__main__":
    main()
