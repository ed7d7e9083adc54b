"""End-to-end `index` with the full-size model: windows/s, where the time goes, and when the library is searchable.

    python benchmarks/bench_index_e2e.py                             # 50 files of 20 s (150 windows), CPU
    python benchmarks/bench_index_e2e.py --files 4 --seconds 7       # a quick run (4 windows)
    python benchmarks/bench_index_e2e.py --device cuda --workers 8    # on a GPU machine
    python benchmarks/bench_index_e2e.py --workdir /tmp/bie          # keep (and reuse) the model there

The model is `PengiConfig.preset("base")` with seeded random weights (built as `bench_query.py` builds it: the real
sizes, a CLIP-like tokenizer, the tiny GPT-2 tokenizer), so every stage costs what it costs with the released
weights, except one: random weights rarely emit the end token, so every answer runs the full `--max-len` (30)
tokens, where real captions stop after about 10-15. Generation is therefore the slowest it can be here.

The files are `--files` mono 44.1 kHz WAVs of `--seconds` each (tones and seeded noise), indexed by the real
`run_index` in this process, both passes in one run as `pengi-search index` does by default. Stage times are
measured by wrapping the functions that do the work (wall seconds spent inside them, in this process):
- decoding: waiting for the decoders' next message (the decoding itself with --workers 0; with workers, only the
  time their output was not ready);
- audio embedding: `Engine.audio_embeddings` (HTSAT and its projection, pass 1);
- generation: `Engine.generate` (both prompts, beam search, pass 2);
- caption embedding: the text embedder (Pengi's CLIP text tower, pass 2);
- store: SQL reads and writes of windows and captions, and saving the FAISS files;
- model load: reading the weights; other: scanning, planning, Python.
"Searchable by sound" is the moment pass 2 starts: every window's audio embedding is committed and the FAISS files
saved. The script then runs `similar` on one file from a second connection and checks that every other file is
found, before the captions exist.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_query import build_model  # noqa: E402

# The indexer and the model are imported in main(), not here: every decoding worker runs this script's top level
# again (multiprocessing's fix-up of __main__), and with torch imported here 8 workers waited 17 s of a 28 s GPU run,
# which `pengi-search index` (whose script imports only the CLI) never pays.

STAGES = ("decoding", "audio embedding", "generation", "caption embedding", "store", "model load")


class Timers:
    """Wall seconds spent inside the wrapped functions, per stage (nested calls are not counted twice)."""

    def __init__(self, synchronize: Callable[[], None]) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.synchronize = synchronize
        self._depth = 0

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        function = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return function(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                result = function(*args, **kwargs)
                self.synchronize()
                return result
            finally:
                self.seconds[stage] += time.perf_counter() - started
                self._depth -= 1

        setattr(owner, name, timed)

    def wrap_stream(self, owner: Any, name: str, stage: str) -> None:
        """A function returning an iterator: the time each next() takes is the stage's."""
        function = getattr(owner, name)
        timers = self

        class Timed:
            def __init__(self, stream: Any) -> None:
                self.stream = stream

            def __iter__(self) -> Iterator[Any]:
                return self

            def __next__(self) -> Any:
                started = time.perf_counter()
                try:
                    return next(self.stream)
                finally:
                    timers.seconds[stage] += time.perf_counter() - started

            def close(self) -> None:
                self.stream.close()

        setattr(owner, name, lambda *args, **kwargs: Timed(function(*args, **kwargs)))


