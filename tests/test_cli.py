"""The command-line contract (DESIGN.md section 8) and the main job at smoke size."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from jaxmodel.cli import main

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


def test_bench_json(capsys):
    assert main(["bench", "--json", "--points", "20000", "--chunk-size", "4096", "--no-genz"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["points"] >= 10000 and out["points_per_s"] > 0 and out["compile_s"] > 0


def test_explore_smoke(tmp_path, capsys):
    assert main(["explore", "--resolution", "4", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "best chips" in text and "reference h100-sxm" in text
    assert (tmp_path / "explore.png").stat().st_size > 10_000
    assert (tmp_path / "best_per_chip.csv").exists()


def test_list(capsys):
    assert main(["list"]) == 0
    assert "llama-3-70b" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--ratio", "-1"], "Constraint 'prefill.time_s': the bound must be positive"),
    (["--starts", "0"], "SolverSettings.starts must be >= 1"),
])
def test_size_chip_bad_input_is_one_line(args, message):
    run = subprocess.run([sys.executable, "-m", "jaxmodel.cli", "size-chip", "--scale", "smoke", *args],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    err = run.stderr.strip()
    assert err.startswith("jaxmodel: error:") and message in err and "\n" not in err


def run_provision(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "jaxmodel.cli", "provision", *args],
                          capture_output=True, text=True, timeout=timeout)


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
    run = run_provision(*args, timeout=300)
    assert run.returncode == 2
    err = run.stderr.strip()
    assert err.startswith("jaxmodel: error:") and message in err and "\n" not in err
