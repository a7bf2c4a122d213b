"""Callbacks: what a run tells the code that watches it, and early stopping, the built-in one that steers it.

A callback subclasses Callback and overrides the events it wants. The trainer builds three kinds:
- the trackers of `logger` (afqmc/runs/trackers.py), on rank 0 only;
- early stopping, from trainer.early_stopping;
- those of the `callbacks` config key, `callbacks: {NAME: {its keys}}`, each built by what a plugin or
  afqmc registered as NAME (CALLBACKS in afqmc/config/registry.py):

    @CALLBACKS.register("print_loss", schema={"every": Key(int, min=1)})
    def build(cfg):  # cfg: its keys
        return PrintLoss(cfg.every)

Every rank calls its callbacks, at the same points: a callback that writes checks `trainer.is_main`.
A callback's own state does not survive a resume; what it must keep goes into a file of its own.
"""

from __future__ import annotations

import logging
from pathlib import Path

from afqmc.config.registry import CALLBACKS
from afqmc.config.schema import Key

log = logging.getLogger(__name__)


class Callback:
    def on_train_start(self, trainer) -> None:
        """Everything is built, the state is the resumed one; no step has run yet."""

    def on_train_step(self, trainer, record: dict) -> None:
        """A log step (trainer.log_every): the metrics.jsonl record {"type": "train", epoch, step, loss, lr}."""

    def on_evaluate(self, trainer, record: dict, gain: float) -> None:
        """Dev was scored: the record {"type": "eval", "split": "dev", epoch, step, **metrics}; gain > 0: a new best."""

    def on_save(self, trainer, which: str, path: Path) -> None:
        """checkpoints/`which` ("best" or "last") was written at `path` (rank 0 saves; every rank is told)."""

    def on_end(self, trainer, summary: dict) -> None:
        """The run completed; summary.json holds `summary`."""

    def on_stop(self, trainer, status: str) -> None:
        """The run ended otherwise: status "failed" or "interrupted" (a stop signal)."""


class Callbacks:
    """Several callbacks as one: emit("on_evaluate", trainer, ...) calls each in order."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = list(callbacks)

    def emit(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(*args)


class EarlyStoppingCallback(Callback):
    """Counts the evaluations that did not beat the best by more than min_delta (afqmc/training/rules.py),
    in the trainer's state, which checkpoints/last saves; at the patience, the run stops after this step."""

    def __init__(self, rule):
        self.rule = rule

    def on_evaluate(self, trainer, record: dict, gain: float) -> None:
        s = trainer.state
        if self.rule.patience is None:
            return
        s.evals_without_gain = self.rule.count(s.evals_without_gain, gain)
        if self.rule.stops(s.evals_without_gain):
            s.stopped_early = {"epoch": record["epoch"], "step": record["step"]}
            log.info(
                "early stopping at %s: dev %s not better than %.4f by more than %g for %d evaluations",
                *(trainer.when(record), s.best["metric"], s.best["value"], self.rule.min_delta, self.rule.patience),
            )


class ModelSummary(Callback):
    """callbacks=model_summary: the parameters of the model and of its modules down to `depth`, logged once."""

    def __init__(self, depth: int):
        self.depth = depth

    def on_train_start(self, trainer) -> None:
        if not trainer.is_main:
            return
        lines = []
        for name, module in trainer.model.named_modules():
            level = name.count(".") + 1 if name else 0
            if level <= self.depth:
                n = sum(p.numel() for p in module.parameters())
                trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
                lines.append(f"{'  ' * level}{name or type(module).__name__}: {n:,} parameters ({trainable:,} trained)")
        log.info("model summary:\n%s", "\n".join(lines))


@CALLBACKS.register("model_summary", schema={"depth": Key(int, min=1)})
def build_model_summary(cfg) -> ModelSummary:
    return ModelSummary(cfg.depth)
