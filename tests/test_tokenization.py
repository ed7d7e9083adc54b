"""Prompts are tokenised as the reference does it."""

from __future__ import annotations

import logging

import pytest

from pengi_search.choices import LongPrompt, StopRule
from pengi_search.errors import EXIT_USAGE
from pengi_search.model_dir import ModelDir
from pengi_search.tokenization import PromptTooLongError


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return ModelDir.read(tiny_model_dir).tokenizers


@pytest.fixture(scope="module")
def tok_no_text(tiny_no_text_model_dir):
    return ModelDir.read(tiny_no_text_model_dir).tokenizers


def test_base_prompts_are_clip_tokens_padded_with_end_of_text(tok):
    batch = tok.prompts(["generate audio caption", "this is a sound of"])
    length = tok.cfg.text_prompt_length
    assert batch.input_ids.shape == (2, length)
    for row, mask, prompt in zip(
        batch.input_ids.tolist(),
        batch.attention_mask.tolist(),
        ["generate audio caption", "this is a sound of"],
        strict=True,
    ):
        real = tok.clip(prompt)["input_ids"]
        assert real[0] == tok.clip.bos_token_id and real[-1] == tok.clip.eos_token_id
        assert row == real + [tok.clip.eos_token_id] * (length - len(real))
        assert mask == [1] * len(real) + [0] * (length - len(real))


def test_base_no_text_enc_prompts_are_gpt2_tokens_with_end_padded_with_zero(tok_no_text):
    batch = tok_no_text.prompts(["generate metadata"])
    real = tok_no_text.gpt2.encode("generate metadata <|endoftext|>")
    assert real[-1] == tok_no_text.gpt2.eos_token_id
    length = tok_no_text.cfg.text_prompt_length
    assert batch.input_ids[0].tolist() == real + [0] * (length - len(real))
    assert batch.attention_mask[0].tolist() == [1] * len(real) + [0] * (length - len(real))


def test_stop_ids_are_the_lone_space_and_end_of_text(tok):
    space = tok.gpt2.encode(" ")[0]
    assert tok.stop_ids == (space, tok.gpt2.eos_token_id)


def test_answers_end_like_the_released_models_captions(tok):
    ids = tok.answer_ids("a dog barks")
    assert ids[-2:] == list(tok.stop_ids)
    assert tok.decode(ids) == "a dog barks"


def test_an_overlong_prompt_is_cut_as_the_original_does(tok, tok_no_text, caplog):
    prompt = "question: " + "is there a dog " * 30
    length = tok.cfg.text_prompt_length
    with caplog.at_level(logging.WARNING, logger="pengi_search.tokenization"):
        (row,) = tok.prompts([prompt]).input_ids.tolist()
    # The reference's tokenizer call (max_length, no explicit truncation) truncates: CLIP keeps both markers.
    full = tok.clip(prompt)["input_ids"]
    assert len(full) > length and row == full[: length - 1] + [tok.clip.eos_token_id]
    # Named shortened, as a cut label or query is: the whole prompt made a line of hundreds of characters.
    assert f"cut to its first {length}, as the original Pengi does: {prompt[:40] + '...'!r}" in caplog.text
    (gpt2_row,) = tok_no_text.prompts([prompt]).input_ids.tolist()  # GPT-2: the first ids, end marker lost
    assert gpt2_row == tok_no_text.encode(prompt + " <|endoftext|>")[:length]


def test_an_overlong_prompt_can_be_refused(tok):
    with pytest.raises(PromptTooLongError, match=f"longer than {tok.cfg.text_prompt_length} tokens") as refused:
        tok.prompts(["dog " * 100], LongPrompt.refuse)
    assert refused.value.exit_code == EXIT_USAGE


def test_the_original_stop_rule_is_the_lone_space_only(tok):
    assert tok.stop_ids_for(StopRule.original) == tok.stop_ids[:1] == (tok.gpt2.encode(" ")[0],)
    assert tok.stop_ids_for(StopRule.both) == tok.stop_ids


def test_free_texts_pad_to_the_longest(tok):
    batch = tok.texts(["a dog", "water runs from a tap"])
    assert batch.input_ids.shape[1] == max(int(m.sum()) for m in batch.attention_mask)


def test_answers_cut_within_a_character_end_before_it_not_in_a_replacement_character(tok):
    """The tiny byte-level BPE spells é, 日 and 本 in 2 or 3 byte tokens each: an answer that stops at its length
    limit within one decoded its bytes as U+FFFD ("a caf\ufffd"), in the samples a run prints and logs too."""
    text = "a café日本 dog"  # no lone space, which is a stop token
    ids = tok.encode(text)
    answers = [tok.decode(ids[:end]) for end in range(len(ids) + 1)]
    assert not any("\ufffd" in answer for answer in answers)
    assert all(text.startswith(answer) for answer in answers)
    assert {"a caf", "a café", "a café日", "a café日本"} <= set(answers)  # each cut within é, 日 or 本 among them
    assert answers[-1] == text


def test_stray_bytes_that_no_cut_mends_are_decoded_as_they_are(tok):
    """Only a character cut short is left out: bytes that are no character wherever the ids end stay as decoded."""
    ids = tok.encode("a café")
    continuation = ids[-1]  # é's second byte, alone: no character starts with it
    assert tok.decode([continuation] * 4) == "\ufffd" * 4
