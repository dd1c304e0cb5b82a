"""Import a HuggingFace ``config.json`` into an :class:`~jaxmodel.architectures.Architecture`.

Supported ``model_type`` values: llama, mistral, mixtral, qwen2, gemma2, deepseek_v2,
deepseek_v3, bloom, and the state-space families mamba, falcon_mamba, mamba2 and jamba. An
unknown type or a missing required field is a ``ValueError`` that names the file and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .architectures import Architecture

_ACTIVATIONS = {
    "silu": "silu", "swish": "silu", "swiglu": "silu",
    "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "relu": "relu",
}


class _Config:
    """Field access that reports the file and the field on a missing or null value."""

    def __init__(self, data: dict, origin: str):
        self.data, self.origin = data, origin

    def req(self, *names):
        for name in names:
            if self.data.get(name) is not None:
                return self.data[name]
        raise ValueError(f"{self.origin}: missing required field {' or '.join(repr(n) for n in names)}")

    def opt(self, name, default):
        value = self.data.get(name)
        return default if value is None else value

    def activation(self, *names, default="silu"):
        raw = next((self.data[n] for n in names if self.data.get(n) is not None), default)
        if raw not in _ACTIVATIONS:
            raise ValueError(f"{self.origin}: unsupported activation {raw!r}; supported: {sorted(_ACTIVATIONS)}")
        return _ACTIVATIONS[raw]


def _llama_like(c: _Config, **extra) -> dict:
    heads = c.req("num_attention_heads")
    hidden = c.req("hidden_size")
    spec = dict(
        d_model=hidden,
        n_layers=c.req("num_hidden_layers"),
        vocab_size=c.req("vocab_size"),
        n_heads=heads,
        n_kv_heads=c.opt("num_key_value_heads", heads),
        head_dim=c.opt("head_dim", hidden // heads),
        d_ff=c.req("intermediate_size"),
        tied_embeddings=int(bool(c.opt("tie_word_embeddings", False))),
        qkv_bias=int(bool(c.opt("attention_bias", False))),
        linear_bias=int(bool(c.opt("mlp_bias", False))),
        activation=c.activation("hidden_act", "hidden_activation"),
        attention="gqa", ffn="gated", norm="rmsnorm",
    )
    spec.update(extra)
    return spec


def _llama(c):
    return _llama_like(c)


def _mistral(c):
    window = c.opt("sliding_window", 0)
    return _llama_like(c, sliding_window=window, n_sliding_layers=c.req("num_hidden_layers") if window else 0)


def _mixtral(c):
    spec = _mistral(c)
    spec.update(moe=True, n_experts=c.req("num_local_experts"), top_k=c.req("num_experts_per_tok"),
                moe_d_ff=spec.pop("d_ff"), n_dense_layers=0)
    return spec


def _qwen2(c):
    layers = c.req("num_hidden_layers")
    sliding = bool(c.opt("use_sliding_window", False))
    window = c.opt("sliding_window", 0) if sliding else 0
    # Layers from max_window_layers upward use the window (transformers' Qwen2 convention).
    n_sliding = max(layers - c.opt("max_window_layers", layers), 0) if window else 0
    return _llama_like(c, qkv_bias=1, sliding_window=window, n_sliding_layers=n_sliding)


def _gemma2(c):
    layers = c.req("num_hidden_layers")
    window = c.opt("sliding_window", 0)
    # Gemma-2 alternates sliding-window (even-indexed) and global layers, and wraps both
    # sub-blocks in pre- and post-norms (four norms per layer).
    return _llama_like(
        c, tied_embeddings=int(bool(c.opt("tie_word_embeddings", True))), norms_per_layer=4,
        sliding_window=window, n_sliding_layers=(layers + 1) // 2 if window else 0,
        activation=c.activation("hidden_activation", "hidden_act", default="gelu_pytorch_tanh"),
    )


def _deepseek(c):
    layers = c.req("num_hidden_layers")
    if c.opt("moe_layer_freq", 1) != 1:
        raise ValueError(f"{c.origin}: moe_layer_freq != 1 (interleaved MoE layers) is not supported")
    experts = c.opt("n_routed_experts", 0)
    spec = dict(
        attention="mla", ffn="gated", norm="rmsnorm", activation=c.activation("hidden_act"),
        d_model=c.req("hidden_size"), n_layers=layers, vocab_size=c.req("vocab_size"),
        n_heads=c.req("num_attention_heads"), d_ff=c.req("intermediate_size"),
        tied_embeddings=int(bool(c.opt("tie_word_embeddings", False))),
        q_lora_rank=c.opt("q_lora_rank", 0), kv_lora_rank=c.req("kv_lora_rank"),
        qk_nope_head_dim=c.req("qk_nope_head_dim"), qk_rope_head_dim=c.req("qk_rope_head_dim"),
        v_head_dim=c.req("v_head_dim"),
    )
    if experts:
        spec.update(
            moe=True, n_experts=experts, top_k=c.req("num_experts_per_tok"),
            n_shared_experts=c.opt("n_shared_experts", 0), moe_d_ff=c.req("moe_intermediate_size"),
            n_dense_layers=c.opt("first_k_dense_replace", 0),
        )
    return spec


def _bloom(c):
    hidden = c.req("hidden_size", "n_embed")
    heads = c.req("n_head", "num_attention_heads")
    return dict(
        attention="gqa", ffn="plain", activation="gelu_tanh", norm="layernorm",
        d_model=hidden, n_layers=c.req("n_layer", "num_hidden_layers"), vocab_size=c.req("vocab_size"),
        n_heads=heads, n_kv_heads=heads, head_dim=hidden // heads, d_ff=4 * hidden,
        tied_embeddings=int(bool(c.opt("tie_word_embeddings", True))), qkv_bias=1, linear_bias=1,
        rotary_fraction=0.0,
    )


def _dt_rank(c: _Config, key: str, hidden) -> int:
    """Mamba's step-size rank; ``"auto"`` means ceil(d_model / 16) (Gu & Dao 2023, as in HF)."""
    rank = c.opt(key, "auto")
    return math.ceil(hidden / 16) if rank == "auto" else rank


