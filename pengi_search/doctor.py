"""Is this installation healthy? Versions, devices, models, the database and its FAISS files (`pengi-search doctor`).

Each check returns plain data for the report and the problems it found, every problem with the command that fixes
it; `diagnose` runs them all. Nothing here changes anything: the database is read only when it exists, never
created or upgraded, and the FAISS files are loaded, not rebuilt.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .checkpoint import CheckpointError
from .db import VECTOR_KINDS, Store, StoreError, default_index_path, resolve_db_url, sqlite_file
from .db.access import is_empty_file, untouched_engine, unusable_place
from .db.errors import DatabaseURLError, driver_reason
from .db.urls import db_option, library_name, names_default_db, shown_db_url
from .download import INVALID_SUFFIX
from .hashing import file_sha256
from .hub import offline_setting
from .index_hints import index_command, library_folders
from .model_dir import (
    CONFIG_FILE,
    MODEL_ENV,
    WEIGHTS_FILE,
    ModelDir,
    ModelNotFoundError,
    model_path,
    named_places,
    release_to_fetch,
)
from .paths import choose_elsewhere, file_in_the_way, models_dir, shown_path
from .releases import RELEASES, TOKENIZERS

# FFmpeg decoders for the formats soundfile leaves to PyAV (m4a/aac, alac, wma, opus, ...) and a few it shares.
DECODERS = ("aac", "alac", "wmav2", "opus", "vorbis", "mp3float", "flac", "ac3", "amrnb", "ape", "wavpack")
RUNS_CHECKED = 1000  # the latest runs looked at for ones left "running"
DOWNLOADS = "downloads"  # `model fetch` keeps its downloads in <models>/downloads/<release>
URL_FIX = "check --db or PENGI_SEARCH_DB"


@dataclass(frozen=True)
class Problem:
    """Something that keeps pengi-search from working as it should, and how to fix it."""

    where: str  # what was checked: "model base", "database", "text index", ...
    what: str
    fix: str  # the command (or step) that fixes it


@dataclass
class Report:
    environment: dict[str, Any]
    devices: dict[str, Any]
    models: dict[str, Any]
    database: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # advice that is no fault: a faster build, a GPU left unused

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, **asdict(self)}  # asdict turns the problems into dicts too


def diagnose(db: str | None = None, model: str | None = None) -> Report:
    """Run every check: `db` is the database to look at (`--db`; None: `$PENGI_SEARCH_DB` or the default), `model`
    the model (`--model`; None: `$PENGI_SEARCH_MODEL` or the installed default)."""
    environment, environment_problems = check_environment()
    devices = check_devices()
    models, model_problems = check_models(model)
    database, database_problems = check_database(db)
    problems = environment_problems + model_problems + database_problems
    return Report(environment, devices, models, database, problems, advice(environment, devices))


# ---------------------------------------------------------------------------------------------------------------
# Software and hardware


def check_environment() -> tuple[dict[str, Any], list[Problem]]:
    """Versions of Python and the libraries that matter, which builds they are, and PyAV's decoders."""
    import av
    import faiss
    import soundfile
    import torch

    decoders = {name: _has_decoder(av, name) for name in DECODERS}
    data = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pengi_search": __version__,
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,  # None for a CPU-only build
            "mps_built": torch.backends.mps.is_built(),
        },
        "transformers": _version("transformers"),
        "sentence_transformers": _version("sentence-transformers"),
        "faiss": {"version": faiss.__version__, "gpu_build": hasattr(faiss, "StandardGpuResources")},
        "av": {
            "version": av.__version__,
            "libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
            "decoders": decoders,
        },
        "soundfile": {"version": soundfile.__version__, "libsndfile": soundfile.__libsndfile_version__},
        "offline": offline_setting(),
    }
    missing = [name for name, present in decoders.items() if not present]
    problems = []
    if missing:
        problems.append(
            Problem(
                "PyAV",
                f"its FFmpeg has no decoder for {', '.join(missing)}: files in those formats cannot be read",
                "pip install --force-reinstall av  (the PyAV wheels bundle FFmpeg with every decoder)",
            )
        )
    return data, problems


