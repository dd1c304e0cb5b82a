"""Fused-attention kernel model: hand-computed cases, limits, gradients, precision, fit recovery, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from calibration import fit
from calibration.loaders import SHARED_DATA
from calibration.ops import attention as adapter
from jaxmodel.kernels import attention
from jaxmodel.kernels.attention import START, AttentionModel

AIC = SHARED_DATA / "aiconfigurator-ops"
needs_aic = pytest.mark.skipif(not AIC.is_dir(), reason=f"AIConfigurator data not found at {AIC}")

A100 = dict(peak_flops=312e12, bandwidth_Bps=2.0e12, cores=108.0)
H100 = dict(peak_flops=989e12, bandwidth_Bps=3.35e12, cores=132.0)


def engine_row(batch, new, past, heads, kv_heads, head_dim=128.0, elem=2.0):
    """Inputs as jaxmodel.ops._attention_core counts them (flash, causal, no window)."""
    keys = past + new
    pairs = (past + new) * (past + new + 1) / 2 - past * (past + 1) / 2
    q = o = batch * new * heads * head_dim * elem
    kv = 2 * batch * keys * kv_heads * head_dim * elem + batch * new * 2 * kv_heads * head_dim * elem
    return dict(m=new * heads / kv_heads, n=keys, k=head_dim, matmuls=batch * kv_heads,
                flops=2 * heads * batch * pairs * 2 * head_dim, bytes_moved=q + o + kv)


def model(version=2, **overrides):
    return AttentionModel(flash_version=version, **{**START, **overrides})


@jax.jit
def _time(mdl, decode_rows, prefill_rows):
    return ({k: mdl.time_s(True, **r) for k, r in decode_rows.items()},
            {k: mdl.time_s(False, **r) for k, r in prefill_rows.items()})


def t(mdl, decode, row, hw=A100, **kw):
    """One row's time through a jitted call (eager dispatch of the split candidates is slow)."""
    args = {"x": {**row, **hw, **kw}}
    out = _time(mdl, args if decode else {}, {} if decode else args)
    return float(out[0 if decode else 1]["x"])


# ---- hand-computed cases ----------------------------------------------------------------------
def test_single_token_mha_decode_by_hand():
    params = dict(decode_fixed_s=5e-6, decode_cta_s=1e-6, decode_eta_tile=0.5, decode_eta_mem=0.5, decode_overlap=1.0)
    mdl = model(2, **params)
    row = engine_row(1, 1, 0, 1, 1)  # one sequence, one head, one key
    assert row["bytes_moved"] == 1536.0
    tile = 4 * 128 * 64 * 128 * 108 / (312e12 * 0.5)  # one 64x128 tile on a whole SM
    tiles = 1e-6 + tile  # one wave, one CTA, one key tile
    kv = 512 / (2e12 * 0.5)  # K/V read: n/(m+n+new) of the bytes
    serial = (512 + 2 * 512) / (2e12 * 0.5)  # Q+O, and the cache write read and written
    expected = 5e-6 + serial + np.sqrt(tiles**2 + kv**2)
    with jax.enable_x64(True):
        assert t(mdl, True, row) == pytest.approx(expected, rel=1e-12)


def test_split_heuristic_by_hand():
    mdl = model(2)
    jitted = jax.jit(lambda mdl, row, cores: mdl.layout(True, row["m"], row["n"], row["k"], row["matmuls"],
                                                        row["flops"], cores))

    def layout(mdl, decode, row, cores):
        assert decode
        return [float(x) for x in jitted(mdl, row, cores)]
    # FA2, one sequence, 8 query heads on one KV head, 4096 keys: 32 key tiles, 216 slots.
    # Efficiency s/216 is best at 32 splits (0.148); the fewest eligible splits reaching 85 %
    # of it (>= 27.2) is 32 (28..31 give the same tiles per split as 27 or 32 ... not eligible).
    new, group, units, splits, ctas, tiles, longest = layout(mdl, True, engine_row(1, 1, 4095, 8, 1), 108.0)
    assert (new, group, units, splits, ctas, tiles, longest) == (1, 8, 1, 32, 32, 1, 1)
    # Enough units (>= 80 % of 216 slots): no split.
    assert layout(mdl, True, engine_row(200, 1, 4095, 8, 1), 108.0)[3] == 1.0
    # FA2 never splits ungrouped (MHA) decode; FA3 does, but not below 5 key tiles.
    assert layout(mdl, True, engine_row(1, 1, 4095, 8, 8), 108.0)[3] == 1.0
    assert layout(model(3), True, engine_row(1, 1, 4095, 8, 8), 132.0)[3] > 1.0
    assert layout(model(3), True, engine_row(1, 1, 511, 8, 8), 132.0)[3] == 1.0
    # FA3 splits at most 16 ways (vLLM's split budget).
    assert layout(model(3), True, engine_row(1, 1, 131071, 1, 1), 132.0)[3] == 16.0


