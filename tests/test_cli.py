"""The command-line contract (DESIGN.md section 8) and the main job at smoke size."""

import json
import subprocess
import sys

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
