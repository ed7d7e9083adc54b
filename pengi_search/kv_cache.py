"""The language model run over prefixes step by step, with a key/value cache that is shared wherever rows agree.

Pengi's rows have a nested structure that decoding exploits:

    window  --  its audio prefix (the same for every prompt asked about the window)
      row   --  the prompt's text prefix (and an answer's given start), after the window's audio prefix
        beam / candidate  --  generated or scored tokens, after the row's prefix

`SharedPrefix` holds the first two levels without repeating the audio half per prompt. A `LMCache` runs the language
model over it once (`start_cache`) and then feeds new tokens to its rows (`extend`); `repeated` turns each row into
several (beams, candidates) that share the row's past without copying it, and `reorder` moves beams.

For GPT-2 (the released models) `GPT2Cache` attends from every row to the keys of its window and of its row where
they are stored once, so neither the prefix's computation nor its keys are repeated per prompt or per beam; the
generated tokens' keys live in a preallocated buffer that a beam reorder gathers once. Any other transformers causal
LM gets `HFCache`, which materialises each row's full prefix and uses transformers' own cache.

The vocabulary projection (GPT-2's is 50,257 wide, the largest product of a step) runs only on the positions whose
logits are read: each row's last one, or those a caller marks (`extend(read=...)`, as scoring candidates does).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from .cpu_kernels import linear_add, linear_gelu
from .gpt2 import GPT2LM

if TYPE_CHECKING:
    from transformers import DynamicCache

# GPT-2's activation: transformers writes the tanh approximation out in five operations; a fused kernel (PyTorch's,
# or oneDNN's inside the product, see `cpu_kernels`) computes the same function within rounding, in a fraction of
# the time.
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class SharedPrefix:
    """Prefix rows whose first part is shared by consecutive rows: row r is `[shared[r // per_group] ; own[r]]`.

    shared (G, S, E): e.g. audio prefixes of G windows. own (G * per_group, T, E): e.g. the text prefix of each
    (window, prompt) row, window-major. T may be 0 (one row per shared part).
    """

    shared: torch.Tensor
    own: torch.Tensor

    def __post_init__(self) -> None:
        groups, rows = self.shared.shape[0], self.own.shape[0]
        if groups == 0 or rows % groups:
            raise ValueError(f"{rows} rows cannot share {groups} prefixes equally")
        if self.own.shape[1] == 0 and rows != groups:
            raise ValueError("rows without a part of their own cannot share a prefix")

    @classmethod
    def unshared(cls, prefix: torch.Tensor) -> SharedPrefix:
        """Rows (B, P, E) that share nothing."""
        return cls(prefix, prefix[:, :0])

    @property
    def rows(self) -> int:
        return self.own.shape[0]

    @property
    def per_group(self) -> int:
        return self.rows // self.shared.shape[0]

    @property
    def length(self) -> int:
        return self.shared.shape[1] + self.own.shape[1]

    def full(self) -> torch.Tensor:
        """Every row's whole prefix (rows, S + T, E)."""
        return torch.cat([self.shared.repeat_interleave(self.per_group, dim=0), self.own], dim=1)


class LMCache(Protocol):
    """What the language model has read for each row, and how to go on from there."""

    rows: int

    def extend(self, embeds: torch.Tensor, *, read: torch.Tensor | None = None) -> torch.Tensor:
        """Feed (rows, T, E) embeddings after each row's past; float32 logits of each row's last position (rows, V),
        or with `read` ((rows, T) bool) of the positions it marks, (marked, V) in row-major order. The new tokens
        become part of each row's past."""
        ...

    def repeated(self, n: int) -> LMCache:
        """A cache whose rows are each of these rows `n` times in a row, sharing its past (this one is unchanged)."""
        ...

    def reorder(self, index: torch.Tensor) -> None:
        """Row i continues old row `index[i]`; rows may only move among the copies `repeated` made of one row."""
        ...


