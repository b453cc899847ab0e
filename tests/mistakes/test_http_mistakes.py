"""Client mistakes against the real gateway app (its FastAPI app, handlers and edge, in process,
serving tests/fixtures/checkpoint-v1: an image + text model): each is refused quickly with a
4xx in the API's error shape, a message that starts with the field at fault, and that field as
`param`, before anything reaches the model; no object reprs or tracebacks."""

from __future__ import annotations

import base64
import io
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from starlette.testclient import TestClient

MODEL = "checkpoint-v1"
CHECKPOINT = Path(__file__).resolve().parents[1] / "fixtures" / MODEL
# The issue's bound for refusing a mistake, met by the median of a few tries; one try may take
# longer on a loaded host (in process: 1-7 ms a request, 37 ms at most over 860 but for one GC
# pause of 177 ms; over 0.5 s once in a full suite run on 2 cores), so a single one is held
# only to 2 s: a hang, not a speed.
WITHIN_S, ONE_TRY_S = 0.1, 2.0


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
GARBAGE = _b64(b"hello, not an image")
WAV_HEADER = _b64(b"RIFF\x00\x00\x00\x00WAVEfmt ")
NO_AUDIO = "has no audio encoder; its modalities are image, text"
NOT_IMAGE = "unreadable image: not PNG, JPEG"


def embed(*items, **extra) -> dict:
    """One string is sent as `input` itself (its param: input), anything else as a list."""
    one = len(items) == 1 and isinstance(items[0], str)
    return {"model": MODEL, "input": items[0] if one else list(items), **extra}


def classify(**inputs) -> dict:
    return {"model": MODEL, "inputs": inputs}


def search(query, **extra) -> dict:
    return {"model": MODEL, "query": query, **extra}


def part(kind: str, value) -> dict:
    """A chat content part; image_url and audio_url take {"url": ...}."""
    return {"type": kind, kind: {"url": value} if kind.endswith("_url") else value}


def chat(*conversations, **extra) -> dict:
    """One conversation per argument: a text, a content part, or a list of texts (several)."""
    if len(conversations) == 1 and not isinstance(conversations[0], list):
        (c,) = conversations
        return {"model": MODEL, "messages": [message(c)], **extra}
    return {"model": MODEL, "messages": [[message(c)] for c in conversations], **extra}


def message(content) -> dict:
    if isinstance(content, list):
        content = content[0]
    return {"role": "user", "content": content if isinstance(content, str) else [content]}


