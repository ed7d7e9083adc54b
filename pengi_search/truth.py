"""Truth files: the known labels of audio files, a CSV that `classify --truth` and `eval classify` score against.

A truth CSV has a label column (`label`, or FSD50K's `labels`) and a file column (`file`, `filename`, FSD50K's
`fname`, or `path`). A label cell may hold several labels separated by `;` (`CSV_LIST_SEPARATOR`, as a training
manifest's list of sound events) or by another separator the caller gives (FSD50K writes `"Bark,Dog"`), and a file
may be named on several rows, one label a row (AudioSet's layout): either way the file has several labels, and the
truth is multi-label. Paths are relative to the CSV's folder (or absolute), as written when such a file exists, else
trimmed (`text_files.listed_file`). A file is also matched by its name when the truth lists that name once: by any
file of that name for a bare name (`dog.wav`), only by one whose path ends with the row's for a row that names folders
(`fold1/dog.wav`: a file in a folder `fold1`, never `fold2/dog.wav`, which is another recording). A name without an
audio extension (FSD50K's `fname` is `64760` for `64760.wav`) matches the file's name without its own, so too.
"""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .audio import AUDIO_EXTENSIONS
from .errors import UsageError
from .pathnames import shown
from .paths import as_path
from .text_files import CSV_LIST_SEPARATOR, csv_rows, listed_file, read_text
from .units import named

PATH_COLUMNS = ("file", "filename", "fname", "path")
LABEL_COLUMNS = ("label", "labels")


class LabelsError(UsageError):
    """A labels or truth file that cannot be used."""


@dataclass(frozen=True)
class Truth:
    """Known labels of files, from a truth CSV: one label a file, or several (a multi-label truth)."""

    by_path: dict[str, tuple[str, ...]]  # absolute path, in Unicode's composed form -> its labels
    by_name: dict[str, str]  # file name -> its absolute path in `by_path`, for names listed once
    # What first gives a file several labels ("line 2 gives a file several labels"); None: one label a file
    multi_label_reason: str | None = None
    # absolute path in `by_path` -> the file as the CSV spells it (its first row's), for messages
    spellings: dict[str, str] = field(default_factory=dict)
    # absolute path in `by_path` -> how many of its last components its rows name (`_named_parts`); absent: 1, a
    # bare name, which a file of that name in any folder is
    named_parts: dict[str, int] = field(default_factory=dict)

    @property
    def multi_label(self) -> bool:
        """Whether any file has several labels: then every file is scored as a set of labels (mAP), not one."""
        return self.multi_label_reason is not None

    @property
    def labels(self) -> list[str]:
        """The distinct labels, in the order of the rows (and cells) that first give them."""
        return list(dict.fromkeys(label for labels in self.by_path.values() for label in labels))

    def labels_of(self, path: str | os.PathLike[str]) -> tuple[str, ...] | None:
        entry = self.entry_of(path)
        return None if entry is None else self.by_path[entry]

    def label_of(self, path: str | os.PathLike[str]) -> str | None:
        """The file's one label; ValueError for a file of several, which only a multi-label evaluation scores."""
        labels = self.labels_of(path)
        if labels is None:
            return None
        if len(labels) > 1:
            raise ValueError(f"{path} has several labels in the truth: score it with labels_of")
        return labels[0]

    def as_listed(self, entry: str) -> str:
        """The listed file `entry` (a key of `by_path`) as the truth CSV spells it, relative to its folder or not."""
        return self.spellings.get(entry, entry)

    def entry_of(self, path: str | os.PathLike[str]) -> str | None:
        """The listed file (its key in `by_path`) that `path` is: the same absolute path, else the same name when
        the truth lists that name once (and the row's folders end `path`'s), else either of them without the file's
        extension where the truth lists it without one; None when the truth does not list it."""
        absolute = _composed(os.path.abspath(path))
        exact = absolute if absolute in self.by_path else self._same_name(absolute)
        if exact is not None:
            return exact
        bare = Path(absolute)
        if bare.suffix.lower() not in AUDIO_EXTENSIONS:
            return None
        stem = str(bare.with_suffix(""))
        entry = stem if stem in self.by_path else self._same_name(stem)
        return entry if entry is not None and lacks_audio_extension(entry) else None

    def _same_name(self, path: str) -> str | None:
        """The listed file of `path`'s name, listed once, when `path` ends with the folders its row names: a row
        `fold1/dog.wav` is `/copy/fold1/dog.wav`, never `fold2/dog.wav`, another fold's recording, which would be
        scored against this one's labels."""
        entry = self.by_name.get(Path(path).name)
        if entry is None:
            return None
        named = self.named_parts.get(entry, 1)
        return entry if Path(path).parts[-named:] == Path(entry).parts[-named:] else None

    def ambiguous(self, paths: Iterable[str]) -> tuple[str, list[str]] | None:
        """A listed file without extension that several of `paths` are (`64760` for 64760.wav and 64760.flac), with
        them; None when each such entry is at most one file. Which one the truth means cannot be told."""
        found: dict[str, list[str]] = {}
        for path in paths:
            entry = self.entry_of(path)
            if entry is not None and lacks_audio_extension(entry):
                found.setdefault(entry, []).append(path)
        clash = next(((entry, files) for entry, files in found.items() if len(files) > 1), None)
        return None if clash is None else (self.as_listed(clash[0]), clash[1])


