"""The gRPC face of /v1/embeddings (embeddings.proto): its messages to and from the HTTP
request's types, and a client's mistake as a gRPC status with the message that names the item."""

from __future__ import annotations

import base64

import grpc
import numpy as np
from pydantic import ValidationError

from polymodal.modalities.base import InputError
from polymodal.serving import embeddings_pb2 as pb
from polymodal.serving.asgi import named
from polymodal.serving.schemas import EmbeddingRequest, TypedItem

# What serve.start's grpc_options name: Serve's gRPC proxy (or a replica, with direct
# ingress) serves the Embeddings service through these.
SERVICERS = ["polymodal.serving.embeddings_pb2_grpc.add_EmbeddingsServicer_to_server"]

# The HTTP status a mistake gets → the gRPC code that means the same.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def embedding_request(request: pb.EmbedRequest) -> EmbeddingRequest:
    """The HTTP request the message stands for: texts as strings, files as base64, vectors as
    numbers, each a typed item of its modality ("text" when not given)."""
    items: list[str | TypedItem] = []
    for i, item in enumerate(request.items):
        modality = item.modality or "text"
        try:
            if modality == "text":
                items.append(item.text)
            elif item.data:
                items.append(TypedItem(type=modality, data=base64.b64encode(item.data).decode()))
            else:
                items.append(TypedItem(type=modality, data=list(item.vector)))
        except ValidationError:
            raise InputError(f"unknown modality '{modality}'", f"items[{i}]") from None
    if not items:
        raise InputError("at least one item", "items")
    return EmbeddingRequest(model=request.model, input=items, dimensions=request.dimensions or None)


def embed_response(model: str, vectors: np.ndarray, tokens: int) -> pb.EmbedResponse:
    data = [pb.Embedding(values=v) for v in vectors.astype(np.float32)]
    return pb.EmbedResponse(model=model, data=data, prompt_tokens=tokens)


def refuse(context, exc: InputError) -> None:
    context.set_code(CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT))
    context.set_details(named(str(exc), exc.param))
