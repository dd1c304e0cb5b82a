"""Figures (jaxmodel.plots), one-at-a-time sensitivity (jaxmodel.sensitivity) and `jaxmodel plot`.

The figures are checked by what they draw against the model's own numbers: marker counts and
positions on the roofline, bar lengths against predict's step times and memory, the highlighted
front against results.pareto.
"""

import equinox as eqx
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import jaxmodel as jm  # noqa: E402
from jaxmodel import plots, results, sensitivity  # noqa: E402

from .conftest import run_cli  # noqa: E402


@pytest.fixture(scope="module")
def arch():
    return jm.load_model("llama-3-8b")


@pytest.fixture(scope="module")
def wl():
    return jm.Workload(batch=8, input_tokens=512, output_tokens=128, tp=2)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _rel(a, b):
    return abs(a - b) / abs(b)


def test_roofline_places_every_operator_on_or_under_its_roofs(arch, wl, h100):
    table = jm.breakdown(arch, wl, h100)
    runs = table[(table["repeat"] > 0) & (table["kind"] != "collective")]
    expected = runs[(runs["flops"] > 0) | (runs["vector_flops"] > 0)]
    ax = plots.roofline(arch, wl, h100)

    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(offsets) == len(expected) == 22  # 11 operators with FLOPs per phase
    assert sorted(t.get_text() for t in ax.texts) == sorted(expected["op"])
    assert "collectives" in ax.get_title()

    peak, vector_peak = float(h100.chip.tensor_flops["bf16"]), float(h100.chip.vector_flops)
    bandwidth = float(h100.chip.mem_bw_Bps)
    # Every marker is under the higher (tensor) roof; then each against its own roof.
    x, y = offsets[:, 0], offsets[:, 1] * 1e12
    assert (y <= np.minimum(peak, bandwidth * x) * (1 + 1e-6)).all()
    for row in expected.itertuples():
        moved = row.weight_bytes + row.act_bytes + row.kv_bytes
        work, roof = (row.flops, peak) if row.flops > 0 else (row.vector_flops, vector_peak)
        attained, intensity = work / row.time_s, work / moved
        assert attained <= min(roof, bandwidth * intensity) * (1 + 1e-6)
        # Ideal efficiency: a memory-bound operator sits on the memory roof, a tensor-bound one on its peak.
        if row.bound == "memory":
            assert _rel(attained, bandwidth * intensity) < 1e-5
        if row.bound == "tensor":
            assert _rel(attained, peak) < 1e-5
        assert np.isclose(offsets[:, 0], intensity, rtol=1e-9).any()


def test_roofline_one_phase(arch, wl, h100):
    ax = plots.roofline(arch, wl, h100, phase="decode")
    assert sum(len(c.get_offsets()) for c in ax.collections) == 11
    with pytest.raises(ValueError, match="phase"):
        plots.roofline(arch, wl, h100, phase="both phases")


def test_latency_breakdown_bars_add_up_to_the_steps(arch, wl, h100):
    r = jm.predict(arch, wl, h100)
    table = jm.breakdown(arch, wl, h100)
    fig = plots.latency_breakdown(arch, wl, h100)
    prefill_ax, decode_ax = fig.axes
    for ax, phase, step_s in ((prefill_ax, "prefill", r["prefill_s"]), (decode_ax, "decode", r["tpot_s"])):
        rows = table[(table["phase"] == phase) & (table["total_s"] > 0)]
        widths = np.array([p.get_width() for p in ax.patches])
        assert len(widths) == len(rows)
        assert _rel(widths.sum(), step_s * 1e3) < 1e-5
        colors = [matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches]
        assert colors == [matplotlib.colors.to_hex(plots.BOUND_COLORS[b]) for b in rows["bound"]]
        assert ax.get_xlabel() == "time (ms)"

    _, ax = plt.subplots()
    fig = plots.latency_breakdown(arch, wl, h100, ax=ax)
    widths = np.array([p.get_width() for p in ax.patches])
    assert _rel(widths.sum(), (r["prefill_s"] + r["tpot_s"]) * 1e3) < 1e-5


