"""The JSON API under /api/: the CLI's `--json` shapes over HTTP, documented at /docs (OpenAPI at /openapi.json)."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import Counter
from collections.abc import Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.formparsers import MultiPartException

from ..choices import DEFAULT_HYBRID_WEIGHT
from ..classify import LabelsError, read_label_map
from ..search import Hit
from .errors import InvalidParameter, RequestError
from .http_cache import file_response, made_response
from .kept_clips import KEEP_S
from .service import SearchParams, Service
from .settings import MAX_OFFSET, MAX_RESULTS
from .uploads import larger_than, saved_upload

router = APIRouter(prefix="/api", tags=["api"])
MAX_LABELS_BYTES = 1 << 20


# -- response shapes (for the documentation; the CLI's --json output has the same fields) ------------------------


@dataclasses.dataclass(frozen=True)
class HitModel(Hit):
    """A hit as the CLI's `--json` gives it, with its `file_id`; `path` shows a name that is not valid UTF-8
    escaped (\\xff), its bytes in `path_bytes` (base64). A field the hit does not have is left out, as there
    (`query_start_s` and `query_end_s` of a text search, `ranking` of an audio one, `path_bytes` of a UTF-8 name)."""

    path_bytes: str | None = None


# `Hit.to_json` is what a hit holds; the model only documents it, and must not add its absent fields as nulls.
HITS: dict[str, Any] = {"response_model": list[HitModel], "response_model_exclude_none": True}
# What `query` says on stderr, for the client: in a header, so that the answer stays the list every client reads.
WARNINGS_HEADER = "X-Pengi-Warnings"
WARNINGS_DOC = {
    WARNINGS_HEADER: {
        "description": "What `pengi-search query` says on stderr, as a JSON list of strings (`[]` when nothing): "
        "the query text cut to the part the text embedder reads. ASCII: other characters as JSON `\\u` escapes.",
        "schema": {"type": "string"},
    }
}
# The token of an uploaded clip's embedding, kept for the next pages of its results (`kept_clips`)
UPLOAD_HEADER = "X-Pengi-Upload"
UPLOAD_DOC = {
    UPLOAD_HEADER: {
        "description": f"The clip's token: `GET /api/similar?upload=TOKEN&offset=N` gives the next pages of its "
        f"results, for {KEEP_S / 60:g} minutes after it was last used.",
        "schema": {"type": "string"},
    }
}


class TextModel(BaseModel):
    prompt: str
    text: str
    score: float | None
    mode: str | None  # how it was generated: "exact" or a --fast mode; None: not recorded
    decoding: str | None  # the decoding settings; None: not recorded


class WindowModel(BaseModel):
    window_id: int
    index: int
    start_s: float
    end_s: float
    texts: list[TextModel]


class FileModel(BaseModel):
    id: int
    path: str
    path_bytes: str | None = None
    size: int | None
    modified_at: str | None
    content_hash: str | None
    duration_s: float | None
    format: str | None
    sample_rate: int | None
    channels: int | None
    status: str
    error: str | None
    notes: list[str]  # what decoding noticed: "truncated: header says ...", the decoders' own messages
    truncated: bool
    indexed_at: str | None
    windows: list[WindowModel]


class PeaksModel(BaseModel):
    window_id: int
    peaks: list[tuple[float, float]]


class DescribedWindowModel(BaseModel):
    start_s: float
    end_s: float
    answers: dict[str, str]
    scores: dict[str, float]


class DescribeModel(BaseModel):
    path: str
    duration_s: float | None
    windows: list[DescribedWindowModel]
    error: str | None


class LabelScoreModel(BaseModel):
    label: str
    score: float


class PredictionModel(BaseModel):
    path: str
    label: str
    score: float
    top: list[LabelScoreModel]
    window_count: int
    source: str


class ClassifyModel(BaseModel):
    method: str
    labels: list[str]
    results: list[PredictionModel]
    errors: list[dict[str, str]]
    metrics: dict[str, Any] | None
    warnings: list[str]  # what the command says on stderr: each label the text embedder cuts


# -- shared parameters ---------------------------------------------------------------------------------------


def service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service)]


def search_params(
    k: Annotated[
        int,
        Query(ge=1, description=f"Number of results: at most the server's `--max-results` ({MAX_RESULTS} unless set)."),
    ] = 10,
    by: Annotated[Literal["file", "window"], Query(description="file: best window per file; window: all.")] = "file",
    min_score: Annotated[
        float | None, Query(allow_inf_nan=False, description="Only results at least this similar.")
    ] = None,
    path: Annotated[
        str | None,
        Query(description="Glob over full paths, e.g. `*/dogs/*`; a byte of a name that is not UTF-8 as `\\xe9`."),
    ] = None,
    ext: Annotated[str | None, Query(description="File extensions, e.g. wav,flac.")] = None,
    min_duration: Annotated[
        float | None, Query(ge=0, allow_inf_nan=False, description="Files at least this long (s).")
    ] = None,
    max_duration: Annotated[
        float | None, Query(ge=0, allow_inf_nan=False, description="Files at most this long (s).")
    ] = None,
    offset: Annotated[
        int,
        Query(
            ge=0,
            description=f"Results to skip: the next page of a search is `offset=k` (pages of one `k` are one list, "
            f"no hit twice or skipped). At most the server's `--max-offset` ({MAX_OFFSET} unless set).",
        ),
    ] = 0,
) -> SearchParams:
    return SearchParams(k, by, min_score, path, ext, min_duration, max_duration, offset=offset)


ParamsDep = Annotated[SearchParams, Depends(search_params)]
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def parameters_as_declared(request: Request) -> None:
    """Refuse a parameter sent more than once (`k=1&k=2`, two `file` parts in a form) or sent where its route does
    not read it (`k` in the form of `POST /api/similar`, which reads its filters from the query string; `top` in the
    query string of `POST /api/classify`, which reads it from the form): FastAPI would answer with the last value,
    or as if the parameter had not been sent, without a word."""
    sent = [("query", name) for name, _ in request.query_params.multi_items()]
    if request.method == "POST" and request.headers.get("content-type", "").startswith(FORM_TYPES):
        try:
            form = await request.form()  # parsed once: the route's own form parameters read this one
        except MultiPartException:
            return  # a malformed body: the route that reads it says so
        sent += [("body", name) for name, _ in form.multi_items()]
    problems = [
        {"type": "repeated", "loc": (where, name), "msg": f"sent {count} times; send it once"}
        for (where, name), count in Counter(sent).items()
        if count > 1
    ]
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        problems += _misplaced(_declared(route.dependant), dict.fromkeys(sent))
    if problems:
        raise RequestValidationError(problems)


_PLACES = {"query": "the query string", "body": "the form"}


def _misplaced(declared: dict[str, set[str]], sent: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """A problem for each parameter sent in one place (query string or form) that the route reads only from the
    other. A name it reads nowhere is let be, as HTTP clients add their own (a cache-busting `_`)."""
    problems = []
    for where, name in sent:
        other = "body" if where == "query" else "query"
        if name not in declared[where] and name in declared[other]:
            message = f"send it in {_PLACES[other]}: this request does not read it from {_PLACES[where]}"
            problems.append({"type": "misplaced", "loc": (where, name), "msg": message})
    return problems


def _declared(dependant: Dependant) -> dict[str, set[str]]:
    """The names a route (its dependencies included) reads from the query string and from the form body (a walk
    over a few dozen fields: microseconds, not worth a cache)."""
    declared = {
        "query": {field.alias for field in dependant.query_params},
        "body": {field.alias for field in dependant.body_params},
    }
    for sub in dependant.dependencies:
        for where, names in _declared(sub).items():
            declared[where] |= names
    return declared


CACHED = {304: {"description": "Not modified: `If-None-Match` names the answer's current ETag."}}
AUDIO = {200: {"content": {"audio/*": {}}, "description": "Audio (HTTP Range requests are honoured)."}, **CACHED}


def read_upload(svc: Service, file: UploadFile) -> Any:
    """The clip as a saved, checked `Upload` (a context manager)."""
    return saved_upload(
        file.file, file.filename, max_bytes=svc.settings.max_upload_bytes, max_seconds=svc.settings.max_upload_s
    )


def parse_labels(typed: str | None, uploaded: UploadFile | None) -> tuple[list[str], dict[str, str]]:
    """Labels typed one per line, or a labels file (text, or CSV with a 'label' column), checked as the CLI does;
    with what each label is scored as where a label map's `answer` column says (`classify.read_label_map`)."""
    if uploaded is not None and uploaded.filename:
        if typed and typed.strip():  # which did the client mean? Say so rather than drop the typed ones
            raise InvalidParameter("labels", "both typed labels and a labels file: send one of them")
        field, data = "labels_file", uploaded.file.read(MAX_LABELS_BYTES + 1)
        suffix = ".csv" if Path(uploaded.filename).suffix.lower() == ".csv" else ".txt"
    elif typed and typed.strip():
        field, data, suffix = "labels", typed.replace("\r\n", "\n").strip("\n").encode("utf-8"), ".txt"
    else:
        raise InvalidParameter("labels", "no labels: type one per line, or send a labels file")
    if len(data) > MAX_LABELS_BYTES:
        raise RequestError(field, larger_than(MAX_LABELS_BYTES), HTTPStatus.REQUEST_ENTITY_TOO_LARGE, field=field)
    with tempfile.TemporaryDirectory(prefix="pengi-labels-") as folder:
        path = Path(folder) / f"labels{suffix}"
        path.write_bytes(data)
        try:
            return read_label_map(path)
        except LabelsError as exc:
            raise InvalidParameter(field, exc.reason) from None


