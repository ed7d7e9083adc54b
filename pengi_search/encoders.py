"""The two encoders that feed Pengi's mappers: the audio encoder (HTSAT by default, see `audio_backbones`) and the
CLIP text tower for prompts.

Each ends in a `Projection` into the shared d_proj space. Names follow the released checkpoint
(`audio_encoder.*`, `caption_encoder.*`); another audio encoder lives at `audio_encoder.base.<kind>.*`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .audio_backbones import HTSAT_ENCODER, FeatureStandardiser, FramePooling, gives_frames, make_backbone
from .checkpoint import TEXT_ENCODER_PREFIX, CheckpointError, load_state_dict_strict, read_safetensors_part
from .clip_text import CLIPTextSettings, CLIPTextTower
from .config import AudioConfig, TextEncoderConfig
from .htsat import HTSAT

if TYPE_CHECKING:
    from transformers import CLIPTextConfig

    from .model_dir import ModelDir


class Projection(nn.Module):
    """h1 = W1 x; out = LayerNorm(h1 + Dropout(W2 gelu(h1)))."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.5):
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.linear1(x)
        return self.layer_norm(h1 + self.drop(self.linear2(F.gelu(h1))))


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioConfig, d_proj: int):
        super().__init__()
        self.kind = cfg.encoder
        self.base = nn.ModuleDict({cfg.encoder: make_backbone(cfg)})  # the released key path is `base.htsat.*`
        # A pretrained encoder of another kind gets its outputs standardised (HTSAT keeps the released layout).
        self.standardise = FeatureStandardiser(cfg.out_emb) if cfg.encoder != HTSAT_ENCODER else None
        # A backbone that yields time steps has them pooled by a trained attention (`audio_encoder.pool.*`).
        self.pool = FramePooling(cfg.out_emb) if gives_frames(cfg) else None
        self.projection = Projection(cfg.out_emb, d_proj)

    @property
    def backbone(self) -> nn.Module:
        """(B, samples) at 44.1 kHz -> (B, out_emb), or time steps (B, T, out_emb): the part before `project`."""
        return self.base[self.kind]

    @property
    def htsat(self) -> HTSAT:
        if not isinstance(self.backbone, HTSAT):
            raise TypeError(f"this audio encoder is {self.kind}, not HTSAT")
        return self.backbone

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(B, out_emb) or (B, T, out_emb) backbone outputs -> (B, d_proj), not normalised."""
        if self.standardise is not None:
            features = self.standardise(features)
        if self.pool is not None:
            features = self.pool(features)
        return self.projection(features)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) at 44.1 kHz -> (B, d_proj), not normalised."""
        return self.project(self.backbone(wave))


def clip_text_settings(cfg: TextEncoderConfig) -> CLIPTextSettings:
    # Every field of TextEncoderConfig is a CLIPTextConfig field of the same name; prompts are padded with <eos>.
    return CLIPTextSettings(**dataclasses.asdict(cfg), pad_token_id=cfg.eos_token_id)


def clip_text_config(cfg: TextEncoderConfig) -> CLIPTextConfig:
    """The same as transformers' `CLIPTextConfig`, for transformers' CLIP (training from a pretrained one, tests)."""
    from transformers import CLIPTextConfig  # the configuration only: no model code

    return CLIPTextConfig(**dataclasses.asdict(cfg), pad_token_id=cfg.eos_token_id)


class TextEncoder(nn.Module):
    """CLIP text transformer (`clip_text`) -> pooled (end-of-text) state -> CLIP text projection -> Projection."""

    def __init__(self, cfg: TextEncoderConfig, d_proj: int):
        super().__init__()
        self.base = CLIPTextTower(clip_text_settings(cfg))
        self.clip_text_projection = nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False)
        self.projection = Projection(cfg.projection_dim, d_proj)

    @classmethod
    def from_model_dir(cls, model_dir: ModelDir) -> TextEncoder:
        """Only Pengi's text tower and its projections, in eval mode: the `caption_encoder.*` tensors of the
        model's weights, read lazily (about 250 MB of the 1.3 GB at full size)."""
        cfg = model_dir.config
        if cfg.text_encoder is None:
            raise CheckpointError(model_dir.path, "this model has no text encoder (base_no_text_enc)")
        encoder = cls(cfg.text_encoder, cfg.d_proj)
        state = read_safetensors_part(model_dir.weights, TEXT_ENCODER_PREFIX)
        load_state_dict_strict(encoder, state, f"{model_dir.weights} (text encoder)")
        return encoder.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, d_proj), not normalised."""
        pooled = self.base(input_ids, attention_mask)  # (B, hidden)
        return self.projection(self.clip_text_projection(pooled))
