"""Fusion: towers' token sequences (their pool is today's embedding, bit for bit), the fusion
head's cross-attention, the fusion term's config checks, and builtin:shapes-vqa's scenes."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.config import ConfigError, load_config
from polymodal.data.sources.shapes_vqa import (
    ANSWERS,
    CONDITIONS,
    HELD_OUT,
    QUESTION_TYPES,
    condition,
    question_type,
    scene,
    scene_rows,
    shapes_vqa,
)
from polymodal.towers.fusion import FusionHead, grid_positions
from polymodal.towers.image import SmallCNN
from polymodal.towers.text import ByteTransformer
from polymodal.towers.vector import MLP


@pytest.mark.parametrize(
    "tower, x",
    [
        (SmallCNN(3, 8), torch.rand(4, 3, 16, 16)),
        (ByteTransformer(12, 16, 1, 2), torch.tensor([[104, 105, 0, 0], [0, 0, 0, 0]])),
        (MLP(5, 8, 6), torch.rand(3, 5)),
    ],
)
def test_a_towers_tokens_pool_to_its_embedding(tower, x):
    tower.eval()
    tokens, mask = tower.tokens(x)
    assert tokens.shape[:-1] == mask.shape and tokens.shape[-1] == tower.out_dim
    assert torch.equal(tower.pool(tokens, mask), tower(x))


def _head() -> FusionHead:
    torch.manual_seed(0)
    return FusionHead({"image": 8, "text": 6}, "text", num_answers=5, width=16, heads=2).eval()


def test_the_question_attends_to_the_image():
    head = _head()
    image = (torch.rand(2, 9, 8), torch.ones(2, 9, dtype=torch.bool))
    text = (torch.rand(2, 4, 6), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool))
    present = {"image": torch.ones(2), "text": torch.ones(2)}
    logits = head({"image": image, "text": text}, present)
    assert logits.shape == (2, 5)
    other = (torch.rand(2, 9, 8), image[1])
    assert not torch.allclose(head({"image": other, "text": text}, present), logits)
    # padding is not read: changing a padded token changes nothing
    padded = text[0].clone()
    padded[0, 3] += 5
    assert torch.allclose(head({"image": image, "text": (padded, text[1])}, present), logits)
    # a row without its image attends to nothing of it, and stays finite
    gone = head({"image": image, "text": text}, {"image": torch.tensor([1.0, 0.0]), **{
        "text": torch.ones(2)}})  # fmt: skip
    assert torch.isfinite(gone).all() and torch.allclose(gone[0], logits[0])


def test_a_grid_of_patches_knows_left_from_right():
    """A CNN's grid [B, H, W, C] gets 2-D positions: the same patches mirrored are another
    scene; a sequence's learned positions cover what is not a grid."""
    head, text = _head(), (torch.rand(2, 4, 6), torch.ones(2, 4, dtype=torch.bool))
    present = {"image": torch.ones(2), "text": torch.ones(2)}
    grid = torch.rand(2, 3, 3, 8)

    def answer(g):
        return head(
            {"image": (g, torch.ones(g.shape[:3], dtype=torch.bool)), "text": text}, present
        )

    assert not torch.allclose(answer(grid), answer(grid.flip(2)), atol=1e-4)
    where = grid_positions(3, 3, 16)  # row-major: patch 1 is (x 1, y 0), patch 3 (x 0, y 1)
    assert where.shape == (9, 16) and not torch.allclose(where[1], where[3])


def test_fusion_config_mistakes_are_named():
    base = ["objective.weights.fusion=1", "objective.weights.contrastive=0"]
    with pytest.raises(ConfigError) as found:
        load_config(
            None,
            [*base, "objective.fusion.query=audio", "objective.fusion.heads=3"]
            + ["model.image.encoder=resnet18", "train.grad_cache.chunk_size=8"],
        )
    text = str(found.value)
    for phrase in (
        "'objective.fusion.query': 'audio' is not one of its modalities",
        "'objective.fusion.heads': 3 does not divide width 128",
        "'model.image.encoder': resnet18 gives no token sequence for objective.fusion "
        "(one of ['small_cnn'])",
        "'objective.fusion' does not run under train.grad_cache",
    ):
        assert phrase in text, text
    assert load_config(None, base).objective.fusion.modalities == ["image", "text"]


def test_shapes_vqa_is_deterministic_and_holds_out_pairs_from_train():
    first, again = scene_rows(5), scene_rows(5)
    assert first == again and first[2:] == ("train", "seen")
    # one scene in seven is val; every other one holds a held-out pair
    assert scene_rows(6)[2:] == ("val", "held_out") and scene_rows(13)[2:] == ("val", "seen")
    rng = np.random.default_rng(0)
    for val in (False, True):
        for _ in range(50):
            held = any((t.shape, t.colour) in HELD_OUT for t in scene(rng, val))
            assert held == val
    rows = list(shapes_vqa(limit=1200).rows)
    assert len(rows) == 1200 and {r.split for r in rows} == {"train", "val"}
    assert {condition(r.id) for r in rows if r.split == "train"} == {"seen"}
    types = Counter(question_type(r.id) for r in rows)
    assert set(types) == set(QUESTION_TYPES) and min(types.values()) > 120
    # each val condition asks every type, about as often
    for held in CONDITIONS:
        asked = Counter(question_type(r.id) for r in rows if r.split == "val" and
                        condition(r.id) == held)  # fmt: skip
        assert set(asked) == set(QUESTION_TYPES) and min(asked.values()) >= 5, (held, asked)
    assert all(0 <= r.label < len(ANSWERS) for r in rows)
    # yes/no questions are balanced: a blind guess is no better than chance there
    yes_no = Counter(ANSWERS[r.label] for r in rows if question_type(r.id) == "exists")
    assert abs(yes_no["yes"] - yes_no["no"]) < 0.2 * sum(yes_no.values())
    image = Image.open(io.BytesIO(rows[0].values["image"]))
    assert image.size == (64, 64) and image.mode == "RGB"
