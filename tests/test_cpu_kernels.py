"""The engine's CPU layers (`cpu_kernels`): the same maps as PyTorch's, within float32 rounding; its weights
memory-mapped (`Pengi.from_pretrained(mapped=True)`) give the same answers as copied ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pengi_search.checkpoint import CheckpointError, load_safetensors_strict
from pengi_search.cpu_kernels import OneDnnLinear, linear_add, linear_gelu, onednn_available, use_onednn_linear
from pengi_search.decoding import GenerationConfig, beam_search
from pengi_search.gpt2 import Conv1D
from pengi_search.inference import Engine, prepare_model
from pengi_search.model import Pengi
from pengi_search.model_dir import ModelDir
from pengi_search.testing import tiny_config

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN")
TOL = 1e-5


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=TOL, atol=TOL))


@torch.no_grad()
def test_onednn_linear_computes_what_linear_and_conv1d_compute():
    torch.manual_seed(0)
    linear, conv = nn.Linear(16, 24), Conv1D(24, 16)
    x = torch.randn(2, 5, 16)
    assert close(OneDnnLinear.of(linear)(x), linear(x))
    assert close(OneDnnLinear.of(conv)(x), conv(x))
    assert OneDnnLinear.of(linear).weight is linear.weight  # shared, not copied
    assert OneDnnLinear.of(conv).weight is conv.weight


@torch.no_grad()
def test_fused_activation_and_residual_equal_the_separate_operations():
    torch.manual_seed(0)
    layer = nn.Linear(16, 32)
    fused = OneDnnLinear.of(layer)
    x, residual = torch.randn(3, 4, 16), torch.randn(3, 4, 32)
    expected = F.gelu(layer(x), approximate="tanh")
    assert close(linear_gelu(fused, x, "tanh"), expected)
    assert close(linear_gelu(layer, x, "tanh"), expected)
    assert close(linear_gelu(fused, x), F.gelu(layer(x)))
    assert close(linear_add(fused, x, residual), residual + layer(x))
    assert close(linear_add(layer, x, residual), residual + layer(x))


def test_gradients_fall_back_to_pytorch():
    torch.manual_seed(0)
    layer = OneDnnLinear.of(nn.Linear(8, 4))
    layer(torch.randn(2, 8)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.shape == (4, 8)


def test_the_engine_model_has_its_linear_layers_on_onednn_and_its_embeddings_still_tied():
    torch.manual_seed(0)
    model = Pengi(tiny_config()).eval()
    expected = sum(type(m) is nn.Linear or isinstance(m, Conv1D) for m in model.modules())
    names = {k: v.shape for k, v in model.state_dict().items()}
    wave = torch.randn(2, model.cfg.audio.clip_samples)
    with torch.no_grad():
        before = model.encode_audio(wave)
    prepare_model(model, torch.device("cpu"))
    assert sum(isinstance(m, OneDnnLinear) for m in model.modules()) == expected > 0
    assert not any(type(m) is nn.Linear or isinstance(m, Conv1D) for m in model.modules())
    assert model.gpt.lm_head.weight is model.gpt.get_input_embeddings().weight
    assert {k: v.shape for k, v in model.state_dict().items()} == names  # the same tensors under the same names
    with torch.no_grad():
        assert close(model.encode_audio(wave), before)
    assert use_onednn_linear(model) == 0  # nothing left to convert


@torch.no_grad()
def test_mapped_weights_give_the_engine_model_the_same_answers_as_copied_ones(tiny_model_dir):
    """Mapped tensors are not aligned as PyTorch's own; oneDNN's products do not depend on that."""
    copied = prepare_model(Pengi.from_pretrained(tiny_model_dir), torch.device("cpu"))
    mapped = prepare_model(Pengi.from_pretrained(tiny_model_dir, mapped=True), torch.device("cpu"))
    assert mapped.gpt.lm_head.weight is mapped.gpt.get_input_embeddings().weight
    assert all(
        torch.equal(a, b) for a, b in zip(copied.state_dict().values(), mapped.state_dict().values(), strict=True)
    )
    torch.manual_seed(1)
    wave = torch.randn(3, copied.cfg.audio.clip_samples)
    ids = torch.tensor([[0, 5, 6, 7, 1]]).expand(3, -1) % copied.cfg.text_encoder.vocab_size
    prefixes = [m.prefix(wave, ids, torch.ones_like(ids)) for m in (copied, mapped)]
    assert torch.equal(*prefixes)
    cfg = GenerationConfig(beam=3, max_len=8, stop_ids=())
    expected, actual = (beam_search(m.gpt, p, cfg) for m, p in zip((copied, mapped), prefixes, strict=True))
    assert [[(h.tokens, h.score) for h in row] for row in actual] == [
        [(h.tokens, h.score) for h in row] for row in expected
    ]


def test_a_mapped_load_reports_what_does_not_match(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_model_dir / "model.safetensors")
    state["extra.weight"] = torch.zeros(1)
    del state["caption_decoder.audio_project.linear.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing caption_decoder.audio_project.linear.bias.*unexpected extra"):
        load_safetensors_strict(Pengi(tiny_config()), tmp_path / "model.safetensors", mapped=True)


def test_a_loaded_engine_runs_on_onednn_and_a_given_model_keeps_its_layers(tiny_model_dir):
    loaded = Engine.load(ModelDir.read(tiny_model_dir), "cpu")
    assert any(isinstance(m, OneDnnLinear) for m in loaded.model.modules())
    model = Pengi.from_pretrained(tiny_model_dir)  # e.g. the trainer's, evaluated between training steps
    given = Engine(model, ModelDir.read(tiny_model_dir).tokenizers, torch.device("cpu"))
    assert given.model is model and not any(isinstance(m, OneDnnLinear) for m in model.modules())


@torch.no_grad()
def test_a_mapped_model_keeps_its_weights_when_the_directory_is_saved_again(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "model"
    Pengi.from_pretrained(tiny_model_dir).save_pretrained(model_dir)
    mapped = Pengi.from_pretrained(model_dir, mapped=True)
    before = {k: v.clone() for k, v in mapped.state_dict().items()}
    other = Pengi(tiny_config())
    other.save_pretrained(model_dir)  # replaced, not rewritten in place
    assert all(torch.equal(v, before[k]) for k, v in mapped.state_dict().items())
    assert not list(model_dir.glob(".*partial"))
