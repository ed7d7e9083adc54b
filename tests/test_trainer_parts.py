"""Pretrained parts a run starts from: audio encoders (a transformers audio model, HTSAT from a CLAP checkpoint,
aisfx's CNN), a GGUF language model with its own tokenizer, and a BPE tokenizer trained on the manifests.

Every model here is tiny, random and built in the test (a GGUF file is written with the `gguf` package): nothing is
downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from transformers import (
    ClapAudioConfig,
    ClapAudioModel,
    LlamaConfig,
    LlamaForCausalLM,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from pengi_search.audio_backbones import AisfxCnn, FramePooling
from pengi_search.config import AudioConfig
from pengi_search.errors import PengiSearchError
from pengi_search.htsat import HTSAT
from pengi_search.model import Pengi
from pengi_search.model_dir import ModelDir
from pengi_search.testing import tiny_gpt2_tokenizer
from trainer.audio_parts import aisfx_checkpoint, clap_audio_tower, init_htsat_from_clap, read_aisfx_state
from trainer.config import load_config
from trainer.export import export_checkpoint
from trainer.language_parts import TokenizerMissingError
from trainer.model_setup import build_model
from trainer.run import train

RATE = 44_100
TINY_AUDIO = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "num_classes": 4, "out_emb": 64}
SCRATCH_ARCHITECTURE = {
    "audio": TINY_AUDIO,
    "text_encoder": None,
    "decoder": {"n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64},
    "mapper": {"prefix_length": 2, "clip_length": 12, "num_layers": 1, "num_heads": 2},
    "d_proj": 16,
    "text_prompt_length": 12,
}


def labelled_clips(folder: Path) -> Path:
    """Four one-second clips (two tones, two noises) and a manifest labelling them."""
    t = np.arange(RATE) / RATE
    noise = np.random.default_rng(0).standard_normal(RATE)
    sounds = {"low": np.sin(2 * np.pi * 220 * t), "high": np.sin(2 * np.pi * 2000 * t), "hiss": noise}
    sounds["buzz"] = np.sign(np.sin(2 * np.pi * 90 * t))
    rows = []
    for name, wave in sounds.items():
        sf.write(folder / f"{name}.wav", (0.3 * wave).astype(np.float32), RATE)
        rows.append({"audio": f"{name}.wav", "task": "sound_event", "answer": name})
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def scratch_config(folder: Path, manifest: Path, model: dict[str, Any], **sections: Any) -> Path:
    config = {
        "output_dir": str(folder / "run"),
        "model": {"architecture": SCRATCH_ARCHITECTURE, **model},
        "data": {"train": str(manifest), "batch_size": 2, "num_workers": 0, "max_answer_tokens": 16},
        "optimization": {"lr": 1e-3, "warmup_steps": 1, "max_steps": 2},
        "runtime": {"device": "cpu"},
        "logging": {"every": 1, "quiet": True, "plot": False},
        "evaluation": {"every": 1000, "samples": 0},
        **sections,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --- A transformers audio model -----------------------------------------------------------------------------------


def tiny_wav2vec2(directory: Path) -> Wav2Vec2Model:
    """A random two-layer wav2vec2 with its feature extractor, saved as a pretrained model directory."""
    torch.manual_seed(3)
    config = Wav2Vec2Config(
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        conv_dim=(16, 16),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    model = Wav2Vec2Model(config).eval()
    model.save_pretrained(directory)
    Wav2Vec2FeatureExtractor(sampling_rate=16_000, return_attention_mask=True).save_pretrained(directory)
    return model


def test_a_transformers_audio_model_trains_and_its_model_directory_rebuilds_it(tmp_path) -> None:
    pretrained = tiny_wav2vec2(tmp_path / "wav2vec2")
    manifest = labelled_clips(tmp_path)
    # Clips of the recordings' one second: wav2vec2 attends over every frame, and over 7 s (the clip repeated) its
    # attention held 125 M scores per head, a minute of the test's time.
    architecture = {**SCRATCH_ARCHITECTURE, "audio": {**TINY_AUDIO, "clip_seconds": 1.0}}
    config_path = scratch_config(
        tmp_path,
        manifest,
        {
            "architecture": architecture,
            "audio_encoder": "transformers",
            "audio_weights": "wav2vec2",
            "train_tokenizer": 300,
        },
        freeze={"language_model": False},
    )
    model, _ = build_model(load_config(config_path), config_path, save_tokenizer=False)
    backbone = model.audio_encoder.backbone
    assert model.cfg.audio.encoder == "transformers" and model.cfg.audio.out_emb == 24
    assert all(torch.equal(v, pretrained.state_dict()[k]) for k, v in backbone.model.state_dict().items())

    result = train(load_config(config_path))  # the encoder trains (not frozen): two steps through it
    trained = dict(result.model.audio_encoder.backbone.model.named_parameters())
    assert not torch.equal(
        trained["encoder.layers.0.attention.q_proj.weight"].cpu(),
        pretrained.state_dict()["encoder.layers.0.attention.q_proj.weight"],
    )
    loaded = Pengi.from_pretrained(result.model_dir)  # no wav2vec2 directory needed: the model dir records it
    assert ModelDir.read(result.model_dir).config.audio.encoder == "transformers"
    wave = 0.1 * torch.randn(2, result.model.cfg.audio.clip_samples, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded.encode_audio(wave), result.model.eval().encode_audio(wave), atol=1e-5)


# --- HTSAT from CLAP ----------------------------------------------------------------------------------------------


def test_htsat_from_a_transformers_clap_tower_computes_what_clap_computes(tmp_path) -> None:
    torch.manual_seed(0)
    clap = ClapAudioModel(
        ClapAudioConfig(
            hidden_size=64, patch_embeds_hidden_size=8, depths=[1, 1, 2, 1], num_attention_heads=[1, 1, 2, 2]
        )
    ).eval()
    with torch.no_grad():  # batch statistics that differ from a fresh layer's
        clap.audio_encoder.batch_norm.running_mean.normal_()
        clap.audio_encoder.batch_norm.running_var.uniform_(0.5, 2.0)
    clap.save_pretrained(tmp_path / "clap")
    htsat = HTSAT(AudioConfig(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), out_emb=64)).eval()
    loaded = init_htsat_from_clap(htsat, tmp_path / "clap")

    mel = torch.randn(2, 1, 965, 64)  # a 7 s clip's log-mel frames
    with torch.no_grad():
        expected = clap(input_features=mel).pooler_output
        normalised = htsat.bn0(mel.transpose(1, 3)).transpose(1, 3)
        assert torch.allclose(htsat.latent(htsat.to_image(normalised)), expected, atol=1e-5)
    assert loaded > 40


def test_htsat_from_the_original_clap_layouts(tmp_path) -> None:
    cfg = AudioConfig(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), num_classes=4, out_emb=64)
    source = HTSAT(cfg)
    torch.manual_seed(1)
    state = {key: torch.randn_like(v) if v.is_floating_point() else v for key, v in source.state_dict().items()}
    for prefix in ("module.audio_branch.", "audio_encoder.base.htsat."):  # LAION-CLAP, Microsoft CLAP
        checkpoint = tmp_path / f"{prefix.strip('.')}.pt"
        torch.save({"state_dict": {prefix + key: value for key, value in state.items()}}, checkpoint)
        target = HTSAT(cfg)
        init_htsat_from_clap(target, checkpoint)
        target_state = target.state_dict()
        assert torch.equal(
            target_state["layers.0.blocks.0.attn.qkv.weight"], state["layers.0.blocks.0.attn.qkv.weight"]
        )
        # The computed front end and the unused AudioSet head keep their own values.
        assert torch.equal(target_state["logmel_extractor.melW"], source.state_dict()["logmel_extractor.melW"])


def test_a_clap_tower_of_other_sizes_is_refused_by_name(tmp_path) -> None:
    big = HTSAT(AudioConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), num_classes=4, out_emb=128))
    torch.save({"audio_branch." + key: value for key, value in big.state_dict().items()}, tmp_path / "big.pt")
    small = HTSAT(AudioConfig(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), num_classes=4, out_emb=64))
    with pytest.raises(Exception, match="does not fit Pengi's HTSAT: .*wrong shapes patch_embed.proj.weight"):
        init_htsat_from_clap(small, tmp_path / "big.pt")
    with pytest.raises(Exception, match="expected one HTSAT audio tower"):
        clap_audio_tower({"text_branch.weight": torch.zeros(1)}, "x.pt")


# --- aisfx ------------------------------------------------------------------------------------------------------


def test_the_aisfx_cnn_loads_its_package_weights_and_tells_sounds_apart() -> None:
    cnn = AisfxCnn(RATE)
    cnn.load_state_dict(read_aisfx_state(aisfx_checkpoint()), strict=True)
    t = torch.arange(2 * RATE) / RATE
    waves = torch.stack([torch.sin(2 * torch.pi * 300 * t), torch.sin(2 * torch.pi * 3000 * t), torch.randn(2 * RATE)])
    with torch.no_grad():
        out = cnn.eval()(0.1 * waves)
        louder = cnn(0.5 * waves)
    assert out.shape == (3, 512)
    assert torch.allclose(out, louder, atol=1e-4)  # clips are peak-normalised, as aisfx does
    similarity = torch.nn.functional.normalize(out, dim=1) @ torch.nn.functional.normalize(out, dim=1).T
    assert similarity[0, 1] < 0.99 and similarity[0, 2] < 0.99


def test_aisfx_attention_pooling_trains_on_cached_time_steps_and_the_model_directory_records_it(tmp_path) -> None:
    manifest = labelled_clips(tmp_path)
    architecture = {**SCRATCH_ARCHITECTURE, "audio": {**TINY_AUDIO, "clip_seconds": 1.0}}
    model_section = {"architecture": architecture, "audio_encoder": "aisfx", "audio_pooling": "attention"}
    config_path = scratch_config(
        tmp_path,
        manifest,
        {**model_section, "train_tokenizer": 300},
        freeze={"language_model": False, "audio_backbone": True},
    )
    model, _ = build_model(load_config(config_path), config_path, save_tokenizer=False)
    audio = model.cfg.audio
    assert audio.encoder_config == {"pooling": "attention"} and audio.out_emb == 256
    backbone = model.audio_encoder.backbone
    assert list(backbone.embedding_net) == ["conv_block1", "conv_block2", "conv_block3"]  # the fourth is unused
    package = read_aisfx_state(aisfx_checkpoint())
    assert all(torch.equal(value, package[key]) for key, value in backbone.state_dict().items())
    wave = 0.1 * torch.randn(2, audio.clip_samples, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        steps = backbone.eval()(wave)
    assert steps.shape == (2, (1 + RATE // 1024) // 8, 256)  # (B, T, width): ~5 time steps a second

    pool_before = {key: value.clone() for key, value in model.audio_encoder.pool.state_dict().items()}
    result = train(load_config(config_path))  # the time steps are cached; the pooling and projection train
    parts = list((tmp_path / "run" / "features").glob("*/part-*.pt"))
    assert parts and torch.load(parts[0], weights_only=True)["features"].dim() == 3  # (encodings, T, 256): steps kept
    pool_after = result.model.audio_encoder.pool.state_dict()
    assert not torch.equal(pool_after["value.weight"].cpu(), pool_before["value.weight"])
    assert ModelDir.read(result.model_dir).config.audio.encoder_config == {"pooling": "attention"}
    loaded = Pengi.from_pretrained(result.model_dir)  # rebuilt from the directory alone, pooling included
    with torch.no_grad():
        embedding = loaded.encode_audio(wave)
        assert embedding.shape == (2, result.model.cfg.d_proj)
        assert torch.allclose(embedding, result.model.eval().encode_audio(wave), atol=1e-5)


def test_frame_pooling_finds_a_sound_wherever_it_is_in_the_clip() -> None:
    torch.manual_seed(0)
    pool = FramePooling(8, heads=2).eval()
    frames = torch.randn(3, 10, 8)
    with torch.no_grad():
        assert torch.allclose(pool(frames), pool(frames.roll(4, dims=1)), atol=1e-6)
        assert pool(frames).shape == (3, 8)


def test_attention_pooling_is_for_the_aisfx_encoder_only(tmp_path) -> None:
    config_path = scratch_config(tmp_path, labelled_clips(tmp_path), {"audio_pooling": "attention"})
    with pytest.raises(PengiSearchError, match="model.audio_pooling"):
        build_model(load_config(config_path), config_path, save_tokenizer=False)


# --- A GGUF language model ----------------------------------------------------------------------------------------


def _permute_for_llama_cpp(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's conversion interleaves the rotary halves of each query/key head."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def write_tiny_gguf(path: Path) -> LlamaForCausalLM:
    """A random two-layer Llama with a byte-level BPE tokenizer, written as llama.cpp writes GGUF files."""
    gguf = pytest.importorskip("gguf")
    tokenizer = tiny_gpt2_tokenizer()
    torch.manual_seed(0)
    heads, kv_heads = 4, 2
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_embedding_length(32)
    writer.add_block_count(2)
    writer.add_feed_forward_length(64)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10_000.0)
    writer.add_vocab_size(len(tokenizer))
    bpe = json.loads(tokenizer.backend_tokenizer.to_str())
    ids = {**bpe["model"]["vocab"], **{token["content"]: token["id"] for token in bpe["added_tokens"]}}
    tokens = sorted(ids, key=ids.get)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_merges([" ".join(pair) for pair in bpe["model"]["merges"]])
    writer.add_token_types([3 if token == "<|endoftext|>" else 1 for token in tokens])
    writer.add_bos_token_id(tokenizer.eos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    state = {key: value.numpy() for key, value in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    names = {
        "attn_norm": "input_layernorm",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for layer in range(2):
        ours = f"model.layers.{layer}."
        writer.add_tensor(
            f"blk.{layer}.attn_q.weight", _permute_for_llama_cpp(state[ours + "self_attn.q_proj.weight"], heads)
        )
        writer.add_tensor(
            f"blk.{layer}.attn_k.weight", _permute_for_llama_cpp(state[ours + "self_attn.k_proj.weight"], kv_heads)
        )
        for gguf_name, name in names.items():
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", state[f"{ours}{name}.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def test_a_gguf_language_model_loads_with_its_tokenizer_and_trains_the_mappers(tmp_path) -> None:
    original = write_tiny_gguf(tmp_path / "tiny.gguf")
    manifest = labelled_clips(tmp_path)
    config_path = scratch_config(tmp_path, manifest, {"language_model": "tiny.gguf"})
    model, tokenizers = build_model(load_config(config_path), config_path)
    assert model.cfg.decoder.hf_config["model_type"] == "llama"
    ids = torch.tensor([[5, 7, 9, 11]])
    with torch.no_grad():
        assert torch.equal(model.gpt(ids).logits, original(ids).logits)  # dequantised, un-permuted, tied
    assert tokenizers.encode("a dog is barking") == tiny_gpt2_tokenizer().encode("a dog is barking")

    result = train(load_config(config_path))  # the paper's freezing: the LM frozen, the mappers trained
    assert all(torch.equal(p.cpu(), original.state_dict()[k]) for k, p in result.model.gpt.state_dict().items())
    loaded = Pengi.from_pretrained(result.model_dir)
    assert loaded.cfg.decoder.hf_config["model_type"] == "llama"
    assert ModelDir.read(result.model_dir).tokenizers.encode("a bell") == tokenizers.encode("a bell")


# --- Tokenizers ---------------------------------------------------------------------------------------------------


def test_from_scratch_without_a_tokenizer_says_how_to_get_one(tmp_path) -> None:
    manifest = labelled_clips(tmp_path)
    config_path = scratch_config(tmp_path, manifest, {})
    with pytest.raises(TokenizerMissingError, match="model.train_tokenizer"):
        build_model(load_config(config_path), config_path)


def test_a_tokenizer_trained_on_the_manifest_sizes_the_decoder_and_is_kept_for_the_run(tmp_path) -> None:
    manifest = labelled_clips(tmp_path)
    config_path = scratch_config(tmp_path, manifest, {"train_tokenizer": 300})
    config = load_config(config_path)
    model, tokenizers = build_model(config, config_path)
    assert model.cfg.decoder.vocab_size == len(tokenizers.gpt2) <= 300
    assert tokenizers.answer_ids("hiss")[-1] == tokenizers.gpt2.eos_token_id
    assert tokenizers.decode(tokenizers.answer_ids("low")) == "low"
    again, _ = build_model(config, config_path)  # the second build reads the kept tokenizer
    assert (config.output_dir / "tokenizer").is_dir() and again.cfg.decoder.vocab_size == model.cfg.decoder.vocab_size


def test_export_of_a_moved_run_reads_and_writes_the_run_where_it_now_lies(tmp_path) -> None:
    """A run trained elsewhere (a GPU machine) and copied here: its checkpoint exports beside it, with its own
    tokenizer, and nothing is written where the run was trained (exports went there, and its BPE was trained anew)."""
    manifest = labelled_clips(tmp_path)
    config_path = scratch_config(tmp_path, manifest, {"train_tokenizer": 300})
    trained = train(load_config(config_path)).model_dir.parent
    moved = trained.rename(tmp_path / "copied-home")
    manifest.write_text(manifest.read_text().replace('"hiss"', '"a long hiss of steam"'))  # another BPE's texts

    exported = export_checkpoint(moved / "checkpoints" / "step-00000002.pt")
    assert exported == moved / "model-step-00000002" and not trained.exists()
    kept = moved / "tokenizer" / "tokenizer.json"
    assert (exported / "tokenizer" / "gpt2" / "tokenizer.json").read_text() == kept.read_text()
    final = Pengi.from_pretrained(moved / "model").state_dict()
    assert all(torch.equal(value, final[key]) for key, value in Pengi.from_pretrained(exported).state_dict().items())
