"""METEOR and SPICE, the captioning metrics that only exist as Java programs.

Both run from the jars that the `pycocoevalcap` package ships (the COCO caption evaluation code, which the audio
captioning benchmarks use; `pip install 'pengi-search[eval]'`). Each is optional: without Java, without the
package, or (SPICE) without Stanford CoreNLP 3.6.0, which pycocoevalcap fetches from Stanford on first use, the
metric is reported as unavailable with the reason instead of failing the evaluation. Nothing here downloads.

METEOR 1.5 is driven through its `-stdio` protocol here, with the options coco-caption uses (English, `-norm`):
one "SCORE ||| ref ||| ... ||| candidate" line per caption returns its statistics, and one "EVAL ||| stats ||| ..."
line returns each caption's score and then the corpus score. (pycocoevalcap's own wrapper holds a lock that its
finaliser waits for, so a Java process that dies mid-way would hang it.) SPICE runs through pycocoevalcap's class.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
INSTALL_HINT = "pip install 'pengi-search[eval]'"
METEOR_COMMAND = ("java", "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm")


@dataclass(frozen=True)
class JavaMetric:
    value: float | None
    unavailable: str | None = None  # why there is no value


def meteor(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> JavaMetric:
    """METEOR of the corpus; give the texts tokenised and joined by spaces (as coco-caption does)."""
    folder, missing = scorer_folder("pycocoevalcap.meteor.meteor")
    if folder is None:
        return JavaMetric(None, missing)
    try:
        with subprocess.Popen(
            METEOR_COMMAND,
            cwd=folder,  # the jar finds its paraphrase table under data/ beside it
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
        ) as process:
            assert process.stdin is not None and process.stdout is not None
            stats = [
                _ask(process.stdin, process.stdout, _score_line(c, refs))
                for c, refs in zip(candidates, references, strict=True)
            ]
            process.stdin.write(" ||| ".join(["EVAL", *stats]) + "\n")
            process.stdin.flush()
            for _ in stats:  # each caption's score, then the corpus score
                _read(process.stdout)
            value = float(_read(process.stdout))
            process.stdin.close()
    except (OSError, ValueError) as err:  # Java could not start or stopped (e.g. too little memory for -Xmx2G)
        return JavaMetric(None, f"METEOR failed: {err}")
    return JavaMetric(value)


def _score_line(candidate: str, references: Sequence[str]) -> str:
    # "|||" separates fields and a line break ends the request: neither may appear inside a text.
    texts = [" ".join(t.replace("|||", " ").split()) for t in (*references, candidate)]
    return " ||| ".join(["SCORE", *texts])


def _ask(stdin: IO[str], stdout: IO[str], line: str) -> str:
    stdin.write(line + "\n")
    stdin.flush()
    return _read(stdout)


def _read(stdout: IO[str]) -> str:
    line = stdout.readline()
    if not line:
        raise ValueError("the METEOR process stopped without an answer")
    return line.strip()


def spice(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> JavaMetric:
    """SPICE of the corpus (the mean of the captions' F-scores)."""
    folder, missing = scorer_folder("pycocoevalcap.spice.spice")
    if folder is None:
        return JavaMetric(None, missing)
    absent = [name for name in CORENLP_JARS if not (folder / "lib" / name).is_file()]
    if absent:
        return JavaMetric(
            None,
            f"SPICE needs Stanford CoreNLP 3.6.0 ({', '.join(absent)} in {folder / 'lib'}); fetch it once with "
            "network access: python -m pycocoevalcap.spice.get_stanford_models",
        )
    from pycocoevalcap.spice.spice import Spice

    references_by_item = {i: list(refs) for i, refs in enumerate(references)}
    candidate_by_item = {i: [candidate] for i, candidate in enumerate(candidates)}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            value, _ = Spice().compute_score(references_by_item, candidate_by_item)
    except (OSError, ValueError, subprocess.CalledProcessError) as err:  # e.g. a read-only cache folder, no memory
        return JavaMetric(None, f"SPICE failed: {err}")
    return JavaMetric(float(value))


def scorer_folder(module: str) -> tuple[Path | None, str]:
    """The folder of a pycocoevalcap scorer (holding its jars), or None and why it cannot run."""
    if shutil.which("java") is None:
        return None, "needs a Java runtime (no `java` on PATH)"
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        return None, f"needs the pycocoevalcap package: {INSTALL_HINT}"
    return Path(spec.origin).parent, ""
