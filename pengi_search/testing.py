"""Tiny Pengi models and tokenizers built in code, for the tests and the benchmarks: nothing is downloaded.

The tokenizers are byte-level BPE vocabularies trained on a short corpus; the models have the real architecture at
toy sizes with seeded random weights, so they run in a fraction of a second and write gibberish.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPTokenizer, PreTrainedTokenizerFast

from pengi_search.config import AudioConfig, DecoderConfig, MapperConfig, PengiConfig, TextEncoderConfig
from pengi_search.model import Pengi
from pengi_search.tokenization import Tokenizers

CORPUS = [
    "generate audio caption",
    "generate metadata",
    "this is a sound of",
    "this acoustic scene is",
    "this emotion is",
    "music analysis",
    "question: is there a dog?",
    "a dog is barking in the rain",
    "water runs from a tap",
    "a bell rings twice",
    "a high beep and a low hum",
    "birds sing while cars pass by",
    "yes no speech music noise silence engine",
]


def _byte_level_bpe(vocab_size: int, specials: list[str]) -> Tokenizer:
    """Special tokens get the last ids, as in the real GPT-2 and CLIP vocabularies."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_special_tokens(specials)
    return tok


def tiny_gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE like GPT-2's, with <|endoftext|> as its only special token."""
    tok = _byte_level_bpe(400, ["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_clip_tokenizer() -> PreTrainedTokenizerFast:
    """Like CLIP's: every text is wrapped in <|startoftext|> ... <|endoftext|>."""
    tok = _byte_level_bpe(380, ["<|startoftext|>", "<|endoftext|>"])
    start, end = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", start), ("<|endoftext|>", end)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def tiny_config(variant: str = "base", gpt2=None, clip=None) -> PengiConfig:
    gpt2 = gpt2 or tiny_gpt2_tokenizer()
    clip = clip or tiny_clip_tokenizer()
    text = TextEncoderConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(clip),
        projection_dim=24,
        bos_token_id=clip.bos_token_id,
        eos_token_id=clip.eos_token_id,
    )
    return PengiConfig(
        audio=AudioConfig(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), num_classes=4, out_emb=64),
        text_encoder=text if variant == "base" else None,
        decoder=DecoderConfig(
            n_embd=32, n_layer=2, n_head=2, vocab_size=len(gpt2), n_positions=128, eos_token_id=gpt2.eos_token_id
        ),
        mapper=MapperConfig(prefix_length=4, clip_length=4, num_layers=1, num_heads=2),
        d_proj=32,
        text_prompt_length=20,
    )


def make_tiny_model_dir(directory: Path, variant: str = "base", seed: int = 0) -> Path:
    """A complete model directory (config, safetensors weights, both tokenizers) with random tiny weights."""
    gpt2, clip = tiny_gpt2_tokenizer(), tiny_clip_tokenizer()
    torch.manual_seed(seed)
    model = Pengi(tiny_config(variant, gpt2, clip)).eval()
    tokenizers = Tokenizers(model.cfg, gpt2, clip if variant == "base" else None)
    return model.save_pretrained(directory, tokenizers=tokenizers, extra={"name": f"tiny-{variant}"})


def clip_like_tokenizer(vocab_size: int = 600) -> CLIPTokenizer:
    """transformers' own CLIPTokenizer (CLIP's normaliser, pre-tokeniser, `</w>` word ends and post-processor) over
    a small BPE vocabulary trained here: no real CLIP vocabulary is available offline."""
    trained = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    trained.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    trained.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    trained.train_from_iterator(CORPUS * 4, trainer)
    bpe = json.loads(trained.to_str())["model"]
    vocab = dict(bpe["vocab"])
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[tuple(pair) for pair in bpe["merges"]])
