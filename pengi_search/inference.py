"""The inference engine: a loaded Pengi model with its tokenizers, turning audio windows into texts and scores.

Everything is batched: many (window, prompt) rows go through the encoders, the mappers and the decoder at once.
A prompt's text prefix is computed once per engine, not once per clip; a window's audio prefix goes through the
language model once for all the prompts asked about it (`kv_cache.SharedPrefix`). On CUDA the model runs under
bf16 autocast, in larger batches.

`Engine.describe` and `Engine.ask` are the one-call forms of `pengi-search describe` and `ask` for a file or an
array of samples; the commands run the same `describe_windows` on batches that mix the windows of many files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .audio import WINDOW_SECONDS, Window, iter_windows, windows_of
from .audio_decoders import DecodeReport
from .choices import LongPrompt, device_unavailable
from .chunking import chunk_slices, chunked
from .cpu_kernels import onednn_available, use_onednn_linear
from .decoding import CandidateScore, GenerationConfig, beam_search, score_candidates
from .errors import UsageError
from .fast_mode import FastMode, apply, autocast
from .json_values import json_score, json_seconds
from .kv_cache import SharedPrefix
from .messages import shortened
from .model import Pengi
from .model_dir import ModelDir
from .prompts import ask_prompts, describe_prompts, named_prompts
from .tokenization import Tokenizers

# What `Engine.describe` hears: an audio file's path, or mono float samples at 44.1 kHz (`audio.windows_of`).
Audio = str | os.PathLike[str] | np.ndarray


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for `--device`; CUDA asked for where there is none is bad usage (the command line refuses it
    sooner, as it reads `--device`), and so is a name torch has no device for (a script's `device="gpu"`)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if reason := device_unavailable(device):
        raise UsageError(f"--device {device}", reason)
    try:
        return torch.device(device)
    except RuntimeError:  # torch's message lists its two dozen device types
        raise UsageError(
            f"--device {device}", "not a device; use auto, cpu or cuda (cuda:N for one GPU of several)"
        ) from None


def prepare_model(
    model: Pengi, device: torch.device, fast: FastMode | None = None, *, cpu_kernels: bool = True
) -> Pengi:
    """The model as the engine runs it, converted in place: on `device`, in eval mode, in `fast` mode when given,
    and with `cpu_kernels` on a CPU (outside bf16, whose layers autocast picks) its float32 linear layers on oneDNN
    (`cpu_kernels.use_onednn_linear`)."""
    model = model.to(device).eval()
    if fast is not None:
        apply(model, fast, device)
    if cpu_kernels and device.type == "cpu" and (fast is None or fast.precision != "bf16"):
        use_onednn_linear(model)
    return model


def default_batch_rows(device: torch.device) -> int:
    """(window, prompt) rows decoded together when no number of windows is asked for. On CPU, 32 rows (96 beams at
    beam 3): GPT-2's projections reach full speed from about 48 beams and the vocabulary projection from about 96,
    and more rows gain nothing but memory (benchmarks/README.md, "Batch size on CPU"). A GPU wants far more."""
    return 256 if device.type == "cuda" else 32


def default_audio_batch_size(device: torch.device) -> int:
    """Windows per audio-encoder batch. On CPU small batches are fastest: HTSAT's activations then stay in cache
    (4 windows: 0.19 CPU s each, 32: 0.25; benchmarks/README.md). A GPU wants many."""
    return 256 if device.type == "cuda" else 4


# `Engine.score`: a window counts as this many rows of a decoding batch (its prefix runs once, its candidates read
# the cache), and the candidates' forward passes take at most this many (window, candidate) pairs per default row
# of the device: bounded by what the device computes well, whatever the number of windows (larger passes are no
# faster on a CPU and take memory in proportion: benchmarks/README.md, "Scoring candidates").
SCORE_ROWS_PER_WINDOW = 4
SCORE_PAIRS_PER_ROW = 16


@dataclass(frozen=True)
class Answer:
    text: str
    score: float  # length-normalised log-probability of the best beam


@dataclass(frozen=True)
class DescribedWindow:
    """One window of a file (seconds from its start) and the answer to each prompt, by the prompt's name."""

    start_s: float
    end_s: float
    answers: dict[str, Answer]

    def to_json(self) -> dict[str, Any]:
        """The window as `describe --json` writes it (the server's too): its span, and per prompt name the text
        and the score."""
        return {
            "start_s": json_seconds(self.start_s),
            "end_s": json_seconds(self.end_s),
            "answers": {name: answer.text for name, answer in self.answers.items()},
            "scores": {name: json_score(answer.score) for name, answer in self.answers.items()},
        }


