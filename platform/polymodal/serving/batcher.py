"""Items of concurrent requests gathered into budgeted batches: one run per key (a model and
modality), items sorted by cost so that one long text or large image does not slow 31 others."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)  # what a batch is run for (a model, or a model and modality)


@dataclass
class _Item:
    value: Any
    cost: float
    future: asyncio.Future


def cut(costs: list[float], max_items: int, budget: float) -> list[list[int]]:
    """Indices of items in batches: cheapest first, each batch at most max_items long and at
    most `budget` when every item costs as much as its dearest (what padding makes it cost).
    An item dearer than the budget runs alone."""
    order = sorted(range(len(costs)), key=costs.__getitem__)
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) >= max_items or (len(batch) + 1) * costs[i] > budget):
            batches.append(batch)
            batch = []
        batch.append(i)
    return [*batches, batch] if batch else batches


class Batcher(Generic[K]):
    """submit(key, values, costs) → run(key, batch values)'s results for those values, in order.
    What arrives while a batch runs forms the next one; under load (the last batch held more
    than one item) a batch also waits up to wait_s after its oldest item for more to come, and
    a lone request never waits. `concurrency` batches run at once: 1 for a forward
    on this event loop, more for calls to another process."""

    def __init__(
        self,
        run: Callable[[K, list], Awaitable[list]],
        max_items: int,
        budget: float,
        wait_s: float = 0.0,
        concurrency: int = 1,
    ):
        self.run, self.max_items, self.budget, self.wait_s = run, max_items, budget, wait_s
        self.pending: dict[K, list[_Item]] = {}
        self.count = 0
        self.first_at = 0.0
        self.last_size = 0
        self.arrived = asyncio.Event()
        self.full = asyncio.Event()
        self.slots = asyncio.Semaphore(concurrency)
        self.task: asyncio.Task | None = None

    async def submit(self, key: K, values: list, costs: list[float] | None = None) -> list:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._serve())
        costs = costs or [1.0] * len(values)
        items = [_Item(v, c, loop.create_future()) for v, c in zip(values, costs)]
        if not self.pending:
            self.first_at = loop.time()
        self.pending.setdefault(key, []).extend(items)
        self.count += len(items)
        self.arrived.set()
        if self.count >= self.max_items:
            self.full.set()
        return list(await asyncio.gather(*[item.future for item in items]))

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.arrived.wait()
            # Items are taken only once a batch may start: what arrives while one runs
            # joins the next.
            await self.slots.acquire()
            delay = self.first_at + self.wait_s - loop.time()
            if delay > 0 and self.last_size > 1 and not self.full.is_set():
                try:
                    await asyncio.wait_for(self.full.wait(), delay)
                except asyncio.TimeoutError:
                    pass
            key = next(iter(self.pending))
            items = self.pending.pop(key)
            self.count -= len(items)
            if self.count < self.max_items:
                self.full.clear()
            if self.pending:
                self.first_at = loop.time()
            else:
                self.arrived.clear()
            for n, rows in enumerate(cut([i.cost for i in items], self.max_items, self.budget)):
                if n:
                    await self.slots.acquire()
                self.last_size = len(rows)
                task = loop.create_task(self._run(key, [items[i] for i in rows]))
                task.add_done_callback(lambda _: self.slots.release())

    async def _run(self, key: K, batch: list[_Item]) -> None:
        try:
            results = await self.run(key, [item.value for item in batch])
        except Exception as exc:  # every caller in the batch gets the error
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, result in zip(batch, results):
            if not item.future.done():  # its request may have been cancelled meanwhile
                item.future.set_result(result)
