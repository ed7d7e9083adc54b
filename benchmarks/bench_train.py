"""Training throughput and memory: forward + backward + Adam step of the full-size model, as the trainer runs it.

    python benchmarks/bench_train.py                                   # CPU, batch 2, 3 timed steps
    python benchmarks/bench_train.py --device cuda --dtype bf16        # largest batch that fits (doubling search)
    python benchmarks/bench_train.py --device cuda --dtype bf16 --batch 32 --steps 20
    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/bench_train.py --cached --batch 16 --real-tokens 12 --threads 1

The `base` architecture (or `--preset base_no_text_enc`) with seeded random weights: nothing is downloaded. The
paper's freezing (`trainer.model_setup`: GPT-2 and the CLIP text tower frozen and in eval mode; HTSAT, projections
and mappers trained, dropout on), the trainer's objective (`trainer.objective.AnswerNll`: summed NLL of the answer
tokens, divided by their count) and its optimizer (Adam). Inputs are random 7 s clips, a CLIP-style prompt and
random answers of `--answer-tokens` tokens, of which the first `--real-tokens` are real and the rest padding (a
batch is padded to its longest answer). `--cached`: the audio backbone frozen and its outputs given instead of
clips, as the trainer runs on cached features: what is timed is then the projection, the mappers and GPT-2.

One untimed warm-up step, then `--steps` timed ones. Reported: samples/s, seconds per step, the CPU seconds of
the timed steps, peak resident memory of the process (RSS) and that of the timed steps above the RSS before them
(what the steps' activations take: the model and Adam's state are there before; with `MALLOC_MMAP_THRESHOLD_=65536`,
see `peak_memory.py`) and, on CUDA, peak allocated GPU memory. Without `--batch` on CUDA, the batch doubles from 1
until a step runs out of GPU memory; the largest that fitted is timed.
On a busy machine, `--threads 1` gives steadier CPU figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass

import torch
from peak_memory import peak_above_mib, start_peak

from pengi_search.config import PengiConfig
from pengi_search.model import Pengi
from trainer.config import FreezeSection
from trainer.model_setup import apply_freezing, set_train_mode, trainable_parameters
from trainer.objective import AnswerNll

SEED = 0
CLIP_START, CLIP_END = 49406, 49407
PROMPT_WORDS = [9313, 3940, 24654]  # three CLIP word ids, as a short task prompt
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Result:
    preset: str
    device: str
    dtype: str
    batch: int
    answer_tokens: str  # real / padded length
    cached: bool
    steps: int
    trainable_params_m: float
    seconds_per_step: float
    samples_per_s: float
    cpu_s: float
    peak_rss_mib: float
    peak_steps_mib: float  # the timed steps' peak RSS above the RSS before them (model and optimizer not counted)
    peak_gpu_mib: float
    load: float  # 1-minute load average after the run: other processes slow it down


class Bench:
    def __init__(self, preset: str, device: torch.device, dtype: str, answers: tuple[int, int], cached: bool) -> None:
        torch.manual_seed(SEED)
        self.cfg = PengiConfig.preset(preset)
        model = Pengi(self.cfg)
        freeze = FreezeSection(audio_backbone=cached)
        frozen = apply_freezing(model, freeze)
        model.to(device)
        set_train_mode(model, frozen, freeze)
        self.model = model
        self.loss = AnswerNll(model, cached=cached)
        self.parameters = trainable_parameters(model)
        self.optimizer = torch.optim.Adam(self.parameters, lr=1e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
        self.device, self.dtype, self.cached = device, dtype, cached
        self.answer_tokens, self.real_tokens = answers

    def inputs(self, batch: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(SEED)
        length = self.cfg.text_prompt_length
        if self.cfg.use_text_encoder:
            row = [CLIP_START, *PROMPT_WORDS, CLIP_END]
            prompt = torch.tensor(row + [CLIP_END] * (length - len(row)))
        else:
            prompt = torch.randint(0, self.cfg.decoder.vocab_size, (length,), generator=generator)
        mask = (torch.arange(length) < len(PROMPT_WORDS) + 2).long()
        answers = torch.randint(0, self.cfg.decoder.vocab_size, (batch, self.answer_tokens), generator=generator)
        audio = (self.cfg.audio.out_emb,) if self.cached else (self.cfg.audio.clip_samples,)
        real = (torch.arange(self.answer_tokens) < self.real_tokens).long()
        tensors = {
            "wave": 0.1 * torch.randn(batch, *audio, generator=generator),
            "prompt_ids": prompt.expand(batch, -1),
            "prompt_mask": mask.expand(batch, -1),
            "answer_ids": answers,
            "answer_mask": real.expand(batch, -1),
        }
        return {key: value.to(self.device) for key, value in tensors.items()}

    def step(self, inputs: dict[str, torch.Tensor]) -> None:
        dtype = DTYPES[self.dtype]
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            nll = self.loss(**inputs)
        self.scaler.scale(nll / inputs["answer_mask"].sum()).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fits(self, batch: int) -> bool:
        try:
            self.step(self.inputs(batch))
            return True
        except torch.cuda.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            return False

    def largest_batch(self, limit: int) -> int:
        """Double from 1 while a step fits in GPU memory."""
        batch = 0
        candidate = 1
        while candidate <= limit and self.fits(candidate):
            batch, candidate = candidate, candidate * 2
        if batch == 0:
            raise SystemExit("not even a batch of 1 fits in GPU memory")
        return batch

    def time(self, batch: int, steps: int) -> tuple[float, float, float]:
        """(wall seconds, CPU seconds, peak RSS above the start in MiB) of `steps` steps, after one untimed warm-up
        step (which also makes Adam's state)."""
        inputs = self.inputs(batch)
        self.step(inputs)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = start_peak()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(steps):
            self.step(inputs)
        return time.perf_counter() - wall, time.process_time() - cpu, peak_above_mib(start)


def peak_rss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", choices=["base", "base_no_text_enc"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, the largest that fits on CUDA")
    parser.add_argument("--max-batch", type=int, default=1024, help="upper bound of the doubling search")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--answer-tokens", type=int, default=20, help="a typical caption with its end tokens")
    parser.add_argument("--real-tokens", type=int, default=None, help="of those, real ones (default: all)")
    parser.add_argument("--cached", action="store_true", help="train on the frozen audio backbone's outputs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.dtype != "fp32" and device.type != "cuda":
        parser.error("--dtype bf16/fp16 is for CUDA; the trainer runs fp32 on CPU")

    real_tokens = args.answer_tokens if args.real_tokens is None else args.real_tokens
    if not 1 <= real_tokens <= args.answer_tokens:
        parser.error("--real-tokens must be between 1 and --answer-tokens")
    bench = Bench(args.preset, device, args.dtype, (args.answer_tokens, real_tokens), args.cached)
    batch = args.batch or (bench.largest_batch(args.max_batch) if device.type == "cuda" else 2)
    wall, cpu, peak_steps = bench.time(batch, args.steps)
    result = Result(
        preset=args.preset,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} thr)",
        dtype=args.dtype,
        batch=batch,
        answer_tokens=f"{real_tokens} / {args.answer_tokens}",
        cached=args.cached,
        steps=args.steps,
        trainable_params_m=sum(p.numel() for p in bench.parameters) / 1e6,
        seconds_per_step=wall / args.steps,
        samples_per_s=batch * args.steps / wall,
        cpu_s=cpu,
        peak_rss_mib=peak_rss_mib(),
        peak_steps_mib=peak_steps,
        peak_gpu_mib=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0,
        load=os.getloadavg()[0],
    )
    if args.json:
        json.dump(asdict(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    for key, value in asdict(result).items():
        print(f"{key:>20}  {value:.2f}" if isinstance(value, float) else f"{key:>20}  {value}")


if __name__ == "__main__":
    main()
