"""LLM architecture description: one pytree for dense, GQA/MQA, MLA, sliding-window, MoE,
selective state-space (Mamba-1/Mamba-2) and hybrid (Jamba-style) models.

Only what changes the operator graph is static: the attention family (``gqa`` covers
multi-head, grouped-query and multi-query attention; ``mla`` is DeepSeek's multi-head latent
attention), whether MoE layers exist, the FFN form, the activation, the norm and the kind of
state-space mixer (if any). Every size
is an array leaf, so one compiled program serves every model of a family and sweeps may vary
any dimension.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _checks

ATTENTION_KINDS = ("gqa", "mla")
#: Selective state-space mixers: Mamba-1 (Gu & Dao 2023, arXiv 2312.00752) and Mamba-2's
#: state-space duality layer (Dao & Gu 2024, arXiv 2405.21060).
SSM_KINDS = ("mamba1", "mamba2")
FFN_KINDS = ("gated", "plain")

#: Vector-unit FLOPs per output element of the FFN activation (gated forms include the
#: multiply by the up projection). SiLU: exp, add, divide, multiply; GeLU (tanh form):
#: cube, two multiply-adds, tanh, add, two multiplies.
ACTIVATION_FLOPS = {"silu": 4.0, "gelu": 8.0, "gelu_tanh": 8.0, "relu": 1.0}

#: Vector-unit FLOPs per element of one norm. RMSNorm: square, sum, scale, weight.
#: LayerNorm adds the mean, the subtraction and the bias.
NORM_FLOPS = {"rmsnorm": 4.0, "layernorm": 7.0}

#: Learned parameters per channel of one norm (weight; LayerNorm also has a bias).
NORM_PARAMS = {"rmsnorm": 1.0, "layernorm": 2.0}

_NUMERIC_FIELDS = (
    "d_model", "n_layers", "vocab_size", "n_heads", "n_kv_heads", "head_dim", "d_ff",
    "tied_embeddings", "qkv_bias", "linear_bias", "norms_per_layer", "rotary_fraction",
    "n_learned_positions", "sliding_window", "n_sliding_layers",
    "n_experts", "top_k", "n_shared_experts", "moe_d_ff", "shared_d_ff", "n_dense_layers",
    "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
    "n_ssm_layers", "ssm_d_state", "ssm_d_conv", "ssm_expand", "ssm_dt_rank", "ssm_head_dim",
    "ssm_n_groups", "ssm_chunk", "kv_share_group",
)


class Architecture(eqx.Module):
    """A decoder-only transformer, dense or mixture-of-experts.

    Structure (static):
        attention: ``"gqa"`` (MHA when ``n_kv_heads == n_heads``, MQA when 1) or ``"mla"``.
        moe: whether layers after the first ``n_dense_layers`` are MoE layers.
        ffn: ``"gated"`` (SwiGLU/GeGLU: up, gate and down matrices) or ``"plain"`` (up, down).
        activation: ``"silu"``, ``"gelu"``, ``"gelu_tanh"`` or ``"relu"``.
        norm: ``"rmsnorm"`` or ``"layernorm"``.

    Sizes (array leaves; counts are whole numbers stored as floats so they can be swept):
        d_model, n_layers, vocab_size: hidden width, decoder layers, vocabulary.
        n_heads, n_kv_heads, head_dim: query heads, key/value heads and their width (GQA).
        d_ff: FFN width of dense layers.
        tied_embeddings: 1 if the LM head shares the embedding matrix, else 0.
        qkv_bias, linear_bias: 1 if the QKV projection / the other linears carry biases.
        norms_per_layer: norms in one decoder layer (2 for most models, 4 for Gemma-2).
        rotary_fraction: fraction of each q/k head rotated by RoPE (0 for ALiBi/learned).
        n_learned_positions: rows of a learned absolute position table (GPT-3), else 0.
        sliding_window: attention window of sliding-window layers in tokens (0 = none).
        n_sliding_layers: how many layers use the window (the rest attend globally).
        n_experts, top_k: routed experts per MoE layer and experts chosen per token.
        n_shared_experts, shared_d_ff: always-active experts and the width of each.
        moe_d_ff: FFN width of one routed expert.
        n_dense_layers: leading layers with a dense FFN (all layers when ``moe`` is False).
        q_lora_rank, kv_lora_rank: MLA query / key-value compression ranks (q 0 = none).
        qk_nope_head_dim, qk_rope_head_dim, v_head_dim: MLA head widths.
        windowed: (static) whether the op table carries rows for sliding-window layers;
            set automatically when ``n_sliding_layers`` > 0, or pass True to sweep it.
        ssm: (static) ``None``, ``"mamba1"`` or ``"mamba2"``: the mixer of the SSM layers.
        n_ssm_layers: layers whose mixer is a selective SSM instead of attention; attention
            rows repeat ``n_layers - n_ssm_layers`` times (0 for a pure Mamba model, whose
            attention sizes are then ignored and may be 0). Every layer keeps its FFN (dense
            or MoE, as for attention layers); ``d_ff = 0`` marks non-MoE layers without one
            (pure Mamba blocks are mixer + norm only).
        ssm_d_state: state size N per channel (Mamba-1) or per head (Mamba-2).
        ssm_d_conv: width of the causal depthwise convolution.
        ssm_expand: d_inner / d_model (d_inner channels run through the scan).
        ssm_dt_rank: Mamba-1 rank of the step-size projection (dt_proj input).
        ssm_head_dim: Mamba-2 head width P (heads = d_inner / P).
        ssm_n_groups: Mamba-2 groups sharing one B and C (like KV heads in GQA).
        ssm_chunk: Mamba-2 SSD chunk length Q.
        kv_share_group: consecutive attention layers sharing one KV cache (cross-layer
            attention, Brandon et al. 2024, arXiv 2405.12981); only the owning layer projects
            K/V and writes the cache, every layer reads it. 1 = no sharing (gqa only).
    """

    attention: str = eqx.field(static=True)
    moe: bool = eqx.field(static=True)
    ffn: str = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    norm: str = eqx.field(static=True)
    windowed: bool = eqx.field(static=True)
    ssm: str | None = eqx.field(static=True)

    d_model: jax.Array
    n_layers: jax.Array
    vocab_size: jax.Array
    n_heads: jax.Array
    n_kv_heads: jax.Array
    head_dim: jax.Array
    d_ff: jax.Array
    tied_embeddings: jax.Array
    qkv_bias: jax.Array
    linear_bias: jax.Array
    norms_per_layer: jax.Array
    rotary_fraction: jax.Array
    n_learned_positions: jax.Array
    sliding_window: jax.Array
    n_sliding_layers: jax.Array
    n_experts: jax.Array
    top_k: jax.Array
    n_shared_experts: jax.Array
    moe_d_ff: jax.Array
    shared_d_ff: jax.Array
    n_dense_layers: jax.Array
    q_lora_rank: jax.Array
    kv_lora_rank: jax.Array
    qk_nope_head_dim: jax.Array
    qk_rope_head_dim: jax.Array
    v_head_dim: jax.Array
    n_ssm_layers: jax.Array
    ssm_d_state: jax.Array
    ssm_d_conv: jax.Array
    ssm_expand: jax.Array
    ssm_dt_rank: jax.Array
    ssm_head_dim: jax.Array
    ssm_n_groups: jax.Array
    ssm_chunk: jax.Array
    kv_share_group: jax.Array

    def __init__(
        self,
        *,
        d_model,
        n_layers,
        vocab_size,
        n_heads,
        attention: str = "gqa",
        moe: bool = False,
        ffn: str = "gated",
        activation: str = "silu",
        norm: str = "rmsnorm",
        n_kv_heads=None,
        head_dim=None,
        d_ff=0,
        tied_embeddings=0,
        qkv_bias=0,
        linear_bias=0,
        norms_per_layer=2,
        rotary_fraction=1.0,
        n_learned_positions=0,
        sliding_window=0,
        n_sliding_layers=0,
        n_experts=0,
        top_k=0,
        n_shared_experts=0,
        moe_d_ff=0,
        shared_d_ff=None,
        n_dense_layers=None,
        q_lora_rank=0,
        kv_lora_rank=0,
        qk_nope_head_dim=0,
        qk_rope_head_dim=0,
        v_head_dim=0,
        windowed: bool = False,
        ssm: str | None = None,
        n_ssm_layers=0,
        ssm_d_state=0,
        ssm_d_conv=0,
        ssm_expand=0,
        ssm_dt_rank=0,
        ssm_head_dim=0,
        ssm_n_groups=0,
        ssm_chunk=0,
        kv_share_group=1,
    ):
        owner = "Architecture"
        _checks.one_of(attention, ATTENTION_KINDS, owner, "attention")
        _checks.one_of(ffn, FFN_KINDS, owner, "ffn")
        _checks.one_of(activation, ACTIVATION_FLOPS, owner, "activation")
        _checks.one_of(norm, NORM_FLOPS, owner, "norm")
        if ssm is not None:
            _checks.one_of(ssm, SSM_KINDS, owner, "ssm")
        self.ssm = ssm
        self.attention, self.moe, self.ffn = attention, bool(moe), ffn
        self.activation, self.norm = activation, norm
        self.windowed = bool(windowed) or isinstance(n_sliding_layers, jax.core.Tracer) or bool(
            jnp.any(jnp.asarray(n_sliding_layers) > 0))
        if n_kv_heads is None:
            n_kv_heads = n_heads
        if head_dim is None:
            heads = jnp.asarray(n_heads, dtype=float)
            # A pure SSM model may state no attention heads (head width then 0).
            head_dim = jnp.where(heads > 0, jnp.asarray(d_model, dtype=float) / jnp.where(heads > 0, heads, 1.0),
                                 0.0)
        if shared_d_ff is None:
            shared_d_ff = moe_d_ff
        if n_dense_layers is None:
            n_dense_layers = 0 if moe else n_layers
        values = dict(
            d_model=d_model, n_layers=n_layers, vocab_size=vocab_size, n_heads=n_heads,
            n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=d_ff, tied_embeddings=tied_embeddings,
            qkv_bias=qkv_bias, linear_bias=linear_bias, norms_per_layer=norms_per_layer,
            rotary_fraction=rotary_fraction, n_learned_positions=n_learned_positions,
            sliding_window=sliding_window, n_sliding_layers=n_sliding_layers, n_experts=n_experts,
            top_k=top_k, n_shared_experts=n_shared_experts, moe_d_ff=moe_d_ff, shared_d_ff=shared_d_ff,
            n_dense_layers=n_dense_layers, q_lora_rank=q_lora_rank, kv_lora_rank=kv_lora_rank,
            qk_nope_head_dim=qk_nope_head_dim, qk_rope_head_dim=qk_rope_head_dim, v_head_dim=v_head_dim,
            n_ssm_layers=n_ssm_layers, ssm_d_state=ssm_d_state, ssm_d_conv=ssm_d_conv, ssm_expand=ssm_expand,
            ssm_dt_rank=ssm_dt_rank, ssm_head_dim=ssm_head_dim, ssm_n_groups=ssm_n_groups, ssm_chunk=ssm_chunk,
            kv_share_group=kv_share_group,
        )
        for name in _NUMERIC_FIELDS:
            setattr(self, name, _checks.as_float(values[name], owner, name))
        self._validate()

    def _validate(self) -> None:
        o = "Architecture"
        for name in ("d_model", "n_layers", "vocab_size"):
            _checks.positive(getattr(self, name), o, name, integer=True)
        self._validate_ssm()
        # Attention sizes matter only when some layer attends (not for a pure SSM model).
        has_attention = self.ssm is None or _any_concrete(self.n_attention_layers > 0)
        if has_attention:
            _checks.positive(self.n_heads, o, "n_heads", integer=True)
        else:
            _checks.non_negative(self.n_heads, o, "n_heads", integer=True)
        for name in ("tied_embeddings", "qkv_bias", "linear_bias"):
            _checks.check_range(getattr(self, name), o, name, low=0, high=1, integer=True)
        _checks.non_negative(self.norms_per_layer, o, "norms_per_layer", integer=True)
        _checks.check_range(self.rotary_fraction, o, "rotary_fraction", low=0, high=1)
        _checks.non_negative(self.n_learned_positions, o, "n_learned_positions", integer=True)
        _checks.non_negative(self.sliding_window, o, "sliding_window", integer=True)
        _checks.non_negative(self.n_sliding_layers, o, "n_sliding_layers", integer=True)
        _require(self.n_sliding_layers <= self.n_attention_layers,
                 "n_sliding_layers must be <= n_layers" + ("" if self.ssm is None else " - n_ssm_layers"))
        _checks.positive(self.kv_share_group, o, "kv_share_group", integer=True)
        if self.attention == "gqa":
            if has_attention:
                _checks.positive(self.n_kv_heads, o, "n_kv_heads", integer=True)
                _checks.positive(self.head_dim, o, "head_dim", integer=True)
            _require(self.n_kv_heads <= self.n_heads, "n_kv_heads must be <= n_heads")
            if has_attention:
                _require(
                    jnp.mod(self.n_heads, self.n_kv_heads) == 0,
                    "n_heads must be a multiple of n_kv_heads (each KV head serves a whole group)",
                )
        else:
            for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                _checks.positive(getattr(self, name), o, name, integer=True)
            _checks.non_negative(self.q_lora_rank, o, "q_lora_rank", integer=True)
            _require(self.kv_share_group == 1, "kv_share_group must be 1 for mla attention (sharing is "
                     "modelled for gqa only)")
        _checks.non_negative(self.n_dense_layers, o, "n_dense_layers", integer=True)
        _require(self.n_dense_layers <= self.n_layers, "n_dense_layers must be <= n_layers")
        if not self.moe:
            _require(
                self.n_dense_layers == self.n_layers,
                "n_dense_layers must equal n_layers for a dense (moe=False) model",
            )
        if self.ssm is not None:
            # d_ff = 0: the non-MoE layers carry no FFN (Mamba blocks).
            _checks.non_negative(self.d_ff, o, "d_ff", integer=True)
        elif _any_concrete(self.n_dense_layers > 0):
            _checks.positive(self.d_ff, o, "d_ff", integer=True)
        if self.moe:
            _checks.positive(self.n_experts, o, "n_experts", integer=True)
            _checks.positive(self.top_k, o, "top_k", integer=True)
            _require(self.top_k <= self.n_experts, "top_k must be <= n_experts")
            _checks.positive(self.moe_d_ff, o, "moe_d_ff", integer=True)
            _checks.non_negative(self.n_shared_experts, o, "n_shared_experts", integer=True)
            _checks.non_negative(self.shared_d_ff, o, "shared_d_ff", integer=True)

    def _validate_ssm(self) -> None:
        o = "Architecture"
        if self.ssm is None:
            _require(self.n_ssm_layers == 0, "n_ssm_layers must be 0 when ssm is None (set ssm='mamba1' or "
                     "'mamba2')")
            return
        _checks.check_range(self.n_ssm_layers, o, "n_ssm_layers", low=0, high=float("inf"), integer=True)
        _require(self.n_ssm_layers <= self.n_layers, "n_ssm_layers must be <= n_layers")
        for name in ("ssm_d_state", "ssm_d_conv"):
            _checks.positive(getattr(self, name), o, name, integer=True)
        _checks.positive(self.ssm_expand, o, "ssm_expand")
        if self.ssm == "mamba1":
            _checks.positive(self.ssm_dt_rank, o, "ssm_dt_rank", integer=True)
            return
        for name in ("ssm_head_dim", "ssm_n_groups", "ssm_chunk"):
            _checks.positive(getattr(self, name), o, name, integer=True)
        heads = self.ssm_d_inner / self.ssm_head_dim
        _require(jnp.mod(self.ssm_d_inner, self.ssm_head_dim) == 0,
                 "ssm_head_dim must divide d_inner = ssm_expand * d_model (mamba2 heads are whole)")
        _require(jnp.mod(heads, self.ssm_n_groups) == 0,
                 "ssm_n_groups must divide the mamba2 heads d_inner / ssm_head_dim")

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def n_moe_layers(self) -> jax.Array:
        return self.n_layers - self.n_dense_layers if self.moe else jnp.zeros_like(self.n_layers)

    @property
    def n_dense_ffn_layers(self) -> jax.Array:
        """Non-MoE layers that carry a dense FFN: all ``n_dense_layers``, except in an SSM
        model whose ``d_ff = 0`` marks Mamba blocks without one."""
        if self.ssm is None:
            return self.n_dense_layers
        return self.n_dense_layers * (self.d_ff > 0)

    @property
    def n_attention_layers(self) -> jax.Array:
        """Layers whose mixer is attention (all of them without an SSM)."""
        return self.n_layers - self.n_ssm_layers

    @property
    def ssm_d_inner(self) -> jax.Array:
        """Channels of the SSM mixer: expand x d_model."""
        return self.ssm_expand * self.d_model

    @property
    def ssm_n_heads(self) -> jax.Array:
        """Mamba-2 heads (d_inner / head width); Mamba-1 has none (0)."""
        if self.ssm != "mamba2":
            return jnp.zeros_like(self.d_model)
        return self.ssm_d_inner / self.ssm_head_dim

    @property
    def ffn_up_matrices(self) -> float:
        """Matrices applied to the FFN input: up and gate for gated FFNs, up alone otherwise."""
        return 2.0 if self.ffn == "gated" else 1.0

    @property
    def q_head_dim(self) -> jax.Array:
        """Width of one query/key head (MLA: no-position part plus rotary part)."""
        return self.head_dim if self.attention == "gqa" else self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_cache_elements_per_token_layer(self) -> jax.Array:
        """Elements cached per token per attention layer for the whole model (before any
        sharding), averaged over the ``kv_share_group`` layers sharing one cache."""
        if self.attention == "gqa":
            return 2.0 * self.n_kv_heads * self.head_dim / self.kv_share_group
        return self.kv_lora_rank + self.qk_rope_head_dim

    def replace(self, **changes) -> "Architecture":
        """A copy with some fields changed (validated like a fresh construction)."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        current["windowed"] = False  # re-derived from n_sliding_layers unless asked for
        current.update(changes)
        return Architecture(**current)


