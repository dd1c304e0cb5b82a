"""Architecture descriptions: published parameter counts, hand-computed oracles, input errors."""

import math

import jax
import pytest

import jaxmodel as jm
from jaxmodel.architectures import Architecture

# (preset, published total parameters, published active parameters or None, source)
PUBLISHED = [
    ("llama-2-7b", 6_738_415_616, None, "HF meta-llama/Llama-2-7b-hf safetensors total"),
    ("llama-2-70b", 68_976_648_192, None, "HF meta-llama/Llama-2-70b-hf safetensors total"),
    ("llama-3-8b", 8_030_261_248, None, "HF meta-llama/Meta-Llama-3-8B safetensors total"),
    ("llama-3-70b", 70_553_706_496, None, "HF meta-llama/Meta-Llama-3-70B safetensors total"),
    ("llama-3.1-405b", 405_853_388_800, None, "HF meta-llama/Llama-3.1-405B safetensors total"),
    ("bloom-176b", 176_247_271_424, None, "BigScience BLOOM model card: 176,247,271,424 parameters"),
    ("gpt3-175b", 175.0e9, None, "Brown et al. 2020, Table 2.1: GPT-3 175.0B"),
    ("mixtral-8x7b", 46.7e9, 12.9e9, "Mistral AI, 'Mixtral of experts' (2023): 46.7B total, 12.9B per token"),
    ("mixtral-8x22b", 141e9, 39e9, "Mistral AI, 'Cheaper, Better, Faster, Stronger' (2024): 141B total, 39B active"),
    ("deepseek-v2", 236e9, 21e9, "DeepSeek-V2 paper (arXiv 2405.04434): 236B total, 21B activated"),
    ("deepseek-v3", 671e9, 37e9, "DeepSeek-V3 report (arXiv 2412.19437): 671B total, 37B activated"),
    ("qwen2-72b", 72.7e9, None, "HF Qwen/Qwen2-72B model page: 72.7B params"),
    ("mamba-2.8b", 2.77e9, None, "HF state-spaces/mamba-2.8b-hf model page: 2.77B params"),
    ("falcon-mamba-7b", 7.27e9, None, "HF tiiuae/falcon-mamba-7b model page: 7.27B params"),
    ("mamba2-2.7b", 2.7e9, None, "Dao & Gu 2024 (arXiv 2405.21060) / HF state-spaces/mamba2-2.7b: 2.7B"),
    ("jamba-v0.1", 51.6e9, 12e9, "Lieber et al. 2024 (arXiv 2403.19887) and HF ai21labs/Jamba-v0.1: "
                                 "51.6B total, 12B active"),
]


@pytest.mark.parametrize("name,total,active,source", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_preset_parameter_counts_match_published(name, total, active, source):
    arch = jm.load_model(name)
    assert float(jm.total_parameters(arch)) == pytest.approx(total, rel=0.01), source
    if active is not None:
        # Published "active" counts round to the billion and differ on whether embeddings
        # count as active, hence 3%.
        assert float(jm.active_parameters(arch)) == pytest.approx(active, rel=0.03), source


def test_every_preset_is_tested():
    assert sorted(p[0] for p in PUBLISHED) == jm.list_models()


def test_llama_counts_are_exact():
    # Hand count for Llama-3-8B: per layer q/o 4096^2 each, k/v 4096x1024 each, three
    # 4096x14336 FFN matrices, two RMSNorm vectors; untied 128256x4096 embedding and head.
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    expected = 32 * layer + 2 * 128256 * 4096 + 4096
    with jax.enable_x64(True):
        assert int(jm.total_parameters(jm.load_model("llama-3-8b"))) == expected == 8_030_261_248


def test_mla_count_by_hand():
    # One DeepSeek-V3 attention layer (MLA), counted by hand from the published shapes.
    d, h, qr, kvr, nope, rope, v = 7168, 128, 1536, 512, 128, 64, 128
    q = d * qr + qr + qr * h * (nope + rope)
    kv = d * (kvr + rope) + kvr + kvr * h * (nope + v)
    o = h * v * d
    arch = jm.load_model("deepseek-v3")
    got = float(jm.parameter_breakdown(arch)["attention_per_layer"])
    assert got == q + kv + o


def test_moe_active_fraction():
    arch = jm.load_model("mixtral-8x7b")
    p = jm.parameter_breakdown(arch)
    # Routed experts dominate: 8 experts of 3*4096*14336 each per layer.
    assert float(p["expert"]) == 3 * 4096 * 14336
    assert float(jm.active_parameters(arch)) < 0.3 * float(jm.total_parameters(arch))


def test_tied_embeddings_halve_the_vocabulary_matrices():
    untied = jm.load_model("llama-3-8b")
    tied = untied.replace(tied_embeddings=1)
    diff = float(jm.total_parameters(untied)) - float(jm.total_parameters(tied))
    assert diff == 128256 * 4096


def test_mha_gqa_mqa_kv_cache_sizes():
    base = dict(d_model=4096, n_layers=2, vocab_size=100, n_heads=32, head_dim=128, d_ff=1024)
    for kv in (32, 8, 1):
        arch = Architecture(n_kv_heads=kv, **base)
        assert float(arch.kv_cache_elements_per_token_layer) == 2 * kv * 128
    mla = jm.load_model("deepseek-v2")
    assert float(mla.kv_cache_elements_per_token_layer) == 512 + 64


BAD = [
    (dict(d_model=0), "d_model must be > 0"),
    (dict(n_layers=-2), "n_layers must be > 0"),
    (dict(n_heads=2.5), "n_heads must be a whole number"),
    (dict(d_model=math.nan), "d_model must be finite"),
    (dict(n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(n_kv_heads=64), "n_kv_heads must be <= n_heads"),
    (dict(attention="linear"), "attention must be one of"),
    (dict(activation="swish3"), "activation must be one of"),
    (dict(rotary_fraction=1.5), "rotary_fraction must be >= 0 and <= 1"),
    (dict(moe=True, n_experts=8, top_k=9, moe_d_ff=64), "top_k must be <= n_experts"),
    (dict(n_dense_layers=1), "n_dense_layers must equal n_layers"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_architecture_is_a_clear_error(change, message):
    spec = dict(d_model=64, n_layers=4, vocab_size=100, n_heads=4, n_kv_heads=2, d_ff=128)
    spec.update(change)
    with pytest.raises(ValueError, match=message):
        Architecture(**spec)


def test_unknown_preset_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean llama-3-70b"):
        jm.load_model("llama-3-7b")


def test_unknown_preset_field_is_rejected():
    from jaxmodel.architectures import architecture_from_dict

    with pytest.raises(ValueError, match="unknown architecture field"):
        architecture_from_dict(dict(d_model=64, n_layers=1, vocab_size=10, n_heads=1, d_ff=8, dmodel=3))
