"""python -m afqmc.report DIR: compare every run below DIR (a sweep directory, or outputs/runs).

Writes into DIR:
  report.csv  one row per run: overrides, status, best epoch and step, dev metrics, training speed,
              the step early stopping ended it at, error
  report.md   the same table, mean ± std over seeds for runs that differ only by trainer.seed,
              and, after an Optuna search, its best parameters and value at the top
  curves.png  the dev metric per epoch of every run (from metrics.jsonl); per optimizer step when a run
              was evaluated several times an epoch (trainer.eval_every_steps)
The Hydra callback in afqmc/runs/sweep_report.py calls write_report() on the sweep directory when a multirun ends.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import Counter
from pathlib import Path

from omegaconf import OmegaConf

from afqmc.config.identity import is_free
from afqmc.errors import error_line
from afqmc.files import atomic_write, write_text
from afqmc.runs.records import Run, find_runs, load_run

SEED_KEY = "trainer.seed"
METRICS = ("accuracy", "f1_macro", "f1_pos")  # dev metrics in the tables
COLUMNS = [
    "run",
    "status",
    "overrides",
    "best_epoch",
    "best_step",
    *(f"dev_{m}" for m in METRICS),
    "train_seconds",
    "samples_per_second",
    "stopped_early_step",
    "error",
]


def key_of(override: str) -> str:
    """The key an override's text sets: '+trainer.seed=3' -> 'trainer.seed'."""
    return override.split("=", 1)[0].lstrip("~+")


def short(override: str) -> str:
    """Optuna writes floats in full (optimizer.lr=3.3796587237e-05); 3 significant digits read better."""
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return override if len(value) <= 7 or number.is_integer() else f"{key}={number:.3g}"


def run_name(run: Run, root: Path) -> str:
    return run.path.relative_to(root).as_posix() if run.path != root else "."


def csv_row(run: Run, root: Path) -> dict:
    return {
        "run": run_name(run, root),
        "status": run.status,
        "overrides": " ".join(run.overrides),
        "best_epoch": run.get("best", "epoch"),
        "best_step": run.get("best", "step"),
        **{f"dev_{m}": run.get("dev", m) for m in METRICS},
        "train_seconds": run.get("train", "seconds"),
        "samples_per_second": run.get("train", "samples_per_second"),
        "stopped_early_step": run.get("stopped_early", "step"),
        "error": run.error,
    }


def varying(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """(overrides every run shares, each run's other overrides): the latter tell runs apart."""
    common = set.intersection(*(set(r.overrides) for r in runs))
    return [o for o in runs[0].overrides if o in common], [[o for o in r.overrides if o not in common] for r in runs]


def labels(runs: list[Run], root: Path) -> list[str]:
    """The differing overrides; prefixed by the run directory where they alone do not tell runs apart."""
    _, diffs = varying(runs)
    texts = [" ".join(short(o) for o in diff) for diff in diffs]
    ambiguous = {t for t, n in Counter(texts).items() if n > 1} | {""}
    return [f"{run_name(r, root)} {t}".strip() if t in ambiguous else t for r, t in zip(runs, texts)]


def seed_groups(runs: list[Run]) -> list[tuple[list[str], list[Run]]]:
    """Runs whose overrides are the same (in any order) but for trainer.seed and the keys that change nothing
    of what is trained (trainer.resume, the trackers: afqmc/config/identity.py), in groups of two or more."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        identity = (o for o in run.overrides if key_of(o) != SEED_KEY and not is_free(key_of(o)))
        groups.setdefault(tuple(sorted(identity)), []).append(run)
    return [(list(key), members) for key, members in groups.items() if len(members) > 1]


def mean_std(values: list[float]) -> str:
    """Sample standard deviation (n - 1): the seeds are a sample of all the seeds one could run."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def optuna_results(root: Path) -> dict | str | None:
    """The Optuna sweeper's optimization_results.yaml (best_params and best_value), when there is one; a line
    saying why when it cannot be read (the report lists it and goes on)."""
    path = root / "optimization_results.yaml"
    if not path.is_file():
        return None
    try:
        results = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # noqa: BLE001  (YAML, OmegaConf, UnicodeDecodeError, OSError: all one line here)
        return f"{path.name}: unreadable ({error_line(e)})"
    results = results if isinstance(results, dict) else {}
    value, params = results.get("best_value"), results.get("best_params")
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(params, dict)):
        return f"{path.name}: unreadable (expected best_value, a number, and best_params, a map)"
    return results


