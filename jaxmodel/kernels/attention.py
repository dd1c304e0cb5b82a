"""Fused (FlashAttention-style) attention kernel time, decode and prefill.

The engine describes one attention row as ``matmuls`` = sequences x KV heads independent
problems; each multiplies ``m`` query rows (new tokens x query heads per KV head) against
``n`` keys of width ``k`` (:func:`jaxmodel.ops._attention_core`). A FlashAttention kernel
cuts that work into thread blocks (CTAs) and this model follows the pieces of it that set the
time:

* **Work units.** Row tiles of ``block_m`` query rows per (sequence, KV head). Decode packs
  the query heads of a KV head into one tile (FA2's "seqlen_q x groups swap", FA3's PackGQA);
  FA2 prefill gives every query head its own tiles.
* **Split-KV ("flash-decoding").** When the units cannot fill the GPU, the key range is split
  over more CTAs: FA2 with the FlashAttention heuristic, the fewest splits reaching 85 % of the
  best wave efficiency ``w / ceil(w)``, ``w = units x splits / slots``; FA3 with vLLM's fixed
  split budget (below). A split adds a combine
  kernel (a fixed cost plus a cost per split, which the combine reduces serially) and writes
  fp32 partial outputs.
* **Waves.** CTAs run ``ceil(CTAs / SMs)`` deep on the busiest SM; each costs a fixed setup
  time plus one tensor-core tile time per key tile. Causal prefill tiles are uneven: the
  waves run at the average tile count and the last one at the longest (the final row tile,
  which sees every key).
* **Memory.** In decode, K/V streaming overlaps the CTAs' work (a soft maximum of the two,
  sharpness ``1 + decode_overlap``); in prefill the two add. Query/output traffic and the
  KV-cache write (its own kernel) do not overlap (each CTA loads Q before and writes O after
  its key loop). FA2's grouped-decode path re-lays out Q and O in extra copy kernels when a
  batch of several sequences has several KV heads.

    t = fixed + relayout + combine + t_serial + softmax(t_tiles, t_kv)     (decode)
    t = fixed + t_serial + t_tiles + t_kv                                   (prefill)

Two kernel structures are known (``flash_version``): 2 = vLLM's FlashAttention-2 split-KV
kernel on Ampere (64 x 128 tiles, 2 CTAs per SM, split only for grouped decode, up to 128
splits); 3 = FlashAttention-3 on Hopper as vLLM runs it (128 x 128 tiles, 1 CTA per SM,
PackGQA, no split below 5 key tiles). vLLM hands FA3's ahead-of-time scheduler a fixed split
count, 16 (``_DEFAULT_MAX_NUM_SPLITS_FOR_CUDA_GRAPH`` in vllm/v1/attention/backends/flash_attn.py,
under full CUDA graphs), and the measured H100 kernels behave as if those 16 splits are shared
by the batch: the KV of one head is streamed by about ``max(batch, 16)`` CTAs (time flat in
batch x context up to batch 16, then doubling bandwidth from 16 to 32 sequences). So FA3 splits
each (sequence, KV head) ``floor(16 / sequences)`` ways instead of filling the SMs; against the
fill heuristic this takes the H100 held-out decode error from 10.2% to 6.7%
(``benchmarks/calibrate_attention.py``). Without a sequence count one sequence per KV head is
assumed.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks


class Structure(NamedTuple):
    """How a FlashAttention generation tiles the work (static: it shapes the program)."""

    block_m: float  # query rows per CTA tile
    block_n: float  # keys per tile of the key loop
    ctas_per_sm: float  # resident CTAs per SM (the split heuristic's slot count)
    max_splits: int  # most key splits the heuristic may pick
    min_split_blocks: float  # fewer key tiles than this: never split
    split_needs_group: bool  # FA2 splits only in the grouped one-query-token (swap) path
    pack_prefill: bool  # query heads of a KV head share row tiles in prefill too
    relayout: bool  # the grouped one-token path copies Q and O to and from its layout
    split_budget: float  # > 0: splits per (sequence, KV head) = budget / sequences, not the fill heuristic


STRUCTURES = {
    2: Structure(64.0, 128.0, 2.0, 128, 2.0, True, False, True, 0.0),
    3: Structure(128.0, 128.0, 1.0, 16, 5.0, False, True, False, 16.0),
}

#: Fit starting values (SI units); ``flash_version`` is chosen, not fitted.
START: dict[str, float] = {
    "decode_fixed_s": 8e-6, "decode_cta_s": 1e-6, "decode_eta_tile": 0.5, "decode_eta_mem": 0.8,
    "decode_overlap": 2.0,
    "prefill_fixed_s": 8e-6, "prefill_cta_s": 1e-6, "prefill_eta_tile": 0.6, "prefill_eta_mem": 0.7,
    "combine_s": 4e-6, "split_s": 2e-7, "relayout_s": 5e-6, "relayout_passes": 2.0,
}
#: Parameters a structure does not use (FA3 has no relayout copies).
UNUSED = {2: (), 3: ("relayout_s", "relayout_passes")}

_TINY = 1e-30  # floor of a ratio before its logarithm (keeps gradients finite)


class AttentionModel(eqx.Module):
    """Time of one fused-attention row (see the module docstring for the formula).

    Attributes (all positive; times in seconds):
        decode_fixed_s, prefill_fixed_s: launch and latency floor of the kernel(s) of a decode
            (one new token per sequence) or prompt row, including the KV-cache write kernel.
        decode_cta_s, prefill_cta_s: setup of one CTA (load Q, page table, epilogue), paid per
            SM wave.
        decode_eta_tile, prefill_eta_tile: fraction of one SM's tensor peak a CTA reaches on a
            ``block_m x block_n`` key tile (QK^T and PV); decode tiles are mostly padding.
        decode_eta_mem, prefill_eta_mem: fraction of the DRAM bandwidth reached streaming K/V
            (and moving Q/O).
        decode_overlap: sharpness ``q`` of the soft maximum ``(a^(1+q) + b^(1+q))^(1/(1+q))``
            of a decode row's tile time and K/V streaming time (``q -> 0``: they add; large
            ``q``: they overlap perfectly). Prefill rows add the two (a fit leaves no overlap:
            a prefill CTA loads its Q and K/V tiles before its math and is compute-bound).
        combine_s: fixed cost of the split-KV combine kernel.
        split_s: combine cost per split (the combine reduces the partials serially).
        relayout_s: fixed cost of FA2's Q/O layout copies in the grouped one-token path.
        relayout_passes: extra passes over the Q and O bytes those copies make (dimensionless).
        flash_version: 2 or 3, the kernel structure followed (static, not fitted).
    """

    decode_fixed_s: jax.Array
    decode_cta_s: jax.Array
    decode_eta_tile: jax.Array
    decode_eta_mem: jax.Array
    decode_overlap: jax.Array
    prefill_fixed_s: jax.Array
    prefill_cta_s: jax.Array
    prefill_eta_tile: jax.Array
    prefill_eta_mem: jax.Array
    combine_s: jax.Array
    split_s: jax.Array
    relayout_s: jax.Array
    relayout_passes: jax.Array
    flash_version: int = eqx.field(static=True)

    def __init__(self, decode_fixed_s=START["decode_fixed_s"], decode_cta_s=START["decode_cta_s"],
                 decode_eta_tile=START["decode_eta_tile"], decode_eta_mem=START["decode_eta_mem"],
                 decode_overlap=START["decode_overlap"], prefill_fixed_s=START["prefill_fixed_s"],
                 prefill_cta_s=START["prefill_cta_s"], prefill_eta_tile=START["prefill_eta_tile"],
                 prefill_eta_mem=START["prefill_eta_mem"],
                 combine_s=START["combine_s"], split_s=START["split_s"], relayout_s=START["relayout_s"],
                 relayout_passes=START["relayout_passes"], flash_version=3):
        values = dict(decode_fixed_s=decode_fixed_s, decode_cta_s=decode_cta_s, decode_eta_tile=decode_eta_tile,
                      decode_eta_mem=decode_eta_mem, decode_overlap=decode_overlap,
                      prefill_fixed_s=prefill_fixed_s, prefill_cta_s=prefill_cta_s,
                      prefill_eta_tile=prefill_eta_tile, prefill_eta_mem=prefill_eta_mem, combine_s=combine_s, split_s=split_s,
                      relayout_s=relayout_s, relayout_passes=relayout_passes)
        for name, value in values.items():
            arr = _checks.as_float(value, "AttentionModel", name)
            _checks.positive(arr, "AttentionModel", name)
            setattr(self, name, arr)
        try:
            version = int(flash_version)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"AttentionModel.flash_version must be 2 or 3 (got {flash_version!r})") from exc
        if version != flash_version or version not in STRUCTURES:
            raise ValueError(f"AttentionModel.flash_version must be 2 or 3 (got {flash_version!r})")
        self.flash_version = version

    @property
    def structure(self) -> Structure:
        return STRUCTURES[self.flash_version]

    def layout(self, decode: bool, m, n, k, matmuls, flops, cores, seqs=None):
        """(new tokens per sequence, query heads per KV head, work units, splits, CTAs,
        average and longest key tiles per CTA) of a row."""
        st = self.structure
        m, n, k, matmuls, flops, cores = jnp.broadcast_arrays(*(jnp.asarray(x, dtype=jnp.result_type(float))
                                                                for x in (m, n, k, matmuls, flops, cores)))
        one = jnp.ones_like(m)
        if decode:
            new = one
        else:
            # The engine's causal pair count gives the new tokens back: flops / (4 k matmuls)
            # = group x (new·past + new(new+1)/2) and m = group x new, so
            # flops / (4 k matmuls m) = n - (new - 1)/2 (sequence lengths are whole numbers).
            per_row = flops / (4.0 * k * matmuls * m)
            new = jnp.clip(jnp.round(2.0 * (n - per_row) + 1.0), 1.0, jnp.maximum(n, 1.0))
        group = jnp.maximum(m / new, 1.0)
        one_token = new == 1.0
        packed = one_token | st.pack_prefill
        units = jnp.where(packed, matmuls * jnp.ceil(m / st.block_m), matmuls * group * jnp.ceil(new / st.block_m))
        key_tiles = jnp.ceil(n / st.block_n)
        slots = cores * st.ctas_per_sm
        allowed = (group > 1.0) & one_token if st.split_needs_group else jnp.ones_like(m, dtype=bool)
        if st.split_budget > 0.0:
            # One sequence per KV head when the count is unknown: the most splits the budget allows.
            seqs = matmuls if seqs is None else jnp.broadcast_to(jnp.asarray(seqs, dtype=m.dtype), m.shape)
            budget = jnp.clip(jnp.floor(st.split_budget / jnp.maximum(seqs, 1.0)), 1.0,
                              jnp.minimum(float(st.max_splits), key_tiles))
            splits = jnp.where(allowed & (units < 0.8 * slots) & (key_tiles >= st.min_split_blocks), budget, 1.0)
        else:
            splits = _splits(units, slots, key_tiles, allowed, st)
        ctas = units * splits
        # Causal row tiles: the first sees the cached keys plus its own tokens, the last all n.
        tokens_per_tile = jnp.where(packed, st.block_m / group, st.block_m)
        first = jnp.ceil((n - new + jnp.minimum(new, tokens_per_tile)) / st.block_n)
        tiles = jnp.ceil(0.5 * (first + key_tiles) / splits)
        longest = jnp.ceil(key_tiles / splits)
        return new, group, units, splits, ctas, tiles, longest

    def time_s(self, decode: bool, m, n, k, matmuls, flops, bytes_moved, peak_flops, bandwidth_Bps, cores,
               seqs=None):
        """Seconds for one attention row (elementwise over broadcastable arrays).

        ``decode`` (static): the row's sequences each bring one new token. ``seqs``
        (optional): sequences in the row; only FA2's relayout copies depend on it (they run
        when there are several sequences and several KV heads). Without it they are assumed.
        """
        st = self.structure
        dtype = jnp.result_type(float)
        m, n, k, matmuls, flops, bytes_moved, peak, bw, cores = (
            jnp.asarray(x, dtype=dtype) for x in (m, n, k, matmuls, flops, bytes_moved, peak_flops, bandwidth_Bps,
                                                  cores))
        new, group, _, splits, ctas, tiles, longest = self.layout(decode, m, n, k, matmuls, flops, cores, seqs)
        if decode:
            fixed, cta, eta_tile, eta_mem = (self.decode_fixed_s, self.decode_cta_s, self.decode_eta_tile,
                                             self.decode_eta_mem)
        else:
            fixed, cta, eta_tile, eta_mem = (self.prefill_fixed_s, self.prefill_cta_s, self.prefill_eta_tile,
                                             self.prefill_eta_mem)
        # Tile time of one CTA holding a whole SM: 4 k block_m block_n FLOPs at peak / SMs.
        tile_s = 4.0 * k * st.block_m * st.block_n * cores / (peak * eta_tile)
        waves = jnp.ceil(ctas / cores)
        t_tiles = (waves - 1.0) * (cta + tiles * tile_s) + cta + longest * tile_s
        # Per unit the engine counts Q and O (m rows each), K and V read (n keys) and written
        # (new keys), all k wide at one element size: Q+O are m/(m+n+new) of the bytes and the
        # cache write new/(m+n+new). Q/O move before and after a CTA's key loop and the cache
        # write is its own kernel (reading the new K, V and writing them), so those bytes do
        # not overlap the tiles; the K/V read does.
        share = bytes_moved / (m + n + new)
        qo_bytes, write_bytes = share * m, share * new
        split = splits > 1.0
        partials = jnp.where(split, ctas * jnp.minimum(m, st.block_m) * k * 8.0, 0.0)  # fp32 O, written + read
        per_byte = 1.0 / (bw * eta_mem)
        t_kv = (share * n + partials) * per_byte
        relayout = (group > 1.0) & (new == 1.0) & st.relayout
        if seqs is not None:
            seqs = jnp.asarray(seqs, dtype=dtype)
            relayout = relayout & (seqs > 1.0) & (matmuls > seqs)
        t_qo = (qo_bytes * (1.0 + jnp.where(relayout, self.relayout_passes, 0.0)) + 2.0 * write_bytes) * per_byte
        extra = jnp.where(relayout, self.relayout_s, 0.0) + jnp.where(split, self.combine_s + splits * self.split_s,
                                                                        0.0)
        body = _soft_max(t_tiles, t_kv, 1.0 + self.decode_overlap) if decode else t_tiles + t_kv
        return fixed + extra + t_qo + body


def _soft_max(a, b, p):
    """(a^p + b^p)^(1/p) for a, b >= 0, p >= 1, scaled by the larger so nothing under- or
    overflows in float32 and the gradient stays finite when one term is zero."""
    big = jnp.maximum(jnp.maximum(a, b), _TINY)
    ra = jnp.maximum(a / big, _TINY)
    rb = jnp.maximum(b / big, _TINY)
    return big * jnp.exp(jnp.log(jnp.exp(p * jnp.log(ra)) + jnp.exp(p * jnp.log(rb))) / p)


def _splits(units, slots, key_tiles, allowed, st: Structure):
    """FlashAttention's split-KV count: 1 when the units nearly fill the slots (>= 80 %) or the
    key range is short; else the fewest splits whose wave efficiency reaches 85 % of the best,
    among split counts that change the tiles per split (a candidate axis of ``max_splits``)."""
    candidates = jnp.arange(1, st.max_splits + 1, dtype=units.dtype).reshape((1,) * units.ndim + (-1,))
    u, sl, nb = units[..., None], slots[..., None], key_tiles[..., None]
    valid = candidates <= jnp.minimum(jnp.minimum(float(st.max_splits), sl), nb)
    eligible = (candidates == 1.0) | (jnp.ceil(nb / candidates) != jnp.ceil(nb / jnp.maximum(candidates - 1.0, 1.0)))
    waves = u * candidates / sl
    efficiency = waves / jnp.ceil(waves)
    ok = valid & eligible
    best = jnp.max(jnp.where(ok, efficiency, 0.0), axis=-1, keepdims=True)
    chosen = jnp.min(jnp.where(ok & (efficiency >= 0.85 * best), candidates, float(st.max_splits)), axis=-1)
    split = allowed & (units < 0.8 * slots) & (key_tiles >= st.min_split_blocks)
    return jnp.where(split, chosen, 1.0)
