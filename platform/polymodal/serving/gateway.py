"""The HTTP API: the FastAPI app (its ASGI edge, errors in OpenAI's shape, the OpenAPI document)
and the Gateway ingress deployment, whose routes check requests and answer with its models."""

import base64
import hmac
import math
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from polymodal.inference.model import list_models, model_card
from polymodal.modalities.base import InputError
from polymodal.retrieval.quantize import FORMATS, quantize, unit_ranges
from polymodal.retrieval.vectors import truncate
from polymodal.serving.batcher import Batcher
from polymodal.serving.embedder import Encoders
from polymodal.serving.errors import NoIndex, SearchFailed, ServiceError
from polymodal.serving.inputs import check_item, parse_item, parse_value
from polymodal.serving.metrics import gateway_metrics
from polymodal.serving.schemas import (
    MAX_ITEMS,
    ClassifyRequest,
    ClassifyResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    SearchHit,
    SearchRequest,
    SearchResponse,
    Status,
    errors,
)
from polymodal.serving.settings import RETRY_AFTER_S

app = FastAPI(
    title="polymodal",
    description="Embeddings, classification and search from polymodal "
    "checkpoints. OpenAI-compatible /v1/embeddings.",
)


def _encode(vector, encoding_format: str, span: np.ndarray | None) -> list | str:
    """OpenAI's encodings (a list of floats, or base64 of little-endian float32) and the
    quantized ones (a list of integers; span: the int8 ranges)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()
    if encoding_format in FORMATS:
        return quantize(vector, encoding_format, span).tolist()
    return np.asarray(vector, np.float64).tolist()


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param}}
    return JSONResponse(status_code=status, content=body)


MAX_BODY_BYTES = 32 * 1024 * 1024
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


def _over_capacity(status: int = 503, retry_after_s: float | None = None) -> JSONResponse:
    response = _error(status, "the service is over capacity; retry later")
    response.headers["Retry-After"] = str(math.ceil(retry_after_s or RETRY_AFTER_S))
    return response


class _Edge:
    """What every request meets before the routes, as plain ASGI (Starlette's
    BaseHTTPMiddleware costs a task group per layer and request): bodies over
    MAX_BODY_BYTES get 413 before anything reads them; requests beyond the replica's
    capacity get 503 + Retry-After at once, in the API's error shape (Serve's own queue limit
    answers in plain text); every response is counted and timed by route and status."""

    capacity: float = math.inf  # requests one replica takes at once (the Gateway sets it)

    def __init__(self, app):
        self.app = app
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500  # unless a response starts: an exception became Starlette's 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                refusal = _error(413, f"request body over {MAX_BODY_BYTES} bytes", None)
                return await refusal(scope, receive, send_status)
            if scope["method"] != "POST":
                return await self.app(scope, receive, send_status)
            if self.in_flight >= _Edge.capacity:
                return await _over_capacity()(scope, receive, send_status)
            self.in_flight += 1
            try:
                await self.app(scope, receive, send_status)
            finally:
                self.in_flight -= 1
        finally:
            path, root = scope["path"], scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :] or "/"
            route = path if path in _ROUTES else "other"
            m = gateway_metrics()
            m.requests.inc(tags={"route": route, "status": str(status)})
            m.latency.observe(time.perf_counter() - start, tags={"route": route})


app.add_middleware(_Edge)


@app.exception_handler(BackPressureError)
async def _overloaded(request: Request, exc: BackPressureError) -> JSONResponse:
    return _over_capacity(exc.status_code, exc.retry_after_s)


@app.exception_handler(RayActorError)
@app.exception_handler(ActorUnavailableError)
async def _replica_lost(request: Request, exc: Exception) -> JSONResponse:
    """Two replicas died under the same request: a server-side loss, retried by the client."""
    response = _error(503, "a model replica was lost; retry")
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


# What a deployment behind the gateway raised, as the client's answer.
SERVICE_STATUSES = {NoIndex: 404, SearchFailed: 500}


@app.exception_handler(ServiceError)
async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    # isinstance, not type(exc): across a handle the class is Ray's RayTaskError(NoIndex).
    status = next(s for cls, s in SERVICE_STATUSES.items() if isinstance(exc, cls))
    return _error(status, exc.message, exc.param)


_MODEL_ERRORS = (400, 401, 404, 413, 503)


def _openapi() -> dict:
    """FastAPI's document without the 422 it lists for every body: this API answers a
    malformed body 400, in its own error shape (above)."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path in doc["paths"].values():
            for operation in path.values():
                operation["responses"].pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            doc.get("components", {}).get("schemas", {}).pop(unused, None)
        app.openapi_schema = doc
    return app.openapi_schema


app.openapi = _openapi


