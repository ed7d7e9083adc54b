"""The server's decoding work (transcodes, spectrograms, peaks, cut windows) runs side by side for different files, a
few at a time, and once for one file asked for twice at once; it holds a bounded number of the server's threads, each
for a bounded time, and its transcodes keep the cache's byte limit while they are written; a transcode handed out is
let go however its answer ends (sent, cancelled, never run).

The work here is fake and waits on events (never on a clock): a converter that could not run beside another would
leave it waiting until WAIT_S, and the test fails there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.lowlevel
import pytest
import soundfile as sf
from fastapi import FastAPI, Request
from starlette.types import ASGIApp

from pengi_search.serve import api, close_app, create_app, media
from pengi_search.serve.conversions import Conversions, ConversionsBusy
from pengi_search.serve.media import Transcode, TranscodeCache, flac_bound

from .search_library import CaptionLibrary
from .serving import settings_for

WAIT_S = 10.0  # only a failing test waits this long
T = TypeVar("T")


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
    `together` of them have started (a barrier), or once `release` is set. It reserves `reserves` bytes first, as
    the real one reserves the most its FLAC can take (`reserves_of` a source, by its name, else `reserves`)."""

    def __init__(self, together: int = 1, reserves: int = 0) -> None:
        self.reserves = reserves
        self.reserves_of: dict[str, int] = {}  # a source's own, by its name, where it is not `reserves`
        self.made: list[str] = []
        self.targets: list[Path] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.barrier = threading.Barrier(together, timeout=WAIT_S)

    def __call__(self, source: Path, target: Path, _max_s: float, reserve: Callable[[int], None]) -> None:
        reserve(self.reserves_of.get(source.name, self.reserves))
        with target.open("wb") as out:  # opened first, as the FLAC encoder opens it
            self.made.append(source.name)
            self.targets.append(target)
            self.started.set()
            self.barrier.wait()  # broken (an error) when the others could not start meanwhile
            assert self.release.wait(WAIT_S), "never released"
            out.write(b"fLaC" + source.name.encode())


def made_and_sent(cache: TranscodeCache, tmp_path: Path, name: str) -> Transcode:
    """The transcode of `name`.wma, made and released (sent): the cache may remove it."""
    made = cache.flac(name, tmp_path / f"{name}.wma", 60.0)
    made.release()
    return made


def being_written(
    cache: TranscodeCache, transcoder: FakeTranscoder, pool: ThreadPoolExecutor, tmp_path: Path, names: list[str]
) -> list[Future[Transcode]]:
    """The transcodes of `names` (as `name`.wma) started in `pool`, each once the one before is being written; all
    are held there until `transcoder.release` is set."""
    transcoder.release.clear()
    started = []
    for name in names:
        made = len(transcoder.made) + 1
        started.append(pool.submit(cache.flac, name, tmp_path / f"{name}.wma", 60.0))
        wait_until(lambda made=made: len(transcoder.made) == made, f"{name} being written")
    return started


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
        assert long.result(WAIT_S).path.read_bytes() == b"fLaClong.wma"
        assert short.result(WAIT_S).path.read_bytes() == b"fLaCshort.wma"
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
        assert first.result(WAIT_S).path == second.result(WAIT_S).path
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


def blocked(conversions: Conversions, key: str, pool: ThreadPoolExecutor) -> tuple[threading.Event, threading.Event]:
    """Start work of `key` in `pool` that holds its slot until the second event returned is set; returns once it
    runs (the first event)."""
    started, finish = threading.Event(), threading.Event()

    def make() -> str:
        started.set()
        assert finish.wait(WAIT_S)
        return key

    pool.submit(conversions.run, key, make)
    assert started.wait(WAIT_S)
    return started, finish


def test_a_request_waiting_for_a_slot_is_refused_as_busy_once_its_wait_runs_out():
    """A burst of slow transcodes does not hold the server's threads for as long as they take: past `wait_s` in
    line, the request is answered 503, with when to ask again."""
    conversions = Conversions(slots=1, wait_s=0.05)
    with ThreadPoolExecutor(1) as pool:
        _, finish = blocked(conversions, "long", pool)
        try:
            with pytest.raises(ConversionsBusy, match="busy") as refused:
                conversions.run("short", lambda: "made")
        finally:
            finish.set()
    assert refused.value.status == 503
    assert conversions.run("short", lambda: "made") == "made"  # the slot is free again


