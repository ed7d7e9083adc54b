"""Generation and scoring: batched and cached decoding computes what one-row, recompute-everything decoding does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pengi_search.choices import StopRule
from pengi_search.decoding import GenerationConfig, beam_search, greedy, score_candidates
from pengi_search.inference import Engine
from pengi_search.model import Pengi
from pengi_search.model_dir import ModelDir


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return Pengi.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def prefixes(model):
    torch.manual_seed(1)
    L, E = model.cfg.prefix_tokens, model.cfg.decoder.n_embd
    return torch.randn(5, L, E)


def uncached_greedy(gpt, prefix, steps):
    """The reference's way: run the whole growing sequence through GPT-2 at every step."""
    seq, out = prefix, []
    for _ in range(steps):
        token = gpt(inputs_embeds=seq).logits[:, -1].argmax(-1)
        out.append(int(token))
        seq = torch.cat([seq, gpt.get_input_embeddings()(token)[:, None]], dim=1)
    return out


@torch.no_grad()
def test_cached_greedy_equals_recomputing_the_whole_sequence(model, prefixes):
    cached = greedy(model.gpt, prefixes, 8)
    for row in range(len(prefixes)):
        assert cached[row] == uncached_greedy(model.gpt, prefixes[row : row + 1], 8)


def test_greedy_stops_at_a_stop_id(model, prefixes):
    free = greedy(model.gpt, prefixes[:1], 6)[0]
    stop = free[2]
    stopped = greedy(model.gpt, prefixes[:1], 6, stop_ids=(stop,))[0]
    assert stopped == free[: free.index(stop) + 1]


@pytest.mark.parametrize("beam", [1, 3, 4])
def test_batched_beam_search_equals_one_row_at_a_time(model, prefixes, beam):
    cfg = GenerationConfig(beam=beam, max_len=7, stop_ids=(220,))
    batched = beam_search(model.gpt, prefixes, cfg)
    for row in range(len(prefixes)):
        single = beam_search(model.gpt, prefixes[row : row + 1], cfg)[0]
        assert [h.tokens for h in batched[row]] == [h.tokens for h in single]
        assert [h.score for h in batched[row]] == pytest.approx([h.score for h in single], abs=1e-5)


def test_beam_hypotheses_are_sorted_and_scored_by_mean_log_probability(model, prefixes):
    hyps = beam_search(model.gpt, prefixes[:1], GenerationConfig(beam=3, max_len=5, stop_ids=()))[0]
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    for h in hyps:
        scored = score_candidates(model.gpt, prefixes[:1], [h.tokens])[0][0]
        assert scored.mean == pytest.approx(h.score, abs=1e-4)


def test_beam_of_one_is_greedy(model, prefixes):
    hyps = beam_search(model.gpt, prefixes, GenerationConfig(beam=1, max_len=6, stop_ids=()))
    assert [h[0].tokens for h in hyps] == greedy(model.gpt, prefixes, 6)


def test_no_repeat_ngram_guard_removes_repeats(model, prefixes):
    cfg = GenerationConfig(beam=2, max_len=12, stop_ids=())
    plain = beam_search(model.gpt, prefixes, cfg)
    guarded = beam_search(model.gpt, prefixes, GenerationConfig(beam=2, max_len=12, stop_ids=(), no_repeat_ngram=2))

    def has_repeated_bigram(tokens):
        bigrams = list(zip(tokens, tokens[1:], strict=False))
        return len(bigrams) != len(set(bigrams))

    assert any(has_repeated_bigram(h[0].tokens) for h in plain), "the tiny model should repeat itself unguarded"
    assert not any(has_repeated_bigram(h.tokens) for hs in guarded for h in hs)


@torch.no_grad()
def test_candidate_scores_equal_teacher_forced_log_likelihood(model, prefixes):
    candidates = [[5, 9, 13], [7], [21, 3, 3, 40, 2]]
    scores = score_candidates(model.gpt, prefixes[:3], candidates, max_rows=4)  # forces several chunks
    for row in range(3):
        for c, cand in enumerate(candidates):
            ids = torch.tensor([cand])
            total = -model.answer_nll(prefixes[row : row + 1], ids).sum().item()
            assert scores[row][c].total == pytest.approx(total, abs=1e-4)
            assert scores[row][c].mean == pytest.approx(total / len(cand), abs=1e-4)