PART = "messages[0].content[0]"
E, C, S = "/v1/embeddings", "/v1/classify", "/v1/search"
# (route, JSON body or raw bytes, status, phrases the message holds, param)
MISTAKES = [
    # 1. an empty input list: said as such, not as pydantic's union members
    (E, {"model": MODEL, "input": []}, 400, ["input: the list is empty", "at least one"], "input"),
    (C, classify(), 400, ["inputs: the object is empty", "at least one"], "inputs"),
    # 2. empty or blank text, wherever a text goes
    (E, embed(""), 400, ["input: empty text"], "input"),
    (E, embed("a cat", ""), 400, ["input[1]: empty text"], "input[1]"),
    (E, embed(" \n\t", "a cat"), 400, ["input[0]: empty text"], "input[0]"),
    (E, embed({"type": "text", "data": ""}), 400, ["input[0]: empty text"], "input[0]"),
    (C, classify(text=""), 400, ["inputs.text: empty text"], "inputs.text"),
    (S, search(""), 400, ["query: empty text"], "query"),
    (S, search("   "), 400, ["query: empty text"], "query"),
    # 3. image data that is not an image: no BytesIO repr
    (E, embed({"type": "image", "data": GARBAGE}), 400, ["input[0]: " + NOT_IMAGE], "input[0]"),
    (E, embed("a", f"data:image/png;base64,{GARBAGE}"), 400, [NOT_IMAGE], "input[1]"),
    (
        E,
        embed(f"data:image/png;base64,{_b64(PNG[:40])}", "a"),
        400,
        ["input[0]: unreadable image"],
        "input[0]",
    ),
    (E, embed("data:image/png;base64,!!"), 400, ["input: invalid base64"], "input"),
    (C, classify(image=GARBAGE), 400, ["inputs.image: " + NOT_IMAGE], "inputs.image"),
    (S, search(f"data:image/png;base64,{GARBAGE}"), 400, ["query: " + NOT_IMAGE], "query"),
    # 4. malformed JSON: where, by line and column, never a character offset as param
    (E, b'{"model": "m", "input": ["a" "b"]}', 400, ["not valid JSON", "line 1 column 30"], None),
    (C, b"{not json", 400, ["the body is not valid JSON", "line 1 column 2"], None),
    (S, b'{\n "model": "m",\n "query": "a",\n}', 400, ["not valid JSON", "line 4 column 1"], None),
    (E, b"\x80\x81 not text", 400, ["the body is not valid JSON", "not UTF-8"], None),
    (E, b"", 400, ["the body is empty"], None),
    (E, b"[1, 2]", 400, ["the body should be a JSON object, not a list"], None),
    # 5. a modality the model lacks, refused before its data is decoded
    (E, embed({"type": "audio", "data": WAV_HEADER}), 400, ["input[0]: ", NO_AUDIO], "input[0]"),
    (E, embed("a", f"data:audio/wav;base64,{WAV_HEADER}"), 400, [NO_AUDIO], "input[1]"),
    # every item's modality is checked before any item's data: input[1], though input[0]
    # would not decode either
    (
        E,
        embed({"type": "image", "data": GARBAGE}, {"type": "audio", "data": "x"}),
        400,
        [NO_AUDIO],
        "input[1]",
    ),
    (E, embed({"type": "vector", "data": [1.0]}, "a"), 400, ["has no vector encoder"], "input[0]"),
    (C, classify(audio="x", text="a"), 400, ["inputs.audio: ", NO_AUDIO], "inputs.audio"),
    (S, search({"type": "audio", "data": "x"}), 400, ["query: ", NO_AUDIO], "query"),
    # the rest of the body, field by field
    (E, {"model": MODEL}, 400, ["input: missing"], "input"),
    (E, {"model": MODEL, "input": 5}, 400, ["input: should be a string or a list, not 5"], "input"),
    (E, embed("a", 3), 400, ["input[1]: should be a string or a JSON object"], "input[1]"),
    (E, embed({"type": "video", "data": "x"}, "a"), 400, ["'image', 'text'"], "input[0].type"),
    (E, embed({"type": "text"}, "a"), 400, ["input[0].data: missing"], "input[0].data"),
    (E, embed("a", colour="red"), 400, ["colour: not a field"], "colour"),
    (E, embed("a", encoding_format="hex"), 400, ["encoding_format: should be"], "encoding_format"),
    (E, embed("a", dimensions=3), 400, ["not trained for 3 dimensions", "[4, 8]"], "dimensions"),
    (E, embed("a", dimensions=1.5), 400, ["dimensions: should be an integer"], "dimensions"),
    (E, {"model": "nope", "input": "a"}, 404, ["model: unknown model 'nope'"], "model"),
    (E, embed(*["a"] * 257), 413, ["input: at most 256 items"], "input"),
    (C, classify(video="x"), 400, ["inputs.video: not a valid key"], "inputs.video"),
    (C, classify(text=5), 400, ["inputs.text: should be a string or a list"], "inputs.text"),
    (S, search(None), 400, ["query: should be a string or a JSON object, not null"], "query"),
    (S, search("a", k=0), 400, ["k: should be greater than or equal to 1"], "k"),
    (S, search("a", k="ten"), 400, ["k: should be an integer, not a string"], "k"),
    (S, search("a", modality="audio"), 404, ["modality: ", "no audio encoder"], "modality"),
    # the chat form (mteb's OpenAIAPIEncodeWrapper, vLLM)
    (E, chat("a", input="a"), 400, ["messages: give `input` or `messages`, not both"], "messages"),
    (E, {"model": MODEL, "messages": []}, 400, ["messages: "], "messages"),
    (E, chat(" "), 400, ["messages: empty text"], "messages"),
    (E, chat("a", [" "]), 400, ["messages[1]: empty text"], "messages[1]"),
    (E, chat(part("image_url", "http://example.com/a.png")), 400, ["only data URIs"], PART),
    (E, chat(part("input_audio", {"data": WAV_HEADER})), 400, [NO_AUDIO], PART),
    (E, chat(part("image_url", f"data:image/png;base64,{GARBAGE}")), 400, [NOT_IMAGE], PART),
    (E, chat({"type": "image_url"}), 400, ["has no 'image_url' field"], PART),
]