def hybrid_weight_for(rank: str | None, weight: float | None) -> float:
    """The hybrid weight of a search ranked by `rank`: only `rank=hybrid` reads it, so one given with another ranking
    (which it would change nothing of, without a word) is refused, as `query --hybrid-weight` is without
    `--rank hybrid`; so does the search page."""
    if weight is not None and rank != "hybrid":
        raise RequestError(
            "hybrid_weight",
            "weighs the two scores of rank=hybrid: add rank=hybrid, or leave it out",
            field="hybrid_weight",
        )
    return DEFAULT_HYBRID_WEIGHT if weight is None else weight


# -- routes --------------------------------------------------------------------------------------------------


@router.get("/search", **HITS, responses={200: {"headers": WARNINGS_DOC}}, summary="Text -> audio search")
def search(
    response: Response,
    svc: ServiceDep,
    params: ParamsDep,
    q: Annotated[str, Query(description="What to look for.")],
    rank: Annotated[
        Literal["caption", "audio", "hybrid"] | None,
        Query(
            description="caption: against the generated captions; audio: against each window's audio embedding "
            "(no captions needed); hybrid: a weighted sum. Default: caption once every window has captions, else audio."
        ),
    ] = None,
    hybrid_weight: Annotated[
        float | None,
        Query(
            ge=0,
            le=1,
            allow_inf_nan=False,
            description=f"rank=hybrid: the caption cosine's weight (audio: 1 - it). Default: {DEFAULT_HYBRID_WEIGHT}; "
            "refused (400) without rank=hybrid.",
        ),
    ] = None,
) -> Any:
    """Windows that match the text, best first (`pengi-search query --json`); each hit says how it was ranked.
    The `X-Pengi-Warnings` header lists what the command would warn of (a text longer than the embedder reads)."""
    weight = hybrid_weight_for(rank, hybrid_weight)
    found = svc.search(q, dataclasses.replace(params, rank=rank, hybrid_weight=weight))
    response.headers[WARNINGS_HEADER] = json.dumps(found.warnings)  # ASCII: a header's bytes are Latin-1
    return found.hits


