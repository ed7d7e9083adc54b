"""Text embedders for captions, labels and queries, and the one place that chooses and opens them.

`--text-embedder` names one (`EmbedderSpec`): "pengi", the model's own CLIP text tower and projection (the paper's
text matching; `base` models only), or "sentence-transformers:NAME" (a local directory, or a hub name read from the
Hugging Face cache, downloaded once if the hub answers (`hub`); for `base_no_text_enc` too). Every embedder returns
L2-normalised float32 vectors and an `id` that the store records, `pengi-text:<model identity>` or
`sentence-transformers:NAME`, so that a query is never compared against vectors another embedder made.

Nothing here imports torch until an embedder that needs it is opened: a text query runs Pengi's tower in numpy
(`text_query`) without it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .chunking import chunked
from .errors import PengiSearchError, UsageError
from .hub import (
    OFFLINE_ENV,
    cache_only,
    hub_cache,
    hub_endpoint,
    is_hub_name,
    offline_setting,
    quiet_hub,
    why_not_downloadable,
)
from .model_dir import PENGI_TEXT_PREFIX, ModelDir
from .vectors import l2_normalise

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedTokenizerBase

    from .bpe_tokenizer import FileTokenizer
    from .encoders import TextEncoder
    from .inference import Engine
    from .messages import Notify

PENGI = "pengi"
SENTENCE_TRANSFORMERS_PREFIX = "sentence-transformers:"
PENGI_TOWER_LIMIT = "all that Pengi's text tower reads"  # its CLIP text model's positions (77 at full size)


class TextEmbedderError(UsageError):
    """A text embedder that cannot be used: an unknown name, or Pengi's text tower on a model without one."""


class HubUnreachableError(PengiSearchError):
    """A sentence-transformers model that is not in the Hugging Face cache, where the hub cannot be asked for it."""


@dataclass(frozen=True)
class CutText:
    """A text longer than its embedder reads: `embed` gives the vector of its first `limit` tokens of `tokens`."""

    text: str
    tokens: int
    limit: int
    why: str  # what sets the limit, as a warning says it: "the max_seq_length of sentence-transformers:NAME"


class TextEmbedder(Protocol):
    id: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def cut_texts(self, texts: Sequence[str]) -> list[CutText]:
        """The texts, of `texts`, that `embed` reads only in part (each once, in order)."""
        ...


def texts_over(texts: Sequence[str], tokens: Sequence[int], limit: int, why: str) -> list[CutText]:
    """The texts whose count of `tokens` (as the embedder's tokenizer counts them, its markers included) is over
    `limit`, each once."""
    counted = dict(zip(texts, tokens, strict=True))
    return [CutText(text, count, limit, why) for text, count in counted.items() if count > limit]


def warn_of_cuts(
    embedder: TextEmbedder, texts: Sequence[str], notify: Notify, *, what: str, names: Sequence[str] = ()
) -> None:
    """Tell `notify`, once for each, of the user's texts (labels, queries) that `embedder` cuts: its vector, and
    every score made with it, is that of the cut text, which nothing else shows. A text is named by its entry in
    `names` where given (a label, for the template-filled text embedded), shortened, as a cut prompt is named."""
    from .messages import shortened  # not at the top: only a cut text needs it

    named = dict(zip(texts, names or texts, strict=True))
    for cut in embedder.cut_texts(list(named)):
        notify(f"{what} of {cut.tokens} tokens cut to its first {cut.limit}, {cut.why}: {shortened(named[cut.text])!r}")


def embed_given(
    embedder: TextEmbedder, texts: Sequence[str], notify: Notify, *, what: str, names: Sequence[str] = ()
) -> np.ndarray:
    """`embedder.embed(texts)` of texts the user gave, each that it cuts told to `notify` (`warn_of_cuts`)."""
    warn_of_cuts(embedder, texts, notify, what=what, names=names)
    return embedder.embed(texts)