def test_a_request_waiting_for_the_same_files_run_is_refused_as_busy_once_its_wait_runs_out():
    conversions = Conversions(slots=2, wait_s=0.05)
    with ThreadPoolExecutor(1) as pool:
        _, finish = blocked(conversions, "long", pool)
        try:
            with pytest.raises(ConversionsBusy):
                conversions.run("long", lambda: "again")
            assert conversions.waiting("long") == 0  # it no longer waits
        finally:
            finish.set()


def test_no_more_than_max_held_requests_are_held_at_once_the_next_is_refused_without_waiting():
    """Requests past `max_held` (working or waiting) are refused at once: the server's other threads answer
    searches whatever the players ask."""
    conversions = Conversions(slots=1, max_held=2, wait_s=WAIT_S)
    with ThreadPoolExecutor(2) as pool:
        _, finish = blocked(conversions, "long", pool)
        waiting = pool.submit(conversions.run, "next", lambda: "next")
        wait_until(lambda: conversions.waiting("next") == 0 and conversions.held() == 2, "the second waiting")
        try:
            with pytest.raises(ConversionsBusy):  # at once: WAIT_S would fail the test's own wait below
                conversions.run("third", lambda: "third")
        finally:
            finish.set()
        assert waiting.result(WAIT_S) == "next"


def test_transcodes_written_side_by_side_keep_the_caches_byte_limit(tmp_path, monkeypatch):
    """Each transcode reserves the most its FLAC can take before it writes: finished ones are evicted to make room,
    and one that does not fit beside those being written is refused for now (busy), not written past the limit."""
    conversions = Conversions(slots=3)
    cache = TranscodeCache(max_bytes=1000, conversions=conversions)
    transcoder = FakeTranscoder(reserves=495)  # two fit beside each other, not beside a third
    transcoder.release.set()
    monkeypatch.setattr(media, "_write_flac", transcoder)
    try:
        old = made_and_sent(cache, tmp_path, "old")
        with ThreadPoolExecutor(2) as pool:
            first, second = being_written(cache, transcoder, pool, tmp_path, ["a", "b"])
            assert not old.path.exists()  # evicted to make room for the two in progress
            assert cache.held_bytes() <= 1000
            with pytest.raises(ConversionsBusy, match="transcode cache is full"):
                cache.flac("c", tmp_path / "c.wma", 60.0)
            transcoder.release.set()
            assert first.result(WAIT_S).path.exists() and second.result(WAIT_S).path.exists()
        assert cache.flac("c", tmp_path / "c.wma", 60.0).path.exists()  # room again, once they are written
    finally:
        cache.close()


def test_a_flac_takes_at_most_its_samples_stored_verbatim_with_its_headers(tmp_path):
    """The bound a transcode reserves holds for audio FLAC cannot compress (noise, at full scale)."""
    import numpy as np
    import soundfile as sf

    noise = np.random.default_rng(0).uniform(-1, 1, (48_000 * 3, 2))
    sf.write(tmp_path / "noise.flac", noise, 48_000, subtype="PCM_16")
    assert (tmp_path / "noise.flac").stat().st_size <= flac_bound(3.0, 48_000, 2)


def test_a_transcode_handed_out_stays_on_disk_until_it_is_sent_though_another_evicts_it_meanwhile(
    tmp_path, monkeypatch
):
    """Its answer opens the file after it is handed out: one evicted in between would fail (was: a 500). It leaves
    the cache's limit at once, and its file is removed once it is sent."""
    cache = TranscodeCache(max_bytes=20, conversions=Conversions(slots=2))
    transcoder = FakeTranscoder(reserves=15)  # a 9-byte file kept beside it passes the limit
    transcoder.release.set()
    monkeypatch.setattr(media, "_write_flac", transcoder)
    try:
        being_sent = cache.flac("a", tmp_path / "a.wma", 60.0)
        other = cache.flac("b", tmp_path / "b.wma", 60.0)  # evicts the first: its room is needed
        assert cache.held_bytes() <= 20
        assert being_sent.path.read_bytes() == b"fLaCa.wma"
        being_sent.release()
        assert not being_sent.path.exists()
        other.release()
        assert other.path.exists()  # sent, and still kept: nothing needed its room
        assert cache.flac("a", tmp_path / "a.wma", 60.0).path.read_bytes() == b"fLaCa.wma"  # made again
    finally:
        cache.close()


