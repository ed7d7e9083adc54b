"""What a server started without --model says of a library whose model is not installed here.

Without --model the server runs with the model that built the library, as the commands do, found among the
installed models (`query_embedders`). One not installed here does not keep the server from starting: files, their
players, spectrograms and waveforms, the library's statistics and "more like this" from a stored window need no
model. What needs it (a text query, embedded by the model's text tower; an uploaded clip, embedded by the model) is
refused (409) in one line that names the model and how to install it; once it is installed, it is found at the next
request.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..db import OtherModelError
from ..index_hints import other_model_fix
from ..library import Library
from ..model_dir import ModelNotFoundError, install_command

USE_ITS_MODEL = "start the server with the library's model (--model)"  # the fix of a library of another model


class LibraryModelNotInstalled(OtherModelError):
    """The model that built the library is not installed here, and the server was started without --model."""


def not_installed(library: Library, why: str = "") -> LibraryModelNotInstalled:
    """The refusal of what needs the library's model, which is not installed here (`why`: what it is needed for)."""
    meta = library.store.index_meta()
    built = "no model" if meta is None else str(meta.model)
    problem = f"the index was built with {built}, which is not installed here" + (f" ({why})" if why else "")
    fix = other_model_fix(library.store, None, USE_ITS_MODEL)
    if meta is not None:
        fix = f"install it (`{install_command(meta.model.name)}`), or {fix}"
    return LibraryModelNotInstalled(library.name, problem, fix)


@contextmanager
def refused_unless_installed(library: Library, model: str | None) -> Iterator[None]:
    """Without --model (`model` None), the library's model found missing (no installed model built it:
    OtherModelError; it is a release, and no model is installed: ModelNotFoundError) is said as `not_installed`, in
    the server's words: the core's errors name the argument `model=`, or speak of the default model only."""
    try:
        yield
    except (OtherModelError, ModelNotFoundError):
        if model is not None:
            raise
        raise not_installed(library) from None
