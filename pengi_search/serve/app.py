"""The FastAPI application: pages, the JSON API, static files, error answers and the security layer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy import event
from starlette.exceptions import HTTPException
from starlette.routing import Match

from .. import __version__
from ..errors import PengiSearchError
from . import api, pages
from .errors import Outage, RequestError, answer_status, status_headers
from .http_cache import StaticAssets
from .security import SecurityMiddleware
from .service import Service
from .settings import ServeSettings
from .uploads import limit_text

FORM_OVERHEAD = 1 << 20  # room for the multipart framing and small fields beside an upload
REQUEST_PARTS = {"query", "body", "path", "header", "cookie"}  # where FastAPI locates a parameter
METHOD_ORDER = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(settings: ServeSettings) -> FastAPI:
    """The server's application over the library in `settings.db` (opened read-only here, now, with its indexes and
    query embedder loaded: the first search is as fast as the next). Its shutdown releases what it holds, as does
    `close_app` for one never started; a start that fails or is stopped (Ctrl-C, SIGTERM) leaves nothing open."""
    service = Service(settings)
    try:
        service.warm_up()
        return _app(service, settings)
    except BaseException:
        service.close()
        raise


def close_app(app: FastAPI) -> None:
    """Release what `app` holds (its database connections, temporary files), if its shutdown has not: one that
    uvicorn was stopped before starting. Closing again does nothing."""
    app.state.service.close()


def _app(service: Service, settings: ServeSettings) -> FastAPI:
    """The application answering with `service`."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="pengi-search",
        version=__version__,
        description="Search, listen to and describe an indexed sound library. The JSON shapes are the CLI's `--json`.",
        docs_url=None,  # /docs is a page of ours: FastAPI's loads its script from the internet
        redoc_url=None,
        lifespan=lifespan,
        dependencies=[Depends(api.parameters_as_declared)],
    )
    app.state.service = service
    app.state.outage = Outage()
    event.listen(service.library.store.engine, "connect", app.state.outage.over)  # the database answers again
    app.state.routers = (api.router, pages.router, _head_routes(api.router, pages.router))
    for router in app.state.routers:
        app.include_router(router)
    app.mount("/static", StaticAssets(packages=[("pengi_search.serve", "static")]), name="static")
    app.add_exception_handler(PengiSearchError, _pengi_error)
    app.add_exception_handler(ValueError, _value_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(
        SecurityMiddleware,
        token=settings.token,
        allowed_hosts=settings.allowed_hosts,
        max_body=settings.max_upload_bytes + FORM_OVERHEAD,
        too_large=f"the request body is larger than the upload limit of {limit_text(settings.max_upload_bytes)}",
        error_page=lambda status, detail: pages.error_page(status, detail).encode(),
    )
    return app


def _head_routes(*routers: APIRouter) -> APIRouter:
    """HEAD wherever GET is answered (HTTP requires it; players and download tools ask a file's size and Range
    support so): the same handlers, whose bodies the server leaves out. Kept out of the API document."""
    head = APIRouter(include_in_schema=False)
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and "GET" in route.methods:
                head.add_api_route(
                    route.path,
                    route.endpoint,
                    methods=["HEAD"],
                    response_model=route.response_model,
                    response_model_exclude_none=route.response_model_exclude_none,  # the same body, so its length
                    response_class=route.response_class,
                )
    return head


async def _pengi_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PengiSearchError)
    status = answer_status(request, exc)
    if isinstance(exc, RequestError) and exc.field is not None:
        message = exc.reason if exc.where == exc.field else str(exc)
        return _error(request, status, str(exc), [{"field": exc.field, "message": message}])
    return _error(request, status, str(exc))


async def _value_error(request: Request, exc: Exception) -> Response:
    return _error(request, 400, str(exc))


async def _validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 for a parameter missing or of the wrong kind, in the shape of every other error: the
    parameters as the API names them (`k`, not `query.k`) and FastAPI's message for each."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field(problem["loc"]), "message": problem["msg"]} for problem in exc.errors()]
    return _error(request, 422, "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such page, a method not allowed, a body past the limit) in the shape of every
    other: JSON under /api/, a page elsewhere. An unknown path reads the same on both (not Starlette's "Not Found");
    a method not allowed says which are (not "Method Not Allowed")."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"{request.url.path}: no such page"
    elif exc.status_code == 405:
        given = [method.strip() for method in headers.get("Allow", "").split(",") if method.strip()]
        allowed = _allowed_methods(request) or given  # a static file's: GET and HEAD, from StaticFiles itself
        detail = f"{request.method} {request.url.path}: method not allowed (send {' or '.join(allowed)})"
        headers["Allow"] = ", ".join(allowed)
    response = _error(request, exc.status_code, detail)
    response.headers.update(headers)
    return response


def _allowed_methods(request: Request) -> list[str]:
    """The methods the request's path answers, of every route of it: Starlette's `Allow` names those of the first
    only (POST of `/upload/similar`, not its GET), and not the HEAD that `_head_routes` answers beside each GET."""
    methods: list[str] = []
    for route in (route for router in request.app.state.routers for route in router.routes):
        if isinstance(route, APIRoute) and route.matches(request.scope)[0] is not Match.NONE:
            methods += sorted(route.methods, key=METHOD_ORDER.index)
    return list(dict.fromkeys(methods))


def _field(loc: Sequence[str | int]) -> str:
    """A parameter's name from a validation error's location: ("query", "k") -> "k"."""
    parts = loc[1:] if len(loc) > 1 and loc[0] in REQUEST_PARTS else loc
    return ".".join(str(part) for part in parts)


def _error(request: Request, status: int, detail: str, errors: list[dict[str, str]] | None = None) -> Response:
    """The answer to a failed request: JSON under /api/ (`detail`, and `errors` for invalid parameters), else a
    page that says `detail`."""
    headers = status_headers(status)
    if _wants_json(request):
        body = {"detail": detail} if errors is None else {"detail": detail, "errors": errors}
        return JSONResponse(body, status, headers=headers)
    return HTMLResponse(pages.error_page(status, detail), status_code=status, headers=headers)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")
