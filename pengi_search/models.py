"""Model management: fetching the released checkpoints, importing files, converting them to model directories.

A model directory holds `config.json`, `model.safetensors` and `tokenizer/{gpt2,clip}` (see `model_dir`, which also
finds the one a command uses); installed ones live in `<data dir>/models/<name>`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .checkpoint import CheckpointError
from .config import PengiConfig
from .download import TOKENIZERS, DownloadError, fetch_release, fetch_tokenizer
from .hashing import file_sha256
from .model_dir import ModelDir
from .paths import models_dir
from .tokenization import TOKENIZER_DIR, TokenizerNotFoundError, load_tokenizer


def _install_tokenizers(target: Path, sources: dict[str, Path | str], needed: tuple[str, ...]) -> list[str]:
    """Copy tokenizers into `target/tokenizer/<kind>`; returns the kinds that could not be found."""
    missing = []
    for kind in needed:
        source = sources.get(kind)
        try:
            if source is None:  # from the local Hugging Face cache
                load_tokenizer(kind, None).save_pretrained(target / TOKENIZER_DIR / kind)
            else:
                fetch_tokenizer(str(source), target / TOKENIZER_DIR / kind)
        except (TokenizerNotFoundError, DownloadError):
            missing.append(kind)
    return missing


def import_checkpoint(
    checkpoint: Path,
    name: str,
    *,
    config: PengiConfig | None = None,
    tokenizer_sources: dict[str, Path | str] | None = None,
    root: Path | None = None,
) -> tuple[Path, list[str]]:
    """Convert a released-format `.pth` into the model directory `<root>/<name>`, atomically.

    Returns the directory and the tokenizers that could not be installed (the model then needs them before use).
    """
    from .model import Pengi  # torch loads only when a model is

    if not checkpoint.is_file():  # from_pretrained would also take a model directory or an installed name
        raise CheckpointError(checkpoint, "no such checkpoint file (import takes a released-format .pth file)")
    root = root or models_dir()
    target = root / name
    staging = root / f".{name}.importing"
    shutil.rmtree(staging, ignore_errors=True)
    model = Pengi.from_pretrained(checkpoint, config)
    extra = {"name": name, "source": str(checkpoint), "source_sha256": file_sha256(checkpoint)}
    model.save_pretrained(staging, extra=extra)
    needed = ("gpt2", "clip") if model.cfg.use_text_encoder else ("gpt2",)
    missing = _install_tokenizers(staging, tokenizer_sources or {}, needed)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target, missing


def fetch_model(
    name: str,
    *,
    url: str | None = None,
    tokenizer_sources: dict[str, str] | None = None,
    config: PengiConfig | None = None,
    progress: bool = True,
    root: Path | None = None,
) -> tuple[Path, list[str]]:
    """Download release `name` (resumable) and install it as a model directory."""
    root = root or models_dir()
    fetched = fetch_release(
        name, root / "downloads" / name, progress=progress, checkpoint_url=url, tokenizer_sources=tokenizer_sources
    )
    sources: dict[str, Path | str] = dict(fetched.tokenizers)
    return import_checkpoint(fetched.checkpoint.path, name, config=config, tokenizer_sources=sources, root=root)


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
