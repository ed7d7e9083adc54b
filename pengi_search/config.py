"""Configuration of the Pengi model: every size in one place, with the released presets.

The presets `base` and `base_no_text_enc` are the sizes of the two released checkpoints (Zenodo record 8387083).
Tests build tiny models from the same dataclasses, and `from_reference_architecture` reads the `architecture`
block of the reference fixtures.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AudioConfig:
    """HTSAT audio encoder and its front end (the constants HTSAT really uses, not Pengi's yml)."""

    sample_rate: int = 44_100  # what Pengi feeds the encoder
    clip_seconds: float = 7.0
    mel_sample_rate: int = 32_000  # the filterbank was built for 32 kHz; kept, since the weights were trained so
    window_size: int = 1024  # the STFT's n_fft, in samples of the input (sample_rate, not mel_sample_rate)
    hop_size: int = 320  # input samples between STFT frames: a 7 s clip at 44.1 kHz gives 965 frames
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 14_000.0
    spec_size: int = 256  # side of the square image the log-mel is folded into, as spec_size // mel_bins time chunks
    patch_size: int = 4
    patch_stride: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window: int = 8
    mlp_ratio: float = 4.0
    num_classes: int = 527  # AudioSet's classes: the checkpoint's class head, unused by Pengi
    out_emb: int = 768  # width of the encoder's vector (the projection's input), whichever encoder it is
    # The encoder: "htsat" (the fields above), "aisfx" or "transformers" (see `pengi_search.audio_backbones`),
    # with what a non-HTSAT encoder needs to be rebuilt (for "transformers": its model and extractor configs).
    encoder: str = "htsat"
    encoder_config: dict | None = None

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))


@dataclass
class TextEncoderConfig:
    """CLIP text tower (transformers `CLIPTextConfig` fields) and its projection width."""

    hidden_size: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    max_position_embeddings: int = 77  # CLIP's context: captions, labels and queries are cut to it
    vocab_size: int = 49_408
    projection_dim: int = 512  # width of `clip_text_projection`, which the projection to d_proj reads
    hidden_act: str = "quick_gelu"
    bos_token_id: int = 49_406
    eos_token_id: int = 49_407  # pooling reads the first end-of-text token; prompts are padded with it too


@dataclass
class GPT2Sizes:
    """GPT-2's sizes and end token (`GPT2Config` fields of the same names); GPT-2 base by default."""

    n_embd: int = 768  # token embedding width, so also of each prefix token the mappers emit
    n_layer: int = 12
    n_head: int = 12
    vocab_size: int = 50_257
    n_positions: int = 1024  # the prefix, an answer's given start and the answer must fit in these
    eos_token_id: int = 50_256  # <|endoftext|>, which GPT-2 also takes as its start token (`gpt2_fields`)


@dataclass
class DecoderConfig(GPT2Sizes):
    """The language model: GPT-2 of these sizes, or any causal LM through `hf_config`."""

    # A transformers config as a dict with its `model_type` (e.g. {"model_type": "llama", ...}): any causal LM that
    # accepts `inputs_embeds` replaces GPT-2, and the fields above are then unused.
    hf_config: dict | None = None


@dataclass
class MapperConfig:
    """The transformer mapping networks that turn embeddings into GPT-2 prefix tokens."""

    prefix_length: int = 40  # tokens each mapper emits
    clip_length: int = 40  # tokens the mapper's input is unfolded into
    num_layers: int = 4  # per mapper (the reference config says 8 and gives each mapper half)
    num_heads: int = 8
    mlp_ratio: float = 2.0


def _audio_config(values: dict[str, Any]) -> AudioConfig:
    """An AudioConfig from JSON values (lists where the config holds tuples)."""
    tuples = {key: values[key] for key in ("depths", "num_heads") if key in values}
    for key, value in tuples.items():
        if not isinstance(value, list | tuple):
            raise ValueError(f"audio.{key} must be a list of ints, got {value!r}")
    return AudioConfig(**{**values, **{key: tuple(value) for key, value in tuples.items()}})


_JSON_KINDS = {bool: "true or false", int: "a number", float: "a number", str: "a string", list: "a list"}


def _settings(kind: type, values: Any, part: str) -> dict[str, Any]:
    """`values` when they are an object (a mapping) of settings that `kind` has; else a ValueError that names the
    `part` ("decoder", "" for the whole configuration) or the setting."""
    if not isinstance(values, dict):
        what = f"{part} is" if part else "the configuration is"
        kind_of = "null" if values is None else _JSON_KINDS.get(type(values), f"a {type(values).__name__}")
        raise ValueError(f"{what} {kind_of}, not an object of settings")
    known = {item.name for item in dataclasses.fields(kind)}
    if unknown := next((str(name) for name in values if name not in known), None):
        raise ValueError(f"unknown setting {part + '.' if part else ''}{unknown}")
    return values


def _part(kind: type, data: dict[str, Any], name: str) -> dict[str, Any]:
    """The settings of the configuration's part `name` (`_settings`); none given: all its defaults."""
    return _settings(kind, data.get(name, {}), name)