def _no_proj_bias(c: _Config, key: str) -> None:
    if c.opt(key, False):
        raise ValueError(f"{c.origin}: {key}=true (biased SSM in/out projections) is not supported")


def _pure_ssm(c: _Config, hidden, layers, kind: str) -> dict:
    """The part every pure SSM model shares: no attention, no FFN, one RMSNorm per block."""
    return dict(
        ssm=kind, attention="gqa", ffn="gated", activation="silu", norm="rmsnorm",
        d_model=hidden, n_layers=layers, n_ssm_layers=layers, vocab_size=c.req("vocab_size"),
        n_heads=0, n_kv_heads=0, head_dim=0, d_ff=0, norms_per_layer=1,
        tied_embeddings=int(bool(c.opt("tie_word_embeddings", True))),
    )


def _mamba(c):
    hidden = c.req("hidden_size")
    _no_proj_bias(c, "use_bias")
    # intermediate_size, when given, is d_inner itself (falcon-mamba states both it and an
    # ``expand`` that does not match); otherwise d_inner = expand x hidden.
    inner = c.opt("intermediate_size", c.opt("expand", 2) * hidden)
    spec = _pure_ssm(c, hidden, c.req("num_hidden_layers"), "mamba1")
    spec.update(ssm_d_state=c.req("state_size"), ssm_d_conv=c.opt("conv_kernel", 4), ssm_expand=inner / hidden,
                ssm_dt_rank=_dt_rank(c, "time_step_rank", hidden))
    return spec


