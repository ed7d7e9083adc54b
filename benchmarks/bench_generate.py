"""Captioning throughput: the project's batched, cached beam search against the original Pengi's per-clip loop.

    python benchmarks/bench_generate.py                          # 32 clips of 7 s, beam 3, 30 tokens, CPU float32
    python benchmarks/bench_generate.py --threads 1 --reference-clips 2   # the slow original on fewer clips
    python benchmarks/bench_generate.py --threads 1 --reference-clips 2 --fast            # + a --fast row
    python benchmarks/bench_generate.py --threads 1 --reference-clips 2 --fast-options    # + each fast option
    python benchmarks/bench_generate.py --profile --clips 32 --max-len 30 --threads 1   # where the project's time goes
    python benchmarks/bench_generate.py --device cuda --dtype bf16 --clips 1024 --reference-clips 16 --fast
    python benchmarks/bench_generate.py --size tiny --clips 3 --max-len 6   # seconds: do both methods agree?

The full-size `base` architecture with seeded random weights (nothing is downloaded), seeded random audio and a
fixed CLIP-style prompt (no tokenizer needed); `--size tiny` takes the toy model of `pengi_search.testing` instead.
Stop tokens are disabled, so every beam runs all `--max-len` steps and both methods do the same search.

  project    pengi_search in exact mode, as the engine runs it: audio prefixes in batches of `--audio-batch`, the
             prompt's text prefix once, then `decoding.beam_search` over a `kv_cache.SharedPrefix` for `--batch`
             rows at a time (the shared-prefix GPT-2 cache); both batch sizes default to the device's
             (`inference.default_audio_batch_size`, `default_batch_rows`).
  reference  what the original `generate` computes, written here from a description of it (no code taken):
             prefixes for the clips (in one batch, as the original does for the list it gets, or one clip at a
             time with `--reference-prefix per-clip`), then `recompute_beam_search` for each clip, which reruns
             GPT-2 over the whole (beam, prefix + generated) sequence at every step, with the original's scoring,
             length rule and rounding.
  fast...    the project in `--fast` mode (`pengi_search.fast_mode`): `fast` is what `--fast` picks on the device;
             with `--fast-options` also each option alone (`fast-bf16`, `fast-int8`, `fast-greedy`).

Each method runs in its own child process (same seed, same weights, checked by a checksum), after a short warm-up
that is not timed, so the peak RSS is that method's own. The parent checks that project and reference wrote the
same token sequences (all beams, in order) for the clips both ran, prints a table and the clips/s ratios.

Fast rows also measure their agreement with exact mode on real recordings: the first 7 s window of each file of
`--smoke` (../shared/data/smoke/audio), captioned by the project (exact) and by the fast method with the released
model's stop tokens. It prints the fraction of identical captions (token for token) and the mean cosine between
the two captions' embeddings. No tokenizer or trained weights are available offline, so a caption is its token
sequence and its embedding the mean of the language model's float32 token embeddings; with random weights that
agreement says how far the arithmetic moves the search, not how good the captions are.

On a machine other processes keep busy, several torch threads per child lose much of their time waiting for each
other; `--threads 1` then gives steadier numbers, and the CPU-seconds ratio is close to what a quiet machine shows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from pengi_search.audio import AUDIO_EXTENSIONS, iter_windows
from pengi_search.config import PengiConfig
from pengi_search.decoding import GenerationConfig, beam_search
from pengi_search.fast_mode import FastMode, autocast
from pengi_search.gpt2 import GPT2LM
from pengi_search.inference import default_audio_batch_size, default_batch_rows, prepare_model
from pengi_search.kv_cache import SharedPrefix
from pengi_search.model import Pengi
from pengi_search.testing import tiny_clip_tokenizer, tiny_config

SEED = 0
# The full-size model's prompt: CLIP's start marker, a few word ids, its end marker. The tiny model has its own
# tokenizer and vocabulary, so its prompt is tokenized text.
CLIP_PROMPT = [49406, 9313, 3940, 24654, 49407]
TINY_PROMPT = "generate audio caption"
FAST_METHODS = {  # method -> fast mode (None: what --fast picks on the device)
    "fast": None,
    "fast-bf16": FastMode("bf16"),
    "fast-int8": FastMode("int8"),
    "fast-greedy": FastMode("fp32", greedy=True),
}
METHODS = ("project", "reference", *FAST_METHODS)
SMOKE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "smoke" / "audio"

T = TypeVar("T")
Hyps = list[tuple[list[int], float]]  # one clip's beams, best first: (generated ids, score)
Beams = list[Hyps]  # per clip


@dataclass
class Run:
    """What a child process reports about one method."""

    method: str
    clips: int
    prefix_s: float
    decode_s: float
    cpu_s: float  # user + system CPU time of the timed run; with --threads > 1 it includes threads' busy-waiting
    rss_model_mib: float  # resident memory once the model is built, before any run
    peak_rss_mib: float
    peak_gpu_mib: float
    load: float  # 1-minute load average after the timed run: other processes on the machine slow it down
    checksum: float
    tokens: list[list[list[int]]]  # per clip, per beam (best first)
    scores: list[list[float]]
    mode: str = "exact"
    smoke_tokens: list[list[int]] = field(default_factory=list)  # best caption of each real recording's window
    smoke_embeddings: list[list[float]] = field(default_factory=list)  # mean token embedding of each caption

    @property
    def seconds(self) -> float:
        return self.prefix_s + self.decode_s

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_model(size: str, device: torch.device) -> Pengi:
    cfg = PengiConfig.preset("base") if size == "base" else tiny_config()
    torch.manual_seed(SEED)
    return Pengi(cfg).to(device).eval()


def weight_checksum(model: nn.Module) -> float:
    """A cheap fingerprint, so the parent can tell that both children built the same weights."""
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def make_audio(clips: int, samples: int) -> torch.Tensor:
    rng = np.random.default_rng(SEED)
    return torch.from_numpy(rng.normal(0.0, 0.1, size=(clips, samples)).astype(np.float32))


def prompt_ids(size: str) -> list[int]:
    return CLIP_PROMPT if size == "base" else tiny_clip_tokenizer()(TINY_PROMPT)["input_ids"]


def make_prompt(row: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, length) ids and mask of a prompt, padded with its last id (the end marker) as CLIP's tokenizer pads."""
    ids = torch.full((1, length), row[-1], dtype=torch.long)
    ids[0, : len(row)] = torch.tensor(row)
    mask = torch.zeros(1, length, dtype=torch.long)
    mask[0, : len(row)] = 1
    return ids, mask


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def last_log_probs(gpt: GPT2LM, sequence: torch.Tensor) -> torch.Tensor:
    """(R, T, E) embeddings -> (R, V) log-probabilities of the token after each row, the original's way.

    No cache: GPT-2 reads the whole sequence and projects every position onto the vocabulary, of which only the last
    is used; that waste is part of what the benchmark measures. The log is taken of the softmax (not `log_softmax`)
    because that is the original's rounding, and its temperature of 1 is left out since dividing by 1 changes nothing.
    """
    return gpt(inputs_embeds=sequence).logits[:, -1].softmax(-1).log()


