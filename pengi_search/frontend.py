"""Audio front end of HTSAT: waveform -> power spectrogram -> log-mel.

The STFT runs as two 1-D convolutions (real and imaginary DFT rows times a Hann window) and the mel filterbank
is a matrix; both are state_dict entries under the released key names (`spectrogram_extractor.stft.conv_real`,
`...conv_imag`, `logmel_extractor.melW`), and a model built from scratch computes the same tensors.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def hann_dft_kernels(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of the windowed DFT, shaped (n_fft // 2 + 1, 1, n_fft) like Conv1d weights."""
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
    bins = np.arange(n_fft // 2 + 1)
    # Reduce the phase index modulo n_fft before scaling: exact integers keep the angles accurate.
    phase = 2 * np.pi * ((bins[:, None] * n[None, :]) % n_fft) / n_fft
    real = np.cos(phase) * window
    imag = -np.sin(phase) * window
    return real[:, None, :].astype(np.float32), imag[:, None, :].astype(np.float32)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / f_sp
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-normalised triangular mel filters, shaped (n_fft // 2 + 1, n_mels) (librosa's default filters)."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    return weights.astype(np.float32).T


class STFT(nn.Module):
    """Centered, reflect-padded STFT as strided convolutions with frozen DFT kernels."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft = n_fft
        real, imag = hann_dft_kernels(n_fft)
        self.conv_real = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
        with torch.no_grad():
            self.conv_real.weight.copy_(torch.from_numpy(real))
            self.conv_imag.weight.copy_(torch.from_numpy(imag))
        self.requires_grad_(False)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.pad(wave[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")  # (B, 1, samples+n_fft)
        return self.conv_real(x), self.conv_imag(x)  # each (B, n_fft//2+1, frames)


class Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.stft = STFT(n_fft, hop)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        real, imag = self.stft(wave)
        power = real**2 + imag**2
        return power.transpose(1, 2)[:, None]  # (B, 1, frames, n_fft//2+1)


class LogMel(nn.Module):
    """Mel projection then 10*log10(max(x, 1e-10)), reference power 1, no top-dB clamp."""

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float):
        super().__init__()
        filters = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
        self.melW = nn.Parameter(torch.from_numpy(filters), requires_grad=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(power, self.melW)  # (B, 1, frames, n_mels)
        return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
