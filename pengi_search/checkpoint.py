"""Reading Pengi's weights into a model, strictly: one error names every missing, unexpected or mis-shaped key.

Two sources:
- the released checkpoints (`base.pth`, `base_no_text_enc.pth`): `torch.save({"model": state_dict})`, keys possibly
  prefixed with `module.`, made with transformers 4.28 (so they carry a few buffers current transformers lacks);
- the `model.safetensors` of a model directory (see `model_dir`), which the rest of the project loads. safetensors
  maps tensors lazily, so the text encoder alone can be read without touching the other 1 GB.

`Pengi.from_pretrained` is the entry point; this module holds the formats.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pengi_search.errors import PengiSearchError, first_line
from pengi_search.paths import named

if TYPE_CHECKING:  # torch loads only when weights do: reading a config or a model's identity stays cheap
    import torch

# Buffers that transformers 4.28 saved and current versions no longer have. Matched exactly: a loose suffix test
# on "attn.bias" would also drop the real `attn.c_attn.bias` weights.
OBSOLETE_KEYS = re.compile(
    r"^caption_decoder\.gpt\.transformer\.h\.\d+\.attn\.(bias|masked_bias)$"
    r"|^caption_encoder\.base\.embeddings\.position_ids$"
)
TEXT_ENCODER_PREFIX = "caption_encoder."


class CheckpointError(PengiSearchError):
    """A checkpoint or model directory that cannot be loaded; the message says why."""


def unreadable_weights(path: Path, err: BaseException) -> CheckpointError:
    """How every reader of a `model.safetensors` says it cannot read it: a file cut short (a copy that stopped, a
    full disk) or damaged, with what the reader found."""
    return CheckpointError(path, f"not a readable safetensors file ({first_line(err)})")


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose tensors are not those of the configured model (other sizes, or another model)."""


def _summarise(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every tensor or raise one CheckpointError naming the missing, unexpected and mis-shaped keys."""
    if problems := state_problems(model.state_dict(), state):
        raise CheckpointMismatchError(source, "does not match the model: " + problems)
    model.load_state_dict(state, strict=True)


def state_problems(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], may_lack: Collection[str] = ()
) -> str | None:
    """How the tensors of `state` differ from the model's (`expected`): its missing keys (but those in `may_lack`),
    unexpected keys and wrong shapes (the checkpoint's != the model's), a few of each; None when they fit."""
    missing = sorted(set(expected) - set(state) - set(may_lack))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = [
        f"{label}: {_summarise(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshaped))
        if keys
    ]
    return "; ".join(problems) or None


def clean_released_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a DistributedDataParallel `module.` prefix and drop the obsolete transformers-4.28 buffers."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not OBSOLETE_KEYS.match(k)}


def load_torch_file(path: Path, what: str = "PyTorch checkpoint", *, mmap: bool = False) -> Any:
    """`torch.load` of tensors and plain containers only (no code runs), with one-line errors naming `what`;
    `mmap`: the tensors are mapped from the file, not read, for a caller that wants only the plain values."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(named(path), f"no such {what}") from None
    except Exception as err:  # pickle, zip and torch errors all mean "not a readable checkpoint"
        raise CheckpointError(named(path), f"not a readable {what} ({err.__class__.__name__})") from err


def read_released_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    raw = load_torch_file(path)
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, "expected {'model': state_dict} as the released Pengi checkpoints hold")
    return clean_released_state_dict(state)


def variant_of(state: Mapping[str, torch.Tensor]) -> str:
    """`base` when the checkpoint holds a CLIP text encoder, else `base_no_text_enc`."""
    return "base" if any(k.startswith(TEXT_ENCODER_PREFIX) for k in state) else "base_no_text_enc"


def load_safetensors_strict(model: torch.nn.Module, path: Path, *, mapped: bool = False) -> None:
    """Load a `model.safetensors` into `model` or raise one CheckpointError. Tensors the model ties together
    (GPT-2's input and output embeddings) are stored once.

    `mapped`: the file's tensors become the model's own. safetensors maps the file (copy on write), so nothing is
    copied and each page is read when first used (the model's uninitialised tensors are dropped, never filled).
    Those tensors lie where the file puts them, not aligned as PyTorch aligns its own, and MKL's products round
    differently by alignment: for models whose products do not depend on it (oneDNN's, a GPU's; see
    `inference.Engine.load`). The project replaces a weights file by renaming a new one over it, never rewrites it
    in place (`Pengi.save_pretrained`, downloads), so a mapped model keeps the file it loaded. Otherwise the tensors
    are copied into the model's.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(path.parent, f"no {path.name}")
    own = model.state_dict(keep_vars=True)
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise unreadable_weights(path, err) from err
    if mapped:
        state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=mapped)
    tied = _tied_to_loaded(own, state)
    if mapped:
        for name, loaded in tied.items():
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, model.get_parameter(loaded))
    missing = set(missing) - set(tied)
    if missing or unexpected:
        raise CheckpointError(
            path,
            f"does not match its config: missing {_summarise(sorted(missing)) or 'none'}; "
            f"unexpected {_summarise(sorted(unexpected)) or 'none'}",
        )


def _tied_to_loaded(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Names missing from `state` whose tensor in `own` (before loading) is shared with a name in `state`: each
    with that loaded name."""
    by_storage: dict[int, list[str]] = {}
    for name, tensor in own.items():
        if tensor.numel():  # empty tensors may all report address 0
            by_storage.setdefault(tensor.untyped_storage().data_ptr(), []).append(name)
    tied = {}
    for names in by_storage.values():
        loaded = [n for n in names if n in state]
        tied.update({n: loaded[0] for n in names if loaded and n not in state})
    return tied


def read_safetensors_part(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named `prefix...` of a safetensors file (keys without the prefix); the others are not read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = [k for k in f.keys() if k.startswith(prefix)]  # noqa: SIM118 (safe_open is no dict)
            return {k[len(prefix) :]: f.get_tensor(k) for k in names}
    except (SafetensorError, OSError) as err:
        raise unreadable_weights(path, err) from err
