"""The training recipe: setup() builds everything from the config, fit() trains, evaluates and predicts.

Everything a run produces lands in its output directory:
metrics.jsonl, summary.json, checkpoints/best/, checkpoints/last/ (to resume from),
predictions/<task>_predict.json (run.log is Hydra's). The components come from the registries
(afqmc/config/registry.py) and the files are written by afqmc/training/checkpoint.py: nothing here knows which
model or dataset it trains.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import set_seed

from afqmc import files
from afqmc.config.identity import config_changes, config_snapshot
from afqmc.config.registry import COLLATORS, DATASETS, MODELS, OPTIMIZERS, SCHEDULERS
from afqmc.data.sampling import TrainBatchSampler, sorted_batches, split_by_length
from afqmc.errors import ConfigError, DataError, Interrupted, TrainingError
from afqmc.models.components import load_tokenizer
from afqmc.runs.card import RunInfo, run_overrides
from afqmc.runs.records import NO_DEV, completed_summary, outcome, resume_command
from afqmc.runs.trackers import Trackers, start_trackers
from afqmc.training import checkpoint
from afqmc.training import distributed as dist
from afqmc.training.checkpoint import BEST, LAST, STATE, MetricsLog, TrainState
from afqmc.training.metrics import scores
from afqmc.training.progress import progress

log = logging.getLogger(__name__)


# Signals that stop a run with checkpoints/last saved: Ctrl-C; SIGTERM, how Slurm (and most process managers)
# end a job: preemption, scancel, scontrol requeue, the time limit; SIGUSR2, the warning that the Slurm launcher
# has sbatch send before the time limit (conf/hydra/launcher/slurm.yaml, afqmc/runs/launcher.py).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


def signal_name(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


@dataclass
class StopFlag:
    signum: int | None = None  # the first stop signal received


@contextlib.contextmanager
def stop_signals():
    """A stop signal sets a flag instead of ending the process wherever Python happens to be, perhaps halfway
    through an optimizer step: the loop stops at the next step boundary, with a state worth saving.

    A second Ctrl-C stops at once, with a KeyboardInterrupt that run.py records as interrupted. A repeated SIGTERM or
    SIGUSR2 changes nothing: Slurm sends SIGTERM twice (srun forwards its own), and its grace period ends in
    a SIGKILL anyway."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():  # e.g. a joblib worker: no signals there
        yield flag
        return

    def handler(signum, frame):
        if flag.signum is None:
            flag.signum = signum
            log.warning(
                "%s: saving checkpoints/last after this step, then stopping (Ctrl-C again: stop now)",
                signal_name(signum),
            )
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt(f"{signal_name(signum)} again: stopped at once, checkpoints/last not saved")
        else:
            log.warning("%s again: already stopping after this step", signal_name(signum))

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for signum, handler in previous.items():  # None: set outside Python, which Python cannot put back
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def label_names(label_map) -> list[str]:
    """The raw label of each class index (dataset.label_map maps raw labels to 0..N-1; the schema checked)."""
    return [str(raw) for raw, _ in sorted(label_map.items(), key=lambda kv: kv[1])]


