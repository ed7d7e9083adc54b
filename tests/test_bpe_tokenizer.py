"""`FileTokenizer` (the `tokenizers` library alone, what inference uses) gives what transformers' tokenizer loaded
from the same folder gives: the same ids (with and without markers, cut or not), the same decoded text, the same
special tokens; and `Tokenizers` built on either gives the same prompts, answers and stop ids."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer, GPT2Tokenizer

from pengi_search.bpe_tokenizer import FileTokenizer
from pengi_search.choices import LongPrompt
from pengi_search.model_dir import ModelDir
from pengi_search.testing import CORPUS, clip_like_tokenizer, tiny_gpt2_tokenizer
from pengi_search.tokenization import TOKENIZER_DIR, PromptTooLongError, Tokenizers

TEXTS = [
    "",
    " ",
    "   ",
    "\t\n",
    "a",
    "generate audio caption",
    "Generate Audio CAPTION",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\r\nlines  and   runs of spaces",
    "question: is there a dog?",
    "what's this? it's a dog's bark, isn't it... they're here; we've gone!",
    "punctuation!!! ??? ... --- ((brackets)) [x] {y} <z> 'quotes' \"double\"",
    "numbers 12345 3.14 1,000,000 42nd",
    "café naïve résumé façade über Ångström",
    "Ελληνικά Русский 中文 日本語 한국어 العربية עברית",
    "emoji 🐶🎵🔔 and a zero-width joiner 👩‍👩‍👧",
    "combining e\u0301 vs \u00e9, ligature ﬁ, full-width ＡＢＣ",
    "control \x00 \x07 chars",
    "<|endoftext|>",
    "a dog barks <|endoftext|>",
    " <|endoftext|>",
    "<|startoftext|>a bell<|endoftext|>",
    "<|ENDOFTEXT|> in capitals",
    "birds sing while cars pass by " * 12,
    "is there a dog " * 40,
    "x" * 300,
]


def corpus_texts(seed: int = 0, count: int = 60) -> list[str]:
    """Random mixtures of the tokenizers' own words, unknown words, accents and punctuation."""
    rng = random.Random(seed)
    words = " ".join(CORPUS).split() + ["Zebra", "ÉCOLE", "naïve", "?!", "...", "—", "🐶", "l'eau", "don't", "42"]
    texts = []
    for _ in range(count):
        n = rng.randint(0, 30)
        texts.append(rng.choice(["", " ", "  "]).join(rng.choice(words) for _ in range(n)))
    return texts


ALL_TEXTS = TEXTS + corpus_texts()


def _gpt2_class_folder(folder: Path) -> Path:
    """transformers' GPT2Tokenizer class over the tiny vocabulary, saved: the form `model fetch` writes for gpt2."""
    fast = json.loads(tiny_gpt2_tokenizer().backend_tokenizer.to_str())["model"]
    tok = GPT2Tokenizer(vocab=fast["vocab"], merges=[tuple(pair) for pair in fast["merges"]])
    tok.save_pretrained(folder)
    return folder


def _clip_class_folder(folder: Path) -> Path:
    """transformers' CLIPTokenizer (CLIP's normaliser, pre-tokeniser, word ends, markers), saved."""
    clip_like_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tiny_no_text_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizer-folders")
    return {
        "tiny gpt2": tiny_model_dir / TOKENIZER_DIR / "gpt2",
        "tiny clip": tiny_model_dir / TOKENIZER_DIR / "clip",
        "tiny no-text gpt2": tiny_no_text_model_dir / TOKENIZER_DIR / "gpt2",
        "GPT2Tokenizer class": _gpt2_class_folder(root / "gpt2-class"),
        "CLIPTokenizer class": _clip_class_folder(root / "clip-class"),
    }


KINDS = ["tiny gpt2", "tiny clip", "tiny no-text gpt2", "GPT2Tokenizer class", "CLIPTokenizer class"]


@pytest.fixture(scope="module")
def pairs(folders) -> dict[str, tuple[FileTokenizer, object]]:
    return {
        kind: (FileTokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder))
        for kind, folder in folders.items()
    }


@pytest.mark.parametrize("kind", KINDS)
def test_ids_equal_transformers_with_and_without_markers(pairs, kind):
    ours, theirs = pairs[kind]
    for text in ALL_TEXTS:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"], text
        assert ours.encode(text) == theirs.encode(text), text
        assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False), text


@pytest.mark.parametrize("kind", KINDS)
def test_cut_ids_equal_transformers_at_every_length(pairs, kind):
    ours, theirs = pairs[kind]
    cut_somewhere = 0
    for text in ALL_TEXTS:
        full = len(theirs(text)["input_ids"])
        for length in (2, 3, 5, 20, 77, full - 1, full):
            if length < 2:
                continue
            expected = theirs(text, truncation=True, max_length=length)["input_ids"]
            assert ours(text, truncation=True, max_length=length)["input_ids"] == expected, (text, length)
            cut_somewhere += len(expected) < full
        assert ours(text)["input_ids"] == theirs(text)["input_ids"]  # a cut leaves no truncation behind
    assert cut_somewhere > 50  # the lengths did cut


