"""Evaluation during training: the validation loss and a few sample generations."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pengi_search.decoding import GenerationConfig
from pengi_search.inference import Engine
from pengi_search.model import Pengi
from pengi_search.tokenization import Tokenizers
from trainer.data import AudioTextDataset, collate_examples
from trainer.distributed import Processes, sum_across
from trainer.objective import AnswerNll, encode_batch


@dataclass(frozen=True)
class ValidationLoss:
    loss: float  # mean NLL per answer token over the whole validation set
    tokens: int
    skipped: int  # examples whose audio failed to load


@torch.no_grad()
def validation_loss(
    loss_module: AnswerNll,
    dataset: AudioTextDataset,
    tokenizers: Tokenizers,
    processes: Processes,
    *,
    batch_size: int,
    num_workers: int,
    max_answer_tokens: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> ValidationLoss:
    """Every process evaluates every `world_size`-th example; the sums are added up across processes."""
    shard = list(range(processes.rank, len(dataset), processes.world_size))
    loader = DataLoader(dataset, batch_size, sampler=shard, collate_fn=collate_examples, num_workers=num_workers)
    nll = tokens = skipped = 0.0
    for batch in loader:
        skipped += len(batch["skipped"])
        if not batch["answer"]:
            continue
        inputs = encode_batch(batch, tokenizers, max_answer_tokens, dataset.clip_samples).to(processes.device)
        with autocast():
            nll += float(loss_module(**vars(inputs)))
        tokens += inputs.tokens
    nll, tokens, skipped = sum_across(processes, [nll, tokens, skipped])
    return ValidationLoss(nll / max(tokens, 1.0), int(tokens), int(skipped))


def generate_answers(
    model: Pengi,
    tokenizers: Tokenizers,
    waves: np.ndarray,
    prompts: list[str],
    *,
    beam: int = 3,
    max_len: int = 30,
    device: torch.device | None = None,
) -> list[str]:
    """The answer to each (clip, prompt) pair: beam search (beam 1: greedy), the best hypothesis decoded.

    Puts the model in eval mode; the caller restores train mode.
    """
    device = device or next(model.parameters()).device
    engine = Engine(model, tokenizers, device, batch_size=max(1, len(waves)))
    embeds = engine.audio_embeddings(np.asarray(waves, dtype=np.float32))
    config = GenerationConfig(beam=beam, max_len=max_len, stop_ids=tokenizers.stop_ids)
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for row, prompt in enumerate(prompts):
        by_prompt[prompt].append(row)
    answers = [""] * len(prompts)
    for prompt, rows in by_prompt.items():
        for row, answer in zip(rows, engine.generate(embeds[rows], [prompt], config), strict=True):
            answers[row] = answer[0].text
    return answers


def sample_generations(
    model: Pengi, tokenizers: Tokenizers, dataset: AudioTextDataset, count: int, *, beam: int, max_len: int
) -> list[dict[str, Any]]:
    """Generations for the first `count` examples of `dataset`, next to their reference answers."""
    items = [dataset[index] for index in range(min(count, len(dataset)))]
    items = [item for item in items if "error" not in item]
    if not items:
        return []
    waves = np.stack([item["audio"].numpy() for item in items])
    prompts = [item["prompt"] for item in items]
    generated = generate_answers(model, tokenizers, waves, prompts, beam=beam, max_len=max_len)
    return [
        {
            "audio": str(dataset.examples[item["index"]].audio),
            "prompt": item["prompt"],
            "answer": item["answer"],
            "generated": text,
        }
        for item, text in zip(items, generated, strict=True)
    ]
