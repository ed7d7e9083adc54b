"""The vocabulary projection runs only on the positions whose logits are read (`kv_cache.LMCache.extend(read=...)`,
`Pengi.logits`, the training loss's `Pengi.real_answer_nll`), and what is read is what the language model's whole
forward pass gives at those positions (the loss's gradients too)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config

from pengi_search.decoding import score_candidates
from pengi_search.gpt2 import GPT2LM
from pengi_search.kv_cache import PLAIN_LM_HEADS, SharedPrefix, decoder_and_head
from pengi_search.model import Pengi
from pengi_search.testing import tiny_config

from .test_language_models import llama_pengi  # noqa: F401 (a fixture)

# Labels of 1 to 4 tokens: a gather off by one position, or reading one row's positions for another, moves them.
CANDIDATES = [[5, 9], [11], [3, 3, 4, 17], [40, 2, 8]]


def tiny_causal_lm(model_type: str, **settings: object) -> nn.Module:
    """A transformers causal LM of `model_type` with 32-wide random weights and a 100-token vocabulary."""
    sizes = {"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16}
    config = AutoConfig.for_model(
        model_type, hidden_size=32, intermediate_size=64, vocab_size=100, pad_token_id=0, **sizes, **settings
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def language_models(tiny_model_dir, llama_pengi) -> dict[str, nn.Module]:  # noqa: F811 (the fixture imported)
    """GPT-2 (`GPT2Cache`), Llama (`HFCache`, projected apart) and Gemma 2 with its logits capped hard enough to
    tell (`HFCache`, the model's own forward: its projection is not the last step)."""
    return {
        "gpt2": Pengi.from_pretrained(tiny_model_dir).gpt,
        "llama": llama_pengi.gpt,
        "capped": tiny_causal_lm("gemma2", final_logit_softcapping=1.0),
    }


def projection(gpt: nn.Module) -> nn.Module:
    return gpt.get_output_embeddings()


def projected_rows(gpt: nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """The number of positions each call of `gpt`'s vocabulary projection projects, recorded as it runs."""
    rows: list[int] = []
    handle = projection(gpt).register_forward_hook(lambda _, args, out: rows.append(args[0][..., 0].numel()))
    return rows, handle


def teacher_forced(gpt: nn.Module, prefix: torch.Tensor, candidate: list[int]) -> float:
    """The candidate's summed log-probability after one (P, E) prefix, from one whole forward pass."""
    ids = torch.tensor(candidate)
    embeds = torch.cat([prefix, gpt.get_input_embeddings()(ids)])[None]
    logp = gpt(inputs_embeds=embeds).logits[0].float().log_softmax(-1)
    predicting = logp[len(prefix) - 1 : -1]  # position t predicts token t + 1
    return float(predicting.gather(-1, ids[:, None]).sum())


def window_prefixes(gpt: nn.Module, prompt_tokens: int) -> SharedPrefix:
    """2 windows' audio halves (4 tokens), each with one prompt half of `prompt_tokens`."""
    torch.manual_seed(prompt_tokens)
    E = gpt.get_input_embeddings().embedding_dim
    return SharedPrefix(torch.randn(2, 4, E), torch.randn(2, prompt_tokens, E))


@pytest.mark.parametrize("prompt_tokens", [3, 6])
@pytest.mark.parametrize("model", ["gpt2", "llama", "capped"])
@torch.no_grad()
def test_candidate_scores_are_those_of_the_whole_forward_pass(language_models, model, prompt_tokens):
    gpt = language_models[model]
    prefix = window_prefixes(gpt, prompt_tokens)
    scores = score_candidates(gpt, prefix, CANDIDATES, max_rows=4)  # chunks of 2 candidates, padded differently
    for row, full in enumerate(prefix.full()):
        expected = [teacher_forced(gpt, full, candidate) for candidate in CANDIDATES]
        assert [score.total for score in scores[row]] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(("model", "projected"), [("gpt2", "read"), ("llama", "read"), ("capped", "all")])
@torch.no_grad()
def test_the_projection_runs_on_the_positions_read(language_models, model, projected):
    """Per prefix row: its last position (each candidate's first token), then each candidate's positions but its
    last; a model whose projection is not the last step projects every position fed (its own forward)."""
    gpt = language_models[model]
    prefix = window_prefixes(gpt, 3)
    rows, handle = projected_rows(gpt)
    try:
        score_candidates(gpt, prefix, CANDIDATES)
    finally:
        handle.remove()
    fed = len(CANDIDATES) * max(len(c) for c in CANDIDATES)
    read = sum(len(c) - 1 for c in CANDIDATES)
    *prefix_parts, candidates = rows  # GPT-2 runs the audio and the prompt halves apart
    assert prefix_parts[-1] == prefix.rows and len(prefix_parts) == (2 if model == "gpt2" else 1)
    assert candidates == prefix.rows * (read if projected == "read" else fed)


@pytest.mark.parametrize("model_type", sorted(PLAIN_LM_HEADS))
@torch.no_grad()
def test_the_listed_model_types_compute_their_logits_as_projected_hidden_states(model_type):
    gpt = tiny_causal_lm(model_type)
    split = decoder_and_head(gpt)
    assert split is not None
    decoder, head = split
    embeds = torch.randn(2, 5, gpt.get_input_embeddings().embedding_dim)
    torch.testing.assert_close(head(decoder(inputs_embeds=embeds).last_hidden_state), gpt(inputs_embeds=embeds).logits)


@pytest.mark.parametrize(
    ("model_type", "settings"), [("gemma2", {"final_logit_softcapping": 30.0}), ("cohere", {}), ("granite", {})]
)
def test_models_that_change_their_logits_after_the_projection_are_not_split(model_type, settings):
    assert decoder_and_head(tiny_causal_lm(model_type, **settings)) is None


def test_gpt2_here_with_transformers_configuration_is_not_split():
    """`GPT2LM` names its model type "gpt2" when built from transformers' `GPT2Config`, but has no `get_decoder`:
    it keeps its own forward on the transformers cache's path (the one it takes for settings `GPT2Cache` lacks)."""
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100, scale_attn_by_inverse_layer_idx=True)
    assert decoder_and_head(GPT2LM(config)) is None


@pytest.mark.parametrize("model", ["gpt2", "llama"])
@torch.no_grad()
def test_teacher_forcing_projects_the_answer_positions_only(tiny_model_dir, llama_pengi, model):  # noqa: F811
    pengi = Pengi.from_pretrained(tiny_model_dir) if model == "gpt2" else llama_pengi
    torch.manual_seed(4)
    prefix = torch.randn(2, 7, pengi.gpt.get_input_embeddings().embedding_dim)
    answers = torch.tensor([[5, 9, 13], [7, 0, 0]])
    rows, handle = projected_rows(pengi.gpt)
    try:
        logits = pengi.logits(prefix, answers)
    finally:
        handle.remove()
    assert rows == [2 * (3 + 1)]  # each answer's positions and the last token's, not the prefix's 6 before
    embeds = torch.cat([prefix, pengi.token_embeddings(answers)], dim=1)
    torch.testing.assert_close(logits, pengi.gpt(inputs_embeds=embeds).logits[:, 6:-1])


@pytest.fixture(scope="module")
def capped_pengi() -> Pengi:
    """A Pengi whose language model is Gemma 2 with its logits capped hard enough to tell: not split, so its
    training loss projects every position (its own forward) and reads the real answer tokens' logits."""
    cfg = tiny_config("base")
    gemma = {"model_type": "gemma2", "vocab_size": cfg.decoder.vocab_size, "final_logit_softcapping": 1.0}
    gemma |= {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "head_dim": 16}
    gemma |= {"num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 128}
    cfg = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, hf_config=gemma))
    torch.manual_seed(0)
    return Pengi(cfg).eval()


