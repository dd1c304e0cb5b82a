"""Measured dense GEMMs (cuBLAS/CUTLASS-style tiled kernels) on a GPU of ``cores`` SMs.

One operator row is ``matmuls`` independent products ``Y[m x n] = X[m x k] · W[k x n]``. A
tiled kernel gives each CTA (one per SM at a time) a ``tm x tn`` output tile and, with split-K,
a ``1/s`` share of the K loop; the library picks the tiling. The model evaluates a fixed set
of candidate tilings (:data:`TILES` x :data:`SPLITS`, an array axis) and takes the fastest,
as the library's heuristics try to:

    tiles    = matmuls · ceil(m / tm) · ceil(n / tn),   ctas = s · tiles
    waves    = ceil(ctas / cores)                      (wave quantization)
    k_cta    = K_TILE · ceil(k / (s · K_TILE))          (K loop in whole K tiles)
    per_k    = softmax_p(2 tm tn, 2 (tm + tn) · feed_intensity) / (eta_tensor · peak / cores)
    epi      = epilogue · c_bytes · min(ctas, cores) / (eta_memory · bandwidth)
    wave     = k_cta · per_k + epi
    dram     = (bytes_moved + [s > 1] · 8 · matmuls · m · n · s) / (eta_memory · bandwidth)
    t        = min over candidates of  launch_s + [s > 1] · split_k_s + softmax_p(waves · wave, dram)

with ``softmax_p(a, b) = (a^p + b^p)^(1/p)``, ``p = 1 + overlap``, and ``c_bytes`` the output
tile a CTA writes: ``min(tm, m) · min(tn, n)`` elements of :data:`OUT_BYTES` (of
:data:`ACC_BYTES`, FP32 partial sums, when K is split; the partial sums are written and read
back once more, the ``8 · m · n · s`` bytes of the DRAM term).

Physical reading:

* **Tensor work vs operand feed.** Per unit of K a CTA does ``2 tm tn`` FLOPs and loads
  ``2 (tm + tn)`` bytes of its A and B tiles through L2 and shared memory. Small tiles are
  feed-bound, so a 64x64 tile runs well below peak and a 128x256 tile near it; the soft
  maximum also makes a 128x128 tile measurably slower per FLOP than a 128x256 one, as
  measured on A100 (one wave of 128x256 tiles takes 1.9x, not 2x, a wave of 128x128 tiles).
* **Wave quantization** over the SMs (``ceil``), and **split-K** to fill idle SMs for
  skinny or small outputs, at the price of FP32 partial-sum traffic and a reduction pass
  (``split_k_s``, a second kernel).
* **Epilogue.** At the end of a tile the CTA writes its output; CTAs of one wave do so at the
  same time, sharing DRAM bandwidth, and that write is not hidden behind tensor work for the
  exposed fraction ``epilogue`` (fitted ≈1.1 on A100, whose kernels write C after the main
  loop at a little below the read bandwidth; ≈0.6 on H100, whose persistent kernels overlap
  the TMA store with the next tile's main loop).
* **DRAM**: every byte the row must move (``bytes_moved``, the engine's count) at a
  sustained fraction of the datasheet bandwidth, overlapping tensor work as far as the soft
  maximum allows (small-m GEMMs are memory-bound).
* **Launch**: a fixed ``launch_s`` per kernel (what a back-to-back kernel costs inside a CUDA
  graph, prologue included: fitted 3.1 µs on A100, 2.55 µs on H100; the smallest measured
  GEMMs take 2.45 µs).

Every rate is a fraction or multiple of a datasheet figure (tensor peak, DRAM bandwidth, SM
count) and only the two fixed times are absolute, so a set fitted on one GPU predicts another
from its datasheet. ``flops`` is accepted for the engine's uniform call
signature; the tile model derives the work from ``m, n, k, matmuls`` (``flops = 2 m n k
matmuls`` for a GEMM row). Rows with no work (``m``, ``n``, ``k`` or ``matmuls`` zero) take
no time (no kernel is launched).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks

#: CTA output tiles (tm, tn): the shapes of cuBLAS/CUTLASS BF16 tensor-core kernels on
#: Ampere/Hopper (64x64 up to 128x256 / 256x128). Adding 64x256 and 256x64, or 32-row tiles,
#: moved held-out errors by under 0.1 point, so the set stays small.
TILES = ((64, 64), (64, 128), (128, 64), (128, 128), (128, 256), (256, 128))
#: Split-K factors the model lets the library choose (1 = no split).
SPLITS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
#: Depth of one main-loop step along K: Ampere's multistage BF16 kernels load 32-deep K tiles
#: (``..._32x3`` / ``..._32x4``), so K is processed, and padded, in multiples of 32 (Hopper's
#: kernels use 64; 32 fits both GPUs' tables as well or better).
K_TILE = 32.0
#: Bytes per output element (BF16/FP16 results, the calibrated case) and per FP32 partial sum.
OUT_BYTES = 2.0
ACC_BYTES = 4.0

#: Fit starting values, between the A100 and H100 fits (benchmarks/calibrate_gemm.py).
START: dict[str, float] = {
    "eta_tensor": 0.9, "feed_intensity": 40.0, "eta_memory": 0.8, "overlap": 2.5,
    "launch_s": 2.8e-6, "split_k_s": 2.3e-6, "epilogue": 0.8,
}

_NAME = "GemmModel"
_POSITIVE = ("eta_tensor", "eta_memory")
_NON_NEGATIVE = ("feed_intensity", "overlap", "launch_s", "split_k_s", "epilogue")


def _power(x, p):
    """x**p for x >= 0, 0 at x = 0 with finite gradients in x and p there (double where:
    the exponent's derivative x**p · log x would otherwise be 0 · -inf)."""
    ok = x > 0
    return jnp.where(ok, jnp.exp(p * jnp.log(jnp.where(ok, x, 1.0))), 0.0)


def _soft_max(a, b, p):
    """(a^p + b^p)^(1/p) for a, b >= 0, scaled by the larger so large p neither overflows nor
    underflows; 0 where both are 0."""
    big = jnp.maximum(a, b)
    ok = big > 0
    scale = jnp.where(ok, big, 1.0)
    total = _power(a / scale, p) + _power(b / scale, p)  # in [1, 2] where ok
    return jnp.where(ok, scale * jnp.exp(jnp.log(jnp.where(ok, total, 1.0)) / p), 0.0)


def _candidates(dtype):
    """Candidate (tm, tn, s) as flat arrays, one entry per tile x split."""
    tm = jnp.asarray([t[0] for t in TILES for _ in SPLITS], dtype)
    tn = jnp.asarray([t[1] for t in TILES for _ in SPLITS], dtype)
    s = jnp.asarray([s for _ in TILES for s in SPLITS], dtype)
    return tm, tn, s


class GemmModel(eqx.Module):
    """Time of ``matmuls`` independent GEMMs ``[m x k] · [k x n]`` (see the module docstring).

    Attributes (fitted A100 / H100 values from benchmarks/calibrate_gemm.py in brackets):
        eta_tensor: sustained fraction of one SM's share of the datasheet tensor peak
            (``peak / cores``) on a tile whose operand feed is no limit (dimensionless;
            [0.99 / 0.92]; the feed term holds the best tile, 128x256, to 94% / 91% of peak).
        feed_intensity: operand-feed limit, FLOP per byte of A/B tile traffic a CTA needs to
            keep its tensor cores busy (FLOP/byte; [57 / 33]); a tile's own intensity is
            ``tm tn / (tm + tn)``: 32 for 64x64, 64 for 128x128, 85 for 128x256. On A100 the
            implied per-SM operand bandwidth, 0.99 · 2.9 TFLOP/s / 57 = 50 GB/s, is about its
            share of the L2 bandwidth (5120 B/clk at 1.41 GHz over 108 SMs = 67 GB/s).
        eta_memory: sustained fraction of the datasheet DRAM bandwidth (dimensionless;
            [0.76 / 0.88]).
        overlap: ``p - 1`` of the soft maximum combining pipelined stages (operand feed vs
            tensor math in an SM; DRAM traffic vs tensor work in the kernel). 0 adds them
            (no overlap), large values approach the exact maximum (dimensionless; [2.8 / 2.6]).
        launch_s: fixed time per kernel: launch inside a CUDA graph and prologue (s;
            [3.1e-6 / 2.55e-6]).
        split_k_s: extra fixed time when K is split: the partial-sum reduction pass (s;
            [2.3e-6 / 3.1e-6]).
        epilogue: exposed fraction of the per-wave output-tile write (dimensionless; 1 = the
            write follows the main loop, 0 = fully hidden; [1.1 / 0.58]).
    """

    eta_tensor: jax.Array
    feed_intensity: jax.Array
    eta_memory: jax.Array
    overlap: jax.Array
    launch_s: jax.Array
    split_k_s: jax.Array
    epilogue: jax.Array

    def __init__(self, eta_tensor, feed_intensity, eta_memory, overlap, launch_s, split_k_s, epilogue):
        values = dict(eta_tensor=eta_tensor, feed_intensity=feed_intensity, eta_memory=eta_memory,
                      overlap=overlap, launch_s=launch_s, split_k_s=split_k_s, epilogue=epilogue)
        for name, value in values.items():
            arr = _checks.as_float(value, _NAME, name)
            if name in _POSITIVE:
                _checks.positive(arr, _NAME, name)
            else:
                _checks.non_negative(arr, _NAME, name)
            setattr(self, name, arr)

    def time_s(self, m, n, k, matmuls, flops, bytes_moved, peak_flops, bandwidth_Bps, cores):
        """Seconds for one operator row; every argument broadcasts elementwise.

        Args:
            m, n, k: GEMM dimensions (rows of X and Y, columns of W and Y, reduction depth).
            matmuls: independent GEMMs of that shape in the row.
            flops: ``2 m n k matmuls`` (accepted for the uniform kernel-model signature).
            bytes_moved: the row's DRAM bytes (``2 (m k + k n + m n) matmuls`` for plain BF16).
            peak_flops: dense tensor peak for the dtype (FLOP/s).
            bandwidth_Bps: DRAM bandwidth (bytes/s).
            cores: streaming multiprocessors.
        """
        args = dict(m=m, n=n, k=k, matmuls=matmuls, flops=flops, bytes_moved=bytes_moved,
                    peak_flops=peak_flops, bandwidth_Bps=bandwidth_Bps, cores=cores)
        owner = f"{_NAME}.time_s"
        arrays = {name: _checks.as_float(value, owner, name) for name, value in args.items()}
        for name in ("m", "n", "k", "matmuls", "flops", "bytes_moved"):
            _checks.non_negative(arrays[name], owner, name)
        for name in ("peak_flops", "bandwidth_Bps", "cores"):
            _checks.positive(arrays[name], owner, name)
        dtype = jnp.result_type(*arrays.values(), self.eta_tensor)
        shaped = jnp.broadcast_arrays(*(jnp.asarray(v, dtype) for v in arrays.values()))
        x = {name: v[..., None] for name, v in zip(arrays, shaped)}  # candidate axis last
        m, n, k, matmuls = x["m"], x["n"], x["k"], x["matmuls"]
        bandwidth, cores = x["bandwidth_Bps"], x["cores"]
        tm, tn, s = (c.reshape((1,) * (m.ndim - 1) + c.shape) for c in _candidates(dtype))
        p = 1.0 + self.overlap
        split = s > 1

        sm_rate = x["peak_flops"] * self.eta_tensor / cores
        per_k = _soft_max(2.0 * tm * tn, 2.0 * (tm + tn) * self.feed_intensity, p) / sm_rate
        ctas = matmuls * jnp.ceil(m / tm) * jnp.ceil(n / tn) * s
        waves = jnp.ceil(ctas / cores)
        k_cta = K_TILE * jnp.ceil(k / (s * K_TILE))
        dram_rate = bandwidth * self.eta_memory
        c_bytes = jnp.where(split, ACC_BYTES, OUT_BYTES) * jnp.minimum(tm, m) * jnp.minimum(tn, n)
        wave = k_cta * per_k + self.epilogue * c_bytes * jnp.minimum(ctas, cores) / dram_rate
        partials = jnp.where(split, 2.0 * ACC_BYTES * matmuls * m * n * s, 0.0)
        dram = (x["bytes_moved"] + partials) / dram_rate
        t = self.launch_s + jnp.where(split, self.split_k_s, 0.0) + _soft_max(waves * wave, dram, p)
        t = jnp.min(t, axis=-1)
        work = (m > 0) & (n > 0) & (k > 0) & (matmuls > 0)
        return jnp.where(work[..., 0], t, 0.0)
