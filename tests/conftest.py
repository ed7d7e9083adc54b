from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

# One OpenMP thread (PyTorch, FAISS, BLAS) in the tests and the commands they start, unless set otherwise; set before
# torch is first imported. The tiny models gain nothing from more, and on a loaded 2-core machine two threads wait
# on each other while another job holds a core: a training test took 55 s instead of 7 s, the learning test 300 s
# instead of 54 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A suite started in the background by a script (`python -m pytest &`, which a non-interactive shell starts with
# Ctrl-C ignored) would hand that on to every command it starts, and commands keep a stop signal they were started
# ignoring (as `nohup` wants): the Ctrl-C tests would find no handler. The tests are about Ctrl-C's default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from pengi_search.embedders import forget_text_embedders  # noqa: E402
from pengi_search.testing import make_tiny_model_dir  # noqa: E402 (imports torch: after the setting above)

if TYPE_CHECKING:
    from .search_library import CaptionLibrary


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny `base` model directory (random weights, tiny tokenizers), shared by the tests that only read it."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-base")


@pytest.fixture(scope="session")
def tiny_no_text_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-no-text", variant="base_no_text_enc")


@pytest.fixture(scope="module")
def captions(tmp_path_factory, tiny_model_dir) -> CaptionLibrary:
    """A library with known captions and real audio embeddings (`search_library.caption_library`), one per module."""
    from .search_library import caption_library

    root = tmp_path_factory.mktemp("captions")
    return caption_library(str(root / "index.db"), root / "sounds", tiny_model_dir)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    """The server tests' library (`tests.serving`), fresh for each test module: some change its files."""
    from .serving import served_library

    return served_library(tmp_path_factory.mktemp("served"), tiny_model_dir)


@pytest.fixture()
def store_reads(monkeypatch) -> dict[str, int]:
    """How many times the store opens a session or a read (each one or a few queries): a test sets "count" to 0,
    does what it measures, and reads it. File-by-file reads show as a count that grows with the files."""
    from pengi_search.db import Store

    reads = {"count": 0}
    for method in ("session", "reading"):
        real = getattr(Store, method)

        def counted(self, *args, _real=real, **kwargs):
            reads["count"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Store, method, counted)
    return reads


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch) -> Path:
    """Commands never touch the user's real data directory or model settings."""
    home = tmp_path / "pengi-home"
    monkeypatch.setenv("PENGI_SEARCH_HOME", str(home))
    monkeypatch.delenv("PENGI_SEARCH_MODEL", raising=False)
    monkeypatch.delenv("PENGI_SEARCH_DB", raising=False)
    return home


@pytest.fixture(autouse=True)
def no_kept_embedders() -> Iterator[None]:
    """Each test opens its own text embedders: one kept from another test's model would hide what this test set up
    (`embedders.kept_text_embedder` keeps them for the process)."""
    yield
    forget_text_embedders()


@pytest.fixture
def no_internet(monkeypatch) -> None:
    """Fail any connection that leaves the machine (the download tests use servers on 127.0.0.1)."""
    connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"test tried to reach {address}")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


@pytest.fixture
def ids_sorted_not_hashed(monkeypatch) -> None:
    """Fail on numpy's `unique`, and on `setdiff1d` without `assume_unique` (which calls it): numpy 2.4 hashes
    integers there, 20 times slower than sorting, half a second for the 200,000 window ids that commands check
    their FAISS files against."""
    import numpy as np

    setdiff1d = np.setdiff1d

    def unique(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("np.unique hashes ids: sort them (id_arrays.sorted_unique)")

    def setdiff1d_of_unique(first: object, second: object, assume_unique: bool = False) -> object:
        assert assume_unique, "np.setdiff1d without assume_unique hashes both arrays"
        return setdiff1d(first, second, assume_unique=True)

    monkeypatch.setattr(np, "unique", unique)
    monkeypatch.setattr(np, "setdiff1d", setdiff1d_of_unique)


@pytest.fixture
def language_sorted_url() -> Iterator[str]:
    """A fresh database on PENGI_TEST_POSTGRES_URL's server whose text sorts as en-US does (ICU): case, accents and
    punctuation count only after the letters, as under the en_US.UTF-8 of many servers. Dropped afterwards."""
    base = os.environ.get("PENGI_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("PENGI_TEST_POSTGRES_URL is not set")
    name = f"pengi_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")  # CREATE DATABASE runs outside a transaction
    try:
        with admin.connect() as connection:
            locale = "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            connection.execute(text(f"CREATE DATABASE {name} TEMPLATE template0 {locale}"))
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
