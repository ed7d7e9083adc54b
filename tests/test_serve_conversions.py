"""The server's decoding work (transcodes, spectrograms, peaks, cut windows) runs side by side for different files, a
few at a time, and once for one file asked for twice at once.

The work here is fake and waits on events (never on a clock): a converter that could not run beside another would
leave it waiting until WAIT_S, and the test fails there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pengi_search.serve import media
from pengi_search.serve.conversions import Conversions
from pengi_search.serve.media import TranscodeCache

WAIT_S = 10.0  # only a failing test waits this long


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait (on an event set by nothing, so at most WAIT_S in all) until `condition` holds."""
    never = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        never.wait(0.01)
    raise AssertionError(f"not {what} within {WAIT_S} s")


class FakeTranscoder:
    """`media._write_flac` that writes a few bytes, records which files it made, and makes each file only once both
    `together` of them have started (a barrier), or once `release` is set."""

    def __init__(self, together: int = 1) -> None:
        self.made: list[str] = []
        self.targets: list[Path] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.barrier = threading.Barrier(together, timeout=WAIT_S)

    def __call__(self, source: Path, target: Path, _max_s: float) -> None:
        with target.open("wb") as out:  # opened first, as the FLAC encoder opens it
            self.made.append(source.name)
            self.targets.append(target)
            self.started.set()
            self.barrier.wait()  # broken (an error) when the others could not start meanwhile
            assert self.release.wait(WAIT_S), "never released"
            out.write(b"fLaC" + source.name.encode())


@pytest.fixture
def conversions() -> Conversions:
    return Conversions(slots=2)


@pytest.fixture
def cache(conversions):
    made = TranscodeCache(max_bytes=1 << 20, conversions=conversions)
    yield made
    made.close()


def test_different_files_are_transcoded_side_by_side(cache, tmp_path, monkeypatch):
    """A long file's transcode does not hold up another file's: both run at once (each waits for the other to start;
    one after the other, the first would wait in vain)."""
    transcoder = FakeTranscoder(together=2)
    transcoder.release.set()
    monkeypatch.setattr(media, "_write_flac", transcoder)
    with ThreadPoolExecutor(2) as pool:
        long, short = (pool.submit(cache.flac, name, tmp_path / name, 60.0) for name in ("long.wma", "short.wma"))
        assert long.result(WAIT_S).read_bytes() == b"fLaClong.wma"
        assert short.result(WAIT_S).read_bytes() == b"fLaCshort.wma"
    assert sorted(transcoder.made) == ["long.wma", "short.wma"]


def test_one_file_asked_for_twice_at_once_is_transcoded_once(cache, conversions, tmp_path, monkeypatch):
    """The second request waits for the first one's transcode and is answered with its file."""
    transcoder = FakeTranscoder()
    monkeypatch.setattr(media, "_write_flac", transcoder)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(cache.flac, "key", tmp_path / "talk.wma", 60.0)
        assert transcoder.started.wait(WAIT_S)
        second = pool.submit(cache.flac, "key", tmp_path / "talk.wma", 60.0)
        wait_until(lambda: conversions.waiting(("flac", "key")) == 1, "the second waiting for the first")
        transcoder.release.set()
        assert first.result(WAIT_S) == second.result(WAIT_S)
    assert transcoder.made == ["talk.wma"]


def test_a_transcode_that_ends_after_the_server_closed_its_cache_leaves_nothing_behind(cache, tmp_path, monkeypatch):
    transcoder = FakeTranscoder()
    monkeypatch.setattr(media, "_write_flac", transcoder)
    with ThreadPoolExecutor(1) as pool:
        late = pool.submit(cache.flac, "key", tmp_path / "talk.wma", 60.0)
        assert transcoder.started.wait(WAIT_S)
        folder = transcoder.targets[0].parent
        cache.close()
        transcoder.release.set()
        with pytest.raises(RuntimeError, match="stopping"):
            late.result(WAIT_S)
    assert not folder.exists()
    with pytest.raises(RuntimeError, match="stopping"):
        cache.flac("other", tmp_path / "other.wma", 60.0)


def test_no_more_than_its_slots_run_at_once_and_the_next_runs_when_one_ends():
    conversions = Conversions(slots=2)
    started = {name: threading.Event() for name in "abc"}
    finish = {name: threading.Event() for name in "abc"}

    def work(name: str) -> Callable[[], str]:
        def make() -> str:
            started[name].set()
            assert finish[name].wait(WAIT_S)
            return name

        return make

    with ThreadPoolExecutor(3) as pool:
        first, second = pool.submit(conversions.run, "a", work("a")), pool.submit(conversions.run, "b", work("b"))
        assert started["a"].wait(WAIT_S) and started["b"].wait(WAIT_S)
        third = pool.submit(conversions.run, "c", work("c"))
        assert not started["c"].wait(0.2)  # both slots taken: it waits (a wrong answer may pass this, never fail it)
        finish["a"].set()
        assert started["c"].wait(WAIT_S) and first.result(WAIT_S) == "a"
        finish["b"].set()
        finish["c"].set()
        assert (second.result(WAIT_S), third.result(WAIT_S)) == ("b", "c")


def test_those_waiting_for_a_run_that_fails_get_its_error_and_the_next_ask_runs_again():
    conversions = Conversions(slots=1)
    started, fail = threading.Event(), threading.Event()
    calls: list[int] = []

    def broken() -> str:
        calls.append(1)
        started.set()
        assert fail.wait(WAIT_S)
        raise OSError("unreadable")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(conversions.run, "k", broken)
        assert started.wait(WAIT_S)
        second = pool.submit(conversions.run, "k", broken)
        wait_until(lambda: conversions.waiting("k") == 1, "the second waiting")
        fail.set()
        for outcome in (first, second):
            with pytest.raises(OSError, match="unreadable"):
                outcome.result(WAIT_S)
    assert calls == [1] and conversions.waiting("k") == 0
    assert conversions.run("k", lambda: "made") == "made"
