"""The trainer group (conf/trainer/): its keys and the registered training recipe.

The keys are checked before torch loads (afqmc/config/schema.py); the recipe itself, afqmc/training/trainer.py,
is imported when a run builds it.
"""

from __future__ import annotations

import math
import re

from afqmc.config.registry import TRAINERS
from afqmc.config.schema import Key
from afqmc.errors import ConfigError

METRICS = ("accuracy", "f1_macro", "f1_pos", "precision_pos", "recall_pos", "loss")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KEEP_LAST = ("until_done", "always", "never")
TRAINER_KEYS = {  # conf/trainer/default.yaml
    "epochs": Key(int, min=1),
    "max_steps": Key(int, null=True, min=1),
    "batch_size": Key(int, min=1),
    "eval_batch_size": Key(int, min=1),
    "grad_accum_steps": Key(int, min=1),
    "max_grad_norm": Key(float, null=True, above=0),
    "precision": Key(str, choices=PRECISIONS),
    "device": Key(str, rule=lambda d: re.fullmatch(r"auto|cpu|cuda(:\d+)?", d), says="auto, cpu, cuda or cuda:N"),
    "seed": Key(int, min=0, max=2**32 - 1),  # NumPy's seed range
    "log_every": Key(int, min=1),
    "metric": Key(str, choices=METRICS),
    "num_workers": Key(int, min=0),
    "predict": Key(bool),
    "group_by_length": Key(bool),
    "compile": Key(bool),
    "split_padding": Key(float, null=True, above=0, max=1),
    "fast_dropout": Key(bool),
    "cpu_threads": Key(int, null=True, min=1),
    "save_every_steps": Key(int, null=True, min=1),
    "resume": Key(bool),
    "overwrite": Key(bool),
    "eval_every_steps": Key(int, null=True, min=1),
    "early_stopping": Key(dict, keys={"patience": Key(int, null=True, min=1), "min_delta": Key(float, min=0)}),
    "keep_last": Key(str, choices=KEEP_LAST),
    "save_best": Key(bool),
    "label_smoothing": Key(float, min=0, below=1),
    "class_weights": Key(
        object,
        null=True,
        rule=lambda w: w == "balanced" or (isinstance(w, list) and w and all(_positive(x) for x in w)),
        says="null, 'balanced' or a list of positive numbers, one per label",
    ),
    "dist_timeout_s": Key(float, above=0),
}


def metric_fits_labels(cfg) -> None:
    """The *_pos metrics (of label 1) exist for two classes only: otherwise a KeyError after the first epoch."""
    n = len(cfg.dataset.label_map)
    if cfg.trainer.metric.endswith("_pos") and n != 2:
        raise ConfigError(
            f"trainer.metric={cfg.trainer.metric!r} needs 2 labels, dataset.label_map has {n}; "
            "allowed: accuracy, f1_macro, loss"
        )


def predictions_need_the_best(cfg) -> None:
    """Test predictions come from the best checkpoint; save_best=false writes none. The last model instead
    would give predictions that summary.json's dev figures do not describe."""
    t = cfg.trainer
    if t.predict and not t.save_best and cfg.dataset.splits.get("test"):
        raise ConfigError(
            "trainer.save_best=false leaves no best checkpoint to predict the test split with; "
            "set trainer.predict=false too (or trainer.save_best=true)"
        )


def evaluations_need_a_dev_split(cfg) -> None:
    """Without a dev split (dataset.splits.dev=null) the best checkpoint is the last: nothing to score
    every N steps, nothing for early stopping to watch."""
    t = cfg.trainer
    if cfg.dataset.splits.get("dev") is None:
        if not t.save_best:  # the model at the end of training is the run's only result
            raise ConfigError(
                "trainer.save_best=false with dataset.splits.dev=null would keep no model (no dev figures "
                "either): allowed without a dev split: trainer.save_best=true"
            )
        for key, value in (
            ("eval_every_steps", t.eval_every_steps),
            ("early_stopping.patience", t.early_stopping.patience),
        ):
            if value is not None:
                raise ConfigError(
                    f"trainer.{key}={value} needs a dev split, and dataset.splits.dev=null; "
                    f"allowed without one: trainer.{key}=null"
                )


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def class_weights_fit_labels(cfg) -> None:
    """A list of class weights has one weight per label: torch would fail in the first step, or, a weight short,
    silently weigh the classes other than meant."""
    weights, n = cfg.trainer.get("class_weights"), len(cfg.dataset.label_map)
    if weights is not None and weights != "balanced" and len(weights) != n:
        raise ConfigError(
            f"trainer.class_weights has {len(weights)} weights, dataset.label_map {n} labels; expected one weight "
            "per label, in the order of the labels' indices, or trainer.class_weights=balanced"
        )


def device_exists(cfg) -> None:
    """trainer.device=cuda, or fp16, on a machine without CUDA: refused by the config check, before the run
    claims a directory (refused later, it left a failed run that blocked a re-run into the same directory)."""
    t = cfg.trainer
    if t.precision == "fp16" and t.device == "cpu":
        raise ConfigError("trainer.precision=fp16 needs CUDA; allowed with trainer.device=cpu: auto, fp32, bf16")
    if not (str(t.device).startswith("cuda") or t.precision == "fp16"):
        return
    import torch

    if torch.cuda.is_available():
        return
    if str(t.device).startswith("cuda"):
        raise ConfigError(f"trainer.device={t.device!r} but CUDA is not available; allowed here: auto, cpu")
    raise ConfigError("trainer.precision=fp16 needs CUDA, which is not available; allowed on CPU: auto, fp32, bf16")


def check_trainer(cfg) -> None:
    device_exists(cfg)
    metric_fits_labels(cfg)
    class_weights_fit_labels(cfg)
    predictions_need_the_best(cfg)
    evaluations_need_a_dev_split(cfg)


@TRAINERS.register("default", schema=TRAINER_KEYS, check=check_trainer)
def build_trainer(cfg, output_dir):
    from afqmc.training.trainer import Trainer

    return Trainer(cfg, output_dir)