class HookedConversions(Conversions):
    """Conversions that call `after[key]()` (once) when the run of `key` has ended, before its caller goes on."""

    def __init__(self, after: dict[Hashable, Callable[[], None]]) -> None:
        super().__init__(slots=2)
        self.after = after

    def run(self, key: Hashable, make: Callable[[], T]) -> T:
        value = super().run(key, make)
        hook = self.after.pop(key, None)
        if hook is not None:
            hook()
        return value


def test_a_transcode_just_made_is_not_evicted_before_its_request_is_handed_it(tmp_path, monkeypatch):
    """Another transcode that reserves its room between the end of a file's transcode and the file being handed to
    its request cannot evict it: that one is refused for now (503, asked again), and the file is handed out."""
    refused: list[ConversionsBusy] = []

    def another_transcode() -> None:
        try:
            cache.flac("b", tmp_path / "b.wma", 60.0)
        except ConversionsBusy as exc:
            refused.append(exc)

    cache = TranscodeCache(max_bytes=20, conversions=HookedConversions({("flac", "a"): another_transcode}))
    transcoder = FakeTranscoder(reserves=15)
    transcoder.release.set()
    monkeypatch.setattr(media, "_write_flac", transcoder)
    try:
        made_and_sent(cache, tmp_path, "old")
        handed: Transcode = cache.flac("a", tmp_path / "a.wma", 60.0)
        assert handed.path.read_bytes() == b"fLaCa.wma"
        assert len(refused) == 1 and "cache is full" in str(refused[0])
        assert cache.flac("b", tmp_path / "b.wma", 60.0).path.exists()  # once it is handed out, it may go
    finally:
        cache.close()


def test_a_file_larger_than_the_cache_is_kept_beside_it_one_at_a_time(tmp_path, monkeypatch):
    """An hour of stereo reserves more than the whole cache: it evicts none of the files kept, other files are
    transcoded beside it, and such files replace each other (one being written refuses the next for now)."""
    cache = TranscodeCache(max_bytes=1000, conversions=Conversions(slots=3))
    transcoder = FakeTranscoder(reserves=400)
    transcoder.reserves_of = {"long.wma": 1500, "longer.wma": 1500}
    transcoder.release.set()
    monkeypatch.setattr(media, "_write_flac", transcoder)
    try:
        kept = made_and_sent(cache, tmp_path, "kept")
        with ThreadPoolExecutor(2) as pool:
            long, short = being_written(cache, transcoder, pool, tmp_path, ["long", "short"])  # side by side
            with pytest.raises(ConversionsBusy, match="too long for its transcode cache"):
                cache.flac("longer", tmp_path / "longer.wma", 60.0)
            transcoder.release.set()
            long_file, short_file = long.result(WAIT_S), short.result(WAIT_S)
        short_file.release()
        assert kept.path.exists() and short_file.path.exists() and cache.held_bytes() <= 1000
        longer = cache.flac("longer", tmp_path / "longer.wma", 60.0)  # replaces it, sent as it is being
        assert long_file.path.read_bytes() == b"fLaClong.wma"
        long_file.release()
        assert not long_file.path.exists() and longer.path.exists() and kept.path.exists()
        assert cache.flac("longer", tmp_path / "longer.wma", 60.0).path == longer.path  # kept: made once
    finally:
        cache.close()


