"""Text embedders for captions, labels and queries: Pengi's own CLIP text tower, or a sentence-transformers model.

Both return L2-normalised float32 vectors, and an `id` that the store records so that a query is never compared
against vectors another embedder made.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .checkpoint import load_text_encoder, model_identity, read_model_config
from .chunking import chunked
from .encoders import TextEncoder
from .tokenization import clip_texts, load_tokenizer
from .vectors import l2_normalise

SENTENCE_TRANSFORMERS_PREFIX = "sentence-transformers:"


class TextEmbedder(Protocol):
    id: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class PengiTextEmbedder:
    """The paper's text matching: Pengi's CLIP text tower and projection (the `base` model only)."""

    def __init__(self, encoder: TextEncoder, clip: PreTrainedTokenizerBase, model_id: str, device: torch.device):
        self.encoder = encoder.to(device).eval()
        self.clip = clip
        self.device = device
        self.id = f"pengi-text:{model_id}"
        self.dim = encoder.projection.layer_norm.normalized_shape[0]

    @classmethod
    def from_model_dir(cls, model_dir: Path, device: torch.device) -> PengiTextEmbedder:
        """Reads only the text tower's weights (about 250 MB of the 1.3 GB at full size)."""
        return cls(load_text_encoder(model_dir), load_tokenizer("clip", model_dir), model_identity(model_dir), device)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        cfg = self.encoder.base.config
        out = []
        for part in chunked(texts, batch_size):
            batch = clip_texts(self.clip, part, cfg.max_position_embeddings, cfg.eos_token_id)
            emb = self.encoder(batch.input_ids.to(self.device), batch.attention_mask.to(self.device))
            out.append(l2_normalise(emb.float().cpu().numpy()))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class SentenceTransformerEmbedder:
    """Any sentence-transformers model (a local directory or a cached hub name); for `base_no_text_enc` too."""

    def __init__(self, name: str, device: torch.device):
        from sentence_transformers import SentenceTransformer  # heavy import, only when chosen

        self.model = SentenceTransformer(name, device=str(device))
        self.id = SENTENCE_TRANSFORMERS_PREFIX + name
        self.dim = int(self.model.get_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


def load_text_embedder(spec: str | None, model_dir: Path, device: torch.device) -> TextEmbedder:
    """`spec` None or "pengi": the model's own text tower; "sentence-transformers:NAME": that model."""
    if spec and spec.startswith(SENTENCE_TRANSFORMERS_PREFIX):
        return SentenceTransformerEmbedder(spec[len(SENTENCE_TRANSFORMERS_PREFIX) :], device)
    if spec not in (None, "pengi"):
        raise ValueError(f"unknown text embedder {spec!r}; use 'pengi' or 'sentence-transformers:NAME'")
    cfg, _ = read_model_config(model_dir)
    if cfg.text_encoder is None:
        raise ValueError(
            f"{model_dir} has no text encoder (base_no_text_enc): choose one with "
            "--text-embedder sentence-transformers:NAME"
        )
    return PengiTextEmbedder.from_model_dir(model_dir, device)
