"""Kernel-table loaders for AIConfigurator and LLMCompass, checked against the raw files and READMEs.

Every expected value is recomputed here from the raw file with pandas, using the unit
conversion the dataset README states, so a loader unit or mapping slip fails loudly.
"""

import numpy as np
import pandas as pd
import pytest

from calibration import schema
from calibration.loaders import aiconfigurator as aic
from calibration.loaders import SHARED_DATA, llmcompass

DATA = SHARED_DATA
AIC = DATA / "aiconfigurator-ops"
LLMC = DATA / "llmcompass"

needs_aic = pytest.mark.skipif(not AIC.is_dir(), reason=f"AIConfigurator data not found at {AIC}")
needs_llmc = pytest.mark.skipif(not LLMC.is_dir(), reason=f"LLMCompass data not found at {LLMC}")


def row_of(df: pd.DataFrame, provenance: str) -> pd.Series:
    hit = df[df["provenance"] == provenance]
    assert len(hit) == 1, f"expected one row with provenance {provenance}, found {len(hit)}"
    return hit.iloc[0]


# --------------------------------------------------------------------------------------------
# AIConfigurator


@pytest.fixture(scope="module")
def aic_gemm():
    return aic.load(AIC, ops="gemm")


@needs_aic
def test_aic_gemm_counts_match_readme(aic_gemm):
    counts = aic_gemm.groupby(["gpu", "framework", "framework_version"]).size().to_dict()
    assert counts == {("a100_sxm", "vllm", "0.14.0"): 9240, ("a100_sxm", "trtllm", "1.0.0"): 27384,
                      ("h100_sxm", "vllm", "0.14.0"): 26040, ("h100_sxm", "vllm", "0.24.0"): 107188,
                      ("h100_sxm", "trtllm", "1.3.0rc20"): 100668}
    schema.validate(aic_gemm, schema.KERNEL_COLUMNS, "kernel")
    assert set(aic_gemm["op"]) == {"gemm"}
    assert set(aic_gemm["dtype"]) == {"bf16", "fp8", "fp8_block", "int8_wo", "int4_wo", "sq"}


@needs_aic
def test_aic_gemm_row_is_raw_latency_in_seconds(aic_gemm):
    rel = "h100_sxm/gemm/vllm/0.24.0/gemm_perf.parquet"
    raw = pd.read_parquet(AIC / rel)
    for i in (0, 16858, len(raw) - 1):
        row, src = row_of(aic_gemm, f"{rel}#row{i}"), raw.iloc[i]
        assert row["measured_s"] == pytest.approx(src["latency"] / 1e3, rel=1e-12)
        assert (row["m"], row["n"], row["k"]) == (src["m"], src["n"], src["k"])
        assert row["dtype"] == {"bfloat16": "bf16"}.get(src["gemm_dtype"], src["gemm_dtype"])
        assert row["kernel"] == src["kernel_source"]
        assert (row["gpu"], row["framework"], row["framework_version"]) == ("h100_sxm", "vllm", "0.24.0")


@needs_aic
def test_aic_best_bf16_gemm_is_near_peak(aic_gemm):
    """README sanity check: best BF16 GEMM reaches 96 % of 312 TFLOP/s (A100), 97 % of 989 (H100)."""
    bf16 = aic_gemm[aic_gemm["dtype"] == "bf16"]
    flops = 2 * bf16["m"] * bf16["n"] * bf16["k"] / bf16["measured_s"]
    for gpu, peak in (("a100_sxm", 312e12), ("h100_sxm", 989e12)):
        best = flops[bf16["gpu"] == gpu].max()
        assert 0.8 * peak <= best <= peak, (gpu, best)
    assert flops[bf16["gpu"] == "h100_sxm"].max() == pytest.approx(956e12, rel=0.01)
    assert bf16["measured_s"].min() == pytest.approx(2.4e-6, rel=0.05)  # README's launch/latency floor


