"""Checkpoints served in this process: loaded on demand and kept per replica (LRU), items of
concurrent requests embedded in budgeted batches, one forward per (model, modality)."""

import asyncio
import time
from collections import defaultdict

import numpy as np
from ray import serve

from polymodal.inference.model import LoadedModel, list_models
from polymodal.modalities import MODALITIES
from polymodal.serving.batcher import Batcher
from polymodal.serving.metrics import embedder_metrics


class Encoders:
    """The models of model_dir, in the replica that holds this (the gateway itself, or an
    Embedder deployment when the service is split). A batch holds at most max_batch_size items
    and at most max_batch_size full-size items' worth of work (a large image counts as many)."""

    def __init__(self, model_dir: str, max_batch_size: int, wait_s: float, max_models: int):
        self.paths = list_models(model_dir)
        self.metrics = embedder_metrics()
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.pending = 0

        # The LRU limit comes from config, so the multiplexed loader is made per instance
        # (from a plain function: Serve keeps its cache as an attribute of it).
        async def load(model_id: str) -> LoadedModel:
            start = time.perf_counter()
            model = await asyncio.to_thread(LoadedModel.load, self.paths[model_id])
            seconds = time.perf_counter() - start
            self.metrics.model_load.observe(seconds, tags={"model": model_id})
            return model

        self.get_model = serve.multiplexed(max_num_models_per_replica=max_models)(load)
        self.batcher = Batcher(self._forward, max_batch_size, float(max_batch_size), wait_s)

    async def _forward(self, key: tuple[str, str], values: list) -> list[np.ndarray]:
        model_id, modality = key
        model = await self.get_model(model_id)
        # On the event loop: requests arriving meanwhile queue up and form the next batch.
        # (In a thread, GIL contention with the loop cut batches to 1-4 items and throughput
        # by a third; benchmarks/serve.py.)
        vectors = model.embed(modality, values)
        self.metrics.batch_size.observe(len(values), tags={"modality": modality})
        return list(vectors)

    async def embed(self, model_id: str, items: list[tuple[str, object]]) -> list[np.ndarray]:
        """One request's (modality, value) items, batched with other requests' items."""
        model = await self.get_model(model_id)
        rows: dict[str, list[int]] = defaultdict(list)
        for i, (modality, _) in enumerate(items):
            rows[modality].append(i)
        self._track(len(items))
        try:
            results = await asyncio.gather(
                *[
                    self.batcher.submit(
                        (model_id, modality),
                        [items[i][1] for i in where],
                        [MODALITIES[modality].cost(items[i][1], model.prep) for i in where],
                    )
                    for modality, where in rows.items()
                ]
            )
        finally:
            self._track(-len(items))
        out: list[np.ndarray] = [None] * len(items)  # type: ignore[list-item]
        for where, vectors in zip(rows.values(), results):
            for i, vector in zip(where, vectors):
                out[i] = vector
        return out

    def _track(self, change: int) -> None:
        self.pending += change
        self.metrics.queue_depth.set(self.pending, tags={"replica": self.replica})

    async def classify(self, model_id: str, values: dict) -> dict[str, float]:
        model = await self.get_model(model_id)
        return model.classify(values)


@serve.deployment
class Embedder:
    """The models in their own deployment, behind the gateway (build_app's split=True): model
    replicas scale apart from the ingress (GPU replicas), and a call whose replica died is
    resent by the gateway."""

    def __init__(
        self, model_dir: str, max_batch_size: int = 32, wait_s: float = 0.0, max_models: int = 4
    ):
        self.encoders = Encoders(model_dir, max_batch_size, wait_s, max_models)

    async def embed(self, model_id: str, items: list[tuple[str, object]]) -> list[np.ndarray]:
        return await self.encoders.embed(model_id, items)

    async def classify(self, model_id: str, values: dict) -> dict[str, float]:
        return await self.encoders.classify(model_id, values)
