"""The files below a folder on PostgreSQL (`remove PATH`, `--path`, pruning: `queries.paths_under`, and `export
--under`) in a large library.

    python benchmarks/bench_pg_prefix.py --url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    python benchmarks/bench_pg_prefix.py --files 1000000 --repeat 5     # the URL from PENGI_TEST_POSTGRES_URL

The script makes a schema of its own on the server (dropped at the end), opens the store there (which migrates it:
run it with another checkout on PYTHONPATH to time that checkout's queries), writes `--files` files in folders of
100 and `--big-folder` files in folders of 100 below BIG_FOLDER (whose paths sort amid the others': the index holds
files before and after it), in two INSERTs, ANALYZEs, and times, best of `--repeat` (wall time):

- `files_under`: the 100 files of one folder, as `remove` and `--path` read them;
- `stamps`: their stamps (`all_file_stamps`), as a run below that folder reads them;
- `holds`: whether a folder that is not in the library holds any file (a folder gone from disk);
- `export_under`: every row of `export --under BIG_FOLDER` (`export_rows`), a page of 200 files at a time.

It prints the database's collation, the plan of `files_under`'s statement (the index it searches, or a scan of the
table), and the plans of the export's pages (a sort, or the index read in order), each with how many have it and the
server's time to run those (EXPLAIN ANALYZE).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from pengi_search.db import Store
from pengi_search.query_plans import Statement, recorded  # the statements an engine runs

FILES_PER_FOLDER = 100
BIG_FOLDER = "/library/5big"  # after '/library/59999/' and before '/library/6', byte-wise


def best_of(repeat: int, work: Callable[[], object]) -> float:
    """The shortest wall time of `repeat` runs of `work`, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def fill(store: Store, files: int, big_folder: int) -> None:
    """`files` pending files, `/library/<folder>/<n>.wav`, FILES_PER_FOLDER to a folder, in one statement, and
    `big_folder` more in folders of as many below BIG_FOLDER, in another."""
    insert = (
        "INSERT INTO audio_files (path, status) SELECT :top || '/' || (n / :per_folder) || '/' || n || '.wav', "
        "'pending' FROM generate_series(0, :files - 1) AS n"
    )
    with store.engine.begin() as connection:
        for top, count in (("/library", files), (BIG_FOLDER, big_folder)):
            connection.execute(text(insert), {"top": top, "per_folder": FILES_PER_FOLDER, "files": count})
        connection.execute(text("ANALYZE audio_files"))


def plan_nodes(store: Store, statement: Statement) -> tuple[list[str], float]:
    """The nodes of PostgreSQL's plan for `statement`, as the store ran it (each node's type, the index it searches,
    and whether it filters the rows it reads), and the server's time to run it once so, in ms."""
    sql, parameters = statement
    with store.engine.connect() as connection:
        (plan,) = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", parameters).scalar()
    nodes, waiting = [], [plan["Plan"]]
    while waiting:
        node = waiting.pop()
        filtered = "Filter" in node and "(filtered)"  # rows read, then dropped: a condition the search ignored
        nodes.append(" ".join(filter(None, [node["Node Type"], node.get("Index Name"), filtered])))
        waiting += node.get("Plans", [])
    return nodes, plan["Execution Time"]


def statements_of(store: Store, work: Callable[[], object]) -> list[Statement]:
    """The statements on `audio_files` that `work` runs."""
    with recorded(store.engine) as statements:
        work()
    return [statement for statement in statements if "FROM audio_files" in statement[0]]


def export_all(store: Store, files: int) -> None:
    """`export --under BIG_FOLDER`'s rows, read to the last: `files` of them."""
    assert sum(1 for _ in store.export_rows(BIG_FOLDER)) == files


def plan_counts(store: Store, statements: list[Statement]) -> str:
    """The plans of `statements`, each with the number of them planned so and the server's time to run those."""
    counts: Counter[str] = Counter()
    ms: Counter[str] = Counter()
    for statement in statements:
        nodes, run_ms = plan_nodes(store, statement)
        counts[", ".join(nodes)] += 1
        ms[", ".join(nodes)] += run_ms
    return "; ".join(f"{count} x {plan} ({ms[plan]:.1f} ms)" for plan, count in counts.most_common())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("PENGI_TEST_POSTGRES_URL"), help="a PostgreSQL server")
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--big-folder", type=int, default=100_000, help="files below BIG_FOLDER")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not args.url:
        parser.error("give --url or set PENGI_TEST_POSTGRES_URL")
    schema = f"pengi_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(args.url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(args.url).update_query_dict({"options": f"-csearch_path={schema}"})
        with Store.open(url.render_as_string(hide_password=False)) as store:
            start = time.perf_counter()
            fill(store, args.files, args.big_folder)
            written = args.files + args.big_folder
            print(f"{written:,} files written and analysed in {time.perf_counter() - start:.1f} s")
            with store.engine.connect() as connection:
                collation = "SELECT datcollate FROM pg_database WHERE datname = current_database()"
                print("collation:", connection.scalar(text(collation)))
                print("schema revision:", connection.scalar(text("SELECT version_num FROM alembic_version")))
            folder = f"/library/{args.files // FILES_PER_FOLDER // 2}"
            assert len(store.files_under(folder)) == FILES_PER_FOLDER
            (listing,) = statements_of(store, lambda: store.files_under(folder))
            print("plan of files_under:", ", ".join(plan_nodes(store, listing)[0]))
            export = partial(export_all, store, args.big_folder)
            pages = [page for page in statements_of(store, export) if "LIMIT" in page[0]]
            print(f"plans of the export's {len(pages)} pages:", plan_counts(store, pages))
            timings = {
                "files_under": best_of(args.repeat, lambda: store.files_under(folder)),
                "stamps": best_of(args.repeat, lambda: store.all_file_stamps(folder)),
                "holds": best_of(args.repeat, lambda: store.holds("/library/gone")),
                "export_under": best_of(args.repeat, export),
            }
            for name, seconds in timings.items():
                print(f"{name:12s} {seconds * 1000:9.1f} ms")
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
