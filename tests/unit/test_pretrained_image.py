"""The pretrained image tower: EfficientNet-Lite0's ImageNet weights (pip package, offline)
mapped onto timm's architecture and proven by ImageNet predictions on real pictures (Noto
emoji of ImageNet classes), then locked or tuned inside a JointModel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.config import ConfigError, load_config
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model, unlock_towers
from polymodal.pretrained import pretrained_file
from polymodal.towers.efficientnet import MEAN, STD, efficientnet_lite0, mapped_state

# Emoji name → its ImageNet class (torchvision's category names).
EMOJI_CLASSES = {
    "banana": "banana",
    "pineapple": "pineapple",
    "strawberry": "strawberry",
    "lemon": "lemon",
    "broccoli": "broccoli",
    "mushroom": "mushroom",
    "pizza": "pizza",
    "hot dog": "hotdog",
    "pretzel": "pretzel",
    "umbrella": "umbrella",
    "bell pepper": "bell pepper",
    "tangerine": "orange",
    "bagel": "bagel",
    "cucumber": "cucumber",
    "teapot": "teapot",
    "violin": "violin",
    "banjo": "banjo",
    "guitar": "acoustic guitar",
    "lipstick": "lipstick",
    "backpack": "backpack",
    "joystick": "joystick",
    "lion": "lion",
    "koala": "koala",
    "snail": "snail",
    "lady beetle": "ladybug",
    "scorpion": "scorpion",
    "flamingo": "flamingo",
    "peacock": "peacock",
    "hammer": "hammer",
    "locked": "padlock",
    "ambulance": "ambulance",
    "fire engine": "fire engine",
    "school bus": "school bus",
    "canoe": "canoe",
    "parachute": "parachute",
    "baseball": "baseball",
    "basketball": "basketball",
    "soccer ball": "soccer ball",
    "volleyball": "volleyball",
    "stopwatch": "stopwatch",
    "laptop": "laptop",
    "printer": "printer",
    "television": "television",
    "radio": "radio",
    "jellyfish": "jellyfish",
    "zebra": "zebra",
    "hippopotamus": "hippopotamus",
}


def _emoji_pictures() -> list[tuple[np.ndarray, str]]:
    import emoji
    from PIL import ImageFont

    from polymodal.data.sources.builtin import NOTO_EMOJI, render_emoji

    font = ImageFont.truetype(str(NOTO_EMOJI), 109)
    fully = emoji.STATUS["fully_qualified"]
    chars = {
        d["en"].strip(":").replace("_", " "): c
        for c, d in emoji.EMOJI_DATA.items()
        if d["status"] == fully
    }
    pictures = []
    for name, category in EMOJI_CLASSES.items():
        pixels = render_emoji(font, chars[name]) if name in chars else None
        if pixels is not None:
            pictures.append((pixels, category))
    return pictures


def test_the_weights_map_one_to_one_and_a_wrong_file_is_refused(tmp_path):
    import timm

    weights = pretrained_file("efficientnet_lite0")
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    state = mapped_state(model, weights)
    assert len(state) == 247 and set(state) <= set(model.state_dict())

    original = torch.load(weights, map_location="cpu", weights_only=True)
    original["_fc.weight"] = original["_fc.weight"][:10]  # a head for 10 classes, not 1000
    torch.save(original, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"_fc.weight \(10, 1280\) does not map onto classifier"):
        mapped_state(model, tmp_path / "wrong.pth")
    del original["_fc.bias"]
    torch.save(original, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="246 tensors, the model has 247"):
        mapped_state(model, tmp_path / "short.pth")


def test_imagenet_classes_of_real_pictures_are_recognised():
    from torchvision.models import ResNet18_Weights

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    model = efficientnet_lite0(pretrained_file("efficientnet_lite0")).eval()
    pictures = _emoji_pictures()
    assert len(pictures) >= 20
    images = [
        np.asarray(Image.fromarray(p).resize((224, 224), Image.BICUBIC), np.float32) / 255
        for p, _ in pictures
    ]
    x = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) - MEAN) / STD
    with torch.no_grad():
        top5 = model(x).topk(5).indices
    hits = [categories.index(c) in row for (_, c), row in zip(pictures, top5.tolist())]
    # Chance is 5 / 1000; a wrong mapping of the weights scores at chance.
    assert sum(hits) / len(hits) >= 0.3, f"top-5 {sum(hits)}/{len(hits)}"


def _image_text_cfg(*overrides: str):
    return load_config(
        None,
        [
            "model.image.encoder=efficientnet_lite0",
            "model.embed_dim=16",
            "model.text.width=16",
            "model.text.layers=1",
            "model.text.heads=2",
            *overrides,
        ],
    )


def _batch(n: int = 4):
    from polymodal.batch import Batch

    g = torch.Generator().manual_seed(0)
    return Batch(
        inputs={
            "image": torch.rand(n, 1, 32, 32, generator=g),
            "text": torch.randint(1, 257, (n, 8)),
        },
        present={"image": torch.ones(n), "text": torch.ones(n)},
        label=torch.full((n,), -1),
    )


def _step(model, cfg) -> None:
    from polymodal.objectives.joint import joint_loss
    from polymodal.train.optim import build_optimizer

    optimizer = build_optimizer(model, cfg.optim)
    model.train()
    batch = _batch()
    joint_loss(model(batch), batch, cfg)[0].backward()
    optimizer.step()


def test_a_frozen_tower_stays_and_a_locked_one_trains_after_unlock():
    prep = Preprocessing(["image", "text"], image_size=32, image_channels=1, text_max_len=8)
    cfg = _image_text_cfg("model.image.tuning=freeze")
    model = build_model(cfg, prep)
    tower = model.encoders["image"]
    assert tower.out_dim == 1280
    before = [p.detach().clone() for p in tower.parameters()]
    projection = model.projections["image"].weight.detach().clone()
    _step(model, cfg)  # grey 32 px images: repeated as RGB, pooled to 1280 features
    assert all(torch.equal(a, b) for a, b in zip(before, tower.parameters()))
    assert not torch.equal(projection, model.projections["image"].weight)

    cfg = _image_text_cfg("model.image.tuning=lock_then_unlock", "model.image.unlock_epoch=1")
    model = build_model(cfg, prep)
    tower = model.encoders["image"]
    unlock_towers(model, cfg, epoch=1)
    assert tower.locked
    _step(model, cfg)
    assert all(p.grad is None for p in tower.parameters())
    unlock_towers(model, cfg, epoch=2)
    assert not tower.locked
    _step(model, cfg)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())


def test_tuning_needs_a_pretrained_tower():
    with pytest.raises(ConfigError, match="small_cnn trains from scratch .*efficientnet_lite0"):
        load_config(None, ["model.image.tuning=freeze"])
