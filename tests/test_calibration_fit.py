"""Levenberg–Marquardt on log-latency: recovery of known parameters, error bars, errors."""

import numpy as np
import pytest

from calibration import fit

TRUE = {"overhead_s": 4e-6, "seconds_per_flop": 1.0 / 600e12, "seconds_per_byte": 1.0 / 2.5e12}


def kernel_time(params, rows):
    # A roofline with a soft (p = 4) maximum plus a launch overhead: the shape of the GEMM and
    # attention models calibration fits.
    compute = rows["flops"] * params["seconds_per_flop"]
    memory = rows["bytes"] * params["seconds_per_byte"]
    return params["overhead_s"] + (compute**4 + memory**4) ** 0.25


def synthetic(n=4000, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    rows = {"flops": 10 ** rng.uniform(6, 13, n), "bytes": 10 ** rng.uniform(4, 10, n)}
    clean = np.asarray(kernel_time({k: np.float64(v) for k, v in TRUE.items()}, rows))
    return rows, clean * np.exp(rng.normal(0.0, noise, n))


def test_recovers_known_parameters_within_error_bars():
    rows, measured = synthetic()
    start = {k: v * f for (k, v), f in zip(TRUE.items(), (3.0, 0.3, 2.0))}
    result = fit.least_squares(kernel_time, start, rows, measured, chunk=1000)
    assert result.converged
    for k, v in TRUE.items():
        assert abs(result.params[k] - v) <= 4 * result.stderr[k], (k, result.params[k], v, result.stderr[k])
        assert result.stderr[k] < 0.05 * v  # 4000 rows pin each parameter to a few percent
    assert result.rms_log_residual == pytest.approx(0.05, rel=0.1)  # the injected noise


def test_refit_from_a_perturbed_start_lands_on_the_same_parameters():
    rows, measured = synthetic(seed=1)
    a = fit.least_squares(kernel_time, {k: v * 1.5 for k, v in TRUE.items()}, rows, measured)
    b = fit.least_squares(kernel_time, {k: v / 4.0 for k, v in TRUE.items()}, rows, measured, chunk=777)
    for k in TRUE:
        assert abs(a.params[k] - b.params[k]) <= 0.1 * a.stderr[k]


def test_exact_data_gives_exact_parameters_and_zero_error_bars():
    rows, _ = synthetic(n=500)
    exact = np.asarray(kernel_time({k: np.float64(v) for k, v in TRUE.items()}, rows))
    result = fit.least_squares(kernel_time, {k: 2 * v for k, v in TRUE.items()}, rows, exact)
    for k, v in TRUE.items():
        assert result.params[k] == pytest.approx(v, rel=1e-6)
    assert result.rms_log_residual < 1e-8


def test_prediction_error_bars_shrink_with_more_data():
    small = fit.least_squares(kernel_time, TRUE, *synthetic(n=200, seed=2))
    large = fit.least_squares(kernel_time, TRUE, *synthetic(n=20000, seed=2))
    probe = {"flops": np.array([1e12]), "bytes": np.array([1e8])}
    s_small = fit.prediction_stderr(kernel_time, small, probe)[0]
    s_large = fit.prediction_stderr(kernel_time, large, probe)[0]
    assert 0 < s_large < s_small
    assert s_small / s_large == pytest.approx(10.0, rel=0.5)  # ~ sqrt(100x the rows)


@pytest.mark.parametrize("params,measured,message", [
    ({"overhead_s": -1.0, "seconds_per_flop": 1.0, "seconds_per_byte": 1.0}, None, "positive"),
    (TRUE, "zero", "measured_s"),
])
def test_bad_inputs_are_errors(params, measured, message):
    rows, good = synthetic(n=10)
    values = np.zeros_like(good) if measured == "zero" else good
    with pytest.raises(ValueError, match=message):
        fit.least_squares(kernel_time, params, rows, values)


def test_a_model_that_is_not_finite_at_the_start_is_an_error():
    rows, measured = synthetic(n=10)

    def broken(params, rows):
        return kernel_time(params, rows) * (rows["flops"] - rows["flops"])  # zero times: log is -inf

    with pytest.raises(ValueError, match="non-finite"):
        fit.least_squares(broken, TRUE, rows, measured)


def test_trimming_drops_anomalous_rows_that_bend_a_plain_fit():
    rows, measured = synthetic(seed=2)
    anomalous = measured.copy()
    anomalous[:80] *= 5.0  # 2% of rows measured 5x slow (as a few H100 GEMM shapes are)
    start = {k: v * 1.5 for k, v in TRUE.items()}
    plain = fit.least_squares(kernel_time, start, rows, anomalous)
    trimmed = fit.least_squares(kernel_time, start, rows, anomalous, trim_sigmas=3.0)
    clean = fit.least_squares(kernel_time, start, rows, measured)
    def worst(result):
        return max(abs(result.params[k] / clean.params[k] - 1) for k in TRUE)

    assert worst(trimmed) < 0.02 and worst(trimmed) < worst(plain) / 3  # the outliers pulled the plain fit
    assert plain.rms_log_residual > 0.2  # log(5) on 2% of rows
    assert trimmed.rms_log_residual == pytest.approx(0.05, rel=0.15)  # the injected noise, outliers gone
