"""The training objective: cross-entropy on the answer tokens only (the paper's equation 3).

The prefix and the padding carry no loss. The module returns the *sum* of the answer tokens' negative
log-likelihoods with their count, so the loop can divide by the number of answer tokens in the whole optimizer
step (every micro-batch of every process): with accumulation or several processes the gradient is then the one of
a single batch holding all those examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pengi_search.model import Pengi
from pengi_search.tokenization import Tokenizers, pad_rows
from trainer.data import Batch

ANSWER_PAD_ID = 0  # padding of answers (masked out); the reference pads captions with 0 too


@dataclass
class ModelInputs:
    wave: torch.Tensor  # (B, samples)
    prompt_ids: torch.Tensor  # (B, T)
    prompt_mask: torch.Tensor  # (B, T)
    answer_ids: torch.Tensor  # (B, A)
    answer_mask: torch.Tensor  # (B, A); 0 on padding

    def to(self, device: torch.device) -> ModelInputs:
        return ModelInputs(*(tensor.to(device, non_blocking=True) for tensor in vars(self).values()))

    @property
    def tokens(self) -> int:
        return int(self.answer_mask.sum())


class AnswerNll(nn.Module):
    """(inputs) -> summed NLL of the real answer tokens; a module so that DistributedDataParallel can wrap it.

    `cached`: the `wave` inputs are cached outputs of the frozen audio backbone ((B, width) or time steps
    (B, T, width)), not waveforms.
    """

    def __init__(self, model: Pengi, cached: bool = False) -> None:
        super().__init__()
        self.model = model
        self.cached = cached

    def forward(
        self,
        wave: torch.Tensor,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
    ) -> torch.Tensor:
        encoder = self.model.audio_encoder
        audio_embed = encoder.project(wave) if self.cached else encoder(wave)
        prefix = self.model.embedding_prefix(audio_embed, prompt_ids, prompt_mask)
        # float32 even under autocast; the vocabulary projection runs on the real answer tokens' positions only
        return self.model.real_answer_nll(prefix, answer_ids, answer_mask).sum()


def encode_batch(
    batch: Batch, tokenizers: Tokenizers, max_answer_tokens: int, audio_shape: tuple[int, ...]
) -> ModelInputs:
    """Tokenise a collated batch. An empty batch (every clip failed to load) becomes one row with no answer
    tokens: it adds nothing to the loss, but keeps the processes of a distributed run in step. `audio_shape`:
    one row's audio, (samples,) of a clip or the shape of its cached features."""
    if not batch["answer"]:
        return placeholder_inputs(tokenizers, audio_shape)
    prompts = tokenizers.prompts(batch["prompt"])
    answers = [tokenizers.answer_ids(text)[:max_answer_tokens] for text in batch["answer"]]
    padded = pad_rows(answers, max(len(row) for row in answers), ANSWER_PAD_ID)
    return ModelInputs(
        batch["audio"], prompts.input_ids, prompts.attention_mask, padded.input_ids, padded.attention_mask
    )


def placeholder_inputs(tokenizers: Tokenizers, audio_shape: tuple[int, ...]) -> ModelInputs:
    prompts = tokenizers.prompts([""])
    ids = torch.full((1, 1), ANSWER_PAD_ID, dtype=torch.long)
    wave = torch.zeros(1, *audio_shape)
    return ModelInputs(wave, prompts.input_ids, prompts.attention_mask, ids, torch.zeros_like(ids))
