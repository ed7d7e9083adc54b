"""`/api/search` latency and throughput of `pengi-search serve` with concurrent clients on the loopback.

    python benchmarks/bench_serve.py                                   # 100k and 1M windows, 8 clients
    python benchmarks/bench_serve.py --windows 10000 --requests 400    # a quick run
    python benchmarks/bench_serve.py --workdir /tmp/bs                 # keep (and reuse) the model and indexes

For each library size the script builds (once, in the work folder) a library of that many 7 s windows, starts
`pengi-search serve` in its own process on a free loopback port, and sends a fixed number of text queries from a
bounded number of client processes, each on one keep-alive connection; every client stops after its share. It prints
p50/p90/p99/max latency (ms) and requests per second: one client alone and all clients together sending texts the
server has never seen (each is embedded by the text tower, the dominant cost), and all clients repeating a dozen
texts (the server keeps recent query embeddings: what remains is FAISS, the database and HTTP).

The model is `PengiConfig.preset("base")` with random weights (see `bench_query.py`): the full-size CLIP text
tower embeds every query, as it would with the released weights. Its tokenizer is a small trained stand-in whose
unknown characters (digits) map to the end token, so the number that makes each "new" text unique ends it: the
tower runs over the query's words (7 to 15 tokens), about what CLIP's tokenizer gives a short query. Window
captions are a few hundred distinct sentences embedded by that tower, each window's vector a slightly perturbed
copy (so that rankings vary), in files of 100 windows, written in bulk; windows have caption vectors only (a search
ranks by caption when every window has one). The FAISS type is `--index-type` (HNSW by default; building HNSW
over 1M 1024-d vectors takes over an hour on 2 busy cores, IVF-PQ 11 minutes).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_query import CAPTIONS, build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

WINDOWS_PER_FILE = 100
BULK_WINDOWS = 20_000  # windows per INSERT chunk
DISTINCT_CAPTIONS = 512
QUERIES = [
    "dog barking in the rain",
    "church bells ringing",
    "an engine idling",
    "footsteps on gravel",
    "birds at dawn",
    "a door slams",
    "water dripping in a cave",
    "crowd cheering in a stadium",
    "wind through trees",
    "a phone ringing",
    "glass breaking",
    "thunder far away",
]


def build_library(db: Path, model_dir: Path, windows: int, index_type: str) -> None:
    """`windows` windows in files of WINDOWS_PER_FILE with perturbed caption vectors, written in bulk; FAISS built.

    Rows go in with one multi-row INSERT per table and chunk (the store's per-file path costs minutes at 1M).
    Windows have caption vectors only: a search ranks by caption when every window has one, so audio vectors
    would cost 3.8 GiB of memory at 1M without taking part.
    """
    if db.exists():
        return
    import numpy as np
    from sqlalchemy import insert

    from pengi_search.db import EmbedderInfo, ModelInfo
    from pengi_search.db.schema import AudioFileRow, GeneratedTextRow, WindowRow, WindowVectorRow
    from pengi_search.library import Library
    from pengi_search.model_dir import ModelDir
    from pengi_search.text_query import NumpyTextEmbedder
    from pengi_search.vectors import l2_normalise

    start = time.perf_counter()
    model = ModelDir.read(model_dir)
    embedder = NumpyTextEmbedder.from_model_dir(model)
    captions = [f"{CAPTIONS[i % len(CAPTIONS)]}, take {i // len(CAPTIONS)}" for i in range(DISTINCT_CAPTIONS)]
    caption_vectors = embedder.embed(captions)
    rng = np.random.default_rng(0)
    indexed_at = datetime.now(timezone.utc)
    with Library.open(str(db)) as library:
        store = library.store
        store.set_index_meta(
            ModelInfo(model.meta["name"], model.meta["weights_sha256"]), EmbedderInfo(embedder.id, embedder.dim)
        )
        for first in range(0, windows, BULK_WINDOWS):
            ids = np.arange(first, min(first + BULK_WINDOWS, windows))
            picks = rng.integers(0, DISTINCT_CAPTIONS, len(ids))
            noise = rng.standard_normal((len(ids), embedder.dim), dtype=np.float32)
            vectors = l2_normalise(caption_vectors[picks] + 0.05 * noise).astype("<f4")
            file_ids = sorted(set((ids // WINDOWS_PER_FILE).tolist()))
            files = [file_row(f, f"/library/sound-{f:06d}.wav", indexed_at) for f in file_ids]
            rows = window_rows(ids)
            texts = [
                {"window_id": w + 1, "prompt": prompt, "text": text, "score": None}
                for w, p in zip(ids.tolist(), picks.tolist(), strict=True)
                for prompt, text in (("generate audio caption", captions[p]), ("this is a sound of", "a sound"))
            ]
            blobs = [
                {"window_id": w + 1, "kind": "text", "vector": vector.tobytes()}
                for w, vector in zip(ids.tolist(), vectors, strict=True)
            ]
            with store.session(write=True) as session:
                for table, values in ((AudioFileRow, files), (WindowRow, rows), (GeneratedTextRow, texts)):
                    session.execute(insert(table), values)
                session.execute(insert(WindowVectorRow), blobs)
        inserted = time.perf_counter() - start
        library.sync_vector_indexes(index_type)
    print(
        f"  built {windows} windows in {time.perf_counter() - start:.0f} s (rows {inserted:.0f} s, {index_type})",
        flush=True,
    )


def window_rows(ids: Any) -> list[dict[str, object]]:
    """The rows of windows numbered `ids` (from 0), WINDOWS_PER_FILE to a file, as a bulk INSERT takes them."""
    return [
        {"id": w + 1, "file_id": w // WINDOWS_PER_FILE + 1, "index": w % WINDOWS_PER_FILE}
        | {"start_s": 7.0 * (w % WINDOWS_PER_FILE), "end_s": 7.0 * (w % WINDOWS_PER_FILE + 1)}
        for w in ids.tolist()
    ]


def file_row(number: int, path: str, indexed_at: datetime) -> dict[str, object]:
    """The row of an indexed file of WINDOWS_PER_FILE windows, as a bulk INSERT takes it (`number` from 0)."""
    return {
        "id": number + 1,
        "path": path,
        "size": 1,
        "mtime": 1.0,
        "duration_s": 7.0 * WINDOWS_PER_FILE,
        "sample_rate": 44_100,
        "channels": 1,
        "format": "wav",
        "status": "indexed",
        "indexed_at": indexed_at,
    }


class Server:
    """`pengi-search serve --port 0` in its own process."""

    def __init__(self, db: Path, model_dir: Path, workers: int, device: str = "cpu") -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-c", "from pengi_search.cli import app; app()", "serve", "--port", "0"]
        command += ["--db", str(db), "--model", str(model_dir), "--device", device, "--workers", str(workers)]
        started = time.perf_counter()
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
        self.address = self._address(lines)
        self.start_s = time.perf_counter() - started

    def _address(self, lines: queue.Queue[str]) -> str:
        output = []
        while self.process.poll() is None or not lines.empty():
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            output.append(line)
            if line.startswith("pengi-search serves "):
                return line.split()[2].rstrip("/")
        raise SystemExit(f"the server did not start:\n{''.join(output)}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def load(address: str, clients: int, requests: int, *, new_texts: bool) -> tuple[list[float], float, int]:
    """Send `requests` searches from `clients` processes (each its own keep-alive connection, as separate programs
    would: client threads in one process fight over its lock and took more CPU than the server); returns the
    latencies (s), the wall time and the number of failed requests. `new_texts`: every request a text never sent
    before (the server embeds each one), else a dozen texts over and over (their embeddings are cached)."""
    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(clients + 1), context.Queue()
    workers = [
        context.Process(target=_client, args=(address, index, count, new_texts, start, results))
        for index, count in enumerate(shares)
    ]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    answers = [results.get() for _ in workers]
    wall = time.perf_counter() - began
    for worker in workers:
        worker.join()
    return [t for mine, _ in answers for t in mine], wall, sum(failed for _, failed in answers)


def _client(address: str, index: int, count: int, new_texts: bool, start: Any, results: Any) -> None:
    """One client: `count` searches on one connection, each timed from sending to the last byte of the answer."""
    parts = urlsplit(address)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    latencies, failed = [], 0
    start.wait()
    for n in range(count):
        query = QUERIES[(index * 7 + n) % len(QUERIES)]
        query = f"{query} {index} {n} {time.perf_counter_ns()}" if new_texts else query
        began = time.perf_counter()
        connection.request("GET", f"/api/search?k=10&q={quote(query)}")
        response = connection.getresponse()
        body = response.read()
        latencies.append(time.perf_counter() - began)
        if response.status != 200 or not json.loads(body):
            failed += 1
    connection.close()
    results.put((latencies, failed))


def summary(latencies: list[float], wall: float, failures: int) -> dict[str, float]:
    ms = sorted(1000 * t for t in latencies)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "requests": len(ms),
        "p50_ms": round(q[49], 2),
        "p90_ms": round(q[89], 2),
        "p99_ms": round(q[98], 2),
        "max_ms": round(ms[-1], 2),
        "requests_per_s": round(len(ms) / wall, 1),
        "failed": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", default="100000,1000000", help="library sizes, comma-separated")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=2000, help="requests per size with all clients")
    parser.add_argument("--solo-requests", type=int, default=200, help="requests per size with one client")
    parser.add_argument("--index-type", default="hnsw", choices=["flat", "hnsw", "ivfpq"])
    parser.add_argument("--workers", type=int, default=1, help="server processes (`serve --workers`)")
    parser.add_argument("--workdir", type=Path, help="keep the model and the libraries here (reused when present)")
    parser.add_argument("--device", default="cpu", help="where the server runs the text tower (`serve --device`)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(workdir / "model")
    results = {}
    for windows in [int(size) for size in args.windows.split(",")]:
        print(f"{windows} windows, {args.workers} server process(es):", flush=True)
        db = workdir / f"library-{windows}-{args.index_type}" / "index.db"
        db.parent.mkdir(exist_ok=True)
        build_library(db, model_dir, windows, args.index_type)
        server = Server(db, model_dir, args.workers, args.device)
        try:
            load(server.address, 1, 20, new_texts=False)  # warm-up: connections, the first FAISS searches
            rows = {
                "1 client, new texts": summary(*load(server.address, 1, args.solo_requests, new_texts=True)),
                f"{args.clients} clients, new texts": summary(
                    *load(server.address, args.clients, args.requests, new_texts=True)
                ),
                f"{args.clients} clients, repeated texts": summary(
                    *load(server.address, args.clients, args.requests, new_texts=False)
                ),
            }
        finally:
            server.stop()
        results[windows] = {"workers": args.workers, "server_start_s": round(server.start_s, 2), **rows}
        for name, row in rows.items():
            print(
                f"  {name:>27}: p50 {row['p50_ms']:.1f} ms, p90 {row['p90_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                f"max {row['max_ms']:.1f} ms, {row['requests_per_s']:.1f} requests/s, {row['failed']} failed",
                flush=True,
            )
        print(f"  server ready in {server.start_s:.1f} s", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
