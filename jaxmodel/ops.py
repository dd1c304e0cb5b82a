"""The operator table: every operator of one forward step, as rows of arrays, for one device.

A *step* is one forward pass of the model over a mix of two request groups:

* the **prompt group** (``prompt_*``): sequences that bring many new tokens (a prefill, or
  a prefill chunk); their attention runs the prefill kernel, causal over the new tokens;
* the **decode group** (``decode_*``): sequences that bring one new token each and attend to
  their cached context.

A prefill step has only the prompt group, a decode step only the decode group, and a
chunked (Sarathi) step both. Every linear layer processes the tokens of both groups at once.

Rows are static (their names, kinds, collectives and the layer group they repeat with);
their magnitudes are arrays. Identical layers are one row with a ``repeat`` count, so the
table has about 20 rows for a dense model whatever its depth. All counts are *per device*
for the parallel layout described in :mod:`jaxmodel.workload`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .architectures import ACTIVATION_FLOPS, NORM_FLOPS, Architecture, ssm_sizes
from .workload import Workload

# Row kinds.
MATMUL = "matmul"  # runs on the matrix units
VECTOR = "vector"  # elementwise / reduction work on the vector units
ATTENTION = "attention"  # fused attention: matmuls and softmax in one kernel
GATHER = "gather"  # pure data movement (embedding lookup)
COLLECTIVE = "collective"

# Collectives.
ALL_REDUCE = "all_reduce"
ALL_GATHER = "all_gather"
REDUCE_SCATTER = "reduce_scatter"
ALL_TO_ALL = "all_to_all"
SEND_RECV = "send_recv"
COLLECTIVES = (ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER, ALL_TO_ALL, SEND_RECV)

# Layer groups: how a row's repeat count relates to the pipeline split.
LAYER = "layer"  # inside decoder layers, divided among pipeline stages
HEAD = "head"  # embedding and LM head, once per forward pass
PIPELINE = "pipeline"  # stage-to-stage transfers

#: Vector FLOPs per attention score for the softmax (max, subtract, exp, sum, scale).
SOFTMAX_FLOPS = 5.0
#: Vector FLOPs per rotated element (two multiplies and an add).
ROTARY_FLOPS = 3.0
#: Vector FLOPs per logit to sample (softmax over the vocabulary, then a draw).
SAMPLING_FLOPS = 5.0

# ---- selective state-space mixers (counts per element; see _ssm_mixer) ------------------
#: Causal depthwise conv1d, per output element and tap: one multiply-add.
CONV_TAP_FLOPS = 2.0
#: Per conv output element after the taps: bias add (1) and SiLU (4).
CONV_OUTPUT_FLOPS = 5.0
#: Mamba-1 selective scan, per (token, channel, state) element: exp(Δ·A) (2), Δu·B (1),
#: h <- dA·h + dBu (2), y += C·h (2). Mamba paper Sec. 3.3.2: the kernel does this in SRAM.
MAMBA1_SCAN_FLOPS = 7.0
#: Mamba-1, per (token, channel): softplus(Δ + bias) (4), skip D·u (2), gate y·SiLU(z) (5).
MAMBA1_CHANNEL_FLOPS = 11.0
#: Mamba-2 recurrence step, per (head, head_dim, state) element: dt·x·B (1), decay·h (1),
#: add (1), y += C·h (2); the decay exp(dt·A) is one scalar per head (Mamba-2 Sec. 3).
MAMBA2_STEP_FLOPS = 5.0
#: Mamba-2, per (token, head): softplus(dt + bias) and exp(dt·A) (5); per (token, channel):
#: skip D·x (2).
MAMBA2_HEAD_FLOPS = 5.0
MAMBA2_CHANNEL_FLOPS = 2.0
#: Mamba-2 SSD, per element of a chunk's (Q x Q) decay mask per head: a difference of
#: cumulative sums and its exp (2).
SSD_MASK_FLOPS = 2.0
#: Mamba-2 gated RMSNorm, per channel: SiLU(z) (4), the gate multiply (1), the norm (4).
GATED_NORM_FLOPS = 9.0


@dataclasses.dataclass(frozen=True)
class RowInfo:
    """Static description of one row."""

    name: str
    kind: str
    group: str
    block: str  # "attention", "ssm", "ffn", "moe", "embedding", "lm_head", "pipeline"
    collective: str = ""


class OpTable(eqx.Module):
    """Struct of arrays, one entry per row (per device, for one execution of the row).

    Each column is a tuple holding one scalar per row rather than one stacked array: the
    time model then compiles to a few fused elementwise loops over design points, about
    ten times faster on CPU than materializing (points x rows) arrays between kernels.
    :meth:`stacked` gives the array view for reports.

    Columns:
        repeat: times the row runs in a forward pass (e.g. the layer count).
        flops: matrix-unit FLOPs (2 per multiply-accumulate).
        vector_flops: vector-unit FLOPs.
        weight_bytes, act_bytes, kv_bytes: bytes moved to/from device memory for weights,
            activations (reads and writes) and the KV cache (reads and writes).
        m, n, k: matmul shape (per matmul); for a vector row, m rows reduced over n
            elements each (n = 0: elementwise).
        matmuls: independent matmuls in the row (KV heads x sequences, experts touched).
        sequences: of an attention row, the sequences it serves (attention kernels split
            work per sequence and per KV head differently); 0 elsewhere.
        lhs_bytes, rhs_bytes, out_bytes: of a matmul or attention row, the bytes of its left
            operand (activations, queries), right operand (weights, keys/values) and result,
            each counted once; the rest of the row's bytes (cache writes) are extra traffic.
        offload_bytes: of those bytes, the ones that cross the offload link instead of
            device memory: ``Workload.offload_weights`` of the weight bytes plus
            ``Workload.offload_kv`` of the KV bytes (0 without offload).
        comm_bytes: collective payload (see :mod:`jaxmodel.perf.comm` for its meaning).
        group_size: devices taking part in the collective (1: no communication).
        group_stride: distance between consecutive group members in device order.
    """

    rows: tuple[RowInfo, ...] = eqx.field(static=True)
    repeat: tuple[jax.Array, ...]
    flops: tuple[jax.Array, ...]
    vector_flops: tuple[jax.Array, ...]
    weight_bytes: tuple[jax.Array, ...]
    act_bytes: tuple[jax.Array, ...]
    kv_bytes: tuple[jax.Array, ...]
    m: tuple[jax.Array, ...]
    n: tuple[jax.Array, ...]
    k: tuple[jax.Array, ...]
    matmuls: tuple[jax.Array, ...]
    sequences: tuple[jax.Array, ...]
    comm_bytes: tuple[jax.Array, ...]
    group_size: tuple[jax.Array, ...]
    group_stride: tuple[jax.Array, ...]
    lhs_bytes: tuple[jax.Array, ...]
    rhs_bytes: tuple[jax.Array, ...]
    out_bytes: tuple[jax.Array, ...]
    offload_bytes: tuple[jax.Array, ...]

    def stacked(self, column: str) -> jax.Array:
        """One column as an array with the row axis last."""
        return jnp.stack(getattr(self, column), axis=-1)

    def total_bytes(self, i: int) -> jax.Array:
        return self.weight_bytes[i] + self.act_bytes[i] + self.kv_bytes[i]

    def device_bytes(self, i: int) -> jax.Array:
        """Bytes row ``i`` moves to/from device memory (all of them without offload)."""
        return self.total_bytes(i) - self.offload_bytes[i]

    def offload_share(self, i: int) -> jax.Array:
        """Share of row ``i``'s weight and KV bytes that lives in the offload tier (0 when
        the row has none)."""
        placed = self.weight_bytes[i] + self.kv_bytes[i]
        return jnp.where(placed > 0, self.offload_bytes[i] / jnp.where(placed > 0, placed, 1.0), 0.0)


class Step(NamedTuple):
    """Token counts of one forward step (whole model, before splitting over devices)."""

    prompt_seqs: jax.Array
    prompt_new: jax.Array
    prompt_past: jax.Array
    decode_seqs: jax.Array
    decode_past: jax.Array
    logit_rows: jax.Array

    @property
    def tokens(self) -> jax.Array:
        return self.prompt_seqs * self.prompt_new + self.decode_seqs


def prefill_step(wl: Workload, batch) -> Step:
    """Prefill of ``batch`` whole prompts of ``wl.input_tokens`` tokens."""
    zero = jnp.zeros_like(wl.input_tokens)
    rows = batch * (wl.input_tokens if wl.lm_head_tokens == "all" else 1.0)
    return Step(batch, wl.input_tokens, zero, zero, zero, rows)


def decode_step(wl: Workload, batch, context) -> Step:
    """One decode step of ``batch`` sequences with ``context`` tokens already cached."""
    zero = jnp.zeros_like(wl.input_tokens)
    return Step(zero, zero, zero, batch, context, batch)


def chunked_step(wl: Workload, decode_batch, decode_context) -> Step:
    """A Sarathi step: one prompt chunk of ``wl.chunk_tokens`` plus a decode batch.

    The chunk's sequence emits a logit row too (as it would on its final chunk).
    """
    one = jnp.ones_like(wl.chunk_tokens)
    return Step(one, wl.chunk_tokens, wl.chunk_prior_tokens, decode_batch, decode_context, decode_batch + 1.0)


# ---- attention arithmetic ------------------------------------------------------------------
def _causal_pairs(upto, window):
    """Query-key pairs of the first ``upto`` positions under a causal mask and a window.

    Position i attends to min(i, window) keys (window 0 = unlimited), so the total is
    sum_{i=1..upto} min(i, window).
    """
    tri = upto * (upto + 1.0) / 2.0
    capped = window * (window + 1.0) / 2.0 + (upto - window) * window
    return jnp.where((window > 0) & (upto > window), capped, tri)


def attention_pairs(new, past, window):
    """Query-key pairs computed for ``new`` tokens appended after ``past`` cached ones."""
    return _causal_pairs(past + new, window) - _causal_pairs(past, window)


def attention_keys(new, past, window):
    """Keys (cached plus new) one sequence must read for its ``new`` queries."""
    full = past + new
    return jnp.where(window > 0, jnp.minimum(full, window + new - 1.0), full)


# ---- the builder --------------------------------------------------------------------------
class _Rows:
    """Collects rows as scalars, then stacks them into an :class:`OpTable`."""

    _FIELDS = (
        "repeat", "flops", "vector_flops", "weight_bytes", "act_bytes", "kv_bytes",
        "m", "n", "k", "matmuls", "sequences", "comm_bytes", "group_size", "group_stride",
        "lhs_bytes", "rhs_bytes", "out_bytes",
    )

    def __init__(self, dtype):
        self.dtype = dtype
        self.infos: list[RowInfo] = []
        self.values: list[dict] = []

    def add(self, info: RowInfo, **values):
        unknown = set(values) - set(self._FIELDS)
        if unknown:
            raise TypeError(f"unknown op-table fields {sorted(unknown)}")
        self.infos.append(info)
        self.values.append(values)

    def matmul(self, name, block, *, repeat, m, n, k, count=1.0, weights=None, w_bytes, a_bytes, group=LAYER):
        """A matmul [m x k] @ [k x n], ``count`` times; ``weights`` elements read from memory.

        ``weights`` defaults to ``count * n * k`` (each matmul has its own weight matrix);
        pass it explicitly when weights are shared or are activations.
        """
        if weights is None:
            weights = count * n * k
        self.add(
            RowInfo(name, MATMUL, group, block),
            repeat=repeat, flops=2.0 * m * n * k * count, weight_bytes=weights * w_bytes,
            act_bytes=(m * k + m * n) * count * a_bytes, m=m, n=n, k=k, matmuls=count,
            lhs_bytes=m * k * count * a_bytes, rhs_bytes=weights * w_bytes, out_bytes=m * n * count * a_bytes,
        )

    def vector(self, name, block, *, repeat, elements_read, elements_written, flops, a_bytes, rows,
               row_length=0.0, group=LAYER):
        """Vector work over ``rows`` rows; ``row_length`` > 0 marks a reduction along each row
        (norm, softmax), which needs the whole row on one core."""
        self.add(
            RowInfo(name, VECTOR, group, block),
            repeat=repeat, vector_flops=flops, act_bytes=(elements_read + elements_written) * a_bytes,
            m=rows, n=row_length,
        )

    def collective(self, name, block, kind, *, repeat, payload, size, stride, group=LAYER):
        self.add(
            RowInfo(name, COLLECTIVE, group, block, collective=kind),
            repeat=repeat, comm_bytes=payload, group_size=size, group_stride=stride,
        )

    def table(self, offload_weights=0.0, offload_kv=0.0) -> OpTable:
        """The table; ``offload_weights`` / ``offload_kv`` of each row's weight / KV bytes
        are placed in the offload tier."""
        columns = {}
        for field in self._FIELDS:
            default = 1.0 if field in ("group_size", "group_stride") else 0.0
            columns[field] = tuple(jnp.asarray(v.get(field, default), dtype=self.dtype) for v in self.values)
        columns["offload_bytes"] = tuple(
            offload_weights * w + offload_kv * kv for w, kv in zip(columns["weight_bytes"], columns["kv_bytes"]))
        return OpTable(rows=tuple(self.infos), **columns)


#: The two request groups a step may hold.
GROUPS = ("prompt", "decode")


def build_op_table(arch: Architecture, wl: Workload, step: Step, devices_per_node=8.0,
                   groups: tuple[str, ...] = GROUPS) -> OpTable:
    """Rows of one forward step on one device (see the module docstring for the layout).

    ``devices_per_node`` (the scale-up domain size, or the tuple of bounded network level
    sizes, :attr:`jaxmodel.hardware.System.level_sizes`) places pipeline stages on levels.
    ``groups`` (static) lists the request groups the step can hold; leaving out one that
    is known to be empty (the decode group of a prefill) drops its rows from the program.
    """
    dtype = jnp.result_type(arch.d_model, wl.batch, step.tokens)
    rows = _Rows(dtype)
    tp, ep = wl.tp, wl.ep
    a, w = wl.act_bytes, wl.stored_weight_bytes
    d = arch.d_model
    layers = arch.n_layers
    tokens = step.tokens / ep  # data-parallel attention: each EP rank serves 1/ep of the batch
    heads = arch.n_heads / tp
    up = arch.ffn_up_matrices

    # Residual adds fused with the norms (vLLM's fused_add_rms_norm): each norm reads and
    # writes the hidden state; each of the two residual adds reads and writes the residual.
    # With sequence parallelism every TP rank normalizes only its 1/tp share of the tokens.
    norm_tokens = tokens / tp if wl.sequence_parallel else tokens
    # SSM models: one residual add per sub-block, each behind its own norm (a Mamba block
    # has one of each; a Jamba layer two).
    adds = 2.0 if arch.ssm is None else arch.norms_per_layer
    norm_reads = arch.norms_per_layer + adds
    rows.vector(
        "norm_residual", "attention", repeat=layers,
        elements_read=norm_reads * norm_tokens * d, elements_written=norm_reads * norm_tokens * d,
        flops=(arch.norms_per_layer * NORM_FLOPS[arch.norm] + adds) * norm_tokens * d, a_bytes=a,
        rows=norm_tokens, row_length=d,
    )

    if arch.attention == "gqa":
        _gqa_attention(rows, arch, wl, step, tokens, heads, groups)
    else:
        _mla_attention(rows, arch, wl, step, tokens, heads, groups)
    _tp_sync(rows, wl, "attn", "attention", repeat=arch.n_attention_layers, payload=tokens * d * a)
    if arch.ssm is not None:
        _ssm_mixer(rows, arch, wl, step, tokens, groups)

    n_dense = arch.n_dense_ffn_layers
    ff = arch.d_ff / tp
    rows.matmul("ffn_up", "ffn", repeat=n_dense, m=tokens, n=up * ff, k=d, w_bytes=w, a_bytes=a)
    rows.vector("ffn_activation", "ffn", repeat=n_dense, elements_read=up * tokens * ff,
                elements_written=tokens * ff, flops=ACTIVATION_FLOPS[arch.activation] * tokens * ff, a_bytes=a,
                rows=tokens)
    rows.matmul("ffn_down", "ffn", repeat=n_dense, m=tokens, n=d, k=ff, w_bytes=w, a_bytes=a)
    _tp_sync(rows, wl, "ffn", "ffn", repeat=n_dense, payload=tokens * d * a)

    if arch.moe:
        _moe(rows, arch, wl, step, tokens)

    _embedding_and_head(rows, arch, wl, step, tokens)

    _pipeline_sends(rows, wl, payload=tokens * d * a, devices_per_node=devices_per_node)
    return rows.table(wl.offload_weights, wl.offload_kv)


def _tp_sync(rows, wl, prefix, block, *, repeat, payload):
    """Combine the partial sums of a TP-sharded block: one all-reduce, or with sequence
    parallelism a reduce-scatter (into token shards) and an all-gather (before the next block)."""
    if wl.sequence_parallel:
        rows.collective(f"{prefix}_reduce_scatter", block, REDUCE_SCATTER, repeat=repeat, payload=payload,
                        size=wl.tp, stride=1.0)
        rows.collective(f"{prefix}_all_gather", block, ALL_GATHER, repeat=repeat, payload=payload,
                        size=wl.tp, stride=1.0)
    else:
        rows.collective(f"{prefix}_all_reduce", block, ALL_REDUCE, repeat=repeat, payload=payload,
                        size=wl.tp, stride=1.0)


def _pipeline_sends(rows, wl, *, payload, devices_per_node):
    """Stage-to-stage transfers, one row per network level (the level each boundary crosses).

    ``devices_per_node`` is the scale-up domain size or the tuple of bounded level sizes
    (scale-up domain, then each middle level; see :attr:`jaxmodel.hardware.System.level_sizes`).
    Stages of ``T = tp * ep`` devices are placed contiguously, so of the ``pp - 1`` boundaries

        b_i = clip(ceil(pp · T / P_i) - 1, 0, pp - 1)

    cross a block boundary of level i (``P_i`` devices per block; all of them once a stage
    fills a block, none for the unbounded outermost level). A boundary crossing level i - 1
    blocks but not level i ones travels on level i: ``b_{i-1} - b_i`` sends there (``b_{-1} =
    pp - 1``), so the rows' repeats sum to ``pp - 1``. The row of level i has stride
    ``P_{i-1}`` (1 for level 0), which :mod:`jaxmodel.perf.comm` places on that level.
    """
    sizes = tuple(devices_per_node) if isinstance(devices_per_node, (tuple, list)) else (devices_per_node,)
    boundaries = wl.pp - 1.0
    span = wl.pp * wl.tp * wl.ep
    crossing_below, stride = boundaries, jnp.ones_like(boundaries)
    names = ["pp_send"] + [f"pp_send_level{i}" for i in range(1, len(sizes))] + ["pp_send_across_nodes"]
    block = 1.0
    for i, name in enumerate(names):
        if i < len(sizes):
            block = block * sizes[i]
            # ceil(span / P) - 1 block boundaries lie strictly inside the span; written with a
            # half-device margin so whole-number inputs sit off the step.
            crossing = jnp.clip(jnp.floor((span - 0.5) / block), 0.0, boundaries)
        else:
            crossing = jnp.zeros_like(boundaries)
        rows.collective(name, "pipeline", SEND_RECV, repeat=crossing_below - crossing, payload=payload,
                        size=2.0, stride=stride, group=PIPELINE)
        crossing_below, stride = crossing, block * jnp.ones_like(boundaries)


def _attention_core(rows, wl, name, *, repeat, seqs, new, past, window, heads, kv_heads,
                    qk_dim, v_dim, kv_elem_bytes, kv_write_elements, causal):
    """Scores, softmax and context for ``seqs`` sequences, fused or unfused.

    ``kv_heads`` heads of width ``qk_dim`` (keys) and ``v_dim`` (values) are read at
    ``kv_elem_bytes`` per element; ``kv_write_elements`` new cache elements are written.
    Query heads that share a KV head form one matmul of ``new x group`` rows against that
    head's keys, as grouped-query kernels run them; its shape is what a matrix unit sees.
    """
    a = wl.act_bytes
    keys = attention_keys(new, past, window)
    group = heads / kv_heads
    q_rows = new * group
    # Fused kernels skip masked blocks (causal pairs); unfused ones compute the full rectangle.
    pairs = seqs * (attention_pairs(new, past, window) if causal else new * keys)
    q_bytes = seqs * new * heads * qk_dim * a
    o_bytes = seqs * new * heads * v_dim * a
    k_read = seqs * keys * kv_heads * qk_dim * kv_elem_bytes
    v_read = seqs * keys * kv_heads * v_dim * kv_elem_bytes
    kv_write = seqs * kv_write_elements * wl.kv_bytes
    score_elems = heads * pairs
    shape = dict(m=q_rows, matmuls=seqs * kv_heads, sequences=seqs)
    if wl.attention_impl == "flash":
        rows.add(
            RowInfo(name, ATTENTION, LAYER, "attention"),
            repeat=repeat, flops=2.0 * score_elems * (qk_dim + v_dim),
            vector_flops=SOFTMAX_FLOPS * score_elems, act_bytes=q_bytes + o_bytes,
            kv_bytes=k_read + v_read + kv_write, n=keys, k=qk_dim,
            lhs_bytes=q_bytes, rhs_bytes=k_read + v_read, out_bytes=o_bytes, **shape,
        )
        return
    rows.add(
        RowInfo(name + "_scores", MATMUL, LAYER, "attention"),
        repeat=repeat, flops=2.0 * score_elems * qk_dim, act_bytes=q_bytes + score_elems * a,
        kv_bytes=k_read + kv_write, n=keys, k=qk_dim,
        lhs_bytes=q_bytes, rhs_bytes=k_read, out_bytes=score_elems * a, **shape,
    )
    rows.vector(name + "_softmax", "attention", repeat=repeat, elements_read=score_elems,
                elements_written=score_elems, flops=SOFTMAX_FLOPS * score_elems, a_bytes=a,
                rows=seqs * heads * new, row_length=keys)
    rows.add(
        RowInfo(name + "_context", MATMUL, LAYER, "attention"),
        repeat=repeat, flops=2.0 * score_elems * v_dim, act_bytes=score_elems * a + o_bytes,
        kv_bytes=v_read, n=v_dim, k=keys,
        lhs_bytes=score_elems * a, rhs_bytes=v_read, out_bytes=o_bytes, **shape,
    )


def _window_classes(arch: Architecture):
    """(row suffix, layers, window) for globally attending and sliding-window layers (the
    latter only for a ``windowed`` architecture)."""
    no_window = jnp.zeros_like(arch.sliding_window)
    classes = (("", arch.n_attention_layers - arch.n_sliding_layers, no_window),)
    if arch.windowed:
        classes += (("_window", arch.n_sliding_layers, arch.sliding_window),)
    return classes


def _gqa_attention(rows, arch, wl, step, tokens, heads, groups):
    a, w = wl.act_bytes, wl.stored_weight_bytes
    d, hd, layers, tp = arch.d_model, arch.head_dim, arch.n_attention_layers, wl.tp
    # KV heads are split over TP ranks, or replicated when there are fewer than ranks.
    kv_heads = jnp.maximum(arch.n_kv_heads / tp, 1.0)
    # Cross-layer KV sharing: only one layer of each group projects (and caches) K and V;
    # every layer still reads the shared cache in attention.
    owned_kv_heads = kv_heads / arch.kv_share_group
    rows.matmul("qkv_proj", "attention", repeat=layers, m=tokens, n=(heads + 2.0 * owned_kv_heads) * hd, k=d,
                w_bytes=w, a_bytes=a)
    rotated = tokens * (heads + owned_kv_heads) * hd * arch.rotary_fraction
    rows.vector("rotary", "attention", repeat=layers, elements_read=rotated, elements_written=rotated,
                flops=ROTARY_FLOPS * rotated, a_bytes=a, rows=tokens)
    for suffix, n_layers, window in _window_classes(arch):
        for group, seqs, new, past, causal in _groups(step, wl, groups):
            _attention_core(
                rows, wl, f"attention_{group}{suffix}", repeat=n_layers, seqs=seqs, new=new, past=past,
                window=window, heads=heads, kv_heads=kv_heads, qk_dim=hd, v_dim=hd,
                kv_elem_bytes=wl.kv_bytes, kv_write_elements=new * 2.0 * owned_kv_heads * hd, causal=causal,
            )
    rows.matmul("o_proj", "attention", repeat=layers, m=tokens, n=d, k=heads * hd, w_bytes=w, a_bytes=a)


def _groups(step: Step, wl: Workload, groups=GROUPS):
    """(name, sequences per device, new tokens, cached tokens, causal) of the groups asked for."""
    causal = wl.attention_impl == "flash"
    both = (
        ("prompt", step.prompt_seqs / wl.ep, step.prompt_new, step.prompt_past, causal),
        ("decode", step.decode_seqs / wl.ep, jnp.ones_like(step.decode_past), step.decode_past, True),
    )
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"op-table groups must be among {GROUPS} (got {sorted(unknown)})")
    return tuple(g for g in both if g[0] in groups)


def _ssm_state_passes(group, past):
    """Times a sequence's recurrent state crosses the memory bus in one step: a prompt writes
    its final state (and first reads the one left by an earlier chunk, if any); a decode
    step reads and writes it."""
    if group == "decode":
        return 2.0 * jnp.ones_like(past)
    return 1.0 + (past > 0).astype(past.dtype)


def _act_matmul(rows, name, *, repeat, m, n, k, count, lhs, rhs, out, a_bytes):
    """A matmul whose operands are both activations (``lhs``, ``rhs``, ``out``: elements
    moved, each once), as in the SSD chunk products."""
    rows.add(
        RowInfo(name, MATMUL, LAYER, "ssm"),
        repeat=repeat, flops=2.0 * m * n * k * count, act_bytes=(lhs + rhs + out) * a_bytes,
        m=m, n=n, k=k, matmuls=count,
        lhs_bytes=lhs * a_bytes, rhs_bytes=rhs * a_bytes, out_bytes=out * a_bytes,
    )


def _ssm_mixer(rows, arch, wl, step, tokens, groups):
    """Selective state-space mixer of the ``n_ssm_layers`` SSM layers, on one device.

    Rows: in_proj (matmul), causal depthwise conv1d (vector), Mamba-1's x_proj (+ the TP
    all-reduce its row-parallel split needs, as in vLLM) and dt_proj, the scan per request
    group, Mamba-2's gated RMSNorm, out_proj and the TP all-reduce.

    Scan (Mamba-1, Gu & Dao 2023 Sec. 3.3.2): the hardware-aware kernel keeps the expanded
    state in SRAM, so it moves only its inputs (u, Δ, z: d_inner per token; B, C: N per
    token) and output (y), reads A, D and the Δ bias, and reads/writes the state d_inner·N
    once per sequence; its work is MAMBA1_SCAN_FLOPS per (token, channel, state) element.

    Mamba-2 prompt tokens use the chunked SSD algorithm (Dao & Gu 2024, Sec. 6): with chunk
    length q = min(new, Q), per chunk C·Bᵀ (q x q x N per group), the masked intra-chunk
    product (q x q x P per head), the chunk states Bᵀ·X (N x q x P per head) and the
    state-to-output product C·h (q x N x P per head) run on the matrix units; the decay
    masks, the state passing between chunks and the skip term on the vector units. Decode
    tokens (both kinds) take one recurrence step that reads and writes the whole state,
    so a decode step costs the same whatever the context (GenZ Fig. 13c).
    """
    a, w, kvb, d = wl.act_bytes, wl.stored_weight_bytes, wl.kv_bytes, arch.d_model
    n_ssm = arch.n_ssm_layers
    z = ssm_sizes(arch, wl.tp)
    inner, heads, grps, conv_ch = z["inner"], z["heads"], z["groups"], z["conv_channels"]
    n, width = arch.ssm_d_state, arch.ssm_d_conv
    present = _groups(step, wl, groups)

    rows.matmul("ssm_in_proj", "ssm", repeat=n_ssm, m=tokens, n=z["in_proj_out"], k=d, w_bytes=w, a_bytes=a)
    conv_state = sum(seqs * _ssm_state_passes(g, past) for g, seqs, _, past, _ in present) * (width - 1.0) * conv_ch
    rows.add(
        RowInfo("ssm_conv", VECTOR, LAYER, "ssm"), repeat=n_ssm,
        vector_flops=(CONV_TAP_FLOPS * width + CONV_OUTPUT_FLOPS) * tokens * conv_ch,
        act_bytes=2.0 * tokens * conv_ch * a, weight_bytes=conv_ch * (width + 1.0) * w,
        kv_bytes=conv_state * kvb, m=tokens,
    )
    if arch.ssm == "mamba1":
        r = arch.ssm_dt_rank
        rows.matmul("ssm_x_proj", "ssm", repeat=n_ssm, m=tokens, n=r + 2.0 * n, k=inner, w_bytes=w, a_bytes=a)
        rows.collective("ssm_x_proj_all_reduce", "ssm", ALL_REDUCE, repeat=n_ssm,
                        payload=tokens * (r + 2.0 * n) * a, size=wl.tp, stride=1.0)
        rows.matmul("ssm_dt_proj", "ssm", repeat=n_ssm, m=tokens, n=inner, k=r, w_bytes=w, a_bytes=a)
        for g, seqs, new, past, _ in present:
            tok = seqs * new
            rows.add(
                RowInfo(f"ssm_scan_{g}", VECTOR, LAYER, "ssm"), repeat=n_ssm,
                vector_flops=tok * inner * (MAMBA1_SCAN_FLOPS * n + MAMBA1_CHANNEL_FLOPS),
                act_bytes=tok * (4.0 * inner + 2.0 * n) * a, weight_bytes=(inner * n + 2.0 * inner) * w,
                kv_bytes=seqs * _ssm_state_passes(g, past) * z["state"] * kvb, m=seqs * inner,
            )
    else:
        p, chunk = arch.ssm_head_dim, arch.ssm_chunk
        for g, seqs, new, past, _ in present:
            tok = seqs * new
            state_io = seqs * _ssm_state_passes(g, past) * z["state"] * kvb
            per_head = tok * heads * MAMBA2_HEAD_FLOPS + tok * inner * MAMBA2_CHANNEL_FLOPS
            if g == "decode":
                rows.add(
                    RowInfo("ssm_scan_decode", VECTOR, LAYER, "ssm"), repeat=n_ssm,
                    vector_flops=tok * z["state"] * MAMBA2_STEP_FLOPS + per_head,
                    act_bytes=tok * (conv_ch + heads + inner) * a, weight_bytes=3.0 * heads * w,
                    kv_bytes=state_io, m=seqs * heads,
                )
                continue
            q = jnp.maximum(jnp.minimum(new, chunk), 1.0)
            blocks = seqs * new / q  # chunks over all sequences
            bc = tok * grps * n  # elements of B (or of C)
            states = blocks * heads * n * p
            cb = blocks * grps * q * q
            _act_matmul(rows, f"ssm_ssd_cb_{g}", repeat=n_ssm, m=q, n=q, k=n, count=blocks * grps,
                        lhs=bc, rhs=bc, out=cb, a_bytes=a)
            _act_matmul(rows, f"ssm_ssd_states_{g}", repeat=n_ssm, m=n, n=p, k=q, count=blocks * heads,
                        lhs=bc, rhs=tok * inner, out=states, a_bytes=a)
            _act_matmul(rows, f"ssm_ssd_intra_{g}", repeat=n_ssm, m=q, n=p, k=q, count=blocks * heads,
                        lhs=cb, rhs=tok * inner, out=tok * inner, a_bytes=a)
            _act_matmul(rows, f"ssm_ssd_inter_{g}", repeat=n_ssm, m=q, n=p, k=n, count=blocks * heads,
                        lhs=bc, rhs=states, out=tok * inner, a_bytes=a)
            rows.add(
                RowInfo(f"ssm_scan_{g}", VECTOR, LAYER, "ssm"), repeat=n_ssm,
                vector_flops=tok * heads * q * SSD_MASK_FLOPS + 2.0 * states + per_head,
                act_bytes=(tok * heads + 2.0 * states + tok * inner) * a, weight_bytes=3.0 * heads * w,
                kv_bytes=state_io, m=seqs * heads,
            )
        rows.add(
            RowInfo("ssm_gated_norm", VECTOR, LAYER, "ssm"), repeat=n_ssm,
            vector_flops=GATED_NORM_FLOPS * tokens * inner, act_bytes=3.0 * tokens * inner * a,
            weight_bytes=inner * w, m=tokens * grps, n=inner / grps,
        )
    rows.matmul("ssm_out_proj", "ssm", repeat=n_ssm, m=tokens, n=d, k=inner, w_bytes=w, a_bytes=a)
    _tp_sync(rows, wl, "ssm", "ssm", repeat=n_ssm, payload=tokens * d * a)


def _mla_attention(rows, arch, wl, step, tokens, heads, groups):
    """DeepSeek multi-head latent attention.

    The cache holds one latent of ``kv_lora_rank + qk_rope_head_dim`` per token, shared by
    all heads and replicated on every TP rank. Prompt tokens use the expanded form (latents
    up-projected to per-head keys and values); decode tokens use the absorbed form
    (queries projected into the latent space, attention over the latent cache), as vLLM does.
    """
    a, w, d, layers = wl.act_bytes, wl.stored_weight_bytes, arch.d_model, arch.n_attention_layers
    nope, rope, vd, kvr, qr = (arch.qk_nope_head_dim, arch.qk_rope_head_dim, arch.v_head_dim,
                               arch.kv_lora_rank, arch.q_lora_rank)
    qk = nope + rope
    latent = kvr + rope
    has_q_lora = (qr > 0).astype(d.dtype)
    # Down-projections are replicated on TP ranks (not sharded).
    rows.matmul("q_down_proj", "attention", repeat=layers * has_q_lora, m=tokens, n=qr, k=d, w_bytes=w, a_bytes=a)
    rows.matmul("kv_down_proj", "attention", repeat=layers, m=tokens, n=latent, k=d, w_bytes=w, a_bytes=a)
    q_in = jnp.where(qr > 0, qr, d)
    rows.matmul("q_up_proj", "attention", repeat=layers, m=tokens, n=heads * qk, k=q_in, w_bytes=w, a_bytes=a)
    rotated = tokens * (heads + 1.0) * rope
    rows.vector("rotary", "attention", repeat=layers, elements_read=rotated, elements_written=rotated,
                flops=ROTARY_FLOPS * rotated, a_bytes=a, rows=tokens)
    (_, pseqs, pnew, ppast, pcausal), (_, dseqs, dnew, dpast, _) = _groups(step, wl)
    # A group absent from this step must not stream its projection weights.
    has_prompt = (pseqs > 0).astype(d.dtype)
    has_decode = (dseqs > 0).astype(d.dtype)
    for suffix, n_layers, window in _window_classes(arch):
        if "prompt" in groups:
            # Prompt group: expand the latents of every key it attends to into per-head K and V.
            ctx_tokens = pseqs * attention_keys(pnew, ppast, window)
            rows.matmul(f"kv_up_proj{suffix}", "attention", repeat=n_layers * has_prompt, m=ctx_tokens,
                        n=heads * (nope + vd), k=kvr, w_bytes=w, a_bytes=a)
            _attention_core(
                rows, wl, f"attention_prompt{suffix}", repeat=n_layers, seqs=pseqs, new=pnew, past=ppast,
                window=window, heads=heads, kv_heads=heads, qk_dim=qk, v_dim=vd, kv_elem_bytes=a,
                kv_write_elements=pnew * latent, causal=pcausal,
            )
        if "decode" in groups:
            # Decode group: absorb W_UK into the query and W_UV into the output.
            dtokens = dseqs * dnew
            rows.matmul(f"q_absorb{suffix}", "attention", repeat=n_layers * has_decode, m=dtokens, n=kvr, k=nope,
                        count=heads, w_bytes=w, a_bytes=a)
            _attention_core(
                rows, wl, f"attention_decode{suffix}", repeat=n_layers, seqs=dseqs, new=dnew, past=dpast,
                window=window, heads=heads, kv_heads=jnp.ones_like(heads), qk_dim=latent, v_dim=kvr,
                kv_elem_bytes=wl.kv_bytes, kv_write_elements=dnew * latent, causal=True,
            )
            rows.matmul(f"v_absorb{suffix}", "attention", repeat=n_layers * has_decode, m=dtokens, n=vd, k=kvr,
                        count=heads, w_bytes=w, a_bytes=a)
    rows.matmul("o_proj", "attention", repeat=layers, m=tokens, n=d, k=heads * vd, w_bytes=w, a_bytes=a)


def expected_experts_touched(tokens, n_experts, top_k):
    """Expected number of distinct experts chosen by ``tokens`` tokens routing top-k of E.

    With uniform routing a given expert escapes one token with probability 1 - k/E, so
    E * (1 - (1 - k/E)^T) experts are touched. At decode with a large batch this tends to E:
    most expert weights are streamed even though each token uses only k of them.
    """
    miss = jnp.maximum(1.0 - top_k / n_experts, 1e-30)
    return n_experts * (1.0 - jnp.exp(tokens * jnp.log(miss)))


def _moe(rows, arch, wl, step, tokens):
    a, w, d, tp, ep = wl.act_bytes, wl.stored_weight_bytes, arch.d_model, wl.tp, wl.ep
    n_moe, up, k = arch.n_moe_layers, arch.ffn_up_matrices, arch.top_k
    act_flops = ACTIVATION_FLOPS[arch.activation]
    rows.matmul("router", "moe", repeat=n_moe, m=tokens, n=arch.n_experts, k=d, w_bytes=w, a_bytes=a)
    rows.collective("moe_dispatch", "moe", ALL_TO_ALL, repeat=n_moe, payload=tokens * k * d * a,
                    size=ep, stride=tp)
    # Each EP rank holds n_experts/ep experts and receives 1/ep of all (token, expert) pairs.
    routed = step.tokens * k / ep
    touched = jnp.maximum(expected_experts_touched(step.tokens, arch.n_experts, k) / ep, 1e-9)
    per_expert = routed / touched
    ff = arch.moe_d_ff / tp
    rows.matmul("experts_up", "moe", repeat=n_moe, m=per_expert, n=up * ff, k=d, count=touched,
                w_bytes=w, a_bytes=a)
    rows.vector("experts_activation", "moe", repeat=n_moe, elements_read=up * routed * ff,
                elements_written=routed * ff, flops=act_flops * routed * ff, a_bytes=a, rows=routed)
    rows.matmul("experts_down", "moe", repeat=n_moe, m=per_expert, n=d, k=ff, count=touched,
                w_bytes=w, a_bytes=a)
    rows.collective("moe_combine", "moe", ALL_TO_ALL, repeat=n_moe, payload=tokens * k * d * a,
                    size=ep, stride=tp)
    shared_ff = arch.n_shared_experts * arch.shared_d_ff / tp
    has_shared = (arch.n_shared_experts > 0).astype(d.dtype)
    rows.matmul("shared_up", "moe", repeat=n_moe * has_shared, m=tokens, n=up * shared_ff, k=d,
                w_bytes=w, a_bytes=a)
    rows.vector("shared_activation", "moe", repeat=n_moe * has_shared, elements_read=up * tokens * shared_ff,
                elements_written=tokens * shared_ff, flops=act_flops * tokens * shared_ff, a_bytes=a, rows=tokens)
    rows.matmul("shared_down", "moe", repeat=n_moe * has_shared, m=tokens, n=d, k=shared_ff,
                w_bytes=w, a_bytes=a)
    _tp_sync(rows, wl, "moe", "moe", repeat=n_moe, payload=tokens * d * a)


def _embedding_and_head(rows, arch, wl, step, tokens):
    a, w, d, tp = wl.act_bytes, wl.stored_weight_bytes, arch.d_model, wl.tp
    one = jnp.ones_like(d)
    vocab = arch.vocab_size
    # Vocabulary-parallel embedding: each TP rank looks up the rows it owns, then all-reduce.
    rows.add(RowInfo("embedding", GATHER, HEAD, "embedding"), repeat=one,
             weight_bytes=tokens * d * w / tp, act_bytes=tokens * d * a)
    rows.collective("embedding_all_reduce", "embedding", ALL_REDUCE, repeat=one, payload=tokens * d * a,
                    size=tp, stride=1.0, group=HEAD)
    rows.vector("final_norm", "lm_head", repeat=one, elements_read=tokens * d, elements_written=tokens * d,
                flops=NORM_FLOPS[arch.norm] * tokens * d, a_bytes=a, rows=tokens, row_length=d, group=HEAD)
    logit_rows = step.logit_rows / wl.ep
    rows.matmul("lm_head", "lm_head", repeat=one, m=logit_rows, n=vocab / tp, k=d, w_bytes=w, a_bytes=a,
                group=HEAD)
    rows.collective("logits_all_gather", "lm_head", ALL_GATHER, repeat=one, payload=logit_rows * vocab * a,
                    size=tp, stride=1.0, group=HEAD)
    rows.vector("sampling", "lm_head", repeat=one, elements_read=logit_rows * vocab,
                elements_written=logit_rows, flops=SAMPLING_FLOPS * logit_rows * vocab, a_bytes=a,
                rows=logit_rows, row_length=vocab, group=HEAD)
