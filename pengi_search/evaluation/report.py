"""Evaluation reports: a JSON file with everything (metrics, setup, per-query details), a Markdown summary for
people, PNG figures where they help, and the comparison of two reports of the same kind.

Every report has `kind` (retrieval, caption or classify), `dataset` (what was measured, with the sha256 of its
CSV), `setup` (model, text embedder, options) and `metrics`, a nesting of named numbers that `compare` lines up
by their dotted names (e.g. `caption.text_to_audio.R@1`).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..pathnames import json_text
from ..paths import as_path
from ..text_files import CSV_LIST_SEPARATOR, read_text
from ..units import count_text, for_count
from ..versions import software_versions
from ..written_aside import written_aside
from . import plots

SCHEMA = 1
KINDS = ("retrieval", "caption", "classify")
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
TITLES = {"retrieval": "Retrieval", "caption": "Captioning", "classify": "Classification"}
_LISTED = 20  # skipped files and examples shown in the Markdown summary (the JSON has them all)


class ReportError(UsageError):
    """A file that is not a readable evaluation report."""


def build_report(kind: str, result: dict[str, Any], *, dataset: dict[str, Any], setup: dict[str, Any]) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}")
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    setup = setup | software_versions()  # in the setup, so that `compare` names them when they differ
    return {"pengi_search_eval": SCHEMA, "kind": kind, "created_at": created, "dataset": dataset, "setup": setup} | (
        result
    )


def write_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """Write report.json, report.md and the figures into `folder`; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn, why_not = plots.draw(report, folder)
    report["plots"] = drawn
    if why_not:
        report["plots_unavailable"] = why_not
    _write_text(folder / REPORT_JSON, json_text(report, indent=2) + "\n")
    _write_text(folder / REPORT_MD, markdown(report))
    return [folder / REPORT_JSON, folder / REPORT_MD, *(folder / name for name in drawn)]


def _write_text(path: Path, text: str) -> None:
    """Written beside and renamed into place: a report is never left half-written. A file name that is not valid
    UTF-8 is written escaped (in JSON it already is, by `json_text`)."""
    with written_aside(path) as partial:
        partial.write_text(text, encoding="utf-8", errors="backslashreplace")


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = as_path(path)
    text = read_text(path, ReportError)
    try:
        report = json.loads(text)
    except ValueError as err:
        raise ReportError(path, f"not a readable JSON report ({err})") from None
    if (
        not isinstance(report, dict)
        or report.get("kind") not in KINDS
        or not all(isinstance(report.get(part), dict) for part in ("metrics", "dataset", "setup"))
    ):
        raise ReportError(path, "not a pengi-search evaluation report (written by `pengi-search eval ...`)")
    return report


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float | None]:
    """Nested metrics as {"a.b.c": number}, in the report's order."""
    flat: dict[str, float | None] = {}
    for name, value in metrics.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(flat_metrics(value, key + "."))
        elif value is None or isinstance(value, int | float):
            flat[key] = value
    return flat


# `evaluated` says which part of the set was scored. Single-label classify reports of earlier versions also put an
# outcome there (`correct`), which two runs of the same files differ in.
_OUTCOMES = ("correct",)


def _evaluated_scope(report: dict[str, Any]) -> dict[str, Any]:
    """Which part of the set was scored, as counts ({"files": 40, "captions": 200}): `evaluated` without outcomes."""
    return {key: value for key, value in (report.get("evaluated") or {}).items() if key not in _OUTCOMES}


def scope_text(scope: dict[str, Any]) -> str:
    return ", ".join(f"{value} {key}" for key, value in scope.items())


def setting_text(value: Any) -> str:
    """A setup value as people read it: a list as its items, a setting the report does not have as a dash."""
    if value is None:
        return "–"
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def compare_reports(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("a", "b")) -> dict[str, Any]:
    """Every metric of either report side by side, with b - a; notes what differs in the set and setup, and what an
    older report does not record."""
    if _kind_name(a) != _kind_name(b):
        raise ReportError("", f"cannot compare a {_kind_name(a)} report with a {_kind_name(b)} report")
    unrecorded = {name: keys for name, report in zip(names, (a, b), strict=True) if (keys := _not_recorded(report))}
    unknown = {key for keys in unrecorded.values() for key in keys}
    notes = _set_notes(a, b) + [
        f"{name} was written by an older pengi-search, which did not record {', '.join(keys)}: whether the two "
        "differ in them cannot be told"
        for name, keys in unrecorded.items()
    ]
    return {
        "kind": a["kind"],
        "reports": {names[0]: _identity(a), names[1]: _identity(b)},
        "setup_differences": _setup_differences(a["setup"], b["setup"], unknown),
        "not_recorded": unrecorded,
        "notes": notes,
        "rows": _metric_rows(flat_metrics(a["metrics"]), flat_metrics(b["metrics"])),
    }


