"""The project's GPT-2 (`gpt2`) and CLIP text tower (`clip_text`) are transformers' GPT2LMHeadModel and CLIPTextModel:
the same parameters under the same names, the same weights from the same seed, the same outputs bit for bit (and
the same gradients); and the inference commands run without importing transformers' model code."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, DynamicCache, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D as TransformersConv1D

from pengi_search.clip_text import CLIPTextTower
from pengi_search.cpu_kernels import OneDnnLinear, onednn_available
from pengi_search.fast_mode import gpt2_conv1d_to_linear
from pengi_search.gpt2 import GPT2LM

GPT2_SIZES = dict(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=49, eos_token_id=49)
CLIP_SIZES = dict(
    vocab_size=60,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=12,
    bos_token_id=58,
    eos_token_id=59,
    pad_token_id=59,
)


def seeded(build, seed: int = 0):
    torch.manual_seed(seed)
    return build()


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def gpt2_pair() -> tuple[GPT2LMHeadModel, GPT2LM]:
    config = GPT2Config(**GPT2_SIZES)
    theirs, ours = seeded(lambda: GPT2LMHeadModel(config)), seeded(lambda: GPT2LM(config))
    return theirs.eval(), ours.eval()


def test_a_new_gpt2_has_transformers_names_weights_and_tied_head(gpt2_pair):
    theirs, ours = gpt2_pair
    assert same_state(theirs, ours)
    assert ours.lm_head.weight is ours.get_input_embeddings().weight
    assert seeded(lambda: (GPT2LM(theirs.config), torch.rand(3))[1]).equal(
        seeded(lambda: (GPT2LMHeadModel(theirs.config), torch.rand(3))[1])
    )  # the same number of random draws: what is built next gets the same weights too


@torch.no_grad()
def test_gpt2_logits_equal_transformers_with_and_without_a_cache(gpt2_pair):
    theirs, ours = gpt2_pair
    torch.manual_seed(1)
    embeds, ids = torch.randn(3, 7, 16), torch.randint(0, 50, (2, 5))
    assert torch.equal(ours(inputs_embeds=embeds).logits, theirs(inputs_embeds=embeds).logits)
    assert torch.equal(ours(ids).logits, theirs(ids).logits)
    mine, other = DynamicCache(), DynamicCache()
    for step in (torch.randn(3, 7, 16), torch.randn(3, 4, 16), torch.randn(3, 1, 16)):  # prefix, a block, a token
        a = ours(inputs_embeds=step, cache=mine, use_cache=True, logits_to_keep=1).logits
        b = theirs(inputs_embeds=step, cache=other, use_cache=True, logits_to_keep=1).logits
        assert a.shape == (3, 1, 50) and torch.equal(a, b)
    assert mine.get_seq_length() == other.get_seq_length() == 12


def test_gpt2_training_loss_and_gradients_equal_transformers_with_dropout():
    config = GPT2Config(**GPT2_SIZES)
    theirs, ours = seeded(lambda: GPT2LMHeadModel(config)), seeded(lambda: GPT2LM(config))
    embeds = torch.randn(2, 6, 16)
    losses = []
    for model in (theirs.train(), ours.train()):
        torch.manual_seed(5)  # the same dropout masks
        loss = model(inputs_embeds=embeds).logits.square().mean()
        loss.backward()
        losses.append(loss)
    assert torch.equal(*losses)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(theirs.parameters(), ours.parameters(), strict=True))


def test_clip_text_tower_equals_transformers_clip_text_model():
    config = CLIPTextConfig(**CLIP_SIZES)
    theirs, ours = seeded(lambda: CLIPTextModel(config), 1).eval(), seeded(lambda: CLIPTextTower(config), 1).eval()
    assert same_state(theirs, ours)
    ids = torch.tensor([[58, 3, 4, 59, 59, 59], [58, 5, 6, 7, 8, 59], [58, 9, 59, 59, 59, 59]])
    mask = (torch.arange(6)[None] <= (ids == 59).int().argmax(-1)[:, None]).long()  # real tokens and the first end
    with torch.no_grad():
        assert torch.equal(ours(ids, mask), theirs(input_ids=ids, attention_mask=mask).pooler_output)
        assert torch.equal(ours(ids[1:], mask[1:]), theirs(input_ids=ids[1:], attention_mask=mask[1:]).pooler_output)


@torch.no_grad()
def test_transformers_conv1d_layers_are_converted_too():
    torch.manual_seed(0)
    conv, x = TransformersConv1D(24, 16), torch.randn(2, 5, 16)
    if onednn_available():
        torch.testing.assert_close(OneDnnLinear.of(conv)(x), conv(x), atol=1e-5, rtol=1e-5)
    holder = torch.nn.Sequential(conv)
    gpt2_conv1d_to_linear(holder)
    assert type(holder[0]) is torch.nn.Linear
    torch.testing.assert_close(holder[0](x), conv(x), atol=1e-5, rtol=1e-5)


def test_describing_a_clip_imports_no_transformers_model_code(tiny_model_dir):
    """The whole engine (loading, audio, both prefixes, beam search), in a fresh interpreter."""
    script = f"""
