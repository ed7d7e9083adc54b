"""The commands' progress bars: on stderr, for a person watching a terminal, counted in windows or files.

How each bar shows its count and rate is `pengi_search.progress`'s, shared with the trainer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..consoles import Console, is_watched
from .common import err_console


def show_progress(quiet: bool, json_output: bool = False) -> bool:
    """Progress bars only for a person watching a terminal."""
    return not quiet and not json_output and is_watched(err_console)


def progress_bar(console: Console | None = None):
    """A transient progress bar on stderr (or `console`), each task counted in its unit (`progress.CountColumn`).
    Off where stderr is no terminal: it would show nothing there, and Rich ends a bar on such a stream with a blank
    line, which scripts keeping stderr would read as a message.

    Each task stays one line however narrow the terminal: its texts never wrap (Rich would fold `2.7 windows/s`
    into a column of words, four lines a bar in 60 columns and two in 80); the bar and the time left, which can
    shrink, give way to them, and in a very narrow one the texts are cut with an ellipsis."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..progress import CountColumn, unwrapped

    console = console or err_console
    return Progress(
        TextColumn("{task.description}", table_column=unwrapped()),
        BarColumn(),
        CountColumn(),
        TextColumn(" {task.fields[files]}", table_column=unwrapped()),  # two spaces from the rate, as it from the count
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not is_watched(console),
    )


class WindowProgress:
    """A run over files on a progress bar, counted in windows: windows done of all and per second, files done, time
    left (`describe`, `classify`, `similar`, and each pass of `index`).

    A file's number of windows is known once it is decoded, or from its header as it starts (`promised`); until
    every file is, the total is the known counts plus the files still to come at the mean of those decoded (so the
    time left firms up as the run goes; a long recording in flight counts as its header says, not as a mean, or the
    bar would stand full for the hour it takes). A total known from the start (`windows`) is shown as it is.
    """

    def __init__(self, bar: Any, description: str, visible: bool, windows: int | None = None) -> None:
        from ..progress import Rate

        self.bar = bar
        self.task = bar.add_task(description, total=windows, unit="windows", rate=None, files="", visible=visible)
        self.windows = windows
        self.files = self.files_done = self.counted_files = self.counted_windows = self.windows_done = 0
        self.promised_files = self.promised_windows = 0  # files in flight whose header says their count
        self.rate = Rate()

    def start(self, files: int) -> None:
        self.files = files
        self.rate.restart()
        self._show()

    def promised(self, windows: int) -> None:
        self.promised_files += 1
        self.promised_windows += windows
        self._show()

    def counted(self, windows: int, promised: int | None = None) -> None:
        if promised is not None:
            self.promised_files -= 1
            self.promised_windows -= promised
        self.counted_files += 1
        self.counted_windows += windows
        self._show()

    def advance(self, files: int = 0, windows: int = 0) -> None:
        self.files_done += files
        self.windows_done += windows
        self._show()

    def _total(self) -> int | None:
        if self.windows is not None:
            return max(self.windows, self.windows_done)
        known_files = self.counted_files + self.promised_files
        if not known_files:
            return None
        known = self.counted_windows + self.promised_windows
        if self.counted_files:  # a file to come is as the decoded ones are: one long recording would skew it
            mean = self.counted_windows / self.counted_files
        else:
            mean = self.promised_windows / self.promised_files
        return max(known + round(mean * (self.files - known_files)), self.windows_done)

    def _show(self) -> None:
        files = f"{self.files_done}/{self.files} files" if self.files else ""
        rate = self.rate.of(self.windows_done)
        self.bar.update(self.task, total=self._total(), completed=self.windows_done, rate=rate, files=files)