def test_memory_bars_add_up_to_predicted_memory(arch, wl, h100):
    batches = (1, 8, 2048)
    ax = plots.memory_breakdown(arch, wl, h100, batches)
    assert len(ax.patches) == 3 * len(batches)  # weights, KV cache, activations per batch
    heights = np.zeros(len(batches))
    for patch in ax.patches:
        heights[int(round(patch.get_x() + patch.get_width() / 2))] += patch.get_height()
    for i, batch in enumerate(batches):
        r = jm.predict(arch, eqx.tree_at(lambda w: w.batch, wl, np.float32(batch)), h100)
        assert _rel(heights[i], r["memory_bytes"] * 1e-9) < 1e-5
    [capacity] = [line for line in ax.lines if "usable" in line.get_label()]
    assert _rel(capacity.get_ydata()[0], r["usable_memory_bytes"] * 1e-9) < 1e-6
    assert [t.get_text() for t in ax.texts] == ["does not fit"]  # batch 2048 exceeds 77 GB
    assert ax.get_ylabel() == "memory per device (GB)"


def test_sensitivity_matches_predict_and_bandwidth_elasticity_is_minus_one(arch, h100):
    # Batch 1, one device: every decode operator is memory-bound and there are no collectives.
    wl = jm.Workload(batch=1, input_tokens=512, output_tokens=128)
    decode = jm.breakdown(arch, wl, h100).query("phase == 'decode' and repeat > 0")
    assert set(decode.query("kind != 'collective'")["bound"]) == {"memory"}
    assert (decode.query("kind == 'collective'")["total_s"] == 0).all()
    paths = ("system.chip.mem_bw_Bps", "system.chip.tensor_flops.bf16", "workload.batch")
    table = sensitivity.one_at_a_time(arch, wl, h100, metric="tpot_s", paths=paths, rel=0.2)
    assert list(table["path"]) == list(paths)
    row = table.set_index("path")
    assert abs(row.loc["system.chip.mem_bw_Bps", "elasticity"] + 1.0) < 1e-3
    assert abs(row.loc["system.chip.tensor_flops.bf16", "elasticity"]) < 1e-6

    base = jm.predict(arch, wl, h100)["tpot_s"]
    assert _rel(row["metric"].iloc[0], base) < 1e-6
    bw = float(h100.chip.mem_bw_Bps)
    for factor, column in ((0.8, "metric_low"), (1.2, "metric_high")):
        moved = eqx.tree_at(lambda s: s.chip.mem_bw_Bps, h100, np.float32(bw * factor))
        expected = jm.predict(arch, wl, moved)["tpot_s"]
        assert _rel(row.loc["system.chip.mem_bw_Bps", column], expected) < 1e-6
        # Batch as a real number (0.8 and 1.2 sequences): the engine interpolates.
        expected = jm.predict(arch, eqx.tree_at(lambda w: w.batch, wl, np.float32(factor)), h100)["tpot_s"]
        assert _rel(row.loc["workload.batch", column], expected) < 1e-6
    assert _rel(row.loc["system.chip.mem_bw_Bps", "change_low_pct"], 100 * (1 / 0.8 - 1)) < 1e-4

    ax = plots.tornado(table, "tpot_s")
    assert len(ax.patches) == 2 * len(paths)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1].startswith("system.chip.mem_bw_Bps = 3.35")  # largest swing on top
    assert "TB/s" in labels[-1] and "elasticity -1" in labels[-1]


def test_sensitivity_rejects_bad_requests(arch, wl, h100):
    with pytest.raises(ValueError, match="numeric metric"):
        sensitivity.one_at_a_time(arch, wl, h100, metric="fits")
    with pytest.raises(ValueError, match="no field 'mem_bw'"):
        sensitivity.one_at_a_time(arch, wl, h100, paths=["system.chip.mem_bw"])
    with pytest.raises(ValueError, match="rel"):
        sensitivity.one_at_a_time(arch, wl, h100, rel=1.5)
    assert "system.chip.tensor_flops.bf16" in sensitivity.default_paths(wl, h100)


def _sweep_like(n, seed=0):
    rng = np.random.default_rng(seed)
    tpot = rng.uniform(5e-3, 80e-3, n)
    return pd.DataFrame({
        "tpot_s": tpot,
        "throughput_per_device_tok_s": rng.uniform(0, 1, n) * 2000 * tpot / 80e-3,
        "memory_bytes": rng.uniform(10e9, 80e9, n),
        "status": rng.integers(0, 2, n),
    })


