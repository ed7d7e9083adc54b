"""What the frozen aisfx CNN's features know about a labelled set: linear and attention probes on them.

    python benchmarks/probe_encoder.py LABELS.csv AUDIO_ROOT [--seed 0] [--threads N] [--batch 16]

LABELS.csv and AUDIO_ROOT as for bench_learn.py (its `--make-spoken-words` and `--make-smoke-kinds` sets). Every
clip's first 7 s window (bench_learn's, as Pengi sees it) goes through aisfx's CNN once; each block's output,
averaged over frequency, is kept as time steps (for 7 s: 2nd block 128 channels x 75 steps, 3rd 256 x 37, 4th
512 x 37). The rows:

(a) 4th block, max over time: the vector aisfx gives (`AisfxCnn` without `frames`), what Pengi used before
    attention pooling.
(b) 4th block, mean + standard deviation + max over time.
(c) the same statistics of the 3rd block, of the 2nd, and of the 2nd, 3rd and 4th together.
(d) the baseline's log-mel/MFCC statistics (`pengi_search.testing.logmel_statistics`, bench_learn's baseline).
Attention over the 4th, the 3rd, and the 3rd + 4th blocks' time steps: a small model trained on the time steps
(standardised per channel with the fit rows' statistics): dropout 0.2, a linear map to 128, 4-head softmax pooling
over time as `FramePooling` does inside Pengi, LayerNorm, a linear classifier; AdamW (lr 1e-3, weight decay 0.05),
120 epochs of batches of 32, each batch shifted circularly in time by a random number of steps; seeded by --seed.

The statistics rows are scored with `pengi_search.testing.logistic_regression_accuracy` (standardised features,
L2-penalised multinomial logistic regression). Each row is scored twice: "val" is fitted on the training rows less
a seeded, stratified 20% of them and scored on that 20% (the validation rows `train init --seed S` holds out,
`trainer.recipes.split_clips`); "test" is fitted on all training rows and scored on the test rows. Printed: each
row as it is measured, then a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pengi_search.audio_backbones import AisfxCnn, FramePooling
from pengi_search.testing import logistic_regression_accuracy, logmel_statistics
from trainer.audio_parts import aisfx_checkpoint, read_aisfx_state
from trainer.recipes import LabelledClip, split_clips

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_learn import RATE, first_window, read_rows  # noqa: E402 (the sibling benchmark's windows and CSV)

VALIDATION = 0.2
BLOCKS = ("block2", "block3", "block4")
ATTENTION = {  # row name -> the blocks whose time steps it reads (channels side by side)
    "trained attention pooling over the 4th block's time steps": ("block4",),
    "trained attention pooling over the 3rd block's time steps": ("block3",),
    "trained attention pooling over the 3rd + 4th blocks' time steps": ("block3", "block4"),
}


@dataclass(frozen=True)
class Split:
    """Row indices: `fit` + `val` = the training rows; `test` the test rows."""

    fit: list[int]
    val: list[int]
    test: list[int]

    @property
    def train(self) -> list[int]:
        return sorted(self.fit + self.val)


@dataclass(frozen=True)
class Result:
    features: str
    width: int
    val: float
    test: float
    seconds: float


def split_rows(rows: list[dict[str, str]], seed: int) -> Split:
    """The trainer's own split of the training rows (stratified by label, seeded, whole groups), so "val" is what
    the recipe validates on; the CSV's test rows stay test rows."""
    clips = [
        LabelledClip(Path(row["path"]), row["label"], row["split"], None, i, row["group"] or None)
        for i, row in enumerate(rows)
    ]
    parts = split_clips(clips, VALIDATION, seed)
    fit, val, test = ([clip.row for clip in parts[name]] for name in ("train", "validation", "test"))
    return Split(fit, val, test)


def load_cnn() -> AisfxCnn:
    cnn = AisfxCnn(RATE)  # all four blocks: the probes read the 2nd, 3rd and 4th
    cnn.load_state_dict(read_aisfx_state(aisfx_checkpoint()))
    return cnn.eval()


@torch.no_grad()
def block_steps(cnn: AisfxCnn, waves: np.ndarray) -> dict[str, torch.Tensor]:
    """(B, samples) -> each block's output averaged over frequency: name -> (B, channels, T)."""
    x = cnn.log_mel(torch.from_numpy(waves))[:, None]  # (B, 1, frames, 96)
    steps = {}
    for number, block in enumerate(cnn.embedding_net.values(), start=1):
        x = block(x)
        steps[f"block{number}"] = x.mean(dim=3)
    return steps


