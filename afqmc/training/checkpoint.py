"""What a run keeps on disk, and how it is written: checkpoints, the training state, metrics.jsonl.

A checkpoint is a directory: the model as its registration saves it (afqmc/config/registry.py), its tokenizer,
in checkpoints/last the TrainState (`state.pt`), the run's config and a model card (afqmc/runs/card.py),
and `checkpoint.json`, written last, naming the registered model and the sha256 of every other file: a
file changed or cut short after the save is found before it is used. Every file and directory a run
writes goes through atomic_write, so a reader, or a process killed at any point, finds the old version
or the new one, never half of one. state.pt holds tensors and plain containers only and is read with
torch.load(weights_only=True): reading a checkpoint runs no code.

torch is imported inside the functions that use it: run.py's config check and the run records
(afqmc/runs/records.py) import this module before torch has loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from afqmc.errors import CheckpointError, error_line
from afqmc.files import _aside, _remove, atomic_write, recover, sha256

log = logging.getLogger(__name__)
BEST = Path("checkpoints") / "best"
LAST = Path("checkpoints") / "last"
STATE = "state.pt"  # checkpoints/last's TrainState, beside the weights
CARD = "README.md"  # the model card: people edit it before they share a checkpoint, and nothing loads it, so no sha256
TRUST_UNVERIFIED = "AFQMC_TRUST_UNVERIFIED_CHECKPOINT"  # =1: a checkpoint without its manifest is used unverified
MANIFEST = "checkpoint.json"  # {"model": the registered model's name, "files": {file: sha256}}


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
    best: dict | None = None  # {"epoch", "step", "metric", "value"} of the best evaluation so far
    best_dev: dict | None = None  # its dev metrics
    best_step: int | None = None  # the optimizer step it was made at
    running_loss: Any = None  # each rank's moving average of its train loss (tensors); None at an epoch's start
    metrics_offset: int = 0  # metrics.jsonl's size at the save: a resumed run writes what follows again ...
    metrics_sha256: str = ""  # ... after checking that what precedes is what was there
    data: dict = field(default_factory=dict)  # each split's fingerprint: a resume on other data is refused
    evals_without_gain: int = 0  # early stopping's count: evaluations in a row that did not beat the best by min_delta
    stopped_early: dict | None = None  # {"epoch", "step"} where early stopping ended the run
    trackers: dict = field(default_factory=dict)  # each tracker's run id (afqmc/runs/trackers.py): resumed, it goes on
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

        try:
            return cls(**torch.load(path, map_location="cpu", weights_only=True))
        except pickle.UnpicklingError as e:  # torch's own message would advise weights_only=False: never
            if "Unsupported global" not in str(e):  # random bytes, a file cut short: no pickle of objects at all
                why = (str(e).split("error:")[-1].strip().splitlines() or ["unreadable"])[0]
                raise CheckpointError(f"{path}: corrupt, not a torch file of tensors ({why}). " + _WHAT_TO_DO) from None
            raise CheckpointError(
                f"{path}: holds objects other than tensors and plain containers; not loaded, "
                "since loading it could run code. " + _WHAT_TO_DO
            ) from None
        except (OSError, RuntimeError, EOFError, ValueError, TypeError) as e:
            raise CheckpointError(
                f"{path}: not a training state this version can read ({error_line(e)}). " + _WHAT_TO_DO
            ) from None

    def progress(self) -> TrainState:
        """The counters alone, without the optimizer, scheduler, scaler and generator states."""
        return replace(self, optimizer={}, scheduler={}, scaler={}, rng=[], config={})


_WHAT_TO_DO = (
    "Move the checkpoint aside to resume from the one before it (or from scratch), or start the run afresh with "
    "trainer.overwrite=true"
)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save(path: Path, model_name: str, model, tokenizer, state: TrainState | None = None, run=None, labels=None) -> None:
    """The model (by its registration's save, into the directory made here), its tokenizer, with `run` (an
    afqmc.runs.card.CheckpointInfo) the run's config and a model card, for checkpoints/last the TrainState;
    checkpoint.json last, with the registered model's name, the raw label of each class and every file's sha256."""
    try:
        _write(path, model_name, model, tokenizer, state, run, labels)
    except Exception as e:
        if not _a_write_failure(e):
            raise
        raise CheckpointError(
            f"{path}: could not be written ({error_line(e)}); is the disk full? A copy it held before is whole"
        ) from None


def _a_write_failure(e: Exception) -> bool:
    """The ways a full disk (or a directory that cannot be written) shows while a checkpoint is saved: an
    OSError, torch.save's RuntimeError ("file write failed"), safetensors' SafetensorError (an IoError)."""
    from safetensors import SafetensorError

    return isinstance(e, (OSError, SafetensorError)) or (isinstance(e, RuntimeError) and "write" in str(e).lower())


def _write(path: Path, model_name: str, model, tokenizer, state, run, labels) -> None:
    from afqmc.config.registry import MODELS

    with atomic_write(path) as tmp:
        tmp.mkdir()
        MODELS.component(model_name).hooks["save"](model, tmp)
        tokenizer.save_pretrained(tmp)
        if run is not None:
            run.write(tmp)
        if state is not None:
            state.save(tmp / STATE)
        mode = 0o666 & ~_umask()  # as any file the run writes: safetensors writes its own 0600
        files = {}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            f.chmod(mode)
            if (name := f.relative_to(tmp).as_posix()) != CARD:
                files[name] = sha256(f)
        (tmp / MANIFEST).write_text(
            json.dumps({"model": model_name, "labels": labels, "files": files}, indent=1) + "\n", encoding="utf-8"
        )


def verify(path: Path) -> dict:
    """checkpoint.json of the checkpoint at `path`, after checking each file it lists against its sha256."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: {'not a directory' if path.exists() else 'missing'}; a checkpoint is a directory. " + _WHAT_TO_DO
        )
    manifest = path / MANIFEST
    if not manifest.is_file():  # deleted, or written before checkpoint.json existed: nothing to check it against
        if os.environ.get(TRUST_UNVERIFIED) != "1":
            raise CheckpointError(
                f"{path} has no {MANIFEST}, so its files cannot be verified (a flipped bit would go unnoticed): "
                f"{TRUST_UNVERIFIED}=1 uses it unverified, if you trust it"
            )
        log.warning("%s has no %s: its files are not verified (%s=1)", path, MANIFEST, TRUST_UNVERIFIED)
        return {"model": "bert_pair_cls", "files": {}}  # the one model there was before checkpoint.json
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
        model, files = info["model"], dict(info["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest}: unreadable ({error_line(e)}). " + _WHAT_TO_DO) from None
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (written with the checkpoint, gone since). " + _WHAT_TO_DO)
        if sha256(file) != digest:
            raise CheckpointError(
                f"{file}: its content differs from what was written (sha256 {digest[:12]}..., "
                "now another): the file is corrupt or was changed. " + _WHAT_TO_DO
            )
    return {"model": model, "files": files}


def load_model(path: Path):
    """The model saved at `path`, its files verified, on the CPU in eval mode, by its registration's load."""
    from safetensors import SafetensorError

    from afqmc.config.registry import MODELS

    name = verify(path)["model"]
    try:
        model = MODELS.component(name).hooks["load"](Path(path))
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        weights = ", ".join(sorted(f.name for f in Path(path).glob("*.safetensors"))) or "no weights file"
        raise CheckpointError(
            f"{path}: the {name} model cannot be loaded from its files ({weights}): {error_line(e)}. " + _WHAT_TO_DO
        ) from None
    return model.eval()


def label_names(path: Path, model) -> list[str]:
    """The raw label of each class index: checkpoint.json's, or (written before it named them) the
    transformers config's id2label."""
    manifest = Path(path) / MANIFEST
    labels = json.loads(manifest.read_text(encoding="utf-8")).get("labels") if manifest.is_file() else None
    if labels is None:
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return [str(label) for label in labels]


def load_tokenizer(path: Path, model):
    """The tokenizer saved with the model. A transformers model's config is handed over: AutoTokenizer would
    otherwise read config.json to choose the tokenizer's class, and fail on a model type it does not know."""
    from transformers import AutoTokenizer, PretrainedConfig

    config = getattr(model, "config", None)
    kwargs = {"config": config} if isinstance(config, PretrainedConfig) else {}
    # An explicit False: None would prompt "run the custom code? [y/N]" on a terminal.
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, **kwargs)