def recompute_beam_search(gpt: GPT2LM, prefix: torch.Tensor, beam: int, max_len: int) -> Hyps:
    """The original Pengi's beam search for one clip's (1, P, E) prefix, with no stop token: the yardstick.

    Step 1 keeps the `beam` most likely first tokens. Every later step scores each beam's every continuation by its
    summed log-probability divided by its length (generated tokens), and the best `beam` of all beam x vocabulary
    candidates survive. With no stop token no beam ends early, so the original's rule for ended beams (extend with
    token 0 at no cost, length frozen) never applies and every length is the step count. After `max_len` tokens the
    beams are returned best first, scored by sum / length. `decoding.beam_search` must produce the same tokens.
    """
    embed = gpt.get_input_embeddings()
    sums, tokens = last_log_probs(gpt, prefix)[0].topk(beam)  # (K,) summed log-probs, (K,) first tokens
    history = tokens[:, None]  # (K, 1)
    sequence = torch.cat([prefix.expand(beam, -1, -1), embed(tokens)[:, None]], dim=1)  # (K, P + 1, E)
    length = torch.ones((), device=prefix.device)  # a float tensor, as the original divides by
    for _ in range(max_len - 1):
        candidates = sums[:, None] + last_log_probs(gpt, sequence)  # (K, V) summed log-probs
        vocab = candidates.shape[1]
        length = length + 1
        means, flat = (candidates / length).view(-1).topk(beam)  # (K,) best over all beams, best first
        source, tokens = flat // vocab, flat % vocab
        sums = means * length  # the original keeps the mean and multiplies it back; the rounding follows it
        history = torch.cat([history[source], tokens[:, None]], dim=1)
        sequence = torch.cat([sequence[source], embed(tokens)[:, None]], dim=1)
    scores = sums / length
    return [(history[k].tolist(), float(scores[k])) for k in scores.argsort(descending=True).tolist()]