@router.get("/similar", **HITS, summary="Audio -> audio from an indexed window, or an uploaded clip's next pages")
def similar(
    svc: ServiceDep,
    params: ParamsDep,
    window_id: Annotated[int | None, Query(ge=0, description="The window to find sounds like.")] = None,
    upload: Annotated[
        str | None,
        Query(
            description=f"Or: the token `POST /api/similar` answered a clip with (`{UPLOAD_HEADER}`), for further "
            f"pages of its results (`offset`); kept {KEEP_S / 60:g} minutes after it was last used."
        ),
    ] = None,
) -> Any:
    """Sounds like the given window ("more like this"; the window's own file is left out), or like a clip sent
    before (its `upload` token: the pages of its results, as for a text search)."""
    if upload is None and window_id is not None:
        return svc.similar_to_window(window_id, params)
    if upload is not None and window_id is None:
        return svc.similar_to_kept(upload, params)[1]
    if upload is None:
        raise InvalidParameter("window_id", "missing: send window_id or upload")
    raise InvalidParameter("upload", "send one of window_id and upload, not both")


@router.post(
    "/similar", **HITS, responses={200: {"headers": UPLOAD_DOC}}, summary="Audio -> audio from an uploaded clip"
)
def similar_upload(response: Response, svc: ServiceDep, params: ParamsDep, file: Annotated[UploadFile, File()]) -> Any:
    """Sounds like the clip sent (`pengi-search similar CLIP --json`). The `X-Pengi-Upload` header holds the token
    that asks for the next pages of its results: `GET /api/similar?upload=TOKEN&offset=N`."""
    with read_upload(svc, file) as upload:
        token, hits = svc.similar_to_upload(upload, params)
    response.headers[UPLOAD_HEADER] = token
    return hits


