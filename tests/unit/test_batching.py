"""Length-grouped batches (train/core.py): every row once per epoch, less padding, still
shuffled."""

import random

from cai_ray.train.core import batches


def padded(bs, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)


def test_grouping_keeps_every_row_and_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.randint(10, 400) for _ in range(512)]
    items = list(range(512))
    plain = batches(items, 8, seed=1, epoch=0)
    grouped = batches(items, 8, seed=1, epoch=0, lengths=lengths)
    assert sorted(i for b in grouped for i in b) == items  # each row once
    assert padded(grouped, lengths) < 0.3 * padded(plain, lengths)
    # still random: another epoch gives other batches, and batch order is not sorted by length
    assert batches(items, 8, seed=1, epoch=1, lengths=lengths) != grouped
    firsts = [max(lengths[i] for i in b) for b in grouped]
    assert firsts != sorted(firsts, reverse=True)
