"""Fit the die-area model's four unit-size scales to published die areas, and report the error.

Targets: H100 814 mm² and A100 826 mm² (NVIDIA whitepapers), SPAD Prefill Chip 784 mm² and
Decode Chip 520 mm² (SPAD Table 3). The residuals are log(model / published) for each chip
plus ``--prior`` x log(scale) for each scale, so the scales stay near the sizes taken from
die photos and LLMCompass unless the data insist; solved by Gauss-Newton with JAX.
The printed scales are what ``jaxmodel/area.py`` ships as ``FITTED``.

    python benchmarks/area_calibration.py [--prior 0.1]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import jaxmodel as jm
from jaxmodel import area

TARGETS = {"h100-sxm": 814.0, "a100-sxm-80gb": 826.0, "spad-prefill": 784.0, "spad-decode": 520.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", type=float, default=0.1, help="weight of the pull of log(scale) to 0")
    args = parser.parse_args()
    systems = {name: jm.load_hardware(name) for name in TARGETS}
    targets = jnp.array(list(TARGETS.values()))

    def areas(log_scales):
        scales = area.AreaScales(*jnp.exp(log_scales))
        return jnp.stack([area.die_area_mm2(s, scales) for s in systems.values()])

    def residuals(log_scales):
        return jnp.concatenate([jnp.log(areas(log_scales) / targets), args.prior * log_scales])

    x = jnp.zeros(4)
    for _ in range(50):
        r, jac = residuals(x), jax.jacfwd(residuals)(x)
        x = x - jnp.linalg.solve(jac.T @ jac, jac.T @ r)
    fitted = area.AreaScales(*[float(v) for v in jnp.exp(x)])
    print("fitted scales:", ", ".join(f"{k}={v:.3f}" for k, v in fitted._asdict().items()))
    print("shipped      :", ", ".join(f"{k}={v:.3f}" for k, v in area.FITTED._asdict().items()))
    print(f"{'chip':<16}{'published':>11}{'unscaled':>11}{'fitted':>11}{'error':>9}")
    unscaled, model = areas(jnp.zeros(4)), areas(x)
    for (name, target), a0, a in zip(TARGETS.items(), unscaled, model):
        print(f"{name:<16}{target:>9.0f}mm²{float(a0):>9.0f}mm²{float(a):>9.0f}mm²{100 * (float(a) / target - 1):>+8.1f}%")


if __name__ == "__main__":
    main()