# A field the file does not have (`path_bytes` of a UTF-8 name) is left out, as `export` leaves it out; null stays null.
@router.get(
    "/files/{file_id}", response_model=FileModel, response_model_exclude_unset=True, summary="A file and its windows"
)
def file_info(svc: ServiceDep, file_id: int) -> Any:
    """An indexed file with every window and what Pengi wrote for it."""
    return svc.file(file_id)


@router.get("/files/{file_id}/audio", response_class=FileResponse, responses=AUDIO, summary="A file's audio")
def file_audio(request: Request, svc: ServiceDep, file_id: int) -> Response:
    """The whole file, as it is when browsers play its format, else transcoded to FLAC; named as the file
    (`Content-Disposition`), as a browser saves it."""
    return file_response(request.headers, svc.file_audio(file_id))


@router.get(
    "/files/{file_id}/spectrogram.png", response_class=Response, responses=CACHED, summary="A file's spectrogram"
)
def spectrogram(request: Request, svc: ServiceDep, file_id: int) -> Response:
    """A log-power mel-spaced spectrogram of the file (at most its first minutes), as a PNG image."""
    return made_response(request.headers, svc.spectrogram(file_id), "image/png")


@router.get("/windows/{window_id}/audio", response_class=Response, responses=AUDIO, summary="A window's audio")
def window_audio(request: Request, svc: ServiceDep, window_id: int) -> Response:
    """The window cut from its file, as mono 16-bit WAV."""
    return made_response(request.headers, svc.window_audio(window_id), "audio/wav")


@router.get("/windows/{window_id}/peaks", response_model=PeaksModel, responses=CACHED, summary="A window's waveform")
def window_peaks(request: Request, svc: ServiceDep, window_id: int) -> Response:
    """(min, max) sample pairs across the window, for drawing its waveform."""
    return made_response(request.headers, svc.window_peaks(window_id), "application/json")


@router.post("/describe", response_model=DescribeModel, summary="Audio -> text for an uploaded clip")
def describe(svc: ServiceDep, file: Annotated[UploadFile, File()]) -> Any:
    """Caption, metadata and sound events of every 7 s window (`pengi-search describe CLIP --json`)."""
    with read_upload(svc, file) as upload:
        return svc.describe(upload)


@router.post("/classify", response_model=ClassifyModel, summary="Zero-shot classification of an uploaded clip")
def classify(
    svc: ServiceDep,
    file: Annotated[UploadFile, File()],
    labels: Annotated[str | None, Form(description="One label per line.")] = None,
    labels_file: Annotated[UploadFile | None, File(description="A labels file (text or CSV).")] = None,
    method: Annotated[Literal["text", "loglik"], Form()] = "text",
    top: Annotated[int, Form(ge=1, le=100)] = 5,
) -> Any:
    """Ranked labels for the clip (`pengi-search classify CLIP --labels FILE --json`)."""
    label_list, texts = parse_labels(labels, labels_file)
    with read_upload(svc, file) as upload:
        return svc.classify(upload, label_list, method, top, texts)


@router.get("/stats", summary="Library statistics")
def stats(svc: ServiceDep) -> dict[str, Any]:
    """Counts, index types, model and embedder, latest runs and failed files (`pengi-search stats --json`, more)."""
    return svc.stats()
