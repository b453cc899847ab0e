"""Serve deployments: the Embedder (multiplexed checkpoints, @serve.batch per modality), the
Searcher (exact top-k over retrieval indexes) and the FastAPI gateway with the routes."""

import asyncio
import base64
import hmac
import logging
import math
import os
import threading
import time
from collections import defaultdict

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from polymodal import storage
from polymodal.serving.index import INDEX_FILE, Index, open_index
from polymodal.serving.inputs import InputError, parse_item, parse_value
from polymodal.serving.metrics import embedder_metrics, gateway_metrics, searcher_metrics
from polymodal.serving.models import LoadedModel, list_models, model_card
from polymodal.serving.schemas import (
    MAX_ITEMS,
    MAX_TEXT_CHARS,
    ClassifyRequest,
    ClassifyResponse,
    EmbeddingItem,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    SearchHit,
    SearchRequest,
    SearchResponse,
    Usage,
)
from polymodal.serving.search import search_rows

logger = logging.getLogger("ray.serve")


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


RESCAN_S = 2.0


@serve.deployment
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
            except (OSError, ValueError) as exc:
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

    async def search(self, model: str, modality: str, query: np.ndarray, k: int) -> dict:
        """{"status": 200, "hits": [...]} or {"status", "message", "param"}: answers, not
        exceptions, so the gateway returns the status without unpacking Ray's errors."""
        index = await asyncio.to_thread(self._lookup, model, modality)
        if index is None:
            message = f"no {modality} index for model '{model}' in the service's index_dir"
            return {"status": 404, "message": message, "param": "modality"}
        start = time.perf_counter()
        try:
            rows, scores = await asyncio.to_thread(search_rows, index, query, k)
        except ValueError as exc:  # e.g. the index was built from another checkpoint's vectors
            return {"status": 500, "message": str(exc), "param": None}
        seconds = time.perf_counter() - start
        self.metrics.latency.observe(seconds, tags={"model": model, "modality": modality})
        names = index.meta.get("label_names") or []
        labels = [
            None if c is None else names[c] if 0 <= c < len(names) else str(c)
            for c in index.labels(rows[0])
        ]
        hits = [
            {"id": i, "score": float(s), "label": c}
            for i, s, c in zip(index.ids(rows[0]), scores[0], labels)
        ]
        return {"status": 200, "hits": hits}


app = FastAPI(
    title="polymodal",
    description="Embeddings, classification and search from polymodal "
    "checkpoints. OpenAI-compatible /v1/embeddings.",
)


def _encode(vector, encoding_format: str) -> list[float] | str:
    """OpenAI's encodings: a list of floats, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()
    return [float(x) for x in vector]


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param}}
    return JSONResponse(status_code=status, content=body)


MAX_BODY_BYTES = 32 * 1024 * 1024
RETRY_AFTER_S = 1.0
# Metric labels: the API's routes; any other path counts as "other", so scanners hitting
# random paths cannot grow the label set.
_ROUTES = {
    "/healthz",
    "/readyz",
    "/v1/models",
    "/v1/embeddings",
    "/v1/classify",
    "/v1/search",
    "/docs",
}


@app.middleware("http")
async def _guard(request: Request, call_next):
    """Refuse oversized bodies before anything reads them."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return _error(413, f"request body over {MAX_BODY_BYTES} bytes", None)
    return await call_next(request)


@app.middleware("http")
async def _record(request: Request, call_next):
    """Count and time every response, 4xx from the guard above included (this middleware
    is added last, so it runs outermost)."""
    start = time.perf_counter()
    response = await call_next(request)
    path = request.url.path
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    route = path if path in _ROUTES else "other"
    m = gateway_metrics()
    m.requests.inc(tags={"route": route, "status": str(response.status_code)})
    m.latency.observe(time.perf_counter() - start, tags={"route": route})
    return response


@app.exception_handler(BackPressureError)
async def _overloaded(request: Request, exc: BackPressureError) -> JSONResponse:
    response = _error(exc.status_code, "the service is over capacity; retry later")
    response.headers["Retry-After"] = str(math.ceil(exc.retry_after_s or RETRY_AFTER_S))
    return response


