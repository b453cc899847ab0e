"""The Embedder deployment as the gateway sees it when the service is split: the embed and
classify of an Embedder, as calls through a DeploymentHandle, resent once if a replica died."""

import numpy as np
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle

from polymodal.serving.batcher import Batcher


class RemoteEmbedder:
    """Gathers the items of concurrent requests into calls (one per model and batch, each at
    most max_batch_size items) to the Embedder deployment behind `embedder`."""

    def __init__(
        self, *, embedder: DeploymentHandle, max_batch_size: int, batch_wait_timeout_s: float
    ):
        self.embedder = embedder
        # Two calls in flight: the next batch is sent while the embedder runs the last.
        self.gathered = Batcher(
            self._send, max_batch_size, max_batch_size, batch_wait_timeout_s, concurrency=2
        )

    async def embed(self, model_id: str, items: list[tuple[str, object]]) -> list[np.ndarray]:
        return await self.gathered.submit(model_id, items)

    async def classify(self, model_id: str, values: dict) -> dict[str, float]:
        return await self._call(model_id, "classify", values)

    async def _send(self, model_id: str, items: list[tuple[str, object]]) -> list[np.ndarray]:
        return await self._call(model_id, "embed", items)

    async def _call(self, model_id: str, method: str, arg):
        """Sent once more when its replica died under it (embedding is idempotent; Serve routes
        the retry to a live replica)."""
        handle = getattr(self.embedder.options(multiplexed_model_id=model_id), method)
        try:
            return await handle.remote(model_id, arg)
        except (RayActorError, ActorUnavailableError):
            return await handle.remote(model_id, arg)
