"""Epoch order for one rank: shuffle(seed, epoch), optional balancing, rank sharding, last-batch policy, resume.

Pure numpy, no torch. Every rank builds the SAME global order from (seed, epoch) and takes its own strided share,
so with ``last_batch="partial"`` every item is seen exactly once per epoch across ranks (the way
``torch.utils.data.DistributedSampler`` does it, minus the padding). The policies:

* ``"partial"``: every item exactly once across ranks; ranks may differ by one item, the last batch may be short.
* ``"drop"``: every rank gets the same number of FULL batches; the global tail (< world_size * batch_size items)
  is dropped for this epoch (a different tail next epoch when shuffling). Each item at most once.
* ``"pad"``: the global order is extended by repeating its first items until every rank has the same number of
  full batches. Items repeat ONLY under this policy (and under balancing, which samples with replacement).

Two variations:

* ``groups`` (e.g. one key per plate): every batch holds items of ONE group. Each group's items are shuffled and
  cut into batches (its tail is a short batch under "partial", dropped under "drop", filled from the group's own
  items under "pad"); the batches are shuffled and dealt to the ranks in turn ("drop"/"pad" keep the same number
  of batches on every rank). Under "partial" every item is still seen exactly once per epoch across ranks.
* ``num_samples``: the epoch is that many items (consecutive seeded permutations, cut; with ``groups``,
  consecutive passes over the groups, cut to num_samples // batch_size batches), whatever ``n`` is: a data set
  that grows between epochs (pseudo-labels) keeps the same number of batches per epoch.

Resuming: the order of an epoch is a pure function of (seed, epoch, n, world_size, rank, batch_size, policy,
groups, num_samples), so a loader skips the batches it already yielded and reproduces the rest exactly.
"""
from __future__ import annotations

import logging
from typing import Literal, Sequence

import numpy as np

from ..params import parse_choice, parse_int
from ..errors import PipelineConfigError

__all__ = ["LAST_BATCH_POLICIES", "BALANCE_MODES", "ShardedSampler", "balance_weights"]

log = logging.getLogger(__name__)

LAST_BATCH_POLICIES: tuple[str, ...] = ("drop", "pad", "partial")
BALANCE_MODES: tuple[str, ...] = ("class", "plate")
LastBatch = Literal["drop", "pad", "partial"]


def balance_weights(groups: Sequence | np.ndarray) -> np.ndarray:
    """Sampling weights ∝ 1 / size of each item's group (class id, or plate key), summing to 1."""
    keys = np.asarray(groups)
    if keys.ndim != 1 or len(keys) == 0:
        raise PipelineConfigError(f"balance groups: expected a non-empty 1-D sequence, found shape {keys.shape}")
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse].astype(np.float64)
    return w / w.sum()


