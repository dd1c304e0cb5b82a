"""Serving clusters (:mod:`jaxmodel.serving.cluster`), SLO attainment (:mod:`~jaxmodel.serving.slo`)
and provisioning (:mod:`~jaxmodel.serving.provision`): hand-computed latencies built from the
engine's iteration times, percentile oracles, batched-vs-single equality and the search rules.

Everything goes through the provisioning module's compiled functions with a few fixed shapes,
so the event loop compiles a handful of times for the whole file."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmodel as jm
from jaxmodel import cost
from jaxmodel.efficiency import ideal
from jaxmodel.serving import cluster as cl
from jaxmodel.serving import provision as pv
from jaxmodel.serving import trace as tr
from jaxmodel.serving.pool import REJECTED, SERVED, IterationStats
from jaxmodel.serving.slo import SLO, SLOS, attainment

with jax.enable_x64(True):  # f64 leaves: the hand oracles below agree with the loop to ~1e-15
    ARCH = jm.load_model("bloom-176b")
    WL = jm.Workload(batch=1.0, input_tokens=1.0, output_tokens=1.0, tp=8, dtype="fp16")
    H100 = jm.load_hardware("h100-sxm")
SETUP = pv.Setup(ARCH, WL, H100)


@pytest.fixture(autouse=True)
def x64():
    """The models above hold f64 leaves; everything here computes in f64."""
    with jax.enable_x64(True):
        yield


N = 8  # requests of every hand-built trace: one compiled loop per mode for all of them


def seconds(stats) -> float:
    """One iteration on an 8-H100 machine (the engine's time the simulator uses)."""
    with jax.enable_x64(True):  # f64 stats, as the simulator's (Python floats would compute in f32)
        stats = IterationStats(*(jnp.asarray(x, jnp.float64) for x in stats))
        return float(cl.iteration_time(ARCH, WL, H100, ideal(), stats))


def prefill_s(*prompts) -> float:
    """Whole prompts batched in one iteration, nothing cached before them."""
    return seconds((len(prompts), sum(prompts), sum(p * p for p in prompts), 0, len(prompts), 0, 0))


def decode_s(contexts) -> float:
    return seconds((0, 0, 0, 0, 0, len(contexts), sum(contexts)))


def kv_per_device(tokens) -> float:
    with jax.enable_x64(True):
        return float(cl.kv_bytes(ARCH, WL, jnp.asarray(tokens, jnp.float64)))


def padded_trace(arrivals, inputs, outputs) -> tr.Trace:
    """The given requests, then far-future one-token fillers up to N (they never meet the
    first ones), so every hand case shares one shape."""
    k = N - len(arrivals)
    return tr.Trace(np.r_[arrivals, 1e6 + np.arange(k)], np.r_[inputs, [1] * k], np.r_[outputs, [1] * k])


def run_disaggregated(trace, prefill=1, decode=1):
    with jax.enable_x64(True):
        lat = pv.simulate_disaggregated(trace, SETUP, [H100], [H100], [[prefill]], [[decode]])
        return jax.tree_util.tree_map(lambda x: np.asarray(x)[0], lat)


def test_disaggregated_one_request_by_hand():
    """Prefill alone, the KV cache over the scale-out link, then output - 1 decode steps."""
    lat = run_disaggregated(padded_trace([0.5], [1000], [5]))
    t_pre = prefill_s(1000)
    transfer = kv_per_device(1000) / float(H100.scale_out.bandwidth_Bps)
    t_dec = decode_s([1000])
    assert lat.status[0] == SERVED
    np.testing.assert_allclose(lat.ttft_s[0], t_pre, rtol=1e-12)
    np.testing.assert_allclose(lat.e2e_s[0], t_pre + transfer + 4 * t_dec, rtol=1e-12)
    np.testing.assert_allclose(lat.tbt_s[0], (transfer + 4 * t_dec) / 4, rtol=1e-12)
    # A one-token output has no time between tokens; the fillers are served too.
    assert np.isnan(lat.tbt_s[1:]).all() and (lat.status == SERVED).all()


def test_disaggregated_batches_prompts_within_the_budget():
    """An idle machine starts the first prompt at once; prompts arriving meanwhile join at its
    end as one iteration while they fit 2048 tokens (800 + 1000), the next (1200) waits."""
    lat = run_disaggregated(padded_trace([0.0, 0.01, 0.01, 0.01], [600, 800, 1000, 1200], [2, 2, 2, 2]))
    first, second = prefill_s(600), prefill_s(800, 1000)
    np.testing.assert_allclose(lat.ttft_s[:4], [first, first + second - 0.01, first + second - 0.01,
                                                first + second + prefill_s(1200) - 0.01], rtol=1e-12)


def test_colocated_chunks_the_prompt_then_decodes():
    """A 1000-token prompt in 512-token chunks (the second sees 512 cached tokens per token),
    then two decode steps at context 1000."""
    with jax.enable_x64(True):
        lat = pv.simulate_colocated(padded_trace([0.0], [1000], [3]), SETUP, [H100], [[1]])
        lat = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], lat)
    chunk1 = seconds((1, 512, 512**2, 0, 0, 0, 0))
    chunk2 = seconds((1, 488, 488**2, 488 * 512, 1, 0, 0))
    np.testing.assert_allclose(lat.ttft_s[0], chunk1 + chunk2, rtol=1e-12)
    np.testing.assert_allclose(lat.tbt_s[0], decode_s([1000]), rtol=1e-12)


