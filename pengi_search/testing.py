"""Tiny Pengi models and tokenizers built in code, for the tests and the benchmarks: nothing is downloaded.

The tokenizers are byte-level BPE vocabularies trained on a short corpus; the models have the real architecture at
toy sizes with seeded random weights, so they run in a fraction of a second and write gibberish.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPTokenizer, PreTrainedTokenizerFast

from pengi_search.config import AudioConfig, DecoderConfig, MapperConfig, PengiConfig, TextEncoderConfig
from pengi_search.model import Pengi
from pengi_search.tokenization import Tokenizers

CORPUS = [
    "generate audio caption",
    "generate metadata",
    "this is a sound of",
    "this acoustic scene is",
    "this emotion is",
    "music analysis",
    "question: is there a dog?",
    "a dog is barking in the rain",
    "water runs from a tap",
    "a bell rings twice",
    "a high beep and a low hum",
    "birds sing while cars pass by",
    "yes no speech music noise silence engine",
]


def _byte_level_bpe(vocab_size: int, specials: list[str]) -> Tokenizer:
    """Special tokens get the last ids, as in the real GPT-2 and CLIP vocabularies."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_special_tokens(specials)
    return tok


def tiny_gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE like GPT-2's, with <|endoftext|> as its only special token."""
    tok = _byte_level_bpe(400, ["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_clip_tokenizer() -> PreTrainedTokenizerFast:
    """Like CLIP's: every text is wrapped in <|startoftext|> ... <|endoftext|>."""
    tok = _byte_level_bpe(380, ["<|startoftext|>", "<|endoftext|>"])
    start, end = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", start), ("<|endoftext|>", end)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def tiny_config(variant: str = "base", gpt2=None, clip=None) -> PengiConfig:
    gpt2 = gpt2 or tiny_gpt2_tokenizer()
    clip = clip or tiny_clip_tokenizer()
    text = TextEncoderConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(clip),
        projection_dim=24,
        bos_token_id=clip.bos_token_id,
        eos_token_id=clip.eos_token_id,
    )
    return PengiConfig(
        audio=AudioConfig(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), num_classes=4, out_emb=64),
        text_encoder=text if variant == "base" else None,
        decoder=DecoderConfig(
            n_embd=32, n_layer=2, n_head=2, vocab_size=len(gpt2), n_positions=128, eos_token_id=gpt2.eos_token_id
        ),
        mapper=MapperConfig(prefix_length=4, clip_length=4, num_layers=1, num_heads=2),
        d_proj=32,
        text_prompt_length=20,
    )


def make_tiny_model_dir(directory: Path, variant: str = "base", seed: int = 0) -> Path:
    """A complete model directory (config, safetensors weights, both tokenizers) with random tiny weights."""
    gpt2, clip = tiny_gpt2_tokenizer(), tiny_clip_tokenizer()
    torch.manual_seed(seed)
    model = Pengi(tiny_config(variant, gpt2, clip)).eval()
    tokenizers = Tokenizers(model.cfg, gpt2, clip if variant == "base" else None)
    return model.save_pretrained(directory, tokenizers=tokenizers, extra={"name": f"tiny-{variant}"})


def clip_like_tokenizer(vocab_size: int = 600) -> CLIPTokenizer:
    """transformers' own CLIPTokenizer (CLIP's normaliser, pre-tokeniser, `</w>` word ends and post-processor) over
    a small BPE vocabulary trained here: no real CLIP vocabulary is available offline."""
    trained = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    trained.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    trained.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    trained.train_from_iterator(CORPUS * 4, trainer)
    bpe = json.loads(trained.to_str())["model"]
    vocab = dict(bpe["vocab"])
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[tuple(pair) for pair in bpe["merges"]])


# --- Real-sounding labelled audio and a baseline, for learning tests and benchmarks ------------------------------

SPOKEN_WORDS = ("alarm", "bird", "coffee", "dog", "engine", "forest", "guitar", "hammer", "island", "jungle", "kettle")
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
VOICE_VARIANTS = ("", "+m3", "+f2", "+f4")
SPOKEN_RATE = 44_100


