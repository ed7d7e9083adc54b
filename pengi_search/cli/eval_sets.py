"""`eval retrieval` and `eval caption`: a captioned set (Clotho's or AudioCaps' CSV layout) measured on a library.

Both index the set's audio first (into the output folder's own library unless `--db` names one; files already
indexed and unchanged are reused), then score what the library holds: the indexing step is the indexer's, here at
the command line, and the scoring is `pengi_search.evaluation`'s. A library needs a text embedder for its captions,
which a model without text tower has not unless `--text-embedder` names one: `caption` then captions the files
itself, with no library, and scores every metric but the embedding cosine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..choices import EXACT_MODE, Device, Rank, StopRule, decoding_settings
from ..prompts import TASK_PROMPTS
from .common import (
    BatchOption,
    BeamOption,
    DeviceOption,
    MaxLenOption,
    ModelOption,
    QuietOption,
    ThreadsOption,
    UsageError,
    apply_threads,
    check_output_folder,
    given_db,
    given_prompt,
    handle_errors,
    options_from,
    warn,
)
from .eval_report import OutputOption, Report, ReportJsonOption, finish
from .first_use import fetches_model
from .progress_bars import IndexProgress, WindowProgress, progress_bar, show_progress
from .search import HybridWeightOption, hybrid_weight_for

if TYPE_CHECKING:
    from indexer.run_report import IndexSummary

    from ..embedders import TextEmbedder
    from ..evaluation.datasets import CaptionSet
    from ..library import Library
    from ..model_dir import ModelDir

CaptionsArgument = Annotated[
    Path, typer.Argument(help="CSV with a file column and caption columns (Clotho or AudioCaps layout).")
]
AudioRootOption = Annotated[
    Path | None,
    typer.Option("--audio-root", help="Folder the CSV's file names are relative to (default: the CSV's folder)."),
]
FileColumnOption = Annotated[
    str | None, typer.Option("--file-column", help="Column naming the audio file (default: file_name, file, ...).")
]
CaptionColumnOption = Annotated[
    list[str] | None,
    typer.Option("--caption-column", help="Caption column, repeatable (default: caption, caption_1, ...)."),
]
EvalDbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Library to evaluate; audio not yet in it is indexed first (default: index.db in the output folder).",
        parser=given_db,
    ),
]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", min=0, help="Decoding processes while indexing (default: cores/2, <= 4).")
]
PromptOption = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt",
        "-p",
        help="Index prompts (repeatable); the first one's answer is the caption.",
        parser=given_prompt,
    ),
]
TextEmbedderOption = Annotated[
    str | None,
    typer.Option("--text-embedder", help="Caption embedder: pengi or sentence-transformers:NAME (as for index)."),
]
ReindexOption = Annotated[
    bool, typer.Option("--reindex", help="Index the set again (after changing beam, prompts or max length).")
]


Failures = dict[str, str]  # path -> why it could not be indexed
OpenEmbedder = Callable[[], "TextEmbedder"]  # the library's caption embedder, opened when called
NO_TOWER_COSINE = (
    "needs a text embedder, and the model has no text tower: --text-embedder sentence-transformers:NAME gives one"
)


@dataclass(frozen=True)
class EvalSet:
    """Where the captioned set's audio is and how it is indexed when the library lacks it (retrieval, caption)."""

    audio_root: AudioRootOption = None
    file_column: FileColumnOption = None
    caption_column: CaptionColumnOption = None
    db: EvalDbOption = None
    model: ModelOption = None
    device: DeviceOption = Device.auto
    workers: WorkersOption = None
    batch_size: BatchOption = None
    prompt: PromptOption = None
    text_embedder: TextEmbedderOption = None
    beam: BeamOption = 3
    max_len: MaxLenOption = 30
    reindex: ReindexOption = False
    threads: ThreadsOption = None

    def to_json(self) -> dict[str, Any]:
        return {"prompts": list(self.prompt or ()) or "index default", "beam": self.beam, "max_len": self.max_len}