def test_prompt_larger_than_every_machine_is_rejected():
    with jax.enable_x64(True):
        capacity = float(cl.kv_capacity_bytes(ARCH, WL, H100))
    too_long = int(capacity / kv_per_device(1)) + 10
    lat = run_disaggregated(padded_trace([0.0, 0.1], [too_long, 100], [4, 4]))
    assert lat.status[0] == REJECTED and np.isinf(lat.ttft_s[0]) and np.isinf(lat.tbt_s[0])
    assert lat.status[1] == SERVED and np.isfinite(lat.tbt_s[1])


def small_trace(n=48, rate=6.0, seed=3):
    rng = np.random.default_rng(seed)
    return tr.poisson(n, rate, rng.integers(50, 3000, 200), rng.integers(2, 200, 200), seed=seed)


def run_batch(trace, configs):
    """(prefill, decode, rate) per configuration; every batch below has 3 configurations of at
    most 2 prefill and 3 decode machines, so one compiled loop serves them all."""
    lat = pv.simulate_disaggregated(trace, SETUP, [H100], [H100], [[p] for p, _, _ in configs],
                                    [[d] for _, d, _ in configs], rates=[r for _, _, r in configs])
    return jax.tree_util.tree_map(np.asarray, lat)


def test_batched_configurations_are_independent():
    """A configuration's latencies depend on it alone, not on its batch neighbours or place."""
    trace = small_trace()
    a, b, c = (1, 1, 4.0), (2, 1, 6.0), (1, 3, 9.0)
    first, shuffled = run_batch(trace, [a, b, c]), run_batch(trace, [c, a, b])
    other = run_batch(trace, [b, (2, 3, 5.0), a])
    assert (first.status == SERVED).all()
    np.testing.assert_array_equal(first.ttft_s, shuffled.ttft_s[[1, 2, 0]])
    np.testing.assert_array_equal(first.tbt_s, shuffled.tbt_s[[1, 2, 0]])
    np.testing.assert_array_equal(first.tbt_s[[1, 0]], other.tbt_s[[0, 2]])
    assert not np.array_equal(first.tbt_s[0], first.tbt_s[2])  # the configurations do differ


def test_requests_at_rates_rescale_arrivals():
    trace = small_trace()
    req = pv.requests_of(trace, [3.0, 12.0])
    for row, rate in zip(np.asarray(req.arrival_s), (3.0, 12.0)):
        np.testing.assert_allclose(row, tr.rescale(trace, rate).arrival_s, rtol=1e-12)


def latencies(ttft, tbt, status=None):
    ttft, tbt = np.asarray(ttft, float), np.asarray(tbt, float)
    status = np.zeros(ttft.shape, int) if status is None else np.asarray(status)
    return cl.Latencies(ttft, tbt, ttft, status, np.zeros(()))


def test_attainment_percentiles_by_hand():
    """Slowdowns 1..100 of the baseline: NumPy-style linear percentiles, TBT ignoring NaNs."""
    base_ttft, base_tbt = np.full(100, 0.2), np.full(100, 0.01)
    slow = np.arange(1.0, 101.0)
    tbt = base_tbt * slow / 50
    tbt[::10] = np.nan  # one-token outputs
    att = attainment(latencies(base_ttft * slow, tbt), (base_ttft, base_tbt), "loose")
    np.testing.assert_allclose(float(att.p90_ttft), 90.1, rtol=1e-6)
    np.testing.assert_allclose(float(att.p99_ttft), 99.01, rtol=1e-6)
    np.testing.assert_allclose(float(att.p90_tbt), np.nanpercentile(tbt / base_tbt, 90), rtol=1e-6)
    assert not bool(att.meets) and float(att.served_fraction) == 1.0


def slowest(p90, p99, n=100):
    """n slowdowns whose 90th percentile is p90 and 99th is p99 (the top 15 at p90, top 2 at p99)."""
    x = np.ones(n)
    x[-15:] = p90
    x[-2:] = p99
    return x


