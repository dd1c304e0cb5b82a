"""Collective kernel model: hand-computed cases, limits, gradients, precision, a synthetic fit,
bad input, and the measured-data adapter's payload convention."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmodel as jm
from calibration.loaders import SHARED_DATA
from calibration.ops import collectives as adapter
from jaxmodel.kernels.collectives import SOFTMIN_POWER, START, CollectiveModel
from jaxmodel.perf import comm

AIC = SHARED_DATA / "aiconfigurator-ops"
needs_aic = pytest.mark.skipif(not AIC.is_dir(), reason=f"AIConfigurator data not found at {AIC}")

B, ALPHA, T0 = 300e9, 1e-6, 8e-6  # per-direction bandwidth, link latency, start-up
NCCL_KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")


def model(**over):
    return CollectiveModel(**{**START, **over})


def softmin(a, b, q=SOFTMIN_POWER):
    return (a ** -q + b ** -q) ** (-1 / q)


# ------------------------------------------------------------------ hand-computed cases


def test_all_gather_oracle():
    p = START
    n, s = 4, 1e6
    link = (3 + p["local_step"]) / 4 * s / (p["eta"] * p["eta_all_gather"] * B)
    latency = p["startup"] * T0 + 3 * p["step"] * ALPHA
    expected = softmin(latency + link * (1 + p["ll_slowdown"]), latency + p["simple_startup"] * T0 + link)
    got = float(model().time_s("all_gather", s, n, B, ALPHA, T0))
    assert got == pytest.approx(expected, rel=1e-6)


def test_all_reduce_nccl_and_all_to_all_oracle():
    p = START
    n, s = 8, 64e6
    link = 2 * (7 + p["local_step"]) / 8 * s / (p["eta"] * B)
    latency = p["startup"] * T0 + 14 * p["step"] * ALPHA
    expected = softmin(latency + link * (1 + p["ll_slowdown"]), latency + p["simple_startup"] * T0 + link)
    # 64 MB is above vLLM's custom limit, so the custom model also takes NCCL's time.
    for m in (model(custom_allreduce=False), model()):
        assert float(m.time_s("all_reduce", s, n, B, ALPHA, T0)) == pytest.approx(expected, rel=1e-6)
    link = (7 + p["local_step"]) / 8 * s / (p["eta"] * p["eta_all_to_all"] * B)
    latency = p["startup"] * T0 + 7 * p["p2p_step"] * p["step"] * ALPHA
    expected = softmin(latency + link * (1 + p["p2p_ll_slowdown"]), latency + p["p2p_simple_startup"] * T0 + link)
    assert float(model().time_s("all_to_all", s, n, B, ALPHA, T0)) == pytest.approx(expected, rel=1e-6)


def test_send_recv_oracle():
    p = START
    s = 4e6
    link = s / (p["eta"] * p["eta_all_to_all"] * B)
    latency = p["startup"] * T0 + p["p2p_step"] * p["step"] * ALPHA
    expected = softmin(latency + link * (1 + p["p2p_ll_slowdown"]), latency + p["p2p_simple_startup"] * T0 + link)
    assert float(model().time_s("send_recv", s, 2, B, ALPHA, T0)) == pytest.approx(expected, rel=1e-6)


def test_custom_allreduce_oracle():
    p, m = START, model()
    # n = 2 is always one-shot: read the peer's whole buffer.
    s = 2**20
    expected = p["custom_launch_s"] + p["custom_peer"] * ALPHA + s / (p["custom_eta_one_shot"] * B)
    assert float(m.time_s("all_reduce", s, 2, B, ALPHA, T0)) == pytest.approx(expected, rel=1e-6)
    # n = 8 at 128 KiB: one-shot reads 7 buffers; at 1 MiB two-shot moves 2·7/8 of it behind a second barrier.
    s = 2**17
    expected = p["custom_launch_s"] + 7 * p["custom_peer"] * ALPHA + 7 * s / (p["custom_eta_one_shot"] * B)
    assert float(m.time_s("all_reduce", s, 8, B, ALPHA, T0)) == pytest.approx(expected, rel=1e-6)
    s = 2**20
    expected = (p["custom_launch_s"] + 7 * p["custom_peer"] * ALPHA + p["custom_stage_s"]
                + 1.75 * s / (p["custom_eta_two_shot"] * B))
    assert float(m.time_s("all_reduce", s, 8, B, ALPHA, T0)) == pytest.approx(expected, rel=1e-6)
    # n = 4 switches at 512 KiB, n = 8 at 256 KiB (vLLM's rule).
    assert bool(jnp.all(m.custom_time_s(jnp.array([2.0**19 - 2, 2.0**19]), 4.0, B, ALPHA)
                        == jnp.array([m.custom_time_s(2.0**19 - 2, 4.0, B, ALPHA),
                                      m.custom_time_s(2.0**19, 4.0, B, ALPHA)])))
    one = p["custom_launch_s"] + 3 * p["custom_peer"] * ALPHA + 3 * (2**19 - 2) / (p["custom_eta_one_shot"] * B)
    assert float(m.custom_time_s(2.0**19 - 2, 4.0, B, ALPHA)) == pytest.approx(one, rel=1e-6)
    # Not where vLLM cannot run it: 3 GPUs, 8 MiB and above, or across nodes.
    nccl = model(custom_allreduce=False)
    for s, n, allowed in ((2**20, 3, True), (8 * 2**20, 8, True), (2**20, 8, False)):
        assert float(m.time_s("all_reduce", s, n, B, ALPHA, T0, custom_allowed=allowed)) == pytest.approx(
            float(nccl.time_s("all_reduce", s, n, B, ALPHA, T0)), rel=1e-6)


@pytest.mark.parametrize("kind", NCCL_KINDS)
def test_group_of_one_costs_nothing(kind):
    assert float(model().time_s(kind, 1e6, 1, B, ALPHA, T0)) == 0.0


# ------------------------------------------------------------------ invariants and limits


@eqx.filter_jit
def _all_kinds(m, s, n, bw, alpha, t0, custom_allowed=True):
    """Every collective's time, stacked (one compiled program for the grid tests)."""
    return jnp.stack([m.time_s(kind, s, n, bw, alpha, t0, custom_allowed=custom_allowed) for kind in NCCL_KINDS])


