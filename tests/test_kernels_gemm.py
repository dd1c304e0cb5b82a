"""GEMM kernel model: hand-computed cases, limits, invariants, gradients, precision, recovery."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calibration import fit as _fit
from calibration.loaders import SHARED_DATA
from calibration.ops import gemm as gemm_ops
from jaxmodel.kernels import gemm
from jaxmodel.kernels.gemm import START, GemmModel

AIC = SHARED_DATA / "aiconfigurator-ops"
needs_aic = pytest.mark.skipif(not AIC.is_dir(), reason=f"AIConfigurator data not found at {AIC}")

A100 = dict(peak_flops=311.87e12, bandwidth_Bps=2.039e12, cores=108.0)
FITTED_A100 = dict(eta_tensor=0.995, feed_intensity=56.8, eta_memory=0.757, overlap=2.74, launch_s=3.08e-6,
                   split_k_s=2.26e-6, epilogue=1.13)


def plain_bytes(m, n, k, matmuls=1.0):
    return 2.0 * (m * k + k * n + m * n) * matmuls


@jax.jit
def _time(model, m, n, k, matmuls, bytes_moved, peak_flops, bandwidth_Bps, cores):
    return model.time_s(m, n, k, matmuls, 2.0 * m * n * k * matmuls, bytes_moved, peak_flops, bandwidth_Bps, cores)


def call(model, m, n, k, matmuls=1.0, bytes_moved=None, hw=A100):
    """model.time_s, compiled (one program per dtype and shape)."""
    bytes_moved = plain_bytes(m, n, k, matmuls) if bytes_moved is None else bytes_moved
    return _time(model, m, n, k, matmuls, bytes_moved, hw["peak_flops"], hw["bandwidth_Bps"], hw["cores"])


def reference(params, m, n, k, matmuls, bytes_moved, peak, bandwidth, cores):
    """The module docstring's formula, one candidate at a time in plain Python (an oracle
    written independently of the vectorized code)."""
    p = 1.0 + params["overlap"]

    def soft(a, b):
        return (a ** p + b ** p) ** (1.0 / p)

    best = math.inf
    for (tm, tn), s in itertools.product(gemm.TILES, gemm.SPLITS):
        per_k = soft(2 * tm * tn, 2 * (tm + tn) * params["feed_intensity"]) / (peak * params["eta_tensor"] / cores)
        ctas = matmuls * math.ceil(m / tm) * math.ceil(n / tn) * s
        waves = math.ceil(ctas / cores)
        k_cta = 32 * math.ceil(k / (32 * s))
        rate = bandwidth * params["eta_memory"]
        c_bytes = (4 if s > 1 else 2) * min(tm, m) * min(tn, n)
        wave = k_cta * per_k + params["epilogue"] * c_bytes * min(ctas, cores) / rate
        dram = (bytes_moved + (8 * matmuls * m * n * s if s > 1 else 0)) / rate
        t = params["launch_s"] + (params["split_k_s"] if s > 1 else 0) + soft(waves * wave, dram)
        best = min(best, t)
    return best


def test_hand_computed_single_sm():
    # One SM, 64x64 output, k = 32, feed no limit (feed_intensity 0), overlap 0 (stages add up).
    # Best candidate: one 64x64 tile, no split:
    #   main loop 32 * 2*64*64 / 1e12                 = 2.62144e-7 s
    #   epilogue  1.0 * 2*64*64 bytes / 1e11           = 8.192e-8 s
    #   DRAM      2*(64*32 + 32*64 + 64*64) / 1e11    = 1.6384e-7 s
    #   t = 1e-6 + 2.62144e-7 + 8.192e-8 + 1.6384e-7  = 1.507904e-6 s
    # (64x128 or 128x64 tiles pad to twice the work; splitting K runs 2+ waves on one SM.)
    with jax.enable_x64(True):
        model = GemmModel(eta_tensor=1.0, feed_intensity=0.0, eta_memory=1.0, overlap=0.0, launch_s=1e-6,
                          split_k_s=1e-6, epilogue=1.0)
        t = call(model, 64.0, 64.0, 32.0, hw=dict(peak_flops=1e12, bandwidth_Bps=1e11, cores=1.0))
    assert float(t) == pytest.approx(1.507904e-6, rel=1e-12)


def test_hand_computed_split_k():
    # A skinny GEMM on a 4-SM chip with a free reduction pass: m = n = 64, k = 4096, no
    # epilogue, no DRAM bytes but the partial sums, overlap 0 (stages add up). One SM runs at
    # 1e12 / 4 FLOP/s, so a 64x64 tile costs 2*64*64 / 2.5e11 = 3.2768e-8 s per unit of K.
    # Split 4 ways: one wave of 4 CTAs doing k/4 = 1024 each = 3.3554432e-5 s (a quarter of the
    # unsplit 1.34217728e-4 s; more splits need more waves), plus FP32 partial sums written
    # and read back, 8 * 64*64 * 4 bytes / 1e11 = 1.31072e-6 s: 3.4865152e-5 s.
    with jax.enable_x64(True):
        model = GemmModel(eta_tensor=1.0, feed_intensity=0.0, eta_memory=1.0, overlap=0.0, launch_s=0.0,
                          split_k_s=0.0, epilogue=0.0)
        t = call(model, 64.0, 64.0, 4096.0, bytes_moved=0.0, hw=dict(peak_flops=1e12, bandwidth_Bps=1e11, cores=4.0))
    assert float(t) == pytest.approx(3.4865152e-5, rel=1e-12)


@pytest.mark.parametrize("shape", [(1, 4096, 4096, 1), (7, 300, 5000, 1), (128, 128, 65536, 1), (640, 2560, 96, 3),
                                   (4096, 8192, 8192, 1), (8192, 32, 32, 1), (33.5, 1000.0, 777.0, 2)])
def test_matches_reference_implementation(shape):
    m, n, k, matmuls = shape
    bytes_moved = plain_bytes(m, n, k, matmuls)
    with jax.enable_x64(True):
        t = float(call(GemmModel(**FITTED_A100), m, n, k, matmuls, bytes_moved))
    expected = reference(FITTED_A100, m, n, k, matmuls, bytes_moved, A100["peak_flops"], A100["bandwidth_Bps"],
                         A100["cores"])
    assert t == pytest.approx(expected, rel=1e-10)


def ideal():
    # No overheads, full rates, no feed limit, and a soft maximum sharp enough to be the max.
    return GemmModel(eta_tensor=1.0, feed_intensity=0.0, eta_memory=1.0, overlap=400.0, launch_s=0.0,
                     split_k_s=0.0, epilogue=0.0)


@pytest.mark.parametrize("shape", [(8192, 8192, 8192), (2048, 6912, 4096), (1, 4096, 4096), (4, 16384, 8192),
                                   (8192, 8192, 32)])
def test_reduces_to_roofline(shape):
    # 4 SMs and m, n multiples of 256: every tile count fills whole waves, so the ideal model is
    # exactly max(flops / peak, bytes / bandwidth) up to the soft maximum (<= 2^(1/401) - 1).
    # Skinny m pads to a 64-row tile, but those GEMMs are memory-bound by far.
    m, n, k = (float(v) for v in shape)
    hw = dict(peak_flops=1e14, bandwidth_Bps=1e12, cores=4.0)
    with jax.enable_x64(True):
        t = float(call(ideal(), m, n, k, hw=hw))
    roof = max(2 * m * n * k / hw["peak_flops"], plain_bytes(m, n, k) / hw["bandwidth_Bps"])
    assert t == pytest.approx(roof, rel=2e-3)


def test_monotone_in_work_and_rates():
    model = GemmModel(**FITTED_A100)
    grid = np.array(list(itertools.product([1, 3, 16, 100, 512, 3000], [32, 200, 1024, 5000], [32, 96, 1000, 8192])),
                    float)
    m, n, k = grid.T
    with jax.enable_x64(True):
        base = np.asarray(call(model, m, n, k))
        for bigger in ((m * 1.5, n, k), (m, n * 1.5, k), (m, n, k * 1.5)):
            assert np.all(np.asarray(call(model, *bigger, bytes_moved=plain_bytes(m, n, k))) >= base * (1 - 1e-12))
        assert np.all(np.asarray(call(model, m, n, k, bytes_moved=2 * plain_bytes(m, n, k))) >= base)
        for field in ("peak_flops", "bandwidth_Bps"):
            faster = dict(A100, **{field: 2 * A100[field]})
            assert np.all(np.asarray(call(model, m, n, k, hw=faster)) <= base * (1 + 1e-12))
    assert np.all(base >= FITTED_A100["launch_s"])


def test_batched_matmuls_equal_stacked_rows():
    # matmuls independent GEMMs tile like one GEMM with matmuls x m rows when m is a whole
    # number of every tile height (256), at the same DRAM bytes.
    model = GemmModel(**FITTED_A100)
    with jax.enable_x64(True):
        batched = float(call(model, 256.0, 3000.0, 700.0, 4.0, bytes_moved=1e7))
        stacked = float(call(model, 1024.0, 3000.0, 700.0, 1.0, bytes_moved=1e7))
    assert batched == pytest.approx(stacked, rel=1e-12)


def test_no_work_takes_no_time_with_finite_gradients():
    model = GemmModel(**FITTED_A100)
    m = jnp.array([0.0, 64.0, 64.0, 64.0])
    n = jnp.array([64.0, 0.0, 64.0, 64.0])
    k = jnp.array([64.0, 64.0, 0.0, 64.0])
    matmuls = jnp.array([1.0, 1.0, 1.0, 0.0])
    t = call(model, m, n, k, matmuls, bytes_moved=0.0)
    np.testing.assert_array_equal(np.asarray(t), 0.0)
    grads = jax.jit(jax.grad(lambda mod: jnp.sum(call(mod, m, n, k, matmuls, bytes_moved=0.0))))(model)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))


def edge_grid():
    m = np.array([1, 1, 2.5, 16, 64, 100, 1024, 8192, 8192, 65536, 3, 200])
    n = np.array([32, 65536, 7, 4096, 64, 3000, 1024, 8192, 32, 65536, 1, 128])
    k = np.array([32, 65536, 9, 4096, 128, 3000, 96, 8192, 32, 65536, 1, 10000])
    return m, n, k


@pytest.mark.parametrize("x64", [False, True])
def test_gradients_finite(x64):
    m, n, k = edge_grid()
    with jax.enable_x64(x64):
        model = GemmModel(**FITTED_A100)

        def total(mod, peak, bandwidth, cores):
            t = _time(mod, m, n, k, 1.0, plain_bytes(m, n, k), peak, bandwidth, cores)
            return jnp.sum(jnp.log(t))

        grads = jax.jit(jax.grad(total, argnums=(0, 1, 2, 3)))(model, 311.87e12, 2.039e12, 108.0)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    # more tensor peak or bandwidth never slows a GEMM down
    assert float(grads[1]) <= 0 and float(grads[2]) <= 0


def test_gradient_matches_finite_differences():
    # A compute-bound GEMM whose best tiling does not change under small parameter steps.
    with jax.enable_x64(True):
        params = {k: jnp.float64(v) for k, v in FITTED_A100.items()}
        shape = (2000.0, 3000.0, 5000.0)

        @jax.jit
        def log_t(theta):
            model = GemmModel(**{name: jnp.exp(theta[i]) for i, name in enumerate(params)})
            return jnp.log(call(model, *shape))

        theta = jnp.log(jnp.array(list(params.values())))
        grad = np.asarray(jax.grad(log_t)(theta))
        h = 1e-6
        numeric = np.array([(float(log_t(theta.at[i].add(h))) - float(log_t(theta.at[i].add(-h)))) / (2 * h)
                            for i in range(len(params))])
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-9)
    assert np.abs(grad).max() > 0.1  # the case exercises the parameters


def test_float32_matches_float64():
    grid = itertools.product([1, 2, 16, 48, 160, 512, 2048, 8192], [32, 128, 768, 3584, 10240, 65536],
                             [32, 256, 1536, 7168, 65536])
    m, n, k = np.array(list(grid), float).T
    with jax.enable_x64(True):
        double = np.asarray(call(GemmModel(**FITTED_A100), m, n, k))
    single_model = GemmModel(**{key: np.float32(v) for key, v in FITTED_A100.items()})
    args = [jnp.asarray(v, jnp.float32) for v in (m, n, k, np.ones_like(m), 2 * m * n * k, plain_bytes(m, n, k))]
    single = np.asarray(jax.jit(lambda *a: single_model.time_s(*a, **A100))(*args))
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, double, rtol=1e-5)


def test_synthetic_recovery():
    # Times generated from known parameters on A100's datasheet, 3% log-normal noise, fitted
    # from a perturbed start: every parameter comes back within 4 standard errors.
    rng = np.random.default_rng(0)
    shapes = np.array(list(itertools.product([1, 8, 64, 256, 1024, 8192], [64, 512, 2048, 4096, 16384],
                                             [32, 256, 2048, 8192, 32768])), float)
    m, n, k = shapes.T
    count = len(m)
    r = {"m": m, "n": n, "k": k, "matmuls": np.ones(count), "flops": 2 * m * n * k, "bytes_moved": plain_bytes(m, n, k),
         "peak_flops": np.full(count, A100["peak_flops"]), "bandwidth_Bps": np.full(count, A100["bandwidth_Bps"]),
         "cores": np.full(count, A100["cores"])}
    with jax.enable_x64(True):
        clean = np.asarray(gemm_ops.predict(FITTED_A100, r))
    measured = clean * np.exp(0.03 * rng.standard_normal(count))
    start = {key: v * (1.3 if i % 2 else 0.75) for i, (key, v) in enumerate(FITTED_A100.items())}
    result = _fit.least_squares(gemm_ops.predict, start, r, measured)
    assert result.converged
    for key, truth in FITTED_A100.items():
        assert abs(result.params[key] - truth) <= 4 * result.stderr[key] + 1e-3 * truth, key
    assert result.rms_log_residual == pytest.approx(0.03, rel=0.2)


def test_start_builds_a_model():
    model = GemmModel(**START)
    assert float(call(model, 1024.0, 1024.0, 1024.0)) > 0


@pytest.mark.parametrize("field,value", [("eta_tensor", 0.0), ("eta_memory", -0.5), ("feed_intensity", -1.0),
                                         ("overlap", float("nan")), ("launch_s", -1e-6), ("epilogue", "fast")])
def test_bad_parameters_raise(field, value):
    with pytest.raises(ValueError, match=f"GemmModel.{field}"):
        GemmModel(**dict(FITTED_A100, **{field: value}))


@pytest.mark.parametrize("field,value", [("m", -1.0), ("k", float("inf")), ("bytes_moved", -5.0),
                                         ("peak_flops", 0.0), ("cores", -108.0), ("bandwidth_Bps", None)])
def test_bad_inputs_raise(field, value):
    args = dict(m=64.0, n=64.0, k=64.0, matmuls=1.0, flops=1.0, bytes_moved=1.0, **A100)
    args[field] = value
    with pytest.raises(ValueError, match=f"GemmModel.time_s.{field}"):
        GemmModel(**FITTED_A100).time_s(**args)


@needs_aic
def test_adapter_on_measured_a100():
    import jaxmodel as jm
    from calibration import metrics
    from calibration.loaders import aiconfigurator

    table = gemm_ops.select(aiconfigurator.load(systems="a100_sxm", ops="gemm", frameworks="vllm"))
    assert len(table) == 9240
    system = jm.load_hardware("a100-sxm-80gb")
    r = gemm_ops.rows(table, system)
    # x (2 m k bytes) is L2-resident below half of the 40 MiB L2: m = 8192, k = 65536 is not
    big = (table["m"].to_numpy() == 8192) & (table["k"].to_numpy() == 65536)
    small = (table["m"].to_numpy() == 1) & (table["k"].to_numpy() == 4096)
    mnk = table[["m", "n", "k"]].to_numpy(float)
    np.testing.assert_allclose(r["bytes_moved"][big], plain_bytes(*mnk[big].T))
    np.testing.assert_allclose(r["bytes_moved"][small], 2 * (mnk[small, 2] * mnk[small, 1] + mnk[small, 1]))
    with jax.enable_x64(True):
        predicted = np.asarray(gemm_ops.predict(FITTED_A100, r))
    # the A100 fit (benchmarks/calibrate_gemm.py) predicts every row, fitted or held out
    assert metrics.errors(predicted, table["measured_s"].to_numpy())["geomean_pct"] < 8.5
    with pytest.raises(ValueError, match="dtype"):
        gemm_ops.select(table, dtype="fp8")
