"""The Serve app through real HTTP on 127.0.0.1: embeddings equal the offline encoder,
classification equals the offline head, two models multiplexed, client mistakes are 4xx;
search over an index built by `polymodal index` on S3 from a model trained on digits."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from polymodal.checkpoint import RunMeta, load_model, read_meta, save_checkpoint
from polymodal.config import load_config
from polymodal.data.sources.builtin import DIGIT_LABELS
from polymodal.evaluation.evaluate import decoded_batches
from polymodal.export import export_checkpoint
from polymodal.modalities import Preprocessing
from polymodal.modalities.image import decode_image
from polymodal.modalities.text import encode_text
from polymodal.models.build import build_model
from polymodal.objectives.joint import joint_loss
from polymodal.openclip import import_open_clip
from polymodal.retrieval.quantize import FORMATS, calibration, quantize, unit_ranges
from tests.integration.conftest import call_json, free_port
from tests.open_clip_models import tiny_clip

pytestmark = pytest.mark.integration
PREP = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=24)
LABELS = ["zero", "one", "two"]


def _checkpoint(path, seed: int, embed_dim: int, extra: tuple[str, ...] = (), calibrated=False):
    cfg = load_config(
        None,
        [
            *extra,
            f"model.embed_dim={embed_dim}",
            "model.image.width=8",
            "model.text.width=16",
            "model.text.layers=1",
            "model.text.heads=2",
            "objective.weights.classification=1",
        ],
    )
    torch.manual_seed(seed)
    model = build_model(cfg, PREP, num_classes=len(LABELS)).eval()
    meta = {
        "config": cfg.to_dict(),
        "preprocessing": PREP.to_dict(),
        "label_names": LABELS,
        "num_classes": len(LABELS),
        "epoch": 1,
        "step": 1,
        "metrics": {},
        "history": [],
    }
    if calibrated:  # as training writes it: int8 ranges per servable size
        rng = np.random.default_rng(seed)
        sizes = sorted({*cfg.objective.contrastive.matryoshka_dims, embed_dim})
        meta["calibration"] = calibration(rng.normal(0, 0.3, (50, embed_dim)), sizes)
    save_checkpoint(path, model, RunMeta(**meta))


VEC_PREP = Preprocessing(
    ["vector", "text"], text_max_len=24, vector_mean=[1.0, 2.0, 0.0, -1.0], vector_std=[2.0] * 4
)


def _vector_checkpoint(path):
    """A vector + text model with a classifier: the vector arrives as a JSON array."""
    cfg = load_config(
        None,
        ["model.modalities=[vector,text]", "model.embed_dim=8", "model.vector.width=8"]
        + ["model.vector.hidden=16", "model.text.width=16", "model.text.layers=1"]
        + ["model.text.heads=2", "objective.weights.classification=1"],
    )
    torch.manual_seed(2)
    model = build_model(cfg, VEC_PREP, num_classes=len(LABELS)).eval()
    meta = {"config": cfg.to_dict(), "preprocessing": VEC_PREP.to_dict(), "label_names": LABELS}
    save_checkpoint(path, model, RunMeta(**meta, num_classes=len(LABELS), epoch=1, step=1))


def _trained_checkpoint(path, dataset, epochs: int = 10):
    """A small model trained a few seconds on digits (in this process: the loop is not what
    is tested here) so that captions land near their class's images."""
    overrides = [
        "model.embed_dim=16",
        "model.image.width=8",
        "model.text.width=16",
        "model.text.layers=1",
        "model.text.heads=2",
        "objective.weights.classification=1",
        "objective.contrastive.positives=label",
    ]
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = build_model(cfg, PREP, num_classes=len(DIGIT_LABELS))
    batches = list(decoded_batches(str(dataset), "train", PREP, batch_size=128))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in batches:
            loss, _ = joint_loss(model(batch), batch, cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
    meta = {
        "config": cfg.to_dict(),
        "preprocessing": PREP.to_dict(),
        "label_names": DIGIT_LABELS,
        "num_classes": len(DIGIT_LABELS),
        "epoch": epochs,
        "step": epochs * len(batches),
        "metrics": {},
        "history": [],
    }
    save_checkpoint(path, model.eval(), RunMeta(**meta))


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    arr = (np.arange(64).reshape(8, 8) * value % 256).astype(np.uint8)
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


INDEX_DIR = "s3://search-indexes/indexes"


@pytest.fixture(scope="module")
def service(ray_cluster, s3_endpoint, digits_dataset, tmp_path_factory):
    """The app with an index_dir on S3 that holds no index yet: search tests build one."""
    import boto3
    from ray import serve

    from polymodal.serving.app import build_app

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="search-indexes")
    model_dir = tmp_path_factory.mktemp("models")
    # "small" is Matryoshka-trained at 8 of its 16 dimensions.
    _checkpoint(model_dir / "small", 0, 16, ("objective.contrastive.matryoshka_dims=[8]",), True)
    _checkpoint(model_dir / "other", seed=1, embed_dim=24)
    # "vec" is served from a safetensors export; the original sits where no listing finds it.
    _vector_checkpoint(model_dir / "original" / "vec")
    export_checkpoint(str(model_dir / "original" / "vec"), model_dir / "vec", "safetensors")
    _trained_checkpoint(model_dir / "digits", digits_dataset)
    # "clip" is imported from OpenCLIP; its source stays outside the listing.
    src = tiny_clip(tmp_path_factory.mktemp("open_clip") / "src")
    import_open_clip(f"local-dir:{src}", None, model_dir / "clip")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(str(model_dir), max_batch_size=8, index_dir=INDEX_DIR), route_prefix="/")
    yield f"http://127.0.0.1:{port}", model_dir
    serve.shutdown()


