"""Where a search's time goes inside the server, measured in process (no HTTP): the parts `bench_serve.py` adds up.

    python benchmarks/bench_serve_parts.py --workdir /tmp/s10b --windows 1000000 --index-type ivfpq

Uses a library that `bench_serve.py --workdir DIR` built (the same model and library folders). Prints the p50 of:
- a whole search of a repeated text (`Service.search`: FAISS, hit details, JSON-ready hits; the embedding cached);
- the FAISS search alone, as the search asks it (4 x k candidates, the first k as exact as a search for k);
- reading the details of 2 x k windows (the first page a search reads);
- a search's page 2 ("More results": offset k), then its page 3 (offset 2k), for searches of new texts one after
  another (each text's first page asked before: its embedding kept): a page past the first searched the whole index
  exactly up to its last hit, each time; now page 2 searches LOOK_AHEAD pages deeper and page 3 is cut from that
  (`serve/ranked_pages.py`);
- the text tower embedding 1 and 8 new texts on one BLAS thread (the server's setting for so few tokens) and on
  every core.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

K = 10


def p50_ms(work: Callable[[], object], repeats: int) -> float:
    work()  # warm
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def paged_p50_ms(service: Any, texts: list[str], pages: int) -> list[float]:
    """The p50 of each page from 2 to `pages` of searches of `texts`, each text's pages asked in turn (as a user goes
    down one list), its first page asked before (its embedding kept)."""
    from pengi_search.serve.service import SearchParams

    times: list[list[float]] = [[] for _ in range(2, pages + 1)]
    for text in texts:
        service.search(text, SearchParams(k=K))
        for number in range(2, pages + 1):
            began = time.perf_counter()
            service.search(text, SearchParams(k=K, offset=(number - 1) * K))
            times[number - 2].append(time.perf_counter() - began)
    return [1000 * statistics.median(page) for page in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="bench_serve.py's work folder")
    parser.add_argument("--windows", type=int, default=1_000_000, help="which of its libraries")
    parser.add_argument("--index-type", default="ivfpq", choices=["flat", "hnsw", "ivfpq"])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--pages-texts", type=int, default=50, help="searches paged on (pages 2 and 3)")
    parser.add_argument("--no-tower", action="store_true", help="leave out the text tower's rows (slow when busy)")
    args = parser.parse_args()

    from pengi_search import text_query
    from pengi_search.serve.service import SearchParams, Service
    from pengi_search.serve.settings import ServeSettings

    db = args.workdir / f"library-{args.windows}-{args.index_type}" / "index.db"
    service = Service(ServeSettings(db=str(db), model=str(args.workdir / "model"), device="cpu"))
    service.warm_up()
    text = "dog barking in the rain"
    query = service.embedder().embed([text])
    index = service.library.vector_index("text")
    hits = service.search(text, SearchParams(k=K)).hits
    page = [hit["window_id"] for hit in hits] * 2
    rows = {
        "search, repeated text": p50_ms(lambda: service.search(text, SearchParams(k=K)), args.repeats),
        "FAISS search (4k candidates, k exact)": p50_ms(lambda: index.search(query, 4 * K, exact_top=K), args.repeats),
        "hit details of 2k windows": p50_ms(lambda: service.library.store.window_details(page), args.repeats),
    }
    texts = [f"{text} {i}" for i in range(args.pages_texts)]  # each a search of its own (the server keys by text)
    for number, ms in enumerate(paged_p50_ms(service, texts, 3), start=2):
        rows[f"page {number} of a search, after page {number - 1}"] = ms
    embedder = service.embedder()
    server_setting = text_query.SINGLE_THREAD_TOKENS
    settings = () if args.no_tower else ((server_setting, "one BLAS thread"), (0, "all cores"))
    for single_below, threads in settings:
        text_query.SINGLE_THREAD_TOKENS = single_below  # the tower's own rule: one thread below this many tokens
        for count in (1, 8):
            texts = [f"{text} at night {i}" for i in range(count)]
            rows[f"text tower, {count} new text(s), {threads}"] = p50_ms(lambda t=texts: embedder.embed(t), 20)
    text_query.SINGLE_THREAD_TOKENS = server_setting
    service.close()
    print(f"{args.windows} windows ({index.type}), p50 in process:")
    for name, ms in rows.items():
        print(f"  {name:>48}: {ms:.2f} ms")


if __name__ == "__main__":
    main()
