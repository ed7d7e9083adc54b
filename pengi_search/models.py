"""Model management: fetching the released checkpoints, importing files, converting them to model directories.

A model directory holds `config.json`, `model.safetensors` and `tokenizer/{gpt2,clip}` (see `model_dir`, which also
finds the one a command uses); installed ones live in `<data dir>/models/<name>`. A release (`releases`) is first
downloaded into `<data dir>/models/downloads/<name>` (`fetch_release`, through `download`, which makes it resumable
and verified), then converted as an imported file is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import CheckpointError, CheckpointMismatchError
from .config import PengiConfig
from .download import (
    DownloadError,
    DownloadResult,
    discard_download,
    download,
    other_source,
    refuse_unusable_source,
    set_aside,
    verify_download,
)
from .errors import first_line, refuse_unusable_file
from .hashing import file_sha256
from .hub import cache_only, hub_cache, is_hub_name, quiet_hub, why_not_downloadable
from .messages import Notify
from .model_dir import ModelDir
from .paths import made_folder, models_dir
from .releases import RELEASES, TOKENIZERS
from .tokenization import TOKENIZER_DIR, TokenizerNotFoundError, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# A release's tokenizers are fetched into <download folder>/tokenizers/<key> (a model directory's are in `tokenizer`).
DOWNLOADED_TOKENIZERS = "tokenizers"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchedRelease:
    """What `fetch_release` left on disk: the checkpoint as downloaded, and the folder of each tokenizer."""

    checkpoint: DownloadResult
    tokenizers: dict[str, Path] = field(default_factory=dict)  # key of TOKENIZERS -> saved folder


def _needed_tokenizers(config: PengiConfig) -> dict[str, int]:
    """The tokenizers a model of `config` runs with, and the vocabulary size each must fit in."""
    needed = {"gpt2": config.decoder.vocab_size}
    if config.text_encoder is not None:
        needed["clip"] = config.text_encoder.vocab_size
    return needed


def _install_tokenizers(target: Path, sources: dict[str, Path | str], config: PengiConfig) -> dict[str, str]:
    """Copy the tokenizers into `target/tokenizer/<kind>`; returns, for each one that is missing, why.

    A tokenizer with more tokens than the model's vocabulary would feed it ids it has no embedding for: it is
    not installed.
    """
    problems = {}
    for kind, vocab_size in _needed_tokenizers(config).items():
        source = sources.get(kind)
        folder = target / TOKENIZER_DIR / kind
        try:
            if source is None:  # from the local Hugging Face cache
                load_tokenizer(kind, None).save_pretrained(folder)
            else:
                fetch_tokenizer(str(source), folder)
        except TokenizerNotFoundError:
            problems[kind] = "not given with --tokenizer-dir and not in the Hugging Face cache"
            continue
        except DownloadError as err:
            problems[kind] = err.reason
            continue
        size = len(load_tokenizer(kind, target))
        if size > vocab_size:
            shutil.rmtree(folder)
            problems[kind] = f"{source or TOKENIZERS[kind]} has {size} tokens, the model only {vocab_size}"
    return problems


def import_checkpoint(
    checkpoint: Path,
    name: str,
    *,
    config: PengiConfig | None = None,
    tokenizer_sources: dict[str, Path | str] | None = None,
    root: Path | None = None,
    require_tokenizers: bool = True,
) -> tuple[Path, list[str]]:
    """Convert a released-format `.pth` into the model directory `<root>/<name>`, atomically.

    Nothing is installed when a tokenizer the model needs is missing or unusable (TokenizerNotFoundError), unless
    `require_tokenizers` is False: then the directory and the tokenizers still missing are returned (the model
    needs them before use).
    """
    from .model import Pengi  # torch loads only when a model is

    # from_pretrained would also take a model directory or an installed name
    refuse_unusable_file(checkpoint, in_folder="import takes a released-format .pth file")
    root = made_folder(root or models_dir())  # before the conversion: a folder it cannot write wastes none
    target = root / name
    staging = root / f".{name}.importing"
    shutil.rmtree(staging, ignore_errors=True)
    model = Pengi.from_pretrained(checkpoint, config)
    extra = {"name": name, "source": str(checkpoint), "source_sha256": file_sha256(checkpoint)}
    model.save_pretrained(staging, extra=extra)
    problems = _install_tokenizers(staging, tokenizer_sources or {}, model.cfg)
    if problems and require_tokenizers:
        shutil.rmtree(staging, ignore_errors=True)
        kind, reason = next(iter(problems.items()))
        raise TokenizerNotFoundError(
            checkpoint,
            f"no usable {kind} tokenizer ({reason}): pass --tokenizer-dir {kind}=PATH, "
            "or --no-tokenizers to install the model without it",
        )
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target, list(problems)


def fetch_model(
    name: str,
    *,
    url: str | None = None,
    tokenizer_sources: dict[str, str] | None = None,
    config: PengiConfig | None = None,
    progress: bool = True,
    force: bool = False,
    notify: Notify = log.warning,
    root: Path | None = None,
) -> tuple[Path, list[str]]:
    """Download release `name` (resumable, see `fetch_release`) and install it as a model directory.

    A download that is not a checkpoint at all (say an error page a mirror served) is moved aside, so that the
    next fetch downloads again instead of converting the same file.
    """
    root = root or models_dir()
    fetched = fetch_release(
        name,
        root / "downloads" / name,
        progress=progress,
        force=force,
        checkpoint_url=url,
        tokenizer_sources=tokenizer_sources,
        notify=notify,
    )
    sources: dict[str, Path | str] = dict(fetched.tokenizers)
    try:
        return import_checkpoint(fetched.checkpoint.path, name, config=config, tokenizer_sources=sources, root=root)
    except CheckpointMismatchError:
        raise  # a checkpoint, but of other sizes: the file is fine, the configuration is not
    except CheckpointError as err:
        aside = set_aside(fetched.checkpoint.path)
        raise CheckpointError(
            err.where, f"{err.reason}; moved it aside to {aside.name}: check the URL and fetch again"
        ) from err


def fetch_release(
    name: str,
    directory: Path,
    *,
    progress: bool = True,
    force: bool = False,
    checkpoint_url: str | None = None,
    tokenizer_sources: Mapping[str, str] | None = None,
    notify: Notify = log.warning,
) -> FetchedRelease:
    """Fetch release `name` into `directory`: `<filename>`, and `tokenizers/<key>/` for each tokenizer it uses.

    A checkpoint already there is kept when it came from the same URL and still has the size and sha256 recorded
    when it was downloaded; one that fails that check is moved aside (`notify` says so) and fetched again. `force`
    starts over: the files, their records and any partial download are discarded. `checkpoint_url` replaces the
    Zenodo URL (a mirror, or a file already downloaded) and `tokenizer_sources` the hub names (say local folders).
    """
    release = RELEASES.get(name)
    directory = Path(directory)
    if release is None:
        raise DownloadError(name, directory, f"unknown release; known: {', '.join(RELEASES)}")
    dest = directory / release.filename
    url = checkpoint_url or release.url
    refuse_unusable_source(url)
    made_folder(directory)  # said now, in the data folder's words, not once the download has nowhere to go
    if force:
        discard_download(dest)
    checkpoint = _reusable(dest, url, notify) or _download_release(name, url, dest, progress)
    sources = {**TOKENIZERS, **(tokenizer_sources or {})}
    tokenizers = {}
    for key in release.tokenizers:
        target = directory / DOWNLOADED_TOKENIZERS / key
        if force or not (target / "tokenizer_config.json").is_file():
            fetch_tokenizer(sources[key], target)
        tokenizers[key] = target
    return FetchedRelease(checkpoint, tokenizers)


def _download_release(name: str, url: str, dest: Path, progress: bool) -> DownloadResult:
    """`download`; where this machine cannot reach `url` (offline mode, no network, a server down), the error says
    how to install the release from a copy downloaded elsewhere."""
    try:
        return download(url, dest, progress=progress)
    except DownloadError as exc:
        if not exc.unreachable:  # a full disk, a local file that cannot be read: a copy would not help
            raise
        how = f"download it elsewhere, then `pengi-search model fetch {name} --url FILE` installs that file"
        raise DownloadError(url, dest, f"{exc.reason}; {how}", unreachable=True) from exc


def _reusable(dest: Path, url: str, notify: Notify) -> DownloadResult | None:
    """The finished download at `dest` if it came from `url` and is intact.

    A file from another URL stays until the new download replaces it; a file that fails its checksum is moved
    aside at once, so that it is neither reused nor mistaken for the start of the new download.
    """
    if not dest.exists():
        return None
    if recorded := other_source(dest, url):
        notify(f"{dest} was downloaded from {recorded}; fetching {url} instead")
        return None
    result = verify_download(dest)
    if result is None:
        aside = set_aside(dest)
        notify(
            f"{dest} failed validation (its size or sha256 is not what was recorded when it was downloaded): "
            f"moved aside to {aside.name}; downloading it again"
        )
    return result


def fetch_tokenizer(name: str, dest: Path) -> Path:
    """Save the tokenizer `name` (a local folder holding one, or a Hugging Face hub id) as files in `dest`.

    A hub id is read from the Hugging Face cache without a word to the hub; one that is not there is downloaded only
    once one short request (`hub.unanswered`) finds the hub answering, so that a hub that cannot be reached costs
    seconds and one line, not a minute and a half of retries (or a wait with no end).
    """
    dest = Path(dest)
    staging = dest.with_name(dest.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _load_tokenizer(name, dest).save_pretrained(staging)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except (OSError, ValueError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(name, dest, _tokenizer_failure(first_line(exc), dest)) from exc
    return dest


def _load_tokenizer(name: str, dest: Path) -> PreTrainedTokenizerBase:
    """The tokenizer `name`: from its folder or the Hugging Face cache, else downloaded from a hub that answers."""
    from transformers import AutoTokenizer  # heavy; imported only when a fetch is asked for

    try:
        with cache_only():
            return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError:
        if not is_hub_name(name):  # a folder that holds no tokenizer: nothing to download
            raise
    if why := why_not_downloadable(name):
        reason = f"it is not in the Hugging Face cache ({hub_cache()}) and {why}"
        raise DownloadError(name, dest, _tokenizer_failure(reason, dest), unreachable=True)
    with quiet_hub():
        return AutoTokenizer.from_pretrained(name)


def _tokenizer_failure(reason: str, dest: Path) -> str:
    """Why a tokenizer could not be fetched, with the option that gives a local copy instead."""
    return f"cannot fetch tokenizer: {reason} (--tokenizer-dir {dest.name}=PATH)"


def model_info(model_dir: ModelDir) -> dict:
    return {
        "name": model_dir.name,
        "path": str(model_dir.path),
        "variant": model_dir.variant,
        "weights_bytes": model_dir.weights.stat().st_size,
        "weights_sha256": model_dir.fingerprint,
        "source": model_dir.meta.get("source"),
        "tokenizers": {kind: model_dir.tokenizer_dir(kind).is_dir() for kind in TOKENIZERS},
        "config": json.loads(json.dumps(model_dir.config.to_dict())),
    }
