"""Batch orders: length-grouped for training, length-sorted for evaluation.

Sentence pairs are short and of very different lengths (AFQMC's: benchmarks/RESULTS.md), so random
batches padded to their longest member waste much of the compute on padding; batches of similar
lengths waste little.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class TrainBatchSampler(Sampler[list[int]]):
    """Shuffled batches of dataset indices, reproducible per (seed, epoch): call set_epoch() each epoch.
    set_epoch(epoch, start=k) leaves out the epoch's first k batches (a run resumed mid-epoch).

    group_by_length: shuffle, cut into mega-batches of `mega_batches` batches, sort each mega-batch by
    length and cut it into batches, then shuffle the batches. Randomness stays (which pairs meet, batch
    order), padding nearly goes. This is the Trainer's group_by_length scheme.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        seed: int,
        group_by_length: bool = True,
        mega_batches: int = 50,
        rank: int = 0,
        world: int = 1,
    ):
        self.lengths, self.batch_size, self.seed = torch.tensor(lengths), batch_size, seed
        self.group_by_length, self.mega = group_by_length, mega_batches * batch_size
        self.rank, self.world = rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:  # the whole epoch's batches, whatever `start`: the LR schedule counts them all
        return -(-len(self.lengths) // self.batch_size) // self.world

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g)
        batches = list(order.split(self.batch_size))
        if self.group_by_length:
            batches = []
            for mega in order.split(self.mega):
                mega = mega[self.lengths[mega].argsort(descending=True, stable=True)]
                batches += mega.split(self.batch_size)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g)]
        # Every rank draws the same order and takes every world-th batch; the last len % world batches
        # (random ones) sit this epoch out so that all ranks run the same number of steps.
        batches = batches[: len(self) * self.world][self.rank :: self.world]
        return iter([b.tolist() for b in batches[self.start :]])


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches, longest first: minimal padding, and an out-of-memory shows up at once."""
    order = torch.tensor(lengths).argsort(descending=True, stable=True)
    return [b.tolist() for b in order.split(batch_size)]


def split_by_length(batch: dict, min_saving: float | None, max_pieces: int = 4) -> list[dict]:
    """A padded batch as up to `max_pieces` pieces of similar-length pairs, each cut to its own longest
    pair, when a cut saves at least `min_saving` of the batch's padded tokens; else [batch].

    The gradient is the same (the loss is a mean over pairs: the caller weights each piece's mean by
    its share). What it saves: one long pair no longer pads 31 short ones to its length, in the
    linear layers (linear in length) and in attention (quadratic).
    """
    lengths = batch["attention_mask"].sum(1)
    order = lengths.argsort(descending=True, stable=True)
    lengths, n = lengths[order].tolist(), len(order)
    cuts, enough = [0, n], min_saving * n * lengths[0] if min_saving is not None else float("inf")
    while len(cuts) - 1 < max_pieces:
        # cutting [a, b) (longest first) at k saves (b - k) * (lengths[a] - lengths[k]) padded tokens
        saving, cut = (
            max(((b - k) * (lengths[a] - lengths[k]), k) for a, b in zip(cuts, cuts[1:]) for k in range(a + 1, b))
            if n > 1
            else (0, 0)
        )
        if saving < enough:
            break
        cuts = sorted(cuts + [cut])
    if len(cuts) == 2:
        return [batch]
    return [
        {k: v[order[a:b]][:, : lengths[a]] if v.dim() == 2 else v[order[a:b]] for k, v in batch.items()}
        for a, b in zip(cuts, cuts[1:])
    ]
