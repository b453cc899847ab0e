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

    Row i of `queries` is paired with row i of `gallery`. A retrieved gallery item counts as a
    hit when its content key equals the partner's key: items with identical content (a caption
    that repeats across samples, a duplicated image) are indistinguishable, so retrieving any
    of them is correct. Memory is O(chunk_size x N), never N x N.
    """
    n = queries.shape[0]
    if n == 0:
        return {k: float("nan") for k in ks}
    kmax = min(max(ks), gallery.shape[0])
    hits = {k: 0 for k in ks}
    for start in range(0, n, chunk_size):
        q = queries[start : start + chunk_size]
        top = (q @ gallery.t()).topk(kmax, dim=1).indices
        match = gallery_keys[top] == gallery_keys[start : start + chunk_size].unsqueeze(1)
        for k in ks:
            hits[k] += int(match[:, :k].any(dim=1).sum())
    return {k: hits[k] / n for k in ks}
