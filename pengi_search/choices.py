"""The fixed choices a caller makes, as string enums: the command line offers them (Typer lists them in `--help`
and rejects anything else as bad usage) and the layers below compare against them.

Members are `str`s, so they compare equal to their values, serialise as them (JSON, SQL) and print as them.
The module imports nothing heavy: every command's `--help` loads it.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A string enum whose members print as their value ("cpu", not "Device.cpu")."""

    def __str__(self) -> str:
        return self.value


class Device(Choice):
    """Where the model runs: `auto` is CUDA when PyTorch sees a GPU, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def device_unavailable(device: str) -> str | None:
    """Why `device` ("auto", "cpu", "cuda", "cuda:1") cannot be used on this machine, or None when it can.

    Only CUDA can be missing, or one GPU of it (`cuda:5` on a machine with two, which CUDA itself would refuse only
    once the model moves there). torch is imported only when CUDA is asked for, so that checking `--device` as the
    command line is read costs `auto` and `cpu` nothing (`query` and an `index` run with nothing to do never load
    torch otherwise)."""
    if not device.startswith(Device.cuda.value):
        return None
    import torch

    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU on this machine; use cpu or auto"
    number, count = _gpu_number(device), torch.cuda.device_count()
    if number is None or number < count:
        return None
    seen = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
    return f"PyTorch sees {count} CUDA GPU{'s' if count > 1 else ''} on this machine ({seen})"


def _gpu_number(device: str) -> int | None:
    """The GPU that `cuda:N` names; None for `cuda` (the current one) and for what names no number (torch says)."""
    _, colon, number = device.partition(":")
    return int(number) if colon and number.isdigit() else None


class By(Choice):
    """What a search returns: the best window of each file, or every matching window."""

    file = "file"
    window = "window"


class IndexType(Choice):
    """The FAISS index a library's vectors go in (`index_types` builds and searches each)."""

    flat = "flat"  # exact search; a new library's default
    hnsw = "hnsw"  # HNSW graph: fast and accurate, slow to build, the memory of flat plus the graph
    ivfpq = "ivfpq"  # IVF-PQ: compressed, for millions of windows; built flat below IVFPQ_MIN_VECTORS


class Method(Choice):
    """How `classify` scores labels: caption vs label embeddings (the paper's default), or label likelihood."""

    text = "text"
    loglik = "loglik"


class LoglikScore(Choice):
    """A label's likelihood score: mean log-probability per token, or their sum (favours short labels)."""

    mean = "mean"
    total = "total"


class StopRule(Choice):
    """When an answer ends. `original`: on the lone space (token 220) only, as the original Pengi code, which
    reproduces it exactly; `both`: also on <|endoftext|> (50256), which the original generates past."""

    original = "original"
    both = "both"


class LongPrompt(Choice):
    """A prompt longer than the model's 40 prompt tokens: `cut` to its first 40 as the original does (with a
    warning), or `refuse` it."""

    cut = "cut"
    refuse = "refuse"


class Rank(Choice):
    """How a text query ranks windows: by their generated captions (the paper's retrieval), by Pengi's audio
    embedding against the query's text embedding (works before any caption exists), or a weighted sum of both."""

    caption = "caption"
    audio = "audio"
    hybrid = "hybrid"


DEFAULT_HYBRID_WEIGHT = 0.5  # the caption cosine's weight in a hybrid ranking; the audio cosine gets the rest
EXACT_MODE = "exact"  # how a text was generated without --fast, as `generated_texts.mode` records it


def decoding_settings(beam: int, max_len: int, stop: StopRule, *, fast: bool = False) -> str:
    """The decoding settings a run decodes with (`--beam`, `--max-len`, `--stop`) as `generated_texts.decoding`
    records them beside each text: `beam=3 max_len=30 stop=both`. Texts with equal records were decoded alike.
    `fast`: `--fast` decodes greedily (`fast_mode`), one beam whatever `--beam` asks, and records that beam: two
    --fast runs asking other beams write the same answers, and a report names the beam that wrote them."""
    return f"beam={1 if fast else beam} max_len={max_len} stop={StopRule(stop).value}"


class Captions(Choice):
    """When `index` writes captions: in the same run, right after every window's audio embedding is stored, or
    in a later `index` run (the library is searchable by sound, and by text through the audio ranking, meanwhile)."""

    now = "now"
    later = "later"
