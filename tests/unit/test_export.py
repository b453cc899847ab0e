"""polymodal export: ONNX graphs give the torch embeddings under onnxruntime at any batch size;
a safetensors export is a checkpoint that loads without unpickling and embeds the same."""

from __future__ import annotations

import io
import json

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from polymodal.checkpoint import CheckpointError, RunMeta, load_model, save_checkpoint
from polymodal.cli import main
from polymodal.config import load_config
from polymodal.export import export_checkpoint
from polymodal.modalities import Preprocessing
from polymodal.modalities.image import decode_image
from polymodal.modalities.text import encode_text
from polymodal.models.build import build_model

TEXTS = ["a red umbrella", "一只猫", "x", "a much longer caption that fills every position"]


def _png(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = load_config(
        None,
        ["model.embed_dim=8", "model.text.width=16", "model.text.layers=1", "model.text.heads=2"]
        + ["objective.weights.classification=1"],
    )
    prep = Preprocessing(["image", "text"], image_size=16, image_channels=3, text_max_len=24)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "m"
    meta = {"config": cfg.to_dict(), "preprocessing": prep.to_dict(), "label_names": ["a", "b"]}
    save_checkpoint(path, build_model(cfg, prep, 2).eval(), RunMeta(**meta, num_classes=2))
    return path


def _inputs(prep: Preprocessing) -> dict[str, np.ndarray]:
    return {
        "image": np.stack([decode_image(_png(i), prep.image_size, 3) for i in range(3)]),
        "text": np.stack([encode_text(t, prep.text_max_len) for t in TEXTS]),
    }


def test_onnx_graphs_match_torch_at_any_batch_size(checkpoint, tmp_path):
    result = export_checkpoint(str(checkpoint), tmp_path / "onnx", "onnx")
    assert set(result["max_abs_diff"]) == {"image", "text"}
    assert max(result["max_abs_diff"].values()) < 1e-4
    description = json.loads((tmp_path / "onnx" / "polymodal-onnx.json").read_text())
    model, meta = load_model(checkpoint)
    prep = Preprocessing(**description["preprocessing"])
    assert description["preprocessing"] == meta.preprocessing
    assert description["labels"] == ["a", "b"]
    for modality, x in _inputs(prep).items():
        graph = description["graphs"][modality]
        assert graph["input"]["shape"][1:] == list(x.shape[1:])
        session = onnxruntime.InferenceSession(
            str(tmp_path / "onnx" / graph["file"]), providers=["CPUExecutionProvider"]
        )
        with torch.no_grad():
            want = model.embed(modality, torch.from_numpy(x)).numpy()
        for rows in (slice(0, 1), slice(None)):  # batch 1 and the whole batch: dynamic axis
            (got,) = session.run(None, {"input": x[rows]})
            np.testing.assert_allclose(got, want[rows], atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_safetensors_export_is_a_checkpoint_without_pickle(checkpoint, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "st"
    export_checkpoint(str(checkpoint), out, "safetensors")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "polymodal.json"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert "projections.image.weight" in f.keys()
    original, _ = load_model(checkpoint)
    exported, meta = load_model(out)
    assert meta.label_names == ["a", "b"] and meta.num_classes == 2
    x = torch.from_numpy(_inputs(meta.prep)["text"])
    torch.testing.assert_close(exported.embed("text", x), original.embed("text", x))
    # The recorded sums guard the safetensors file as they guard model.pt.
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(out)


def test_export_refuses_a_used_directory_and_an_unknown_format(checkpoint, tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert main(["export", str(checkpoint), str(used), "--format", "onnx"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (used / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="choose from onnx, safetensors"):
        export_checkpoint(str(checkpoint), tmp_path / "new", "tflite")
