"""The server-rendered pages: search, "more like this", a file's timeline, uploads, the library and the API docs.

Templates are Jinja2 with autoescaping on for everything: what Pengi wrote is untrusted text and is only ever
rendered as text. The little JavaScript (static/app.js and the ES modules it imports beside it) reads data
attributes and never writes HTML.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup

from ..audio import AUDIO_EXTENSIONS
from ..choices import DEFAULT_HYBRID_WEIGHT
from ..errors import PengiSearchError
from ..pathnames import shown
from ..units import duration_text, moment_text, seconds_text, span_ends
from . import media
from .api import MAX_LABELS_BYTES, ServiceDep, hybrid_weight_for, parse_labels, read_upload
from .errors import InvalidParameter, RequestError, answer_status, status_headers
from .kept_clips import KEEP_S
from .service import Found, SearchParams
from .uploads import larger_than, limit_text

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.PackageLoader("pengi_search.serve", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
)
OPENAPI_METHODS = ("get", "post", "put", "patch", "delete")
NAV = (("/", "Search"), ("/upload", "Drop a clip"), ("/library", "Library"), ("/docs", "API"))
# What a "Clip" box's file chooser shows: audio by type, and by name every extension the server reads, which a
# system's type table may not map to audio (a chooser would hide `.opus` or `.wv` files, to be found under "All files")
CLIP_ACCEPT = ",".join(["audio/*", *sorted(AUDIO_EXTENSIONS)])
# Pages the navigation has no link of their own for, by their path's first part, and the link they come under.
NAV_PARENTS = {"similar": "/"}  # "more like this" is a search
# OpenAPI descriptions are Markdown (every viewer renders them so; the docstrings they come from write `code`);
# raw HTML in them stays text. Summaries and titles are plain text, and are shown as such.
MARKDOWN = MarkdownIt("commonmark", {"html": False})


def hit_player(hit: dict[str, Any]) -> dict[str, Any]:
    """Where a hit is played from: its file (seeked to the hit) when browsers play the format, else its window."""
    if Path(hit["path"]).suffix.lower() in media.BROWSER_TYPES and hit.get("file_id") is not None:
        start, end, src = hit["start_s"], hit["end_s"], f"/api/files/{hit['file_id']}/audio"
    else:
        start, end, src = 0.0, hit["end_s"] - hit["start_s"], f"/api/windows/{hit['window_id']}/audio"
    return {"src": f"{src}#t={start:.3f},{end:.3f}", "start": start, "end": end}


def nav_current(path: str) -> str | None:
    """The navigation link (its href) of the page at `path`, said to be the current page (an upload's results are
    the upload page's); None for pages the navigation does not list (a file's)."""
    first = path.strip("/").partition("/")[0]
    href = NAV_PARENTS.get(first, f"/{first}")
    return href if href in dict(NAV) else None


def span(start: float, end: float) -> str:
    """A window's time, as the terminal shows it (`units.span_ends`), with a typographer's dash."""
    first, last = span_ends(start, end)
    return f"{first}–{last} s"


def window_label(path: str, start: float, end: float, caption: str) -> str:
    """What a screen reader says of a window that plays when pressed: what pressing it does, and `window_said`."""
    return f"Play {window_said(path, start, end, caption)}"


def window_said(path: str, start: float, end: float, caption: str) -> str:
    """A window as a screen reader says it: its file, its time and what Pengi wrote ("to": a dash is read out as
    "dash" or not at all). A hit's waveform says it after what pressing it does, play or pause (set by the script)."""
    first, last = span_ends(start, end)
    said = f"{path}, {first} to {last} s"
    return f"{said}: {caption}" if caption else said


def when(stamp: str | None) -> str:
    """A stored ISO time to the second ("2026-01-31 14:05:09 UTC"), as written when it does not parse."""
    if not stamp:
        return ""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    return moment_text(moment)


def error_page(status: int, detail: str) -> str:
    """The page that answers a refused request (outside a request's own handler: no request object needed)."""
    return templates.get_template("error.html").render(status=status, detail=detail)


