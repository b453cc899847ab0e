"""docs/architecture.md's "adding a modality", done: a fixed-length integer sequence registered
as one Modality object with settings of its own (model.digits.width, data.digits_length), written
as a dataset, trained a step and embedded through the same code paths as the built-in modalities
(dataset format, decoding, config, model, step, checkpoint, LoadedModel, request parsing)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import Field
from torch import nn

from polymodal import modalities
from polymodal.checkpoint import RunMeta, save_checkpoint
from polymodal.config import ConfigError, config_from_dict
from polymodal.data.dataset import preprocessing_for
from polymodal.data.decode import decode_columns
from polymodal.data.format import DatasetWriter, read_manifest
from polymodal.evaluation.evaluate import decoded_batches, evaluate
from polymodal.inference.model import LoadedModel
from polymodal.modalities.base import DecodeError, InputError, Modality
from polymodal.models.build import build_model
from polymodal.sections import Section, TowerSettings
from polymodal.serving.inputs import check_item, parse_value
from polymodal.train.optim import build_optimizer, build_scheduler
from polymodal.train.step import DDPStep

LENGTH, VOCAB = 6, 10
WORDS = "zero one two three four five six seven eight nine".split()


# ---- the whole modality: what a new modality file would hold ----


def decode(value: Any, prep, augment=None, rng=None) -> np.ndarray:
    if not isinstance(value, list) or len(value) != prep.digits_length:
        raise DecodeError("bad digits", f"expected {prep.digits_length} integers")
    ids = np.asarray(value, dtype=np.int64)
    if ids.min() < 0 or ids.max() >= VOCAB:
        raise DecodeError("bad digits", f"values must be 0..{VOCAB - 1}")
    return ids


class DigitsTower(nn.Module):
    """Embeds each digit with its position, mean-pooled."""

    def __init__(self, length: int, width: int = 16):
        super().__init__()
        self.out_dim = width
        self.embed = nn.Embedding(VOCAB, width)
        self.pos = nn.Parameter(torch.randn(length, width) * 0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.embed(ids) + self.pos).mean(1)


def parse_request(value: Any, param: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise InputError("digits are a JSON array of integers", param)
    return value


def check_request(value: list[int], prep, param: str) -> int:
    if len(value) != prep.digits_length:
        raise InputError(f"expected {prep.digits_length} digits", param)
    return 0


class DigitsSettings(TowerSettings):
    """The digits tower: embedding (each digit's embedding plus its position's, mean-pooled)."""

    width: int = Field(16, ge=1, description="Width of the digit embeddings.")


class DigitsData(Section):
    digits_length: int = Field(LENGTH, ge=1, description="Digits in every row.")


DIGITS = Modality(
    name="digits",
    arrow_type=pa.list_(pa.int64()),
    defaults={"digits_length": LENGTH},
    settings=lambda cfg, manifest, train_column: {"digits_length": cfg.data.digits_length},
    decode=decode,
    input_shape=lambda prep: ((prep.digits_length,), np.int64),
    encoders={
        "embedding": lambda cfg, prep: DigitsTower(prep.digits_length, cfg.model.digits.width)
    },
    model_settings=DigitsSettings,
    data_settings=DigitsData,
    parse_request=parse_request,
    check_request=check_request,
    bad_row_reasons=("bad digits",),
)


# ---- the test ----


@pytest.fixture
def registered():
    modalities.register(DIGITS)
    yield
    del modalities.MODALITIES["digits"]


def _rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        digits = rng.integers(0, VOCAB, LENGTH).tolist()
        rows.append(
            {"id": f"{seed}-{i}", "digits": digits, "text": " ".join(WORDS[d] for d in digits)}
        )
    return rows


def _dataset(tmp_path) -> str:
    out = tmp_path / "digits"
    writer = DatasetWriter(
        out, ["digits", "text"], {"digits": "int64", "text": "utf-8"}, None, labelled=False
    )
    for split, n, seed in (("train", 64, 0), ("val", 16, 1)):
        for row in _rows(n, seed):
            writer.add(split, row)
    writer.finish("toy", {}, {})
    return str(out)


def test_unregistered_modality_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown modality 'digits'"):
        config_from_dict({"model": {"modalities": ["digits", "text"]}})
    with pytest.raises(ConfigError, match="unknown config key 'model.digits'"):
        config_from_dict({"model": {"digits": {"width": 8}}})


def test_a_registered_modality_brings_its_settings(registered):
    from polymodal.config.reference import missing_descriptions, reference

    cfg = config_from_dict({"model": {"modalities": ["digits", "text"], "digits": {"width": 8}}})
    assert cfg.model.section("digits").encoder == "embedding"
    assert cfg.model.digits.width == 8 and cfg.data.digits_length == LENGTH
    with pytest.raises(ConfigError, match="did you mean 'model.digits.width'"):
        config_from_dict({"model": {"digits": {"widht": 8}}})
    with pytest.raises(ConfigError, match="'data.digits_length' must be >= 1"):
        config_from_dict({"data": {"digits_length": 0}})
    page = reference()
    assert "`model.digits.width`" in page and "`data.digits_length`" in page
    assert missing_descriptions() == []


def test_a_registered_modality_trains_and_embeds(registered, tmp_path):
    path = _dataset(tmp_path)
    manifest = read_manifest(path)
    assert manifest.modalities["digits"] == {"encoding": "int64"}
    cfg = config_from_dict(
        {
            "data": {"path": path, "text_max_len": 48},
            "model": {"modalities": ["digits", "text"], "embed_dim": 32, "digits": {"width": 8}},
            "optim": {"lr": 1e-2, "warmup_steps": 0},
            "train": {"num_workers": 0, "batch_size": 16},
        }
    )
    prep = preprocessing_for(cfg, manifest)
    assert prep.digits_length == LENGTH and prep.to_dict()["digits_length"] == LENGTH

    # Decoding: good rows become arrays, bad ones are dropped with the modality's own reason.
    out, bad = decode_columns(
        {"digits": [[1] * LENGTH, [1, 2], [VOCAB] * LENGTH], "text": ["a", "b", "c"]}, prep
    )
    assert out["digits"].shape == (1, LENGTH) and bad == [(1, "bad digits"), (2, "bad digits")]
    assert "bad digits" in modalities.bad_row_reasons()

    # One training step through the step strategy a Train worker uses.
    torch.manual_seed(0)
    model = build_model(cfg, prep)
    assert isinstance(model.encoders["digits"], DigitsTower)
    assert model.encoders["digits"].out_dim == 8  # model.digits.width
    optimizer = build_optimizer(model, cfg.optim)
    step = DDPStep(
        model, optimizer, build_scheduler(optimizer, cfg.optim, 10), cfg, torch.device("cpu")
    )
    batch = next(decoded_batches(path, "train", prep, 16, manifest))
    before = model.encoders["digits"].embed.weight.detach().clone()
    loss, logs = step(batch)
    assert np.isfinite(loss) and "contrastive/digits-text" in logs
    assert not torch.equal(before, model.encoders["digits"].embed.weight)

    # Evaluation: recall both ways between the new modality and text.
    metrics = evaluate(model, decoded_batches(path, "val", prep, 16, manifest), prep, cfg)
    assert 0 <= metrics["val/recall@1/digits->text"] <= 1
    assert "val/recall@5/text->digits" in metrics

    # A checkpoint, loaded and embedded as the service and `polymodal embed` do.
    meta = RunMeta(config=cfg.to_dict(), preprocessing=prep.to_dict())
    save_checkpoint(tmp_path / "ckpt", model, meta)
    loaded = LoadedModel.load(str(tmp_path / "ckpt"))
    value = parse_value("digits", [3, 1, 4, 1, 5, 9], "input[0]")
    assert check_item("ckpt", loaded.prep, "digits", value, "input[0]") == 0
    vectors = loaded.embed("digits", [value])
    assert vectors.shape == (1, 32)
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)
    model.eval()
    expected = model.embed("digits", torch.tensor([value]))
    np.testing.assert_allclose(vectors, expected.detach().numpy(), atol=1e-5)
    with pytest.raises(InputError, match="array of integers"):
        parse_value("digits", "314159", "input[0]")
    with pytest.raises(InputError, match="expected 6 digits"):
        check_item("ckpt", loaded.prep, "digits", [1, 2], "input[0]")
