"""Chip sizing (jaxmodel.optimize): legal values, rounding neighbourhoods, bad input, the
gradient method against exhaustive search on a small space, infeasibility reported as such,
and exact-mode gradients against float64 finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel import optimize as opt

KiB = 1024.0


def small_problem(ratio=1.0, fidelity="roofline", objective="total_cost_usd"):
    """A 2-layer model on H100-derived chips: 4 x 3 x 3 knob values x (5 HBM3 + 3 GDDR7
    package counts) = 288 designs; roofline fidelity keeps compilation short."""
    arch = jm.Architecture(d_model=1024, n_layers=2, vocab_size=4096, n_heads=8, n_kv_heads=8, d_ff=4096)
    h100 = jm.load_hardware("h100-sxm")
    wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=128, dtype="fp16")
    knobs = [opt.integer("chip.cores", 64, 160, 32), opt.powers_of_two("chip.array_rows", 8, 32),
             opt.powers_of_two("chip.vector_width", 8, 32)]
    memories = [opt.MemoryOption(h100.chip.memory, range(2, 7)),
                opt.MemoryOption(jm.load_hardware("spad-prefill").chip.memory, (8, 12, 16))]
    cases = [opt.Case("prefill", wl, "prefill"), opt.Case("decode", wl, "decode")]
    return opt.SizingProblem(arch, h100, knobs, cases, objective,
                             [opt.Constraint("prefill.time_s", ratio=ratio), opt.Constraint("decode.time_s", ratio=ratio)],
                             memories, fidelity=fidelity)


SETTINGS = opt.SolverSettings(starts=8, outer=5, inner=40)


def test_legal_values():
    assert opt.integer("chip.cores", 64, 160, 32).values == (64.0, 96.0, 128.0, 160.0)
    assert opt.integer("chip.l1_bytes", 100 * KiB, 300 * KiB, 64 * KiB).values == (128 * KiB, 192 * KiB, 256 * KiB)
    assert opt.powers_of_two("chip.array_rows", 5, 40).values == (8.0, 16.0, 32.0)
    assert small_problem().space_size == 4 * 3 * 3 * (5 + 3)


def test_neighbours_are_the_legal_values_either_side():
    values = [np.array([64.0, 96.0, 128.0]), np.array([8.0, 16.0, 32.0])]
    near = opt._neighbours(values, np.array([[70.0, 16.0], [200.0, 1.0]]))
    assert near.shape == (2, 4, 2)
    # 70 lies between 64 and 96; 16 is legal (both sides are 16).
    assert sorted(map(tuple, near[0])) == [(64.0, 16.0), (64.0, 16.0), (96.0, 16.0), (96.0, 16.0)]
    # Outside the range: the nearest end.
    assert set(map(tuple, near[1])) == {(128.0, 8.0)}


@pytest.mark.parametrize("build, match", [
    (lambda: opt.integer("chip.cores", 10, 5), "low <= high"),
    (lambda: opt.powers_of_two("chip.array_rows", 5, 7), "no power of two"),
    (lambda: opt.Knob("chip.cores", (0.0, 4.0)), "positive"),
    (lambda: opt.Constraint("prefill.time_s"), "exactly one of upper and ratio"),
    (lambda: opt.Constraint("prefill.time_s", ratio=-1.0), "positive"),
    (lambda: opt.Case("a.b", jm.Workload(), "prefill"), "contain no '.'"),
    (lambda: opt.Case("x", jm.Workload(), "train"), "phase must be one of"),
    (lambda: opt.MemoryOption(jm.load_hardware("h100-sxm").chip.memory, (2.5,)), "whole numbers"),
    (lambda: opt.SolverSettings(starts=0), "starts must be >= 1"),
])
def test_bad_input_names_the_field(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_problem_names_the_field():
    p = small_problem()
    arch, base, cases = p.arch, p.base, p.cases
    with pytest.raises(ValueError, match="has no field 'kores'"):
        opt.SizingProblem(arch, base, [opt.integer("chip.kores", 1, 2)], cases)
    with pytest.raises(ValueError, match="Constraint metric 'ttft' unknown"):
        opt.SizingProblem(arch, base, [], cases, constraints=[opt.Constraint("ttft", upper=1.0)])
    with pytest.raises(ValueError, match="objective 'speed' unknown"):
        opt.SizingProblem(arch, base, [], cases, "speed")
    with pytest.raises(ValueError, match="MemoryOption"):
        opt.SizingProblem(arch, base, [opt.integer("chip.memory.packages", 1, 5)], cases)
    with pytest.raises(ValueError, match="SystolicChip"):
        opt.SizingProblem(arch, base.datasheet(), [], cases)


def test_gradient_method_matches_exhaustive_search():
    problem = small_problem()
    grid = opt.grid_search(problem)
    found = opt.solve(problem, SETTINGS)
    assert grid.feasible and found.feasible
    assert grid.evaluated == problem.space_size
    assert found.objective <= grid.objective * 1.02
    # The grid is exhaustive: nothing feasible is cheaper than its optimum.
    assert found.objective >= grid.objective * (1 - 1e-6)
    # Feasibility re-checked independently from the returned design's exact metrics.
    metrics = jax.device_get(opt.design_metrics(problem, found.system(problem)))
    reference = jax.device_get(opt.design_metrics(problem, problem.base))
    for case in ("prefill", "decode"):
        assert metrics[f"{case}.time_s"] <= reference[f"{case}.time_s"] * (1 + 1e-6)
        assert metrics[f"{case}.memory_ratio"] <= 1.0
    assert all(v <= 1.0 + 1e-6 for v in found.constraints.values())
    # A cheaper chip than the H100 it must match: the H100 itself is in the space only approximately.
    assert found.objective < float(reference["total_cost_usd"])


def test_new_bounds_reuse_the_compiled_solver():
    opt.solve(small_problem(1.0), SETTINGS)
    again = opt.solve(small_problem(1.5), SETTINGS, seed=3)
    assert again.compile_s == 0.0
    # A looser bound can only make the optimum cheaper.
    assert again.objective <= opt.grid_search(small_problem(1.0)).objective * 1.02


def test_infeasible_problem_is_reported_not_rounded_into_a_design():
    problem = small_problem(ratio=0.01)  # 100x faster than the H100: impossible here
    found = opt.solve(problem, SETTINGS)
    grid = opt.grid_search(problem)
    assert not grid.feasible and not found.feasible
    assert max(found.constraints.values()) > 1.0


def test_exact_gradients_match_finite_differences_at_the_optimum():
    """Objective and every constraint ratio at the systolic level, exact mode, float64: the
    automatic derivative w.r.t. each knob equals the central difference wherever the function
    is smooth at the design (central differences at h and h/10 agree), which the cost, area
    and TDP always are."""
    problem = small_problem(fidelity="systolic")
    design = {"chip.cores": 96.0, "chip.array_rows": 16.0, "chip.vector_width": 16.0,
              "chip.memory.technology": "hbm3", "chip.memory.packages": 5.0}
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(
            jnp.asarray(x).dtype, jnp.floating) else x, problem)
        scales, _ = opt._scales(p64)
        x = jnp.asarray([design[k.path] for k in p64.knobs] + [design[opt.PACKAGES]], jnp.float64)
        f = jax.jit(lambda x: opt._sensitivity_parts(p64, 0, x, scales, None))
        jac = np.asarray(jax.jit(jax.jacfwd(lambda x: opt._sensitivity_parts(p64, 0, x, scales, None)))(x))
        checked = 0
        for i in range(len(x)):
            fds = []
            for h in (1e-4 * float(x[i]), 1e-5 * float(x[i])):
                e = jnp.zeros_like(x).at[i].set(h)
                fds.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h))
            smooth = np.abs(fds[0] - fds[1]) <= 1e-3 * np.maximum(np.abs(fds[1]), 1e-9)
            assert smooth[0], f"objective not smooth in knob {i}"  # cost is smooth everywhere
            for j in np.nonzero(smooth)[0]:
                scale = max(abs(jac[j, i]), abs(fds[1][j]), 1e-9)
                assert abs(jac[j, i] - fds[1][j]) <= 1e-4 * scale, (i, j, jac[j, i], fds[1][j])
                checked += 1
        assert checked >= len(x) * 3


def test_usd_per_mtok_by_hand():
    problem = small_problem(objective="usd_per_mtok")
    m = jax.device_get(opt.design_metrics(problem, problem.base))
    econ = problem.base.economics
    usd_per_s = (m["total_cost_usd"] / (float(econ.lifetime_s) * float(econ.utilization))
                 + m["tdp_w"] * float(econ.pue) * float(econ.electricity_usd_per_J))
    expected = 1e6 * 0.5 * (usd_per_s / m["prefill.tokens_per_s"] + usd_per_s / m["decode.tokens_per_s"])
    assert float(opt._objective_value(problem, m, m)) == pytest.approx(expected, rel=1e-5)


def test_sensitivity_table():
    problem = small_problem()
    found = opt.solve(problem, SETTINGS)
    table = opt.sensitivity(problem, found)
    assert list(table["knob"]) == [k.path for k in problem.knobs] + [opt.PACKAGES]
    # Cost grows with every knob (more cores, arrays, vector lanes, memory packages).
    assert (table["d_objective"] > 0).all()
    # One legal step down from the optimum saves money but must break a constraint (else the
    # optimum was not optimal); up costs more.
    down = table.dropna(subset=["objective_down"])
    assert (down["objective_down"] < found.objective).all()
    assert not down["feasible_down"].any()
    up = table.dropna(subset=["objective_up"])
    assert (up["objective_up"] > found.objective).all()
