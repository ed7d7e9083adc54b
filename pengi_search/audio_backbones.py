"""The audio encoders Pengi can be built with, behind one contract: (B, samples) at 44.1 kHz -> (B, out_emb).

- `htsat` (default): the released models' HTSAT (`pengi_search.htsat`), key path `audio_encoder.base.htsat.*`.
- `aisfx`: the sound-effects CNN of Ma & Lerch (ISMIR 2022, the `aisfx` package, CC BY 4.0): a 9-layer CNN over a
  96-band log-mel image at 44.1 kHz, pooled to a 512-dimensional vector. Its pretrained weights come from the
  package when a run starts (`trainer.audio_parts`); a saved model directory holds them, so inference needs
  no `aisfx` install. With `encoder_config = {"pooling": "attention"}` it yields the time steps of its third
  block instead (256 wide, about 5 a second), and the audio encoder pools them with a trained `FramePooling`: a
  short sound in a long clip (a word in 7 s of background) is lost in the fixed max over time, found by a learnt
  attention (benchmarks/README.md, "Learning": linear and attention probes chose the block).
- `transformers`: any transformers audio model (AST, CLAP's audio tower, Whisper's encoder, wav2vec2, ...) built
  from its config dict, with its feature extractor; the clip is resampled to the extractor's rate, and the model's
  pooled output (or the mean of its last hidden states over the clip's frames) is the vector.

`AudioConfig.encoder` names the kind; `AudioConfig.encoder_config` holds what a non-HTSAT kind needs to be rebuilt
(for `transformers`: the model's config and the feature extractor's), so a model directory records its encoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import AudioConfig
from .errors import UsageError
from .htsat import HTSAT

HTSAT_ENCODER = "htsat"
AISFX_ENCODER = "aisfx"
TRANSFORMERS_ENCODER = "transformers"
ENCODER_KINDS = (HTSAT_ENCODER, AISFX_ENCODER, TRANSFORMERS_ENCODER)

# aisfx's front end (its `inference` module's constants): 44.1 kHz, 2048-point frames every 1024 samples,
# 96 HTK mel bands over the whole spectrum, log10(1 + 10^4 x), scaled by the training set's maximum.
AISFX_SAMPLE_RATE = 44_100
AISFX_N_FFT = 2048
AISFX_HOP = 1024
AISFX_MELS = 96
AISFX_LOG_SCALE = 10_000.0
AISFX_MAX_LOG_MEL = 9.457798957824707
AISFX_WIDTH = 64  # channels of the first block; 512 after the fourth
AISFX_OUT = AISFX_WIDTH * 8
AISFX_FRAME_OUT = AISFX_WIDTH * 4  # the third block's width: its time steps are what attention pooling reads
AISFX_POOLINGS = ("max", "attention")  # over time: the CNN's own max, or its time steps for a trained pooling


class AudioEncoderError(UsageError):
    """An audio encoder configuration that cannot be built."""


def make_backbone(cfg: AudioConfig) -> nn.Module:
    """The backbone `cfg.encoder` names, with random (or, for HTSAT's front end, computed) weights."""
    if cfg.encoder == HTSAT_ENCODER:
        return HTSAT(cfg)
    if cfg.encoder == AISFX_ENCODER:
        return AisfxCnn(cfg.sample_rate, frames=gives_frames(cfg))
    if cfg.encoder == TRANSFORMERS_ENCODER:
        if not cfg.encoder_config:
            raise AudioEncoderError("audio.encoder_config", "a transformers encoder needs its model and extractor")
        return TransformersAudio(cfg.sample_rate, cfg.encoder_config)
    raise AudioEncoderError("audio.encoder", f"unknown encoder {cfg.encoder!r}; known: {', '.join(ENCODER_KINDS)}")


def gives_frames(cfg: AudioConfig) -> bool:
    """Whether the backbone yields time steps (B, T, out_emb) for a trained pooling instead of (B, out_emb)."""
    pooling = (cfg.encoder_config or {}).get("pooling", "max") if cfg.encoder == AISFX_ENCODER else "max"
    if pooling not in AISFX_POOLINGS:
        raise AudioEncoderError("audio.encoder_config", f"unknown pooling {pooling!r}; known: {AISFX_POOLINGS}")
    return pooling == "attention"


class FeatureStandardiser(nn.Module):
    """(..., width) -> (x - mean) / std per dimension, with statistics fixed from the training data (buffers, saved
    with the model). A pretrained encoder's vectors share a large common part (ReLU features are all positive);
    without it, every clip looks alike to the projection and a small model learns only the label frequencies."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """Set the statistics from (..., width) features (vectors, or time steps of every clip)."""
        features = features.reshape(-1, features.shape[-1])
        self.mean.copy_(features.mean(dim=0))
        self.std.copy_(features.std(dim=0).clamp(min=1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FramePooling(nn.Module):
    """(B, T, width) time steps -> (B, out_width), trained: each of `heads` heads scores every (linearly mapped)
    time step, and averages its slice of them with the softmax of its scores over time. No positions: where in the
    clip a sound is does not matter, only that it is there. `out_width`: the mapped width (default: `width`)."""

    def __init__(self, width: int, heads: int = 4, dropout: float = 0.2, out_width: int | None = None) -> None:
        super().__init__()
        out_width = out_width or width
        self.heads = heads
        self.drop = nn.Dropout(dropout)
        self.value = nn.Linear(width, out_width)
        self.score = nn.Linear(out_width, heads)
        self.norm = nn.LayerNorm(out_width)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        values = self.value(self.drop(frames))  # (B, T, out_width)
        weights = self.score(values).softmax(dim=1)  # (B, T, heads), each head's weights sum to 1 over time
        B, T, width = values.shape
        pooled = (weights[..., None] * values.view(B, T, self.heads, width // self.heads)).sum(dim=1)
        return self.norm(pooled.reshape(B, width))


# --- aisfx ------------------------------------------------------------------------------------------------------


def htk_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular filters on the HTK mel scale, each summing to 1, shaped (n_fft // 2 + 1, n_mels)."""

    def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    hz_points = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    weights = np.maximum(0.0, np.minimum(-ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]))
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)  # unit L1 norm per filter
    return weights.astype(np.float32).T


class ConvBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and ReLU, then max pooling (key names as in aisfx's checkpoint)."""

    def __init__(self, channels_in: int, channels_out: int, pool: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, self.pool) if self.pool > 1 else x


class AisfxCnn(nn.Module):
    """(B, samples) -> (B, 512): peak-normalised clip -> log-mel image (frames x 96) -> CNN -> mean over
    frequency, max over time. The CNN pools over time itself, so a whole 7 s window goes through at once (aisfx
    cuts files into 100-frame blocks and gives a vector per block). `frames`: the first three blocks only, no max
    over time: (B, T, 256) with T = 1 + samples // 1024 halved (floored) three times, 37 for 7 s."""

    def __init__(self, sample_rate: int, frames: bool = False) -> None:
        super().__init__()
        self.frames = frames
        if sample_rate != AISFX_SAMPLE_RATE:
            raise AudioEncoderError("audio.sample_rate", f"the aisfx encoder takes {AISFX_SAMPLE_RATE} Hz audio")
        filters = htk_mel_filterbank(AISFX_SAMPLE_RATE, AISFX_N_FFT, AISFX_MELS, 0.0, AISFX_SAMPLE_RATE / 2)
        self.register_buffer("mel_filters", torch.from_numpy(filters), persistent=False)
        self.register_buffer("window", torch.hann_window(AISFX_N_FFT), persistent=False)
        widths = [1, AISFX_WIDTH, AISFX_WIDTH * 2, AISFX_WIDTH * 4, AISFX_WIDTH * 8]
        pools = [2, 2, 2, 1]
        count = 3 if frames else 4
        blocks = {f"conv_block{i + 1}": ConvBlock(widths[i], widths[i + 1], pools[i]) for i in range(count)}
        self.embedding_net = nn.ModuleDict(blocks)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, frames, 96), scaled to about [0, 1] as aisfx's training data was."""
        with torch.autocast(wave.device.type, enabled=False):
            wave = wave.float()
            peak = wave.abs().amax(dim=1, keepdim=True)
            wave = wave / torch.where(peak > 0, peak, torch.ones_like(peak))
            spec = torch.stft(
                wave, AISFX_N_FFT, AISFX_HOP, window=self.window, center=True, pad_mode="constant", return_complex=True
            )
            power = spec.real**2 + spec.imag**2  # (B, bins, frames)
            mel = torch.matmul(power.transpose(1, 2), self.mel_filters)
            return torch.log10(mel * AISFX_LOG_SCALE + 1.0) / AISFX_MAX_LOG_MEL

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.log_mel(wave)[:, None]  # (B, 1, frames, 96)
        for block in self.embedding_net.values():
            x = block(x)
        steps = x.mean(dim=3)  # (B, channels, T)
        return steps.transpose(1, 2) if self.frames else steps.amax(dim=2)


