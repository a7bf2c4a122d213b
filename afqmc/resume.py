"""What checkpoints/last holds besides the weights, so that a killed run can go on where it was.

The Trainer writes and reads checkpoints/last (afqmc/trainer.py); this module holds the pieces that
know nothing of training: random number generator states, the config a run was started with, and
where a checkpoint directory is after a crash. Everything here is tensors and plain containers, so
that the state loads with torch.load(..., weights_only=True): reading a checkpoint runs no code.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

LAST = Path("checkpoints") / "last"
STATE = "state.pt"  # in checkpoints/last, beside the model's safetensors
# Keys that may differ between a run and its resumption: they change nothing of the trajectory.
FREE_KEYS = {
    "trainer.resume",
    "trainer.save_every_steps",
    "trainer.num_workers",
    "trainer.predict",
    "trainer.cpu_threads",
}


def rng_state(device: torch.device) -> dict:
    """Python's, NumPy's and torch's generator states (dropout draws from torch's)."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


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
    """'key: saved -> now' for each key (but FREE_KEYS) whose value differs."""
    keys = sorted((saved.keys() | now.keys()) - FREE_KEYS)
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def restore(path: Path) -> None:
    """Puts back the copy that a save (Trainer.save) was swapping out when it was killed between its
    two renames: path is missing then, and its previous version is whole at .NAME.old."""
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.is_dir():
        old.rename(path)


def find_last(run_dir: Path) -> Path | None:
    """checkpoints/last, if a run wrote one (checkpoints/best restored too, if a kill left it aside)."""
    for path in (run_dir / LAST, run_dir / "checkpoints" / "best"):
        restore(path)
    return run_dir / LAST if (run_dir / LAST / STATE).is_file() else None
