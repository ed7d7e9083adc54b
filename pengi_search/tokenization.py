"""Tokenizers and the reference's prompt tokenisation.

Pengi needs two tokenizers: GPT-2's (answers, and prompts of `base_no_text_enc`) and CLIP's (prompts and texts for
the `base` text encoder). They are read from the model directory (`tokenizer/gpt2`, `tokenizer/clip`) or, failing
that, from the Hugging Face cache; nothing is downloaded here (`pengi-search model fetch` does that). A model
directory's tokenizers are read with the `tokenizers` library alone (`bpe_tokenizer`): inference does not import
transformers. Training and `model import` pass transformers' tokenizers, which `Tokenizers` takes as well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pengi_search.errors import PengiSearchError, UsageError

from .bpe_tokenizer import FileTokenizer, has_tokenizer_file
from .choices import LongPrompt, StopRule
from .config import PengiConfig
from .messages import shortened
from .releases import TOKENIZERS

if TYPE_CHECKING:  # torch and transformers load only when a tokenizer does (`query` never needs them)
    import torch
    from transformers import PreTrainedTokenizerBase

TOKENIZER_DIR = "tokenizer"
REPLACEMENT_CHARACTER = "\ufffd"  # what a decoder writes for bytes that make no whole UTF-8 character
CUT_TOKENS = 3  # a character cut short keeps at most 3 of its bytes (UTF-8 spends 4 at most): as many tokens at most

log = logging.getLogger(__name__)


class TokenizerNotFoundError(PengiSearchError):
    """A tokenizer the model needs is not installed."""


class PromptTooLongError(UsageError):
    """A prompt longer than the model's prompt tokens, refused (`LongPrompt.refuse`)."""


def read_tokenizer(kind: str, model_dir: Path | None) -> FileTokenizer | PreTrainedTokenizerBase:
    """For inference: `<model_dir>/tokenizer/<kind>/tokenizer.json` without transformers, else `load_tokenizer`."""
    if model_dir is not None and has_tokenizer_file(model_dir / TOKENIZER_DIR / kind):
        return FileTokenizer.from_folder(model_dir / TOKENIZER_DIR / kind)
    return load_tokenizer(kind, model_dir)


def load_tokenizer(kind: str, model_dir: Path | None) -> PreTrainedTokenizerBase:
    """transformers' tokenizer `kind` ("gpt2" or "clip"): from `<model_dir>/tokenizer/<kind>`, else from the local
    Hugging Face cache."""
    from transformers import AutoTokenizer

    if model_dir is not None and (model_dir / TOKENIZER_DIR / kind).is_dir():
        return AutoTokenizer.from_pretrained(model_dir / TOKENIZER_DIR / kind)
    try:
        return AutoTokenizer.from_pretrained(TOKENIZERS[kind], local_files_only=True)
    except OSError:
        where = f"{model_dir / TOKENIZER_DIR / kind} or " if model_dir else ""
        raise TokenizerNotFoundError(
            "",
            f"the {kind} tokenizer is not in {where}the Hugging Face cache; run `pengi-search model fetch` "
            "or `pengi-search model import` to install it",
        ) from None


@dataclass
class PromptBatch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)


def pad_rows(rows: list[list[int]], width: int, pad_id: int) -> PromptBatch:
    """Right-pad token rows to `width` with `pad_id`; the mask marks the real tokens."""
    import torch

    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return PromptBatch(ids, mask)


