"""Emoji names spoken by Debian's espeak-ng (voice, speed and pitch picked per row), offline:
the tri-modal builtin:emoji-spoken and the two halves of an emergent-binding run."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import shutil
import subprocess
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from polymodal.data.format import split_of
from polymodal.data.sources.base import RawRow, Source
from polymodal.data.sources.builtin import emoji_images

ESPEAK_NG = "espeak-ng"  # looked up on PATH; Debian package espeak-ng (/usr/bin/espeak-ng)
# English voices of `espeak-ng --voices=en` (1.51, Debian 12), no MBROLA ones (they need the
# mbrola package), nor 1.51's new en-us-nyc; each with its default timbre or one of its female
# (+fN) / male (+mN) variants. Another espeak-ng version may say the same row differently.
VOICES = (
    "en",
    "en-us",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
)
VARIANTS = ("", "+f2", "+f3", "+f4", "+m3", "+m5")
SPEEDS = (130, 200)  # words per minute, both ends included
PITCHES = (30, 70)  # espeak-ng's 0..99 scale
TIMEOUT_S = 30  # one utterance takes ~10 ms
# The bind sources fix their val split here (the ingest's default --val-fraction), so both hold
# out the same families, and builtin:emoji-spoken ingested with the default holds out those too.
BIND_VAL_FRACTION = 0.1
ENCODINGS = {"image": "png", "text": "utf-8", "audio": "wav"}

T = TypeVar("T")
R = TypeVar("R")


def espeak_binary() -> str:
    path = shutil.which(ESPEAK_NG)
    if path is None:
        raise FileNotFoundError(
            f"{ESPEAK_NG} not found; install it with: sudo apt-get install espeak-ng"
        )
    return path


def voice_of(row_id: str) -> tuple[str, int, int]:
    """(voice, words per minute, pitch) of a row, from a hash of its id: stable everywhere."""
    h = int.from_bytes(hashlib.sha1(f"voice {row_id}".encode()).digest()[:8], "big")
    h, voice = divmod(h, len(VOICES))
    h, variant = divmod(h, len(VARIANTS))
    h, speed = divmod(h, SPEEDS[1] - SPEEDS[0] + 1)
    pitch = h % (PITCHES[1] - PITCHES[0] + 1)
    return VOICES[voice] + VARIANTS[variant], SPEEDS[0] + speed, PITCHES[0] + pitch


def fix_wav_header(data: bytes) -> bytes:
    """espeak-ng --stdout cannot seek back, so its RIFF and data sizes are placeholders
    (0x7ffff000..); libsndfile copes, Python's wave does not. Set both to the real sizes."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("espeak-ng wrote no WAV")
    out = bytearray(data)
    offset = 12
    while offset + 8 <= len(out):
        size = int.from_bytes(out[offset + 4 : offset + 8], "little")
        if out[offset : offset + 4] == b"data":
            out[offset + 4 : offset + 8] = (len(out) - offset - 8).to_bytes(4, "little")
            out[4:8] = (len(out) - 8).to_bytes(4, "little")
            return bytes(out)
        offset += 8 + size + (size & 1)
    raise ValueError("espeak-ng wrote a WAV without a data chunk")


