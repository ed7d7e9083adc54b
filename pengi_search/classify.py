"""Zero-shot classification of audio files against a list of labels, and its evaluation against known labels.

Two methods (the paper's close-ended tasks):
- `text` (the paper's default): Pengi captions each 7 s window ("generate audio caption"); the captions and the
  labels (through `--template`, default "{label}") are embedded by a text embedder (Pengi's own CLIP tower by
  default) and compared by cosine similarity. A file's score for a label is the mean over its windows of the
  window's similarity, so every part of a long file counts equally.
- `loglik`: the log-likelihood of each label as Pengi's answer to a prompt ("this is a sound of" by default),
  ranked by the mean log-probability per token of the answer (`mean`, default: labels of different lengths
  compete fairly) or by its sum (`total`: favours short labels), averaged over the file's windows. The answer is
  the template with the label filled in; a template that starts with the prompt ("this is a sound of {label}")
  has the prompt removed, since the model already heard it.

A file that is indexed and unchanged (size and mtime as stored) by the same model reuses what the index holds, so
no audio is decoded: its stored audio embeddings (loglik), or its stored captions (text method) when they are what
this run would write, decoded with its `--beam`, `--max-len` and `--stop` and in its mode (exact, or `--fast`), as
`TextRecord.decoded_as` decides. Other captions would make the numbers depend on how the library was indexed.

Labels files: one label per line (UTF-8, surrounding spaces trimmed, blank lines only at the end, no control
character or line separator inside a label; a line starting with `#` is a comment), or a `.csv` file with a header
that has a `label` column (its distinct values, in order of first appearance, e.g. a dataset's metadata; an `answer`
column, as `train init`'s label map has, gives the text each label is scored as, one answer a label). Truth files: see
`pengi_search.truth`.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pengi_search.errors import empty_file

from .choices import EXACT_MODE, LoglikScore, LongPrompt, Method, StopRule, decoding_settings
from .embedders import EmbedderSpec, TextEmbedder, embed_given, open_text_embedder
from .json_values import json_score, score_text
from .pathnames import path_fields, shown
from .paths import as_path
from .prompts import TASK_PROMPTS
from .text_files import csv_rows, read_text
from .ties import rank, tied_labels
from .truth import LabelsError, Truth

if TYPE_CHECKING:
    from .audio import Window
    from .db import TextRecord
    from .inference import Engine
    from .library import Library
    from .messages import Notify
    from .model_dir import ModelDir
    from .stored import StoredWindows
    from .window_batches import Progress

DEFAULT_TEMPLATE = "{label}"
LINE_ENDS = re.compile(r"\r\n|\r|\n")
COMMENT = "#"  # starts a line of a plain-text labels file that is a note, not a label
BREAKING = ("Cc", "Zl", "Zp")  # Unicode categories no label may hold: control characters, line and paragraph breaks

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Labels and truth files


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """The labels of a labels file (see the module docstring); raises LabelsError naming the problem and line."""
    return read_label_map(path)[0]


def read_label_map(path: str | os.PathLike[str]) -> tuple[list[str], dict[str, str]]:
    """The labels of a labels file, and label -> the text it is scored as where a CSV's `answer` column gives one
    (the label map `pengi-search train init` writes teaches "alarm clock" for the label alarm_clock; {} for a file
    without that column). Raises LabelsError naming the problem and line."""
    path = as_path(path)
    text = read_text(path, LabelsError)
    if path.suffix.lower() == ".csv":
        return _labels_from_csv(path, text)
    # Lines end as a text editor ends them (\n, \r\n or \r), not at every character `str.splitlines` breaks on:
    # a form feed or U+2028 inside a label is refused by _check_characters rather than made two labels unseen.
    lines = LINE_ENDS.split(text)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise LabelsError(path, empty_file("write one label per line"))
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        _check_characters(path, line, number)  # before trimming, which takes a form feed at either end for a space
        label = line.strip()
        if label.startswith(COMMENT):  # a heading or a note, as configuration files have; never scored as a label
            continue
        if not label:
            raise LabelsError(path, f"line {number} is blank; write one label per line, without blank lines")
        if label in first_line:
            raise LabelsError(path, f"duplicate label {label!r} on line {number} (first on line {first_line[label]})")
        first_line[label] = number
    if not first_line:
        raise LabelsError(path, f"no labels, only comments (lines starting with {COMMENT}); write one label per line")
    return list(first_line), {}


def _labels_from_csv(path: Path, text: str) -> tuple[list[str], dict[str, str]]:
    header, rows = csv_rows(path, text, LabelsError, "label[, answer]")
    if "label" not in header:
        raise LabelsError(path, f"a CSV labels file needs a 'label' column; the header has {', '.join(header)}")
    labels: dict[str, None] = {}
    texts: dict[str, tuple[str, int]] = {}  # label -> its answer, and the line that gives it
    for number, row in rows:
        label, answer = row.get("label"), row.get("answer")
        if not label:
            raise LabelsError(path, f"line {number} has no label")
        _check_characters(path, label, number)
        labels[label] = None
        if not answer:
            continue
        given, line = texts.setdefault(label, (answer, number))
        if given != answer:  # one of them would have been scored, the other dropped unseen
            raise LabelsError(path, f"label {label!r} on line {number} has another answer than on line {line}")
    return list(labels), {label: answer for label, (answer, _) in texts.items()}


def _check_characters(path: Path, label: str, number: int) -> None:
    """A label is one line of text: a control character (a NUL byte, an escape, a form feed) means the file is
    binary or damaged, and a Unicode line or paragraph separator would break the label where nothing shows it."""
    found = next((ch for ch in label if unicodedata.category(ch) in BREAKING and ch != "\t"), None)
    if found is not None:
        kind = "control character" if unicodedata.category(found) == "Cc" else "line break"
        raise LabelsError(path, f"line {number} holds the {kind} {found!r}: is this a text file?")


def apply_template(template: str, label: str) -> str:
    if "{label}" not in template:
        raise ValueError(f"the template {template!r} has no {{label}} placeholder")
    return template.replace("{label}", label)


def loglik_answer(template: str, prompt: str, label: str) -> str:
    """The answer whose likelihood is scored: the filled template, without the prompt it may start with."""
    text = apply_template(template, label).strip()
    if text.lower().startswith(prompt.strip().lower()):
        text = text[len(prompt.strip()) :].strip()
    if not text:
        raise ValueError(f"the template {template!r} leaves no answer for the label {label!r}")
    return text


# ---------------------------------------------------------------------------------------------------------------
# Classification


@dataclass(frozen=True)
class Prediction:
    """Scores of every label for one file, best first."""

    path: str
    ranked: list[tuple[str, float]]
    window_count: int
    source: str  # "index" (stored captions or audio vectors reused) or "decoded"

    @property
    def label(self) -> str:
        return self.ranked[0][0]

    @property
    def score(self) -> float:
        return self.ranked[0][1]

    def tie_groups(self) -> Iterator[list[str]]:
        """The ranked labels in the groups that tie, as `rank` ordered them: a group of several at the top is a best
        label that another order of tied labels would change. Built as read, and not kept: a report reads a file's
        groups down to its first true label, and keeping all of them cost 20,000 files x 527 labels about 1 GB."""
        return ([label for label, _ in group] for group in tied_labels(self.ranked))

    @functools.cached_property
    def tied_best(self) -> list[str]:
        """The labels that tie for best, by name (the first is `label`): one unless another order of tied labels
        would predict another. Kept, unlike the other groups: a report reads it twice a file, and it is small."""
        return next(self.tie_groups())

    def to_json(self, top: int) -> dict[str, Any]:
        return {
            **path_fields(self.path),
            "label": self.label,
            "score": json_score(self.score),
            "top": [{"label": label, "score": json_score(score)} for label, score in self.ranked[:top]],
            "window_count": self.window_count,
            "source": self.source,
        }


@dataclass(frozen=True)
class Failure:
    """A file that could not be classified, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class ClassifySettings:
    method: Method = Method.text
    template: str = DEFAULT_TEMPLATE
    prompt: str = TASK_PROMPTS["sound_event"]
    loglik_score: LoglikScore = LoglikScore.mean
    text_embedder: EmbedderSpec = EmbedderSpec()  # Pengi's CLIP tower, or a sentence-transformers model
    beam: int = 3
    max_len: int = 30
    stop: StopRule = StopRule.both
    long_prompts: LongPrompt = LongPrompt.cut

    def __post_init__(self) -> None:
        # Library callers may pass plain strings: hold the members, and refuse (ValueError) any other value.
        object.__setattr__(self, "method", Method(self.method))
        object.__setattr__(self, "loglik_score", LoglikScore(self.loglik_score))
        object.__setattr__(self, "stop", StopRule(self.stop))
        object.__setattr__(self, "long_prompts", LongPrompt(self.long_prompts))
        apply_template(self.template, "")


