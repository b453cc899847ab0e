"""Build a JointModel from config through plain dict registries (grep for the key)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from polymodal.config import Config
from polymodal.data.decode import Preprocessing, mel_frames, text_vocab_size
from polymodal.models.decoders import ImageDecoder, MelDecoder, TextDecoder, VectorDecoder
from polymodal.models.encoders.image import ResNet18, SmallCNN
from polymodal.models.encoders.minilm import MiniLM
from polymodal.models.encoders.text import ByteTransformer
from polymodal.models.encoders.vector import MLP
from polymodal.models.joint import JointModel
from polymodal.objectives.joint import active_terms
from polymodal.pretrained import pretrained_dir

EncoderBuilder = Callable[[Config, Preprocessing], nn.Module]

IMAGE_ENCODERS: dict[str, EncoderBuilder] = {
    "small_cnn": lambda cfg, prep: SmallCNN(
        prep.image_channels, cfg.model.image.width, cfg.model.image.norm
    ),
    "resnet18": lambda cfg, prep: ResNet18(prep.image_channels),
}
TEXT_ENCODERS: dict[str, EncoderBuilder] = {
    "byte_transformer": lambda cfg, prep: ByteTransformer(
        prep.text_max_len,
        cfg.model.text.width,
        cfg.model.text.layers,
        cfg.model.text.heads,
        cfg.model.dropout,
    ),
    "minilm": lambda cfg, prep: MiniLM(
        pretrained_dir("minilm"), cfg.model.text.tuning, cfg.model.text.lr_scale
    ),
}
# The tokenizer each text encoder reads (Preprocessing.text_tokenizer).
TEXT_TOKENIZERS: dict[str, str] = {"byte_transformer": "bytes", "minilm": "minilm"}
# A log-mel spectrogram is a one-channel image: the same small CNN, pooled over time and bands.
AUDIO_ENCODERS: dict[str, EncoderBuilder] = {
    "mel_cnn": lambda cfg, prep: SmallCNN(1, cfg.model.audio.width, cfg.model.audio.norm),
}
VECTOR_ENCODERS: dict[str, EncoderBuilder] = {
    "mlp": lambda cfg, prep: MLP(
        len(prep.vector_mean), cfg.model.vector.hidden, cfg.model.vector.width, cfg.model.dropout
    ),
}
ENCODERS: dict[str, dict[str, EncoderBuilder]] = {
    "image": IMAGE_ENCODERS,
    "text": TEXT_ENCODERS,
    "audio": AUDIO_ENCODERS,
    "vector": VECTOR_ENCODERS,
}

DECODERS: dict[str, EncoderBuilder] = {
    "image": lambda cfg, prep: ImageDecoder(
        cfg.model.embed_dim, prep.image_channels, prep.image_size, cfg.model.image.width
    ),
    "text": lambda cfg, prep: TextDecoder(
        cfg.model.embed_dim, prep.text_max_len, vocab=text_vocab_size(prep.text_tokenizer)
    ),
    "audio": lambda cfg, prep: MelDecoder(
        cfg.model.embed_dim,
        prep.n_mels,
        mel_frames(prep.audio_seconds, prep.audio_rate),
        cfg.model.audio.width,
    ),
    "vector": lambda cfg, prep: VectorDecoder(
        cfg.model.embed_dim, len(prep.vector_mean), cfg.model.vector.hidden
    ),
}


def unlock_towers(model: nn.Module, cfg: Config, epoch: int) -> None:
    """lock_then_unlock: a pretrained tower trains from epoch model.text.unlock_epoch + 1 on."""
    if cfg.model.text.tuning == "lock_then_unlock" and epoch > cfg.model.text.unlock_epoch:
        for module in model.modules():
            if getattr(module, "locked", False):
                module.unlock()


def _encoder_name(cfg: Config, modality: str) -> str:
    return getattr(cfg.model, modality).encoder


def build_model(cfg: Config, prep: Preprocessing, num_classes: int = 0) -> JointModel:
    encoders = {}
    for m in cfg.model.modalities:
        name = _encoder_name(cfg, m)
        registry = ENCODERS[m]
        if name not in registry:
            raise ValueError(f"model.{m}.encoder: unknown '{name}'; choose from {sorted(registry)}")
        encoders[m] = registry[name](cfg, prep)
    decoders = {}
    if cfg.objective.weights.reconstruction > 0:
        for m in cfg.objective.reconstruction.modalities or cfg.model.modalities:
            decoders[m] = DECODERS[m](cfg, prep)
    contrastive = cfg.objective.contrastive
    return JointModel(
        encoders,
        cfg.model.embed_dim,
        decoders=decoders,
        num_classes=num_classes if cfg.objective.weights.classification > 0 else 0,
        classifier_hidden=cfg.model.classifier_hidden,
        classify_modalities=cfg.objective.classification.modalities or None,
        temperature_init=contrastive.temperature_init,
        # Without a contrastive term the temperature gets no gradient; freeze it (DDP needs that).
        learn_temperature=contrastive.learn_temperature and cfg.objective.weights.contrastive > 0,
        max_logit_scale=contrastive.max_logit_scale,
        logit_bias_init=contrastive.bias_init if contrastive.kind == "sigmoid" else None,
        learned_weight_terms=(
            list(active_terms(cfg.objective)) if cfg.objective.weighting == "uncertainty" else []
        ),
    )
