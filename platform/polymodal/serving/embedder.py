"""The model server: checkpoints loaded on demand and kept per replica (LRU), items of concurrent
requests embedded in budgeted batches; run inside the gateway, or as the Embedder deployment."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Protocol

import numpy as np
from ray import serve
from ray.serve import Deployment

from polymodal.modalities import MODALITIES
from polymodal.run_meta import list_models
from polymodal.serving.batcher import Batcher
from polymodal.serving.metrics import embedder_metrics
from polymodal.serving.settings import BACKPRESSURE, DEFAULTS, HEALTH_CHECK_PERIOD_S, limits

if TYPE_CHECKING:
    from polymodal.inference.model import LoadedModel


class ModelServer(Protocol):
    """What the gateway asks of the models: an Embedder in its own replica, or a RemoteEmbedder
    that calls the Embedder deployment."""

    async def embed(self, model_id: str, items: list[tuple[str, object]]) -> list[np.ndarray]: ...

    async def classify(self, model_id: str, values: dict) -> dict[str, float]: ...


class Embedder:
    """The models of model_dir, in the replica that holds this. A batch holds at most
    max_batch_size items and at most max_batch_size full-size items' worth of work (a large
    image counts as many)."""

    def __init__(
        self,
        *,
        model_dir: str,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        max_models: int,
        threads: int = 1,
        preload: list[str] | None = None,
    ):
        # torch is imported here, in the replica: `polymodal serve`'s driver, which binds this
        # class, stays without it (0.5 GB and 2.4 s less). Ray sets OMP_NUM_THREADS from the
        # replica's CPUs: one thread below 2.
        import torch

        torch.set_num_threads(threads)
        self.paths = list_models(model_dir)
        self.metrics = embedder_metrics()
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.pending = 0

        # Loaded and warmed before the replica takes requests: the first one waits for
        # nothing. Handed to the multiplexed loader on their first use.
        names = list(self.paths)[:max_models] if preload is None else preload
        self.ready = {name: self._load_warm(name) for name in names}

        # The LRU limit comes from config, so the multiplexed loader is made per instance
        # (from a plain function: Serve keeps its cache as an attribute of it).
        async def load(model_id: str) -> LoadedModel:
            if model_id in self.ready:
                return self.ready.pop(model_id)
            return await asyncio.to_thread(self._load_warm, model_id)

        self.get_model = serve.multiplexed(max_num_models_per_replica=max_models)(load)
        self.batcher = Batcher(
            self._forward, max_batch_size, float(max_batch_size), batch_wait_timeout_s
        )

    def _load_warm(self, model_id: str) -> LoadedModel:
        if model_id not in self.paths:
            raise ValueError(f"preload: no checkpoint '{model_id}' (have {sorted(self.paths)})")
        from polymodal.inference.model import LoadedModel

        start = time.perf_counter()
        model = LoadedModel.load(self.paths[model_id])
        model.warm_up()
        seconds = time.perf_counter() - start
        self.metrics.model_load.observe(seconds, tags={"model": model_id})
        return model

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


# The same class as a deployment behind the gateway (build_app's split=True): model replicas
# that scale apart from the ingress (GPU replicas), called through a RemoteEmbedder.
EmbedderDeployment: Deployment = serve.deployment(
    name="Embedder",
    max_ongoing_requests=limits(DEFAULTS).ongoing,
    max_queued_requests=limits(DEFAULTS).queued,
    backpressure_config=BACKPRESSURE,
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
    ray_actor_options={"num_cpus": DEFAULTS.num_cpus, "num_gpus": DEFAULTS.num_gpus},
)(Embedder)
