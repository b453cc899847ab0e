import io

import numpy as np
import pytest
from PIL import Image

from polymodal.data.decode import decode_columns
from polymodal.modalities import Preprocessing, bad_row_reasons
from polymodal.modalities.base import DecodeError
from polymodal.modalities.image import decode_image
from polymodal.modalities.text import decode_text, encode_text


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_image_decodes_to_range_and_size():
    arr = np.full((10, 12), 255, dtype=np.uint8)
    out = decode_image(_png(arr), size=8, channels=1)
    assert out.shape == (1, 8, 8) and out.dtype == np.float32
    assert out.max() == pytest.approx(1.0)
    rgb = decode_image(_png(np.zeros((4, 4, 3), dtype=np.uint8)), size=4, channels=3)
    assert rgb.shape == (3, 4, 4) and rgb.max() == 0.0


def test_text_bytes_round_trip_any_language():
    for text in ["a photo of a dress", "一件连衣裙的照片", "éàü"]:
        ids = encode_text(text, 64)
        assert ids.shape == (64,)
        assert decode_text(ids) == text
    assert encode_text("abc", 2).tolist() == [ord("a") + 1, ord("b") + 1]


def test_corrupt_and_oversized_images_refused(monkeypatch):
    with pytest.raises(DecodeError, match="unreadable image"):
        decode_image(b"not an image", 8, 1)
    import polymodal.modalities.image as image

    monkeypatch.setattr(image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(DecodeError, match="too large: 10x10"):
        decode_image(_png(np.zeros((10, 10), dtype=np.uint8)), 8, 1)


def test_decode_columns_masks_missing_values():
    prep = Preprocessing(["image", "text"], image_size=4, image_channels=1, text_max_len=8)
    png = _png(np.zeros((4, 4), dtype=np.uint8))
    out, bad = decode_columns(
        {"image": [png, None], "text": [None, "hi"], "label": [3, None]}, prep, with_hashes=True
    )
    assert bad == []
    assert out["image"].shape == (2, 1, 4, 4)
    assert out["image_present"].tolist() == [1.0, 0.0]
    assert out["text_present"].tolist() == [0.0, 1.0]
    assert out["label"].tolist() == [3, -1]
    assert out["text_hash"][0] == 0 and out["text_hash"][1] != 0


def test_bad_rows_are_dropped_with_their_reason(monkeypatch):
    import polymodal.modalities.image as image

    prep = Preprocessing(["image", "text"], image_size=4, image_channels=1, text_max_len=8)
    good = _png(np.zeros((4, 4), dtype=np.uint8))
    bomb = _png(np.zeros((10, 10), dtype=np.uint8))
    monkeypatch.setattr(image, "MAX_IMAGE_PIXELS", 50)
    columns = {
        "image": [good, b"garbage", bomb, good, "a string", None, good, good],
        "text": ["ok", "ok", "ok", "   ", "ok", None, "ok", "ok"],
        "label": [0, 1, 1, 1, 1, 1, 7, 2],
    }
    out, bad = decode_columns(columns, prep, with_hashes=True, num_labels=3)
    assert bad == [
        (1, "unreadable image"),
        (2, "image too large"),
        (3, "empty text"),
        (4, "wrong type"),
        (5, "no modality present"),
        (6, "label out of range"),
    ]
    others = {"unreadable audio", "audio too long", "bad vector"}  # test_audio.py, test_vector.py
    assert {reason for _, reason in bad} == set(bad_row_reasons()) - others
    assert out["label"].tolist() == [0, 2]  # the good rows, still aligned across columns
    assert out["image"].shape == (2, 1, 4, 4) and out["text_hash"].shape == (2,)


def test_augment_crops_and_flips_only_when_asked():
    from polymodal.modalities.image import Augment

    arr = np.zeros((16, 16), dtype=np.uint8)
    arr[:, :4] = 255  # a bright band on the left
    png = _png(arr)
    plain = decode_image(png, 16, 1)
    assert plain[0, :, :4].mean() == 1.0
    flipped = decode_image(png, 16, 1, Augment(hflip=1.0), np.random.default_rng(0))
    assert np.array_equal(flipped, plain[:, :, ::-1])
    crops = [
        decode_image(png, 16, 1, Augment(crop_scale=(0.3, 0.6)), np.random.default_rng(s))
        for s in range(4)
    ]
    assert all(c.shape == (1, 16, 16) for c in crops)
    assert len({c.tobytes() for c in crops}) > 1  # different crops for different draws
    assert not Augment().active and decode_image(png, 16, 1, Augment()).tobytes() == plain.tobytes()
