"""GenZ eq. 2 platform energy: hand oracles, the static floor, memory-bound steps, tokens/kWh,
vectorization and gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel import inference, ops
from jaxmodel import platform_energy as pe
from jaxmodel.perf.roofline import RowTimes


def hand_step(times, tensor, vector, memory, repeat):
    """A StepResult of three rows (matmul, vector, collective) with the given row times."""
    rows = ops._Rows(jnp.float32)
    rows.matmul("mm", "ffn", repeat=repeat[0], m=1.0, n=1.0, k=1.0, w_bytes=1.0, a_bytes=1.0)
    rows.vector("norm", "ffn", repeat=repeat[1], elements_read=1.0, elements_written=1.0, flops=1.0,
                a_bytes=1.0, rows=1.0)
    rows.collective("ar", "ffn", ops.ALL_REDUCE, repeat=repeat[2], payload=1.0, size=2.0, stride=1.0)
    zero = jnp.float32(0.0)

    def col(xs):
        return tuple(jnp.float32(x) for x in xs)

    times = RowTimes(col(times), col(tensor), col(vector), col(memory))
    return inference.StepResult(rows.table(), times, zero, zero, zero, zero)


def test_power_split_is_genz_ratio():
    power = pe.PlatformPower(peak_w=10_000.0, devices=10.0)
    np.testing.assert_allclose([float(p) for p in power.device_powers_w()], [300.0, 400.0, 200.0, 100.0], rtol=1e-6)


def test_three_row_table_by_hand():
    # Per device: P_static 300, P_C 400, P_mem 200, P_icn 100 W.
    power = pe.PlatformPower(peak_w=1000.0)
    # matmul: T = 2 s, tensor 2 s, memory 0.5 s -> U_C = 1, U_mem = 0.25
    # vector: T = 1 s, vector 0.2 s, memory 1 s -> U_C = 0.2, U_mem = 1
    # collective: T = 0.5 s -> U_icn = 1
    r = hand_step(times=(2.0, 1.0, 0.5), tensor=(2.0, 0.0, 0.0), vector=(0.0, 0.2, 0.0),
                  memory=(0.5, 1.0, 0.0), repeat=(3.0, 2.0, 4.0))
    rows = [float(e) for e in pe.row_energies_j(r, power)]
    expected_rows = [2 * (300 + 400 + 200 * 0.25), 1 * (300 + 400 * 0.2 + 200), 0.5 * (300 + 100)]
    np.testing.assert_allclose(rows, expected_rows, rtol=1e-6)
    # Eq. 2 summed over the executed operators (one stage, no host time: step = sum of row times).
    step_s = 3 * 2.0 + 2 * 1.0 + 4 * 0.5
    wl = jm.Workload(batch=1, tp=2)
    joules = float(pe.step_energy_j(r, step_s, wl, power))
    assert joules == pytest.approx(2 * (3 * expected_rows[0] + 2 * expected_rows[1] + 4 * expected_rows[2]), rel=1e-6)


def test_utilization_is_capped_at_one():
    # A row whose compute and memory terms both exceed its time (they overlap) is busy at most T.
    power = pe.PlatformPower(peak_w=1000.0)
    r = hand_step(times=(1.0, 0.0, 0.0), tensor=(0.7, 0.0, 0.0), vector=(0.6, 0.0, 0.0),
                  memory=(1.0, 0.0, 0.0), repeat=(1.0, 1.0, 1.0))
    assert float(pe.row_energies_j(r, power)[0]) == pytest.approx(300 + 400 + 200, rel=1e-6)
    # rows without work cost nothing
    assert float(pe.row_energies_j(r, power)[2]) == 0.0


@pytest.fixture(scope="module")
def setup():
    return jm.load_model("llama-3-8b"), jm.load_hardware("h100-sxm").datasheet()


def test_memory_bound_step_costs_static_plus_memory_power(setup):
    arch, system = setup
    # Decode at batch 1 on one device with a huge tensor and vector peak: every row is bound
    # by memory (or does nothing), so E = T·(P_static + P_mem).
    fast = eqx.tree_at(lambda s: (s.chip.tensor_flops["bf16"], s.chip.vector_flops), system,
                       (jnp.float32(1e24), jnp.float32(1e24)))
    wl = jm.Workload(batch=1, input_tokens=512, output_tokens=64, tp=1)
    power = pe.PlatformPower(peak_w=700.0)
    seconds, r = inference.decode(arch, wl, fast, jm.ideal())
    p_static, _, p_mem, _ = (float(p) for p in power.device_powers_w())
    joules = float(pe.step_energy_j(r, seconds, wl, power))
    assert joules == pytest.approx(float(seconds) * (p_static + p_mem), rel=1e-4)


@pytest.mark.parametrize("step", pe.STEPS)
def test_energy_is_at_least_static_floor_and_at_most_peak(setup, step):
    arch, system = setup
    wl = jm.Workload(batch=4, input_tokens=1024, output_tokens=128, tp=2, pp=2, chunk_tokens=256)
    power = pe.PlatformPower(peak_w=8 * 700.0, devices=8)
    out = pe.step_metrics(step, arch, wl, system, jm.ideal(), power)
    p_static = float(power.device_powers_w()[0])
    floor = float(out["step_s"]) * p_static * float(wl.devices)
    peak = float(out["step_s"]) * 700.0 * float(wl.devices)
    assert floor <= float(out["energy_j"]) <= peak * (1 + 1e-6)


def test_tokens_per_kwh_by_hand(setup):
    assert float(pe.tokens_per_kwh(100.0, 7.2e6)) == pytest.approx(50.0)
    arch, system = setup
    wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=128, tp=1)
    out = pe.step_metrics("decode", arch, wl, system, jm.ideal(), pe.PlatformPower(700.0))
    assert float(out["tokens"]) == 8.0
    assert float(out["tokens_per_kwh"]) == pytest.approx(8.0 / (float(out["energy_j"]) / 3.6e6), rel=1e-6)
    assert float(out["average_power_w"]) <= 700.0 * (1 + 1e-6)


def test_vmap_and_gradient(setup):
    arch, system = setup
    wl = jm.Workload(batch=4, input_tokens=1024, output_tokens=128, tp=1)

    def kwh_per_mtok(bw, peak_w):
        s = eqx_set_bw(system, bw)
        out = pe.step_metrics("decode", arch, wl, s, jm.ideal(), pe.PlatformPower(peak_w))
        return 1e6 / out["tokens_per_kwh"]

    bws = jnp.array([1e12, 2e12, 4e12])
    batched = jax.vmap(kwh_per_mtok, in_axes=(0, None))(bws, 700.0)
    singles = jnp.stack([kwh_per_mtok(b, 700.0) for b in bws])
    np.testing.assert_allclose(batched, singles, rtol=1e-5)
    # More bandwidth: a shorter memory-bound step, less static energy.
    assert np.all(np.diff(np.asarray(batched)) < 0)
    g = jax.grad(kwh_per_mtok, argnums=1)(2e12, 700.0)
    # Energy is linear in the platform power.
    assert float(g) == pytest.approx(float(kwh_per_mtok(2e12, 700.0)) / 700.0, rel=1e-4)


def eqx_set_bw(system, bw):
    return eqx.tree_at(lambda s: s.chip.mem_bw_Bps, system, jnp.asarray(bw, jnp.float32))


def test_bad_step_name(setup):
    arch, system = setup
    with pytest.raises(ValueError, match="step must be one of"):
        pe.step_metrics("train", arch, jm.Workload(), system, jm.ideal(), pe.PlatformPower(1.0))