class Bench:
    """One method's work on a fixed model, audio and prompt; `fast`: the project's in that fast mode."""

    def __init__(self, model: Pengi, args: argparse.Namespace, device: torch.device, fast: FastMode | None = None):
        self.model, self.args, self.device, self.fast = model, args, device, fast
        self.ids, self.mask = (t.to(device) for t in make_prompt(prompt_ids(args.size), model.cfg.text_prompt_length))

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.fast is not None:
            return autocast(self.device, self.fast)
        if self.args.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def timed(self, work: Callable[..., T], *inputs: Any) -> tuple[T, float]:
        synchronize(self.device)
        started = time.perf_counter()
        with torch.no_grad(), self.autocast():
            out = work(*inputs)
        synchronize(self.device)
        return out, time.perf_counter() - started

    def project_prefixes(self, wave: torch.Tensor) -> SharedPrefix:
        """Like `inference.Engine.prefixes`: audio prefixes in batches, the prompt's text prefix computed once."""
        text = self.model.text_prefix(self.ids, self.mask).float()
        audio = []
        for start in range(0, len(wave), self.args.audio_batch):
            part = wave[start : start + self.args.audio_batch].to(self.device)
            audio.append(self.model.audio_prefix(self.model.encode_audio(part)).float())
        audio_prefix = torch.cat(audio)
        return SharedPrefix(audio_prefix, text.expand(len(audio_prefix), -1, -1))

    def project_decode(self, prefix: SharedPrefix, max_len: int, stop_ids: tuple[int, ...] = ()) -> Beams:
        beam = 1 if self.fast is not None and self.fast.greedy else self.args.beam
        gen = GenerationConfig(beam=beam, max_len=max_len, stop_ids=stop_ids)
        out = []
        for start in range(0, prefix.rows, self.args.batch):
            rows = slice(start, start + self.args.batch)
            part = SharedPrefix(prefix.shared[rows], prefix.own[rows])
            for hyps in beam_search(self.model.gpt, part, gen):
                out.append([(h.tokens, h.score) for h in hyps])
        return out

    def reference_prefixes(self, wave: torch.Tensor) -> torch.Tensor:
        """Like the original `generate`: audio and prompt prefixes of the clips in one batch (the prompt's rows
        repeated), or of one clip at a time with `--reference-prefix per-clip`."""
        rows_at_once = 1 if self.args.reference_prefix == "per-clip" else len(wave)
        out = []
        for start in range(0, len(wave), rows_at_once):
            part = wave[start : start + rows_at_once].to(self.device)
            n = len(part)
            out.append(self.model.prefix(part, self.ids.expand(n, -1), self.mask.expand(n, -1)).float())
        return torch.cat(out)

    def reference_decode(self, prefix: torch.Tensor, max_len: int) -> Beams:
        gpt, beam = self.model.gpt, self.args.beam
        return [recompute_beam_search(gpt, prefix[i : i + 1], beam, max_len) for i in range(len(prefix))]

    def run(self, method: str, wave: torch.Tensor, max_len: int) -> tuple[Beams, float, float]:
        if method == "reference":
            make_prefix, decode = self.reference_prefixes, self.reference_decode
        else:
            make_prefix, decode = self.project_prefixes, self.project_decode
        prefix, prefix_s = self.timed(make_prefix, wave)
        results, decode_s = self.timed(decode, prefix, max_len)
        return results, prefix_s, decode_s

    def captions(self, wave: torch.Tensor) -> list[list[int]]:
        """Each window's best caption, as the engine writes it: stopping at the released model's end tokens."""
        with torch.no_grad(), self.autocast():
            beams = self.project_decode(self.project_prefixes(wave), self.args.max_len, stop_ids=(220, 50256))
        return [hyps[0][0] for hyps in beams]


