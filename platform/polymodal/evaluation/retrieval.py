"""Recall@K for cross-modal retrieval, computed in query chunks so memory stays bounded."""

from __future__ import annotations

import torch


@torch.no_grad()
def recall_at_k(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    gallery_keys: torch.Tensor,
    ks: list[int],
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Fraction of queries whose top-k gallery items include their partner.

    Row i of `queries` is paired with row i of `gallery`; `gallery_keys` identify content.
    Items with identical content (a caption that repeats across samples, a duplicated image)
    cannot be told apart, so the gallery is deduplicated by key and retrieving the partner's
    content counts as a hit: with 30 distinct captions for 10k images, image→text retrieval
    ranks the 30 captions, not 10k copies of them. Memory is O(chunk_size x N), never N x N.
    """
    return _recall(queries, gallery, gallery_keys, ks, chunk_size, None)


@torch.no_grad()
def class_recall_at_k(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    gallery_keys: torch.Tensor,
    labels: torch.Tensor,
    ks: list[int],
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Fraction of queries whose top-k (deduplicated) gallery items include one of their own
    class (`labels`, row i's for query i and gallery item i): the hit that counts when a
    class is one recording or one caption (chance: about k / classes)."""
    return _recall(queries, gallery, gallery_keys, ks, chunk_size, labels)


def _recall(queries, gallery, gallery_keys, ks, chunk_size, labels) -> dict[int, float]:
    n = queries.shape[0]
    if n == 0:
        return {k: float("nan") for k in ks}
    keys, target = torch.unique(gallery_keys, return_inverse=True)
    first = torch.full((len(keys),), n, dtype=torch.long)
    first.scatter_reduce_(0, target, torch.arange(n), reduce="amin")
    unique_gallery = gallery[first]
    kmax = min(max(ks), len(keys))
    hits = {k: 0 for k in ks}
    for start in range(0, n, chunk_size):
        q = queries[start : start + chunk_size]
        top = (q @ unique_gallery.t()).topk(kmax, dim=1).indices
        if labels is None:
            match = top == target[start : start + chunk_size].unsqueeze(1)
        else:
            match = labels[first][top] == labels[start : start + chunk_size].unsqueeze(1)
        for k in ks:
            hits[k] += int(match[:, :k].any(dim=1).sum())
    return {k: hits[k] / n for k in ks}
