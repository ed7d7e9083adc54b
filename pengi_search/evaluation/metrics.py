"""The numbers an evaluation reports, as plain functions of rankings and token lists (no model, no I/O).

Retrieval: recall at k (a query counts when any relevant item is in its top k, as audio-text retrieval papers count
it) and average precision at k (the sum of precision at each relevant rank up to k, over min(relevant, k); with one
relevant item, as in text -> audio, that is 1/rank, DCASE's mAP@10).

Multi-label classification: each class's average precision over the files ranked by their score for it
(`average_precision`), mAP their mean over the classes with a positive file.

Captioning: BLEU-1..4, ROUGE-L and CIDEr-D as the COCO caption evaluation code (coco-caption, which the audio
captioning benchmarks use) defines them:
- BLEU: corpus-level; clipped n-gram counts and candidate lengths summed over all captions, each caption's reference
  length being the one closest to its own length (the shorter one on a tie). A corpus with no matching n-gram of
  some order scores 0 (coco-caption's smoothing constants give ~1e-5 there instead).
- ROUGE-L: per caption, the best LCS precision and the best LCS recall over its references, combined as an
  F-measure with beta 1.2; the corpus score is the mean.
- CIDEr-D: tf-idf vectors of 1- to 4-grams (idf from the references of the evaluated set), clipped cosine
  similarity with each reference, a Gaussian penalty (sigma 6) on the length difference, averaged over n-gram
  orders and references and multiplied by 10.
Captions are compared as tokens from `tokenize`, which mimics the Penn Treebank tokenizer (a Java program) that
coco-caption runs before scoring: lower case, punctuation dropped, clitics split off.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Hashable, Sequence

from ..ties import tie_starts

Tokens = Sequence[str]
NGram = tuple[str, ...]

# What the Penn Treebank tokenizer keeps as a token once coco-caption has dropped its punctuation marks.
_TOKEN = re.compile(
    r"\d+(?:[.,]\d+)+"  # 3,000 and 2.5
    r"|\w+(?:[-'/]\w+)*"  # words, with inner hyphens, apostrophes and slashes
    r"|[!?]{2,}"  # only a single ! or ? counts as punctuation there
    r"|[()\[\]{}]"  # brackets, as PTB writes them (see _BRACKETS)
    r"|[&%$#+=<>*~^|]"  # symbols are words to PTB
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens as coco-caption compares captions: its Penn Treebank tokenizer's output without the
    punctuation marks. "dog's" -> "dog", "'s"; "can't" -> "ca", "n't"; "(" -> "-lrb-"."""
    tokens: list[str] = []
    for token in _TOKEN.findall(text.lower().replace("’", "'")):
        clitic = _CLITIC.match(token)
        tokens.extend(clitic.groups() if clitic else (_BRACKETS.get(token, token),))
    return tokens


# ---------------------------------------------------------------------------------------------------------------
# Retrieval and classification


def recall_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """1.0 when any relevant item is among the first `k` of `ranked`, else 0.0."""
    return 1.0 if any(item in relevant for item in ranked[:k]) else 0.0


def average_precision_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """Sum of precision at the rank of each relevant item among the first `k`, over min(len(relevant), k)."""
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for rank, item in enumerate(ranked[:k], 1):
        if item in relevant:
            hits += 1
            total += hits / rank
    return total / min(len(relevant), k)


def average_precision(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """One class's average precision over files ranked by their score for it, as scikit-learn's
    `average_precision_score` defines it: AP = sum over n of (R_n - R_(n-1)) P_n, where P_n and R_n are the precision
    and recall of the files scored at least the n-th highest distinct score. Files of equal score enter the ranking
    together, so no order among ties is favoured; scores within `ties.TIE_TOLERANCE` are equal (float32 rounding
    moves two identical captions' cosines apart by a few 1e-7, which would otherwise order them by chance). None
    when no file is positive: recall is then undefined."""
    import numpy as np  # here: the other metrics are plain Python, light to import

    if len(scores) != len(positive):
        raise ValueError(f"{len(scores)} scores but {len(positive)} positive flags")
    flags = np.asarray(positive, dtype=bool)
    positives = int(flags.sum())
    if not positives:
        return None
    # Array arithmetic: a multi-label set scores every file for every class (20,000 files, 527 classes).
    values = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-values, kind="stable")
    starts = np.asarray(tie_starts(values[order].tolist()))
    found = np.add.reduceat(flags[order].astype(np.int64), starts)  # the positives of each threshold's group
    hits, seen = np.cumsum(found), np.append(starts[1:], len(values))
    # The recall gained, at this threshold's precision, summed in order (as a loop adds it).
    return float(np.cumsum(found / positives * hits / seen)[-1])


def mean(values: Sequence[float]) -> float | None:
    """The mean, or None for no values (a metric over nothing is undefined, not zero)."""
    return sum(values) / len(values) if values else None


def top_k_accuracy(truth_ranks: Sequence[int | None], k: int) -> float | None:
    """Fraction of files whose true label is ranked within the first `k` (ranks from 1; None: not ranked at all)."""
    return mean([1.0 if rank is not None and rank <= k else 0.0 for rank in truth_ranks])