def pengi_of(model: str, tiny_model_dir, llama_pengi, capped_pengi) -> Pengi:  # noqa: F811 (the fixture imported)
    return {"gpt2": lambda: Pengi.from_pretrained(tiny_model_dir), "llama": lambda: llama_pengi}.get(
        model, lambda: capped_pengi
    )()


def whole_projection_nll(pengi: Pengi, prefix: torch.Tensor, answers: torch.Tensor, mask: torch.Tensor):
    """The summed NLL of the real answer tokens from the logits of every position (the loss as it was)."""
    embeds = torch.cat([prefix, pengi.token_embeddings(answers)], dim=1)
    logits = pengi.gpt(inputs_embeds=embeds).logits[:, prefix.shape[1] - 1 : -1]
    nll = -logits.float().log_softmax(-1).gather(-1, answers[..., None]).squeeze(-1)
    return (nll * mask).sum()


def loss_and_gradients(pengi: Pengi, prefix: torch.Tensor, loss_of) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    pengi.zero_grad(set_to_none=True)
    leaf = prefix.clone().requires_grad_()
    loss = loss_of(leaf)
    loss.backward()
    grads = {name: p.grad for name, p in pengi.gpt.named_parameters() if p.grad is not None}
    return loss.detach(), {"prefix": leaf.grad, **grads}