def _any_concrete(cond) -> bool:
    if isinstance(cond, jax.core.Tracer):
        return False
    return bool(jnp.any(cond))


def _require(cond, message: str) -> None:
    if isinstance(cond, jax.core.Tracer):
        return
    if not bool(jnp.all(cond)):
        raise ValueError(f"Architecture: {message}")


# ---- parameter counts ----------------------------------------------------------------------
def attention_parameters(arch: Architecture, tp=1.0) -> jax.Array:
    """Attention parameters held by one of ``tp`` tensor-parallel ranks (``tp=1``: all of them).

    Query and output projections are split by heads. Key/value heads are split too, but
    replicated when there are fewer of them than ranks. MLA's down-projections (to the
    query and key-value latents) are replicated on every rank, as in vLLM. With cross-layer
    KV sharing only one layer in ``kv_share_group`` owns K/V projections: the per-layer
    average is given.
    """
    d = arch.d_model
    heads = arch.n_heads / tp
    if arch.attention == "gqa":
        kv_heads = jnp.maximum(arch.n_kv_heads / tp, 1.0)
        qkv_out = (heads + 2.0 * kv_heads / arch.kv_share_group) * arch.head_dim
        return d * qkv_out + heads * arch.head_dim * d + arch.qkv_bias * qkv_out + arch.linear_bias * d
    qk = arch.qk_nope_head_dim + arch.qk_rope_head_dim
    has_q_lora = arch.q_lora_rank > 0
    q = jnp.where(
        has_q_lora,
        d * arch.q_lora_rank + arch.q_lora_rank + arch.q_lora_rank * heads * qk,
        d * heads * qk,
    )
    kv_down = d * (arch.kv_lora_rank + arch.qk_rope_head_dim) + arch.kv_lora_rank
    kv_up = arch.kv_lora_rank * heads * (arch.qk_nope_head_dim + arch.v_head_dim)
    return q + kv_down + kv_up + heads * arch.v_head_dim * d


