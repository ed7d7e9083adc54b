"""Errors cross process boundaries (decode, DataLoader and serve workers): each arrives whole, as it was raised."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest

import indexer
import pengi_search
import trainer
from pengi_search.download import DownloadError
from pengi_search.errors import OptionError, PengiSearchError
from pengi_search.serve.errors import InvalidParameter, RequestError
from trainer.data import ManifestError


def _every_module() -> None:
    """Import every module of the project, so that every error class it defines is there to find."""
    for package in (pengi_search, indexer, trainer):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not module.name.endswith("__main__"):  # running it is what importing it does
                importlib.import_module(module.name)


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _project_errors() -> list[type[PengiSearchError]]:
    _every_module()
    names = (pengi_search.__name__, indexer.__name__, trainer.__name__)
    found = {cls for cls in _subclasses(PengiSearchError) if cls.__module__.partition(".")[0] in names}
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def _made_with_its_own_parameters(cls: type[PengiSearchError]) -> PengiSearchError:
    """An instance of `cls` from its constructor's required parameters, each given a string naming it."""
    parameters = list(inspect.signature(cls).parameters.values())
    required = [p for p in parameters if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    positional = [f"<{p.name}>" for p in required if p.kind is not p.KEYWORD_ONLY]
    keywords = {p.name: f"<{p.name}>" for p in required if p.kind is p.KEYWORD_ONLY}
    return cls(*positional, **keywords)


def _assert_round_trip(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args and vars(copy) == vars(error)  # every attribute too: a status, a row


@pytest.mark.parametrize("cls", _project_errors(), ids=lambda cls: cls.__qualname__)
def test_every_error_class_pickles_with_its_message_and_attributes(cls: type[PengiSearchError]) -> None:
    """However its constructor's parameters differ from the base's (where, reason)."""
    _assert_round_trip(_made_with_its_own_parameters(cls))


@pytest.mark.parametrize(
    "error",
    [
        DownloadError("https://zenodo.org/base.pth", Path("/models/base.pth"), "HTTP 503", unreachable=True),
        RequestError("q", "too long", HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
        InvalidParameter("k", "must be at least 1", where="clip.wav"),
        ManifestError(Path("train.jsonl"), "no audio file", row=3),
        OptionError("min_score", "{value} is above {max_score}", value="2"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_what_an_error_was_given_by_keyword_survives_pickling(error: Exception) -> None:
    _assert_round_trip(error)