def _number(name: str, value: str, kind: type = float) -> Any:
    """A form field as a number (None when left empty)."""
    if not value.strip():
        return None
    try:
        return kind(value)
    except ValueError:
        raise InvalidParameter(name, f"{value!r} is not a number") from None


@dataclasses.dataclass
class FilterFields:
    """The search form's filter boxes as typed, from the query string (text: an empty box is no filter)."""

    k: str = "10"
    by: str = "file"
    min_score: str = ""
    path: str = ""
    ext: str = ""
    min_duration: str = ""
    max_duration: str = ""

    def params(self) -> SearchParams:
        """The boxes as search options; InvalidParameter names a box that is not a number."""
        return SearchParams(
            k=_number("k", self.k, int) if self.k.strip() else 10,
            by=self.by or "file",
            min_score=_number("min_score", self.min_score),
            path=self.path.strip() or None,
            ext=self.ext.strip() or None,
            min_duration=_number("min_duration", self.min_duration),
            max_duration=_number("max_duration", self.max_duration),
        )


FieldsDep = Annotated[FilterFields, Depends()]


@dataclasses.dataclass
class Paging:
    """Which results a search page shows: `pages` pages of `k` from `offset` on. "More results" fetches the next
    page (its `offset`) and adds it, and the address then says one more page, so that reloading the page, or coming
    back to it, shows every result that was shown."""

    offset: int = 0
    pages: int = 1


PagingDep = Annotated[Paging, Depends()]
FILTER_BOXES = tuple(field.name for field in dataclasses.fields(FilterFields))
FILTER_DEFAULTS = dataclasses.asdict(FilterFields())  # what a box left out of an address means


