"""Every progress bar names what it counts, and its rate is of the same thing: `index` showed `7/36  2.6 windows/s`,
files counted beside windows per second, which read as 7 of 36 windows."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from pengi_search import progress
from pengi_search.cli import app, progress_bars
from pengi_search.cli.progress_bars import IndexProgress, WindowProgress, progress_bar, show_progress
from pengi_search.consoles import make_console
from pengi_search.progress import count_and_rate
from trainer import reporting, run_data
from trainer.reporting import RateWindow, TrainingProgress


class Clock:
    """`time` for the code under test: seconds pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    perf_counter = monotonic


@pytest.fixture(autouse=True)
def redrawing_terminal(monkeypatch) -> None:
    """A terminal that redraws a line in place, whatever TERM the tests run under (a bar is off where TERM=dumb)."""
    monkeypatch.setenv("TERM", "xterm")


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)
    monkeypatch.setattr(reporting, "time", clock)
    return clock


class Screen(io.StringIO):
    """A terminal's stream, written into memory: what a person watching would see."""

    def isatty(self) -> bool:
        return True


def drawn(bar, width: int = 200) -> list[str]:
    """The lines a bar draws now, as text (its visible tasks, one a line), on a terminal `width` columns wide."""
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(bar.get_renderable())
    return [line.rstrip() for line in console.export_text().splitlines()]


def a_bar():
    """The commands' bar, as on a terminal (where it draws) but into nowhere: what it draws is read by `drawn`."""
    return progress_bar(Console(file=Screen()))


def test_a_count_and_its_rate_are_in_one_unit_named_for_both():
    assert count_and_rate(7, 36, "files", 0.45) == "7/36 files  0.45 files/s"
    assert count_and_rate(120, None, "clips", 4.06) == "120 clips  4.1 clips/s"
    assert count_and_rate(0, 400, "windows", None) == "0/400 windows"


def test_index_pass_1_counts_windows_with_their_rate_and_files_done_beside(clock):
    bar = a_bar()
    index = IndexProgress(bar, visible=True)
    index.start(36)
    for windows in (10, 5, 9):  # three files decoded: 8 windows a file, so about 288 in all
        index.counted(windows)
    clock.now += 10
    index.advance(windows=26)
    index.advance(files=7)
    (line,) = drawn(bar)
    assert line.startswith("audio embeddings ")
    assert "26/288 windows  2.6 windows/s  7/36 files" in line


@pytest.mark.parametrize("width", [80, 60])
def test_each_bar_stays_one_line_in_a_default_or_narrow_terminal(clock, width):
    """In 80 columns Rich folded `2.7 windows/s` under itself, and in 60 every text of the bar into a column of
    words: four lines a bar, each pass of `index` a block that jumped as it redrew. The texts keep their line, the
    bar gives way to them."""
    bar = a_bar()
    index = IndexProgress(bar, visible=True)
    index.start(36)
    index.counted(3)
    fill = index.filling("audio index")
    fill.start(103)
    clock.now += 10
    index.advance(files=1, windows=27)
    fill.advance(50)
    lines = drawn(bar, width)
    assert len(lines) == 2
    assert lines[0].startswith("audio embeddings ") and "27/108 windows  2.7 windows/s  1/36 files" in lines[0]
    assert lines[1].startswith("audio index ") and "50/103 vectors  5.0 vectors/s" in lines[1]


def test_an_index_filled_at_the_end_of_pass_1_leaves_with_its_bar(clock):
    """Pass 1 saves the audio index, on a bar below its own: that bar stood full above pass 2's for the rest of the
    run, a second line that no longer moved."""
    bar = a_bar()
    index = IndexProgress(bar, visible=True)
    index.start(2)
    fill = index.filling("audio index")
    fill.start(10)
    fill.advance(10)
    index.start_captions(400)
    (line,) = drawn(bar)
    assert line.startswith("captions ")