def test_fa3_split_budget_is_shared_by_the_batch():
    """vLLM's 16 FA3 splits per KV head are shared by the sequences: floor(16 / sequences)
    splits each, one at 16 sequences and beyond; capped by the key tiles (8 at 1023 keys)."""
    jitted = jax.jit(lambda mdl, row, seqs: mdl.layout(True, row["m"], row["n"], row["k"], row["matmuls"],
                                                       row["flops"], 132.0, seqs))
    for batch, kv_heads, keys, expected in ((1, 1, 65535, 16), (3, 2, 65535, 5), (4, 8, 65535, 4),
                                            (16, 1, 65535, 1), (1, 1, 1023, 8)):
        row = engine_row(batch, 1, keys, 8 * kv_heads, kv_heads)
        assert float(jitted(model(3), row, float(batch))[3]) == expected, (batch, kv_heads, keys)
    # Without a sequence count, one sequence per KV head is assumed (matmuls = 4 -> 4 splits).
    row = engine_row(1, 1, 65535, 32, 4)
    assert float(jitted(model(3), row, None)[3]) == 4.0


def test_prefill_layout_recovers_new_tokens():
    # 2 sequences of 100 prompt tokens, 8 heads on 2 KV heads: FA2 gives each query head its
    # own 64-row tiles (2 per head); causal: the first tile sees 64 keys, the last 100.
    jitted = jax.jit(lambda mdl, r, cores: mdl.layout(False, r["m"], r["n"], r["k"], r["matmuls"], r["flops"], cores))
    row = engine_row(2, 100, 0, 8, 2)
    new, group, units, splits, ctas, tiles, longest = (float(x) for x in jitted(model(2), row, 108.0))
    assert (new, group, units, splits, ctas, tiles, longest) == (100, 4, 32, 1, 32, 1, 1)
    # A chunk of 50 new tokens after 300 cached ones: FA3 packs 4 heads x 50 rows in 2 tiles.
    row = engine_row(1, 50, 300, 8, 2)
    new, group, units = (float(x) for x in jitted(model(3), row, 132.0)[:3])
    assert (new, group, units) == (50, 4, 4)


# ---- limits and invariants ---------------------------------------------------------------------
def test_memory_bound_decode_reduces_to_bandwidth_roofline():
    tiny = dict(decode_fixed_s=1e-15, decode_cta_s=1e-15, decode_eta_tile=1e6, decode_eta_mem=1.0,
                decode_overlap=60.0, combine_s=1e-15, split_s=1e-15, relayout_s=1e-15, relayout_passes=1e-9)
    row = engine_row(64, 1, 131071, 8, 8)
    with jax.enable_x64(True):
        assert t(model(2, **tiny), True, row) == pytest.approx(row["bytes_moved"] / 2e12, rel=1e-3)


def test_compute_bound_prefill_reduces_to_tensor_roofline():
    tiny = dict(prefill_fixed_s=1e-15, prefill_cta_s=1e-15, prefill_eta_tile=1.0, prefill_eta_mem=1e6)
    row = engine_row(4, 8192, 0, 32, 32)
    with jax.enable_x64(True):
        ratio = t(model(2, **tiny), False, row) / (row["flops"] / 312e12)
    # Causal row tiles are counted whole (the diagonal tile and the rounding of the average).
    assert 1.0 <= ratio <= 1.06


def test_time_grows_with_bytes_fixed_costs_and_falls_with_efficiency():
    row = engine_row(16, 1, 8191, 32, 8)
    base = t(model(2), True, row)
    assert t(model(2), True, {**row, "bytes_moved": 2 * row["bytes_moved"]}) > base
    assert t(model(2, decode_fixed_s=2 * START["decode_fixed_s"]), True, row) > base
    assert t(model(2, decode_eta_mem=2 * START["decode_eta_mem"]), True, row) < base
    prow = engine_row(4, 2048, 0, 32, 8)
    assert t(model(3), False, {**prow, "k": 256.0}) > t(model(3), False, prow)
    # Longer prompts cost more.
    assert t(model(3), False, engine_row(4, 4096, 0, 32, 8)) > t(model(3), False, prow)


