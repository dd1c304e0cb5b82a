"""Loaders for Vidur profiling, LLM-Inference-Bench, vLLM benchmark JSON and user CSVs."""

import csv
import json
import pathlib

import numpy as np
import pytest

from calibration import schema
from calibration.loaders import SHARED_DATA, generic, inference_bench, vidur, vllm_json

DATA = SHARED_DATA
VIDUR = DATA / "vidur-profiling"
BENCH = DATA / "llm-inference-bench"


def _need(folder: pathlib.Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"measured data folder {folder} is absent (expected ../shared/data next to the repo)")


def _raw_rows(path: pathlib.Path) -> list[dict]:
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if any(v.strip() for v in row.values())]


# ---------------------------------------------------------------- Vidur

@pytest.fixture(scope="module")
def vidur_compute():
    _need(VIDUR)
    return vidur.load_compute()


def test_vidur_compute_row_count_matches_readme(vidur_compute):
    # README rows per file; 10 timed ops per Llama layer, 9 for phi-2 (one LayerNorm).
    llama = 4 * 1044 + 2 * 1824  # a100 + h100 Llama-2 files, a100 Llama-3 files
    assert len(vidur_compute) == llama * 10 + 2 * 261 * 9
    assert set(vidur_compute["gpu"]) == {"a100_sxm", "h100_sxm"}
    assert set(vidur_compute["dtype"]) == {"fp16"}


def test_vidur_qkv_gemm_shape_follows_gqa_and_tp(vidur_compute):
    rows = vidur_compute[vidur_compute["provenance"].str.contains("Meta-Llama-3-8B/")
                         & (vidur_compute["kernel"] == "attn_pre_proj")]
    assert set(rows["op"]) == {"gemm"}
    # TP1: (n_head + 2 n_kv_head) * head_dim = (32 + 2*8) * 128; TP sizes 1,2,4,8 divide it.
    assert set(rows["n"]) == {6144.0, 3072.0, 1536.0, 768.0}
    assert set(rows["k"]) == {4096.0}
    down = vidur_compute[vidur_compute["provenance"].str.contains("Meta-Llama-3-8B/")
                         & (vidur_compute["kernel"] == "mlp_down_proj")]
    assert set(down["k"]) == {14336.0, 7168.0, 3584.0, 1792.0} and set(down["n"]) == {4096.0}


def test_vidur_raw_median_ms_to_seconds_and_readme_sanity(vidur_compute):
    rel = "compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv"
    raw = _raw_rows(VIDUR / rel)
    i = next(j for j, r in enumerate(raw) if r["num_tokens"] == "4096" and r["num_tensor_parallel_workers"] == "1")
    expected_s = float(raw[i]["time_stats.mlp_up_proj.median"]) / 1000.0
    row = vidur_compute[(vidur_compute["provenance"] == f"{rel}:{i}") & (vidur_compute["kernel"] == "mlp_up_proj")]
    assert len(row) == 1
    row = row.iloc[0]
    assert row["measured_s"] == pytest.approx(expected_s, rel=1e-12)
    assert (row["m"], row["n"], row["k"]) == (4096.0, 2 * 11008.0, 4096.0)
    # README sanity check: 0.987 ms -> 749 TFLOP/s.
    assert 2 * row["m"] * row["n"] * row["k"] / row["measured_s"] / 1e12 == pytest.approx(749, rel=0.01)


def test_vidur_phi2_uses_layernorm_gelu_and_filters():
    _need(VIDUR)
    table = vidur.load_compute(gpus=("h100_sxm",), models=("phi-2",))
    assert len(table) == 261 * 9
    assert set(table["op"]) == {"gemm", "layernorm", "gelu", "rope", "add", "embedding"}
    up = table[table["kernel"] == "mlp_up_proj"]
    assert set(up["n"]) == {10240.0}  # non-gated MLP
    add = table[table["kernel"] == "add"]
    assert (add["m"] == 1).all() and np.array_equal(add["n"] / 2560, table[table["kernel"] == "emb"]["m"])


def test_vidur_network_counts_and_raw_value():
    _need(VIDUR)
    table = vidur.load_network()
    assert len(table) == 6958 + 4496 + 2982 + 1988 + 4 * 1988  # README row counts
    rel = "network/a100_dgx/all_reduce.csv"
    raw = _raw_rows(VIDUR / rel)[0]
    row = table[table["provenance"] == f"{rel}:0"].iloc[0]
    assert row["op"] == "all_reduce" and row["gpu"] == "a100_sxm"
    assert row["message_bytes"] == float(raw["size"]) == 2048
    assert row["gpus"] == float(raw["num_workers"])
    assert row["measured_s"] == pytest.approx(float(raw["time_stats.all_reduce.median"]) * 1e-3)
    assert row["kernel"] == f"dgx:devices_per_node={raw['devices_per_node']}"
    assert set(table["op"]) == {"all_reduce", "send_recv"}
    assert {k.split(":")[0] for k in table["kernel"]} == {"dgx", "pairwise_nvlink"}