def ssm_sizes(arch: Architecture, tp=1.0) -> dict[str, jax.Array]:
    """Widths of one SSM mixer on one of ``tp`` tensor-parallel ranks.

    TP shards d_inner (Mamba-1) or the heads (Mamba-2) as vLLM's mixers do; Mamba-2's B/C
    groups are split when they are at least ``tp``, else replicated (like KV heads).
    Keys: ``inner`` (channels d_inner/tp), ``heads``, ``groups``, ``conv_channels`` (channels
    through the convolution: x for Mamba-1; x, B and C for Mamba-2), ``in_proj_out``
    (in_proj output width), ``state`` (recurrent state elements per sequence:
    d_inner·N, equal to heads·head_dim·N for Mamba-2).
    """
    n = arch.ssm_d_state
    inner = arch.ssm_d_inner / tp
    if arch.ssm == "mamba2":
        heads = arch.ssm_n_heads / tp
        groups = jnp.maximum(arch.ssm_n_groups / tp, 1.0)
        conv = inner + 2.0 * groups * n
        in_proj = inner + conv + heads  # z, then x/B/C (convolved), then dt
    else:
        heads = groups = jnp.zeros_like(inner)
        conv = inner
        in_proj = 2.0 * inner  # x and z; dt, B, C come from x_proj after the convolution
    return {"inner": inner, "heads": heads, "groups": groups, "conv_channels": conv,
            "in_proj_out": in_proj, "state": inner * n}