def test_relayout_needs_several_sequences_and_kv_heads():
    mdl = model(2)
    one_seq = engine_row(1, 1, 1023, 32, 8)
    with_seqs = t(mdl, True, one_seq, seqs=1.0)
    assumed = t(mdl, True, one_seq)
    assert assumed == pytest.approx(with_seqs + START["relayout_s"], rel=0.05)
    # FA3 never relayouts: without a count it assumes one sequence per KV head (8 here).
    assert t(model(3), True, one_seq, hw=H100) == t(model(3), True, one_seq, hw=H100, seqs=8.0)


# ---- gradients and precision -------------------------------------------------------------------
ROWS = [(True, engine_row(1, 1, 0, 1, 1)), (True, engine_row(8, 1, 65535, 64, 8)),
        (True, engine_row(2048, 1, 126, 8, 1)), (False, engine_row(1, 1, 0, 8, 8)),
        (False, engine_row(2, 16384, 0, 64, 8)), (False, engine_row(3, 77, 500, 12, 4))]


@pytest.mark.parametrize("version", [2, 3])
def test_gradients_finite(version):
    mdl = model(version)
    @jax.jit
    def grads(m, peak, bw):
        def total(m, peak, bw):
            # Summing rows keeps one compile; a NaN in any row's gradient shows in the sum.
            return sum(m.time_s(decode, **row, peak_flops=peak, bandwidth_Bps=bw, cores=108.0) * 1e6
                       for decode, row in ROWS)

        return jax.grad(total, argnums=(0, 1, 2))(m, peak, bw)

    leaves = jax.tree_util.tree_leaves(grads(mdl, 312e12, 2e12))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    # A row with no K/V bytes at all (degenerate but in-domain) keeps finite gradients too.
    g = jax.grad(lambda m: m.time_s(True, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 312e12, 2e12, 108.0))(mdl)
    assert all(np.isfinite(np.asarray(x)) for x in jax.tree_util.tree_leaves(g))


def test_gradient_matches_finite_differences():
    decode, row = ROWS[1]
    with jax.enable_x64(True):
        mdl = model(2)

        @jax.jit
        def f(params):
            return AttentionModel(flash_version=2, **params).time_s(decode, **row, **A100)

        params = {k: jnp.float64(v) for k, v in START.items()}
        grad = jax.jit(jax.grad(f))(params)
        for name in ("decode_fixed_s", "decode_eta_mem", "decode_overlap", "decode_eta_tile", "split_s"):
            h = 1e-6 * params[name]
            up, down = dict(params), dict(params)
            up[name], down[name] = params[name] + h, params[name] - h
            numeric = (f(up) - f(down)) / (2 * h)
            assert float(grad[name]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-12), name
        assert mdl.flash_version == 2


@pytest.mark.parametrize("version", [2, 3])
def test_float32_matches_float64(version):
    mdl64 = None
    results = {}
    for x64 in (True, False):
        with jax.enable_x64(x64):
            mdl = model(version)
            mdl64 = mdl64 or mdl
            results[x64] = [t(mdl, decode, row) for decode, row in ROWS]
    np.testing.assert_allclose(results[False], results[True], rtol=1e-4)


def test_vectorized_over_broadcast_shapes():
    rows = [engine_row(b, 1, s, 32, 8) for b in (1, 64) for s in (127, 8191)]
    stacked = {k: jnp.array([r[k] for r in rows]) for k in rows[0]}
    vec = jax.jit(lambda m, r: m.time_s(True, **r, **A100))(model(2), stacked)
    assert vec.shape == (4,)
    np.testing.assert_allclose(np.asarray(vec), [t(model(2), True, r) for r in rows], rtol=1e-6)
    # A (2, 1) x (1, 2) grid broadcasts to (2, 2).
    grid = dict(stacked, m=stacked["m"][:2].reshape(2, 1), n=stacked["n"][:2].reshape(1, 2))
    assert jax.jit(lambda m, r: m.time_s(True, **r, **A100))(model(2), {
        k: (v.reshape(2, 2) if v.ndim == 1 else v) for k, v in grid.items()}).shape == (2, 2)


