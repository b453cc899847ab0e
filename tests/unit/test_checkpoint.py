import json
import pickle

import pytest
import torch

from polymodal.checkpoint import (
    CheckpointError,
    RunMeta,
    load_model,
    load_train_state,
    save_checkpoint,
    sha256,
    verify,
)
from polymodal.config import load_config
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model


def _meta(cfg, prep):
    return RunMeta(
        config=cfg.to_dict(),
        preprocessing=prep.to_dict(),
        label_names=["a", "b"],
        num_classes=2,
        epoch=1,
        step=10,
    )


def test_round_trip_restores_identical_outputs(tmp_path):
    cfg = load_config(None, ["objective.weights.classification=1", "model.embed_dim=16"])
    prep = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=12)
    model = build_model(cfg, prep, 2).eval()
    save_checkpoint(tmp_path, model, _meta(cfg, prep))
    loaded, meta = load_model(tmp_path)
    assert meta.label_names == ["a", "b"]
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(loaded.embed("image", x), model.embed("image", x))


class _Evil:
    def __reduce__(self):
        return (exec, ("import os; os.environ['POLYMODAL_PWNED'] = '1'",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    cfg = load_config(None, ["model.embed_dim=16"])
    prep = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=12)
    save_checkpoint(tmp_path, build_model(cfg, prep), _meta(cfg, prep))
    with open(tmp_path / "model.pt", "wb") as f:
        pickle.dump({"weights": _Evil()}, f)
    # The attacker rewrites the recorded sums too: weights_only is the last line of defence.
    meta = json.loads((tmp_path / "polymodal.json").read_text())
    size = (tmp_path / "model.pt").stat().st_size
    meta["files"]["model.pt"] = {"sha256": sha256(tmp_path / "model.pt"), "bytes": size}
    (tmp_path / "polymodal.json").write_text(json.dumps(meta))
    monkeypatch.delenv("POLYMODAL_PWNED", raising=False)
    with pytest.raises(CheckpointError, match="cannot load safely"):
        load_model(tmp_path)
    import os

    assert "POLYMODAL_PWNED" not in os.environ


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a polymodal checkpoint"):
        load_model(tmp_path)


def test_truncated_or_altered_files_are_detected(tmp_path):
    cfg = load_config(None, ["model.embed_dim=16"])
    prep = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=12)
    model = build_model(cfg, prep)
    save_checkpoint(tmp_path, model, _meta(cfg, prep), {"optimizer": {"step": 3}})
    verify(tmp_path)
    assert load_train_state(tmp_path) == {"optimizer": {"step": 3}}
    assert not list(tmp_path.glob(".*.tmp"))  # written under temporary names, then renamed
    weights = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "model.pt").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="model.pt: .* bytes, expected .*truncated"):
        load_model(tmp_path)
    flipped = bytearray(weights)
    flipped[len(flipped) // 2] ^= 0xFF  # one bit pattern changed, same size
    (tmp_path / "model.pt").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        verify(tmp_path)
    (tmp_path / "train_state.pt").unlink()
    (tmp_path / "model.pt").write_bytes(weights)
    with pytest.raises(CheckpointError, match="missing .*train_state.pt"):
        verify(tmp_path)
    # A checkpoint from before the sums (no "files") still loads.
    meta = json.loads((tmp_path / "polymodal.json").read_text())
    del meta["files"]
    (tmp_path / "polymodal.json").write_text(json.dumps(meta))
    load_model(tmp_path)