@dataclass(frozen=True)
class EmbedderSpec:
    """Which text embedder: Pengi's own text tower (the default) or a sentence-transformers model."""

    sentence_transformer: str | None = None  # the model's name or directory; None: Pengi's text tower

    @classmethod
    def parse(cls, text: str | None) -> EmbedderSpec:
        """`--text-embedder`: None or "pengi" (Pengi's text tower), or "sentence-transformers:NAME"."""
        if text is None or text == PENGI:
            return cls()
        name = text[len(SENTENCE_TRANSFORMERS_PREFIX) :] if text.startswith(SENTENCE_TRANSFORMERS_PREFIX) else ""
        if not name:
            raise TextEmbedderError("--text-embedder", f"unknown {text!r}; use 'pengi' or 'sentence-transformers:NAME'")
        return cls(name)

    @classmethod
    def of_embedder_id(cls, embedder_id: str) -> EmbedderSpec | None:
        """The spec whose embedder records vectors under `embedder_id` (None: an id this version does not know)."""
        if embedder_id.startswith(SENTENCE_TRANSFORMERS_PREFIX):
            return cls(embedder_id[len(SENTENCE_TRANSFORMERS_PREFIX) :])
        return cls() if embedder_id.startswith(PENGI_TEXT_PREFIX) else None

    @property
    def is_pengi(self) -> bool:
        return self.sentence_transformer is None

    def __str__(self) -> str:
        return PENGI if self.is_pengi else SENTENCE_TRANSFORMERS_PREFIX + str(self.sentence_transformer)

    def check(self, model_dir: ModelDir, *, or_instead: str = "") -> None:
        """Refuse Pengi's text tower for a model that has none (before anything is loaded); `or_instead`: another
        way to do the command's work without text embeddings, named first in the error."""
        if self.is_pengi and not model_dir.has_text_encoder:
            fix = "choose a text embedder with --text-embedder sentence-transformers:NAME"
            raise TextEmbedderError(
                model_dir.path,
                f"this model has no text encoder (base_no_text_enc): {or_instead + ', or ' if or_instead else ''}{fix}",
            )

    def embedder_id(self, model_dir: ModelDir) -> str:
        """The id the store records for this embedder's vectors, known before it is loaded."""
        self.check(model_dir)
        return str(model_dir.text_embedder_id) if self.is_pengi else str(self)


def open_text_embedder(
    spec: EmbedderSpec,
    model_dir: ModelDir | None,
    device: str = "auto",
    *,
    engine: Engine | None = None,
    numpy_tower: bool = False,
) -> TextEmbedder:
    """The text embedder `spec` names, loaded the cheapest way.

    A sentence-transformers model needs no `model_dir`. Pengi's text tower is, in order: the tower of `engine`
    (the loaded model of `model_dir`, never loaded twice); with `numpy_tower`, the numpy tower when the model
    directory holds CLIP's `tokenizer.json` (no torch at all: the query path), unless `device` names CUDA; else the
    torch tower read alone.
    With an `engine`, the embedder runs on its device.
    """
    if spec.sentence_transformer is not None:
        return SentenceTransformerEmbedder(spec.sentence_transformer, _torch_device(device, engine))
    if model_dir is None:
        raise ValueError("Pengi's text tower needs the model directory")
    spec.check(model_dir)
    if engine is not None:
        encoder, clip = engine.model.caption_encoder, engine.tok.clip
        assert encoder is not None and clip is not None  # spec.check: the model has a text encoder
        return PengiTextEmbedder(encoder, clip, model_dir.identity, engine.device)
    if numpy_tower and not str(device).startswith("cuda"):  # CUDA asked for by name: the numpy tower is CPU only
        from .bpe_tokenizer import has_tokenizer_file
        from .text_query import NumpyTextEmbedder

        if has_tokenizer_file(model_dir.tokenizer_dir("clip")):
            return NumpyTextEmbedder.from_model_dir(model_dir)
        # No tokenizer.json beside the model (the tokenizer comes from the Hugging Face cache): the torch path finds it.
    return PengiTextEmbedder.from_model_dir(model_dir, _torch_device(device))


# Text embedders `kept_text_embedder` holds open: a model, a sentence-transformers model or two, on a device or two.
# Each holds a text tower (mapped, or some hundred MB in memory), so not every one a long-lived process met.
KEPT_EMBEDDERS = 4