def test_a_transcode_handed_out_and_lost_without_being_released_is_released_as_it_is_collected(tmp_path, monkeypatch):
    """A handle whose answer is never run (its request cancelled in between) lets the cache remove its file once it
    is evicted (was: counted as being sent for ever, and left on disk until the server stopped)."""
    cache = TranscodeCache(max_bytes=20, conversions=Conversions(slots=2))
    transcoder = FakeTranscoder(reserves=15)
    transcoder.release.set()
    monkeypatch.setattr(media, "_write_flac", transcoder)
    try:
        lost = cache.flac("a", tmp_path / "a.wma", 60.0)
        path = lost.path
        del lost  # its last reference
        made_and_sent(cache, tmp_path, "b")  # needs its room: evicts it
        assert not path.exists() and cache.held_bytes() <= 20
    finally:
        cache.close()


@pytest.fixture
def hum_app(served, tiny_model_dir, monkeypatch) -> Iterator[FastAPI]:
    """The server's app over `served`, whose transcode cache holds one transcode of its `hum.aiff` at a time."""
    app = create_app(settings_for(served, tiny_model_dir))
    info = sf.info(served.files["loops/hum.aiff"])
    room = media.flac_bound(info.duration, info.samplerate, info.channels)
    monkeypatch.setattr(app.state.service.transcodes, "max_bytes", room + room // 2)
    yield app
    close_app(app)


def hum_id(app: FastAPI, served: CaptionLibrary) -> int:
    return app.state.service.library.store.get_file(str(served.files["loops/hum.aiff"])).id


def evict_hum(app: FastAPI, served: CaptionLibrary) -> None:
    """Make another transcode, which needs the room of `hum.aiff`'s."""
    app.state.service.transcodes.flac(("another file", 1), served.files["loops/hum.aiff"], 60.0).release()


def test_a_transcodes_answer_built_and_never_run_lets_it_go(hum_app, served):
    """The file's answer holds the transcode until it is sent: one never run (its request cancelled before it ran)
    lets go of it as it goes, and the cache removes the file once it evicts it."""
    file_id = hum_id(hum_app, served)
    request = Request({"type": "http", "method": "GET", "headers": [], "path": f"/api/files/{file_id}/audio"})
    answer = api.file_audio(request, hum_app.state.service, file_id)
    path = Path(answer.path)
    assert answer.media_type == "audio/flac" and path.exists()
    del answer  # never run
    evict_hum(hum_app, served)
    assert not path.exists()


def test_a_transcode_whose_request_is_cancelled_before_its_answer_is_sent_is_let_go(hum_app, served, monkeypatch):
    """A request cancelled (its client gone) as the cache hands out its transcode: nothing is sent, and the
    transcode is let go, so that the cache removes the file once it evicts it. (The endpoint's thread is waited for,
    and the answer meets the cancellation as it runs, in its own `finally`; one never run is the test above's.)"""
    svc = hum_app.state.service
    handed_out, cancelled = threading.Event(), threading.Event()
    handed: list[Path] = []
    file_audio = svc.file_audio

    def handed_out_as_the_client_leaves(file_id: int) -> object:
        audio = file_audio(file_id)
        handed.append(audio.path)
        handed_out.set()
        assert cancelled.wait(WAIT_S), "never cancelled"
        return audio

    monkeypatch.setattr(svc, "file_audio", handed_out_as_the_client_leaves)
    sent = anyio.run(cancelled_once, hum_app, f"/api/files/{hum_id(hum_app, served)}/audio", handed_out, cancelled)
    assert handed and handed[0].exists() and b"".join(sent) == b""  # kept (nothing needed its room), not sent
    evict_hum(hum_app, served)
    assert not handed[0].exists()


async def cancelled_once(app: ASGIApp, path: str, started: threading.Event, cancelled: threading.Event) -> list[bytes]:
    """A GET of `path` by `app`, cancelled (as a server cancels the request of a client gone) once `started` is
    set; `cancelled` is set then. The body's parts sent, none after it was cancelled."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    gone = anyio.Event()
    body: list[bytes] = []

    async def receive() -> dict[str, object]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body":
            body.append(message.get("body", b""))  # type: ignore[arg-type]
        await anyio.lowlevel.checkpoint()  # where a server's send waits for the client to read

    async with anyio.create_task_group() as requests:
        requests.start_soon(app, scope, receive, send)
        await anyio.to_thread.run_sync(started.wait, WAIT_S)
        requests.cancel_scope.cancel()
        gone.set()
        cancelled.set()
    return body
