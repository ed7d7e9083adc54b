"""The embedders a text query is embedded by, and the model a library was built by.

The caption query must be embedded by the embedder that built the 'text' index: `query_embedder` reads it from the
store; the audio query by Pengi's text tower of the model that made the audio vectors (`audio_query_embedder`). For
Pengi's own text tower they open the numpy implementation in `text_query`, which needs neither torch nor
transformers (importing those alone takes longer than a whole query should), and keep it for the process's next
queries (`embedders.kept_text_embedder`). A model given (`--model`) that did not build the library is refused
(`check_index_model`, OtherModelError): embeddings of different models cannot be compared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .checkpoint import CheckpointError
from .db import OtherModelError, StoreMismatchError
from .embedders import EmbedderSpec, TextEmbedder, TextEmbedderError, kept_text_embedder
from .index_hints import library_index_command
from .model_dir import PENGI_TEXT_PREFIX, ModelDir, ModelNotFoundError
from .releases import RELEASES

if TYPE_CHECKING:
    from .library import Library

# What a Python caller does about a library of another model (OtherModelError), in its words; a command says its
# option instead (`fixed_by`).
MODEL_FIX = "pass the library's model (its name or directory) as model=, or index the library anew with this one"


def query_embedder(library: Library, model: str | None = None, device: str = "auto") -> TextEmbedder:
    """The text embedder that built the library's 'text' index, loaded the cheapest way (see `open_text_embedder`)
    once per process (`kept_text_embedder`).

    Raises StoreMismatchError when `--model` (or the default model, for Pengi's tower) is not the one the index was
    built with.
    """
    meta = library.store.index_meta()
    if meta is None:
        from .library import EmptyLibraryError

        model_option = () if model is None else ("--model", model)  # the library built by the model asked for
        raise EmptyLibraryError(
            library.name, f"the index is empty: run `{library_index_command(library.store, *model_option)}` first"
        )
    spec = EmbedderSpec.of_embedder_id(meta.embedder.name)
    if spec is None:
        raise StoreMismatchError(
            library.name, f"the index was built with an unknown text embedder {meta.embedder.name!r}"
        )
    if spec.is_pengi:
        model_dir: ModelDir | None = _text_tower_model(library, meta.embedder.name, model)
    else:  # the query is embedded without the model, but a model named must be the one whose captions it matches
        model_dir = None
        if model is not None:
            check_index_model(library, ModelDir.resolve(model))
    embedder = kept_text_embedder(spec, model_dir, device)
    if embedder.dim != meta.embedder.dim:
        raise StoreMismatchError(
            library.name, f"{embedder.id} makes {embedder.dim}-d vectors, the index holds {meta.embedder.dim}-d ones"
        )
    return embedder


def _text_tower_model(library: Library, embedder_id: str, model: str | None) -> ModelDir:
    """The model whose text tower made `embedder_id`: `--model` (or the default), else, without `--model`, an
    installed model with the index's identity. Without either, a library built by a released model asks for it
    (ModelNotFoundError: the first-use download); one built by another model names that model."""
    missing: ModelNotFoundError | None = None
    try:
        model_dir: ModelDir | None = ModelDir.resolve(model)
    except ModelNotFoundError as err:
        if model is not None:
            raise
        model_dir, missing = None, err
    if model is None and (model_dir is None or model_dir.text_embedder_id != embedder_id):
        found = (candidate for candidate in ModelDir.installed() if candidate.text_embedder_id == embedder_id)
        model_dir = next(found, model_dir)
    builder = embedder_id.removeprefix(PENGI_TEXT_PREFIX)  # the model's identity, `name@fingerprint`
    if model_dir is None:
        if missing is not None and builder.partition("@")[0] in RELEASES:
            raise missing  # the released model can be fetched (the first-use download)
        raise OtherModelError(
            library.name, f"the index was built with model {builder}, which is not installed here", MODEL_FIX
        )
    if model_dir.text_embedder_id != embedder_id:
        raise OtherModelError(
            library.name,
            f"the index was built with the text embedder of model {builder}, but {model_dir.path} is "
            f"{model_dir.identity}",
            MODEL_FIX,
        )
    return model_dir


def audio_query_embedder(
    library: Library, model: str | None = None, device: str = "auto", *, caption_embedder: TextEmbedder | None = None
) -> TextEmbedder:
    """Pengi's text tower of the model that made the library's audio vectors (for `Rank.audio` and `Rank.hybrid`).

    When that tower also embedded the captions, `caption_embedder` (the library's, if already open) is it.
    Raises TextEmbedderError when the model has no text tower (base_no_text_enc).
    """
    meta = library.store.index_meta()
    if meta is not None and meta.embedder.name.startswith(PENGI_TEXT_PREFIX):
        if caption_embedder is not None and caption_embedder.id == meta.embedder.name:
            return caption_embedder
        return query_embedder(library, model, device)
    model_dir = _audio_model(library, model)
    if not model_dir.has_text_encoder:
        raise TextEmbedderError(
            "--rank",
            f"the index's model {model_dir.identity} has no text tower (base_no_text_enc), so a text query can only "
            "be matched with captions: use --rank caption",
        )
    return kept_text_embedder(EmbedderSpec(), model_dir, device)


def _audio_model(library: Library, model: str | None) -> ModelDir:
    """The model that made the audio vectors: `--model` (or the default), else an installed one with its weights."""
    if model is None and (installed := installed_builder(library)) is not None:
        return installed
    model_dir = ModelDir.resolve(model)
    check_index_model(library, model_dir)
    return model_dir


def installed_builder(library: Library) -> ModelDir | None:
    """The installed model whose weights made the library's audio vectors: the default model when it did (no other
    is read then), else the first installed one that did (a copy under another name); None when none did."""
    try:
        default: ModelDir | None = ModelDir.resolve()
    except ModelNotFoundError:  # no default installed: another installed model may still be the library's
        default = None
    if default is not None and built_by(library, default):
        return default
    return next((found for found in ModelDir.installed() if built_by(library, found)), None)


def audio_tower_known(library: Library, model: str | None) -> bool:
    """Whether the model that made the audio vectors has a text tower (nothing is loaded to find out)."""
    meta = library.store.index_meta()
    if meta is not None and meta.embedder.name.startswith(PENGI_TEXT_PREFIX):
        return True
    try:
        return _audio_model(library, model).has_text_encoder
    except (StoreMismatchError, CheckpointError):  # not installed here, or another model
        return False


def built_by(library: Library, model_dir: ModelDir) -> bool:
    """Whether the library's texts and audio vectors were made by the model in `model_dir` (same weights)."""
    meta = library.store.index_meta()
    return meta is not None and meta.model.fingerprint == model_dir.fingerprint


def check_index_model(library: Library, model_dir: ModelDir) -> None:
    """Raise StoreMismatchError unless the model in `model_dir` built the library's audio vectors."""
    if not built_by(library, model_dir):
        meta = library.store.index_meta()
        raise OtherModelError(
            library.name,
            f"the index was built with {meta.model if meta else 'no model'}, not with the model at {model_dir.path} "
            "(audio embeddings of different models cannot be compared)",
            MODEL_FIX,
        )
