"""Three modalities on a real local Ray cluster: digit images, captions and spoken digits
(some rows missing one) → a run in the driver (Train's local mode) → recall in all six
directions → the audio served through the same decoding."""

from __future__ import annotations

import json
from itertools import permutations
from pathlib import Path

import pytest

from polymodal.config import load_config
from polymodal.data.format import read_manifest
from polymodal.evaluation.report import write_report
from polymodal.evaluation.run import evaluate_checkpoint
from polymodal.inference.model import LoadedModel
from polymodal.train.run import fit

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "jobs" / "configs" / "digits-trimodal.yaml"

pytestmark = pytest.mark.integration


def test_trimodal_digits_train_and_evaluate_every_direction(
    ray_cluster, trimodal_digits_dataset, tmp_path
):
    data = trimodal_digits_dataset
    assert sum(s["rows"] for s in read_manifest(data).splits.values()) == 1797
    cfg = load_config(
        CONFIG,
        [f"data.path={data}", f"train.storage_path={tmp_path / 'runs'}", "train.epochs=2"]
        + ["train.num_workers=0", "train.name=trimodal-it"],
    )
    result = fit(cfg)
    metrics = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    for a, b in permutations(["image", "text", "audio"], 2):
        for k in (1, 5, 10):
            assert 0 <= metrics[f"val/recall@{k}/{a}->{b}"] <= 1
    # One recording per class: an image finds its class's recording, far above chance (0.1).
    assert metrics["val/recall@5/image->audio"] > 0.5
    assert metrics["val/accuracy"] > 0.5
    # Rows missing audio or a caption are not bad rows: nothing was dropped.
    bad = json.loads((Path(result.run_dir) / "bad_rows.json").read_text())
    assert bad["bad_rows"] == 0 and bad["rows_read"] >= 1797

    write_report(result.run_dir)  # as `polymodal train` does once the run is finished
    page = (Path(result.run_dir) / "report" / "index.html").read_text()
    assert "<h3>audio → text</h3>" in page and "audio → image" in page

    evaluated = evaluate_checkpoint(result.checkpoint)
    assert evaluated["val/recall@5/image->audio"] == pytest.approx(
        metrics["val/recall@5/image->audio"], abs=1e-6
    )
    # Serving's decoding of a WAV gives the same embedding as the training pipeline's.
    model = LoadedModel.load(result.checkpoint)
    wav = (Path("/usr/share/asterisk/sounds/en_US_f_Allison/digits") / "7.wav").read_bytes()
    first, second = model.embed("audio", [wav, wav])
    assert first.shape == (cfg.model.embed_dim,) and (first == second).all()
    # mteb (MAEB's way: audio as {"array", "sampling_rate"}) scores the audio rows as polymodal
    # eval does: its recall@k of audio -> text is val/recall@k/audio->text
    from polymodal.integrations.mteb import evaluate_mteb, tasks_for

    tasks = tasks_for(["retrieval:audio->text", "zeroshot:audio"], str(data), "val", ["{}"])
    scores = evaluate_mteb(model, "trimodal", "x", tasks, {})
    retrieval = scores["digits-trimodal-retrieval-audio2text"]["val"]
    for k in (1, 5, 10):
        assert retrieval[f"recall_at_{k}"] == pytest.approx(
            evaluated[f"val/recall@{k}/audio->text"], abs=1e-5
        )
    assert 0 < scores["digits-trimodal-zeroshot-audio"]["main_score"] <= 1