@handle_errors
@fetches_model
@options_from(EvalSet, "evalset")
def retrieval(
    captions: CaptionsArgument,
    *,
    evalset: EvalSet,
    output: OutputOption = Path("eval-retrieval"),
    rank: Annotated[
        list[Rank] | None,
        typer.Option(
            "--rank",
            help="Ranking to measure (repeatable): caption, audio, hybrid, as `query --rank`. \\[default: every one "
            "the model supports]",
            show_default=False,
        ),
    ] = None,
    hybrid_weight: HybridWeightOption = None,
    quiet: QuietOption = False,
    json_output: ReportJsonOption = False,
) -> None:
    """Text -> audio and audio -> text retrieval: every caption is a query. R@1, R@5, R@10 and mAP@10 per ranking.

    Example: pengi-search eval retrieval clotho_captions_evaluation.csv --audio-root clotho/evaluation -o runs/retrieval
    """
    from ..embedders import TextEmbedderError
    from ..evaluation.retrieval import available_rankings, evaluate_retrieval
    from ..model_dir import ModelDir
    from ..query_embedders import audio_query_embedder

    weight = hybrid_weight_for(hybrid_weight, rank or list(Rank))  # unasked, every ranking the model supports

    def score(library: Library, caption_set: CaptionSet, open_embedder: OpenEmbedder, failures: Failures) -> Report:
        embedder = open_embedder()
        try:
            audio_embedder = audio_query_embedder(library, evalset.model, evalset.device, caption_embedder=embedder)
        except TextEmbedderError:  # a model without text tower: caption matching only
            audio_embedder = None
            if hybrid_weight is not None:  # a library another model indexed: `--rank hybrid` is refused below
                raise _weight_without_text_tower() from None
        try:
            rankings = available_rankings(
                library, embedder, caption_set.audio_root, audio_embedder, ranks=rank or (), hybrid_weight=weight
            )
        except ValueError as exc:
            raise UsageError("", str(exc)) from None
        return evaluate_retrieval(library, caption_set, rankings, failures, notify=warn)

    caption_set = _prepared_set(captions, evalset, output)
    # The model that indexes the set is known before it indexes (minutes, for a real set): without its text tower,
    # there is no hybrid ranking for the weight to weigh.
    if hybrid_weight is not None and not ModelDir.resolve(evalset.model).has_text_encoder:
        raise _weight_without_text_tower()
    _evaluate_set("retrieval", caption_set, evalset, output, score, quiet=quiet, json_output=json_output)


def _weight_without_text_tower() -> UsageError:
    return UsageError(
        "--hybrid-weight", "weighs --rank hybrid, which needs the text tower that the index's model lacks: leave it out"
    )


@handle_errors
@fetches_model
@options_from(EvalSet, "evalset")
def caption(
    captions: CaptionsArgument,
    *,
    evalset: EvalSet,
    output: OutputOption = Path("eval-caption"),
    java_metrics: Annotated[
        bool,
        typer.Option("--java-metrics/--no-java-metrics", help="METEOR and SPICE, when Java can run them (slow start)."),
    ] = True,
    quiet: QuietOption = False,
    json_output: ReportJsonOption = False,
) -> None:
    """Captioning: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr and caption-embedding cosine.

    METEOR and SPICE need Java and the pycocoevalcap package (the `eval` extra; SPICE also Stanford CoreNLP);
    without them the report says why they are missing. The embedding cosine needs a text embedder: a model without
    text tower given no --text-embedder (nor --db) is scored on the other metrics, its files captioned unindexed.

    Example: pengi-search eval caption clotho_captions_evaluation.csv --audio-root clotho/evaluation -o runs/caption
    """
    from ..evaluation.captioning import evaluate_captions, library_captions
    from ..model_dir import ModelDir

    def score(library: Library, caption_set: CaptionSet, open_embedder: OpenEmbedder, failures: Failures) -> Report:
        captions = library_captions(library, caption_set)
        return evaluate_captions(
            caption_set, captions, _caption_embedder(open_embedder), java=java_metrics, failures=failures
        )

    caption_set = _prepared_set(captions, evalset, output)  # its mistakes are said before the model is looked for
    model_dir = ModelDir.resolve(evalset.model)
    if model_dir.has_text_encoder or evalset.text_embedder is not None or evalset.db is not None:
        _evaluate_set("caption", caption_set, evalset, output, score, quiet=quiet, json_output=json_output)
        return
    _caption_without_library(
        caption_set, evalset, model_dir, output, java_metrics, quiet=quiet, json_output=json_output
    )


