"""Real datasets that ship with installed packages: scikit-learn digits, Debian Fashion-MNIST,
Debian's Asterisk voice prompts with their transcripts, Noto Color Emoji with their names.

Captions are made from the class name with a few templates, picked by id so they are stable.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from polymodal.data.sources.base import RawRow, Source

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
# Debian asterisk-core-sounds-en-wav (the recordings) and asterisk-core-sounds-en (transcripts).
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
NOTO_EMOJI = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")  # fonts-noto-color-emoji
EMOJI_PIXELS = 72  # stored size; training resizes to data.image_size
SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}  # Fitzpatrick modifiers
FASHION_LABELS = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
FASHION_TEMPLATES = [
    "a photo of the {}",
    "a grayscale picture of the {}",
    "the {} on a plain background",
]
DIGIT_LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_TEMPLATES = ["a handwritten digit {}", "the number {} written by hand", "a scan of a {}"]


def require(paths, package: str) -> None:
    """FileNotFoundError naming the first missing path and the Debian package that has it."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]} not found; install it with: sudo apt-get install {package}"
        )


def caption(row_id: str, name: str, templates: list[str]) -> str:
    pick = int(hashlib.md5(row_id.encode()).hexdigest(), 16) % len(templates)
    return templates[pick].format(name)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _read_idx(path: Path) -> np.ndarray:
    """IDX format (big-endian header: magic, dims) as used by (Fashion-)MNIST."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def digits(limit: int | None = None) -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    n = len(images) if limit is None else min(limit, len(images))

    def rows() -> Iterator[RawRow]:
        for i in range(n):
            rid = f"digit-{i:05d}"
            label = int(d.target[i])
            text = caption(rid, DIGIT_LABELS[label], DIGIT_TEMPLATES)
            yield RawRow(i + 1, rid, {"image": png_bytes(images[i]), "text": text}, label)

    return Source(
        name="builtin:digits",
        modalities=["image", "text"],
        encodings={"image": "png", "text": "utf-8"},
        label_names=DIGIT_LABELS,
        labelled=True,
        rows=rows(),
        total=n,
        extra={"caption_templates": DIGIT_TEMPLATES},
    )


def spoken_digits() -> dict[int, bytes]:
    """Asterisk's recording of each digit (digits/N.wav), by digit."""
    recordings = {n: ASTERISK_SOUNDS / "digits" / f"{n}.wav" for n in range(10)}
    require(recordings.values(), "asterisk-core-sounds-en-wav")
    return {n: p.read_bytes() for n, p in recordings.items()}


def digits_trimodal(limit: int | None = None) -> Source:
    """scikit-learn's digits as image + caption + the spoken digit (Asterisk's recording of
    its class, digits/N.wav), paired by class. Every tenth row (by id) lacks its audio and
    another tenth its caption, so training meets rows with a modality missing."""
    audio = spoken_digits()
    images = digits(limit)

    def rows() -> Iterator[RawRow]:
        for row in images.rows:
            assert row.label is not None  # every digit is labelled with its class
            pick = int(hashlib.md5(row.id.encode()).hexdigest(), 16) % 10
            values = dict(row.values, audio=None if pick == 0 else audio[row.label])
            if pick == 1:
                values["text"] = None
            yield RawRow(row.number, row.id, values, row.label)

    return dataclasses.replace(
        images,
        name="builtin:digits-trimodal",
        modalities=["image", "text", "audio"],
        encodings={"image": "png", "text": "utf-8", "audio": "wav"},
        rows=rows(),
    )


def digits_spoken(limit: int | None = None) -> Source:
    """The digits' captions with the spoken digit of their class (Asterisk's digits/N.wav),
    and no image: with builtin:digits (image + caption), a mixture that pairs audio with
    image nowhere (data.sources)."""
    audio = spoken_digits()
    images = digits(limit)

    def rows() -> Iterator[RawRow]:
        for row in images.rows:
            assert row.label is not None  # every digit is labelled with its class
            values = {"text": row.values["text"], "audio": audio[row.label]}
            yield RawRow(row.number, row.id.replace("digit", "spoken"), values, row.label)

    return dataclasses.replace(
        images,
        name="builtin:digits-spoken",
        modalities=["text", "audio"],
        encodings={"text": "utf-8", "audio": "wav"},
        rows=rows(),
    )


