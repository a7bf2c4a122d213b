"""The training recipe: setup() builds everything from the config, fit() trains, evaluates and predicts.

Everything a run produces lands in its output directory: metrics.jsonl, summary.json, checkpoints/best/,
checkpoints/last/ (to resume from), predictions/<task>_predict.json (run.log is Hydra's). The model, data,
optimizer, schedule and callbacks come from the registries (afqmc/config/registry.py says what each must
do); the parts are the Evaluator (one forward pass over a split), the Checkpointer (best, last, resume),
the rules for the best checkpoint and early stopping (rules.py) and the callbacks. Nothing here knows
which model or dataset it trains.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import set_seed

from afqmc import files
from afqmc.config.identity import config_snapshot
from afqmc.config.registry import CALLBACKS, COLLATORS, DATASETS, MODELS, OPTIMIZERS, SCHEDULERS
from afqmc.data.datasets import UNKNOWN_WARN, unknown_share
from afqmc.data.sampling import TrainBatchSampler, sorted_batches, split_by_length
from afqmc.errors import ConfigError, Interrupted, TrainingError
from afqmc.runs.card import CheckpointInfo, run_overrides
from afqmc.runs.records import NO_DEV, completed_summary, outcome
from afqmc.runs.trackers import start_trackers
from afqmc.training import checkpoint
from afqmc.training import distributed as dist
from afqmc.training.callbacks import Callbacks, EarlyStoppingCallback
from afqmc.training.checkpoint import BEST, LAST, MetricsLog, TrainState
from afqmc.training.checkpointer import Checkpointer
from afqmc.training.evaluator import Evaluator, logits_of
from afqmc.training.metrics import scores
from afqmc.training.rules import BestRule, EarlyStopping
from afqmc.training.signals import StopFlag, signal_name, stop_signals

log = logging.getLogger(__name__)


def label_names(label_map) -> list[str]:
    """The raw label of each class index (dataset.label_map maps raw labels to 0..N-1; the schema checked)."""
    return [str(raw) for raw, _ in sorted(label_map.items(), key=lambda kv: kv[1])]


def label_counts(dataset, classes: int) -> list[int]:
    """How many examples of each class a labelled split holds: from its examples where it keeps them in memory,
    else one pass over it (a streaming split, a plugin's)."""
    examples = getattr(dataset, "examples", None)
    counts = [0] * classes
    for example in examples if examples is not None else dataset:
        counts[example["label"]] += 1
    return counts


def saved_buffers(model: torch.nn.Module) -> bool:
    """Buffers saved with the weights may change as the model trains (batch norm's statistics): DDP must send
    rank 0's to all. Constant ones, such as BERT's position ids, are not saved and need no broadcast."""
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return any(name not in parameters for name in model.state_dict())


class Trainer:
    def __init__(self, cfg, output_dir):
        self.cfg, self.tcfg = cfg, cfg.trainer
        self.out = Path(output_dir)  # under torchrun, rank 0's (_setup_run)
        self.label_names = label_names(cfg.dataset.label_map)
        self.built = False  # setup() ran
        # _setup_run
        self.device: torch.device | None = None
        self.precision: str | None = None  # fp32, bf16 or fp16 (trainer.precision=auto resolved)
        self.scaler: torch.amp.GradScaler | None = None
        # _setup_model
        self.model = self.tokenizer = None  # the plain module that is saved and reloaded, and its tokenizer
        self.forward = None  # what trains it: the model, perhaps compiled, perhaps inside DDP
        self.evaluator: Evaluator | None = None  # what scores it (never through DDP: ranks score unequal shares)
        # _setup_data
        self.train_set = self.dev_set = self.test_set = None
        self.train_loader: DataLoader | None = None
        self.train_sampler: TrainBatchSampler | None = None  # None: a streaming train split, in file order
        self.eval_loaders: dict[str, DataLoader] = {}
        self.batches_per_epoch = 0
        self.data: dict = {}  # each split's fingerprint, for checkpoints/last
        self.class_weights: torch.Tensor | None = None  # the loss's weight of each class (trainer.class_weights)
        # _setup_optimizer
        self.optimizer = self.scheduler = None
        self.total_steps = 0
        # where the run is, and what watches and steers it (_setup_training)
        self.state = TrainState()
        self.checkpointer = Checkpointer(self.out, cfg, self.label_names)
        self.best_rule = BestRule(cfg.trainer.metric)
        self.callbacks = Callbacks([])
        self.metrics: MetricsLog | None = None  # metrics.jsonl, on rank 0
        self.scored: tuple[int, int, dict] | None = None  # (epoch, step, dev metrics) of the last evaluation
        self.stop = StopFlag()  # set by a stop signal while train() runs
        self._since = 0.0  # where the training time being counted started (_not_training)

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that writes (under torchrun)."""
        return dist.is_main()

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
        self.checkpointer = Checkpointer(self.out, self.cfg, self.label_names)

    def _setup_training(self) -> None:
        self._setup_model()
        self._setup_data()
        self.class_weights = self._class_weights()
        self._setup_optimizer()
        if self.tcfg.resume:
            self._resume()
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            # Resuming replays the steps past the checkpoint: their records go, or they would be there twice.
            self.metrics = MetricsLog(self.out / "metrics.jsonl", self.state.metrics_offset, self.state.metrics_sha256)
        self.callbacks = self._setup_callbacks()
        self.built = True

    def _setup_device(self) -> torch.device:
        want = self.tcfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(want)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={self.tcfg.device!r} but CUDA is not available; allowed here: auto, cpu")
        device = dist.init(device.type, self.tcfg.dist_timeout_s) or device  # several ranks: this rank's GPU
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
        self.model, self.tokenizer = MODELS.get(self.cfg.model.name)(self.cfg.model, self.label_names)
        self.model.to(self.device)
        if self.device.type == "cpu" and self.tcfg.fast_dropout:  # dropout is costly on a CPU (fast_dropout.py)
            from afqmc.models.fast_dropout import use_fast_dropout

            if not use_fast_dropout(self.model):
                log.info("trainer.fast_dropout: the model's attention does not take it; it trains with plain dropout")
        infer = torch.compile(self.model) if self.tcfg.compile else self.model
        self.evaluator = Evaluator(infer, self.device, self.autocast)
        self.forward = infer
        if dist.world_size() > 1:  # DDP all-reduces gradients in buckets while backward still runs
            ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=saved_buffers(self.model),
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
        self._warn_unknown_tokens()
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
        unit = "pairs" if OmegaConf.select(dcfg, "columns.text_b") is not None else "examples"  # single sentences
        log.info("data: %d train, %s dev, %s test %s", n_train, n_dev, n_test, unit)
        if self.test_set is not None and dcfg.get("max_test_samples"):
            log.warning("dataset.max_test_samples=%d: predictions cover those test lines only", dcfg.max_test_samples)

    def _class_weights(self) -> torch.Tensor | None:
        """trainer.class_weights as a tensor: a list as given, or balanced, n / (classes x count) from the train
        split's labels (sklearn's "balanced": each class weighs as much in the loss as the others)."""
        want = self.tcfg.get("class_weights")
        if want is None:
            return None
        if want == "balanced":
            counts = label_counts(self.train_set, len(self.label_names))
            missing = [self.label_names[c] for c, n in enumerate(counts) if n == 0]
            if missing:
                raise ConfigError(
                    f"trainer.class_weights=balanced: the train split has no example of label(s) {missing}; "
                    "allowed: null, or a list with one weight per label"
                )
            want = [sum(counts) / (len(counts) * n) for n in counts]
        weights = torch.tensor([float(w) for w in want])
        log.info("class weights: %s", ", ".join(f"{c} {w:.4f}" for c, w in zip(self.label_names, weights.tolist())))
        return weights.to(self.device)

    def _warn_unknown_tokens(self) -> None:
        """A vocabulary that lacks most of a corpus' characters trains on [UNK]s, silently: said, with the rate."""
        features = getattr(self.train_set, "features", None)  # (a streaming split is tokenized batch by batch)
        share = unknown_share(features, self.tokenizer) if features else None
        if share is not None and share > UNKNOWN_WARN and self.is_main:
            log.warning(
                "%.1f%% of the train split's tokens are %s: the tokenizer of model.checkpoint=%s lacks this corpus' "
                "characters, and the model cannot tell them apart; use a checkpoint whose vocabulary covers them",
                100 * share,
                self.tokenizer.unk_token,
                OmegaConf.select(self.cfg, "model.checkpoint"),
            )

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

    def _setup_optimizer(self) -> None:
        t = self.tcfg
        steps_per_epoch = math.ceil(self.batches_per_epoch / t.grad_accum_steps)
        self.total_steps = steps_per_epoch * t.epochs
        if t.max_steps is not None:
            self.total_steps = min(self.total_steps, t.max_steps)
        self.optimizer = OPTIMIZERS.get(self.cfg.optimizer.name)(self.cfg.optimizer, self.model)
        self.scheduler = SCHEDULERS.get(self.cfg.scheduler.name)(self.cfg.scheduler, self.optimizer, self.total_steps)

    def _setup_callbacks(self) -> Callbacks:
        """Early stopping, the `callbacks` the config names, and on rank 0 the `logger` trackers."""
        t = self.tcfg
        callbacks = [EarlyStoppingCallback(EarlyStopping(t.early_stopping.patience, t.early_stopping.min_delta))]
        chosen = self.cfg.get("callbacks") or {}
        callbacks += [CALLBACKS.get(name)(options) for name, options in chosen.items()]
        if self.is_main:
            trackers = start_trackers(self.cfg, self.out, self.state)  # a resumed run goes on in the same runs
            self.state.trackers = trackers.ids()
            callbacks.append(trackers)
        return Callbacks(callbacks)

    def _resume(self) -> None:
        """Weights, optimizer, scheduler, scaler and generator states from checkpoints/last, if there is one."""
        found = self.checkpointer.resume(self.data)
        if found is None:
            return
        state, model = found
        self.model.load_state_dict(model.state_dict())
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        checkpoint.set_rng_state(state.rng[dist.rank()], self.device)  # last: nothing draws in between
        self.state = state.progress()

    def setup_evaluation(self, path: Path, split: str) -> None:
        """The model saved at `path` and the labelled `split`, to be scored by evaluate(split) (afqmc.evaluate)."""
        self._setup_run()
        self.model = checkpoint.load_model(path).to(self.device)
        classes = checkpoint.label_names(path, self.model)
        if len(classes) != len(self.label_names):
            raise ConfigError(
                f"dataset.label_map has {len(self.label_names)} labels, but the model in {path} has "
                f"{len(classes)} classes; map the file's labels to the model's: "
                + ", ".join(f"{i}: {name!r}" for i, name in enumerate(classes))
            )
        self.tokenizer = checkpoint.load_tokenizer(path, self.model)
        self.evaluator = Evaluator(self.model, self.device, self.autocast)
        dataset = DATASETS.get(self.cfg.dataset.name)(self.cfg.dataset, split, labeled=True)
        dataset.encode(self.tokenizer, self.cfg.dataset.max_length)
        self.eval_loaders = {split: self._eval_loader(dataset, self._loader_args())}
        log.info("%s: %d pairs (%s)", split, dataset.count(), path)

    # ---------------------------------------------------------------- train
    def fit(self) -> float:
        if not self.built:  # (setup() may have been called already)
            self._setup_run()
            if self.tcfg.resume and (summary := completed_summary(self.out)) is not None:
                log.info("trainer.resume=true and %s completed: skipped (%s)", self.out, outcome(self.out))
                return summary["best"]["value"]
            self._setup_training()
        try:
            with stop_signals() as self.stop:
                self.train()
            return self.finish()
        except (Exception, KeyboardInterrupt) as e:  # trackers end their runs as failed or interrupted
            stopped = isinstance(e, (Interrupted, KeyboardInterrupt))
            self.callbacks.emit("on_stop", self, "interrupted" if stopped else "failed")
            raise

    def train(self) -> None:
        """Epochs of optimizer steps from where the state says; evaluates, saves and stops as the config says."""
        t, s = self.tcfg, self.state
        done = s.batch  # batches of the first epoch trained before a resume
        running = None if s.running_loss is None else s.running_loss[dist.rank()].to(self.device)  # this rank's
        self.callbacks.emit("on_train_start", self)
        for epoch in range(s.epoch, t.epochs + 1):
            if s.step >= self.total_steps or s.stopped_early:
                break
            self.model.train()
            bar = self._bar(epoch, done)
            self._since = time.perf_counter()  # train_seconds counts from here (_not_training)
            for i, batch in enumerate(self._epoch_batches(epoch, done), start=done):
                stepping = (i + 1) % t.grad_accum_steps == 0 or i + 1 == self.batches_per_epoch
                loss = self._forward_backward(batch, stepping)
                bar.update()  # (counted here, not by iterating the bar: a break would leave the last batch out)
                s.samples += len(batch["labels"]) * dist.world_size()
                # an exponential moving average, kept on the device: reading it each step would sync
                running = loss if running is None else 0.9 * running + 0.1 * loss
                if not stepping:
                    continue  # accumulate: more micro-batches before the optimizer step
                self._optimizer_step()
                logged = s.step % t.log_every == 0
                if logged:
                    self._log_step(epoch, running, bar)
                if t.eval_every_steps and (s.step % t.eval_every_steps == 0 or s.step >= self.total_steps):
                    with self._not_training():
                        self._check_finite(running, epoch)  # before a best checkpoint is written
                        self._evaluate_dev(epoch)
                    self.model.train()
                if self._stop_requested(logged):
                    self._save_last(epoch, i + 1, running)
                    raise Interrupted(
                        f"{self._stop_name()} at epoch {epoch}, step {s.step}: {self.checkpointer.how_to_resume()}",
                        self.stop.signum or signal.SIGTERM,
                    )
                if s.step >= self.total_steps or s.stopped_early:
                    self._bar_done_early(bar)
                    break
                if t.save_every_steps and s.step % t.save_every_steps == 0 and i + 1 < self.batches_per_epoch:
                    with self._not_training():
                        self._save_last(epoch, i + 1, running)
            bar.close()
            self._end_epoch(epoch, running)
            done, running = 0, None

    def _bar(self, epoch: int, done: int) -> tqdm:
        """One bar, rank 0's, on a terminal (the other ranks log warnings only)."""
        return tqdm(
            desc=f"epoch {epoch}/{self.tcfg.epochs}",
            total=self.batches_per_epoch,
            initial=done,
            disable=not (sys.stderr.isatty() and self.is_main),
            dynamic_ncols=True,
        )

    def _bar_done_early(self, bar: tqdm) -> None:
        """An epoch that ends before its last batch (trainer.max_steps, early stopping) closes its bar as done,
        saying why, not at 21% like a run that died."""
        if not bar.disable and bar.n < bar.total:
            why = "early stopping" if self.state.stopped_early else f"trainer.max_steps={self.tcfg.max_steps}"
            bar.set_description(f"{bar.desc}, done at {why}")
            bar.total = bar.n
            bar.refresh()

    def _epoch_batches(self, epoch: int, done: int):
        """The epoch's training batches past the first `done`, without their indices."""
        batches = self.train_loader
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch, start=done)
        elif done:  # streaming, in file order: the loader reads the batches done again, and they are dropped
            batches = islice(batches, done, None)
        for batch in batches:
            batch.pop("index")
            yield batch

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
        if self.tcfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1

    def _log_step(self, epoch: int, running: torch.Tensor, bar: tqdm) -> None:
        s, lr = self.state, self.scheduler.get_last_lr()[0]
        record = {"type": "train", "epoch": epoch, "step": s.step, "loss": dist.mean(running).item(), "lr": lr}
        self._log(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
        # run.log gets every step line; the console gets it where no bar shows it (progress.OffTheBar)
        log.info(
            "epoch %d step %d/%d loss %.4f lr %.2e",
            *(epoch, s.step, self.total_steps, record["loss"], lr),
            extra={"bar": not bar.disable},
        )
        self.callbacks.emit("on_train_step", self, record)
        self._check_finite(record["loss"], epoch, weights=False)

    def _end_epoch(self, epoch: int, running: torch.Tensor | None) -> None:
        """Dev scored (or, without a dev split, the last model kept as the best), then checkpoints/last."""
        with self._not_training():
            if running is not None:  # (None: resumed at the epoch's end, from checked weights)
                self._check_finite(running, epoch)  # before the evaluation writes checkpoints
            if self.dev_set is None:
                if self.state.step >= self.total_steps:  # (the end of training: one save, not one an epoch)
                    self._take_last_as_best(epoch)
            elif self.tcfg.eval_every_steps is None:
                self._evaluate_dev(epoch)
            self._save_last(epoch + 1, 0, None)

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
            inputs = {k: v.to(self.device, non_blocking=True) for k, v in piece.items()}
            labels = inputs.pop("labels")
            # DDP: all-reduce gradients only on the backward before an optimizer step, not on each one
            synced = dist.world_size() == 1 or (stepping and j == len(pieces) - 1)
            with contextlib.nullcontext() if synced else self.forward.no_sync():
                with self.autocast():
                    loss = self.loss(logits_of(self.forward(**inputs)), labels) * self._share(labels, batch["labels"])
                self.scaler.scale(loss / self.tcfg.grad_accum_steps).backward()
            total = total + loss.detach()
        return total

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch: the mean cross-entropy, in fp32 whatever the precision, with
        trainer.label_smoothing and trainer.class_weights (a weighted mean: divided by the labels' weights)."""
        smoothing = self.tcfg.get("label_smoothing") or 0.0
        return F.cross_entropy(logits.float(), labels, weight=self.class_weights, label_smoothing=smoothing)

    def _share(self, piece: torch.Tensor, batch: torch.Tensor) -> float:
        """A piece's part of its batch's mean loss (split_by_length): its labels' weight over the batch's, so
        that the pieces' losses add up to the whole batch's."""
        if self.class_weights is None or len(piece) == len(batch):  # (the whole batch: no sync with the GPU)
            return len(piece) / len(batch)
        weight = self.class_weights.cpu()
        return (weight[piece.cpu()].sum() / weight[batch.cpu()].sum()).item()

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

    # ---------------------------------------------------------------- evaluate
    def when(self, record: dict) -> str:
        """Where an evaluation was, as the log says it."""
        if self.tcfg.eval_every_steps is None:
            return f"epoch {record['epoch']}"
        return f"epoch {record['epoch']} step {record['step']}"

    def _evaluate_dev(self, epoch: int) -> None:
        """Scores dev; a new best (BestRule) goes to checkpoints/best; then the callbacks hear of it (early
        stopping among them). Every rank scores the same gathered logits, so all of them decide alike."""
        s, metric = self.state, self.tcfg.metric
        metrics = self.evaluate("dev", show=True)
        self.scored = (epoch, s.step, metrics)
        record = {"type": "eval", "split": "dev", "epoch": epoch, "step": s.step, **metrics}
        self._log(record)
        log.info("%s dev: %s", self.when(record), " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        gain = self.best_rule.gain(metrics[metric], s.best["value"] if s.best else None)
        if gain > 0:
            s.best = {"epoch": epoch, "step": s.step, "metric": metric, "value": metrics[metric]}
            s.best_dev, s.best_step = metrics, s.step
            self._save_best()
            saved = "saved checkpoints/best" if self.tcfg.save_best else "not saved (trainer.save_best=false)"
            log.info("new best %s %.4f at %s: %s", metric, metrics[metric], self.when(record), saved)
        self.callbacks.emit("on_evaluate", self, record, gain)

    def _take_last_as_best(self, epoch: int) -> None:
        """No dev split: the model at the end of training is the best, as summary.json says."""
        s = self.state
        s.best = {"epoch": epoch, "step": s.step, "metric": None, "value": None, "note": NO_DEV}
        s.best_dev, s.best_step = None, s.step
        self._save_best()
        log.info("no dev split: checkpoints/best is the model at the end of training (epoch %d)", epoch)

    def evaluate(self, split: str = "dev", show: bool = False) -> dict[str, float]:
        """The metrics of a labelled split; `show`: its progress (a bar on a terminal, else log lines)."""
        _, logits, labels = self._forward_all(split, show)
        return scores(logits, labels)

    def _forward_all(self, split: str, show: bool = False):
        batches = self.eval_loaders[split]
        return self.evaluator.forward_all(batches, len(batches), f"scoring {split}" if show else None)

    def predict(self) -> Path | None:
        """CLUE's submission format: one {"id": ..., "label": raw label} per test line, in file order.
        Returns the file's path on rank 0, None on the other ranks (which write nothing)."""
        indices, logits, _ = self._forward_all("test", show=True)
        if not self.is_main:
            return None
        path = self.out / "predictions" / f"{self.cfg.dataset.task}_predict.json"
        with files.atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for i, pred in zip(indices.tolist(), logits.argmax(-1).tolist()):
                record = {"id": self.test_set.item_id(i), "label": self.label_names[pred]}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return path

    # ---------------------------------------------------------------- checkpoints
    def _save_best(self) -> None:
        if self.tcfg.save_best:
            path = self.checkpointer.save_best(self.model, self.tokenizer, self._checkpoint_info())
            self.callbacks.emit("on_save", self, "best", path)

    def _save_last(self, epoch: int, batch: int, running: torch.Tensor | None) -> None:
        """checkpoints/last: the weights and all a resumed run needs to go on at batch `batch` of `epoch`."""
        if running is not None:  # (None at an epoch's end: checked before the evaluation)
            self._check_finite(running, epoch)
        if self.tcfg.keep_last == "never":
            return
        rngs = dist.gather(checkpoint.rng_state(self.device))  # each rank's: their dropout draws differ
        losses = dist.gather(None if running is None else running.detach().cpu())  # and their losses
        if self.is_main:
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
            )
            self.checkpointer.save_last(self.model, self.tokenizer, state, self._checkpoint_info())
        self.callbacks.emit("on_save", self, "last", self.out / LAST)

    def _checkpoint_info(self) -> CheckpointInfo:
        """For a checkpoint of the weights as they are now: the dev metrics when they were scored."""
        epoch, step, dev = self.scored or (None, None, None)
        scored = step == self.state.step
        return CheckpointInfo(
            config=OmegaConf.to_container(self.cfg, resolve=True),
            overrides=run_overrides(self.out),
            dev=dev if scored else None,
            epoch=epoch if scored else None,
            step=self.state.step,
        )

    # ---------------------------------------------------------------- the end
    def finish(self) -> float:
        """Reload the best checkpoint, score dev with it, predict test, write summary.json; then, with
        trainer.keep_last=until_done, delete checkpoints/last (summary.json first: a resumed run then skips it)."""
        s, t = self.state, self.tcfg
        dev = s.best_dev  # save_best=false: the best evaluation's figures, as metrics.jsonl has them
        # the model moved on since the best evaluation: score the saved best
        if self.dev_set is not None and t.save_best and s.best_step != s.step:
            if self.is_main:
                self.model.load_state_dict(self.checkpointer.load_best().state_dict())
            dist.broadcast_module(self.model)
            dev = self.evaluate("dev", show=True)
        predictions = self.predict() if self.test_set is not None else None
        if not self.is_main:
            return s.best["value"]
        summary = self._summary(dev, predictions)
        files.write_json(self.out / "summary.json", summary)
        if t.keep_last == "until_done":
            self.checkpointer.delete_last()
        self.callbacks.emit("on_end", self, summary)
        if dev is not None:
            log.info(
                "best %s %.4f (epoch %d, step %d); dev with best checkpoint: %s",
                *(s.best["metric"], s.best["value"], s.best["epoch"], s.best["step"]),
                " ".join(f"{k} {v:.4f}" for k, v in dev.items()),
            )
        self.metrics.close()
        return s.best["value"]

    def _summary(self, dev: dict | None, predictions: Path | None) -> dict:
        s, t = self.state, self.tcfg
        splits = {"train": self.train_set, "dev": self.dev_set, "test": self.test_set}
        return {
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
            # dataset.max_test_samples: the first N test lines only, no submission (afqmc.clue_submission)
            "predictions_partial": bool(predictions and self.cfg.dataset.get("max_test_samples")),
            "predictions_lines": self.test_set.count() if predictions else None,  # checked by afqmc.clue_submission
            "data": {
                counter: {split: getattr(ds, counter) for split, ds in splits.items() if ds is not None}
                for counter in ("skipped_lines", "no_gold_label")
            },
            "device": str(self.device),
            "precision": self.precision,
            "world_size": dist.world_size(),
            "global_batch_size": t.batch_size * t.grad_accum_steps * dist.world_size(),
            "class_weights": None if self.class_weights is None else self.class_weights.tolist(),
            "trackers": self.state.trackers,  # their run ids: afqmc.evaluate logs to the same runs
        }

    def _log(self, record: dict) -> None:
        if self.metrics is not None:  # rank 0 only
            self.metrics.append({"time": time.time(), **record})