def encode(paths: list[str], batch: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Every clip's first window, a batch at a time (all of a set's windows at once are large: 622 MiB for 528 of
    7 s): the blocks' time steps (name -> (N, channels, T)) and the baseline's features (N, 168)."""
    cnn = load_cnn()
    steps: dict[str, list[torch.Tensor]] = {name: [] for name in BLOCKS}
    baseline = []
    for start in range(0, len(paths), batch):
        waves = np.stack([first_window(path) for path in paths[start : start + batch]])
        for name, value in block_steps(cnn, waves).items():
            if name in steps:  # the 1st block's output only feeds the 2nd
                steps[name].append(value)
        baseline.append(logmel_statistics(waves))
    return {name: torch.cat(parts) for name, parts in steps.items()}, np.concatenate(baseline)


def over_time(steps: torch.Tensor, statistics: tuple[str, ...]) -> np.ndarray:
    """(N, channels, T) -> (N, channels x len(statistics)): the named statistics over time, side by side."""
    computed = {"mean": steps.mean(dim=2), "std": steps.std(dim=2), "max": steps.amax(dim=2)}
    return torch.cat([computed[name] for name in statistics], dim=1).numpy()


def statistics_rows(steps: dict[str, torch.Tensor], baseline: np.ndarray) -> dict[str, np.ndarray]:
    every = ("mean", "std", "max")
    return {
        "(a) 4th block, mean over frequency, max over time: the vector Pengi used": over_time(
            steps["block4"], ("max",)
        ),
        "(b) 4th block time steps, mean + std + max over time": over_time(steps["block4"], every),
        "(c) 3rd block, mean + std + max over time": over_time(steps["block3"], every),
        "(c) 2nd block, mean + std + max over time": over_time(steps["block2"], every),
        "(c) 2nd + 3rd + 4th blocks, mean + std + max over time": np.concatenate(
            [over_time(steps[name], every) for name in BLOCKS], axis=1
        ),
        "(d) the baseline's log-mel/MFCC statistics": baseline,
    }


def linear_accuracy(features: np.ndarray, labels: list[str], fit: list[int], scored: list[int]) -> float:
    return logistic_regression_accuracy(
        features[fit], [labels[i] for i in fit], features[scored], [labels[i] for i in scored]
    )


def attention_probe(channels: int, classes: int, width: int = 128) -> nn.Module:
    """(B, T, channels) -> (B, classes): Pengi's `FramePooling`, narrowing to `width`, then a linear classifier."""
    return nn.Sequential(FramePooling(channels, out_width=width), nn.Linear(width, classes))


def attention_accuracy(
    frames: torch.Tensor, targets: torch.Tensor, fit: list[int], scored: list[int], seed: int, epochs: int = 120
) -> float:
    """Train an attention probe on the `fit` clips' time steps (N, T, channels), score it on the `scored` clips."""
    torch.manual_seed(seed)
    mean = frames[fit].mean(dim=(0, 1))
    std = frames[fit].std(dim=(0, 1)) + 1e-5
    frames = (frames - mean) / std
    probe = attention_probe(frames.shape[2], int(targets.max()) + 1)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.05)
    fit_rows = torch.tensor(fit)
    probe.train()
    for _ in range(epochs):
        order = fit_rows[torch.randperm(len(fit_rows))]
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            shift = int(torch.randint(0, frames.shape[1], ()))  # where in the clip a sound is should not matter
            loss = nn.functional.cross_entropy(probe(torch.roll(frames[batch], shift, dims=1)), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    probe.eval()
    with torch.no_grad():
        predicted = probe(frames[scored]).argmax(dim=1)
    return (predicted == targets[scored]).float().mean().item()


def score_row(name: str, width: int, accuracy: Callable[[list[int], list[int]], float], split: Split) -> Result:
    """`accuracy(fitted on, scored on)` for val and for test."""
    started = time.monotonic()
    val, test = accuracy(split.fit, split.val), accuracy(split.train, split.test)
    result = Result(name, width, val, test, time.monotonic() - started)
    print(f"{name}: width {width}, val {val:.3f}, test {test:.3f} ({result.seconds:.0f} s)", flush=True)
    return result


def measure(args: argparse.Namespace) -> list[Result]:
    rows = read_rows(args.labels, args.audio_root)
    split = split_rows(rows, args.seed)
    labels = [row["label"] for row in rows]
    classes = sorted(set(labels))
    print(
        f"{len(rows)} clips, {len(classes)} labels: fit {len(split.fit)}, val {len(split.val)}, test {len(split.test)}",
        flush=True,
    )
    started = time.monotonic()
    steps, baseline = encode([row["path"] for row in rows], args.batch)
    shapes = ", ".join(f"{name} {tuple(value.shape[1:])}" for name, value in steps.items())
    print(f"encoded in {time.monotonic() - started:.0f} s: {shapes} (channels, time steps)", flush=True)
    results = [
        score_row(name, features.shape[1], partial(linear_accuracy, features, labels), split)
        for name, features in statistics_rows(steps, baseline).items()
    ]
    targets = torch.tensor([classes.index(label) for label in labels])
    for name, blocks in ATTENTION.items():
        frames = torch.cat([steps[block] for block in blocks], dim=1).transpose(1, 2)  # (N, T, channels)
        accuracy = partial(attention_accuracy, frames, targets, seed=args.seed)
        results.append(score_row(name, frames.shape[2], accuracy, split))
    return results


def markdown(results: list[Result]) -> str:
    lines = ["| features | width | val | test |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.features} | {r.width} | {r.val:.2f} | {r.test:.2f} |" for r in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels", type=Path, help="file (or filename), label and split (train or test) columns")
    parser.add_argument("audio_root", type=Path, help="the CSV's paths are relative to it")
    parser.add_argument("--seed", type=int, default=0, help="the validation split's and the attention models'")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--batch", type=int, default=16, help="windows encoded at once")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = measure(args)
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
