"""Device memory: weights, KV cache and activations per device, a fits flag, the largest batch;
and their placement across device memory and a slower offload tier (:func:`offload_plan`).

Per-device layout follows :mod:`jaxmodel.workload`: TP shards attention heads, FFN widths
and the vocabulary; EP divides routed experts (attention and dense layers replicated);
PP gives each stage ``ceil(n_layers / pp)`` layers at most, plus the embedding (first
stage) or LM head (last stage).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import ops
from .architectures import (NORM_PARAMS, Architecture, attention_parameters, layer_mixer_parameters,
                            ssm_parameters, ssm_sizes)
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
    layers = (layer_mixer_parameters(arch, attention_parameters(arch, tp), ssm_parameters(arch, tp), norms)
              + arch.n_dense_ffn_layers * dense_ffn)
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


# ---- the offload tier --------------------------------------------------------------------
class Footprint(NamedTuple):
    """Bytes one device needs for a point (all tiers together; see :func:`footprint`)."""

    weights: jax.Array
    kv: jax.Array
    activations: jax.Array


def footprint(arch: Architecture, wl: Workload, prefill_table: ops.OpTable | None = None,
              devices_per_node=8.0) -> Footprint:
    """Weights, KV cache (every sequence at its full length, beams included) and peak
    activations of a prefill micro-batch, on the fullest device.

    ``prefill_table`` is the op table of one prefill micro-batch (built here if not given;
    only its activation bytes are used).
    """
    m = jnp.minimum(wl.pp, wl.batch)
    weights = weight_bytes_per_device(arch, wl)
    # Beams share their prompt's cache; each extra beam keeps its own generated tokens'.
    kv = (kv_cache_bytes_per_device(arch, wl, wl.batch, wl.input_tokens + wl.output_tokens)
          + kv_cache_bytes_per_device(arch, wl, wl.batch * (wl.beam_width - 1.0), wl.output_tokens))
    if prefill_table is None:
        prefill_table = ops.build_op_table(arch, wl, ops.prefill_step(wl, wl.batch / m), devices_per_node,
                                           groups=("prompt",))
    acts = activation_bytes(prefill_table, arch, wl, wl.batch / m * wl.input_tokens)
    return Footprint(weights, kv, acts)


def _share(excess, available):
    """Least share of ``available`` bytes covering ``excess`` bytes (clipped to [0, 1])."""
    return jnp.clip(excess / jnp.where(available > 0, available, 1.0), 0.0, 1.0)


def plan_slack(usable: jax.Array) -> jax.Array:
    """Relative headroom an automatic plan leaves in device memory: four roundings of the
    dtype (5e-7 in float32, where one ulp of 80 GB is 8 KB; 9e-16 in float64), so that
    rounding cannot leave a planned point a few bytes over capacity."""
    return 4.0 * jnp.finfo(jnp.result_type(usable)).eps


def offload_plan(arch: Architecture, wl: Workload, system, prefer: str = "kv",
                 need: Footprint | None = None) -> tuple[jax.Array, jax.Array]:
    """Least ``(offload_weights, offload_kv)`` that make the point fit device memory.

    Device memory is filled first: with ``E = W + KV + A - U`` bytes over the usable
    capacity ``U = capacity · memory_utilization`` (activations ``A`` always stay on the
    device; a point over capacity is brought to ``U·(1 - plan_slack)``), ``prefer="kv"``
    moves ``min(E, KV)`` bytes of KV cache and then the rest of
    ``E`` from the weights; ``prefer="weights"`` the other way round. Both are zero when the
    point already fits. A point that cannot fit (activations alone exceed ``U``) gets
    everything offloaded and is flagged by :func:`jaxmodel.inference.memory_metrics`, as is
    a plan that overflows the tier's capacity. Traced: vmappable and differentiable
    (piecewise linear in the sizes).
    """
    if prefer not in ("kv", "weights"):
        raise ValueError(f"offload_plan: prefer must be 'kv' or 'weights' (got {prefer!r})")
    need = footprint(arch, wl, None, system.devices_per_node) if need is None else need
    usable = system.chip.mem_capacity_bytes * wl.memory_utilization
    total = need.weights + need.kv + need.activations
    excess = jnp.where(total > usable, total - usable * (1.0 - plan_slack(usable)), 0.0)
    first, second = (need.kv, need.weights) if prefer == "kv" else (need.weights, need.kv)
    f_first = _share(excess, first)
    f_second = _share(excess - first, second)
    return (f_second, f_first) if prefer == "kv" else (f_first, f_second)


#: Workload.offload_policy -> which kind offload_plan moves first.
_PREFER = {"auto_kv": "kv", "auto_weights": "weights"}


def place(arch: Architecture, wl: Workload, system) -> Workload:
    """``wl`` with its offload fractions decided: unchanged under the ``"manual"`` policy,
    else set by :func:`offload_plan` (and the policy turned to ``"manual"``, so placing again
    is a no-op)."""
    if wl.offload_policy == "manual":
        return wl
    f_w, f_kv = offload_plan(arch, wl, system, _PREFER[wl.offload_policy])
    return wl.replace(offload_weights=f_w, offload_kv=f_kv, offload_policy="manual")
