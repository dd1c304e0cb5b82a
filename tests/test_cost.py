"""Area, cost, power and energy: SPAD Table 3 / Table 9 golden values, formulas, invariants."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel import area, cost, inference, memory, memory_tech, status
from jaxmodel.cli import main

PRESETS = ("spad-prefill", "spad-decode", "h100-sxm")
#: SPAD Table 3 (Prefill Chip, Decode Chip, H100).
TABLE3_AREA = {"spad-prefill": 784.0, "spad-decode": 520.0, "h100-sxm": 814.0}
TABLE3_DIE_COST = {"spad-prefill": 301.0, "spad-decode": 187.0, "h100-sxm": 315.0}
TABLE3_MEMORY_COST = {"spad-prefill": 192.0, "spad-decode": 720.0, "h100-sxm": 720.0}
TABLE3_NORM_COST = {"spad-prefill": 0.48, "spad-decode": 0.88, "h100-sxm": 1.00}
TABLE3_TDP = {"spad-prefill": 596.0, "spad-decode": 507.0, "h100-sxm": 700.0}


@pytest.fixture(scope="module")
def systems():
    return {name: jm.load_hardware(name) for name in (*PRESETS, "a100-sxm-80gb")}


def table3_cost(system, area_mm2, econ=None):
    """Die + memory cost from SPAD's die area (the paper's input) and the preset's memory."""
    econ = cost.Economics() if econ is None else econ
    return float(cost.die_cost_usd(area_mm2, econ, "4nm") + cost.memory_cost_usd(system, econ))


@pytest.mark.parametrize("name", PRESETS)
def test_spad_table3_costs_and_tdp(systems, name):
    system, econ, a = systems[name], cost.Economics(), TABLE3_AREA[name]
    assert float(cost.die_cost_usd(a, econ, "4nm")) == pytest.approx(TABLE3_DIE_COST[name], rel=0.01)
    assert float(cost.memory_cost_usd(system, econ)) == pytest.approx(TABLE3_MEMORY_COST[name], rel=0.01)
    norm = table3_cost(system, a) / table3_cost(systems["h100-sxm"], TABLE3_AREA["h100-sxm"])
    assert norm == pytest.approx(TABLE3_NORM_COST[name], rel=0.01)
    assert float(cost.tdp_w(a, system, econ)) == pytest.approx(TABLE3_TDP[name], rel=0.01)


@pytest.mark.parametrize("hbm_usd,decode_chip,h100", [(6.0, 667.0, 795.0), (9.0, 907.0, 1035.0),
                                                      (12.0, 1147.0, 1275.0)])
def test_spad_table9_hbm_price_sensitivity(systems, hbm_usd, decode_chip, h100):
    econ = cost.Economics(memory_usd_per_GiB={"hbm3": hbm_usd})
    assert table3_cost(systems["spad-decode"], 520.0, econ) == pytest.approx(decode_chip, rel=0.01)
    assert table3_cost(systems["h100-sxm"], 814.0, econ) == pytest.approx(h100, rel=0.01)


@pytest.mark.parametrize("name,published", [("spad-prefill", 784.0), ("spad-decode", 520.0), ("h100-sxm", 814.0),
                                            ("a100-sxm-80gb", 826.0)])
def test_die_area_model_within_5_percent(systems, name, published):
    assert float(area.die_area_mm2(systems[name])) == pytest.approx(published, rel=0.05)


def test_area_breakdown_adds_up_and_overhead_is_ten_percent(systems):
    parts = area.area_breakdown(systems["spad-decode"])
    built = sum(float(v) for k, v in parts.items() if k not in ("overhead", "total"))
    assert float(parts["overhead"]) == pytest.approx(0.10 * built, rel=1e-6)
    assert float(parts["total"]) == pytest.approx(1.10 * built, rel=1e-6)
    assert all(float(v) > 0 for v in parts.values())


@pytest.mark.parametrize("name,tokens", [("spad-prefill", 35e3), ("h100-sxm", 66e3)])
def test_spad_kv_capacity_of_eight_chips(systems, name, tokens):
    """SPAD App. B.1: with 90% of memory for weights and KV cache, 8 Prefill Chips hold about
    35K tokens of FP16 BLOOM-176B and 8 H100s about 66K."""
    arch = jm.load_model("bloom-176b")
    wl = jm.Workload(batch=1, tp=8, dtype="fp16")
    usable = 0.9 * float(systems[name].chip.mem_capacity_bytes)
    free = usable - float(memory.weight_bytes_per_device(arch, wl))
    per_token = float(memory.kv_cache_bytes_per_device(arch, wl, 1.0, 1.0))
    assert per_token == pytest.approx(2 * 70 * 14336 * 2 / 8)
    assert free / per_token == pytest.approx(tokens, rel=0.03)


