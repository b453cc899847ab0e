import pickle

import pytest
import torch

from polymodal.config import load_config
from polymodal.data.decode import Preprocessing
from polymodal.models.build import build_model
from polymodal.train.checkpoint import CheckpointError, load_model, save_checkpoint


def _meta(cfg, prep):
    return {
        "config": cfg.to_dict(),
        "preprocessing": prep.to_dict(),
        "label_names": ["a", "b"],
        "num_classes": 2,
        "epoch": 1,
        "step": 10,
        "metrics": {},
        "history": [],
    }


def test_round_trip_restores_identical_outputs(tmp_path):
    cfg = load_config(None, ["objective.weights.classification=1", "model.embed_dim=16"])
    prep = Preprocessing(["image", "text"], 8, 1, 12)
    model = build_model(cfg, prep, 2).eval()
    save_checkpoint(tmp_path, model, _meta(cfg, prep))
    loaded, meta = load_model(tmp_path)
    assert meta["label_names"] == ["a", "b"]
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(loaded.embed("image", x), model.embed("image", x))


class _Evil:
    def __reduce__(self):
        return (exec, ("import os; os.environ['POLYMODAL_PWNED'] = '1'",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    cfg = load_config(None, ["model.embed_dim=16"])
    prep = Preprocessing(["image", "text"], 8, 1, 12)
    save_checkpoint(tmp_path, build_model(cfg, prep), _meta(cfg, prep))
    with open(tmp_path / "model.pt", "wb") as f:
        pickle.dump({"weights": _Evil()}, f)
    monkeypatch.delenv("POLYMODAL_PWNED", raising=False)
    with pytest.raises(CheckpointError, match="cannot load safely"):
        load_model(tmp_path)
    import os

    assert "POLYMODAL_PWNED" not in os.environ


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a polymodal checkpoint"):
        load_model(tmp_path)
