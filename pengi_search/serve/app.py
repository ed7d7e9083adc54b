"""The FastAPI application: pages, the JSON API, static files, error answers and the security layer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile  # what form parsing makes (FastAPI's is a subclass)

from ..audio import AudioDecodeError
from ..classify import LabelsError
from ..db import StoreMismatchError
from ..errors import PengiSearchError
from ..library import EmptyLibraryError
from . import api, pages
from .errors import RequestError
from .security import SecurityMiddleware
from .service import Service
from .settings import ServeSettings

log = logging.getLogger(__name__)
FORM_OVERHEAD = 1 << 20  # room for the multipart framing and small fields beside an upload


def create_app(settings: ServeSettings, *, warm_up: bool = True) -> FastAPI:
    """The server's application over the library in `settings.db` (opened read-only here, now)."""
    service = Service(settings)
    if warm_up:
        service.warm_up()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="pengi-search",
        version=_version(),
        description="Search, listen to and describe an indexed sound library. The JSON shapes follow the CLI's --json.",
        docs_url=None,  # /docs is a page of ours: FastAPI's loads its script from the internet
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(_head_routes(api.router, pages.router))
    app.mount("/static", StaticFiles(packages=[("pengi_search.serve", "static")]), name="static")
    app.add_exception_handler(PengiSearchError, _pengi_error)
    app.add_exception_handler(ValueError, _value_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(
        SecurityMiddleware,
        token=settings.token,
        allowed_hosts=settings.allowed_hosts,
        max_body=settings.max_upload_bytes + FORM_OVERHEAD,
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
                    response_class=route.response_class,
                )
    return head


def status_of(exc: PengiSearchError) -> int:
    """The HTTP status that answers an error."""
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, AudioDecodeError):
        return 422
    if isinstance(exc, LabelsError):
        return 400
    if isinstance(exc, EmptyLibraryError | StoreMismatchError):
        return 409
    return 500


async def _pengi_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PengiSearchError)
    status = status_of(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return _error(request, status, str(exc))


async def _value_error(request: Request, exc: Exception) -> Response:
    return _error(request, 400, str(exc))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if _wants_json(request):
        # jsonable: an error's `ctx` may hold the exception itself ("Expected UploadFile" for a text field sent as
        # `file`) and its `input` a file sent for a text field, which json.dumps refuses: give the exception's
        # message and the file's name instead
        encoders = {Exception: str, UploadFile: lambda upload: upload.filename}
        return JSONResponse({"detail": jsonable_encoder(exc.errors(), custom_encoder=encoders)}, status_code=422)
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return _error(request, 422, problems)


def _error(request: Request, status: int, detail: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"detail": detail}, status_code=status)
    page = pages.templates.TemplateResponse(request, "error.html", {"status": status, "detail": detail})
    return HTMLResponse(page.body, status_code=status)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _version() -> str:
    try:
        return version("pengi-search")
    except PackageNotFoundError:
        return "0"
