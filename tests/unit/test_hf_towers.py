"""Hugging Face towers: tiny models saved locally load as model.<modality>.encoder: hf and give
their own library's outputs (≤1e-5), with the tokenizer and image processor recorded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from polymodal.checkpoint import RunMeta, save_checkpoint
from polymodal.config import ConfigError, load_config
from polymodal.inference.model import LoadedModel
from polymodal.modalities import MODALITIES, Preprocessing
from polymodal.modalities.image import decode_image
from polymodal.modalities.text import encode_text
from polymodal.models.build import build_model
from tests import hf_models

TEXTS = ["a red umbrella", "a cat", "the quick brown fox on a mat", "一只猫"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "roberta": hf_models.roberta(root / "roberta"),
        "vit": hf_models.vit(root / "vit"),
        "clip": hf_models.clip_vision(root / "clip"),
        "wav2vec2": hf_models.wav2vec2(root / "wav2vec2"),
    }


def _prep(cfg) -> Preprocessing:
    settings = {}
    for m in cfg.model.modalities:
        settings.update(MODALITIES[m].settings(cfg, None, None))
    return Preprocessing(cfg.model.modalities, **settings)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_text_tower_equals_transformers(models, pooling):
    ref = str(models["roberta"])
    cfg = load_config(
        None,
        ["model.modalities=[text]", "objective.weights.contrastive=0"]
        + ["objective.weights.reconstruction=1", "model.text.encoder=hf"]
        + [f"model.text.hf_model={ref}", f"model.text.pooling={pooling}"],
    )
    prep = _prep(cfg)
    assert prep.text_tokenizer == f"hf:{ref}"
    model = build_model(cfg, prep).eval()
    ids = torch.from_numpy(
        np.stack([encode_text(t, prep.text_max_len, prep.text_tokenizer) for t in TEXTS])
    )
    with torch.no_grad():
        ours = model.encoders["text"](ids)
        tok = AutoTokenizer.from_pretrained(ref)
        theirs_in = tok(TEXTS, padding=True, return_tensors="pt")
        assert tok.pad_token_id == 1  # not 0: our ids shift so 0 means padding for all
        hidden = AutoModel.from_pretrained(ref).eval()(**theirs_in).last_hidden_state
    if pooling == "cls":
        theirs = hidden[:, 0]
    else:
        w = theirs_in["attention_mask"].unsqueeze(-1).float()
        theirs = (hidden * w).sum(1) / w.sum(1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # Reconstruction predicts the tokenizer's ids (+ padding): the decoder is that wide.
    assert model.decoders["text"](torch.zeros(1, cfg.model.embed_dim)).shape[-1] == len(tok) + 1


@pytest.mark.parametrize("name", ["vit", "clip"])
def test_vision_tower_equals_transformers(models, name, tmp_path):
    ref = str(models[name])
    cfg = load_config(
        None,
        ["model.modalities=[image,text]", "model.image.encoder=hf", f"model.image.hf_model={ref}"]
        + ["model.text.width=16", "model.text.layers=1", "model.embed_dim=8"],
    )
    prep = _prep(cfg)
    assert (prep.image_size, prep.image_channels) == (32, 3)  # from its image processor
    model = build_model(cfg, prep).eval()
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(prep.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = model.encoders["image"](x)
        theirs = AutoModel.from_pretrained(ref).eval()(pixel_values=(x - mean) / std).pooler_output
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # The checkpoint records the processor's settings: serving decodes as training did, a
    # grey PNG included (it becomes RGB).
    meta = RunMeta(config=cfg.to_dict(), preprocessing=prep.to_dict())
    save_checkpoint(tmp_path / "m", model, meta)
    loaded = LoadedModel.load(str(tmp_path / "m"))
    assert loaded.prep.image_mean == prep.image_mean
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50), np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    want = model.embed("image", torch.from_numpy(decode_image(png, 32, 3))[None])
    np.testing.assert_allclose(loaded.embed("image", [png]), want.detach().numpy(), atol=1e-6)


def test_audio_tower_takes_the_waveform_its_extractor_makes(models):
    import io

    import soundfile
    from transformers import AutoFeatureExtractor

    ref = str(models["wav2vec2"])
    cfg = load_config(
        None,
        ["model.modalities=[audio,text]", "model.audio.encoder=hf", f"model.audio.hf_model={ref}"]
        + ["data.audio_seconds=1.0", "model.audio.tuning=freeze"]
        + ["model.text.width=16", "model.text.layers=1", "model.embed_dim=8"],
    )
    prep = _prep(cfg)
    assert (prep.audio_rate, prep.audio_input, prep.audio_normalize) == (16000, "waveform", True)
    model = build_model(cfg, prep).eval()
    t = np.arange(8000) / 8000  # one second at 8 kHz: resampled to the model's 16 kHz
    buf = io.BytesIO()
    soundfile.write(buf, 0.3 * np.sin(2 * np.pi * 440 * t), 8000, format="FLAC")
    wave = MODALITIES["audio"].decode(buf.getvalue(), prep)
    assert wave.shape == (16000,)
    unnormalised = Preprocessing(**{**prep.to_dict(), "audio_normalize": False})
    raw = MODALITIES["audio"].decode(buf.getvalue(), unnormalised)
    extractor = AutoFeatureExtractor.from_pretrained(ref)
    theirs_in = extractor(raw, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ours = model.encoders["audio"](torch.from_numpy(wave)[None])
        theirs = AutoModel.from_pretrained(ref).eval()(**theirs_in).last_hidden_state.mean(1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_config_names_a_missing_model(tmp_path):
    with pytest.raises(ConfigError, match=r"model.text.encoder: hf.*needs hf_model"):
        load_config(None, ["model.text.encoder=hf"])
    with pytest.raises(ConfigError, match="no such model directory"):
        load_config(None, ["model.image.encoder=hf", f"model.image.hf_model={tmp_path}/nope"])
    with pytest.raises(ConfigError, match="no config.json"):
        load_config(None, ["model.image.encoder=hf", f"model.image.hf_model={tmp_path}"])
