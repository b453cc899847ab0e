"""The audio modality: WAV bytes (PCM 8/16/24/32-bit or float, any rate, any channels) → mono
float32 at the configured rate → log-mel spectrogram; a small CNN tower; per-cell MSE."""

from __future__ import annotations

import struct
from math import gcd
from typing import Any

import numpy as np
import pyarrow as pa

from polymodal.modalities.base import DecodeError, Modality, payload_bytes

MAX_AUDIO_SECONDS = 600  # longer clips are refused before decoding, like oversized images
PCM, IEEE_FLOAT, EXTENSIBLE = 1, 3, 0xFFFE


def _chunks(data: bytes) -> dict[bytes, bytes]:
    """The RIFF/WAVE file's chunks by id (the first of each)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise DecodeError("unreadable audio", "not a RIFF/WAVE file")
    chunks, pos = {}, 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"data" and len(body) < size:
            # Truncated while being written: keep the whole frames that are there.
            chunks.setdefault(cid, body)
            break
        chunks.setdefault(cid, body)
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    return chunks


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1], sample rate); DecodeError says what is wrong."""
    chunks = _chunks(bytes(data))
    fmt, body = chunks.get(b"fmt "), chunks.get(b"data")
    if fmt is None or len(fmt) < 16 or body is None:
        raise DecodeError("unreadable audio", "no fmt or data chunk")
    code, channels, rate, _, block, bits = struct.unpack("<HHIIHH", fmt[:16])
    if code == EXTENSIBLE and len(fmt) >= 26:
        code = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID starts with the code
    if channels < 1 or rate < 1 or bits not in (8, 16, 24, 32, 64) or block != channels * bits // 8:
        raise DecodeError("unreadable audio", f"bad header: {channels} ch, {rate} Hz, {bits} bit")
    frames = len(body) // block
    if frames == 0:
        raise DecodeError("unreadable audio", "no samples")
    if frames > MAX_AUDIO_SECONDS * rate:
        raise DecodeError("audio too long", f"{frames / rate:.0f} s > {MAX_AUDIO_SECONDS} s")
    raw = body[: frames * block]
    if code == PCM and bits == 8:  # unsigned, centred on 128
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif code == PCM and bits == 24:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2**23
    elif code == PCM and bits in (16, 32):
        x = np.frombuffer(raw, f"<i{bits // 8}").astype(np.float32) / 2 ** (bits - 1)
    elif code == IEEE_FLOAT and bits in (32, 64):
        x = np.frombuffer(raw, f"<f{bits // 8}").astype(np.float32)
        if not np.isfinite(x).all():
            raise DecodeError("unreadable audio", "NaN or infinite samples")
    else:
        raise DecodeError("unreadable audio", f"unsupported WAV format {code} at {bits} bit")
    return x.reshape(frames, channels).mean(axis=1), rate


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited polyphase resampling (anti-aliased when going down)."""
    if rate == target:
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly  # scipy and torch load only when audio is decoded

    g = gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """The first n samples, zero-padded at the end when shorter."""
    if len(x) >= n:
        return x[:n]
    return np.pad(x, (0, n - len(x)))


def hz_to_mel(hz):
    """HTK's mel scale: 2595·log10(1 + f/700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, rate: int, n_mels: int, f_min: float = 0.0, f_max=None):
    """[n_mels, n_fft // 2 + 1] triangular filters, centres equally spaced in mel, each
    peaking at 1 on its centre frequency."""
    import torch

    f_max = rate / 2 if f_max is None else f_max
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0, None).astype(np.float32))


def log_mel(x, rate: int, n_mels: int = 40, n_fft: int = 256, hop: int = 128):
    """[n_mels, 1 + len // hop] log-mel power in dB (floor -100 dB) of a mono signal (numpy or
    torch): Hann-windowed STFT, power spectrum, triangular mel filters; a torch tensor."""
    import torch

    signal = torch.as_tensor(x, dtype=torch.float32)
    window = torch.hann_window(n_fft)
    spec = torch.stft(signal, n_fft, hop, window=window, center=True, return_complex=True)
    power = spec.abs() ** 2 / window.pow(2).sum()
    mel = mel_filterbank(n_fft, rate, n_mels) @ power
    return 10.0 * torch.log10(mel.clamp_min(1e-10))


def mel_frames(seconds: float, rate: int, hop: int = 128) -> int:
    """Frames of log_mel for a clip of `seconds` at `rate`."""
    return 1 + round(seconds * rate) // hop


def audio_features(data: bytes, prep) -> np.ndarray:
    """WAV bytes → the audio encoder's input [1, n_mels, frames]: prep.audio_seconds at
    prep.audio_rate, log-mel scaled so -100 dB..0 dB maps to -1..1."""
    x, rate = read_wav(data)
    x = fit_length(resample(x, rate, prep.audio_rate), round(prep.audio_seconds * prep.audio_rate))
    mel = log_mel(x, prep.audio_rate, prep.n_mels)
    return (mel / 50.0 + 1.0).unsqueeze(0).numpy()


def decode(value: Any, prep, augment=None, rng=None) -> np.ndarray:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise DecodeError("wrong type", f"audio is {type(value).__name__}, expected bytes")
    return audio_features(bytes(value), prep)


def settings(cfg, manifest, train_column) -> dict[str, Any]:
    d = cfg.data
    return {"audio_rate": d.audio_rate, "audio_seconds": d.audio_seconds, "n_mels": d.n_mels}


def input_shape(prep) -> tuple[tuple[int, ...], Any]:
    return (1, prep.n_mels, mel_frames(prep.audio_seconds, prep.audio_rate)), np.float32


def mel_cnn(cfg, prep):
    """A log-mel spectrogram is a one-channel image: the image tower's small CNN, pooled over
    time and bands."""
    from polymodal.towers.image import SmallCNN

    return SmallCNN(1, cfg.model.audio.width, cfg.model.audio.norm)


def decoder(cfg, prep):
    from polymodal.towers.decoders import MelDecoder

    frames = mel_frames(prep.audio_seconds, prep.audio_rate)
    return MelDecoder(cfg.model.embed_dim, prep.n_mels, frames, cfg.model.audio.width)


def parse_request(value: Any, param: str) -> bytes:
    """WAV bytes that decode (length limit enforced)."""
    return payload_bytes(value, param, "audio", "data:audio/wav;base64,...", read_wav)


AUDIO = Modality(
    name="audio",
    arrow_type=pa.binary(),
    defaults={"audio_rate": 8000, "audio_seconds": 2.0, "n_mels": 40},
    settings=settings,
    decode=decode,
    input_shape=input_shape,
    encoders={"mel_cnn": mel_cnn},
    decoder=decoder,  # MSE per log-mel cell: a spectrogram is a one-channel image of reals
    parse_request=parse_request,
    data_uri="audio",
    check_raw=read_wav,
    bad_row_reasons=("unreadable audio", "audio too long"),
)