class Engine:
    """`batch_size`: windows per decoding batch, each with every prompt asked (as `--batch-size` counts them); None:
    as many whole windows as fill the device's default rows (`default_batch_rows`), e.g. 16 with two prompts on
    CPU; the audio encoder takes at most `default_audio_batch_size` windows at a time. `fast`: see `fast_mode`
    (None: exact).
    `cpu_kernels`: the model's CPU linear layers on oneDNN (see `prepare_model`; `load` does it for the model it
    loads); off by default, since the conversion is in place and a model that is also being trained (the trainer's
    evaluations) keeps PyTorch's layers. `model_dir`: where the model came from (`load` gives it), for what it was
    trained to answer (`default_prompts`).
    Not promised to be thread-safe: threads share an engine behind a lock (as `serve` does) or each load their own.
    """

    def __init__(
        self,
        model: Pengi,
        tokenizers: Tokenizers,
        device: torch.device,
        batch_size: int | None = None,
        long_prompts: LongPrompt = LongPrompt.cut,
        fast: FastMode | None = None,
        *,
        cpu_kernels: bool = False,
        model_dir: ModelDir | None = None,
    ):
        self.model = prepare_model(model, device, fast, cpu_kernels=cpu_kernels)
        self.tok = tokenizers
        self.device = device
        self.batch_size = batch_size  # windows, or None: the device's rows (`windows_per_batch`)
        self.audio_batch_size = min(self.windows_per_batch(1), default_audio_batch_size(device))
        self.long_prompts = long_prompts  # prompts over 40 tokens: cut as the original does, or refused
        self.fast = fast
        self.model_dir = model_dir
        self._prompt_prefixes: dict[tuple[str, bool | None], torch.Tensor] = {}

    @classmethod
    def load(
        cls,
        model_dir: ModelDir | str | os.PathLike[str] | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        long_prompts: LongPrompt = LongPrompt.cut,
        fast: bool = False,
    ) -> Engine:
        """The model of `model_dir` on `device`; `fast`: in `--fast` mode (`FastMode.for_device`).

        `model_dir`: a `ModelDir`, or what `--model` takes: an installed model's name or a model directory (None:
        `$PENGI_SEARCH_MODEL`, else the installed `base`), e.g. `Engine.load("base")`."""
        if not isinstance(model_dir, ModelDir):
            model_dir = ModelDir.resolve(None if model_dir is None else os.fspath(model_dir))
        tokenizers = model_dir.tokenizers  # first: a missing tokenizer fails before 1.3 GB of weights load
        where = resolve_device(device)
        mode = FastMode.for_device(where) if fast else None
        # The weights stay memory-mapped (no copy at load) where the products do not depend on their alignment.
        mapped = where.type == "cuda" or (where.type == "cpu" and onednn_available())
        model = Pengi.from_pretrained(model_dir, mapped=mapped)
        return cls(model, tokenizers, where, batch_size, long_prompts, mode, cpu_kernels=True, model_dir=model_dir)

    @property
    def mode(self) -> str:
        """How this engine generates: "exact", or its fast mode (e.g. "bf16+greedy"), as the index records it."""
        return str(self.fast or FastMode())

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.fast)

    @torch.no_grad()
    def audio_embeddings(self, waves: np.ndarray) -> torch.Tensor:
        """(N, samples) windows -> Pengi audio embeddings (N, d_proj), float32, not normalised."""
        out = []
        for part in chunk_slices(len(waves), self.audio_batch_size):
            wave = torch.from_numpy(np.ascontiguousarray(waves[part], dtype=np.float32)).to(self.device)
            with self._autocast():
                out.append(self.model.encode_audio(wave).float())
        return torch.cat(out) if out else torch.empty(0, self.model.cfg.d_proj)

    @torch.no_grad()
    def prompt_prefix(self, prompt: str, normalize: bool | None = None) -> torch.Tensor:
        """(L, E) text prefix of one prompt, computed once and cached."""
        key = (prompt, normalize)
        if key not in self._prompt_prefixes:
            batch = self.tok.prompts([prompt], self.long_prompts)
            with self._autocast():
                prefix = self.model.text_prefix(
                    batch.input_ids.to(self.device), batch.attention_mask.to(self.device), normalize
                )
            self._prompt_prefixes[key] = prefix[0].float()
        return self._prompt_prefixes[key]

    @torch.no_grad()
    def prefixes(
        self, audio_embeds: torch.Tensor, prompts: Sequence[str], additional_ids: Sequence[int] = ()
    ) -> SharedPrefix:
        """For every window and prompt, [audio prefix ; prompt prefix ; embeddings of the answer's given start],
        the window's audio prefix stored once: rows are window-major (row i * len(prompts) + j: window i, prompt j).
        """
        with self._autocast():
            audio = self.model.audio_prefix(audio_embeds.to(self.device)).float()  # (N, L, E)
        own = torch.stack([self.prompt_prefix(p) for p in prompts])  # (P, L, E)
        if additional_ids:
            ids = torch.tensor(list(additional_ids), device=self.device)
            start = self.model.token_embeddings(ids).float().expand(len(prompts), -1, -1)
            own = torch.cat([own, start], dim=1)
        return SharedPrefix(audio, own.repeat(len(audio), 1, 1))

    def _room(self, prompts: Sequence[str]) -> tuple[int, int] | None:
        """(positions, prefix): GPT-2's positions, and how many of them the longest [audio ; prompt] prefix of
        `prompts` takes; None for a language model without a fixed number of positions (`hf_config`)."""
        decoder = self.model.cfg.decoder
        if decoder.hf_config is not None:
            return None
        prefix = self.model.cfg.mapper.prefix_length + max(len(self.prompt_prefix(p)) for p in prompts)
        return decoder.n_positions, prefix

    def check_generation(self, prompts: Sequence[str], gen: GenerationConfig, additional_text: str = "") -> None:
        """Refuse (`UsageError`) answers that could run past the language model's last position: the prefix, the
        answer's given start and `gen.max_len` tokens (the last one never fed back) must fit in its positions."""
        room = self._room(prompts) if prompts else None
        if room is None:
            return
        positions, prefix = room
        start = len(self.tok.encode(additional_text)) if additional_text else 0
        most = positions - prefix - start + 1  # the longest answer that fits
        if start and most < 1:
            raise UsageError(
                "--answer-prefix",
                f"{start} tokens: more than the {positions - prefix} positions this model has after its "
                f"{prefix}-token prefix (audio and prompt)",
            )
        if gen.max_len > most:
            given = f", {start} by the answer's given start" if start else ""
            raise UsageError(
                "--max-len",
                f"{gen.max_len} tokens do not fit: this model has {positions} positions, {prefix} taken by the "
                f"audio and prompt prefix{given}; use --max-len {most} or less",
            )

    def generate(
        self,
        audio_embeds: torch.Tensor,
        prompts: Sequence[str],
        gen: GenerationConfig | None = None,
        additional_text: str = "",
    ) -> list[list[Answer]]:
        """Answers for every (window, prompt) pair: result[i][j] answers prompts[j] about window i; `gen`: how
        (None: `GenerationConfig()`, the CLI's defaults: beam 3, at most 30 tokens).

        `additional_text` is the start of every answer, fed after the prefix; the model continues it (the
        reference meant to support this, but passes a single character). Answers that could not fit in the
        language model's positions are refused (`check_generation`).
        """
        gen = gen or GenerationConfig()
        self.check_generation(prompts, gen, additional_text)
        if gen.stop_ids is None:  # the tokenizer knows this model's end tokens
            gen = dataclasses.replace(gen, stop_ids=self.tok.stop_ids_for(gen.stop))
        if self.fast is not None and self.fast.greedy:
            gen = dataclasses.replace(gen, beam=1)
        start = self.tok.encode(additional_text) if additional_text else []
        P = len(prompts)
        answers: list[list[Answer]] = []
        for part in chunk_slices(len(audio_embeds), self.windows_per_batch(P)):
            prefix = self.prefixes(audio_embeds[part], prompts, start)
            with self._autocast():
                best = [hyps[0] for hyps in beam_search(self.model.gpt, prefix, gen)]
            texts = [Answer(self.tok.decode(start + hyp.tokens), hyp.score) for hyp in best]
            answers.extend(chunked(texts, P))
        return answers

    def score(self, audio_embeds: torch.Tensor, prompt: str, candidates: Sequence[str]) -> list[list[CandidateScore]]:
        """Log-likelihood of each candidate answer (as `text + " <|endoftext|>"`) for each window; a candidate
        too long for the language model's positions after the prefix is refused (`UsageError`)."""
        return self.score_ids(audio_embeds, prompt, self.candidate_ids(prompt, candidates))

    def candidate_ids(self, prompt: str, candidates: Sequence[str]) -> list[list[int]]:
        """Each candidate answer's token ids as `score_ids` takes them, encoded once for any number of windows;
        one too long for the language model's positions after `prompt`'s prefix is refused (`UsageError`)."""
        ids = [self.tok.answer_ids(c) for c in candidates]
        room = self._room([prompt])
        if room is not None and ids:
            positions, prefix = room
            longest = max(range(len(ids)), key=lambda i: len(ids[i]))
            if prefix + len(ids[longest]) > positions:
                raise UsageError(
                    "",
                    f"{shortened(candidates[longest])!r}: {len(ids[longest])} tokens as an answer, more than the "
                    f"{positions - prefix} positions this model has after its {prefix}-token prefix",
                )
        return ids

    def score_ids(self, audio_embeds: torch.Tensor, prompt: str, ids: list[list[int]]) -> list[list[CandidateScore]]:
        """`score` of candidates already encoded (`candidate_ids`): the windows in batches of the device's size,
        each batch's prefixes run once and read by every candidate (`decoding.score_candidates`)."""
        out: list[list[CandidateScore]] = []
        pairs = SCORE_PAIRS_PER_ROW * default_batch_rows(self.device)
        for part in chunk_slices(len(audio_embeds), self.windows_per_batch(SCORE_ROWS_PER_WINDOW)):
            prefix = self.prefixes(audio_embeds[part], [prompt])
            with self._autocast():
                out.extend(score_candidates(self.model.gpt, prefix, ids, max_rows=pairs))
        return out

    # -- audio -> text in one call ------------------------------------------------------------------------------

    def default_prompts(self) -> dict[str, str]:
        """Name -> prompt of what `describe` asks this model by default: caption, metadata and sound events, or
        the tasks a model trained with `pengi-search train` learnt (`prompts.describe_tasks`)."""
        return describe_prompts(None if self.model_dir is None else self.model_dir.trained_tasks)

    def windows_per_batch(self, prompts: int) -> int:
        """Windows decoded together, each with `prompts` prompts: `batch_size` when given, else as many as fill the
        device's default rows (at least one)."""
        return self.batch_size or max(1, default_batch_rows(self.device) // prompts)

    def describe(
        self,
        audio: Audio,
        prompts: Sequence[str] | Mapping[str, str] | None = None,
        generation: GenerationConfig | None = None,
        *,
        hop_s: float = WINDOW_SECONDS,
        answer_prefix: str = "",
    ) -> list[DescribedWindow]:
        """Every 7 s window of `audio` (`hop_s` apart) with the answer to each prompt, as `pengi-search describe`
        gives them. `audio`: a file's path, or mono float samples at 44.1 kHz (`audio.windows_of`). `prompts`: a
        list (each answer named by its prompt, as `-p` does; a string is one prompt) or name -> prompt; None:
        `default_prompts()`.
        `generation`: as `generate` takes it. A file that cannot be decoded raises `AudioDecodeError`; one cut
        short of what its header says is described as far as it goes, with a warning (`warnings.warn`)."""
        named = self.default_prompts() if prompts is None else named_prompts(prompts)
        return self._answered(audio, named, generation, hop_s, answer_prefix)

    def ask(
        self,
        audio: Audio,
        question: str,
        generation: GenerationConfig | None = None,
        *,
        hop_s: float = WINDOW_SECONDS,
    ) -> list[DescribedWindow]:
        """The answer to `question` for every window of `audio`, named "answer", as `pengi-search ask` gives it
        (see `describe`); an empty question is refused (`UsageError`)."""
        return self._answered(audio, ask_prompts(question), generation, hop_s, "")

    def describe_windows(
        self,
        windows: Sequence[Window],
        prompts: Mapping[str, str],
        generation: GenerationConfig | None = None,
        *,
        answer_prefix: str = "",
    ) -> list[DescribedWindow]:
        """Windows (of one file or of many) -> each with its answer to each prompt (name -> prompt), one batch."""
        if not windows:
            return []
        embeds = self.audio_embeddings(np.stack([window.samples for window in windows]))
        answers = self.generate(embeds, list(prompts.values()), generation, additional_text=answer_prefix)
        return [
            DescribedWindow(window.start_s, window.end_s, dict(zip(prompts, said, strict=True)))
            for window, said in zip(windows, answers, strict=True)
        ]

    def _answered(
        self,
        audio: Audio,
        prompts: Mapping[str, str],
        generation: GenerationConfig | None,
        hop_s: float,
        answer_prefix: str,
    ) -> list[DescribedWindow]:
        """`describe` and `ask`, each of which calls this directly: its warning is then at their caller's line."""
        if not prompts:
            raise ValueError("no prompts to answer: give at least one, or None for the model's default tasks")
        report = DecodeReport()
        described: list[DescribedWindow] = []
        # In the batches the command forms for a single file, so that the answers are the command's to the bit.
        for windows in chunked(_windows(audio, hop_s, report), self.windows_per_batch(len(prompts))):
            described += self.describe_windows(windows, prompts, generation, answer_prefix=answer_prefix)
        if (truncation := report.truncation()) is not None:  # the command prints the same warning
            warnings.warn(f"{os.fspath(audio)}: {truncation}", stacklevel=3)  # 1: here, 2: describe or ask
        return described


def _windows(audio: Audio, hop_s: float, report: DecodeReport) -> Iterator[Window]:
    """The windows of a file (what decoding found goes to `report`) or of samples in memory."""
    if isinstance(audio, np.ndarray):
        return windows_of(audio, hop_s=hop_s)
    return iter_windows(audio, hop_s=hop_s, report=report)