# --- transformers -----------------------------------------------------------------------------------------------


def transformers_encoder_config(tower: nn.Module, extractor_config: dict[str, Any]) -> dict[str, Any]:
    """What `AudioConfig.encoder_config` holds for a transformers encoder: the tower's class (a transformers
    class, by its import path), its config and the feature extractor's, all JSON-able."""
    cls = type(tower)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "model": tower.config.to_dict(),
        "feature_extractor": extractor_config,
    }


def audio_tower(model: nn.Module) -> nn.Module:
    """The part of a transformers model that encodes audio: CLAP's audio model, an encoder-decoder's encoder
    (Whisper), else the model itself (AST, wav2vec2, HuBERT, ...)."""
    if hasattr(model, "audio_model"):  # ClapModel
        return model.audio_model
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        return model.get_encoder()
    return model


def build_transformers_model(encoder_config: dict[str, Any]) -> nn.Module:
    """The recorded tower class with random weights. Only classes of the transformers package are built."""
    import importlib

    from transformers import AutoConfig

    path, config = str(encoder_config.get("class", "")), dict(encoder_config["model"])
    module_name, _, class_name = path.rpartition(".")
    if not module_name.startswith("transformers."):
        raise AudioEncoderError("audio.encoder_config", f"not a transformers model class: {path!r}")
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise AudioEncoderError("audio.encoder_config", "the transformers config has no model_type")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(AutoConfig.for_model(model_type, **config))


def build_feature_extractor(extractor_config: dict[str, Any]) -> Any:
    from transformers.models.auto.feature_extraction_auto import feature_extractor_class_from_name

    name = extractor_config.get("feature_extractor_type")
    cls = feature_extractor_class_from_name(name) if name else None
    if cls is None:
        raise AudioEncoderError("audio.encoder_config", f"unknown feature extractor type {name!r}")
    return cls.from_dict(extractor_config)


class TransformersAudio(nn.Module):
    """A transformers audio model and its feature extractor; the model's weights are `model.*`."""

    def __init__(self, sample_rate: int, encoder_config: dict[str, Any]) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.model = build_transformers_model(encoder_config)
        self.extractor = build_feature_extractor(encoder_config["feature_extractor"])
        self.model_rate = int(self.extractor.sampling_rate)

    def features(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """The extractor's inputs for the batch (it works on numpy, one clip at a time, after resampling)."""
        import soxr

        clips = [np.asarray(clip, dtype=np.float32) for clip in wave.detach().float().cpu().numpy()]
        if self.model_rate != self.sample_rate:
            clips = [soxr.resample(clip, self.sample_rate, self.model_rate) for clip in clips]
        extracted = self.extractor(
            clips, sampling_rate=self.model_rate, return_tensors="pt", return_attention_mask=True
        )
        return {key: value.to(wave.device) for key, value in extracted.items()}

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        inputs = self.features(wave)
        mask = inputs.pop("attention_mask", None)
        accepted = _forward_arguments(self.model)
        out = self.model(**{key: value for key, value in inputs.items() if key in accepted})
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None and pooled.dim() == 2:
            return pooled
        return masked_time_mean(out.last_hidden_state, mask)


def _forward_arguments(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def masked_time_mean(hidden: torch.Tensor, input_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, H) -> (B, H): the mean over the frames that cover the clip. The extractor's mask (over its samples
    or frames, e.g. Whisper's 30 s padding) is stretched to the T output frames by nearest neighbour."""
    if input_mask is None:
        return hidden.mean(dim=1)
    mask = F.interpolate(input_mask[:, None].float(), size=hidden.shape[1], mode="nearest")[:, 0]  # (B, T)
    mask = mask.to(hidden.dtype)[..., None]
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