def test_dies_per_wafer_and_yield_by_hand():
    # pi * 150^2 / 100 - pi * 300 / sqrt(200)
    assert float(cost.dies_per_wafer(100.0)) == pytest.approx(706.858 - 66.643, rel=1e-4)
    assert float(cost.die_yield(800.0, cost.Economics())) == 1.0
    with_yield = cost.Economics(use_yield=True, defect_density_per_mm2=0.001, defect_clustering=3.0)
    assert float(cost.die_yield(800.0, with_yield)) == pytest.approx((1 + 0.8 / 3) ** -3, rel=1e-6)
    assert float(cost.die_cost_usd(800.0, with_yield)) > float(cost.die_cost_usd(800.0, cost.Economics()))
    assert float(cost.die_cost_usd(800.0, cost.Economics(wafer_price_usd=10000.0))) == pytest.approx(
        0.5 * float(cost.die_cost_usd(800.0, cost.Economics())), rel=1e-6)


@pytest.mark.parametrize("tech,pin_rate,published", [("hbm3", 5.2375e9, 68.0), ("gddr7", 28e9, 22.0),
                                                     ("lpddr5x", 7.5e9, 8.0)])
def test_memory_beachfront_reproduces_spad_table2(tech, pin_rate, published):
    """SPAD Table 2 bandwidth per mm of die edge (H100, RTX 5090, Apple M4 pin rates)."""
    t = memory_tech.technology(tech)
    assert t.bits_per_package * pin_rate / 8 / t.edge_mm_per_package / 1e9 == pytest.approx(published, rel=0.01)


def test_memory_power_gddr7_and_hbm3(systems):
    assert float(cost.memory_power_w(systems["spad-prefill"])) == pytest.approx(2048e9 * 8 * 4.5e-12, rel=1e-5)
    assert float(cost.memory_power_w(systems["h100-sxm"])) == pytest.approx(150.0)


def test_infeasible_chips_are_flagged_not_errors(systems):
    h100 = systems["h100-sxm"]
    assert int(cost.chip_metrics(h100)["chip_status"]) == status.OK
    wide = eqx.tree_at(lambda s: (s.chip.memory.bus_width_bits, s.chip.memory.packages), systems["spad-prefill"],
                       (jnp.float32(1024.0), jnp.float32(32.0)))
    assert int(cost.chip_metrics(wide)["chip_status"]) & status.OVER_BEACHFRONT
    big = eqx.tree_at(lambda s: s.chip.cores, h100, jnp.float32(300.0))
    code = int(cost.chip_metrics(big)["chip_status"])
    assert code & status.OVER_RETICLE and status.describe(code) == "over_reticle"
    # ...and the point is still evaluated, with the flag in its status.
    arch, wl = jm.load_model("llama-3-8b"), jm.Workload(batch=4, tp=1)
    out = inference.evaluate(arch, wl, big, jm.ideal(), fidelity="systolic")
    assert int(out["status"]) & status.OVER_RETICLE and np.isfinite(float(out["usd_per_mtok"]))


@pytest.mark.parametrize("path", [lambda s: s.chip.cores, lambda s: s.chip.array_rows, lambda s: s.chip.array_cols,
                                  lambda s: s.chip.vector_width, lambda s: s.chip.l1_bytes, lambda s: s.chip.l2_bytes,
                                  lambda s: s.chip.memory.packages, lambda s: s.chip.die.overhead])
def test_area_and_cost_non_decreasing(systems, path):
    system = systems["h100-sxm"]

    def metrics(value):
        m = cost.chip_metrics(eqx.tree_at(path, system, value))
        return jnp.stack([m["die_area_mm2"], m["total_cost_usd"], m["tdp_w"]])

    base = path(system)
    grads = jax.jacfwd(metrics)(base)
    assert np.all(np.asarray(grads) >= 0)
    assert np.all(np.asarray(metrics(base * 1.5)) >= np.asarray(metrics(base)))


def test_cost_gradients_match_finite_differences(systems):
    with jax.enable_x64(True):
        system = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), systems["spad-decode"])
        leaves, treedef = jax.tree_util.tree_flatten(system)
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(system)[0]]

        def f(xs):
            m = cost.chip_metrics(jax.tree_util.tree_unflatten(treedef, xs))
            return jnp.stack([m["die_area_mm2"], m["total_cost_usd"], m["tdp_w"]])

        jac = jax.jacrev(f)(leaves)
        for i, x in enumerate(leaves):
            h = 1e-6 * max(abs(float(x)), 1.0)
            up, down = list(leaves), list(leaves)
            up[i], down[i] = x + h, x - h
            fd = (np.asarray(f(up)) - np.asarray(f(down))) / (2 * h)
            g = np.asarray(jac[i])
            assert np.all(np.isfinite(g)), paths[i]
            np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-9 * np.abs(np.asarray(f(leaves))).max(),
                                       err_msg=paths[i])


