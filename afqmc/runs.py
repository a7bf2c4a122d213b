"""Run directories read back: which directories are runs, how each ended, its dev curve.

A run directory is one holding `.hydra/overrides.yaml` (Hydra writes it before the run starts), so
a run that crashed before writing anything else is still found, and reported as failed.
Light on purpose (no torch, no matplotlib): run.py imports it to record a failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from .checkpoint import write_json

SUMMARY = "summary.json"
OVERRIDES = Path(".hydra") / "overrides.yaml"


def error_line(exc: BaseException) -> str:
    """'<ExceptionType>: <first line of the message>': one line fits a report's table cell."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def write_failed_summary(run_dir, exc: BaseException, status: str = "failed") -> None:
    """summary.json for a run that raised (or was interrupted), so that a report lists it and says why."""
    write_json(Path(run_dir) / SUMMARY, {"status": status, "error": error_line(exc)})


@dataclass
class Run:
    path: Path
    overrides: list[str]  # the command-line overrides of this run, as Hydra recorded them
    status: str  # completed | failed | interrupted
    error: str = ""  # first line of what went wrong (failed runs)
    summary: dict = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)  # metrics.jsonl's dev records, one per epoch

    def get(self, *keys):
        """A nested summary value (e.g. get("dev", "f1_macro")), None when absent."""
        value = self.summary
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value


def find_runs(root) -> list[Path]:
    """Every run directory at or below root, in a stable order (job 2 before job 10)."""
    dirs = {p.parent.parent for p in Path(root).glob(f"**/{OVERRIDES.as_posix()}")}
    return sorted(dirs, key=lambda p: [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.parts])


def load_run(path: Path) -> Run:
    overrides = [str(o) for o in OmegaConf.load(path / OVERRIDES)]
    summary, error = _read_summary(path)
    status = "completed" if not error else "interrupted" if summary.get("status") == "interrupted" else "failed"
    return Run(path, overrides, status, error, summary, _dev_curve(path))


def completed_summary(run_dir) -> dict | None:
    """The summary of a run that completed; None for one that failed, was killed or never ran."""
    summary, error = _read_summary(Path(run_dir))
    return None if error else summary


def _read_summary(path: Path) -> tuple[dict, str]:
    """(summary, error); the error is empty for a completed run."""
    file = path / SUMMARY
    if not file.is_file():
        return {}, f"no {SUMMARY}: the run was killed, or is still running"
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return {}, f"unreadable {SUMMARY}: {e}"
    if not isinstance(summary, dict):
        return {}, f"unreadable {SUMMARY}: expected a JSON object, got {type(summary).__name__}"
    if summary.get("status") == "completed":
        return summary, ""
    return summary, summary.get("error") or f"{SUMMARY} has status {summary.get('status')!r}"


def _dev_curve(path: Path) -> list[dict]:
    records = []
    if (path / "metrics.jsonl").is_file():
        for line in (path / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if record.get("type") == "eval" and record.get("split", "dev") == "dev":
                records.append(record)
    return records
