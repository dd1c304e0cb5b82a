"""Multi-level networks: placement of a group on the levels, hierarchical collective times,
pipeline sends per level, GenZ's HBD case study (Table IX), presets with middle levels."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel import inference, networks, ops
from jaxmodel.perf.comm import collective_time, placement
from jaxmodel.presets import system_from_dict

S = 1e8  # payload, bytes


def _three_levels():
    """8 devices per node, 4 nodes per rack, racks on a scale-out network."""
    chip = jm.Chip({"bf16": 1e15}, 1e14, 3e12, 80e9)
    up = jm.Interconnect(1000e9, 1e-6, 2e-6, efficiency=0.9)
    rack = jm.Interconnect(200e9, 5e-6, 3e-6)
    out = jm.Interconnect(50e9, 20e-6, 10e-6)
    return jm.System(chip, 8, up, out, middle_levels=(jm.NetworkLevel(4, rack),))


EFF = jm.Efficiency(scale_up=0.8, scale_out=0.5)
BW0, BW1, BW2 = 1000e9 * 0.9 * 0.8, 200e9 * 0.5, 50e9 * 0.5
A0, A1, A2 = 1e-6, 5e-6, 20e-6


@pytest.mark.parametrize("size, stride, sizes, expected", [
    (64, 1, (8, 8), (8, 8, 1)),  # GenZ TP 64 over 8 x 8 x 4
    (8, 8, (8, 8), (1, 8, 1)),  # an EP group behind TP 8
    (2, 64, (8, 8), (1, 1, 2)),  # a pipeline send past a 64-device stage
    (64, 1, (8, 16), (8, 8, 1)),  # config C: TP 64 inside a 128-device block
    (16, 1, (8,), (8, 2)),
    (4, 2, (8,), (4, 1)),  # strided but inside one node
    (16, 2, (8, 4), (4, 4, 1)),
    (12, 1, (8,), (8, 1.5)),  # uneven: a fractional fan-out
    (1, 1, (8, 8), (1, 1, 1)),
])
def test_placement_by_hand(size, stride, sizes, expected):
    counts, fanouts = placement(jnp.float32(size), jnp.float32(stride), tuple(jnp.float32(x) for x in sizes))
    np.testing.assert_allclose([float(g) for g in fanouts], expected, rtol=1e-6)
    assert float(np.prod([float(g) for g in fanouts])) == pytest.approx(size)
    assert float(counts[-1]) == size


def test_collectives_on_three_levels_by_hand():
    system = _three_levels()

    def t(kind, n, s):
        return float(collective_time(kind, jnp.float32(S), jnp.float32(n), jnp.float32(s), system, EFF))

    # 64 ranks: rings of 8, 4 and 2; reduce-scatter up, all-gather down; start-up of the outermost level.
    ar = 10e-6 + (2 * 7 * A0 + 2 * 7 / 8 * S / BW0) + (2 * 3 * A1 + 2 * 3 / 4 * (S / 8) / BW1) \
        + (2 * 1 * A2 + 2 * 1 / 2 * (S / 32) / BW2)
    assert t(ops.ALL_REDUCE, 64, 1) == pytest.approx(ar, rel=1e-5)
    # 16 ranks of stride 2: 4 per node, 4 nodes, one rack.
    ag = 3e-6 + (3 * A0 + 3 / 4 * S / BW0) + (3 * A1 + 3 / 4 * (S / 4) / BW1)
    assert t(ops.ALL_GATHER, 16, 2) == pytest.approx(ag, rel=1e-5)
    assert t(ops.REDUCE_SCATTER, 16, 2) == pytest.approx(ag, rel=1e-5)
    # 8 ranks of stride 4: 2 per node; 1/8 of the bytes stay in the node, 6/8 cross the rack level.
    a2a = 3e-6 + (1 * A0 + 1 / 8 * S / BW0) + (3 * A1 + 6 / 8 * S / BW1)
    assert t(ops.ALL_TO_ALL, 8, 4) == pytest.approx(a2a, rel=1e-5)
    # Sends on the lowest level holding both ends.
    assert t(ops.SEND_RECV, 2, 1) == pytest.approx(2e-6 + A0 + S / BW0, rel=1e-5)
    assert t(ops.SEND_RECV, 2, 8) == pytest.approx(3e-6 + A1 + S / BW1, rel=1e-5)
    assert t(ops.SEND_RECV, 2, 32) == pytest.approx(10e-6 + A2 + S / BW2, rel=1e-5)
    for kind in ops.COLLECTIVES:
        assert t(kind, 1, 1) == 0.0


def _flat_ring(kind, payload, n, system, eff):
    """The two-level formula before multi-level networks, for a group inside one node."""
    a, b, c, d = {ops.ALL_REDUCE: (2, 0, 2, 0), ops.ALL_GATHER: (1, 0, 1, 0), ops.REDUCE_SCATTER: (1, 0, 1, 0),
                  ops.ALL_TO_ALL: (1, 0, 1, 0), ops.SEND_RECV: (0, 1, 0, 1)}[kind]
    up = system.scale_up
    bw = float(up.bandwidth_Bps) * float(eff.scale_up)
    return (float(up.collective_latency_s) + (a * (n - 1) + b) * float(up.link_latency_s)
            + (c * (n - 1) / n + d) * payload / bw)


@pytest.mark.parametrize("kind", ops.COLLECTIVES)
@pytest.mark.parametrize("n, s", [(2, 1), (4, 1), (8, 1), (4, 2), (2, 4)])
def test_two_levels_inside_a_node_match_the_flat_ring(kind, n, s):
    h100 = jm.load_hardware("h100-sxm")
    eff = jm.Efficiency(scale_up=0.7, scale_out=0.3)
    got = float(collective_time(kind, jnp.float32(S), jnp.float32(n), jnp.float32(s), h100, eff))
    assert got == pytest.approx(_flat_ring(kind, S, n, h100, eff), rel=1e-6)


def test_link_efficiency_multiplies_the_level_factor():
    h100 = jm.load_hardware("h100-sxm")
    halved = eqx.tree_at(lambda s: s.scale_up.efficiency, h100, jnp.float32(0.5))
    for kind in ops.COLLECTIVES:
        a = collective_time(kind, S, 8.0, 1.0, halved, jm.ideal())
        b = collective_time(kind, S, 8.0, 1.0, h100, jm.Efficiency(scale_up=0.5))
        assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_fitted_collective_model_only_inside_the_scale_up_domain():
    h100 = jm.load_hardware("h100-sxm")
    fitted = jm.load_calibration("h100-vllm")
    if fitted.collectives is None:
        pytest.skip("h100-vllm carries no collective model")
    flat = eqx.tree_at(lambda e: e.collectives, fitted, None, is_leaf=lambda x: x is None)
    across = [float(collective_time(ops.ALL_REDUCE, S, 16.0, 1.0, h100, e)) for e in (fitted, flat)]
    assert across[0] == pytest.approx(across[1], rel=1e-6)
    inside = [float(collective_time(ops.ALL_REDUCE, S, 8.0, 1.0, h100, e)) for e in (fitted, flat)]
    assert inside[0] != pytest.approx(inside[1], rel=1e-3)


def _sends(table):
    return {r.name: (float(table.repeat[i]), float(table.group_stride[i]))
            for i, r in enumerate(table.rows) if r.group == ops.PIPELINE}


@pytest.mark.parametrize("tp, pp, sizes, expected", [
    (64, 4, (8, 8), (0, 0, 3)),  # GenZ A/B/D/E: every boundary on the third dimension
    (64, 4, (8, 16), (0, 2, 1)),  # GenZ C: two stages per 128-device block
    (4, 3, (8, 8), (1, 1, 0)),  # stages of 4: one boundary inside a node, one between nodes
    (2, 8, (8,), (6, 1)),  # the classic two levels: as before
    (8, 5, (8, 2), (0, 2, 2)),
    (1, 1, (8, 8), (0, 0, 0)),
])
def test_pipeline_sends_per_level(tp, pp, sizes, expected):
    arch = jm.load_model("llama-3-70b")
    wl = jm.Workload(batch=4, input_tokens=128, tp=tp, pp=pp)
    table = ops.build_op_table(arch, wl, ops.prefill_step(wl, 4.0), tuple(jnp.float32(x) for x in sizes))
    sends = _sends(table)
    assert len(sends) == len(sizes) + 1
    repeats = [r for r, _ in sends.values()]
    assert repeats == list(expected)
    assert sum(repeats) == pp - 1
    strides = [s for _, s in sends.values()]
    assert strides == list(np.cumprod((1,) + sizes)[:len(strides)])


def test_pipeline_send_rows_land_on_their_levels():
    system = _three_levels()
    arch = jm.load_model("llama-3-70b")
    wl = jm.Workload(batch=4, input_tokens=128, tp=8, pp=8)
    table = ops.build_op_table(arch, wl, ops.prefill_step(wl, 4.0), system.level_sizes)
    times = [float(collective_time(ops.SEND_RECV, S, table.group_size[i], table.group_stride[i], system, EFF))
             for i, r in enumerate(table.rows) if r.group == ops.PIPELINE]
    expected = [2e-6 + A0 + S / BW0, 3e-6 + A1 + S / BW1, 10e-6 + A2 + S / BW2]
    np.testing.assert_allclose(times, expected, rtol=1e-5)
    # 8 stages of one node each, 4 nodes per rack: of the 7 boundaries, 6 cross nodes inside a
    # rack and 1 crosses racks.
    assert [float(table.repeat[i]) for i, r in enumerate(table.rows) if r.group == ops.PIPELINE] == [0, 6, 1]


def test_scalar_devices_per_node_still_builds_two_send_rows():
    arch = jm.load_model("llama-3-70b")
    wl = jm.Workload(batch=4, input_tokens=128, tp=4, pp=4)
    sends = _sends(ops.build_op_table(arch, wl, ops.prefill_step(wl, 4.0), 8.0))
    assert sends == {"pp_send": (2.0, 1.0), "pp_send_across_nodes": (1.0, 8.0)}


# ---- GenZ Sec. VII-C ----------------------------------------------------------------------
def test_genz_table_ix_systems():
    a = networks.genz_hbd_system("A")
    assert [float(x) for x in a.level_sizes] == [8, 8]
    assert float(a.middle_levels[0].link.bandwidth_Bps) == pytest.approx(256e9)
    c = networks.genz_hbd_system("C")
    assert [float(x) for x in c.level_sizes] == [8, 16]
    e = networks.genz_hbd_system("E")
    assert float(e.scale_out.bandwidth_Bps) == pytest.approx(900e9) and float(e.scale_out.link_latency_s) == pytest.approx(200e-9)
    chip = networks.genz_hbd_npu()
    assert float(chip.tensor_peak("bf16")) == pytest.approx(9e15) and float(chip.mem_bw_Bps) == pytest.approx(13.5e12)
    with pytest.raises(ValueError, match="GenZ HBD config"):
        networks.genz_hbd_system("F")


def test_genz_table_ix_throughput_ordering():
    """Llama 3.1 405B (dense; 128 heads take TP 64) on 256 NPUs, TP 64 x PP 4."""
    arch = jm.load_model("llama-3.1-405b")
    wl = jm.Workload(batch=64, input_tokens=2048, output_tokens=256, tp=64, pp=4)
    r = {c: inference.evaluate(arch, wl, networks.genz_hbd_system(c), jm.ideal()) for c in "ABCDE"}
    prefill = {c: float(wl.batch * wl.input_tokens / r[c]["prefill_s"]) for c in r}
    decode = {c: float(r[c]["decode_throughput_tok_s"]) for c in r}
    print("\nprefill tok/s", {c: round(v) for c, v in prefill.items()})
    print("decode tok/s ", {c: round(v) for c, v in decode.items()})
    # Prefill moves large payloads: bandwidth orders the configurations.
    assert prefill["D"] >= prefill["E"] >= prefill["C"] >= prefill["B"] > prefill["A"]
    assert prefill["B"] == pytest.approx(prefill["D"], rel=0.05)  # B close to D (GenZ)
    assert prefill["A"] < 0.8 * prefill["B"]  # TP 64 over InfiniBand
    # Decode payloads are small: latency matters. Optical links (200 ns) edge out SL (500 ns)
    # on the pipeline hops, so E and D agree to well under 1 %.
    assert decode["E"] == pytest.approx(decode["D"], rel=1e-3)
    # The slowest stage waits on its slowest link: IB for both B and C.
    assert decode["C"] == pytest.approx(decode["B"], rel=1e-6)
    assert min(decode["D"], decode["E"]) >= decode["B"] > 2 * decode["A"]


# ---- invariants and transformations ---------------------------------------------------------
_LINK_PATHS = {
    "scale_up": lambda s: s.scale_up.bandwidth_Bps,
    "middle": lambda s: s.middle_levels[0].link.bandwidth_Bps,
    "scale_out": lambda s: s.scale_out.bandwidth_Bps,
}


@pytest.mark.parametrize("level", sorted(_LINK_PATHS))
def test_time_non_increasing_in_each_level_bandwidth(level):
    arch = jm.load_model("llama-3-70b")
    # 128 devices: TP 16 spans two nodes, PP 8 spans two 64-device blocks.
    wl = jm.Workload(batch=16, input_tokens=1024, output_tokens=64, tp=16, pp=8)
    base = networks.genz_hbd_system("A")
    where = _LINK_PATHS[level]
    bandwidths = jnp.geomspace(50e9, 5000e9, 9)

    def metrics(bw):
        out = inference.evaluate(arch, wl, eqx.tree_at(where, base, bw), jm.ideal())
        return jnp.stack([out["prefill_s"], out["tpot_s"]])

    values = np.asarray(jax.jit(jax.vmap(metrics))(bandwidths))  # vmap over one level's bandwidth
    assert np.all(np.diff(values, axis=0) <= 1e-12 * values[:-1])
    if level != "scale_up":
        assert values[0, 0] > values[-1, 0]  # the middle and outer levels carry TP and PP traffic


def test_gradient_with_respect_to_a_middle_level_is_finite():
    arch = jm.load_model("llama-3-70b")
    wl = jm.Workload(batch=16, input_tokens=1024, output_tokens=64, tp=16, pp=4)
    system = networks.genz_hbd_system("A")
    grads = jax.grad(lambda s: inference.evaluate(arch, wl, s, jm.ideal())["prefill_s"])(system)
    middle = grads.middle_levels[0]
    for leaf in (middle.link.bandwidth_Bps, middle.link.link_latency_s, middle.link.efficiency, middle.size):
        assert np.isfinite(float(leaf))
    assert float(middle.link.bandwidth_Bps) < 0 and float(middle.link.link_latency_s) > 0
    assert float(middle.link.efficiency) < 0


def test_sweep_path_into_a_middle_level():
    from jaxmodel.sweep import grid_sweep

    arch = jm.load_model("llama-3-70b")
    wl = jm.Workload(batch=8, input_tokens=512, output_tokens=32, tp=16, pp=2)
    df = grid_sweep(arch, wl, networks.genz_hbd_system("A"),
                    grid={"system.middle_levels.0.link.bandwidth_Bps": [100e9, 1000e9]}, chunk_size=2)
    assert df["prefill_s"].iloc[0] > df["prefill_s"].iloc[1]


# ---- presets ------------------------------------------------------------------------------
def _spec(**middle):
    level = {"size": 8, "bandwidth_Bps": 256e9, "link_latency_s": 10e-6, "collective_latency_s": 0.0,
             "efficiency": 0.9}
    level.update(middle)
    return {
        "chip": {"tensor_flops": {"bf16": 9e15}, "vector_flops": 9e15, "mem_bw_Bps": 13.5e12,
                 "mem_capacity_bytes": 256e9},
        "devices_per_node": 8,
        "scale_up": {"bandwidth_Bps": 1800e9, "link_latency_s": 500e-9},
        "scale_out": {"bandwidth_Bps": 256e9, "link_latency_s": 10e-6, "efficiency": 0.8},
        "middle_levels": [level],
    }


def test_preset_with_middle_levels_loads():
    system = system_from_dict(_spec())
    assert [float(x) for x in system.level_sizes] == [8, 8]
    assert float(system.middle_levels[0].link.efficiency) == pytest.approx(0.9)
    assert float(system.scale_out.efficiency) == pytest.approx(0.8)
    assert len(system.links) == 3
    no_middle = _spec()
    del no_middle["middle_levels"]
    assert system_from_dict(no_middle).middle_levels == ()


@pytest.mark.parametrize("change, message", [
    (dict(size=0), r"middle_levels\[0\].*size"),
    (dict(size=2.5), r"middle_levels\[0\].*size.*whole"),
    (dict(bandwidth_Bps=-1.0), r"middle_levels\[0\].*bandwidth_Bps"),
    (dict(efficiency=1.5), r"middle_levels\[0\].*efficiency"),
    (dict(speed=1.0), r"middle_levels\[0\].*speed"),
])
def test_bad_middle_levels_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        system_from_dict(_spec(**change))


def test_middle_levels_must_be_a_list_of_levels_with_a_size():
    spec = _spec()
    spec["middle_levels"] = {"size": 8}
    with pytest.raises(ValueError, match="middle_levels must be a list"):
        system_from_dict(spec)
    spec["middle_levels"] = [{"bandwidth_Bps": 1e9, "link_latency_s": 0.0}]
    with pytest.raises(ValueError, match=r"middle_levels\[0\].*'size'"):
        system_from_dict(spec)