def start_cache(gpt: nn.Module, prefix: SharedPrefix, capacity: int = 0) -> tuple[LMCache, torch.Tensor]:
    """Run `gpt` over the prefix rows; returns the cache and the logits (rows, V) predicting each row's next token.

    `capacity`: tokens each row is expected to receive afterwards (space reserved ahead; more still fits).
    """
    if GPT2Cache.supports(gpt):
        return GPT2Cache.start(gpt, prefix, capacity)
    return HFCache.start(gpt, prefix)


def _read_positions(states: torch.Tensor, read: torch.Tensor | None) -> torch.Tensor:
    """Of (rows, T, X) per-position states, those whose logits are read (see `LMCache.extend`): each row's last
    (rows, X), or those `read` marks (marked, X)."""
    return states[:, -1] if read is None else states[read]


# transformers causal LMs whose logits are `get_output_embeddings()` applied to `get_decoder()`'s last hidden state,
# nothing after (read in transformers 5.24's modeling code; tests/test_read_positions.py checks each), so the
# projection can run on the positions read alone. Others keep their own forward and its whole logits: Gemma 2 caps
# its logits, Cohere and Granite scale them, and a model type not checked may do anything.
PLAIN_LM_HEADS = frozenset(
    {"gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gpt_neox", "opt", "olmo2", "smollm3"}
)


