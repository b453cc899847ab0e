"""Hostile input against every HTTP route of a real Serve app (property-based, hypothesis):
random JSON, wrong types, huge strings, deep nesting, invalid base64, truncated, corrupt and
decompression-bomb images and WAVs → always a 4xx with an error body, never a 5xx, and the
replicas keep answering."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import wave

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from polymodal.checkpoint import RunMeta, save_checkpoint
from polymodal.config import load_config
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

MODEL = "all"
ROUTES = ("/v1/embeddings", "/v1/classify", "/v1/search")
PREP = Preprocessing(
    ["image", "text", "audio", "vector"],
    image_size=8,
    text_max_len=16,
    audio_seconds=0.25,
    n_mels=16,
    vector_mean=[0.0] * 4,
    vector_std=[1.0] * 4,
)


def _png(size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def _wav(seconds: float = 0.2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(int(8000 * seconds), np.int16).tobytes())
    return buf.getvalue()


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")  # 400 MP in a few hundred KB
    return buf.getvalue()


def _lying_wav() -> bytes:
    """A header that claims 4 GB of samples and hours of audio; a few bytes follow."""
    good = bytearray(_wav(0.01))
    struct.pack_into("<I", good, 40, 0xFFFFFFF0)
    return bytes(good)


GOOD_PNG, GOOD_WAV = _png(), _wav()
PAYLOADS = [
    GOOD_PNG,
    GOOD_PNG[: len(GOOD_PNG) // 2],  # truncated
    GOOD_PNG[:8] + b"\x00" * 64,  # a PNG signature and garbage
    _bomb_png(),
    GOOD_WAV,
    GOOD_WAV[:30],
    _lying_wav(),
    b"RIFF\x00\x00\x00\x00WAVEfmt ",
    b"",
    bytes(range(256)),
]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=25,
)
payload_strings = st.sampled_from(PAYLOADS).flatmap(
    lambda raw: st.sampled_from(
        [
            _b64(raw),
            "data:image/png;base64," + _b64(raw),
            "data:audio/wav;base64," + _b64(raw),
            "data:image/png;base64," + _b64(raw)[:-3] + "!!",  # invalid base64
            "data:text/plain;base64," + _b64(raw),
        ]
    )
)
items = st.one_of(
    st.text(max_size=200),
    payload_strings,
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["text", "image", "audio", "vector", "video", 3]),
            "data": st.one_of(
                payload_strings,
                st.lists(st.floats(), max_size=6),
                st.lists(st.integers(), max_size=6),
                json_values,
            ),
        }
    ),
    json_values,
)
model_names = st.one_of(st.just(MODEL), st.text(max_size=20), json_values)
bodies = st.one_of(
    st.fixed_dictionaries(
        {"model": model_names, "input": st.one_of(items, st.lists(items, max_size=4))}
    ),
    st.fixed_dictionaries(
        {
            "model": model_names,
            "inputs": st.dictionaries(st.sampled_from(PREP.modalities + ["x"]), items, max_size=4),
        }
    ),
    st.fixed_dictionaries(
        {
            "model": model_names,
            "query": items,
            "modality": st.one_of(st.sampled_from(PREP.modalities), st.text(max_size=8)),
            "k": st.one_of(st.integers(), json_values),
        }
    ),
    json_values,
)


@pytest.fixture(scope="module")
def url(ray_cluster, tmp_path_factory):
    from ray import serve

    from polymodal.serving.app import build_app

    cfg = load_config(
        None,
        ["model.modalities=[image,text,audio,vector]", "model.embed_dim=8", "model.image.width=8"]
        + ["model.text.width=16", "model.text.layers=1", "model.text.heads=2"]
        + ["model.audio.width=4", "model.vector.width=8", "model.vector.hidden=8"]
        + ["objective.weights.classification=1"],
    )
    model = build_model(cfg, PREP, num_classes=2).eval()
    model_dir = tmp_path_factory.mktemp("hostile-models")
    meta = {"config": cfg.to_dict(), "preprocessing": PREP.to_dict(), "label_names": ["a", "b"]}
    save_checkpoint(model_dir / MODEL, model, RunMeta(**meta, num_classes=2, epoch=1, step=1))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(str(model_dir), max_batch_size=4), name="hostile", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _post(url: str, data: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _check(status: int, body: bytes, sent) -> None:
    assert status < 500, f"{status} for {str(sent)[:300]}: {body[:300]!r}"
    if status >= 400:
        assert "error" in json.loads(body), body[:300]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same cases on every run: a failure reproduces
)
@given(route=st.sampled_from(ROUTES), body=bodies)
def test_random_json_never_gets_a_5xx(url, route, body):
    data = json.dumps(body).encode()  # NaN and Infinity included, as Python writes them
    _check(*_post(url + route, data), body)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=2000))
def test_random_bytes_never_get_a_5xx(url, route, raw):
    _check(*_post(url + route, raw), raw)


@pytest.mark.parametrize("route", ROUTES)
def test_extreme_bodies_are_4xx_and_the_service_lives_on(url, route):
    good = {"model": MODEL, "input": ["a cat", {"type": "vector", "data": [1, 2, 3, 4]}]}
    for data in (
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting
        json.dumps({"model": MODEL, "input": "x" * 5_000_000}).encode(),  # a huge string
        json.dumps(
            {"model": MODEL, "input": [{"type": "vector", "data": [0.0] * 70_000}]}
        ).encode(),
        json.dumps({"model": MODEL, "inputs": {"image": _b64(PAYLOADS[3])}}).encode(),  # bomb
        json.dumps(
            {"model": MODEL, "query": {"type": "audio", "data": _b64(_lying_wav())}}
        ).encode(),
        b"\xff\xfe not utf-8 \x80",
    ):
        _check(*_post(url + route, data), data[:100])
    status, body = _post(url + "/v1/embeddings", json.dumps(good).encode())
    assert status == 200, body
    assert len(json.loads(body)["data"]) == 2
    with urllib.request.urlopen(url + "/readyz", timeout=30) as resp:
        assert resp.status == 200
    assert np.isfinite(json.loads(body)["data"][0]["embedding"]).all()


def test_schemathesis_finds_no_failure(url, tmp_path):
    """Schemathesis, as a new user would run it against the served app: requests generated
    from /openapi.json (valid and invalid), every check — no server error, and every status,
    header and body is one the document lists."""
    bin_dir = os.path.dirname(sys.executable)
    cmd = [os.path.join(bin_dir, "schemathesis"), "--config-file", str(REPO / "schemathesis.toml")]
    cmd += ["run", f"{url}/openapi.json", "--checks", "all"]
    cmd += ["--max-examples", "30", "--seed", "1", "--generation-deterministic", "--no-color"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "HOME": str(tmp_path)}  # no state kept
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert "No issues found" in done.stdout or " passed" in done.stdout, report
