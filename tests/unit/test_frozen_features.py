"""A frozen tower runs once per row: its features go to a table on disk that later epochs and
runs with the same tower, preprocessing and data read instead of running it."""

from __future__ import annotations

import numpy as np
import torch

from polymodal.batch import Batch
from polymodal.config import load_config
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from polymodal.train.features import FrozenFeatures, cached_modalities

PREP = Preprocessing(["image", "text"], image_size=16, image_channels=3, text_max_len=16)


def _cfg(tmp_path, *extra):
    return load_config(
        None,
        ["model.image.encoder=efficientnet_lite0", "model.image.tuning=freeze"]
        + ["model.text.width=16", "model.text.layers=1", "model.embed_dim=8"]
        + [f"train.feature_cache_dir={tmp_path}", *extra],
    )


def _batch(n: int, first_key: int = 0) -> Batch:
    g = torch.Generator().manual_seed(first_key)
    return Batch(
        inputs={
            "image": torch.rand(n, 3, 16, 16, generator=g),
            "text": torch.randint(1, 200, (n, 16), generator=g),
        },
        present={"image": torch.ones(n), "text": torch.ones(n)},
        label=torch.full((n,), -1),
        sample=torch.arange(first_key, first_key + n),
    )


def test_only_frozen_unaugmented_towers_are_cached(tmp_path):
    assert cached_modalities(_cfg(tmp_path)) == ["image"]
    assert cached_modalities(_cfg(tmp_path, "data.augment.hflip=0.5")) == []
    assert cached_modalities(_cfg(tmp_path, "train.cache_frozen_features=false")) == []


def test_features_are_computed_once_and_equal_the_tower(tmp_path):
    cfg = _cfg(tmp_path)
    model = build_model(cfg, PREP).train()
    frozen = FrozenFeatures(model, ["image"], cfg, PREP, "data/x")
    batch = _batch(6)
    first = frozen(batch)
    assert frozen.stats() == {"computed": 6, "read": 0}
    with torch.no_grad():
        direct = model.encoders["image"](batch.inputs["image"])
    torch.testing.assert_close(first.inputs["image"], direct)
    # The model, told these are features, embeds exactly as from the pixels.
    with torch.no_grad(), model.using_features({"image"}):
        via_table = model.project("image", first.inputs["image"])
    with torch.no_grad():
        torch.testing.assert_close(via_table, model.project("image", batch.inputs["image"]))
    assert model.precomputed == set()  # only within the block
    # The next epoch reads them all; a mixed batch computes only its new rows.
    frozen(batch)
    assert frozen.stats() == {"computed": 6, "read": 6}
    mixed = _batch(4, first_key=4)  # keys 4, 5 known; 6, 7 new
    frozen(mixed)
    assert frozen.stats() == {"computed": 8, "read": 8}
    # A later run with the same tower and data reuses the table; other data gets its own.
    again = FrozenFeatures(build_model(cfg, PREP), ["image"], cfg, PREP, "data/x")
    torch.testing.assert_close(again(batch).inputs["image"], first.inputs["image"])
    assert again.stats()["computed"] == 0
    other = FrozenFeatures(model, ["image"], cfg, PREP, "data/y")
    other(batch)
    assert other.stats()["computed"] == 6
    assert len(list(tmp_path.glob("image-*.sqlite"))) == 2
    assert np.isfinite(first.inputs["image"].numpy()).all()


def test_mined_negatives_get_features_by_value_and_embed_as_from_pixels(tmp_path):
    import dataclasses

    cfg = _cfg(tmp_path)
    model = build_model(cfg, PREP).eval()
    frozen = FrozenFeatures(model, ["image"], cfg, PREP, "data/x")
    rows = _batch(4)
    # Row i's two negatives are rows i+1 and i+2's images (mined: values of the data).
    at = torch.tensor([[(i + 1) % 4, (i + 2) % 4] for i in range(4)])
    hashes = torch.arange(100, 104)
    batch = dataclasses.replace(
        rows,
        hashes={"image": hashes},
        negatives={"text->image": rows.inputs["image"][at]},
        negatives_present={"text->image": torch.ones(4, 2)},
        negatives_hashes={"text->image": hashes[at]},
    )
    out = frozen(batch)
    # The rows' 4 features computed once; the 8 negatives found among them by value.
    assert frozen.stats() == {"computed": 4, "read": 8}
    assert out.negatives["text->image"].shape == (4, 2, out.inputs["image"].shape[1])
    with torch.no_grad():
        _, direct = model.encode_with_negatives("image", batch)
        with model.using_features({"image"}):
            _, cached = model.encode_with_negatives("image", out)
    torch.testing.assert_close(cached["text->image"], direct["text->image"])
