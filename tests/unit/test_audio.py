"""Audio: WAV formats, resampling and log-mel against values known in closed form, then the
audio modality through decoding, the model, the Asterisk source and request parsing."""

import base64
import io
import struct
import wave

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
import torch

from polymodal.batch import Batch
from polymodal.config import load_config
from polymodal.data.decode import decode_columns, input_shapes
from polymodal.data.format import read_manifest, shard_paths
from polymodal.data.ingest import ingest
from polymodal.modalities import Preprocessing, bad_row_reasons
from polymodal.modalities.audio import (
    fit_length,
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_frames,
    mel_to_hz,
    read_audio,
    resample,
)
from polymodal.modalities.base import DecodeError, InputError
from polymodal.models.build import build_model
from polymodal.objectives.joint import joint_loss
from polymodal.serving.inputs import parse_item
from polymodal.serving.schemas import TypedItem


def sine(freq: float, rate: int, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def pcm_wav(x: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> bytes:
    """A WAV written by the standard library (integer PCM)."""
    frames = np.repeat(x[:, None], channels, axis=1).reshape(-1)
    if width == 1:
        raw = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.round(frames * (2**23 - 1)).astype(np.int32)
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    else:
        raw = np.round(frames * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return buf.getvalue()


def float_wav(x: np.ndarray, rate: int) -> bytes:
    """IEEE float WAV (format 3), which the wave module cannot write."""
    body = x.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    chunks = b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_widths_decode_to_the_signal(width):
    x = sine(440, 8000)
    got, rate = read_audio(pcm_wav(x, 8000, width))
    assert rate == 8000 and got.dtype == np.float32 and len(got) == len(x)
    tolerance = 1.5 / 128 if width == 1 else 1e-4
    assert np.abs(got - x).max() < tolerance


def test_float_and_stereo_decode():
    x = sine(300, 16000)
    got, rate = read_audio(float_wav(x, 16000))
    assert rate == 16000 and np.array_equal(got, x)
    mono, _ = read_audio(pcm_wav(x, 16000, channels=2))
    assert np.abs(mono - x).max() < 1e-4  # channels averaged


def test_truncated_file_keeps_whole_frames():
    data = pcm_wav(sine(440, 8000), 8000)
    got, _ = read_audio(data[:-101])  # cut mid-frame: 100 bytes = 50 frames lost, half a frame
    assert len(got) == 4000 - 51


@pytest.mark.parametrize(
    "data, detail",
    [
        (b"not audio at all", "Format not recognised"),
        (b"RIFF\x04\x00\x00\x00WAVE", "No 'data' chunk"),
        (pcm_wav(np.zeros(0, np.float32), 8000), "no samples"),
    ],
)
def test_bad_files_raise_unreadable_audio(data, detail):
    with pytest.raises(DecodeError) as err:
        read_audio(data)
    assert err.value.reason == "unreadable audio" and detail in str(err.value)


def test_unsupported_encoding_is_named():
    data = bytearray(pcm_wav(sine(440, 8000), 8000))
    data[20:22] = struct.pack("<H", 2)  # MS ADPCM, with a 16-bit PCM body
    with pytest.raises(DecodeError, match="ADPCM WAV file. Invalid bit width"):
        read_audio(bytes(data))


def _encoded(x: np.ndarray, rate: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, x, rate, format=fmt)
    return buf.getvalue()


def _peak_hz(x: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x))) * rate / len(x))


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_compressed_formats_decode_to_the_signal(fmt):
    """Datasets ship FLAC, OGG/Vorbis and MP3: the same tone comes back at its pitch and
    length (lossless FLAC to 16-bit precision)."""
    x = sine(440, 16000, seconds=1.0)
    got, rate = read_audio(_encoded(x, 16000, fmt))
    assert rate == 16000 and got.dtype == np.float32
    if fmt == "FLAC":
        assert len(got) == len(x) and np.abs(got - x).max() < 1e-4
    else:  # lossy codecs pad with a few ms of priming samples
        assert abs(len(got) - len(x)) < 0.1 * len(x)
    assert abs(_peak_hz(got[:16000], 16000) - 440) < 5


def test_overlong_audio_is_refused_before_decoding():
    header = bytearray(pcm_wav(np.zeros(10, np.float32), 8000))
    body_size = 8000 * 2 * 601  # 601 s at 8 kHz, 16 bit
    data = bytes(header[:40]) + struct.pack("<I", body_size) + bytes(body_size)
    with pytest.raises(DecodeError) as err:
        read_audio(data)
    assert err.value.reason == "audio too long"


def test_resampling_keeps_frequency_and_duration():
    x = sine(1000, 8000, seconds=1.0)
    up = resample(x, 8000, 16000)
    assert len(up) == 16000
    spectrum = np.abs(np.fft.rfft(up))
    assert np.argmax(spectrum) * 16000 / len(up) == pytest.approx(1000, abs=1)
    down = resample(sine(1000, 44100, seconds=1.0), 44100, 16000)
    assert len(down) == 16000
    # 10 kHz is above 16 kHz's Nyquist (8 kHz): filtered out (-57 dB) instead of aliasing to
    # 6 kHz (away from the edges, where the clip's abrupt start rings through the filter)
    aliased = resample(sine(10000, 44100, seconds=1.0), 44100, 16000)
    assert np.abs(aliased[2000:-2000]).max() < 0.001  # the sine itself peaks at 0.5


def test_fit_length_crops_and_pads():
    x = np.arange(5, dtype=np.float32)
    assert fit_length(x, 3).tolist() == [0, 1, 2]
    assert fit_length(x, 7).tolist() == [0, 1, 2, 3, 4, 0, 0]