# ---- synthetic recovery ------------------------------------------------------------------------
def synthetic_table(rng):
    records = []
    for op in adapter.OPS:
        for batch in (1, 32, 256):
            for seq in ((1, 1023, 65535) if op == "attention_decode" else (16, 512, 4096)):
                for heads, kv in ((8, 8), (32, 8), (8, 1)):
                    records.append(dict(op=op, batch=batch, seq_q=1.0 if op == "attention_decode" else seq,
                                        seq_kv=seq, heads=heads, kv_heads=kv, head_dim=128.0, dtype="bf16",
                                        kernel="vllm_flash_attn kv:bf16", gpu="a100_sxm"))
    return pd.DataFrame.from_records(records)


def test_synthetic_recovery():
    import jaxmodel as jm

    rng = np.random.default_rng(1)
    system = jm.load_hardware("a100-sxm-80gb")
    table = synthetic_table(rng)
    # FA3 (fewer split candidates: a quicker compile); it has no relayout parameters.
    truth = {k: v for k, v in START.items() if k not in attention.UNUSED[3]}
    truth.update(decode_fixed_s=9e-6, decode_eta_mem=0.75, decode_overlap=3.0, prefill_eta_tile=0.6, split_s=2e-7)
    r = adapter.rows(table, system)
    with jax.enable_x64(True):
        clean = np.asarray(adapter.predict(truth, r, version=3))
    table["measured_s"] = clean * np.exp(rng.normal(0.0, 0.02, len(clean)))
    start = {k: v * 1.3 for k, v in truth.items()}

    def predict(params, rows):
        return adapter.predict(params, rows, version=3)

    result = fit.least_squares(predict, start, r, table["measured_s"].to_numpy())
    assert result.rms_log_residual < 0.025
    for name in ("decode_fixed_s", "decode_eta_mem", "decode_eta_tile", "prefill_fixed_s", "prefill_eta_tile",
                 "prefill_eta_mem", "combine_s"):
        assert abs(result.params[name] - truth[name]) <= max(5 * result.stderr[name], 0.1 * truth[name]), name


# ---- bad input ---------------------------------------------------------------------------------
def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="AttentionModel.decode_fixed_s"):
        AttentionModel(decode_fixed_s=-1.0)
    with pytest.raises(ValueError, match="AttentionModel.split_s"):
        AttentionModel(split_s=float("nan"))
    with pytest.raises(ValueError, match="flash_version must be 2 or 3"):
        AttentionModel(flash_version=4)
    with pytest.raises(ValueError, match="flash_version must be 2 or 3"):
        AttentionModel(flash_version=2.5)
    with pytest.raises(ValueError, match="no known FlashAttention generation"):
        adapter.flash_version("tpu_v5")
    assert AttentionModel(**{**START, "flash_version": 2.0}).flash_version == 2  # as stored in a fitted set
    assert set(START) == {f for f in AttentionModel.__dataclass_fields__ if f != "flash_version"}
    assert attention.UNUSED[3] == ("relayout_s", "relayout_passes")


def test_adapter_rejects_unknown_dtype():
    import jaxmodel as jm

    table = synthetic_table(None).head(2).assign(dtype="int4")
    with pytest.raises(ValueError, match="dtypes must be among"):
        adapter.rows(table, jm.load_hardware("a100-sxm-80gb"))


# ---- measured data -----------------------------------------------------------------------------
@needs_aic
def test_adapter_rows_match_engine_counts():
    import jaxmodel as jm
    from calibration.loaders import aiconfigurator

    table = adapter.select(aiconfigurator.load(systems="a100_sxm", ops=adapter.OPS, frameworks=("vllm",)))
    assert table.groupby("op").size().to_dict() == {"attention_decode": 5431, "attention_prefill": 5457}
    row = table[(table["op"] == "attention_decode") & (table["batch"] == 4) & (table["seq_kv"] == 1023)
                & (table["heads"] == 32) & (table["kv_heads"] == 8)]
    assert len(row) == 1
    r = adapter.rows(row, jm.load_hardware("a100-sxm-80gb"))
    expected = engine_row(4, 1, 1022, 32, 8)
    for key, value in expected.items():
        assert r[key][0] == pytest.approx(value, rel=1e-12), key
    assert r["seqs"][0] == 4 and r["decode"][0] == 1.0 and r["cores"][0] == 108.0
