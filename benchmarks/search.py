"""Exact search over a memory-mapped index (polymodal.retrieval.search) against brute force over
the same vectors loaded into memory (the baseline), on random unit vectors, in this process.

Run: .venv/bin/python benchmarks/search.py [--quick] [--rows 100000,1000000] [--dim 128]
Prints one JSON line per (rows, queries): median seconds per call for both, their ratio, and
the peak memory each allocates (tracemalloc, which sees numpy's buffers). Mapped shard pages
are page cache, not allocations: the kernel drops them under pressure, which is why an index
larger than RAM works, at the disk's speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from polymodal.retrieval.index import IndexWriter, open_index
from polymodal.retrieval.search import search_rows

K = 10
REPEATS = 5


def _peak_mib(fn) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def _build(out: Path, rows: int, dim: int, shard_rows: int) -> float:
    rng = np.random.default_rng(0)
    writer = IndexWriter(str(out), model="bench", modality="image", dim=dim, shard_rows=shard_rows)
    start = time.perf_counter()
    for lo in range(0, rows, 100_000):
        n = min(100_000, rows - lo)
        writer.add([f"r{lo + i}" for i in range(n)], rng.normal(size=(n, dim)).astype(np.float32))
    writer.finish()
    return time.perf_counter() - start


def _median_s(fn) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _brute_force(matrix: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = queries @ matrix.T
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def case(rows: int, dim: int, root: Path) -> list[dict]:
    out = root / f"idx-{rows}-{dim}"
    build_s = _build(out, rows, dim, shard_rows=250_000)
    index = open_index(out)
    queries = np.random.default_rng(1).normal(size=(64, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    search_rows(index, queries[:1], K)  # pages into the cache: both sides then read from RAM

    results = {q: _median_s(lambda q=q: search_rows(index, queries[:q], K)) for q in (1, 64)}
    ours = {q: search_rows(index, queries[:q], K)[0] for q in (1, 64)}
    tracemalloc.start()
    matrix = np.concatenate([np.asarray(s.vectors) for s in index.shards])  # the baseline's
    load_mib = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    lines = []
    for q, ours_s in results.items():
        base_s = _median_s(lambda q=q: _brute_force(matrix, queries[:q]))
        same = np.array_equal(ours[q], _brute_force(matrix, queries[:q]))
        ours_mib = _peak_mib(lambda q=q: search_rows(index, queries[:q], K))
        base_mib = load_mib + _peak_mib(lambda q=q: _brute_force(matrix, queries[:q]))
        lines.append(
            {
                "rows": rows,
                "dim": dim,
                "queries": q,
                "k": K,
                "index_mb": round(rows * dim * 4 / 1e6, 1),
                "write_rows_per_s": round(rows / build_s),
                "mmap_chunked_s": round(ours_s, 5),
                "in_memory_s": round(base_s, 5),
                "ratio": round(ours_s / base_s, 2),
                "same_top_k": bool(same),
                "mmap_chunked_peak_mib": round(ours_mib, 1),
                "in_memory_peak_mib": round(base_mib, 1),
            }
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="100k rows only")
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    sizes = [100_000] if args.quick else [int(r) for r in args.rows.split(",")]
    with tempfile.TemporaryDirectory(prefix="pm-search-") as tmp:
        for rows in sizes:
            for line in case(rows, args.dim, Path(tmp)):
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
