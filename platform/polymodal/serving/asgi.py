"""The FastAPI app a gateway replica serves, less its routes: the ASGI edge (size, capacity,
metrics), every error in the API's shape, and the OpenAPI document without FastAPI's 422s."""

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from polymodal.modalities.base import InputError
from polymodal.serving.body_errors import explain
from polymodal.serving.errors import NoIndex, SearchFailed, ServiceError
from polymodal.serving.metrics import gateway_metrics
from polymodal.serving.settings import RETRY_AFTER_S

MAX_BODY_BYTES = 32 * 1024 * 1024
# Metric labels: the API's routes; any other path counts as "other", so scanners hitting
# random paths cannot grow the label set.
ROUTES = {
    "/healthz",
    "/readyz",
    "/v1/models",
    "/v1/embeddings",
    "/v1/classify",
    "/v1/search",
    "/docs",
}
# What a deployment behind the gateway raised, as the client's answer.
SERVICE_STATUSES = {NoIndex: 404, SearchFailed: 500}


def error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param}}
    return JSONResponse(status_code=status, content=body)


def named(message: str, param: str | None) -> str:
    """A client mistake's message starts with the field at fault: among many items, the one
    (input[3]) is said where it is read, not only in `param`."""
    return f"{param}: {message}" if param else message


def over_capacity(status: int = 503, retry_after_s: float | None = None) -> JSONResponse:
    response = error(status, "the service is over capacity; retry later")
    response.headers["Retry-After"] = str(math.ceil(retry_after_s or RETRY_AFTER_S))
    return response


async def _overloaded(request: Request, exc: BackPressureError) -> JSONResponse:
    return over_capacity(exc.status_code, exc.retry_after_s)


async def _replica_lost(request: Request, exc: Exception) -> JSONResponse:
    """Two replicas died under the same request: a server-side loss, retried by the client."""
    response = error(503, "a model replica was lost; retry")
    response.headers["Retry-After"] = str(math.ceil(RETRY_AFTER_S))
    return response


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals (a body that is not JSON at all, an unknown route)."""
    message = str(exc.detail)
    if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's words name no cause
        message = "the body is not valid JSON: it is not UTF-8 text"
    response = error(exc.status_code, message)
    response.headers.update(exc.headers or {})
    return response


async def _input_error(request: Request, exc: InputError) -> JSONResponse:
    return error(exc.status, named(str(exc), exc.param), exc.param)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    # isinstance, not type(exc): across a handle the class is Ray's RayTaskError(NoIndex).
    status = next(s for cls, s in SERVICE_STATUSES.items() if isinstance(exc, cls))
    return error(status, named(exc.message, exc.param), exc.param)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = explain(list(exc.errors()), exc.body)
    return error(400, message, param)


class API(FastAPI):
    """FastAPI whose document leaves out the 422 it lists for every body: this API answers a
    malformed body 400, in its own error shape."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            doc = super().openapi()
            for path in doc["paths"].values():
                for operation in path.values():
                    operation["responses"].pop("422", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                doc.get("components", {}).get("schemas", {}).pop(unused, None)
            self.openapi_schema = doc
        return self.openapi_schema


E = TypeVar("E", bound=Exception)


def _handle(app: FastAPI, kind: type[E], handler: Callable[[Request, E], Awaitable[Any]]) -> None:
    # Starlette types a handler as taking any Exception; each is registered for its own kind.
    app.add_exception_handler(kind, cast(Callable[[Request, Exception], Awaitable[Any]], handler))


def api(capacity: float) -> FastAPI:
    """One replica's app, without routes, whose edge takes `capacity` requests at once."""
    app = API(
        title="polymodal",
        description="Embeddings, classification and search from polymodal "
        "checkpoints. OpenAI-compatible /v1/embeddings.",
    )
    app.add_middleware(Edge, capacity=capacity)
    _handle(app, BackPressureError, _overloaded)
    _handle(app, RayActorError, _replica_lost)
    _handle(app, ActorUnavailableError, _replica_lost)
    _handle(app, StarletteHTTPException, _http_error)
    _handle(app, InputError, _input_error)
    _handle(app, ServiceError, _service_error)
    _handle(app, RequestValidationError, _validation_error)
    return app


class Edge:
    """What every request meets before the routes, as plain ASGI (Starlette's
    BaseHTTPMiddleware costs a task group per layer and request): bodies over
    MAX_BODY_BYTES get 413 before anything reads them; POSTs beyond `capacity` at once get 503
    + Retry-After, in the API's error shape (Serve's own queue limit answers in plain text);
    every response is counted and timed by route and status."""

    def __init__(self, app, capacity: float):
        self.app = app
        self.capacity = capacity
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
                refusal = error(413, f"request body over {MAX_BODY_BYTES} bytes", None)
                return await refusal(scope, receive, send_status)
            if scope["method"] != "POST":
                return await self.app(scope, receive, send_status)
            if self.in_flight >= self.capacity:
                return await over_capacity()(scope, receive, send_status)
            self.in_flight += 1
            try:
                await self.app(scope, receive, send_status)
            finally:
                self.in_flight -= 1
        finally:
            path, root = scope["path"], scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :] or "/"
            route = path if path in ROUTES else "other"
            m = gateway_metrics()
            m.requests.inc(tags={"route": route, "status": str(status)})
            m.latency.observe(time.perf_counter() - start, tags={"route": route})
