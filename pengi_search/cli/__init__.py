"""The `pengi-search` command line. Each command lives in the module named for what it does."""

from __future__ import annotations

import inspect
import os

import typer

from . import classify, describe, doctor, index, model, search, serve, train
from .eval import app as eval_app

app = typer.Typer(
    name="pengi-search",
    help="Search, describe and classify sound libraries with Pengi, the audio language model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _every_command() -> None:
    from ..download import OFFLINE_ENV, offline_setting

    setting = offline_setting()
    if setting and setting.startswith(OFFLINE_ENV):
        # The Hugging Face libraries (tokenizers, sentence-transformers) read their own switch, at import.
        os.environ["HF_HUB_OFFLINE"] = "1"


app.command()(describe.describe)
app.command()(describe.ask)
app.add_typer(model.app, name="model")
app.command()(search.query)
app.command()(search.similar)
app.command()(classify.classify)
app.command()(index.index)
app.command("rebuild-index")(index.rebuild_index)
app.command()(index.stats)
app.command()(index.remove)
app.command()(index.export)
app.add_typer(train.app, name="train")
app.add_typer(eval_app, name="eval")
app.command()(serve.serve)
app.command()(doctor.doctor)


def _flowing_help(group: typer.Typer) -> None:
    """Each paragraph of a command's docstring as one line, for Rich to wrap to the terminal: Typer keeps the
    source's line breaks after the first paragraph, which left ragged lines at every width but the source's."""
    for info in group.registered_commands:
        text = info.help or inspect.getdoc(info.callback)
        if text:
            info.help = "\n\n".join(" ".join(paragraph.split("\n")) for paragraph in text.split("\n\n"))
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _flowing_help(sub.typer_instance)


_flowing_help(app)
