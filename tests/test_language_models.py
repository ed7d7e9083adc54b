"""The language model may be any transformers causal LM that accepts `inputs_embeds`, not only GPT-2."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pengi_search.decoding import GenerationConfig, beam_search, greedy
from pengi_search.model import Pengi
from pengi_search.model_dir import ModelDir
from pengi_search.testing import tiny_config, tiny_gpt2_tokenizer

from .test_generation import uncached_greedy


@pytest.fixture(scope="module")
def llama_pengi() -> Pengi:
    tokenizer = tiny_gpt2_tokenizer()
    cfg = tiny_config("base")
    llama = {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "eos_token_id": tokenizer.eos_token_id,
    }
    cfg = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, hf_config=llama))
    torch.manual_seed(0)
    return Pengi(cfg).eval()


def test_a_llama_decoder_replaces_gpt2(llama_pengi):
    assert type(llama_pengi.gpt).__name__ == "LlamaForCausalLM"
    L, E = llama_pengi.cfg.mapper.prefix_length, 32
    wave = torch.randn(2, llama_pengi.cfg.audio.clip_samples) * 0.1
    ids = torch.zeros(2, llama_pengi.cfg.text_prompt_length, dtype=torch.long)
    with torch.no_grad():
        prefix = llama_pengi.prefix(wave, ids, torch.ones_like(ids))
    assert prefix.shape == (2, 2 * L, E)


@torch.no_grad()
def test_cached_and_batched_decoding_work_with_it(llama_pengi):
    prefix = torch.randn(3, llama_pengi.cfg.prefix_tokens, 32)
    cached = greedy(llama_pengi.gpt, prefix, 5)
    assert cached == [uncached_greedy(llama_pengi.gpt, prefix[i : i + 1], 5) for i in range(3)]
    cfg = GenerationConfig(beam=2, max_len=5, stop_ids=())
    batched = beam_search(llama_pengi.gpt, prefix, cfg)
    assert [[h.tokens for h in hyps] for hyps in batched] == [
        [h.tokens for h in beam_search(llama_pengi.gpt, prefix[i : i + 1], cfg)[0]] for i in range(3)
    ]


def test_it_trains_and_round_trips_through_a_model_directory(llama_pengi, tmp_path):
    prefix = torch.randn(2, llama_pengi.cfg.prefix_tokens, 32, requires_grad=True)
    answers = torch.tensor([[5, 6, 7], [8, 9, 0]])
    loss = llama_pengi.answer_loss(prefix, answers, torch.tensor([[1, 1, 1], [1, 1, 0]]))
    loss.backward()
    assert torch.isfinite(loss) and prefix.grad is not None and prefix.grad.abs().sum() > 0

    llama_pengi.save_pretrained(tmp_path / "llama-pengi")
    model_dir = ModelDir.read(tmp_path / "llama-pengi")
    assert model_dir.config.decoder.hf_config["model_type"] == "llama"
    loaded = Pengi.from_pretrained(model_dir)
    for (k, a), b in zip(llama_pengi.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
