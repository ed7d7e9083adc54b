"""Model management: fetching the released checkpoints, importing files, converting them to model directories.

A model directory holds `config.json`, `model.safetensors` and `tokenizer/{gpt2,clip}` (see `model_dir`, which also
finds the one a command uses); installed ones live in `<data dir>/models/<name>`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from .checkpoint import CheckpointError, CheckpointMismatchError
from .config import PengiConfig
from .download import TOKENIZERS, DownloadError, Notify, fetch_release, fetch_tokenizer, set_aside
from .errors import refuse_unusable_file
from .hashing import file_sha256
from .model_dir import ModelDir
from .paths import made_folder, models_dir
from .tokenization import TOKENIZER_DIR, TokenizerNotFoundError, load_tokenizer

log = logging.getLogger(__name__)


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
