"""Approximate nearest-neighbour search with FAISS, one graph or inverted list per index shard:
HNSW (graph) or IVF (k-means cells), by inner product of unit vectors (cosine)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

KINDS = ("exact", "hnsw", "ivf")


def faiss_module():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "approximate indexes need FAISS: pip install 'polymodal[search]' (faiss-cpu)"
        ) from exc
    return faiss


def default_params(kind: str, rows: int) -> dict[str, int]:
    """Build and search settings for a shard of `rows` rows (recorded in index.json;
    benchmarks/ann.py measures what they give)."""
    if kind == "hnsw":
        return {"M": 32, "ef_construction": 80, "ef_search": 96}
    nlist = max(1, min(4 * int(math.sqrt(rows)), rows // 39))  # FAISS: >= 39 rows per cell
    return {"nlist": nlist, "nprobe": max(1, nlist // 16)}


def build(vectors: np.ndarray, kind: str, params: dict[str, Any]) -> bytes:
    """A FAISS index of one shard's unit vectors, serialised."""
    faiss = faiss_module()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    else:
        raise ValueError(f"kind must be one of {KINDS[1:]} here, got {kind!r}")
    index.add(vectors)
    return faiss.serialize_index(index).tobytes()


def load(data: bytes, kind: str, params: dict[str, Any]):
    """A shard's FAISS index, set to search with params."""
    faiss = faiss_module()
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    if kind == "hnsw":
        index.hnsw.efSearch = params["ef_search"]
    else:
        index.nprobe = params["nprobe"]
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [q, k], shard rows [q, k]); -1 rows (and -inf scores) where fewer were found."""
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return np.where(rows < 0, -np.inf, scores).astype(np.float32), rows
