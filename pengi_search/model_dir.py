"""A model directory, read once and passed down: `config.json`, `model.safetensors` and `tokenizer/{gpt2,clip}`.

Commands name a model with `--model` (a directory or the name of an installed model), else `PENGI_SEARCH_MODEL`,
else the first installed of `base`, `base_no_text_enc`; installed models live in `<data dir>/models/<name>`.
`ModelDir.resolve` finds it and reads its configuration; everything after that (loading the weights, the
tokenizers, the identity the index records) asks the object instead of the disk. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError
from .config import PengiConfig
from .errors import UsageError
from .pathnames import shown
from .paths import home_expanded, models_dir
from .releases import DEFAULT_RELEASE, RELEASES
from .tokenization import TOKENIZER_DIR, Tokenizers

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
MODEL_ENV = "PENGI_SEARCH_MODEL"
FETCH_HINT = "run `pengi-search model fetch base` (or `pengi-search model import PATH`)"
# The id under which the store records vectors of a model's own text tower: `pengi-text:<identity>`.
PENGI_TEXT_PREFIX = "pengi-text:"


class ModelNotFoundError(CheckpointError):
    """No model where one was named, or none installed."""


class MissingModelFolderError(ModelNotFoundError, UsageError):
    """`--model` names a folder by its path, and there is no such folder: bad usage, as any path that is not there
    (exit 2), where a name that is not installed is a model to install (exit 1)."""


def is_model_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _candidates(spec: str) -> tuple[Path, Path]:
    """Where `--model spec` may be: a directory, or the name of an installed model."""
    return Path(spec), models_dir() / spec


def _named(spec: str | None) -> str | None:
    """What names the model: `spec` as given (`--model`, which the shell expanded), else `$PENGI_SEARCH_MODEL` with
    a leading `~` expanded (no shell did it), else None."""
    named = os.environ.get(MODEL_ENV)
    return spec or (os.fspath(home_expanded(named)) if named else None)


def release_to_fetch(spec: str | None = None) -> str | None:
    """The release to fetch for `ModelDir.resolve(spec)` to find a model, when it finds none now.

    None when a model is found, and when `spec` names something no release provides (a folder, an imported model).
    """
    spec = _named(spec)
    if spec:
        found = any(is_model_dir(candidate) for candidate in _candidates(spec))
        return spec if not found and spec in RELEASES else None
    installed = any(is_model_dir(models_dir() / name) for name in RELEASES)
    return None if installed else DEFAULT_RELEASE


def named_places(spec: str | None = None) -> tuple[Path, ...]:
    """Where the model that `--model spec` (else `$PENGI_SEARCH_MODEL`) names may be, model directory or not;
    empty when neither names one, and the installed defaults apply."""
    named = _named(spec)
    return _candidates(named) if named else ()


def model_path(spec: str | None = None) -> Path:
    """The directory of the model that `--model spec` (or the environment, or the installed defaults) names: the
    one place every command finds its model (through `ModelDir.resolve`), and `doctor` the model it checks."""
    spec = _named(spec)
    if spec:
        for candidate in _candidates(spec):
            if is_model_dir(candidate):
                return candidate
        raise _not_found(spec)
    for name in RELEASES:
        if is_model_dir(models_dir() / name):
            return models_dir() / name
    raise ModelNotFoundError(models_dir(), f"no Pengi model is installed here: {FETCH_HINT}")


def installed_names() -> list[str]:
    """The names of the installed models, sorted."""
    try:
        return sorted(path.name for path in models_dir().iterdir() if is_model_dir(path))
    except OSError:  # no data folder yet (or one that cannot be listed): nothing is installed there
        return []


def _not_found(spec: str) -> ModelNotFoundError:
    """Why `spec` names no model, with what it may have meant. A path (it has a separator, or begins with `.` or
    `~`) is a folder, said as every missing path is; a bare name is an installed model's, unless a folder of that
    name is here."""
    place = Path(spec)
    if place.exists() and (_looks_like_path(spec) or spec not in RELEASES):
        return ModelNotFoundError(spec, _lacks(spec, place))
    if _looks_like_path(spec):
        return MissingModelFolderError(spec, "no such folder" + _did_you_mean(spec, place))
    return ModelNotFoundError("", _not_installed(spec))


def _looks_like_path(spec: str) -> bool:
    separators = {os.sep, os.altsep} - {None}
    return spec.startswith((".", "~")) or any(separator in spec for separator in separators)


def _lacks(spec: str, place: Path) -> str:
    """Why the folder (or file) at `place`, which is there, is no model directory; a file, with the command that
    installs it if it is a checkpoint (the file as `spec` gave it)."""
    if not place.is_dir():
        return (
            f"a file, not a model folder (`pengi-search model import {shlex.quote(spec)}` installs a checkpoint file)"
        )
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (place / name).is_file()]
    return f"not a model folder: it has no {' and no '.join(missing)}"


def _did_you_mean(spec: str, place: Path) -> str:
    """`; did you mean X?` for a missing folder whose name is close to a folder beside it (spelt as `spec` spells
    its parent) or to an installed model's; empty when nothing is close."""
    typed = spec.rstrip("/" + os.sep) or spec
    name = Path(typed).name
    try:
        beside = [entry.name for entry in place.parent.iterdir() if entry.is_dir()]
    except OSError:  # the parent is missing too, or cannot be listed
        beside = []
    if near := difflib.get_close_matches(name, beside, n=1):
        return f"; did you mean {typed[: len(typed) - len(name)] + near[0]}?"
    if near := difflib.get_close_matches(name, installed_names(), n=1):
        return f"; did you mean the installed model {near[0]}?"
    return ""