def curve_metric(runs: list[Run]) -> str:
    """The metric the runs picked their best checkpoint by (trainer.metric), f1_macro when unknown."""
    picked = Counter(r.get("best", "metric") for r in runs if r.get("best", "metric"))
    return picked.most_common(1)[0][0] if picked else "f1_macro"


def by_step(runs: list[Run]) -> bool:
    """Whether some run was evaluated several times an epoch (trainer.eval_every_steps): then its curve and
    best evaluation are told by the optimizer step, the epoch alone would not place them."""
    return any(len({r.get("step") for r in run.curve}) > len({r["epoch"] for r in run.curve}) for run in runs)


def plot_curves(runs: list[Run], names: list[str], metric: str, path: Path) -> bool:
    """curves.png: one line per run with dev records; False (and no file) when no run has any."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display needed, and no pyplot state
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    x = "step" if by_step(runs) else "epoch"
    # {x: value}: where an x was evaluated twice (a resumed run), its later record wins
    curves = [(name, {r[x]: r[metric] for r in run.curve if metric in r}) for run, name in zip(runs, names)]
    curves = [(name, points) for name, points in curves if points]
    if not curves:
        return False
    # the legend goes below the axes, one line per run: labels are long, and a side legend squeezes the plot
    fig = Figure(figsize=(9, 4.5 + 0.22 * len(curves)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, points in curves:
        xs = sorted(points)
        ax.plot(xs, [points[e] for e in xs], marker="o", label=name)
    xlabel = "optimizer step" if x == "step" else "epoch"
    ax.set(xlabel=xlabel, ylabel=f"dev {metric}", title=f"dev {metric} per {'evaluation' if x == 'step' else 'epoch'}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", fontsize="small")
    with atomic_write(path) as tmp:  # (the temp file's name does not end in .png)
        fig.savefig(tmp, dpi=100, format="png")
    return True


def num(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def cell(text) -> str:
    return "" if text is None else str(text).replace("|", "\\|")  # a pipe would split the markdown cell


def markdown(root: Path, runs: list[Run], rows: list[dict], metric: str, has_curves: bool) -> str:
    common, diffs = varying(runs)
    out = [
        f"# Report: {root.resolve()}",
        "",
        *optuna_section(root),
        *runs_section(root, runs, rows, diffs, common, metric),
        *seeds_section(runs, common),
        "## Dev curves",
        "",
    ]
    out.append("![dev curves](curves.png)" if has_curves else f"No run has dev {metric} records in metrics.jsonl.")
    return "\n".join(out) + "\n"


def optuna_section(root: Path) -> list[str]:
    optuna = optuna_results(root)
    if not optuna:
        return []
    if isinstance(optuna, str):
        return ["## Optuna search", "", optuna, ""]
    params = " ".join(f"`{k}={v}`" for k, v in optuna["best_params"].items())
    return ["## Optuna search", "", f"- best value: **{optuna['best_value']:.4f}**", f"- best params: {params}", ""]


def runs_section(
    root: Path, runs: list[Run], rows: list[dict], diffs: list[list[str]], common: list[str], metric: str
) -> list[str]:
    counts = ", ".join(
        f"{sum(r.status == s for r in runs)} {s}"
        for s in ("completed", "failed", "interrupted", "unreadable")
        if s in ("completed", "failed") or any(r.status == s for r in runs)
    )
    out = ["## Runs", "", f"{len(runs)} runs, {counts}."]
    done = [r for r in runs if r.status == "completed" and r.get("dev", metric) is not None]
    if done:
        best = (min if metric == "loss" else max)(done, key=lambda r: r.get("dev", metric))
        out.append(f"Best dev {metric}: **{best.get('dev', metric):.4f}**, run `{run_name(best, root)}`.")
    stopped = sum(r["stopped_early_step"] is not None for r in rows)
    if stopped:
        out.append(f"{stopped} of {len(runs)} runs stopped early (trainer.early_stopping).")
    if common:
        out.append(f"Every run: `{' '.join(common)}`.")
    steps = by_step(runs)
    header = ["run", "status", "overrides", "best epoch", *(["best step"] if steps else []), *METRICS]
    header += ["train s", "samples/s", *(["stopped early"] if stopped else []), "error"]
    out += ["", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row, diff in zip(rows, diffs):
        stop = "" if row["stopped_early_step"] is None else f"step {row['stopped_early_step']}"
        cells = [
            row["run"],
            row["status"],
            " ".join(short(o) for o in diff),
            row["best_epoch"],
            *([row["best_step"]] if steps else []),
            *(num(row[f"dev_{m}"]) for m in METRICS),
            num(row["train_seconds"], 1),
            num(row["samples_per_second"], 1),
            *([stop] if stopped else []),
            row["error"],
        ]
        out.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return out + [""]


def seeds_section(runs: list[Run], common: list[str]) -> list[str]:
    groups = seed_groups(runs)
    if not groups:
        return []
    out = [
        f"## Mean ± std over seeds ({SEED_KEY})",
        "",
        "| runs differing only by the seed | seeds | completed | " + " | ".join(METRICS) + " |",
        "|" + " --- |" * (3 + len(METRICS)),
    ]
    for key, members in groups:
        ok = [r for r in members if r.status == "completed"]
        seeds = [o.split("=", 1)[1] for r in members for o in r.overrides if key_of(o) == SEED_KEY] or ["default"]
        name = " ".join(short(o) for o in key if o not in common) or "(all runs)"
        stats = [mean_std([r.get("dev", m) for r in ok if r.get("dev", m) is not None]) for m in METRICS]
        out.append(f"| {cell(name)} | {', '.join(seeds)} | {len(ok)}/{len(members)} | " + " | ".join(stats) + " |")
    return out + [""]


def write_report(root, metric: str | None = None) -> Path:
    """Writes report.csv, report.md and curves.png into root; returns the path of report.md."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory (pass a sweep directory or a directory of runs)")
    runs = [load_run(p) for p in find_runs(root)]
    if not runs:
        raise FileNotFoundError(f"{root}: no run directories below it (a run directory holds .hydra/overrides.yaml)")
    rows = [csv_row(r, root) for r in runs]
    with atomic_write(root / "report.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    metric = metric or curve_metric(runs)
    has_curves = plot_curves(runs, labels(runs, root), metric, root / "curves.png")
    if not has_curves:
        (root / "curves.png").unlink(missing_ok=True)  # an older report's curves would describe other runs
    path = root / "report.md"
    write_text(path, markdown(root, runs, rows, metric, has_curves))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m afqmc.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="a sweep directory, or any directory with run directories below it")
    parser.add_argument(
        "--metric", help="dev metric for curves.png and the best run (default: the runs' trainer.metric)"
    )
    args = parser.parse_args(argv)
    try:
        path = write_report(args.dir, args.metric)
    except OSError as e:  # no runs there; a full disk, a read-only directory (atomic_write names the file)
        sys.exit(f"afqmc.report: {e}")
    print(
        f"wrote {path}, {path.with_suffix('.csv')}"
        + (f", {path.parent / 'curves.png'}" if (path.parent / "curves.png").exists() else "")
    )


if __name__ == "__main__":
    main()
