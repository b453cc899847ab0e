"""A Train worker's batches of one epoch from where it stands: one stream over the mixture's
pieces (data.mix: rows), or one stream per source taken in a drawn order (data.mix: batches)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from polymodal.config import Config
from polymodal.data.order import (
    batch_order,
    epoch_plan,
    mixture,
    redeal,
    resume_plan,
    source_plans,
)
from polymodal.data.pipeline import pieces_dataset
from polymodal.run_meta import Position, Segment
from polymodal.train.prepare import LoopInputs


def by_source(inputs: LoopInputs, cfg: Config) -> bool:
    """Whether a rank reads a stream per source (data.mix: batches, several sources)."""
    return cfg.data.mix == "batches" and len(inputs.train_pieces) > 1


class EpochData:
    """This rank's batches of an epoch; `next` holds its next position in each stream, as of
    the last batch handed out (what a mid-epoch checkpoint records)."""

    def __init__(self, inputs: LoopInputs, cfg: Config, rank: int, world: int, batch: int):
        self.inputs, self.cfg = inputs, cfg
        self.rank, self.world, self.batch = rank, world, batch
        self.by_source = by_source(inputs, cfg)
        self.next: list[int] = []
        self.redealt: list[Segment] = []  # the epoch's earlier parts (Position.redealt)
        self.source = 0  # the stream of the last batch handed out
        self.from_cache = False  # whether this epoch's streams are read from the cache

    def batches(
        self, epoch: int, position: Position | None, device: torch.device
    ) -> tuple[Iterator[dict[str, Any]], int]:
        """The batches, and the steps of the epoch already trained (a mid-epoch resume's)."""
        resumed = position if position is not None and position.epoch == epoch else None
        # The epoch's parts on earlier worker counts, and this one when the count changed:
        # after each the rest is dealt anew (order.redeal), so that every row is read once.
        parts = list(resumed.redealt) if resumed else []
        if resumed and resumed.world != self.world:
            parts.append(resumed.segment())
        worlds = [p.world for p in parts] + [self.world]
        plans, order = self.plans(epoch, worlds[0])
        for n, part in enumerate(parts, 1):
            plans = [
                redeal(ranks, [at[k] for at in part.streams], worlds[n])
                for k, ranks in enumerate(plans)
            ]
            order = self.order(plans, worlds[n], epoch, n)
        self.redealt = parts
        mine = [ranks[self.rank] for ranks in plans]
        self.next, done = [0] * len(mine), resumed.steps if resumed else 0
        if resumed and resumed.world == self.world:
            self.next = resumed.streams_of(self.rank)
            mine = [resume_plan(plan, at) for plan, at in zip(mine, self.next, strict=True)]
            order = order[done - (parts[-1].steps if parts else 0) :]
        self.from_cache = True
        streams = [self.stream(plan, device) for plan in mine]
        if not self.by_source:
            return self.positioned(streams[0], 0), done
        return self.interleaved(streams, order), done

    def plans(self, epoch: int, world: int) -> tuple[list[list[list[dict]]], list[int]]:
        """Every rank's pieces of the epoch on `world` ranks, per stream ([stream][rank]),
        and (data.mix: batches) the source of each step."""
        inputs, seed = self.inputs, self.cfg.train.seed
        if not self.by_source:
            read = mixture(inputs.train_pieces, inputs.weights, seed, epoch)
            return [epoch_plan(read, seed, epoch, world)], []
        plans = source_plans(inputs.train_pieces, inputs.weights, seed, epoch, world)
        return plans, self.order(plans, world, epoch, 0)

    def order(self, plans: list, world: int, epoch: int, part: int) -> list[int]:
        if not self.by_source:
            return []
        batch = self.cfg.train.batch_size // max(world, 1)  # the global batch stays
        return batch_order(plans, batch, self.cfg.train.seed, epoch, part)

    def stream(self, plan: list[dict[str, Any]], device: torch.device) -> Iterator[dict]:
        """The plan's rows read here from the node's decoded cache when it holds them all
        (the cache's first epoch has filled it), else decoded by Ray Data's tasks."""
        data, readers = self.cfg.data, self.inputs.train_reader.readers
        cached = not data.shuffle_buffer_rows and all(
            readers[item.get("source", 0)].cached(item) for item in plan
        )
        self.from_cache &= cached
        if cached:
            blocks = (b for item in plan for b in readers[item.get("source", 0)].blocks(item))
            return rebatched(blocks, self.batch, device)
        # Ray Data's blocks as they are, cut here like the cache's, measured slower on
        # median (benchmarks/RESULTS.md): its own batching stays.
        return iter(
            pieces_dataset(plan, self.inputs.train_reader).iter_torch_batches(
                batch_size=self.batch,
                drop_last=True,
                device=device,
                prefetch_batches=data.prefetch_batches,
                local_shuffle_buffer_size=data.shuffle_buffer_rows or None,
            )
        )

    def positioned(self, stream: Iterator[dict], k: int) -> Iterator[dict]:
        for raw in stream:
            self.next[k] = int(raw["position"][-1]) + 1
            yield raw

    def interleaved(self, streams: list[Iterator[dict]], order: list[int]) -> Iterator[dict]:
        """Each step's batch from the source `order` names; a stream that ends early (bad
        rows dropped) ends the epoch, as the one stream's end does."""
        for k in order:
            raw = next(streams[k], None)
            if raw is None:
                return
            self.next[k], self.source = int(raw["position"][-1]) + 1, k
            yield raw


def rebatched(
    blocks: Iterable[dict[str, np.ndarray]], batch: int, device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """Blocks of rows cut into tensor batches of `batch` rows in order, the last partial one
    dropped: what iter_torch_batches gives, as slices of the blocks (a copy only where a
    batch spans two), without read tasks, the object store, Arrow or collate threads."""
    held: list[dict[str, np.ndarray]] = []
    n = 0
    for block in blocks:
        held.append(block)
        n += len(block["label"])
        while n >= batch:
            rows = held[0] if len(held) == 1 else concatenate(held)
            yield {k: to_device(v[:batch], device) for k, v in rows.items()}
            held, n = [{k: v[batch:] for k, v in rows.items()}], n - batch


def concatenate(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":  # a pinned page lets the copy overlap the step
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
