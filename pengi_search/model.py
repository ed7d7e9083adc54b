"""Pengi: audio + text prompt -> a prefix of GPT-2 input embeddings -> generated text.

    wave (B, 308700) --HTSAT--> (B, 768) --Projection--> audio_embed (B, d_proj) --L2 norm--> audio mapper --+
    prompt ids (B, 40) --CLIP text--> (B, d_proj) --[L2 norm]--> text mapper -----------------------------+--> prefix
                        (base_no_text_enc: GPT-2 token embeddings (B, 40, E) --> sequence mapper)            (B, 2L, E)

GPT-2 continues from the prefix (optionally followed by the embeddings of an "additional text").
Module names follow the released checkpoint: `audio_encoder`, `caption_encoder`, `caption_decoder.{gpt,
audio_project,text_project}`. `Pengi.from_pretrained` loads a released checkpoint, a model directory or an installed
model; `save_pretrained` writes a model directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import (
    CheckpointError,
    load_safetensors_strict,
    load_state_dict_strict,
    read_released_state_dict,
    variant_of,
)
from .config import DecoderConfig, PengiConfig
from .encoders import AudioEncoder, TextEncoder
from .gpt2 import GPT2LM, GPT2Settings
from .hashing import file_sha256
from .kv_cache import decoder_and_head
from .mapper import EmbeddingMapper, Mapper
from .model_dir import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, ModelDir, is_model_dir, model_path
from .paths import as_path, models_dir
from .written_aside import written_aside

if TYPE_CHECKING:
    from transformers import GPT2Config

    from .tokenization import Tokenizers


def gpt2_fields(cfg: DecoderConfig) -> dict[str, Any]:
    # The fields of DecoderConfig but `hf_config` are GPT2Config fields of the same name; GPT-2 begins with <eos>.
    sizes = {name: value for name, value in dataclasses.asdict(cfg).items() if name != "hf_config"}
    return {**sizes, "bos_token_id": cfg.eos_token_id}


def gpt2_settings(cfg: DecoderConfig) -> GPT2Settings:
    """What the project's GPT-2 is built from (no transformers import)."""
    return GPT2Settings(**gpt2_fields(cfg))


def gpt2_config(cfg: DecoderConfig) -> GPT2Config:
    """The same as transformers' `GPT2Config`, for transformers' GPT-2 (training from a pretrained one, tests)."""
    from transformers import GPT2Config  # the configuration only: no model code

    return GPT2Config(**gpt2_fields(cfg))


def language_model(cfg: DecoderConfig) -> nn.Module:
    """GPT-2 (the released models; this project's own, see `gpt2`), or the transformers causal LM that
    `cfg.hf_config` describes (transformers' model code is imported for that one only)."""
    if cfg.hf_config is None:
        return GPT2LM(gpt2_settings(cfg))
    from transformers import AutoConfig, AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg.hf_config))