def ssm_parameters(arch: Architecture, tp=1.0) -> jax.Array:
    """Parameters of one SSM mixer held by one of ``tp`` TP ranks (0 without an SSM).

    Mamba-1 (HF ``MambaMixer``): in_proj d·2E, conv1d E·K + E (bias), x_proj E·(R + 2N),
    dt_proj R·E + E, A_log E·N, D E, out_proj E·d, with E = d_inner, K the conv width, R the
    dt rank. Mamba-2 (HF ``Mamba2Mixer``): in_proj d·(2E + 2GN + H), conv1d over E + 2GN
    channels with bias, dt_bias, A_log and D per head (3H), the gated RMSNorm weight E,
    out_proj E·d. In/out projections carry no bias in any supported model.
    """
    if arch.ssm is None:
        return jnp.zeros_like(arch.d_model)
    d, n = arch.d_model, arch.ssm_d_state
    z = ssm_sizes(arch, tp)
    inner = z["inner"]
    common = d * z["in_proj_out"] + z["conv_channels"] * (arch.ssm_d_conv + 1.0) + inner * d
    if arch.ssm == "mamba1":
        r = arch.ssm_dt_rank
        return common + inner * (r + 2.0 * n) + (r * inner + inner) + inner * n + inner
    return common + 3.0 * z["heads"] + inner


