"""Reading and writing Pengi weights.

Two formats:
- the released checkpoints (`base.pth`, `base_no_text_enc.pth`): `torch.save({"model": state_dict})`, keys possibly
  prefixed with `module.`, made with transformers 4.28 (so they carry a few buffers current transformers lacks);
- a model directory: `config.json` + `model.safetensors` (+ tokenizer files), which the rest of the project loads.
  safetensors maps tensors lazily, so the text encoder alone can be read without touching the other 1 GB.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pengi_search.errors import PengiSearchError

from .config import PengiConfig
from .hashing import file_sha256

if TYPE_CHECKING:  # torch loads only when weights do: reading a config or a model's identity stays cheap
    import torch

    from .encoders import TextEncoder
    from .model import Pengi

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1

# Buffers that transformers 4.28 saved and current versions no longer have. Matched exactly: a loose suffix test
# on "attn.bias" would also drop the real `attn.c_attn.bias` weights.
OBSOLETE_KEYS = re.compile(
    r"^caption_decoder\.gpt\.transformer\.h\.\d+\.attn\.(bias|masked_bias)$"
    r"|^caption_encoder\.base\.embeddings\.position_ids$"
)
TEXT_ENCODER_PREFIX = "caption_encoder."


class CheckpointError(PengiSearchError):
    """A checkpoint or model directory that cannot be loaded; the message says why."""


def _summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every tensor or raise one CheckpointError naming the missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
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
    if problems:
        raise CheckpointError(source, "does not match the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def clean_released_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a DistributedDataParallel `module.` prefix and drop the obsolete transformers-4.28 buffers."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not OBSOLETE_KEYS.match(k)}


def read_released_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "no such checkpoint file") from None
    except Exception as err:  # pickle, zip and torch errors all mean "not a readable checkpoint"
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({err.__class__.__name__})") from err
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, "expected {'model': state_dict} as the released Pengi checkpoints hold")
    return clean_released_state_dict(state)


def variant_of(state: Mapping[str, torch.Tensor]) -> str:
    """`base` when the checkpoint holds a CLIP text encoder, else `base_no_text_enc`."""
    return "base" if any(k.startswith(TEXT_ENCODER_PREFIX) for k in state) else "base_no_text_enc"


def load_released_checkpoint(path: str | Path, config: PengiConfig | None = None) -> Pengi:
    """Build Pengi from a released-format checkpoint; the preset matching its variant unless `config` is given."""
    from .model import Pengi

    path = Path(path)
    state = read_released_state_dict(path)
    model = Pengi(config or PengiConfig.preset(variant_of(state)))
    load_state_dict_strict(model, state, str(path))
    return model.eval()


def save_model_dir(model: Pengi, directory: str | Path, extra: dict | None = None) -> Path:
    """Write `config.json` and `model.safetensors` (tied GPT-2 weights stored once) into `directory`."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "weights_sha256": file_sha256(directory / WEIGHTS_FILE),
        **(extra or {}),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def model_identity(directory: str | Path) -> str:
    """A short name that changes when the weights change: `<name>@<first 12 hex digits of their sha256>`."""
    _, meta = read_model_config(directory)
    return f"{meta.get('name', Path(directory).name)}@{meta.get('weights_sha256', 'unknown')[:12]}"


def read_model_config(directory: str | Path) -> tuple[PengiConfig, dict]:
    """The model's configuration and the whole metadata of a model directory."""
    path = Path(directory) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text())
        return PengiConfig.from_dict(meta["config"]), meta
    except FileNotFoundError:
        raise CheckpointError(directory, f"not a model directory (no {CONFIG_FILE})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(path, f"unreadable model configuration ({err})") from err


def load_model_dir(directory: str | Path) -> Pengi:
    from safetensors.torch import load_model

    from .model import Pengi

    directory = Path(directory)
    cfg, _ = read_model_config(directory)
    model = Pengi(cfg)
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(directory, f"no {WEIGHTS_FILE}")
    missing, unexpected = load_model(model, str(weights), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            weights,
            f"does not match its config: missing {_summarise(sorted(missing)) or 'none'}; "
            f"unexpected {_summarise(sorted(unexpected)) or 'none'}",
        )
    return model.eval()


def load_text_encoder(directory: str | Path) -> TextEncoder:
    """Only Pengi's text tower and its projections, read lazily from the model directory (~250 MB at full size)."""
    from safetensors import safe_open

    from .encoders import TextEncoder

    directory = Path(directory)
    cfg, _ = read_model_config(directory)
    if cfg.text_encoder is None:
        raise CheckpointError(directory, "this model has no text encoder (base_no_text_enc)")
    encoder = TextEncoder(cfg.text_encoder, cfg.d_proj)
    with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as f:
        names = [k for k in f.keys() if k.startswith(TEXT_ENCODER_PREFIX)]  # noqa: SIM118 (safe_open is no dict)
        state = {k[len(TEXT_ENCODER_PREFIX) :]: f.get_tensor(k) for k in names}
    load_state_dict_strict(encoder, state, f"{directory / WEIGHTS_FILE} (text encoder)")
    return encoder.eval()


def load_any(path: str | Path, config: PengiConfig | None = None) -> Pengi:
    """A model directory, or a released `.pth` checkpoint."""
    path = Path(path)
    if path.is_dir():
        return load_model_dir(path)
    return load_released_checkpoint(path, config)
