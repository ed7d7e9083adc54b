"""Cold `pengi-search query`: the wall time of a fresh process answering one text query, end to end.

    python benchmarks/bench_query.py                      # builds a full-size model dir in a temp folder
    python benchmarks/bench_query.py --workdir /tmp/bq    # keeps (and reuses) the model and the index there
    python benchmarks/bench_query.py --similar 200        # `similar` over 200 indexed files instead (tiny model)

Vector search alone (p50/p99 latency and recall@10 of flat, HNSW and IVF-PQ at 10k-1M vectors) is measured by
`benchmarks/bench_vectors.py`; this script measures what a user waits for: interpreter start, imports, opening the
database and the FAISS file, reading the text tower, tokenising and embedding the query, searching, printing.

The model is `PengiConfig.preset("base")` with random weights: the real sizes (a 1.2 GiB safetensors file, a
12-layer 512-wide CLIP text tower, 1024-d embeddings), so reading and running the text tower cost what they cost
with the released weights. No real CLIP vocabulary exists offline: the tokenizer is transformers' CLIPTokenizer
class over a small BPE vocabulary trained on the spot (CLIP's normaliser, pre-tokeniser and special tokens), so
tokenisation is a little cheaper than with the 49k-token original. The index holds `--windows` captions.

Rows:
- `python -c pass`: the interpreter floor on this machine.
- `query --help`: the CLI's own imports.
- `query (numpy text tower)`: the shipped path (pengi_search.text_query).
- `query (torch text tower)`: the same query through embedders.PengiTextEmbedder, the path before text_query.
The parity line compares both towers' embeddings at full size.

`--similar N` measures `similar` instead: audio -> audio over N indexed, unchanged files, whose stored audio
vectors are searched (nothing is decoded, no model runs). The library is `bench_classify.py`'s: `--windows` small
files (their bytes are never read), 1 to 3 random audio embeddings each, recorded by the test suite's tiny model
(kept in `--workdir` and reused by the next run there, an older checkout's too).
In one process, after a warm-up, it times `similar_to_files` over the first N files two ways and checks that both
give the same hits (paths, windows, scores, order):

  file by file   one call per file: each file's stored vectors read and searched alone, as every `similar` of
                 several files did before they were batched (run this script against an older checkout to see its
                 `batched` row equal this one).
  batched        one call for all N files, as `pengi-search similar a.wav b.wav folder/` makes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAPTIONS = [
    "a dog barks in the distance",
    "rain falls on a tin roof",
    "a bell rings twice",
    "birds sing while cars pass by",
    "water runs from a tap",
    "a man speaks over a radio",
    "an engine idles and then revs",
    "footsteps on a wooden floor",
]
QUERY = "dog barking in the rain"
TORCH_QUERY = """
import json, sys, torch
from pengi_search.embedders import PengiTextEmbedder
from pengi_search.library import Library
from pengi_search.model_dir import ModelDir
from pengi_search.search import SearchScope, query_text
db, model_dir, text = sys.argv[1:4]
with Library.open(db) as library:
    embedder = PengiTextEmbedder.from_model_dir(ModelDir.read(model_dir), torch.device("cpu"))
    hits = query_text(library, text, SearchScope(10), embedder=embedder)
print(json.dumps([h.to_json() for h in hits]))
"""


def build_model(directory: Path) -> Path:
    """A full-size `base` model directory with random weights and a CLIP-like tokenizer."""
    if (directory / "config.json").exists():
        return directory
    import dataclasses

    import torch

    from pengi_search.config import PengiConfig
    from pengi_search.model import Pengi
    from pengi_search.testing import clip_like_tokenizer, tiny_gpt2_tokenizer
    from pengi_search.tokenization import TOKENIZER_DIR

    clip = clip_like_tokenizer()
    cfg = PengiConfig.preset("base")
    # The vocabulary keeps CLIP's size; the special ids are the small tokenizer's, so pooling finds its end token.
    cfg.text_encoder = dataclasses.replace(
        cfg.text_encoder, bos_token_id=clip.bos_token_id, eos_token_id=clip.eos_token_id
    )
    torch.manual_seed(0)
    start = time.perf_counter()
    Pengi(cfg).eval().save_pretrained(directory, extra={"name": "bench-base"})
    clip.save_pretrained(directory / TOKENIZER_DIR / "clip")
    tiny_gpt2_tokenizer().save_pretrained(directory / TOKENIZER_DIR / "gpt2")
    print(f"built {directory} in {time.perf_counter() - start:.1f} s")
    return directory


def build_index(db: Path, model_dir: Path, windows: int) -> None:
    """`windows` one-window files whose captions are embedded by the model's text tower."""
    if db.exists():
        return
    import numpy as np

    from pengi_search.db import EmbedderInfo, ModelInfo, TextRecord, WindowInput
    from pengi_search.library import Library
    from pengi_search.model_dir import ModelDir
    from pengi_search.text_query import NumpyTextEmbedder

    model = ModelDir.read(model_dir)
    embedder = NumpyTextEmbedder.from_model_dir(model)
    texts = [f"{CAPTIONS[i % len(CAPTIONS)]} ({i})" for i in range(windows)]
    vectors = embedder.embed(texts)
    rng = np.random.default_rng(0)
    with Library.open(str(db)) as library:
        store = library.store
        store.set_index_meta(ModelInfo(model.name, str(model.fingerprint)), EmbedderInfo(embedder.id, embedder.dim))
        for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
            file_id = store.upsert_file(f"/library/sound-{i:05d}.wav", size=1000 + i, mtime=1.0)
            audio = rng.standard_normal(embedder.dim).astype(np.float32)
            window = WindowInput(
                0, 0.0, 7.0, [TextRecord("generate audio caption", text)], {"text": vector, "audio": audio}
            )
            store.replace_file_windows(file_id, [window])
        library.sync_vector_indexes()


