"""Pareto fronts, top-k and unit-labelled tables, against brute-force and hand oracles."""

import numpy as np
import pandas as pd
import pytest

from jaxmodel.results import pareto, pareto_mask, top_k, unit_of, with_units


def brute_force_front(values, maximize):
    cost = np.where(maximize, -values, values)
    return np.array([not any((other <= row).all() and (other < row).any() for other in cost) for row in cost])


@pytest.mark.parametrize("objectives", [2, 3])
def test_pareto_mask_matches_brute_force_with_ties_and_duplicates(objectives):
    rng = np.random.default_rng(objectives)
    for trial in range(25):
        values = rng.integers(0, 5, size=(150, objectives)).astype(float)  # many ties and duplicates
        maximize = rng.random(objectives) < 0.5
        np.testing.assert_array_equal(pareto_mask(values, maximize), brute_force_front(values, maximize),
                                      err_msg=f"trial {trial}")


def test_pareto_mask_large_three_objective_front_is_exact():
    rng = np.random.default_rng(0)
    values = rng.random((6000, 3))  # more than one internal block of rows
    np.testing.assert_array_equal(pareto_mask(values, [False, True, False]),
                                  brute_force_front(values, np.array([False, True, False])))


def test_pareto_mask_hand_cases():
    # (cost, latency), both minimized: (3, 3) is dominated by (2, 2); (1, 5) and (5, 1) are extremes.
    values = np.array([[1, 5], [2, 2], [3, 3], [5, 1], [2, 2], [np.nan, 0]])
    np.testing.assert_array_equal(pareto_mask(values, [False, False]), [True, True, False, True, True, False])
    with pytest.raises(ValueError, match=r"must be \(n, 3\), got shape \(6, 2\)"):
        pareto_mask(values, [False, False, False])


def test_pareto_frame_directions_and_where():
    df = pd.DataFrame({"cost": [1.0, 2.0, 3.0, 4.0], "tput": [10.0, 30.0, 20.0, 40.0], "ok": [1, 1, 1, 0]})
    front = pareto(df, {"cost": "min", "tput": "max"})
    assert front.index.tolist() == [0, 1, 3]
    assert pareto(df, ["cost", "-tput"]).index.tolist() == [0, 1, 3]
    assert pareto(df, ["cost", "max:tput"], where=df["ok"] == 1).index.tolist() == [0, 1]
    with pytest.raises(ValueError, match="two or three"):
        pareto(df, ["cost"])
    with pytest.raises(ValueError, match="'speed' is not a column"):
        pareto(df, ["cost", "speed"])
    with pytest.raises(ValueError, match="'min' or 'max'"):
        pareto(df, {"cost": "min", "tput": "up"})


def test_top_k():
    df = pd.DataFrame({"x": [3.0, 1.0, 2.0, 5.0], "ok": [True, True, True, False]})
    assert top_k(df, "x", 2).index.tolist() == [3, 0]
    assert top_k(df, "x", 2, largest=False).index.tolist() == [1, 2]
    assert top_k(df, "x", 1, where=df["ok"]).index.tolist() == [0]
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k(df, "x", 0)


def test_units_are_converted_only_for_display():
    df = pd.DataFrame({"ttft_s": [0.25], "memory_bytes": [80e9], "system.chip.mem_bw_Bps": [3.35e12],
                       "system.chip.tensor_flops.bf16": [989e12], "throughput_per_device_tok_s": [1234.0],
                       "usd_per_mtok": [0.5], "status": [0], "fits": [True], "model": ["x"]})
    shown = with_units(df)
    assert shown.columns.tolist() == ["ttft (ms)", "memory (GB)", "system.chip.mem_bw (TB/s)",
                                      "system.chip.tensor_flops.bf16 (TFLOP/s)", "throughput_per_device (tok/s)",
                                      "usd_per_mtok (USD/Mtok)", "status", "fits", "model"]
    np.testing.assert_allclose(shown.iloc[0, :6].to_numpy(float), [250.0, 80.0, 3.35, 989.0, 1234.0, 0.5])
    assert unit_of("status") is None
