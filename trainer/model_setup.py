"""The model to train: built from a checkpoint or from scratch, with its tokenizers, freezing and dropout.

From scratch, every pretrained part comes from local files, nothing is downloaded: the audio encoder
(`trainer.audio_parts`: HTSAT, possibly from a CLAP checkpoint, aisfx's CNN or a transformers audio model), the
language model with its tokenizer (`trainer.language_parts`: a transformers directory or a GGUF file) and CLIP's
text tower. Freezing follows the paper: the language model and the text encoder are frozen and kept in eval mode,
the audio encoder, the projections and the mappers are trained; a pretrained audio encoder can be frozen too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, CLIPModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from pengi_search.checkpoint import CheckpointError, load_state_dict_strict
from pengi_search.config import PengiConfig
from pengi_search.model import Pengi
from pengi_search.tokenization import TokenizerNotFoundError, Tokenizers, load_tokenizer
from trainer.audio_parts import configure_audio, load_audio_weights
from trainer.config import ConfigError, FreezeSection, ModelSection, TrainConfig
from trainer.data import read_manifest
from trainer.language_parts import (
    decoder_for,
    fit_decoder_to_tokenizer,
    language_model_tokenizer,
    load_language_model_weights,
    missing_tokenizer,
    train_bpe_tokenizer,
)

# HTSAT's AudioSet classification head: stored in checkpoints but outside Pengi's forward, so it gets no
# gradient; it stays frozen (DistributedDataParallel would otherwise wait for its gradients).
UNUSED_MODULES = ("audio_encoder.base.htsat.tscam_conv", "audio_encoder.base.htsat.head")
TRAINED_TOKENIZER_DIR = "tokenizer"  # in the run's output_dir: the BPE trained for it, reused on resume and export


def build_model(config: TrainConfig, source: Path, *, save_tokenizer: bool = True) -> tuple[Pengi, Tokenizers]:
    """The model and its tokenizers as `config.model` describes them; `source` (the config file) names errors.
    `save_tokenizer` False (a dry run): a tokenizer trained for the run is not written to its output_dir."""
    section = config.model
    # transformers' "Loading weights" bar for each pretrained part (CLIP, a language model, an audio model) is noise
    # between the run's own lines, a line of carriage returns in a log.
    transformers_logging.disable_progress_bar()
    if section.init is not None:
        model = Pengi.from_pretrained(section.init, _fine_tune_architecture(section, source))
        tokenizers = load_tokenizers(section, model.cfg)
    else:
        model, tokenizers = _build_from_scratch(config, source, save_tokenizer)
    _check_tokenizers_fit(model, tokenizers, source)
    return model, tokenizers


def _check_tokenizers_fit(model: Pengi, tokenizers: Tokenizers, source: Path) -> None:
    """Every id a tokenizer writes must be a row of its model's embeddings, and the text tower must end texts where
    the CLIP tokenizer does: it pools its vector at that token and prompts are padded with it. A CLIP directory's
    tokenizer of another vocabulary than the architecture's defaults (CLIP's own) otherwise fails mid-step with an
    index error, or, with a smaller id, reads every text vector at the wrong token without a word."""
    vocabulary = model.gpt.get_input_embeddings().num_embeddings
    if len(tokenizers.gpt2) > vocabulary:
        raise ConfigError(
            source,
            f"the tokenizer has {len(tokenizers.gpt2)} tokens, more than the language model's vocabulary "
            f"({vocabulary})",
        )
    text = model.cfg.text_encoder
    if tokenizers.clip is None or text is None:
        return
    if len(tokenizers.clip) > text.vocab_size:
        raise ConfigError(
            source,
            f"the CLIP tokenizer has {len(tokenizers.clip)} tokens, more than the text encoder's vocabulary "
            f"(text_encoder.vocab_size {text.vocab_size})",
        )
    end = tokenizers.clip.eos_token_id
    if end != text.eos_token_id:
        raise ConfigError(
            source,
            f"the CLIP tokenizer ends a text with token {end}, the text encoder with token {text.eos_token_id}: "
            f"set the architecture's text_encoder.eos_token_id to {end} (and bos_token_id to the tokenizer's)",
        )


def _build_from_scratch(config: TrainConfig, source: Path, save_tokenizer: bool) -> tuple[Pengi, Tokenizers]:
    section = config.model
    cfg = resolve_architecture(section.architecture, source)
    if section.language_model is not None:
        cfg = dataclasses.replace(cfg, decoder=decoder_for(cfg.decoder, section.language_model))
    audio, audio_weights = configure_audio(
        cfg.audio, section.audio_encoder, section.audio_weights, section.audio_pooling
    )
    cfg = dataclasses.replace(cfg, audio=audio)
    lm_tokenizer = scratch_tokenizer(config, source, save_tokenizer)
    if section.train_tokenizer is not None:
        cfg = dataclasses.replace(cfg, decoder=fit_decoder_to_tokenizer(cfg.decoder, lm_tokenizer))
    model = Pengi(cfg)
    load_audio_weights(model, audio_weights)
    if section.language_model is not None:
        load_language_model_weights(model.gpt, section.language_model)
    if section.text_encoder is not None:
        load_clip_text_encoder(model, section.text_encoder)
    clip = None
    if cfg.use_text_encoder:
        clip = _tokenizer("clip", section.clip_tokenizer or _with_tokenizer(section.text_encoder), None)
    return model, Tokenizers(cfg, lm_tokenizer, clip)


def scratch_tokenizer(config: TrainConfig, source: Path, save: bool = True) -> PreTrainedTokenizerBase:
    """The language model's tokenizer for a run from scratch: an explicit directory, the language model's own,
    the BPE trained for this run (trained now on its manifests the first time), else GPT-2's from the cache."""
    section = config.model
    if section.gpt2_tokenizer is not None:
        return _tokenizer("gpt2", section.gpt2_tokenizer, None)
    if section.language_model is not None:
        own = language_model_tokenizer(section.language_model)
        if own is not None:
            return own
    if section.train_tokenizer is not None:
        return trained_tokenizer(config, save)
    try:
        return load_tokenizer("gpt2", None)
    except TokenizerNotFoundError:
        raise missing_tokenizer(str(source)) from None


