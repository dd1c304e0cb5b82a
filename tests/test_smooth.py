"""Smooth relaxation: bounded deviation from the exact roofline, finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel import inference
from jaxmodel.smooth import soft_max, soft_max_bound


def test_soft_max_bounds():
    rng = np.random.default_rng(1)
    x = [jnp.asarray(rng.uniform(0, 10, 50)) for _ in range(3)]
    exact = np.maximum(np.maximum(x[0], x[1]), x[2])
    for p in (4.0, 16.0, 64.0):
        soft = np.asarray(soft_max(x, p))
        assert (soft >= exact * (1 - 1e-6)).all()
        assert (soft <= exact * (1 + soft_max_bound(3, p)) + 1e-6).all()
    zeros = [jnp.zeros(3)] * 3
    assert (np.asarray(soft_max(zeros, 16.0)) == 0).all()
    assert np.isfinite(np.asarray(jax.grad(lambda v: soft_max([v, v, v], 16.0).sum())(jnp.zeros(3)))).all()


def test_smooth_model_within_bound_of_exact(llama70b, h100):
    wl = jm.Workload(batch=16, input_tokens=1024, output_tokens=128, tp=4)
    exact = jm.predict(llama70b, wl, h100)
    smooth = jm.predict(llama70b, wl, h100, sharpness=16.0)
    bound = soft_max_bound(3, 16.0)
    for key in ("prefill_s", "tpot_s"):
        assert exact[key] <= smooth[key] <= exact[key] * (1 + bound)
    g = jax.grad(lambda s: inference.evaluate(llama70b, wl, s, jm.ideal(), 16.0)["tpot_s"])(h100)
    assert all(np.isfinite(float(v)) for v in jax.tree_util.tree_leaves(g))
    # Smooth mode gives compute a (small) say in memory-bound decode; exact mode gives none.
    assert float(g.chip.tensor_flops["bf16"]) < 0
    exact_g = jax.grad(lambda s: inference.evaluate(llama70b, wl, s, jm.ideal())["tpot_s"])(h100)
    assert float(exact_g.chip.tensor_flops["bf16"]) == pytest.approx(0.0, abs=1e-30)


def test_straight_through_limit_keeps_exact_values_and_passes_rounding_slopes():
    """sharpness=inf: the exact model's values; through a ceiling (waves of tiles over cores)
    the slope is the identity's, where exact mode's is zero."""
    from jaxmodel.perf import systolic

    chip = jm.load_hardware("h100-sxm").chip
    eff = jm.ideal()

    def t(cores, sharpness):
        c = chip.__class__(cores, chip.lanes, chip.array_rows, chip.array_cols, chip.macs_per_pe_cycle,
                           chip.vector_width, chip.vector_flops_per_lane_cycle, chip.l1_bytes, chip.l2_bytes,
                           chip.l2_bytes_per_cycle, chip.core_port_bytes_per_cycle, chip.tensor_clock_hz,
                           chip.vector_clock_hz, chip.memory, chip.die)
        shape = dict(m=4096.0, n=4096.0, k=4096.0, count=1.0, lhs_bytes=2 * 4096.0**2, rhs_bytes=2 * 4096.0**2,
                     out_bytes=2 * 4096.0**2)
        return systolic.matmul_time(c, eff, "bf16", sharpness=sharpness, **shape).time

    cores = jnp.asarray(100.0)
    assert float(t(cores, np.inf)) == float(t(cores, None))
    assert float(soft_max([jnp.asarray(2.0), jnp.asarray(3.0)], np.inf)) == 3.0
    assert float(jax.grad(t)(cores, None)) == 0.0  # wave count is a step function of the cores
    assert float(jax.grad(t)(cores, np.inf)) < 0.0  # more cores, fewer waves
