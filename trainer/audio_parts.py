"""Pretrained audio encoders a run can start from (`model.audio_encoder` and `model.audio_weights`).

- `aisfx`: the weights inside the `aisfx` package (`pip install --no-deps aisfx`; only its checkpoint file is
  read, so its pinned dependencies are not needed). `model.audio_pooling: attention` takes its third block's time
  steps, pooled by a trained attention, in place of its max over time (recorded in `audio.encoder_config`).
- `transformers`: a transformers audio model from a local directory or a hub name already in the local cache
  (AST, CLAP, Whisper, wav2vec2, ...): its audio tower, weights and feature extractor.
- `htsat` with weights: Pengi's HTSAT initialised from a CLAP checkpoint's audio tower (the paper's
  initialisation). Three layouts are recognised by their key names: the original HTSAT names (LAION-CLAP's
  `audio_branch.*`, Microsoft CLAP's `audio_encoder.base.htsat.*`, any prefix), and transformers' `ClapModel`
  (`audio_model.audio_encoder.*`, separate query/key/value). The tower must have Pengi's sizes; the front end
  (STFT and mel filters, computed) and the AudioSet head (unused by Pengi) keep their own values.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pengi_search.audio_backbones import (
    AISFX_ENCODER,
    AISFX_FRAME_OUT,
    AISFX_OUT,
    AISFX_POOLINGS,
    ENCODER_KINDS,
    HTSAT_ENCODER,
    TRANSFORMERS_ENCODER,
    TransformersAudio,
    audio_tower,
    transformers_encoder_config,
)
from pengi_search.checkpoint import CheckpointError, load_torch_file
from pengi_search.config import AudioConfig
from pengi_search.htsat import HTSAT
from pengi_search.model import Pengi

AISFX_INSTALL = "pip install --no-deps aisfx"
AISFX_CHECKPOINT = "models/checkpoint.pth"
AISFX_PREFIX = "embedding_net."
PROBE_SECONDS = 1.0  # a silent clip this long tells a transformers encoder's output width

# HTSAT tensors a CLAP tower does not provide: computed front-end filters, per-block masks and index tables
# (rebuilt from the sizes), and the AudioSet head that Pengi never runs.
HTSAT_OWN = re.compile(
    r"^(spectrogram_extractor|logmel_extractor|tscam_conv|head)\.|attn_mask$|relative_position_index$"
)
CLAP_ANCHOR = "patch_embed.proj.weight"  # every HTSAT layout has it; what precedes it is the tower's prefix
HF_RENAMES = (  # transformers' ClapAudioEncoder names -> HTSAT names (applied in order)
    (re.compile(r"^batch_norm\."), "bn0."),
    (re.compile(r"\.layernorm_before\."), ".norm1."),
    (re.compile(r"\.layernorm_after\."), ".norm2."),
    (re.compile(r"\.attention\.self\.relative_position_bias_table$"), ".attn.relative_position_bias_table"),
    (re.compile(r"\.attention\.output\.dense\."), ".attn.proj."),
    (re.compile(r"\.intermediate\.dense\."), ".mlp.fc1."),
    (re.compile(r"\.output\.dense\."), ".mlp.fc2."),
)
HF_QKV = re.compile(r"^(.*)\.attention\.self\.(query|key|value)\.(weight|bias)$")


def configure_audio(
    audio: AudioConfig, kind: str, weights: str | None, pooling: str = "max"
) -> tuple[AudioConfig, Any]:
    """The architecture's audio section for the chosen encoder (and, for aisfx, pooling over time), and what
    `load_audio_weights` then needs."""
    if kind not in ENCODER_KINDS:
        raise CheckpointError("model.audio_encoder", f"unknown encoder {kind!r}; known: {', '.join(ENCODER_KINDS)}")
    if pooling != "max" and (kind != AISFX_ENCODER or pooling not in AISFX_POOLINGS):
        raise CheckpointError("model.audio_pooling", f"{pooling!r} is not a pooling of the {kind} encoder")
    if kind == AISFX_ENCODER:
        if weights is not None:
            raise CheckpointError("model.audio_weights", "the aisfx encoder takes its weights from its package")
        recorded = None if pooling == "max" else {"pooling": pooling}  # the CNN's own max is recorded as nothing
        width = AISFX_OUT if pooling == "max" else AISFX_FRAME_OUT
        return dataclasses.replace(audio, encoder=kind, encoder_config=recorded, out_emb=width), aisfx_checkpoint()
    if kind == TRANSFORMERS_ENCODER:
        if weights is None:
            raise CheckpointError("model.audio_weights", "a transformers encoder needs a directory or a hub name")
        tower, extractor = load_transformers_audio(local_or_name(weights))
        encoder_config = transformers_encoder_config(tower, extractor)
        width = _output_width(audio.sample_rate, encoder_config, tower)
        return dataclasses.replace(audio, encoder=kind, encoder_config=encoder_config, out_emb=width), tower
    return audio, None if weights is None else Path(weights)


def load_audio_weights(model: Pengi, loaded: Any) -> None:
    """Put the pretrained weights `configure_audio` found into the built model's audio backbone."""
    if loaded is None:
        return
    backbone = model.audio_encoder.backbone
    kind = model.cfg.audio.encoder
    if kind == AISFX_ENCODER:
        wanted = backbone.state_dict()  # the framed CNN has three of the four blocks
        state = {key: value for key, value in read_aisfx_state(loaded).items() if key in wanted}
        backbone.load_state_dict(state, strict=True)
    elif kind == TRANSFORMERS_ENCODER:
        backbone.model.load_state_dict(loaded.state_dict(), strict=True)
    elif kind == HTSAT_ENCODER:
        init_htsat_from_clap(backbone, Path(loaded))


