"""HuggingFace config.json import: every supported family, errors naming file and field."""

import json

import jax
import numpy as np
import pytest

import jaxmodel as jm
from jaxmodel.hf_config import SUPPORTED_MODEL_TYPES, load_hf_config

from .conftest import DATA

CONFIGS = DATA / "hf_configs"


def _leaves_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.allclose(x, y) for x, y in zip(la, lb))


@pytest.mark.parametrize("config,preset", [
    ("llama-3-8b.json", "llama-3-8b"),
    ("mixtral-8x7b.json", "mixtral-8x7b"),
    ("qwen2-72b.json", "qwen2-72b"),
    ("deepseek-v3.json", "deepseek-v3"),
    ("bloom.json", "bloom-176b"),
])
def test_import_equals_preset(config, preset):
    assert _leaves_equal(load_hf_config(CONFIGS / config), jm.load_model(preset))


def test_path_works_wherever_a_model_name_does():
    assert _leaves_equal(jm.load_model(str(CONFIGS / "llama-3-8b.json")), jm.load_model("llama-3-8b"))


@pytest.mark.parametrize("config,total,source", [
    ("mistral-7b-v0.1.json", 7_241_732_096, "HF mistralai/Mistral-7B-v0.1 safetensors total"),
    ("gemma-2-9b.json", 9_241_705_984, "HF google/gemma-2-9b safetensors total"),
])
def test_families_without_presets(config, total, source):
    with jax.enable_x64(True):
        arch = load_hf_config(CONFIGS / config)
        assert int(jm.total_parameters(arch)) == total, source


def test_sliding_window_layers():
    mistral = load_hf_config(CONFIGS / "mistral-7b-v0.1.json")
    assert float(mistral.sliding_window) == 4096 and float(mistral.n_sliding_layers) == 32
    gemma = load_hf_config(CONFIGS / "gemma-2-9b.json")
    # Gemma-2 alternates local (sliding 4096) and global layers.
    assert float(gemma.n_sliding_layers) == 21 and float(gemma.norms_per_layer) == 4


def test_unknown_model_type(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "rwkv", "hidden_size": 4}))
    with pytest.raises(ValueError, match="unsupported model_type 'rwkv'"):
        load_hf_config(tmp_path)
    assert "llama" in SUPPORTED_MODEL_TYPES


def test_missing_field_names_file_and_field(tmp_path):
    cfg = json.loads((CONFIGS / "llama-3-8b.json").read_text())
    del cfg["intermediate_size"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json: missing required field 'intermediate_size'"):
        load_hf_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no HuggingFace config"):
        load_hf_config(tmp_path / "nope.json")