def test_pareto_front_highlights_exactly_the_pareto_rows():
    df = _sweep_like(500)
    ax = plots.pareto_front(df, "tpot_s", "throughput_per_device_tok_s", maximize=(False, True))
    front = results.pareto(df, {"tpot_s": "min", "throughput_per_device_tok_s": "max"})
    [marked] = [c for c in ax.collections if c.get_gid() == "pareto_front"]
    [cloud] = [c for c in ax.collections if c.get_gid() == "candidates"]
    expected = np.column_stack([front["tpot_s"] * 1e3, front["throughput_per_device_tok_s"]])
    np.testing.assert_allclose(np.asarray(marked.get_offsets()), expected[np.argsort(expected[:, 0])])
    assert len(cloud.get_offsets()) == 500
    assert ax.get_xlabel().startswith("tpot (ms)") and ax.get_ylabel().startswith("throughput_per_device (tok/s)")

    ok = df["status"] == 0
    ax = plots.pareto_front(df, "memory_bytes", "tpot_s", where=ok, label_points="status")
    front = results.pareto(df, ["memory_bytes", "tpot_s"], where=ok)
    [marked] = [c for c in ax.collections if c.get_gid() == "pareto_front"]
    np.testing.assert_allclose(np.asarray(marked.get_offsets())[:, 0], np.sort(front["memory_bytes"] * 1e-9))
    assert len(ax.texts) == len(front) and ax.get_xlabel().startswith("memory (GB)")
    with pytest.raises(ValueError, match="'nope' is not a column"):
        plots.pareto_front(df, "nope", "tpot_s")


def test_pareto_front_subsamples_a_large_cloud_but_not_the_front():
    df = _sweep_like(250_000, seed=1)
    ax = plots.pareto_front(df, "tpot_s", "throughput_per_device_tok_s", maximize=(False, True))
    [cloud] = [c for c in ax.collections if c.get_gid() == "candidates"]
    [marked] = [c for c in ax.collections if c.get_gid() == "pareto_front"]
    assert len(cloud.get_offsets()) == 200_000
    assert len(marked.get_offsets()) == len(results.pareto(df, ["tpot_s", "-throughput_per_device_tok_s"]))


def test_throughput_frontier_maximizes_per_user_and_per_device_tokens():
    df = _sweep_like(400, seed=2)
    ax = plots.throughput_frontier(df)
    per_user = df.assign(per_user=1.0 / df["tpot_s"])
    front = results.pareto(per_user, ["-per_user", "-throughput_per_device_tok_s"])
    [marked] = [c for c in ax.collections if c.get_gid() == "pareto_front"]
    np.testing.assert_allclose(np.asarray(marked.get_offsets())[:, 0], np.sort(front["per_user"]))
    assert "per user" in ax.get_xlabel() and "per device" in ax.get_ylabel()


def _cli(*args):
    return run_cli("plot", *args)


def test_cli_plot_roofline_writes_a_png(tmp_path):
    out = tmp_path / "roofline.png"
    run = _cli("roofline", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--batch", "4", "--input-tokens", "256",
               "--output-tokens", "64", "--tp", "2", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_pareto_writes_an_svg_and_reports_bad_input(tmp_path):
    csv = tmp_path / "sweep.csv"
    _sweep_like(300).to_csv(csv, index=False)
    out = tmp_path / "front.svg"
    run = _cli("pareto", "--results", str(csv), "--x", "tpot_s", "--y", "throughput_per_device_tok_s",
               "--maximize-y", "--feasible", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "<svg" in out.read_text()[:500]

    for args, message in ((["--x", "tpot_s", "--out", str(tmp_path / "front.txt")], "--out"),
                          (["--x", "ttft_s", "--out", str(tmp_path / "front.png")], "--x 'ttft_s' is not a column")):
        run = _cli("pareto", "--results", str(csv), "--y", "throughput_per_device_tok_s", *args)
        assert run.returncode == 2
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("jaxmodel: error: ") and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front.svg", "sweep.csv"]
