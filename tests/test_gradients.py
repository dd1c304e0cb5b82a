"""Gradients of every metric w.r.t. every hardware leaf, against central finite differences (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel import inference

METRICS = ("prefill_s", "tpot_s", "memory_headroom_bytes", "memory_bytes")


def _f64(tree):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), tree)


@pytest.mark.parametrize("tp", [4, 16], ids=["inside-node", "across-nodes"])
def test_hardware_gradients_match_finite_differences(tp):
    with jax.enable_x64(True):
        arch = _f64(jm.load_model("llama-3-70b"))
        # Discrete placement rules (collective inside a node, pipeline boundary across nodes)
        # jump at whole numbers of devices; this point sits strictly between such jumps.
        wl = _f64(jm.Workload(batch=24, input_tokens=1500, output_tokens=300, tp=tp, pp=3))
        system = _f64(jm.load_hardware("h100-sxm").datasheet())
        eff = _f64(jm.ideal())
        leaves, treedef = jax.tree_util.tree_flatten(system)
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(system)[0]]

        f = jax.jit(lambda xs: jnp.stack(
            [inference.evaluate(arch, wl, jax.tree_util.tree_unflatten(treedef, xs), eff)[m] for m in METRICS]))
        jacobian = jax.jit(jax.jacrev(f))(leaves)  # one row per metric, one column per leaf
        values = np.asarray(f(leaves))
        for i, x in enumerate(leaves):
            size = abs(float(x)) or 1.0  # zero-valued leaves (e.g. 'use the default' prices)
            h = 1e-6 * size
            up = list(leaves); up[i] = x + h
            down = list(leaves); down[i] = x - h
            fd = (np.asarray(f(up)) - np.asarray(f(down))) / (2 * h)
            for j, name in enumerate(METRICS):
                g = float(jacobian[i][j])
                assert np.isfinite(g), (name, paths[i])
                scale = max(abs(g), abs(fd[j]), 1e-12 * abs(values[j]) / size)
                assert abs(g - fd[j]) <= 1e-4 * scale, (name, paths[i], g, fd[j])


def test_gradients_have_the_expected_signs():
    arch, wl, system = jm.load_model("llama-3-70b"), jm.Workload(batch=8, tp=4), jm.load_hardware("h100-sxm").datasheet()
    g = jax.grad(lambda s: inference.evaluate(arch, wl, s, jm.ideal())["tpot_s"])(system)
    assert float(g.chip.mem_bw_Bps) < 0  # more bandwidth, faster decode
    assert float(g.scale_up.link_latency_s) > 0  # slower links, slower decode
    g = jax.grad(lambda s: inference.evaluate(arch, wl, s, jm.ideal())["memory_headroom_bytes"])(system)
    assert float(g.chip.mem_capacity_bytes) == pytest.approx(0.9)


def test_gradients_with_respect_to_workload_and_architecture():
    arch, system = jm.load_model("llama-3-70b"), jm.load_hardware("h100-sxm").datasheet()
    wl = jm.Workload(batch=8, tp=4)
    g = jax.grad(lambda w: inference.evaluate(arch, w, system, jm.ideal())["prefill_s"])(wl)
    assert float(g.batch) > 0 and float(g.input_tokens) > 0
    g = jax.grad(lambda a: inference.evaluate(a, wl, system, jm.ideal())["tpot_s"])(arch)
    assert float(g.d_model) > 0 and float(g.n_layers) > 0