def lacks_audio_extension(name: str) -> bool:
    """Whether a listed file name has no audio extension, so that it names the audio file of that name with any
    (FSD50K's `64760`, AudioCaps' YouTube ids): the rule of truth files and caption sets alike."""
    return Path(name).suffix.lower() not in AUDIO_EXTENSIONS


def several_files(listed: str, files: Sequence[str]) -> str:
    """Why a listed name without extension that several audio files have (`64760` for 64760.wav and 64760.flac) is
    refused, naming them: which one the list means cannot be told, and taking one (or both) would be a guess."""
    return f"{listed!r}, without extension, names {len(files)} files: {named([shown(f) for f in files])}"


def _named_parts(written: str) -> int:
    """How many of a listed file's last path components its row names: 1 for a bare name (`dog.wav`, `./dog.wav`),
    2 for `fold1/dog.wav` and `../fold1/dog.wav` (`..` names no folder, only leaves one), all for an absolute path,
    which then matches no other file. Counted as `os.path.abspath` resolves the row: `a/../dog.wav` is bare."""
    return sum(part != ".." for part in Path(os.path.normpath(written.strip())).parts)


def _composed(path: str) -> str:
    """A path in Unicode's composed form, as truth files are matched: a CSV written on macOS spells "é" as "e"
    plus an accent, where a Linux folder keeps the name as the archive had it."""
    return unicodedata.normalize("NFC", path)


def read_truth(path: str | os.PathLike[str], separator: str = CSV_LIST_SEPARATOR) -> Truth:
    """Read a truth CSV (see the module docstring); `separator` splits a label cell into labels. Raises LabelsError
    naming the problem and its line."""
    path = as_path(path)
    header, rows = csv_rows(path, read_text(path, LabelsError), LabelsError, "file, label", names=PATH_COLUMNS)
    column = next((name for name in PATH_COLUMNS if name in header), None)
    label_column = next((name for name in LABEL_COLUMNS if name in header), None)
    if column is None or label_column is None:
        raise LabelsError(
            path, f"a truth CSV needs a 'label' column and one of {', '.join(PATH_COLUMNS)}; it has {', '.join(header)}"
        )
    by_path: dict[str, tuple[str, ...]] = {}
    lines: dict[str, int] = {}  # absolute path -> the first line that names it
    reason = None
    spellings: dict[str, str] = {}
    named_parts: dict[str, int] = {}
    for number, row in rows:
        name, cell = row.get(column, ""), row.get(label_column, "")
        if not name.strip() or not cell:
            raise LabelsError(path, f"line {number} lacks a {column if not name.strip() else label_column}")
        labels = _cell_labels(path, cell, number, separator)
        absolute = _composed(os.path.abspath(listed_file(path.parent, name)))
        known = by_path.get(absolute, ())
        # A file named on several rows has every row's labels (AudioSet's layout: one row a file and label).
        by_path[absolute] = tuple(dict.fromkeys([*known, *labels]))
        lines.setdefault(absolute, number)
        spellings.setdefault(absolute, name)
        # A file some row names bare is matched by name as any bare name is: that row asks no folder of it.
        parts = _named_parts(name)
        named_parts[absolute] = min(named_parts.get(absolute, parts), parts)
        if reason is None and len(labels) > 1:
            reason = f"line {number} gives a file several labels"
        elif reason is None and len(by_path[absolute]) > 1:
            reason = f"{name!r} on line {number} has another label than on line {lines[absolute]}"
    names = Counter(Path(p).name for p in by_path)
    by_name = {Path(p).name: p for p in by_path if names[Path(p).name] == 1}
    return Truth(by_path, by_name, reason, spellings, named_parts)


def _cell_labels(path: Path, cell: str, number: int, separator: str) -> tuple[str, ...]:
    """The labels of a truth cell, trimmed, each once: `dog;bark` is two. An empty one (`dog;`, `dog;;bark`) is
    refused rather than dropped: it is more likely a mistyped label than a deliberate nothing."""
    labels = [label.strip() for label in cell.split(separator)]
    if not all(labels):
        raise LabelsError(path, f"line {number} has an empty label in {cell!r} (labels are separated by {separator!r})")
    return tuple(dict.fromkeys(labels))