@app.exception_handler(RayActorError)
@app.exception_handler(ActorUnavailableError)
async def _replica_lost(request: Request, exc: Exception) -> JSONResponse:
    """Two replicas died under the same request: a server-side loss, retried by the client."""
    response = _error(503, "an embedder replica was lost; retry")
    response.headers["Retry-After"] = str(math.ceil(RETRY_AFTER_S))
    return response


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals (a body that is not JSON at all, an unknown route) in the API's
    error shape."""
    response = _error(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


@app.exception_handler(InputError)
async def _input_error(request: Request, exc: InputError) -> JSONResponse:
    return _error(exc.status, str(exc), exc.param)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    # The request's own field: deeper parts of pydantic's location name union members
    # ("query.str"), not anything the client sent.
    loc = first.get("loc", ())
    param = str(loc[1]) if len(loc) > 1 else None
    return _error(400, f"invalid request: {first.get('msg', 'malformed body')}", param)


@serve.deployment
@serve.ingress(app)
class Gateway:
    def __init__(
        self,
        embedder,
        model_dir: str,
        api_key: str | None = None,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.01,
        searcher=None,
    ):
        self.api_key = api_key  # never logged; compared in constant time
        self.embedder = embedder
        self.searcher = searcher
        self.model_dir = model_dir
        self.cards = {name: model_card(path) for name, path in list_models(model_dir).items()}
        self.batching = max_batch_size > 1
        self.gather_items.set_max_batch_size(max_batch_size)
        self.gather_items.set_batch_wait_timeout_s(batch_wait_timeout_s)

    # Two batches in flight: the next one is sent while the embedder runs the last.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, max_concurrent_batches=2)
    async def gather_items(self, items: list[tuple[str, str, object]]) -> list[np.ndarray]:
        """Items of concurrent requests, sent as one embedder call per model: a call costs
        milliseconds of Serve overhead, so per-request calls capped throughput."""
        rows_of: dict[str, list[int]] = defaultdict(list)
        for i, (model_id, _, _) in enumerate(items):
            rows_of[model_id].append(i)

        async def call(model_id: str, rows: list[int]) -> list[np.ndarray]:
            return await self._call(model_id, "embed", [items[i][1:] for i in rows])

        results = await asyncio.gather(*[call(m, rows) for m, rows in rows_of.items()])
        out: list[np.ndarray | None] = [None] * len(items)
        for rows, vectors in zip(rows_of.values(), results):
            for i, vec in zip(rows, vectors):
                out[i] = vec
        return out

    async def _call(self, model: str, method: str, arg):
        """An embedder call, sent once more when its replica died under it (embedding is
        idempotent; Serve routes the retry to a live replica)."""
        handle = self.embedder.options(multiplexed_model_id=model)
        try:
            return await getattr(handle, method).remote(model, arg)
        except (RayActorError, ActorUnavailableError):
            return await getattr(handle, method).remote(model, arg)

    def _authorize(self, request: Request) -> None:
        if not self.api_key:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise InputError("missing or wrong API key (Authorization: Bearer ...)", None, 401)

    def _card(self, model: str) -> dict:
        if model not in self.cards:
            raise InputError(f"unknown model '{model}' (have {sorted(self.cards)})", "model", 404)
        return self.cards[model]

    def _check_item(self, model: str, card: dict, modality: str, value, param: str) -> int:
        """The item's tokens (UTF-8 bytes of a text), or InputError."""
        if modality not in card["modalities"]:
            raise InputError(
                f"model '{model}' has no {modality} encoder (it has {card['modalities']})", param
            )
        if modality == "vector" and len(value) != card["vector_dim"]:
            raise InputError(
                f"vector has {len(value)} values; the model takes {card['vector_dim']}", param
            )
        if modality != "text":
            return 0
        if len(value) > MAX_TEXT_CHARS:
            raise InputError(f"text longer than {MAX_TEXT_CHARS} characters", param)
        return len(value.encode("utf-8"))

    async def _embed(self, model: str, parsed: list[tuple[str, object]]) -> list[np.ndarray]:
        if self.batching:
            return await asyncio.gather(*[self.gather_items((model, *p)) for p in parsed])
        return await self._call(model, "embed", parsed)  # one call per request

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        if not self.cards:
            return _error(503, f"no checkpoints in {self.model_dir}")
        return JSONResponse({"status": "ready", "models": sorted(self.cards)})

    @app.get("/v1/models", response_model=ModelList)
    async def models(self, request: Request) -> ModelList:
        self._authorize(request)
        return ModelList(
            data=[
                ModelCard(id=name, modalities=c["modalities"], dimension=c["dimension"])
                for name, c in self.cards.items()
            ]
        )

    @app.post("/v1/embeddings", response_model=EmbeddingResponse)
    async def embeddings(self, body: EmbeddingRequest, request: Request) -> EmbeddingResponse:
        self._authorize(request)
        card = self._card(body.model)
        items = [body.input] if isinstance(body.input, str) else body.input
        if not items:
            raise InputError("input is empty", "input")
        if len(items) > MAX_ITEMS:
            raise InputError(f"at most {MAX_ITEMS} items per request", "input", 413)
        parsed = [parse_item(item, f"input[{i}]") for i, item in enumerate(items)]
        tokens = sum(
            self._check_item(body.model, card, m, v, f"input[{i}]")
            for i, (m, v) in enumerate(parsed)
        )
        vectors = await self._embed(body.model, parsed)
        data = [
            EmbeddingItem(index=i, embedding=_encode(v, body.encoding_format))
            for i, v in enumerate(vectors)
        ]
        return EmbeddingResponse(
            data=data, model=body.model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
        )

    @app.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(self, body: ClassifyRequest, request: Request) -> ClassifyResponse:
        self._authorize(request)
        card = self._card(body.model)
        if not card["labels"]:
            raise InputError(f"model '{body.model}' has no classifier labels", "model")
        if not body.inputs:
            raise InputError("inputs is empty", "inputs")
        values = {}
        for modality, value in body.inputs.items():
            if modality not in card["modalities"]:
                raise InputError(
                    f"model '{body.model}' has no {modality} encoder", f"inputs.{modality}"
                )
            param = f"inputs.{modality}"
            values[modality] = parse_value(modality, value, param)
            self._check_item(body.model, card, modality, values[modality], param)
        try:
            probs = await self._call(body.model, "classify", values)
        except RuntimeError as exc:  # the checkpoint has no classifier head
            raise InputError(str(exc), "model") from exc
        label = max(probs, key=probs.get)
        return ClassifyResponse(model=body.model, label=label, probabilities=probs)

    @app.post("/v1/search", response_model=SearchResponse)
    async def search(self, body: SearchRequest, request: Request) -> SearchResponse:
        """The k rows of the (model, modality) index nearest the query (text or image) by
        cosine similarity of the model's embeddings."""
        self._authorize(request)
        card = self._card(body.model)
        if self.searcher is None:
            raise InputError("this service has no search indexes (no index_dir)", "model", 404)
        if body.modality not in card["modalities"]:
            raise InputError(
                f"model '{body.model}' has no {body.modality} encoder, so no {body.modality} index",
                "modality",
                404,
            )
        modality, value = parse_item(body.query, "query")
        if modality == "text" and not value.strip():
            raise InputError("query is empty", "query")
        self._check_item(body.model, card, modality, value, "query")
        vectors = await self._embed(body.model, [(modality, value)])
        answer = await self.searcher.search.remote(
            body.model, body.modality, np.stack(vectors), body.k
        )
        if answer["status"] >= 500:
            return _error(answer["status"], answer["message"])
        if answer["status"] != 200:
            raise InputError(answer["message"], answer["param"], answer["status"])
        hits = [SearchHit(**hit) for hit in answer["hits"]]
        return SearchResponse(model=body.model, modality=body.modality, data=hits)


