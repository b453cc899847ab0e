import pytest
import torch

from polymodal.batch import Batch
from polymodal.config import ConfigError, load_config
from polymodal.modalities import MODALITIES, Preprocessing
from polymodal.models.build import build_model
from polymodal.towers.decoders import ImageDecoder, TextDecoder


def _batch(b=4, size=28, channels=1, max_len=16):
    return Batch(
        inputs={
            "image": torch.rand(b, channels, size, size),
            "text": torch.randint(1, 257, (b, max_len)),
        },
        present={"image": torch.ones(b), "text": torch.ones(b)},
        label=torch.randint(0, 10, (b,)),
    )


# "hf" and "open_clip" need a model: test_hf_towers.py and test_open_clip.py build tiny ones.
@pytest.mark.parametrize("name", sorted(set(MODALITIES["image"].encoders) - {"hf", "open_clip"}))
@pytest.mark.parametrize("size,channels", [(28, 1), (8, 3)])
def test_image_encoders_shapes(name, size, channels):
    cfg = load_config(None)
    enc = MODALITIES["image"].encoders[name](
        cfg, Preprocessing(["image"], image_size=size, image_channels=channels, text_max_len=16)
    )
    out = enc(torch.rand(3, channels, size, size))
    assert out.shape == (3, enc.out_dim)


@pytest.mark.parametrize("name", sorted(set(MODALITIES["text"].encoders) - {"hf", "open_clip"}))
def test_text_encoders_shapes_and_padding(name):
    cfg = load_config(None)
    enc = (
        MODALITIES["text"]
        .encoders[name](
            cfg, Preprocessing(["text"], image_size=28, image_channels=1, text_max_len=16)
        )
        .eval()
    )
    ids = torch.zeros(2, 16, dtype=torch.long)
    ids[0, :5] = torch.tensor([98, 99, 100, 101, 102])
    ids[1, :5] = ids[0, :5]
    ids[1, 5] = 50  # one more byte changes the embedding; trailing padding does not
    out = enc(ids)
    assert out.shape == (2, enc.out_dim)
    assert not torch.allclose(out[0], out[1])
    padded_more = torch.cat([ids[:1], torch.zeros(1, 8, dtype=torch.long)], 1)[:, :16]
    assert torch.allclose(enc(padded_more)[0], out[0], atol=1e-5)


def test_decoders_shapes():
    z = torch.randn(5, 32)
    assert ImageDecoder(32, 1, 28).forward(z).shape == (5, 1, 28, 28)
    assert ImageDecoder(32, 3, 8).forward(z).shape == (5, 3, 8, 8)
    assert TextDecoder(32, 20, vocab=257).forward(z).shape == (5, 20, 257)


def test_joint_model_outputs():
    cfg = load_config(
        None, ["objective.weights.reconstruction=1", "objective.weights.classification=1"]
    )
    model = build_model(
        cfg,
        Preprocessing(["image", "text"], image_size=28, image_channels=1, text_max_len=16),
        num_classes=10,
    )
    out = model(_batch())
    for m in ("image", "text"):
        emb = out.embeddings[m]
        assert emb.shape == (4, cfg.model.embed_dim)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert out.reconstructions["image"].shape == (4, 1, 28, 28)
    assert out.reconstructions["text"].shape == (4, 16, 257)
    assert out.class_logits.shape == (4, 10)
    assert float(out.logit_scale.detach()) == pytest.approx(1 / 0.07, rel=1e-4)


def test_logit_scale_clamped_at_max():
    cfg = load_config(None, ["objective.contrastive.temperature_init=0.001"])
    model = build_model(
        cfg, Preprocessing(["image", "text"], image_size=28, image_channels=1, text_max_len=16)
    )
    assert float(model.logit_scale()) == pytest.approx(100.0)


def test_parts_built_only_for_active_terms():
    cfg = load_config(None)  # contrastive only
    model = build_model(
        cfg,
        Preprocessing(["image", "text"], image_size=28, image_channels=1, text_max_len=16),
        num_classes=10,
    )
    assert len(model.decoders) == 0 and model.classifier is None


def test_unknown_encoder_is_a_clear_error():
    # Refused while the config loads, before any worker would build the model.
    with pytest.raises(ConfigError, match="'model.image.encoder' must be one of .*got 'vit'"):
        load_config(None, ["model.image.encoder=vit"])
