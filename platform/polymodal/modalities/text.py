"""The text modality: UTF-8 strings → byte ids (or a pretrained tower's own token ids), a byte
transformer, MiniLM or any Hugging Face text tower; cross-entropy reconstruction over tokens."""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from polymodal.modalities.base import DecodeError, InputError, Modality
from polymodal.pretrained import pretrained_dir
from polymodal.sections import PretrainedSettings, Section

TEXT_PAD = 0  # also BERT's [PAD] id, so one padding rule serves every tokenizer
TEXT_VOCAB = 257  # byte value + 1; 0 is padding
MAX_TEXT_CHARS = 8_192  # per text in a request
# The tokenizer a text encoder reads (Preprocessing.text_tokenizer: settings below); "hf"
# reads its own model's, recorded as "hf:<directory or hub id>".
HF = "hf:"
OPEN_CLIP = "open_clip"  # open_clip's CLIP BPE tokenizer: [SOT] ... [EOT], padded with 0


class TextSettings(PretrainedSettings):
    """The text tower: byte_transformer | minilm (pretrained all-MiniLM-L6-v2; its pip package
    must be installed) | hf (any Hugging Face text model in hf_model, read with its own
    tokenizer and pooled over [CLS] or the mean of its tokens) | open_clip (the text tower of
    model.open_clip)."""

    pooling: Literal["cls", "mean"] = Field("mean", description="hf only: cls | mean.")
    width: int = Field(64, ge=1, description="byte_transformer: model width.")
    layers: int = Field(2, ge=1, description="byte_transformer: layers.")
    heads: int = Field(4, ge=1, description="byte_transformer: attention heads.")
    tokenizer: Literal["bytes", "minilm"] = Field(
        "bytes",
        description="byte_transformer: its tokens, UTF-8 bytes (no vocabulary) | minilm "
        "(all-MiniLM-L6-v2's WordPiece vocabulary from its pip package: a word is a token or "
        "a few, so short texts are short sequences; their embeddings are learned from scratch).",
    )


class TextData(Section):
    text_max_len: int = Field(
        48, ge=1, description="UTF-8 bytes (or a pretrained tower's tokens) kept per text."
    )


@functools.lru_cache(maxsize=8)
def _wordpiece(name: str, max_len: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(pretrained_dir(name) / "tokenizer.json"))
    tok.enable_truncation(max_len)
    tok.enable_padding(length=max_len, pad_id=TEXT_PAD)
    return tok


@functools.lru_cache(maxsize=1)
def _open_clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def text_vocab_size(tokenizer: str) -> int:
    if tokenizer == OPEN_CLIP:
        return _open_clip_tokenizer().vocab_size
    if tokenizer.startswith(HF):
        from polymodal.towers import hf

        return hf.vocab_size(tokenizer[len(HF) :])
    return TEXT_VOCAB if tokenizer == "bytes" else _wordpiece(tokenizer, 8).get_vocab_size()


def encode_text(text: str, max_len: int, tokenizer: str = "bytes") -> np.ndarray:
    """UTF-8 bytes + 1, padded with 0: any language works without a vocabulary. With a
    pretrained tower's name, that tower's WordPiece ids ([CLS] ... [SEP], padded with 0);
    with hf:<model>, that model's tokenizer's ids + 1 (padded with 0)."""
    if tokenizer.startswith(HF):
        from polymodal.towers import hf  # torch and transformers: only for such a tower

        return hf.encode(text, tokenizer[len(HF) :], max_len)
    if tokenizer == OPEN_CLIP:
        return _open_clip_tokenizer()([text], context_length=max_len)[0].numpy()
    if tokenizer != "bytes":
        return np.asarray(_wordpiece(tokenizer, max_len).encode(text).ids, dtype=np.int64)
    ids = np.zeros(max_len, dtype=np.int64)
    raw = np.frombuffer(text.encode("utf-8")[:max_len], dtype=np.uint8)
    ids[: len(raw)] = raw.astype(np.int64) + 1
    return ids


def decode_text(ids: np.ndarray) -> str:
    raw = bytes(int(i) - 1 for i in ids if i != TEXT_PAD)
    return raw.decode("utf-8", errors="replace")


def decode(value: Any, prep, augment=None, rng=None) -> np.ndarray:
    if not isinstance(value, str):
        raise DecodeError("wrong type", f"text is {type(value).__name__}, expected str")
    if not value.strip():
        raise DecodeError("empty text")
    return encode_text(value, prep.text_max_len, prep.text_tokenizer)


def serve_decode(value: str, prep, augment=None, rng=None) -> np.ndarray:
    """An empty text embeds as all padding (offline jobs; HTTP refuses one: parse_request)."""
    return encode_text(value, prep.text_max_len, prep.text_tokenizer)


