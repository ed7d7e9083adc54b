"""CLIP's text transformer in plain PyTorch: Pengi's prompt and text encoder, without transformers' model code.

The same network and parameter names as transformers' `CLIPTextModel` (Pengi's `caption_encoder.base.*`):

    embeddings.token_embedding (V, E)  embeddings.position_embedding (P, E)
    encoder.layers.N.self_attn.{k,v,q,out}_proj  .layer_norm1  .mlp.fc1 (E -> I)  .mlp.fc2 (I -> E)  .layer_norm2
    final_layer_norm

Pre-LayerNorm causal layers; the pooled output is the final state at each row's first end-of-text token. The forward
pass computes what transformers' computes (its "sdpa" attention, the same masks), and a new tower is initialised as
transformers initialises one, draw for draw. The configuration is `CLIPTextSettings` (the `CLIPTextConfig` fields this
network reads, with transformers' defaults: importing transformers costs most of a second) or `CLIPTextConfig` itself.
`text_query` has the same forward pass in NumPy for `query`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextEncoderConfig
from .mlp import ACTIVATIONS, Mlp

if TYPE_CHECKING:
    from transformers import CLIPTextConfig


@dataclass
class CLIPTextSettings(TextEncoderConfig):
    """The fields of transformers' `CLIPTextConfig` that the tower here reads, with its defaults (tests compare):
    the model's `TextEncoderConfig` (sizes, activation, special tokens) and what CLIP fixes besides."""

    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    pad_token_id: int | None = 1


class TextEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextSettings | CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        positions = torch.arange(config.max_position_embeddings).expand((1, -1))
        self.register_buffer("position_ids", positions, persistent=False)  # (1, P), not in the state dict

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, E)"""
        T = input_ids.shape[-1]
        P = self.position_embedding.weight.shape[0]
        if T > P:
            raise ValueError(f"sequence of {T} tokens is longer than the text tower's {P} positions")
        return self.token_embedding(input_ids) + self.position_embedding(self.position_ids[:, :T])


class SelfAttention(nn.Module):
    def __init__(self, config: CLIPTextSettings | CLIPTextConfig) -> None:
        super().__init__()
        E = config.hidden_size
        self.n_head = config.num_attention_heads
        self.head_dim = E // self.n_head
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.k_proj = nn.Linear(E, E)  # created in transformers' order (k, v, q, out): the same random draws
        self.v_proj = nn.Linear(E, E)
        self.q_proj = nn.Linear(E, E)
        self.out_proj = nn.Linear(E, E)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, E); mask (B, 1, T, T) True where a query may attend, or None for plain causal attention."""
        B, T, E = x.shape
        q, k, v = (
            proj(x).view(B, T, -1, self.head_dim).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj)
        )  # (B, H, T, D)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.scale,
            is_causal=T > 1 and mask is None,
        )  # (B, H, T, D)
        return self.out_proj(y.transpose(1, 2).contiguous().reshape(B, T, E))


def feed_forward(config: CLIPTextSettings | CLIPTextConfig) -> Mlp:
    """The layer's MLP: the shared block (`mlp.Mlp`, whose `fc1` and `fc2` are CLIP's names) with CLIP's activation."""
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(f"unsupported CLIP activation {config.hidden_act!r}")
    act = ACTIVATIONS[config.hidden_act]
    return Mlp(config.hidden_size, config.intermediate_size, lambda fc1, x: act(fc1(x)))


class EncoderLayer(nn.Module):
    """x + attn(layer_norm1(x)), then x + mlp(layer_norm2(x))."""

    def __init__(self, config: CLIPTextSettings | CLIPTextConfig) -> None:
        super().__init__()
        E = config.hidden_size
        self.self_attn = SelfAttention(config)
        self.layer_norm1 = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.mlp = feed_forward(config)
        self.layer_norm2 = nn.LayerNorm(E, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, config: CLIPTextSettings | CLIPTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class CLIPTextTower(nn.Module):
    """(B, T) token ids and their attention mask -> the pooled state (B, E) at each row's first end-of-text."""

    def __init__(self, config: CLIPTextSettings | CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.encoder = Encoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.init_weights()

    def init_weights(self) -> None:
        """transformers' initialisation of a new CLIP text model, draw for draw: modules in post-order; linear
        layers and embeddings N(0, initializer_range) with zero biases, LayerNorms 1 and 0; then, per module,
        CLIP's own scales for the embeddings, the attention and the MLP."""
        cfg = self.config
        factor = cfg.initializer_factor
        E, layers = cfg.hidden_size, cfg.num_hidden_layers
        in_proj_std = E**-0.5 * (2 * layers) ** -0.5 * factor

        def init(module: nn.Module) -> None:
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, cfg.initializer_range)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, TextEmbeddings):
                nn.init.normal_(module.token_embedding.weight, 0.0, factor * 0.02)
                nn.init.normal_(module.position_embedding.weight, 0.0, factor * 0.02)
            elif isinstance(module, SelfAttention):
                for proj in (module.q_proj, module.k_proj, module.v_proj):
                    nn.init.normal_(proj.weight, 0.0, in_proj_std)
                nn.init.normal_(module.out_proj.weight, 0.0, E**-0.5 * factor)
            elif isinstance(module, Mlp):  # this tower's only: `apply` walks its own modules
                nn.init.normal_(module.fc1.weight, 0.0, (2 * E) ** -0.5 * factor)
                nn.init.normal_(module.fc2.weight, 0.0, in_proj_std)

        self.apply(init)  # children before their parent, as transformers initialises

    def attention_mask(self, padding: torch.Tensor | None, T: int) -> torch.Tensor | None:
        """Causal attention restricted to the real (mask 1) keys: (B, 1, T, T) booleans, or None when no key is
        padding (causal attention alone, as `is_causal`)."""
        if padding is None or bool(padding.all()):
            return None
        causal = torch.ones(T, T, dtype=torch.bool, device=padding.device).tril()  # (T, T)
        return causal[None, None] & padding.bool()[:, None, None, :]  # (B, 1, T, T)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids, (B, T) mask -> pooled (B, E)."""
        x = self.embeddings(input_ids)
        x = self.encoder(x, self.attention_mask(attention_mask, input_ids.shape[-1]))
        x = self.final_layer_norm(x)  # (B, T, E)
        ids = input_ids.to(dtype=torch.int, device=x.device)
        if self.config.eos_token_id == 2:  # configurations older than transformers' fix: end-of-text is the top id
            ends = ids.argmax(dim=-1)
        else:  # the first end-of-text (padding may be end-of-text too)
            ends = (ids == self.config.eos_token_id).int().argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), ends]
