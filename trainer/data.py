"""Training data: manifests of (audio, prompt, answer) examples, converters from common layouts, the Dataset.

A manifest is JSONL or CSV (chosen by extension), one example a row: `audio` (relative paths are resolved
against the manifest's folder, so a manifest moved with its audio still finds it; absolute ones are kept; a name
as written where that file exists, else trimmed: `text_files.listed_file`),
optional `start`/`end` in seconds, `task` (see `pengi_search.prompts`) or a free `prompt`, `question` for question
tasks, and `answer`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO, TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pengi_search.config import AudioConfig
from pengi_search.errors import PengiSearchError, UsageError
from pengi_search.paths import as_typed
from pengi_search.stop_signals import ignore_stop_signals, stop_signals_blocked
from pengi_search.text_files import (
    CSV_LIST_SEPARATOR,
    listed_file,
    open_text,
    rows_with_first_line,
    runs_over_lines,
    unclosed_quote,
)
from pengi_search.units import for_count
from trainer.augment import augment
from trainer.config import AugmentationSection
from trainer.templates import LIST_ANSWER_TASKS, TemplateError, render_answer, render_prompt

SAMPLE_RATE = AudioConfig().sample_rate
CLIP_SAMPLES = AudioConfig().clip_samples  # 7 s at 44.1 kHz, the length Pengi's audio encoder takes
FREE_PROMPT = "(free prompt)"  # what `task_mix` counts examples with a free prompt under
MISSING = "file not found"  # why a clip that is not there cannot be used, in the dry run and in training alike

PathLike = str | os.PathLike[str]


class ManifestError(UsageError):
    """A manifest (or a CSV to convert) that cannot be used; names the file and, for a bad row, its number."""

    def __init__(self, path: PathLike, reason: str, row: int | None = None) -> None:
        # As the user would type it here: the configuration resolved its manifests against its own folder.
        typed = as_typed(path)
        super().__init__(f"{typed}, row {row}" if row is not None else typed, reason)
        self.path = Path(path)
        self.row = row


class AudioClipError(PengiSearchError):
    """Audio that decoded but cannot be used: empty, not mono, not finite, or shorter than its segment."""


@dataclass(frozen=True)
class Example:
    """One training example. `row` is where it came from: the JSONL line or the CSV data row (1-based)."""

    audio: Path
    prompt: str
    answer: str
    task: str | None
    start: float | None
    end: float | None
    row: int


class _RowError(ValueError):
    """A problem with one row; the caller adds the file and row number."""


# --- Manifests ---------------------------------------------------------------------------------------------


def read_manifest(path: PathLike) -> list[Example]:
    """Parse a `.jsonl` or `.csv` manifest; the first bad row raises `ManifestError`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ManifestError(path, f"unknown manifest type {path.suffix!r}: use .jsonl or .csv")
    base = path.parent.resolve()
    csv_manifest = suffix == ".csv"
    with open_text(path, ManifestError) as handle:
        rows = _csv_records(path, handle, required=("audio",)) if csv_manifest else _jsonl(path, handle)
        examples = [_example(path, row, fields, base, split_lists=csv_manifest) for row, fields in rows]
    if not examples:
        raise ManifestError(path, "no examples")
    return examples


def task_mix(examples: Iterable[Example]) -> Counter[str]:
    """How many examples each task has (free prompts counted under `FREE_PROMPT`), for a dry-run summary."""
    return Counter(example.task or FREE_PROMPT for example in examples)


def _jsonl(path: Path, handle: TextIO) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as error:
            raise ManifestError(path, f"bad JSON: {error.msg} (column {error.colno})", line_number) from None
        if not isinstance(fields, dict):
            raise ManifestError(path, f"expected a JSON object, got {type(fields).__name__}", line_number)
        yield line_number, fields


