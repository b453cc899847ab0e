"""OpenCLIP in and out: a tiny open_clip model imports as a polymodal checkpoint embedding
exactly as open_clip does; it exports back to open_clip (and ONNX); train.init_from takes it."""

from __future__ import annotations

import io

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from polymodal.checkpoint import CheckpointError, init_weights, load_model, save_checkpoint
from polymodal.cli import main
from polymodal.config import ConfigError, load_config
from polymodal.export import export_checkpoint
from polymodal.modalities import Preprocessing
from polymodal.modalities.image import decode_image
from polymodal.modalities.text import encode_text
from polymodal.models.build import build_model
from polymodal.openclip import import_open_clip
from polymodal.train.init_from import with_init_model
from tests.open_clip_models import PREPROCESS, tiny_clip

TEXTS = ["a photo of a cat", "a red umbrella", "一只猫", "a very long caption " * 10]


def _pngs() -> list[bytes]:
    out = []
    for seed, mode in ((0, "RGB"), (1, "L")):  # a grey image is fed as RGB
        shape = (40, 30, 3) if mode == "RGB" else (30, 40)
        arr = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, mode).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module", params=[None, -10.0], ids=["clip", "siglip-bias"])
def imported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("oc")
    src = tiny_clip(root / "src", bias=request.param)
    result = import_open_clip(f"local-dir:{src}", None, root / "imported")
    clip = open_clip.create_model(f"local-dir:{src}").eval()
    return root / "imported", clip, src, result


def _theirs(clip, src, prep: Preprocessing):
    pixels = torch.from_numpy(np.stack([decode_image(p, prep.image_size, 3) for p in _pngs()]))
    mean = torch.tensor(PREPROCESS["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESS["std"]).view(1, 3, 1, 1)
    tokens = open_clip.get_tokenizer(f"local-dir:{src}")(TEXTS)
    with torch.no_grad():
        image = F.normalize(clip.encode_image((pixels - mean) / std), dim=-1)
        text = F.normalize(clip.encode_text(tokens), dim=-1)
    return image, text, tokens


def test_import_embeds_exactly_as_open_clip(imported):
    path, clip, src, result = imported
    assert max(result["max_abs_diff"].values()) < 1e-5
    model, meta = load_model(path)
    prep = meta.prep
    assert (prep.image_size, prep.image_channels, prep.text_max_len) == (32, 3, 16)
    assert prep.image_mean == PREPROCESS["mean"] and prep.text_tokenizer == "open_clip"
    image, text, tokens = _theirs(clip, src, prep)
    ids = np.stack([encode_text(t, prep.text_max_len, prep.text_tokenizer) for t in TEXTS])
    np.testing.assert_array_equal(ids, tokens.numpy())  # open_clip's own tokenizer, truncation
    pixels = np.stack([decode_image(p, prep.image_size, 3) for p in _pngs()])
    with torch.no_grad():
        torch.testing.assert_close(
            model.embed("image", torch.from_numpy(pixels)), image, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            model.embed("text", torch.from_numpy(ids)), text, atol=1e-5, rtol=0
        )
    torch.testing.assert_close(model.logit_scale(), clip.logit_scale.exp().detach())
    if clip.logit_bias is not None:
        assert meta.run_config().objective.contrastive.kind == "sigmoid"
        torch.testing.assert_close(model.logit_bias.detach(), clip.logit_bias.detach())
    assert not any(k.startswith("projections.") for k in model.state_dict())  # its own


def test_export_back_to_open_clip_and_onnx(imported, tmp_path):
    path, clip, src, _ = imported
    model, meta = load_model(path)
    with torch.no_grad():  # stands in for fine-tuning: the export must carry our weights
        model.encoders["text"].net.text_projection.add_(0.1 * torch.randn(32, 16))
        model.encoders["image"].net.proj.mul_(0.5)
    save_checkpoint(tmp_path / "tuned", model, meta.model_copy(update={"files": {}}))
    result = export_checkpoint(str(tmp_path / "tuned"), tmp_path / "oc", "open_clip")
    assert max(result["max_abs_diff"].values()) < 1e-5
    back = open_clip.create_model(f"local-dir:{tmp_path / 'oc'}").eval()
    prep = meta.prep
    ids = torch.from_numpy(np.stack([encode_text(t, 16, "open_clip") for t in TEXTS]))
    with torch.no_grad():
        ours = model.embed("text", ids)
        torch.testing.assert_close(
            F.normalize(back.encode_text(ids), dim=-1), ours, atol=1e-5, rtol=0
        )
        assert (F.normalize(clip.encode_text(ids), dim=-1) - ours).abs().max() > 1e-3
    assert back.visual.preprocess_cfg["mean"] == prep.image_mean
    onnx = export_checkpoint(str(tmp_path / "tuned"), tmp_path / "onnx", "onnx")
    assert max(onnx["max_abs_diff"].values()) < 1e-4


def test_init_from_takes_the_model_section_and_weights(imported):
    path, _, _, _ = imported
    own = [f"train.init_from={path}", "model.image.tuning=freeze"]
    cfg = with_init_model(load_config(None, [*own, "objective.weights.classification=1"]))
    assert cfg.model.image.encoder == cfg.model.text.encoder == "open_clip"
    assert cfg.model.image.tuning == "freeze" and cfg.model.embed_dim == 16
    model, meta = load_model(path)
    fresh = build_model(cfg, meta.prep, num_classes=3)
    init_weights(fresh, str(path))  # the new classifier head is the only part it lacks
    for key, value in model.state_dict().items():
        if key != "logit_bias":  # SigLIP's bias goes with the sigmoid loss; this run's is InfoNCE
            torch.testing.assert_close(fresh.state_dict()[key], value)
    with pytest.raises(ConfigError, match="must be equal"):
        with_init_model(load_config(None, [f"train.init_from={path}", "model.embed_dim=32"]))
    small = load_config(None, ["model.embed_dim=16"])
    other = build_model(small, Preprocessing(["image", "text"], image_size=8, text_max_len=16))
    with pytest.raises(CheckpointError, match="do not fit this model"):
        init_weights(other, str(path))
    # load_config reads no storage: the checkpoint is read when the run is prepared.
    missing = load_config(None, [f"train.init_from={path}/nope"])
    with pytest.raises(ConfigError, match="train.init_from.*not a readable checkpoint"):
        with_init_model(missing)


def test_import_command_errors(tmp_path, capsys):
    assert (
        main(
            [
                "import",
                "open_clip",
                "--model",
                "ViT-B-32",
                "--weights",
                "nope.pt",
                str(tmp_path / "a"),
            ]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err
    assert (
        main(["import", "open_clip", "--model", "ViT-Nope", "--weights", "x", str(tmp_path / "b")])
        == 2
    )
    assert "no architecture 'ViT-Nope'" in capsys.readouterr().err
    assert (
        main(["import", "open_clip", "--model", f"local-dir:{tmp_path}", str(tmp_path / "c")]) == 2
    )
    assert "open_clip_config.json" in capsys.readouterr().err
