"""What a run keeps on disk, and how it is written: checkpoints, the training state, metrics.jsonl.

A checkpoint is a directory: the model as its registration saves it (afqmc/registry.py), its tokenizer,
`checkpoint.json` naming the registered model, and, in checkpoints/last, the TrainState (`state.pt`).
Every file and directory a run writes goes through atomic_write, so a reader, or a process killed at
any point, finds the old version or the new one, never half of one. state.pt holds tensors and plain
containers only and is read with torch.load(weights_only=True): reading a checkpoint runs no code.

torch is imported inside the functions that use it: run.py's config check and the run records
(afqmc/runs.py) import this module before torch has loaded.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

BEST = Path("checkpoints") / "best"
LAST = Path("checkpoints") / "last"
STATE = "state.pt"  # checkpoints/last's TrainState, beside the weights
MANIFEST = "checkpoint.json"  # {"model": the registered model name}: how to load the weights
# Keys that may differ between a run and its resumption: they change nothing of the trajectory.
FREE_KEYS = {
    "trainer.resume",
    "trainer.save_every_steps",
    "trainer.num_workers",
    "trainer.predict",
    "trainer.cpu_threads",
}


# ---------------------------------------------------------------- atomic writes
def _aside(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yields a temp path beside `path` to write a file or a directory at; when the block ends without
    an error, it takes `path`'s place. A file is swapped in by one rename; a directory by two, the old
    copy renamed aside first, and recover() puts it back after a kill between the two."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _aside(path, "tmp")
    _remove(tmp)  # left by a process killed while writing
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir() and path.exists():
        old = _aside(path, "old")
        _remove(old)  # left by a kill after a swap: path is whole, this is stale
        path.rename(old)
        tmp.rename(path)  # killed between these two renames: old is the whole previous copy
        _remove(old)
    else:
        tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def recover(path: Path) -> None:
    """Puts back the copy that a directory swap (atomic_write) had renamed aside when it was killed."""
    old = _aside(path, "old")
    if not path.exists() and old.is_dir():
        old.rename(path)


# ---------------------------------------------------------------- checkpoints
@dataclass
class TrainState:
    """Where a run is and what it has earned; checkpoints/last adds the states that make the rest of
    the run what it would have been had it never stopped."""

    epoch: int = 1  # the epoch to go on in ...
    batch: int = 0  # ... past this many of its batches
    step: int = 0  # optimizer steps done
    samples: int = 0  # training pairs seen, on all ranks
    train_seconds: float = 0.0  # training time only: no loading, evaluation or saving
    best: dict | None = None  # {"epoch", "metric", "value"} of the best evaluation so far
    best_dev: dict | None = None  # its dev metrics
    best_step: int | None = None  # the optimizer step it was made at
    running_loss: Any = None  # the train loss's moving average (a tensor); None at an epoch's start
    metrics_offset: int = 0  # metrics.jsonl's size at the save: a resumed run writes what follows again
    optimizer: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    scaler: dict = field(default_factory=dict)
    rng: list = field(default_factory=list)  # each rank's generator states (rng_state)
    config: dict = field(default_factory=dict)  # the run's resolved config, flat (config_snapshot)

    def save(self, path: Path) -> None:
        import torch

        torch.save(dict(vars(self)), path)

    @classmethod
    def load(cls, path: Path) -> TrainState:
        import torch

        return cls(**torch.load(path, map_location="cpu", weights_only=True))

    def progress(self) -> TrainState:
        """The counters alone, without the optimizer, scheduler, scaler and generator states."""
        return replace(self, optimizer={}, scheduler={}, scaler={}, rng=[], config={})


def save(path: Path, model_name: str, model, tokenizer, state: TrainState | None = None) -> None:
    """The model (by its registration's save), its tokenizer and, for checkpoints/last, the TrainState."""
    from .registry import MODELS

    with atomic_write(path) as tmp:
        MODELS.component(model_name).hooks["save"](model, tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps({"model": model_name}) + "\n", encoding="utf-8")
        if state is not None:
            state.save(tmp / STATE)


def load_model(path: Path):
    """The model saved at `path`, on the CPU in eval mode, loaded by its registration's load."""
    from .registry import MODELS

    manifest = Path(path) / MANIFEST
    # checkpoints written before checkpoint.json existed hold the one model there was then
    name = json.loads(manifest.read_text(encoding="utf-8"))["model"] if manifest.is_file() else "bert_pair_cls"
    return MODELS.component(name).hooks["load"](Path(path))


def find_last(run_dir: Path) -> Path | None:
    """checkpoints/last, if a run wrote one (checkpoints/best is put back too, if a kill left it aside)."""
    for path in (run_dir / LAST, run_dir / BEST):
        recover(path)
    return run_dir / LAST if (run_dir / LAST / STATE).is_file() else None


# ---------------------------------------------------------------- what a resumed run must equal
def rng_state(device) -> dict:
    """Python's, NumPy's and torch's generator states (dropout draws from torch's)."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict, device) -> None:
    import numpy as np
    import torch

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


# ---------------------------------------------------------------- metrics.jsonl
class MetricsLog:
    """metrics.jsonl: one JSON record a line, flushed as written. A resumed run opens it at the offset
    its checkpoint recorded: the records past that offset are of steps it replays, and go."""

    def __init__(self, path: Path, offset: int | None = None):
        if offset is not None and path.exists():
            with open(path, "r+b") as f:
                f.truncate(offset)
        self._file = open(path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def offset(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