def _csv_records(path: Path, handle: TextIO, required: Sequence[str]) -> Iterator[tuple[int, Mapping[str, str | None]]]:
    reader = csv.DictReader(handle)
    header = reader.fieldnames or []
    missing = [column for column in required if column not in header]
    if missing:
        columns = ", ".join(header)
        missing_columns = f"missing {for_count(len(missing), 'column', 'columns')} {', '.join(missing)}"
        raise ManifestError(path, f"{missing_columns}; the header has {columns}")
    for row, (first_line, record) in enumerate(rows_with_first_line(reader), start=1):
        if None in record:  # DictReader files the cells beyond the header under the key None
            raise ManifestError(path, f"more cells than the header's {len(header)} columns", row)
        if runs_over_lines(record.values()):
            raise ManifestError(path, unclosed_quote(first_line, reader.line_num))
        yield row, record


def _example(path: Path, row: int, fields: Mapping[str, Any], base: Path, *, split_lists: bool) -> Example:
    try:
        return _parse_fields(fields, row, base, split_lists=split_lists)
    except (_RowError, TemplateError) as error:
        raise ManifestError(path, str(error), row) from None


def _parse_fields(fields: Mapping[str, Any], row: int, base: Path, *, split_lists: bool) -> Example:
    if _text(fields, "audio") is None:
        raise _RowError("missing field 'audio'")
    task, free_prompt, question = _text(fields, "task"), _text(fields, "prompt"), _text(fields, "question")
    if task is not None and free_prompt is not None:
        raise _RowError("give 'task' or 'prompt', not both")
    if task is None and free_prompt is None:
        raise _RowError("missing field 'task' (or 'prompt')")
    if free_prompt is not None and question is not None:
        raise _RowError("'question' needs task 'qa', not a free prompt")
    prompt = free_prompt if task is None else render_prompt(task, question)
    answer = render_answer(task, _answer_value(fields, task, split_lists=split_lists))
    start, end = _seconds(fields, "start"), _seconds(fields, "end")
    if start is not None and end is not None and start >= end:
        raise _RowError(f"start ({start} s) must be before end ({end} s)")
    return Example(
        # As every CSV's file name is read (as written where that file exists, else trimmed); an absolute one
        # replaces `base`.
        audio=Path(os.path.normpath(listed_file(base, fields["audio"]))),
        prompt=prompt,
        answer=answer,
        task=task,
        start=start,
        end=end,
        row=row,
    )


def _text(fields: Mapping[str, Any], key: str) -> str | None:
    """A text field, stripped; absent, null and blank all read as None."""
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _RowError(f"field {key!r} must be text, got {value!r}")
    return value.strip() or None


def _answer_value(fields: Mapping[str, Any], task: str | None, *, split_lists: bool) -> str | list[str]:
    value = fields.get("answer")
    if value is None:
        raise _RowError("missing field 'answer'")
    if split_lists and task in LIST_ANSWER_TASKS and isinstance(value, str):
        return value.split(CSV_LIST_SEPARATOR)
    if not isinstance(value, (str, list)):
        raise _RowError(f"'answer' must be text or a list of labels, got {value!r}")
    return value


