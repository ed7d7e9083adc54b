"""`describe` and `ask`: audio -> text, window by window."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..choices import Device, LongPrompt, StopRule
from ..json_values import json_seconds
from ..pathnames import path_fields, shown
from ..units import seconds_text, span_ends
from .common import (
    EXIT_OK,
    EXIT_PARTIAL,
    BatchOption,
    BeamOption,
    DeviceOption,
    FastOption,
    HiddenOption,
    LongPromptsOption,
    MaxLenOption,
    ModelOption,
    QuietOption,
    StopOption,
    ThreadsOption,
    UsageError,
    apply_threads,
    given_input,
    given_prompt,
    handle_errors,
    json_option,
    lasting_objects,
    options_from,
    out_console,
    print_json,
    report_skipped,
    warn,
)
from .first_use import fetches_model
from .inputs import audio_inputs, one_file_given
from .progress_bars import WindowProgress, progress_bar, show_progress

if TYPE_CHECKING:
    from ..inference import Engine
    from ..model_dir import ModelDir
    from ..window_batches import Decoding

FilesArgument = Annotated[
    list[str],
    typer.Argument(
        help="Audio files (wav, flac, ogg, opus, mp3, m4a, ...) or folders (searched recursively).", parser=given_input
    ),
]
HopOption = Annotated[
    float,  # at most a window apart (audio.WINDOW_SECONDS): windows further apart would leave gaps unheard
    typer.Option("--hop", min=0.5, max=7.0, help="Seconds between window starts (windows last 7 s)."),
]
AnswerPrefixOption = Annotated[
    str, typer.Option("--answer-prefix", help="Text the answer must start with; the model continues it.")
]


DescribeJsonOption = json_option("a list of {path, duration_s, windows, error}, one per file (one file too).")
AskJsonOption = json_option(
    "an object {path, duration_s, windows, error} for one file; a list of them for several files or a folder."
)


@dataclass(frozen=True)
class DescribeOptions:
    """The options `describe` and `ask` share: which files a folder stands for, which model on which device, the
    beam search, and the windows."""

    model: ModelOption = None
    device: DeviceOption = Device.auto
    beam: BeamOption = 3
    max_len: MaxLenOption = 30
    stop: StopOption = StopRule.both
    long_prompts: LongPromptsOption = LongPrompt.cut
    batch_size: BatchOption = None
    hop: HopOption = 7.0
    threads: ThreadsOption = None
    fast: FastOption = False
    hidden: HiddenOption = False


@dataclass
class FileResult:
    path: str  # as reached (`inputs.audio_inputs`)
    duration_s: float | None  # None: not decoded, so not known
    windows: list[dict]
    error: str | None = None


def _describe_files(
    files: list[str],
    prompts: dict[str, str] | None,
    options: DescribeOptions,
    *,
    answer_prefix: str,
    progress: bool,
) -> list[FileResult]:
    """Every window's answer to every prompt (None: the model's default tasks), for all files at once: windows from
    all files fill the batches. A file that cannot be decoded is reported (here, as it happens, and in its result)
    and the others go on; a folder stands for its audio files, and a file reached twice is described once, as
    `classify` classifies it."""
    from ..model_dir import ModelDir
    from ..prompts import describe_prompts
    from ..window_batches import Decoding

    paths, unreadable = audio_inputs(files, hidden=options.hidden)
    skipped = [_skipped(path, reason) for path, reason in unreadable]
    if not paths:
        return skipped
    model_dir = ModelDir.resolve(options.model)  # after the inputs: their mistakes are reported first
    if prompts is None:
        prompts = describe_prompts(model_dir.trained_tasks)  # the engine's `default_prompts`, known before it loads
    with Decoding(paths, hop_s=options.hop) as decoding:  # the files decode while the model's code imports and loads
        with lasting_objects():
            engine = _load_engine(model_dir, options)
        described = _describe_decoding(
            decoding, engine, prompts, options, answer_prefix=answer_prefix, progress=progress
        )
    return skipped + described


def _skipped(path: str, reason: str) -> FileResult:
    report_skipped(path, reason)
    return FileResult(path, None, [], reason)  # the path is a field of its own, as in `similar` and `classify`


def _load_engine(model_dir: ModelDir, options: DescribeOptions) -> Engine:
    from ..inference import Engine

    apply_threads(options.threads)
    return Engine.load(model_dir, options.device, options.batch_size, options.long_prompts, fast=options.fast)


def _describe_decoding(
    decoding: Decoding,
    engine: Engine,
    prompts: dict[str, str],
    options: DescribeOptions,
    *,
    answer_prefix: str,
    progress: bool,
) -> list[FileResult]:
    """`Engine.describe_windows` on batches that mix the windows of all the files (`map_windows`), each file's
    windows back in its own result."""
    from functools import partial

    from ..decoding import GenerationConfig
    from ..window_batches import map_windows

    gen = GenerationConfig(beam=options.beam, max_len=options.max_len, stop=options.stop)
    answer = partial(engine.describe_windows, prompts=prompts, generation=gen, answer_prefix=answer_prefix)
    results = []
    with progress_bar() as bar:
        reporter = WindowProgress(bar, "describing", visible=progress)
        batch_size = engine.windows_per_batch(len(prompts))
        for outcome in map_windows(decoding, answer, batch_size=batch_size, progress=reporter):
            if outcome.error is not None:
                results.append(_skipped(outcome.path, outcome.error))
                continue
            if outcome.truncation is not None:
                warn(f"{shown(outcome.path)}: {outcome.truncation}")
            results.append(
                FileResult(outcome.path, outcome.duration_s, [window.to_json() for window in outcome.results])
            )
    return results


def _to_json(results: list[FileResult]) -> list[dict]:
    return [
        {**path_fields(r.path), "duration_s": json_seconds(r.duration_s), "windows": r.windows, "error": r.error}
        for r in results
    ]


def _print_text(results: list[FileResult], show_keys: bool) -> None:
    from rich.text import Text

    for r in results:
        if r.duration_s is None:  # not decoded: said on stderr as it happened
            continue
        out_console.print(Text.assemble((shown(r.path), "bold"), f"  ({seconds_text(r.duration_s)})"), soft_wrap=True)
        for w, span in zip(r.windows, _spans(r.windows), strict=True):
            for key, text in w["answers"].items():
                label = f"{key}: " if show_keys else ""
                out_console.print(Text(f"{span}  {label}{text}"), soft_wrap=True)
                span = " " * len(span)


def _spans(windows: list[dict]) -> list[str]:
    """Each window's time, padded alike within a file: the starts right-aligned, so that the dashes line up, and the
    ends left-aligned, so that the answers start in one column (`7.0-14.0s` after `0.0-7.0s`)."""
    ends = [span_ends(w["start_s"], w["end_s"]) for w in windows]
    start_width = max([6, *(len(start) for start, _ in ends)])
    end_width = max([len(end) for _, end in ends], default=0) + 1  # and its "s"
    return [f"  {start:>{start_width}}-{end + 's':<{end_width}}" for start, end in ends]


def _show(results: list[FileResult], *, json_output: bool, asked: bool, one_file: bool) -> None:
    """Print the results and exit (3 when a file failed); `asked`: `ask`'s form, bare answers (and for a single
    file given, `one_file`, its object rather than a list)."""
    if json_output:
        data = _to_json(results)
        print_json(data[0] if asked and one_file else data)
    else:
        _print_text(results, show_keys=not asked)
    raise typer.Exit(EXIT_PARTIAL if any(r.error for r in results) else EXIT_OK)


@handle_errors
@fetches_model
@options_from(DescribeOptions, "options")
def describe(
    files: FilesArgument,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt",
            "-p",
            help="Prompt to answer (repeatable). Default: caption, metadata, sound events.",
            parser=given_prompt,
        ),
    ] = None,
    *,
    options: DescribeOptions,
    answer_prefix: AnswerPrefixOption = "",
    json_output: DescribeJsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Describe what each 7 s window of each file sounds like.

    By default every window gets Pengi's caption ("generate audio caption"), metadata ("generate metadata") and
    sound events ("this is a sound of"); a model you trained is asked the tasks of its training data instead.
    --prompt asks your own, e.g. --prompt "this acoustic scene is".

    Example: pengi-search describe rain.wav --json
    """
    from ..prompts import named_prompts

    prompts = named_prompts(prompt) if prompt else None
    progress = show_progress(quiet, json_output)
    results = _describe_files(files, prompts, options, answer_prefix=answer_prefix, progress=progress)
    _show(results, json_output=json_output, asked=False, one_file=one_file_given(files))


