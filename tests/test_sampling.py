"""Length-grouped training batches, length-sorted evaluation batches, batches split by length."""

import random

import torch

from afqmc.data.sampling import TrainBatchSampler, sorted_batches, split_by_length
from afqmc.models.modeling import BertForPairwiseCLS

_rng = random.Random(0)
LENGTHS = [_rng.randint(5, 60) for _ in range(1000)]


def padding(batches, lengths=LENGTHS):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_every_index_once_per_epoch_in_full_batches():
    for grouped in (True, False):
        batches = list(TrainBatchSampler(LENGTHS, 32, seed=1, group_by_length=grouped))
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert len(batches) == len(TrainBatchSampler(LENGTHS, 32, seed=1)) == 32
        assert sum(len(b) != 32 for b in batches) == 1  # only one short batch: 1000 = 31 * 32 + 8


def test_grouping_cuts_padding_and_keeps_randomness():
    grouped = TrainBatchSampler(LENGTHS, 32, seed=1, group_by_length=True, mega_batches=10)
    random_ = TrainBatchSampler(LENGTHS, 32, seed=1, group_by_length=False)
    assert padding(grouped) < padding(random_) / 4
    first = list(grouped)
    grouped.set_epoch(1)
    assert list(grouped) != first  # a new order each epoch...
    grouped.set_epoch(0)
    assert list(grouped) == first  # ...reproducible from (seed, epoch) alone
    assert list(TrainBatchSampler(LENGTHS, 32, seed=2, group_by_length=True, mega_batches=10)) != first


def test_eval_batches_sorted_longest_first():
    batches = sorted_batches(LENGTHS, 100)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    flat = [LENGTHS[i] for b in batches for i in b]
    assert flat == sorted(LENGTHS, reverse=True)


def test_ranks_split_the_batches_evenly():
    """Under torchrun each rank takes every world-th batch of the same order: no pair on two ranks."""
    ranks = [list(TrainBatchSampler(LENGTHS, 32, seed=1, rank=r, world=3)) for r in range(3)]
    assert [len(b) for b in ranks] == [10, 10, 10]  # 32 batches: the last 2 sit the epoch out
    seen = [i for batches in ranks for b in batches for i in b]
    assert len(seen) == len(set(seen))


def padded_batch(lengths):
    """A right-padded batch as the collator makes it: ids 1..len, then 0."""
    width = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    ids = mask * torch.arange(1, width + 1)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.tensor([i % 2 for i in range(len(lengths))]),
    }


def test_split_by_length_cuts_padding_only_where_it_pays():
    even = padded_batch([20, 19, 21, 20] * 8)
    assert split_by_length(even, 0.25) == [even]  # little padding: one piece, as it came
    outlier = padded_batch([113] + [30 + i % 8 for i in range(31)])
    assert split_by_length(outlier, None) == [outlier]
    pieces = split_by_length(outlier, 0.25)
    assert len(pieces) == 2 and [len(p["labels"]) for p in pieces] == [1, 31]
    assert [p["input_ids"].shape[1] for p in pieces] == [113, 37]  # each cut to its longest pair
    rows = {tuple(r[r > 0].tolist()) for p in pieces for r in p["input_ids"]}  # every pair kept whole
    assert rows == {tuple(r[r > 0].tolist()) for r in outlier["input_ids"]}
    assert sum(p["attention_mask"].sum() for p in pieces) == outlier["attention_mask"].sum()


def test_pieces_give_the_batch_gradient(tiny_bert_dir):
    model = BertForPairwiseCLS.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batch = padded_batch([60] + [8 + i % 5 for i in range(15)])
    batch["input_ids"] = batch["input_ids"].clamp(max=model.config.vocab_size - 1)

    def grads(pieces):
        model.zero_grad()
        for p in pieces:
            (model(**p).loss * len(p["labels"]) / len(batch["labels"])).backward()
        return torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None])

    pieces = split_by_length(batch, 0.25)
    assert len(pieces) > 1
    assert torch.allclose(grads(pieces), grads([batch]), atol=1e-6)
