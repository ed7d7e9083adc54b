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


def ten_hits() -> list[Hit]:
    """Ten hits, one of them with wide characters and gone from disk, one with a negative score and no caption."""
    hits = [hit(rank) for rank in range(1, 11)]
    hits[1] = hit(2, "/lib/漢字/café.wav", "中文 caption", missing=True)
    hits[2] = hit(3, caption="", score=-0.125)
    return hits


def test_ten_hits_written_to_a_file_read_as_they_always_have(monkeypatch):
    assert printed(monkeypatch, ten_hits()) == (
        " #  path                         time         score  caption\n"
        " 1  /lib/folder1/sound_0001.wav  7.0-14.0s    0.890  rain bell engine\n"
        " 2  /lib/漢字/café.wav (gone)    14.0-21.0s   0.880  中文 caption\n"
        " 3  /lib/folder0/sound_0003.wav  21.0-28.0s  -0.125  (no caption yet)\n"
        " 4  /lib/folder1/sound_0004.wav  0.0-7.0s     0.860  water wind birds door dog rain\n"
        " 5  /lib/folder2/sound_0005.wav  7.0-14.0s    0.850  wind birds\n"
        " 6  /lib/folder0/sound_0006.wav  14.0-21.0s   0.840  birds door dog\n"
        " 7  /lib/folder1/sound_0007.wav  21.0-28.0s   0.830  door dog rain bell\n"
        " 8  /lib/folder2/sound_0008.wav  0.0-7.0s     0.820  dog rain bell engine water\n"
        " 9  /lib/folder0/sound_0009.wav  7.0-14.0s    0.810  rain bell engine water wind birds\n"
        "10  /lib/folder1/sound_0010.wav  14.0-21.0s   0.800  bell engine\n"
    )


@pytest.mark.parametrize("count", [1, 10, 120])
@pytest.mark.parametrize("show_query_span", [False, True])
def test_hits_written_as_lines_are_the_rows_of_richs_table(monkeypatch, count, show_query_span):
    hits = (ten_hits() + [hit(rank) for rank in range(11, count + 1)])[:count]
    console = make_console(highlight=False)
    console.file = io.StringIO()
    console.print(cli_search._hits_table(cli_search._hit_cells(hits, show_query_span), console.width))
    assert printed(monkeypatch, hits, show_query_span=show_query_span) == console.file.getvalue()


def test_many_hits_written_to_a_file_lay_out_no_table(monkeypatch):
    """Rich lays out and renders every cell of a table: 7 s for the 10,000 hits of `query -k 10000 > hits.txt`."""
    from rich.table import Table

    def refuse(*_args: object) -> None:
        raise AssertionError("a table was laid out for rows that cannot wrap")

    hits = [hit(rank) for rank in range(1, 2001)]
    with monkeypatch.context() as patched:
        patched.setattr(Table, "add_row", refuse)
        lines = printed(patched, hits).splitlines()
    assert len(lines) == 2001 and lines[-1].startswith("2000  /lib/folder2/sound_2000.wav")
    assert len(printed(monkeypatch, hits, width=100).splitlines()) > 2000  # a width to fit: Rich's table