def speak(text: str, row_id: str, binary: str | None = None) -> bytes:
    """A WAV (espeak-ng's 22,050 Hz 16-bit mono) of text, in the voice, speed and pitch of
    row_id; the same bytes for the same (text, row_id) on one espeak-ng version."""
    voice, speed, pitch = voice_of(row_id)
    # "--": a text that starts with "-" is not read as an option
    cmd = [binary or espeak_binary(), "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch)]
    done = subprocess.run([*cmd, "--", text], capture_output=True, timeout=TIMEOUT_S, check=True)
    return fix_wav_header(done.stdout)


def in_order(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """fn over items on a thread pool, results in the items' order; at most 4 per worker run
    ahead, so items are consumed lazily and a stopped consumer waits for a few only."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _voiced(row: RawRow, binary: str) -> RawRow:
    """The row with its audio (a placeholder: the text to say) spoken; a failure is the row's
    error, counted by the ingest like any bad row."""
    if "audio" not in row.values:
        return row
    try:
        row.values["audio"] = speak(row.values["audio"], row.id, binary)
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        stderr = getattr(exc, "stderr", None) or b""
        row.error = f"espeak-ng failed: {exc} {stderr.decode(errors='replace').strip()}".strip()
    return row


# What one source keeps of an emoji row: its modalities and split (None: the ingest splits by
# family, as for builtin:emoji); None leaves the emoji out.
Pick = Callable[[RawRow], tuple[tuple[str, ...], str | None] | None]


def spoken_emoji(
    name: str, modalities: list[str], pick: Pick, limit: int | None, every: bool = False
) -> Source:
    """builtin:emoji's rows, each shaped by pick, the name spoken where audio is kept: the
    first `limit` rows that pick keeps. modalities: those of any row, train or val; every:
    pick keeps every emoji (the progress bar's total is builtin:emoji's)."""
    binary = espeak_binary()  # before any emoji is rendered
    images = emoji_images()  # rendered lazily: a limit renders only what it needs

    def shaped() -> Iterator[RawRow]:
        for row in images.rows:
            kept = pick(row)
            if kept is None:
                continue
            mods, split = kept
            values = {m: row.values["text" if m == "audio" else m] for m in mods}
            yield dataclasses.replace(row, values=values, split=split)

    def rows() -> Iterator[RawRow]:
        chosen = itertools.islice(shaped(), limit)
        for number, row in enumerate(in_order(lambda r: _voiced(r, binary), chosen), 1):
            row.number = number
            yield row

    return dataclasses.replace(
        images,
        name=name,
        modalities=modalities,
        encodings={m: ENCODINGS[m] for m in modalities},
        rows=rows(),
        total=limit if limit is not None else images.total if every else None,
    )


def bind_half(family: str) -> str:
    """Which bind source trains on a family: "image" or "speech", about half each (a hash of
    the family, independent of the one that splits train from val)."""
    return "image" if hashlib.sha1(f"bind {family}".encode()).digest()[0] < 128 else "speech"


def _bind_split(row: RawRow) -> str:
    assert row.group is not None  # builtin:emoji sets each row's family
    return split_of(row.group, BIND_VAL_FRACTION)


def _pick_spoken(row: RawRow):
    return ("image", "text", "audio"), None


def _pick_bind_image(row: RawRow):
    if _bind_split(row) == "val":  # held-out families, tri-modal: audio <-> image measured
        return ("image", "text", "audio"), "val"
    return (("image", "text"), "train") if bind_half(row.group or "") == "image" else None


def _pick_bind_speech(row: RawRow):
    if _bind_split(row) == "val":  # training needs a val split: the held-out families' speech
        return ("text", "audio"), "val"
    return (("text", "audio"), "train") if bind_half(row.group or "") == "speech" else None


def emoji_spoken(limit: int | None = None) -> Source:
    """Every emoji of builtin:emoji as image + name + the name spoken; split by family like
    builtin:emoji. The tri-modal reference for the bind sources."""
    return spoken_emoji("builtin:emoji-spoken", list(ENCODINGS), _pick_spoken, limit, every=True)


def emoji_bind_image(limit: int | None = None) -> Source:
    """Train: image + name of the emoji in about half of the train families (bind_half);
    val: the held-out families with image + name + speech."""
    return spoken_emoji("builtin:emoji-bind-image", list(ENCODINGS), _pick_bind_image, limit)


def emoji_bind_speech(limit: int | None = None) -> Source:
    """Train: name + speech, no image, of the emoji in the other half of the train families;
    val: the held-out families' name + speech. With builtin:emoji-bind-image, no training row
    pairs audio with image."""
    return spoken_emoji("builtin:emoji-bind-speech", ["text", "audio"], _pick_bind_speech, limit)
