"""`--fast`: the conversions it makes, and that the engine still answers (not bit-identically) in each of them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.decoding import GenerationConfig
from pengi_search.fast_mode import FastMode, gpt2_conv1d_to_linear
from pengi_search.inference import Engine
from pengi_search.model import Pengi
from pengi_search.model_dir import ModelDir

from .indexing import write_tone


@torch.no_grad()
def test_conv1d_layers_become_equal_linear_layers(tiny_model_dir):
    gpt = Pengi.from_pretrained(tiny_model_dir).gpt
    embeds = torch.randn(2, 6, gpt.config.n_embd)
    before = gpt(inputs_embeds=embeds).logits
    gpt2_conv1d_to_linear(gpt)
    assert not any(type(m).__name__ == "Conv1D" for m in gpt.modules())
    torch.testing.assert_close(gpt(inputs_embeds=embeds).logits, before, atol=1e-5, rtol=1e-5)


def test_fast_mode_takes_bf16_where_it_is_native_and_int8_elsewhere(monkeypatch):
    assert FastMode.for_device(torch.device("cuda")) == FastMode("bf16", greedy=True)
    monkeypatch.setattr("pengi_search.fast_mode.cpu_has_bf16", lambda: False)
    assert FastMode.for_device(torch.device("cpu")) == FastMode("int8", greedy=True)
    assert str(FastMode("int8", greedy=True)) == "int8+greedy" and str(FastMode()) == "exact"


@pytest.mark.parametrize("mode", [FastMode("bf16"), FastMode("int8"), FastMode("fp32", greedy=True)])
def test_the_engine_answers_in_every_fast_mode(tiny_model_dir, tmp_path, mode):
    model_dir = ModelDir.read(tiny_model_dir)
    engine = Engine(Pengi.from_pretrained(model_dir), model_dir.tokenizers, torch.device("cpu"), fast=mode)
    waves = np.stack([np.sin(np.arange(308_700) * f / 44_100).astype(np.float32) * 0.3 for f in (300.0, 900.0)])
    embeds = engine.audio_embeddings(waves)
    answers = engine.generate(embeds, ["generate audio caption", "this is a sound of"], GenerationConfig(3, 5))
    assert [len(row) for row in answers] == [2, 2]
    assert all(isinstance(a.text, str) and a.score <= 0 for row in answers for a in row)
    scores = engine.score(embeds, "this is a sound of", ["dog", "rain"])
    assert all(np.isfinite([s.total for s in row]).all() for row in scores)
    if mode.precision == "int8":
        head = type(engine.model.gpt.lm_head)
        assert head.__name__ == "Linear" and "quantized" in head.__module__


def test_describe_fast_and_threads_options(tiny_model_dir, tmp_path):
    clip = write_tone(tmp_path / "clip.wav", 2.0)
    threads = torch.get_num_threads()
    wanted = 2 if threads == 1 else 1  # not what it is already (the tests run on one thread: conftest)
    try:
        result = CliRunner().invoke(
            app, ["describe", str(clip), "--model", str(tiny_model_dir), "--json", "--fast", "--threads", str(wanted)]
        )
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    (window,) = json.loads(result.stdout)[0]["windows"]
    assert set(window["answers"]) == {"caption", "metadata", "sound_event"}
