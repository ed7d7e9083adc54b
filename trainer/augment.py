"""Augmentation of training clips on the waveform, so that it works before any audio encoder (and before caching
a frozen encoder's outputs): random gain, circular time shift, white noise, mixing in another clip, and
SpecAugment-style masks (silenced spans in time, a removed band in frequency).

Every draw comes from the generator the caller seeds, by (seed, epoch or view, example): a resumed run and a
rebuilt feature cache see the same clips.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from trainer.config import AugmentationSection

NOISE_SNR_SPAN_DB = 20.0  # noise SNR is uniform in [noise_snr_db, noise_snr_db + this]
MIX_SNR_DB = (5.0, 15.0)  # how much quieter a mixed-in clip is
TIME_MASK_SPANS = 2


def augment(
    clip: np.ndarray,
    settings: AugmentationSection,
    rng: np.random.Generator,
    other_clip: Callable[[np.random.Generator], np.ndarray | None] | None = None,
) -> np.ndarray:
    """A changed copy of `clip` (float32, same length). `other_clip` draws another training clip for mixing."""
    out = clip.astype(np.float32, copy=True)
    if settings.mix and other_clip is not None and rng.random() < settings.mix:
        other = other_clip(rng)
        if other is not None:
            out = out + _scaled_to(other, out, -rng.uniform(*MIX_SNR_DB))
    if settings.time_shift:
        out = np.roll(out, int(rng.uniform(-settings.time_shift, settings.time_shift) * out.size))
    if settings.frequency_mask:
        out = _remove_band(out, settings.frequency_mask, rng)
    if settings.time_mask:
        out = _silence_spans(out, settings.time_mask, rng)
    if settings.noise_snr_db is not None:
        snr = rng.uniform(settings.noise_snr_db, settings.noise_snr_db + NOISE_SNR_SPAN_DB)
        out = out + _scaled_to(rng.standard_normal(out.size).astype(np.float32), out, -snr)
    if settings.gain_db:
        out = out * np.float32(10 ** (rng.uniform(-settings.gain_db, settings.gain_db) / 20))
    return out.astype(np.float32, copy=False)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _scaled_to(signal: np.ndarray, reference: np.ndarray, relative_db: float) -> np.ndarray:
    """`signal` at `relative_db` below (negative) or above the reference's RMS level (silence stays silence)."""
    level = _rms(signal)
    if level == 0.0:
        return np.zeros_like(reference)
    return (signal * (_rms(reference) / level * 10 ** (relative_db / 20))).astype(np.float32)


def _remove_band(clip: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(clip)
    width = int(rng.uniform(0, fraction) * spectrum.size)
    if width:
        start = int(rng.integers(0, spectrum.size - width + 1))
        spectrum[start : start + width] = 0
    return np.fft.irfft(spectrum, n=clip.size).astype(np.float32)


def _silence_spans(clip: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    out = clip.copy()
    for _ in range(TIME_MASK_SPANS):
        width = int(rng.uniform(0, fraction / TIME_MASK_SPANS) * clip.size)
        if width:
            start = int(rng.integers(0, clip.size - width + 1))
            out[start : start + width] = 0
    return out
