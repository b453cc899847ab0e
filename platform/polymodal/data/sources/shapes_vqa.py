"""builtin:shapes-vqa: visual question answering on scenes drawn with Pillow (2-5 objects, each a
shape, colour, size and place) and questions from templates of six types, answered from an
answer vocabulary (VQA v2 / CLEVR framed as classification).

CLEVR-CoGenT style: train scenes never hold the HELD_OUT shape-colour pairs; half the val
scenes hold at least one (condition held_out: generalisation to new combinations), half none
(condition seen: what was learned, on new scenes). Deterministic: scene n comes from seed
(SEED, n); `--limit` sets the number of rows (questions). A row's id ends with its condition
and question type (`shapes-000123-1-seen-count`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from polymodal.data.sources.base import RawRow, Source

SEED = 31
SIZE = 64  # pixels; a 3 x 3 grid of cells, one object at most per cell
CELL = SIZE // 3
SHAPES = ["circle", "square", "triangle"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
}
SIZES = {"small": 5, "large": 9}  # radius in pixels
HELD_OUT = {("circle", "red"), ("square", "green"), ("triangle", "blue")}
QUESTION_TYPES = ["exists", "count", "query_colour", "query_shape", "compare", "spatial"]
ANSWERS = ["no", "yes", *[str(n) for n in range(6)], *COLOURS, *SHAPES]
QUESTIONS_PER_SCENE = 3
VAL_EVERY = 7  # one scene in seven is a val scene; every other val scene holds a held-out pair
CONDITIONS = ["seen", "held_out"]


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major

    @property
    def x(self) -> int:
        return self.cell % 3

    @property
    def y(self) -> int:
        return self.cell // 3


def scene(rng: np.random.Generator, val: bool) -> list[Thing]:
    """2-5 objects in distinct cells; a train scene has no HELD_OUT pair, a val scene one."""
    while True:
        n = int(rng.integers(2, 6))
        cells = rng.choice(9, n, replace=False)
        things = [
            Thing(
                SHAPES[int(rng.integers(3))],
                list(COLOURS)[int(rng.integers(len(COLOURS)))],
                list(SIZES)[int(rng.integers(2))],
                int(c),
            )
            for c in cells
        ]
        held = any((t.shape, t.colour) in HELD_OUT for t in things)
        if held == val:
            return things


def draw(things: list[Thing], rng: np.random.Generator) -> bytes:
    img = Image.new("RGB", (SIZE, SIZE), (235, 235, 235))
    pen = ImageDraw.Draw(img)
    for t in things:
        cx = t.x * CELL + CELL // 2 + int(rng.integers(-2, 3))
        cy = t.y * CELL + CELL // 2 + int(rng.integers(-2, 3))
        r, fill = SIZES[t.size], COLOURS[t.colour]
        if t.shape == "circle":
            pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif t.shape == "square":
            pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _count(things: list[Thing], shape: str | None = None, colour: str | None = None) -> int:
    return sum((shape in (None, t.shape)) and (colour in (None, t.colour)) for t in things)


def _unique(things: list[Thing], key) -> list[Thing]:
    """The objects no other object shares key(t) with: a question can name them."""
    keys = [key(t) for t in things]
    return [t for t, k in zip(things, keys) if keys.count(k) == 1]


def question(kind: str, things: list[Thing], rng: np.random.Generator) -> tuple[str, str] | None:
    """(question, answer) of a type about the scene; None when the scene cannot ask it."""
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    colours = list(COLOURS)
    if kind == "exists":
        present = {(t.shape, t.colour) for t in things}
        absent = [(s, c) for s in SHAPES for c in colours if (s, c) not in present]
        shape, colour = pick(sorted(present) if rng.random() < 0.5 else absent)
        found = (shape, colour) in present
        return f"is there a {colour} {shape}?", "yes" if found else "no"
    if kind == "count":
        by = pick(["shape", "colour", "both"])
        t = pick(things)
        if by == "shape":
            return f"how many {t.shape}s are there?", str(_count(things, shape=t.shape))
        if by == "colour":
            return f"how many {t.colour} objects are there?", str(_count(things, colour=t.colour))
        return f"how many {t.colour} {t.shape}s are there?", str(_count(things, t.shape, t.colour))
    if kind == "query_colour":
        named = _unique(things, lambda t: t.shape)
        if named:
            t = pick(named)
            return f"what colour is the {t.shape}?", t.colour
        named = _unique(things, lambda t: (t.size, t.shape))
        if not named:
            return None
        t = pick(named)
        return f"what colour is the {t.size} {t.shape}?", t.colour
    if kind == "query_shape":
        named = _unique(things, lambda t: t.colour)
        if not named:
            return None
        t = pick(named)
        return f"what shape is the {t.colour} object?", t.shape
    if kind == "compare":
        # Two kinds that differ in number, in either order: yes and no equally often.
        by_shape = rng.random() < 0.5
        kinds, key = (SHAPES, "shape") if by_shape else (colours, "colour")
        counts = {k: _count(things, **{key: k}) for k in kinds}
        pairs = [(a, b) for a in kinds for b in kinds if counts[a] != counts[b]]
        if not pairs:
            return None
        a, b = pick(pairs)
        answer = "yes" if counts[a] > counts[b] else "no"
        if by_shape:
            return f"are there more {a}s than {b}s?", answer
        return f"are there more {a} objects than {b} objects?", answer
    named = _unique(things, lambda t: (t.colour, t.shape))
    two = [(s, t) for s in named for t in named if s.x != t.x]
    if not two:
        return None
    a, b = pick(two)
    return f"is the {a.colour} {a.shape} left of the {b.colour} {b.shape}?", (
        "yes" if a.x < b.x else "no"
    )


def scene_rows(n: int) -> tuple[bytes, list[tuple[str, str, str]], str, str]:
    """Scene n: its PNG, its (type, question, answer) rows, its split and its condition."""
    rng = np.random.default_rng([SEED, n])
    split = "val" if n % VAL_EVERY == VAL_EVERY - 1 else "train"
    held = split == "val" and (n // VAL_EVERY) % 2 == 0
    things = scene(rng, held)
    png = draw(things, rng)
    rows = []
    # Consecutive types from a random first one: each type is asked as often as the others, in
    # every split and condition (a rotation by n would tie types to n's residues, and so to
    # the val scenes' condition).
    first = int(rng.integers(len(QUESTION_TYPES)))
    for k in range(QUESTIONS_PER_SCENE):
        for shift in range(len(QUESTION_TYPES)):
            kind = QUESTION_TYPES[(first + k + shift) % len(QUESTION_TYPES)]
            asked = question(kind, things, rng)
            if asked is not None:
                rows.append((kind, *asked))
                break
    return png, rows, split, CONDITIONS[held]


def question_type(row_id: str) -> str:
    """The question type a shapes-vqa row id ends with."""
    return row_id.rsplit("-", 1)[-1]


def condition(row_id: str) -> str:
    """seen | held_out: whether a row's scene holds a HELD_OUT pair."""
    return row_id.rsplit("-", 2)[-2]


def shapes_vqa(limit: int | None = None) -> Source:
    total = limit or 30_000

    def rows() -> Iterator[RawRow]:
        number, n = 0, 0
        while number < total:
            png, asked, split, held = scene_rows(n)
            for k, (kind, text, answer) in enumerate(asked):
                number += 1
                rid = f"shapes-{n:06d}-{k}-{held}-{kind}"
                values = {"image": png, "text": text}
                yield RawRow(number, rid, values, ANSWERS.index(answer), split, f"s{n}")
                if number == total:
                    return
            n += 1

    return Source(
        name="builtin:shapes-vqa",
        modalities=["image", "text"],
        encodings={"image": "png", "text": "utf-8"},
        label_names=ANSWERS,
        labelled=True,
        rows=rows(),
        total=total,
        extra={
            "question_types": QUESTION_TYPES,
            "conditions": CONDITIONS,
            "held_out": sorted(map(list, HELD_OUT)),
        },
    )