# ---------------------------------------------------------------- LLM-Inference-Bench

def test_inference_bench_main_sweep():
    _need(BENCH)
    table = inference_bench.load()
    assert len(table) == 850  # README row count
    assert set(table["gpu"]) == {"a100_sxm", "h100_sxm"}
    assert set(table["framework"]) == {"vllm", "trtllm", "deepspeed-mii"}
    assert (table["input_tokens"] == table["output_tokens"]).all()
    assert table["ttft_s"].isna().all() and table["tpot_s"].isna().all()
    raw = _raw_rows(BENCH / "throughput_calibration.csv")
    i = next(j for j, r in enumerate(raw) if r["Framework"] == "TensorRT-LLM" and r["Hardware"] == "Nvidia H100 GPU")
    row = table.iloc[i]
    assert (row["framework"], row["gpu"], row["model"]) == ("trtllm", "h100_sxm", raw[i]["Model"])
    assert row["latency_s"] == float(raw[i]["Latency"]) and row["tp"] == float(raw[i]["Num of Hardware"])
    length, batch = float(raw[i]["Input Output Length"]), float(raw[i]["Batch Size"])
    assert row["throughput_tok_s"] == pytest.approx(batch * 2 * length / row["latency_s"], rel=1e-9)


def test_inference_bench_input_vs_output_file():
    _need(BENCH)
    table = inference_bench.load(files=("trtllm_a100_llama3_8b_input_vs_output.csv",))
    assert len(table) == 37
    row = table[(table["input_tokens"] == 4096) & (table["output_tokens"] == 128)].iloc[0]
    assert row["latency_s"] == pytest.approx(2.2486148476600647)
    assert (row["gpu"], row["framework"], row["dtype"], row["kv_dtype"]) == ("a100_sxm", "trtllm", "fp16", "fp16")
    assert row["throughput_tok_s"] == pytest.approx((4096 + 128) / row["latency_s"])


def test_inference_bench_other_files():
    _need(BENCH)
    par = inference_bench.load(files=("parallelism_tp_pp_ep.csv",))
    assert len(par) == 371 - 8  # the 8 expert-parallel rows are dropped
    assert set(map(tuple, par.loc[par["pp"] > 1, ["tp", "pp"]].drop_duplicates().to_numpy())) == {
        (1.0, 2.0), (1.0, 4.0), (2.0, 2.0)}
    kv = inference_bench.load(files="kv_cache_dtype.csv")
    assert len(kv) == 503
    assert {("fp16", "fp8"), ("int8_sq", "int8")} <= set(map(tuple, kv[["dtype", "kv_dtype"]].to_numpy()))
    assert len(inference_bench.load(files=("quant_a100_h100.csv",))) == 116
    with pytest.raises(ValueError, match="speculative_decoding.csv.*supported"):
        inference_bench.load(files=("speculative_decoding.csv",))


# ---------------------------------------------------------------- vLLM JSON

def test_vllm_latency_json(tmp_path):
    path = tmp_path / "latency.json"
    path.write_text(json.dumps({"avg_latency": 1.25, "latencies": [1.2, 1.25, 1.3],
                                "percentiles": {"10": 1.2, "25": 1.22, "50": 1.25, "75": 1.28, "90": 1.3}}))
    table = vllm_json.load(path, gpu="h100_sxm", model="meta-llama/Meta-Llama-3-8B", tp=1, batch=8,
                           input_tokens=32, output_tokens=128, framework_version="0.6.3")
    row = table.iloc[0]
    assert row["latency_s"] == 1.25 and np.isnan(row["ttft_s"]) and np.isnan(row["tpot_s"])
    assert (row["batch"], row["input_tokens"], row["output_tokens"]) == (8, 32, 128)
    assert row["framework"] == "vllm" and row["framework_version"] == "0.6.3"
    with pytest.raises(ValueError, match="batch"):
        vllm_json.load(path, gpu="h100_sxm", model="m", tp=1)


def test_vllm_serving_json(tmp_path):
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({
        "date": "20240901-120000", "backend": "vllm", "model_id": "meta-llama/Llama-2-7b-hf", "num_prompts": 32,
        "request_rate": "inf", "duration": 12.5, "completed": 32, "total_input_tokens": 32 * 512,
        "total_output_tokens": 32 * 256, "request_throughput": 2.56, "output_throughput": 655.36,
        "total_token_throughput": 1966.08, "mean_ttft_ms": 250.0, "median_ttft_ms": 240.0, "p99_ttft_ms": 400.0,
        "mean_tpot_ms": 20.0, "median_tpot_ms": 19.5, "p99_tpot_ms": 30.0, "mean_itl_ms": 20.0}))
    row = vllm_json.load(path, gpu="a100_sxm", tp=2).iloc[0]
    assert row["model"] == "meta-llama/Llama-2-7b-hf"
    assert row["ttft_s"] == pytest.approx(0.25) and row["tpot_s"] == pytest.approx(0.02)
    assert row["latency_s"] == 12.5 and row["batch"] == 32
    assert (row["input_tokens"], row["output_tokens"]) == (512, 256)
    assert row["throughput_tok_s"] == pytest.approx(32 * (512 + 256) / 12.5)
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"elapsed_time": 3.0}))
    with pytest.raises(ValueError, match="other.json.*avg_latency"):
        vllm_json.load(bad, gpu="a100_sxm", model="m", tp=1)