def smoke_windows(folder: Path, limit: int, samples: int) -> torch.Tensor:
    """The first 7 s window of each real recording in `folder` (sorted by name), at most `limit` of them."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)[:limit]
    waves = [next(iter_windows(p)).samples for p in paths]
    return torch.from_numpy(np.stack(waves)) if waves else torch.empty(0, samples)


def caption_embeddings(token_table: torch.Tensor, captions: list[list[int]]) -> list[list[float]]:
    """Unit mean token embedding of each caption (the stand-in for a text embedding, see the module docstring)."""
    rows = [token_table[c].mean(0) if c else torch.zeros(token_table.shape[1]) for c in captions]
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1).tolist()


def fast_mode_of(method: str, device: torch.device) -> FastMode | None:
    if method not in FAST_METHODS:
        return None
    return FAST_METHODS[method] or FastMode.for_device(device)


def run_method(args: argparse.Namespace) -> Run:
    """Child process: build the model, warm up, time one method, report."""
    device = torch.device(args.device)
    model = build_model(args.size, device)
    checksum = weight_checksum(model)
    token_table = model.gpt.get_input_embeddings().weight.detach().float().clone()  # before a fast conversion
    rss_model = current_rss_mib()
    fast = fast_mode_of(args.method, device)
    if args.method != "reference":
        prepare_model(model, device, fast)  # as the engine runs it
    bench = Bench(model, args, device, fast)
    clips = args.reference_clips if args.method == "reference" else args.clips
    wave = make_audio(clips, model.cfg.audio.clip_samples)
    bench.run(args.method, wave[:1], max_len=2)  # warm-up: first calls allocate and pick kernels; not timed
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cpu_before = cpu_seconds()
    results, prefix_s, decode_s = bench.run(args.method, wave, args.max_len)
    cpu_s = cpu_seconds() - cpu_before
    run = Run(
        method=args.method,
        clips=clips,
        prefix_s=prefix_s,
        decode_s=decode_s,
        cpu_s=cpu_s,
        rss_model_mib=rss_model,
        peak_rss_mib=peak_rss_mib(),
        peak_gpu_mib=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0,
        load=os.getloadavg()[0],
        checksum=checksum,
        tokens=[[toks for toks, _ in hyps] for hyps in results],
        scores=[[score for _, score in hyps] for hyps in results],
        mode=str(fast or FastMode()),
    )
    if args.agreement and args.method != "reference":
        run.smoke_tokens = bench.captions(smoke_windows(args.smoke, args.agreement_clips, wave.shape[1]))
        run.smoke_embeddings = caption_embeddings(token_table, run.smoke_tokens)
    return run


def profile(args: argparse.Namespace) -> None:
    """The project method under torch.profiler, in this process: the operators with the most time of their own."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    device = torch.device(args.device)
    fast = fast_mode_of("fast", device) if args.fast else None
    model = prepare_model(build_model(args.size, device), device, fast)
    bench = Bench(model, args, device, fast)
    wave = make_audio(args.clips, model.cfg.audio.clip_samples)
    bench.run("project", wave[:1], max_len=2)
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
    with torch_profile(activities=activities) as profiler:
        _, prefix_s, decode_s = bench.run("project", wave, args.max_len)
    seconds = prefix_s + decode_s
    print(
        f"project, {args.clips} clips, {args.max_len} tokens: prefixes {prefix_s:.2f} s, decoding {decode_s:.2f} s,"
        f" {seconds / args.clips:.3f} s per clip (load average {os.getloadavg()[0]:.1f})"
    )
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def child(method: str) -> Run:
    """Rerun this script, with the same options, for one method."""
    argv = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--method", method]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {method} run failed (exit code {done.returncode})")
    return Run(**json.loads(done.stdout.strip().splitlines()[-1]))


def compare(project: Run, reference: Run, dtype: str) -> None:
    """Same token sequences for every clip both ran; under float32 anything else is a bug."""
    n = min(project.clips, reference.clips)
    differ = [i for i in range(n) if project.tokens[i] != reference.tokens[i]]
    score_gap = max(abs(a - b) for i in range(n) for a, b in zip(project.scores[i], reference.scores[i], strict=True))
    if differ:
        print(f"outputs identical: no ({len(differ)} of {n} clips differ, first: clip {differ[0]})")
        if dtype == "fp32":
            raise SystemExit("float32 runs must agree token for token")
    else:
        print(
            f"outputs identical: yes ({n} clips x {len(project.tokens[0])} beams x "
            f"{len(project.tokens[0][0])} tokens; largest score difference {score_gap:.2e})"
        )