def test_monotone_in_payload_and_group():
    m = model()
    sizes = jnp.logspace(2, 9.5, 60)
    for n in (2.0, 4.0, 8.0):
        t = np.asarray(_all_kinds(m, sizes, n, B, ALPHA, T0, False))
        assert np.all(np.diff(t, axis=1) > 0)
    t = np.asarray(_all_kinds(m, jnp.full(7, 1e6), jnp.arange(2.0, 9.0), B, ALPHA, T0, False))
    assert np.all(np.diff(t[:-1], axis=1) > 0)  # send/recv has one peer whatever the group


def test_reduces_to_engine_alpha_beta():
    """Unit multipliers, no local step, no Simple start-up and an unusable LL protocol give the
    engine's ring alpha-beta model (jaxmodel.perf.comm) exactly."""
    ideal = model(startup=1.0, step=1.0, eta=1.0, local_step=1e-12, simple_startup=1e-12, ll_slowdown=1e12,
                  eta_all_gather=1.0, eta_reduce_scatter=1.0, eta_all_to_all=1.0, p2p_step=1.0,
                  p2p_ll_slowdown=1e12, p2p_simple_startup=1e-12, custom_allreduce=False)
    system = jm.load_hardware("a100-sxm-80gb")
    up = system.scale_up
    payload = jnp.array([512.0, 1e5, 3e7, 5e8])
    for kind in NCCL_KINDS:
        for n in ((2.0,) if kind == "send_recv" else (1.0, 2.0, 4.0, 8.0)):
            ours = ideal.time_s(kind, payload, n, up.bandwidth_Bps, up.link_latency_s, up.collective_latency_s)
            engine = comm.collective_time(kind, payload, n, 1.0, system, jm.Efficiency())
            np.testing.assert_allclose(np.asarray(ours), np.asarray(engine), rtol=2e-5, err_msg=f"{kind} n={n}")


def test_large_payload_slope_is_the_simple_bus_bandwidth():
    m, p = model(), START
    s = 1e12
    slope = float(m.time_s("all_reduce", 2 * s, 8, B, ALPHA, T0) - m.time_s("all_reduce", s, 8, B, ALPHA, T0)) / s
    assert slope == pytest.approx(2 * (7 + p["local_step"]) / 8 / (p["eta"] * B), rel=1e-3)


# ------------------------------------------------------------------ gradients and precision


