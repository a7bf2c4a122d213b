"""A run's checkpoints: checkpoints/best and checkpoints/last written (by rank 0), and a run resumed from
checkpoints/last only when its config and data are those the checkpoint was written with. The files
themselves, and how they are verified, are afqmc/training/checkpoint.py's."""

from __future__ import annotations

import logging
from pathlib import Path

from afqmc.config.identity import config_changes, config_snapshot
from afqmc.errors import ConfigError, DataError
from afqmc.runs.records import resume_command
from afqmc.training import checkpoint
from afqmc.training import distributed as dist
from afqmc.training.checkpoint import BEST, LAST, STATE, TrainState

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, out: Path, cfg, label_names: list[str]):
        self.out = out  # the run directory
        self.cfg = cfg
        self.model_name = cfg.model.name  # whose registered save and load write and read the weights
        self.label_names = label_names  # written into each checkpoint.json
        self.keep_last = cfg.trainer.keep_last

    def save_best(self, model, tokenizer, run) -> Path:
        path = self.out / BEST
        if dist.is_main():
            checkpoint.save(path, self.model_name, model, tokenizer, run=run, labels=self.label_names)
        return path

    def save_last(self, model, tokenizer, state: TrainState, run) -> Path:
        """checkpoints/last: the weights and `state`, all a resumed run needs (rank 0 only)."""
        path = self.out / LAST
        checkpoint.save(path, self.model_name, model, tokenizer, state, run, labels=self.label_names)
        return path

    def load_best(self):
        return checkpoint.load_model(self.out / BEST)

    def delete_last(self) -> None:
        checkpoint.delete(self.out / LAST)

    def how_to_resume(self) -> str:
        if self.keep_last == "never":
            if (self.out / LAST).exists():  # a run resumed with keep_last=never: the older checkpoint stays
                return f"not saved (trainer.keep_last=never); {self.out / LAST} is older; go on from it with: " + (
                    resume_command(self.out)
                )
            return "nothing saved (trainer.keep_last=never), so a resumed run starts afresh"
        return f"saved {self.out / LAST}; go on with: {resume_command(self.out)}"

    def resume(self, data: dict) -> tuple[TrainState, object] | None:
        """(state, model) of checkpoints/last, its files verified, after checking that the run goes on with
        the config and the `data` (each split's fingerprint) it was written with; None when there is none."""
        path = checkpoint.find_last(self.out)
        if path is None:
            log.info("trainer.resume=true but no %s: starting from scratch", self.out / LAST)
            return None
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
            if (now := data.get(split)) and (was["examples"], was["sha256"]) != (now["examples"], now["sha256"])
        ]
        if changed:  # the same steps over other pairs would be neither this run nor a new one
            raise DataError(
                f"trainer.resume=true, but the data changed since {path} was written: {'; '.join(changed)}. "
                "Resume on the data the run started with, or start it afresh with trainer.overwrite=true"
            )
        log.info("resuming from %s: epoch %d, batch %d, step %d", path, state.epoch, state.batch, state.step)
        return state, model
