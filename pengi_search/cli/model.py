"""`model fetch`, `model import`, `model info`: getting Pengi's weights and tokenizers onto this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..choices import Choice
from ..download import RELEASES
from .common import JsonOption, ModelOption, QuietOption, err_console, handle_errors, out_console, print_json, warn

# The released checkpoints `model fetch` can download, as a choice; `download.RELEASES` is where they are listed.
ReleaseName = Choice("ReleaseName", [(name, name) for name in RELEASES], module=__name__)

app = typer.Typer(help="Download, import and inspect Pengi models.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="JSON model configuration, for checkpoints not of the released sizes."),
]


def _read_config(path: Path | None):
    if path is None:
        return None
    import json

    from ..config import PengiConfig

    data = json.loads(path.read_text())
    return PengiConfig.from_dict(data.get("config", data))


def _report(target: Path, missing: list[str]) -> None:
    err_console.print(f"installed [bold]{target}[/]")
    for kind in missing:
        warn(
            f"the {kind} tokenizer was not found; copy one into {target / 'tokenizer' / kind} "
            "(or re-run with --tokenizer-dir) before using this model"
        )


@app.command("fetch")
@handle_errors
def fetch(
    name: Annotated[
        ReleaseName, typer.Argument(help="The release: base has a CLIP text encoder, base_no_text_enc none.")
    ] = ReleaseName.base,  # type: ignore[attr-defined]
    url: Annotated[str | None, typer.Option("--url", help="Download from this mirror or local file instead.")] = None,
    tokenizer_dir: Annotated[
        list[str] | None,
        typer.Option("--tokenizer-dir", help="KIND=PATH of a local tokenizer (gpt2=..., clip=...), for offline use."),
    ] = None,
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    """Download a released Pengi checkpoint (Zenodo record 8387083) and its tokenizers, and install them.

    The download resumes where it stopped if interrupted; the file's size and sha256 are recorded.

    Example: pengi-search model fetch base
    """
    from ..models import fetch_model

    sources = dict(item.split("=", 1) for item in tokenizer_dir or [])
    target, missing = fetch_model(
        name, url=url, tokenizer_sources=sources, config=_read_config(config), progress=not quiet
    )
    _report(target, missing)


@app.command("import")
@handle_errors
def import_(
    path: Annotated[Path, typer.Argument(help="A checkpoint in the released format (.pth), obtained elsewhere.")],
    name: Annotated[str | None, typer.Option("--name", help="Name to install it under (default: file name).")] = None,
    tokenizer_dir: Annotated[
        list[str] | None, typer.Option("--tokenizer-dir", help="KIND=PATH of a local tokenizer (gpt2=..., clip=...).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Convert a Pengi checkpoint file into an installed model directory (safetensors + config + tokenizers).

    Example: pengi-search model import ~/Downloads/base.pth
    """
    from ..models import import_checkpoint

    sources = {k: Path(v) for k, v in (item.split("=", 1) for item in tokenizer_dir or [])}
    target, missing = import_checkpoint(path, name or path.stem, config=_read_config(config), tokenizer_sources=sources)
    _report(target, missing)


@app.command("info")
@handle_errors
def info(model: ModelOption = None, json_output: JsonOption = False) -> None:
    """Show which model commands will use, where it is, and what it holds."""
    from ..model_dir import ModelDir
    from ..models import model_info

    details = model_info(ModelDir.resolve(model))
    if json_output:
        print_json(details)
        return
    out_console.print(f"[bold]{details['name']}[/] ({details['variant']})")
    out_console.print(f"  path      {details['path']}")
    out_console.print(f"  weights   {details['weights_bytes'] / 2**20:.1f} MiB, sha256 {details['weights_sha256']}")
    tokenizers = ", ".join(f"{k} {'yes' if ok else 'MISSING'}" for k, ok in details["tokenizers"].items())
    out_console.print(f"  tokenizers {tokenizers}")
