"""Captioned audio sets as the public benchmarks lay them out: a CSV with a file column and caption columns.

Clotho: `file_name,caption_1,...,caption_5`, one row per file. AudioCaps: one row per caption (`caption` column),
so rows naming the same file are merged. Paths are relative to the audio root (the CSV's folder unless given), a
name as written when such a file exists, else trimmed (`text_files.file_name_spellings`); a name without an
audio extension (e.g. a YouTube id) matches a file of that name with one, and is refused when several files are
(`103.wav`, `103.flac`), as in truth files. Files not found are kept, with `path` None, so that reports can say
which ones were left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..audio import AUDIO_EXTENSIONS
from ..errors import UsageError, not_found
from ..hashing import file_sha256
from ..paths import as_path
from ..scan import absolute, stamp_of
from ..text_files import csv_rows, file_name_spellings, read_text
from ..truth import lacks_audio_extension, several_files

if TYPE_CHECKING:
    from ..db import Store

FILE_COLUMNS = ("file_name", "file", "filename", "fname", "path", "audio")
_CAPTION_COLUMN = re.compile(r"^caption(_?\d+)?$")


Sha256 = Callable[[str | os.PathLike[str]], str]  # the hex sha256 of the bytes of the file at a path


class DatasetError(UsageError):
    """A captions file that cannot be used."""


@dataclass(frozen=True)
class CaptionedFile:
    name: str  # as the CSV writes it
    path: str | None  # absolute path of the audio file, None when it is not under the audio root
    captions: tuple[str, ...]


@dataclass(frozen=True)
class CaptionSet:
    csv: str
    sha256: str  # of the CSV's text, so that two reports can tell whether they measured the same set
    audio_root: str
    items: tuple[CaptionedFile, ...]

    @property
    def found(self) -> list[CaptionedFile]:
        return [item for item in self.items if item.path is not None]

    @property
    def missing(self) -> list[CaptionedFile]:
        return [item for item in self.items if item.path is None]

    def to_json(self, sha256: Sha256 = file_sha256) -> dict[str, Any]:
        """The set as a report's `dataset` gives it; `sha256` hashes its audio files (`indexed_sha256`: a library's
        hashes where they still hold)."""
        return {
            "csv": self.csv,
            "sha256": self.sha256,
            "audio_sha256": audio_digest(
                ((item.name, item.path) for item in self.items if item.path is not None), sha256
            ),
            "audio_root": self.audio_root,
            "files": len(self.items),
            "captions": sum(len(item.captions) for item in self.items),
            "missing_files": [item.name for item in self.missing],
        }


def audio_digest(files: Iterable[tuple[str, str | os.PathLike[str]]], sha256: Sha256 = file_sha256) -> str:
    """The audio a report measured, which its CSV only names: the sha256 of each file's bytes (`sha256` of its
    path) under its name in the set, in the order of the names. A set's other copy (re-encoded, trimmed, another
    release's clips under the same names) gives another digest beside the same CSV's."""
    digest = hashlib.sha256()
    for name, path in sorted(files):
        # A name that is not UTF-8 (`surrogateescape`'s `\udcff`) is hashed as the bytes it stands for.
        line = json.dumps([name, sha256(path)], ensure_ascii=False) + "\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def indexed_sha256(store: Store, under: str) -> Sha256:
    """A file's sha256 as the library recorded it when it indexed the file (its `content_hash`, of the bytes it
    decoded), while the file keeps the size and mtime it had then, as the indexer trusts it; else read and hashed.
    A set of 20,000 files just indexed is not read a second time. Only an indexed file's hash is taken: a failed
    one may keep the hash of the bytes it had before, beside its new stamp. `under`: the folder (or file) whose
    files the library is asked for, in one query."""
    stamps = store.all_file_stamps(under=absolute(under))

    def sha256(path: str | os.PathLike[str]) -> str:
        stamp = stamps.get(absolute(path))
        if stamp is not None and stamp.status == "indexed" and stamp.content_hash is not None:
            try:
                unchanged = stamp_of(os.stat(path)) == (stamp.size, stamp.mtime)
            except OSError:
                unchanged = False  # reading it says why
            if unchanged:
                return stamp.content_hash
        return file_sha256(path)

    return sha256


def left_out(
    caption_set: CaptionSet, evaluated: Collection[str], index_failures: Mapping[str, str] | None = None
) -> list[dict[str, str]]:
    """A row {path, error} for each file of the set whose name is not in `evaluated`; `index_failures` gives the
    indexer's reason by absolute path."""
    failures = index_failures or {}
    rows = []
    for item in caption_set.items:
        if item.name in evaluated:
            continue
        if item.path is None:
            reason = "not found under the audio root"
        else:
            reason = failures.get(item.path) or "not in the index (it changed since it was indexed, or failed before)"
        rows.append({"path": item.name, "error": reason})
    return rows


