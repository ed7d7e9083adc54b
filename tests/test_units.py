"""How amounts are shown to people: a window's span never reads as empty when it is not; a count takes its
noun in the number it needs."""

from __future__ import annotations

import pytest

from pengi_search.serve.pages import span, window_label
from pengi_search.units import count_text, elapsed_text, for_count, seconds_text, size_text, span_text


@pytest.mark.parametrize(
    ("start", "end", "text"),
    [
        (0.0, 7.0, "0.0-7.0s"),  # a window of a file of 7 s or more: tenths, as always
        (2.5, 9.5, "2.5-9.5s"),
        (0.0, 0.14, "0.0-0.1s"),  # tenths already tell it apart
        (0.0, 0.01, "0.00-0.01s"),  # a 0.01 s clip: not 0.0-0.0s
        (0.0, 0.004, "0.000-0.004s"),
        (0.0, 1 / 44_100, "0.00000-0.00002s"),  # one sample
        (12.34, 12.35, "12.34-12.35s"),  # both ends get the same decimals
        (3.0, 3.0, "3.0-3.0s"),  # an empty window may read as one
    ],
)
def test_a_window_that_is_not_empty_never_reads_as_empty(start, end, text):
    assert span_text(start, end) == text


def test_a_short_clip_has_a_length_and_the_web_pages_show_its_window_alike():
    assert (seconds_text(9.5), seconds_text(0.01), seconds_text(0.0)) == ("9.5 s", "0.01 s", "0.0 s")
    assert span(0.0, 0.01) == "0.00–0.01 s" and span(3.0, 10.0) == "3.0–10.0 s"
    assert window_label("a.wav", 0.0, 0.01, "") == "Play a.wav, 0.00 to 0.01 s"


def test_a_count_reads_with_its_noun_in_the_right_number():
    # The trainer wrote "written by 1 processes" and "x 2 process(es)".
    assert [count_text(n, "process", "processes") for n in (0, 1, 2)] == ["0 processes", "1 process", "2 processes"]
    assert (count_text(1, "column"), count_text(3, "column")) == ("1 column", "3 columns")


def test_a_word_written_apart_from_its_count_agrees_with_it():
    # Messages read "1 true label(s) are not candidate labels" and "missing column(s) audio".
    assert [for_count(n, "is", "are") for n in (0, 1, 2)] == ["are", "is", "are"]
    assert (for_count(1, "column", "columns"), for_count(3, "column", "columns")) == ("column", "columns")


def test_a_size_reads_in_the_unit_that_suits_it_so_a_small_model_is_not_zero():
    assert [size_text(n) for n in (512, 2048, 5_246_130, 2_300_000_000)] == ["512.0 B", "2.0 KiB", "5.0 MiB", "2.1 GiB"]


def test_a_size_names_its_units_as_the_powers_of_1024_they_are():
    """Divided by 1024 and called KB, MB, GB, a size read 2.1 GB for 2.3 GB (and a MB was not the server's MiB)."""
    assert [size_text(n) for n in (1023, 1024, 2**20, 3 * 2**30, 2**40)] == [
        "1023.0 B",
        "1.0 KiB",
        "1.0 MiB",
        "3.0 GiB",
        "1.0 TiB",
    ]


def test_a_time_taken_reads_as_a_clock_would_past_a_minute():
    assert [elapsed_text(s) for s in (7.46, 59.4, 60.0, 1205.3, 3600.0, 14523.7)] == [
        "7.5 s", "59.4 s", "1 min 0 s", "20 min 5 s", "1 h 0 min", "4 h 2 min"
    ]  # fmt: skip