def _model_dir_of(model_dir: ModelDir | str | os.PathLike[str] | None, engine: Engine | None) -> ModelDir:
    """The model directory a classifier names: as given, else the engine's, else the default one. Given both, they
    must name one model: the labels are embedded by the directory's text tower and the captions written by the
    engine's model, and the index is reused by the directory's identity, so two models would mix silently."""
    from .model_dir import ModelDir

    if model_dir is None and engine is not None:
        if engine.model_dir is None:  # the default model could be another than the engine's
            raise ValueError("an engine built without Engine.load has no model directory: give model_dir")
        return engine.model_dir
    if not isinstance(model_dir, ModelDir):
        model_dir = ModelDir.resolve(None if model_dir is None else os.fspath(model_dir))
    # An engine built without Engine.load knows no directory: model_dir is then the caller's word for its model.
    loaded = None if engine is None else engine.model_dir
    if loaded is not None and not loaded.same_model(model_dir):
        raise ValueError(
            f"the engine runs the model at {loaded.path} ({loaded.identity}), not the one model_dir names, at "
            f"{model_dir.path} ({model_dir.identity}): give only the engine, or that model's engine"
        )
    return model_dir


def _checked_labels(labels: Sequence[str]) -> list[str]:
    """A script's labels, refused (ValueError) where a labels file's would be: none, a blank one, one given twice
    (scored alike, it would split a file's votes), and one string, whose letters would be the labels (a labels
    file's name, meant for `read_labels`)."""
    if isinstance(labels, str):
        raise ValueError(f"labels: a list of labels, not one string ({labels!r}; a labels file: read_labels(path))")
    if not labels:
        raise ValueError("no labels to classify with")
    if blank := [index for index, label in enumerate(labels) if not label.strip()]:
        raise ValueError(f"label {blank[0] + 1} is blank")
    if twice := [label for label, count in Counter(labels).items() if count > 1]:
        raise ValueError(f"label {twice[0]!r} is given twice")
    return list(labels)


