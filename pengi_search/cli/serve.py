"""`serve`: the web page and JSON API over an indexed library (FastAPI under uvicorn)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

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

MIB = 1 << 20


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
            help="Token every request must carry (generated when listening beyond the loopback without one).",
        ),
    ] = None,
    root: Annotated[
        list[Path] | None,
        typer.Option(
            "--root",
            help="Serve audio only from files inside this folder (repeatable; default: each "
            "file's own folder, links resolved).",
        ),
    ] = None,
    device: DeviceOption = "auto",
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Largest clip accepted.")] = 64.0,
    max_upload_s: Annotated[float, typer.Option("--max-upload-s", min=0.1, help="Longest clip accepted (s).")] = 600.0,
    threads: ThreadsOption = None,
) -> None:
    """Search and listen to the library in a web browser, and answer a JSON API (docs at /docs).

    The server only reads the index; run `pengi-search index` beside it and new sounds appear in its results.

    Example: pengi-search serve --open
    """
    import uvicorn

    from ..serve import LOOPBACK_NAMES, ServeSettings, create_app, is_loopback, required_token

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
    )
    listener = _listen(host, port)
    try:
        app = create_app(settings)
    except BaseException:
        listener.close()
        raise
    address = _address(host, listener.getsockname()[1])
    out_console.print(
        f"pengi-search serves {address}/{f'?token={required}' if required else ''}", soft_wrap=True, markup=False
    )
    if required and not token:
        err_console.print(f"token (send as 'Authorization: Bearer TOKEN'): {required}", soft_wrap=True, markup=False)
    out_console.print(f"API docs: {address}/docs   (Ctrl-C stops)", markup=False)
    if open_browser:
        import webbrowser

        webbrowser.open(f"{address}/{f'?token={required}' if required else ''}")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[listener])


def _folder(path: Path) -> Path:
    if not path.is_dir():
        raise UsageError("--root", f"{path}: not a folder")
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
        raise UsageError(f"{host}:{port}", f"cannot listen there ({exc.strerror or exc})") from None
    return listener


def _address(host: str, port: int) -> str:
    name = host.strip("[]")
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"
