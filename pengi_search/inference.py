"""The inference engine: a loaded Pengi model with its tokenizers, turning audio windows into texts and scores.

Everything is batched: many (window, prompt) rows go through the encoders, the mappers and the decoder at once.
A prompt's text prefix is computed once per engine, not once per clip, and on CUDA the model runs under bf16
autocast.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .choices import LongPrompt
from .chunking import chunk_slices, chunked
from .decoding import CandidateScore, GenerationConfig, beam_search, score_candidates
from .model import Pengi
from .model_dir import ModelDir
from .tokenization import Tokenizers


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    return torch.device(device)


@dataclass(frozen=True)
class Answer:
    text: str
    score: float  # length-normalised log-probability of the best beam


class Engine:
    def __init__(
        self,
        model: Pengi,
        tokenizers: Tokenizers,
        device: torch.device,
        batch_size: int = 16,
        long_prompts: LongPrompt = LongPrompt.cut,
    ):
        self.model = model.to(device).eval()
        self.tok = tokenizers
        self.device = device
        self.batch_size = batch_size
        self.long_prompts = long_prompts  # prompts over 40 tokens: cut as the original does, or refused
        self._prompt_prefixes: dict[tuple[str, bool | None], torch.Tensor] = {}

    @classmethod
    def load(
        cls,
        model_dir: ModelDir,
        device: str = "auto",
        batch_size: int = 16,
        long_prompts: LongPrompt = LongPrompt.cut,
    ) -> Engine:
        tokenizers = model_dir.tokenizers  # first: a missing tokenizer fails before 1.3 GB of weights load
        return cls(Pengi.from_pretrained(model_dir), tokenizers, resolve_device(device), batch_size, long_prompts)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def audio_embeddings(self, waves: np.ndarray) -> torch.Tensor:
        """(N, samples) windows -> Pengi audio embeddings (N, d_proj), float32, not normalised."""
        out = []
        for part in chunk_slices(len(waves), self.batch_size):
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
    def prefixes(self, audio_embeds: torch.Tensor, prompt: str, additional_ids: Sequence[int] = ()) -> torch.Tensor:
        """[audio prefix ; prompt prefix ; embeddings of the answer's given start] per audio embedding: (N, P, E)."""
        with self._autocast():
            audio = self.model.audio_prefix(audio_embeds.to(self.device)).float()
        text = self.prompt_prefix(prompt).expand(len(audio), -1, -1)
        parts = [audio, text]
        if additional_ids:
            ids = torch.tensor(list(additional_ids), device=self.device)
            parts.append(self.model.token_embeddings(ids).float().expand(len(audio), -1, -1))
        return torch.cat(parts, dim=1)

    def generate(
        self, audio_embeds: torch.Tensor, prompts: Sequence[str], gen: GenerationConfig, additional_text: str = ""
    ) -> list[list[Answer]]:
        """Answers for every (window, prompt) pair: result[i][j] answers prompts[j] about window i.

        `additional_text` is the start of every answer, fed after the prefix; the model continues it (the
        reference meant to support this, but passes a single character).
        """
        if gen.stop_ids is None:  # the tokenizer knows this model's end tokens
            gen = dataclasses.replace(gen, stop_ids=self.tok.stop_ids_for(gen.stop))
        n = len(audio_embeds)
        rows = [(i, j) for j in range(len(prompts)) for i in range(n)]
        answers: list[list[Answer | None]] = [[None] * len(prompts) for _ in range(n)]
        start = self.tok.encode(additional_text) if additional_text else []
        per_prompt = {p: self.prefixes(audio_embeds, p, start) for p in dict.fromkeys(prompts)}
        for chunk in chunked(rows, self.batch_size):
            prefix = torch.stack([per_prompt[prompts[j]][i] for i, j in chunk])
            with self._autocast():
                best = [hyps[0] for hyps in beam_search(self.model.gpt, prefix, gen)]
            for (i, j), hyp in zip(chunk, best, strict=True):
                answers[i][j] = Answer(self.tok.decode(start + hyp.tokens), hyp.score)
        return answers  # type: ignore[return-value]

    def score(self, audio_embeds: torch.Tensor, prompt: str, candidates: Sequence[str]) -> list[list[CandidateScore]]:
        """Log-likelihood of each candidate answer (as `text + " <|endoftext|>"`) for each window."""
        ids = [self.tok.answer_ids(c) for c in candidates]
        prefix = self.prefixes(audio_embeds, prompt)
        out: list[list[CandidateScore]] = []
        for part in chunk_slices(len(prefix), max(1, self.batch_size // 4)):
            with self._autocast():
                out.extend(score_candidates(self.model.gpt, prefix[part], ids, max_rows=self.batch_size * 16))
        return out