class Classifier:
    """Classifies files against fixed labels; loads the model only when a file needs it, and only once."""

    def __init__(
        self,
        labels: Sequence[str],
        settings: ClassifySettings | None = None,
        *,
        model_dir: ModelDir | str | os.PathLike[str] | None = None,
        library: Library | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        engine: Engine | None = None,
        fast: bool = False,
        texts: Mapping[str, str] | None = None,
        notify: Notify = log.warning,
    ) -> None:
        """`settings`: how labels are scored (None: `ClassifySettings()`, the command's defaults). `model_dir`: a
        `ModelDir`, or what `--model` takes; None: the engine's, else the installed default. `engine`: that
        model, already loaded (a script or a server shares one; ValueError if `Engine.load` loaded another model
        than `model_dir` names); otherwise loaded when needed (on `device`, with `batch_size` windows per batch,
        None: the device's default, in `--fast` mode if `fast`). `texts`: what a label is scored as, where it is
        not the label itself (`read_label_map`). `notify`: told of each label the text embedder cuts.
        """
        self.labels = _checked_labels(labels)
        self.texts = [(texts or {}).get(label, label) for label in self.labels]
        self.settings = settings = settings or ClassifySettings()
        self.model_dir = _model_dir_of(model_dir, engine)
        if settings.method is Method.text:  # refused now, before anything is loaded or decoded
            # A model trained on labels has no text tower, and likelihood scoring is what it was trained for.
            settings.text_embedder.check(self.model_dir, or_instead="classify with --method loglik")
        self.library = library if library is not None and self._index_is_usable(library) else None
        self.device = device
        self.batch_size = batch_size
        self.fast = fast
        self.notify = notify
        self._engine = engine
        # What a stored caption must record to be this run's own (`TextRecord.decoded_as`): the engine given, or
        # the one `engine()` will load, decodes in --fast mode or not, and the settings do not change.
        self._fast_captions = fast if engine is None else engine.mode != EXACT_MODE
        self._caption_decoding = decoding_settings(
            settings.beam, settings.max_len, settings.stop, fast=self._fast_captions
        )
        self._embedder: TextEmbedder | None = None
        self._label_vectors: np.ndarray | None = None
        self._answers = (
            [loglik_answer(settings.template, settings.prompt, text) for text in self.texts]
            if settings.method is Method.loglik
            else []
        )
        self._answer_ids: list[list[int]] | None = None  # the answers' token ids, once the engine is loaded

    def _index_is_usable(self, library: Library) -> bool:
        """Stored captions and audio vectors serve only when the index was built with this very model."""
        from .query_embedders import built_by

        return built_by(library, self.model_dir)

    def engine(self) -> Engine:
        if self._engine is None:
            from .inference import Engine

            self._engine = Engine.load(
                self.model_dir, self.device, self.batch_size, self.settings.long_prompts, fast=self.fast
            )
        return self._engine

    def embedder(self) -> TextEmbedder:
        """The text embedder; Pengi's tower is the loaded model's when the model is loaded first (as
        `classify_files` does when some file needs it)."""
        if self._embedder is None:
            spec = self.settings.text_embedder
            self._embedder = open_text_embedder(spec, self.model_dir, self.device, engine=self._engine)
        return self._embedder

    def label_vectors(self) -> np.ndarray:
        if self._label_vectors is None:
            texts = [apply_template(self.settings.template, text) for text in self.texts]
            self._label_vectors = embed_given(self.embedder(), texts, self.notify, what="label", names=self.labels)
        return self._label_vectors

    def classify(self, path: str | os.PathLike[str]) -> Prediction:
        """One file's prediction; raises AudioDecodeError when it cannot be decoded."""
        from .audio_decoders import AudioDecodeError

        (outcome,) = self.classify_files([path])
        if isinstance(outcome, Failure):
            raise AudioDecodeError(outcome.path, outcome.reason)
        return outcome

    def classify_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: Progress | None = None
    ) -> Iterator[Prediction | Failure]:
        """Each file's prediction (or why it failed), in order. Files the index holds are scored from what it
        stored, loglik's audio vectors of many files in each batch; the others are decoded and run through the model
        together, windows from all of them in each batch (`window_batches`). `progress` counts the windows of both."""
        from .window_batches import map_windows

        stored = list(zip([os.fspath(p) for p in paths], self._stored_evidence(paths), strict=True))
        to_decode = [path for path, found in stored if found is None]
        held = [found for _, found in stored if found is not None]
        self._open_models(decoding=bool(to_decode))
        if progress is not None:  # the stored files' windows are known: the bar's total starts with them
            progress.start(len(stored))
            for found in held:
                progress.counted(len(found))
        batch_size = self.engine().windows_per_batch(1) if to_decode else 1  # each window is asked one prompt
        outcomes = map_windows(to_decode, self._window_scores, batch_size=batch_size, progress=progress, started=True)
        from_index = self._stored_scores(held, progress)
        for path, found in stored:
            if found is not None:
                scores = next(from_index)
                yield Prediction(path, rank(self.labels, scores.mean(axis=0)), len(scores), "index")
                continue
            outcome = next(outcomes)
            if outcome.error is not None:
                yield Failure(path, outcome.error)
            else:
                scores = np.stack(outcome.results)  # (windows, labels)
                yield Prediction(path, rank(self.labels, scores.mean(axis=0)), len(scores), "decoded")

    def _stored_scores(self, held: list[Any], progress: Progress | None) -> Iterator[np.ndarray]:
        """Each stored file's (windows, labels) scores, in order. Loglik scores the audio vectors of many files
        together, in the batches decoded windows take (the engine runs each batch's prefixes once, all labels
        reading their cache): file by file, a short clip's one window made a batch of its own. Stored captions are
        embedded a file at a time, as the text embedder always has."""
        from .window_batches import batched_rows

        if self.settings.method is Method.loglik:
            size = self.engine().windows_per_batch(1)
            for rows in batched_rows(held, self._loglik, batch_size=size, progress=progress):
                yield np.stack(rows)
            return
        for captions in held:
            scores = self._text_scores(captions)
            if progress is not None:
                progress.advance(files=1, windows=len(captions))
            yield scores

    def _open_models(self, *, decoding: bool) -> None:
        """What the files need, opened before the first is decoded: a text embedder that cannot be used (a folder
        that is not there, a hub that cannot be asked, a name it does not have) fails before any audio work, and
        the labels it cuts are said up front. A sentence-transformers model opens first, as it needs nothing of
        Pengi's (failing costs no model load); Pengi's text tower after the model, whose tower it then is."""
        text_method = self.settings.method is Method.text
        if text_method and not self.settings.text_embedder.is_pengi:
            self.label_vectors()
        if decoding:
            self.engine()
        if text_method:
            self.label_vectors()

    def _stored_evidence(self, paths: Sequence[str | os.PathLike[str]]) -> list[Any]:
        """For each file, what the index holds that this method scores (its captions, or its audio vectors), or None
        when it holds nothing usable (no library of this model, not indexed, changed since, or a caption missing or
        decoded otherwise than this run decodes). Read for all the files together (`stored_windows_of`): file by
        file, a folder of stored files asked the store a few queries each."""
        if self.library is None:
            return [None] * len(paths)
        from .stored import stored_windows_of

        loglik = self.settings.method is Method.loglik
        return [self._evidence(found) for found in stored_windows_of(self.library, paths, audio=loglik)]

    def _evidence(self, stored: StoredWindows | None) -> Any:
        """What this method scores of one file's stored windows (see `_stored_evidence`)."""
        if stored is None:
            return None
        if self.settings.method is Method.loglik:
            return stored.vectors  # audio embeddings do not depend on decoding
        captions = [self._own_caption(window.texts) for window in stored.windows]
        return None if any(c is None for c in captions) else captions

    def _own_caption(self, texts: Sequence[TextRecord]) -> str | None:
        """The window's stored caption if this run would have written it (`TextRecord.decoded_as`), else None."""
        prompt, decoding, fast = TASK_PROMPTS["caption"], self._caption_decoding, self._fast_captions
        return next((t.text for t in texts if t.prompt == prompt and t.decoded_as(decoding, fast=fast)), None)

    def _window_scores(self, windows: list[Window]) -> list[np.ndarray]:
        """The label scores of each decoded window: its caption against the labels, or the labels' likelihoods."""
        engine = self.engine()
        embeds = engine.audio_embeddings(np.stack([w.samples for w in windows]))
        if self.settings.method is Method.loglik:
            return list(self._loglik(embeds))
        from .decoding import GenerationConfig

        gen = GenerationConfig(beam=self.settings.beam, max_len=self.settings.max_len, stop=self.settings.stop)
        captions = [answers[0].text for answers in engine.generate(embeds, [TASK_PROMPTS["caption"]], gen)]
        return list(self._text_scores(captions))

    def _text_scores(self, captions: list[str]) -> np.ndarray:
        """(windows, labels) cosine similarities of the captions' and the labels' text embeddings."""
        return self.embedder().embed(captions) @ self.label_vectors().T

    def _loglik(self, vectors: Any) -> np.ndarray:
        """(windows, labels) scores of the labels as answers to the prompt, for audio embeddings: an (n, d) array
        or tensor, or a list of n (d,) rows (`batched_rows` hands stored vectors over one row a window)."""
        import torch

        if isinstance(vectors, list):
            vectors = np.stack(vectors)
        if isinstance(vectors, np.ndarray):
            vectors = torch.from_numpy(vectors)
        engine = self.engine()
        if self._answer_ids is None:  # encoded (and checked against the model's positions) once a run
            self._answer_ids = engine.candidate_ids(self.settings.prompt, self._answers)
        scores = engine.score_ids(vectors, self.settings.prompt, self._answer_ids)
        field = self.settings.loglik_score.value  # a CandidateScore attribute
        return np.array([[getattr(s, field) for s in row] for row in scores], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate(predictions: Sequence[Prediction], truth: Truth) -> dict[str, Any]:
    """Accuracy and per-class precision, recall, F1 and support over the files the truth file knows."""
    pairs = [(truth.label_of(p.path), p.label) for p in predictions]
    known = [(expected, got) for expected, got in pairs if expected is not None]
    unmatched = [p.path for p, (expected, _) in zip(predictions, pairs, strict=True) if expected is None]
    classes = sorted({label for pair in known for label in pair})
    # Counted in one pass over the files: a pass per class would be 527 passes over AudioSet's 20,000 files.
    right = Counter(expected for expected, got in known if expected == got)
    predictions_of = Counter(got for _, got in known)
    files_of = Counter(expected for expected, _ in known)
    per_class = {}
    for label in classes:
        tp, predicted, support = right[label], predictions_of[label], files_of[label]
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        # Not rounded: macro F1 is their mean, and a mean of rounded values is off in the last digits shown.
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    correct = right.total()
    return {
        "files": len(known),
        "correct": correct,
        "accuracy": correct / len(known) if known else None,
        "per_class": per_class,
        "unmatched": unmatched,
    }


def top_string(prediction: Prediction, top: int) -> str:
    """The CSV form of the best labels: "label:score;label:score"."""
    return ";".join(f"{label}:{score_text(score)}" for label, score in prediction.ranked[:top])


def write_csv(predictions: Sequence[Prediction], out: io.TextIOBase | Any, top: int) -> None:
    """One row per file, scores to the decimals JSON gives them; a file name that is not valid UTF-8 is written
    escaped (`pathnames.shown`)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "label", "score", "top"])
    for p in predictions:
        writer.writerow([shown(p.path), p.label, score_text(p.score), top_string(p, top)])