class _OneAtATime:
    """An embedder that threads share, used by one at a time: a transformers tokenizer set to cut texts (the torch
    tower's, sentence-transformers') fails when two threads use it at once, and the numpy tower's BLAS thread limit
    is process-wide. Embedding a query takes milliseconds; opening the embedder again took seconds."""

    def __init__(self, embedder: TextEmbedder) -> None:
        self._embedder = embedder
        self._lock = threading.Lock()
        self.id = embedder.id
        self.dim = embedder.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self._embedder.embed(texts)

    def cut_texts(self, texts: Sequence[str]) -> list[CutText]:
        with self._lock:
            return self._embedder.cut_texts(texts)


_EmbedderKey = tuple[object, ...]


class _KeptEmbedders:
    """The embedders last opened, by what they were opened from, the least recently used let go past `kept`."""

    def __init__(self, kept: int) -> None:
        self._kept = kept
        self._opened: OrderedDict[_EmbedderKey, TextEmbedder] = OrderedDict()
        # Held while one opens, so that threads asking at once for the same embedder open it once.
        self._lock = threading.Lock()

    def get(self, key: _EmbedderKey, open_embedder: Callable[[], TextEmbedder]) -> TextEmbedder:
        with self._lock:
            if key in self._opened:
                self._opened.move_to_end(key)
                return self._opened[key]
            embedder = self._opened[key] = _OneAtATime(open_embedder())
            if len(self._opened) > self._kept:
                self._opened.popitem(last=False)
            return embedder

    def clear(self) -> None:
        with self._lock:
            self._opened.clear()


_KEPT = _KeptEmbedders(KEPT_EMBEDDERS)


def kept_text_embedder(spec: EmbedderSpec, model_dir: ModelDir | None, device: str = "auto") -> TextEmbedder:
    """`open_text_embedder(spec, model_dir, device, numpy_tower=True)` (the query path), opened once and kept for
    the process's later calls (the last `KEPT_EMBEDDERS`), so that a script's thousand queries load the text tower
    once, not a thousand times. Thread-safe: threads share the embedder, one embedding at a time."""
    return _KEPT.get(
        _embedder_key(spec, model_dir, device), lambda: open_text_embedder(spec, model_dir, device, numpy_tower=True)
    )


def forget_text_embedders() -> None:
    """Let go of every embedder `kept_text_embedder` holds (its memory is freed once no caller holds it)."""
    _KEPT.clear()


def _embedder_key(spec: EmbedderSpec, model_dir: ModelDir | None, device: str) -> _EmbedderKey:
    """What an embedder is opened from: Pengi's tower by its directory, its recorded weights and the weights file
    as it is now (a model replaced in place is opened again), a sentence-transformers model by its name."""
    if model_dir is None or not spec.is_pengi:
        return (str(spec), device)
    try:
        weights = os.stat(model_dir.weights)
        file: tuple[int, int, int] | None = (weights.st_ino, weights.st_size, weights.st_mtime_ns)
    except OSError:  # opening it says what is wrong
        file = None
    return (str(spec), str(model_dir.path.resolve()), model_dir.fingerprint, file, device)


def _torch_device(device: str, engine: Engine | None = None) -> torch.device:
    from .inference import resolve_device  # imports torch

    return engine.device if engine is not None else resolve_device(device)