def test_mel_scale_known_values():
    assert hz_to_mel(1000) == pytest.approx(1000.0, abs=0.1)  # HTK's anchor point
    assert hz_to_mel(700) == pytest.approx(2595 * np.log10(2))
    freqs = np.array([0, 100, 3999.5, 11025])
    assert np.allclose(mel_to_hz(hz_to_mel(freqs)), freqs)


def test_filterbank_triangles_peak_at_their_centres():
    fb = mel_filterbank(n_fft=512, rate=16000, n_mels=20).numpy()
    assert fb.shape == (20, 257) and (fb >= 0).all() and fb.max() <= 1
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()  # ascending frequency
    centres = mel_to_hz(np.linspace(0, hz_to_mel(8000), 22))[1:-1]
    assert np.abs(peaks * 16000 / 512 - centres).max() <= 16000 / 512  # within one FFT bin


def test_log_mel_of_a_sine():
    rate, hop = 8000, 128
    x = sine(1000, rate)
    mel = log_mel(x, rate, n_mels=40, hop=hop)
    assert mel.shape == (40, mel_frames(0.5, rate, hop)) == (40, 1 + 4000 // hop)
    profile = mel[:, 5:-5].mean(dim=1)  # frames away from the padded edges
    centres = mel_to_hz(np.linspace(0, hz_to_mel(rate / 2), 42))[1:-1]
    assert abs(centres[int(profile.argmax())] - 1000) < 100  # the band holding 1 kHz
    louder = log_mel(2 * x, rate, n_mels=40, hop=hop)[:, 5:-5].mean(dim=1)
    peak = int(profile.argmax())
    assert float(louder[peak] - profile[peak]) == pytest.approx(20 * np.log10(2), abs=1e-3)
    silence = log_mel(np.zeros(4000, np.float32), rate)
    assert float(silence.max()) == pytest.approx(-100.0)


# ---- the audio modality through decoding, the model, ingest and request parsing ----


def test_decode_columns_turn_wav_into_mel_inputs_and_drop_bad_audio():
    prep = Preprocessing(["audio", "text"], audio_rate=16000, audio_seconds=1.0, n_mels=32)
    good = pcm_wav(sine(440, 8000), 8000)  # resampled to 16 kHz, padded to 1 s
    columns = {
        "audio": [good, b"RIFF broken", None, 123],
        "text": ["a", "b", "c", "d"],
        "label": [None] * 4,
    }
    arrays, bad = decode_columns(columns, prep)
    shape, _ = input_shapes(prep)["audio"]
    assert shape == (1, 32, mel_frames(1.0, 16000))
    assert arrays["audio"].shape == (2, *shape)  # the good row and the text-only row
    assert arrays["audio_present"].tolist() == [1.0, 0.0]
    assert -1.0 <= arrays["audio"][0].min() and arrays["audio"][0].max() < 2.0
    assert bad == [(1, "unreadable audio"), (3, "wrong type")]
    assert {"unreadable audio", "audio too long"} <= set(bad_row_reasons())


def test_audio_text_model_embeds_and_reconstructs_mel():
    cfg = load_config(
        None,
        ["model.modalities=[audio,text]", "objective.weights.reconstruction=1"]
        + ["model.audio.width=8", "data.audio_seconds=0.5"],
    )
    prep = Preprocessing(["audio", "text"], text_max_len=16, audio_seconds=0.5, n_mels=40)
    model = build_model(cfg, prep)
    shape, _ = input_shapes(prep)["audio"]
    batch = Batch(
        inputs={"audio": torch.randn(3, *shape), "text": torch.randint(1, 257, (3, 16))},
        present={"audio": torch.ones(3), "text": torch.ones(3)},
        label=torch.full((3,), -1),
    )
    out = model(batch)
    assert out.embeddings["audio"].shape == (3, cfg.model.embed_dim)
    assert out.reconstructions["audio"].shape == (3, *shape)
    loss, logs = joint_loss(out, batch, cfg)
    loss.backward()
    assert torch.isfinite(loss) and "reconstruction/audio" in logs
    assert model.encoders["audio"].net[0][0].weight.grad.abs().sum() > 0


def test_asterisk_source_pairs_prompts_with_transcripts(tmp_path):
    out = tmp_path / "asterisk"
    report = ingest("builtin:asterisk", out, limit=40, progress=False)
    manifest = read_manifest(out)
    assert report.rows_written == 40 and manifest.modalities["audio"]["encoding"] == "wav"
    rows = [
        r
        for s in manifest.splits
        for p in shard_paths(out, manifest, s)
        for r in pq.read_table(p).to_pylist()
    ]
    by_id = {r["id"]: r for r in rows}
    assert by_id["agent-loginok"]["text"] == "Agent logged in."
    samples, rate = read_audio(by_id["agent-loginok"]["audio"])
    assert rate == 8000 and 0.5 < len(samples) / rate < 5  # a short real recording
    assert np.abs(samples).max() > 0.05  # not silence


def test_audio_request_items_are_checked():
    wav = pcm_wav(sine(440, 8000), 8000)
    uri = "data:audio/wav;base64," + base64.b64encode(wav).decode()
    assert parse_item(uri, "input[0]") == ("audio", wav)
    assert parse_item(TypedItem(type="audio", data=base64.b64encode(wav).decode()), "q")[0] == (
        "audio"
    )
    with pytest.raises(InputError) as err:
        parse_item("data:audio/wav;base64," + base64.b64encode(b"RIFF....").decode(), "input[1]")
    assert err.value.param == "input[1]" and "unreadable audio" in str(err.value)
