"""Evaluation during training: the validation loss, task metrics and sample generations, and the metric that
picks the best model.

Task metrics are for label-style tasks (every task but the free-text ones: caption, qa, metadata, music
analysis): `accuracy`, the share of generated answers that equal the reference (case and spacing aside), and
`loglik_accuracy` / `loglik_top_k`, where each label of the task (every answer the manifests give it) is scored by
its mean log-probability per token as the answer, as `classify --method loglik` does.
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pengi_search.chunking import chunked
from pengi_search.decoding import GenerationConfig
from pengi_search.inference import Engine
from pengi_search.model import Pengi
from pengi_search.ties import rank
from pengi_search.tokenization import Tokenizers
from trainer.data import Example, example_loader
from trainer.distributed import Processes, sum_across
from trainer.objective import AnswerNll, encode_batch

if TYPE_CHECKING:  # `run_data` builds its rows with this module's `label_sets` and `sample_rows`
    from trainer.config import TrainConfig
    from trainer.run_data import RunData

FREE_TEXT_TASKS = frozenset({"caption", "qa", "metadata", "music_analysis"})


@dataclass(frozen=True)
class ValidationLoss:
    loss: float  # mean NLL per answer token over the whole validation set
    tokens: int
    skipped: int  # examples whose audio failed to load
    failed: list[tuple[int, str]]  # this process's of them: (row, reason), for the run to report


@torch.no_grad()
def validation_loss(
    loss_module: AnswerNll,
    dataset: Dataset,
    tokenizers: Tokenizers,
    processes: Processes,
    *,
    batch_size: int,
    num_workers: int,
    max_answer_tokens: int,
    audio_shape: tuple[int, ...],
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> ValidationLoss:
    """Every process evaluates every `world_size`-th example; the sums are added up across processes."""
    shard = list(range(processes.rank, len(dataset), processes.world_size))
    loader = example_loader(dataset, batch_size, shard, num_workers)
    nll = tokens = 0.0
    failed: list[tuple[int, str]] = []
    for batch in loader:
        failed += batch["skipped"]
        if not batch["answer"]:
            continue
        inputs = encode_batch(batch, tokenizers, max_answer_tokens, audio_shape).to(processes.device)
        with autocast():
            nll += float(loss_module(**vars(inputs)))
        tokens += inputs.tokens
    nll, tokens, skipped = sum_across(processes, [nll, tokens, float(len(failed))])
    return ValidationLoss(nll / max(tokens, 1.0), int(tokens), int(skipped), failed)


# --- Audio embeddings of dataset rows -----------------------------------------------------------------------------


@torch.no_grad()
def row_embeddings(
    model: Pengi, dataset: Dataset, rows: Sequence[int], *, cached: bool, batch_size: int
) -> tuple[torch.Tensor, list[int]]:
    """Pengi's audio embeddings (n, d_proj) of the rows whose audio loads, and those rows. `cached`: the dataset
    gives backbone outputs, which only need the projection."""
    device = next(model.parameters()).device
    items = [dataset[row] for row in rows]
    good = [item for item in items if "error" not in item]
    encoder = model.audio_encoder
    out = []
    for batch in chunked(good, batch_size):
        audio = torch.stack([item["audio"] for item in batch]).to(device)
        out.append((encoder.project(audio) if cached else encoder(audio)).float())
    embeds = torch.cat(out) if out else torch.empty(0, model.cfg.d_proj, device=device)
    return embeds, [item["index"] for item in good]


def generate_for_embeddings(
    engine: Engine, embeds: torch.Tensor, prompts: list[str], *, beam: int, max_len: int
) -> list[str]:
    """The best answer to each (embedding, prompt) pair, rows grouped by prompt."""
    config = GenerationConfig(beam=beam, max_len=max_len, stop_ids=engine.tok.stop_ids)
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for row, prompt in enumerate(prompts):
        by_prompt[prompt].append(row)
    answers = [""] * len(prompts)
    for prompt, rows in by_prompt.items():
        for row, answer in zip(rows, engine.generate(embeds[rows], [prompt], config), strict=True):
            answers[row] = answer[0].text
    return answers


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
    return generate_for_embeddings(engine, embeds, prompts, beam=beam, max_len=max_len)


# --- Label metrics ------------------------------------------------------------------------------------------------


def is_label_task(example: Example) -> bool:
    return example.task is not None and example.task not in FREE_TEXT_TASKS


def label_sets(examples: Sequence[Example]) -> dict[str, list[str]]:
    """Per prompt of a label task, every answer the examples give it (sorted): the candidates loglik ranks."""
    labels: dict[str, set[str]] = defaultdict(set)
    for example in examples:
        if is_label_task(example):
            labels[example.prompt].add(example.answer)
    return {prompt: sorted(answers) for prompt, answers in labels.items()}


def normalise_answer(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .,;:!")


@dataclass(frozen=True)
class LabelMetrics:
    examples: int  # label-task rows scored
    accuracy: float  # generated answer == reference
    loglik_accuracy: float  # the reference is the most likely label
    loglik_top_k: float  # the reference is among the k most likely labels

    def to_dict(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "loglik_accuracy": self.loglik_accuracy,
            "loglik_top_k": self.loglik_top_k,
            "label_examples": self.examples,
        }


@torch.no_grad()
def label_metrics(
    engine: Engine,
    dataset: Dataset,
    rows: Sequence[int],
    candidates: dict[str, list[str]],
    *,
    cached: bool,
    beam: int,
    max_len: int,
    top_k: int,
) -> LabelMetrics | None:
    """Accuracy of the generated and of the most likely answers over the label-task `rows`; None without any."""
    examples = dataset.examples
    rows = [row for row in rows if is_label_task(examples[row]) and examples[row].prompt in candidates]
    if not rows:
        return None
    embeds, kept = row_embeddings(engine.model, dataset, rows, cached=cached, batch_size=engine.windows_per_batch(1))
    prompts = [examples[row].prompt for row in kept]
    truths = [examples[row].answer for row in kept]
    generated = generate_for_embeddings(engine, embeds, prompts, beam=beam, max_len=max_len)
    exact = [normalise_answer(g) == normalise_answer(t) for g, t in zip(generated, truths, strict=True)]
    top1, topk = [], []
    for prompt in dict.fromkeys(prompts):
        at = [i for i, p in enumerate(prompts) if p == prompt]
        labels = candidates[prompt]
        scores = engine.score(embeds[at], prompt, labels)
        for i, row_scores in zip(at, scores, strict=True):
            # As `classify --method loglik` ranks them: labels that tie go in name order, not the scores' noise.
            ranked = [label for label, _ in rank(labels, [score.mean for score in row_scores])]
            top1.append(ranked[0] == truths[i])
            topk.append(truths[i] in ranked[:top_k])
    n = max(len(kept), 1)
    return LabelMetrics(len(kept), sum(exact) / n, sum(top1) / n, sum(topk) / n)


# --- Samples ------------------------------------------------------------------------------------------------------


def sample_rows(examples: Sequence[Example], count: int, seed: int) -> list[int]:
    """`count` rows drawn (seeded) across the set: one per distinct answer in turn, so classes differ."""
    rng = np.random.default_rng(seed)
    by_answer: dict[str, list[int]] = defaultdict(list)
    for row in rng.permutation(len(examples)).tolist():
        by_answer[examples[row].answer].append(row)
    queues = [by_answer[answer] for answer in rng.permutation(sorted(by_answer)).tolist()]
    chosen: list[int] = []
    while len(chosen) < min(count, len(examples)):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    return chosen


def sample_generations(
    engine: Engine, dataset: Dataset, rows: Sequence[int], *, cached: bool, beam: int, max_len: int
) -> list[dict[str, Any]]:
    """Generations for `rows` of `dataset`, next to their reference answers."""
    embeds, kept = row_embeddings(engine.model, dataset, rows, cached=cached, batch_size=engine.windows_per_batch(1))
    if not kept:
        return []
    examples = dataset.examples
    prompts = [examples[row].prompt for row in kept]
    generated = generate_for_embeddings(engine, embeds, prompts, beam=beam, max_len=max_len)
    return [
        {"audio": str(examples[row].audio), "prompt": prompt, "answer": examples[row].answer, "generated": text}
        for row, prompt, text in zip(kept, prompts, generated, strict=True)
    ]


# --- One evaluation of a run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """One evaluation during a run: what metrics.jsonl records of it, and the generations it shows."""

    record: dict[str, Any]  # val_loss, tokens, skipped (with a validation set); the label metrics (rank 0)
    samples: list[dict[str, Any]] | None  # rank 0's sample generations; None: none asked for, or another rank


def evaluate_run(
    loss_module: AnswerNll,
    tokenizers: Tokenizers,
    data: RunData,
    config: TrainConfig,
    processes: Processes,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager],
    failed: Callable[[list[tuple[int, str]]], None],
) -> Evaluation:
    """Every process computes its share of the validation loss, then rank 0 alone generates (label metrics,
    samples). `failed` is given, on every process, its validation rows whose audio failed ((row, reason)) before
    rank 0 generates, so that the run says them then. The model must be in eval mode."""
    record: dict[str, Any] = {}
    if data.val_set is not None:
        result = validation_loss(
            loss_module,
            data.val_set,
            tokenizers,
            processes,
            batch_size=config.data.batch_size,
            num_workers=0 if data.cached else config.data.num_workers,
            max_answer_tokens=config.data.max_answer_tokens,
            audio_shape=data.audio_shape,
            autocast=autocast,
        )
        record.update(val_loss=result.loss, tokens=result.tokens, skipped=result.skipped)
        failed(result.failed)
    if not processes.main:
        return Evaluation(record, None)
    engine = Engine(loss_module.model, tokenizers, processes.device, batch_size=config.data.batch_size)
    cached, beam, max_len = data.cached, config.evaluation.beam, config.evaluation.max_len
    if data.val_set is not None:
        metrics = label_metrics(
            engine,
            data.val_set,
            data.eval_rows,
            data.candidates,
            cached=cached,
            beam=beam,
            max_len=max_len,
            top_k=config.evaluation.top_k,
        )
        record.update(metrics.to_dict() if metrics is not None else {})
    samples = None
    if config.evaluation.samples:
        rows = data.sample_rows
        samples = sample_generations(engine, data.sample_set, rows, cached=cached, beam=beam, max_len=max_len)
    return Evaluation(record, samples)


def best_metric(configured: str, data: RunData) -> str | None:
    """What picks the best model: the configured metric; `auto` is accuracy when there are label rows. None without
    a validation set."""
    if data.val_set is None:
        return None
    if configured != "auto":
        return configured
    labelled = any(is_label_task(data.val_set.examples[row]) for row in data.eval_rows)
    return "accuracy" if labelled else "val_loss"
