"""Pengi's text tower in numpy, for fast text queries: no torch, no transformers.

`pengi-search query` embeds one short text. Importing torch and transformers alone takes longer than the whole
query should, so this module runs the same computation as `embedders.PengiTextEmbedder` with numpy, reading only
the `caption_encoder.*` weights from `model.safetensors` (memory-mapped: nothing is copied, and only the
token-embedding rows a text uses are ever read) and tokenising with the `tokenizers` library from the
model's `tokenizer/clip/tokenizer.json`. The forward pass mirrors transformers' CLIPTextModel (pre-LayerNorm
layers, causal attention, pooling at the first end-of-text token) followed by Pengi's two projections; the
results equal the torch embedder's to float32 rounding (tests check 1e-5).
"""

from __future__ import annotations

import json
import math
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController
from tokenizers import Tokenizer

from .bpe_tokenizer import FileTokenizer
from .checkpoint import TEXT_ENCODER_PREFIX, CheckpointError, unreadable_weights
from .chunking import chunked
from .config import TextEncoderConfig
from .embedders import PENGI_TOWER_LIMIT, CutText, texts_over
from .model_dir import PENGI_TEXT_PREFIX, ModelDir
from .vectors import l2_normalise

LAYER_NORM_EPS = 1e-5  # CLIPTextConfig.layer_norm_eps and torch.nn.LayerNorm's default
_erf = np.frompyfunc(math.erf, 1, 1)
_HEADER_SIZE = struct.Struct("<Q")
# Below this many tokens in a batch the products are a few rows tall: BLAS threads cost more than they bring, and
# under CPU contention they collapse (one query took 0.4-3.8 s with threads, 0.1 s without, on a busy 2-core box).
SINGLE_THREAD_TOKENS = 512


def mapped_tensors(path: Path, prefix: str) -> dict[str, np.ndarray]:
    """float32 views of the tensors named `prefix...` in a safetensors file, memory-mapped (keys lose the prefix).

    The format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then
    the data (offsets are relative to its start). float16 and bfloat16 tensors are converted (copied).
    """
    try:
        with open(path, "rb") as f:
            (size,) = _HEADER_SIZE.unpack(f.read(_HEADER_SIZE.size))
            header = json.loads(f.read(size))
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=_HEADER_SIZE.size + size)
    except (OSError, ValueError, struct.error) as err:
        raise unreadable_weights(path, err) from err
    tensors = {}
    for name, info in header.items():
        if not name.startswith(prefix):
            continue
        begin, end = info["data_offsets"]
        if end > data.size:  # a file cut short: its header lists tensors its data no longer holds
            raise unreadable_weights(path, ValueError(f"tensor {name} lies past the end of the file"))
        raw, shape = data[begin:end], tuple(info["shape"])
        if info["dtype"] == "F32":
            tensor = raw.view("<f4")
        elif info["dtype"] == "F16":
            tensor = raw.view("<f2").astype(np.float32)
        elif info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            tensor = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise CheckpointError(path, f"tensor {name} has dtype {info['dtype']}; expected floating point weights")
        tensors[name[len(prefix) :]] = tensor.reshape(shape)
    return tensors


def _through_first(ids: list[int], eos: int) -> list[int]:
    """`ids` up to and including the first `eos` (only the first token when there is none)."""
    return ids[: ids.index(eos) + 1] if eos in ids else ids[:1]


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """Inspecting the loaded libraries costs milliseconds in a big process (a server): done once."""
    return ThreadpoolController()