class CountProgress:
    """A count of a known total, in one unit, and per second, on a progress bar."""

    def __init__(self, bar: Any, description: str, visible: bool, total: int, unit: str) -> None:
        from ..progress import Rate

        self.bar = bar
        self.task = bar.add_task(description, total=total, unit=unit, rate=None, files="", visible=visible)
        self.done = 0
        self.rate = Rate()

    def add(self, count: int) -> None:
        self.done += count
        self.bar.update(self.task, completed=self.done, rate=self.rate.of(self.done))


class FileProgress(CountProgress):
    """Files done of a known number, and per second, on a progress bar (`index` hashing the files that may be
    copies of others)."""

    def __init__(self, bar: Any, description: str, visible: bool, files: int) -> None:
        super().__init__(bar, description, visible, files, "files")

    def advance(self, files: int = 0, windows: int = 0) -> None:
        self.add(files)


class IndexFills:
    """FAISS indexes filled from the database, each on a bar of its own once it starts (an index in line with the
    database has none): vectors added of all, and per second (`text index ━━ 50000/200000 vectors  9400.0
    vectors/s`). A rebuild, a compaction's re-fill or a file the first command to open it rebuilds takes minutes on
    millions of vectors. It is a library's `progress` (`vectors.FillProgresses`): called with an index's name, it
    gives what that index tells."""

    def __init__(self, bar: Any, visible: bool) -> None:
        self.bar = bar
        self.visible = visible

    def __call__(self, name: str) -> _IndexFill:
        return _IndexFill(self, name)


@contextlib.contextmanager
def index_fills(visible: bool) -> Iterator[IndexFills]:
    """A library's `progress` for a command that shows no other bar, drawn while in the block (when `visible`)."""
    with progress_bar() as bar:
        yield IndexFills(bar, visible)


class _IndexFill:
    """One index's fill (`vectors.FillProgress`): its bar is made when the fill starts."""

    def __init__(self, fills: IndexFills, name: str) -> None:
        self.fills = fills
        self.name = name
        self.count: CountProgress | None = None

    def start(self, vectors: int) -> None:
        self.count = CountProgress(self.fills.bar, self.name, self.fills.visible, vectors, "vectors")

    def advance(self, vectors: int) -> None:
        assert self.count is not None
        self.count.add(vectors)


class IndexProgress:
    """An indexing run's progress on a Rich bar (`index`, and `eval` indexing its set): the files hashed to find
    identical ones ("hashing", in files), then in windows, as `WindowProgress` counts them: pass 1 ("audio
    embeddings") the windows of the files to index, with files done beside; pass 2 ("captions") the windows waiting
    for captions."""

    def __init__(self, bar: Any, visible: bool) -> None:
        self.bar = bar
        self.visible = visible
        self.current: WindowProgress | FileProgress | None = None
        self.filling = IndexFills(bar, visible)  # a FAISS index the run fills, on a line below the step's

    def start_hashing(self, files: int) -> None:
        self._hide()
        self.current = FileProgress(self.bar, "hashing", self.visible, files)

    def start(self, files: int) -> None:
        self._begin("audio embeddings").start(files)

    def promised(self, windows: int) -> None:
        assert isinstance(self.current, WindowProgress)
        self.current.promised(windows)

    def counted(self, windows: int, promised: int | None = None) -> None:
        assert isinstance(self.current, WindowProgress)
        self.current.counted(windows, promised)

    def start_captions(self, windows: int | None) -> None:
        self._begin("captions", windows)

    def _begin(self, label: str, windows: int | None = None) -> WindowProgress:
        self._hide()
        self.current = WindowProgress(self.bar, label, self.visible, windows)
        return self.current

    def _hide(self) -> None:
        """The bar of the step before goes: one bar at a time. So does each index fill done by then (pass 1 saving
        the audio index): left, it stood full above pass 2's bar for the rest of the run."""
        if self.current is not None:
            self.bar.update(self.current.task, visible=False)
        for task in self.bar.tasks:
            if task.finished:
                self.bar.update(task.id, visible=False)

    def advance(self, files: int = 0, windows: int = 0) -> None:
        assert self.current is not None
        self.current.advance(files, windows)
