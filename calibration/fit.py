"""Least squares on log-latency with positive parameters, and error bars on what it fits.

A model ``predict(params, rows) -> seconds`` (a pure JAX function of a dict of positive
parameters and a dict of row arrays) is fitted to measured seconds by Levenberg–Marquardt on
the residuals ``log(predicted) - log(measured)``: relative errors weigh every row alike
whatever its magnitude. Parameters are optimized as logarithms, so they stay positive.

The normal equations ``JᵀJ`` and ``Jᵀr`` are accumulated over fixed-size chunks of rows, so
memory stays bounded by the chunk, not the data set, and one compiled program serves every
chunk. At the optimum the Gauss–Newton covariance ``σ² (JᵀJ)⁻¹`` (``σ²`` = residual variance)
gives each parameter's standard error and, through the Jacobian of a prediction, error bars
on predictions (:func:`prediction_stderr`). Everything runs in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_CHUNK = 1 << 14


class FitResult(NamedTuple):
    params: dict[str, float]  # fitted values
    stderr: dict[str, float]  # standard error of each value (delta method from its logarithm)
    log_covariance: np.ndarray  # covariance of the fitted log-parameters, in ``names`` order
    names: tuple[str, ...]
    rms_log_residual: float  # root-mean-square of log(predicted / measured) at the optimum
    iterations: int
    converged: bool


def _chunks(rows: Mapping[str, np.ndarray], chunk: int):
    """Fixed-size chunks of the rows and a validity mask (the last chunk is padded)."""
    n = len(next(iter(rows.values())))
    for start in range(0, n, chunk):
        idx = np.minimum(np.arange(start, start + chunk), n - 1)
        mask = (np.arange(start, start + chunk) < n).astype(np.float64)
        yield {k: np.asarray(v, dtype=np.float64)[idx] for k, v in rows.items()}, mask


def least_squares(predict: Callable, params0: Mapping[str, float], rows: Mapping[str, np.ndarray],
                  measured_s: np.ndarray, *, max_iterations: int = 100, tolerance: float = 1e-10,
                  chunk: int = DEFAULT_CHUNK, trim_sigmas: float | None = None) -> FitResult:
    """Fit ``predict`` to ``measured_s`` (see the module docstring).

    Args:
        predict: ``predict(params, rows) -> seconds`` for a chunk of rows (vectorized).
        params0: starting values, all positive.
        rows: the model's inputs per row (equal-length 1-D arrays).
        measured_s: measured seconds per row, positive.
        tolerance: stop when the relative decrease of the squared residuals is below it.
        trim_sigmas: if given, refit once without the rows whose log residual lies more than
            this many robust standard deviations (1.4826 x median absolute deviation) from the
            median: single anomalous measurements then do not pull a few-parameter model.
    """
    result = _least_squares(predict, params0, rows, measured_s, max_iterations, tolerance, chunk)
    if trim_sigmas is None:
        return result
    measured = np.asarray(measured_s, dtype=np.float64)
    with jax.enable_x64(True):
        residual = np.log(np.asarray(predict({k: jnp.float64(v) for k, v in result.params.items()},
                                             {k: jnp.asarray(v, jnp.float64) for k, v in rows.items()})) / measured)
    centre = np.median(residual)
    keep = np.abs(residual - centre) <= trim_sigmas * 1.4826 * np.median(np.abs(residual - centre))
    if keep.all() or keep.sum() <= len(result.params):
        return result
    return _least_squares(predict, result.params, {k: np.asarray(v)[keep] for k, v in rows.items()}, measured[keep],
                          max_iterations, tolerance, chunk)


def _least_squares(predict, params0, rows, measured_s, max_iterations, tolerance, chunk) -> FitResult:
    names = tuple(params0)
    start = np.array([params0[k] for k in names], dtype=np.float64)
    if not np.all(np.isfinite(start) & (start > 0)):
        raise ValueError(f"least_squares: every starting parameter must be positive and finite (got {dict(params0)})")
    measured = np.asarray(measured_s, dtype=np.float64)
    if measured.ndim != 1 or not np.all(np.isfinite(measured) & (measured > 0)):
        raise ValueError("least_squares: measured_s must be a 1-D array of positive, finite seconds")
    lengths = {k: len(v) for k, v in rows.items()}
    if any(n != len(measured) for n in lengths.values()):
        raise ValueError(f"least_squares: every row array must have {len(measured)} entries (got {lengths})")
    data = dict(rows, _log_measured=np.log(measured))
    chunk = int(min(chunk, len(measured)))

    with jax.enable_x64(True):
        def residuals(theta, block):
            params = {k: jnp.exp(theta[i]) for i, k in enumerate(names)}
            return jnp.log(predict(params, block)) - block["_log_measured"]

        @jax.jit
        def normal_equations(theta, block, mask):
            r = residuals(theta, block) * mask
            jac = jax.jacfwd(residuals)(theta, block) * mask[:, None]
            return jac.T @ jac, jac.T @ r, r @ r

        def accumulate(theta):
            jtj = np.zeros((len(names), len(names)))
            jtr = np.zeros(len(names))
            ssr = 0.0
            for block, mask in _chunks(data, chunk):
                a, b, c = normal_equations(jnp.asarray(theta), block, mask)
                jtj, jtr, ssr = jtj + np.asarray(a), jtr + np.asarray(b), ssr + float(c)
            return jtj, jtr, ssr

        theta = np.log(start)
        jtj, jtr, ssr = accumulate(theta)
        if not (np.isfinite(ssr) and np.all(np.isfinite(jtj)) and np.all(np.isfinite(jtr))):
            raise ValueError("least_squares: the model gives non-finite or non-positive times (or gradients) at the "
                             f"starting parameters {dict(params0)}")
        damping, converged, iterations = 1e-3, False, 0
        while iterations < max_iterations:
            iterations += 1
            scale = np.diag(jtj) + 1e-12
            step = np.linalg.solve(jtj + damping * np.diag(scale), -jtr)
            trial = theta + step
            trial_jtj, trial_jtr, trial_ssr = accumulate(trial)
            # A step is taken only where the model and its Jacobian stay finite (an overflowing
            # trial, e.g. a huge soft-max exponent, is treated as a failed step).
            finite = np.isfinite(trial_ssr) and np.all(np.isfinite(trial_jtj)) and np.all(np.isfinite(trial_jtr))
            if finite and trial_ssr <= ssr:
                decrease = (ssr - trial_ssr) / max(ssr, 1e-300)
                theta, jtj, jtr, ssr = trial, trial_jtj, trial_jtr, trial_ssr
                damping = max(damping / 3.0, 1e-12)
                if decrease < tolerance:
                    converged = True
                    break
            else:
                damping *= 4.0
                if damping > 1e12:
                    converged = bool(np.linalg.norm(jtr) < 1e-8 * max(1.0, ssr))
                    break

    n, p = len(measured), len(names)
    sigma2 = ssr / max(n - p, 1)
    covariance = sigma2 * np.linalg.pinv(jtj)
    values = np.exp(theta)
    stderr = values * np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    return FitResult(
        params={k: float(v) for k, v in zip(names, values)},
        stderr={k: float(s) for k, s in zip(names, stderr)},
        log_covariance=covariance,
        names=names,
        rms_log_residual=float(np.sqrt(ssr / n)),
        iterations=iterations,
        converged=converged,
    )


def prediction_stderr(predict: Callable, result: FitResult, rows: Mapping[str, np.ndarray]) -> np.ndarray:
    """Standard error of ``log(predicted)`` per row from the fitted parameters' covariance:
    a prediction's relative error bar (multiply by the prediction for seconds)."""
    with jax.enable_x64(True):
        theta = jnp.log(jnp.array([result.params[k] for k in result.names]))
        block = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in rows.items()}

        def log_prediction(t):
            return jnp.log(predict({k: jnp.exp(t[i]) for i, k in enumerate(result.names)}, block))

        jac = np.asarray(jax.jacfwd(log_prediction)(theta))
    variance = np.einsum("ij,jk,ik->i", jac, result.log_covariance, jac)
    return np.sqrt(np.clip(variance, 0.0, None))