def espeak_word(word: str, voice: str, speed: int) -> np.ndarray:
    """`word` spoken by espeak-ng (`apt-get install espeak-ng`) as mono float32 at 44.1 kHz."""
    import io
    import subprocess

    import soundfile as sf
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", word], capture_output=True, check=True
    )
    audio, rate = sf.read(io.BytesIO(wav.stdout), dtype="float32")
    return soxr.resample(audio, rate, SPOKEN_RATE).astype(np.float32)


def write_spoken_words(
    folder: Path,
    backgrounds: list[np.ndarray],
    *,
    words: tuple[str, ...] = SPOKEN_WORDS,
    voices: tuple[str, ...] = ESPEAK_VOICES,
    test_voices: tuple[str, ...] = ("en-029", "en-gb-x-gbclan"),
    variants: tuple[str, ...] = VOICE_VARIANTS,
    speeds: tuple[int, ...] = (130, 190),
    seconds: float = 7.0,
    snr_db: tuple[float, float] = (5.0, 15.0),
    seed: int = 0,
) -> Path:
    """Keyword clips: each word once, by every voice, variant and speed, at a random moment of a `seconds`-long
    clip over a random stretch of a background recording (44.1 kHz mono arrays, e.g. real recordings) at a random
    signal-to-noise ratio. Writes the wav files and `labels.csv` (file, label, split: the `test_voices` are
    held out); returns the CSV's path."""
    import itertools

    import soundfile as sf

    rng = np.random.default_rng(seed)
    size = round(seconds * SPOKEN_RATE)
    loops = [np.tile(b, -(-(size + 1) // b.size)) for b in backgrounds]
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["file,label,split"]
    for word, voice, variant, speed in itertools.product(words, voices, variants, speeds):
        speech = espeak_word(word, voice + variant, speed)[:size]
        clip = np.zeros(size, dtype=np.float32)
        start = int(rng.integers(0, size - speech.size + 1))
        clip[start : start + speech.size] = speech
        loop = loops[int(rng.integers(len(loops)))]
        offset = int(rng.integers(0, loop.size - size + 1))
        background = loop[offset : offset + size]
        level = np.sqrt(np.mean(speech**2)) / max(float(np.sqrt(np.mean(background**2))), 1e-9)
        clip += background * level * 10 ** (-rng.uniform(*snr_db) / 20)
        clip *= 0.9 / max(float(np.abs(clip).max()), 1e-9)
        name = f"{word}-{voice}{variant.replace('+', '-')}-{speed}.wav"
        sf.write(folder / name, clip, SPOKEN_RATE, subtype="PCM_16")
        rows.append(f"{name},{word},{'test' if voice in test_voices else 'train'}")
    labels = folder / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return labels


# The smoke recordings (`../shared/data/smoke`) grouped into five kinds of sound, by their labels.
SOUND_KINDS = {
    "speech": ("speech",),
    "animal": ("cat", "cow", "dog", "duck", "frog", "horse", "owl", "pig", "rooster", "sheep", "crow", "bird", "whale"),
    "music": ("trumpet", "orchestra", "music", "guitar", "choir"),
    "percussion": ("drum_roll", "cowbell", "bell", "finger_snap", "drum_loop", "tabla"),
    "noise": ("burp", "vinyl_scratch", "vinyl_hiss", "glass_rub", "camera_shutter", "alarm_clock"),
}


@dataclass
class KindWindow:
    path: Path  # the recording
    kind: str
    clip: np.ndarray  # (samples,) at 44.1 kHz
    segment: tuple[float, float] | None  # seconds in the recording; None for a short one repeated to length


def smoke_kind_windows(smoke: Path, seconds: float = 3.0, per_recording: int = 4) -> list[KindWindow]:
    """Each smoke recording's windows, labelled with its kind: up to `per_recording`, spread over it (a short one is
    repeated to length, as Pengi pads)."""
    import csv

    from pengi_search.audio import load_audio, pad_to_length

    kind_of = {label: kind for kind, labels in SOUND_KINDS.items() for label in labels}
    size = round(seconds * SPOKEN_RATE)
    out = []
    with (smoke / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            path = (smoke / row["filename"]).resolve()
            audio = load_audio(path, sample_rate=SPOKEN_RATE)
            whole = pad_to_length(audio, size) if audio.size < size else audio
            count = min(per_recording, 1 + (whole.size - size) // size)
            for start in np.linspace(0, whole.size - size, count).astype(int):
                segment = (start / SPOKEN_RATE, start / SPOKEN_RATE + seconds) if audio.size >= size else None
                out.append(KindWindow(path, kind_of[row["label"]], whole[start : start + size], segment))
    return out


def held_out_recordings(items: list[KindWindow], share: float = 0.3, seed: int = 0) -> set[Path]:
    """A seeded `share` of each kind's recordings (at least one): every window of them is held out."""
    rng = np.random.default_rng(seed)
    held: set[Path] = set()
    for kind in SOUND_KINDS:
        files = sorted({str(item.path) for item in items if item.kind == kind})
        held |= {Path(f) for f in rng.choice(files, max(1, round(share * len(files))), replace=False)}
    return held


def write_smoke_kinds(folder: Path, smoke: Path, seed: int = 0) -> Path:
    """`smoke_kind_windows` as wav files with `labels.csv` (file, label, split: the recordings
    `held_out_recordings(seed)` are the test rows; group: the recording, so that a validation split keeps a
    recording's windows together); returns the CSV's path."""
    import soundfile as sf

    items = smoke_kind_windows(smoke)
    held = held_out_recordings(items, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["file,label,split,group"]
    for number, item in enumerate(items):
        name = f"{item.kind}-{number:03d}-{item.path.stem}.wav"
        sf.write(folder / name, item.clip, SPOKEN_RATE, subtype="FLOAT")
        rows.append(f"{name},{item.kind},{'test' if item.path in held else 'train'},{item.path.stem}")
    labels = folder / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return labels


def logmel_statistics(waves: np.ndarray, sample_rate: int = SPOKEN_RATE) -> np.ndarray:
    """The classic baseline's features: mean and standard deviation over time of 64 log-mel bands and of 20 MFCCs
    (n_fft 1024, hop 512). (N, samples) -> (N, 168)."""
    from pengi_search.frontend import mel_filterbank

    wave = torch.from_numpy(np.asarray(waves, dtype=np.float32))
    spec = torch.stft(wave, 1024, 512, window=torch.hann_window(1024), return_complex=True).abs() ** 2
    filters = torch.from_numpy(mel_filterbank(sample_rate, 1024, 64, 20.0, sample_rate / 2))
    logmel = torch.log(spec.transpose(1, 2) @ filters + 1e-6)  # (N, frames, 64)
    n = torch.arange(64, dtype=torch.float32)
    dct = torch.cos(torch.pi / 64 * (n[None, :] + 0.5) * torch.arange(20, dtype=torch.float32)[:, None])  # (20, 64)
    mfcc = logmel @ dct.T
    parts = [logmel.mean(1), logmel.std(1), mfcc.mean(1), mfcc.std(1)]
    return torch.cat(parts, dim=1).numpy()


def logistic_regression_accuracy(
    train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, test_y: list[str], l2: float = 1e-3
) -> float:
    """Multinomial logistic regression on standardised features (L-BFGS, L2 penalty): held-out accuracy."""
    labels = sorted(set(train_y))
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = torch.from_numpy((train_x - mean) / std).float()
    y = torch.tensor([labels.index(label) for label in train_y])
    weights = torch.zeros(x.shape[1], len(labels), requires_grad=True)
    bias = torch.zeros(len(labels), requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=500, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weights + bias, y) + l2 * weights.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        predicted = (torch.from_numpy((test_x - mean) / std).float() @ weights + bias).argmax(1).tolist()
    return sum(labels[p] == truth for p, truth in zip(predicted, test_y, strict=True)) / len(test_y)
