"""The Gateway ingress deployment: routes that check requests (auth, model, items) and answer
them with its model server's embeddings and classes and the searcher's hits."""

import base64
import hmac
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Deployment
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from polymodal.modalities.base import InputError
from polymodal.retrieval.quantize import FORMATS, quantize, unit_ranges
from polymodal.retrieval.vectors import truncate
from polymodal.run_meta import list_models
from polymodal.serving import embeddings_pb2 as pb
from polymodal.serving import grpc_ingress
from polymodal.serving.asgi import api, error
from polymodal.serving.embedder import ModelServer
from polymodal.serving.inputs import (
    chat_items,
    check_item,
    modality_of,
    parse_item,
    parse_value,
    require_modality,
)
from polymodal.serving.schemas import (
    MAX_ITEMS,
    TOP,
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
from polymodal.serving.settings import BACKPRESSURE, DEFAULTS, HEALTH_CHECK_PERIOD_S, limits

# The statuses a route that runs a model may answer besides 200 (its OpenAPI `responses`).
MODEL_ERRORS = (400, 401, 404, 413, 503)


def encode(vector, encoding_format: str, span: np.ndarray | None) -> list | str:
    """OpenAI's encodings (a list of floats, or base64 of little-endian float32) and the
    quantized ones (a list of integers; span: the int8 ranges)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()
    if encoding_format in FORMATS:
        return quantize(vector, encoding_format, span).tolist()
    return np.asarray(vector, np.float64).tolist()


class Gateway:
    """The ingress: checks requests and answers them with `model_server()`, made in this
    replica: the models themselves (an Embedder: one hop from Serve's proxy) or a client of
    the Embedder deployment (a RemoteEmbedder); build_app chooses. Its app (one per replica)
    takes `capacity` requests at once and answers 503 beyond."""

    def __init__(
        self,
        *,
        model_dir: str,
        model_server: Callable[[], ModelServer],
        searcher: DeploymentHandle | None = None,
        api_key: str | None = None,
        capacity: int = limits(DEFAULTS).capacity,
    ):
        self.model_dir = model_dir
        self.model_server = model_server()
        self.searcher = searcher
        self.api_key = api_key  # never logged; compared in constant time
        self.capacity = capacity
        from polymodal.inference.model import model_card  # torch: in the replica, not the driver

        self.cards = {name: model_card(path) for name, path in list_models(model_dir).items()}

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this once the replica's Gateway exists: its app, routed to it."""
        app = api(self.capacity)
        app.add_api_route(
            "/healthz",
            self.healthz,
            methods=["GET"],
            response_model=Status,
            response_model_exclude_none=True,
        )
        app.add_api_route(
            "/readyz", self.readyz, methods=["GET"], response_model=Status, responses=errors(503)
        )
        app.add_api_route(
            "/v1/models",
            self.models,
            methods=["GET"],
            response_model=ModelList,
            responses=errors(401),
        )
        app.add_api_route(
            "/v1/embeddings",
            self.embeddings,
            methods=["POST"],
            response_model=EmbeddingResponse,
            responses=errors(*MODEL_ERRORS),
        )
        app.add_api_route(
            "/v1/classify",
            self.classify,
            methods=["POST"],
            response_model=ClassifyResponse,
            responses=errors(*MODEL_ERRORS),
        )
        app.add_api_route(
            "/v1/search",
            self.search,
            methods=["POST"],
            response_model=SearchResponse,
            responses=errors(*MODEL_ERRORS, 500),
        )
        return app

    def _authorize(self, request: Request) -> None:
        self._check_key(request.headers.get("authorization", ""))

    def _check_key(self, given: str) -> None:
        if not self.api_key:
            return
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise InputError("missing or wrong API key (Authorization: Bearer ...)", None, 401)

    def _card(self, model: str) -> dict:
        if model not in self.cards:
            raise InputError(f"unknown model '{model}' (have {sorted(self.cards)})", "model", 404)
        return self.cards[model]

    async def healthz(self) -> dict:
        return {"status": "ok"}

    async def readyz(self) -> JSONResponse:
        if not self.cards:
            return error(503, f"no checkpoints in {self.model_dir}")
        return JSONResponse({"status": "ready", "models": sorted(self.cards)})

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

    async def embeddings(self, body: EmbeddingRequest, request: Request) -> JSONResponse:
        """One embedding per item, in order. Every item is checked before any is embedded: a
        modality the model has no encoder for (before its data is decoded), an empty or blank
        text, an image or WAV that does not decode, each a 400 naming the item (input[i])."""
        self._authorize(request)
        vectors, tokens, span = await self._embed(body, "input")
        data = [
            {"object": "embedding", "index": i, "embedding": encode(v, body.encoding_format, span)}
            for i, v in enumerate(vectors)
        ]
        # EmbeddingResponse's shape, written directly: validating thousands of numbers we just
        # produced cost 5% of a replica's time on 32-item requests.
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})

    async def Embed(  # noqa: N802 (the RPC's name in embeddings.proto, which Serve calls)
        self, request: pb.EmbedRequest, grpc_context: RayServegRPCContext
    ) -> pb.EmbedResponse:
        """/v1/embeddings over gRPC (Serve's gRPC ingress): the same checks; a client's
        mistake is a status code and the message naming the field (items[i])."""
        try:
            self._check_key(dict(grpc_context.invocation_metadata()).get("authorization", ""))
            body = grpc_ingress.embedding_request(request)
            vectors, tokens, _ = await self._embed(body, "items")
        except InputError as exc:
            grpc_ingress.refuse(grpc_context, exc)
            return pb.EmbedResponse()
        return grpc_ingress.embed_response(body.model, vectors, tokens)

    async def _embed(self, body: EmbeddingRequest, field: str) -> tuple[np.ndarray, int, Any]:
        """The request's embeddings (truncated to its dimensions), its tokens and the int8
        ranges of its size; InputError names `field` (input, or gRPC's items) and the item."""
        card = self._card(body.model)
        if body.input is None and body.messages is None:
            raise InputError("missing: give `input` (or `messages`, the chat form)", field)
        if body.input is not None and body.messages is not None:
            raise InputError("give `input` or `messages`, not both", "messages")
        owners = None
        items: list[Any]
        if body.messages is not None:
            items, params, owners = chat_items(body.messages)
        elif isinstance(body.input, str):  # a lone text is `input`, not input[0]
            items, params = [body.input], [field]
        else:
            items = list(body.input or [])
            params = [f"{field}[{i}]" for i in range(len(items))]
        if len(items) > MAX_ITEMS:
            raise InputError(f"at most {MAX_ITEMS} items per request", field, 413)
        if body.dimensions is not None and body.dimensions not in card["dimensions"]:
            raise InputError(
                f"model '{body.model}' was not trained for {body.dimensions} dimensions "
                f"(it was for {card['dimensions']})",
                "dimensions",
            )
        prep = card["prep"]
        for item, param in zip(items, params):  # every item's modality before any is decoded
            require_modality(body.model, prep, modality_of(item), param)
        parsed = [parse_item(item, param) for item, param in zip(items, params)]
        tokens = sum(
            check_item(body.model, prep, m, v, param) for (m, v), param in zip(parsed, params)
        )
        vectors = np.stack(await self.model_server.embed(body.model, parsed))
        if owners is not None and len(set(owners)) < len(owners):  # a conversation's parts
            summed = np.zeros((owners[-1] + 1, vectors.shape[1]), vectors.dtype)
            np.add.at(summed, owners, vectors)
            vectors = summed / np.linalg.norm(summed, axis=1, keepdims=True)
        size = body.dimensions or card["dimension"]
        span = card["calibration"].get(size)
        if span is None and body.encoding_format in ("int8", "uint8"):
            span = unit_ranges(size)  # an uncalibrated checkpoint (trained before, imported)
        return truncate(vectors, body.dimensions), tokens, span

    async def classify(self, body: ClassifyRequest, request: Request) -> ClassifyResponse:
        """The class probabilities of one example: a value per modality, only the model's own,
        each checked as /v1/embeddings checks an item (a 400 naming inputs.<modality>)."""
        self._authorize(request)
        card = self._card(body.model)
        if not card["labels"]:
            raise InputError(f"model '{body.model}' has no classifier labels", "model")
        for modality in body.inputs:  # every modality before any value is decoded
            require_modality(body.model, card["prep"], modality, f"inputs.{modality}")
        missing = [m for m in card["answers_from"] if m not in body.inputs]
        if missing:  # a fusion model answers from all its modalities together
            raise InputError(
                f"missing: model '{body.model}' answers from {' and '.join(card['answers_from'])} "
                "together",
                f"inputs.{missing[0]}",
            )
        values = {}
        for modality, value in body.inputs.items():
            param = f"inputs.{modality}"
            values[modality] = parse_value(modality, value, param)
            check_item(body.model, card["prep"], modality, values[modality], param)
        try:
            probs = await self.model_server.classify(body.model, values)
        except RuntimeError as exc:  # the checkpoint has no classifier head
            raise InputError(str(exc), "model") from exc
        top = sorted(probs, key=lambda name: -probs[name])[:TOP]
        return ClassifyResponse(
            model=body.model,
            label=top[0],
            probabilities=probs,
            top=[{"label": t, "probability": probs[t]} for t in top],
        )

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
        require_modality(body.model, card["prep"], modality_of(body.query), "query")
        modality, value = parse_item(body.query, "query")
        check_item(body.model, card["prep"], modality, value, "query")
        vectors = await self.model_server.embed(body.model, [(modality, value)])
        # NoIndex and SearchFailed from the searcher are answered by the app's handlers.
        hits = await self.searcher.search.remote(
            model=body.model, modality=body.modality, query=np.stack(vectors), k=body.k
        )
        data = [SearchHit(**hit) for hit in hits]
        return SearchResponse(model=body.model, modality=body.modality, data=data)


# Calls, not decorators: the class stays a plain class (type checking sees it) and Serve gets
# the ingress deployment, whose app each replica builds (__serve_build_asgi_app__).
GatewayDeployment: Deployment = serve.deployment(
    name="Gateway",
    max_ongoing_requests=limits(DEFAULTS).gateway_ongoing,
    max_queued_requests=limits(DEFAULTS).queued,
    backpressure_config=BACKPRESSURE,
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
    ray_actor_options={"num_cpus": DEFAULTS.num_cpus, "num_gpus": DEFAULTS.num_gpus},
)(serve.ingress()(Gateway))
