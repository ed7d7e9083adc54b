"""The files below a folder on PostgreSQL (`remove PATH`, `--path`, pruning: `queries.paths_under`) in a large library.

    python benchmarks/bench_pg_prefix.py --url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    python benchmarks/bench_pg_prefix.py --files 1000000 --repeat 5     # the URL from PENGI_TEST_POSTGRES_URL

The script makes a schema of its own on the server (dropped at the end), opens the store there (which migrates it:
run it with another checkout on PYTHONPATH to time that checkout's queries), writes `--files` files in folders of
100 in one INSERT, ANALYZEs, and times, best of `--repeat` (wall time):

- `files_under`: the 100 files of one folder, as `remove` and `--path` read them;
- `stamps`: their stamps (`all_file_stamps`), as a run below that folder reads them;
- `holds`: whether a folder that is not in the library holds any file (a folder gone from disk).

It prints the database's collation and the plan of `files_under`'s statement (the index it searches, or a scan of
the table).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from pengi_search.db import Store
from tests.query_plans import recorded  # the statements an engine runs

FILES_PER_FOLDER = 100


def best_of(repeat: int, work: Callable[[], object]) -> float:
    """The shortest wall time of `repeat` runs of `work`, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def fill(store: Store, files: int) -> None:
    """`files` pending files, `/library/<folder>/<n>.wav`, FILES_PER_FOLDER to a folder, in one statement."""
    insert = (
        "INSERT INTO audio_files (path, status) SELECT '/library/' || (n / :per_folder) || '/' || n || '.wav', "
        "'pending' FROM generate_series(0, :files - 1) AS n"
    )
    with store.engine.begin() as connection:
        connection.execute(text(insert), {"per_folder": FILES_PER_FOLDER, "files": files})
        connection.execute(text("ANALYZE audio_files"))


def plan_nodes(store: Store, folder: str) -> list[str]:
    """The nodes of PostgreSQL's plan for `files_under(folder)`'s statement, as the store runs it: each node's type,
    and the index it searches."""
    with recorded(store.engine) as statements:
        store.files_under(folder)
    (statement, parameters), *_ = statements
    with store.engine.connect() as connection:
        plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar()
    nodes, waiting = [], [plan[0]["Plan"]]
    while waiting:
        node = waiting.pop()
        nodes.append(" ".join(filter(None, [node["Node Type"], node.get("Index Name")])))
        waiting += node.get("Plans", [])
    return nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("PENGI_TEST_POSTGRES_URL"), help="a PostgreSQL server")
    parser.add_argument("--files", type=int, default=1_000_000)
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
            fill(store, args.files)
            print(f"{args.files:,} files written and analysed in {time.perf_counter() - start:.1f} s")
            with store.engine.connect() as connection:
                collation = "SELECT datcollate FROM pg_database WHERE datname = current_database()"
                print("collation:", connection.scalar(text(collation)))
                print("schema revision:", connection.scalar(text("SELECT version_num FROM alembic_version")))
            folder = f"/library/{args.files // FILES_PER_FOLDER // 2}"
            assert len(store.files_under(folder)) == FILES_PER_FOLDER
            print("plan of files_under:", ", ".join(plan_nodes(store, folder)))
            timings = {
                "files_under": best_of(args.repeat, lambda: store.files_under(folder)),
                "stamps": best_of(args.repeat, lambda: store.all_file_stamps(folder)),
                "holds": best_of(args.repeat, lambda: store.holds("/library/gone")),
            }
            for name, seconds in timings.items():
                print(f"{name:12s} {seconds * 1000:9.1f} ms")
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
