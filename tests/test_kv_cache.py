"""The shared-prefix key/value cache: rows that share their audio half, and beams that share their row's prefix,
compute what each row's whole prefix run on its own computes."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pengi_search.decoding import GenerationConfig, beam_search, greedy, score_candidates
from pengi_search.kv_cache import GPT2Cache, HFCache, SharedPrefix, start_cache
from pengi_search.model import Pengi


@pytest.fixture(scope="module")
def gpt(tiny_model_dir) -> GPT2LMHeadModel:
    return Pengi.from_pretrained(tiny_model_dir).gpt


@pytest.fixture(scope="module")
def shared(gpt) -> SharedPrefix:
    """3 windows' audio halves (4 tokens) x 2 prompts' text halves (5 tokens), window-major."""
    torch.manual_seed(3)
    E = gpt.config.n_embd
    audio, prompts = torch.randn(3, 4, E), torch.randn(2, 5, E)
    return SharedPrefix(audio, prompts.repeat(3, 1, 1))


def test_the_released_language_model_gets_the_shared_cache_and_others_transformers_cache(gpt, shared):
    assert isinstance(start_cache(gpt, shared)[0], GPT2Cache)
    unusual = GPT2LMHeadModel(GPT2Config(**{**gpt.config.to_dict(), "scale_attn_by_inverse_layer_idx": True}))
    assert isinstance(start_cache(unusual.eval(), shared)[0], HFCache)


@torch.no_grad()
def test_prefix_logits_equal_the_whole_prefix_run_through_transformers(gpt, shared):
    _, logits = start_cache(gpt, shared)
    expected = gpt(inputs_embeds=shared.full()).logits[:, -1]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_fed_tokens_see_their_whole_past(gpt, shared):
    """Several tokens at once (causal among themselves), then one more: logits as one uncached run gives them."""
    cache, _ = start_cache(gpt, shared, capacity=2)  # the third token overflows the reserved room
    wte = gpt.get_input_embeddings()
    ids = torch.randint(0, gpt.config.vocab_size, (shared.rows, 3))
    two = cache.extend(wte(ids[:, :2]), read=torch.ones(shared.rows, 2, dtype=torch.bool))
    three = cache.extend(wte(ids[:, 2:]))
    whole = gpt(inputs_embeds=torch.cat([shared.full(), wte(ids)], dim=1)).logits
    torch.testing.assert_close(two, whole[:, -3:-1].flatten(0, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(three, whole[:, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_repeated_rows_share_their_past_and_reorder_moves_only_fed_tokens(gpt, shared):
    wte = gpt.get_input_embeddings()
    cache, _ = start_cache(gpt, shared, capacity=4)
    beams = cache.repeated(2)  # rows 2r and 2r + 1 continue row r
    ids = torch.randint(0, gpt.config.vocab_size, (beams.rows, 2))
    beams.extend(wte(ids[:, :1]))
    swap = torch.arange(beams.rows).view(-1, 2).flip(1).reshape(-1)  # each pair of beams trades places
    beams.reorder(swap)
    logits = beams.extend(wte(ids[:, 1:]))
    moved = ids[swap, 0]  # after the reorder, row i's first fed token is the one its source had
    full = shared.full().repeat_interleave(2, dim=0)
    expected = gpt(inputs_embeds=torch.cat([full, wte(moved)[:, None], wte(ids[:, 1:])], dim=1)).logits[:, -1]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_a_shared_prefix_searches_what_the_whole_prefixes_search(gpt, shared):
    cfg = GenerationConfig(beam=3, max_len=6, stop_ids=(7,))
    together = beam_search(gpt, shared, cfg)
    alone = beam_search(gpt, shared.full(), cfg)
    assert [[h.tokens for h in row] for row in together] == [[h.tokens for h in row] for row in alone]
    assert greedy(gpt, shared, 5) == greedy(gpt, shared.full(), 5)
    candidates = [[5, 9], [11], [3, 3, 4]]
    together, alone = score_candidates(gpt, shared, candidates), score_candidates(gpt, shared.full(), candidates)
    for a, b in zip(together, alone, strict=True):
        assert [s.total for s in a] == pytest.approx([s.total for s in b], abs=1e-4)


@torch.no_grad()
def test_the_transformers_cache_computes_the_same(gpt, shared):
    """The path every other language model takes, forced here on GPT-2."""
    fast, _ = GPT2Cache.start(gpt, shared, 0)
    slow, _ = HFCache.start(gpt, shared)
    wte = gpt.get_input_embeddings()
    ids = torch.randint(0, gpt.config.vocab_size, (shared.rows * 2, 2))
    every = torch.ones(ids.shape, dtype=torch.bool)
    a = fast.repeated(2).extend(wte(ids), read=every)
    b = slow.repeated(2).extend(wte(ids), read=every)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rows_that_do_not_divide_among_the_shared_parts_are_refused():
    with pytest.raises(ValueError, match="cannot share"):
        SharedPrefix(torch.zeros(2, 3, 4), torch.zeros(3, 1, 4))
    with pytest.raises(ValueError, match="part of their own"):
        SharedPrefix(torch.zeros(2, 3, 4), torch.zeros(4, 0, 4))
