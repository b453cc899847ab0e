"""HTTP request and response bodies (OpenAI-compatible embeddings, classification, search,
errors)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from polymodal.modalities import MODALITIES

MAX_ITEMS = 256  # items per request
MAX_K = 1000  # results per search


class TypedItem(BaseModel):
    # The modalities registered when the service starts (polymodal.modalities).
    type: Literal[tuple(MODALITIES)]
    data: str | list[float] = Field(
        description="text, base64 image bytes (PNG/JPEG), base64 WAV bytes, or a vector's numbers"
    )


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[str | TypedItem] = Field(
        description="text, a list of texts, data URIs (data:image/png;base64,...) or typed items"
    )
    encoding_format: Literal["float", "base64"] = "float"


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ClassifyRequest(BaseModel):
    model: str
    inputs: dict[str, str | list[float]] = Field(
        description="modality -> text, data URI or base64 image/WAV, or a vector's numbers"
    )


class ClassifyResponse(BaseModel):
    model: str
    label: str
    probabilities: dict[str, float]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "polymodal"
    modalities: list[str]
    dimension: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SearchRequest(BaseModel):
    model: str
    query: str | TypedItem = Field(
        description="text, an image as a data URI (data:image/png;base64,...), or a typed item"
    )
    modality: str = Field("image", description="what to search: the modality of the index")
    k: int = Field(10, ge=1, le=MAX_K, description="how many results")


class SearchHit(BaseModel):
    id: str
    score: float = Field(description="cosine similarity to the query")
    label: str | None = Field(None, description="the row's class name, when the data has one")


class SearchResponse(BaseModel):
    model: str
    modality: str
    data: list[SearchHit]