@torch.no_grad()
def test_additional_text_is_continued(model, prefixes):
    """Generating after [prefix ; given start] equals greedy decoding of the prefix forced through that start."""
    start = [11, 12]
    wte = model.gpt.get_input_embeddings()
    extended = torch.cat([prefixes[:1], wte(torch.tensor([start]))], dim=1)
    hyp = beam_search(model.gpt, extended, GenerationConfig(beam=1, max_len=4, stop_ids=()))[0][0]
    assert hyp.tokens == uncached_greedy(model.gpt, extended, 4)


@pytest.mark.parametrize(("rule", "ends"), [(StopRule.both, 2), (StopRule.original, 1)])
def test_the_engine_ends_answers_where_the_stop_rule_says(tiny_model_dir, monkeypatch, rule, ends):
    engine = Engine.load(ModelDir.read(tiny_model_dir), "cpu")
    seen = []

    def recording(gpt, prefix, cfg):
        seen.append(cfg.stops)
        return beam_search(gpt, prefix, cfg)

    monkeypatch.setattr("pengi_search.inference.beam_search", recording)
    audio = engine.audio_embeddings(np.zeros((1, engine.model.cfg.audio.clip_samples), np.float32))
    engine.generate(audio, ["generate audio caption"], GenerationConfig(beam=2, max_len=3, stop=rule))
    assert seen == [engine.tok.stop_ids[:ends]]  # the lone space; and end-of-text unless `original`


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine.load(ModelDir.read(tiny_model_dir), "cpu")


@pytest.fixture(scope="module")
def silence(engine):
    return engine.audio_embeddings(np.zeros((1, engine.model.cfg.audio.clip_samples), np.float32))


def positions_after_prefix(engine) -> int:
    return engine.model.cfg.decoder.n_positions - engine.model.cfg.prefix_tokens


@pytest.mark.parametrize("beam", [1, 2])
def test_the_longest_answer_that_fits_the_language_model_is_generated_to_its_last_position(engine, silence, beam):
    """The prefix and max_len tokens fill GPT-2's positions (the last token is never fed back), never stopping."""
    most = positions_after_prefix(engine) + 1
    [[answer]] = engine.generate(silence, ["generate audio caption"], GenerationConfig(beam, most, stop_ids=()))
    assert np.isfinite(answer.score)


def test_an_answer_longer_than_the_language_model_is_refused_before_decoding(engine, silence, monkeypatch):
    """One token too many for GPT-2's positions is bad usage, saying the longest that fits: no IndexError deep in
    the model after the work, whatever the answer would have been."""
    from pengi_search.errors import UsageError

    monkeypatch.setattr("pengi_search.inference.beam_search", lambda *a: pytest.fail("decoded anyway"))
    most = positions_after_prefix(engine) + 1
    with pytest.raises(UsageError, match=f"use --max-len {most} or less"):
        engine.generate(silence, ["generate audio caption"], GenerationConfig(beam=1, max_len=most + 1))
    start = " a" * (most + 1)
    with pytest.raises(UsageError, match="--answer-prefix"):
        engine.generate(silence, ["generate audio caption"], GenerationConfig(1, 1), additional_text=start)


def test_a_candidate_longer_than_the_language_model_is_refused(engine, silence):
    from pengi_search.errors import UsageError

    fits = engine.tok.decode(engine.tok.encode(" a") * (positions_after_prefix(engine) - 2))
    assert len(engine.tok.answer_ids(fits)) == positions_after_prefix(engine)
    [[scored]] = engine.score(silence, "this is a sound of", [fits])
    assert np.isfinite(scored.mean)
    with pytest.raises(UsageError, match="tokens as an answer"):
        engine.score(silence, "this is a sound of", [fits + " a"])


def test_an_engine_loads_by_name_or_folder_as_the_model_option_takes_them(tiny_model_dir, isolated_home, monkeypatch):
    """`Engine.load("base")` as a transformers user writes it: an installed model's name, a folder (str or Path),
    or None for `PENGI_SEARCH_MODEL`, else the installed `base`; a `ModelDir` as before."""
    import shutil

    from pengi_search.model_dir import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        Engine.load("base", "cpu")
    shutil.copytree(tiny_model_dir, isolated_home / "models" / "base")
    for spec in ("base", None, str(tiny_model_dir), tiny_model_dir, ModelDir.read(tiny_model_dir)):
        engine = Engine.load(spec, "cpu")
        assert engine.model.cfg == ModelDir.read(tiny_model_dir).config
    monkeypatch.setenv("PENGI_SEARCH_MODEL", "nowhere")
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        Engine.load(device="cpu")


def test_generate_defaults_to_the_command_line_settings(engine, silence):
    prompts = ["generate audio caption", "this is a sound of"]
    assert engine.generate(silence, prompts) == engine.generate(silence, prompts, GenerationConfig(beam=3, max_len=30))
