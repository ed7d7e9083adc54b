"""`describe` and `ask`: audio -> text, window by window."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..choices import Device, LongPrompt, StopRule
from ..pathnames import path_fields, shown
from .common import (
    EXIT_OK,
    EXIT_PARTIAL,
    BatchOption,
    BeamOption,
    DeviceOption,
    JsonOption,
    LongPromptsOption,
    MaxLenOption,
    ModelOption,
    QuietOption,
    StopOption,
    UsageError,
    err_console,
    fetches_model,
    handle_errors,
    options_from,
    out_console,
    print_json,
    progress_bar,
    show_progress,
)

if TYPE_CHECKING:
    from ..decoding import GenerationConfig
    from ..inference import Engine

FilesArgument = Annotated[list[Path], typer.Argument(help="Audio files (wav, flac, ogg, opus, mp3, m4a, ...).")]
HopOption = Annotated[float, typer.Option("--hop", min=0.5, help="Seconds between window starts (windows last 7 s).")]
AnswerPrefixOption = Annotated[
    str, typer.Option("--answer-prefix", help="Text the answer must start with; the model continues it.")
]


@dataclass(frozen=True)
class DescribeOptions:
    """The options `describe` and `ask` share: which model on which device, the beam search, and the windows."""

    model: ModelOption = None
    device: DeviceOption = Device.auto
    beam: BeamOption = 3
    max_len: MaxLenOption = 30
    stop: StopOption = StopRule.both
    long_prompts: LongPromptsOption = LongPrompt.cut
    batch_size: BatchOption = 16
    hop: HopOption = 7.0


@dataclass
class FileResult:
    path: Path
    duration_s: float
    windows: list[dict]
    error: str | None = None


def _describe_files(
    files: list[Path],
    prompts: dict[str, str],
    options: DescribeOptions,
    *,
    answer_prefix: str,
    progress: bool,
) -> list[FileResult]:
    """Every file's answers; a path that does not exist is bad usage (nothing is described), a file that cannot
    be decoded is reported in its result (the others are still described)."""
    from ..decoding import GenerationConfig
    from ..inference import Engine
    from ..model_dir import ModelDir

    missing = [path for path in files if not path.exists()]
    if missing:
        raise UsageError("", f"{missing[0]}: no such file")
    engine = Engine.load(ModelDir.resolve(options.model), options.device, options.batch_size, options.long_prompts)
    gen = GenerationConfig(beam=options.beam, max_len=options.max_len, stop=options.stop)
    results = []
    with progress_bar() as bar:
        task = bar.add_task("describing", total=len(files), rate="", visible=progress)
        for path in files:
            results.append(_describe_file(engine, path, prompts, gen, hop=options.hop, answer_prefix=answer_prefix))
            bar.advance(task)
    return results


def _describe_file(
    engine: Engine, path: Path, prompts: dict[str, str], gen: GenerationConfig, *, hop: float, answer_prefix: str
) -> FileResult:
    """Every window's answer to every prompt; a file that cannot be decoded is reported and skipped, one cut
    short is described as far as it decodes, with a warning."""
    import numpy as np
    from rich.markup import escape

    from ..audio import AudioDecodeError, DecodeReport, iter_windows

    report = DecodeReport()  # what the decoders print is kept here rather than shown
    try:
        windows = list(iter_windows(path, hop_s=hop, report=report))
    except AudioDecodeError as err:
        err_console.print(f"[red]skipped[/] {escape(str(err))}", soft_wrap=True)
        return FileResult(path, 0.0, [], str(err))
    truncation = report.truncation()
    if truncation is not None:
        err_console.print(f"[yellow]warning:[/] {escape(shown(str(path)))}: {truncation}", soft_wrap=True)
    keys, texts = list(prompts), list(prompts.values())
    embeds = engine.audio_embeddings(np.stack([w.samples for w in windows]))
    answers = engine.generate(embeds, texts, gen, additional_text=answer_prefix)
    rows = [
        {
            "start_s": round(w.start_s, 3),
            "end_s": round(w.end_s, 3),
            "answers": {k: a.text for k, a in zip(keys, per_window, strict=True)},
            "scores": {k: round(a.score, 4) for k, a in zip(keys, per_window, strict=True)},
        }
        for w, per_window in zip(windows, answers, strict=True)
    ]
    return FileResult(path, report.duration_s, rows)


def _to_json(results: list[FileResult]) -> list[dict]:
    return [
        {**path_fields(r.path), "duration_s": round(r.duration_s, 3), "windows": r.windows, "error": r.error}
        for r in results
    ]


def _print_text(results: list[FileResult], show_keys: bool) -> None:
    from rich.markup import escape

    for r in results:
        if r.error:
            continue
        out_console.print(f"[bold]{escape(shown(str(r.path)))}[/]  ({r.duration_s:.1f} s)", soft_wrap=True)
        for w in r.windows:
            span = f"  {w['start_s']:6.1f}-{w['end_s']:.1f}s"
            for key, text in w["answers"].items():
                label = f"{key}: " if show_keys else ""
                out_console.print(f"{span}  {escape(label)}{escape(text)}", soft_wrap=True)
                span = " " * len(span)


def _show(results: list[FileResult], *, json_output: bool, asked: bool) -> None:
    """Print the results and exit (3 when a file failed); `asked`: `ask`'s form, one file's object and bare answers."""
    if json_output:
        data = _to_json(results)
        print_json(data[0] if asked else data)
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
        typer.Option("--prompt", "-p", help="Prompt to answer (repeatable). Default: caption, metadata, sound events."),
    ] = None,
    *,
    options: DescribeOptions,
    answer_prefix: AnswerPrefixOption = "",
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Describe what each 7 s window of each file sounds like.

    By default every window gets Pengi's caption ("generate audio caption"), metadata ("generate metadata") and
    sound events ("this is a sound of"); --prompt asks your own, e.g. --prompt "this acoustic scene is".

    Example: pengi-search describe rain.wav --json
    """
    from ..prompts import DESCRIBE_TASKS, TASK_PROMPTS

    prompts = {p: p for p in prompt} if prompt else {task: TASK_PROMPTS[task] for task in DESCRIBE_TASKS}
    progress = show_progress(quiet, json_output)
    results = _describe_files(files, prompts, options, answer_prefix=answer_prefix, progress=progress)
    _show(results, json_output=json_output, asked=False)


@handle_errors
@fetches_model
@options_from(DescribeOptions, "options")
def ask(
    file: Annotated[Path, typer.Argument(help="Audio file.")],
    question: Annotated[str, typer.Argument(help='A question about the sound, e.g. "is the engine healthy?"')],
    *,
    options: DescribeOptions,
    json_output: JsonOption = False,
) -> None:
    """Answer a question about a sound (audio question answering), for each 7 s window.

    Example: pengi-search ask engine.wav "is the engine healthy?"
    """
    from ..prompts import question_prompt

    prompts = {"answer": question_prompt(question)}
    results = _describe_files([file], prompts, options, answer_prefix="", progress=False)
    _show(results, json_output=json_output, asked=True)
