"""`pengi-search describe` on a folder of separate short files, against the Engine on the same clips.

    python benchmarks/bench_cli.py --threads 1              # 16 separate 7 s files, full-size random weights
    python benchmarks/bench_cli.py --files 64 --workdir /tmp/bc    # keeps (and reuses) the model and the clips
    python benchmarks/bench_cli.py --device cuda --files 2048 --threads 8

Three runs over the same `--files` clips (7 s each, so one window each), each in its own process, with the
same threads and device, in exact mode with `describe`'s three default prompts (caption, metadata, sound events):

  engine    the yardstick: `inference.Engine` on the clips' windows, decoded beforehand and held in memory, in
            batches of the engine's default size (what the issue calls the Engine's clips/s).
  pipeline  what `describe` does once the model is loaded: `window_batches.map_windows` over the files, decoding
            them in worker processes (started before the model loads, as `describe` starts them) and batching
            windows across files. It also times the model's work on each batch, so it reports the fraction of the
            wall time the model (the GPU, on CUDA) waits for windows.
  cli       the whole command as a user types it, `pengi-search describe FILE... --json --threads N`, timed from
            start to exit: interpreter, imports, loading the model, decoding, describing, printing.

The model is a full-size `base` model directory with random weights, built as `bench_query.py` builds it (a
CLIP-like tokenizer trained on the spot and the test suite's small GPT-2 tokenizer: no vocabulary is available
offline; answers are decoded with it, which costs what it costs). The script checks that the command's answers
are the engine's, and prints clips/s for each run and the ratios to the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_query import build_model  # noqa: E402 (the sibling benchmark builds the same model directory)

SECONDS = 7.0
SAMPLE_RATE = 44_100
CLI = "from pengi_search.cli import app; app(prog_name='pengi-search')"


@dataclass
class Run:
    method: str
    clips: int
    seconds: float
    model_seconds: float  # time spent in the model's work (engine and pipeline)
    answers: list[dict[str, str]]  # per clip: prompt key -> caption

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds


def write_clips(folder: Path, count: int) -> list[Path]:
    """`count` different 7 s mono files (a tone over seeded noise each)."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    t = np.arange(round(SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    for n in range(count):
        path = folder / f"clip-{n:04d}.wav"
        if not path.exists():
            noise = np.random.default_rng(n).normal(0, 0.05, len(t))
            sf.write(path, (0.3 * np.sin(2 * np.pi * (110 + 37 * n) * t) + noise).astype(np.float32), SAMPLE_RATE)
        paths.append(path)
    return paths


def engine_run(args: argparse.Namespace, paths: list[Path]) -> Run:
    """The engine on windows held in memory: the clips/s the command should approach."""
    import numpy as np
    import torch

    from pengi_search.audio import iter_windows
    from pengi_search.decoding import GenerationConfig
    from pengi_search.inference import Engine
    from pengi_search.model_dir import ModelDir
    from pengi_search.prompts import DESCRIBE_TASKS, TASK_PROMPTS

    torch.set_num_threads(args.threads)
    engine = Engine.load(ModelDir.read(args.model_dir), args.device)
    prompts = [TASK_PROMPTS[task] for task in DESCRIBE_TASKS]
    windows = np.stack([w.samples for p in paths for w in iter_windows(p)])
    gen = GenerationConfig(beam=3, max_len=30)
    engine.generate(engine.audio_embeddings(windows[:1]), prompts, GenerationConfig(beam=3, max_len=2))  # warm-up
    per_batch = engine.windows_per_batch(len(prompts))
    answers = []
    started = time.perf_counter()
    for start in range(0, len(windows), per_batch):
        embeds = engine.audio_embeddings(windows[start : start + per_batch])
        answers += engine.generate(embeds, prompts, gen)
    seconds = time.perf_counter() - started
    texts = [{task: a.text for task, a in zip(DESCRIBE_TASKS, row, strict=True)} for row in answers]
    return Run("engine", len(paths), seconds, seconds, texts)


