"""Model management: fetching the released checkpoints, importing files, converting them to model directories.

A model directory holds `config.json`, `model.safetensors` and `tokenizer/{gpt2,clip}`; installed ones live in
`<data dir>/models/<name>`. Commands find a model through `--model` (a name or a path), else `PENGI_SEARCH_MODEL`,
else the first installed of `base`, `base_no_text_enc`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pengi_search.errors import PengiSearchError

from .checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_released_checkpoint,
    read_model_config,
    save_model_dir,
)
from .config import PengiConfig
from .download import RELEASES, TOKENIZERS, DownloadError, fetch_release, fetch_tokenizer
from .hashing import file_sha256
from .paths import models_dir
from .tokenization import TOKENIZER_DIR, TokenizerNotFoundError, load_tokenizer

MODEL_ENV = "PENGI_SEARCH_MODEL"
FETCH_HINT = "run `pengi-search model fetch base` (or `pengi-search model import PATH`)"


class ModelNotFoundError(PengiSearchError):
    """No model where one was named, or none installed."""


def is_model_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def resolve_model_dir(spec: str | None = None) -> Path:
    """The model directory that `--model spec` (or the environment, or the installed defaults) names."""
    spec = spec or os.environ.get(MODEL_ENV)
    if spec:
        for candidate in (Path(spec).expanduser(), models_dir() / spec):
            if is_model_dir(candidate):
                return candidate
        raise ModelNotFoundError("", f"no Pengi model at {spec!r}: {FETCH_HINT}")
    for name in RELEASES:
        if is_model_dir(models_dir() / name):
            return models_dir() / name
    raise ModelNotFoundError(models_dir(), f"no Pengi model is installed here: {FETCH_HINT}")


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
    root = root or models_dir()
    target = root / name
    staging = root / f".{name}.importing"
    shutil.rmtree(staging, ignore_errors=True)
    model = load_released_checkpoint(checkpoint, config)
    extra = {"name": name, "source": str(checkpoint), "source_sha256": file_sha256(checkpoint)}
    save_model_dir(model, staging, extra=extra)
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


def model_info(model_dir: Path) -> dict:
    cfg, meta = read_model_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    tokenizers = {kind: (model_dir / TOKENIZER_DIR / kind).is_dir() for kind in TOKENIZERS}
    return {
        "name": meta.get("name", model_dir.name),
        "path": str(model_dir),
        "variant": "base" if cfg.use_text_encoder else "base_no_text_enc",
        "weights_bytes": weights.stat().st_size,
        "weights_sha256": meta.get("weights_sha256"),
        "source": meta.get("source"),
        "tokenizers": tokenizers,
        "config": json.loads(json.dumps(cfg.to_dict())),
    }