def read_caption_set(
    csv_path: str | os.PathLike[str],
    audio_root: str | os.PathLike[str] | None = None,
    *,
    file_column: str | None = None,
    caption_columns: list[str] | None = None,
) -> CaptionSet:
    """Read a captions CSV (see the module docstring); raises DatasetError naming the problem and its line."""
    path = as_path(csv_path)
    text = read_text(path, DatasetError)
    names = FILE_COLUMNS if file_column is None else (file_column.lower(),)
    header, rows = csv_rows(path, text, DatasetError, "file, caption[, caption_2, ...]", names=names)
    column = _file_column(path, header, file_column)
    captions_in = _caption_columns(path, header, caption_columns)
    root = as_path(audio_root) if audio_root is not None else path.parent
    if not root.is_dir():
        raise not_found(root, "folder", kind=DatasetError)
    found: dict[str, tuple[str, str | None]] = {}  # a file value as written -> (the name it means, its audio file)
    merged: dict[str, list[str]] = {}  # the name a file value means -> its captions (AudioCaps: one a row)
    for number, row in rows:
        written = row.get(column, "")
        if not written.strip():
            raise DatasetError(path, f"line {number} has no {column}")
        if written not in found:
            name, files = _find_audio(root, written)
            if len(files) > 1:
                raise DatasetError(path, f"line {number}: {several_files(name, files)}")
            found[written] = name, next(iter(files), None)
        merged.setdefault(found[written][0], []).extend(row[c] for c in captions_in if row.get(c))
    uncaptioned = [name for name, captions in merged.items() if not captions]
    if uncaptioned:
        raise DatasetError(path, f"{uncaptioned[0]!r} has no caption in {', '.join(captions_in)}")
    audio = dict(found.values())  # name -> its audio file (the spellings of one name find the same file)
    items = tuple(CaptionedFile(name, audio[name], tuple(caps)) for name, caps in merged.items())
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return CaptionSet(os.path.abspath(path), digest, os.path.abspath(root), items)


def _file_column(path: Path, header: list[str], wanted: str | None) -> str:
    if wanted is not None:
        if wanted.lower() not in header:
            raise DatasetError(path, f"no column {wanted!r}; the header has {', '.join(header)}")
        return wanted.lower()
    found = next((name for name in FILE_COLUMNS if name in header), None)
    if found is None:
        raise DatasetError(
            path, f"no file column ({', '.join(FILE_COLUMNS)}); the header has {', '.join(header)}: use --file-column"
        )
    return found


def _caption_columns(path: Path, header: list[str], wanted: list[str] | None) -> list[str]:
    if wanted:
        missing = [name for name in wanted if name.lower() not in header]
        if missing:
            raise DatasetError(path, f"no column {missing[0]!r}; the header has {', '.join(header)}")
        return [name.lower() for name in wanted]
    found = [name for name in header if _CAPTION_COLUMN.match(name)]
    if not found:
        raise DatasetError(
            path,
            f"no caption column (caption, caption_1, ...); the header has {', '.join(header)}: use --caption-column",
        )
    return found


def _find_audio(root: Path, written: str) -> tuple[str, list[str]]:
    """The name a file value means (`file_name_spellings`: as written when such a file is found, else trimmed) and
    the absolute paths of the audio files under `root` it names: none, one, or several for a name without
    extension that several files have (`103.wav`, `103.flac`), which the caller refuses."""
    names = file_name_spellings(written)
    for name in names:
        if files := _audio_named(root, name):
            return name, files
    return names[-1], []


def _audio_named(root: Path, name: str) -> list[str]:
    """The file `name` is (in any Unicode form), or, for a name without an audio extension, every file of that
    name with one (`truth.lacks_audio_extension`, the rule truth files follow)."""
    for spelling in _spellings(name):
        candidate = root / spelling
        if candidate.is_file():
            return [os.path.abspath(candidate)]
        if lacks_audio_extension(spelling):
            extended = [candidate.with_name(candidate.name + extension) for extension in sorted(AUDIO_EXTENSIONS)]
            if files := [os.path.abspath(path) for path in extended if path.is_file()]:
                return files
    return []


def _spellings(name: str) -> list[str]:
    """A file name as the CSV writes it, then in Unicode's composed and decomposed forms: a list written on macOS
    spells "é" as "e" plus an accent, where a Linux folder keeps the name as the archive had it."""
    return list(dict.fromkeys([name, unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)]))