# ---------------------------------------------------------------- user CSVs

def _csv(tmp_path, text, name="user.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_generic_kernels_units_and_defaults(tmp_path):
    path = _csv(tmp_path, "gpu,op,m,n,k,message_bytes,gpus,measured_us\n"
                          "H100_SXM,gemm,4096,4096,4096,,,250\n"
                          "h100_sxm,all_reduce,,,,1048576,8,30\n"
                          "h100_sxm,rmsnorm,4096,4096,,,,12.5\n")
    table = generic.load_kernels(path)
    assert list(table.columns) == list(schema.KERNEL_COLUMNS)
    assert table["measured_s"].tolist() == pytest.approx([250e-6, 30e-6, 12.5e-6])
    assert set(table["source"]) == {"user"} and table["gpu"][0] == "h100_sxm"
    assert table["gpus"].tolist() == [1.0, 8.0, 1.0] and table["batch"].tolist() == [1.0, 1.0, 1.0]
    assert table["provenance"][2] == "user.csv:2"


def test_generic_kernels_errors(tmp_path):
    missing_k = _csv(tmp_path, "gpu,op,m,n,measured_s\nh100_sxm,gemm,1,2,0.001\n", "a.csv")
    with pytest.raises(ValueError, match=r"a\.csv.*'k'.*gemm"):
        generic.load_kernels(missing_k)
    no_time = _csv(tmp_path, "gpu,op,m,n\nh100_sxm,add,1,2\n", "b.csv")
    with pytest.raises(ValueError, match="measured_s, measured_ms, measured_us"):
        generic.load_kernels(no_time)
    bad_op = _csv(tmp_path, "gpu,op,m,n,measured_s\nh100_sxm,matmul,1,2,0.001\n", "c.csv")
    with pytest.raises(ValueError, match="matmul.*allowed: gemm"):
        generic.load_kernels(bad_op)
    no_gpu = _csv(tmp_path, "op,m,n,measured_s\nadd,1,2,0.001\n", "d.csv")
    with pytest.raises(ValueError, match="missing column 'gpu'"):
        generic.load_kernels(no_gpu)
    # Seconds written into a measured_ms column: 2e-5 ms = 2e-8 s, below any real kernel.
    secs_as_ms = _csv(tmp_path, "gpu,op,m,n,measured_ms\nh100_sxm,add,1,2,2e-5\n", "e.csv")
    with pytest.raises(ValueError, match=r"e\.csv.*measured_s.*check the unit"):
        generic.load_kernels(secs_as_ms)
    typo = _csv(tmp_path, "gpu,op,m,n,measured_sec\nh100_sxm,add,1,2,0.001\n", "f.csv")
    with pytest.raises(ValueError, match="unknown columns.*measured_sec"):
        generic.load_kernels(typo)


def test_generic_end_to_end(tmp_path):
    header = "gpu,model,tp,batch,input_tokens,output_tokens,"
    good = _csv(tmp_path, header + "latency_ms,ttft_ms\nh100_sxm,meta-llama/Meta-Llama-3-8B,1,16,512,512,8250,120\n")
    row = generic.load_end_to_end(good).iloc[0]
    assert (row["latency_s"], row["ttft_s"], row["pp"]) == (pytest.approx(8.25), pytest.approx(0.12), 1.0)
    assert np.isnan(row["tpot_s"]) and row["source"] == "user"
    # Milliseconds written into latency_s: 25000 "s" exceeds the schema bound.
    ms_as_s = _csv(tmp_path, header + "latency_s\nh100_sxm,m,1,16,512,512,25000\n", "g.csv")
    with pytest.raises(ValueError, match=r"g\.csv.*latency_s.*check the unit"):
        generic.load_end_to_end(ms_as_s)
    both = _csv(tmp_path, header + "latency_s,latency_ms\nh100_sxm,m,1,16,512,512,8.25,8250\n", "h.csv")
    with pytest.raises(ValueError, match="several units"):
        generic.load_end_to_end(both)
    no_batch = _csv(tmp_path, "gpu,model,tp,input_tokens,output_tokens,latency_s\nh100_sxm,m,1,8,8,1.0\n", "i.csv")
    with pytest.raises(ValueError, match="missing column 'batch'"):
        generic.load_end_to_end(no_batch)
