"""The first-use download: a command that needs a model it finds missing offers to install it, with consent.

In a terminal the person is told what would be downloaded and asked once; scripts need `--yes` or
`PENGI_SEARCH_AUTO_FETCH=1`, and offline mode never downloads (README, "Get the model").
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from ..consoles import is_a_terminal
from ..pathnames import shown
from .common import F, err_console, fail, warn

if TYPE_CHECKING:
    from ..releases import Release

AUTO_FETCH_ENV = "PENGI_SEARCH_AUTO_FETCH"
YesOption = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="No model installed: download it without asking \\[env: PENGI_SEARCH_AUTO_FETCH=1]."
    ),
]


def fetches_model(command: F) -> F:
    """Give a command `--yes` and the first-use download: a model it needs but finds missing is offered.

    The offer comes when the command finds the model missing, so that mistakes in its inputs are reported first
    and commands that need no model for the library at hand (`query` on a sentence-transformers index) never ask.
    After the download the command runs again from the start: what it did before it needed the model (checking
    its inputs, scanning folders; `index` records that stopped run as failed, having indexed nothing) is repeated.
    """
    signature = inspect.signature(command, eval_str=True)
    yes = inspect.Parameter("yes", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=YesOption)
    parameters = [*signature.parameters.values(), yes]

    @functools.wraps(command)
    def wrapper(*args: Any, yes: bool = False, **kwargs: Any) -> Any:
        from ..model_dir import ModelNotFoundError, release_to_fetch
        from ..torchrun_env import process_count

        try:
            return command(*args, **kwargs)
        except ModelNotFoundError:
            # Never under torchrun, where every process would download it at once (or the machine's first alone,
            # the others having ended as they leave failures to it, `torchrun_env`): said, with the fetch command.
            if release_to_fetch(kwargs.get("model")) is None or process_count() > 1:
                raise
        ensure_model(kwargs.get("model"), assume_yes=yes)
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {param.name: param.annotation for param in parameters}
    return wrapper  # type: ignore[return-value]


def ensure_model(spec: str | None, *, assume_yes: bool) -> None:
    """Install the release that `--model spec` (or the default) names when no model is found, with consent.

    In a terminal the person is told what would be downloaded and asked once; elsewhere only `--yes` or
    `PENGI_SEARCH_AUTO_FETCH=1` allow it, and offline mode never does. Refusals are one-line errors (exit 1).
    """
    from ..hub import offline_setting
    from ..paths import models_dir
    from ..releases import RELEASES

    name = refuse_blocked_install(spec)
    if name is None:
        return
    missing = f"the Pengi model {name} is not installed"
    if setting := offline_setting():
        fail(f"{missing} and {setting} forbids downloading it: `pengi-search model import PATH` installs a copy")
    hint = f"`pengi-search model fetch {name}` installs it"
    if not (assume_yes or os.environ.get(AUTO_FETCH_ENV, "").strip() == "1"):
        if not can_ask():
            fail(f"{missing}: {hint}, or pass --yes to fetch it now")
        err_console.print(f"{missing}. It can be downloaded now:", soft_wrap=True)
        err_console.print(release_details(RELEASES[name], models_dir() / name), markup=False, soft_wrap=True)
        if not _confirm("Download it now?"):
            fail(f"nothing was downloaded; {hint}")
    else:
        release = RELEASES[name]
        err_console.print(f"{missing}: fetching it ({release.approx_size}) from {release.url}", soft_wrap=True)
    from ..models import fetch_model

    report_installed(*fetch_model(name, notify=warn))


def report_installed(target: Path, missing: list[str]) -> None:
    """`installed TARGET` (escaped, as every path is shown), then a warning for each tokenizer it lacks: the
    words of `model fetch` and `model import`, and of the download a command offers."""
    err_console.print(Text.assemble("installed ", (shown(str(target)), "bold")), soft_wrap=True)
    for kind in missing:
        warn(
            f"the {kind} tokenizer was not installed; copy one into {shown(str(target / 'tokenizer' / kind))} "
            "(or import again with --tokenizer-dir) before using this model"
        )


def refuse_blocked_install(spec: str | None) -> str | None:
    """The release that would install the model `--model spec` (or the default) names but finds missing (None when
    one is found, or none would), refused as `paths.refuse_blocked_folder` says it when a file stands where the data
    folder should be: no download could land there, so fetching is no advice."""
    from ..model_dir import release_to_fetch
    from ..paths import models_dir, refuse_blocked_folder

    name = release_to_fetch(spec)
    if name is not None:
        refuse_blocked_folder(models_dir() / name)
    return name


def release_details(release: Release, target: Path) -> str:
    """What a download of `release` fetches, from where, under which terms, and where it goes."""
    from ..releases import RELEASE_LICENCE, TOKENIZERS

    hub_names = ", ".join(TOKENIZERS[key] for key in release.tokenizers)
    rows = {
        release.name: f"{release.summary}, {release.approx_size}",
        "from": release.url,
        "tokenizers": f"{hub_names}, from the Hugging Face hub (a few MB)",
        "licence": RELEASE_LICENCE,
        "into": shown(str(target)),
    }
    return "\n".join(f"  {label:<11} {text}" for label, text in rows.items())


def can_ask() -> bool:
    """Whether a person can answer a question: stdin and stderr are terminals (not a script, a pipe or CI).

    Asked of the streams themselves: Rich's `is_terminal` also holds where FORCE_COLOR asks for colours, so a
    wrapper that captures stderr from a terminal session would wait on an answer to a question it never shows.
    """
    return is_a_terminal(sys.stdin) and is_a_terminal(err_console.file)


def _confirm(question: str) -> bool:
    try:
        return typer.confirm(question, default=True, err=True)
    except typer.Abort:  # end of input or Ctrl-C at the prompt: no consent
        return False
