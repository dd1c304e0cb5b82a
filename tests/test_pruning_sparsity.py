"""KV-cache pruning (Workload.kv_keep) and weight sparsity (Workload.weight_density), GenZ
Table V: pruning cuts KV storage and attention work, sparsity cuts weight bytes, not FLOPs."""

import pytest

import jaxmodel as jm
from jaxmodel import inference


@pytest.fixture(scope="module")
def setup():
    return jm.load_model("llama-3-8b"), jm.load_hardware("h100-sxm").datasheet()


def test_kv_pruning_halves_the_cache_and_the_decode_context(setup):
    arch, system = setup
    full = jm.Workload(batch=16, input_tokens=4096, output_tokens=512)
    pruned = jm.Workload(batch=16, input_tokens=4096, output_tokens=512, kv_keep=0.5)
    a, b = jm.predict(arch, full, system), jm.predict(arch, pruned, system)
    assert b["kv_cache_bytes"] == pytest.approx(0.5 * a["kv_cache_bytes"], rel=1e-6)
    assert b["prefill_s"] == pytest.approx(a["prefill_s"], rel=1e-6)  # the prompt is still attended in full
    # A decode step over the kept half equals an unpruned step at half the context.
    half, _ = inference.decode(arch, full, system, jm.ideal(), context=0.5 * (4096 + 256))
    assert b["tpot_s"] == pytest.approx(float(half), rel=1e-6)
    assert b["tpot_s"] < a["tpot_s"]


def test_weight_sparsity_cuts_bytes_not_flops(setup):
    arch, system = setup
    dense = jm.Workload(batch=1, input_tokens=512, output_tokens=64)
    sparse = jm.Workload(batch=1, input_tokens=512, output_tokens=64, weight_density=0.5625)  # 2:4 + indices
    a, b = jm.predict(arch, dense, system), jm.predict(arch, sparse, system)
    assert b["weight_bytes"] == pytest.approx(0.5625 * a["weight_bytes"], rel=1e-6)
    ta, tb = jm.breakdown(arch, dense, system), jm.breakdown(arch, sparse, system)
    assert (ta["flops"] == tb["flops"]).all()
    assert tb["weight_bytes"].sum() == pytest.approx(0.5625 * ta["weight_bytes"].sum(), rel=1e-6)
    # Batch-1 decode streams the weights: the step shrinks nearly in proportion.
    assert 0.5625 < b["tpot_s"] / a["tpot_s"] < 0.6


@pytest.mark.parametrize("field", ["kv_keep", "weight_density"])
@pytest.mark.parametrize("value", [0.0, 1.5])
def test_fractions_are_checked(field, value):
    with pytest.raises(ValueError, match=f"Workload.{field} must be > 0 and <= 1"):
        jm.Workload(**{field: value})
