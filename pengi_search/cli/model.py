"""`model fetch`, `model import`, `model info`: getting Pengi's weights and tokenizers onto this machine."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from ..choices import Choice
from ..pathnames import shown
from ..releases import RELEASES
from .common import (
    ModelOption,
    QuietOption,
    UsageError,
    handle_errors,
    json_option,
    out_console,
    print_json,
    warn,
)
from .first_use import refuse_blocked_install, report_installed
from .help_text import App

# The released checkpoints `model fetch` can download, as a choice; `releases.RELEASES` is where they are listed.
ReleaseName = Choice("ReleaseName", [(name, name) for name in RELEASES], module=__name__)

app = App(help="Download, import and inspect Pengi models.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="JSON model configuration, for checkpoints not of the released sizes."),
]
TokenizerDirOption = Annotated[
    list[str] | None,
    typer.Option("--tokenizer-dir", help="KIND=PATH of a local tokenizer (gpt2=..., clip=...), for offline use."),
]


InfoJsonOption = json_option("an object: the model's name, path, variant, weights, tokenizers and config.")


def _read_config(path: Path | None):
    if path is None:
        return None
    import json

    from ..config import PengiConfig
    from ..text_files import read_text

    try:
        data = json.loads(read_text(path, UsageError))
    except json.JSONDecodeError as exc:
        raise UsageError(path, f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if isinstance(data, dict) and "config" in data:  # a model directory's config.json, taken as it is
        data = data["config"]
    try:
        return PengiConfig.from_dict(data)
    except ValueError as exc:
        raise UsageError(path, str(exc)) from None


def _given_url(value: str) -> str:
    """The parser of `--url`: an empty one is refused. `fetch_release` takes no URL as "the release's own", so
    `--url "$UNSET"` downloaded from Zenodo, the one thing a user giving a mirror or a local file wants to avoid."""
    if not value:
        raise typer.BadParameter("the URL is empty; give an http, https or file URL, or a path")
    return value


def _tokenizer_sources(items: list[str] | None) -> dict[str, str]:
    sources = {}
    for item in items or []:
        kind, separator, path = item.partition("=")
        if not separator or kind not in ("gpt2", "clip") or not path:
            raise UsageError("--tokenizer-dir", f"{item!r} is not KIND=PATH with KIND gpt2 or clip")
        sources[kind] = path
    return sources


@contextlib.contextmanager
def _config_hint(config: Path | None) -> Iterator[None]:
    """Say what to do about a checkpoint whose tensors are not the model's: name its configuration."""
    from ..checkpoint import CheckpointError, CheckpointMismatchError

    try:
        yield
    except CheckpointMismatchError as err:
        hint = (
            f"is {shown(os.fspath(config))} this checkpoint's configuration?"
            if config
            else "for a checkpoint of other sizes than the released ones, pass its configuration with --config FILE"
        )
        raise CheckpointError(err.where, f"{err.reason}. {hint}") from err


@app.command("fetch")
@handle_errors
def fetch(
    name: Annotated[
        ReleaseName, typer.Argument(help="The release: base has a CLIP text encoder, base_no_text_enc none.")
    ] = ReleaseName.base,  # type: ignore[attr-defined]
    url: Annotated[
        str | None,
        typer.Option("--url", help="Download from this mirror or local file instead.", parser=_given_url),
    ] = None,
    tokenizer_dir: TokenizerDirOption = None,
    config: ConfigOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Start over: discard what an earlier fetch downloaded, even if intact.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Download a released Pengi checkpoint (Zenodo record 8387083) and its tokenizers, and install them.

    An interrupted download resumes where it stopped; the file's URL, size and sha256 are recorded. A later fetch
    reuses it only for the same URL and while its sha256 still matches; a file that fails that check is moved
    aside (to NAME.pth.invalid) and downloaded again.

    Example: pengi-search model fetch base
    """
    from ..models import fetch_model

    with _config_hint(config):
        target, missing = fetch_model(
            name,
            url=url,
            tokenizer_sources=_tokenizer_sources(tokenizer_dir),
            config=_read_config(config),
            progress=not quiet,
            force=force,
            notify=warn,
        )
    report_installed(target, missing)


@app.command("import")
@handle_errors
def import_(
    path: Annotated[Path, typer.Argument(help="A checkpoint in the released format (.pth), obtained elsewhere.")],
    name: Annotated[str | None, typer.Option("--name", help="Name to install it under (default: file name).")] = None,
    tokenizer_dir: TokenizerDirOption = None,
    no_tokenizers: Annotated[
        bool,
        typer.Option("--no-tokenizers", help="Install even without the tokenizers (the model cannot run until added)."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Convert a Pengi checkpoint file into an installed model directory (safetensors + config + tokenizers).

    The tokenizers come from --tokenizer-dir, else from the Hugging Face cache; without them nothing is installed
    (exit 1), unless --no-tokenizers.

    Example: pengi-search model import ~/Downloads/base.pth
    """
    from ..models import import_checkpoint

    sources: dict[str, Path | str] = {kind: Path(p) for kind, p in _tokenizer_sources(tokenizer_dir).items()}
    with _config_hint(config):
        target, missing = import_checkpoint(
            path,
            name or path.stem,
            config=_read_config(config),
            tokenizer_sources=sources,
            require_tokenizers=not no_tokenizers,
        )
    report_installed(target, missing)


@app.command("info")
@handle_errors
def info(model: ModelOption = None, json_output: InfoJsonOption = False) -> None:
    """Show which model commands will use, where it is, and what it holds."""
    from ..model_dir import ModelDir, ModelNotFoundError
    from ..models import model_info

    try:
        found = ModelDir.resolve(model)
    except ModelNotFoundError:
        refuse_blocked_install(model)  # a data folder that is a file: said as such, not "run model fetch"
        raise
    details = model_info(found)
    if json_output:
        print_json(details)
        return
    tokenizers = ", ".join(f"{k} {'yes' if ok else 'MISSING'}" for k, ok in details["tokenizers"].items())
    out_console.print(Text.assemble((shown(details["name"]), "bold"), f" ({details['variant']})"), soft_wrap=True)
    for label, value in (
        ("path", shown(details["path"])),
        ("weights", f"{details['weights_bytes'] / 2**20:.1f} MiB"),
        ("sha256", details["weights_sha256"]),
        ("tokenizers", tokenizers),
    ):
        out_console.print(f"  {label:<11}{value}", markup=False, soft_wrap=True)
