"""HTSAT: the hierarchical token-semantic audio transformer (a Swin transformer over a folded log-mel image).

Pengi uses its `latent_output`: the mean of the final 768-channel token map, one vector per clip.
Module and parameter names follow the released checkpoint (`audio_encoder.base.htsat.*`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AudioConfig
from .cpu_kernels import linear_gelu
from .frontend import LogMel, Spectrogram
from .mlp import Mlp

# In eval mode, spectrograms longer than the 1024-frame image are averaged over crops of this size and step
# (constants of the reference; a 7 s clip has 965 frames and never reaches this path).
LONG_INPUT_CROP = 689
LONG_INPUT_STEP = 344


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C)"""
    B, H, W, C = x.shape
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, C)


def window_reverse(windows: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    """(B * H/w * W/w, w*w, C) -> (B, H, W, C)"""
    C = windows.shape[-1]
    x = windows.view(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def relative_position_index(w: int) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2 bias table for every pair of positions in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # (2, w*w)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)  # (w*w, w*w, 2), from 0
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]


def shifted_window_mask(H: int, W: int, w: int, shift: int) -> torch.Tensor:
    """(num_windows, w*w, w*w) additive mask: -100 between positions that the cyclic shift made neighbours."""
    regions = torch.zeros(1, H, W, 1)
    slices = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
    label = 0
    for hs in slices:
        for ws in slices:
            regions[:, hs, ws, :] = label
            label += 1
    ids = window_partition(regions, w).squeeze(-1)  # (num_windows, w*w)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(Bw, N, C) tokens of Bw = batch * windows windows of N = w*w positions; `mask` (windows, N, N)."""
        Bw, N, C = x.shape
        H = self.num_heads
        q, k, v = self.qkv(x).view(Bw, N, 3, H, C // H).permute(2, 0, 3, 1, 4)  # each (Bw, H, N, d)
        # Queries are scaled before the product, as the reference does: SDPA's own scaling (q and k each by
        # sqrt(scale)) rounds differently, and Adam amplifies such differences (training then no longer gives the
        # same weights in one process as in two, which tests/test_trainer.py checks to 1e-6).
        q = q * self.scale
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, H)
        # Masks are given 4-D: PyTorch's fused CPU attention takes those, and falls back to separate products and
        # a softmax (3-4x slower here) for a 3-D one.
        bias = bias.permute(2, 0, 1)[None]  # (1, H, N, N): the same for every window
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        else:
            # The shift mask differs per window: fold the windows into the heads, (B, nW * H, N, d), so that one
            # (1, nW * H, N, N) additive mask broadcasts over the batch instead of being copied for every clip.
            nW = mask.shape[0]
            attn_mask = (bias + mask[:, None]).reshape(1, nW * H, N, N)
            q, k, v = (t.reshape(Bw // nW, nW * H, N, C // H) for t in (q, k, v))
            # reshape, not view: CUDA's fused kernels may return the heads in another memory order.
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0).reshape(Bw, H, N, C // H)
        return self.proj(out.transpose(1, 2).reshape(Bw, N, C))


class SwinBlock(nn.Module):
    """Pre-norm window attention (cyclically shifted on odd blocks) and MLP, both residual."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        if resolution <= window:  # the whole map fits in one window: nothing to shift
            window, shift = resolution, 0
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), linear_gelu)
        mask = shifted_window_mask(resolution, resolution, window, shift) if shift else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        R, w, s = self.resolution, self.window, self.shift
        h = self.norm1(x).view(B, R, R, C)
        if s:
            h = torch.roll(h, shifts=(-s, -s), dims=(1, 2))
        h = window_reverse(self.attn(window_partition(h, w), self.attn_mask), w, R, R)
        if s:
            h = torch.roll(h, shifts=(s, s), dims=(1, 2))
        x = x + h.reshape(B, L, C)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Halve the resolution, double the channels: concatenate 2x2 neighbours, normalise, project."""

    def __init__(self, dim: int, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, C = x.shape
        x = x.view(B, self.resolution, self.resolution, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, resolution: int, depth: int, num_heads: int, cfg: AudioConfig, merge: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, cfg.window, 0 if i % 2 == 0 else cfg.window // 2, cfg.mlp_ratio)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, resolution) if merge else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_stride)
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(image).flatten(2).transpose(1, 2))  # (B, patches, embed_dim)


class HTSAT(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        self.freq_ratio = cfg.spec_size // cfg.mel_bins  # time chunks stacked along frequency in the image
        self.spectrogram_extractor = Spectrogram(cfg.window_size, cfg.hop_size)
        self.logmel_extractor = LogMel(cfg.mel_sample_rate, cfg.window_size, cfg.mel_bins, cfg.fmin, cfg.fmax)
        self.bn0 = nn.BatchNorm2d(cfg.mel_bins)
        self.patch_embed = PatchEmbed(cfg)
        resolution = cfg.spec_size // cfg.patch_stride
        n = len(cfg.depths)
        self.layers = nn.ModuleList(
            SwinStage(cfg.embed_dim * 2**i, resolution // 2**i, depth, heads, cfg, merge=i < n - 1)
            for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads, strict=True))
        )
        features = cfg.embed_dim * 2 ** (n - 1)
        self.norm = nn.LayerNorm(features)
        # The AudioSet classification head: stored in the checkpoint, unused by Pengi.
        freq_rows = cfg.spec_size // 2 ** (n - 1) // cfg.patch_stride // self.freq_ratio
        self.tscam_conv = nn.Conv2d(features, cfg.num_classes, kernel_size=(freq_rows, 3), padding=(0, 1))
        self.head = nn.Linear(cfg.num_classes, cfg.num_classes)

    def logmel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, 1, frames, mel_bins), normalised by bn0."""
        # Always float32: under bf16 autocast the power spectrum loses its quiet bins.
        with torch.autocast(wave.device.type, enabled=False):
            x = self.logmel_extractor(self.spectrogram_extractor(wave.float()))
        return self.bn0(x.transpose(1, 3)).transpose(1, 3)

    def to_image(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, frames <= 1024, 64) -> (B, 1, 256, 256): stretch time to 1024, stack 4 chunks of 256 frames."""
        target_frames = self.cfg.spec_size * self.freq_ratio
        if mel.shape[2] < target_frames:
            mel = F.interpolate(mel, (target_frames, mel.shape[3]), mode="bicubic", align_corners=True)
        B, C, T, Fq = mel.shape
        x = mel.transpose(2, 3).reshape(B, C, Fq, self.freq_ratio, T // self.freq_ratio)
        return x.permute(0, 1, 3, 2, 4).reshape(B, C, self.freq_ratio * Fq, T // self.freq_ratio)

    def latent(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, 256, 256) -> (B, out_emb): mean of the final token map."""
        x = self.patch_embed(image)
        for stage in self.layers:
            x = stage(x)
        # The reference regroups the map into frequency x time before averaging; a mean over all
        # positions does not depend on that order.
        return self.norm(x).mean(dim=1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) at 44.1 kHz -> latent_output (B, out_emb)."""
        mel = self.logmel(wave)
        frames = mel.shape[2]
        if frames <= self.cfg.spec_size * self.freq_ratio:
            return self.latent(self.to_image(mel))
        starts = range(0, frames - LONG_INPUT_CROP - 1, LONG_INPUT_STEP)
        crops = [self.latent(self.to_image(mel[:, :, s : s + LONG_INPUT_CROP])) for s in starts]
        return torch.stack(crops).mean(dim=0)
