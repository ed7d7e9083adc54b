"""The store with file names that are not valid UTF-8, and files' notes, on SQLite and PostgreSQL (when
PENGI_TEST_POSTGRES_URL is set): no schema change, names stored without loss, prefix queries exact."""

from __future__ import annotations

import base64
import os

from sqlalchemy import text

from pengi_search.db import EmbedderInfo, ModelInfo, StoredAudio
from pengi_search.pathnames import ESCAPE

from . import test_store

db_url = test_store.db_url  # the same fixtures: every test runs on SQLite and on PostgreSQL
store = test_store.store
windows = test_store.windows

FOLDER = os.fsdecode(b"/sounds/caf\xe9")  # Latin-1 bytes from an old share
NAMES = [
    FOLDER,
    f"{FOLDER}/a\udcff.wav",
    f"{FOLDER}/b.wav",
    f"{FOLDER}x/c.wav",  # a sibling folder whose name starts with the folder's
    os.fsdecode(b"/sounds/caf\xe8/d.wav"),
    "/sounds/café/e.wav",  # the valid UTF-8 spelling: another folder
    f"/sounds/{ESCAPE}/f.wav",
]
CUT = "truncated: header says 3.06 s, 0.43 s decoded"


def test_names_are_stored_without_loss_and_found_by_prefix(store):
    for number, name in enumerate(NAMES):
        store.record_file_error(name, f"broken {number}", size=number, mtime=1.0)
    assert [store.get_file(name).path for name in NAMES] == NAMES
    assert [record.path for record in store.files_under(FOLDER)] == NAMES[:3]
    assert store.all_file_stamps(under=FOLDER).keys() == set(NAMES[:3])
    assert {os.fsencode(r.path) for r in store.files_under("/sounds")} == {os.fsencode(n) for n in NAMES}
    with store.engine.connect() as connection:
        stored = connection.execute(text("SELECT path FROM audio_files")).scalars().all()
    assert "/sounds/café/e.wav" in stored  # valid UTF-8: as it always was
    assert f"{FOLDER.replace(chr(0xDCE9), ESCAPE + 'dce9')}/b.wav" in stored
    assert store.remove(FOLDER) == 3
    assert sorted(record.path for record in store.files_under("/")) == sorted(NAMES[3:])


def test_export_pages_through_odd_names(store):
    for name in NAMES:
        store.record_file_error(name, "broken", size=1, mtime=1.0)
    rows = list(store.export_rows(page_size=2))
    assert sorted(row["path"] for row in rows) == sorted(NAMES)
    odd = next(row for row in rows if row["path"] == NAMES[1])
    assert os.fsdecode(base64.b64decode(odd["path_bytes"])) == NAMES[1]


def test_an_indexed_file_keeps_its_notes_and_a_failed_one_its_reason(store):
    store.set_index_meta(ModelInfo("m", "f" * 64), EmbedderInfo("e", 4))
    audio = StoredAudio(0.43, 44_100, 1, "mp3", (CUT, "decoder: Warning: Xing stream size off"))
    cut = store.upsert_file(NAMES[1], size=10, mtime=1.0)
    store.replace_file_windows(cut, windows(1), audio=audio)
    whole = store.upsert_file(NAMES[2], size=10, mtime=1.0)
    store.replace_file_windows(whole, windows(1, seed=1), audio=StoredAudio(2.0, 44_100, 1, "wav"))
    store.record_file_error(NAMES[3], CUT, size=10, mtime=1.0)

    record = store.get_file(NAMES[1])
    assert record.truncated == CUT and record.error is None and record.duration_s == 0.43
    assert record.notes == f"{CUT}\ndecoder: Warning: Xing stream size off"
    assert store.get_file(NAMES[2]).notes is None and store.get_file(NAMES[2]).truncated is None
    failed = store.get_file(NAMES[3])
    assert failed.error == CUT and failed.notes is None and failed.truncated is None
    assert [r.path for r in store.truncated_files()] == [NAMES[1]]
    assert store.stats()["truncated_files"] == 1
    row = next(row for row in store.export_rows() if row["path"] == NAMES[1])
    assert row["truncated"] is True and row["notes"] == [CUT, "decoder: Warning: Xing stream size off"]

    store.replace_file_windows(cut, windows(1), audio=StoredAudio(3.06, 44_100, 1, "mp3"))  # re-indexed whole
    assert store.get_file(NAMES[1]).notes is None and store.truncated_files() == []