class ShardedSampler:
    """Per-epoch item order for one rank, cut into batches.

    ``n``: number of items (positions 0..n-1 into whatever the caller indexes: filtered sites, or TTA items).
    ``weights``: optional sampling weights (see :func:`balance_weights`); when given, each epoch draws its items
    with replacement (the same draw on every rank), so "exactly once" does not hold — that is what balancing means.
    ``groups``: optional group key per item; batches are then group-pure (module docstring).
    ``num_samples``: optional epoch length in items (default ``n``).
    """

    def __init__(self, n: int, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, last_batch: LastBatch = "partial", weights: np.ndarray | None = None,
                 groups: Sequence | np.ndarray | None = None, num_samples: int | None = None):
        self.n = parse_int("n", n)
        if self.n < 1:
            raise PipelineConfigError(f"sampler: expected at least 1 item, found n={n} (did the filters remove "
                                      "every site?)")
        self.batch_size = parse_int("batch_size", batch_size, minimum=1)
        self.world_size = parse_int("world_size", world_size, minimum=1)
        self.rank = parse_int("rank", rank)
        if self.rank >= self.world_size:
            raise PipelineConfigError(f"rank: expected 0 <= rank < world_size={world_size}, found {rank}")
        self.last_batch: LastBatch = parse_choice("last_batch", last_batch, LAST_BATCH_POLICIES)
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (self.n,) or not np.all(np.isfinite(weights)) or np.any(weights < 0) \
                    or weights.sum() <= 0:
                raise PipelineConfigError(f"weights: expected {n} finite non-negative numbers with a positive sum, "
                                          f"found shape {weights.shape}")
            weights = weights / weights.sum()
        self.weights = weights
        self.num_samples = None if num_samples is None else parse_int("num_samples", num_samples, minimum=1)
        self.groups: list[np.ndarray] | None = None
        if groups is not None:
            keys = np.asarray(groups)
            if keys.shape != (self.n,):
                raise PipelineConfigError(f"groups: expected one key per item ({self.n}), found shape {keys.shape}")
            if weights is not None:
                raise PipelineConfigError("groups: group-pure batches do not combine with weights (balance)")
            _, codes = np.unique(keys, return_inverse=True)
            order = np.argsort(codes, kind="stable")
            self.groups = np.split(order.astype(np.int64), np.flatnonzero(np.diff(codes[order])) + 1)
        self.seed = parse_int("seed", seed)  # numpy seeds are non-negative: fail here, not at the first batch
        self.shuffle = bool(shuffle)
        self.epoch = 0
        if self.last_batch == "drop" and self.num_batches() < 1:
            raise PipelineConfigError(
                f"last_batch='drop': {self.n} items cannot fill one batch of {self.batch_size} on each of "
                f"{self.world_size} ranks{' within one group' if self.groups else ''}; use a smaller batch_size or "
                f"last_batch='partial'/'pad'")

    @property
    def epoch_items(self) -> int:
        """Items in one epoch over all ranks, before the last-batch policy."""
        return self.num_samples or self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = parse_int("epoch", epoch)

    def global_order(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's order over all ranks (identical on every rank), before the last-batch policy."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch, 0x5A4D])  # same stream on every rank
        if self.weights is not None:
            return rng.choice(self.n, size=self.epoch_items, replace=True, p=self.weights).astype(np.int64)
        if not self.shuffle:
            return np.arange(self.epoch_items, dtype=np.int64) % self.n
        perms = [rng.permutation(self.n) for _ in range(-(-self.epoch_items // self.n))]
        return np.concatenate(perms)[:self.epoch_items].astype(np.int64)

    def _policy_total(self) -> int:
        """How many global positions the epoch uses after the last-batch policy."""
        step = self.world_size * self.batch_size
        if self.last_batch == "drop":
            return (self.epoch_items // step) * step
        if self.last_batch == "pad":
            return -(-self.epoch_items // step) * step
        return self.epoch_items

    def positions(self) -> np.ndarray:
        """This rank's global positions in the epoch order (what per-sample random draws are keyed on); without
        groups the same in every epoch (they depend only on rank, world size and the last-batch policy)."""
        if self.groups is not None:
            return self._grouped_rank(self.epoch)[1]
        return np.arange(self.rank, self._policy_total(), self.world_size, dtype=np.int64)

    def rank_order(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(items, positions) for this rank: item ids in 0..n-1 and their global positions in the epoch.

        Under "pad", positions past the order's end wrap around to its start (repeats, by design).
        """
        epoch = self.epoch if epoch is None else int(epoch)
        if self.groups is not None:
            items, pos, _ = self._grouped_rank(epoch)
            return items, pos
        order = self.global_order(epoch)
        pos = np.arange(self.rank, self._policy_total(), self.world_size, dtype=np.int64)
        return order[pos % len(order)], pos

    def batch_bounds(self, epoch: int | None = None) -> np.ndarray:
        """(num_batches, 2) start/stop of each batch in this rank's `rank_order(epoch)`."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.groups is not None:
            return self._grouped_rank(epoch)[2]
        m = len(self)
        starts = np.arange(self.num_batches(), dtype=np.int64) * self.batch_size
        return np.stack([starts, np.minimum(starts + self.batch_size, m)], axis=1)

    def _grouped_batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's group-pure batches over all ranks (identical on every rank), in dealing order. With
        num_samples, consecutive passes over the groups until the epoch has num_samples // batch_size batches."""
        assert self.groups is not None
        rng = np.random.default_rng([self.seed, epoch, 0x9A7E])
        want = self._grouped_count()
        batches: list[np.ndarray] = []
        while True:
            one_pass = self._group_pass(rng)
            batches += one_pass
            if self.num_samples is None or len(batches) >= want or not one_pass:
                break
        batches = batches[:want]
        w = self.world_size
        if self.last_batch == "drop":
            batches = batches[:len(batches) // w * w]
        elif self.last_batch == "pad" and len(batches) % w:
            batches += batches[:w - len(batches) % w]
        return batches

    def _group_pass(self, rng: np.random.Generator) -> list[np.ndarray]:
        """One pass over every group: its items shuffled and cut into batches; the batches shuffled."""
        assert self.groups is not None
        bs, batches = self.batch_size, []
        for members in self.groups:
            items = rng.permutation(members) if self.shuffle else members
            for k in range(0, len(items), bs):
                chunk = items[k:k + bs]
                if len(chunk) < bs and self.last_batch == "drop":
                    continue
                if len(chunk) < bs and self.last_batch == "pad":
                    chunk = items[np.arange(k, k + bs) % len(items)]
                batches.append(chunk)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _grouped_count(self) -> int:
        """Batches of one epoch over all ranks, before the rank policy."""
        assert self.groups is not None
        bs = self.batch_size
        if self.num_samples is not None:
            return self.num_samples // bs if self.last_batch == "drop" else -(-self.num_samples // bs)
        return sum(len(g) // bs if self.last_batch == "drop" else -(-len(g) // bs) for g in self.groups)

    def _grouped_rank(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batches = self._grouped_batches(epoch)
        sizes = np.array([len(b) for b in batches], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        mine = range(self.rank, len(batches), self.world_size)
        items = np.concatenate([batches[i] for i in mine]) if len(mine) else np.zeros(0, np.int64)
        pos = np.concatenate([offsets[i] + np.arange(sizes[i]) for i in mine]) if len(mine) else items
        stops = np.cumsum(sizes[list(mine)]).astype(np.int64)
        bounds = np.stack([stops - sizes[list(mine)], stops], axis=1) if len(mine) else np.zeros((0, 2), np.int64)
        return items.astype(np.int64), pos.astype(np.int64), bounds

    def __len__(self) -> int:
        """Items this rank yields per epoch (with groups: in the current epoch)."""
        if self.groups is not None:
            return int(len(self._grouped_rank(self.epoch)[0]))
        return len(self.positions())

    def num_batches(self) -> int:
        """Batches this rank yields per epoch (the same in every epoch)."""
        if self.groups is not None:
            total, w = self._grouped_count(), self.world_size
            total = total // w * w if self.last_batch == "drop" else -(-total // w) * w if self.last_batch == "pad" \
                else total
            return len(range(self.rank, total, w))
        m = len(self)
        return m // self.batch_size if self.last_batch == "drop" else -(-m // self.batch_size)

    def state(self) -> dict:
        """What must match for a saved position in an epoch to mean the same thing on reload."""
        return {"n": self.n, "batch_size": self.batch_size, "rank": self.rank, "world_size": self.world_size,
                "seed": self.seed, "shuffle": self.shuffle, "last_batch": self.last_batch,
                "balanced": self.weights is not None, "grouped": self.groups is not None,
                "num_samples": self.num_samples}
