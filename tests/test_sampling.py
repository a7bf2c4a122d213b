"""Length-grouped training batches and length-sorted evaluation batches."""
import random

from afqmc.sampling import TrainBatchSampler, sorted_batches

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