def test_index_pass_2_counts_the_windows_waiting_for_captions(clock):
    bar = a_bar()
    index = IndexProgress(bar, visible=True)
    index.start(2)
    index.start_captions(400)
    clock.now += 40
    index.advance(windows=120)
    (line,) = drawn(bar)  # pass 1's bar is gone
    assert line.startswith("captions ") and "120/400 windows  3.0 windows/s" in line and "files" not in line


def test_index_hashing_counts_files_with_their_rate_then_gives_way_to_pass_1(clock):
    bar = a_bar()
    index = IndexProgress(bar, visible=True)
    index.start_hashing(400)
    clock.now += 10
    index.advance(files=31)
    (line,) = drawn(bar)
    assert line.startswith("hashing ") and "31/400 files  3.1 files/s" in line
    index.start(36)
    (line,) = drawn(bar)  # the hashing bar is gone
    assert line.startswith("audio embeddings ")


def test_a_shard_captions_an_unknown_number_of_windows(clock):
    bar = a_bar()
    index = IndexProgress(bar, visible=True)
    index.start_captions(None)
    clock.now += 4
    index.advance(windows=2)
    assert "2 windows  0.50 windows/s" in drawn(bar)[0]


def test_a_file_that_fails_counts_no_more_windows_to_come(clock):
    """Without it a failed file kept the mean's worth of windows in the total: the bar never reached its end."""
    bar = a_bar()
    describe = WindowProgress(bar, "describing", visible=True)
    describe.start(2)
    describe.counted(3)
    describe.advance(windows=3, files=1)
    describe.counted(0)  # the second one failed
    describe.advance(files=1)
    assert "3/3 windows" in drawn(bar)[0] and "2/2 files" in drawn(bar)[0]


def test_a_long_recording_in_flight_counts_as_its_header_says(clock):
    """A two-hour file after short clips: the bar stood full (`1392/1392 windows`, no time left) for the minutes its
    1,029 windows took, as a file's count was known only once it had all decoded."""
    bar = a_bar()
    index = IndexProgress(bar, visible=True)
    index.start(4)
    for _ in range(2):
        index.counted(1)
        index.advance(files=1, windows=1)
    index.promised(1029)
    index.advance(windows=500)
    assert "502/1032 windows" in drawn(bar)[0]  # the clip still to come counts as the clips did
    index.counted(1029, promised=1029)
    index.advance(files=1, windows=529)
    index.counted(1)
    index.advance(files=1, windows=1)
    assert "1032/1032 windows" in drawn(bar)[0]


def test_describe_counts_windows_with_their_rate_and_files_done_beside(clock):
    bar = a_bar()
    describe = WindowProgress(bar, "describing", visible=True)
    describe.start(3)
    assert "0 windows  0/3 files" in drawn(bar)[0]  # no total and no rate before anything is known
    describe.counted(4)
    clock.now += 2
    describe.advance(windows=4, files=1)
    assert "4/12 windows  2.0 windows/s  1/3 files" in drawn(bar)[0]


def test_the_training_bar_counts_steps_with_steps_per_second_then_samples_per_second(clock):
    rate = RateWindow()
    for _ in range(4):
        clock.now += 0.5
        rate.step(16)  # 16 samples a step, 2 steps a second
    console = Console(file=Screen(), width=200, record=True)
    with TrainingProgress(total=1000, done=0, enabled=True, console=console) as bar:
        bar.advance(4, rate, loss=2.5)
    last = console.export_text().splitlines()[-1]
    assert "4/1000 steps  2.0 steps/s  32.0 samples/s  loss 2.5000" in last


def test_the_encoding_bar_counts_clips_with_clips_per_second(monkeypatch, clock):
    console = Console(file=Screen(), width=200, record=True)
    monkeypatch.setattr(run_data, "make_console", lambda **_: console)
    with run_data.progress_bar(True) as advance:
        clock.now += 2
        advance(5)
    assert "5 clips  2.5 clips/s" in console.export_text()


