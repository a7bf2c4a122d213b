"""Sweep reports (afqmc/report.py and its Hydra callback), failed runs, the Optuna search, run directories apart."""

import csv
import json
import logging
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from afqmc.report import labels, write_report
from afqmc.runs.records import find_runs, load_run
from afqmc.runs.sweep_report import SweepReport

from .conftest import CONF, ROOT, run_py

SMALL = ["experiment=smoke", "trainer.epochs=1", "dataset.max_train_samples=64", "trainer.predict=false"]  # 4 steps
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# run.py with a bug planted in Trainer.fit: every bad input is a clear AfqmcError now (afqmc/config/schema.py),
# so an exception of another kind takes a bug
CRASHING = (
    "import runpy, sys, afqmc.training.trainer\n"
    "def fit(self): raise ValueError('Trainer.fit crashed (a bug planted by the test)')\n"
    "afqmc.training.trainer.Trainer.fit = fit\n"
    "sys.argv[:2] = [sys.argv[1]]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def start(*args, cwd=ROOT, crash=False):
    """python run.py ARGS, started and not waited for; crash: with the planted bug."""
    python = [sys.executable, "-c", CRASHING] if crash else [sys.executable]
    return subprocess.Popen(
        [*python, str(ROOT / "run.py"), *args], cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_fake_run(path, overrides, summary=None):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        (path / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two learning rates x two seeds, one multirun: the report is the callback's, nobody else writes it."""
    path = tmp_path_factory.mktemp("sweep")
    proc = run_py("-m", *SMALL, "optimizer.lr=1e-3,2e-3", "trainer.seed=1,2", f"hydra.sweep.dir={path}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return path


@pytest.mark.slow
def test_a_report_that_fails_while_writing_leaves_the_previous_one_whole(sweep, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    root = shutil.copytree(sweep, tmp_path / "sweep")
    before = {name: (root / name).read_bytes() for name in ("report.csv", "report.md", "curves.png")}

    def disk_full(self, fname, **kwargs):  # half a file written, then the error
        Path(fname).write_bytes(before["curves.png"][:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_report(root)
    assert {name: (root / name).read_bytes() for name in before} == before
    assert not list(root.glob(".*.tmp"))


@pytest.mark.slow
def test_report_csv_has_one_row_per_run(sweep):
    rows = read_csv(sweep / "report.csv")
    assert [r["run"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["status"] for r in rows} == {"completed"} and not any(r["error"] for r in rows)
    assert [r["overrides"].split()[-2:] for r in rows] == [
        ["optimizer.lr=0.001", "trainer.seed=1"],
        ["optimizer.lr=0.001", "trainer.seed=2"],
        ["optimizer.lr=0.002", "trainer.seed=1"],
        ["optimizer.lr=0.002", "trainer.seed=2"],
    ]
    for row, job in zip(rows, sorted(sweep.glob("[0-9]"))):
        summary = json.loads((job / "summary.json").read_text())
        assert float(row["dev_f1_macro"]) == summary["dev"]["f1_macro"]
        assert float(row["dev_accuracy"]) == summary["dev"]["accuracy"]
        assert float(row["samples_per_second"]) > 0 and int(row["best_epoch"]) == 1


@pytest.mark.slow
def test_report_md_has_mean_and_std_over_seeds(sweep):
    md = (sweep / "report.md").read_text()
    assert "4 runs, 4 completed, 0 failed." in md
    rows = read_csv(sweep / "report.csv")
    group_rows = [line for line in md.splitlines() if re.match(r"\| optimizer\.lr=0\.00[12] \| 1, 2 \| 2/2 \|", line)]
    assert len(group_rows) == 2, md
    for line, lr in zip(group_rows, ["0.001", "0.002"]):
        values = [float(r["dev_f1_macro"]) for r in rows if f"optimizer.lr={lr}" in r["overrides"]]
        assert f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" in line


@pytest.mark.slow
def test_curves_png_is_an_image_with_readable_labels(sweep):
    import matplotlib.image

    data = (sweep / "curves.png").read_bytes()
    assert data[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(sweep / "curves.png").shape
    assert height > 0 and width > 0
    runs = [load_run(p) for p in find_runs(sweep)]
    assert labels(runs, sweep) == [
        "optimizer.lr=0.001 trainer.seed=1",
        "optimizer.lr=0.001 trainer.seed=2",
        "optimizer.lr=0.002 trainer.seed=1",
        "optimizer.lr=0.002 trainer.seed=2",
    ]


def test_run_order_and_unreadable_summaries(tmp_path):
    for job in ("10", "2", "1"):
        best = {"epoch": 1, "metric": "f1_macro", "value": 0.5}
        write_fake_run(
            tmp_path / job, [f"trainer.seed={job}"], {"status": "completed", "best": best, "dev": {"f1_macro": 0.5}}
        )
    write_fake_run(tmp_path / "cut" / "short", ["trainer.seed=3"], '{"status": "compl')
    write_fake_run(tmp_path / "other", ["trainer.seed=4"], {"status": "interrupted"})
    assert [p.relative_to(tmp_path).as_posix() for p in find_runs(tmp_path)] == ["1", "2", "10", "cut/short", "other"]
    write_report(tmp_path)
    rows = read_csv(tmp_path / "report.csv")
    assert [r["error"].split(":")[0] for r in rows] == [
        "",
        "",
        "",
        "unreadable summary.json",
        "summary.json has status 'interrupted'",
    ]
    assert not (tmp_path / "curves.png").exists()  # no metrics.jsonl anywhere: no curves, no empty plot
    md = (tmp_path / "report.md").read_text()
    # the runs differ only by their seeds: one group, statistics over the three completed ones
    assert "| (all runs) | 1, 2, 10, 3, 4 | 3/5 | – | 0.5000 ± 0.0000 | – |" in md, md


def test_report_of_an_empty_directory_says_what_it_looks_for(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "afqmc.report", str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 1
    assert f"{tmp_path}: no run directories below it (a run directory holds .hydra/overrides.yaml)" in proc.stderr


def test_callback_failure_is_a_warning(tmp_path, caplog):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "missing")}}})
    with caplog.at_level(logging.WARNING, logger="afqmc.runs.sweep_report"):
        SweepReport().on_multirun_end(config)  # must not raise
    assert "could not write the sweep report" in caplog.text and "not a directory" in caplog.text


def test_search_space_is_version_controlled():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hparams_search=afqmc_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.direction == "maximize" and sweeper.sampler.seed is not None
    assert set(sweeper.params) == {
        "optimizer.lr",
        "trainer.batch_size",
        "scheduler.warmup_ratio",
        "optimizer.weight_decay",
        "trainer.epochs",
    }


@pytest.mark.slow
def test_optuna_search_with_joblib_ends_with_its_best_in_the_report(tmp_path):
    # two trials at once in two joblib worker processes; trainer.epochs on the command line is fixed, not searched
    proc = run_py(
        "hparams_search=afqmc_optuna",
        *SMALL,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert set(results.best_params) == {
        "optimizer.lr",
        "trainer.batch_size",
        "scheduler.warmup_ratio",
        "optimizer.weight_decay",
    }
    values = [json.loads((tmp_path / job / "summary.json").read_text())["best"]["value"] for job in ("0", "1")]
    assert results.best_value == max(values)
    md = (tmp_path / "report.md").read_text()
    assert md.index("## Optuna search") < md.index("## Runs")
    assert f"best value: **{results.best_value:.4f}**" in md
    for key, value in results.best_params.items():
        assert f"`{key}={value}`" in md
    assert len(read_csv(tmp_path / "report.csv")) == 2


@pytest.fixture(scope="module")
def together(tmp_path_factory):
    """Three runs started at the same moment with the configured hydra.run.dir (outputs/runs/<time>_<run id>,
    relative to where one runs): one completes, one raises an AfqmcError, one raises another exception."""
    cwd = tmp_path_factory.mktemp("together")
    args = {"completes": [], "data_error": ["dataset.root=no-such-dir"], "value_error": ["trainer.seed=7"]}
    procs = {name: start(*SMALL, *extra, cwd=cwd, crash=name == "value_error") for name, extra in args.items()}
    return cwd / "outputs" / "runs", {name: finish(p) for name, p in procs.items()}


@pytest.mark.slow
def test_runs_started_together_get_their_own_directories(together):
    runs, _ = together
    dirs = sorted(runs.iterdir())
    assert len(dirs) == 3, dirs
    ids = [d.name.rsplit("_", 1)[1] for d in dirs]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[0-9a-f]{6}", i) for i in ids), ids
    by_overrides = {tuple(OmegaConf.load(d / ".hydra" / "overrides.yaml"))[len(SMALL) :]: d for d in dirs}
    # each directory holds its own run's summary: no run wrote into another's directory
    status = {o: json.loads((d / "summary.json").read_text())["status"] for o, d in by_overrides.items()}
    assert status == {(): "completed", ("dataset.root=no-such-dir",): "failed", ("trainer.seed=7",): "failed"}
    assert not any((d / "report.md").exists() for d in dirs)  # the report callback acts on multiruns only


@pytest.mark.slow
def test_failed_runs_are_reported_with_their_error(together, tmp_path):
    runs, results = together
    runs = Path(shutil.copytree(runs, tmp_path / "runs"))  # the fake run below stays out of the other tests
    (rc_ok, out_ok), (rc_data, out_data), (rc_value, out_value) = results.values()
    assert rc_ok == 0, out_ok[-3000:]
    assert rc_data == 1 and "Traceback" not in out_data, out_data[-3000:]  # an AfqmcError: its message only
    assert rc_value != 0 and "ValueError" in out_value, out_value[-3000:]  # any other exception: re-raised
    write_fake_run(runs / "killed", ["experiment=smoke"])  # crashed before writing summary.json

    proc = subprocess.run([sys.executable, "-m", "afqmc.report", str(runs)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(runs / "report.csv")
    errors = {r["overrides"].split()[-1]: (r["status"], r["error"]) for r in rows}
    assert errors["dataset.root=no-such-dir"] == (
        "failed",
        "DataError: no-such-dir/train.json: split file 'train' not found "
        "(dataset.root=no-such-dir, dataset.splits.train)",
    )
    assert errors["trainer.seed=7"] == ("failed", "ValueError: Trainer.fit crashed (a bug planted by the test)")
    assert errors["experiment=smoke"][0] == "failed" and errors["experiment=smoke"][1].startswith("no summary.json")
    assert errors[SMALL[-1]] == ("completed", "")
    md = (runs / "report.md").read_text()
    assert "4 runs, 1 completed, 3 failed." in md
    line = next(line for line in md.splitlines() if "dataset.root=no-such-dir" in line)
    assert "| failed |" in line and line.endswith(f"| {errors['dataset.root=no-such-dir'][1]} |"), line