@needs_aic
def test_aic_attention_prefill():
    df = aic.load(AIC, systems="h100_sxm", ops="attention_prefill")
    schema.validate(df, schema.KERNEL_COLUMNS, "kernel")
    assert set(df["op"]) == {"attention_prefill"}
    for rel, readme_rows in (("h100_sxm/attention/vllm/0.24.0/context_attention_perf.parquet", 50830),
                             ("h100_sxm/attention/trtllm/1.3.0rc20/context_attention_perf.parquet", 75840),
                             ("h100_sxm/attention/vllm/0.14.0/context_attention_perf.parquet", 10914)):
        raw = pd.read_parquet(AIC / rel)
        assert len(raw) == readme_rows
        full = raw["window_size"].eq(0) if "window_size" in raw else pd.Series(True, index=raw.index)
        mine = df[df["provenance"].str.startswith(rel + "#")]
        assert len(mine) == int((full & raw["beam_width"].eq(1)).sum())  # sliding-window rows dropped
        i = int(np.flatnonzero(full & raw["kv_cache_dtype"].eq("fp8"))[7])
        row, src = row_of(df, f"{rel}#row{i}"), raw.iloc[i]
        assert row["measured_s"] == pytest.approx(src["latency"] / 1e3, rel=1e-12)
        assert row["seq_q"] == row["seq_kv"] == src["isl"]
        assert (row["batch"], row["heads"], row["kv_heads"], row["head_dim"]) == (
            src["batch_size"], src["num_heads"], src["num_key_value_heads"], src["head_dim"])
        assert row["kernel"] == f"{src['kernel_source']} kv:fp8"


@needs_aic
def test_aic_attention_decode_seq_kv():
    """vLLM's collector attends ``step`` tokens (new one included), TRT-LLM's ``step`` cached + 1."""
    df = aic.load(AIC, systems="a100_sxm", ops=["attention_decode"])
    schema.validate(df, schema.KERNEL_COLUMNS, "kernel")
    for framework, version, counted, extra in (("vllm", "0.14.0", 5431, 0), ("trtllm", "1.0.0", 5026, 1)):
        rel = f"a100_sxm/attention/{framework}/{version}/generation_attention_perf.parquet"
        raw = pd.read_parquet(AIC / rel)
        mine = df[df["framework"] == framework]
        assert len(raw) == len(mine) == counted
        row, src = row_of(mine, f"{rel}#row100"), raw.iloc[100]
        assert row["seq_q"] == 1 and row["seq_kv"] == src["step"] + extra
        assert row["measured_s"] == pytest.approx(src["latency"] / 1e3, rel=1e-12)
        assert row["kernel"].endswith(" kv:bf16") and row["dtype"] == "bf16"


@needs_aic
def test_aic_collectives():
    df = aic.load(AIC, frameworks=["nccl", "vllm", "trtllm"],
                  ops=["all_reduce", "all_gather", "reduce_scatter", "all_to_all"])
    schema.validate(df, schema.KERNEL_COLUMNS, "kernel")
    nccl = df[df["framework"] == "nccl"]
    for system, rows, version in (("a100_sxm", 504, "2.27.3"), ("h100_sxm", 1008, "2.29.2")):
        rel = f"{system}/comm/nccl/2.27.3/nccl_perf.parquet"
        raw = pd.read_parquet(AIC / rel)
        mine = nccl[nccl["gpu"] == system]
        assert len(raw) == len(mine) == rows
        assert set(mine["framework_version"]) == {version}  # from the column, not the folder
        assert set(mine["op"]) == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all"}
        for dtype in ("half", "int8"):
            i = int(np.flatnonzero(raw["nccl_dtype"].eq(dtype))[-1])
            row, src = row_of(mine, f"{rel}#row{i}"), raw.iloc[i]
            size = {"half": 2, "int8": 1}[src["nccl_dtype"]]
            assert row["message_bytes"] == src["message_size"] * size
            assert row["gpus"] == src["num_gpus"]
            assert row["measured_s"] == pytest.approx(src["latency"] / 1e3, rel=1e-12)
    custom = df[df["framework"].str.endswith("_custom_allreduce")]
    assert custom.groupby(["gpu", "framework", "framework_version"]).size().to_dict() == {
        ("a100_sxm", "vllm_custom_allreduce", "0.14.0"): 138, ("h100_sxm", "vllm_custom_allreduce", "0.14.0"): 138,
        ("h100_sxm", "vllm_custom_allreduce", "0.24.0"): 138, ("h100_sxm", "trtllm_custom_allreduce", "1.3.0rc20"): 69}
    rel = "h100_sxm/comm/vllm/0.24.0/custom_allreduce_perf.parquet"
    raw = pd.read_parquet(AIC / rel)
    row, src = row_of(custom, f"{rel}#row41"), raw.iloc[41]
    assert row["message_bytes"] == src["message_size"] * 2 and row["dtype"] == "bf16"
    assert row["kernel"] == src["backend"] and row["op"] == "all_reduce"
    assert row["measured_s"] == pytest.approx(src["latency"] / 1e3, rel=1e-12)


