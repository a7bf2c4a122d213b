"""Experiment trackers, the `logger` config group (conf/logger/): TensorBoard, MLflow, Weights & Biases.

metrics.jsonl stays the run's record; each tracker chosen (`logger=[tensorboard,mlflow]`) gets a copy: the train
loss and learning rate and every dev metric at the global optimizer step, the resolved config as hyperparameters
when the run starts, the best evaluation and summary.json when it ends. Only rank 0 starts trackers.

Each backend is a pip extra (`pip install -e ".[tensorboard]"`); the config check (afqmc/config/schema.py) stops a run
whose tracker's package is missing before any model loads. The backends are imported inside the functions: the
config check imports this module for the keys registered here, and must not wait for torch or mlflow.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import OmegaConf

from afqmc.config.registry import LOGGERS
from afqmc.config.schema import Key
from afqmc.errors import ConfigError, Interrupted
from afqmc.training.callbacks import Callback

log = logging.getLogger(__name__)

NOT_METRICS = {"type", "split", "epoch", "step", "time"}  # the fields of a metrics.jsonl record that say where it is


@dataclass
class TrackedRun:
    """What a tracker is told about the run it watches."""

    out: Path  # the run directory
    config: dict  # the resolved config, nested
    flat: dict  # the same, as {dotted key: value}
    metric: str  # trainer.metric, which picks the best evaluation
    step: int  # the optimizer step the run starts from: 0, or its checkpoint's when resumed
    overrides: list[str]  # the command-line overrides (.hydra/overrides.yaml; none outside run.py)


def installed(module: str, extra: str, package: str):
    """A config check: the tracker's package can be imported, or one line that names the extra to install."""

    def check(cfg) -> None:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"logger={extra} needs the {package} package, which is not installed: pip install -e '.[{extra}]'"
            )

    return check


def _numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested dict as {"a/b": value}, for trackers that take numbers only."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _numbers(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


# ---------------------------------------------------------------- the backends
@LOGGERS.register(
    "tensorboard",
    schema={"flush_secs": Key(int, min=1)},
    check=installed("tensorboard", "tensorboard", "tensorboard"),
)
class TensorBoard:
    """Event files in RUN/tensorboard/: `tensorboard --logdir outputs/` shows every run below it."""

    def __init__(self, cfg, run: TrackedRun, run_id: str | None):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.id = None  # the directory is the run
        # A resumed run logs again the steps past its checkpoint: TensorBoard hides what the stopped attempt
        # had logged from purge_step on, so each step shows once.
        self.writer = SummaryWriter(run.out / "tensorboard", flush_secs=cfg.flush_secs, purge_step=run.step + 1)
        self.best_tag = f"best/{run.metric}"
        if run.step == 0:
            # the HParams tab: the config's values, and the best dev metric as the run's result
            values = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in run.flat.items()}
            for summary in hparams(values, {self.best_tag: 0.0}):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", _code(OmegaConf.to_yaml(run.config)))

    def log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def end(self, summary: dict | None, status: str) -> None:
        if summary is not None:
            best, step = summary["best"], summary["train"]["steps"]
            if best["value"] is not None:  # (None: no dev split, the best is the last)
                self.writer.add_scalar(self.best_tag, best["value"], best["step"])
            for tag, value in _numbers(summary, "summary/").items():
                self.writer.add_scalar(tag, value, step)
            self.writer.add_text("summary", _code(json.dumps(summary, indent=2, ensure_ascii=False)), step)
        self.writer.close()


def _code(text: str) -> str:
    """A markdown code block (TensorBoard renders text summaries as markdown)."""
    return "    " + text.replace("\n", "\n    ")


