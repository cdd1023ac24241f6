"""cellio.loading.sampling: shuffle(seed, epoch), rank sharding, last-batch policies, balancing (pure numpy)."""
from __future__ import annotations

import numpy as np
import pytest

from cellio.errors import PipelineConfigError
from cellio.loading.sampling import ShardedSampler, balance_weights


def _ranks(n: int, world: int, bs: int, policy: str, epoch: int = 0, **kw) -> list[np.ndarray]:
    out = []
    for r in range(world):
        s = ShardedSampler(n, batch_size=bs, rank=r, world_size=world, seed=3, last_batch=policy, **kw)
        s.set_epoch(epoch)
        out.append(s.rank_order()[0])
    return out


@pytest.mark.parametrize("n,world,bs", [(23, 3, 4), (17, 3, 5), (3, 3, 2), (50, 1, 7), (10, 4, 1)])
def test_partial_every_item_exactly_once_across_ranks(n, world, bs):
    parts = _ranks(n, world, bs, "partial")
    allitems = np.concatenate(parts)
    assert sorted(allitems.tolist()) == list(range(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1  # uneven tails differ by at most one item


def test_drop_gives_equal_full_batches_and_no_repeats():
    parts = _ranks(23, 3, 4, "drop")
    assert [len(p) for p in parts] == [4, 4, 4]  # 23 // 12 = 1 full batch per rank
    allitems = np.concatenate(parts)
    assert len(set(allitems.tolist())) == len(allitems)
    s = ShardedSampler(23, batch_size=4, rank=0, world_size=3, last_batch="drop")
    assert s.num_batches() == 1


def test_pad_repeats_only_to_fill_full_batches():
    parts = _ranks(23, 3, 4, "pad")
    assert [len(p) for p in parts] == [8, 8, 8]
    allitems = np.concatenate(parts)
    assert set(allitems.tolist()) == set(range(23))
    assert len(allitems) - 23 == 1  # 24 slots, one repeat


def test_same_permutation_on_every_rank_and_epoch_changes_it():
    a = ShardedSampler(40, batch_size=4, rank=0, world_size=2, seed=1)
    b = ShardedSampler(40, batch_size=4, rank=1, world_size=2, seed=1)
    assert np.array_equal(a.global_order(5), b.global_order(5))
    assert not np.array_equal(a.global_order(5), a.global_order(6))
    c = ShardedSampler(40, batch_size=4, rank=0, world_size=2, seed=2)
    assert not np.array_equal(a.global_order(5), c.global_order(5))


def test_no_shuffle_is_identity_order_and_strided():
    s = ShardedSampler(10, batch_size=2, rank=1, world_size=3, shuffle=False)
    items, pos = s.rank_order()
    assert items.tolist() == [1, 4, 7]
    assert pos.tolist() == [1, 4, 7]
    assert s.num_batches() == 2 and len(s) == 3


def test_balance_weights_and_balanced_draws():
    labels = np.array([0] * 90 + [1] * 10)
    w = balance_weights(labels)
    assert np.isclose(w[:90].sum(), 0.5) and np.isclose(w[90:].sum(), 0.5)
    s = ShardedSampler(100, batch_size=10, seed=0, weights=w, last_batch="partial")
    counts = np.bincount(labels[s.global_order(0)], minlength=2)
    assert 30 < counts[1] < 70  # ~50 of the minority class instead of ~10
    # the same draw on every rank, so ranks still partition the epoch's positions
    parts = _ranks(100, 2, 10, "partial", weights=w)
    assert sum(len(p) for p in parts) == 100


@pytest.mark.parametrize("kwargs,field", [
    (dict(n=0, batch_size=1), "sampler"), (dict(n=5, batch_size=0), "batch_size"),
    (dict(n=5, batch_size=1, world_size=0), "world_size"), (dict(n=5, batch_size=1, rank=2, world_size=2), "rank"),
    (dict(n=5, batch_size=1, last_batch="keep"), "last_batch"), (dict(n=5, batch_size=4, world_size=2,
                                                                      last_batch="drop"), "drop"),
    (dict(n=3, batch_size=1, weights=np.array([1.0, -1.0, 1.0])), "weights"),
])
def test_bad_configuration_raises_naming_the_parameter(kwargs, field):
    n = kwargs.pop("n")
    with pytest.raises(PipelineConfigError, match=field):
        ShardedSampler(n, **kwargs)


def _grouped(n: int, world: int, bs: int, policy: str, keys: np.ndarray, epoch: int = 0):
    out = []
    for r in range(world):
        s = ShardedSampler(n, batch_size=bs, rank=r, world_size=world, seed=5, last_batch=policy, groups=keys)
        s.set_epoch(epoch)
        items, _ = s.rank_order()
        out.append([items[a:b] for a, b in s.batch_bounds()])
        assert len(out[-1]) == s.num_batches()
    return out


@pytest.mark.parametrize("n,world,bs", [(61, 3, 4), (40, 3, 7), (9, 2, 5)])
def test_group_pure_batches_cover_every_item_exactly_once_over_ranks(n, world, bs):
    keys = np.random.default_rng(1).integers(0, 4, size=n)  # uneven "plates"
    for epoch in (0, 3):
        ranks = _grouped(n, world, bs, "partial", keys, epoch)
        seen = np.concatenate([np.concatenate(r) for r in ranks if r])
        assert sorted(seen.tolist()) == list(range(n))
        for batches in ranks:
            assert all(len(set(keys[b].tolist())) == 1 and 0 < len(b) <= bs for b in batches)
    first = [b.tolist() for r in _grouped(n, world, bs, "partial", keys, 0) for b in r]
    assert first != [b.tolist() for r in _grouped(n, world, bs, "partial", keys, 1) for b in r]  # reshuffled


def test_group_pure_drop_gives_full_batches_and_equal_counts_per_rank():
    keys = np.repeat(np.arange(5), [9, 7, 12, 3, 10])
    ranks = _grouped(len(keys), 3, 4, "drop", keys)
    assert len({len(r) for r in ranks}) == 1
    flat = np.concatenate([np.concatenate(r) for r in ranks])
    assert len(set(flat.tolist())) == len(flat) and all(len(b) == 4 for r in ranks for b in r)
    pad = _grouped(len(keys), 3, 4, "pad", keys)
    assert len({len(r) for r in pad}) == 1 and all(len(set(keys[b].tolist())) == 1 for r in pad for b in r)


def test_num_samples_fixes_the_epoch_length():
    s = ShardedSampler(10, batch_size=4, seed=2, num_samples=25, last_batch="drop")
    items, _ = s.rank_order(0)
    assert s.num_batches() == 6 and len(items) == 24
    counts = np.bincount(items, minlength=10)
    assert counts.min() >= 2 and counts.max() <= 3  # consecutive permutations: nobody is left behind
    default = ShardedSampler(10, batch_size=4, seed=2, last_batch="partial")
    assert np.array_equal(default.global_order(0), ShardedSampler(10, batch_size=4, seed=2).global_order(0))
    keys = np.repeat([0, 1, 2], [5, 9, 3])
    for rank in (0, 1):  # group-pure batches with a fixed epoch length: passes over the groups, cut
        g = ShardedSampler(17, batch_size=3, rank=rank, world_size=2, seed=1, groups=keys, num_samples=40,
                           last_batch="drop")
        items, _ = g.rank_order(0)
        bounds = g.batch_bounds(0)
        assert g.num_batches() == len(bounds) == 13 // 2
        assert all(len(set(keys[items[a:b]].tolist())) == 1 and b - a == 3 for a, b in bounds)