def timed(command: list[str], repeats: int, env: dict[str, str]) -> tuple[list[float], str]:
    times, output = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
        output = done.stdout
    return times, output


def heaviest_imports(command: list[str], env: dict[str, str], top: int) -> list[tuple[str, float]]:
    """Top-level packages by cumulative import time (python -X importtime) of one run."""
    done = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, text=True, env=env)
    totals: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        if len(name) - len(name.lstrip()) == 1 and cumulative.strip().isdigit():  # imported by the script itself
            package = name.strip().split(".")[0]
            totals[package] = totals.get(package, 0.0) + int(cumulative) / 1e6
    return sorted(totals.items(), key=lambda item: -item[1])[:top]


def parity(model_dir: Path) -> float:
    import numpy as np
    import torch

    from pengi_search.embedders import PengiTextEmbedder
    from pengi_search.model_dir import ModelDir
    from pengi_search.text_query import NumpyTextEmbedder

    texts = [*CAPTIONS, QUERY, "x " * 100]
    model = ModelDir.read(model_dir)
    fast = NumpyTextEmbedder.from_model_dir(model).embed(texts)
    slow = PengiTextEmbedder.from_model_dir(model, torch.device("cpu")).embed(texts)
    return float(np.abs(fast - slow).max())


def similar_runs(workdir: Path, files: int, queries: int) -> None:
    """`similar` over `queries` indexed files, file by file and batched (see the module's docstring)."""
    from bench_classify import build_library  # the sibling benchmark's library of stored audio embeddings

    from pengi_search.library import Library
    from pengi_search.search import SearchScope
    from pengi_search.similar import similar_to_files
    from pengi_search.testing import make_tiny_model_dir

    model_dir = workdir / "tiny-model"
    if not (model_dir / "config.json").exists():
        make_tiny_model_dir(model_dir)
    db, folder = workdir / "similar.db", workdir / "clips"
    kept = sorted(str(path) for path in folder.glob("clip-*.wav")) if db.exists() else []
    paths = (kept if len(kept) == files else build_library(db, folder, model_dir, files))[:queries]
    with Library.open(str(db), read_only=True) as library:

        def hits(found: list) -> list:
            assert all(r.source == "index" for r in found), "a file was decoded: the library is not reused"
            return [[(h.path, h.window_id, h.score, h.query_start_s) for h in r.hits] for r in found]

        def run(batched: bool) -> tuple[list, float]:
            start = time.perf_counter()
            if batched:
                found = list(similar_to_files(library, paths, SearchScope(10)))
            else:
                found = [r for path in paths for r in similar_to_files(library, [path], SearchScope(10))]
            return hits(found), time.perf_counter() - start

        run(True)  # warm-up: the FAISS file is read by the first search
        one_by_one, single = run(False)
        together, batched = run(True)
    print(f"similar over {len(paths)} indexed files; library: {files} files; {os.cpu_count()} CPUs")
    print(f"{'file by file':<14} {len(paths) / single:8.1f} files/s  {single:7.3f} s")
    print(f"{'batched':<14} {len(paths) / batched:8.1f} files/s  {batched:7.3f} s  ({single / batched:.2f}x)")
    if one_by_one != together:
        raise SystemExit("batched hits differ from file-by-file ones")
    print("same hits both ways: True")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where the model and index are kept (default: a temp folder)")
    parser.add_argument("--windows", type=int, default=1000, help="captioned windows in the index")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--similar", type=int, metavar="N", help="time `similar` over N indexed files instead")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-query-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.similar:
        os.environ.setdefault("PENGI_SEARCH_HOME", str(workdir / "home"))
        similar_runs(workdir, max(args.windows, args.similar), args.similar)
        return
    model_dir = build_model(workdir / "model")
    db = workdir / "index.db"
    build_index(db, model_dir, args.windows)
    env = {**os.environ, "PENGI_SEARCH_HOME": str(workdir / "home")}
    cli = [sys.executable, "-c", "from pengi_search.cli import app; app()"]
    query = [*cli, "query", QUERY, "--db", str(db), "--model", str(model_dir), "--json"]
    rows = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "query --help": [*cli, "query", "--help"],
        "query (numpy text tower)": query,
        "query (torch text tower)": [sys.executable, "-c", TORCH_QUERY, str(db), str(model_dir), QUERY],
    }
    timed(query, 1, env)  # warm the page cache: "cold" here means a fresh process, not a cold disk
    print(f"index: {args.windows} windows; model: {model_dir}; {os.cpu_count()} CPUs")
    print(f"{'command':28} {'min s':>7} {'median s':>9}")
    outputs = {}
    for name, command in rows.items():
        times, outputs[name] = timed(command, args.repeats, env)
        print(f"{name:28} {min(times):7.2f} {statistics.median(times):9.2f}", flush=True)
    fast_hits, torch_hits = (json.loads(outputs[k]) for k in ("query (numpy text tower)", "query (torch text tower)"))
    same = [h["window_id"] for h in fast_hits] == [h["window_id"] for h in torch_hits]
    print(f"same top-10 from both towers: {same}; max |numpy - torch| embedding difference: {parity(model_dir):.2e}")
    print("heaviest imports of `query` (cumulative s, top-level packages):")
    for package, seconds in heaviest_imports(query[1:], env, 8):
        print(f"  {package:24} {seconds:6.2f}")


if __name__ == "__main__":
    main()
