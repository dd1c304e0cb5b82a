"""Serving workload: batch, sequence lengths, parallelism and numeric formats.

Magnitudes are array leaves (so batch, lengths and TP/PP/EP degrees can be swept and
differentiated); the software choices that change the operator graph are static.

Parallelism convention (one pipeline stage holds ``tp * ep`` devices):
    * ``tp`` shards attention heads, dense FFNs, each expert's width and the vocabulary.
    * ``ep`` splits the routed experts of MoE layers; attention and dense layers are
      replicated across the ``ep`` ranks, each serving ``batch / ep`` of the sequences
      (data-parallel attention with expert parallelism, as DeepSeek-V3 is served).
      Tokens reach their experts by an all-to-all dispatch and come back by a combine.
    * ``pp`` splits the layers into stages run as a pipeline of micro-batches.
Devices used: ``tp * ep * pp``. TP is innermost, so TP groups are contiguous devices.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax

from . import _checks

#: Storage bytes per element of each numeric format.
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "fp4": 0.5}

#: Formats activations (and therefore matmul inputs) may take.
ACTIVATION_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8")

ATTENTION_IMPLS = ("flash", "unfused")
#: How weights and KV cache are placed across device memory and the offload tier.
OFFLOAD_POLICIES = ("manual", "auto_kv", "auto_weights")
LM_HEAD_TOKENS = ("last", "all")


class Workload(eqx.Module):
    """What is served, how it is split over devices, and in which formats.

    Static (change the operator graph):
        compute_dtype: dtype of matmul inputs, which selects the chip's tensor peak.
        attention_impl: ``"flash"`` (fused: Q, K, V read once, scores never leave the chip)
            or ``"unfused"`` (scores and probabilities written to and read from memory).
        lm_head_tokens: ``"last"`` computes logits only for each sequence's last prompt
            token during prefill (what vLLM does); ``"all"`` for every prompt token.
        sequence_parallel: if True, each TP all-reduce becomes a reduce-scatter plus an
            all-gather, and the norms and residual adds between them run on ``1/tp`` of the
            tokens (Megatron-style sequence parallelism).
        offload_policy: placement across device memory and the system's offload tier
            (``System.offload``): ``"manual"`` uses ``offload_weights`` / ``offload_kv`` as
            given; ``"auto_kv"`` and ``"auto_weights"`` replace them by the least offload
            that makes the point fit device memory, moving KV cache first (then weights) or
            weights first (then KV); see :func:`jaxmodel.memory.offload_plan`.

    Array leaves:
        batch: concurrent sequences.
        input_tokens: prompt length of each sequence.
        output_tokens: tokens generated per sequence (the first comes out of prefill).
        tp, pp, ep: tensor, pipeline and expert parallel degrees.
        weight_bytes, act_bytes, kv_bytes: bytes per element of weights, activations and
            KV cache.
        memory_utilization: fraction of device memory the server may fill (vLLM's default
            ``gpu_memory_utilization`` is 0.9).
        chunk_tokens: prompt tokens in the prefill chunk of a chunked (Sarathi) step.
        chunk_prior_tokens: tokens of that prompt already prefilled by earlier chunks.
        beam_width: beams kept per sequence by beam search (1: greedy or sampled decoding).
            Every decode step runs ``batch · beam_width`` sequences; the beams share their
            prompt's KV cache and each keeps its own generated tokens' (GenZ Sec. III:
            ``2·B·(τ_p + S_b·τ_d)`` KV entries per layer and KV head dimension).
        kv_keep: fraction of cached tokens a KV-pruning policy keeps (1: no pruning); decode
            attention reads, and the cache stores, that share of the context.
        weight_density: fraction of weight bytes stored and streamed under weight sparsity
            (1: dense); FLOPs are unchanged (GenZ Table V). Fold a sparse format's index
            overhead in, e.g. 2:4 sparsity of 16-bit weights with 2-bit indices: 0.5625.
        offload_weights, offload_kv: share in [0, 1] of the weight bytes and of the KV-cache
            bytes kept in the offload tier (0: all in device memory). Each operator streams
            that share of its weight / KV traffic over the offload link, the rest (and all
            activations) from device memory.
    """

    compute_dtype: str = eqx.field(static=True)
    attention_impl: str = eqx.field(static=True)
    lm_head_tokens: str = eqx.field(static=True)
    sequence_parallel: bool = eqx.field(static=True)
    offload_policy: str = eqx.field(static=True)

    batch: jax.Array
    input_tokens: jax.Array
    output_tokens: jax.Array
    tp: jax.Array
    pp: jax.Array
    ep: jax.Array
    weight_bytes: jax.Array
    act_bytes: jax.Array
    kv_bytes: jax.Array
    memory_utilization: jax.Array
    chunk_tokens: jax.Array
    chunk_prior_tokens: jax.Array
    beam_width: jax.Array
    kv_keep: jax.Array
    weight_density: jax.Array
    offload_weights: jax.Array
    offload_kv: jax.Array

    def __init__(
        self,
        batch=1,
        input_tokens=1024,
        output_tokens=128,
        *,
        tp=1,
        pp=1,
        ep=1,
        dtype: str = "bf16",
        weight_dtype: str | None = None,
        kv_dtype: str | None = None,
        attention_impl: str = "flash",
        lm_head_tokens: str = "last",
        sequence_parallel: bool = False,
        memory_utilization=0.9,
        chunk_tokens=512,
        chunk_prior_tokens=0,
        weight_bytes=None,
        act_bytes=None,
        kv_bytes=None,
        compute_dtype: str | None = None,
        beam_width=1,
        kv_keep=1.0,
        weight_density=1.0,
        offload_weights=0.0,
        offload_kv=0.0,
        offload_policy: str = "manual",
    ):
        o = "Workload"
        _checks.one_of(dtype, ACTIVATION_DTYPES, o, "dtype")
        for name, value in (("weight_dtype", weight_dtype), ("kv_dtype", kv_dtype)):
            if value is not None:
                _checks.one_of(value, DTYPE_BYTES, o, name)
        _checks.one_of(attention_impl, ATTENTION_IMPLS, o, "attention_impl")
        _checks.one_of(lm_head_tokens, LM_HEAD_TOKENS, o, "lm_head_tokens")
        self.compute_dtype = compute_dtype or dtype
        _checks.one_of(self.compute_dtype, ACTIVATION_DTYPES, o, "compute_dtype")
        self.attention_impl = attention_impl
        self.lm_head_tokens = lm_head_tokens
        self.sequence_parallel = bool(sequence_parallel)
        _checks.one_of(offload_policy, OFFLOAD_POLICIES, o, "offload_policy")
        self.offload_policy = offload_policy
        if weight_bytes is None:
            weight_bytes = DTYPE_BYTES[weight_dtype or dtype]
        if act_bytes is None:
            act_bytes = DTYPE_BYTES[dtype]
        if kv_bytes is None:
            kv_bytes = DTYPE_BYTES[kv_dtype or dtype]
        values = dict(
            batch=batch, input_tokens=input_tokens, output_tokens=output_tokens, tp=tp, pp=pp,
            ep=ep, weight_bytes=weight_bytes, act_bytes=act_bytes, kv_bytes=kv_bytes,
            memory_utilization=memory_utilization, chunk_tokens=chunk_tokens,
            chunk_prior_tokens=chunk_prior_tokens, beam_width=beam_width, kv_keep=kv_keep,
            weight_density=weight_density, offload_weights=offload_weights, offload_kv=offload_kv,
        )
        for name, value in values.items():
            setattr(self, name, _checks.as_float(value, o, name))
        for name in ("batch", "input_tokens", "output_tokens", "tp", "pp", "ep", "chunk_tokens", "beam_width"):
            _checks.positive(getattr(self, name), o, name, integer=True)
        _checks.non_negative(self.chunk_prior_tokens, o, "chunk_prior_tokens", integer=True)
        for name in ("weight_bytes", "act_bytes", "kv_bytes"):
            _checks.check_range(getattr(self, name), o, name, low=0.0, high=8.0, low_inclusive=False)
        _checks.fraction(self.memory_utilization, o, "memory_utilization")
        for name in ("kv_keep", "weight_density"):
            _checks.check_range(getattr(self, name), o, name, low=0.0, high=1.0, low_inclusive=False)
        for name in ("offload_weights", "offload_kv"):
            _checks.check_range(getattr(self, name), o, name, low=0.0, high=1.0)

    @property
    def stored_weight_bytes(self) -> jax.Array:
        """Bytes per weight element in memory and on the memory bus (after sparsity)."""
        return self.weight_bytes * self.weight_density

    @property
    def devices(self) -> jax.Array:
        return self.tp * self.ep * self.pp

    def replace(self, **changes) -> "Workload":
        """A copy with some leaves changed (validated like a fresh construction)."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        current.update(changes)
        return Workload(**current)
