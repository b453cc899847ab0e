"""The training order as a function of (seed, epoch, world size): which pieces of which sources
an epoch reads (mixture), which of them each rank reads in which order, and where a rank's
stream resumes after a checkpoint. No Ray, no I/O.

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


def mixture(
    sources: list[list[dict[str, Any]]], weights: list[float], seed: int, epoch: int
) -> list[dict[str, Any]]:
    """The pieces an epoch reads from several sources, each tagged with its source's index:
    a weight w takes floor(w) passes over its source's pieces, and for the fraction left that
    share of its pieces (whole pieces: row groups or tars), drawn anew from (seed, epoch,
    source). A single source of weight 1 reads its pieces as they are."""
    out: list[dict[str, Any]] = []
    for k, (pieces, weight) in enumerate(zip(sources, weights, strict=True)):
        whole, part = divmod(weight, 1.0)
        out += [{**p, "source": k} for _ in range(int(whole)) for p in pieces]
        if part > 0 and pieces:
            picks = max(round(part * len(pieces)), 1)
            chosen = np.random.default_rng([seed, epoch, k]).choice(len(pieces), picks, False)
            out += [{**pieces[i], "source": k} for i in sorted(chosen.tolist())]
    return out


def mixture_rows(sources: list[list[dict[str, Any]]], weights: list[float]) -> int:
    """The rows an epoch of mixture reads, as weighted (a tar counts as one)."""
    return round(sum(w * sum(p.get("rows", 1) for p in ps) for ps, w in zip(sources, weights)))


def epoch_plan(
    pieces: list[dict[str, Any]], seed: int, epoch: int, world: int, salt: tuple[int, ...] = ()
) -> list[list[dict[str, Any]]]:
    """Each rank's pieces for `epoch`, in reading order. All pieces in an order drawn from
    (seed, epoch) make one sequence of rows, dealt over the ranks (deal); each item carries
    its piece's shuffle seed. salt: another stream's draws (a source's, mix=batches)."""
    order = np.random.default_rng([seed, epoch, *salt]).permutation(len(pieces)).tolist()
    items = []
    for i in order:
        item = {**pieces[i], "seed": [seed, epoch, *salt, i], "skip": 0}
        if pieces[i]["group"] >= 0:
            item |= {"lo": 0, "hi": int(pieces[i].get("rows", 1))}
        items.append(item)
    return deal(items, world)


def deal(items: list[dict[str, Any]], world: int) -> list[list[dict[str, Any]]]:
    """The items' rows as one sequence, rank r taking its r-th equal part, so that ranks hold
    equal rows: an item cut between two ranks goes to each as its rows [lo, hi) (of the
    piece's shuffled rows). Tars (rows unknown) count as one row each and are never cut."""
    sizes = [max(it["hi"] - it["lo"] if "hi" in it else int(it.get("rows", 1)), 1) for it in items]
    total = sum(sizes)
    bounds = [total * r // world for r in range(world + 1)]
    ranks: list[list[dict[str, Any]]] = [[] for _ in range(world)]
    start = 0
    for it, size in zip(items, sizes):
        for rank in range(world):
            lo, hi = max(start, bounds[rank]), min(start + size, bounds[rank + 1])
            if lo >= hi:
                continue
            item = dict(it)
            if "hi" in it:
                item |= {"lo": it["lo"] + lo - start, "hi": it["lo"] + hi - start}
            item["ordinal"] = len(ranks[rank])
            ranks[rank].append(item)
        start += size
    return ranks


def redeal(
    plans: list[list[dict[str, Any]]], next_positions: list[int], world: int
) -> list[list[dict[str, Any]]]:
    """Elastic resume: what the ranks of `plans` had still to read from `next_positions`
    (one per rank) on, dealt over `world` ranks. Every row left is read once, by one rank;
    a started row group continues from its next row (a started tar, on one rank, from its
    next row too)."""
    rest: list[dict[str, Any]] = []
    for plan, at in zip(plans, next_positions, strict=True):
        for item in resume_plan(plan, at):
            if "hi" in item:  # the rows already read are cut off, not skipped
                item |= {"lo": max(item["lo"], item.pop("skip")), "skip": 0}
                if item["lo"] >= item["hi"]:
                    continue
            rest.append(item)
    return deal(rest, world)


def rows_of(plan: list[dict[str, Any]]) -> int:
    """The rows a rank's plan reads (a tar counts as one)."""
    return sum(p["hi"] - p["lo"] if "hi" in p else p.get("rows", 1) for p in plan)


def source_plans(
    sources: list[list[dict[str, Any]]], weights: list[float], seed: int, epoch: int, world: int
) -> list[list[list[dict[str, Any]]]]:
    """data.mix: batches — each source's part of the epoch's mixture, planned over the ranks
    on its own: [source][rank] -> that rank's pieces of it, in reading order."""
    read = mixture(sources, weights, seed, epoch)
    return [
        epoch_plan([p for p in read if p["source"] == k], seed, epoch, world, salt=(k + 1,))
        for k in range(len(sources))
    ]


def batch_order(
    plans: list[list[list[dict[str, Any]]]], batch: int, seed: int, epoch: int, part: int = 0
) -> list[int]:
    """data.mix: batches — which source each step of the epoch draws its global batch from:
    every source as many times as each rank has whole batches of it (the fewest over ranks),
    in an order drawn from (seed, epoch). Sources are so drawn in proportion to their weighted
    rows, and the epoch is one pass over all of them. part: the n-th re-deal of the epoch's
    rest (redeal), whose order is drawn anew."""
    counts = [min(rows_of(rank) for rank in ranks) // batch for ranks in plans]
    steps = np.repeat(np.arange(len(plans)), counts)
    draw = [seed, epoch, 0] + ([part] if part else [])
    return np.random.default_rng(draw).permutation(steps).tolist()


def resume_plan(plan: list[dict[str, Any]], next_position: int) -> list[dict[str, Any]]:
    """A rank's plan from `next_position` on: the pieces before it dropped, the rows of its
    piece before it skipped (read, not decoded)."""
    ordinal, row = unpack(next_position)
    rest = [dict(item) for item in plan[ordinal:]]
    if rest:
        rest[0]["skip"] = row
    return rest
