"""The `pengi-search` command line. Each command lives in the module named for what it does."""

from __future__ import annotations

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
