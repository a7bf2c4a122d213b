"""Experiment trackers (logger=...): what each writes, read back through the backend's own reader."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import afqmc

from .conftest import ENV, ROOT, compose_cfg, read_jsonl, run_py, summary

TRACKED = ["trainer.batch_size=2", "trainer.epochs=2", "trainer.log_every=2", "trainer.eval_every_steps=5"]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_bert_dir):
    """One tiny run with all three trackers (MLflow's store beside it)."""
    from .conftest import write_jsonl

    root = tmp_path_factory.mktemp("tracked")
    rows = [
        {"sentence1": "借呗怎么还款", "sentence2": "如何还借呗", "label": "1"},
        {"sentence1": "花呗额度", "sentence2": "余额宝收益", "label": "0"},
    ]
    for split, n in (("train", 6), ("dev", 2)):
        write_jsonl(root / "data" / f"{split}.json", rows * n)
    cfg = compose_cfg(
        [
            f"dataset.root={root / 'data'}",
            "dataset.splits.test=null",
            f"model.checkpoint={tiny_bert_dir}",
            *TRACKED,
            "logger=[tensorboard,mlflow,wandb]",
            f"logger.mlflow.tracking_uri={root / 'mlruns'}",
        ]
    )
    afqmc.train(cfg, root / "run")
    return root / "run", root / "mlruns"


def by_type(run):
    lines = read_jsonl(run / "metrics.jsonl")
    return [r for r in lines if r["type"] == "train"], [r for r in lines if r["type"] == "eval"]


def test_tensorboard_event_files(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run, _ = tracked_run
    train, dev = by_type(run)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (r["step"], pytest.approx(r["loss"])) for r in train
    ]
    assert [e.step for e in events.Scalars("train/lr")] == [r["step"] for r in train]
    for metric in ("accuracy", "f1_macro", "loss"):
        assert [(e.step, e.value) for e in events.Scalars(f"dev/{metric}")] == [
            (r["step"], pytest.approx(r[metric])) for r in dev
        ]
    assert [e.step for e in events.Scalars("dev/f1_macro")] == [5, 10, 12]  # every 5 steps and at the end
    best = summary(run)["best"]
    assert [(e.step, e.value) for e in events.Scalars("best/f1_macro")] == [
        (best["step"], pytest.approx(best["value"]))
    ]
    assert events.Scalars("summary/train/steps")[0].value == 12
    # the resolved config as hyperparameters (the HParams tab)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["trainer.eval_every_steps"].number_value == 5
    assert start.hparams["dataset.root"].string_value.endswith("data")


def test_mlflow_store(tracked_run):
    from mlflow.tracking import MlflowClient

    run, store = tracked_run
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # (what the tracker set in this process)
    client = MlflowClient(store.as_uri())
    experiment = client.get_experiment_by_name("afqmc")  # a single run's experiment
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == run.name and found.info.status == "FINISHED"
    assert found.data.params["trainer.eval_every_steps"] == "5" and found.data.params["optimizer.name"] == "adamw"
    train, dev = by_type(run)
    history = client.get_metric_history(found.info.run_id, "dev/f1_macro")
    assert sorted((m.step, m.value) for m in history) == [(r["step"], pytest.approx(r["f1_macro"])) for r in dev]
    assert sorted(m.step for m in client.get_metric_history(found.info.run_id, "train/loss")) == [
        r["step"] for r in train
    ]
    result = summary(run)
    assert found.data.metrics[f"best/{result['best']['metric']}"] == pytest.approx(result["best"]["value"])
    artifact = client.download_artifacts(found.info.run_id, "summary.json")
    assert json.loads(Path(artifact).read_text())["best"] == result["best"]


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of W&B's offline run file, as W&B's own reader prints them (wandb leet inspect --json)."""
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", str(offline), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_wandb_offline_run_files(tracked_run):
    run, _ = tracked_run
    records = wandb_records(run)
    (started,) = [r["run"] for r in records if r["type"] == "run"]
    assert started["display_name"] == run.name  # no overrides outside run.py: the directory's name
    assert started["config"]["update"]["trainer"]["eval_every_steps"] == 5
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    train, dev = by_type(run)
    assert [(h["trainer/global_step"], h["train/loss"]) for h in history if "train/loss" in h] == [
        (r["step"], pytest.approx(r["loss"])) for r in train
    ]
    assert [(h["trainer/global_step"], h["dev/f1_macro"]) for h in history if "dev/f1_macro" in h] == [
        (r["step"], pytest.approx(r["f1_macro"])) for r in dev
    ]
    last_summary = {}
    for r in records:
        if r["type"] == "summary":
            last_summary |= r["summary"].get("update", {})
    assert last_summary["best"] == summary(run)["best"]
    assert any(r["type"] == "exit" and r["exit"].get("exit_code", 0) == 0 for r in records)


def test_only_the_chosen_trackers_write(tmp_path, pairs_dir, tiny_bert_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where MLflow's default store would go: outputs/mlruns
    cfg = compose_cfg(
        [f"dataset.root={pairs_dir}", f"model.checkpoint={tiny_bert_dir}", *TRACKED, "logger=tensorboard"]
    )
    afqmc.train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "tensorboard").is_dir() and not (tmp_path / "run" / "wandb").exists()
    assert not (tmp_path / "outputs").exists()


def test_no_tracker_by_default(tmp_path, pairs_dir, tiny_bert_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where MLflow's default store would go: outputs/mlruns
    cfg = compose_cfg([f"dataset.root={pairs_dir}", f"model.checkpoint={tiny_bert_dir}", *TRACKED])
    assert not cfg.logger
    afqmc.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "tensorboard").exists() and not (tmp_path / "run" / "wandb").exists()
    assert not (tmp_path / "outputs").exists() and (tmp_path / "run" / "summary.json").is_file()


# run.py in an environment where one package is not installed: a site-packages of links to every entry of
# the real one but that package's
WITHOUT = (
    "import os, runpy, sys, sysconfig, tempfile\n"
    "real = sysconfig.get_paths()['purelib']\n"
    "fake = tempfile.mkdtemp()\n"
    "for entry in os.listdir(real):\n"
    "    if entry.split('-')[0].split('.')[0].lower().replace('_', '-') not in sys.argv[1].split(','):\n"
    "        os.symlink(os.path.join(real, entry), os.path.join(fake, entry))\n"
    "sys.path[sys.path.index(real)] = fake\n"
    "sys.argv[:3] = [sys.argv[2]]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


@pytest.mark.parametrize(
    "logger,missing,extra",
    [
        ("tensorboard", "tensorboard", "tensorboard"),
        ("mlflow", "mlflow,mlflow-skinny", "mlflow"),
        ("wandb", "wandb", "wandb"),
    ],
)
def test_missing_package_stops_before_any_model_loads(tmp_path, logger, missing, extra):
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT, missing, str(ROOT / "run.py"), "experiment=smoke", f"logger={logger}"]
        + [f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    (line,) = [line for line in out.splitlines() if "ConfigError" in line]
    package = "mlflow-skinny" if logger == "mlflow" else logger
    assert line.endswith(
        f"ConfigError: logger={extra} needs the {package} package, which is not installed: pip install -e '.[{extra}]'"
    )
    assert "Traceback" not in out and "model:" not in out  # nothing was loaded
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_a_sweeps_jobs_share_an_experiment_and_a_group(tmp_path):
    sweep = tmp_path / "sweeps" / "lr_sweep"
    proc = run_py(
        "-m",
        "experiment=smoke",
        "trainer.epochs=1",
        "dataset.max_train_samples=64",
        "trainer.predict=false",
        "logger=[mlflow,wandb]",
        "optimizer.lr=1e-3,2e-3",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((tmp_path / "outputs" / "mlruns").as_uri())  # the default store, where run.py ran
    experiment = client.get_experiment_by_name("lr_sweep")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["0", "1"]
    assert sorted(r.data.params["optimizer.lr"] for r in runs) == ["0.001", "0.002"]
    for job, lr in (("0", "0.001"), ("1", "0.002")):
        overrides = [str(o) for o in OmegaConf.load(sweep / job / ".hydra" / "overrides.yaml")]
        assert overrides[-1] == f"optimizer.lr={lr}"
        (started,) = [r["run"] for r in wandb_records(sweep / job) if r["type"] == "run"]
        assert started["run_group"] == "lr_sweep" and started["display_name"] == " ".join(overrides)


def test_a_resumed_run_goes_on_in_the_same_tracker_runs(tmp_path):
    """Stopped after step 8 with checkpoints/last at step 5: the resumed run logs steps 6.. again, into the same
    MLflow and W&B runs, and TensorBoard shows each step once."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from afqmc.errors import Interrupted
    from afqmc.runs.trackers import start_trackers
    from afqmc.training.checkpoint import TrainState

    cfg = compose_cfg(["logger=[tensorboard,mlflow,wandb]", f"logger.mlflow.tracking_uri={tmp_path / 'mlruns'}"])
    out = tmp_path / "run"
    out.mkdir()

    def train(trackers, steps, loss):
        for step in steps:
            trackers.log({"type": "train", "epoch": 1, "step": step, "loss": loss, "lr": 1e-3})

    with pytest.raises(Interrupted), start_trackers(cfg, out, TrainState()) as first:
        train(first, range(1, 6), 1.0)
        ids = first.ids()  # (saved in checkpoints/last at step 5)
        train(first, range(6, 9), 1.0)
        raise Interrupted("Ctrl-C")
    assert set(ids) == {"mlflow", "wandb"}
    with start_trackers(cfg, out, TrainState(step=5, trackers=ids)) as second:
        train(second, range(6, 11), 0.5)
        second.on_end(
            None, {"best": {"epoch": 1, "step": 10, "metric": "f1_macro", "value": 0.5}, "train": {"steps": 10}}
        )

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(s, 1.0) for s in range(1, 6)] + [
        (s, 0.5) for s in range(6, 11)
    ]
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("afqmc").experiment_id])
    assert run.info.run_id == ids["mlflow"] and run.info.status == "FINISHED"
    assert {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")} == set(range(1, 11))
    offline = sorted((out / "wandb").glob("offline-run-*"))
    # two attempts, one W&B run id: wandb sync uploads them as one run (a second in one second gets a "-1")
    assert len(offline) == 2 and all(f"-{ids['wandb']}" in p.name for p in offline)
