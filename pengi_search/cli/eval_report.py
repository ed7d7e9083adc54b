"""What every `eval` command ends with: report.json, report.md and the figures written into `--output`, the
summary printed (or the report as JSON) and the caveats warned of, and the exit code (3 when files were left out)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..pathnames import shown
from .common import EXIT_OK, EXIT_PARTIAL, json_option, out_console, plain_table, print_json, warn

if TYPE_CHECKING:
    from indexer.run_report import IndexSummary

OutputOption = Annotated[
    Path, typer.Option("--output", "-o", help="Folder for report.json, report.md and the figures.")
]
ReportJsonOption = json_option("an object, the report as report.json holds it.")

Report = dict[str, Any]  # what a command measured, as report.json holds it

_SHOWN_SKIPPED = 10  # files left out that the terminal lists (the report lists them all)


def finish(
    kind: str,
    result: dict[str, Any],
    dataset: dict[str, Any],
    setup: dict[str, Any],
    summary: IndexSummary | None,
    output: Path,
    json_output: bool,
) -> None:
    """Write the `kind` report (with the index run's `summary`, where the set was indexed), show it, and end the
    command: exit code 3 when the report left files out, else 0."""
    from ..evaluation.report import REPORT_JSON, build_report, write_report

    report = build_report(kind, result, dataset=dataset, setup=setup)
    replaced = _report_kind(output / REPORT_JSON)
    if replaced is not None and replaced != kind:
        held = f"{shown(os.fspath(output))} held a {replaced} report"
        warn(f"{held}, replaced by this {kind} report (another -o keeps both)")
    if summary is not None:
        index_run = summary.to_json()
        kept = ("indexed", "unchanged", "touched", "window_count", "seconds", "failed")
        report["index_run"] = {name: index_run[name] for name in kept}
    files = write_report(report, output)
    if json_output:
        print_json(report)
    else:
        _print_report(report)
        out_console.print(f"report: {', '.join(shown(str(path)) for path in files)}", markup=False, soft_wrap=True)
    _warn_caveats(report)  # with --json too: a script's log of stderr names the files left out
    raise typer.Exit(EXIT_PARTIAL if report.get("skipped") else EXIT_OK)


def _report_kind(path: Path) -> str | None:
    """The kind of the evaluation report at `path`, if there is a readable one."""
    from ..evaluation.report import ReportError, load_report

    if not path.is_file():
        return None
    try:
        return load_report(path).get("kind")
    except (ReportError, OSError):
        return None


def _print_report(report: dict[str, Any]) -> None:
    from ..evaluation.plots import DIRECTION_NAMES
    from ..evaluation.report import flat_metrics

    table = plain_table()
    if report["kind"] == "retrieval":
        names = list(next(iter(next(iter(report["metrics"].values()), {}).values()), {}))
        for column in ("ranking", "direction", *names):
            table.add_column(column, justify="left" if column in ("ranking", "direction") else "right")
        for ranking, directions in report["metrics"].items():
            for direction, values in directions.items():
                cells = [cell(values[name]) for name in names]
                table.add_row(ranking, DIRECTION_NAMES.get(direction, direction), *cells)
    else:
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in flat_metrics(report["metrics"]).items():
            table.add_row(name, cell(value))
    out_console.print(table)
    for name, why in report.get("unavailable", {}).items():
        out_console.print(f"{name} not computed: {why}", markup=False, soft_wrap=True)


def _warn_caveats(report: dict[str, Any]) -> None:
    """What the numbers leave out or cannot count, each a warning on its own line."""
    from ..evaluation.report import unmatched_note

    if report.get("unmatched"):
        warn(unmatched_note(report["unmatched"]))
    for note in report.get("notes", []):
        warn(note)
    skipped = report.get("skipped", [])
    for item in skipped[:_SHOWN_SKIPPED]:
        warn(f"left out {shown(item['path'])}: {item['error']}")
    if len(skipped) > _SHOWN_SKIPPED:
        warn(f"... and {len(skipped) - _SHOWN_SKIPPED} more files left out (listed in the report)")


def cell(value: float | None) -> str:
    """A metric in a table: 4 decimals, a dash where it could not be computed."""
    return "–" if value is None else f"{value:.4f}"