class _SharedBlasLimit:
    """A BLAS thread limit for blocks that may overlap in threads (a server's queries, embedders used at once).

    OpenBLAS keeps one thread count for the whole process, so a block cannot restore on its way out the count it
    found on its way in: one left after another entered lifted the limit while the other still ran, and the other
    then restored the first's limit, for good. Here the lowest limit of the blocks inside holds, the first block in
    records the count to come back to, and the last one out restores it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside: list[int] = []  # the limit of each block inside, in the order they entered
        self._original: Any = None  # threadpoolctl's limiter of the first block in, which restores the count it found

    @contextmanager
    def limit(self, limit: int | None) -> Iterator[None]:
        """BLAS limited to at most `limit` threads inside the block (None: no limit of its own, though while a
        limited block runs in another thread the process's one count holds this one to it too)."""
        if limit is None:
            yield
            return
        self._enter(limit)
        try:
            yield
        finally:
            self._leave(limit)

    def _enter(self, limit: int) -> None:
        with self._lock:
            if not self._inside:
                self._original = _blas_controller().limit(limits=limit, user_api="blas")
            elif limit < min(self._inside):
                _blas_controller().limit(limits=limit, user_api="blas")
            self._inside.append(limit)

    def _leave(self, limit: int) -> None:
        with self._lock:
            self._inside.remove(limit)
            if not self._inside:
                self._original.restore_original_limits()
                self._original = None
            elif limit < (lowest := min(self._inside)):  # the lowest limit left: the others may use more threads
                _blas_controller().limit(limits=lowest, user_api="blas")


_blas_limit = _SharedBlasLimit()


def blas_threads(limit: int | None) -> AbstractContextManager[None]:
    """BLAS limited to `limit` threads inside the block (None: as configured); safe in several threads at once."""
    return _blas_limit.limit(limit)


@lru_cache(maxsize=128)
def _causal_mask(length: int) -> np.ndarray:
    """(L, L): 0 where a token may attend (itself and earlier ones), -inf above the diagonal."""
    return np.triu(np.full((length, length), -np.inf, dtype=np.float32), k=1)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU like torch's default, computed in float64."""
    wide = x.astype(np.float64)
    return (0.5 * wide * (1.0 + _erf(wide / math.sqrt(2.0)).astype(np.float64))).astype(np.float32)


def quick_gelu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-1.702 * x))


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu}


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + LAYER_NORM_EPS) * weight + bias


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """torch.nn.Linear: weight is (out, in). One 2-D product: numpy's stacked matmul with a transposed operand
    skips BLAS and runs ~30x slower."""
    out = (x.reshape(-1, x.shape[-1]) @ weight.T).reshape(*x.shape[:-1], weight.shape[0])
    return out if bias is None else out + bias


_LAYER_PARTS = (
    "layer_norm1",
    "layer_norm2",
    "mlp.fc1",
    "mlp.fc2",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
)


def expected_weights(cfg: TextEncoderConfig) -> list[str]:
    """The tensor names (without `caption_encoder.`) the forward pass reads."""
    layer = [f"{part}.{kind}" for part in _LAYER_PARTS for kind in ("weight", "bias")]
    return [
        "base.embeddings.token_embedding.weight",
        "base.embeddings.position_embedding.weight",
        *(f"base.encoder.layers.{i}.{name}" for i in range(cfg.num_hidden_layers) for name in layer),
        "base.final_layer_norm.weight",
        "base.final_layer_norm.bias",
        "clip_text_projection.weight",
        "projection.linear1.weight",
        "projection.linear2.weight",
        "projection.layer_norm.weight",
        "projection.layer_norm.bias",
    ]


