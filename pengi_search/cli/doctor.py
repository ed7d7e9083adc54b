"""`doctor`: whether this installation is healthy, and the command that fixes each problem found."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.text import Text

from ..units import count_text, duration_text, size_text
from .common import EXIT_FAILED, EXIT_OK, DbOption, ModelOption, handle_errors, json_option, out_console, print_json

if TYPE_CHECKING:
    from ..doctor import Report


DoctorJsonOption = json_option("an object {healthy, environment, devices, models, database, problems, notes}.")


@handle_errors
def doctor(db: DbOption = None, model: ModelOption = None, json_output: DoctorJsonOption = False) -> None:
    """Check this installation, and say how to fix each problem found.

    Versions and builds (torch, CUDA, faiss, PyAV's codecs), devices, threads, the installed models and the one
    the other commands would use (--model; sizes, checksums, tokenizers), the database (schema, counts,
    integrity), its FAISS files and runs left "running".
    Exit code 0 when healthy, 1 otherwise.

    Example: pengi-search doctor --json
    """
    from ..doctor import diagnose

    report = diagnose(db, model)
    if json_output:
        print_json(report.to_json())
    else:
        _print_report(report, db)
    raise typer.Exit(EXIT_OK if report.healthy else EXIT_FAILED)


def _print_report(report: Report, db: str | None) -> None:
    """The report as text; `db`: `--db` as given, which names the database as the user named it."""
    for title, rows in (
        ("software", _software(report.environment)),
        ("devices", _devices(report.devices)),
        ("models", _models(report.models)),
        ("database", _database(report.database, db)),
    ):
        out_console.print(f"[bold]{title}[/]")
        for label, text in rows:
            out_console.print(Text(f"  {label:<14} {text}"), soft_wrap=True)
    for note in report.notes:
        out_console.print(Text.assemble(("note:", "yellow"), " ", note), soft_wrap=True)
    if report.healthy:
        out_console.print("[green]healthy[/]: no problem found")
        return
    out_console.print(f"[bold red]{count_text(len(report.problems), 'problem')}[/]")
    for problem in report.problems:
        out_console.print(Text.assemble(("-", "red"), f" {problem.where}: {problem.what}"), soft_wrap=True)
        out_console.print(Text(f"  fix: {problem.fix}"), soft_wrap=True)


def _database_named(url: str, given: str | None) -> tuple[str, str]:
    """The database as the user named it (`urls.library_name`): a SQLite file as typed, or the default's file, not
    as the URL made of it; a URL given, and a server's database, by its URL (the JSON keeps the URL for all)."""
    from ..db.urls import library_name

    name = library_name(given) if url.startswith("sqlite") else url
    return ("url" if "://" in name else "file", name)


def _software(env: dict[str, Any]) -> list[tuple[str, str]]:
    torch, faiss, av, sf = env["torch"], env["faiss"], env["av"], env["soundfile"]
    sentence = env["sentence_transformers"]
    missing = [name for name, present in av["decoders"].items() if not present]
    return [
        ("python", f"{env['python']} ({env['platform']})"),
        ("pengi-search", env["pengi_search"]),
        ("torch", f"{torch['version']}, CUDA {torch['cuda'] or 'none (CPU build)'}, MPS built {torch['mps_built']}"),
        # sentence-transformers on transformers' line: its name is wider than the labels' column
        ("transformers", f"{_installed(env['transformers'])}, sentence-transformers {_installed(sentence)}"),
        ("faiss", f"{faiss['version']} ({'GPU' if faiss['gpu_build'] else 'CPU'} build)"),
        ("PyAV", f"{av['version']}, libavcodec {av['libavcodec']}, decoders missing: {', '.join(missing) or 'none'}"),
        ("soundfile", f"{sf['version']} (libsndfile {sf['libsndfile']})"),
        ("network", f"off ({env['offline']})" if env["offline"] else "allowed (model fetch, first use)"),
    ]


def _installed(version: str | None) -> str:
    """A distribution's version, or that it is missing (the JSON's null)."""
    return version or "not installed"


def _devices(devices: dict[str, Any]) -> list[tuple[str, str]]:
    gpus = ", ".join(f"{gpu['index']}: {gpu['name']} ({gpu['memory_gib']} GiB)" for gpu in devices["cuda"])
    return [
        ("cuda", gpus or "no GPU visible"),
        ("mps", "available" if devices["mps"] else "not available"),
        ("--device auto", devices["auto_device"]),
        ("threads", f"torch {devices['torch_threads']}, faiss {devices['faiss_threads']}"),
        ("cpus", f"{devices['usable_cpus']} usable of {devices['cpus']}"),
    ]


def _models(models: dict[str, Any]) -> list[tuple[str, str]]:
    in_use = models["in_use"]
    rows = [("directory", models["directory"]), ("in use", in_use["path"] if in_use else "none")]
    outside = [in_use] if in_use and in_use not in models["installed"] else []  # `--model DIR`: checked too
    for model in [*models["installed"], *outside]:
        checksum = {True: "sha256 ok", False: "sha256 MISMATCH", None: "unchecked"}[model.get("checksum_ok")]
        tokenizers = ", ".join(f"{kind} {where or 'MISSING'}" for kind, where in model.get("tokenizers", {}).items())
        # "variant" named: a bare "base" beside a model's name read as its name
        variant = f"variant {model.get('variant', 'unknown')}, {size_text(model['bytes'])}"
        rows.append((model["name"], f"{variant}, {checksum}; tokenizers: {tokenizers}"))
    return rows


def _database(db: dict[str, Any], given: str | None) -> list[tuple[str, str]]:
    rows = [_database_named(db["url"], given)]
    if db["exists"] is None:
        return [*rows, ("state", f"unknown: {db['error']}")]
    if not db["exists"]:
        return [*rows, ("state", db["error"])]
    if "files" not in db:  # unreadable, or at another schema revision: the problem says which
        return [*rows, ("schema", str(db.get("schema_revision", "unknown")))]
    files = db["files"]
    counts = f"{files['indexed']} indexed, {files['pending']} pending, {files['error']} failed"
    rows += [
        ("schema", str(db["schema_revision"])),
        ("integrity", str(db.get("integrity", "not checked (not SQLite)"))),
        ("files", f"{files['total']} ({counts})"),
        ("windows", f"{db['window_count']}, texts {db['texts']}, audio {duration_text(db['indexed_audio_s'])}"),
        ("running runs", str(len(db["running_runs"]))),
    ]
    for kind, info in db["vector_indexes"].items():
        rows.append(
            (
                f"{kind} index",
                f"{info['state']}, {info.get('vectors', 0)} of {info['database_vectors']} vectors"
                + (f", {info['removed']} removed ones still stored" if info.get("removed") else ""),
            )
        )
    return rows
