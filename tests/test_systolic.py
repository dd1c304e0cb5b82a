"""Systolic fidelity: microarchitecture chips, hand-computed matmul cycles, invariants."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel.hardware import MemorySystem, SystolicChip
from jaxmodel.perf import systolic

HUGE = 1e30


def toy_chip(cores=1, rows=4, cols=4, port=HUGE, mem_bw_bits=HUGE, l1=HUGE, l2=HUGE):
    """A chip at 1 Hz, so times read as cycles; everything but the arrays made free."""
    memory = MemorySystem("hbm3", bus_width_bits=8.0, pin_rate_bps=mem_bw_bits, packages=1,
                          capacity_per_package_bytes=1e12)
    return SystolicChip(cores=cores, lanes=1, array_rows=rows, array_cols=cols, macs_per_pe_cycle={"fp16": 1.0},
                        vector_width=1e12, vector_flops_per_lane_cycle=1.0, l1_bytes=l1, l2_bytes=l2,
                        l2_bytes_per_cycle=HUGE, core_port_bytes_per_cycle=port, tensor_clock_hz=1.0,
                        vector_clock_hz=1.0, memory=memory)


def cycles(chip, m, n, k, sharpness=None, e=2.0):
    r = systolic.matmul_time(chip, jm.ideal(), "fp16", m=jnp.float32(m), n=jnp.float32(n), k=jnp.float32(k),
                             count=jnp.float32(1), lhs_bytes=jnp.float32(e * m * k),
                             rhs_bytes=jnp.float32(e * k * n), out_bytes=jnp.float32(e * m * n), sharpness=sharpness)
    return float(r.time)


@pytest.mark.parametrize("cores,m,n,k,expected", [
    # One 4x4 output block: K = 8 MACs streamed plus R + S = 8 cycles of fill and drain.
    (1, 4, 4, 8, 16.0),
    # M = 10 on 4 rows: three row folds of 16 cycles (the last one 2/4 used).
    (1, 10, 4, 8, 48.0),
    # Two cores share those folds: two waves.
    (2, 10, 4, 8, 32.0),
    # M = 1 (a GEMV) still takes a full fold: the array edge is mostly idle.
    (1, 1, 4, 8, 16.0),
    # N = 12 on 4 columns: three column folds.
    (1, 4, 12, 8, 48.0),
    # One output tile on 4 cores: K is split four ways (256 each), 256 + 8 cycles.
    (4, 4, 4, 1024, 264.0),
])
def test_matmul_cycles_match_hand_counts(cores, m, n, k, expected):
    assert cycles(toy_chip(cores=cores), m, n, k) == pytest.approx(expected, rel=1e-5)


def test_memory_bound_matmul_moves_each_operand_once_when_l2_holds_it():
    # 1 byte/s of memory and free compute: the time is the bytes, 2 x (16 + 16 + 16).
    chip = toy_chip(mem_bw_bits=1.0)
    chip = eqx.tree_at(lambda c: c.tensor_clock_hz, chip, jnp.float32(HUGE))
    t = cycles(chip, 4, 4, 4)
    assert t == pytest.approx(96.0, rel=1e-4)


def test_small_l2_rereads_the_left_operand():
    # A panel of 2 columns of a K=4, N=8 operand fits a 16-byte L2: the left operand is
    # re-read for each of the 4 column blocks, the right one once.
    chip = toy_chip(mem_bw_bits=1.0, l2=16.0)
    chip = eqx.tree_at(lambda c: c.tensor_clock_hz, chip, jnp.float32(HUGE))
    m, n, k = 1000.0, 8.0, 4.0
    t = cycles(chip, m, n, k, e=1.0)
    assert t > (m * k + k * n + m * n)  # more than one pass
    assert t <= m * k * n + k * n + m * n


def test_spad_table3_peaks():
    """SPAD Table 3: tensor 1.92 / 0.54 / 0.99 PFLOP/s; FP32 vector 32.4 / 18.2 / 66.9 TFLOP/s;
    2048 / 3352 / 3352 GB/s; 64 / 80 / 80 GB (GiB)."""
    expect = {"spad-prefill": (1.92e15, 32.4e12, 2048e9, 64), "spad-decode": (0.54e15, 18.2e12, 3352e9, 80),
              "h100-sxm": (0.99e15, 66.9e12, 3352e9, 80)}
    for name, (tensor, vector, bw, gib) in expect.items():
        chip = jm.load_hardware(name).chip
        assert float(chip.tensor_flops["fp16"]) == pytest.approx(tensor, rel=5e-3), name
        assert float(chip.vector_flops) == pytest.approx(vector, rel=5e-3), name
        assert float(chip.mem_bw_Bps) == pytest.approx(bw, rel=1e-4), name
        assert float(chip.mem_capacity_bytes) == pytest.approx(gib * 2**30), name


def _bloom(batch, seq):
    return jm.load_model("bloom-176b"), jm.Workload(batch=batch, input_tokens=seq, output_tokens=2, tp=8,
                                                    dtype="fp16", attention_impl="unfused")


@pytest.mark.parametrize("path,values", [
    ("system.chip.cores", [44.0, 66.0, 108.0, 132.0, 160.0]),
    ("system.chip.array_cols", [8.0, 16.0, 32.0, 64.0]),
    ("system.chip.memory.pin_rate_bps", [2e9, 4e9, 6e9]),
    ("system.chip.l1_bytes", [64e3, 128e3, 256e3, 512e3]),
    ("system.chip.l2_bytes", [4e6, 16e6, 64e6]),
    ("system.chip.core_port_bytes_per_cycle", [16.0, 32.0, 64.0]),
])
@pytest.mark.parametrize("batch,seq", [(2, 1024), (64, 256)])
def test_time_never_increases_with_more_hardware(path, values, batch, seq):
    arch, wl = _bloom(batch, seq)
    df = jm.sweep.grid_sweep(arch, wl, jm.load_hardware("h100-sxm"), grid={path: values},
                             metrics=["prefill_s", "decode_step_s"], fidelity="systolic")
    for metric in ("prefill_s", "decode_step_s"):
        t = df[metric].to_numpy()
        assert np.all(np.diff(t) <= 1e-5 * t[:-1]), (path, metric, t)  # float32 rounding


def test_systolic_is_no_faster_than_the_roofline_of_the_same_chip():
    arch, wl = _bloom(8, 1024)
    system = jm.load_hardware("h100-sxm")
    roof = jm.predict(arch, wl, system)
    sys = jm.predict(arch, wl, system, fidelity="systolic")
    for key in ("prefill_s", "decode_step_s"):
        assert roof[key] <= sys[key] <= 1.5 * roof[key]


def test_smooth_mode_stays_within_its_bound():
    arch, wl = _bloom(4, 2048)
    system = jm.load_hardware("spad-prefill")
    exact = jm.predict(arch, wl, system, fidelity="systolic")
    p = 32.0
    smooth = jm.predict(arch, wl, system, fidelity="systolic", sharpness=p)
    # Per row: a soft max of at most 3 terms (<= 3^(1/p) above) over a soft min of 8
    # candidates (<= 8^(1/p) below).
    lo, hi = 8 ** (-1 / p), 3 ** (2 / p)
    for key in ("prefill_s", "decode_step_s"):
        assert lo * exact[key] <= smooth[key] <= hi * exact[key]


@pytest.mark.parametrize("model,attention", [("bloom-176b", "unfused"), ("llama-3-8b", "flash")])
def test_gradients_are_finite_for_every_chip_leaf(model, attention):
    # The fused (flash) attention row keeps its tiles on chip: its matmuls move no DRAM bytes.
    arch = jm.load_model(model)
    wl = jm.Workload(batch=16, input_tokens=1024, output_tokens=256, tp=8, dtype="fp16", attention_impl=attention)
    system = jm.load_hardware("h100-sxm")

    def latency(chip):
        s = jm.System(chip, system.devices_per_node, system.scale_up, system.scale_out)
        out = jm.evaluate(arch, wl, s, jm.ideal(), sharpness=16.0, fidelity="systolic")
        return out["prefill_s"] + out["decode_step_s"]

    grads = jax.grad(latency)(system.chip)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert leaves
    for path, g in leaves:
        assert np.isfinite(float(g)), path
    assert float(grads.cores) < 0 and float(grads.memory.pin_rate_bps) < 0 and float(grads.array_cols) < 0


def test_systolic_needs_a_microarchitecture_chip():
    arch, wl = _bloom(1, 128)
    with pytest.raises(ValueError, match="microarchitecture"):
        jm.predict(arch, wl, jm.load_hardware("b200"), fidelity="systolic")


def test_derived_fields_cannot_be_swept_directly():
    arch, wl = _bloom(1, 128)
    with pytest.raises(ValueError, match="derived from other fields"):
        jm.sweep.grid_sweep(arch, wl, jm.load_hardware("h100-sxm"), grid={"system.chip.mem_bw_Bps": [1e12]})


def test_breakdown_reports_the_parts():
    arch, wl = _bloom(2, 1024)
    table = jm.breakdown(arch, wl, jm.load_hardware("h100-sxm"), fidelity="systolic")
    pre = table[(table.phase == "prefill") & (table.repeat > 0)].set_index("op")
    assert pre.loc["ffn_up", "bound"] == "tensor"
    assert pre.loc["attention_prompt_softmax", "bound"] == "memory"
    assert pre.loc["attn_all_reduce", "comm_s"] > 0


def test_fused_attention_does_the_unfused_matmuls_on_the_causal_share():
    """A flash kernel runs the same two matmul shapes as the unfused path, but only on the
    causal pairs: its array time is the unfused one scaled by pairs / (new x keys)."""
    arch, system = jm.load_model("llama-3-8b"), jm.load_hardware("h100-sxm")
    times = {}
    for impl in ("flash", "unfused"):
        wl = jm.Workload(batch=2, input_tokens=2048, output_tokens=2, tp=1, attention_impl=impl)
        t = jm.breakdown(arch, wl, system, fidelity="systolic")
        times[impl] = t[t.phase == "prefill"].set_index("op")["tensor_s"]
    new = keys = 2048.0
    causal_share = jm.ops.attention_pairs(new, 0.0, 0.0) / (new * keys)
    unfused = times["unfused"]["attention_prompt_scores"] + times["unfused"]["attention_prompt_context"]
    # Within 2%: with its tiles kept on chip the fused kernel may pick a different core tile
    # (the unfused matmuls also weigh their DRAM and port traffic). A wrong causal share or
    # value width is off by a factor of about 2.
    assert times["flash"]["attention_prompt"] == pytest.approx(float(causal_share) * unfused, rel=0.02)