def _mamba2(c):
    hidden = c.req("hidden_size")
    _no_proj_bias(c, "use_bias")
    heads, head_dim, expand = c.req("num_heads"), c.req("head_dim"), c.opt("expand", 2)
    if heads * head_dim != expand * hidden:
        raise ValueError(f"{c.origin}: num_heads x head_dim = {heads * head_dim} must equal expand x hidden_size "
                         f"= {expand * hidden}")
    spec = _pure_ssm(c, hidden, c.req("num_hidden_layers"), "mamba2")
    spec.update(ssm_d_state=c.req("state_size"), ssm_d_conv=c.opt("conv_kernel", 4), ssm_expand=expand,
                ssm_head_dim=head_dim, ssm_n_groups=c.opt("n_groups", 1), ssm_chunk=c.opt("chunk_size", 256))
    return spec


def _layers_every(layers: int, period: int, offset: int, c: _Config, what: str) -> int:
    """How many of layers 0..L-1 satisfy i % period == offset (Jamba's interleaving rule)."""
    if not (isinstance(period, int) and period > 0 and 0 <= offset < period):
        raise ValueError(f"{c.origin}: {what}_layer_period must be a positive integer and "
                         f"{what}_layer_offset in [0, period) (got {period!r}, {offset!r})")
    return sum(1 for i in range(layers) if i % period == offset)


def _jamba(c):
    layers, hidden = c.req("num_hidden_layers"), c.req("hidden_size")
    _no_proj_bias(c, "mamba_proj_bias")
    attn = _layers_every(layers, c.req("attn_layer_period"), c.req("attn_layer_offset"), c, "attn")
    experts = c.opt("num_experts", 1)
    n_moe = _layers_every(layers, c.req("expert_layer_period"), c.req("expert_layer_offset"), c, "expert") \
        if experts > 1 else 0
    heads = c.req("num_attention_heads")
    spec = dict(
        ssm="mamba1", attention="gqa", ffn="gated", norm="rmsnorm", activation=c.activation("hidden_act"),
        d_model=hidden, n_layers=layers, n_ssm_layers=layers - attn, vocab_size=c.req("vocab_size"),
        n_heads=heads, n_kv_heads=c.opt("num_key_value_heads", heads), head_dim=hidden // heads,
        rotary_fraction=0.0,  # Jamba's attention layers use no positional encoding
        d_ff=c.req("intermediate_size"), tied_embeddings=int(bool(c.opt("tie_word_embeddings", False))),
        ssm_d_state=c.req("mamba_d_state"), ssm_d_conv=c.req("mamba_d_conv"), ssm_expand=c.req("mamba_expand"),
        ssm_dt_rank=_dt_rank(c, "mamba_dt_rank", hidden),
    )
    if n_moe:
        spec.update(moe=True, n_experts=experts, top_k=c.req("num_experts_per_tok"), moe_d_ff=spec["d_ff"],
                    n_dense_layers=layers - n_moe)
    return spec


_FAMILIES = {
    "llama": _llama, "mistral": _mistral, "mixtral": _mixtral, "qwen2": _qwen2, "gemma2": _gemma2,
    "deepseek_v2": _deepseek, "deepseek_v3": _deepseek, "bloom": _bloom,
    "mamba": _mamba, "falcon_mamba": _mamba, "mamba2": _mamba2, "jamba": _jamba,
}
SUPPORTED_MODEL_TYPES = tuple(sorted(_FAMILIES))


def architecture_spec_from_hf(config: dict, origin: str = "config.json") -> dict:
    """Constructor arguments of :class:`Architecture` for a parsed HF config dictionary."""
    model_type = config.get("model_type")
    if model_type not in _FAMILIES:
        raise ValueError(
            f"{origin}: unsupported model_type {model_type!r}; supported: {list(SUPPORTED_MODEL_TYPES)}"
        )
    return _FAMILIES[model_type](_Config(config, origin))


def load_hf_config(path) -> Architecture:
    """Read a ``config.json`` (or a directory holding one) into an :class:`Architecture`."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"no HuggingFace config at {path}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    return Architecture(**architecture_spec_from_hf(config, str(path)))
