"""Tiny, randomly initialised Hugging Face models saved to a directory, loaded back the way a
user loads a real one (the hub is out of reach in tests): RoBERTa text, ViT and CLIP vision."""

from __future__ import annotations

from pathlib import Path

CORPUS = ["a red umbrella", "a cat on a mat", "the quick brown fox", "一只猫"] * 10
# Every tiny transformer here: 2 layers, 32 wide, 2 heads; vision ones see 32 px in 8 px patches.
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TINY_VIT = {"image_size": 32, "patch_size": 8, **TINY}


def roberta(out: Path) -> Path:
    """RoBERTa with a byte-level BPE tokenizer trained here: its padding id is 1 and its [CLS]
    (<s>) is 0, unlike BERT's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        cls_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        sep_token="</s>",
        unk_token="<unk>",
    )
    fast.save_pretrained(out)
    config = RobertaConfig(
        vocab_size=len(fast),
        **TINY,
        max_position_embeddings=64,
        pad_token_id=1,
    )
    RobertaModel(config).save_pretrained(out)
    return out


def vit(out: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(**TINY_VIT)
    ViTModel(config).save_pretrained(out)
    size = {"height": 32, "width": 32}
    ViTImageProcessor(
        size=size, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.4]
    ).save_pretrained(out)
    return out


def clip_vision(out: Path) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(**TINY_VIT)
    CLIPVisionModel(config).save_pretrained(out)
    crop = {"height": 32, "width": 32}
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop).save_pretrained(out)
    return out


def wav2vec2(out: Path) -> Path:
    """wav2vec2 on raw 16 kHz waveforms, normalised per clip by its feature extractor."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        **TINY,
        conv_dim=(32, 32),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(config).save_pretrained(out)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(out)
    return out
