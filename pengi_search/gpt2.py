"""GPT-2, Pengi's language model, in plain PyTorch: no transformers model code at inference.

Importing transformers' model classes costs seconds per command; this module is the same network with the same
parameter names as transformers' `GPT2LMHeadModel`, so model directories, released checkpoints and transformers
checkpoints load unchanged:

    transformer.wte (V, E)  transformer.wpe (P, E)
    transformer.h.N.ln_1  .attn.c_attn (E, 3E)  .attn.c_proj (E, E)  .ln_2  .mlp.c_fc (E, 4E)  .mlp.c_proj (4E, E)
    transformer.ln_f        lm_head (V, E), the same tensor as transformer.wte

A `Conv1D` stores its weight (in, out), as GPT-2's original code did. The forward pass computes what transformers'
computes (its "sdpa" attention, the same order of operations), and a new model is initialised as transformers
initialises one: the same random draws in the same order, so a seed gives the same weights. The configuration is
`GPT2Settings` (the `GPT2Config` fields this network reads, with transformers' defaults: importing transformers costs
most of a second) or transformers' `GPT2Config` itself. `kv_cache.GPT2Cache` runs the blocks' modules with
its own shared-prefix attention for decoding; `forward` here serves teacher forcing, training and any caller with
transformers' cache protocol (`cache.update(k, v, layer)`, `cache.get_seq_length()`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import GPT2Sizes
from .mlp import ACTIVATIONS

if TYPE_CHECKING:
    from transformers import GPT2Config


@dataclass
class GPT2Settings(GPT2Sizes):
    """The fields of transformers' `GPT2Config` that GPT-2 here reads, with its defaults (tests compare them): the
    model's sizes (`GPT2Sizes`) and what GPT-2 fixes besides."""

    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50_256

    def to_dict(self) -> dict[str, Any]:
        """Keyword arguments for `GPT2Config` (or this class)."""
        return dataclasses.asdict(self)


class Conv1D(nn.Module):
    """y = x W + b with W stored (in, out): GPT-2's linear layer (named after the original TensorFlow code)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.nx = nx
        self.weight = nn.Parameter(torch.empty(nx, nf))  # (in, out)
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)  # drawn here, as transformers' Conv1D does

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_shape = x.shape[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)  # (N, in) @ (in, out) + b
        return x.view(out_shape)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}"


def is_conv1d(layer: nn.Module) -> bool:
    """A GPT-2 `Conv1D`: this module's, or transformers' (`transformers.pytorch_utils.Conv1D`, the same layer),
    recognised without importing transformers."""
    kind = type(layer)
    return isinstance(layer, Conv1D) or (kind.__name__ == "Conv1D" and kind.__module__ == "transformers.pytorch_utils")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; q, k, v come out of one (E, 3E) projection."""

    def __init__(self, config: GPT2Settings | GPT2Config, layer_idx: int) -> None:
        super().__init__()
        E = config.n_embd
        self.n_head = config.n_head
        self.head_dim = E // self.n_head
        if self.head_dim * self.n_head != E:
            raise ValueError(f"n_embd {E} is not divisible by n_head {self.n_head}")
        self.layer_idx = layer_idx
        self.scaling = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scaling /= float(layer_idx + 1)
        self.c_attn = Conv1D(3 * E, E)
        self.c_proj = Conv1D(E, E)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor, cache: Any = None) -> torch.Tensor:
        B, T, E = x.shape
        q, k, v = self.c_attn(x).split(E, dim=2)  # each (B, T, E)
        q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, H, past + T, D)
        L = k.shape[2]
        mask = None
        if T > 1 and L > T:  # new tokens after a cached past: each sees the past and the new tokens up to itself
            mask = torch.ones(T, L, dtype=torch.bool, device=x.device).tril(L - T)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.attn_dropout.p if self.training else 0.0,
            scale=self.scaling,
            is_causal=T > 1 and mask is None,
        )  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().reshape(B, T, E)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPT2Settings | GPT2Config) -> None:
        super().__init__()
        E = config.n_embd
        inner = config.n_inner if config.n_inner is not None else 4 * E
        if config.activation_function not in ACTIVATIONS:
            raise ValueError(f"unsupported GPT-2 activation {config.activation_function!r}")
        self.c_fc = Conv1D(inner, E)
        self.c_proj = Conv1D(E, inner)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPT2Settings | GPT2Config, layer_idx: int) -> None:
        super().__init__()
        E = config.n_embd
        self.ln_1 = nn.LayerNorm(E, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(E, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: Any = None) -> torch.Tensor:
        x = self.attn(self.ln_1(x), cache) + x
        return x + self.mlp(self.ln_2(x))


class GPT2Body(nn.Module):
    """Embeddings, blocks and the final LayerNorm (transformers' `GPT2Model`, `transformer.*`)."""

    def __init__(self, config: GPT2Settings | GPT2Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.init_weights(config)

    def init_weights(self, config: GPT2Settings | GPT2Config) -> None:
        """transformers' initialisation of a new GPT-2, draw for draw: modules in post-order (children before their
        parent); linear layers and embeddings N(0, 0.02), biases 0, LayerNorms 1 and 0; then the residual
        projections `c_proj` again with std 0.02 / sqrt(2 * n_layer) (GPT-2's paper)."""
        std = config.initializer_range
        residual_std = std / math.sqrt(2 * config.n_layer)

        def init(module: nn.Module) -> None:
            if isinstance(module, Conv1D):
                nn.init.normal_(module.weight, 0.0, std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            if isinstance(module, (CausalSelfAttention, MLP)):
                nn.init.normal_(module.c_proj.weight, 0.0, residual_std)

        self.apply(init)  # children before their parent, as transformers initialises

    def forward(self, inputs_embeds: torch.Tensor, cache: Any = None) -> torch.Tensor:
        """(B, T, E) -> (B, T, E), after the `cache`'s past when one is given."""
        past = cache.get_seq_length() if cache is not None else 0
        positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past  # (T,)
        x = self.drop(inputs_embeds + self.wpe(positions)[None])
        for block in self.h:
            x = block(x, cache)
        return self.ln_f(x)


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, T, V), or the last `logits_to_keep` positions
    cache: Any = None


class GPT2LM(nn.Module):
    """GPT-2 with its language-model head, whose weight is the token embeddings' (`lm_head` tied to `wte`)."""

    def __init__(self, config: GPT2Settings | GPT2Config) -> None:
        super().__init__()
        if getattr(config, "add_cross_attention", False):
            raise ValueError("GPT-2 with cross-attention is not supported")
        self.config = config
        self.transformer = GPT2Body(config)  # initialised as it is built, as transformers' GPT2Model is
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        nn.init.normal_(self.lm_head.weight, 0.0, config.initializer_range)  # drawn, then replaced by the tie
        self.tie_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def tie_weights(self) -> None:
        if getattr(self.config, "tie_word_embeddings", True):
            self.lm_head.weight = self.transformer.wte.weight

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        cache: Any = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
    ) -> LMOutput:
        """Token ids (B, T) or embeddings (B, T, E) -> logits. `cache`: transformers' key/value cache protocol,
        read and extended in place (`use_cache` is accepted for transformers' callers; a cache is used when one is
        given). `logits_to_keep` > 0: logits of that many last positions only."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.transformer.wte(input_ids)
        hidden = self.transformer(inputs_embeds, cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return LMOutput(self.lm_head(hidden), cache)