def _metric_rows(first: dict[str, float | None], second: dict[str, float | None]) -> list[dict[str, Any]]:
    rows = []
    for metric in dict.fromkeys([*first, *second]):
        x, y = first.get(metric), second.get(metric)
        rows.append({"metric": metric, "a": x, "b": y, "delta": None if x is None or y is None else y - x})
    return rows


def _setup_differences(a: dict[str, Any], b: dict[str, Any], unknown: set[str]) -> dict[str, list[Any]]:
    """{key: [a's value, b's]} where they differ, None where one has no such setting (another method's); `unknown`:
    the keys an older report did not record, said in a note instead (its None would read as a setting)."""
    return {
        key: [a.get(key), b.get(key)]
        for key in dict.fromkeys([*a, *b])
        if a.get(key) != b.get(key) and key not in unknown
    }


def _kind_name(report: dict[str, Any]) -> str:
    """The kind, as far as comparing goes: single- and multi-label classification share no metric (accuracy, mAP)."""
    if report["kind"] != "classify":
        return report["kind"]
    return "multi-label classify" if report.get("multi_label") else "single-label classify"


def _set_notes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Whether the two measured the same thing: the same set (its sha256) and the same part of it."""
    if a["dataset"].get("sha256") != b["dataset"].get("sha256") and (other := _other_set(a, b)):
        return [other]
    audio = a["dataset"].get("audio_sha256"), b["dataset"].get("audio_sha256")
    if None not in audio and audio[0] != audio[1]:  # a report of an older pengi-search has no digest of its audio
        return [
            "the two reports measured other audio files under the same CSV (their sha256 differ): the numbers "
            "are not comparable"
        ]
    scopes = _evaluated_scope(a), _evaluated_scope(b)
    if scopes[0] != scopes[1]:
        return [f"the same set, but other parts of it were evaluated: {' vs '.join(map(scope_text, scopes))}"]
    return []


def _other_set(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Why two reports' digests of their set differ; None where they measured the same set all the same. A classify
    report's digest covers its candidate labels in their order (a labels file's, else the truth's), which moves no
    number (labels that tie rank by name): its truth file's own sha256 and its labels tell what differs."""
    truth = a["dataset"].get("truth_sha256"), b["dataset"].get("truth_sha256")
    read = (report["dataset"].get("label_separator", CSV_LIST_SEPARATOR) for report in (a, b))
    # Another CSV, another reading of its cells, or a report of an older pengi-search, which cannot tell.
    if None in truth or truth[0] != truth[1] or len(set(read)) > 1:
        return "the two reports measured different sets (their CSVs differ): the numbers are not comparable"
    labels = set(a["dataset"].get("labels") or ()), set(b["dataset"].get("labels") or ())
    if labels[0] == labels[1]:
        return None
    return (
        f"the two reports scored the same truth file against other candidate labels ({len(labels[0])} and "
        f"{len(labels[1])}, {len(labels[0] & labels[1])} in common): the numbers are not comparable"
    )


def _not_recorded(report: dict[str, Any]) -> list[str]:
    """The setup keys that every such report written now has (see `eval` in the CLI) and this one lacks."""
    recorded = list(software_versions())
    if report["kind"] in ("retrieval", "caption"):
        recorded += ["caption_prompts", "caption_decoding"]  # what made the captions scored
    elif report["setup"].get("method") == "text":
        recorded += ["beam", "max_len", "stop"]  # how the files' captions were decoded
    return [key for key in recorded if key not in report["setup"]]


def write_comparison(comparison: dict[str, Any], path: Path) -> None:
    _write_text(path, compare_markdown(comparison))


def _identity(report: dict[str, Any]) -> dict[str, Any]:
    return {"created_at": report.get("created_at"), "dataset": report["dataset"].get("csv"), "setup": report["setup"]}


# ---------------------------------------------------------------------------------------------------------------
# Markdown


def markdown(report: dict[str, Any]) -> str:
    kind = report["kind"]
    dataset = report["dataset"]
    lines = [f"# {TITLES[kind]}: {Path(dataset['csv']).name}", ""]
    lines += [f"- {name}: {value}" for name, value in _setup_lines(report)]
    lines.append("")
    lines += {"retrieval": _retrieval_md, "caption": _caption_md, "classify": _classify_md}[kind](report)
    if report.get("notes"):  # what the numbers leave out, or how far they hold (retrieval's ties)
        lines += [*(f"- **note**: {note}" for note in report["notes"]), ""]
    lines += [f"![{name}]({name})" for name in report.get("plots", [])]
    if report.get("plots_unavailable"):
        lines.append(f"_No figures: {report['plots_unavailable']}._")
    lines += _skipped_md(report.get("skipped", []))
    return "\n".join(lines).rstrip() + "\n"