def clip_texts(
    clip: FileTokenizer | PreTrainedTokenizerBase, texts: list[str], max_length: int, pad_id: int
) -> PromptBatch:
    """Free texts (captions, labels, queries) for the CLIP text tower: truncated to its context, padded."""
    rows = [clip(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    return pad_rows(rows, max(len(r) for r in rows), pad_id)


class Tokenizers:
    """The pair of tokenizers with the reference's conventions for prompts, answers and free texts."""

    def __init__(
        self,
        cfg: PengiConfig,
        gpt2: FileTokenizer | PreTrainedTokenizerBase,
        clip: FileTokenizer | PreTrainedTokenizerBase | None,
    ):
        if cfg.use_text_encoder and clip is None:
            raise TokenizerNotFoundError("", "the base model needs the CLIP tokenizer")
        self.cfg, self.gpt2, self.clip = cfg, gpt2, clip
        # Answers end as the released model's do: " " then the end-of-text token (" <|endoftext|>" for GPT-2).
        self.end_suffix = " " + gpt2.eos_token
        ends = self.encode(self.end_suffix)
        # The reference stops on the first token of " <|endoftext|>" (a lone space, id 220); <|endoftext|> too.
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys([ends[0], gpt2.eos_token_id]))

    def stop_ids_for(self, rule: StopRule) -> tuple[int, ...]:
        """The ids that end an answer under `rule`: the lone space only (the original's), or it and end-of-text."""
        return self.stop_ids[:1] if rule == StopRule.original else self.stop_ids

    @classmethod
    def load(cls, cfg: PengiConfig, model_dir: Path | None) -> Tokenizers:
        clip = read_tokenizer("clip", model_dir) if cfg.use_text_encoder else None
        return cls(cfg, read_tokenizer("gpt2", model_dir), clip)

    def save(self, model_dir: Path) -> None:
        """Into `<model_dir>/tokenizer/{gpt2,clip}`, where `load` finds them."""
        self.gpt2.save_pretrained(model_dir / TOKENIZER_DIR / "gpt2")
        if self.clip is not None:
            self.clip.save_pretrained(model_dir / TOKENIZER_DIR / "clip")

    def prompts(self, prompts: list[str], long: LongPrompt = LongPrompt.cut) -> PromptBatch:
        """Prompts as the reference tokenises them, padded to `text_prompt_length` (40).

        base: CLIP tokens with start and end markers, padded with the end-of-text id.
        base_no_text_enc: GPT-2 tokens of `prompt + " <|endoftext|>"`, padded with id 0 ("!").
        A longer prompt is cut to 40 tokens as the reference's tokenizer call cuts it (CLIP keeps its end marker,
        GPT-2 keeps the first 40 ids), with a warning; `long=LongPrompt.refuse` raises PromptTooLongError instead.
        """
        length = self.cfg.text_prompt_length
        rows = [self._prompt_ids(p, length, long) for p in prompts]
        pad = self.cfg.text_encoder.eos_token_id if self.clip is not None else 0
        return pad_rows(rows, length, pad)

    def _prompt_ids(self, prompt: str, length: int, long: LongPrompt) -> list[int]:
        ids = self.clip(prompt)["input_ids"] if self.clip is not None else self.encode(prompt + self.end_suffix)
        if len(ids) <= length:
            return ids
        if long == LongPrompt.refuse:
            raise PromptTooLongError("", f"prompt longer than {length} tokens ({len(ids)}): {prompt!r}")
        log.warning(
            "prompt of %d tokens cut to its first %d, as the original Pengi does: %r",
            len(ids),
            length,
            shortened(prompt),
        )
        if self.clip is not None:
            return self.clip(prompt, truncation=True, max_length=length)["input_ids"]
        return ids[:length]

    def answer_ids(self, text: str) -> list[int]:
        """GPT-2 ids of an answer as the model was trained to write it: `text + " <|endoftext|>"`."""
        return self.encode(text + self.end_suffix)

    def encode(self, text: str) -> list[int]:
        """Language-model ids of `text`, without the special tokens some tokenizers add on their own."""
        return self.gpt2.encode(text, add_special_tokens=False)

    def texts(self, texts: list[str]) -> PromptBatch:
        if self.clip is None:
            raise ValueError("this model has no CLIP text encoder")
        cfg = self.cfg.text_encoder
        return clip_texts(self.clip, texts, cfg.max_position_embeddings, cfg.eos_token_id)

    def decode(self, tokens: list[int]) -> str:
        """Generated ids -> text, without the end markers, decoded whole (a byte-level BPE spells a character
        outside ASCII with several tokens) and cut at a character's start where the ids end within it
        (`whole_characters`)."""
        kept = [t for t in tokens if t not in self.stop_ids]
        return whole_characters(kept, lambda ids: self.gpt2.decode(ids, skip_special_tokens=True)).strip()


def whole_characters(ids: list[int], decode: Callable[[list[int]], str]) -> str:
    """`decode(ids)` without the last character where the ids end within it: an answer stopped at its length limit
    (`--max-len`, a trained run's `evaluation.max_len`) in the middle of a character's bytes (日 is 3 tokens of a
    byte-level BPE) decodes it as U+FFFD, which is not text; the ids before it are decoded instead. An ending that
    no shorter one mends (stray bytes however cut) is kept as decoded."""
    text = decode(ids)
    if not text.endswith(REPLACEMENT_CHARACTER):
        return text
    for cut in range(1, min(CUT_TOKENS, len(ids)) + 1):
        shorter = decode(ids[:-cut])
        if not shorter.endswith(REPLACEMENT_CHARACTER):
            return shorter
    return text