def boxes_set(form: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The filter boxes of `form` that are set (neither empty nor at their default), as the search form sends them
    (static/search-form.js): an address that holds only these says what they are."""
    return [(name, form[name]) for name in FILTER_BOXES if str(form.get(name, "")) not in ("", FILTER_DEFAULTS[name])]


def more_like_this(window_id: int, form: Mapping[str, Any]) -> str:
    """The address of "more like this" for a window, with the filters of the search it was found by (those
    "more like this" takes: not the ranking), so the user stays in the part of the library they were looking at."""
    return f"/similar?{urlencode([('window_id', window_id), *boxes_set(form)])}"


templates.env.globals.update(
    NAV=NAV,
    nav_current=nav_current,
    hit_player=hit_player,
    span=span,
    window_label=window_label,
    window_said=window_said,
    when=when,
    duration_text=duration_text,
    seconds_text=seconds_text,
    more_like_this=more_like_this,
    FILTER_DEFAULTS=FILTER_DEFAULTS,
    DEFAULT_HYBRID_WEIGHT=DEFAULT_HYBRID_WEIGHT,
    kept_minutes=f"{KEEP_S / 60:g}",
    CLIP_ACCEPT=CLIP_ACCEPT,
)


def markdown(text: str) -> Markup:
    """An OpenAPI description as HTML paragraphs."""
    return Markup(MARKDOWN.render(text))


def markdown_inline(text: str) -> Markup:
    """An OpenAPI description within a line (a table cell, a sentence)."""
    return Markup(MARKDOWN.renderInline(text))


templates.env.filters.update(markdown=markdown, markdown_inline=markdown_inline)


def _form(params: SearchParams, q: str = "") -> dict[str, Any]:
    """The search form's values, to show them again above the results."""
    values = {name: getattr(params, name) for name in SearchParams.__dataclass_fields__}
    return {"q": q, **{name: "" if value is None else value for name, value in values.items()}}


@router.get("/", response_class=HTMLResponse)
def search_page(
    request: Request,
    svc: ServiceDep,
    fields: FieldsDep,
    paging: PagingDep,
    q: str = "",
    rank: str = "",
    hybrid_weight: str = "",
) -> HTMLResponse:
    def run() -> tuple[SearchParams, Found | None]:
        weight = _number("hybrid_weight", hybrid_weight)  # None: left empty
        params = dataclasses.replace(fields.params(), **dataclasses.asdict(paging), rank=rank or None)
        params = dataclasses.replace(params, hybrid_weight=params.hybrid_weight if weight is None else weight)
        params.ranking()  # an unknown ranking or a weight out of range first (422), as the API checks them first
        hybrid_weight_for(params.rank, weight)  # then a weight the ranking does not read: refused as the API does
        return params, svc.search(q, params) if q.strip() else None

    typed = {**dataclasses.asdict(fields), "rank": rank, "hybrid_weight": hybrid_weight}
    return _results_page(request, svc, run, typed, q=q)


@router.get("/similar", response_class=HTMLResponse)
def similar_page(
    request: Request, svc: ServiceDep, fields: FieldsDep, paging: PagingDep, window_id: int, q: str = ""
) -> Response:
    if q.strip():  # text typed in the page's search box: a text search, with the same filters
        query = [(name, value) for name, value in request.query_params.multi_items() if name != "window_id"]
        return RedirectResponse(f"/?{urlencode(query)}", status_code=303)
    window = svc.window(window_id)  # an unknown window: the error page (there is nothing to refine)
    heading = {
        "path": shown(window.path),
        "file_id": window.file_id,
        "window_id": window_id,
        "span": span(window.start_s, window.end_s),
    }

    def run() -> tuple[SearchParams, Found]:
        params = dataclasses.replace(fields.params(), **dataclasses.asdict(paging))
        return params, Found(svc.similar_to_window(window_id, params))

    typed = {**dataclasses.asdict(fields), "rank": "", "hybrid_weight": ""}
    return _results_page(request, svc, run, typed, heading=heading)


def box_at_fault(exc: PengiSearchError) -> str | None:
    """The name of the box a refused form is to be corrected in (marked, and given the focus), if one is."""
    return exc.field if isinstance(exc, RequestError) else None


def _results_page(
    request: Request,
    svc: ServiceDep,
    run: Callable[[], tuple[SearchParams, Found | None]],
    typed: dict[str, str],
    q: str = "",
    heading: dict[str, Any] | None = None,
) -> HTMLResponse:
    """The search page (a text search, or "more like this" under `heading`) with the hits `run` found, or with why
    they were refused under the status the JSON API gives the same parameters (a 200 would tell scripts, caches
    and monitoring that all went well); a refused search shows the boxes as typed, to be corrected there, the
    focus in the box at fault."""
    found, error, status, fault, more, weight_used = None, None, 200, None, None, None
    try:
        params, found = run()
        # The weight as typed: one left empty (the default, its placeholder) is not filled in, so that a page sent
        # again with another ranking, without scripts, does not send a weight that ranking refuses.
        form = {**_form(params, q), "hybrid_weight": typed["hybrid_weight"]}
        # The ranking's note says the number the search used (0.25, not "0.250" as typed), as the API reads it
        weight_used = params.hybrid_weight
        if found is not None:
            more = more_results(request, params, len(found.hits), svc.settings.max_offset)
    except PengiSearchError as exc:
        error, status, fault = str(exc), answer_status(request, exc), box_at_fault(exc)
        form = {"q": q, **typed}
    hits = None if found is None else found.hits
    context = {"form": form, "hits": hits, "error": error, "fault": fault, "heading": heading, "more": more}
    context["weight_used"] = weight_used
    context["warnings"] = [] if found is None else found.warnings
    context["max_k"] = svc.settings.max_k
    context["unplayable"] = svc.unplayable_hits(hits or [])
    return templates.TemplateResponse(
        request, "search.html", context, status_code=status, headers=status_headers(status)
    )


def more_results(request: Request, params: SearchParams, shown: int, deepest: int) -> dict[str, str] | None:
    """The "More results" link of a page showing `shown` hits: `href`, this page with one more page of results
    (followed without scripts, and the address static/more-results.js gives the page once it has added that
    page), and `next`, the page of those results alone, which the script adds. None when the page shows every
    result there is (fewer than it asked for) or the next page would start past the deepest the server serves."""
    end = params.offset + shown
    if shown < params.k * params.pages or end > deepest:
        return None
    kept = [(name, value) for name, value in request.query_params.multi_items() if name not in ("offset", "pages")]
    start = [("offset", params.offset)] if params.offset else []
    return {
        "href": f"{request.url.path}?{urlencode([*kept, *start, ('pages', params.pages + 1)])}#hit-{end + 1}",
        "next": f"{request.url.path}?{urlencode([*kept, ('offset', end)])}",
    }


@router.get("/files/{file_id}", response_class=HTMLResponse)
def file_page(request: Request, svc: ServiceDep, file_id: int) -> HTMLResponse:
    info = svc.file(file_id)
    duration = info["duration_s"] or max((w["end_s"] for w in info["windows"]), default=0.0)
    context = {
        "file": info,
        "unplayable": svc.unplayable(file_id) if info["status"] == "indexed" else None,
        "duration": duration,
        "truncated": duration > svc.settings.spectrogram_s,
        "spectrogram_s": svc.settings.spectrogram_s,
    }
    return templates.TemplateResponse(request, "file.html", context)


@router.get("/upload", response_class=HTMLResponse)
def upload_page(request: Request, svc: ServiceDep) -> HTMLResponse:
    return _upload_response(request, svc)


@router.post("/upload/describe", response_class=HTMLResponse)
def upload_describe(request: Request, svc: ServiceDep, file: Annotated[UploadFile, File()]) -> Response:
    def work() -> dict[str, Any]:
        with read_upload(svc, file) as upload:
            return {"described": svc.describe(upload)}

    return _upload_result(request, svc, "describe", work)


async def posted_fields(request: Request) -> FilterFields:
    """The filter boxes of a form sent by POST (the upload page's), read as `FieldsDep` reads a query string."""
    form = await request.form()  # parsed once, already: the route's own form parameters read this one
    sent = {name: form[name] for name in FILTER_BOXES if name in form}
    typed = {name: value for name, value in sent.items() if isinstance(value, str)}
    if files := sorted(sent.keys() - typed.keys()):
        raise InvalidParameter(files[0], "a file was sent where a value is typed")
    return FilterFields(**typed)


@router.post("/upload/similar", response_class=HTMLResponse)
def upload_similar(
    request: Request,
    svc: ServiceDep,
    file: Annotated[UploadFile, File()],
    fields: Annotated[FilterFields, Depends(posted_fields)],
) -> Response:
    """Embed the clip, keep its embedding and send the browser to its results (`upload_similar_page`): an address
    that a reload or Back shows again, and whose "More results" pages them, without sending the clip again."""

    def work() -> Response:
        with read_upload(svc, file) as upload:
            token, _clip = svc.keep_upload(upload, fields.params())
        query = urlencode([("upload", token), *boxes_set(dataclasses.asdict(fields))])
        return RedirectResponse(f"/upload/similar?{query}#result", status_code=303)

    return _upload_result(request, svc, "similar", work, **dataclasses.asdict(fields))


@router.get("/upload/similar", response_class=HTMLResponse)
def upload_similar_page(
    request: Request, svc: ServiceDep, fields: FieldsDep, paging: PagingDep, upload: str
) -> Response:
    """An uploaded clip's similar sounds, by the token of its kept embedding, page by page as a search's."""

    def work() -> dict[str, Any]:
        params = dataclasses.replace(fields.params(), **dataclasses.asdict(paging))
        name, hits = svc.similar_to_kept(upload, params)
        more = more_results(request, params, len(hits), svc.settings.max_offset)
        unplayable = svc.unplayable_hits(hits)
        return {"hits": hits, "name": name, "unplayable": unplayable, "more": more, "skipped": params.offset}

    return _upload_result(request, svc, "similar", work, **dataclasses.asdict(fields))


@router.post("/upload/classify", response_class=HTMLResponse)
def upload_classify(
    request: Request,
    svc: ServiceDep,
    file: Annotated[UploadFile, File()],
    labels: Annotated[str, Form()] = "",
    labels_file: Annotated[UploadFile | None, File()] = None,
    method: Annotated[str, Form()] = "text",
) -> Response:
    def work() -> dict[str, Any]:
        label_list, texts = parse_labels(labels, labels_file)
        with read_upload(svc, file) as upload:
            return {"classified": svc.classify(upload, label_list, method, 10, texts)}

    return _upload_result(request, svc, "classify", work, labels=labels, method=method)


def _upload_result(
    request: Request, svc: ServiceDep, form: str, work: Callable[[], dict[str, Any] | Response], **typed: str
) -> Response:
    """The upload page with what `work` found (or `work`'s own answer: a redirect to it), or with why it was refused
    (and the refusal's status): either way with the forms as they were filled in (a file input cannot be filled in
    again). Refused, the box at fault is the one of `form` (the form sent: each has a "Clip" box named `file`), not
    its namesakes in the others."""
    try:
        results = work()
    except PengiSearchError as exc:
        status, faults = answer_status(request, exc), {form: box_at_fault(exc)}
        return _upload_response(request, svc, typed=typed, error=str(exc), status=status, faults=faults)
    if isinstance(results, Response):
        return results
    return _upload_response(request, svc, typed=typed, **results)


def _upload_response(request: Request, svc: ServiceDep, status: int = 200, **results: Any) -> HTMLResponse:
    most = svc.settings.max_upload_bytes
    limits = {"size": limit_text(most), "seconds": svc.settings.max_upload_s}
    # Each file box's limit in bytes and what is said past it, which the page says before sending (static/uploads.js)
    limits["clip"] = {"bytes": most, "reason": larger_than(most)}
    limits["labels"] = {"bytes": MAX_LABELS_BYTES, "reason": larger_than(MAX_LABELS_BYTES)}
    context = {"described": None, "hits": None, "classified": None, "name": "", "error": None, "limits": limits}
    context["unplayable"] = {}  # file id -> why a hit's file cannot be played
    context["more"] = None  # the "More results" link of similar sounds (`more_results`)
    context["skipped"] = 0  # the results before the similar sounds shown (a further page of them)
    context["faults"] = {}  # form -> its box at fault
    context["max_k"] = svc.settings.max_k
    context["typed"] = {
        **dataclasses.asdict(FilterFields()),
        "labels": "",
        "method": "text",
        **results.pop("typed", {}),
    }
    page = {**context, **results}
    return templates.TemplateResponse(request, "upload.html", page, status_code=status, headers=status_headers(status))


@router.get("/library", response_class=HTMLResponse)
def library_page(request: Request, svc: ServiceDep) -> HTMLResponse:
    return templates.TemplateResponse(request, "library.html", {"stats": svc.stats()})


@router.get("/docs", response_class=HTMLResponse)
def docs_page(request: Request) -> HTMLResponse:
    """The API reference, rendered here from the OpenAPI document (no script or style from elsewhere)."""
    spec = request.app.openapi()
    operations = [
        _operation(path, method, item[method], spec)
        for path, item in spec["paths"].items()
        for method in OPENAPI_METHODS
        if method in item
    ]
    return templates.TemplateResponse(request, "docs.html", {"spec": spec, "operations": operations})


def _operation(path: str, method: str, operation: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    parameters = [
        {
            "name": p["name"],
            "in": p["in"],
            "required": p.get("required", False),
            "type": _type_name(p.get("schema", {})),
            "description": p.get("description") or p.get("schema", {}).get("description", ""),
        }
        for p in operation.get("parameters", [])
    ]
    body = operation.get("requestBody", {}).get("content", {})
    for content_type, content in body.items():
        schema = _resolve(content.get("schema", {}), spec)
        for name, field in schema.get("properties", {}).items():
            field = _resolve(field, spec)
            parameters.append(
                {
                    "name": name,
                    "in": content_type,
                    "required": name in schema.get("required", []),
                    "type": _type_name(field),
                    "description": field.get("description", ""),
                }
            )
    responses = {code: item.get("description", "") for code, item in operation.get("responses", {}).items()}
    return {
        "path": path,
        "method": method.upper(),
        "summary": operation.get("summary", ""),
        "description": operation.get("description", ""),
        "parameters": parameters,
        "responses": responses,
    }


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` ("#/components/schemas/Name")."""
    ref = schema.get("$ref")
    if not ref:
        return schema
    node: Any = spec
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _type_name(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " | ".join(_type_name(option) for option in schema["anyOf"])
    if schema.get("format") == "binary" or schema.get("contentMediaType") == "application/octet-stream":
        return "file"
    if "enum" in schema:
        return " | ".join(repr(value) for value in schema["enum"])
    return str(schema.get("type", "object"))
