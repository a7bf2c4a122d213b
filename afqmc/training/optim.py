"""Optimizers and learning-rate schedules, each registered under the name its YAML gives.

torch and transformers load inside the builders: the config is checked before they have.
"""

from __future__ import annotations

from afqmc.config.registry import OPTIMIZERS, SCHEDULERS
from afqmc.config.schema import Key
from afqmc.errors import ConfigError

# The keys of each YAML (afqmc/config/schema.py), checked before anything loads.
DECAYED = {"lr": Key(float, above=0), "weight_decay": Key(float, min=0)}
ADAMW_KEYS = {
    **DECAYED,
    "eps": Key(float, above=0),
    "betas": Key(
        list,
        rule=lambda b: len(b) == 2 and all(Key(float, min=0, below=1).accepts(x) for x in b),
        says="two numbers >= 0 and < 1, e.g. [0.9, 0.999]",
    ),
}
SGD_KEYS = {**DECAYED, "momentum": Key(float, min=0, below=1), "nesterov": Key(bool)}
WARMUP_KEYS = {"warmup_ratio": Key(float, min=0, max=1), "warmup_steps": Key(int, null=True, min=0)}


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: decaying biases and LayerNorm gains only hurts (BERT's recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@OPTIMIZERS.register("adamw", schema=ADAMW_KEYS)
def build_adamw(cfg, model):
    import torch

    # fused=True: one kernel per parameter group for the whole update, on CUDA and (torch >= 2.4) on the
    # CPU, instead of a loop over the tensors (what that saves: benchmarks/RESULTS.md).
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True
    )


def nesterov_needs_momentum(cfg) -> None:
    """Checked with the schema: torch would only say so (a bare ValueError) once the model is loaded."""
    if cfg.optimizer.nesterov and not cfg.optimizer.momentum:
        raise ConfigError(
            f"optimizer.nesterov=true needs optimizer.momentum > 0; got optimizer.momentum={cfg.optimizer.momentum}"
        )


@OPTIMIZERS.register("sgd", schema=SGD_KEYS, check=nesterov_needs_momentum)
def build_sgd(cfg, model):
    import torch

    return torch.optim.SGD(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov
    )


def warmup_steps(cfg, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps)
    return int(cfg.warmup_ratio * total_steps)


@SCHEDULERS.register("linear", schema=WARMUP_KEYS)
def build_linear(cfg, optimizer, total_steps: int):
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, warmup_steps(cfg, total_steps), total_steps)


@SCHEDULERS.register("cosine", schema=WARMUP_KEYS)
def build_cosine(cfg, optimizer, total_steps: int):
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, warmup_steps(cfg, total_steps), total_steps)


@SCHEDULERS.register("constant", schema=WARMUP_KEYS)
def build_constant(cfg, optimizer, total_steps: int):
    from transformers import get_constant_schedule_with_warmup

    return get_constant_schedule_with_warmup(optimizer, warmup_steps(cfg, total_steps))