def confusion_matrix(pairs: Sequence[tuple[str, str]], classes: Sequence[str]) -> list[list[int]]:
    """counts[i][j]: files of true class `classes[i]` predicted as `classes[j]`, from (true, predicted) pairs."""
    position = {label: i for i, label in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for expected, predicted in pairs:
        counts[position[expected]][position[predicted]] += 1
    return counts


# ---------------------------------------------------------------------------------------------------------------
# Captioning


def ngram_counts(tokens: Tokens, n: int) -> Counter[NGram]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def ngram_matches(candidate: Tokens, references: Sequence[Tokens], n: int) -> tuple[int, int]:
    """BLEU's modified n-gram precision as (clipped matches, n-grams of the candidate): a candidate n-gram counts at
    most as often as it occurs in the one reference that has it most often."""
    counts = ngram_counts(candidate, n)
    most: Counter[NGram] = Counter()
    for reference in references:
        most |= ngram_counts(reference, n)  # | keeps the larger count of each n-gram
    return sum(min(count, most[gram]) for gram, count in counts.items()), sum(counts.values())


def _closest_length(candidate: Tokens, references: Sequence[Tokens]) -> int:
    return min((abs(len(r) - len(candidate)), len(r)) for r in references)[1]


def bleu(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1 .. BLEU-`max_n` (geometric means of the modified precisions up to each order, with the
    brevity penalty)."""
    _check_pairs(candidates, references)
    matched, total = [0] * max_n, [0] * max_n
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references, strict=True):
        candidate_length += len(candidate)
        reference_length += _closest_length(candidate, refs)
        for n in range(1, max_n + 1):
            hits, count = ngram_matches(candidate, refs, n)
            matched[n - 1] += hits
            total[n - 1] += count
    if candidate_length == 0:
        return [0.0] * max_n
    penalty = 1.0 if candidate_length >= reference_length else math.exp(1 - reference_length / candidate_length)
    scores, log_sum = [], 0.0
    for n in range(1, max_n + 1):
        if matched[n - 1] == 0:
            scores += [0.0] * (max_n - n + 1)  # every higher order has a zero precision in its product too
            break
        log_sum += math.log(matched[n - 1] / total[n - 1])
        scores.append(penalty * math.exp(log_sum / n))
    return scores


def lcs_length(a: Tokens, b: Tokens) -> int:
    """Length of the longest common subsequence, one row of the dynamic programme at a time."""
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], beta: float = 1.2) -> list[float]:
    """ROUGE-L F-measure of each candidate (see the module docstring)."""
    _check_pairs(candidates, references)
    scores = []
    for candidate, refs in zip(candidates, references, strict=True):
        common = [lcs_length(ref, candidate) for ref in refs]
        precision = max(c / len(candidate) for c in common) if candidate else 0.0
        recall = max(c / len(ref) for c, ref in zip(common, refs, strict=True) if ref) if any(refs) else 0.0
        if precision and recall:
            scores.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
        else:
            scores.append(0.0)
    return scores


class _TfIdf:
    """A caption's tf-idf vectors per n-gram order, their norms, and its length as CIDEr-D measures it."""

    def __init__(self, tokens: Tokens, max_n: int, idf: dict[NGram, float], unseen_idf: float) -> None:
        self.vectors: list[dict[NGram, float]] = []
        self.norms: list[float] = []
        for n in range(1, max_n + 1):
            vector = {gram: count * idf.get(gram, unseen_idf) for gram, count in ngram_counts(tokens, n).items()}
            self.vectors.append(vector)
            self.norms.append(math.sqrt(sum(v * v for v in vector.values())))
        # coco-caption's CIDEr-D measures length in bigrams (its count of n-grams at index 1); the penalty depends
        # only on the difference, which is the difference in words whenever both captions have a bigram.
        self.length = max(len(tokens) - 1, 0)


def cider_d(
    candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], max_n: int = 4, sigma: float = 6.0
) -> list[float]:
    """CIDEr-D of each candidate against its references (see the module docstring); the corpus score is the mean."""
    _check_pairs(candidates, references)
    # Document frequency: in how many items' reference sets each n-gram occurs; log(items) is the idf of an n-gram
    # that no reference has (coco-caption takes log(max(1, df)), so df 0 and 1 weigh the same).
    frequency: Counter[NGram] = Counter()
    for refs in references:
        frequency.update({gram for ref in refs for n in range(1, max_n + 1) for gram in ngram_counts(ref, n)})
    log_items = math.log(len(references)) if references else 0.0
    idf = {gram: log_items - math.log(df) for gram, df in frequency.items()}
    scores = []
    for candidate, refs in zip(candidates, references, strict=True):
        hypothesis = _TfIdf(candidate, max_n, idf, log_items)
        total = 0.0
        for ref in refs:
            reference = _TfIdf(ref, max_n, idf, log_items)
            penalty = math.exp(-((hypothesis.length - reference.length) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                total += penalty * _clipped_cosine(hypothesis, reference, n)
        scores.append(10.0 * total / (max_n * len(refs)))
    return scores


def _clipped_cosine(hypothesis: _TfIdf, reference: _TfIdf, n: int) -> float:
    """Cosine of order-`n` vectors with each candidate weight clipped to the reference's (CIDEr-D's "-D" part)."""
    if hypothesis.norms[n] == 0 or reference.norms[n] == 0:
        return 0.0
    ref_vector = reference.vectors[n]
    dot = 0.0
    for gram, weight in hypothesis.vectors[n].items():
        ref_weight = ref_vector.get(gram, 0.0)
        dot += min(weight, ref_weight) * ref_weight
    return dot / (hypothesis.norms[n] * reference.norms[n])


def _check_pairs(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    if any(not refs for refs in references):
        raise ValueError("every candidate needs at least one reference")