class Models:
    """The checkpoint's own LoadedModel, answering the gateway as its Embedder would (Serve's
    multiplexing and batching left out), counting the items that reach it."""

    def __init__(self):
        from polymodal.inference.model import LoadedModel

        self.model = LoadedModel.load(str(CHECKPOINT))
        self.items = 0

    async def embed(self, model_id, items):
        self.items += len(items)
        return [self.model.embed(modality, [value])[0] for modality, value in items]

    async def classify(self, model_id, values):
        self.items += len(values)
        return self.model.classify(values)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The gateway's app; its searcher: the real Searcher over an empty index_dir, called as
    Serve's handle would be."""
    from polymodal.serving.gateway import Gateway
    from polymodal.serving.searcher import Searcher

    searcher = Searcher(str(tmp_path_factory.mktemp("indexes")))
    handle = SimpleNamespace(search=SimpleNamespace(remote=searcher.search))
    gateway = Gateway(model_dir=str(CHECKPOINT), model_server=Models, searcher=handle)
    with TestClient(gateway.__serve_build_asgi_app__()) as client:
        for route, body in (
            (E, embed("a cat", f"data:image/png;base64,{_b64(PNG)}")),
            (C, classify(text="a seven")),
            (S, search("a seven")),
        ):
            client.post(route, json=body)  # imports and first calls, before anything is timed
        yield client, gateway.model_server


def _post(client: TestClient, route: str, body) -> tuple[int, str, float]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    start = time.perf_counter()
    response = client.post(route, content=data, headers={"Content-Type": "application/json"})
    return response.status_code, response.text, time.perf_counter() - start


@pytest.mark.parametrize(
    "route,body,status,phrases,param",
    MISTAKES,
    ids=[f"{route[4:]}-{i}" for i, (route, *_) in enumerate(MISTAKES)],
)
def test_a_mistake_is_refused_up_front(app, route, body, status, phrases, param):
    client, models = app
    before = models.items
    got, text, seconds = _post(client, route, body)
    shown = f"{got} in {seconds * 1000:.1f} ms: {text[:500]}"
    assert got == status and 400 <= got < 500, shown
    err = json.loads(text)["error"]
    assert set(err) == {"message", "type", "param"} and err["type"] == "invalid_request_error"
    assert all(p in err["message"] for p in phrases), shown
    assert err["param"] == param, shown
    assert "0x" not in text and "Traceback" not in text and "object at" not in text, shown
    assert models.items == before, "a mistake reached the model"
    assert seconds < ONE_TRY_S, shown


def test_every_mistake_is_refused_within_the_issues_bound(app):
    client, _ = app
    slow = {}
    for i, (route, body, *_) in enumerate(MISTAKES):
        median = statistics.median(_post(client, route, body)[2] for _ in range(3))
        if median >= WITHIN_S:
            slow[f"{route[4:]}-{i}"] = round(median, 3)
    assert not slow, f"median seconds over {WITHIN_S}: {slow}"


def test_well_formed_requests_are_answered(app):
    """The same app answers what is right: the rows above fail for their mistake alone."""
    client, _ = app
    png = f"data:image/png;base64,{_b64(PNG)}"
    status, text, _ = _post(client, E, embed("a cat", png, {"type": "text", "data": "x"}))
    assert status == 200 and len(json.loads(text)["data"]) == 3, text
    status, text, _ = _post(client, C, classify(text="a seven", image=_b64(PNG)))
    assert status == 200 and json.loads(text)["label"], text
    status, text, _ = _post(client, S, search("a seven"))  # no index built: the searcher's 404
    assert status == 404 and json.loads(text)["error"]["param"] == "modality", text


def test_the_openapi_document_says_texts_must_not_be_empty(app):
    client, _ = app
    doc = client.get("/openapi.json").json()
    fields = doc["components"]["schemas"]
    assert (
        "empty or blank text is refused"
        in fields["EmbeddingRequest"]["properties"]["input"]["description"]
    )
    assert "not empty or blank" in fields["SearchRequest"]["properties"]["query"]["description"]
    assert "empty or blank text" in " ".join(doc["paths"][E]["post"]["description"].split())