def trained_tokenizer(config: TrainConfig, save: bool = True) -> PreTrainedTokenizerBase:
    """The run's own BPE, from `<output_dir>/tokenizer` or trained on the manifests' prompts and answers."""
    folder = config.output_dir / TRAINED_TOKENIZER_DIR
    if folder.is_dir():
        return AutoTokenizer.from_pretrained(folder)
    manifests = [path for path in (config.data.train, config.data.validation) if path is not None]
    examples = [example for path in manifests for example in read_manifest(path)]
    texts = sorted({text for example in examples for text in (example.prompt, example.answer)})
    tokenizer = train_bpe_tokenizer(texts, config.model.train_tokenizer)
    if save:
        tokenizer.save_pretrained(folder)
    return tokenizer


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
    """Fine-tuning: explicit tokenizer paths first, then the init model directory, then the HF cache."""
    init_dir = section.init if section.init is not None and section.init.is_dir() else None
    gpt2 = _tokenizer("gpt2", section.gpt2_tokenizer, init_dir)
    clip = None
    if cfg.use_text_encoder:
        clip = _tokenizer("clip", section.clip_tokenizer, init_dir)
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


# --- Freezing, train mode, dropout, parts -----------------------------------------------------------------------


def model_parts(model: Pengi) -> dict[str, list[nn.Module]]:
    """The parts `optimization.part_lr` names, each the modules it covers."""
    decoder = model.caption_decoder
    return {
        "audio_encoder": [model.audio_encoder.base],
        "audio_projection": [m for m in (model.audio_encoder.pool, model.audio_encoder.projection) if m is not None],
        "mappers": [decoder.audio_project, decoder.text_project],
        "language_model": [decoder.gpt],
        "text_encoder": [model.caption_encoder] if model.caption_encoder is not None else [],
    }


def frozen_modules(model: Pengi, freeze: FreezeSection) -> list[nn.Module]:
    """The parts that do not train: they get no gradients and stay in eval mode (no dropout, no BN updates)."""
    names = dict(model.named_modules())
    modules = [names[name] for name in UNUSED_MODULES if name in names]
    if freeze.language_model:
        modules.append(model.caption_decoder.gpt)
    if freeze.text_encoder and model.caption_encoder is not None:
        modules.append(model.caption_encoder)
    if freeze.audio_encoder:
        modules.append(model.audio_encoder)
    elif freeze.audio_backbone:
        modules.append(model.audio_encoder.base)
    return modules


def apply_freezing(model: Pengi, freeze: FreezeSection) -> list[nn.Module]:
    """Turn off gradients of the frozen parts; returns them (for `set_train_mode`)."""
    frozen = frozen_modules(model, freeze)
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def audio_backbone_frozen(model: Pengi) -> bool:
    return not any(parameter.requires_grad for parameter in model.audio_encoder.base.parameters())


def caches_features(config: TrainConfig, model: Pengi) -> bool:
    """Whether a run of `model` (frozen as `config` says) encodes each clip once and trains on the cached outputs,
    rather than decoding its clips every epoch: `Trainer` and the dry run decide here."""
    return config.data.cache_features and audio_backbone_frozen(model)


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


def parameter_groups(model: Pengi, lr: float, part_lr: dict[str, float] | None) -> list[dict]:
    """Adam's parameter groups: one per part with its own learning rate, one for the rest (at `lr`)."""
    groups: list[dict] = []
    claimed: set[int] = set()
    for part, modules in model_parts(model).items():
        if part not in (part_lr or {}):
            continue
        params = [p for module in modules for p in module.parameters() if p.requires_grad and id(p) not in claimed]
        claimed.update(id(p) for p in params)
        if params:
            groups.append({"params": params, "lr": float(part_lr[part]), "part": part})
    rest = [p for p in trainable_parameters(model) if id(p) not in claimed]
    if rest:
        groups.insert(0, {"params": rest, "lr": lr, "part": "default"})
    return groups


def logged_rates(groups: list[dict], scheduled: float) -> dict[str, float]:
    """The learning rates a "train" record logs, read from the groups of `parameter_groups` as the scheduler left
    them: `lr`, the rate of the parameters without a rate of their own, and `lr_<part>` for each part training at
    its own. `lr` is read, not computed from the configuration, because a resumed run keeps its checkpoint's rates
    whatever `optimization.lr` now says; when every such parameter is frozen it is `scheduled` (`optimization.lr`
    as scheduled), so that the column is always there and means the same."""
    rates = {f"lr_{group['part']}": group["lr"] for group in groups}
    return {"lr": rates.pop("lr_default", scheduled), **rates}


def frozen_fingerprint(model: nn.Module) -> dict[str, float]:
    """Per frozen tensor, the sum of its values in float64: resuming checks the frozen weights are the same."""
    with torch.no_grad():
        return {name: float(p.double().sum()) for name, p in model.named_parameters() if not p.requires_grad}