def check_devices() -> dict[str, Any]:
    """The devices torch and faiss see, and how many threads each would use."""
    import faiss
    import torch

    from .vectors import gpu_count

    cuda = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            cuda.append({"index": index, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cuda": cuda,
        "mps": torch.backends.mps.is_available(),
        "faiss_gpus": gpu_count(),
        "auto_device": "cuda" if cuda else "cpu",  # what --device auto picks
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
    }


def advice(environment: dict[str, Any], devices: dict[str, Any]) -> list[str]:
    """Notes on builds that leave hardware unused (not faults: everything still runs on the CPU)."""
    notes = []
    if environment["torch"]["cuda"] is None and shutil.which("nvidia-smi"):
        notes.append("an NVIDIA driver is installed but torch is a CPU-only build: install a CUDA build of torch")
    if devices["cuda"] and not environment["faiss"]["gpu_build"]:
        notes.append(
            "torch sees a GPU but faiss is the CPU build: `pip uninstall -y faiss-cpu && pip install faiss-gpu` "
            "searches on the GPU"
        )
    return notes


def _has_decoder(av: Any, name: str) -> bool:
    try:
        av.codec.Codec(name, "r")
    except ValueError:  # UnknownCodecError: this FFmpeg was built without it
        return False
    return True


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# Models


def check_models(model: str | None = None, root: Path | None = None) -> tuple[dict[str, Any], list[Problem]]:
    """Every installed model (size, weights against the sha256 recorded at install, tokenizers), and the one the
    other commands would load: `model` (`--model`), else `$PENGI_SEARCH_MODEL`, else the installed default."""
    root = root or models_dir()
    installed, problems = [], []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name.startswith(".") or not _holds_a_model(path):
            continue  # staging folders, downloads
        data, found = _check_model(path, root)
        installed.append(data)
        problems += found
    in_use, in_use_problems = _check_model_in_use(model, root, installed)
    return {"directory": str(root), "in_use": in_use, "installed": installed}, problems + in_use_problems


def _check_model_in_use(
    spec: str | None, root: Path, installed: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The model the other commands would load, found as they find it (`model_path`), checked as installed ones
    are; a folder named that is no complete model is checked too, to say what it lacks."""
    try:
        path = model_path(spec)
    except ModelNotFoundError:
        path = next((place for place in named_places(spec) if _holds_a_model(place)), None)
        if path is None or path.parent == root:  # no model there, or an installed one: checked with the others
            return None, [_no_model(root, spec)]
    for data in installed:
        if Path(data["path"]).resolve() == path.resolve():
            return data, []  # its problems are reported with the installed ones
    return _check_model(path, root)


def _holds_a_model(path: Path) -> bool:
    """Whether `path` holds a model, complete or not (a folder of something else is none)."""
    return (path / CONFIG_FILE).exists() or (path / WEIGHTS_FILE).exists()


def _no_model(root: Path, spec: str | None) -> Problem:
    release, named = release_to_fetch(spec), spec or os.environ.get(MODEL_ENV)
    named_by = f"--model {named}" if spec else f"{MODEL_ENV}={named}"
    what = f"{named_by} names no model" if named else f"no Pengi model is installed in {root}"
    fix = f"pengi-search model fetch {release}" if release else _point_elsewhere(spec)
    in_the_way = file_in_the_way(root) if release else None
    if in_the_way is not None:  # a file where the data folder should be: no fetch could install the model
        what = f"{shown_path(in_the_way)} is a file, not a folder: no model can be installed in {shown_path(root)}"
        fix = choose_elsewhere(in_data=True, library=False)
    return Problem("models", what, fix)


def _point_elsewhere(spec: str | None) -> str:
    """The fix for a model named that is not there: name another, where it was named (`--model`, else the
    environment variable, which can also be unset for the installed default)."""
    return "point --model at a model directory" if spec else f"point {MODEL_ENV} at a model directory, or unset it"


def _check_model(path: Path, root: Path) -> tuple[dict[str, Any], list[Problem]]:
    """A model directory's configuration, weights (readable, and as recorded when it was written) and tokenizers;
    one under `root` is installed, and fixed by installing it again."""
    is_installed = path.parent == root
    data: dict[str, Any] = {"name": path.name, "path": str(path), "bytes": _tree_bytes(path)}
    where = f"model {path.name if is_installed else path}"
    try:
        model = ModelDir.read(path)
    except CheckpointError as err:
        return data, [Problem(where, err.reason, _repair(path, None, is_installed))]
    fix = _repair(path, model.meta.get("source"), is_installed)
    data.update(variant=model.variant, source=model.meta.get("source"))
    data["download"] = _download_record(root / DOWNLOADS / path.name) if is_installed else None
    if not model.weights.is_file():
        return data, [Problem(where, f"{WEIGHTS_FILE} is missing", fix)]
    try:
        digest = file_sha256(model.weights)
    except OSError as err:
        return data, [Problem(where, f"{model.weights} cannot be read ({err.strerror})", fix)]
    data.update(weights_sha256=digest, checksum_ok=digest == model.fingerprint)
    problems = []
    if not data["checksum_ok"]:
        problems.append(
            Problem(
                where,
                f"{model.weights} is damaged or was changed: its sha256 is {digest[:16]}..., "
                f"the one recorded when it was installed {str(model.fingerprint)[:16]}...",
                fix,
            )
        )
    needed = ("gpt2", "clip") if model.has_text_encoder else ("gpt2",)
    data["tokenizers"] = {kind: _tokenizer_location(model, kind) for kind in needed}
    for kind, location in data["tokenizers"].items():
        if location is None:
            problems.append(Problem(where, f"the {kind} tokenizer is in neither {model.path} nor the cache", fix))
    return data, problems


def _repair(path: Path, source: str | None, is_installed: bool) -> str:
    """How to fix model directory `path`: an installed one is installed again; one elsewhere (`--model DIR`) is
    written again by whatever made it, which doctor cannot know."""
    if is_installed:
        return _reinstall(path.name, source)
    return f"write {path} again (`pengi-search model import` or `train export` make model directories)"


def _reinstall(name: str, source: str | None) -> str:
    """The command that installs model `name` again: fetch for a release, else import of the file it came from."""
    if name in RELEASES:
        return f"pengi-search model fetch {name}  (converts the verified download again, or downloads it again)"
    checkpoint = shlex.quote(source) if source and not source.endswith(INVALID_SUFFIX) else "CHECKPOINT.pth"
    return f"pengi-search model import {checkpoint} --name {shlex.quote(name)}"


def _tokenizer_location(model: ModelDir, kind: str) -> str | None:
    """Where `kind` is loaded from: the model directory, the Hugging Face cache, or nowhere (None)."""
    if (model.tokenizer_dir(kind) / "tokenizer_config.json").is_file():
        return "model directory"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(TOKENIZERS[kind], "tokenizer_config.json")
    return "hugging face cache" if isinstance(cached, str) else None


def _download_record(folder: Path) -> dict[str, Any] | None:
    """What `model fetch` recorded of the checkpoint it downloaded (the file is not hashed again here)."""
    import json

    for release in RELEASES.values():
        record = folder / f"{release.filename}.json"
        if record.is_file():
            try:
                data = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return {key: data.get(key) for key in ("url", "size", "sha256", "completed_at")}
    return None


def _tree_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


# ---------------------------------------------------------------------------------------------------------------
# The database and its FAISS files


def check_database(db: str | None = None) -> tuple[dict[str, Any], list[Problem]]:
    """Schema revision, counts, SQLite's integrity check, runs left "running" and the FAISS files against it.

    `exists` says what doctor found out, never what it assumed: true (the library's file is there, or the server
    answered and holds it), false (no file yet, an empty database, a folder or a file that is no SQLite database
    where the file should be) or None when it cannot tell (a URL it cannot use, a server it cannot reach). When not
    true, `error` says why."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        url = resolve_db_url(db)
        data: dict[str, Any] = {"url": shown_db_url(url)}
        db_file = sqlite_file(url)
    except DatabaseURLError as err:  # a mistyped URL: shown as the error shows it, password hidden
        return _unknown({"url": err.where}, Problem("database", err.reason, URL_FIX))
    option = db_option(db)
    if db_file is not None:
        absent, problems = _absent_file(db_file, library_name(db), option, default=names_default_db(db))
        if absent is not None:
            return {**data, "exists": False, "error": absent}, problems
        if is_empty_file(db_file):  # connecting would write a database header into it: doctor changes nothing
            return {**data, "exists": False, "schema_revision": None, "error": _empty_database(option)}, []
    try:
        engine = untouched_engine(url)  # doctor changes nothing, and reads a library it may not write
    except StoreError as err:  # a driver that is mistyped or not installed
        return _unknown(data, Problem("database", err.reason, URL_FIX))
    data["exists"] = True if db_file is not None else None  # a server's database: known once it answers
    try:
        return _check_open_database(engine, data, option)
    except (SQLAlchemyError, StoreError) as err:
        what = f"cannot be read: {driver_reason(err)}"
        if db_file is not None:
            return data, [Problem("database", what, _damaged_database_fix(option))]
        if data["exists"] is None:  # the server never answered
            return _unknown(data, Problem("database", what, _unreachable_server_fix()))
        return data, [Problem("database", what, _unreachable_server_fix())]
    finally:
        engine.dispose()


def _unknown(data: dict[str, Any], problem: Problem) -> tuple[dict[str, Any], list[Problem]]:
    """The report of a database doctor could not reach: whether it exists is unknown, for the problem's reason."""
    return {**data, "exists": None, "error": problem.what}, [problem]


def _absent_file(db_file: Path, name: str, option: str, *, default: bool) -> tuple[str | None, list[Problem]]:
    """Why there is no SQLite database at `db_file` (None when its file is there), with a problem when `index`
    could not make one there either (a folder, or a file that is no database, in its place). At the `default`
    place, in the data folder, the fix is another data folder, as every command says. The file is `name`d as
    every other command names the library (`urls.library_name`): as typed."""
    unusable = unusable_place(db_file, name)
    if unusable is not None:
        fix = f"point --db or PENGI_SEARCH_DB at a database file, not at {name}" if db_file.exists() else URL_FIX
        fix = choose_elsewhere(in_data=True, library=True) if default else fix
        return unusable, [Problem("database", unusable, fix)]
    if db_file.is_file():
        return None, []
    folder = next(parent for parent in db_file.parents if parent.exists())
    creates = f"`pengi-search index PATH...{option}` creates it"
    if folder == db_file.parent:
        return f"no database file at {name} yet ({creates})", []
    return f"neither {name} nor its folder exists yet ({creates}, folder included)", []


def _empty_database(option: str) -> str:
    return f"an empty database, with no library yet (`pengi-search index PATH...{option}` makes it)"


def _check_open_database(engine: Any, data: dict[str, Any], option: str) -> tuple[dict[str, Any], list[Problem]]:
    from sqlalchemy import inspect

    from .db.migrate import LIBRARY_TABLE, SCHEMA_HEAD, current_revision, foreign_revision_reason, foreign_tables_reason

    with engine.connect() as connection:
        data["exists"] = True  # it answered; whether it holds a library is settled below
        data["schema_revision"] = current_revision(connection)
        tables = inspect(connection).get_table_names()
        library_at_head = LIBRARY_TABLE in tables and data["schema_revision"] == SCHEMA_HEAD
        if library_at_head and engine.dialect.name == "sqlite":  # what the checks below go on to read
            rows = list(connection.exec_driver_sql("PRAGMA integrity_check").scalars())
            data["integrity"] = "ok" if rows == ["ok"] else rows[:5]
    if data["schema_revision"] is None and not tables:
        data.update(exists=False, error=_empty_database(option))
        return data, []
    if LIBRARY_TABLE not in tables:
        reason = (
            foreign_tables_reason(tables)
            if data["schema_revision"] is None
            else foreign_revision_reason({data["schema_revision"]})
        )
        return data, [Problem("database", reason, "point --db or PENGI_SEARCH_DB at a database of pengi-search's own")]
    if data["schema_revision"] != SCHEMA_HEAD:
        return data, [_schema_problem(data["schema_revision"], option)]
    problems = []
    if data.get("integrity", "ok") != "ok":
        problems.append(
            Problem("database", f"integrity check failed: {data['integrity'][0]}", _damaged_database_fix(option))
        )
    store = Store(engine)  # at the schema head: the store's reads apply as they are
    stats = store.stats()
    data.update({key: stats[key] for key in ("files", "window_count", "texts", "vectors", "indexed_audio_s", "model")})
    running = [run for run in store.runs(limit=RUNS_CHECKED) if run.status == "running"]
    data["running_runs"] = [run.to_json() for run in running]
    resume = index_command(library_folders(store), db_option=option) if running else ""
    for run in running:
        problems.append(
            Problem(
                "indexing runs",
                f"run {run.id} (started {run.started_at:%Y-%m-%d %H:%M} UTC) is still marked running: unless an "
                "index is running now, it was stopped before it could finish",
                f"{resume}  (the library's folders: it indexes what the stopped run left)",
            )
        )
    data["vector_indexes"], index_problems = check_vector_files(store, option)
    return data, problems + index_problems


def check_vector_files(store: Store, option: str = "") -> tuple[dict[str, Any], list[Problem]]:
    """Each FAISS file against the database: present when there are vectors, readable, written for this library
    (not left by one deleted before it was made), holding exactly their ids."""
    import numpy as np

    from .index_files import owned_tag
    from .vector_file import VectorIndexError
    from .vectors import VectorIndex

    fix = f"pengi-search rebuild-index{option}"
    meta = store.index_meta()
    data, problems = {}, []
    for kind in VECTOR_KINDS:
        path = default_index_path(store.url, kind)
        expected = store.vector_ids(kind)
        info: dict[str, Any] = {"path": str(path), "database_vectors": int(expected.size)}
        data[kind] = info
        where = f"{kind} index"
        try:
            index, tag = VectorIndex.load(path)
        except FileNotFoundError:
            info["state"] = "missing"
            if expected.size:
                problems.append(Problem(where, f"{path} is missing ({expected.size} vectors in the database)", fix))
            continue
        except VectorIndexError as err:
            info["state"] = "damaged"
            problems.append(Problem(where, f"{path} is damaged: {err.reason}", fix))
            continue
        if owned_tag(meta, path, tag) is None:
            info["state"] = "other library"
            if expected.size:
                what = f"{path} was written for another library (one deleted before this database was made)"
                problems.append(Problem(where, what, fix))
            continue
        ids = index.ids()
        # Both are sorted and distinct; without assume_unique numpy hashes them, seconds for a large library.
        missing = np.setdiff1d(expected, ids, assume_unique=True).size
        extra = np.setdiff1d(ids, expected, assume_unique=True).size
        state = "ok" if missing == extra == 0 else "out of date"
        info.update(type=index.type, vectors=len(index), removed=index.removed, state=state)
        if missing or extra:
            problems.append(
                Problem(where, f"{path} differs from the database: {missing} vectors missing, {extra} extra", fix)
            )
        if index.compaction_overdue:
            problems.append(Problem(where, _overdue(path, index.removed, len(index) + index.removed), fix))
    return data, problems


def _overdue(path: Path, removed: int, stored: int) -> str:
    """A FAISS file holding more removed vectors than a change leaves in one (written otherwise: by hand, or by a
    version that compacted later): searches skip them, slower for it, until the next removal compacts it."""
    return f"{path} still stores {removed} removed vectors of its {stored}, over the fifth that is compacted away"


def _schema_problem(revision: str | None, option: str) -> Problem:
    from alembic.script import ScriptDirectory

    from .db.migrate import SCHEMA_HEAD, alembic_config

    known = {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if revision is None or revision in known:
        what = f"schema revision {revision or 'none'}, this pengi-search uses {SCHEMA_HEAD}"
        return Problem("database", what, f"pengi-search stats{option}  (opening it upgrades the schema)")
    what = f"schema revision {revision} is newer than this pengi-search ({SCHEMA_HEAD}) knows"
    return Problem("database", what, "pip install --upgrade pengi-search")


def _unreachable_server_fix() -> str:
    return (
        "check the URL (--db or PENGI_SEARCH_DB): the host and port, the user and password, the database's name; "
        "and that the server is running"
    )


def _damaged_database_fix(option: str) -> str:
    return (
        "restore the database from a backup, or move it aside and run "
        f"`pengi-search index PATH...{option}` again (every file is captioned again)"
    )