def write_files(folder: Path, files: int, seconds: float) -> None:
    rng = np.random.default_rng(0)
    sr = 44_100
    t = np.arange(int(seconds * sr)) / sr
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(files):
        tone = 0.2 * np.sin(2 * np.pi * (110 + 23 * n) * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
        sf.write(folder / f"clip-{n:03d}.wav", (tone + 0.02 * rng.standard_normal(len(t))).astype(np.float32), sr)


class Probe:
    """At the start of pass 2: the time, and `similar` run on the library as it is then."""

    filling = None  # no bar for an index filled from the database

    def __init__(self, db: Path, folder: Path, model: str, device: str) -> None:
        self.db, self.folder, self.model, self.device = db, folder, model, device
        self.started = time.perf_counter()
        self.searchable_at: float | None = None
        self.similar: tuple[int, int, float] | None = None  # files found, files expected, seconds

    def start(self, files: int) -> None:
        pass

    def promised(self, windows: int) -> None:
        pass

    def counted(self, windows: int, promised: int | None = None) -> None:
        pass

    def start_captions(self, windows: int | None) -> None:
        from pengi_search.library import Library
        from pengi_search.search import SearchScope
        from pengi_search.similar import similar_to_file

        self.searchable_at = time.perf_counter() - self.started
        files = sorted(self.folder.iterdir())
        started = time.perf_counter()
        with Library.open(str(self.db)) as library:
            hits, _ = similar_to_file(library, files[0], SearchScope(len(files)), model=self.model, device=self.device)
            captioned = len(library.store.vector_ids("text"))
        assert captioned == 0, "pass 2 started after captions were written"
        self.similar = (len({hit.path for hit in hits}), len(files) - 1, time.perf_counter() - started)

    def advance(self, files: int = 0, windows: int = 0) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each file (7 s windows, 5 s hop)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per batch [default: the device's]")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes (0: in this process)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's choice]")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=30)
    parser.add_argument("--workdir", type=Path, help="keeps the model (and reuses it); default: a temp folder")
    args = parser.parse_args()
    import torch

    import indexer.audio_pass as audio_pass
    import indexer.captions as captions_module
    import indexer.pipeline as pipeline
    from indexer.pipeline import run_index
    from indexer.run_report import IndexOptions
    from pengi_search.db import Store
    from pengi_search.embedders import PengiTextEmbedder
    from pengi_search.inference import Engine
    from pengi_search.library import Library

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-index-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PENGI_SEARCH_HOME", str(workdir / "home"))
    model_dir = build_model(workdir / "model")
    run = workdir / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, db = run / "sounds", run / "index.db"
    write_files(folder, args.files, args.seconds)

    cuda = args.device.startswith("cuda")
    timers = Timers(torch.cuda.synchronize if cuda else lambda: None)
    timers.wrap_stream(audio_pass, "decode_all", "decoding")
    timers.wrap(Engine, "audio_embeddings", "audio embedding")
    timers.wrap(Engine, "generate", "generation")
    timers.wrap(PengiTextEmbedder, "embed", "caption embedding")
    for name in ("upsert_file", "replace_file_windows", "set_index_meta"):
        timers.wrap(Store, name, "store")
    for name in ("add_captions", "uncaptioned_windows"):
        timers.wrap(captions_module, name, "store")
    timers.wrap(pipeline, "caption_counts", "store")
    timers.wrap(Library, "sync_vector_indexes", "store")
    timers.wrap(Engine, "load", "model load")

    probe = Probe(db, folder, str(model_dir), args.device)
    options = IndexOptions(
        roots=[str(folder)],
        db=str(db),
        model=str(model_dir),
        device=args.device,
        workers=args.workers,
        batch_size=args.batch_size,
        beam=args.beam,
        max_len=args.max_len,
    )
    started = time.perf_counter()
    summary = run_index(options, probe)
    probing = probe.similar[2] if probe.similar is not None else 0.0  # the check is not the indexer's time
    total = time.perf_counter() - started - probing
    assert summary.windows and summary.captioned == summary.windows and not summary.failed, summary.to_json()

    windows = summary.windows
    searchable = probe.searchable_at or summary.searchable_s
    load = timers.seconds["model load"]
    print(
        f"{args.files} files x {args.seconds:g} s = {windows} windows; device {args.device}, "
        f"batch {args.batch_size or 'default'}, "
        f"{args.workers} decoding worker(s), torch threads {torch.get_num_threads()}, beam {args.beam}, "
        f"max_len {args.max_len}; {os.cpu_count()} CPUs"
    )
    print(f"index, both passes: {total:.1f} s = {windows / total:.3f} windows/s")
    print(f"  without loading the model ({load:.1f} s): {windows / (total - load):.3f} windows/s")
    print(f"searchable by sound (pass 1 committed, FAISS files saved): {searchable:.1f} s after the start")
    if probe.similar is not None:
        found, expected, seconds = probe.similar
        print(f"  similar at that moment, no caption yet: {found} of {expected} other files found, in {seconds:.1f} s")
    print(f"captions for every window: {total:.1f} s after the start (pass 2: {total - searchable:.1f} s)")
    pass_rates = f"pass 1 {windows / searchable:.3f} (with the model load), pass 2 {windows / (total - searchable):.3f}"
    print(f"  windows/s: {pass_rates}")
    print(f"{'stage':18} {'seconds':>8} {'share':>6}")
    accounted = 0.0
    for stage in STAGES:
        accounted += timers.seconds[stage]
        print(f"{stage:18} {timers.seconds[stage]:8.1f} {timers.seconds[stage] / total:6.1%}")
    print(f"{'other':18} {total - accounted:8.1f} {(total - accounted) / total:6.1%}")
    print(f"run folder (model kept in {model_dir}): {run}")


if __name__ == "__main__":
    main()
