"""The Embedder deployment: checkpoints multiplexed per replica (LRU), items of many requests
embedded in one forward per (model, modality) through @serve.batch."""

import asyncio
import time
from collections import defaultdict

import numpy as np
from ray import serve

from polymodal.inference.model import LoadedModel, list_models
from polymodal.serving.metrics import embedder_metrics


@serve.deployment
class Embedder:
    def __init__(
        self,
        model_dir: str,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.01,
        max_models: int = 4,
    ):
        self.paths = list_models(model_dir)
        self.embed_batch.set_max_batch_size(max_batch_size)
        self.embed_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.metrics = embedder_metrics()

        # The LRU limit comes from config, so the multiplexed loader is made per instance
        # (from a plain function: Serve keeps its cache as an attribute of it).
        async def load(model_id: str) -> LoadedModel:
            start = time.perf_counter()
            model = await asyncio.to_thread(LoadedModel.load, self.paths[model_id])
            seconds = time.perf_counter() - start
            self.metrics.model_load.observe(seconds, tags={"model": model_id})
            return model

        self.get_model = serve.multiplexed(max_num_models_per_replica=max_models)(load)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.pending = 0

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed_batch(self, items: list[tuple[str, str, object]]) -> list[np.ndarray]:
        """Items from many requests: one forward per (model, modality) group."""
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, (model_id, modality, _) in enumerate(items):
            groups[(model_id, modality)].append(i)
        out: list[np.ndarray | None] = [None] * len(items)
        for (model_id, modality), rows in groups.items():
            model = await self.get_model(model_id)
            values = [items[i][2] for i in rows]
            # On the event loop: calls arriving meanwhile queue up and form the next batch.
            # (In a thread, GIL contention with the loop cut batches to 1-4 items and
            # throughput by a third; benchmarks/serve.py.)
            vectors = model.embed(modality, values)
            self.metrics.batch_size.observe(len(rows), tags={"modality": modality})
            for i, vec in zip(rows, vectors):
                out[i] = vec
        return out

    async def embed(self, model_id: str, items: list[tuple[str, object]]) -> list[np.ndarray]:
        """One request's (modality, value) items, batched with other requests' items."""
        self._track(len(items))
        try:
            return await asyncio.gather(*[self.embed_batch((model_id, m, v)) for m, v in items])
        finally:
            self._track(-len(items))

    def _track(self, change: int) -> None:
        self.pending += change
        self.metrics.queue_depth.set(self.pending, tags={"replica": self.replica})

    async def classify(self, model_id: str, values: dict) -> dict[str, float]:
        model = await self.get_model(model_id)
        return model.classify(values)