class PengiTextEmbedder:
    """The paper's text matching: Pengi's CLIP text tower and projection (the `base` model only)."""

    def __init__(
        self, encoder: TextEncoder, clip: FileTokenizer | PreTrainedTokenizerBase, model_id: str, device: torch.device
    ):
        self.encoder = encoder.to(device).eval()
        self.clip = clip
        self.device = device
        self.id = PENGI_TEXT_PREFIX + model_id
        self.dim = encoder.projection.layer_norm.normalized_shape[0]

    @classmethod
    def from_model_dir(cls, model_dir: ModelDir, device: torch.device) -> PengiTextEmbedder:
        """Reads only the text tower's weights (about 250 MB of the 1.3 GB at full size)."""
        from .encoders import TextEncoder
        from .tokenization import read_tokenizer

        clip = read_tokenizer("clip", model_dir.path)
        return cls(TextEncoder.from_model_dir(model_dir), clip, model_dir.identity, device)

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        from .tokenization import clip_texts

        cfg = self.encoder.base.config
        out = []
        with torch.no_grad():
            for part in chunked(texts, batch_size):
                batch = clip_texts(self.clip, part, cfg.max_position_embeddings, cfg.eos_token_id)
                emb = self.encoder(batch.input_ids.to(self.device), batch.attention_mask.to(self.device))
                out.append(l2_normalise(emb.float().cpu().numpy()))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def cut_texts(self, texts: Sequence[str]) -> list[CutText]:
        limit = self.encoder.base.config.max_position_embeddings  # what `clip_texts` cuts to
        return texts_over(texts, [len(self.clip(text)["input_ids"]) for text in texts], limit, PENGI_TOWER_LIMIT)


class SentenceTransformerEmbedder:
    """Any sentence-transformers model (a local directory or a hub name); for `base_no_text_enc` too."""

    def __init__(self, name: str, device: torch.device):
        from sentence_transformers import SentenceTransformer  # heavy import, only when chosen
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its "Loading weights" bar on every query; commands are quiet
        hub_name = is_hub_name(name)
        if not hub_name and not Path(name).exists():  # sentence-transformers would ask the hub for a folder's name
            raise TextEmbedderError(
                SENTENCE_TRANSFORMERS_PREFIX + name,
                "no such folder; give a sentence-transformers model's folder or a hub name (owner/name)",
            )
        try:  # from the Hugging Face cache first: asking the hub whether it changed held up every query (seconds,
            # or a minute of retries without a network)
            with cache_only():
                self.model = SentenceTransformer(name, device=str(device), local_files_only=True)
        except OSError:  # not cached yet: the hub has it (or says why not), if it can be reached
            if hub_name:
                _refuse_unreachable_hub(name)
            self.model = _downloaded(name, device)
        self.id = SENTENCE_TRANSFORMERS_PREFIX + name
        self.dim = int(self.model.get_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def cut_texts(self, texts: Sequence[str]) -> list[CutText]:
        """sentence-transformers cuts a text to the model's `max_seq_length` tokens, its markers included."""
        limit, tokenizer = self.model.max_seq_length, self.model.tokenizer
        if limit is None or tokenizer is None or not texts:  # a model that sets no limit, or reads no tokens
            return []
        # verbose=False: transformers' own warning of a text longer than the tokenizer's maximum would come too.
        counts = [len(ids) for ids in tokenizer(list(texts), verbose=False)["input_ids"]]
        return texts_over(texts, counts, limit, f"the max_seq_length of {self.id}")


def _downloaded(name: str, device: torch.device) -> SentenceTransformer:
    """The model `name` loaded online: from the hub (into its cache) for a hub name, with the hub's retries kept off
    stderr, and a name the hub does not have said so in one line."""
    from huggingface_hub.errors import RepositoryNotFoundError
    from sentence_transformers import SentenceTransformer

    with quiet_hub():
        try:
            return SentenceTransformer(name, device=str(device))
        except RepositoryNotFoundError as err:  # its message: the status, then lines of advice
            raise TextEmbedderError(
                SENTENCE_TRANSFORMERS_PREFIX + name,
                f"the hub ({hub_endpoint()}) has no such model (or it is private or gated: 'hf auth login' first)",
            ) from err


def _refuse_unreachable_hub(name: str) -> None:
    """Fail at once, in one line that says what to do, when the model would have to come from a hub that offline
    mode forbids or that does not answer (instead of a minute and a half of retries, or none ending at all)."""
    why = why_not_downloadable(name)
    if why is None:
        return
    fix = f"run 'hf download {name}' where there is network and copy that cache here, or give the model's folder"
    if not offline_setting():
        fix += f"; {OFFLINE_ENV}=1 skips asking the hub"
    where = SENTENCE_TRANSFORMERS_PREFIX + name
    raise HubUnreachableError(where, f"not in the Hugging Face cache ({hub_cache()}) and {why}: {fix}")
