"""An imported OpenCLIP model (SigLIP-style, with a logit bias) fine-tunes LiT-style (image
tower frozen, its features computed once per row into the node's table) on 2 Ray Train
workers (train.init_from) with the sigmoid loss, the gradient cache and label positives, and
the result goes back to open_clip."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from polymodal.checkpoint import load_model, read_meta
from polymodal.config import load_config
from polymodal.export import export_checkpoint
from polymodal.openclip import import_open_clip
from polymodal.train.run import fit
from tests.open_clip_models import tiny_clip

pytestmark = pytest.mark.integration


def test_imported_open_clip_trains_on_two_workers(ray_cluster, digits_dataset, tmp_path):
    imported = tmp_path / "imported"
    import_open_clip(f"local-dir:{tiny_clip(tmp_path / 'src', bias=-10.0)}", None, imported)
    cfg = load_config(
        None,
        [f"data.path={digits_dataset}", f"train.init_from={imported}"]
        + [f"train.storage_path={tmp_path / 'runs'}", "train.name=oc", "train.epochs=2"]
        + ["model.image.tuning=freeze", f"train.feature_cache_dir={tmp_path / 'features'}"]
        + ["train.num_workers=2", "train.cpus_per_worker=0.5", "train.batch_size=64"]
        + ["objective.contrastive.gather=full", "optim.lr=0.001"]
        + ["objective.contrastive.kind=sigmoid", "objective.contrastive.positives=label"]
        + ["train.grad_cache.chunk_size=8", "train.log_every_steps=5"],
    )
    result = fit(cfg)
    meta = read_meta(result.checkpoint)
    assert meta.step == 2 * (1612 // 64) and meta.epoch == 2
    assert meta.run_config().model.section("image").encoder == "open_clip"
    assert meta.prep.image_size == 32  # its size, not the config's default
    assert 0.0 <= meta.metrics["val/recall@10/image->text"] <= 1.0
    baseline = meta.history[0]  # the imported model, validated before step 1
    assert result.metrics["val/loss"] < baseline["val/loss"]
    history = [row for row in meta.history if "train/loss" in row]
    assert history[0]["train/loss"] > history[-1]["train/loss"]
    before, _ = load_model(imported)
    after, _ = load_model(result.checkpoint)
    moved = [k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert not any(k.startswith("encoders.image.") for k in moved)  # frozen
    assert any(k.startswith("encoders.text.net.") for k in moved)
    # Both workers wrote one table: each train row once (drop_last skips a few per epoch).
    (table,) = (tmp_path / "features").glob("image-*.sqlite")
    with sqlite3.connect(table) as db:
        rows, width = db.execute("SELECT COUNT(*), MAX(LENGTH(v)) FROM f").fetchone()
    assert 1600 <= rows <= 1612 and width == 16 * 4
    # Fine-tuned here, loaded by open_clip: the same embeddings.
    out = Path(tmp_path / "back")
    export_checkpoint(result.checkpoint, out, "open_clip")
    back = open_clip.create_model(f"local-dir:{out}").eval()
    ids = torch.tensor([[49406, 320, 1125, 49407] + [0] * 12])
    with torch.no_grad():
        theirs = F.normalize(back.encode_text(ids), dim=-1)
        torch.testing.assert_close(after.embed("text", ids), theirs, atol=1e-5, rtol=0)