def report(runs: list[Run], args: argparse.Namespace) -> None:
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, torch threads: {torch.get_num_threads()}"
    print(
        f"device: {device}; dtype {args.dtype}; beam {args.beam}; {args.max_len} new tokens per beam, no stop token;"
        f" project batch {args.batch}; reference prefixes {args.reference_prefix}; warm-up not timed"
    )
    gpu = args.device == "cuda"
    header = f"{'method':<12} {'mode':<12} {'clips':>5} {'clips/s':>9} {'seconds':>8} {'prefix s':>9} {'decode s':>9}"
    header += f" {'CPU s':>8} {'RSS model MiB':>14} {'peak RSS MiB':>13} {'load':>5}"
    print(header + (f" {'peak GPU MiB':>13}" if gpu else ""))
    for r in runs:
        line = f"{r.method:<12} {r.mode:<12} {r.clips:>5} {r.clips_per_s:>9.3f} {r.seconds:>8.2f} {r.prefix_s:>9.2f}"
        line += f" {r.decode_s:>9.2f} {r.cpu_s:>8.1f} {r.rss_model_mib:>14.0f} {r.peak_rss_mib:>13.0f} {r.load:>5.1f}"
        print(line + (f" {r.peak_gpu_mib:>13.0f}" if gpu else ""))
    project, reference, *fast_runs = runs
    ratio = project.clips_per_s / reference.clips_per_s
    decode_ratio = (project.clips / project.decode_s) / (reference.clips / reference.decode_s)
    print(f"ratio project / reference: {ratio:.1f}x clips/s (decoding alone: {decode_ratio:.1f}x)")
    if not gpu:  # with one thread, CPU time is what the work costs however busy the machine is
        cpu_ratio = (reference.cpu_s / reference.clips) / (project.cpu_s / project.clips)
        print(f"ratio of CPU seconds per clip reference / project: {cpu_ratio:.1f}x")
    for run in fast_runs:
        print(
            f"{run.method} ({run.mode}): {run.clips_per_s / reference.clips_per_s:.1f}x the reference's clips/s, "
            f"{run.clips_per_s / project.clips_per_s:.2f}x exact mode's; {agreement(project, run)}"
        )


def agreement(exact: Run, fast: Run) -> str:
    """How often the fast method wrote exact mode's caption for a real recording, and how close the captions are."""
    n = len(exact.smoke_tokens)
    if not n:
        return "agreement not measured (no recordings in --smoke)"
    same = sum(a == b for a, b in zip(exact.smoke_tokens, fast.smoke_tokens, strict=True))
    cosines = (np.array(exact.smoke_embeddings) * np.array(fast.smoke_embeddings)).sum(axis=1)
    return (
        f"agreement with exact mode on {n} real recordings: {same}/{n} identical captions ({same / n:.0%}), "
        f"mean caption-embedding cosine {cosines.mean():.3f}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=["base", "tiny"],
        default="base",
        help="tiny: the test suite's toy model, to check in seconds that both methods agree (its timings mean nothing)",
    )
    parser.add_argument("--clips", type=int, default=32, help="clips for the project method")
    parser.add_argument("--reference-clips", type=int, default=None, help="clips for the reference (default --clips)")
    parser.add_argument("--batch", type=int, default=None, help="project rows per call (default: the device's)")
    parser.add_argument("--audio-batch", type=int, default=None, help="project clips per audio-encoder call")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=30, help="new tokens per beam")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--reference-prefix", choices=["batched", "per-clip"], default="batched")
    parser.add_argument("--fast", action="store_true", help="add a row for what --fast picks on the device")
    parser.add_argument("--fast-options", action="store_true", help="and a row for each fast option alone")
    parser.add_argument("--smoke", type=Path, default=SMOKE, help="real recordings for the fast rows' agreement")
    parser.add_argument("--agreement-clips", type=int, default=36, help="recordings (first window each) compared")
    parser.add_argument("--profile", action="store_true", help="profile the project method (with --fast: fast)")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # set by the parent for its children
    args = parser.parse_args()
    if min(args.clips, args.reference_clips or 1, args.batch or 1, args.beam, args.max_len, args.threads) < 1:
        parser.error("counts must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU")
    args.reference_clips = args.reference_clips or args.clips
    args.batch = args.batch or default_batch_rows(torch.device(args.device))
    args.audio_batch = args.audio_batch or default_audio_batch_size(torch.device(args.device))
    args.fast = args.fast or args.fast_options
    args.agreement = args.fast and args.smoke.is_dir()
    return args


def methods(args: argparse.Namespace) -> list[str]:
    chosen = ["project", "reference"] + ["fast"] * args.fast
    if args.fast_options:
        chosen += [m for m in FAST_METHODS if m != "fast" and not (m == "fast-int8" and args.device == "cuda")]
    return chosen


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:
        profile(args)
        return
    if args.method:
        print(json.dumps(asdict(run_method(args))))
        return
    runs = [child(method) for method in methods(args)]
    if len({run.checksum for run in runs}) != 1:
        raise SystemExit("the children built different weights")
    report(runs, args)
    compare(runs[0], runs[1], args.dtype)


if __name__ == "__main__":
    main()
