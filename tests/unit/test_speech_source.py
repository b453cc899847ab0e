"""Emoji names spoken by espeak-ng: deterministic, varied by row, read by the audio decoder;
the emergent-binding sources never pair audio with image in a training row."""

import io
import random
import time
import wave

import numpy as np
import pytest

from polymodal.data.decode import decode_columns, input_shapes
from polymodal.data.format import read_manifest
from polymodal.data.ingest import ingest
from polymodal.data.sources import BUILTIN_SOURCES, open_source, speech
from polymodal.modalities import Preprocessing
from polymodal.modalities.audio import read_audio


def _ids_with_other_voices() -> tuple[str, str]:
    ids = [f"row-{i}" for i in range(10)]
    first = speech.voice_of(ids[0])
    return ids[0], next(i for i in ids if speech.voice_of(i) != first)


def test_speech_is_deterministic_varied_by_row_and_a_well_formed_wav():
    a, b = _ids_with_other_voices()
    wav = speech.speak("red heart", a)
    assert speech.speak("red heart", a) == wav  # the same bytes for the same row
    assert speech.speak("red heart", b) != wav  # another voice, speed or pitch
    # espeak-ng's placeholder sizes are fixed: Python's wave reads the real length
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        assert w.getnframes() * 2 == len(wav) - 44
    voices = {speech.voice_of(f"row-{i}") for i in range(200)}
    assert len({v for v, _, _ in voices}) >= 20  # voices x variants
    for _, wpm, pitch in voices:
        assert speech.SPEEDS[0] <= wpm <= speech.SPEEDS[1]
        assert speech.PITCHES[0] <= pitch <= speech.PITCHES[1]


def test_the_audio_decoder_reads_the_speech():
    wav = speech.speak("smiling face with hearts", "1f970")
    x, rate = read_audio(wav)
    assert rate == 22050 and 0.5 < len(x) / rate < 4.0
    assert np.abs(x).max() > 0.05  # speech, not silence
    prep = Preprocessing(["audio", "text"], audio_rate=8000, audio_seconds=4.0, n_mels=40)
    arrays, bad = decode_columns({"audio": [wav], "text": ["x"], "label": [None]}, prep)
    assert bad == [] and arrays["audio"].shape == (1, *input_shapes(prep)["audio"][0])


def test_in_order_keeps_the_order_of_unequal_tasks():
    def slow(i: int) -> int:
        time.sleep(random.random() / 200)
        return i

    assert list(speech.in_order(slow, range(40), workers=4)) == list(range(40))


def test_a_missing_espeak_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setattr(speech, "ESPEAK_NG", str(tmp_path / "no-espeak-ng"))
    with pytest.raises(FileNotFoundError, match="sudo apt-get install espeak-ng"):
        speech.speak("red heart", "2764")
    with pytest.raises(FileNotFoundError, match="sudo apt-get install espeak-ng"):
        open_source("builtin:emoji-bind-speech", limit=3)


def test_emoji_spoken_has_all_three_and_splits_like_builtin_emoji():
    source = open_source("builtin:emoji-spoken", limit=4)
    rows = list(source.rows)
    assert source.modalities == ["image", "text", "audio"] and source.labelled is False
    assert [r.number for r in rows] == [1, 2, 3, 4]
    emoji = list(open_source("builtin:emoji", limit=4).rows)
    assert [(r.id, r.group, r.split) for r in rows] == [(r.id, r.group, None) for r in emoji]
    for row, plain in zip(rows, emoji, strict=True):
        assert row.values["image"] == plain.values["image"]
        assert row.values["text"] == plain.values["text"]
        assert read_audio(row.values["audio"])[0].size > 0


def test_bind_sources_never_pair_audio_with_image_in_train():
    image = list(open_source("builtin:emoji-bind-image", limit=60).rows)
    spoken = list(open_source("builtin:emoji-bind-speech", limit=60).rows)
    assert {r.split for r in image} == {r.split for r in spoken} == {"train", "val"}
    for r in image:  # train: image + text; val (held-out families): image + text + audio
        want = {"image", "text", "audio"} if r.split == "val" else {"image", "text"}
        assert set(r.values) == want and all(v is not None for v in r.values.values())
    for r in spoken:
        assert set(r.values) == {"text", "audio"} and r.error is None
    train_families = [{r.group for r in rows if r.split == "train"} for rows in (image, spoken)]
    assert not train_families[0] & train_families[1]
    assert {speech.bind_half(f) for f in train_families[0]} == {"image"}
    assert {speech.bind_half(f) for f in train_families[1]} == {"speech"}
    val_families = [{r.group for r in rows if r.split == "val"} for rows in (image, spoken)]
    assert not (val_families[0] | val_families[1]) & (train_families[0] | train_families[1])
    # the same emoji says the same in every source: the voice follows the emoji's id
    both = {r.id: r.values["audio"] for r in image if r.split == "val"}
    assert any(both.get(r.id) == r.values["audio"] for r in spoken)


def test_ingesting_a_bind_source_writes_its_modalities_and_own_split(tmp_path):
    out = tmp_path / "bind-image"
    report = ingest("builtin:emoji-bind-image", out, limit=40, progress=False)
    assert report.parallel_tasks == 0 and report.rejected == {}
    manifest = read_manifest(out)
    assert list(manifest.modalities) == ["image", "text", "audio"]
    assert manifest.modalities["audio"]["encoding"] == "wav"
    assert manifest.rows("train") > 0 and manifest.rows("val") > 0
    assert manifest.rows("train") + manifest.rows("val") == 40
    assert manifest.source == "builtin:emoji-bind-image"


def test_the_builtins_are_registered():
    for name in ("emoji-spoken", "emoji-bind-image", "emoji-bind-speech"):
        assert f"builtin:{name}" in BUILTIN_SOURCES