class Trainer:
    def __init__(self, cfg, output_dir):
        self.cfg, self.tcfg = cfg, cfg.trainer
        self.out = Path(output_dir)
        self.built = False

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        """Builds the model, data, optimizer and, with trainer.resume, their state from checkpoints/last."""
        self._setup_run()
        self._setup_training()

    def _setup_run(self) -> None:
        set_seed(self.tcfg.seed)
        self.device = self._setup_device()
        # Under torchrun every rank works for rank 0's run directory; only rank 0 writes there.
        self.out = Path(dist.broadcast(str(self.out)))

    def _setup_training(self) -> None:
        self._setup_model()
        self._setup_data()
        self._setup_optimizer()
        self.state = self._load_last() if self.tcfg.resume else TrainState()
        self.scored: tuple[int, int, dict] | None = None  # (epoch, step, dev metrics) of the last evaluation
        self.metrics, self.trackers = None, Trackers({})
        if dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            # Resuming replays the steps past the checkpoint: their records go, or they would be there twice.
            self.metrics = MetricsLog(self.out / "metrics.jsonl", self.state.metrics_offset, self.state.metrics_sha256)
            self.trackers = start_trackers(self.cfg, self.out, self.state)  # only rank 0 logs
        self.built = True

    def _setup_device(self) -> torch.device:
        want = self.tcfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(want)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={self.tcfg.device!r} but CUDA is not available; allowed here: auto, cpu")
        device = dist.init(device.type) or device  # under torchrun: this rank's GPU
        precision = self.tcfg.precision
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError("trainer.precision=fp16 needs CUDA; allowed on CPU: auto, fp32, bf16")
        self.precision = precision
        if self.tcfg.cpu_threads:  # e.g. 1 per process when several jobs share a machine
            torch.set_num_threads(self.tcfg.cpu_threads)
        if device.type == "cuda":
            # TF32 matmuls: ~8x the fp32 rate on Ampere+ at a precision fine-tuning does not notice.
            torch.set_float32_matmul_precision("high")
        # fp16 overflows without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        log.info("device: %s, precision: %s, processes: %d", device, precision, dist.world_size())
        return device

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _setup_model(self) -> None:
        self.label_names = label_names(self.cfg.dataset.label_map)
        self.model, self.tokenizer = MODELS.get(self.cfg.model.name)(self.cfg.model, self.label_names)
        self.model.to(self.device)
        if self.device.type == "cpu" and self.tcfg.fast_dropout:  # dropout is costly on a CPU (fast_dropout.py)
            from afqmc.models.fast_dropout import use_fast_dropout

            use_fast_dropout(self.model)
        # self.model is the plain module that gets saved and reloaded; self.forward trains it and
        # self.infer evaluates it (never through DDP: ranks score different numbers of batches).
        self.forward = self.infer = torch.compile(self.model) if self.tcfg.compile else self.model
        if dist.world_size() > 1:  # DDP all-reduces gradients in buckets while backward still runs
            ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,  # BERT's only buffers are constant position ids
            )
            self.forward = torch.compile(ddp) if self.tcfg.compile else ddp

    def _setup_data(self) -> None:
        dcfg, t = self.cfg.dataset, self.tcfg
        build = DATASETS.get(dcfg.name)
        self.train_set = build(dcfg, "train")
        self.dev_set = build(dcfg, "dev") if dcfg.splits.get("dev") else None  # none: the best is the last
        self.test_set = build(dcfg, "test") if t.predict and dcfg.splits.get("test") else None
        loader = self._loader_args()
        for ds in (self.train_set, self.dev_set, self.test_set):
            if ds is not None:
                ds.encode(self.tokenizer, dcfg.max_length)  # once per split, not once per batch and epoch
        rank, world = dist.rank(), dist.world_size()
        n_train = self.train_set.count()
        if self.train_set.streaming:  # file order, tokenized batch by batch
            if world > 1:  # ranks would need equal batch counts from a file of unknown length
                raise ConfigError("dataset.streaming=true runs in one process only; allowed under torchrun: false")
            self.train_sampler = None
            self.train_loader = DataLoader(self.train_set, batch_size=t.batch_size, **loader)
            self.batches_per_epoch = math.ceil(n_train / t.batch_size)
        else:
            self.train_sampler = TrainBatchSampler(
                self.train_set.lengths(), t.batch_size, t.seed, t.group_by_length, rank=rank, world=world
            )
            self.train_loader = DataLoader(self.train_set, batch_sampler=self.train_sampler, **loader)
            self.batches_per_epoch = len(self.train_sampler)
        self.eval_loaders = {
            split: self._eval_loader(ds, loader)
            for split, ds in (("dev", self.dev_set), ("test", self.test_set))
            if ds is not None
        }
        splits = (("train", self.train_set), ("dev", self.dev_set), ("test", self.test_set))
        self.data = {split: ds.fingerprint() for split, ds in splits if ds is not None}  # for checkpoints/last
        n_test = self.test_set.count() if self.test_set is not None else "no"
        n_dev = self.dev_set.count() if self.dev_set is not None else "no"
        log.info("data: %d train, %s dev, %s test pairs", n_train, n_dev, n_test)

    def _loader_args(self) -> dict:
        """DataLoader arguments every split shares."""
        dcfg, t = self.cfg.dataset, self.tcfg
        # Tensor cores take matmuls whose sizes are multiples of 8; torch.compile wants few distinct
        # shapes (each one compiles anew), so it gets coarser buckets. A CPU gains nothing from either.
        multiple = 32 if t.compile else 8 if self.device.type == "cuda" else None
        # Each loader draws its workers' seed from a generator of its own, not from torch's global one:
        # that one then serves only dropout, and its saved state is all a resumed run needs.
        return dict(
            collate_fn=COLLATORS.get(dcfg.collate)(dcfg, self.tokenizer, multiple),
            num_workers=t.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),
        )

    def _eval_loader(self, ds, loader: dict) -> DataLoader:
        """Longest batches first; each rank scores every world-th batch, and _forward_all gathers them,
        so each pair counts once."""
        batches = sorted_batches(ds.lengths(), self.tcfg.eval_batch_size)[dist.rank() :: dist.world_size()]
        return DataLoader(ds, batch_sampler=batches, **loader)

    def setup_evaluation(self, path: Path, split: str) -> None:
        """The model saved at `path` and the labelled `split`, to be scored by evaluate(split) (afqmc.evaluate)."""
        self._setup_run()
        self.label_names = label_names(self.cfg.dataset.label_map)
        self.model = self.infer = checkpoint.load_model(path).to(self.device)
        if self.model.config.num_labels != len(self.label_names):
            raise ConfigError(
                f"dataset.label_map has {len(self.label_names)} labels, but the model in {path} has "
                f"{self.model.config.num_labels} classes; map the file's labels to the model's: "
                + ", ".join(f"{i}: {name!r}" for i, name in sorted(self.model.config.id2label.items()))
            )
        self.tokenizer = load_tokenizer(str(path), config=self.model.config)  # config: not read again
        dataset = DATASETS.get(self.cfg.dataset.name)(self.cfg.dataset, split, labeled=True)
        dataset.encode(self.tokenizer, self.cfg.dataset.max_length)
        self.eval_loaders = {split: self._eval_loader(dataset, self._loader_args())}
        log.info("%s: %d pairs (%s)", split, dataset.count(), path)

    def _setup_optimizer(self) -> None:
        t = self.tcfg
        steps_per_epoch = math.ceil(self.batches_per_epoch / t.grad_accum_steps)
        self.total_steps = steps_per_epoch * t.epochs
        if t.max_steps is not None:
            self.total_steps = min(self.total_steps, t.max_steps)
        self.optimizer = OPTIMIZERS.get(self.cfg.optimizer.name)(self.cfg.optimizer, self.model)
        self.scheduler = SCHEDULERS.get(self.cfg.scheduler.name)(self.cfg.scheduler, self.optimizer, self.total_steps)

    # ---------------------------------------------------------------- train
    def fit(self) -> float:
        if not self.built:  # (setup() may have been called already)
            self._setup_run()
            if self.tcfg.resume and (summary := completed_summary(self.out)) is not None:
                log.info("trainer.resume=true and %s completed: skipped (%s)", self.out, outcome(self.out))
                return summary["best"]["value"]
            self._setup_training()
        with self.trackers:  # a run that raises ends its trackers' runs as failed (or interrupted)
            with stop_signals() as self.stop:
                self.train()
            return self.finish()

    def train(self) -> None:
        t, model, s = self.tcfg, self.model, self.state
        first_epoch, done = s.epoch, s.batch
        running = None if s.running_loss is None else s.running_loss[dist.rank()].to(self.device)  # this rank's
        show_bar = sys.stderr.isatty() and dist.is_main()  # one bar, rank 0's (the others log warnings only)
        for epoch in range(first_epoch, t.epochs + 1):
            if s.step >= self.total_steps or s.stopped_early:
                break
            model.train()
            batches = self.train_loader
            if self.train_sampler is not None:
                self.train_sampler.set_epoch(epoch, start=done)
            elif done:  # streaming, in file order: the loader reads the batches done again, and they are dropped
                batches = islice(batches, done, None)
            self._since = time.perf_counter()  # train_seconds counts from here (_not_training)
            bar = tqdm(
                desc=f"epoch {epoch}/{t.epochs}",
                total=self.batches_per_epoch,
                initial=done,
                disable=not show_bar,
                dynamic_ncols=True,
            )
            for i, batch in enumerate(batches, start=done):
                batch.pop("index")
                stepping = (i + 1) % t.grad_accum_steps == 0 or i + 1 == self.batches_per_epoch
                loss = self._forward_backward(batch, stepping)
                bar.update()  # (counted here, not by iterating the bar: a break would leave the last batch out)
                s.samples += len(batch["labels"]) * dist.world_size()
                # an exponential moving average, kept on the device: reading it each step would sync
                running = loss.detach() if running is None else 0.9 * running + 0.1 * loss.detach()
                if not stepping:
                    continue  # accumulate: more micro-batches before the optimizer step
                self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
                if t.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                s.step += 1
                if s.step % t.log_every == 0:
                    lr = self.scheduler.get_last_lr()[0]
                    record = {
                        "type": "train",
                        "epoch": epoch,
                        "step": s.step,
                        "loss": dist.mean(running).item(),
                        "lr": lr,
                    }
                    self._log(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
                    # run.log gets every step line; the console gets it where no bar shows it (progress.OffTheBar)
                    log.info(
                        "epoch %d step %d/%d loss %.4f lr %.2e",
                        *(epoch, s.step, self.total_steps, record["loss"], lr),
                        extra={"bar": show_bar},
                    )
                    self._check_finite(record["loss"], epoch, weights=False)
                # before the Ctrl-C check and the save: checkpoints/last then holds this evaluation, so a resumed
                # run neither repeats nor loses it
                if t.eval_every_steps and (s.step % t.eval_every_steps == 0 or s.step >= self.total_steps):
                    with self._not_training():
                        self._check_finite(running, epoch)  # before a best checkpoint is written
                        self._evaluate_dev(epoch)
                    model.train()
                if self._stop_requested(logged=s.step % t.log_every == 0):
                    self._save_last(epoch, i + 1, running)
                    raise Interrupted(
                        f"{self._stop_name()} at epoch {epoch}, step {s.step}: {self._how_to_resume()}",
                        self.stop.signum or signal.SIGTERM,
                    )
                if s.step >= self.total_steps or s.stopped_early:
                    break
                if t.save_every_steps and s.step % t.save_every_steps == 0 and i + 1 < self.batches_per_epoch:
                    with self._not_training():
                        self._save_last(epoch, i + 1, running)
            bar.close()
            with self._not_training():
                if running is not None:  # (None: resumed at the epoch's end, from checked weights)
                    self._check_finite(running, epoch)  # before the evaluation writes checkpoints
                if self.dev_set is None:
                    if s.step >= self.total_steps:  # (the end of training: one save, not one an epoch)
                        self._take_last_as_best(epoch)
                elif t.eval_every_steps is None:
                    self._evaluate_dev(epoch)
                self._save_last(epoch + 1, 0, None)
            done, running = 0, None

    @contextlib.contextmanager
    def _not_training(self):
        """Evaluating and saving are no training time: train_seconds leaves out what runs inside."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # queued kernels belong to the training time
        self.state.train_seconds += time.perf_counter() - self._since
        yield
        self._since = time.perf_counter()

    def _forward_backward(self, batch: dict, stepping: bool) -> torch.Tensor:
        """The batch's mean loss, its gradient accumulated. On the CPU, a batch whose padding is mostly
        for a few long pairs runs as pieces of similar length (split_by_length): the same gradient, for
        less compute. Not on a GPU, bound at these sizes by kernel launches, which pieces multiply."""
        pieces = split_by_length(batch, self.tcfg.split_padding) if self.device.type == "cpu" else [batch]
        total = 0.0
        for j, piece in enumerate(pieces):
            piece = {k: v.to(self.device, non_blocking=True) for k, v in piece.items()}
            # DDP: all-reduce gradients only on the backward before an optimizer step, not on each one
            synced = dist.world_size() == 1 or (stepping and j == len(pieces) - 1)
            with contextlib.nullcontext() if synced else self.forward.no_sync():
                with self.autocast():
                    loss = self.forward(**piece).loss * (len(piece["labels"]) / len(batch["labels"]))
                self.scaler.scale(loss / self.tcfg.grad_accum_steps).backward()
            total = total + loss.detach()
        return total

    def _check_finite(self, running: torch.Tensor | float, epoch: int, weights: bool = True) -> None:
        """The running loss is a moving average: once a step's loss is nan or inf, so is it, until the
        epoch ends. Checked, with the weights (the last step may have broken them), before each
        checkpoint is written: the checkpoints a diverged run leaves are from before it diverged."""
        loss = dist.mean(running).item() if torch.is_tensor(running) else running
        norm = torch.nn.utils.get_total_norm(list(self.model.parameters())).item() if weights else 0.0
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise TrainingError(
                f"training diverged at epoch {epoch}, step {self.state.step}: running loss {loss:.4g}"
                + (f", weights' norm {norm:.4g}" if weights else "")
                + "; the checkpoints already written are from "
                "before it. Try a lower optimizer.lr, trainer.max_grad_norm (clipping) or trainer.precision=fp32"
            )

    def _stop_requested(self, logged: bool) -> bool:
        """A stop signal came. torchrun's ranks may see it a step apart: they agree at log steps."""
        stop = self.stop.signum is not None
        if dist.world_size() == 1:
            return stop
        return logged and dist.mean(torch.tensor(float(stop), device=self.device)).item() > 0

    def _stop_name(self) -> str:
        return signal_name(self.stop.signum) if self.stop.signum is not None else "a stop signal to another rank"

    def _evaluate_dev(self, epoch: int) -> None:
        """Scores dev: a new best goes to checkpoints/best, and early stopping counts the evaluations that
        did not beat the best by more than min_delta. Every rank scores the same gathered logits, so all
        of them decide alike."""
        s, t = self.state, self.tcfg
        metrics = self.evaluate("dev", show=True)
        self.scored = (epoch, s.step, metrics)
        self._log({"type": "eval", "split": "dev", "epoch": epoch, "step": s.step, **metrics})
        at = f"epoch {epoch}" if t.eval_every_steps is None else f"epoch {epoch} step {s.step}"
        log.info("%s dev: %s", at, " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        metric, value = t.metric, metrics[t.metric]
        # how much better than the best so far (the loss is better lower); a difference in the last bits of
        # a float (the same predictions summed in another order) is no improvement
        if s.best is None:
            gain = math.inf
        elif math.isclose(value, s.best["value"], rel_tol=1e-9, abs_tol=1e-12):
            gain = 0.0
        else:
            gain = (value - s.best["value"]) * (-1 if metric == "loss" else 1)
        if gain > 0:
            s.best = {"epoch": epoch, "step": s.step, "metric": metric, "value": value}
            s.best_dev, s.best_step = metrics, s.step
            self._save_best()
            saved = "saved checkpoints/best" if t.save_best else "not saved (trainer.save_best=false)"
            log.info("new best %s %.4f at %s: %s", metric, value, at, saved)
        patience = t.early_stopping.patience
        if patience is not None:
            s.evals_without_gain = 0 if gain > t.early_stopping.min_delta else s.evals_without_gain + 1
            if s.evals_without_gain >= patience:
                s.stopped_early = {"epoch": epoch, "step": s.step}
                log.info(
                    "early stopping at %s: dev %s not better than %.4f by more than %g for %d evaluations",
                    at,
                    metric,
                    s.best["value"],
                    t.early_stopping.min_delta,
                    patience,
                )

    def _take_last_as_best(self, epoch: int) -> None:
        """No dev split: the model at the end of training is the best, as summary.json says."""
        s = self.state
        s.best = {"epoch": epoch, "step": s.step, "metric": None, "value": None, "note": NO_DEV}
        s.best_dev, s.best_step = None, s.step
        self._save_best()
        log.info("no dev split: checkpoints/best is the model at the end of training (epoch %d)", epoch)

    def _save_best(self) -> None:
        if dist.is_main() and self.tcfg.save_best:
            checkpoint.save(self.out / BEST, self.cfg.model.name, self.model, self.tokenizer, run=self._run_info())

    def _forward_all(self, split: str, show: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(dataset indices, logits, labels or None) for a whole split, in dataset order; `show`: its progress."""
        self.model.eval()
        indices, logits, labels = [], [], []
        batches = self.eval_loaders[split]
        with torch.inference_mode():
            for batch in progress(batches, len(batches), f"scoring {split}") if show and dist.is_main() else batches:
                indices.append(batch.pop("index"))
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                y = batch.pop("labels", None)
                with self.autocast():
                    logits.append(self.infer(**batch).logits.float().cpu())
                if y is not None:
                    labels.append(y.cpu())
        parts = dist.gather([torch.cat(x) for x in (indices, logits, labels) if x])  # a rank may have no batch
        indices, logits, *labels = (torch.cat(column) for column in zip(*[p for p in parts if p]))
        order = indices.argsort()
        return indices[order], logits[order], labels[0][order] if labels else None

    def evaluate(self, split: str = "dev", show: bool = False) -> dict[str, float]:
        """The metrics of a labelled split; `show`: its progress (a bar on a terminal, else log lines)."""
        _, logits, labels = self._forward_all(split, show)
        return scores(logits, labels)

    def predict(self) -> Path | None:
        """CLUE's submission format: one {"id": ..., "label": raw label} per test line, in file order.
        Returns the file's path on rank 0, None on the other ranks (which write nothing)."""
        indices, logits, _ = self._forward_all("test", show=True)
        if not dist.is_main():
            return None
        path = self.out / "predictions" / f"{self.cfg.dataset.task}_predict.json"
        with files.atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for i, pred in zip(indices.tolist(), logits.argmax(-1).tolist()):
                record = {"id": self.test_set.item_id(i), "label": self.label_names[pred]}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return path

    # ---------------------------------------------------------------- checkpoints/last
    def _save_last(self, epoch: int, batch: int, running: torch.Tensor | None) -> None:
        """checkpoints/last: the weights and all a resumed run needs to go on at batch `batch` of `epoch`."""
        if running is not None:  # (None at an epoch's end: checked before the evaluation)
            self._check_finite(running, epoch)
        if self.tcfg.keep_last == "never":
            return
        rngs = dist.gather(checkpoint.rng_state(self.device))  # each rank's: their dropout draws differ
        losses = dist.gather(None if running is None else running.detach().cpu())  # and their losses
        if not dist.is_main():
            return
        state = replace(
            self.state,
            epoch=epoch,
            batch=batch,
            running_loss=None if running is None else losses,
            metrics_offset=self.metrics.offset(),
            metrics_sha256=self.metrics.sha256(),
            data=self.data,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=rngs,
            config=config_snapshot(self.cfg),
            trackers=self.trackers.ids(),
        )
        checkpoint.save(self.out / LAST, self.cfg.model.name, self.model, self.tokenizer, state, self._run_info())
        self.trackers.flush()

    def _how_to_resume(self) -> str:
        if self.tcfg.keep_last == "never":
            return "nothing saved (trainer.keep_last=never), so a resumed run starts afresh"
        return f"saved {self.out / LAST}; go on with: {resume_command(self.out)}"

    def _run_info(self) -> RunInfo:
        """For a checkpoint of the weights as they are now: the dev metrics when they were scored."""
        epoch, step, dev = self.scored or (None, None, None)
        scored = step == self.state.step
        return RunInfo(
            config=OmegaConf.to_container(self.cfg, resolve=True),
            overrides=run_overrides(self.out),
            dev=dev if scored else None,
            epoch=epoch if scored else None,
            step=self.state.step,
        )

    def _load_last(self) -> TrainState:
        """Weights, optimizer, scheduler, scaler and RNG states from checkpoints/last; returns its progress
        (a fresh TrainState when there is none)."""
        path = checkpoint.find_last(self.out)
        if path is None:
            log.info("trainer.resume=true but no %s: starting from scratch", self.out / LAST)
            return TrainState()
        model = checkpoint.load_model(path)  # (its files verified first, state.pt's too)
        state = TrainState.load(path / STATE)
        changes = config_changes(state.config, config_snapshot(self.cfg))
        if len(state.rng) != dist.world_size():  # each rank has its share of the batches: another split of them
            changes.append(f"processes: {len(state.rng)} -> {dist.world_size()}")
        if changes:  # the same batches and steps would mean another run: give the run's own overrides
            raise ConfigError(
                f"trainer.resume=true, but the config differs from the one {path} was written with: "
                f"{'; '.join(changes)}. Resume with the overrides the run was started with"
            )
        changed = [
            f"{split}: {was['examples']} examples, sha256 {was['sha256'][:12]}... -> {now['examples']}, "
            f"{now['sha256'][:12]}..."
            for split, was in state.data.items()
            if (now := self.data.get(split)) and (was["examples"], was["sha256"]) != (now["examples"], now["sha256"])
        ]
        if changed:  # the same steps over other pairs would be neither this run nor a new one
            raise DataError(
                f"trainer.resume=true, but the data changed since {path} was written: {'; '.join(changed)}. "
                "Resume on the data the run started with, or start it afresh with trainer.overwrite=true"
            )
        self.model.load_state_dict(model.state_dict())
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        checkpoint.set_rng_state(state.rng[dist.rank()], self.device)  # last: nothing draws in between
        log.info("resuming from %s: epoch %d, batch %d, step %d", path, state.epoch, state.batch, state.step)
        return state.progress()

    # ---------------------------------------------------------------- the end
    def finish(self) -> float:
        """Reload the best checkpoint, score dev with it, predict test, write summary.json; then, with
        trainer.keep_last=until_done, delete checkpoints/last (summary.json first: a resumed run then skips it)."""
        s, t = self.state, self.tcfg
        dev = s.best_dev  # save_best=false: the best evaluation's figures, as metrics.jsonl has them
        # the model moved on since the best evaluation: score the saved best
        if self.dev_set is not None and t.save_best and s.best_step != s.step:
            if dist.is_main():
                self.model.load_state_dict(checkpoint.load_model(self.out / BEST).state_dict())
            dist.broadcast_module(self.model)
            dev = self.evaluate("dev", show=True)
        predictions = self.predict() if self.test_set is not None else None
        if not dist.is_main():
            return s.best["value"]
        splits = {"train": self.train_set, "dev": self.dev_set, "test": self.test_set}
        summary = {
            "status": "completed",
            "best": s.best,
            "dev": dev,
            "stopped_early": s.stopped_early,
            "train": {
                "seconds": s.train_seconds,
                "samples": s.samples,
                "samples_per_second": s.samples / s.train_seconds if s.train_seconds else 0.0,
                "steps": s.step,
            },
            "output_dir": str(self.out.resolve()),
            "checkpoint": str((self.out / BEST).resolve()) if t.save_best else None,
            "predictions": str(predictions.resolve()) if predictions else None,
            "data": {
                counter: {split: getattr(ds, counter) for split, ds in splits.items() if ds is not None}
                for counter in ("skipped_lines", "no_gold_label")
            },
            "device": str(self.device),
            "precision": self.precision,
            "world_size": dist.world_size(),
            "global_batch_size": t.batch_size * t.grad_accum_steps * dist.world_size(),
        }
        files.write_json(self.out / "summary.json", summary)
        if t.keep_last == "until_done":
            checkpoint.delete(self.out / LAST)
        self.trackers.finish(summary)
        if dev is not None:
            log.info(
                "best %s %.4f (epoch %d, step %d); dev with best checkpoint: %s",
                s.best["metric"],
                s.best["value"],
                s.best["epoch"],
                s.best["step"],
                " ".join(f"{k} {v:.4f}" for k, v in dev.items()),
            )
        self.metrics.close()
        return s.best["value"]

    def _log(self, record: dict) -> None:
        if self.metrics is not None:  # rank 0 only
            self.metrics.append({"time": time.time(), **record})
            self.trackers.log(record)
