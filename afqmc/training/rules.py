"""The two decisions an evaluation feeds, as small pure objects: is it a new best, and has the run stopped
improving. The trainer keeps their state (TrainState.best, .evals_without_gain), so a resumed run decides
as the uninterrupted one would have."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BestRule:
    """The best evaluation is the one with the best trainer.metric (the loss is better lower)."""

    metric: str

    def gain(self, value: float, best: float | None) -> float:
        """How much better `value` is than `best` (> 0: a new best). A difference in the last bits of a float
        (the same predictions summed in another order) is no improvement."""
        if best is None:
            return math.inf
        if math.isclose(value, best, rel_tol=1e-9, abs_tol=1e-12):
            return 0.0
        return (value - best) * (-1 if self.metric == "loss" else 1)


@dataclass(frozen=True)
class EarlyStopping:
    """trainer.early_stopping: stop after `patience` evaluations in a row that did not beat the best by more
    than `min_delta` (patience None: never)."""

    patience: int | None
    min_delta: float = 0.0

    def count(self, evals_without_gain: int, gain: float) -> int:
        """The count after an evaluation with this gain."""
        return 0 if gain > self.min_delta else evals_without_gain + 1

    def stops(self, evals_without_gain: int) -> bool:
        return self.patience is not None and evals_without_gain >= self.patience
