"""The pretrained MiniLM text tower: loads offline from its pip package and embeds like
sentence-transformers; freeze / lock_then_unlock / finetune change exactly the weights they
should; a checkpoint with it round-trips."""

import numpy as np
import pytest
import torch

from polymodal.batch import Batch
from polymodal.checkpoint import RunMeta, load_model, save_checkpoint
from polymodal.config import ConfigError, load_config
from polymodal.data.decode import decode_columns
from polymodal.modalities import Preprocessing
from polymodal.modalities.text import encode_text
from polymodal.models.build import build_model, unlock_towers
from polymodal.objectives.joint import joint_loss
from polymodal.pretrained import pretrained_dir
from polymodal.train.optim import build_optimizer

TEXTS = ["grinning face", "red heart", "a photo of a trouser", "ünïcödé and numbers 42"]


def _cfg(tuning, **extra):
    overrides = [
        "model.modalities=[image,text]",
        "model.text.encoder=minilm",
        f"model.text.tuning={tuning}",
        "data.text_max_len=16",
        "optim.lr=0.01",
        "optim.weight_decay=0.1",
        *[f"{k}={v}" for k, v in extra.items()],
    ]
    return load_config(None, overrides)


PREP = Preprocessing(["image", "text"], image_size=8, text_max_len=16, text_tokenizer="minilm")


def _batch(n=4):
    g = torch.Generator().manual_seed(0)
    ids = np.stack([encode_text(TEXTS[i % len(TEXTS)], 16, "minilm") for i in range(n)])
    return Batch(
        inputs={"image": torch.rand(n, 1, 8, 8, generator=g), "text": torch.from_numpy(ids)},
        present={"image": torch.ones(n), "text": torch.ones(n)},
        label=torch.full((n,), -1),
    )


