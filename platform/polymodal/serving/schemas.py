"""HTTP request and response bodies (OpenAI-compatible embeddings, classification, search,
errors)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from polymodal.modalities import MODALITIES

MAX_ITEMS = 256  # items per request
MAX_K = 1000  # results per search
TOP = 5  # classes a classification lists, best first


def _whole(value):
    """JSON Schema counts 5.0 as an integer; strict pydantic does not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_whole)]


if TYPE_CHECKING:
    ModalityName = str
else:  # the modalities registered when the service starts (polymodal.modalities)
    ModalityName = Literal[tuple(MODALITIES)]


class Request(BaseModel):
    """A request body: JSON types as written (no "5" for 5) and no unknown fields, so what the
    OpenAPI document calls invalid is refused (400), never guessed at."""

    model_config = ConfigDict(strict=True, extra="forbid")


class TypedItem(Request):
    type: ModalityName
    data: str | list[float] = Field(
        description="text (not empty or blank), base64 image bytes (PNG/JPEG), base64 WAV "
        "bytes, or a vector's numbers"
    )


class URLRef(Request):
    url: str = Field(description="a data URI: data:image/png;base64,... or data:audio/wav;...")
    detail: str | None = Field(None, description="accepted and ignored (OpenAI's image detail)")


class InputAudio(Request):
    data: str = Field(description="base64 WAV bytes")
    format: Literal["wav"] = "wav"


class ContentPart(Request):
    """A part of a chat message, as OpenAI and vLLM write them."""

    type: Literal["text", "image_url", "audio_url", "input_audio"]
    text: str | None = None
    image_url: URLRef | None = None
    audio_url: URLRef | None = None
    input_audio: InputAudio | None = None


class ChatMessage(Request):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


Conversation = Annotated[list[ChatMessage], Field(min_length=1)]


class EmbeddingRequest(Request):
    model: str
    input: str | Annotated[list[str | TypedItem], Field(min_length=1)] | None = Field(
        None,
        description="text, a list of texts, data URIs (data:image/png;base64,...) or typed "
        "items; an empty or blank text is refused (400, as OpenAI does), as is an item of a "
        "modality the model has no encoder for. Give `input` or `messages`.",
    )
    messages: Conversation | Annotated[list[Conversation], Field(min_length=1)] | None = Field(
        None,
        description="vLLM's chat form (what mteb's OpenAIAPIEncodeWrapper sends for images "
        "and audio): one conversation, or a list of them, one embedding each. A conversation's "
        "content parts (text, image_url, audio_url, input_audio) are embedded and, when there "
        "are several, their normalised sum is its embedding.",
    )
    encoding_format: Literal["float", "base64", "int8", "uint8", "binary", "ubinary"] = Field(
        "float",
        description="float numbers, base64 of little-endian float32, int8/uint8 codes "
        "(calibrated per dimension on the model's validation embeddings) or sign bits packed "
        "8 per byte (binary: as int8, ubinary: as uint8), as sentence-transformers defines them",
    )
    dimensions: Whole | None = Field(
        None,
        ge=1,
        description="truncate each embedding to this many numbers (renormalised): one of the "
        "model's `dimensions` (Matryoshka-trained sizes)",
    )


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ClassifyRequest(Request):
    model: str
    inputs: dict[ModalityName, str | list[float]] = Field(
        min_length=1,
        description="modality -> text (not empty or blank), data URI or base64 image/WAV, "
        "or a vector's numbers: only the model's modalities",
    )


class Scored(BaseModel):
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    model: str
    label: str = Field(description="the most probable class (a fusion model's answer)")
    probabilities: dict[str, float]
    top: list[Scored] = Field(description=f"the {TOP} most probable, best first")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "polymodal"
    modalities: list[str]
    dimension: int
    dimensions: list[int] = Field(description="sizes `dimensions` may ask for")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SearchRequest(Request):
    model: str
    query: str | TypedItem = Field(
        description="text (not empty or blank), an image as a data URI "
        "(data:image/png;base64,...), or a typed item"
    )
    modality: str = Field("image", description="what to search: the modality of the index")
    k: Whole = Field(10, ge=1, le=MAX_K, description="how many results")


class SearchHit(BaseModel):
    id: str
    score: float = Field(description="cosine similarity to the query")
    label: str | None = Field(None, description="the row's class name, when the data has one")


class SearchResponse(BaseModel):
    model: str
    modality: str
    data: list[SearchHit]


class ErrorDetail(BaseModel):
    message: str
    type: Literal["invalid_request_error", "server_error"]
    param: str | None = Field(description="the request field at fault, when one is")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx the API answers itself, in OpenAI's shape."""

    error: ErrorDetail


class Status(BaseModel):
    status: str
    models: list[str] | None = None


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entries of the given error statuses."""
    return {s: {"model": ErrorResponse, "description": ERROR_STATUSES[s]} for s in statuses}


ERROR_STATUSES = {
    400: "A malformed request: the error names the field (param).",
    401: "Missing or wrong API key (when the service has one).",
    404: "Unknown model, or no such index.",
    413: "A body over the size limit, or too many items.",
    500: "The service is misconfigured (an index built from another checkpoint).",
    503: "Over capacity, not ready, or a replica was lost: retry after Retry-After seconds.",
}
