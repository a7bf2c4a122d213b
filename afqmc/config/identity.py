"""A run's config as flat {dotted key: value}, and the keys that change nothing of what a run trains:
a resumption may change them, and they are no part of a job's identity in a sweep.

Light on purpose (no torch): the run records use it before anything loads.
"""

from __future__ import annotations

from omegaconf import OmegaConf

# Keys that may differ between a run and its resumption: they change nothing of the trajectory.
FREE_KEYS = {
    "trainer.resume",
    "trainer.save_every_steps",
    "trainer.num_workers",
    "trainer.predict",
    "trainer.overwrite",
    "trainer.keep_last",
    "trainer.dist_timeout_s",
    "plugins",  # the modules that register components: the components chosen are compared themselves
}
FREE_GROUPS = ("logger.", "card.")  # trackers watch a run, the model card describes it: neither changes what it trains
# Not trainer.cpu_threads: torch does not promise the same reduction order across thread counts (a resume
# with another count trained to other weights), so a resume must keep it.
# Values renamed since a run may have been recorded: the old name means the new one.
RENAMED = {("model.pooling", "pooler"): "auto"}  # BERT's own head (its pooler) is the architecture's own head


def is_free(key: str) -> bool:
    """Whether an override's key (`trainer.resume`, `+logger.mlflow.x`) or config group (`logger`, `~logger`)
    changes nothing of what a run trains: left out of a job's identity, of a resume's comparison and of the
    report's grouping."""
    key = key.lstrip("~+")
    return key in FREE_KEYS or any(key == group.rstrip(".") or key.startswith(group) for group in FREE_GROUPS)


def config_snapshot(cfg) -> dict:
    """The resolved config as flat {dotted key: value}, to compare a resumption with its run."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def config_changes(saved: dict, now: dict) -> list[str]:
    """'key: saved -> now' for each key of the saved config (but FREE_KEYS and FREE_GROUPS) whose value differs.
    A key the saved config lacks is an option added to afqmc since the run was recorded: its default keeps
    what the run did before the option existed, so a run recorded by an older version still resumes."""
    keys = sorted(k for k in saved.keys() - FREE_KEYS if not k.startswith(FREE_GROUPS))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if _named(k, saved) != _named(k, now)]


def _named(key: str, config: dict):
    value = config.get(key)
    return RENAMED.get((key, value), value) if not isinstance(value, list) else value  # (a list: no old name)
