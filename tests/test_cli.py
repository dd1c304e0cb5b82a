"""The command-line contract (DESIGN.md section 8) and the main job at smoke size."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from jaxmodel.cli import COMMANDS, build_parser, main

from .conftest import run_cli

PREDICT = ["predict", "--model", "llama-3-8b", "--hardware", "a100-sxm-80gb", "--batch", "4",
           "--input-tokens", "512", "--output-tokens", "64", "--tp", "2"]


def test_predict_json_contract(capsys):
    assert main(PREDICT + ["--calibration", "ideal", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("prefill_s", "decode_step_s", "ttft_s", "tpot_s", "throughput_tok_s", "memory_bytes", "fits"):
        assert key in out
    assert out["fits"] is True and out["prefill_s"] > 0 and out["tpot_s"] > 0


def test_predict_human_output_and_breakdown(capsys):
    assert main(PREDICT + ["--chunk-tokens", "256", "--breakdown"]) == 0
    text = capsys.readouterr().out
    assert "decode step / TPOT" in text and "chunked step" in text and "qkv_proj" in text


@pytest.mark.parametrize("args,message", [
    (["--tp", "3"], "Workload.tp = 3 must divide Architecture.n_heads = 32"),
    (["--model", "llama-9"], "unknown model 'llama-9'"),
    (["--hardware", "h300"], "unknown hardware 'h300'"),
    (["--batch", "0"], "Workload.batch must be > 0"),
    (["--calibration", "magic"], "unknown calibration 'magic'"),
])
def test_errors_are_one_line(capsys, args, message):
    argv = list(PREDICT)
    flag, value = args
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxmodel: error:") and message in err and "\n" not in err


def jaxmodel(*args, timeout=300):
    """Run the command line as a user does: a separate process."""
    return subprocess.run([sys.executable, "-m", "jaxmodel.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(run, message):
    assert run.returncode == 2, run.stdout + run.stderr
    err = run.stderr.strip()
    assert err.startswith("jaxmodel") and "error:" in err and message in err and "\n" not in err, err


def test_predict_as_a_subprocess():
    """The installed entry point, as a user runs it; the other command tests run in this process."""
    run = jaxmodel(*PREDICT, "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["fits"] is True and out["tpot_s"] > 0
    assert_one_line_error(jaxmodel(*PREDICT[:-1], "3"), "Workload.tp = 3 must divide Architecture.n_heads = 32")


def test_predict_with_an_offload_tier():
    """llama-3-70b on one H100 fits only with host DRAM over PCIe 5.0; a fraction > 1 is refused."""
    args = ["predict", "--model", "llama-3-70b", "--hardware", "h100-sxm", "--batch", "8", "--input-tokens", "1024",
            "--output-tokens", "256", "--offload-tier", "pcie5-host"]
    run = run_cli(*args, "--offload", "auto_kv", "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["fits"] is True and out["offload_kv"] == 1.0 and 0 < out["offload_weights"] < 1
    assert out["memory_bytes"] == pytest.approx(out["usable_memory_bytes"], rel=1e-6)
    assert out["offload_capacity_bytes"] == pytest.approx(256e9)
    assert_one_line_error(run_cli(*args, "--offload-weights", "1.5"), "Workload.offload_weights must be >= 0 and <= 1")


def test_chip_command():
    run = run_cli("chip", "--hardware", "spad-decode", "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["total_cost_usd"] == pytest.approx(out["die_cost_usd"] + out["memory_cost_usd"], rel=1e-6)
    assert_one_line_error(run_cli("chip", "--hardware", "b200"), "need a chip described at microarchitecture level")
    assert_one_line_error(run_cli("chip", "--hardware", "h100-sxm", "--memory-price", "hbm3"),
                          "expected TECHNOLOGY=USD_PER_GIB")


def test_bench_command():
    run = run_cli("bench", "--json", "--points", "20000", "--chunk-size", "4096", "--no-genz")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["points"] >= 10000 and out["points_per_s"] > 0 and out["compile_s"] > 0
    assert_one_line_error(run_cli("bench", "--points", "0"), "--points must be >= 1 (got 0)")


def test_explore_command(tmp_path):
    run = run_cli("explore", "--resolution", "4", "--out", tmp_path)
    assert run.returncode == 0, run.stderr
    assert "best chips" in run.stdout and "reference h100-sxm" in run.stdout
    assert (tmp_path / "explore.png").stat().st_size > 10_000
    assert (tmp_path / "best_per_chip.csv").exists()
    assert_one_line_error(run_cli("explore", "--resolution", "1"), "--resolution must be >= 2")


def test_list_command():
    run = run_cli("list")
    assert run.returncode == 0 and "llama-3-70b" in run.stdout and "h100-vllm" in run.stdout
    assert_one_line_error(run_cli("list", "--colour"), "unrecognized arguments: --colour")


def test_size_chip_command():
    run = run_cli("size-chip", "--scale", "smoke", "--starts", "2", "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["phase"] == "prefill" and out["feasible"] and all(v <= 1.0 + 1e-6 for v in out["constraints"].values())


def test_every_command_has_help_with_examples_and_a_test():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == set(COMMANDS)
    for name, sub in commands.items():
        assert "example" in sub.format_help(), f"`jaxmodel {name} --help` shows no example"
    tested = {"predict", "chip", "bench", "explore", "list", "size-chip", "provision"}  # this file
    tested |= {"calibrate"}  # tests/test_calibration_sets.py
    tested |= {"sweep"}  # tests/test_sweep_spec.py
    tested |= {"plot"}  # tests/test_plots.py
    assert tested == set(COMMANDS)


@pytest.mark.parametrize("args,message", [
    (["--ratio", "-1"], "Constraint 'prefill.time_s': the bound must be positive"),
    (["--starts", "0"], "SolverSettings.starts must be >= 1"),
])
def test_size_chip_bad_input_is_one_line(args, message):
    assert_one_line_error(run_cli("size-chip", "--scale", "smoke", *args), message)


def run_provision(*args):
    return run_cli("provision", *args)


def test_provision_on_a_user_trace(tmp_path):
    """A small CSV trace end to end: the cheapest pair meets the SLOs and is on the Pareto front."""
    from jaxmodel.serving import trace as tr

    path = tr.save_csv(tr.poisson(60, 2.0, [200, 900, 1800], [4, 30, 120], seed=1), tmp_path / "mine.csv")
    run = run_provision("--trace", str(path), "--rate", "2", "--max-prefill", "2", "--max-decode", "2",
                        "--csv", str(tmp_path / "all.csv"), "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    best = out["best"]
    assert out["requests"] == 60 and best["meets"] and best["served"] == 1.0
    assert best["cost (reference machines)"] == best["prefill"] + best["decode"]  # H100 machines, H100 units
    assert any(p["prefill"] == best["prefill"] and p["decode"] == best["decode"] for p in out["pareto"])
    assert len(pd.read_csv(tmp_path / "all.csv")) == out["configurations"]


@pytest.mark.parametrize("args,message", [
    (["--rate", "-1"], "--rate must be finite and > 0 requests per second"),
    (["--max-decode", "0"], "--max-decode must be >= 1"),
    (["--trace", "no/such/trace.csv", "--rate", "1"], "no/such/trace.csv"),
])
def test_provision_bad_input_is_one_line(args, message):
    run = run_provision(*args)
    assert run.returncode == 2
    err = run.stderr.strip()
    assert err.startswith("jaxmodel: error:") and message in err and "\n" not in err
