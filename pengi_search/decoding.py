"""Text generation and scoring from Pengi prefixes, batched and with a key/value cache.

`gpt` is the language model: GPT-2 for the released models, or any transformers causal LM taking `inputs_embeds`.

A prefix is a (B, P, E) tensor of rows, or a `kv_cache.SharedPrefix` whose rows share their audio half. It goes
through the language model once; its key/value cache is then read by every beam (or candidate) of its row, and each
step feeds only the newest token. Beam search follows the reference's rules exactly (see
`beam_search`), so its sequences and scores equal the original's per-clip, recompute-everything loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .choices import StopRule
from .chunking import chunked
from .kv_cache import SharedPrefix, start_cache

END_OF_TEXT = 50256
SPACE = 220  # the released model ends answers with " " then <|endoftext|>; the reference stops on the space


@dataclass(frozen=True)
class GenerationConfig:
    beam: int = 3
    max_len: int = 30
    temperature: float = 1.0
    stop: StopRule = StopRule.both  # which end tokens `stop_ids=None` means (see `StopRule`)
    stop_ids: tuple[int, ...] | None = None  # None: the released model's ends by `stop`; (): never stop
    no_repeat_ngram: int = 0  # 0: off (the reference has no such guard)

    @property
    def stops(self) -> tuple[int, ...]:
        if self.stop_ids is not None:
            return self.stop_ids
        return (SPACE,) if self.stop == StopRule.original else (SPACE, END_OF_TEXT)


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # generated ids, including the stop token when the beam stopped
    score: float  # summed log-probability / length


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature > 0 and temperature != 1.0:  # dividing by 1 changes nothing but costs a pass over (rows, V)
        logits = logits / temperature
    return logits.log_softmax(dim=-1)


def _is_stop(tokens: torch.Tensor, stop_ids: tuple[int, ...]) -> torch.Tensor:
    return (
        torch.isin(tokens, torch.tensor(stop_ids, device=tokens.device))
        if stop_ids
        else torch.zeros_like(tokens, dtype=torch.bool)
    )


def _ban_repeated_ngrams(logp: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """In place: forbid, per row of (R, V) log-probs, tokens that would repeat an n-gram of that row's history."""
    if n <= 0 or history.shape[1] < n:
        return
    rows = history.tolist()
    for r, seq in enumerate(rows):
        tail = tuple(seq[len(seq) - n + 1 :])
        banned = [seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i : i + n - 1]) == tail]
        if banned:
            logp[r, banned] = float("-inf")


@torch.no_grad()
def greedy(
    gpt: nn.Module, prefix: torch.Tensor | SharedPrefix, steps: int, stop_ids: tuple[int, ...] = ()
) -> list[list[int]]:
    """Argmax decoding of up to `steps` tokens for each prefix row; a row ends at its first stop id."""
    prefix = _as_shared(prefix)
    wte = gpt.get_input_embeddings()
    cache, logits = start_cache(gpt, prefix, capacity=steps)
    device = logits.device
    tokens = torch.empty(prefix.rows, 0, dtype=torch.long, device=device)
    done = torch.zeros(prefix.rows, dtype=torch.bool, device=device)
    for _ in range(steps):
        nxt = logits.argmax(dim=-1)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= _is_stop(nxt, stop_ids)
        if done.all():
            break
        logits = cache.extend(wte(nxt)[:, None])
    out = []
    for row in tokens.tolist():
        ends = [i for i, t in enumerate(row) if t in stop_ids]
        out.append(row[: ends[0] + 1] if ends else row)
    return out