def _check_question_last(files: list[str] | None, question: str | None) -> None:
    """The files, then the question: a missing one is named, and so is the order of a question given before a file
    (`ask "is it rain?" rain.wav`, `ask a.wav "is it rain?" b.wav`), which would otherwise read as a file named after
    the question."""
    example = 'pengi-search ask engine.wav "is the engine healthy?"'
    if not files or question is None:  # Click gives a lone argument to the question: files or question missing
        if question is None:
            said = ""
        elif Path(question).exists():
            said = f"no question after {question!r}: "
        else:  # a lone question: the files are what is missing
            said = f"no audio file before the question {question!r}: "
        raise UsageError("", f"{said}give the audio files, then the question, e.g. {example}")
    missing = [str(path) for path in files if not Path(path).exists()]  # the question among them, given before one
    if missing and Path(question).exists():
        said = f"{missing[0]!r} is no file or folder, and {question!r} is one"
        raise UsageError("", f"{said}: give the audio files, then the question, e.g. {example}")


@handle_errors
@fetches_model
@options_from(DescribeOptions, "options")
def ask(
    # Not required for the parser: with one argument Click would name the files as missing when the question is.
    files: Annotated[
        list[str] | None, typer.Argument(help="Audio files or folders (the question comes last).", parser=given_input)
    ] = None,
    question: Annotated[
        str | None, typer.Argument(help='A question about the sound, e.g. "is the engine healthy?"')
    ] = None,
    *,
    options: DescribeOptions,
    json_output: AskJsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Answer a question about sounds (audio question answering), for each 7 s window of each file.

    Example: pengi-search ask engine.wav "is the engine healthy?"
    """
    from ..prompts import ask_prompts

    _check_question_last(files, question)
    prompts = ask_prompts(question)
    progress = show_progress(quiet, json_output)
    results = _describe_files(files, prompts, options, answer_prefix="", progress=progress)
    _show(results, json_output=json_output, asked=True, one_file=one_file_given(files))
