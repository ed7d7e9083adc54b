"""Query latency (p50/p99, one query at a time) and recall@10 against exact search for the vector index types.

    python benchmarks/bench_vectors.py                                  # 10k and 100k, d=1024
    python benchmarks/bench_vectors.py --sizes 1000000 --types hnsw,ivfpq
    python benchmarks/bench_vectors.py --sizes 10000 --dim 512 --queries 500

The vectors stand in for caption embeddings: points around a few thousand cluster centres in a 48-dimensional
latent space, projected to `--dim` dimensions with a little isotropic noise, then L2-normalised. Queries come from
the same distribution and are not in the index. Recall@10 is |found top-10 & exact top-10| / 10, averaged.
Each row is one setting of the search knob (HNSW efSearch, IVF nprobe); build time is per index. The exact index
is timed on the first `--flat-queries` queries only (a 1M scan takes about a second per query on 2 cores).
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from typing import Any

import faiss
import numpy as np

from pengi_search.vectors import IndexParams, VectorIndex, l2_normalise

LATENT_DIM = 48
_CHUNK = 50_000
# Search knobs tried on each built index: HNSW efSearch; IVF-PQ (nprobe, k_factor), k * k_factor re-ranked exactly.
SWEEPS: dict[str, list[Any]] = {
    "flat": [None],
    "hnsw": [32, 64, 128],
    "ivfpq": [(16, 16), (32, 16), (64, 16), (32, 32), (64, 32), (128, 32)],
}


class ClusteredVectors:
    """Caption-like vectors: cluster centres in a low-dimensional latent space, projected up."""

    def __init__(self, count: int, dim: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.centres = rng.standard_normal((max(50, count // 500), LATENT_DIM), dtype=np.float32)
        self.projection = rng.standard_normal((LATENT_DIM, dim), dtype=np.float32) / np.sqrt(LATENT_DIM)

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((count, self.dim), dtype=np.float32)
        for start in range(0, count, _CHUNK):
            n = min(_CHUNK, count - start)
            latent = self.centres[rng.integers(0, len(self.centres), n)]
            latent += 0.35 * rng.standard_normal((n, LATENT_DIM), dtype=np.float32)
            block = latent @ self.projection
            block += 0.05 * rng.standard_normal((n, self.dim), dtype=np.float32)
            out[start : start + n] = l2_normalise(block)
        return out


def exact_top10(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    return flat.search(queries, 10)[1]


def measure(index: VectorIndex, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """p50 ms, p99 ms and recall@10 over single-query searches."""
    index.search(queries[:5], 10)  # warm-up (GPU copy, caches)
    times, hits = [], 0
    for row, expected in zip(queries, truth, strict=True):
        start = time.perf_counter()
        _, ids = index.search(row, 10)
        times.append(time.perf_counter() - start)
        hits += len(set(ids[0].tolist()) & set(expected.tolist()))
    p50, p99 = np.percentile(times, [50, 99]) * 1e3
    return float(p50), float(p99), hits / (10 * len(queries))


def knob_of(kind: str, value: Any, index: VectorIndex) -> str:
    if kind == "hnsw":
        index.tune(ef_search=value)
        return f"efSearch={value}"
    if kind == "ivfpq":
        index.tune(nprobe=value[0], k_factor=value[1])
        p = index.params
        return f"nprobe={p.nprobe} nlist={p.nlist} m={p.pq_m} refine={p.refine}x{p.k_factor}"
    return "exact"


def run_size(size: int, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    source = ClusteredVectors(size, args.dim, args.seed)
    start = time.perf_counter()
    base = source.sample(size, rng)
    queries = source.sample(args.queries, rng)
    truth = exact_top10(base, queries)
    ids = np.arange(size, dtype=np.int64) * 2 + 1  # ids are not positions, as in the database
    truth_ids = ids[truth]
    prep_s = time.perf_counter() - start
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n# n={size:,} d={args.dim} queries={args.queries} (data + ground truth {prep_s:.1f} s, load average {load})"
    )
    print(f"{'type':6} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>9}  setting")
    for kind in args.types:
        params = IndexParams(type=kind, refine=args.refine, pq_m=args.pq_m)
        start = time.perf_counter()
        index = VectorIndex.build(ids, base, params, use_gpu=False if args.cpu else None)
        build_s = time.perf_counter() - start
        if index.type != kind:
            print(f"{kind:6} built as {index.type} (too few vectors)")
        for value in SWEEPS[index.type]:
            setting = knob_of(index.type, value, index)
            count = args.flat_queries if index.type == "flat" else len(queries)  # exact search: recall is 1
            p50, p99, recall = measure(index, queries[:count], truth_ids[:count])
            print(f"{index.type:6} {build_s:8.1f} {p50:8.2f} {p99:8.2f} {recall:9.3f}  {setting}", flush=True)
        del index
        gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated index sizes")
    parser.add_argument("--dim", type=int, default=1024, help="vector dimension (Pengi's text embedding: 1024)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--types", default="flat,hnsw,ivfpq")
    parser.add_argument("--flat-queries", type=int, default=50, help="queries timed on the exact index (slow)")
    parser.add_argument("--refine", default="flat", choices=["flat", "sq8"], help="IVF-PQ re-ranking vectors")
    parser.add_argument("--pq-m", type=int, default=None, help="IVF-PQ sub-quantizers (default: automatic)")
    parser.add_argument("--cpu", action="store_true", help="never search on a GPU")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.types = args.types.split(",")
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    for size in (int(s) for s in args.sizes.split(",")):
        run_size(size, args)


if __name__ == "__main__":
    main()