def _steps(model, cfg, n=2, labels=None):
    opt = build_optimizer(model, cfg.optim)
    model.train()
    for _ in range(n):
        batch = _batch()
        if labels is not None:
            batch.label = labels
        loss, _ = joint_loss(model(batch), batch, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _bert(model):
    return {k: v.clone() for k, v in model.encoders["text"].net.state_dict().items()}


def test_tokenizer_and_tower_match_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    ids = np.stack([encode_text(t, 32, "minilm") for t in TEXTS])
    assert ids[0, 0] == 101 and (ids[:, -1] == 0).all()  # [CLS] first, padded with 0
    assert len(encode_text("word " * 100, 32, "minilm")) == 32  # truncated to max_len
    model = build_model(_cfg("freeze"), PREP).eval()
    with torch.no_grad():
        ours = torch.nn.functional.normalize(model.encoders["text"](torch.from_numpy(ids)), dim=-1)
    ref = SentenceTransformer(str(pretrained_dir("minilm")), device="cpu").encode(
        TEXTS, convert_to_tensor=True
    )
    assert torch.allclose(ours, ref, atol=1e-5)
    # Decoding a text column goes through the same tokenizer.
    out, bad = decode_columns({"text": np.array(TEXTS[:2], dtype=object)}, PREP)
    assert not bad and (out["text"][0] == encode_text(TEXTS[0], 16, "minilm")).all()


def test_freeze_keeps_the_tower_and_trains_the_rest():
    cfg = _cfg("freeze")
    model = build_model(cfg, PREP)
    before, proj = _bert(model), model.projections["text"].weight.clone()
    _steps(model, cfg)
    after = _bert(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(proj, model.projections["text"].weight)  # the head above it learns
    assert not model.encoders["text"].net.training  # dropout stays off in a locked tower


def test_a_locked_pretrained_tower_feeds_the_fusion_head_beside_contrastive_and_reconstruction():
    """The seed's weighted sum with fusion in it: MiniLM locked, its tokens read by the head;
    every term's loss is logged, the head and the image tower learn, MiniLM stays."""
    weights = {"fusion": 1, "contrastive": 1, "reconstruction": 0.5}
    extra = {f"objective.weights.{k}": v for k, v in weights.items()}
    cfg = _cfg("freeze", **extra, **{"train.cache_frozen_features": "false"})
    model = build_model(cfg, PREP, num_classes=3)
    before, head = _bert(model), model.fusion.answer.weight.clone()
    cnn = model.encoders["image"].net[0][0].weight.clone()
    batch = _batch()
    batch.label = torch.tensor([0, 1, 2, 1])
    _, logs = joint_loss(model(batch), batch, cfg)
    assert set(weights) <= set(logs), logs
    _steps(model, cfg, labels=batch.label)
    after = _bert(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head, model.fusion.answer.weight)
    assert not torch.equal(cnn, model.encoders["image"].net[0][0].weight)
    tokens, keep = model.encoders["text"].tokens(batch.inputs["text"])
    assert tokens.shape[:2] == keep.shape and not tokens.requires_grad  # locked: no graph


def test_lock_then_unlock_trains_the_tower_after_unlock_epoch_at_scaled_lr():
    cfg = _cfg("lock_then_unlock", **{"model.text.unlock_epoch": 1, "model.text.lr_scale": 0.5})
    model = build_model(cfg, PREP)
    opt = build_optimizer(model, cfg.optim)
    tower = {id(p) for p in model.encoders["text"].parameters()}
    lrs = {g["lr"] for g in opt.param_groups if id(g["params"][0]) in tower}
    assert lrs == {0.005}  # optim.lr * lr_scale, with and without weight decay
    before = _bert(model)
    unlock_towers(model, cfg, epoch=1)  # still locked during epoch 1
    _steps(model, cfg)
    assert all(torch.equal(before[k], v) for k, v in _bert(model).items())
    unlock_towers(model, cfg, epoch=2)
    _steps(model, cfg)
    after = _bert(model)
    assert model.encoders["text"].net.training
    assert not torch.equal(
        before["embeddings.word_embeddings.weight"], after["embeddings.word_embeddings.weight"]
    )


def test_checkpoint_round_trip_and_config_checks(tmp_path):
    cfg = _cfg("finetune")
    model = build_model(cfg, PREP)
    _steps(model, cfg, n=1)
    save_checkpoint(tmp_path, model, RunMeta(config=cfg.to_dict(), preprocessing=PREP.to_dict()))
    loaded, meta = load_model(tmp_path)
    assert meta.prep.text_tokenizer == "minilm"
    batch = _batch()
    with torch.no_grad():
        assert torch.allclose(
            model.eval().embed("text", batch.inputs["text"]),
            loaded.embed("text", batch.inputs["text"]),
        )
    # Weights saved when the tower kept BERT under `bert` (before it became an HFText) load.
    old = {k.replace("text.net.", "text.bert."): v for k, v in model.state_dict().items()}
    assert any(".bert." in k for k in old)
    fresh = build_model(cfg, PREP)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.state_dict(), model.state_dict())
    with pytest.raises(ConfigError, match="byte_transformer trains from scratch"):
        load_config(None, ["model.text.tuning=freeze"])
    with pytest.raises(ConfigError, match="did you mean 'freeze'"):
        load_config(None, ["model.text.encoder=minilm", "model.text.tuning=freez"])


def test_the_small_text_transformer_reads_minilm_word_pieces():
    """model.text.tokenizer: minilm gives byte_transformer MiniLM's vocabulary, learned from
    scratch: a question is a dozen tokens, not fifty bytes."""
    from polymodal.modalities.text import settings

    cfg = load_config(None, ["model.text.tokenizer=minilm", "data.text_max_len=16"])
    assert settings(cfg, None, None) == {"text_max_len": 16, "text_tokenizer": "minilm"}
    tower = build_model(cfg, PREP).encoders["text"]
    assert type(tower).__name__ == "ByteTransformer" and tower.embed.num_embeddings == 30522
    question = "is the purple triangle left of the yellow square?"
    ids = encode_text(question, 16, "minilm")
    assert 8 <= np.count_nonzero(ids) <= 12 < len(question.encode())
    assert tower(torch.from_numpy(ids[None])).shape == (1, 64)