def layer_mixer_parameters(arch: Architecture, attention, ssm, norms) -> jax.Array:
    """All layers' mixers and norms, from per-layer counts: ``attention`` in each attention
    layer, ``ssm`` in each SSM layer and ``norms`` in every layer (unsharded or per device,
    as the counts given)."""
    if arch.ssm is None:
        return arch.n_layers * (attention + norms)
    return arch.n_attention_layers * attention + arch.n_ssm_layers * ssm + arch.n_layers * norms


def parameter_breakdown(arch: Architecture) -> dict[str, jax.Array]:
    """Parameter counts per component (elements, not bytes), unsharded.

    Keys: ``attention_per_layer`` (per attention layer), ``ssm_per_layer`` (per SSM layer),
    ``norms_per_layer``, ``dense_ffn_per_layer``,
    ``expert`` (one routed expert), ``shared_experts_per_layer``, ``router_per_layer``,
    ``embedding``, ``lm_head``, ``final_norm``.
    """
    d = arch.d_model
    up = arch.ffn_up_matrices
    attention = attention_parameters(arch)
    norm_params = NORM_PARAMS[arch.norm] * d
    dense_ffn = (up + 1.0) * d * arch.d_ff + arch.linear_bias * (up * arch.d_ff + d)
    expert = (up + 1.0) * d * arch.moe_d_ff
    shared = arch.n_shared_experts * (up + 1.0) * d * arch.shared_d_ff
    return {
        "attention_per_layer": attention,
        "ssm_per_layer": ssm_parameters(arch),
        "norms_per_layer": arch.norms_per_layer * norm_params,
        "dense_ffn_per_layer": dense_ffn,
        "expert": expert if arch.moe else jnp.zeros_like(d),
        "shared_experts_per_layer": shared if arch.moe else jnp.zeros_like(d),
        "router_per_layer": d * arch.n_experts if arch.moe else jnp.zeros_like(d),
        "embedding": arch.vocab_size * d + arch.n_learned_positions * d,
        "lm_head": (1.0 - arch.tied_embeddings) * arch.vocab_size * d,
        "final_norm": norm_params,
    }