def _setup_lines(report: dict[str, Any]) -> list[tuple[str, Any]]:
    dataset, setup = report["dataset"], report["setup"]
    shown: list[tuple[str, Any]] = [("set", f"{dataset['csv']} (sha256 {dataset['sha256'][:12]})")]
    shown.append(("audio", dataset.get("audio_root") or dataset.get("target")))
    if "labels" in dataset:
        shown.append(("labels", ", ".join(dataset["labels"])))
    if report.get("evaluated"):
        shown.append(("evaluated", scope_text(report["evaluated"])))
    shown += [(key, setting_text(value)) for key, value in setup.items() if not isinstance(value, dict)]
    shown.append(("created", report.get("created_at")))
    return shown


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")  # a caption must not end its table cell


def _table(header: list[str], rows: list[list[Any]], text_columns: int = 1) -> list[str]:
    """A Markdown table: the first `text_columns` columns left-aligned, the numbers right-aligned."""
    rule = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _retrieval_md(report: dict[str, Any]) -> list[str]:
    rows = []
    for ranking, directions in report["metrics"].items():
        for direction, values in directions.items():
            rows.append([ranking, plots.DIRECTION_NAMES.get(direction, direction), *values.values()])
    first = next(iter(next(iter(report["metrics"].values()), {}).values()), {})
    lines = _table(["ranking", "direction", *first], rows, text_columns=2)
    lines += [f"- {name}: {text}" for name, text in report.get("rankings", {}).items()] + [""]
    return lines


def _caption_md(report: dict[str, Any]) -> list[str]:
    lines = _table(["metric", "value"], [[name, value] for name, value in report["metrics"].items()])
    if report.get("unavailable"):
        lines += ["Not computed:", *(f"- {name}: {why}" for name, why in report["unavailable"].items()), ""]
    if report.get("prompts"):
        prompts = for_count(len(report["prompts"]), "the prompt", "the prompts")
        lines += [f"Captions answer {prompts}: {', '.join(report['prompts'])}.", ""]
    worst = sorted(report.get("items", []), key=lambda item: item["cider_d"])[:_LISTED]
    if worst:
        lines += [f"## Lowest CIDEr-D ({len(worst)} of {len(report['items'])})", ""]
        lines += _table(
            ["file", "generated", "first reference", "CIDEr-D"],
            [[item["path"], item["generated"], item["references"][0], item["cider_d"]] for item in worst],
            text_columns=3,
        )
    return lines


def _classify_md(report: dict[str, Any]) -> list[str]:
    lines = _table(["metric", "value"], [[name, value] for name, value in report["metrics"].items()])
    per_class = report.get("per_class", {})
    if per_class:
        lines += ["## Per class", ""]
        if report.get("multi_label"):  # each class's AP over the files ranked by their score for it
            lines += _table(["label", "AP", "positives"], [[k, m["ap"], m["positives"]] for k, m in per_class.items()])
        else:
            lines += _table(
                ["label", "precision", "recall", "F1", "support"],
                [[label, m["precision"], m["recall"], m["f1"], m["support"]] for label, m in per_class.items()],
            )
    if report.get("unmatched"):
        lines += [f"{unmatched_note(report['unmatched'])}.", ""]
    return lines


def unmatched_note(unmatched: list[str]) -> str:
    are = for_count(len(unmatched), "is", "are")
    return f"{count_text(len(unmatched), 'classified file')} {are} not in the truth file, so not scored"


def _skipped_md(skipped: list[dict[str, str]]) -> list[str]:
    if not skipped:
        return []
    lines = ["", f"## Left out ({len(skipped)})", ""]
    lines += [f"- {item['path']}: {item['error']}" for item in skipped[:_LISTED]]
    if len(skipped) > _LISTED:
        lines.append(f"- ... and {len(skipped) - _LISTED} more (see {REPORT_JSON})")
    return lines


def compare_markdown(comparison: dict[str, Any]) -> str:
    (name_a, a), (name_b, b) = comparison["reports"].items()
    lines = [f"# {TITLES[comparison['kind']]}: {name_a} vs {name_b}", ""]
    lines += [f"- {name_a}: {a['dataset']} ({a['created_at']})", f"- {name_b}: {b['dataset']} ({b['created_at']})"]
    differences = comparison["setup_differences"].items()
    lines += [f"- {key}: {setting_text(was)} → {setting_text(now)}" for key, (was, now) in differences]
    lines += [f"- **note**: {note}" for note in comparison["notes"]]
    lines.append("")
    rows = [[row["metric"], row["a"], row["b"], _signed(row["delta"])] for row in comparison["rows"]]
    lines += _table(["metric", name_a, name_b, f"{name_b} − {name_a}"], rows)
    return "\n".join(lines).rstrip() + "\n"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"