@contextlib.contextmanager
def skipped_initialisation() -> Iterator[None]:
    """Modules built inside draw no random weights: every `torch.nn.init` function returns its tensor untouched
    (layers initialise through them, as do `gpt2` and `clip_text`). For models whose weights are loaded next."""
    names = [name for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")]
    saved = {name: getattr(nn.init, name) for name in names}

    def untouched(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    try:
        for name in names:
            setattr(nn.init, name, untouched)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


class PrefixDecoder(nn.Module):
    """The language model (`gpt`, GPT-2 by default) and the two mappers that write its prefix."""

    def __init__(self, cfg: PengiConfig):
        super().__init__()
        self.gpt = language_model(cfg.decoder)
        E = self.gpt.get_input_embeddings().embedding_dim
        self.audio_project = EmbeddingMapper(cfg.d_proj, E, cfg.mapper)
        self.text_project: Mapper = (
            EmbeddingMapper(cfg.d_proj, E, cfg.mapper) if cfg.use_text_encoder else Mapper(E, cfg.mapper)
        )


class Pengi(nn.Module):
    def __init__(self, cfg: PengiConfig):
        super().__init__()
        self.cfg = cfg
        self.audio_encoder = AudioEncoder(cfg.audio, cfg.d_proj)
        self.caption_encoder = TextEncoder(cfg.text_encoder, cfg.d_proj) if cfg.text_encoder else None
        self.caption_decoder = PrefixDecoder(cfg)

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike[str] | ModelDir, config: PengiConfig | None = None, *, mapped: bool = False
    ) -> Pengi:
        """Pengi in eval mode, from a model directory (or a `ModelDir`), the name of an installed model, or a
        released-format `.pth` checkpoint. `config` is for checkpoints only: it replaces the released preset
        that the checkpoint's variant selects (a model directory carries its own configuration). `mapped`: a
        model directory's weights stay memory-mapped instead of copied (see `checkpoint.load_safetensors_strict`)."""
        if isinstance(source, ModelDir):
            return cls._from_model_dir(source, config, mapped)
        path = as_path(source)  # a path given on the command line keeps its text as typed, for messages
        if not path.exists() and is_model_dir(models_dir() / os.fspath(source)):
            path = models_dir() / os.fspath(source)
        elif not path.exists() and not path.suffix:  # no checkpoint file's name: a model's, missing as `--model` says
            path = model_path(os.fspath(source))  # raises: `no Pengi model base is installed: run ... fetch base`
        if path.is_dir():
            return cls._from_model_dir(ModelDir.read(path), config, mapped)
        state = read_released_state_dict(path)
        model = cls._uninitialized(config or PengiConfig.preset(variant_of(state)))
        load_state_dict_strict(model, state, str(path))
        return model.eval()

    @classmethod
    def _from_model_dir(cls, model_dir: ModelDir, config: PengiConfig | None, mapped: bool) -> Pengi:
        if config is not None:
            raise CheckpointError(model_dir.path, "a model directory carries its own configuration")
        model = cls._uninitialized(model_dir.config)
        load_safetensors_strict(model, model_dir.weights, mapped=mapped)
        return model.eval()

    @classmethod
    def _uninitialized(cls, cfg: PengiConfig) -> Pengi:
        """A model whose every weight is loaded next: random initialisation (seconds at full size) is skipped."""
        if cfg.decoder.hf_config is None:
            with skipped_initialisation():
                return cls(cfg)
        from transformers.initialization import no_init_weights  # transformers' own models skip theirs this way

        with no_init_weights():
            model = cls(cfg)
        model.gpt.tie_weights()  # transformers ties the LM's input and output embeddings in the skipped step
        return model

    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        tokenizers: Tokenizers | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write a model directory: `model.safetensors` (tied GPT-2 weights stored once), `config.json` (with the
        weights' sha256 and the `extra` metadata, e.g. a name) and, when given, the tokenizers."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Written aside, then renamed over the old file: a process that has the old one mapped (`Engine.load`) keeps
        # reading it, where rewriting the file in place would pull the pages from under it.
        with written_aside(directory / WEIGHTS_FILE) as partial:
            save_model(self, str(partial))
        meta = {
            "format_version": FORMAT_VERSION,
            "config": self.cfg.to_dict(),
            "weights_sha256": file_sha256(directory / WEIGHTS_FILE),
            **(extra or {}),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if tokenizers is not None:
            tokenizers.save(directory)
        return directory

    @property
    def gpt(self) -> nn.Module:
        return self.caption_decoder.gpt

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) language-model ids -> (B, T, E)"""
        return self.gpt.get_input_embeddings()(ids)

    def encode_audio(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> audio_embed (B, d_proj), not normalised (Pengi's audio embedding)."""
        return self.audio_encoder(wave)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) CLIP ids -> text_embed (B, d_proj), not normalised. Only the `base` variant has it."""
        if self.caption_encoder is None:
            raise ValueError("this Pengi model has no text encoder (base_no_text_enc)")
        return self.caption_encoder(input_ids, attention_mask)

    def audio_prefix(self, audio_embed: torch.Tensor) -> torch.Tensor:
        """(B, d_proj) -> (B, L, E). The audio embedding is always L2-normalised first."""
        return self.caption_decoder.audio_project(F.normalize(audio_embed, dim=-1))

    def text_prefix(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool | None = None
    ) -> torch.Tensor:
        """Prompt tokens (B, T) -> (B, L, E).

        `base`: CLIP embedding, L2-normalised when `normalize` (default: the config's choice; the reference's
        public `generate` skips it). `base_no_text_enc`: the prompt's GPT-2 token embeddings, no embedding step.
        """
        project = self.caption_decoder.text_project
        if self.caption_encoder is None:
            return project(self.token_embeddings(input_ids))
        text_embed = self.encode_text(input_ids, attention_mask)
        if self.cfg.normalize_text_embedding if normalize is None else normalize:
            text_embed = F.normalize(text_embed, dim=-1)
        return project(text_embed)

    def prefix(self, wave: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, samples), (B, T) -> [audio prefix ; text prefix] (B, 2L, E)."""
        return self.embedding_prefix(self.encode_audio(wave), input_ids, attention_mask)

    def embedding_prefix(
        self, audio_embed: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, d_proj) audio embeddings, (B, T) prompt ids -> [audio prefix ; text prefix] (B, 2L, E)."""
        return torch.cat([self.audio_prefix(audio_embed), self.text_prefix(input_ids, attention_mask)], 1)

    def logits(self, prefix: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B, P, E) prefix + (B, T) answer ids -> (B, T, vocab) logits predicting each answer.
        The vocabulary projection runs on those T positions and one more (the last answer token's, unread), not on
        the prefix's P - 1 before them."""
        T = answer_ids.shape[1]
        embeds = torch.cat([prefix, self.token_embeddings(answer_ids)], dim=1)
        out = self.gpt(inputs_embeds=embeds, logits_to_keep=T + 1).logits  # (B, T + 1, vocab)
        return out[:, -(T + 1) : -1]  # counted from the end: right whether or not the model kept only T + 1

    def answer_nll(self, prefix: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) negative log-likelihood of each answer token given the prefix and the tokens before it."""
        logp = self.logits(prefix, answer_ids).float().log_softmax(dim=-1)
        return -logp.gather(-1, answer_ids[..., None]).squeeze(-1)

    def real_answer_nll(
        self, prefix: torch.Tensor, answer_ids: torch.Tensor, answer_mask: torch.Tensor
    ) -> torch.Tensor:
        """(N,) float32 negative log-likelihood of each real (mask == 1) answer token, row by row: `answer_nll`
        less the padding. The vocabulary projection and the cross-entropy run on those N positions alone (each
        the hidden state before its token), not on the padding nor the prefix: in training the projection is most
        of the language model's activation memory (B x T x 50,257 floats, its log-softmax as many again)."""
        real = answer_mask.bool()
        targets = answer_ids[real]
        split = _body_and_head(self.gpt)
        if split is None:  # a model whose logits are not a projection of its last hidden state: all of them
            logits = self.logits(prefix, answer_ids)[real]
        else:
            body, head = split
            T = answer_ids.shape[1]
            hidden = body(torch.cat([prefix, self.token_embeddings(answer_ids)], dim=1))
            logits = head(hidden[:, -(T + 1) : -1][real])  # position t predicts token t + 1
        return F.cross_entropy(logits.float(), targets, reduction="none")

    def answer_loss(self, prefix: torch.Tensor, answer_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
        """Mean NLL over the real (mask == 1) answer tokens: the paper's training loss (its equation 3)."""
        return self.real_answer_nll(prefix, answer_ids, answer_mask).mean()


def _body_and_head(gpt: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module] | None:
    """The language model as (embeddings (B, T, E) -> last hidden states, vocabulary projection) where its logits
    are the one applied to the other (GPT-2 here, `kv_cache.PLAIN_LM_HEADS`); None where they are not."""
    if isinstance(gpt, GPT2LM):
        return gpt.transformer, gpt.lm_head
    split = decoder_and_head(gpt)
    if split is None:
        return None
    decoder, head = split
    # no key/value cache: teacher forcing runs each sequence once
    return lambda embeds: decoder(inputs_embeds=embeds, use_cache=False).last_hidden_state, head
