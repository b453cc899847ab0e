"""What a modality is: one Modality object per kind of data, owning everything polymodal does
with that kind (storage type, decoding, shapes, HTTP parsing, towers, reconstruction loss).

No torch at import: config.py checks modality names against the registry, and a config error
must print before torch would have loaded. Towers and losses import torch when called.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from polymodal.sections import Section, TowerSettings

# Why a row is dropped whatever its modality; each Modality adds its own reasons.
COMMON_BAD_ROW_REASONS = ("wrong type", "label out of range", "no modality present")
MAX_ITEM_BYTES = 10 * 1024 * 1024  # an image or a WAV clip in a request, decoded


class DecodeError(ValueError):
    """A value that cannot become a model input; `reason` is its category (bad_row_reasons)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class InputError(ValueError):
    """A client mistake in a request: becomes a 4xx with `param` naming the offending field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


def present_key(modality: str) -> str:
    """The decoded-batch key of a modality's presence flags (1.0 where the row has it);
    data/decode.py writes these keys, batch.Batch reads them."""
    return f"{modality}_present"


def hash_key(modality: str) -> str:
    """The decoded-batch key of a modality's content hashes (0 where the row lacks it)."""
    return f"{modality}_hash"


def _b64(data: str, param: str) -> bytes:
    if len(data) > MAX_ITEM_BYTES * 4 // 3 + 4:
        raise InputError(f"item larger than {MAX_ITEM_BYTES} bytes", param, 413)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"invalid base64: {exc}", param) from exc


def payload_bytes(
    value: Any, param: str, kind: str, example: str, check: Callable[[bytes], Any]
) -> bytes:
    """A data:{kind}/... URI (like `example`) or bare base64 → bytes that `check` accepts (its
    DecodeError becomes the client's 400)."""
    if not isinstance(value, str):
        raise InputError(f"{kind} data must be a string", param)
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if not header.startswith(f"data:{kind}/") or ";base64" not in header:
            raise InputError(f"expected a data URI like {example}", param)
        value = payload
    raw = _b64(value, param)
    try:
        check(raw)
    except DecodeError as exc:
        raise InputError(str(exc), param) from exc
    return raw


def mse_sum(pred, target, present):
    """(Σ over present rows of the mean squared error per element, number of present rows)."""
    per_row = (pred - target).pow(2).flatten(1).mean(1)
    return (per_row * present).sum(), present.sum()


def present_count(target, present):
    """What mse_sum's mean divides by, over a whole batch: the present rows."""
    return present.sum()


# The signatures of a Modality's parts. `prep` is a modalities.Preprocessing, `cfg` a
# config.Config; both are read by attribute only, so this file imports neither (config
# assembles its sections from this registry).
Decode = Callable[..., Any]  # (raw value, prep, augment=None, rng=None) -> np.ndarray
Builder = Callable[[Any, Any], Any]  # (cfg, prep) -> nn.Module with .out_dim (encoders)
Settings = Callable[[Any, Any, Callable[[str], Iterable[Any]] | None], dict[str, Any]]


@dataclass(frozen=True)
class Modality:
    """One kind of data. `MODALITIES` (modalities/__init__.py) holds one per name, and the
    dataset format, decoding, model building, reconstruction and serving loop over it."""

    name: str
    # Dataset shards: the column's Arrow type and the manifest's default encoding.
    arrow_type: Any
    # Preprocessing fields this modality adds (flat names, as stored in checkpoints), with
    # their defaults; `settings(cfg, manifest, train_column)` fills them for a run, reading
    # the train split's column through train_column(name) when it needs statistics (an
    # imported model has no dataset: manifest and train_column are None).
    defaults: dict[str, Any]
    settings: Settings
    # One raw value → the model input array; DecodeError (a bad row) when it cannot be used.
    decode: Decode
    # (shape of one row's input, numpy dtype).
    input_shape: Callable[[Any], tuple[tuple[int, ...], Any]]
    # Encoders by config name (model.<name>.encoder); the first is the default.
    encoders: dict[str, Builder]
    # Config: model.<name>'s settings (config adds `encoder`, one of `encoders`), the fields it
    # adds to the data section (flat: data.<field>), and its cross-field checks (messages
    # naming their dotted keys) when the model has it.
    model_settings: type[TowerSettings] = TowerSettings
    data_settings: type[Section] | None = None
    check: Callable[[Any], list[str]] | None = None
    # Training's random changes: cfg → what `decode` takes as `augment`, None when off.
    augmentation: Callable[[Any], Any] | None = None
    # The reconstruction decoder, and its loss: (Σ error over present rows, count) and the
    # count over a whole batch (the gradient cache's denominators).
    decoder: Builder | None = None
    reconstruction_sum: Callable[[Any, Any, Any], tuple[Any, Any]] = mse_sum
    reconstruction_count: Callable[[Any, Any], Any] = present_count
    # HTTP: a request's JSON value → the raw value decode takes (InputError otherwise), and
    # the checks that need the served model's preprocessing → tokens counted for usage.
    parse_request: Callable[[Any, str], Any] = lambda value, param: value
    check_request: Callable[[Any, Any, str], int] = lambda value, prep, param: 0
    # Serving's batches: the work of decoding and embedding a parsed value, relative to one
    # full-size item (a text of text_max_len tokens, an image of the model's size).
    cost: Callable[[Any, Any], float] = lambda value, prep: 1.0
    # A plain string `input` starting with "data:<data_uri>/" is this modality.
    data_uri: str = ""
    # Serving decodes with this instead of `decode` when set (text: an empty string embeds).
    serve_decode: Decode | None = None
    # Ingest: raises DecodeError for a value that can never decode (checked once, up front;
    # what it returns is ignored); `blank` says a value counts as missing rather than bad.
    check_raw: Callable[[Any], object] | None = None
    blank: Callable[[Any], bool] | None = None
    bad_row_reasons: tuple[str, ...] = field(default_factory=tuple)
