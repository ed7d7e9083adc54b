"""Mapping networks: an embedding (or a sequence of token embeddings) -> `prefix_length` GPT-2 input embeddings.

A small pre-norm transformer (no positional embedding, no mask) reads `clip_length` input tokens followed by
`prefix_length` learned constant tokens; its outputs at the constant positions are the prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MapperConfig
from .mlp import Mlp, linear_relu


class MapperAttention(nn.Module):
    """Self-attention with a bias-free query projection and a joint bias-free key/value projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)  # keys first, then values
        self.project = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H = self.num_heads
        q = self.to_queries(x).view(B, N, H, C // H).transpose(1, 2)  # (B, H, N, d)
        k, v = self.to_keys_values(x).view(B, N, 2, H, C // H).permute(2, 0, 3, 1, 4)  # each (B, H, N, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.project(out.transpose(1, 2).reshape(B, N, C))


class MapperLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MapperAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), linear_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MapperTransformer(nn.Module):
    def __init__(self, dim: int, cfg: MapperConfig):
        super().__init__()
        self.layers = nn.ModuleList(MapperLayer(dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Mapper(nn.Module):
    """Sequence mapper: (B, clip_length, E) input tokens -> (B, prefix_length, E) prefix.

    `base_no_text_enc` feeds the prompt's GPT-2 token embeddings through this kind directly.
    """

    def __init__(self, gpt_dim: int, cfg: MapperConfig):
        super().__init__()
        self.clip_length = cfg.clip_length
        self.transformer = MapperTransformer(gpt_dim, cfg)
        self.prefix_const = nn.Parameter(torch.randn(cfg.prefix_length, gpt_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        const = self.prefix_const.expand(tokens.shape[0], -1, -1)
        return self.transformer(torch.cat([tokens, const], dim=1))[:, self.clip_length :]


class EmbeddingMapper(Mapper):
    """Embedding mapper: a (B, d_proj) vector is unfolded by a linear layer into clip_length tokens first."""

    def __init__(self, d_in: int, gpt_dim: int, cfg: MapperConfig):
        super().__init__(gpt_dim, cfg)
        self.linear = nn.Linear(d_in, cfg.clip_length * gpt_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        tokens = self.linear(embedding).view(embedding.shape[0], self.clip_length, -1)
        return super().forward(tokens)