def test_energy_and_cost_per_token_identities(systems):
    arch = jm.load_model("bloom-176b")
    wl = jm.Workload(batch=8, input_tokens=1024, output_tokens=256, tp=8, dtype="fp16")
    system = systems["h100-sxm"]
    econ = system.economics
    out = {k: float(v) for k, v in inference.evaluate(arch, wl, system, jm.ideal(), fidelity="systolic").items()}
    tdp, devices = out["tdp_w"], 8
    # Wall energy lies between the static draw and every device at TDP for the whole step.
    static = cost.die_power_w(out["die_area_mm2"], system, econ) * 0.3 / 0.9
    for step, energy in (("prefill_s", "prefill_energy_j"), ("decode_step_s", "decode_step_energy_j")):
        assert devices * static * out[step] < out[energy] <= devices * tdp * out[step]
    request_j = out["prefill_energy_j"] + 255 * out["decode_step_energy_j"]
    assert out["energy_per_token_j"] == pytest.approx(request_j / (8 * 256), rel=1e-5)
    assert out["tokens_per_j"] == pytest.approx(1 / out["energy_per_token_j"], rel=1e-5)
    hw_rate = out["total_cost_usd"] / float(econ.lifetime_s)
    usd = devices * out["e2e_latency_s"] * hw_rate + request_j * 1.2 * float(econ.electricity_usd_per_J)
    assert out["usd_per_mtok"] == pytest.approx(1e6 * usd / (8 * 256), rel=1e-4)
    assert out["prefill_usd_per_mtok"] > 0 and out["decode_usd_per_mtok"] > 0


def test_energy_and_cost_gradients_are_finite(systems):
    arch = jm.load_model("llama-3-8b")
    wl = jm.Workload(batch=8, input_tokens=512, output_tokens=128, tp=1)

    def f(system):
        out = inference.evaluate(arch, wl, system, jm.ideal(), fidelity="systolic", sharpness=16.0)
        return out["usd_per_mtok"] + out["energy_per_token_j"]

    grads = jax.grad(f)(systems["spad-decode"])
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert np.isfinite(float(g)), jax.tree_util.keystr(path)
    assert float(grads.chip.memory.packages) > 0  # more HBM stacks: more cost and power per token


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="Economics.utilization"):
        cost.Economics(utilization=0.0)
    with pytest.raises(ValueError, match="Economics.pue"):
        cost.Economics(pue=0.5)
    with pytest.raises(ValueError, match="Die.process_node"):
        area.Die(process_node="3nm")
    with pytest.raises(ValueError, match="memory_usd_per_GiB key"):
        cost.Economics(memory_usd_per_GiB={"hbm9": 1.0})
    with pytest.raises(ValueError, match="microarchitecture"):
        cost.chip_metrics(jm.load_hardware("h200-sxm"))


def test_chip_command_json_contract(capsys):
    assert main(["chip", "--hardware", "spad-prefill", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("tensor_flops", "vector_flops", "mem_bw_Bps", "mem_capacity_bytes", "die_area_mm2", "die_cost_usd",
                "memory_cost_usd", "total_cost_usd", "tdp_w"):
        assert key in out
    assert out["memory_cost_usd"] == pytest.approx(192.0) and out["status_text"] == "ok"
    assert main(["chip", "--hardware", "h100-sxm", "--memory-price", "hbm3=12"]) == 0
    assert "memory cost: $960" in capsys.readouterr().out


def test_breakdown_energy_per_operator_adds_up(systems):
    """Per-operator energies (GenZ eq. 2) sum to the step energy when nothing is pipelined."""
    arch = jm.load_model("llama-3-8b")
    wl = jm.Workload(batch=4, input_tokens=512, output_tokens=64, tp=2)
    system = systems["spad-decode"]
    table = jm.breakdown(arch, wl, system, fidelity="systolic")
    out = jm.predict(arch, wl, system, fidelity="systolic")
    assert (table["energy_j"] > 0).any() and (table["energy_j"] >= 0).all()
    for phase, step, energy in (("prefill", "prefill_s", "prefill_energy_j"),
                                ("decode", "decode_step_s", "decode_step_energy_j")):
        rows = table[table["phase"] == phase]
        assert rows["total_s"].sum() == pytest.approx(out[step], rel=1e-5)
        # Two devices, each running every row: per-device row energies times the devices.
        assert 2 * rows["total_energy_j"].sum() == pytest.approx(out[energy], rel=1e-4)


def test_hardware_cost_per_throughput(systems):
    arch = jm.load_model("llama-3-8b")
    wl = jm.Workload(batch=4, input_tokens=512, output_tokens=64, tp=2)
    out = jm.predict(arch, wl, systems["spad-decode"], fidelity="systolic")
    assert out["hardware_usd_per_tok_s"] == pytest.approx(2 * out["total_cost_usd"] / out["throughput_tok_s"],
                                                          rel=1e-5)