def test_aic_missing_root(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        aic.load(tmp_path / "nowhere")
    monkeypatch.setattr(aic, "SHARED_ROOT", tmp_path / "no-shared")
    monkeypatch.setattr(aic.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="no-shared.*aiconfigurator_core"):
        aic.load()


@needs_aic
def test_aic_falls_back_to_installed_package(tmp_path, monkeypatch):
    """Without the shared copy the loader reads ``aiconfigurator_core/systems/data`` (same layout)."""
    package = tmp_path / "aiconfigurator_core"
    (package / "__init__.py").parent.mkdir()
    (package / "__init__.py").write_text("")
    rel = "h100_sxm/comm/nccl/2.27.3/nccl_perf.parquet"
    (package / "systems" / "data" / rel).parent.mkdir(parents=True)
    pd.read_parquet(AIC / rel).head(5).to_parquet(package / "systems" / "data" / rel)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(aic, "SHARED_ROOT", tmp_path / "no-shared")
    df = aic.load()
    assert len(df) == 5 and set(df["gpu"]) == {"h100_sxm"} and df["provenance"].iloc[0] == f"{rel}#row0"


def test_aic_missing_column_is_named(tmp_path):
    path = tmp_path / "a100_sxm" / "gemm" / "vllm" / "0.1" / "gemm_perf.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"gemm_dtype": ["bfloat16"], "m": [1], "n": [1], "k": [1], "kernel_source": ["x"]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"gemm_perf\.parquet.*'latency'"):
        aic.load(tmp_path)


# --------------------------------------------------------------------------------------------
# LLMCompass


@pytest.fixture(scope="module")
def llmc():
    return llmcompass.load(LLMC)


def raw_csv(name: str) -> pd.DataFrame:
    return pd.read_csv(LLMC / "real_hardware" / name, header=None, skipinitialspace=True)


@needs_llmc
def test_llmc_counts_and_schema(llmc):
    schema.validate(llmc, schema.KERNEL_COLUMNS, "kernel")
    assert set(llmc["framework"]) == {"pytorch"} and set(llmc["source"]) == {"llmcompass"}
    per_file = llmc["provenance"].str.split("#").str[0].value_counts().to_dict()
    assert per_file == {  # README row counts; transformer files keep 6 of their 12 rows
        "real_hardware/matmul_A100.csv": 20, "real_hardware/matmul_MI210.csv": 22,
        "real_hardware/softmax_A100.csv": 22, "real_hardware/softmax_MI210.csv": 22,
        "real_hardware/layernorm_A100.csv": 22, "real_hardware/layernorm_MI210.csv": 22,
        "real_hardware/gelu_A100.csv": 20, "real_hardware/gelu_MI210.csv": 20,
        "real_hardware/transformer_A100.csv": 6, "real_hardware/transformerAR_A100.csv": 6}
    assert set(llmc["gpu"]) == {"a100_sxm", "mi210"}
    only = llmcompass.load(LLMC, gpus="mi210")
    assert set(only["gpu"]) == {"mi210"} and len(only) == 22 + 22 + 22 + 20


@needs_llmc
def test_llmc_matmul_text_latency(llmc):
    raw = raw_csv("matmul_A100.csv")
    assert raw.iloc[0, 3] == "0.1900ms"
    row = row_of(llmc, "real_hardware/matmul_A100.csv#row0")
    assert row["measured_s"] == pytest.approx(0.19e-3, rel=1e-12)
    assert (row["m"], row["n"], row["k"], row["op"], row["gpu"]) == (64, 12288, 12288, "gemm", "a100_sxm")
    for name in ("matmul_A100.csv", "matmul_MI210.csv"):
        raw = raw_csv(name)
        mine = llmc[llmc["provenance"].str.startswith(f"real_hardware/{name}#")]
        tflops = raw[4].str.removesuffix("Tflops").astype(float).to_numpy()
        measured = 2 * mine["m"] * mine["n"] * mine["k"] / mine["measured_s"] / 1e12
        np.testing.assert_allclose(measured, tflops, rtol=3e-3)  # latency printed to 0.1 us


@needs_llmc
def test_llmc_throughput_to_seconds(llmc):
    for name, op in (("softmax_A100.csv", "softmax"), ("layernorm_MI210.csv", "layernorm")):
        raw = raw_csv(name)
        row = row_of(llmc, f"real_hardware/{name}#row5")
        m, n, throughput = raw.iloc[5]
        assert row["op"] == op and (row["m"], row["n"]) == (m, n)
        assert row["measured_s"] == pytest.approx(m * n / (throughput * 1e9), rel=1e-12)
    raw = raw_csv("gelu_A100.csv")
    row = row_of(llmc, "real_hardware/gelu_A100.csv#row19")
    elements, throughput = raw.iloc[19]
    assert (row["m"], row["n"]) == (1, elements)
    assert row["measured_s"] == pytest.approx(elements / (throughput * 1e9), rel=1e-12)


@needs_llmc
def test_llmc_transformer_rows(llmc):
    raw = raw_csv("transformer_A100.csv")[0]
    prefill = llmc[llmc["provenance"].str.startswith("real_hardware/transformer_A100.csv#")]
    qkv = row_of(prefill, "real_hardware/transformer_A100.csv#row0")
    assert qkv["measured_s"] == pytest.approx(raw[0] / 3, rel=1e-12)  # three equal projections
    assert (qkv["m"], qkv["n"], qkv["k"]) == (8 * 2048, 12288 / 4, 12288)
    w1 = row_of(prefill, "real_hardware/transformer_A100.csv#row4")
    assert w1["measured_s"] == raw[4] and (w1["n"], w1["k"]) == (12288, 12288)
    kept = {int(p.split("#row")[1]) for p in prefill["provenance"]}
    assert kept == {0, 3, 4, 5, 6, 9}  # no batched matmul, LayerNorm or hand-entered AllReduce rows
    decode = llmc[llmc["provenance"].str.startswith("real_hardware/transformerAR_A100.csv#")]
    softmax = row_of(decode, "real_hardware/transformerAR_A100.csv#row6")
    assert (softmax["m"], softmax["n"]) == (8 * 24, 2048 + 1024 + 1)
    assert softmax["measured_s"] == raw_csv("transformerAR_A100.csv")[0][6]


def test_llmc_missing_root(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="matmul_A100.csv"):
        llmcompass.load(tmp_path)
    monkeypatch.setattr(llmcompass, "SHARED_ROOT", tmp_path / "no-shared")
    with pytest.raises(FileNotFoundError, match="no-shared"):
        llmcompass.load()


@needs_llmc
def test_llmc_unknown_gpu():
    with pytest.raises(ValueError, match="h100"):
        llmcompass.load(LLMC, gpus=("h100",))
