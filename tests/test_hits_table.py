"""The table of hits that `query` and `similar` print: the same text however many hits, and cheap for many."""

from __future__ import annotations

import io

import pytest

from pengi_search.cli import search as cli_search
from pengi_search.consoles import make_console
from pengi_search.search import Hit


def hit(rank: int, path: str | None = None, caption: str | None = None, **fields: object) -> Hit:
    """The `rank`th hit of a made-up library: files in a few folders, captions of a few words."""
    words = ["dog", "rain", "bell", "engine", "water", "wind", "birds", "door"]
    values: dict[str, object] = {
        "path": path or f"/lib/folder{rank % 3}/sound_{rank:04d}.wav",
        "start_s": 7.0 * (rank % 4),
        "end_s": 7.0 * (rank % 4) + 7.0,
        "score": 0.9 - rank / 100,
        "caption": " ".join(words[(rank + i) % len(words)] for i in range(2 + rank % 5))
        if caption is None
        else caption,
        "texts": {},
        "window_id": rank,
    }
    return Hit(**(values | fields))  # type: ignore[arg-type]


def printed(monkeypatch: pytest.MonkeyPatch, hits: list[Hit], width: int | None = None, **options: object) -> str:
    """What `query` prints for `hits` into a file (or as COLUMNS=`width` asks)."""
    console = make_console(highlight=False)
    console.file = io.StringIO()
    if width is not None:
        console.width = width
    monkeypatch.setattr(cli_search, "out_console", console)
    cli_search._show_hits(hits, json_output=False, **options)  # type: ignore[arg-type]
    return console.file.getvalue()


@pytest.mark.parametrize("width", [None, 100])
def test_names_and_captions_are_shown_as_written(monkeypatch, width):
    """Neither Rich's markup nor its emoji codes: a file named `:fire:` is not shown as a flame."""
    path, caption = "/lib/:fire: [b]x[/b].wav", "a :dog: barks [bold]loudly[/bold]"
    row = printed(monkeypatch, [hit(1, path, caption)], width).splitlines()[1]
    assert path in row and caption in row
