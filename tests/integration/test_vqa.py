"""Visual question answering end to end: builtin:shapes-vqa → a fusion model trained on 2 Ray
Train workers → its answers per question type in `polymodal eval` → /v1/classify answering an
image and a question (top answers), and refusing a request without the question."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from polymodal.config import load_config
from polymodal.data.ingest import ingest
from polymodal.data.sources.shapes_vqa import ANSWERS, CONDITIONS, QUESTION_TYPES, scene_rows
from polymodal.evaluation.report import write_report
from polymodal.evaluation.run import evaluate_checkpoint
from polymodal.inference.model import LoadedModel
from polymodal.train.run import fit

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
        + ["train.batch_size=64", "train.cpus_per_worker=0.5", "objective.fusion.width=32"],
    )
    return fit(cfg), tmp / "data"


def test_a_fusion_model_trains_and_answers_per_question_type(vqa_run):
    result, data = vqa_run
    metrics = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    assert 0 <= metrics["val/answer_accuracy"] <= 1 and "val/accuracy" not in metrics
    evaluated = evaluate_checkpoint(result.checkpoint, str(data))
    assert evaluated["val/answer_accuracy"] == pytest.approx(metrics["val/answer_accuracy"])
    for kind in [
        *QUESTION_TYPES,
        *CONDITIONS,
        *(f"{c}/{k}" for c in CONDITIONS for k in QUESTION_TYPES),
    ]:
        assert 0 <= evaluated[f"val/answer_accuracy/{kind}"] <= 1, kind
    # the run report's grid: val images with their question, the answer and the truth
    page = Path(write_report(result.run_dir)).read_text()
    assert "src='answers.png'" in page and "val/answer_accuracy" in page
    png = Path(result.run_dir) / "report" / "answers.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000


def test_classify_answers_a_question_about_an_image(vqa_run):
    from polymodal.serving.gateway import Gateway

    result, data = vqa_run
    model = LoadedModel.load(result.checkpoint)

    class Models:  # the checkpoint's LoadedModel, as the gateway's Embedder would answer
        def __init__(self):
            self.model = model

        async def classify(self, model_id, values):
            return self.model.classify(values)

    png, asked, *_ = scene_rows(0)
    image = "data:image/png;base64," + base64.b64encode(png).decode()
    name = Path(result.checkpoint).name
    gateway = Gateway(model_dir=result.checkpoint, model_server=Models, searcher=None)
    with TestClient(gateway.__serve_build_asgi_app__()) as client:
        question = asked[0][1]
        body = {"model": name, "inputs": {"image": image, "text": question}}
        got = client.post("/v1/classify", json=body)
        assert got.status_code == 200, got.text
        answer = got.json()
        offline = model.classify({"image": png, "text": question})
        assert answer["probabilities"] == pytest.approx(offline)
        top = [t["label"] for t in answer["top"]]
        assert top[0] == answer["label"] and len(top) == 5 and set(top) <= set(ANSWERS)
        probs = [t["probability"] for t in answer["top"]]
        assert probs == sorted(probs, reverse=True)
        # no question: refused, naming it; a modality the model lacks: refused before decoding
        for inputs, param, phrase in (
            ({"image": image}, "inputs.text", "answers from image and text together"),
            ({"image": image, "text": "how many?", "audio": "x"}, "inputs.audio", "no audio"),
        ):
            refused = client.post("/v1/classify", json={"model": name, "inputs": inputs})
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["param"] == param and phrase in error["message"], error
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "top" in schema["ClassifyResponse"]["properties"]