@pytest.mark.parametrize("model", ["gpt2", "llama", "capped"])
def test_the_training_loss_and_its_gradients_are_those_of_the_whole_projection(
    tiny_model_dir,
    llama_pengi,  # noqa: F811 (the fixture imported)
    capped_pengi,
    model,
):
    pengi = pengi_of(model, tiny_model_dir, llama_pengi, capped_pengi)
    torch.manual_seed(5)
    prefix = torch.randn(3, 7, pengi.gpt.get_input_embeddings().embedding_dim)
    # right-padded answers, the padding ids real tokens' ids (a read of a padded position would count them)
    answers = torch.tensor([[5, 9, 13, 2], [7, 3, 3, 3], [11, 4, 6, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    loss, grads = loss_and_gradients(pengi, prefix, lambda p: pengi.real_answer_nll(p, answers, mask).sum())
    expected, expected_grads = loss_and_gradients(
        pengi, prefix, lambda p: whole_projection_nll(pengi, p, answers, mask)
    )
    torch.testing.assert_close(loss, expected)
    assert grads.keys() == expected_grads.keys() and len(grads) > 2  # the prefix, the blocks and the projection
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], msg=name)
    pengi.zero_grad(set_to_none=True)


@pytest.mark.parametrize(("model", "projected"), [("gpt2", 6), ("llama", 6), ("capped", 3 * (4 + 1))])
@torch.no_grad()
def test_the_training_loss_projects_the_real_answer_tokens_positions_only(
    tiny_model_dir,
    llama_pengi,  # noqa: F811 (the fixture imported)
    capped_pengi,
    model,
    projected,
):
    """6 real answer tokens of 3 x 4 positions after a 7-token prefix; a model whose projection is not its last
    step projects every answer position and one more (`Pengi.logits`), and its loss still counts the real tokens
    alone."""
    pengi = pengi_of(model, tiny_model_dir, llama_pengi, capped_pengi)
    prefix = torch.randn(3, 7, pengi.gpt.get_input_embeddings().embedding_dim)
    answers = torch.tensor([[5, 9, 13, 2], [7, 3, 3, 3], [11, 4, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    rows, handle = projected_rows(pengi.gpt)
    try:
        nll = pengi.real_answer_nll(prefix, answers, mask)
    finally:
        handle.remove()
    assert sum(rows) == projected and nll.shape == (6,)
    torch.testing.assert_close(pengi.answer_nll(prefix, answers)[mask.bool()], nll)
