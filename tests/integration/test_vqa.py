"""Visual question answering end to end: builtin:shapes-vqa → a fusion model trained in the driver
(Train's local mode) → its answers per question type in `polymodal eval` → /v1/classify answering an
image and a question over HTTP to Serve (top answers), refusing a request without the question,
while the official openai client still gets embeddings."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from polymodal.config import load_config
from polymodal.data.ingest import ingest
from polymodal.data.sources.shapes_vqa import ANSWERS, CONDITIONS, QUESTION_TYPES, scene_rows
from polymodal.evaluation.report import write_report
from polymodal.evaluation.run import evaluate_checkpoint
from polymodal.inference.model import LoadedModel
from polymodal.ports import free_port
from polymodal.train.run import fit
from tests.integration.conftest import call_json

CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "shapes-vqa.yaml"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vqa_run(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vqa")
    report = ingest("builtin:shapes-vqa", tmp / "data", limit=1500, progress=False)
    assert report.manifest.label_names == ANSWERS
    cfg = load_config(
        CONFIG,
        [f"data.path={tmp / 'data'}", f"train.storage_path={tmp / 'runs'}", "train.epochs=1"]
        + ["train.batch_size=64", "train.num_workers=0", "objective.fusion.width=32"],
    )
    return fit(cfg), tmp / "data"


def test_a_fusion_model_trains_and_answers_per_question_type(vqa_run):
    result, data = vqa_run
    metrics = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    assert 0 <= metrics["val/answer_accuracy"] <= 1 and "val/accuracy" not in metrics
    evaluated = evaluate_checkpoint(result.checkpoint, str(data))
    assert evaluated["val/answer_accuracy"] == pytest.approx(metrics["val/answer_accuracy"])
    per_condition = [f"{c}/{k}" for c in CONDITIONS for k in QUESTION_TYPES]
    for kind in [*QUESTION_TYPES, *CONDITIONS, *per_condition]:
        assert 0 <= evaluated[f"val/answer_accuracy/{kind}"] <= 1, kind
    # val is seen and held-out scenes: its accuracy is a mixture of theirs
    both = [evaluated[f"val/answer_accuracy/{c}"] for c in CONDITIONS]
    assert min(both) - 1e-9 <= evaluated["val/answer_accuracy"] <= max(both) + 1e-9
    # the run report's grid: val images with their question, the answer and the truth
    page = Path(write_report(result.run_dir)).read_text()
    assert "src='answers.png'" in page and "val/answer_accuracy" in page
    png = Path(result.run_dir) / "report" / "answers.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000


def test_serve_answers_a_question_about_an_image(vqa_run, tmp_path):
    """Real HTTP to Serve: /v1/classify answers an image and its question with the top answers
    (the offline model's probabilities), refuses what cannot be answered, and the official
    openai client still gets the fusion model's embeddings."""
    import openai
    from ray import serve

    from polymodal.serving.app import build_app

    result, _ = vqa_run
    shutil.copytree(result.checkpoint, tmp_path / "vqa")
    model = LoadedModel.load(result.checkpoint)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(str(tmp_path), max_batch_size=8), route_prefix="/")
    try:
        url = f"http://127.0.0.1:{port}"
        png, asked, *_ = scene_rows(0)
        image = "data:image/png;base64," + base64.b64encode(png).decode()
        question = asked[0][1]
        body = {"model": "vqa", "inputs": {"image": image, "text": question}}
        status, answer = call_json(f"{url}/v1/classify", body)
        assert status == 200, answer
        offline = model.classify({"image": png, "text": question})
        assert answer["probabilities"] == pytest.approx(offline, abs=1e-5)
        top = [t["label"] for t in answer["top"]]
        assert top[0] == answer["label"] and len(top) == 5 and set(top) <= set(ANSWERS)
        probs = [t["probability"] for t in answer["top"]]
        assert probs == sorted(probs, reverse=True)
        # no question: refused, naming it; a modality the model lacks: refused before decoding
        for inputs, param, phrase in (
            ({"image": image}, "inputs.text", "answers from image and text together"),
            ({"image": image, "text": "how many?", "audio": "x"}, "inputs.audio", "no audio"),
        ):
            status, refused = call_json(f"{url}/v1/classify", {"model": "vqa", "inputs": inputs})
            assert status == 400, refused
            error = refused["error"]
            assert error["param"] == param and phrase in error["message"], error
        schema = call_json(f"{url}/openapi.json")[1]["components"]["schemas"]
        assert "top" in schema["ClassifyResponse"]["properties"]
        # the official client, unchanged: by default it asks for base64 and decodes it
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        texts = [question, "is there a red circle?"]
        want = model.embed("text", texts)
        for kwargs in ({}, {"encoding_format": "float"}):
            got = client.embeddings.create(model="vqa", input=texts, **kwargs)
            np.testing.assert_allclose([d.embedding for d in got.data], want, atol=1e-5)
        with pytest.raises(openai.BadRequestError, match="empty text"):
            client.embeddings.create(model="vqa", input=["  "])
    finally:
        serve.shutdown()
