"""The model and text embedder a run indexes with: the model asked for, with --text-embedder, else the embedder
the library was built with, else Pengi's own text tower; and the refusal, before any work, of a run whose model or
embedder differs from the library's, in one line (`--reindex` starts it over with the new ones instead)."""

from __future__ import annotations

from dataclasses import dataclass

from pengi_search.db import BuiltWithOtherError, EmbedderInfo, IndexMeta, ModelInfo, Store
from pengi_search.embedders import EmbedderSpec
from pengi_search.model_dir import ModelDir

from .run_report import IndexOptions


@dataclass(frozen=True)
class ModelChoice:
    model_dir: ModelDir
    model: ModelInfo
    embedder_spec: EmbedderSpec
    embedder: EmbedderInfo | None  # None: known only once loaded (a sentence-transformers model not yet recorded)


def choose_model(options: IndexOptions, meta: IndexMeta | None) -> ModelChoice:
    """The model asked for and the text embedder: --text-embedder, else the one the index was built with (`meta`),
    else Pengi's own text tower."""
    model_dir = ModelDir.resolve(options.model)
    model = ModelInfo(model_dir.name, model_dir.fingerprint or "unknown")
    spec = EmbedderSpec.parse(options.text_embedder) if options.text_embedder else _recorded_spec(meta)
    embedder_id = spec.embedder_id(model_dir)  # refuses Pengi's tower for a model without one
    if spec.is_pengi:
        return ModelChoice(model_dir, model, spec, EmbedderInfo(embedder_id, model_dir.config.d_proj))
    recorded = meta.embedder if meta is not None and meta.embedder.name == embedder_id else None
    return ModelChoice(model_dir, model, spec, recorded)


def _recorded_spec(meta: IndexMeta | None) -> EmbedderSpec:
    """The embedder the index was built with (Pengi's tower for a new index, or an id this version does not know)."""
    return (EmbedderSpec.of_embedder_id(meta.embedder.name) if meta else None) or EmbedderSpec()


def check_compatible(store: Store, choice: ModelChoice) -> None:
    """Refuse a run whose model or embedder differs from the index's (before any work), saying each once."""
    meta = store.index_meta()
    if meta is None:
        return
    if choice.embedder is None:  # a sentence-transformers model the library does not have: its size is not known
        raise BuiltWithOtherError(store.name, str(meta.embedder), f"text embedder {str(choice.embedder_spec)!r}")
    # Pengi's text tower is its model's: another model brings another tower, which naming the model says.
    towers = choice.embedder_spec.is_pengi and EmbedderSpec.of_embedder_id(meta.embedder.name) == EmbedderSpec()
    store.check_compatible(choice.model, None if towers else choice.embedder)