def settings(cfg, manifest, train_column) -> dict[str, Any]:
    t = cfg.model.text
    if t.encoder == "open_clip":  # its context length: positions are learned up to it
        context = cfg.model.open_clip.model_cfg["text_cfg"].get("context_length", 77)
        return {"text_max_len": context, "text_tokenizer": OPEN_CLIP}
    if t.encoder == "hf":
        tokenizer = HF + t.hf_model
    elif t.encoder == "byte_transformer":
        tokenizer = t.tokenizer
    else:  # minilm: its own WordPiece vocabulary, named as the tower
        tokenizer = t.encoder
    return {"text_max_len": cfg.data.text_max_len, "text_tokenizer": tokenizer}


def byte_transformer(cfg, prep):
    from polymodal.towers.text import ByteTransformer

    t = cfg.model.text
    vocab = text_vocab_size(prep.text_tokenizer)
    return ByteTransformer(
        prep.text_max_len, t.width, t.layers, t.heads, cfg.model.dropout, vocab, TEXT_PAD
    )


def minilm(cfg, prep):
    """Mean-pooled like sentence-transformers; its WordPiece ids are unshifted (BERT pads
    with 0)."""
    from polymodal.towers.hf import HFText

    t = cfg.model.text
    return HFText(pretrained_dir("minilm"), "mean", t.tuning, t.lr_scale, shift=0)


def hf_text(cfg, prep):
    from polymodal.towers.hf import HFText

    t = cfg.model.text
    return HFText(prep.text_tokenizer[len(HF) :], t.pooling, t.tuning, t.lr_scale)


def open_clip_text(cfg, prep):
    from polymodal.towers.openclip import OpenCLIPText, build_open_clip

    t = cfg.model.text
    clip = build_open_clip(cfg.model.open_clip.model_cfg)
    return OpenCLIPText(clip, cfg.model.embed_dim, t.tuning, t.lr_scale)


def decoder(cfg, prep):
    from polymodal.towers.decoders import TextDecoder

    vocab = text_vocab_size(prep.text_tokenizer)
    return TextDecoder(cfg.model.embed_dim, prep.text_max_len, vocab=vocab)


def _targets(ids, present):
    """Token ids to reconstruct: those of absent rows become padding (ignored)."""
    return ids.masked_fill(present.unsqueeze(1).eq(0), TEXT_PAD)


def reconstruction_sum(logits, ids, present):
    """(Σ of token cross-entropies over real tokens of present rows, number of such tokens)."""
    import torch.nn.functional as F

    ids = _targets(ids[:, : logits.shape[1]], present)
    total = F.cross_entropy(
        logits.flatten(0, 1), ids.flatten(), ignore_index=TEXT_PAD, reduction="sum"
    )
    return total, ids.ne(TEXT_PAD).sum().to(logits.dtype)


def reconstruction_count(ids, present):
    return _targets(ids, present).ne(TEXT_PAD).sum().float()


def parse_request(value: Any, param: str) -> str:
    """A text with something in it: an empty or blank one is refused (as OpenAI does), since
    its embedding (all padding) is the same whatever the client meant to send."""
    if not isinstance(value, str):
        raise InputError("text data must be a string", param)
    if not value.strip():
        raise InputError("empty text; send at least one non-blank character", param)
    return value


def check_request(value: str, prep, param: str) -> int:
    """Usage counts a text's UTF-8 bytes as its tokens."""
    if len(value) > MAX_TEXT_CHARS:
        raise InputError(f"text longer than {MAX_TEXT_CHARS} characters", param)
    return len(value.encode("utf-8"))


def cost(value: str, prep) -> float:
    """Tokens over text_max_len: what the text tower runs over once padding is trimmed, and
    what serving's batches sort by, so that texts of a length run together (the byte
    tokenizer's tokens are the UTF-8 bytes; a word-piece tokenizer is run: tens of us)."""
    if prep.text_tokenizer == "bytes":
        return min(len(value.encode("utf-8")), prep.text_max_len) / prep.text_max_len
    ids = encode_text(value, prep.text_max_len, prep.text_tokenizer)
    return float(np.count_nonzero(ids)) / prep.text_max_len


TEXT = Modality(
    name="text",
    arrow_type=pa.string(),
    defaults={"text_max_len": 48, "text_tokenizer": "bytes"},
    settings=settings,
    decode=decode,
    input_shape=lambda prep: ((prep.text_max_len,), np.int64),
    encoders={
        "byte_transformer": byte_transformer,
        "minilm": minilm,
        "hf": hf_text,
        "open_clip": open_clip_text,
    },
    model_settings=TextSettings,
    data_settings=TextData,
    decoder=decoder,
    reconstruction_sum=reconstruction_sum,
    reconstruction_count=reconstruction_count,
    parse_request=parse_request,
    check_request=check_request,
    cost=cost,
    serve_decode=serve_decode,
    blank=lambda value: isinstance(value, str) and not value.strip(),
    bad_row_reasons=("empty text",),
)