def _grid():
    s = jnp.array([0.0, 256.0, 2.0**18 - 2, 2.0**18, 2.0**19, 2.0**23 - 2, 2.0**23, 1e9])
    n = jnp.array([1.0, 2.0, 3.0, 4.0, 8.0])
    return jnp.meshgrid(s, n, indexing="ij")


def test_gradients_finite_everywhere():
    """All-reduce (NCCL's soft minimum, which every kind shares, vLLM's kernel and its switches)
    over payloads at and around every threshold, groups of 1-8, and zero latencies with a zero
    payload (the soft minimum's 0/0 guard); parameters and hardware inputs. The custom
    parameters are reached through the vLLM branch, the point-to-point ones are not."""
    s, n = _grid()

    @jax.jit
    def grads(m, bw, alpha, t0):
        def total(*args):
            return jnp.sum(args[0].time_s("all_reduce", s, n, *args[1:])) * 1e3
        return jax.grad(total, argnums=(0, 1, 2, 3))(m, bw, alpha, t0)

    for alpha, t0 in ((ALPHA, T0), (0.0, 0.0)):
        leaves = jax.tree_util.tree_leaves(grads(model(), jnp.float32(B), jnp.float32(alpha), jnp.float32(t0)))
        assert len(leaves) == len(START) + 3 and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)


def test_gradient_matches_finite_differences():
    """One case where both NCCL protocols weigh in (all-gather, 4 GPUs, 300 kB) and one vLLM
    two-shot all-reduce (8 GPUs, 1 MiB): analytic gradient = central differences, float64."""
    with jax.enable_x64(True):
        @jax.jit
        def time(values):
            m = CollectiveModel(**dict(zip(START, values)))
            return m.time_s("all_gather", 3e5, 4.0, B, ALPHA, T0) + m.time_s("all_reduce", 2.0**20, 8.0, B, ALPHA, T0)

        x = jnp.array(list(START.values()), dtype=jnp.float64)
        grad = np.asarray(jax.jit(jax.grad(time))(x))
        h = 1e-6 * x
        steps = jnp.diag(h)
        up, down = (np.asarray(jax.vmap(time)(x[None, :] + sign * steps)) for sign in (1.0, -1.0))
        fd = (up - down) / (2 * np.asarray(h))
        scale = float(time(x)) / np.asarray(x)  # gradient size of a parameter that matters
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9 * scale.max())
        assert np.count_nonzero(np.abs(grad) > 1e-6 * scale) >= 10  # most parameters act on these two cases


def test_float32_matches_float64():
    s, n = (np.asarray(x) for x in _grid())
    with jax.enable_x64(True):
        m64 = model()
        assert m64.eta.dtype == jnp.float64
        t64 = np.asarray(_all_kinds(m64, jnp.asarray(s), jnp.asarray(n), B, ALPHA, T0))
    m32 = model()
    assert m32.eta.dtype == jnp.float32
    t32 = np.asarray(_all_kinds(m32, jnp.asarray(s, jnp.float32), jnp.asarray(n, jnp.float32), B, ALPHA, T0))
    assert t32.dtype == np.float32
    np.testing.assert_allclose(t32, t64, rtol=2e-5, atol=1e-12)


def test_jit_and_vmap():
    m = model()
    f = jax.jit(jax.vmap(lambda bw, s: m.time_s("all_reduce", s, 8.0, bw, ALPHA, T0)))
    out = f(jnp.array([300e9, 450e9]), jnp.array([1e6, 1e6]))
    assert out.shape == (2,) and bool(out[1] < out[0])


# ------------------------------------------------------------------ synthetic recovery


def _synthetic_table(truth, system, rng, noise):
    rows = []
    for op in adapter.KINDS:
        for n in (2, 4, 8):
            for s in 2.0 ** np.arange(9, 30, 1.0):
                rows.append(dict(framework="nccl", op=op, dtype="fp16", kernel="NCCL", framework_version="2.27.3",
                                 gpus=float(n), message_bytes=s))
    for n in (2, 4, 8):
        for s in 2.0 ** np.arange(8, 31, 1.0):
            rows.append(dict(framework=adapter.VLLM, op="all_reduce", dtype="bf16", kernel="vllm_graph",
                             framework_version=adapter.VLLM_VERSION, gpus=float(n), message_bytes=s))
    table = pd.DataFrame(rows).assign(gpu="a100_sxm")
    with jax.enable_x64(True):
        clean = np.asarray(adapter.predict(truth, adapter.rows(table, system)))
    table["measured_s"] = clean * np.exp(noise * rng.standard_normal(len(table)))
    return table


