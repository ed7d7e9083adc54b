"""Captioning quality: the captions the library holds for a captioned set, scored against its references.

A file's generated caption is the answer to the index's first prompt ("generate audio caption" by default) in its
window with the best score (the model's mean log-probability per token): files longer than 7 s have several
windows, and the one the model is surest of stands for the file. Scores: BLEU-1..4, ROUGE-L, CIDEr-D (`metrics`),
METEOR and SPICE where Java can run them (`java_metrics`), SPIDEr = (CIDEr-D + SPICE) / 2, and the mean cosine
between each generated caption and its references in the library's text embedding (how close in meaning, where
n-gram metrics only count shared words). Only that cosine needs a text embedder: without one (a model trained on
labels has no text tower, and a sentence-transformers model may not be at hand offline) the captions are decoded
here (`decoded_captions`) and every other metric is computed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from ..json_values import json_seconds
from ..stored import StoredWindows, each_stored_windows
from ..window_batches import Progress, map_windows
from . import java_metrics
from .datasets import CaptionSet, left_out
from .metrics import bleu, cider_d, mean, rouge_l, tokenize

if TYPE_CHECKING:
    from ..decoding import GenerationConfig
    from ..embedders import TextEmbedder
    from ..inference import Engine
    from ..library import Library

JAVA_SKIPPED = "not run (--no-java-metrics)"
EMBEDDING_COSINE = "embedding_cosine"


@dataclass(frozen=True)
class GeneratedCaption:
    text: str
    prompt: str
    start_s: float
    end_s: float
    score: float | None


def stored_caption(stored: StoredWindows | None) -> GeneratedCaption | None:
    """The caption that stands for a file with these stored windows (see the module docstring); None if it has
    none (not indexed, changed since, or no window with a text)."""
    if stored is None:
        return None
    return best_caption(
        GeneratedCaption(w.texts[0].text, w.texts[0].prompt, w.start_s, w.end_s, w.texts[0].score)
        for w in stored.windows
        if w.texts
    )


def best_caption(windows: Iterable[GeneratedCaption]) -> GeneratedCaption | None:
    """The window's caption the model is surest of (None: no window); max keeps the first of equal scores, so the
    earliest window wins a tie, and a caption without a score loses to any with one."""
    return max(windows, key=lambda caption: -np.inf if caption.score is None else caption.score, default=None)


def library_captions(library: Library, caption_set: CaptionSet) -> dict[str, GeneratedCaption]:
    """The caption of each of the set's files that the library holds, by the file's name in the set."""
    stored = each_stored_windows(library, [item.path or "" for item in caption_set.found])
    found = ((item.name, stored_caption(windows)) for item, windows in zip(caption_set.found, stored, strict=True))
    return {name: caption for name, caption in found if caption is not None}


def decoded_captions(
    engine: Engine,
    caption_set: CaptionSet,
    prompt: str,
    generation: GenerationConfig,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, GeneratedCaption], dict[str, str]]:
    """The set's files captioned now, without a library: the answer to `prompt` in every window, the best one
    standing for the file as in a library (`best_caption`). Only the caption prompt is asked (the library's other
    prompts would not be scored). Returns (captions by name in the set, why each file that failed did, by path)."""
    names = {item.path: item.name for item in caption_set.found if item.path}
    answer = partial(engine.describe_windows, prompts={"caption": prompt}, generation=generation)
    batches = map_windows(
        list(names), answer, batch_size=engine.windows_per_batch(1), workers=workers, progress=progress
    )
    captions, failures = {}, {}
    for outcome in batches:
        if outcome.error is not None:
            failures[outcome.path] = f"could not be decoded: {outcome.error}"
            continue
        windows = (
            GeneratedCaption(w.answers["caption"].text, prompt, w.start_s, w.end_s, w.answers["caption"].score)
            for w in outcome.results
        )
        if (best := best_caption(windows)) is not None:
            captions[names[outcome.path]] = best
    return captions, failures


def caption_origins(library: Library, paths: Sequence[str]) -> dict[str, list[str]]:
    """What made the stored captions of these files, each in order of first appearance: `caption_prompts`, the
    prompts they answer (each window's first text, the one embedded for search and scored as its caption), and
    `caption_decoding`, the settings they were decoded with (`decoding_of`). A library indexed before with other
    prompts or settings keeps its captions until it is indexed again (`--reindex`), so these may differ from what
    was asked for."""
    prompts: dict[str, None] = {}
    decodings: dict[str, None] = {}
    for stored in each_stored_windows(library, paths):
        for text in (window.texts[0] for window in (stored.windows if stored else ()) if window.texts):
            prompts[text.prompt] = None
            decodings[decoding_of(text.decoding, text.mode)] = None
    return {"caption_prompts": list(prompts), "caption_decoding": list(decodings)}


def decoding_of(settings: str | None, mode: str | None) -> str:
    """How a text was decoded, as reports name it: `beam=3 max_len=30 stop=both (exact)`; a library written before
    texts recorded it says so."""
    return f"{settings or 'settings not recorded'} ({mode or 'mode not recorded'})"


def evaluate_captions(
    caption_set: CaptionSet,
    captions: Mapping[str, GeneratedCaption],
    embedder: TextEmbedder | str,
    *,
    java: bool = True,
    failures: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Caption metrics over the set's files that have a caption (`captions`, by name in the set: `library_captions`
    or `decoded_captions`), each file's caption and scores, and the files left out (`failures`: why, by path).
    `embedder`: the text embedder of the embedding cosine, or why there is none (the cosine is then not computed,
    and said so)."""
    generated = [(item, captions[item.name]) for item in caption_set.found if item.name in captions]
    skipped = left_out(caption_set, {item.name for item, _ in generated}, failures)
    metrics, unavailable, per_item = score_captions(
        [caption.text for _, caption in generated], [item.captions for item, _ in generated], embedder, java=java
    )
    items = [
        {
            "path": item.name,
            "generated": caption.text,
            "window": [json_seconds(caption.start_s), json_seconds(caption.end_s)],
            "references": list(item.captions),
            **scores,
        }
        for (item, caption), scores in zip(generated, per_item, strict=True)
    ]
    return {
        "metrics": metrics,
        "unavailable": unavailable,
        "prompts": sorted({caption.prompt for _, caption in generated}),
        "evaluated": {"files": len(generated), "captions": sum(len(item.captions) for item, _ in generated)},
        "skipped": skipped,
        "items": items,
    }


def score_captions(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    embedder: TextEmbedder | str,
    *,
    java: bool = True,
) -> tuple[dict[str, float | None], dict[str, str], list[dict[str, float | None]]]:
    """(corpus metrics, unavailable metric -> why, per-caption ROUGE-L, CIDEr-D and embedding cosine).
    `embedder`: as `evaluate_captions` takes it."""
    if not candidates:
        return {}, {"all": "no file of the set is in the index"}, []
    cand_tokens = [tokenize(c) for c in candidates]
    ref_tokens = [[tokenize(r) for r in refs] for refs in references]
    metrics: dict[str, float | None] = {f"BLEU-{n}": v for n, v in enumerate(bleu(cand_tokens, ref_tokens), 1)}
    rouge, cider = rouge_l(cand_tokens, ref_tokens), cider_d(cand_tokens, ref_tokens)
    if java:
        joined = [" ".join(t) for t in cand_tokens], [[" ".join(t) for t in refs] for refs in ref_tokens]
        found = {
            "METEOR": java_metrics.meteor(*joined),
            "SPICE": java_metrics.spice(candidates, references),  # SPICE parses the sentences itself
        }
    else:
        found = {name: java_metrics.JavaMetric(None, JAVA_SKIPPED) for name in ("METEOR", "SPICE")}
    unavailable = {name: m.unavailable for name, m in found.items() if m.unavailable}
    cider_mean, spice = sum(cider) / len(cider), found["SPICE"].value
    cosines = None if isinstance(embedder, str) else embedding_cosines(embedder, candidates, references)
    if isinstance(embedder, str):
        unavailable[EMBEDDING_COSINE] = embedder
    metrics.update(
        {
            "METEOR": found["METEOR"].value,
            "ROUGE-L": mean(rouge),
            "CIDEr-D": cider_mean,
            "SPICE": spice,
            "SPIDEr": None if spice is None else (cider_mean + spice) / 2,
            EMBEDDING_COSINE: None if cosines is None else mean(cosines),
        }
    )
    if spice is None:
        unavailable["SPIDEr"] = "needs SPICE"
    per_item = [
        {"rouge_l": r, "cider_d": c, EMBEDDING_COSINE: None if cosines is None else cosines[i]}
        for i, (r, c) in enumerate(zip(rouge, cider, strict=True))
    ]
    return metrics, unavailable, per_item


def embedding_cosines(
    embedder: TextEmbedder, candidates: Sequence[str], references: Sequence[Sequence[str]]
) -> list[float]:
    """Per candidate, the mean cosine between its embedding and each of its references' (embeddings normalised)."""
    flat = [r for refs in references for r in refs]
    vectors = embedder.embed([*candidates, *flat])
    generated, refs_vectors = vectors[: len(candidates)], vectors[len(candidates) :]
    cosines, start = [], 0
    for i, refs in enumerate(references):
        cosines.append(float((refs_vectors[start : start + len(refs)] @ generated[i]).mean()))
        start += len(refs)
    return cosines