def test_no_bar_is_drawn_into_a_log_that_force_color_colours(monkeypatch):
    """FORCE_COLOR asks for colours in a log, where Rich takes stderr for a terminal: the commands', the download's
    and the trainer's bars all stay off there, as the first-use question does (`consoles.is_watched`)."""
    from pengi_search import download

    monkeypatch.setenv("FORCE_COLOR", "1")
    log = make_console(stderr=True)
    log.file = io.StringIO()
    assert log.is_terminal  # as Rich sees it
    monkeypatch.setattr(progress_bars, "err_console", log)
    monkeypatch.setattr(download, "make_console", lambda **_: log)
    monkeypatch.setattr(run_data, "make_console", lambda **_: log)
    assert not show_progress(quiet=False)
    assert progress_bar(log).disable and download._progress_bar(True).disable
    with run_data.progress_bar(True) as advance:
        advance(5)
    with TrainingProgress(total=4, done=0, enabled=True, console=log) as training:
        training.advance(1, loss=2.5)
        training.print("step 1: a sample answer")  # the lines above the bar still reach the log, alone
    assert log.file.getvalue() == "step 1: a sample answer\n"
    log.file = Screen()  # stderr on the terminal itself: the bars are drawn
    assert show_progress(quiet=False) and not progress_bar(log).disable and not download._progress_bar(True).disable
    with TrainingProgress(total=4, done=0, enabled=True, console=log) as training:
        training.advance(1, loss=2.5)
    assert "1/4 steps" in log.file.getvalue()


def watched_stderr(monkeypatch) -> Console:
    """The commands' stderr as a terminal a person watches, recorded: what `export_text` gives is what was drawn."""
    screen = Console(file=Screen(), width=200, record=True)
    monkeypatch.setattr(progress_bars, "err_console", screen)
    return screen


def test_rebuild_index_draws_each_index_filling_for_a_person_watching_and_nothing_elsewhere(monkeypatch, tmp_path):
    """It said nothing for the minutes that millions of vectors take."""
    from .test_library import two_files

    db = two_files(str(tmp_path / "lib.db"))
    unwatched = CliRunner().invoke(app, ["rebuild-index", "--db", db])
    assert unwatched.exit_code == 0 and unwatched.stderr == ""  # no bar where stderr is no terminal
    screen = watched_stderr(monkeypatch)
    watched = CliRunner().invoke(app, ["rebuild-index", "--db", db])
    timeless = [re.sub(r"in [0-9.]+ s", "in T s", result.stdout) for result in (unwatched, watched)]
    assert timeless[0] == timeless[1]  # stdout the same: the bar is on stderr
    drawn = screen.export_text()
    assert re.search(r"text index .* 5/5 vectors", drawn) and re.search(r"audio index .* 5/5 vectors", drawn)


def test_the_first_command_to_find_a_faiss_file_missing_draws_its_rebuild(monkeypatch, captions, tiny_model_dir):
    for kind in ("text", "audio"):
        Path(captions.db).with_suffix(f".{kind}.faiss").unlink()
    screen = watched_stderr(monkeypatch)
    result = CliRunner().invoke(app, ["query", "rain", "--db", captions.db, "--model", tiny_model_dir])
    assert result.exit_code == 0, result.output
    assert re.search(r"text index .* (\d+)/\1 vectors", screen.export_text())


def test_an_index_run_draws_an_index_it_fills_from_the_database_below_its_pass(clock):
    bar = a_bar()
    index = IndexProgress(bar, visible=True)
    index.start(2)
    fill = index.filling("audio index")
    assert drawn(bar)[1:] == []  # no line until it fills
    fill.start(10)
    clock.now += 2
    fill.advance(4)
    first, second = drawn(bar)
    assert first.startswith("audio embeddings ") and second.startswith("audio index ")
    assert "4/10 vectors  2.0 vectors/s" in second
