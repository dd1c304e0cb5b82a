"""Hardware presets, workload construction and input validation."""

import math

import pytest

import jaxmodel as jm
from jaxmodel.hardware import Chip, Interconnect


def test_presets_load_and_match_datasheets():
    # Peaks derived from the microarchitecture agree with the datasheets to 0.1%.
    h100 = jm.load_hardware("h100-sxm").chip
    # NVIDIA H100 SXM datasheet: 1979 TFLOP/s BF16 with sparsity -> 989.4 dense; 3.35 TB/s.
    assert float(h100.tensor_flops["bf16"]) == pytest.approx(989.4e12, rel=1e-3)
    assert float(h100.mem_bw_Bps) == pytest.approx(3.35e12, rel=1e-3)
    # SPAD Table 3 derives the H100's FP32 vector peak as 66.9 TFLOP/s.
    assert float(h100.vector_flops) == pytest.approx(66.9e12, rel=1e-3)
    a100 = jm.load_hardware("a100-sxm-80gb").chip
    assert float(a100.tensor_flops["bf16"]) == pytest.approx(312e12, rel=1e-3)
    assert float(a100.mem_bw_Bps) == pytest.approx(2.039e12, rel=1e-3)
    assert float(a100.vector_flops) == pytest.approx(19.5e12, rel=1e-3)
    assert set(jm.list_hardware()) >= {"a100-sxm-80gb", "h100-sxm", "h200-sxm", "b200"}


def test_tensor_peak_falls_back_to_the_path_a_chip_has():
    a100 = jm.load_hardware("a100-sxm-80gb").chip
    # No FP8 units on A100: FP8 models run through the BF16 path.
    assert float(a100.tensor_peak("fp8")) == float(a100.tensor_peak("bf16"))
    h100 = jm.load_hardware("h100-sxm").chip
    assert float(h100.tensor_peak("fp8")) == pytest.approx(1978.9e12, rel=1e-3)
    assert float(h100.tensor_peak("fp16")) == float(h100.tensor_peak("bf16"))
    with pytest.raises(ValueError, match="no tensor peak usable for compute dtype 'fp32'"):
        Chip({"bf16": 1e15}, 1e13, 1e12, 1e10).tensor_peak("fp32")


@pytest.mark.parametrize("kwargs,message", [
    (dict(mem_bw_Bps=-1.0), r"Chip.mem_bw_Bps must be > 0 \(got -1.0\)"),
    (dict(mem_bw_Bps=math.nan), "Chip.mem_bw_Bps must be finite"),
    (dict(vector_flops=0.0), "Chip.vector_flops must be > 0"),
    (dict(tensor_flops={"bf17": 1.0}), "tensor_flops key must be one of"),
    (dict(tensor_flops={"bf16": -5.0}), "tensor_flops\\['bf16'\\] must be > 0"),
])
def test_bad_chip(kwargs, message):
    spec = dict(tensor_flops={"bf16": 1e15}, vector_flops=1e13, mem_bw_Bps=1e12, mem_capacity_bytes=1e10)
    spec.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Chip(**spec)


def test_bad_interconnect():
    with pytest.raises(ValueError, match="Interconnect.link_latency_s must be >= 0"):
        Interconnect(1e9, -1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(batch=0), "Workload.batch must be > 0"),
    (dict(batch=2.5), "Workload.batch must be a whole number"),
    (dict(input_tokens=math.inf), "Workload.input_tokens must be finite"),
    (dict(tp=-4), "Workload.tp must be > 0"),
    (dict(dtype="bf8"), "Workload.dtype must be one of"),
    (dict(kv_dtype="int3"), "Workload.kv_dtype must be one of"),
    (dict(memory_utilization=1.2), "Workload.memory_utilization must be > 0 and <= 1"),
    (dict(attention_impl="paged"), "Workload.attention_impl must be one of"),
])
def test_bad_workload(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jm.Workload(**kwargs)


def test_dtypes_set_bytes_and_compute_path():
    wl = jm.Workload(dtype="fp8", weight_dtype="int4", kv_dtype="fp8")
    assert (float(wl.weight_bytes), float(wl.act_bytes), float(wl.kv_bytes)) == (0.5, 1.0, 1.0)
    assert wl.compute_dtype == "fp8"
    assert float(jm.Workload(tp=2, pp=3, ep=4).devices) == 24


def test_efficiency_ranges():
    with pytest.raises(ValueError, match="Efficiency.memory must be > 0 and <= 1"):
        jm.Efficiency(memory=1.5)
    assert float(jm.load_calibration("ideal").tensor) == 1.0
    with pytest.raises(ValueError, match="unknown calibration"):
        jm.load_calibration("h100-vllm-2019")