def _not_installed(name: str) -> str:
    """Why no model is installed as `name`, with how to install it or the installed name it may be a typo of."""
    missing = f"no Pengi model {shown(name)} is installed"  # bare, as every name and path: escaped, not quoted
    if name in RELEASES:
        return f"{missing}: run `pengi-search model fetch {name}`"
    installed = installed_names()
    if near := difflib.get_close_matches(name, [*installed, *RELEASES], n=1):
        fetch = "" if near[0] in installed else f" (`pengi-search model fetch {near[0]}` installs it)"
        return f"{missing}; did you mean {near[0]}?{fetch}"
    if installed:
        return f"{missing} (installed: {', '.join(installed)})"
    return f"{missing}: {FETCH_HINT}"


def install_command(name: str) -> str:
    """The command that installs the model named `name`: a release is fetched; another is imported from its
    checkpoint, under that name (part of the identity its text vectors are recorded under: `ModelDir.identity`)."""
    if name in RELEASES:
        return f"pengi-search model fetch {name}"
    return f"pengi-search model import CHECKPOINT --name {shlex.quote(shown(name))}"


@dataclass(frozen=True, eq=False)
class ModelDir:
    """One model directory: where it is, its configuration, its identity, its tokenizers and default embedder."""

    path: Path
    config: PengiConfig
    meta: Mapping[str, Any]  # all of config.json: format_version, config, weights_sha256, name, source, ...

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ModelDir:
        """The configuration of the model directory at `path` (its weights are read only when loaded)."""
        path = Path(path)
        config_file = path / CONFIG_FILE
        try:
            meta = json.loads(config_file.read_text())
            return cls(path, PengiConfig.from_dict(meta["config"]), meta)
        except FileNotFoundError:
            raise CheckpointError(path, f"not a model directory (no {CONFIG_FILE})") from None
        except OSError as err:  # no permission, a folder in its place: said as a model's fault, not a crash
            raise CheckpointError(config_file, f"cannot be read ({err.strerror})") from None
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(config_file, f"unreadable model configuration ({err})") from err

    @classmethod
    def resolve(cls, spec: str | None = None) -> ModelDir:
        """The model that `--model spec` (or the environment, or the installed defaults) names (`model_path`)."""
        return cls.read(model_path(spec))

    @classmethod
    def installed(cls) -> Iterator[ModelDir]:
        """Every installed model, by name; each is read only when the iteration reaches it."""
        yield from (cls.read(models_dir() / name) for name in installed_names())

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @property
    def fingerprint(self) -> str | None:
        """The sha256 of `model.safetensors`, as written when the directory was made."""
        return self.meta.get("weights_sha256")

    @property
    def identity(self) -> str:
        """A short name that changes when the weights change: `<name>@<first 12 hex digits of their sha256>`."""
        return f"{self.name}@{(self.fingerprint or 'unknown')[:12]}"

    def same_model(self, other: ModelDir) -> bool:
        """Whether `other` holds this model: the same directory, or a copy with the same weights (by the sha256
        both recorded; a directory that recorded none matches only itself)."""
        if self.path.resolve() == other.path.resolve():
            return True
        return self.fingerprint is not None and self.fingerprint == other.fingerprint

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def has_text_encoder(self) -> bool:
        return self.config.text_encoder is not None

    @property
    def variant(self) -> str:
        return "base" if self.has_text_encoder else "base_no_text_enc"

    @property
    def text_embedder_id(self) -> str | None:
        """The text embedder this model provides by default, its own CLIP tower; None without a text encoder."""
        return PENGI_TEXT_PREFIX + self.identity if self.has_text_encoder else None

    @property
    def trained_tasks(self) -> tuple[str, ...] | None:
        """The tasks of the training data of a model that `pengi-search train` wrote (its manifests' `task`s, as it
        recorded them); None for a released model, or one trained before they were recorded."""
        tasks = (self.meta.get("trained") or {}).get("tasks")
        return tuple(tasks) if tasks else None

    def tokenizer_dir(self, kind: str) -> Path:
        """Where the `kind` ("gpt2" or "clip") tokenizer is installed, if it is."""
        return self.path / TOKENIZER_DIR / kind

    @cached_property
    def tokenizers(self) -> Tokenizers:
        """The model's tokenizers, loaded on first use (from the directory, else the Hugging Face cache)."""
        return Tokenizers.load(self.config, self.path)
