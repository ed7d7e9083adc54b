"""`index_hints.library_folders` on a large library: what each pasteable `index` hint costs (`stats` of a library
still captioning, `doctor` with a run left running, the errors of an empty or another model's library).

    python benchmarks/bench_library_folders.py                     # 200,000 files: 2,000 artists x 5 albums x 20
    python benchmarks/bench_library_folders.py --artists 500       # 50,000 files

The library is a SQLite file whose `audio_files` rows are inserted directly (only paths matter here), its folders
made on disk. It times, in this process, over `--repeat` calls each:

- `every path read`: the folders found from every path the library knows (`Store.file_paths`), as the hint did
  before `db.folders`;
- `library_folders`: the database asked a folder at a time (`db.folders`), both giving the same answer.

Measured on this project's 2-core machine shared with other jobs (load average about 16), 200,000 files: every
path read 1.26 s a call, library_folders 0.09 s (the answer None: 10,000 album folders, more than 8). The walk's
cost grows with the folders it visits (a search of the index for each subfolder of a folder without files of its
own, as far as the ninth folder found), not with the files.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pengi_search.db import Store
from pengi_search.index_hints import MOST_FOLDERS, library_folders
from pengi_search.scan import inside


def every_path_read(store: Store) -> list[str] | None:
    """The folders as the hint found them before: every path read, its folder taken in Python."""
    parents = {os.path.dirname(path) for _, path in store.file_paths()}
    tops: list[str] = []
    for folder in sorted(parents, key=lambda folder: folder.split(os.sep)):
        if not tops or not inside(folder, tops[-1]):
            tops.append(folder)
    there = [folder for folder in tops if os.path.isdir(folder)]
    return there if 0 < len(there) <= MOST_FOLDERS else None


def timed(repeat: int, work: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    for _ in range(repeat):
        answer = work()
    return (time.perf_counter() - started) / repeat, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artists", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        music = Path(work) / "music"
        db = Path(work) / "lib.db"
        Store.open(str(db)).close()  # the schema
        paths = []
        for artist in range(args.artists):
            for album in range(5):
                folder = music / f"artist{artist:05d}" / f"album{album}"
                folder.mkdir(parents=True)
                paths.extend(str(folder / f"track{track:02d}.wav") for track in range(20))
        with sqlite3.connect(db) as connection:
            connection.executemany(
                "INSERT INTO audio_files (path, size, mtime, status) VALUES (?, 1, 1.0, 'indexed')",
                [(path,) for path in paths],
            )
        with Store.open(str(db), read_only=True) as store:
            before, expected = timed(args.repeat, lambda: every_path_read(store))
            after, answer = timed(args.repeat, lambda: library_folders(store))
        assert answer == expected, (answer, expected)
        print(f"{len(paths):,} files: every path read {before:.2f} s a call, library_folders {after:.2f} s")


if __name__ == "__main__":
    main()
