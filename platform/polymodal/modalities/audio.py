"""The audio modality: WAV, FLAC, OGG or MP3 bytes (any rate, any channels) → mono float32 at
the configured rate → log-mel spectrogram; a small CNN tower; per-cell MSE."""

from __future__ import annotations

import io
from math import gcd
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from polymodal.modalities.base import DecodeError, Modality, payload_bytes
from polymodal.sections import Float, Norm, PretrainedSettings, Section

MAX_AUDIO_SECONDS = 600  # longer clips are refused before decoding, like oversized images


class AudioSettings(PretrainedSettings):
    """The audio tower: mel_cnn (the small CNN over a log-mel spectrogram) | hf (a Hugging Face
    audio model in hf_model: wav2vec2, HuBERT, WavLM...; fed the raw waveform at its feature
    extractor's rate, which data.audio_rate then is; mean-pooled over time)."""

    width: int = Field(16, ge=1, description="mel_cnn: channels of its first block.")
    norm: Norm = Field("batch", description="mel_cnn: batch | group, as for images.")


class AudioData(Section):
    audio_rate: int = Field(8000, ge=1, description="Hz every clip is resampled to.")
    audio_seconds: Float = Field(
        2.0, gt=0, description="Clips are cut or zero-padded to this length."
    )
    n_mels: int = Field(
        40, ge=1, description="Log-mel bands (25 ms-ish windows, hop of 128 samples)."
    )


def read_audio(data: bytes) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1], sample rate) of a WAV, FLAC, OGG/Vorbis/Opus or MP3
    file, read by libsndfile (through soundfile); DecodeError says what is wrong. The length
    is checked from the header before any sample is decoded; a file cut short while being
    written gives the whole frames it has."""
    import soundfile  # loads libsndfile: only when audio is decoded

    try:
        with soundfile.SoundFile(io.BytesIO(bytes(data))) as f:
            rate = f.samplerate
            if f.frames > MAX_AUDIO_SECONDS * rate:
                raise DecodeError(
                    "audio too long", f"{f.frames / rate:.0f} s > {MAX_AUDIO_SECONDS} s"
                )
            x = f.read(dtype="float32", always_2d=True)
    except DecodeError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        # libsndfile's own words ("Format not recognised."), without the file object's repr
        raise DecodeError("unreadable audio", getattr(exc, "error_string", str(exc))) from exc
    if len(x) == 0:
        raise DecodeError("unreadable audio", "no samples")
    if not np.isfinite(x).all():
        raise DecodeError("unreadable audio", "NaN or infinite samples")
    return x.mean(axis=1), rate


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
    """Audio file bytes → the audio encoder's input: prep.audio_seconds at prep.audio_rate, as
    a log-mel spectrogram [1, n_mels, frames] scaled so -100 dB..0 dB maps to -1..1, or (for a
    Hugging Face tower) the waveform [samples], normalised as its feature extractor does."""
    x, rate = read_audio(data)
    n = round(prep.audio_seconds * prep.audio_rate)
    x = resample(x, rate, prep.audio_rate)[:n]
    if prep.audio_input == "waveform":
        if prep.audio_normalize:  # wav2vec2's zero-mean unit-variance over the real samples
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        return fit_length(x, n).astype(np.float32)
    mel = log_mel(fit_length(x, n), prep.audio_rate, prep.n_mels)
    return (mel / 50.0 + 1.0).unsqueeze(0).numpy()


def decode(value: Any, prep, augment=None, rng=None) -> np.ndarray:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise DecodeError("wrong type", f"audio is {type(value).__name__}, expected bytes")
    return audio_features(bytes(value), prep)


def settings(cfg, manifest, train_column) -> dict[str, Any]:
    d, section = cfg.data, cfg.model.audio
    out = {"audio_rate": d.audio_rate, "audio_seconds": d.audio_seconds, "n_mels": d.n_mels}
    if section.encoder == "hf":  # the rate and normalisation its feature extractor asks for
        from polymodal.towers.hf import audio_settings

        out.update(audio_settings(section.hf_model), audio_input="waveform")
        out["audio_model"] = section.hf_model
    return out


def input_shape(prep) -> tuple[tuple[int, ...], Any]:
    if prep.audio_input == "waveform":
        return (round(prep.audio_seconds * prep.audio_rate),), np.float32
    return (1, prep.n_mels, mel_frames(prep.audio_seconds, prep.audio_rate)), np.float32


def mel_cnn(cfg, prep):
    """A log-mel spectrogram is a one-channel image: the image tower's small CNN, pooled over
    time and bands."""
    from polymodal.towers.image import SmallCNN

    return SmallCNN(1, cfg.model.audio.width, cfg.model.audio.norm)


def hf_audio(cfg, prep):
    from polymodal.towers.hf import HFAudio

    section = cfg.model.audio
    return HFAudio(prep.audio_model, section.tuning, section.lr_scale)


def decoder(cfg, prep):
    from polymodal.towers.decoders import MelDecoder

    if prep.audio_input == "waveform":
        raise ValueError("audio read as a waveform has no decoder")
    frames = mel_frames(prep.audio_seconds, prep.audio_rate)
    return MelDecoder(cfg.model.embed_dim, prep.n_mels, frames, cfg.model.audio.width)


def parse_request(value: Any, param: str) -> bytes:
    """Audio file bytes that decode (length limit enforced)."""
    return payload_bytes(value, param, "audio", "data:audio/wav;base64,...", read_audio)


AUDIO = Modality(
    name="audio",
    arrow_type=pa.binary(),
    # audio_input: "mel" or, for a Hugging Face tower, "waveform" (audio_model, its model).
    defaults={
        "audio_rate": 8000,
        "audio_seconds": 2.0,
        "n_mels": 40,
        "audio_input": "mel",
        "audio_normalize": False,
        "audio_model": "",
    },
    settings=settings,
    decode=decode,
    input_shape=input_shape,
    encoders={"mel_cnn": mel_cnn, "hf": hf_audio},
    model_settings=AudioSettings,
    data_settings=AudioData,
    decoder=decoder,  # MSE per log-mel cell: a spectrogram is a one-channel image of reals
    parse_request=parse_request,
    data_uri="audio",
    check_raw=read_audio,
    bad_row_reasons=("unreadable audio", "audio too long"),
)
