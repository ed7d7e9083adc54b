"""Scoring candidates (`decoding.score_candidates`: `classify --method loglik`, the trainer's label ranking) by the
(window, candidate) pairs a forward pass takes: seconds and peak memory, to size `inference.SCORE_PAIRS_PER_ROW`.

    python benchmarks/bench_score.py --threads 1                 # 8 windows x 128 labels; 8, 16, 32, 64 pairs a row
    python benchmarks/bench_score.py --pairs-per-row 16,32 --candidates 527

Full-size GPT-2 with seeded random weights (nothing downloaded), its linear layers on oneDNN as the engine runs
them on CPU. One batch of `--windows` windows (the engine scores 32 rows / 4 = 8 windows a batch on CPU), each
an 80-token prefix (40 audio tokens shared by the window's rows, 40 of the prompt: `Engine.prefixes`), and
`--candidates` labels of 1 to 6 tokens (seeded). A pass takes at most `pairs per row x 32` (window, candidate)
pairs (`Engine.score_ids`), so `--candidates` must exceed what one pass takes for the chunking to show.

Each setting runs in its own process: one untimed pass, then `--repeats` timed ones. Reported: seconds and CPU
seconds per batch (the best of the repeats), and the peak resident memory of the timed passes above the process's
memory before them (the kernel's high-water mark, reset first; Linux only; run with `MALLOC_MMAP_THRESHOLD_=65536`,
see `peak_memory.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from peak_memory import peak_above_mib, start_peak

from pengi_search.config import PengiConfig
from pengi_search.cpu_kernels import use_onednn_linear
from pengi_search.decoding import score_candidates
from pengi_search.inference import default_batch_rows
from pengi_search.kv_cache import SharedPrefix
from pengi_search.model import language_model

SEED = 0
ROWS = default_batch_rows(torch.device("cpu"))  # the default rows a pass's pairs are counted in


def measure(pairs_per_row: int, windows: int, candidates: int, repeats: int) -> dict[str, float]:
    """One setting, in this process: the batch's scoring, timed, and the memory it took above what was there."""
    torch.manual_seed(SEED)
    gpt = language_model(PengiConfig.preset("base").decoder).eval()
    use_onednn_linear(gpt)
    E = gpt.get_input_embeddings().embedding_dim
    prefix = SharedPrefix(torch.randn(windows, 40, E), torch.randn(windows, 40, E))
    generator = torch.Generator().manual_seed(SEED)
    lengths = torch.randint(1, 7, (candidates,), generator=generator).tolist()
    labels = [torch.randint(0, 50_000, (n,), generator=generator).tolist() for n in lengths]
    max_rows = pairs_per_row * ROWS
    score_candidates(gpt, prefix, labels, max_rows=max_rows)  # untimed: the allocator's first requests
    start = start_peak()
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        score_candidates(gpt, prefix, labels, max_rows=max_rows)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return {
        "pairs_per_row": pairs_per_row,
        "pairs_per_pass": max_rows,
        "passes": -(-candidates // max(1, max_rows // windows)),
        "seconds": best_wall,
        "cpu_s": best_cpu,
        "peak_above_mib": peak_above_mib(start),
        "load": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs-per-row", default="8,16,32,64", help="comma-separated settings to compare")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process's setting
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.windows, args.candidates, args.repeats)))
        return
    shared = ["--windows", str(args.windows), "--candidates", str(args.candidates), "--repeats", str(args.repeats)]
    if args.threads:
        shared += ["--threads", str(args.threads)]
    print(f"{args.windows} windows x {args.candidates} candidates, {torch.get_num_threads()} threads")
    print(f"{'pairs/row':>9} {'pairs/pass':>10} {'passes':>6} {'s':>7} {'CPU s':>7} {'peak MiB':>9} {'load':>5}")
    for setting in (int(part) for part in args.pairs_per_row.split(",")):
        child = [sys.executable, __file__, "--one", str(setting), *shared]
        row = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
        print(
            f"{row['pairs_per_row']:>9} {row['pairs_per_pass']:>10} {row['passes']:>6} {row['seconds']:>7.2f} "
            f"{row['cpu_s']:>7.2f} {row['peak_above_mib']:>9.0f} {row['load']:>5.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