def local_or_name(value: str) -> str | Path:
    """A path when one exists (the config resolved it against its folder), else a hub name for the local cache."""
    return Path(value) if Path(value).exists() else value


# --- aisfx ------------------------------------------------------------------------------------------------------


def aisfx_checkpoint() -> Path:
    """The checkpoint inside the installed aisfx package (found without importing it: its imports need librosa)."""
    spec = importlib.util.find_spec("aisfx")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders or not (Path(folders[0]) / AISFX_CHECKPOINT).is_file():
        raise CheckpointError("model.audio_encoder", f"the aisfx encoder needs its weights: {AISFX_INSTALL}")
    return Path(folders[0]) / AISFX_CHECKPOINT


def read_aisfx_state(path: Path) -> dict[str, torch.Tensor]:
    """The CNN's tensors of aisfx's checkpoint, a pickled (state_dict, dataset table) pair whose table holds numpy
    integers: those are allowed to unpickle, nothing else beyond tensors."""
    try:
        from numpy._core.multiarray import scalar  # numpy 2
    except ImportError:
        from numpy.core.multiarray import scalar  # numpy 1
    allowed = [(scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype("int64")), type(np.dtype("float64"))]
    try:
        with torch.serialization.safe_globals(allowed):
            weights, _ = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean "not the checkpoint aisfx ships"
        raise CheckpointError(path, f"not aisfx's checkpoint ({type(error).__name__}: {error})") from None
    return {key: value for key, value in weights.items() if key.startswith(AISFX_PREFIX)}


# --- transformers -----------------------------------------------------------------------------------------------


def load_transformers_audio(source: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The audio tower of a local transformers model (directory or cached hub name) and its extractor's config."""
    from transformers import AutoFeatureExtractor, AutoModel

    try:
        model = AutoModel.from_pretrained(source, local_files_only=True)
        extractor = AutoFeatureExtractor.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheckpointError(str(source), f"not a loadable transformers audio model ({error})") from None
    return audio_tower(model), extractor.to_dict()


def _output_width(sample_rate: int, encoder_config: dict[str, Any], tower: nn.Module) -> int:
    probe = TransformersAudio(sample_rate, encoder_config)
    probe.model.load_state_dict(tower.state_dict())
    with torch.no_grad():
        return int(probe.eval()(torch.zeros(1, round(sample_rate * PROBE_SECONDS))).shape[-1])


# --- HTSAT from CLAP --------------------------------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint: a safetensors file, a transformers directory, or a PyTorch file (a state dict,
    possibly under "state_dict" or "model")."""
    if path.is_dir():
        files = [path / "model.safetensors", path / "pytorch_model.bin"]
        found = next((file for file in files if file.is_file()), None)
        if found is None:
            raise CheckpointError(path, "no model.safetensors or pytorch_model.bin in this directory")
        path = found
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    raw = load_torch_file(path)
    for key in ("state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict):
        raise CheckpointError(path, "expected a state dict")
    return {key: value for key, value in raw.items() if isinstance(value, torch.Tensor)}


def clap_audio_tower(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The audio tower's tensors under HTSAT's names, from any of the recognised CLAP layouts."""
    anchors = [key for key in state if key.endswith(CLAP_ANCHOR)]
    if len(anchors) != 1:
        found = "none" if not anchors else ", ".join(anchors)
        raise CheckpointError(source, f"expected one HTSAT audio tower (a key ending in {CLAP_ANCHOR}), found {found}")
    prefix = anchors[0][: -len(CLAP_ANCHOR)]
    tower = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if any(".attention.self.query." in key for key in tower):
        return _from_transformers_names(tower)
    return tower


def _from_transformers_names(tower: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in tower.items():
        match = HF_QKV.match(key)
        if match:  # HTSAT keeps one fused projection, queries then keys then values
            qkv.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
            continue
        for pattern, replacement in HF_RENAMES:
            key = pattern.sub(replacement, key)
        out[key] = value
    for (block, kind), parts in qkv.items():
        out[f"{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def init_htsat_from_clap(htsat: HTSAT, path: Path) -> int:
    """Load a CLAP checkpoint's audio tower into `htsat`; returns how many tensors came from it. Every HTSAT
    weight other than the computed front end and the unused head must be there, with the same shape."""
    tower = clap_audio_tower(read_state_dict(path), str(path))
    state = htsat.state_dict()
    needed = [key for key in state if not HTSAT_OWN.search(key)]
    missing = [key for key in needed if key not in tower]
    misshaped = [
        f"{key} {tuple(tower[key].shape)} != {tuple(state[key].shape)}"
        for key in needed
        if key in tower and tower[key].shape != state[key].shape
    ]
    if missing or misshaped:
        problems = (f"missing {', '.join(missing[:5])}" if missing else "") + (
            f" wrong shapes {', '.join(misshaped[:5])}" if misshaped else ""
        )
        raise CheckpointError(path, f"the audio tower does not fit Pengi's HTSAT: {problems.strip()}")
    state.update({key: tower[key] for key in needed})
    htsat.load_state_dict(state, strict=True)
    return len(needed)