_SCALARS = {int: "int", float: "float", bool: "bool", str: "text"}


def _scalar_type_problem(config: Any, where: str) -> str | None:
    """The first int, float, bool or text field (nested ones too) holding a value of another type, or None: a
    mapping's `n_layer: x` would otherwise fail deep in the model's construction with a traceback."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        value, hint = getattr(config, item.name), hints[item.name]
        if dataclasses.is_dataclass(value):
            if (problem := _scalar_type_problem(value, f"{where}{item.name}.")) is not None:
                return problem
            continue
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds = [kind for kind in options if kind in _SCALARS]
        if not kinds or (value is None and type(None) in options):
            continue
        if not any(_fits(value, kind) for kind in kinds):
            return f"{where}{item.name} must be {' or '.join(_SCALARS[kind] for kind in kinds)}, got {value!r}"
    return None


def _fits(value: Any, kind: type) -> bool:
    if isinstance(value, bool):  # YAML's true is no number
        return kind is bool
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


_REFERENCE_AUDIO_NAMES = {"input_sample_rate": "sample_rate", "frontend_sample_rate_for_mel": "mel_sample_rate"}


@dataclass
class PengiConfig:
    audio: AudioConfig = field(default_factory=AudioConfig)
    text_encoder: TextEncoderConfig | None = field(default_factory=TextEncoderConfig)  # None: base_no_text_enc
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    mapper: MapperConfig = field(default_factory=MapperConfig)
    d_proj: int = 1024
    text_prompt_length: int = 40  # tokens of a prompt fed to the text encoder (or to GPT-2's embeddings)
    # The model's own forward L2-normalises the text embedding before its mapper; the reference's public
    # `generate` does not. True reproduces the former (default), False the latter.
    normalize_text_embedding: bool = True

    @property
    def use_text_encoder(self) -> bool:
        return self.text_encoder is not None

    @property
    def prefix_tokens(self) -> int:
        """Length of the [audio ; text] prefix handed to GPT-2."""
        return 2 * self.mapper.prefix_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> PengiConfig:
        """A configuration from its JSON form (`to_dict`'s; a part or setting left out keeps its default). A user
        writes it (`model import --config`, a training configuration's `model.architecture`), so anything else is a
        ValueError naming the part or setting: an object that is no object, a setting no part has, a value of the
        wrong type (which would otherwise fail with a traceback deep in the model's construction)."""
        data = _settings(cls, data, "")
        text = data.get("text_encoder", {})
        config = cls(
            audio=_audio_config(_part(AudioConfig, data, "audio")),
            text_encoder=None if text is None else TextEncoderConfig(**_part(TextEncoderConfig, data, "text_encoder")),
            decoder=DecoderConfig(**_part(DecoderConfig, data, "decoder")),
            mapper=MapperConfig(**_part(MapperConfig, data, "mapper")),
            **{k: v for k, v in data.items() if k not in ("audio", "text_encoder", "decoder", "mapper")},
        )
        if (problem := _scalar_type_problem(config, "")) is not None:
            raise ValueError(problem)
        return config

    @classmethod
    def preset(cls, name: str) -> PengiConfig:
        if name == "base":
            return cls()
        if name == "base_no_text_enc":
            return cls(text_encoder=None)
        raise ValueError(f"unknown preset {name!r}; known: base, base_no_text_enc")

    @classmethod
    def from_reference_architecture(cls, arch: dict[str, Any], variant: str) -> PengiConfig:
        """Map the `architecture` block of a reference fixture (and the variant name) onto a config."""
        t, d, m = arch["text_encoder"], arch["decoder"], arch["mapper"]
        # The reference names the audio fields as AudioConfig does, but for two sample rates and a (h, w) stride.
        # Its `encoder` is the class name ("HTSAT"), not our encoder kind: the reference has HTSAT only (the default).
        known = {f.name for f in dataclasses.fields(AudioConfig)} - {"encoder", "encoder_config"}
        renamed = ((_REFERENCE_AUDIO_NAMES.get(key, key), value) for key, value in arch["audio"].items())
        audio = {name: value for name, value in renamed if name in known}
        if missing := known - audio.keys():  # a default in its place would build another model without a word
            raise ValueError(f"the reference architecture's audio block lacks {', '.join(sorted(missing))}")
        if isinstance(stride := audio["patch_stride"], list):
            audio["patch_stride"] = stride[0]
        text = TextEncoderConfig(**{k: v for k, v in t.items() if k != "kind"})
        decoder = DecoderConfig(**{k: v for k, v in d.items() if k != "kind"})
        mapper = MapperConfig(
            prefix_length=m["prefix_length"],
            clip_length=m["prefix_length_clip"],
            num_layers=m["layers_per_mapper"],
            num_heads=m["heads"],
            mlp_ratio=m["mlp_ratio"],
        )
        return cls(
            audio=_audio_config(audio),
            text_encoder=text if variant == "base" else None,
            decoder=decoder,
            mapper=mapper,
            d_proj=arch["d_proj"],
            text_prompt_length=arch["enc_text_len"],
            normalize_text_embedding=arch.get("normalize_prefix", True),
        )
