"""`serve`: the web page and JSON API over an indexed library (FastAPI under uvicorn)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import not_found, os_reason
from ..stop_signals import ended_by_signal, hangup_handled_by, stop_signals_blocked
from .common import (
    DbOption,
    DeviceOption,
    ModelOption,
    ThreadsOption,
    UsageError,
    apply_threads,
    err_console,
    handle_errors,
    out_console,
)

if TYPE_CHECKING:
    from ..serve.settings import ServeSettings


@handle_errors
def serve(
    db: DbOption = None,
    model: ModelOption = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; any but the loopback requires a token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = 8765,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the search page in a web browser.")] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="PENGI_SEARCH_TOKEN",
            show_envvar=False,  # said in the help as --db and --model say theirs
            help="Token every request must carry (generated when listening beyond the loopback without one) "
            "\\[env: PENGI_SEARCH_TOKEN]",
        ),
    ] = None,
    root: Annotated[
        list[Path] | None,
        typer.Option(
            "--root",
            help="Serve audio only from files whose real path (links resolved) lies inside this folder "
            "(repeatable; default: the folder that held each file when it was indexed).",
        ),
    ] = None,
    device: DeviceOption = "auto",
    max_upload_mb: Annotated[
        float,
        typer.Option(
            "--max-upload-mb",
            min=0.001,
            max=1 << 20,
            help="Largest clip accepted, in MiB (2^20 bytes, as the server's messages say).",
        ),
    ] = 64.0,
    max_upload_s: Annotated[float, typer.Option("--max-upload-s", min=0.1, help="Longest clip accepted (s).")] = 600.0,
    max_results: Annotated[
        int, typer.Option("--max-results", min=1, help="Most results a search answers at once (the API's k).")
    ] = 200,
    max_offset: Annotated[
        int,
        typer.Option(
            "--max-offset",
            min=0,
            help="Most results a search skips (the API's offset): the deepest page starts past them (0: the first "
            "page only).",
        ),
    ] = 1000,
    threads: ThreadsOption = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Server processes sharing the port: more searches per second on several cores; each holds its own "
            "copy of the indexes and text model in memory.",
        ),
    ] = 1,
) -> None:
    """Search and listen to the library in a web browser, and answer a JSON API (docs at /docs).

    The server only reads the index; run `pengi-search index` beside it and new sounds appear in its results.

    Example: pengi-search serve --open
    """
    with ended_by_signal():  # at any moment, while it loads too: what it made removed, as a service manager expects
        from ..serve import LOOPBACK_NAMES, ServeSettings, is_loopback, required_token
        from ..serve.settings import MIB

        if workers > 1 and not hasattr(os, "fork"):
            raise UsageError("--workers", "needs a system with fork(); use one worker here")
        apply_threads(threads)
        required = required_token(host, token)
        roots = tuple(_folder(path) for path in root or [])
        settings = ServeSettings(
            db=db,
            model=model,
            device=device,
            token=required,
            allowed_hosts=(*LOOPBACK_NAMES, host.strip("[]").lower()) if is_loopback(host) else None,
            roots=roots,
            max_upload_bytes=int(max_upload_mb * MIB),
            max_upload_s=max_upload_s,
            max_k=max_results,
            max_offset=max_offset,
        )
        with _listen(host, port) as listener, contextlib.ExitStack() as made:
            settings = dataclasses.replace(settings, kept_dir=_kept_folder(made))
            address = _address(host, listener.getsockname()[1])
            announce = functools.partial(_announce, address, required, token, open_browser)
            if workers == 1:
                _serve_app(settings, listener, announce)
                return
            code = _serve_workers(workers, settings, listener, announce)
    if code:
        raise typer.Exit(code)


def _kept_folder(made: contextlib.ExitStack) -> Path:
    """A private temporary folder for uploads' embeddings, for the next pages of their results wherever they land
    (`serve/kept_clips.py`): one for all workers, removed as `made` closes."""
    with stop_signals_blocked():  # made and handed to `made` at once: a stop in between would leave it behind
        return Path(made.enter_context(tempfile.TemporaryDirectory(prefix="pengi-serve-clips-")))


def _serve_app(settings: ServeSettings, listener: socket.socket, started: Callable[[], None]) -> None:
    """Load the library and serve it on `listener` until a stop signal, calling `started()` once it serves; what it
    holds is released however it ends (stopped while it loads too)."""
    from ..serve import close_app, create_app

    app = create_app(settings)
    try:
        _run(app, listener, started=started)
    finally:
        close_app(app)  # its shutdown did, once uvicorn started it


def _serve_workers(count: int, settings: ServeSettings, listener: socket.socket, announce: Callable[[], None]) -> int:
    """`_serve_app` in `count` worker processes (see serve/workers.py); the exit code."""
    from ..db import Store
    from ..serve.workers import run_workers

    with Store.open(settings.db, read_only=True):  # a missing library is said once, here, not by every worker
        pass

    def work(ready: Callable[[], None]) -> None:
        import threadpoolctl

        # Each worker gets its share of the cores: BLAS threads of several processes spin against each other
        # (8 clients of new texts: 41 requests/s with two workers of 2 threads each, 84 with 1 each).
        threadpoolctl.threadpool_limits(limits=max(1, (os.cpu_count() or 1) // count))
        with ended_by_signal():  # as in the parent: each worker's `handle_errors` takes the signals over
            _serve_app(settings, listener, ready)

    return run_workers(count, handle_errors(work), announce)


def _announce(address: str, required: str | None, given: str | None, open_browser: bool) -> None:
    """Say where the server listens (and the token it generated), once it answers."""
    suffix = f"?token={required}" if required else ""
    out_console.print(f"pengi-search serves {address}/{suffix}", soft_wrap=True, markup=False)
    if required and not given:
        err_console.print(f"token (send as 'Authorization: Bearer TOKEN'): {required}", soft_wrap=True, markup=False)
    out_console.print(f"API docs: {address}/docs   (Ctrl-C stops)", markup=False)
    if open_browser:
        import webbrowser

        # Said from the server's event loop: a browser that runs in the terminal (lynx) must not hold it up.
        threading.Thread(target=webbrowser.open, args=(f"{address}/{suffix}",), daemon=True).start()


def _run(app: Any, listener: socket.socket, *, started: Callable[[], None]) -> None:
    """Serve `app` on `listener` until a stop signal, calling `started()` once it serves (a client that reads the
    address and asks at once is answered)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn shuts down gracefully on SIGINT and SIGTERM only; a hang-up (the terminal closed) too.
            with super().capture_signals(), hangup_handled_by(self.handle_exit):
                yield

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # else it failed to start, and ends
                started()

    Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[listener])


def _folder(path: Path) -> Path:
    if not path.is_dir():
        raise not_found(path, "folder")
    return path.resolve()


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (bound here, so the address printed is the real one, even for port 0)."""
    name = host.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        raise UsageError(f"{host}:{port}", f"cannot listen there ({os_reason(exc)})") from None
    return listener


def _address(host: str, port: int) -> str:
    name = host.strip("[]")
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"