def _parameters(arch: Architecture, routed_experts) -> jax.Array:
    """Parameters counting ``routed_experts`` routed experts per MoE layer."""
    p = parameter_breakdown(arch)
    moe_layer = routed_experts * p["expert"] + p["shared_experts_per_layer"] + p["router_per_layer"]
    mixers = layer_mixer_parameters(arch, p["attention_per_layer"], p["ssm_per_layer"], p["norms_per_layer"])
    return (
        mixers
        + arch.n_dense_ffn_layers * p["dense_ffn_per_layer"]
        + arch.n_moe_layers * moe_layer
        + p["embedding"]
        + p["lm_head"]
        + p["final_norm"]
    )


def total_parameters(arch: Architecture) -> jax.Array:
    """All parameters of the model, embeddings included."""
    return _parameters(arch, arch.n_experts)


def active_parameters(arch: Architecture) -> jax.Array:
    """Parameters one token passes through (routed experts counted ``top_k`` times)."""
    return _parameters(arch, arch.top_k)


def architecture_from_dict(spec: dict) -> Architecture:
    """Build an :class:`Architecture` from a preset dictionary (keys as in the constructor).

    Descriptive keys (``name``, ``source``, ``notes``) are ignored; any other unknown key
    is an error so that typos in preset files are caught.
    """
    allowed = {f.name for f in dataclasses.fields(Architecture)}
    descriptive = {"name", "source", "notes", "hf_model_type"}
    unknown = set(spec) - allowed - descriptive
    if unknown:
        raise ValueError(f"unknown architecture field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return Architecture(**{k: v for k, v in spec.items() if k in allowed})
