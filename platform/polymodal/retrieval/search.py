"""Exact top-k cosine search over an Index, chunk by chunk with a running top-k, so memory
stays bounded by the chunk size whatever the corpus size. Plain numpy, no Ray."""

from __future__ import annotations

import numpy as np

from polymodal.retrieval.index import Index, normalise

CHUNK_BYTES = 64 * 1024 * 1024  # per chunk: its vectors, and the scores of every query


def check_queries(index: Index, queries: np.ndarray, k: int) -> np.ndarray:
    """Normalised float32 queries [q, dim], or ValueError saying what is wrong."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if index.rows == 0 or not index.shards:
        raise ValueError(f"{index.uri}: the index is empty")
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None]
    if queries.ndim != 2 or queries.shape[1] != index.dim:
        raise ValueError(
            f"queries of shape {queries.shape}, but {index.uri} holds {index.dim}-d vectors "
            f"(model '{index.meta['model']}', {index.meta['modality']})"
        )
    if not np.isfinite(queries).all():
        raise ValueError("queries contain NaN or inf")
    if (np.linalg.norm(queries, axis=1) == 0).any():
        raise ValueError("a query vector is all zeros")
    return normalise(queries)


def _best_of_chunk(scores: np.ndarray, first: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of one chunk [q, c]: every score >= the row's k-th best (all of them on a
    tie), padded with -inf, as (scores, global positions)."""
    q, c = scores.shape
    if c <= k:
        return scores, np.broadcast_to(np.arange(first, first + c), (q, c))
    kth = np.partition(scores, c - k, axis=1)[:, c - k : c - k + 1]
    rows, cols = np.nonzero(scores >= kth)
    counts = np.bincount(rows, minlength=q)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    best = np.full((q, counts.max()), -np.inf, dtype=np.float32)
    where = np.full((q, counts.max()), np.iinfo(np.int64).max, dtype=np.int64)
    best[rows, slot] = scores[rows, cols]
    where[rows, slot] = first + cols
    return best, where


def search_rows(
    index: Index, queries: np.ndarray, k: int, chunk_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(global row positions [q, k'], cosine scores [q, k']) with k' = min(k, rows), best
    first; equal scores in row order (shard order, then row within the shard)."""
    queries = check_queries(index, queries, k)
    q = len(queries)
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_BYTES // (4 * (index.dim + q)))
    top_scores = np.empty((q, 0), dtype=np.float32)
    top_rows = np.empty((q, 0), dtype=np.int64)
    for shard, start in zip(index.shards, index.starts):
        for lo in range(0, len(shard.vectors), chunk_rows):
            chunk = np.asarray(shard.vectors[lo : lo + chunk_rows])  # reads these rows only
            scores = queries @ chunk.T
            np.nan_to_num(scores, copy=False, nan=-np.inf)  # a damaged row never ranks first
            best, where = _best_of_chunk(scores, int(start) + lo, k)
            both_scores = np.concatenate([top_scores, best], axis=1)
            both_rows = np.concatenate([top_rows, where], axis=1)
            order = np.lexsort((both_rows, -both_scores), axis=1)[:, :k]
            top_scores = np.take_along_axis(both_scores, order, axis=1)
            top_rows = np.take_along_axis(both_rows, order, axis=1)
    keep = min(k, index.rows)
    return top_rows[:, :keep], top_scores[:, :keep]


def search(
    index: Index, queries: np.ndarray, k: int, chunk_rows: int | None = None
) -> tuple[list[list[str]], np.ndarray]:
    """(row ids [q][k'], cosine scores [q, k']) of the k rows nearest each query."""
    rows, scores = search_rows(index, queries, k, chunk_rows)
    ids = index.ids(rows)
    width = rows.shape[1]
    return [ids[i * width : (i + 1) * width] for i in range(len(rows))], scores