def pipeline_run(args: argparse.Namespace, paths: list[Path]) -> Run:
    """`describe`'s path after loading: decoding workers, batches across files; the model's busy time measured."""
    import numpy as np
    import torch

    from pengi_search.decoding import GenerationConfig
    from pengi_search.inference import Engine
    from pengi_search.model_dir import ModelDir
    from pengi_search.window_batches import Decoding, map_windows

    decoding = Decoding(paths)  # as `describe` does: the files decode while the model loads
    torch.set_num_threads(args.threads)
    engine = Engine.load(ModelDir.read(args.model_dir), args.device)
    prompts = engine.default_prompts()
    gen = GenerationConfig(beam=3, max_len=30)
    busy = 0.0

    def describe(windows):
        nonlocal busy
        began = time.perf_counter()
        described = engine.describe_windows(windows, prompts, gen)
        busy += time.perf_counter() - began
        return described

    silence = np.zeros(round(SECONDS * SAMPLE_RATE), dtype=np.float32)
    engine.describe(silence, prompts, GenerationConfig(beam=3, max_len=2))  # warm-up
    started = time.perf_counter()
    outcomes = list(map_windows(decoding, describe, batch_size=engine.windows_per_batch(len(prompts))))
    seconds = time.perf_counter() - started
    texts = [{task: a.text for task, a in o.results[0].answers.items()} for o in outcomes]
    return Run("pipeline", len(paths), seconds, busy, texts)


def cli_run(args: argparse.Namespace, paths: list[Path]) -> Run:
    command = [sys.executable, "-c", CLI, "describe", *map(str, paths), "--model", str(args.model_dir)]
    command += ["--json", "--threads", str(args.threads), "--device", args.device]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"describe failed ({done.returncode}):\n{done.stderr}")
    texts = [window["answers"] for entry in json.loads(done.stdout) for window in entry["windows"]]
    return Run("cli", len(paths), seconds, 0.0, texts)


def child(method: str, args: argparse.Namespace) -> Run:
    argv = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--method", method]
    argv += ["--model-dir", str(args.model_dir), "--clips-dir", str(args.clips_dir)]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {method} run failed (exit code {done.returncode})")
    return Run(**json.loads(done.stdout.strip().splitlines()[-1]))


def report(runs: list[Run], args: argparse.Namespace) -> None:
    engine = runs[0]
    print(
        f"{args.files} separate {SECONDS:.0f} s files, describe's 3 prompts, beam 3, up to 30 tokens; device "
        f"{args.device}, {args.threads} thread(s); load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'run':<9} {'seconds':>8} {'clips/s':>8} {'of engine':>10}  model busy")
    for run in runs:
        busy = f"{run.model_seconds / run.seconds:.0%} of the wall time" if run.model_seconds else "-"
        share = run.clips_per_s / engine.clips_per_s
        print(f"{run.method:<9} {run.seconds:>8.2f} {run.clips_per_s:>8.3f} {share:>10.1%}  {busy}")
    same = all(run.answers == engine.answers for run in runs)
    print(f"answers identical to the engine's: {'yes' if same else 'no'}")
    if not same:
        raise SystemExit("the command must write what the engine writes")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the model and clips here")
    parser.add_argument("--method", choices=["engine", "pipeline", "cli"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--clips-dir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.method:
        paths = sorted(args.clips_dir.glob("clip-*.wav"))[: args.files]
        run = {"engine": engine_run, "pipeline": pipeline_run, "cli": cli_run}[args.method](args, paths)
        print(json.dumps(asdict(run)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        args.model_dir = build_model(workdir / "model")
        args.clips_dir = workdir / "clips"
        write_clips(args.clips_dir, args.files)
        runs = [child(method, args) for method in ("engine", "pipeline", "cli")]
    report(runs, args)


if __name__ == "__main__":
    main()