def delete(path: Path) -> None:
    """A checkpoint directory, with any copy a killed swap left beside it."""
    for p in (path, _aside(path, "tmp"), _aside(path, "old")):
        _remove(p)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()  # checkpoints/ itself, once nothing is left in it


def find_last(run_dir: Path) -> Path | None:
    """checkpoints/last, if a run wrote one (checkpoints/best is put back too, if a kill left it aside).
    Whether it is whole is for verify() to say: what is there is never taken for nothing."""
    for path in (run_dir / LAST, run_dir / BEST):
        recover(path)
    return run_dir / LAST if (run_dir / LAST).exists() else None


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


# ---------------------------------------------------------------- metrics.jsonl
class MetricsLog:
    """metrics.jsonl: one JSON record a line, flushed as written, and the sha256 of all written so far.

    A resumed run opens it at the offset its checkpoint recorded, after checking that the bytes before
    it are those the checkpoint saw (their sha256): the records past that offset are of steps the run
    replays, and go. A file cut short or changed before the offset stops the resume."""

    def __init__(self, path: Path, offset: int = 0, sha256: str = ""):
        path.touch()
        with open(path, "r+b") as f:
            head = f.read(offset)
            self._digest = hashlib.sha256(head)
            if len(head) < offset:
                raise CheckpointError(
                    f"{path}: {len(head):,} bytes, but checkpoints/last was written when it had {offset:,}: records "
                    "written before the checkpoint are lost. Put the file back, or start the run afresh with "
                    "trainer.overwrite=true"
                )
            if sha256 and self._digest.hexdigest() != sha256:
                raise CheckpointError(
                    f"{path}: its first {offset:,} bytes differ from those checkpoints/last was written after: the "
                    "records were changed. Put the file back, or start the run afresh with trainer.overwrite=true"
                )
            f.truncate(offset)
        self._file = open(path, "ab")

    def append(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode("utf-8")
        self._file.write(line)
        self._file.flush()
        self._digest.update(line)

    def offset(self) -> int:
        return self._file.tell()

    def sha256(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        self._file.close()