@pytest.mark.parametrize("kind", KINDS)
def test_decoded_text_equals_transformers(pairs, kind):
    ours, theirs = pairs[kind]
    rng = random.Random(1)
    sequences = [theirs.encode(text) for text in ALL_TEXTS]
    sequences += [[rng.randrange(len(theirs)) for _ in range(rng.randint(0, 25))] for _ in range(200)]  # any ids
    for ids in sequences:
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), ids


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_and_size_equal_transformers(pairs, kind):
    ours, theirs = pairs[kind]
    assert len(ours) == len(theirs)
    assert (ours.eos_token, ours.eos_token_id) == (theirs.eos_token, theirs.eos_token_id)
    assert (ours.bos_token, ours.bos_token_id) == (theirs.bos_token, theirs.bos_token_id)
    assert ours.pad_token_id == theirs.pad_token_id


def test_the_clip_class_folder_really_has_clips_rules(pairs):
    """The comparison above means something: lower case, whitespace runs and word ends change the ids."""
    ours, _ = pairs["CLIPTokenizer class"]
    assert ours("A  Dog")["input_ids"] == ours("a dog")["input_ids"]
    assert ours.decode(ours.encode("a dog barks", add_special_tokens=False)) == "a dog barks"
    assert ours.backend.model.end_of_word_suffix == "</w>"


def refuses(tok: Tokenizers, prompt: str) -> bool:
    try:
        tok.prompts([prompt], LongPrompt.refuse)
    except PromptTooLongError:
        return True
    return False


@pytest.mark.parametrize(
    ("gpt2_kind", "clip_kind", "variant"),
    [
        ("tiny gpt2", "tiny clip", "base"),
        ("GPT2Tokenizer class", "CLIPTokenizer class", "base"),
        ("tiny no-text gpt2", None, "base_no_text_enc"),
        ("GPT2Tokenizer class", None, "base_no_text_enc"),
    ],
)
def test_tokenizers_on_either_give_the_same_prompts_answers_and_texts(
    pairs, tiny_model_dir, tiny_no_text_model_dir, gpt2_kind, clip_kind, variant
):
    cfg = ModelDir.read(tiny_model_dir if variant == "base" else tiny_no_text_model_dir).config
    ours = Tokenizers(cfg, pairs[gpt2_kind][0], pairs[clip_kind][0] if clip_kind else None)
    theirs = Tokenizers(cfg, pairs[gpt2_kind][1], pairs[clip_kind][1] if clip_kind else None)
    assert ours.stop_ids == theirs.stop_ids and ours.end_suffix == theirs.end_suffix
    prompts = [t for t in ALL_TEXTS if t.strip()]
    assert ours.prompts(prompts).input_ids.tolist() == theirs.prompts(prompts).input_ids.tolist()
    assert ours.prompts(prompts).attention_mask.tolist() == theirs.prompts(prompts).attention_mask.tolist()
    for text in prompts:
        assert ours.answer_ids(text) == theirs.answer_ids(text)
        assert ours.decode(ours.answer_ids(text)) == theirs.decode(theirs.answer_ids(text))
        assert refuses(ours, text) == refuses(theirs, text), text
    assert any(refuses(ours, text) for text in prompts)  # some prompts are too long for 20 tokens
    if clip_kind:
        assert ours.texts(prompts).input_ids.tolist() == theirs.texts(prompts).input_ids.tolist()


def test_a_model_directory_is_read_without_transformers_tokenizers(tiny_model_dir, tiny_no_text_model_dir):
    for folder in (tiny_model_dir, tiny_no_text_model_dir):
        tok = Tokenizers.load(ModelDir.read(folder).config, folder)
        assert isinstance(tok.gpt2, FileTokenizer)
        assert tok.clip is None or isinstance(tok.clip, FileTokenizer)


def test_saving_keeps_the_folders_files(pairs, folders, tmp_path):
    ours, _ = pairs["CLIPTokenizer class"]
    ours.save_pretrained(tmp_path / "copy")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "copy" / name).read_bytes() == (folders["CLIPTokenizer class"] / name).read_bytes()
    again = FileTokenizer.from_folder(tmp_path / "copy")
    assert again("a dog barks")["input_ids"] == ours("a dog barks")["input_ids"]


def test_tokenizing_in_a_fresh_interpreter_imports_no_transformers(tiny_model_dir):
    script = f"""
import sys
from pathlib import Path
from pengi_search.model_dir import ModelDir
tok = ModelDir.read(Path({str(tiny_model_dir)!r})).tokenizers
tok.prompts(["generate audio caption"]), tok.texts(["a dog"]), tok.decode(tok.answer_ids("a dog"))
print(sorted(m for m in sys.modules if m.split(".")[0] == "transformers"))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