def fashion_mnist(limit: int | None = None) -> Source:
    """The official 60k/10k split becomes train/val, so accuracy is comparable to the literature."""
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    require([FASHION_DIR / f for pair in files.values() for f in pair], "dataset-fashion-mnist")
    arrays = {
        s: (_read_idx(FASHION_DIR / i), _read_idx(FASHION_DIR / lab))
        for s, (i, lab) in files.items()
    }
    per_split = {
        s: len(a[0]) if limit is None else min(limit, len(a[0])) for s, a in arrays.items()
    }

    def rows() -> Iterator[RawRow]:
        number = 0
        for split, (images, labels) in arrays.items():
            for i in range(per_split[split]):
                number += 1
                rid = f"fashion-{split}-{i:05d}"
                label = int(labels[i])
                text = caption(rid, FASHION_LABELS[label], FASHION_TEMPLATES)
                values = {"image": png_bytes(images[i]), "text": text}
                yield RawRow(number, rid, values, label, split=split)

    return Source(
        name="builtin:fashion-mnist",
        modalities=["image", "text"],
        encodings={"image": "png", "text": "utf-8"},
        label_names=FASHION_LABELS,
        labelled=True,
        rows=rows(),
        total=sum(per_split.values()),
        extra={"caption_templates": FASHION_TEMPLATES},
    )


def asterisk(limit: int | None = None) -> Source:
    """Asterisk's English voice prompts (8 kHz, 16-bit mono WAV, one speaker) paired with their
    transcripts ("key: text" lines); ids are the prompt keys, e.g. digits/7."""
    require([ASTERISK_SOUNDS], "asterisk-core-sounds-en-wav")
    require([ASTERISK_TRANSCRIPTS], "asterisk-core-sounds-en")
    with gzip.open(ASTERISK_TRANSCRIPTS, "rt", encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if ":" in line and line[0] != ";"]
    pairs = [(k.strip(), text.strip()) for k, text in (line.split(":", 1) for line in lines)]
    pairs = [(k, text) for k, text in pairs if (ASTERISK_SOUNDS / f"{k}.wav").is_file()]
    pairs = pairs[:limit] if limit is not None else pairs

    def rows() -> Iterator[RawRow]:
        for number, (key, text) in enumerate(pairs, 1):
            audio = (ASTERISK_SOUNDS / f"{key}.wav").read_bytes()
            yield RawRow(number, key, {"audio": audio, "text": text})

    return Source(
        name="builtin:asterisk",
        modalities=["audio", "text"],
        encodings={"audio": "wav", "text": "utf-8"},
        label_names=None,
        labelled=False,
        rows=rows(),
        total=len(pairs),
    )


def emoji_name(short: str) -> str:
    """The emoji package's ':red_heart:' → 'red heart' (Unicode's CLDR names, punctuation aside)."""
    return short.strip(":").replace("_", " ")


def render_emoji(font, char: str) -> np.ndarray | None:
    """RGB pixels of one emoji, cropped to the glyph, centred on white, EMOJI_PIXELS square;
    None when the font has no single glyph for it (blank, or drawn as several pictures)."""
    from PIL import ImageDraw

    # Noto Color Emoji is a bitmap font: it only renders at size 109 (136 x 128 pixels).
    canvas = Image.new("RGBA", (3 * 136, 128), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None or box[2] - box[0] > 140:
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    square = square.convert("RGB").resize((EMOJI_PIXELS, EMOJI_PIXELS), Image.Resampling.LANCZOS)
    return np.asarray(square)


def emoji_images(limit: int | None = None) -> Source:
    """Every fully-qualified emoji that Noto Color Emoji draws as one picture (~3.9k), paired
    with its name from the emoji package ("smiling face with hearts", "waving hand dark skin
    tone"); ids are the code points, e.g. 1f44b-1f3ff. Sequences the font draws as several
    glyphs are left out. Train and val are split by family (the code points without skin-tone
    modifiers), so val holds emoji whose kind train never saw."""
    import emoji
    from PIL import ImageFont

    require([NOTO_EMOJI], "fonts-noto-color-emoji")
    fully = emoji.STATUS["fully_qualified"]
    chars = [(c, d["en"]) for c, d in emoji.EMOJI_DATA.items() if d["status"] == fully]
    chars = chars[:limit] if limit is not None else chars

    def rows() -> Iterator[RawRow]:
        font = ImageFont.truetype(str(NOTO_EMOJI), 109)
        number = 0
        for char, short in chars:
            pixels = render_emoji(font, char)
            if pixels is None:
                continue
            number += 1
            row_id = "-".join(f"{ord(c):x}" for c in char)
            # Split by family (an emoji and its skin tones): val emoji are unseen in train.
            family = "-".join(f"{ord(c):x}" for c in char if c not in SKIN_TONES)
            values = {"image": png_bytes(pixels), "text": emoji_name(short)}
            yield RawRow(number, row_id, values, group=family)

    return Source(
        name="builtin:emoji",
        modalities=["image", "text"],
        encodings={"image": "png", "text": "utf-8"},
        label_names=None,
        labelled=False,
        rows=rows(),
        total=len(chars),
    )
