"""A vector model on a real local Ray cluster: scikit-learn's digits as a CSV table of 64
pixel columns + caption + class → ingest → a run in the driver (Train's local mode) with the
train split's standardisation decoded in Ray Data → classification and vector↔text
retrieval well above chance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from sklearn.datasets import load_digits

from polymodal.config import load_config
from polymodal.data.ingest import ingest
from polymodal.inference.model import LoadedModel
from polymodal.train.run import fit

pytestmark = pytest.mark.integration


def test_vector_text_model_trains_on_the_cluster(ray_cluster, tmp_path):
    d = load_digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    columns = {f"p{i}": d.data[:, i] for i in range(64)}
    columns["caption"] = [f"a handwritten {names[n]}" for n in d.target]
    columns["cls"] = [names[n] for n in d.target]
    pacsv.write_csv(pa.table(columns), tmp_path / "digits.csv")
    data = tmp_path / "digits-vectors"
    features = ",".join(f"p{i}" for i in range(64))
    mapping = [f"vector={features}", "text=caption", "label=cls"]
    assert (
        ingest(str(tmp_path / "digits.csv"), data, mapping=mapping, progress=False).rows_written
        == 1797
    )

    cfg = load_config(
        None,
        [f"data.path={data}", f"train.storage_path={tmp_path / 'runs'}", "train.name=vectors-it"]
        + ["model.modalities=[vector,text]", "model.embed_dim=32", "model.text.layers=1"]
        + ["objective.weights.classification=1", "objective.classification.modalities=[vector]"]
        + ["objective.contrastive.positives=label", "optim.lr=0.003", "optim.warmup_steps=5"]
        + ["train.epochs=3", "train.batch_size=128", "train.num_workers=0"],
    )
    result = fit(cfg)
    metrics = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    assert metrics["val/accuracy"] > 0.8  # chance is 0.1
    assert metrics["val/recall@1/vector->text"] > 0.5  # ten distinct captions: chance 0.1

    # The checkpoint carries the train split's statistics: serving standardises the same way.
    model = LoadedModel.load(result.checkpoint)
    assert len(model.prep.vector_mean) == 64 and max(model.prep.vector_std) > 1
    probs = model.classify({"vector": d.data[0].tolist()})
    assert max(probs, key=probs.get) == names[d.target[0]]
    embedded = model.embed("vector", [d.data[0].tolist()])
    assert embedded.shape == (1, 32) and np.isclose(np.linalg.norm(embedded), 1, atol=1e-5)
