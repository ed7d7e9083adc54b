"""`eval classify` on a large multi-label set: the memory and the bytes of its report, with no model.

    python benchmarks/bench_eval_report.py                           # AudioSet's eval set: 20,000 files x 527
    python benchmarks/bench_eval_report.py --files 2000 --classes 200    # seconds

The script builds `--files` predictions, each with a random score for every one of `--classes` candidate labels,
and a truth CSV giving each file 1 to 3 of them, then runs what `eval classify` runs after classifying: the
multi-label evaluation, the report written (report.json and report.md) and, where this checkout writes one, the
side file of every file's score for every class. It prints the peak of the memory allocated by that stage
(tracemalloc: the predictions, built before, are not counted; tracing slows the stage, so its seconds are not the
command's) and the size of each file written. Run it against an older checkout to see what a change saved.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

from pengi_search.classify import Prediction
from pengi_search.evaluation import multilabel
from pengi_search.evaluation.report import build_report, write_report
from pengi_search.truth import Truth, read_truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=527)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    labels = [f"class {j}" for j in range(args.classes)]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        paths = [str(work / f"{i:06d}.wav") for i in range(args.files)]
        rows = [f"{Path(p).name},{';'.join(rng.sample(labels, rng.randint(1, 3)))}" for p in paths]
        (work / "truth.csv").write_text("file,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
        truth = read_truth(work / "truth.csv")
        predictions = [_prediction(path, labels, rng) for path in paths]
        output = work / "report"
        start = time.perf_counter()
        tracemalloc.start()
        written = _report(predictions, truth, labels, output)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        seconds = time.perf_counter() - start
        print(f"{args.files} files x {args.classes} classes: report stage {seconds:.1f} s (traced)")
        print(f"peak memory allocated by the report stage: {peak / 2**20:.0f} MiB")
        for path in written:
            print(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB")


def _prediction(path: str, labels: list[str], rng: random.Random) -> Prediction:
    ranked = sorted(((label, rng.random()) for label in labels), key=lambda item: -item[1])
    return Prediction(path, ranked, 1, "decoded")


def _report(predictions: list[Prediction], truth: Truth, labels: list[str], output: Path) -> list[Path]:
    """What `eval classify` does with the predictions of a multi-label truth; the files it wrote."""
    dataset = {"csv": "truth.csv", "sha256": "0" * 64, "labels": labels}
    if not hasattr(multilabel, "score_matrix"):  # an older checkout: every score in report.json, no side file
        result = multilabel.evaluate_multi_label(predictions, truth, labels)
        return _written(build_report("classify", result, dataset=dataset, setup={}), output)
    matrix = multilabel.score_matrix(predictions, truth, labels)
    result = multilabel.evaluate_multi_label(predictions, truth, labels, matrix=matrix)
    written = _written(build_report("classify", result, dataset=dataset, setup={}), output)
    return [*written, multilabel.write_scores(matrix, output)]


def _written(report: dict, output: Path) -> list[Path]:
    """report.json and report.md, as `eval classify` writes them (the figures left out)."""
    written = write_report(report, output)
    return [path for path in written if path.suffix != ".png"]


if __name__ == "__main__":
    main()