def _caption_embedder(open_embedder: OpenEmbedder) -> TextEmbedder | str:
    """The library's caption embedder, or why it cannot be had (a sentence-transformers model not cached, offline):
    only the embedding cosine needs it, so the other metrics are not held back for it."""
    from ..embedders import HubUnreachableError, TextEmbedderError

    try:
        return open_embedder()
    except (HubUnreachableError, TextEmbedderError) as exc:
        return str(exc)


def _caption_without_library(
    caption_set: CaptionSet,
    evalset: EvalSet,
    model_dir: ModelDir,
    output: Path,
    java: bool,
    *,
    quiet: bool,
    json_output: bool,
) -> None:
    """`eval caption` of a model without text tower and no text embedder (a `labels-*` model, offline): the files
    are captioned now, with no library to keep them (a library's captions need a text embedder), and scored on
    every metric but the embedding cosine."""
    from ..choices import LongPrompt
    from ..decoding import GenerationConfig
    from ..evaluation.captioning import decoded_captions, decoding_of, evaluate_captions
    from ..inference import Engine

    prompt = (evalset.prompt or [TASK_PROMPTS["caption"]])[0]
    engine = Engine.load(model_dir, evalset.device, evalset.batch_size, LongPrompt.cut)
    generation = GenerationConfig(beam=evalset.beam, max_len=evalset.max_len, stop=StopRule.both)
    engine.check_generation([prompt], generation)
    with progress_bar() as bar:
        progress = WindowProgress(bar, "captioning", visible=show_progress(quiet, json_output))
        found, failures = decoded_captions(
            engine, caption_set, prompt, generation, workers=evalset.workers, progress=progress
        )
    result = evaluate_captions(caption_set, found, NO_TOWER_COSINE, java=java, failures=failures)
    setup = {
        "model": model_dir.name,
        "model_fingerprint": model_dir.fingerprint,
        "text_embedder": None,
        "database": None,  # nothing indexed: the captions were decoded for this report alone
        **evalset.to_json(),
        "caption_prompts": [prompt],
        "caption_decoding": [decoding_of(decoding_settings(evalset.beam, evalset.max_len, StopRule.both), engine.mode)],
    }
    finish("caption", result, caption_set.to_json(), setup, None, output, json_output)


def _evaluate_set(
    kind: str,
    caption_set: CaptionSet,
    evalset: EvalSet,
    output: Path,
    score: Callable[[Library, CaptionSet, OpenEmbedder, Failures], Report],
    *,
    quiet: bool,
    json_output: bool,
) -> None:
    """Index what the library lacks of the set, `score` the library with its caption embedder (opened when `score`
    asks for it) and the files that failed to index, and write the `kind` report."""
    from ..evaluation.captioning import caption_origins
    from ..evaluation.datasets import indexed_sha256
    from ..query_embedders import query_embedder

    library, summary = _indexed_library(caption_set, evalset, output, quiet=quiet, json_output=json_output)
    with library:
        open_embedder = partial(query_embedder, library, evalset.model, evalset.device)
        result = score(library, caption_set, open_embedder, _failures(summary, library))
        setup = _library_setup(library, evalset)
        setup |= caption_origins(library, [item.path or "" for item in caption_set.found])
        # The files the library has just hashed (indexing them, or an earlier run) are not read again.
        dataset = caption_set.to_json(indexed_sha256(library.store, caption_set.audio_root))
    _warn_other_captions(setup, evalset)
    finish(kind, result, dataset, setup, summary, output, json_output)