def test_health_and_models(service):
    url, _ = service
    assert call_json(f"{url}/healthz") == (200, {"status": "ok"})
    status, ready = call_json(f"{url}/readyz")
    assert status == 200 and ready["models"] == ["clip", "digits", "other", "small", "vec"]
    status, models = call_json(f"{url}/v1/models")
    cards = {m["id"]: m for m in models["data"]}
    assert cards["small"]["dimension"] == 16 and cards["other"]["dimension"] == 24
    assert cards["small"]["modalities"] == ["image", "text"]
    assert cards["small"]["dimensions"] == [8, 16] and cards["other"]["dimensions"] == [24]


def test_embeddings_equal_offline_encoder(service):
    url, model_dir = service
    model, _ = load_model(model_dir / "small")
    texts = ["a handwritten digit two", "一只猫"]
    image = _png(3)
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    status, body = call_json(f"{url}/v1/embeddings", {"model": "small", "input": [*texts, uri]})
    assert status == 200, body
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["usage"]["prompt_tokens"] == sum(len(t.encode()) for t in texts)
    with torch.no_grad():
        ids = torch.from_numpy(np.stack([encode_text(t, 24) for t in texts]))
        offline_text = model.embed("text", ids).numpy()
        offline_image = model.embed("image", torch.from_numpy(decode_image(image, 8, 1))[None])
    np.testing.assert_allclose(body["data"][0]["embedding"], offline_text[0], atol=1e-5)
    np.testing.assert_allclose(body["data"][1]["embedding"], offline_text[1], atol=1e-5)
    np.testing.assert_allclose(body["data"][2]["embedding"], offline_image[0].numpy(), atol=1e-5)
    # base64 float32, and a single string input
    status, b64 = call_json(
        f"{url}/v1/embeddings", {"model": "small", "input": texts[0], "encoding_format": "base64"}
    )
    vec = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, offline_text[0], atol=1e-5)
    # Matryoshka: `dimensions` equals truncating offline and renormalising; a size the model
    # was not trained at is a 400 naming the sizes it was.
    status, short = call_json(
        f"{url}/v1/embeddings", {"model": "small", "input": texts, "dimensions": 8}
    )
    assert status == 200, short
    want = offline_text[:, :8] / np.linalg.norm(offline_text[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose([d["embedding"] for d in short["data"]], want, atol=1e-5)
    status, err = call_json(
        f"{url}/v1/embeddings", {"model": "small", "input": "x", "dimensions": 4}
    )
    assert status == 400 and err["error"]["param"] == "dimensions"
    assert "[8, 16]" in err["error"]["message"], err
    status, err = call_json(
        f"{url}/v1/embeddings", {"model": "other", "input": "x", "dimensions": 8}
    )
    assert status == 400 and "[24]" in err["error"]["message"], err


def test_quantized_encodings_equal_quantizing_offline(service):
    """int8/uint8 with the checkpoint's calibration (for the size asked), binary/ubinary
    sign bits; a checkpoint without calibration quantizes over [-1, 1]."""
    url, model_dir = service
    texts = ["a handwritten digit two", "seven"]
    span = read_meta(model_dir / "small").calibration
    for size in (16, 8):
        status, floats = call_json(
            f"{url}/v1/embeddings", {"model": "small", "input": texts, "dimensions": size}
        )
        assert status == 200, floats
        vectors = np.array([d["embedding"] for d in floats["data"]], dtype=np.float32)
        for fmt in FORMATS:
            body = {"model": "small", "input": texts, "dimensions": size, "encoding_format": fmt}
            status, out = call_json(f"{url}/v1/embeddings", body)
            assert status == 200, out
            got = np.array([d["embedding"] for d in out["data"]])
            want = quantize(vectors, fmt, np.asarray(span[str(size)], np.float32))
            assert got.shape == want.shape and (np.abs(got - want) <= 1).all(), fmt
            assert got.shape[1] == (size if "int8" in fmt else size // 8)
    status, out = call_json(f"{url}/v1/embeddings", {"model": "other", "input": texts[0]})
    status, codes = call_json(
        f"{url}/v1/embeddings", {"model": "other", "input": texts[0], "encoding_format": "int8"}
    )
    vector = np.array(out["data"][0]["embedding"], np.float32)
    want = quantize(vector, "int8", unit_ranges(24))
    assert (np.abs(np.array(codes["data"][0]["embedding"]) - want) <= 1).all()


def test_an_imported_open_clip_model_serves_open_clips_embeddings(service):
    import open_clip

    url, model_dir = service
    src = Path(read_meta(model_dir / "clip").imported_from["open_clip"][len("local-dir:") :])
    clip, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{src}")
    clip.eval()
    text = "a photo of the number three"
    image = _png(3)
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    status, body = call_json(f"{url}/v1/embeddings", {"model": "clip", "input": [text, uri]})
    assert status == 200, body
    # open_clip's own preprocessing (shorter side, bicubic, centre crop, its mean and std)
    pixels = preprocess(Image.open(io.BytesIO(image)))[None]
    with torch.no_grad():
        theirs_text = F.normalize(clip.encode_text(open_clip.tokenize([text], 16)), dim=-1)[0]
        theirs_image = F.normalize(clip.encode_image(pixels), dim=-1)[0]
    np.testing.assert_allclose(body["data"][0]["embedding"], theirs_text.numpy(), atol=1e-5)
    np.testing.assert_allclose(body["data"][1]["embedding"], theirs_image.numpy(), atol=1e-5)


def test_vectors_embed_and_classify_as_json_arrays(service):
    """Also: a model exported as safetensors serves what the original computes offline."""
    url, model_dir = service
    assert not (model_dir / "vec" / "model.pt").exists()
    model, _ = load_model(model_dir / "original" / "vec")
    vec = [3.0, 2.0, 1.0, 1.0]
    item = {"type": "vector", "data": vec}
    status, body = call_json(f"{url}/v1/embeddings", {"model": "vec", "input": [item, "seven"]})
    assert status == 200, body
    standardised = (torch.tensor(vec) - torch.tensor([1.0, 2.0, 0.0, -1.0])) / 2.0
    with torch.no_grad():
        offline = model.embed("vector", standardised[None])[0].numpy()
    np.testing.assert_allclose(body["data"][0]["embedding"], offline, atol=1e-5)
    status, body = call_json(f"{url}/v1/classify", {"model": "vec", "inputs": {"vector": vec}})
    assert status == 200 and set(body["probabilities"]) == set(LABELS), body
    for bad, message in (
        ([1.0, 2.0], "vector has 2 values; the model takes 4"),
        ([1.0, float("nan"), 0.0, 0.0], "NaN or infinite"),
        ("1,2,3,4", "a vector is a JSON array of numbers"),
    ):
        status, err = call_json(
            f"{url}/v1/embeddings", {"model": "vec", "input": [{"type": "vector", "data": bad}]}
        )
        assert status == 400 and message in err["error"]["message"], err
        assert err["error"]["param"] == "input[0]"
    status, err = call_json(f"{url}/v1/classify", {"model": "vec", "inputs": {"vector": [1.0]}})
    assert status == 400 and err["error"]["param"] == "inputs.vector", err
    status, err = call_json(f"{url}/v1/embeddings", {"model": "small", "input": [item]})
    assert status == 400 and "no vector encoder" in err["error"]["message"], err


def test_two_models_are_multiplexed(service):
    url, _ = service
    _, a = call_json(f"{url}/v1/embeddings", {"model": "small", "input": "hello"})
    _, b = call_json(f"{url}/v1/embeddings", {"model": "other", "input": "hello"})
    assert len(a["data"][0]["embedding"]) == 16 and len(b["data"][0]["embedding"]) == 24


def test_classify_equals_offline_head(service):
    url, model_dir = service
    model, _ = load_model(model_dir / "small")
    image = _png(5)
    b64 = base64.b64encode(image).decode()
    status, body = call_json(f"{url}/v1/classify", {"model": "small", "inputs": {"image": b64}})
    assert status == 200, body
    with torch.no_grad():
        emb = {
            "image": model.embed("image", torch.from_numpy(decode_image(image, 8, 1))[None]),
            "text": torch.zeros(1, 16),
        }
        present = {"image": torch.ones(1), "text": torch.zeros(1)}
        probs = torch.softmax(model.classify(emb, present), -1)[0]
    for i, name in enumerate(LABELS):
        assert body["probabilities"][name] == pytest.approx(float(probs[i]), abs=1e-5)
    assert body["label"] == LABELS[int(probs.argmax())]


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"model": "nope", "input": "x"}, 404, "model"),
        ({"model": "small"}, 400, "input"),
        ({"model": "small", "input": []}, 400, "input"),
        ({"model": "small", "input": ["data:image/png;base64,!!notbase64"]}, 400, "input[0]"),
        ({"model": "small", "input": [{"type": "image", "data": "aGVsbG8="}]}, 400, "input[0]"),
        ({"model": "small", "input": ["x"] * 300}, 413, "input"),
        ({"model": "small", "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ],
)
def test_client_mistakes_are_4xx_with_openai_errors(service, body, status, param):
    url, _ = service
    got, err = call_json(f"{url}/v1/embeddings", body)
    assert got == status, err
    assert err["error"]["param"] == param and err["error"]["type"] == "invalid_request_error"


def test_malformed_json_and_bad_classify_inputs(service):
    url, _ = service
    status, err = call_json(f"{url}/v1/embeddings", raw=b"{not json")
    assert status == 400 and "error" in err
    status, err = call_json(f"{url}/v1/classify", {"model": "small", "inputs": {"audio": "x"}})
    assert status == 400 and err["error"]["param"] == "inputs.audio"


def test_batch_embed_matches_the_service(service, digits_dataset, tmp_path):
    import pyarrow.parquet as pq

    from polymodal.inference.offline import embed_dataset

    url, model_dir = service
    rows = embed_dataset(
        str(model_dir / "small"), str(digits_dataset), str(tmp_path / "emb"), num_cpus=0.25
    )
    table = pq.read_table(tmp_path / "emb")
    assert table.num_rows == rows > 100
    assert {"id", "label", "image_embedding", "text_embedding"} <= set(table.column_names)
    source = pq.read_table(digits_dataset / "val").to_pylist()
    by_id = {r["id"]: r for r in source}
    first = table.slice(0, 1).to_pylist()[0]
    text = by_id[first["id"]]["text"]
    _, served = call_json(f"{url}/v1/embeddings", {"model": "small", "input": text})
    np.testing.assert_allclose(first["text_embedding"], served["data"][0]["embedding"], atol=1e-5)


def test_api_key_is_required_when_set(service):
    from ray import serve

    from polymodal.serving.app import build_app

    url, model_dir = service
    serve.run(
        build_app(str(model_dir / "small"), api_key="s3cret-key"),
        name="secured",
        route_prefix="/secure",
    )
    try:
        assert call_json(f"{url}/secure/healthz")[0] == 200  # probes stay open
        status, err = call_json(f"{url}/secure/v1/models")
        assert status == 401 and "API key" in err["error"]["message"]
        assert "s3cret" not in json.dumps(err)
        req = urllib.request.Request(
            f"{url}/secure/v1/models", headers={"Authorization": "Bearer s3cret-key"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200 and json.loads(resp.read())["data"][0]["id"] == "small"
    finally:
        serve.delete("secured")


def test_oversized_body_is_413(service):
    import http.client
    from urllib.parse import urlparse

    from polymodal.serving.asgi import MAX_BODY_BYTES

    url, _ = service
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    # Announce a body over the limit but send only its start: the answer must not wait for it.
    conn.putrequest("POST", "/v1/embeddings")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.endheaders(b'{"model": "small", "input": "')
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["type"] == "invalid_request_error"
    conn.close()


def _scrape(metrics_url: str, until, timeout_s: float = 30.0, poke=None) -> dict:
    """{(name, labels): value} from the Prometheus endpoint, polled until `until` holds
    (Ray exports every second here). `poke` runs before each poll: a gauge is exported only
    in the interval after it was last set."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout_s
    while True:
        if poke is not None:
            poke()
        else:
            time.sleep(0.2)
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            text = resp.read().decode()
        samples = {
            (s.name, frozenset((k, v) for k, v in s.labels.items() if k in LABEL_KEYS)): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name.startswith("ray_polymodal_")
        }
        if until(samples) or time.monotonic() > deadline:
            return samples


LABEL_KEYS = {"route", "status", "modality", "model", "le"}


def _value(samples: dict, name: str, **labels) -> float:
    """Sum over the series of `name` whose labels include `labels` (replicas, apps)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def test_prometheus_metrics(service, metrics_port):
    url, _ = service
    for _ in range(3):
        assert call_json(f"{url}/v1/embeddings", {"model": "small", "input": ["a", "b"]})[0] == 200
    assert call_json(f"{url}/v1/embeddings", {"model": "missing", "input": "a"})[0] == 404

    def ready(s):
        return (
            _value(s, "ray_polymodal_http_requests_total", route="/v1/embeddings", status="200")
            >= 3
            and _value(s, "ray_polymodal_http_requests_total", status="404") >= 1
            and _value(s, "ray_polymodal_model_load_seconds_count", model="small") >= 1
            and any(n == "ray_polymodal_queue_depth" for n, _ in s)
        )

    def poke():
        call_json(f"{url}/v1/embeddings", {"model": "small", "input": ["c"]})
        time.sleep(0.5)

    samples = _scrape(f"http://127.0.0.1:{metrics_port}/metrics", ready, poke=poke)
    assert ready(samples), sorted({n for n, _ in samples})
    latency = "ray_polymodal_http_request_duration_seconds_count"
    assert _value(samples, latency, route="/v1/embeddings") >= 4
    # every request's items went through @serve.batch (Ray approximates histogram sums)
    assert _value(samples, "ray_polymodal_batch_size_count", modality="text") >= 3
    assert _value(samples, "ray_polymodal_batch_size_bucket", modality="text", le="+Inf") >= 1
    assert any(n == "ray_polymodal_queue_depth" for n, _ in samples)


def test_burst_beyond_capacity_gets_503_then_recovers(service):
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from polymodal.serving.app import build_app

    url, model_dir = service
    serve.run(
        build_app(str(model_dir), max_batch_size=1, max_ongoing_requests=1, max_queued_requests=1),
        name="tight",
        route_prefix="/tight",
    )
    images = ["data:image/png;base64," + base64.b64encode(_png(v)).decode() for v in range(64)]
    body = json.dumps({"model": "small", "input": images}).encode()

    def post(_):
        req = urllib.request.Request(
            f"{url}/tight/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, None
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Retry-After")

    try:
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(post, range(24)))  # a hang fails on the 60 s timeout
        statuses = [s for s, _ in results]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
        assert all(retry is not None and int(retry) >= 1 for s, retry in results if s == 503)
        status, out = call_json(
            f"{url}/tight/v1/embeddings", {"model": "small", "input": images[:2]}
        )
        assert status == 200 and len(out["data"]) == 2  # recovered
    finally:
        serve.delete("tight")


def test_models_from_s3_with_lru_limit(service, s3_endpoint, metrics_port, tmp_path):
    import boto3
    from ray import serve

    from polymodal.serving.app import build_app

    url, model_dir = service
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="served-models")
    for name, source in [("alpha", "small"), ("beta", "other")]:
        for file in (model_dir / source).iterdir():
            s3.upload_file(str(file), "served-models", f"ckpts/{name}/{file.name}")
    serve.run(build_app("s3://served-models/ckpts", max_models=1), name="s3", route_prefix="/s3")
    try:
        _, models = call_json(f"{url}/s3/v1/models")
        assert sorted(m["id"] for m in models["data"]) == ["alpha", "beta"]
        local, _ = load_model(model_dir / "small")
        with torch.no_grad():
            offline = local.embed("text", torch.from_numpy(encode_text("hello", 24))[None])
        for name in ["alpha", "beta", "alpha"]:  # one model per replica: alpha loads twice
            status, out = call_json(f"{url}/s3/v1/embeddings", {"model": name, "input": "hello"})
            assert status == 200, out
        np.testing.assert_allclose(out["data"][0]["embedding"], offline[0].numpy(), atol=1e-5)

        def reloaded(s):
            return _value(s, "ray_polymodal_model_load_seconds_count", model="alpha") >= 2

        assert reloaded(_scrape(f"http://127.0.0.1:{metrics_port}/metrics", reloaded))
    finally:
        serve.delete("s3")


@pytest.fixture(scope="module")
def digits_index(service, digits_dataset):
    """`polymodal index` (the real command, on this session's cluster) of the digits model's
    val images, written to the service's S3 index_dir in 50-row shards: (output, val rows)."""
    import pyarrow.parquet as pq

    from polymodal.cli import main

    _, model_dir = service
    out = io.StringIO()
    args = [str(model_dir / "digits"), str(digits_dataset), f"{INDEX_DIR}/digits-image"]
    with contextlib.redirect_stdout(out):
        code = main(["index", *args, "--shard-rows", "50", "--num-cpus", "0.25"])
    assert code == 0, out.getvalue()
    return out.getvalue(), pq.read_table(digits_dataset / "val").to_pylist()


def test_index_command_writes_shards_then_index_json(digits_index):
    from polymodal import storage
    from polymodal.retrieval.index import open_index

    printed, rows = digits_index
    assert f"embedded {len(rows)}/{len(rows)} rows" in printed  # progress
    assert f"indexed {len(rows)} image rows of val (16-d, model 'digits') into 4 shards" in printed
    assert "MB in" in printed and "rows/s" in printed
    meta = json.loads(storage.read_bytes(f"{INDEX_DIR}/digits-image/index.json"))
    assert meta["rows"] == len(rows) and [s["rows"] for s in meta["shards"]] == [50, 50, 50, 35]
    assert meta["model"] == "digits" and meta["modality"] == "image" and meta["dim"] == 16
    index = open_index(f"{INDEX_DIR}/digits-image")  # downloaded to the local cache
    assert sorted(index.ids(range(index.rows))) == sorted(r["id"] for r in rows)


def _search(url: str, **body):
    return call_json(f"{url}/v1/search", {"model": "digits", **body})


def test_search_by_a_rows_own_image_returns_it_first(service, digits_index):
    url, _ = service
    _, rows = digits_index
    for row in rows[::37]:  # 5 rows, from different shards
        b64 = base64.b64encode(row["image"]).decode()
        status, body = _search(url, query=f"data:image/png;base64,{b64}", k=5)
        assert status == 200, body
        assert body["model"] == "digits" and body["modality"] == "image"
        top = body["data"][0]
        assert top["id"] == row["id"] and top["label"] == DIGIT_LABELS[row["label"]]
        assert top["score"] == pytest.approx(1.0, abs=1e-4)
        scores = [hit["score"] for hit in body["data"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    status, typed = _search(url, query={"type": "image", "data": b64}, k=1)
    assert status == 200 and [h["id"] for h in typed["data"]] == [row["id"]]


def test_search_by_a_class_caption_returns_mostly_that_class(service, digits_index):
    url, _ = service
    _, rows = digits_index
    precision = []
    for name in DIGIT_LABELS:
        status, body = _search(url, query=f"a handwritten digit {name}", k=10)
        assert status == 200, body
        precision.append(sum(hit["label"] == name for hit in body["data"]) / 10)
    assert min(precision) >= 0.5 and sum(precision) / 10 >= 0.8, precision
    status, body = _search(url, query="a scan of a seven", k=1000)  # k past the corpus
    assert status == 200 and len(body["data"]) == len(rows)


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"model": "nope"}, 404, "model"),
        ({"modality": "text"}, 404, "modality"),  # the model has text, no text index
        ({"modality": "audio"}, 404, "modality"),
        ({"model": "small"}, 404, "modality"),  # a model without any index
        ({"k": 0}, 400, "k"),
        ({"k": 1001}, 400, "k"),
        ({"k": "many"}, 400, "k"),
        ({"query": " "}, 400, "query"),
        ({"query": "data:image/png;base64,!!notbase64"}, 400, "query"),
        ({"query": {"type": "image", "data": "aGVsbG8="}}, 400, "query"),
        ({"query": None}, 400, "query"),
    ],
)
def test_search_client_mistakes_are_4xx(service, digits_index, body, status, param):
    url, _ = service
    got, err = call_json(f"{url}/v1/search", {"model": "digits", "query": "a digit", **body})
    assert got == status, err
    assert err["error"]["param"] == param and err["error"]["type"] == "invalid_request_error"
    assert "Traceback" not in err["error"]["message"]  # the searcher's NoIndex, not Ray's text


def test_search_latency_is_exported(service, digits_index, metrics_port):
    url, _ = service
    assert _search(url, query="a handwritten digit one", k=3)[0] == 200

    def ready(s):
        return (
            _value(s, "ray_polymodal_search_seconds_count", model="digits", modality="image") >= 1
            and _value(s, "ray_polymodal_http_requests_total", route="/v1/search", status="200")
            >= 1
        )

    assert ready(_scrape(f"http://127.0.0.1:{metrics_port}/metrics", ready))


def test_an_index_of_another_models_vectors_is_a_500(service, digits_index, s3_endpoint):
    """A misconfigured index_dir: an index that names model 'other' (24-d) but holds the
    digits model's 16-d vectors. The searcher's SearchFailed crosses its handle and is a 500
    in the API's error shape, saying what is wrong."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket, source = "search-indexes", "indexes/digits-image/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=source)["Contents"]]
    for key in sorted(keys, key=lambda k: k.endswith("index.json")):  # index.json last
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if key.endswith("index.json"):
            body = json.dumps({**json.loads(body), "model": "other"}).encode()
        s3.put_object(Bucket=bucket, Key=key.replace("digits-image", "other-image"), Body=body)
    url, _ = service
    deadline = time.monotonic() + 30  # the searcher lists index_dir again within 2 s
    while (answer := call_json(f"{url}/v1/search", {"model": "other", "query": "a digit"}))[
        0
    ] == 404:
        assert time.monotonic() < deadline, answer
        time.sleep(0.5)
    status, err = answer
    assert status == 500 and err["error"]["type"] == "server_error", err
    assert "holds 16-d vectors" in err["error"]["message"] and err["error"]["param"] is None