@serve.deployment
@serve.ingress(app)
class Gateway:
    """The ingress: checks requests and answers them with the models held in this replica
    (one hop from Serve's proxy), or, given an Embedder deployment's handle, with calls to it
    that gather the items of concurrent requests (one call per model and batch)."""

    def __init__(
        self,
        model_dir: str,
        api_key: str | None = None,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.002,
        max_models: int = 4,
        capacity: int = 320,
        searcher=None,
        embedder=None,
    ):
        _Edge.capacity = capacity
        self.api_key = api_key  # never logged; compared in constant time
        self.embedder = embedder
        self.searcher = searcher
        self.model_dir = model_dir
        self.cards = {name: model_card(path) for name, path in list_models(model_dir).items()}
        if embedder is None:
            self.encoders = Encoders(model_dir, max_batch_size, batch_wait_timeout_s, max_models)
        else:
            # Two calls in flight: the next batch is sent while the embedder runs the last.
            self.gathered = Batcher(
                self._send, max_batch_size, max_batch_size, batch_wait_timeout_s, concurrency=2
            )

    async def _send(self, model: str, items: list[tuple[str, object]]) -> list[np.ndarray]:
        return await self._call(model, "embed", items)

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

    async def _embed(self, model: str, parsed: list[tuple[str, object]]) -> list[np.ndarray]:
        if self.embedder is None:
            return await self.encoders.embed(model, parsed)
        return await self.gathered.submit(model, parsed)

    async def _classify(self, model: str, values: dict) -> dict[str, float]:
        if self.embedder is None:
            return await self.encoders.classify(model, values)
        return await self._call(model, "classify", values)

    @app.get("/healthz", response_model=Status, response_model_exclude_none=True)
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Status, responses=errors(503))
    async def readyz(self) -> JSONResponse:
        if not self.cards:
            return _error(503, f"no checkpoints in {self.model_dir}")
        return JSONResponse({"status": "ready", "models": sorted(self.cards)})

    @app.get("/v1/models", response_model=ModelList, responses=errors(401))
    async def models(self, request: Request) -> ModelList:
        self._authorize(request)
        return ModelList(
            data=[
                ModelCard(
                    id=name,
                    modalities=c["modalities"],
                    dimension=c["dimension"],
                    dimensions=c["dimensions"],
                )
                for name, c in self.cards.items()
            ]
        )

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=errors(*_MODEL_ERRORS))
    async def embeddings(self, body: EmbeddingRequest, request: Request) -> JSONResponse:
        self._authorize(request)
        card = self._card(body.model)
        items = [body.input] if isinstance(body.input, str) else body.input
        if not items:
            raise InputError("input is empty", "input")
        if len(items) > MAX_ITEMS:
            raise InputError(f"at most {MAX_ITEMS} items per request", "input", 413)
        if body.dimensions is not None and body.dimensions not in card["dimensions"]:
            raise InputError(
                f"model '{body.model}' was not trained for {body.dimensions} dimensions "
                f"(it was for {card['dimensions']})",
                "dimensions",
            )
        parsed = [parse_item(item, f"input[{i}]") for i, item in enumerate(items)]
        tokens = sum(
            check_item(body.model, card["prep"], m, v, f"input[{i}]")
            for i, (m, v) in enumerate(parsed)
        )
        vectors = await self._embed(body.model, parsed)
        size = body.dimensions or card["dimension"]
        span = card["calibration"].get(size)
        if span is None and body.encoding_format in ("int8", "uint8"):
            span = unit_ranges(size)  # an uncalibrated checkpoint (trained before, imported)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format, span)}
            for i, v in enumerate(truncate(np.stack(vectors), body.dimensions))
        ]
        # EmbeddingResponse's shape, written directly: validating thousands of numbers we just
        # produced cost 5% of a replica's time on 32-item requests.
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=errors(*_MODEL_ERRORS))
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
            check_item(body.model, card["prep"], modality, values[modality], param)
        try:
            probs = await self._classify(body.model, values)
        except RuntimeError as exc:  # the checkpoint has no classifier head
            raise InputError(str(exc), "model") from exc
        label = max(probs, key=probs.get)
        return ClassifyResponse(model=body.model, label=label, probabilities=probs)

    @app.post("/v1/search", response_model=SearchResponse, responses=errors(*_MODEL_ERRORS, 500))
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
        check_item(body.model, card["prep"], modality, value, "query")
        vectors = await self._embed(body.model, [(modality, value)])
        # NoIndex and SearchFailed from the searcher are answered by the app's handlers.
        hits = await self.searcher.search.remote(
            body.model, body.modality, np.stack(vectors), body.k
        )
        data = [SearchHit(**hit) for hit in hits]
        return SearchResponse(model=body.model, modality=body.modality, data=data)