import sys
import numpy as np, torch
from pengi_search.decoding import GenerationConfig
from pengi_search.inference import Engine
from pengi_search.model_dir import ModelDir
engine = Engine.load(ModelDir.read({str(tiny_model_dir)!r}), "cpu")
waves = np.zeros((1, 308_700), np.float32)
answers = engine.generate(engine.audio_embeddings(waves), ["generate audio caption"], GenerationConfig(2, 4))
assert len(answers[0]) == 1, answers
model_code = ("transformers.modeling_utils", "transformers.pytorch_utils")
loaded = sorted(m for m in sys.modules if m in model_code or m.endswith((".modeling_gpt2", ".modeling_clip")))
print(loaded)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_the_settings_are_transformers_configs_fields_and_defaults():
    """`GPT2Settings` / `CLIPTextSettings` (what the engine builds from, no transformers import) hold, field for
    field, what transformers' configs hold: for the defaults, for given sizes and for the project's own builders."""
    from pengi_search.clip_text import CLIPTextSettings
    from pengi_search.config import DecoderConfig, TextEncoderConfig
    from pengi_search.encoders import clip_text_config, clip_text_settings
    from pengi_search.gpt2 import GPT2Settings
    from pengi_search.model import gpt2_config, gpt2_settings

    def same(ours, theirs) -> None:
        for name in dataclasses.asdict(ours):
            assert getattr(ours, name) == getattr(theirs, name), name

    same(GPT2Settings(), GPT2Config())
    same(GPT2Settings(**GPT2_SIZES), GPT2Config(**GPT2_SIZES))
    same(CLIPTextSettings(), CLIPTextConfig())
    same(CLIPTextSettings(**CLIP_SIZES), CLIPTextConfig(**CLIP_SIZES))
    small = DecoderConfig(n_embd=32, n_layer=2, n_head=2, vocab_size=70, n_positions=64, eos_token_id=69)
    same(gpt2_settings(small), gpt2_config(small))
    same(gpt2_settings(DecoderConfig()), gpt2_config(DecoderConfig()))
    same(clip_text_settings(TextEncoderConfig()), clip_text_config(TextEncoderConfig()))
    assert GPT2Config(**GPT2Settings(**GPT2_SIZES).to_dict()).to_dict() == GPT2Config(**GPT2_SIZES).to_dict()


@torch.no_grad()
def test_models_built_from_the_settings_equal_those_built_from_transformers_configs():
    from pengi_search.clip_text import CLIPTextSettings
    from pengi_search.gpt2 import GPT2Settings

    gpt_a = seeded(lambda: GPT2LM(GPT2Settings(**GPT2_SIZES))).eval()
    gpt_b = seeded(lambda: GPT2LM(GPT2Config(**GPT2_SIZES))).eval()
    assert same_state(gpt_a, gpt_b)
    embeds = torch.randn(2, 5, 16)
    assert torch.equal(gpt_a(inputs_embeds=embeds).logits, gpt_b(inputs_embeds=embeds).logits)
    clip_a = seeded(lambda: CLIPTextTower(CLIPTextSettings(**CLIP_SIZES))).eval()
    clip_b = seeded(lambda: CLIPTextTower(CLIPTextConfig(**CLIP_SIZES))).eval()
    assert same_state(clip_a, clip_b)
    ids = torch.tensor([[58, 3, 4, 59, 59], [58, 7, 8, 9, 59]])
    assert torch.equal(clip_a(ids, (ids != 59).long()), clip_b(ids, (ids != 59).long()))


def test_the_engine_imports_no_transformers_at_all(tiny_model_dir, tiny_no_text_model_dir):
    """Loading, describing, asking, classifying and embedding texts, in a fresh interpreter: not even the
    configurations or tokenizers of transformers are imported."""
    script = f"""
import sys
import numpy as np
from pengi_search.decoding import GenerationConfig
from pengi_search.inference import Engine
from pengi_search.model_dir import ModelDir
for folder in ({str(tiny_model_dir)!r}, {str(tiny_no_text_model_dir)!r}):
    engine = Engine.load(ModelDir.read(folder), "cpu")
    audio = engine.audio_embeddings(np.zeros((1, 308_700), np.float32))
    answers = engine.generate(audio, ["generate audio caption", "question: is it a dog?"], GenerationConfig(2, 4))
    assert len(answers) == 1 and len(answers[0]) == 2, answers  # one window, two prompts
    engine.score(audio, "this is a sound of", ["dog", "bell"])
    if engine.tok.clip is not None:
        engine.tok.texts(["a dog barks"])
print(sorted(m for m in sys.modules if m.split(".")[0] == "transformers"))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"