def _seconds(fields: Mapping[str, Any], key: str) -> float | None:
    value = fields.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _RowError(f"{key!r} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise _RowError(f"{key!r} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise _RowError(f"{key!r} must be a finite, non-negative number of seconds, got {value!r}")
    return seconds


# --- Converters from common layouts ------------------------------------------------------------------------

# The column the converters read each clip's file from by default; a relative path starts at the CSV's folder.
CSV_AUDIO_COLUMN = "filename"


def convert_labels_csv(
    src: PathLike,
    dest: PathLike,
    *,
    task: str = "sound_event",
    audio_column: str = CSV_AUDIO_COLUMN,
    label_column: str = "label",
    label_separator: str = CSV_LIST_SEPARATOR,
    underscores_to_spaces: bool = True,
) -> list[Example]:
    """Label CSV -> JSONL manifest for a labelling task (sound events, scenes, emotions...).

    For list tasks (sound events) a cell holds labels separated by `label_separator`. Underscores in labels
    ("alarm_clock") become spaces by default, since the model learns to write the answer as words.
    """
    render_prompt(task)  # an unknown task, or one that needs a question, fails here with the known tasks

    def as_answer(cell: str | None) -> str | list[str]:
        cell = cell or ""
        if underscores_to_spaces:
            cell = cell.replace("_", " ")
        return cell.split(label_separator) if task in LIST_ANSWER_TASKS else cell

    return _convert_csv(src, dest, task, audio_column, {"answer": label_column}, answer=as_answer)


def convert_captions_csv(
    src: PathLike, dest: PathLike, *, audio_column: str = CSV_AUDIO_COLUMN, caption_column: str = "caption"
) -> list[Example]:
    """Caption CSV -> JSONL manifest for the caption task."""
    return _convert_csv(src, dest, "caption", audio_column, {"answer": caption_column})


def convert_qa_csv(
    src: PathLike,
    dest: PathLike,
    *,
    audio_column: str = CSV_AUDIO_COLUMN,
    question_column: str = "question",
    answer_column: str = "answer",
) -> list[Example]:
    """Question-answer CSV -> JSONL manifest for the qa task."""
    return _convert_csv(src, dest, "qa", audio_column, {"question": question_column, "answer": answer_column})


def _convert_csv(
    src: PathLike,
    dest: PathLike,
    task: str,
    audio_column: str,
    columns: Mapping[str, str],
    answer: Callable[[str | None], str | list[str]] | None = None,
) -> list[Example]:
    """Write a checked manifest record per CSV row: its `task`, its audio and the manifest fields that `columns`
    maps to CSV columns, the answer passed through `answer` if given. Returns the examples, as `read_manifest(dest)`
    would."""
    src, dest = Path(src), Path(dest)
    if dest.suffix.lower() != ".jsonl":
        raise ManifestError(dest, "converters write JSONL manifests: name the destination *.jsonl")
    base = src.parent.resolve()
    records: list[dict[str, Any]] = []
    examples: list[Example] = []
    with open_text(src, ManifestError) as handle:
        for row, fields in _csv_records(src, handle, required=(audio_column, *columns.values())):
            record = {"audio": fields[audio_column], "task": task}
            record |= {field: fields[column] for field, column in columns.items()}
            if answer is not None:
                record["answer"] = answer(record["answer"])
            examples.append(_example(src, row, record, base, split_lists=False))
            records.append(record)
    if not examples:
        raise ManifestError(src, "no examples")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest_folder = dest.parent.resolve()
    with dest.open("w", encoding="utf-8") as out:
        for record, example in zip(records, examples, strict=True):
            record["audio"] = manifest_path(example.audio, dest_folder)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return examples


def manifest_path(audio: Path, folder: Path) -> str:
    """How a manifest in `folder` names `audio` (both resolved, as `read_manifest` resolves the folder): relative
    to the folder, `..` included, when the two lie in one folder below the file system's root, so that moving that
    folder keeps every clip found; else absolute (another drive, or trees that share only the root, such as
    /mnt/data and /home, which do not move together)."""
    try:
        common = Path(os.path.commonpath([audio, folder]))
    except ValueError:  # on different drives (Windows): no relative path leads from one to the other
        return str(audio)
    if common == Path(common.anchor):
        return str(audio)
    return Path(os.path.relpath(audio, folder)).as_posix()


# --- Audio ------------------------------------------------------------------------------------------------


class LoadAudio(Protocol):
    """A decoder: the file as mono float32 at `sample_rate`, like `pengi_search.audio.load_audio`."""

    def __call__(self, path: Path, *, sample_rate: int) -> np.ndarray: ...


def project_load_audio(path: Path, *, sample_rate: int) -> np.ndarray:
    """The project's decoder, imported on first use so that this module imports without it."""
    from pengi_search.audio import load_audio

    return load_audio(path, sample_rate=sample_rate)


def load_example_audio(example: Example, load_fn: LoadAudio, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The example's audio (its segment, if it has one) as mono float32; `AudioClipError` when unusable."""
    audio = np.asarray(load_fn(example.audio, sample_rate=sample_rate), dtype=np.float32)
    if audio.ndim != 1:
        raise AudioClipError(example.audio, f"expected mono audio, got an array of shape {audio.shape}")
    if audio.size == 0:
        raise AudioClipError(example.audio, "no samples")
    first = round((example.start or 0.0) * sample_rate)
    if first >= audio.size:
        lasts = f"{audio.size / sample_rate:.2f} s"
        raise AudioClipError(example.audio, f"segment starts at {example.start} s; the audio lasts {lasts}")
    # An end past the file is kept as the file's end: segment times are often rounded up.
    last = audio.size if example.end is None else round(example.end * sample_rate)
    audio = audio[first:last]
    if not np.isfinite(audio).all():
        raise AudioClipError(example.audio, "NaN or infinite samples")
    return audio


def check_audio(
    examples: Iterable[Example], load_fn: LoadAudio | None = None, *, sample_rate: int = SAMPLE_RATE
) -> tuple[list[Example], list[tuple[Example, str]]]:
    """Decode every example's audio; returns the usable examples and (example, reason) for the others."""
    load = load_fn or project_load_audio
    usable: list[Example] = []
    problems: list[tuple[Example, str]] = []
    for example in examples:
        reason = _audio_problem(example, load, sample_rate)
        if reason is None:
            usable.append(example)
        else:
            problems.append((example, reason))
    return usable, problems


def _audio_problem(example: Example, load_fn: LoadAudio, sample_rate: int) -> str | None:
    if not example.audio.is_file():
        return MISSING
    try:
        load_example_audio(example, load_fn, sample_rate)
    except Exception as error:  # decoders fail in many ways; each is a problem of this file, to be reported
        return _describe(error, example.audio)
    return None


def _describe(error: Exception, audio: Path) -> str:
    """Why `audio` could not be used, for a line that already names the file: `MISSING` for a file that is not
    there (as the dry run says it, whatever the decoder said), our own errors about it their reason alone, anything
    else its type and message."""
    if not audio.is_file():
        return MISSING
    if isinstance(error, PengiSearchError) and error.where and Path(error.where) == audio:
        return error.reason
    return f"{type(error).__name__}: {error}"


def fit_clip(audio: np.ndarray, clip_samples: int, offset: int = 0) -> np.ndarray:
    """`clip_samples` samples from `offset`; audio shorter than that is repeated to length (as Pengi pads)."""
    if audio.size < clip_samples:
        audio = np.tile(audio, -(-clip_samples // audio.size))
    return audio[offset : offset + clip_samples]


# --- Dataset ----------------------------------------------------------------------------------------------


class ExampleItem(TypedDict):
    audio: torch.Tensor
    prompt: str
    answer: str
    index: int


class FailedItem(TypedDict):
    index: int
    error: str


class Batch(TypedDict):
    audio: torch.Tensor  # (batch, clip_samples); (0, 0) when every item of the batch failed
    prompt: list[str]
    answer: list[str]
    index: list[int]
    skipped: list[tuple[int, str]]  # (dataset index, reason) of the items whose audio failed


class AudioTextDataset(Dataset):
    """Examples as fixed-length clips with their prompt and answer.

    Training takes a random window of each clip, a deterministic function of (seed, epoch, index), so a
    resumed run sees the same data, and changes it as `augmentation` says (seeded the same way); evaluation takes
    the start, unchanged. Audio that fails to load gives a `FailedItem` (its reason) instead of an exception;
    `collate_examples` drops it, listing it in `skipped`.
    Call `set_epoch` before each epoch; with persistent DataLoader workers the change would not reach them.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        train: bool,
        seed: int,
        load_audio: LoadAudio | None = None,
        sample_rate: int = SAMPLE_RATE,
        clip_samples: int = CLIP_SAMPLES,
        augmentation: AugmentationSection | None = None,
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.examples = list(examples)
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.load_audio = load_audio or project_load_audio
        self.sample_rate = sample_rate
        self.clip_samples = clip_samples
        self.augmentation = augmentation if train and augmentation is not None and augmentation.active else None

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> ExampleItem | FailedItem:
        example = self.examples[index]
        try:
            audio = load_example_audio(example, self.load_audio, self.sample_rate)
        except Exception as error:  # as in check_audio: skipped, never fatal to the epoch
            # Not reported here: this may be a DataLoader worker, any process of a run, any epoch. The item carries
            # the reason to the run, which says each clip once (`trainer.reporting.SkippedClips`).
            return FailedItem(index=index, error=_describe(error, example.audio))
        clip = fit_clip(audio, self.clip_samples, self.window_offset(audio.size, index))
        if self.augmentation is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index, 1))
            clip = augment(clip, self.augmentation, rng, self._other_clip)
        audio_tensor = torch.tensor(clip)
        return ExampleItem(audio=audio_tensor, prompt=example.prompt, answer=example.answer, index=index)

    def _other_clip(self, rng: np.random.Generator) -> np.ndarray | None:
        """A random training clip (a random window of it) to mix in; None when it fails to load."""
        example = self.examples[int(rng.integers(len(self.examples)))]
        try:
            audio = load_example_audio(example, self.load_audio, self.sample_rate)
        except Exception:  # mixing is optional: a clip that fails here fails (and is reported) on its own turn
            return None
        spare = max(0, audio.size - self.clip_samples)
        return fit_clip(audio, self.clip_samples, int(rng.integers(0, spare + 1)))

    def window_offset(self, num_samples: int, index: int) -> int:
        """Where the window starts: random (seeded) in training, 0 in evaluation or for a short clip."""
        spare = num_samples - self.clip_samples
        if not self.train or spare <= 0:
            return 0
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return int(rng.integers(0, spare + 1))


def collate_examples(items: Sequence[ExampleItem | FailedItem]) -> Batch:
    """Stack the clips and list prompts and answers; failed items are dropped and listed in `skipped`."""
    good = [item for item in items if "error" not in item]
    skipped = [(item["index"], item["error"]) for item in items if "error" in item]
    return Batch(
        audio=torch.stack([item["audio"] for item in good]) if good else torch.empty(0, 0),
        prompt=[item["prompt"] for item in good],
        answer=[item["answer"] for item in good],
        index=[item["index"] for item in good],
        skipped=skipped,
    )


def example_loader(
    dataset: Dataset, batch_size: int, sampler: Iterable[int], num_workers: int, **options: Any
) -> DataLoader:
    """A DataLoader of `dataset`'s rows in `sampler`'s order, collated by `collate_examples`: every loader of a run
    (training, validation, feature encoding) is made here, so that its workers all leave the stop signals to the run.

    Ctrl-C and a cluster's stop (systemd, SLURM preemption, `kill -- -PGID`) reach the whole process group. A worker
    that died of the signal made PyTorch raise "DataLoader worker (pid N) is killed by signal" in the run, mid-step,
    before it wrote its checkpoint; ignoring it, the worker goes on until the run, which stops after its step, shuts
    the loader down (and a worker whose run is gone ends by itself: PyTorch's workers watch their parent). The
    SIGTERM PyTorch sends a worker that has not ended 5 s after the shutdown is ignored too: it ends after its item."""
    return _RunLoader(
        dataset,
        batch_size,
        sampler=sampler,
        collate_fn=collate_examples,
        num_workers=num_workers,
        worker_init_fn=_leave_stop_signals_to_the_run,
        **options,
    )


class _RunLoader(DataLoader):
    def __iter__(self) -> Iterator[Batch]:
        # The workers start here. Born with the stop signals blocked, they take none before they ignore them: PyTorch
        # sets its own SIGTERM handler in a worker first, which ends it.
        with stop_signals_blocked():
            return super().__iter__()


def _leave_stop_signals_to_the_run(_worker_id: int) -> None:
    ignore_stop_signals()
