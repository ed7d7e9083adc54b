"""`pengi-search eval`: measuring quality on your own data, and comparing two runs.

`eval retrieval` and `eval caption` (`eval_sets`) index a captioned set, then score the library; `eval classify`
(`eval_classify`) scores zero-shot classification against a truth CSV; each writes report.json, report.md and its
figures into `--output` (`eval_report`). `eval compare`, here, lines up two such reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import check_output_file, handle_errors, json_option, out_console, plain_table, print_json, warn
from .eval_classify import classify_files
from .eval_report import cell
from .eval_sets import caption, retrieval
from .help_text import App

app = App(
    help="Measure retrieval, captioning and classification quality on your own data, and compare two runs.",
    no_args_is_help=True,
)
# In the order `eval --help` lists them.
app.command()(retrieval)
app.command()(caption)
app.command("classify")(classify_files)

CompareJsonOption = json_option("an object {kind, reports, setup_differences, not_recorded, notes, rows}.")


@app.command()
@handle_errors
def compare(
    first: Annotated[Path, typer.Argument(help="A report.json, or the folder that holds it (the baseline).")],
    second: Annotated[Path, typer.Argument(help="A report.json of the same kind, or its folder (the change).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the comparison as Markdown.")
    ] = None,
    json_output: CompareJsonOption = False,
) -> None:
    """Two reports of the same kind side by side: every metric, the difference, and what differs in the setup.

    Example: pengi-search eval compare runs/base runs/finetuned
    """
    from ..evaluation.report import REPORT_JSON, compare_reports, load_report, write_comparison

    # The folders `eval -o` wrote stand for their reports.
    first, second = (path / REPORT_JSON if path.is_dir() else path for path in (first, second))
    if output is not None:
        check_output_file(output, "Markdown")
    comparison = compare_reports(load_report(first), load_report(second), _report_names(first, second))
    if output is not None:
        write_comparison(comparison, output)
    if json_output:
        print_json(comparison)
    else:
        _print_comparison(comparison)
    for note in comparison["notes"]:  # with --json too, as every warning
        warn(note)


def _report_names(first: Path, second: Path) -> tuple[str, str]:
    """Short names for the two columns: the folder of a report.json, else the file name; "a" and "b" if equal."""
    from ..evaluation.report import REPORT_JSON

    names = tuple(p.parent.name if p.name == REPORT_JSON and p.parent.name else p.stem for p in (first, second))
    return (names[0], names[1]) if names[0] != names[1] else ("a", "b")


def _print_comparison(comparison: dict[str, Any]) -> None:
    from rich.text import Text

    from ..evaluation.report import setting_text

    (name_a, _), (name_b, _) = comparison["reports"].items()
    for key, (was, now) in comparison["setup_differences"].items():
        out_console.print(f"{key}: {setting_text(was)} -> {setting_text(now)}", markup=False, soft_wrap=True)
    table = plain_table()
    for column in ("metric", name_a, name_b, "change"):  # the reports' folder names, as written
        table.add_column(Text(column), justify="left" if column == "metric" else "right")
    for row in comparison["rows"]:
        change = "–" if row["delta"] is None else f"{row['delta']:+.4f}"
        table.add_row(row["metric"], cell(row["a"]), cell(row["b"]), change)
    out_console.print(table)
