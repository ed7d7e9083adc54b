"""`classify` from a library's stored audio embeddings (loglik) or captions (text): files per second, file by file
or batched.

    python benchmarks/bench_classify.py --threads 1                 # 64 files, full-size random weights, CPU
    python benchmarks/bench_classify.py --files 128 --workdir /tmp/bcl   # keeps (and reuses) the model there
    python benchmarks/bench_classify.py --size tiny --files 16      # seconds: do both ways agree?
    python benchmarks/bench_classify.py --size tiny --files 500 --method text   # stored captions: mostly store reads

A file indexed and unchanged is classified by loglik from its stored audio embeddings: no audio is decoded, and
what remains is the language model scoring every label as the answer to the prompt after each window's prefix.
The script writes `--files` small files (their bytes are never decoded), a library that holds 1 to 3 random
audio embeddings for each (one window for most, as short clips have) recorded by the model in use, and times
`Classifier.classify_files` over them two ways, in one process, after a warm-up run:

  file by file   one call per file, so each file's windows are scored on their own: what `classify` did for
                 every stored file before their windows were batched across files (run this script against an
                 older checkout to see its `batched` row equal this one).
  batched        one call for all the files, as `classify` and `eval classify` make it: the windows of many
                 files share each batch of the engine (`--batch-size`, else the device's default).

Both give every label's score for every file; the script checks that they agree within 1e-4 (float32 products
of other shapes round differently, see tests/test_classify.py) and prints files/s, seconds, the process's CPU
seconds (what to compare on a machine other jobs share, with `--threads 1`) and the ratio.

`--method text` classifies the same files from their stored captions (one a window, "a sound of" and a label,
recorded as decoded with classify's default settings, so they are reused): each file's captions are embedded by
the model's text tower and compared with the labels', a file at a time either way, so what batching changes there
is the store's reads (`stored.stored_windows_of`: a few queries for all the files, not a few for each).

The model is the full-size `base` architecture with random weights, built as `bench_query.py` builds it (its
vocabulary projection is the real 50,257 wide; the labels are encoded by the test suite's small GPT-2 tokenizer,
so each takes a few tokens, as real labels do). `--size tiny` uses the test suite's toy model instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_query import build_model  # noqa: E402 (the sibling benchmark builds the same model directory)

LABELS = [
    "dog", "cat", "rooster", "cow", "frog", "pig", "sheep", "crow", "rain", "sea waves", "crackling fire",
    "crickets", "chirping birds", "water drops", "wind", "pouring water", "toilet flush", "thunderstorm",
    "crying baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing", "brushing teeth",
    "snoring", "drinking sipping", "door knock", "mouse click", "keyboard typing", "church bells", "airplane",
]  # fmt: skip


def build_library(db: Path, folder: Path, model_dir: Path, files: int) -> list[str]:
    """`files` small files, each indexed in `db` with 1 to 3 windows of random audio embeddings (mostly one)."""
    from pengi_search.choices import EXACT_MODE, decoding_settings
    from pengi_search.classify import ClassifySettings
    from pengi_search.db import EmbedderInfo, ModelInfo, TextRecord, WindowInput
    from pengi_search.library import Library
    from pengi_search.model_dir import ModelDir
    from pengi_search.prompts import TASK_PROMPTS
    from pengi_search.scan import scan

    model = ModelDir.read(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip-{i:05d}.wav" for i in range(files)]
    for i, path in enumerate(paths):
        path.write_bytes(b"\0" * (100 + i))  # never read: only its size and time are compared with the store's
    if db.exists():
        db.unlink()
    rng = np.random.default_rng(0)
    dim = model.config.d_proj
    defaults = ClassifySettings()  # the captions say they were decoded as classify decodes: the text method takes them
    decoding = decoding_settings(defaults.beam, defaults.max_len, defaults.stop)
    with Library.open(str(db)) as library:
        store = library.store
        store.set_index_meta(ModelInfo(model.name, str(model.fingerprint)), EmbedderInfo("bench", dim))
        for i, entry in enumerate(scan([str(p) for p in paths], frozenset()).entries):
            file_id = store.upsert_file(entry.path, size=entry.size, mtime=entry.mtime)
            windows = [
                WindowInput(w, 3.0 * w, 3.0 * w + 7.0, [caption], vectors)
                for w in range(1 + (i % 8 == 0) + (i % 16 == 0))  # one window, two for an eighth, three for a 16th
                for caption in [
                    TextRecord(
                        TASK_PROMPTS["caption"],
                        f"a sound of {LABELS[(i + w) % len(LABELS)]}",
                        None,
                        EXACT_MODE,
                        decoding,
                    )
                ]
                for vectors in [{kind: rng.standard_normal(dim).astype(np.float32) for kind in ("text", "audio")}]
            ]
            store.replace_file_windows(file_id, windows)
    return [str(p) for p in paths]


def timed_runs(args: argparse.Namespace, model_dir: Path, db: Path, paths: list[str]) -> None:
    import torch

    from pengi_search.classify import Classifier, ClassifySettings
    from pengi_search.inference import Engine
    from pengi_search.library import Library
    from pengi_search.model_dir import ModelDir

    model = ModelDir.read(model_dir)
    engine = Engine.load(model, "cpu", args.batch_size)
    settings = ClassifySettings(method=args.method)
    with Library.open(str(db), read_only=True) as library:
        classifier = Classifier(LABELS, settings, model_dir=model, library=library, engine=engine)

        def scores(predictions: list) -> np.ndarray:
            assert all(p.source == "index" for p in predictions), "a file was decoded: the library is not reused"
            return np.array([[dict(p.ranked)[label] for label in LABELS] for p in predictions])

        list(classifier.classify_files(paths[:4]))  # warm-up: first calls allocate and pick kernels
        start, cpu_start = time.perf_counter(), time.process_time()
        one_by_one = scores([p for path in paths for p in classifier.classify_files([path])])
        single, single_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        start, cpu_start = time.perf_counter(), time.process_time()
        batched = scores(list(classifier.classify_files(paths)))
        together, together_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    gap = float(np.abs(one_by_one - batched).max())
    threads = args.threads or torch.get_num_threads()
    setup = f"--method {args.method}, model {args.size}, threads {threads}, --batch-size {args.batch_size}"
    print(f"{len(paths)} files, {len(LABELS)} labels, {setup}")
    # CPU seconds too: on a machine shared with other jobs the wall time says more about them than about this run.
    print(f"{'file by file':<14} {len(paths) / single:8.2f} files/s  {single:7.2f} s  CPU {single_cpu:7.2f} s")
    print(
        f"{'batched':<14} {len(paths) / together:8.2f} files/s  {together:7.2f} s  CPU {together_cpu:7.2f} s  "
        f"({single / together:.2f}x)"
    )
    print(f"largest score difference: {gap:.2e}")
    if gap > 1e-4:
        raise SystemExit("batched scores differ from file-by-file ones")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--size", choices=("base", "tiny"), default="base")
    parser.add_argument("--method", choices=("loglik", "text"), default="loglik")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per batch (default: the device's)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the model and the library here")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-classify-"))
    os.environ.setdefault("PENGI_SEARCH_HOME", str(workdir / "home"))
    if args.size == "tiny":
        from pengi_search.testing import make_tiny_model_dir

        model_dir = workdir / "tiny-model"
        if not (model_dir / "config.json").exists():
            make_tiny_model_dir(model_dir)
    else:
        model_dir = build_model(workdir / "model")
    paths = build_library(workdir / "lib.db", workdir / "clips", model_dir, args.files)
    timed_runs(args, model_dir, workdir / "lib.db", paths)


if __name__ == "__main__":
    main()