def build_app(
    model_dir: str,
    max_batch_size: int = 32,
    batch_wait_timeout_s: float = 0.01,
    max_ongoing_requests: int = 64,
    max_queued_requests: int = 256,
    max_models: int = 4,
    num_cpus: float = 0.5,
    num_gpus: float = 0,
    api_key: str | None = None,
    access_log: bool = True,
    index_dir: str | None = None,
    replicas: int = 1,
):
    """The Serve application: gateway -> embedder (and searcher, with index_dir). The
    gateway gathers items of concurrent requests for up to batch_wait_timeout_s or
    max_batch_size items; embedders merge calls from several gateways into one forward per
    (model, modality) without waiting again.

    max_ongoing_requests: requests an embedder replica works on at once; kept >=
    max_batch_size, or Serve caps every batch at it. max_queued_requests: requests each
    caller may queue beyond that; the rest get 503 with Retry-After at once, never a hang.
    max_models: checkpoints kept loaded per replica (LRU). num_gpus: per embedder replica.
    api_key: require `Bearer api_key` (default: POLYMODAL_API_KEY, if set). access_log: one
    log line per request and call (turn off at high request rates). index_dir: a directory
    of `polymodal index` outputs (local or s3://) searched at POST /v1/search by a Searcher
    deployment, which holds them apart from the embedders' models. replicas: embedder
    replicas (serve/config.yaml autoscales instead)."""
    api_key = api_key or os.environ.get("POLYMODAL_API_KEY") or None
    ongoing = max(max_ongoing_requests, max_batch_size)
    backpressure = {"status_code": 503, "retry_after_s": RETRY_AFTER_S}
    logging = {"enable_access_log": access_log}
    embedder = Embedder.options(
        max_ongoing_requests=ongoing,
        max_queued_requests=max_queued_requests,
        backpressure_config=backpressure,
        logging_config=logging,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        num_replicas=replicas,
    ).bind(model_dir, max_batch_size, 0.0, max_models)
    searcher = None
    if index_dir:
        searcher = Searcher.options(
            max_ongoing_requests=ongoing,
            max_queued_requests=max_queued_requests,
            backpressure_config=backpressure,
            logging_config=logging,
            ray_actor_options={"num_cpus": num_cpus / 2},
        ).bind(index_dir)
    # The gateway holds what the embedder queues, so overload surfaces as the embedder's
    # BackPressureError, answered in the API's JSON error shape.
    return Gateway.options(
        max_ongoing_requests=ongoing + max_queued_requests,
        max_queued_requests=max_queued_requests,
        backpressure_config=backpressure,
        logging_config=logging,
        ray_actor_options={"num_cpus": num_cpus / 2},
    ).bind(embedder, model_dir, api_key, max_batch_size, batch_wait_timeout_s, searcher)
