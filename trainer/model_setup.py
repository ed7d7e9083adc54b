"""The model to train: built from a checkpoint or from scratch, with its tokenizers, freezing and dropout.

From scratch, the language model and the CLIP text tower come from local Hugging Face directories (what
`save_pretrained` writes); nothing is downloaded. Freezing follows the paper: the language model and the text
encoder are frozen and kept in eval mode, the audio encoder, the projections and the mappers are trained.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPModel, PreTrainedTokenizerBase

from pengi_search.checkpoint import CheckpointError, load_state_dict_strict
from pengi_search.config import PengiConfig
from pengi_search.model import Pengi
from pengi_search.tokenization import Tokenizers, load_tokenizer
from trainer.config import ConfigError, FreezeSection, ModelSection

# HTSAT's AudioSet classification head: stored in checkpoints but outside Pengi's forward, so it gets no
# gradient; it stays frozen (DistributedDataParallel would otherwise wait for its gradients).
UNUSED_MODULES = ("audio_encoder.base.htsat.tscam_conv", "audio_encoder.base.htsat.head")


def build_model(section: ModelSection, source: Path) -> tuple[Pengi, Tokenizers]:
    """The model and its tokenizers as `section` describes them; `source` (the config file) names errors."""
    if section.init is not None:
        model = Pengi.from_pretrained(section.init, _fine_tune_architecture(section, source))
    else:
        model = Pengi(resolve_architecture(section.architecture, source))
        if section.language_model is not None:
            load_language_model(model, section.language_model)
        if section.text_encoder is not None:
            load_clip_text_encoder(model, section.text_encoder)
    tokenizers = load_tokenizers(section, model.cfg)
    if len(tokenizers.gpt2) > model.cfg.decoder.vocab_size:
        raise ConfigError(
            source,
            f"the GPT-2 tokenizer has {len(tokenizers.gpt2)} tokens, more than the language model's vocabulary "
            f"({model.cfg.decoder.vocab_size})",
        )
    return model, tokenizers


def resolve_architecture(architecture: str | dict | None, source: Path) -> PengiConfig:
    """A preset name ("base", "base_no_text_enc") or a mapping of `PengiConfig` fields."""
    try:
        if isinstance(architecture, str):
            return PengiConfig.preset(architecture)
        if isinstance(architecture, dict):
            return PengiConfig.from_dict(architecture)
    except (TypeError, ValueError) as error:
        raise ConfigError(source, f"model.architecture: {error}") from None
    raise ConfigError(source, "model.architecture must be a preset name or a mapping of PengiConfig fields")


def _fine_tune_architecture(section: ModelSection, source: Path) -> PengiConfig | None:
    if section.architecture is None:
        return None
    if section.init is not None and section.init.is_dir():
        raise ConfigError(source, "model.architecture: a model directory carries its own configuration")
    return resolve_architecture(section.architecture, source)


def load_language_model(model: Pengi, directory: Path) -> None:
    """Weights of a causal LM saved with `save_pretrained` into the model's decoder; shapes must match."""
    try:
        language_model = AutoModelForCausalLM.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise CheckpointError(directory, f"not a loadable language model ({error})") from None
    load_state_dict_strict(model.gpt, language_model.state_dict(), f"language model {directory}")


def load_clip_text_encoder(model: Pengi, directory: Path) -> None:
    """The text tower and text projection of a `CLIPModel` directory into the model's text encoder."""
    if model.caption_encoder is None:
        raise CheckpointError(directory, "this architecture has no text encoder (base_no_text_enc)")
    try:
        clip = CLIPModel.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise CheckpointError(directory, f"not a loadable CLIP model ({error})") from None
    encoder = model.caption_encoder
    load_state_dict_strict(encoder.base, clip.text_model.state_dict(), f"CLIP text tower {directory}")
    projection = clip.text_projection.state_dict()
    load_state_dict_strict(encoder.clip_text_projection, projection, f"CLIP text projection {directory}")


def load_tokenizers(section: ModelSection, cfg: PengiConfig) -> Tokenizers:
    """Explicit tokenizer paths first, then the init model directory or the LM/CLIP directory, then the HF cache."""
    init_dir = section.init if section.init is not None and section.init.is_dir() else None
    gpt2 = _tokenizer("gpt2", section.gpt2_tokenizer or _with_tokenizer(section.language_model), init_dir)
    clip = None
    if cfg.use_text_encoder:
        clip = _tokenizer("clip", section.clip_tokenizer or _with_tokenizer(section.text_encoder), init_dir)
    return Tokenizers(cfg, gpt2, clip)


def _with_tokenizer(directory: Path | None) -> Path | None:
    return directory if directory is not None and (directory / "tokenizer_config.json").is_file() else None


def _tokenizer(kind: str, explicit: Path | None, model_dir: Path | None) -> PreTrainedTokenizerBase:
    if explicit is None:
        return load_tokenizer(kind, model_dir)
    try:
        return AutoTokenizer.from_pretrained(explicit)
    except (OSError, ValueError) as error:
        raise CheckpointError(explicit, f"not a loadable {kind} tokenizer ({error})") from None


# --- Freezing, train mode, dropout ---------------------------------------------------------------------------


def frozen_modules(model: Pengi, freeze: FreezeSection) -> list[nn.Module]:
    """The parts that do not train: they get no gradients and stay in eval mode (no dropout, no BN updates)."""
    modules = [model.get_submodule(name) for name in UNUSED_MODULES]
    if freeze.language_model:
        modules.append(model.caption_decoder.gpt)
    if freeze.text_encoder and model.caption_encoder is not None:
        modules.append(model.caption_encoder)
    if freeze.audio_encoder:
        modules.append(model.audio_encoder)
    return modules


def apply_freezing(model: Pengi, freeze: FreezeSection) -> list[nn.Module]:
    """Turn off gradients of the frozen parts; returns them (for `set_train_mode`)."""
    frozen = frozen_modules(model, freeze)
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def set_train_mode(model: Pengi, frozen: list[nn.Module], freeze: FreezeSection) -> None:
    """Train mode for what trains; eval mode for the frozen parts (and BatchNorm, when its statistics are)."""
    model.train()
    for module in frozen:
        module.eval()
    if freeze.batch_norm_statistics:
        for module in _batch_norms(model):
            module.eval()


def _batch_norms(model: nn.Module) -> Iterator[nn.Module]:
    return (module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm))


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every Dropout layer's probability (GPT-2 reads its attention dropout from these layers too)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def frozen_fingerprint(model: nn.Module) -> dict[str, float]:
    """Per frozen tensor, the sum of its values in float64: resuming checks the frozen weights are the same."""
    with torch.no_grad():
        return {name: float(p.double().sum()) for name, p in model.named_parameters() if not p.requires_grad}
