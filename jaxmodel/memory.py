"""Device memory: weights, KV cache and activations per device, a fits flag, the largest batch.

Per-device layout follows :mod:`jaxmodel.workload`: TP shards attention heads, FFN widths
and the vocabulary; EP divides routed experts (attention and dense layers replicated);
PP gives each stage ``ceil(n_layers / pp)`` layers at most, plus the embedding (first
stage) or LM head (last stage).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from . import ops
from .architectures import NORM_PARAMS, Architecture, attention_parameters, ssm_parameters, ssm_sizes
from .smooth import ceil_straight_through
from .workload import Workload


def stage_layer_fraction(arch: Architecture, wl: Workload) -> jax.Array:
    """Share of the model's layers held by the fullest pipeline stage (exactly 1 without PP)."""
    return ceil_straight_through(arch.n_layers / wl.pp) / arch.n_layers


def weight_bytes_per_device(arch: Architecture, wl: Workload) -> jax.Array:
    """Bytes of parameters stored on the fullest device."""
    tp, ep, d = wl.tp, wl.ep, arch.d_model
    up = arch.ffn_up_matrices
    norms = arch.norms_per_layer * NORM_PARAMS[arch.norm] * d
    dense_ffn = (up + 1.0) * d * arch.d_ff / tp + arch.linear_bias * (up * arch.d_ff / tp + d)
    if arch.ssm is None:
        attention = attention_parameters(arch, tp) + norms
        layers = arch.n_layers * attention + arch.n_dense_layers * dense_ffn
    else:
        layers = (arch.n_attention_layers * attention_parameters(arch, tp) + arch.n_ssm_layers * ssm_parameters(arch, tp)
                  + arch.n_layers * norms + arch.n_dense_layers * (arch.d_ff > 0) * dense_ffn)
    if arch.moe:
        experts = arch.n_experts / ep * (up + 1.0) * d * arch.moe_d_ff / tp
        shared = arch.n_shared_experts * (up + 1.0) * d * arch.shared_d_ff / tp
        router = d * arch.n_experts
        layers = layers + arch.n_moe_layers * (experts + shared + router)
    embedding = arch.vocab_size * d / tp + arch.n_learned_positions * d
    lm_head = (1.0 - arch.tied_embeddings) * arch.vocab_size * d / tp + NORM_PARAMS[arch.norm] * d
    # A single stage holds both ends; otherwise the first holds the embedding, the last the head.
    ends = jnp.where(wl.pp > 1, jnp.maximum(embedding, lm_head), embedding + lm_head)
    return (stage_layer_fraction(arch, wl) * layers + ends) * wl.stored_weight_bytes


def kv_elements_per_token_layer(arch: Architecture, wl: Workload) -> jax.Array:
    """KV-cache elements one device stores per token per layer."""
    if arch.attention == "gqa":
        # Cross-layer sharing: one cache per kv_share_group layers (average per layer).
        return 2.0 * jnp.maximum(arch.n_kv_heads / wl.tp, 1.0) * arch.head_dim / arch.kv_share_group
    # The MLA latent is shared by all heads and replicated on every TP rank.
    return arch.kv_lora_rank + arch.qk_rope_head_dim


def kv_cache_bytes_per_device(arch: Architecture, wl: Workload, batch, context) -> jax.Array:
    """KV cache of ``batch`` sequences holding ``context`` tokens each (of which a KV-pruning
    policy keeps ``wl.kv_keep``), on the fullest device, plus the recurrent state of the SSM
    layers (:func:`ssm_state_bytes_per_device`; it does not depend on ``context``)."""
    context = context * wl.kv_keep
    window = arch.sliding_window
    windowed = jnp.where(window > 0, jnp.minimum(context, window), context)
    token_layers = (arch.n_attention_layers - arch.n_sliding_layers) * context + arch.n_sliding_layers * windowed
    seqs = batch / wl.ep
    kv = (seqs * token_layers * stage_layer_fraction(arch, wl)
          * kv_elements_per_token_layer(arch, wl) * wl.kv_bytes)
    if arch.ssm is None:
        return kv
    return kv + ssm_state_bytes_per_device(arch, wl, batch)


def ssm_state_elements_per_layer(arch: Architecture, wl: Workload) -> jax.Array:
    """Recurrent-state elements one device keeps per sequence per SSM layer: the last
    ``d_conv - 1`` inputs of every convolved channel plus the scan state (d_inner·N)."""
    z = ssm_sizes(arch, wl.tp)
    return (arch.ssm_d_conv - 1.0) * z["conv_channels"] + z["state"]


def ssm_state_bytes_per_device(arch: Architecture, wl: Workload, batch) -> jax.Array:
    """SSM state of ``batch`` sequences on the fullest device (0 without an SSM).

    A fixed size per sequence, whatever its length (Mamba's constant-memory inference). It
    is stored at ``wl.kv_bytes`` per element: vLLM's ``mamba_cache_dtype="auto"`` keeps it in
    the model's cache dtype unless told otherwise; for an fp32 scan state set ``kv_dtype``.
    Split like the KV cache: TP shards channels/heads, EP splits sequences, PP layers.
    """
    if arch.ssm is None:
        return jnp.zeros_like(arch.d_model)
    seqs = batch / wl.ep
    return (seqs * arch.n_ssm_layers * stage_layer_fraction(arch, wl)
            * ssm_state_elements_per_layer(arch, wl) * wl.kv_bytes)


def activation_bytes(table: ops.OpTable, arch: Architecture, wl: Workload, tokens) -> jax.Array:
    """Peak transient activation memory of a step: the largest operator's inputs and outputs,
    plus the residual stream that lives across it."""
    sizes = [b for row, b in zip(table.rows, table.act_bytes) if row.kind != ops.COLLECTIVE]
    largest = functools.reduce(jnp.maximum, sizes)
    # With sequence parallelism each TP rank keeps only its 1/tp share of the residual stream.
    residual_tokens = tokens / wl.ep / (wl.tp if wl.sequence_parallel else 1.0)
    return largest + residual_tokens * arch.d_model * wl.act_bytes
