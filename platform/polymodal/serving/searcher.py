"""The Searcher deployment: exact top-k search over the retrieval indexes of an index_dir,
opened as they appear and reopened when rebuilt; a missing or failing index is a typed error."""

import asyncio
import logging
import threading
import time

import numpy as np
from ray import serve
from ray.serve import Deployment

from polymodal import storage
from polymodal.retrieval.index import INDEX_FILE, Index, open_index
from polymodal.retrieval.search import search_rows
from polymodal.serving.errors import NoIndex, SearchFailed
from polymodal.serving.metrics import searcher_metrics
from polymodal.serving.settings import BACKPRESSURE, DEFAULTS, HEALTH_CHECK_PERIOD_S, limits

logger = logging.getLogger("ray.serve")

RESCAN_S = 2.0


class Searcher:
    """Exact top-k search over the indexes under index_dir, one per (model, modality) as
    named by its index.json, memory-mapped (s3:// ones downloaded to local disk first).
    Indexes present at start are opened then; one built later is found by the first search
    that asks for it; one rebuilt in place is reopened within refresh_s."""

    def __init__(self, index_dir: str, refresh_s: float = 30.0):
        self.index_dir = index_dir
        self.refresh_s = refresh_s
        self.lock = threading.Lock()  # lookups run in threads: S3 calls must not block the loop
        self.indexes: dict[tuple[str, str], tuple[Index, str, float]] = {}
        self.scanned = 0.0
        self.metrics = searcher_metrics()
        with self.lock:
            self._scan()

    def _open(self, uri: str) -> None:
        version = storage.version(storage.join(uri, INDEX_FILE))
        index = open_index(uri)
        key = (index.meta["model"], index.meta["modality"])
        held = self.indexes.get(key)
        if held and held[0].uri != uri:
            logger.warning(
                "%s: another %s index of model '%s' is served: %s", uri, *key[::-1], held[0].uri
            )
            return
        self.indexes[key] = (index, version, time.monotonic())
        logger.info("index %s: model '%s', %s, %d rows", uri, *key, index.rows)

    def _scan(self) -> None:
        """Open every index under index_dir that is new or rebuilt; a broken one is skipped
        (logged with the file at fault), never fatal to the others."""
        self.scanned = time.monotonic()
        opened = {entry[0].uri: entry[1] for entry in self.indexes.values()}
        for name in storage.list_dirs(self.index_dir):
            uri = storage.join(self.index_dir, name)
            meta = storage.join(uri, INDEX_FILE)
            try:
                if storage.is_file(meta) and opened.get(uri) != storage.version(meta):
                    self._open(uri)
            except (OSError, ValueError, ImportError) as exc:  # ImportError: FAISS missing
                logger.warning("skipping index %s: %s", uri, exc)

    def _lookup(self, model: str, modality: str) -> Index | None:
        with self.lock:
            key = (model, modality)
            if key not in self.indexes:
                # At most one listing of index_dir per RESCAN_S however many searches miss.
                if time.monotonic() - self.scanned > RESCAN_S:
                    self._scan()
            elif time.monotonic() - self.indexes[key][2] > self.refresh_s:
                index, version, _ = self.indexes[key]
                meta = storage.join(index.uri, INDEX_FILE)
                try:
                    if not storage.is_file(meta):
                        del self.indexes[key]  # deleted: stop serving it
                    elif storage.version(meta) != version:
                        del self.indexes[key]
                        self._open(index.uri)
                    else:
                        self.indexes[key] = (index, version, time.monotonic())
                except (OSError, ValueError) as exc:  # keep serving the copy already open
                    logger.warning("cannot reopen index %s: %s", index.uri, exc)
            held = self.indexes.get(key)
            return held[0] if held else None

    async def search(self, model: str, modality: str, query: np.ndarray, k: int) -> list[dict]:
        """The k nearest rows as SearchHit fields; NoIndex or SearchFailed."""
        index = await asyncio.to_thread(self._lookup, model, modality)
        if index is None:
            held = ", ".join(f"{m} ({mod})" for m, mod in sorted(self.indexes)) or "none yet"
            message = (
                f"no {modality} index for model '{model}'; indexes served: {held} "
                "(`polymodal index` builds one into the service's index_dir)"
            )
            raise NoIndex(message, "modality")
        start = time.perf_counter()
        try:
            rows, scores = await asyncio.to_thread(search_rows, index, query, k)
        except ValueError as exc:  # e.g. the index was built from another checkpoint's vectors
            raise SearchFailed(str(exc)) from exc
        seconds = time.perf_counter() - start
        self.metrics.latency.observe(seconds, tags={"model": model, "modality": modality})
        names = index.meta.get("label_names") or []
        labels = [
            None if c is None else names[c] if 0 <= c < len(names) else str(c)
            for c in index.labels(rows[0])
        ]
        return [
            {"id": i, "score": float(s), "label": c}
            for i, s, c in zip(index.ids(rows[0]), scores[0], labels)
        ]


# A call, not a decorator: the class stays a plain class (tests, type checking) and Serve
# gets its deployment.
SearcherDeployment: Deployment = serve.deployment(
    name="Searcher",
    max_ongoing_requests=limits(DEFAULTS).ongoing,
    max_queued_requests=limits(DEFAULTS).queued,
    backpressure_config=BACKPRESSURE,
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
    ray_actor_options={"num_cpus": DEFAULTS.num_cpus / 2},
)(Searcher)
