"""Unit vectors: rows scaled to length 1 (a dot product is then the cosine similarity), and
Matryoshka prefixes of them renormalised."""

from __future__ import annotations

import numpy as np


def truncate(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Matryoshka: the first `dimensions` numbers of each vector, renormalised (None: all)."""
    if dimensions is None:
        return vectors
    head = np.asarray(vectors, dtype=np.float32)[..., :dimensions]
    return head / np.maximum(np.linalg.norm(head, axis=-1, keepdims=True), np.float32(1e-12))


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so a dot product is the cosine similarity."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))
