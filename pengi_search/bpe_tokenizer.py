"""A model directory's tokenizer read with the `tokenizers` library alone: no transformers at inference.

`tokenizer/gpt2` and `tokenizer/clip` are folders that transformers' `save_pretrained` wrote: `tokenizer.json` (the
whole tokenizer: normaliser, pre-tokeniser, BPE model, added tokens, post-processor, decoder) and
`tokenizer_config.json` (the names of the special tokens and a few switches). Importing transformers to read them
costs most of a second per command; `FileTokenizer` reads them in milliseconds and answers the few calls the engine
makes (`tokenization.Tokenizers`, the text embedders) exactly as transformers' tokenizer loaded from the same folder
does (tests/test_bpe_tokenizer.py compares them):

    tok(text)["input_ids"]                             ids with the post-processor's markers (CLIP: start, end)
    tok(text, truncation=True, max_length=n)           the same, cut to n ids as transformers cuts them
    tok.encode(text, add_special_tokens=False)         ids
    tok.decode(ids, skip_special_tokens=True)          text
    tok.eos_token, tok.eos_token_id, tok.bos_token_id, len(tok), tok.save_pretrained(folder)

Training, `model fetch` and `model import` keep transformers' tokenizers; `Tokenizers` takes either.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer

from .errors import PengiSearchError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"  # older transformers wrote the special tokens here
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
# transformers' defaults when a folder names no end-of-text token (GPT-2's and CLIP's tokenizer classes agree)
DEFAULT_EOS = "<|endoftext|>"
DEFAULT_BOS = {"GPT2Tokenizer": DEFAULT_EOS, "CLIPTokenizer": "<|startoftext|>"}
# transformers' `clean_up_tokenization` (applied to BPE output only when a folder insists, see `decode`)
CLEAN_UPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


class TokenizerFileError(PengiSearchError):
    """A tokenizer folder's file that `FileTokenizer` cannot read: `where` is the file, `reason` what the reader
    said. A model directory that cannot be used, as `checkpoint.CheckpointError` says of its weights (exit code 1;
    `serve` answers 500, the server's fault, not the request's)."""


def has_tokenizer_file(folder: Path) -> bool:
    return (Path(folder) / TOKENIZER_FILE).is_file()


def _token_name(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or (older files) {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class FileTokenizer:
    """The subset of a transformers tokenizer that this project calls, over a `tokenizers.Tokenizer`."""

    def __init__(self, backend: Tokenizer, settings: dict[str, Any], folder: Path | None = None):
        """`settings` are tokenizer_config.json's (with special_tokens_map.json's tokens where it names none)."""
        self.backend = backend
        self.folder = folder
        self.settings = settings
        names = {name: _token_name(settings.get(name)) for name in SPECIAL_TOKEN_NAMES}
        if names["eos_token"] is None:
            names["eos_token"] = DEFAULT_EOS
        if names["bos_token"] is None:
            names["bos_token"] = DEFAULT_BOS.get(settings.get("tokenizer_class", ""))
        self.special = {name: token for name, token in names.items() if token is not None}
        # transformers adds a named special token the file lacks (as special, not normalised): so does this.
        present = {token.content for token in backend.get_added_tokens_decoder().values()}
        missing = [token for token in dict.fromkeys(self.special.values()) if token not in present]
        if missing:
            backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in missing])
        backend.no_padding()
        backend.no_truncation()
        backend.encode_special_tokens = bool(settings.get("split_special_tokens", False))
        self.truncation_side = settings.get("truncation_side", "right")
        # transformers' CLIPTokenizer turns the BPE word ends back into spaces when it decodes.
        suffix = getattr(backend.model, "end_of_word_suffix", None)
        self.word_end = suffix if settings.get("tokenizer_class") == "CLIPTokenizer" and suffix else None
        # transformers skips its space clean-up for BPE tokenizers unless a folder forces it.
        self.clean_up = bool(
            settings.get("clean_up_tokenization_spaces")
            and settings.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")
        )
        self._lock = threading.Lock()  # truncation is a setting of the backend: one encoding at a time

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> FileTokenizer:
        """From a folder holding `tokenizer.json` (and, normally, `tokenizer_config.json`)."""
        folder = Path(folder)
        try:
            backend = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except Exception as exc:  # the Rust library raises plain Exception on a malformed file
            raise TokenizerFileError(folder / TOKENIZER_FILE, str(exc)) from exc
        settings = _read_json(folder / SPECIAL_TOKENS_FILE)
        settings.update({key: value for key, value in _read_json(folder / CONFIG_FILE).items() if value is not None})
        return cls(backend, settings, folder)

    # --- the transformers calls the project makes ---------------------------------------------------------------

    def __call__(
        self, text: str, *, add_special_tokens: bool = True, truncation: bool = False, max_length: int | None = None
    ) -> dict[str, list[int]]:
        """{"input_ids": ids}; with `truncation`, at most `max_length` ids, the post-processor's markers kept."""
        if truncation and max_length is None:
            raise ValueError("truncation needs max_length")
        return {"input_ids": self._ids(text, add_special_tokens, max_length if truncation else None)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._ids(text, add_special_tokens, None)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.word_end is not None:
            text = text.replace(self.word_end, " ").strip()
        if self.clean_up:
            for before, after in CLEAN_UPS:
                text = text.replace(before, after)
        return text

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token(self) -> str:
        return self.special["eos_token"]

    @property
    def eos_token_id(self) -> int | None:
        return self._id_of("eos_token")

    @property
    def bos_token(self) -> str | None:
        return self.special.get("bos_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._id_of("bos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._id_of("pad_token")

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """The folder's files as they were read (a model directory made from another keeps them byte for byte)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.folder is None:
            self.backend.save(str(folder / TOKENIZER_FILE))
            (folder / CONFIG_FILE).write_text(json.dumps(self.settings, indent=2) + "\n", encoding="utf-8")
            return
        for name in (TOKENIZER_FILE, CONFIG_FILE, SPECIAL_TOKENS_FILE):
            if (self.folder / name).is_file():
                shutil.copyfile(self.folder / name, folder / name)

    # --- inside -----------------------------------------------------------------------------------------------

    def _id_of(self, name: str) -> int | None:
        token = self.special.get(name)
        return None if token is None else self.backend.token_to_id(token)

    def _ids(self, text: str, add_special_tokens: bool, max_length: int | None) -> list[int]:
        with self._lock:
            if max_length is None:
                return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
            self.backend.enable_truncation(
                max_length, stride=0, strategy="longest_first", direction=self.truncation_side
            )
            try:
                return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
            finally:
                self.backend.no_truncation()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerFileError(path, str(exc)) from exc
    return data if isinstance(data, dict) else {}