def test_synthetic_recovery():
    system = jm.load_hardware("a100-sxm-80gb")
    rng = np.random.default_rng(1)
    truth = {k: v * float(np.exp(rng.uniform(-0.2, 0.2))) for k, v in START.items()}
    table = _synthetic_table(truth, system, rng, noise=0.01)
    result = adapter.fit(table, system)
    assert result.converged
    for name, value in truth.items():
        assert abs(result.params[name] - value) <= 4 * result.stderr[name] + 1e-3 * value, name
    assert result.rms_log_residual == pytest.approx(0.01, rel=0.2)


# ------------------------------------------------------------------ bad input


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match=r"CollectiveModel.eta must be > 0"):
        model(eta=0.0)
    with pytest.raises(ValueError, match=r"CollectiveModel.custom_launch_s must be > 0"):
        model(custom_launch_s=-1e-6)
    with pytest.raises(ValueError, match=r"CollectiveModel.step must be a number"):
        model(step="fast")
    with pytest.raises(ValueError, match=r"CollectiveModel.local_step must be finite"):
        model(local_step=math.nan)
    with pytest.raises(ValueError, match=r"custom_allreduce must be True or False"):
        model(custom_allreduce=1)
    with pytest.raises(ValueError, match=r"custom_max_bytes must be >= 0"):
        model(custom_max_bytes=-1)


def test_bad_call_arguments_raise():
    m = model()
    with pytest.raises(ValueError, match=r"kind must be one of"):
        m.time_s("broadcast", 1e6, 8, B, ALPHA, T0)
    with pytest.raises(ValueError, match=r"payload_bytes must be >= 0"):
        m.time_s("all_reduce", -1.0, 8, B, ALPHA, T0)
    with pytest.raises(ValueError, match=r"size must be >= 1"):
        m.time_s("all_gather", 1e6, 0.5, B, ALPHA, T0)
    with pytest.raises(ValueError, match=r"bandwidth_Bps must be > 0"):
        m.time_s("all_gather", 1e6, 8, 0.0, ALPHA, T0)
    with pytest.raises(ValueError, match=r"startup_s must be >= 0"):
        m.time_s("all_gather", 1e6, 8, B, ALPHA, -T0)


# ------------------------------------------------------------------ measured data


@needs_aic
def test_adapter_payload_is_the_nccl_tests_buffer():
    """message_bytes is nccl-tests' -b size (element count x element size): the gathered buffer
    for all-gather, the input buffer for reduce-scatter, the engine's conventions."""
    from calibration.loaders import aiconfigurator

    table = aiconfigurator.load(AIC, systems="a100_sxm", ops=adapter.KINDS)
    raw = pd.read_parquet(AIC / "a100_sxm/comm/nccl/2.27.3/nccl_perf.parquet")
    for op, name in (("all_gather", "all_gather"), ("reduce_scatter", "reduce_scatter"), ("all_to_all", "alltoall")):
        row = raw[(raw["op_name"] == name) & (raw["nccl_dtype"] == "half")].iloc[0]
        hit = table[table["provenance"] == f"a100_sxm/comm/nccl/2.27.3/nccl_perf.parquet#row{row.name}"]
        assert float(hit["message_bytes"].iloc[0]) == 2 * row["message_size"]
        assert hit["op"].iloc[0] == op
    chosen = adapter.select(table)
    assert set(chosen["dtype"]) <= {"fp16", "bf16"}
    assert set(chosen["kernel"][chosen["framework"] == adapter.VLLM]) == {"vllm_graph"}
    mask = adapter.held_out(chosen, seed=0)
    for _, group in chosen[mask].groupby(adapter.series(chosen[mask])):
        held = set(group["message_bytes"])
        trained = chosen[~mask & (adapter.series(chosen) == adapter.series(group).iloc[0])]
        assert not held & set(trained["message_bytes"])
    times = np.asarray(adapter.predict(START, adapter.rows(chosen, jm.load_hardware("a100-sxm-80gb"))))
    assert np.all(np.isfinite(times) & (times > 0))