@LOGGERS.register(
    "mlflow",
    schema={"tracking_uri": Key(str), "experiment": Key(str), "run_name": Key(str, null=True)},
    check=installed("mlflow", "mlflow", "mlflow-skinny"),
)
class MLflow:
    """A run in an MLflow tracking store: a local directory (a file store) unless given a server's URI."""

    STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

    def __init__(self, cfg, run: TrackedRun, run_id: str | None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = cfg.tracking_uri
        # MLflow's client retries a request for minutes (260 s on a refused connection) and waits 120 s for an
        # answer: a tracker that stalls the run that long is lost anyway. The user's settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        if urlparse(uri).scheme in ("http", "https"):
            _reachable(uri)
        if urlparse(uri).scheme in ("", "file"):
            # MLflow 3 refuses its file store unless allowed (it would have a database server); a directory
            # needs no server and suits runs on one machine or a shared disk.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = uri if urlparse(uri).scheme else Path(uri).resolve().as_uri()
        self.client = MlflowClient(uri)
        if run_id:  # resumed: the same MLflow run goes on
            self.id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        experiment = self._experiment(cfg.experiment)
        name = cfg.run_name or run.out.name
        self.id = self.client.create_run(experiment, run_name=name, tags={"afqmc.run_dir": str(run.out)}).info.run_id
        params = [Param(key, str(value)[:6000]) for key, value in run.flat.items()]  # MLflow's size limits
        for i in range(0, len(params), 100):
            self.client.log_batch(self.id, params=params[i : i + 100])
        log.info("mlflow: run %s (%s) in experiment %r at %s", name, self.id, cfg.experiment, uri)

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another job of the sweep, running in parallel, created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(key, value, now, step) for key, value in values.items()])

    def flush(self) -> None:
        pass  # each call above is written when it returns

    def end(self, summary: dict | None, status: str) -> None:
        if summary is not None:
            best = summary["best"]
            if best["value"] is not None:  # (None: no dev split, the best is the last)
                self.log({f"best/{best['metric']}": best["value"]}, best["step"])
            self.log(_numbers(summary, "summary/"), summary["train"]["steps"])
            self.client.log_dict(self.id, summary, "summary.json")
        self.client.set_terminated(self.id, self.STATUS[status])


def _reachable(uri: str, timeout: float = 5.0) -> None:
    """A tracking server's connection, checked in seconds at start rather than in minutes of retries."""
    url = urlparse(uri)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"{uri}: cannot connect ({e.strerror or e})") from None


@LOGGERS.register(
    "wandb",
    schema={
        "project": Key(str),
        "entity": Key(str, null=True),
        "mode": Key(str, choices=("offline", "online", "disabled")),
        "group": Key(str, null=True),
        "name": Key(str, null=True),
    },
    check=installed("wandb", "wandb", "wandb"),
)
class WandB:
    """A Weights & Biases run; offline (the default) it is files in RUN/wandb/ that `wandb sync` uploads later."""

    STEP = "trainer/global_step"  # the x axis of every metric: the optimizer step, not W&B's count of log calls

    def __init__(self, cfg, run: TrackedRun, run_id: str | None):
        import wandb

        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            mode=cfg.mode,
            group=cfg.group,
            name=cfg.name or " ".join(run.overrides) or run.out.name,
            dir=run.out,
            config=run.config,
            id=run_id,
            resume="allow" if run_id else None,
            reinit="create_new",  # a sweep's jobs may run one after another in one process
            # the run log is Hydra's; W&B's copies of the console, system stats and git state would be noise
            settings=wandb.Settings(console="off", silent=True, disable_git=True, x_disable_stats=True),
        )
        self.id = self.run.id
        self.run.define_metric("*", step_metric=self.STEP)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, self.STEP: step})

    def flush(self) -> None:
        pass  # W&B's service process writes the run file as records come, and outlives a killed run

    def end(self, summary: dict | None, status: str) -> None:
        if summary is not None:
            self.run.summary.update({"best": summary["best"], "summary": summary})
        self.run.finish(exit_code={"completed": 0, "failed": 1, "interrupted": 130}[status])


