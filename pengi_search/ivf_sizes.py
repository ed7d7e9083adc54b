"""How an IVF-PQ index is sized from its vectors: its cells, sub-quantizers, cells probed and training sample."""

from __future__ import annotations

import numpy as np

_TRAIN_SEED = 1234


def auto_nlist(count: int) -> int:
    """About 2 sqrt(n) IVF cells (a power of two), with at least 39 training points each."""
    nlist = 1 << max(4, round(np.log2(2 * np.sqrt(max(count, 1)))))
    while nlist > 16 and nlist * 39 > count:
        nlist //= 2
    return nlist


def auto_pq_m(dim: int) -> int:
    """The largest divisor of dim up to dim / 16 (16 dimensions per byte of code), but up to 8 for small dims."""
    target = max(dim // 16, min(dim, 8))
    return max(m for m in range(1, target + 1) if dim % m == 0)


def auto_nprobe(nlist: int) -> int:
    """nlist / 64 cells, at least 16: recall is bound by the PQ shortlist long before (benchmarks/bench_vectors.py)."""
    return int(min(nlist, max(16, nlist // 64)))


def training_rows(count: int, nlist: int) -> np.ndarray:
    """The positions of a fixed random subset of `count` vectors (50 points per cell, at least 256 x 39 for the PQ
    codebooks), sorted: deterministic builds, whether the vectors are in memory (`build`) or read (`build_streamed`)."""
    size = min(count, max(50 * nlist, 256 * 39))
    if size == count:
        return np.arange(count)
    return np.sort(np.random.default_rng(_TRAIN_SEED).choice(count, size, replace=False))