class NumpyTextEmbedder:
    """`PengiTextEmbedder` without torch: same `id`, `dim` and `embed` results."""

    def __init__(self, weights: Mapping[str, np.ndarray], cfg: TextEncoderConfig, tokenizer: Tokenizer, model_id: str):
        """`weights` are the text tower's tensors without the `caption_encoder.` prefix."""
        if cfg.hidden_act not in ACTIVATIONS:
            raise CheckpointError("", f"text tower activation {cfg.hidden_act!r} is not supported by the numpy path")
        missing = sorted(set(expected_weights(cfg)) - set(weights))
        if missing:
            raise CheckpointError("", f"the text tower's weights lack {', '.join(missing[:5])} ({len(missing)} in all)")
        self.w = weights
        self.cfg = cfg
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(cfg.max_position_embeddings)
        self.id = PENGI_TEXT_PREFIX + model_id
        self.dim = int(weights["projection.layer_norm.weight"].shape[0])

    @classmethod
    def from_model_dir(cls, model_dir: ModelDir) -> NumpyTextEmbedder:
        """Maps the text tower's weights and reads the CLIP tokenizer of a `base` model directory."""
        cfg = model_dir.config.text_encoder
        if cfg is None:
            raise CheckpointError(model_dir.path, "this model has no text encoder (base_no_text_enc)")
        weights = mapped_tensors(model_dir.weights, TEXT_ENCODER_PREFIX)
        # The raw `tokenizers` backend: `encode_batch` without padding is all this path needs.
        tokenizer = FileTokenizer.from_folder(model_dir.tokenizer_dir("clip")).backend
        return cls(weights, cfg, tokenizer, model_dir.identity)

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 embeddings (N, dim)."""
        out = [self._embed_batch(part) for part in chunked(texts, batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def cut_texts(self, texts: Sequence[str]) -> list[CutText]:
        """The texts the tokenizer cuts to the tower's positions (those that leave tokens over), counted whole by
        a copy of it that cuts nothing (made only then: a query path that meets no long text pays nothing)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        cut = [text for text, encoding in zip(texts, encodings, strict=True) if encoding.overflowing]
        if not cut:
            return []
        whole = Tokenizer.from_str(self.tokenizer.to_str())
        whole.no_truncation()
        counts = [len(encoding.ids) for encoding in whole.encode_batch(cut)]
        return texts_over(cut, counts, self.cfg.max_position_embeddings, PENGI_TOWER_LIMIT)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        eos = self.cfg.eos_token_id
        # The layers are causal and CLIPTextModel pools at the first end-of-text token (position 0 when there is
        # none, as argmax gives), so nothing after that token can change the result: each text stops there.
        rows = [_through_first(encoding.ids, eos) for encoding in self.tokenizer.encode_batch(texts)]
        lengths = np.array([len(row) for row in rows])
        ids = np.concatenate([np.asarray(row, dtype=np.int64) for row in rows])
        with blas_threads(1 if ids.size <= SINGLE_THREAD_TOKENS else None):
            pooled = self._transformer(ids, lengths)
        return l2_normalise(self._projections(pooled))

    def _transformer(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The texts' tokens packed one after another (N,), no padding (every product works on real tokens only),
        -> each text's last token after the final LayerNorm (B, E)."""
        w = self.w
        ends = np.cumsum(lengths)
        texts = list(zip((ends - lengths).tolist(), ends.tolist(), strict=True))  # each text's [start, end) rows
        positions = np.concatenate([np.arange(n) for n in lengths])
        h = w["base.embeddings.token_embedding.weight"][ids] + w["base.embeddings.position_embedding.weight"][positions]
        last = self.cfg.num_hidden_layers - 1
        for layer in range(last):
            h = self._layer(h, f"base.encoder.layers.{layer}.", texts)
        # Only the pooled tokens leave the last layer: it needs every token's keys and values, nothing more of them.
        pooled = self._layer(h, f"base.encoder.layers.{last}.", texts, pooled_only=True)
        return layer_norm(pooled, w["base.final_layer_norm.weight"], w["base.final_layer_norm.bias"])

    def _layer(self, h: np.ndarray, p: str, texts: list[tuple[int, int]], *, pooled_only: bool = False) -> np.ndarray:
        """One pre-LayerNorm layer over packed tokens (N, E) -> (N, E), or (B, E) for each text's last token."""
        w = self.w
        x = layer_norm(h, w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"])
        if pooled_only:
            h = h[[end - 1 for _, end in texts]]
        h = h + self._attention(x, p + "self_attn.", texts, pooled_only)
        x = layer_norm(h, w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"])
        x = self.act(linear(x, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]))
        return h + linear(x, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])

    def _attention(self, x: np.ndarray, p: str, texts: list[tuple[int, int]], pooled_only: bool) -> np.ndarray:
        """Causal self-attention within each text; queries at every token, or at each text's last one only."""
        w = self.w
        heads = self.cfg.num_attention_heads
        width = x.shape[-1]
        head_dim = width // heads

        def project(name: str, rows: np.ndarray) -> np.ndarray:  # (n, E) -> (H, n, D)
            proj = linear(rows, w[p + name + ".weight"], w[p + name + ".bias"])
            return proj.reshape(len(rows), heads, head_dim).transpose(1, 0, 2)

        queries = x[[end - 1 for _, end in texts]] if pooled_only else x
        q, k, v = project("q_proj", queries), project("k_proj", x), project("v_proj", x)
        merged = np.empty((len(queries), width), dtype=np.float32)
        for i, (start, end) in enumerate(texts):
            rows = slice(i, i + 1) if pooled_only else slice(start, end)
            scores = (q[:, rows] @ k[:, start:end].transpose(0, 2, 1)) * np.float32(head_dim**-0.5)
            if not pooled_only:  # the last token sees its whole text: no mask
                scores += _causal_mask(end - start)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = (scores / scores.sum(-1, keepdims=True)) @ v[:, start:end]  # (H, rows, D)
            merged[rows] = attn.transpose(1, 0, 2).reshape(-1, width)
        return linear(merged, w[p + "out_proj.weight"], w[p + "out_proj.bias"])

    def _projections(self, pooled: np.ndarray) -> np.ndarray:
        """CLIP's text projection, then Pengi's Projection: LayerNorm(h1 + W2 gelu(h1)) with h1 = W1 x."""
        w = self.w
        h1 = linear(linear(pooled, w["clip_text_projection.weight"]), w["projection.linear1.weight"])
        out = h1 + linear(gelu(h1), w["projection.linear2.weight"])
        return layer_norm(out, w["projection.layer_norm.weight"], w["projection.layer_norm.bias"])
