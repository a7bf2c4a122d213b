"""One forward pass over a split: every example's logits, in the split's order. The trainer (dev and test),
afqmc.evaluate and afqmc.predict all score through it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch

from afqmc.training import distributed as dist
from afqmc.training.progress import progress


def logits_of(output) -> torch.Tensor:
    """The model contract (afqmc/config/registry.py): forward returns the logits, or an output with .logits."""
    return output.logits if hasattr(output, "logits") else output


class Evaluator:
    def __init__(self, model, device: torch.device, autocast: Callable = contextlib.nullcontext):
        self.model = model  # the module scored: the trained one, perhaps compiled, never DDP's wrapper
        self.device = device
        self.autocast = autocast  # the run's precision

    @torch.inference_mode()
    def forward_all(
        self, batches: Iterable[dict], total: int | None = None, desc: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(indices, logits, labels or None), sorted by index. Each batch holds the model's inputs, "index"
        (the examples' positions in the split) and, where the split has them, "labels". Under torchrun each
        rank scores its share of the batches and every rank gets them all. `desc`: show progress."""
        self.model.eval()
        indices, logits, labels = [], [], []
        for batch in progress(batches, total, desc) if desc and dist.is_main() else batches:
            indices.append(batch.pop("index"))
            y = batch.pop("labels", None)
            inputs = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with self.autocast():
                logits.append(logits_of(self.model(**inputs)).float().cpu())
            if y is not None:
                labels.append(y)
        parts = dist.gather([torch.cat(x) for x in (indices, logits, labels) if x])  # a rank may have no batch
        indices, logits, *labels = (torch.cat(column) for column in zip(*[p for p in parts if p]))
        order = indices.argsort()
        return indices[order], logits[order], labels[0][order] if labels else None
