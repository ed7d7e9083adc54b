"""`describe` and `ask`: audio -> text, window by window."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    EXIT_OK,
    EXIT_PARTIAL,
    BatchOption,
    BeamOption,
    DeviceOption,
    JsonOption,
    MaxLenOption,
    ModelOption,
    QuietOption,
    err_console,
    handle_errors,
    out_console,
    print_json,
    progress_bar,
    show_progress,
)

FilesArgument = Annotated[list[Path], typer.Argument(help="Audio files (wav, flac, ogg, opus, mp3, m4a, ...).")]
HopOption = Annotated[float, typer.Option("--hop", min=0.5, help="Seconds between window starts (windows last 7 s).")]
AnswerPrefixOption = Annotated[
    str, typer.Option("--answer-prefix", help="Text the answer must start with; the model continues it.")
]


@dataclass
class FileResult:
    path: Path
    duration_s: float
    windows: list[dict]
    error: str | None = None


def _describe_files(
    files: list[Path],
    prompts: dict[str, str],
    *,
    model: str | None,
    device: str,
    beam: int,
    max_len: int,
    batch_size: int,
    hop: float,
    answer_prefix: str,
    quiet: bool,
    json_output: bool,
) -> list[FileResult]:
    import numpy as np

    from ..audio import AudioDecodeError, iter_windows, probe
    from ..decoding import GenerationConfig
    from ..inference import Engine
    from ..model_dir import ModelDir

    engine = Engine.load(ModelDir.resolve(model), device, batch_size)
    gen = GenerationConfig(beam=beam, max_len=max_len)
    keys, texts = list(prompts), list(prompts.values())
    results = []
    with progress_bar() as bar:
        task = bar.add_task("describing", total=len(files), rate="", visible=show_progress(quiet, json_output))
        for path in files:
            try:
                info = probe(path)
                windows = list(iter_windows(path, hop_s=hop))
            except AudioDecodeError as err:
                results.append(FileResult(path, 0.0, [], str(err)))
                err_console.print(f"[red]skipped[/] {err}")
                bar.advance(task)
                continue
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
            results.append(FileResult(path, info.duration_s, rows))
            bar.advance(task)
    return results


def _to_json(results: list[FileResult]) -> list[dict]:
    return [
        {"path": str(r.path), "duration_s": round(r.duration_s, 3), "windows": r.windows, "error": r.error}
        for r in results
    ]


def _print_text(results: list[FileResult], show_keys: bool) -> None:
    for r in results:
        if r.error:
            continue
        out_console.print(f"[bold]{r.path}[/]  ({r.duration_s:.1f} s)")
        for w in r.windows:
            span = f"  {w['start_s']:6.1f}-{w['end_s']:.1f}s"
            for key, text in w["answers"].items():
                label = f"{key}: " if show_keys else ""
                out_console.print(f"{span}  {label}{text}", soft_wrap=True)
                span = " " * len(span)


def _exit_code(results: list[FileResult]) -> int:
    return EXIT_PARTIAL if any(r.error for r in results) else EXIT_OK


@handle_errors
def describe(
    files: FilesArgument,
    prompt: Annotated[
        list[str] | None,
        typer.Option("--prompt", "-p", help="Prompt to answer (repeatable). Default: caption, metadata, sound events."),
    ] = None,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    beam: BeamOption = 3,
    max_len: MaxLenOption = 30,
    batch_size: BatchOption = 16,
    hop: HopOption = 7.0,
    answer_prefix: AnswerPrefixOption = "",
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Describe what each 7 s window of each file sounds like.

    By default every window gets Pengi's caption ("generate audio caption"), metadata ("generate metadata") and
    sound events ("this is a sound of"); --prompt asks your own, e.g. --prompt "this acoustic scene is".

    Example: pengi-search describe rain.wav --json
    """
    from ..inference import DEFAULT_PROMPTS

    prompts = {p: p for p in prompt} if prompt else dict(DEFAULT_PROMPTS)
    results = _describe_files(
        files,
        prompts,
        model=model,
        device=device,
        beam=beam,
        max_len=max_len,
        batch_size=batch_size,
        hop=hop,
        answer_prefix=answer_prefix,
        quiet=quiet,
        json_output=json_output,
    )
    if json_output:
        print_json(_to_json(results))
    else:
        _print_text(results, show_keys=True)
    raise typer.Exit(_exit_code(results))


@handle_errors
def ask(
    file: Annotated[Path, typer.Argument(help="Audio file.")],
    question: Annotated[str, typer.Argument(help='A question about the sound, e.g. "is the engine healthy?"')],
    model: ModelOption = None,
    device: DeviceOption = "auto",
    beam: BeamOption = 3,
    max_len: MaxLenOption = 30,
    batch_size: BatchOption = 16,
    hop: HopOption = 7.0,
    json_output: JsonOption = False,
) -> None:
    """Answer a question about a sound (audio question answering), for each 7 s window.

    Example: pengi-search ask engine.wav "is the engine healthy?"
    """
    from ..inference import question_prompt

    prompts = {"answer": question_prompt(question)}
    results = _describe_files(
        [file],
        prompts,
        model=model,
        device=device,
        beam=beam,
        max_len=max_len,
        batch_size=batch_size,
        hop=hop,
        answer_prefix="",
        quiet=True,
        json_output=json_output,
    )
    if json_output:
        print_json(_to_json(results)[0])
    else:
        _print_text(results, show_keys=False)
    raise typer.Exit(_exit_code(results))
