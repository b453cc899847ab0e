"""The training order as a function of (seed, epoch, world size): which pieces each rank reads,
in which order, and where a rank's stream resumes after a checkpoint. No Ray, no I/O.

A position packs (piece ordinal in the rank's plan, row index within the piece's shuffled
rows) into one int64, so it rides along in tensor batches; a rank's positions only grow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ROW_BITS = 32  # a piece (Parquet row group or tar) holds fewer than 2**32 rows


def pack(ordinal: int, row: int) -> int:
    return (ordinal << ROW_BITS) | row


def unpack(position: int) -> tuple[int, int]:
    return position >> ROW_BITS, position & ((1 << ROW_BITS) - 1)


def piece_rng(seed: list[int], chunk: int = 0) -> np.random.Generator:
    """The generator that shuffles a piece's rows (chunk: a tar's n-th table of rows)."""
    return np.random.default_rng([*seed, chunk])


def epoch_plan(
    pieces: list[dict[str, Any]], seed: int, epoch: int, world: int
) -> list[list[dict[str, Any]]]:
    """Each rank's pieces for `epoch`, in reading order. All pieces in an order drawn from
    (seed, epoch) make one sequence of rows; rank r takes its r-th equal part, so that ranks
    hold equal rows: a piece cut between two ranks goes to each as its rows [lo, hi) (after
    the piece's own shuffle, whose seed every item carries). Tars (rows unknown) count as
    one row each and are never cut."""
    order = np.random.default_rng([seed, epoch]).permutation(len(pieces)).tolist()
    sizes = [max(int(pieces[i].get("rows", 1)), 1) for i in order]
    total = sum(sizes)
    bounds = [total * r // world for r in range(world + 1)]
    ranks: list[list[dict[str, Any]]] = [[] for _ in range(world)]
    start = 0
    for i, size in zip(order, sizes):
        for rank in range(world):
            lo, hi = max(start, bounds[rank]), min(start + size, bounds[rank + 1])
            if lo >= hi:
                continue
            item = {**pieces[i], "seed": [seed, epoch, i], "skip": 0}
            if pieces[i]["group"] >= 0:
                item |= {"lo": lo - start, "hi": hi - start}
            item["ordinal"] = len(ranks[rank])
            ranks[rank].append(item)
        start += size
    return ranks


def resume_plan(plan: list[dict[str, Any]], next_position: int) -> list[dict[str, Any]]:
    """A rank's plan from `next_position` on: the pieces before it dropped, the rows of its
    piece before it skipped (read, not decoded)."""
    ordinal, row = unpack(next_position)
    rest = [dict(item) for item in plan[ordinal:]]
    if rest:
        rest[0]["skip"] = row
    return rest