def decoder_and_head(gpt: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """A transformers causal LM as (decoder, vocabulary projection) where its logits are the one applied to the
    other's last hidden state (`PLAIN_LM_HEADS`); None where they are not, or are not known to be."""
    # GPT-2 here (`gpt2.GPT2LM`) may carry transformers' GPT2Config, but has no `get_decoder`
    if getattr(gpt.config, "model_type", None) not in PLAIN_LM_HEADS or not hasattr(gpt, "get_decoder"):
        return None
    decoder, head = gpt.get_decoder(), gpt.get_output_embeddings()
    if decoder is gpt or head is None:
        return None
    return decoder, head


class HFCache:
    """Any transformers causal LM: each row's prefix in full, transformers' `DynamicCache`."""

    def __init__(self, gpt: nn.Module, cache: DynamicCache, rows: int) -> None:
        self.gpt = gpt
        self.cache = cache
        self.rows = rows
        self.split = decoder_and_head(gpt)  # None: the model's own forward, and its logits of every position

    @classmethod
    def start(cls, gpt: nn.Module, prefix: SharedPrefix) -> tuple[HFCache, torch.Tensor]:
        from transformers import DynamicCache

        state = cls(gpt, DynamicCache(), prefix.rows)
        return state, state.extend(prefix.full())

    def extend(self, embeds: torch.Tensor, *, read: torch.Tensor | None = None) -> torch.Tensor:
        embeds = embeds.to(self.gpt.get_input_embeddings().weight.dtype)  # bf16 in fast mode
        if self.split is None:
            keep = 1 if read is None else 0  # the last position's logits, or every position's to read some of
            out = self.gpt(inputs_embeds=embeds, cache=self.cache, use_cache=True, logits_to_keep=keep)
            return _read_positions(out.logits, read).float()
        decoder, head = self.split
        hidden = decoder(inputs_embeds=embeds, cache=self.cache, use_cache=True).last_hidden_state
        return head(_read_positions(hidden, read)).float()

    def repeated(self, n: int) -> HFCache:
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(n)
        return HFCache(self.gpt, cache, self.rows * n)

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder_cache(index)


@dataclass(frozen=True)
class _Segment:
    """Keys and values (per layer, each (G, H, L, D)) that consecutive groups of rows share: row r reads group
    r // (rows / G). The segments of a cache, in order, are its rows' past."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @property
    def groups(self) -> int:
        return self.keys[0].shape[0]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]


def _by_group(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(R, H, T, X) per row -> (G, H, m * T, X): the m = R / G rows of a group side by side, as one query block."""
    R, H, T, X = x.shape
    if groups == R:
        return x
    return x.reshape(groups, R // groups, H, T, X).transpose(1, 2).reshape(groups, H, -1, X)


def _by_row(x: torch.Tensor, rows: int, T: int) -> torch.Tensor:
    """The inverse of `_by_group`: (G, H, m * T, X) -> (R, H, T, X)."""
    G, H, _, X = x.shape
    if rows == G:
        return x
    return x.view(G, H, rows // G, T, X).transpose(1, 2).reshape(rows, H, T, X)


class GPT2Cache:
    """GPT-2 with a hierarchical key/value cache (see the module docstring).

    The blocks' own modules compute everything but attention and the activation (layer norms, projections), so a
    converted or quantised projection (see `fast_mode`) is used as it is. Attention is computed here: scores of each
    query against each segment's keys (a group's rows as one block of queries), one softmax over all of them, then
    the values; the result equals transformers' attention up to float rounding.
    """

    def __init__(self, gpt: GPT2LM, segments: tuple[_Segment, ...], rows: int, capacity: int) -> None:
        self.gpt = gpt
        self.segments = segments
        self.rows = rows
        self.capacity = capacity
        self._grown: torch.Tensor | None = None  # (layers, 2, rows, H, capacity, D) keys and values of fed tokens
        self._spare: torch.Tensor | None = None  # a second buffer of that shape, the target of reorders
        self._filled = 0

    @staticmethod
    def supports(gpt: Any) -> bool:
        if not isinstance(gpt, GPT2LM):  # transformers' own GPT2LMHeadModel included: it goes through HFCache
            return False
        cfg = gpt.config
        return bool(
            cfg.scale_attn_weights
            and not cfg.scale_attn_by_inverse_layer_idx
            and not cfg.reorder_and_upcast_attn
            and not getattr(cfg, "add_cross_attention", False)
            and cfg.activation_function in _TANH_GELU
        )

    @classmethod
    def start(cls, gpt: GPT2LM, prefix: SharedPrefix, capacity: int) -> tuple[GPT2Cache, torch.Tensor]:
        cache = cls(gpt, (), prefix.shared.shape[0], capacity)
        logits = cache._freeze(prefix.shared)
        if prefix.own.shape[1]:
            cache.rows = prefix.rows
            logits = cache._freeze(prefix.own)
        return cache, logits

    @property
    def _past_length(self) -> int:
        return sum(s.length for s in self.segments) + self._filled

    def _freeze(self, embeds: torch.Tensor) -> torch.Tensor:
        """Feed a prefix part to every row and keep its keys as a new shared segment (one group per row), joined to
        the previous segment when that one has a group per row too (one prompt per window): fewer, longer
        attention products per step."""
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        logits = self._forward(embeds, keys, values, read=None)
        segment = _Segment(tuple(keys), tuple(values))
        if self.segments and self.segments[-1].groups == segment.groups:
            last, self.segments = self.segments[-1], self.segments[:-1]
            segment = _Segment(
                tuple(torch.cat(pair, dim=2) for pair in zip(last.keys, segment.keys, strict=True)),
                tuple(torch.cat(pair, dim=2) for pair in zip(last.values, segment.values, strict=True)),
            )
        self.segments = (*self.segments, segment)
        return logits

    def extend(self, embeds: torch.Tensor, *, read: torch.Tensor | None = None) -> torch.Tensor:
        return self._forward(embeds, None, None, read=read)

    def repeated(self, n: int) -> GPT2Cache:
        if self._filled:
            raise ValueError("rows can only be repeated before tokens are fed to them")
        return GPT2Cache(self.gpt, self.segments, self.rows * n, self.capacity)

    def reorder(self, index: torch.Tensor) -> None:
        """One gather of the fed tokens' keys and values (the shared segments never move)."""
        if self._grown is None or self._spare is None or not self._filled:
            return
        filled = self._filled
        torch.index_select(self._grown[..., :filled, :], 2, index, out=self._spare[..., :filled, :])
        self._grown, self._spare = self._spare, self._grown

    # -- the forward pass ---------------------------------------------------------------------------------------

    def _reserve(self, T: int, like: torch.Tensor, heads: int, head_dim: int) -> None:
        """Room for T more fed tokens per row, allocated once (grown only if a caller feeds beyond `capacity`)."""
        needed = self._filled + T
        if self._grown is not None and self._grown.shape[4] >= needed:
            return
        layers = len(self.gpt.transformer.h)
        size = max(needed, self.capacity, 0 if self._grown is None else 2 * self._grown.shape[4])
        shape = (layers, 2, self.rows, heads, size, head_dim)
        grown = like.new_empty(shape)
        if self._grown is not None:
            grown[..., : self._filled, :] = self._grown[..., : self._filled, :]
        self._grown, self._spare = grown, like.new_empty(shape)

    def _forward(
        self,
        embeds: torch.Tensor,
        frozen_keys: list[torch.Tensor] | None,
        frozen_values: list[torch.Tensor] | None,
        *,
        read: torch.Tensor | None,
    ) -> torch.Tensor:
        """(rows, T, E) -> the logits `read` asks for (see `LMCache.extend`). New keys go to `frozen_*` (a new
        segment) or, when those are None, to the preallocated buffer of fed tokens."""
        transformer = self.gpt.transformer
        R, T, E = embeds.shape
        H = self.gpt.config.n_head
        D = E // H
        start = self._past_length
        positions = torch.arange(start, start + T, device=embeds.device)
        x = embeds.to(transformer.wpe.weight.dtype) + transformer.wpe(positions)  # bf16 in fast mode
        if frozen_keys is None:
            self._reserve(T, x, H, D)
        for layer, block in enumerate(transformer.h):
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(E, dim=2)
            q, k, v = (t.view(R, T, H, D).transpose(1, 2) for t in (q, k, v))  # (R, H, T, D)
            if frozen_keys is None or frozen_values is None:
                assert self._grown is not None
                self._grown[layer, 0, :, :, self._filled : self._filled + T] = k
                self._grown[layer, 1, :, :, self._filled : self._filled + T] = v
                k = self._grown[layer, 0, :, :, : self._filled + T]
                v = self._grown[layer, 1, :, :, : self._filled + T]
            else:
                frozen_keys.append(k)
                frozen_values.append(v)
            attended = self._attend(layer, q, k, v)  # (R, H, T, D)
            x = linear_add(block.attn.c_proj, attended.transpose(1, 2).reshape(R, T, E), x)
            x = linear_add(block.mlp.c_proj, linear_gelu(block.mlp.c_fc, block.ln_2(x), "tanh"), x)
        if frozen_keys is None:
            self._filled += T
        x = transformer.ln_f(_read_positions(x, read))  # positions are independent from here on
        return self.gpt.lm_head(x).float()

    def _attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax attention of q (R, H, T, D) over the shared segments and this row's own keys k, v (R, H, L, D),
        whose last T positions are the queries' own (causal among themselves)."""
        R, _, T, D = q.shape
        q = q * D**-0.5
        scores = [_by_row(_by_group(q, s.groups) @ s.keys[layer].transpose(-1, -2), R, T) for s in self.segments]
        own = q @ k.transpose(-1, -2)  # (R, H, T, L)
        if T > 1:
            L = k.shape[2]
            future = torch.ones(T, L, dtype=torch.bool, device=q.device).triu(L - T + 1)
            own = own.masked_fill(future, float("-inf"))
        weights = torch.cat([*scores, own], dim=-1).softmax(dim=-1)
        parts = weights.split([s.length for s in self.segments] + [k.shape[2]], dim=-1)
        out = parts[-1] @ v
        for segment, w in zip(self.segments, parts, strict=False):
            out = out + _by_row(_by_group(w, segment.groups) @ segment.values[layer], R, T)
        return out