# ---------------------------------------------------------------- what the trainer uses
class Trackers(Callback):
    """The chosen trackers as one callback: each metrics.jsonl record goes to all of them, and their runs end
    as the run does (completed, failed or interrupted). A tracker that fails (its store deleted, its directory
    broken, its server gone) is reported once and switched off: the run and its files go on, and metrics.jsonl
    keeps every record. Used as a context manager while they start: a Ctrl-C ends those started as interrupted."""

    def __init__(self, trackers: dict):
        self.trackers = trackers  # {option name: tracker}
        self.done = False

    def _each(self, doing: str, call) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001  (any failure of a tracker's package: the run must not die of it)
                if isinstance(e, Interrupted):
                    raise
                del self.trackers[name]
                switched_off(name, doing, e)

    def ids(self) -> dict:
        """Each tracker's run id, saved in checkpoints/last: a resumed run goes on in the same runs."""
        return {name: t.id for name, t in self.trackers.items() if t.id is not None}

    def log(self, record: dict) -> None:
        """A metrics.jsonl record: `train/loss`, `train/lr`, `dev/<metric>`, at the record's optimizer step."""
        if not self.trackers:
            return
        prefix = "train" if record["type"] == "train" else record.get("split", "dev")
        values = {f"{prefix}/{k}": float(v) for k, v in record.items() if k not in NOT_METRICS}
        self._each(f"logging step {record['step']}", lambda tracker: tracker.log(values, record["step"]))

    def on_train_step(self, trainer, record: dict) -> None:
        self.log(record)

    def on_evaluate(self, trainer, record: dict, gain: float) -> None:
        self.log(record)

    def on_save(self, trainer, which: str, path: Path) -> None:
        """At each save of checkpoints/last: what a resumed run will not log again is on disk."""
        if which == "last":
            self._each("writing its files", lambda tracker: tracker.flush())

    def on_end(self, trainer, summary: dict) -> None:
        self.done = True
        self._each("ending its run", lambda tracker: tracker.end(summary, "completed"))

    def on_stop(self, trainer, status: str) -> None:
        if self.done:
            return
        self.done = True
        self._each(f"ending its run as {status}", lambda tracker: tracker.end(None, status))

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            self.on_stop(None, "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed")


def start_trackers(cfg, out: Path, state) -> Trackers:
    """The trackers that cfg.logger chooses, started (or, for a resumed run, continued: state.trackers)."""
    node = cfg.get("logger")
    chosen = OmegaConf.to_container(node, resolve=True) if node else {}
    if not chosen:
        return Trackers({})
    from afqmc.config.identity import config_snapshot
    from afqmc.runs.records import OVERRIDES

    overrides = [str(o) for o in OmegaConf.load(out / OVERRIDES)] if (out / OVERRIDES).is_file() else []
    run = TrackedRun(
        out=out.resolve(),
        config=OmegaConf.to_container(cfg, resolve=True),
        flat=config_snapshot(cfg),
        metric=cfg.trainer.metric,
        step=state.step,
        overrides=overrides,
    )
    trackers = Trackers({})
    with trackers:  # a Ctrl-C while they start: those started end as interrupted
        for name, options in chosen.items():
            resumed = state.trackers.get(name)
            try:
                trackers.trackers[name] = LOGGERS.get(name)(OmegaConf.create(options), run, resumed)
            except Exception as e:  # noqa: BLE001  (as any tracker failure: reported, and the run goes on)
                if isinstance(e, Interrupted):
                    raise
                switched_off(name, f"going on with its run {resumed}" if resumed else "starting", e)
    return trackers


def log_evaluation(cfg, run_dir: Path, which: str, split: str, metrics: dict) -> None:
    """afqmc.evaluate's metrics to the run's trackers, in the tracker runs it logged to (summary.json's
    `trackers`), as `eval/<checkpoint>/<split>/<metric>` at the run's last step. A tracker that fails is
    reported and switched off, as in training: the eval/*.json file is the record."""
    from types import SimpleNamespace

    from afqmc.runs.records import read_summary

    summary, _ = read_summary(run_dir)
    step = (summary.get("train") or {}).get("steps") or 0
    state = SimpleNamespace(step=step, trackers=summary.get("trackers") or {})
    trackers = start_trackers(cfg, run_dir, state)
    trackers.log({"type": "eval", "split": f"eval/{which}/{split}", "step": step, **metrics})
    trackers._each("ending its run", lambda tracker: tracker.end(None, "completed"))


def switched_off(name: str, doing: str, e: Exception) -> None:
    """One warning for a tracker that failed: what it was doing, why, and that the run goes on without it."""
    from afqmc.errors import error_line

    log.warning(
        "logger %s failed while %s (%s): switched off; the run goes on, and metrics.jsonl has every record",
        name,
        doing,
        error_line(e),
    )
