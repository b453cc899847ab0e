"""Unit vectors: rows scaled to length 1 (a dot product is then the cosine similarity), and
Matryoshka prefixes of them renormalised."""

from __future__ import annotations

import numpy as np


def truncate(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Matryoshka: the first `dimensions` numbers of each vector, renormalised (None: all)."""
    return vectors if dimensions is None else normalise(np.asarray(vectors)[..., :dimensions])


def trained_sizes(embed_dim: int, matryoshka_dims: list[int]) -> list[int]:
    """The sizes a model's embeddings may be truncated to: its Matryoshka ones and full."""
    return sorted({*matryoshka_dims, embed_dim})


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows (the last axis) scaled to unit length (float32): a dot product is the cosine."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))