@torch.no_grad()
def beam_search(gpt: nn.Module, prefix: torch.Tensor | SharedPrefix, cfg: GenerationConfig) -> list[list[Hypothesis]]:
    """Beam search for every prefix row at once; returns each row's `cfg.beam` hypotheses, best first.

    The reference's rules: step 1 keeps the top-`beam` tokens. Later, a stopped beam may only extend with token 0 at
    no cost; a candidate's rank is (beam's summed log-prob + token log-prob) / beam length, where a length counts
    generated tokens and freezes once the beam has emitted a stop id; the best `beam` candidates of a row survive.
    Search ends when every beam has stopped or after `max_len` steps.
    """
    prefix = _as_shared(prefix)
    B, K = prefix.rows, cfg.beam
    wte = gpt.get_input_embeddings()
    first, logits = start_cache(gpt, prefix, capacity=cfg.max_len)
    device = logits.device
    logp = _log_probs(logits, cfg.temperature)  # (B, V)
    V = logp.shape[-1]
    scores, tokens = logp.topk(K, dim=-1)  # (B, K) summed log-probs, first tokens
    tokens = tokens[..., None]  # (B, K, 1) history
    lengths = torch.ones(B, K, device=device)
    stopped = _is_stop(tokens[..., 0], cfg.stops)
    cache = first.repeated(K)  # every beam of a row reads the row's prefix, stored once
    row_offset = torch.arange(B, device=device)[:, None] * K
    stopped_best = torch.full((K,), float("-inf"), device=device)  # a stopped beam's best K: token 0 at no cost
    stopped_best[0] = 0.0

    for _ in range(cfg.max_len - 1):
        if stopped.all():
            break
        logits = cache.extend(wte(tokens[..., -1].reshape(B * K))[:, None])
        logp = _log_probs(logits, cfg.temperature)  # (B*K, V)
        _ban_repeated_ngrams(logp, tokens.reshape(B * K, -1), cfg.no_repeat_ngram)
        # A beam's candidates rank as its tokens' log-probs do (its sum and length are common to them), so a row's
        # best K of K x V candidates are among its beams' best K tokens each: rank K x K, not K x V.
        best, best_ids = logp.view(B, K, V).topk(K, dim=-1)  # (B, K, K)
        best[stopped] = stopped_best
        best_ids[stopped] = 0
        lengths = lengths + (~stopped).float()
        ranked, flat = ((scores[..., None] + best) / lengths[..., None]).view(B, K * K).topk(K, dim=-1)  # (B, K)
        source = flat // K
        nxt = best_ids.view(B, K * K).gather(1, flat)
        lengths = lengths.gather(1, source)
        scores = ranked * lengths
        stopped = stopped.gather(1, source) | _is_stop(nxt, cfg.stops)
        tokens = torch.cat([tokens.gather(1, source[..., None].expand_as(tokens)), nxt[..., None]], dim=-1)
        cache.reorder((row_offset + source).view(-1))

    final = scores / lengths
    results = []
    for b in range(B):
        order = final[b].argsort(descending=True).tolist()
        results.append([Hypothesis(tokens[b, k, : int(lengths[b, k])].tolist(), float(final[b, k])) for k in order])
    return results


@dataclass(frozen=True)
class CandidateScore:
    total: float  # summed log-probability of the candidate's tokens
    mean: float  # per-token mean


@torch.no_grad()
def score_candidates(
    gpt: nn.Module, prefix: torch.Tensor | SharedPrefix, candidates: list[list[int]], max_rows: int = 256
) -> list[list[CandidateScore]]:
    """Log-likelihood of every candidate token sequence as the continuation of every prefix row.

    B prefix rows x N candidates -> B lists of N scores. Each row's prefix runs once; the candidates read its cache
    (shared, not copied, for GPT-2) and are fed right-padded, in chunks of at most `max_rows` (row, candidate) pairs.
    Only the positions that predict a candidate's own tokens go through the vocabulary projection.
    """
    if any(len(c) == 0 for c in candidates):
        raise ValueError("candidates must have at least one token")
    prefix = _as_shared(prefix)
    wte = gpt.get_input_embeddings()
    B = prefix.rows
    results: list[list[CandidateScore]] = [[] for _ in range(B)]
    per_chunk = max(1, max_rows // max(B, 1))
    prefix_cache, logits = start_cache(gpt, prefix)
    first = logits.log_softmax(-1)  # (B, V): predicts each candidate's first token
    device = first.device
    for chunk in chunked(candidates, per_chunk):
        n, T = len(chunk), max(len(c) for c in chunk)
        ids = torch.zeros(n, T, dtype=torch.long, device=device)
        mask = torch.zeros(n, T, dtype=torch.bool, device=device)
        for i, c in enumerate(chunk):
            ids[i, : len(c)] = torch.tensor(c, device=device)
            mask[i, : len(c)] = True
        rows_ids, rows_mask = ids.repeat(B, 1), mask.repeat(B, 1)  # (B*n, T), row-major: prefix b, candidate i
        later = rows_mask[:, 1:]  # each candidate's tokens after its first
        token_logp = torch.zeros(B * n, T, device=device)  # 0 on padding
        token_logp[:, 0] = first[:, ids[:, 0]].reshape(-1)
        # Position t predicts token t + 1: a candidate's positions but its last are read, padding never.
        predicting = torch.cat([later, torch.zeros_like(rows_mask[:, :1])], dim=1)
        out = prefix_cache.repeated(n).extend(wte(rows_ids), read=predicting)  # (predicting positions, V)
        token_logp[:, 1:][later] = out.log_softmax(-1).gather(-1, rows_ids[:, 1:][later][:, None]).squeeze(-1)
        totals = token_logp.sum(-1).view(B, n).tolist()
        lens = mask.sum(-1).tolist()
        for b in range(B):
            results[b].extend(CandidateScore(t, t / k) for t, k in zip(totals[b], lens, strict=True))
    return results


def _as_shared(prefix: torch.Tensor | SharedPrefix) -> SharedPrefix:
    return prefix if isinstance(prefix, SharedPrefix) else SharedPrefix.unshared(prefix)