def test_attainment_limits_are_inclusive_and_each_binds():
    base = (np.ones(100), np.ones(100))
    lim = SLOS["normal"]
    exact = attainment(latencies(slowest(lim.p90_ttft, lim.p99_ttft), slowest(lim.p90_tbt, lim.p99_tbt)), base)
    np.testing.assert_allclose([float(exact.p90_ttft), float(exact.p99_ttft), float(exact.p90_tbt),
                                float(exact.p99_tbt)], [3.0, 6.0, 2.0, 5.0])
    assert bool(exact.meets)  # every percentile exactly at its Normal limit
    over = 1.01
    cases = {"p90_ttft": (slowest(lim.p90_ttft * over, lim.p99_ttft), slowest(1, 1)),
             "p99_ttft": (slowest(1, lim.p99_ttft * over), slowest(1, 1)),
             "p90_tbt": (slowest(1, 1), slowest(lim.p90_tbt * over, lim.p99_tbt)),
             "p99_tbt": (slowest(1, 1), slowest(1, lim.p99_tbt * over))}
    for field, (ttft, tbt) in cases.items():
        att = attainment(latencies(ttft, tbt), base)
        assert not bool(att.meets), field
        assert float(getattr(att, field)) > getattr(lim, field), field


def test_rejected_requests_fail_the_slos():
    base = (np.ones(200), np.ones(200))
    status = np.zeros(200, int)
    status[:3] = REJECTED  # 1.5% rejected: infinitely slow, above the 99th percentile
    lat = cl._latencies(np.zeros(200), np.ones(200), np.ones(200) * 3, np.full(200, 3.0), status, np.zeros(()))
    att = attainment(lat, base, "loose")
    assert np.isinf(float(att.p99_ttft)) and not bool(att.meets)
    np.testing.assert_allclose(float(att.served_fraction), 197 / 200)


def test_slo_sets_follow_spad_table5():
    assert SLOS["normal"] == SLO(p90_tbt=2.0, p90_ttft=3.0, p99_tbt=5.0, p99_ttft=6.0)
    for a, b in (("tight", "normal"), ("normal", "loose")):
        assert all(x < y for x, y in zip(SLOS[a], SLOS[b]))
    with pytest.raises(ValueError, match="SLO set must be one of"):
        attainment(latencies([1.0], [1.0]), (np.ones(1), np.ones(1)), "strict")


def test_provisioning_picks_the_cheapest_configuration_meeting_the_slos():
    trace = small_trace()
    with jax.enable_x64(True):
        best, table = pv.provision_disaggregated(trace, SETUP, H100, H100, max_prefill=3, max_decode=3)
    assert best is not None and bool(best["meets"])
    meeting = table[table["meets"]]
    assert best[pv.COST] == meeting[pv.COST].min()
    assert best[pv.COST] == best["prefill"] + best["decode"]  # H100 machines cost one reference each
    # Every simulated decode size for the chosen prefill counts is in the table.
    assert set(table["decode"]) == {1, 2, 3}


def test_pareto_keeps_the_non_dominated_meeting_configurations():
    table = pd.DataFrame({"meets": [True, True, True, False, True],
                          pv.COST: [10.0, 12.0, 11.0, 5.0, 10.0],
                          pv.TDP: [20.0, 15.0, 21.0, 5.0, 20.0]})
    front = pv.pareto(table)
    assert front[[pv.COST, pv.TDP]].values.tolist() == [[10.0, 20.0], [12.0, 15.0]]


def test_max_rate_is_the_last_rate_meeting_the_slos():
    trace = small_trace()

    def simulate(rates):
        return pv.simulate_disaggregated(trace, SETUP, [H100], [H100], [[2]] * 3, [[3]] * 3, rates=rates)

    rates = np.array([2.0, 8.0, 32.0])
    rate, table = pv.max_rate(trace, SETUP, simulate, rates, refine=3)
    ok = table.set_index("rate (req/s)")["meets"]
    assert len(ok) == 6 and rate in ok.index and ok.loc[rate]
    assert all(ok.loc[r] for r in ok.index if r <= rate)
    assert not ok.loc[[r for r in ok.index if r > rate]].iloc[0]


def test_setup_rejects_pipeline_parallelism():
    with pytest.raises(ValueError, match="Workload.pp must be 1"):
        pv.Setup(ARCH, jm.Workload(batch=1.0, input_tokens=1.0, output_tokens=1.0, tp=4, pp=2), H100)


@pytest.mark.parametrize("settings, field", [(dict(prefill_budget=0), "prefill_budget"),
                                             (dict(decode_slots=0), "decode_slots")])
def test_scheduler_settings_are_validated(settings, field):
    with pytest.raises(ValueError, match=f"Disaggregated.{field} must be >= 1"):
        cl.Disaggregated(**settings)


def test_machine_price_is_eight_chips():
    usd, watts = pv.machine_price(H100)
    m = cost.chip_metrics(H100, H100.economics)
    np.testing.assert_allclose([usd, watts], [8 * float(m["total_cost_usd"]), 8 * float(m["tdp_w"])])
