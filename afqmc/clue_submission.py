"""python -m afqmc.clue_submission RUN_DIR... [--out clue_submission.zip]

Gathers the test predictions of several runs, one run per CLUE task, into the zip that CLUE's
leaderboard takes: each run's predictions/<task>_predict.json at the top of the archive, under
CLUE's own file names (dataset.task of conf/dataset/{afqmc,tnews,iflytek,ocnli,cmnli}.yaml).

CLUE scores a file line by line against its test.json, so a run is refused unless it completed,
predicted every test line, and is the only run of its task.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

from afqmc.errors import SubmissionError
from afqmc.files import atomic_write
from afqmc.runs.records import read_summary

SUFFIX = "_predict.json"
# CLUE's submission names of the classification tasks this framework reads (CLUE 1.1, and 1.0's TNEWS test set)
CLUE_TASKS = ("afqmc", "tnews11", "tnews10", "iflytek", "ocnli_50k", "cmnli")
# The lines of CLUE's test files, where checked (AFQMC's is the file of its checksum in conf/dataset/afqmc.yaml;
# TNEWS' 1.1 and 1.0 test sets hold 10,000 each): a submission of another length cannot be scored.
CLUE_TEST_LINES = {"afqmc": 3861, "tnews11": 10000, "tnews10": 10000}


def run_predictions(run: Path) -> tuple[str, Path, int]:
    """(task, predictions file, lines) of one run, or a SubmissionError saying why it cannot go in."""
    if not run.is_dir():
        raise SubmissionError(f"{run}: not a run directory")
    summary, error = read_summary(run)
    if error:
        raise SubmissionError(f"{run}: the run did not complete ({error})")
    files = sorted((run / "predictions").glob(f"*{SUFFIX}"))
    if not files:
        raise SubmissionError(
            f"{run}: no test predictions (predictions/*{SUFFIX}): it ran with trainer.predict=false "
            "or dataset.splits.test=null"
        )
    if len(files) > 1:
        raise SubmissionError(f"{run}: several prediction files ({', '.join(f.name for f in files)}); expected one")
    if summary.get("predictions_partial"):
        raise SubmissionError(
            f"{run}: its predictions are partial (dataset.max_test_samples): they cover only the first test "
            "lines; predict the whole test split for CLUE"
        )
    skipped = (summary.get("data") or {}).get("skipped_lines", {}).get("test") or 0
    if skipped:
        raise SubmissionError(
            f"{run}: {skipped} test lines were skipped (dataset.on_bad_line=skip), so the predictions do not "
            f"line up with the test file, which CLUE scores line by line"
        )
    task = files[0].name[: -len(SUFFIX)]
    if task not in CLUE_TASKS:
        raise SubmissionError(f"{files[0]}: {task!r} is not a CLUE task's name; CLUE's: {', '.join(CLUE_TASKS)}")
    lines = _count_predictions(files[0])
    expected = summary.get("predictions_lines")
    if expected is not None and lines != expected:
        raise SubmissionError(
            f"{files[0]}: {lines} predictions, but the run predicted {expected} test lines: the file was cut or changed"
        )
    if task in CLUE_TEST_LINES and lines != CLUE_TEST_LINES[task]:
        raise SubmissionError(
            f"{files[0]}: {lines} predictions, but CLUE's {task} test set has {CLUE_TEST_LINES[task]:,} lines: "
            "predict CLUE's own test file (a smoke run or another corpus is no submission)"
        )
    return task, files[0], lines


def _count_predictions(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except ValueError as e:  # not JSON, or not UTF-8
                raise SubmissionError(f"{path}:{n}: not a prediction ({e})") from None
            if not (isinstance(record, dict) and {"id", "label"} <= record.keys()):
                raise SubmissionError(f"{path}:{n}: not a prediction (expected a JSON object with id and label)")
    return n


def gather(runs: list[Path], out: Path) -> dict[str, tuple[Path, int]]:
    """Writes the zip (atomically: a complete archive or none); returns {task: (run, lines)}."""
    found: dict[str, tuple[Path, Path, int]] = {}
    for run in runs:
        task, path, lines = run_predictions(run)
        if task in found:
            raise SubmissionError(f"two runs of task {task}: {found[task][0]} and {run}; give one run per task")
        found[task] = (run, path, lines)
    with atomic_write(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for task, (_, path, _) in found.items():
            zf.write(path, f"{task}{SUFFIX}")
    return {task: (run, lines) for task, (run, _, lines) in found.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m afqmc.clue_submission",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("runs", nargs="+", type=Path, help="run directories, one per task")
    ap.add_argument("--out", type=Path, default=Path("clue_submission.zip"), help="the zip to write")
    args = ap.parse_args(argv)
    try:
        tasks = gather(args.runs, args.out)
    except (SubmissionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for task, (run, lines) in tasks.items():
        print(f"{task}{SUFFIX}: {lines} predictions from {run}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