def _warn_other_captions(setup: dict[str, Any], evalset: EvalSet) -> None:
    """The library keeps the captions it was first indexed with: asking for another prompt, beam or length without
    --reindex would measure the old captions under the new settings' names."""
    from ..evaluation.captioning import decoding_of

    wanted = {
        "caption_prompts": (evalset.prompt or [TASK_PROMPTS["caption"]])[0],
        "caption_decoding": decoding_of(decoding_settings(evalset.beam, evalset.max_len, StopRule.both), EXACT_MODE),
    }
    for key, what in (("caption_prompts", "answer"), ("caption_decoding", "were decoded with")):
        held = setup[key]
        if held and held != [wanted[key]]:
            found = ", ".join(repr(value) for value in held)
            warn(
                f"the library's captions of this set {what} {found}, not {wanted[key]!r}: --reindex captions them anew"
            )


def _prepared_set(captions: Path, evalset: EvalSet, output: Path) -> CaptionSet:
    """The captioned set, read once the threads are set and the output folder is known to be usable (both before
    the model is looked for, and before anything runs)."""
    apply_threads(evalset.threads)
    check_output_folder(output)
    return _read_set(captions, evalset)


def _read_set(captions: Path, evalset: EvalSet) -> CaptionSet:
    from ..evaluation.datasets import read_caption_set

    caption_set = read_caption_set(
        captions, evalset.audio_root, file_column=evalset.file_column, caption_columns=evalset.caption_column
    )
    if not caption_set.found:
        raise UsageError(captions, f"none of its {len(caption_set.items)} files is under {caption_set.audio_root}")
    return caption_set


def _indexed_library(
    caption_set: CaptionSet, evalset: EvalSet, output: Path, *, quiet: bool, json_output: bool
) -> tuple[Library, IndexSummary]:
    """Index the set's files that the library lacks (or all, with --reindex) and open the library."""
    from indexer.pipeline import IndexerError, run_index
    from indexer.run_report import IndexOptions

    from ..audio_workers import default_workers
    from ..library import Library
    from ..scan import ScanError

    output.mkdir(parents=True, exist_ok=True)
    db = evalset.db or str(output / "index.db")
    options = IndexOptions(
        roots=[item.path for item in caption_set.found if item.path],
        db=db,
        model=evalset.model,
        device=evalset.device,
        workers=default_workers() if evalset.workers is None else evalset.workers,
        batch_size=evalset.batch_size,
        prompts=tuple(evalset.prompt or ()),
        text_embedder=evalset.text_embedder,
        beam=evalset.beam,
        max_len=evalset.max_len,
        reindex=evalset.reindex,
    )
    try:
        with progress_bar() as bar:
            summary = run_index(options, IndexProgress(bar, visible=show_progress(quiet, json_output)))
    except (IndexerError, ScanError) as exc:
        raise UsageError("", str(exc)) from exc
    return Library.open(db, read_only=True), summary


def _failures(summary: IndexSummary, library: Library) -> Failures:
    """Why files could not be indexed: this run's reason, else the one the library recorded when an earlier run
    failed on the file (an unchanged file that failed is not tried again, so this run has none to give)."""
    failures = {path: f"failed to index: {reason}" for path, reason in library.store.failed_files()}
    return failures | {item.path: f"failed to index: {item.message}" for item in summary.failed}


def _library_setup(library: Library, evalset: EvalSet) -> dict[str, Any]:
    meta = library.store.index_meta()
    return {
        "model": None if meta is None else meta.model.name,
        "model_fingerprint": None if meta is None else meta.model.fingerprint,
        "text_embedder": None if meta is None else meta.embedder.name,
        "database": library.db_url,
        **evalset.to_json(),
    }
